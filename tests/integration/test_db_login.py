"""Logins against a server that checks passwords (SCRAM), as RDS does: the session's trusts.

A password is sent as stored, whatever it holds; a password the server refuses is an
input error saying which field to correct, never echoing the password.
"""
from urllib.parse import quote

import pytest

import scratch_postgres
from totes import config, db, errors
from totes_local import dsn, local_stack, stack

#: every character people put in passwords that a URL, a shell or SQL treats specially.
PASSWORD = "p@ss:w/rd%25 'q\"uo;te ü✓"


@pytest.fixture(scope="module")
def scram_server():
    """A server of its own asking every connection for the superuser's password."""
    with scratch_postgres.own_cluster("totes-scram-pg-") as (postgres, _):
        yield local_stack.require_password(postgres, PASSWORD)


def test_a_password_with_url_quote_and_non_ascii_characters_connects_through_the_secret(
        aws, scram_server):
    stack.provision({aws["TOTESYS_SECRET_ID"]: scram_server.secret("postgres")}, buckets=())
    connection = db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    try:
        assert connection.run("SELECT current_user") == [["postgres"]]
    finally:
        connection.close()


def test_the_same_password_percent_encoded_in_a_cli_dsn_connects(scram_server):
    url = (f"postgresql://postgres:{quote(PASSWORD, safe='')}@"
           f"{quote(scram_server.socket_dir, safe='')}:{scram_server.port}/postgres")
    connection = dsn.connect(url)
    try:
        assert connection.run("SELECT current_user") == [["postgres"]]
    finally:
        connection.close()


def test_a_wrong_password_is_an_input_error_saying_to_correct_it_never_showing_it(
        aws, scram_server):
    wrong = "wrong-unique-4 " + PASSWORD
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**scram_server.secret("postgres"),
                                                "password": wrong}}, buckets=())
    with pytest.raises(db.LoginRefusedError, match=r'password authentication failed for user '
                                                   r'"postgres" \(SQLSTATE 28P01\): correct '
                                                   r'"password"') as caught:
        db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    assert errors.kind_of(caught.value) == errors.INPUT
    assert "wrong-unique-4" not in str(caught.value)


def test_a_password_of_digits_stored_as_a_json_number_logs_in(aws, scram_server):
    digits = 80417365
    admin = scram_server.connect("postgres")
    try:
        admin.run(f"CREATE ROLE digits_login LOGIN PASSWORD '{digits}'")
    finally:
        admin.close()
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**scram_server.secret("postgres"),
                                                "username": "digits_login",
                                                "password": digits}}, buckets=())
    connection = db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    try:
        assert connection.run("SELECT current_user") == [["digits_login"]]
    finally:
        connection.close()
