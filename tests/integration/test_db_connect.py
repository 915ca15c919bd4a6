import errno
import io
import json
import re
import time

import boto3
import pg8000.native as pg8000_native
import pytest
from aws_lambda_powertools.utilities import parameters

from totes import config, db, errors
from totes_local import stack


def test_connects_through_the_secret_over_a_unix_socket(aws, postgres, database):
    name = database("dbconnect")
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(name)}, buckets=())
    connection = db.connect(aws["TOTESYS_SECRET_ID"])
    try:
        assert connection.run("SELECT current_database()") == [[name]]
    finally:
        connection.close()


def test_unreachable_database_is_a_clear_error_without_the_password(aws, tmp_path):
    secret = {"host": str(tmp_path), "port": 5999, "username": "etl",
              "password": "hunter2-unique", "dbname": "totesys"}
    stack.provision({aws["TOTESYS_SECRET_ID"]: secret}, buckets=())
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        db.connect(aws["TOTESYS_SECRET_ID"])
    assert "totesys" in str(caught.value) and aws["TOTESYS_SECRET_ID"] in str(caught.value)
    assert "hunter2-unique" not in str(caught.value)


def test_an_unknown_role_is_an_input_error_saying_to_correct_the_username(
        aws, postgres, database):
    name = database("dbauth")
    secret = {**postgres.secret(name), "username": "nobody_here", "password": "nope-unique-3"}
    stack.provision({aws["TOTESYS_SECRET_ID"]: secret}, buckets=())
    with pytest.raises(db.LoginRefusedError, match=r'role "nobody_here" does not exist '
                                                   r'\(SQLSTATE 28000\): correct "username"') \
            as caught:
        db.connect(aws["TOTESYS_SECRET_ID"])
    assert errors.kind_of(caught.value) == errors.INPUT
    assert isinstance(caught.value, db.DatabaseUnavailableError)  # callers that go on still do
    assert "nope-unique-3" not in str(caught.value)


def test_a_database_that_does_not_exist_is_an_input_error_saying_to_correct_dbname(
        aws, postgres, monkeypatch):
    stack.provision({aws["WAREHOUSE_SECRET_ID"]: postgres.secret("postgres")}, buckets=())
    monkeypatch.setenv("WAREHOUSE_DBNAME", "warehouse_not_created")
    with pytest.raises(db.LoginRefusedError, match=r'(?s)"warehouse_not_created" does not exist '
                                                   r'\(SQLSTATE 3D000\): correct "dbname"') \
            as caught:
        db.connect(aws["WAREHOUSE_SECRET_ID"], database=config.WAREHOUSE)
    assert errors.kind_of(caught.value) == errors.INPUT


def test_a_login_refused_with_the_cached_secret_is_tried_once_with_the_secret_read_anew(
        aws, postgres, database):
    # The secret was corrected (or rotated) after this container cached it: the next run must
    # connect, not fail as an input error for five more minutes.
    name = database("dbrotated")
    right = postgres.secret(name)
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**right, "username": "old_login"}}, buckets=())
    db.fetch_secret(aws["TOTESYS_SECRET_ID"])   # cached, as a warm container holds it
    boto3.client("secretsmanager").put_secret_value(SecretId=aws["TOTESYS_SECRET_ID"],
                                                    SecretString=json.dumps(right))
    connection = db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    try:
        assert connection.run("SELECT current_database()") == [[name]]
    finally:
        connection.close()


def test_a_login_refused_mid_rotation_connects_with_the_pending_version_not_paging(
        aws, postgres, database):
    # A single-user rotation has set the database to the AWSPENDING version and not yet made it
    # current: the current version is refused, the pending one is the login that works now.
    name = database("dbpending")
    right = postgres.secret(name)
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**right, "username": "before_rotation"}},
                    buckets=())
    boto3.client("secretsmanager").put_secret_value(
        SecretId=aws["TOTESYS_SECRET_ID"], SecretString=json.dumps(right),
        VersionStages=["AWSPENDING"])
    connection = db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    try:
        assert connection.run("SELECT current_database()") == [[name]]
    finally:
        connection.close()


def test_a_pending_version_that_is_refused_too_leaves_the_current_versions_refusal(
        aws, postgres, database):
    # A rotation that failed leaves its AWSPENDING version behind: a wrong secret still says so.
    right = postgres.secret(database("dbstale"))
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**right, "username": "wrong_login"}},
                    buckets=())
    boto3.client("secretsmanager").put_secret_value(
        SecretId=aws["TOTESYS_SECRET_ID"], VersionStages=["AWSPENDING"],
        SecretString=json.dumps({**right, "username": "stale_pending"}))
    with pytest.raises(db.LoginRefusedError, match='role "wrong_login" does not exist'):
        db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)


def test_a_refusal_whose_secret_cannot_be_read_again_stays_the_refusal_saying_so(
        aws, postgres, database):
    # Meanwhile someone stored a value that is not JSON: the refusal is still what happened.
    right = postgres.secret(database("dbunread"))
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**right, "username": "wrong_login"}},
                    buckets=())
    db.fetch_secret(aws["TOTESYS_SECRET_ID"], config.TOTESYS)   # cached, as a warm container
    boto3.client("secretsmanager").put_secret_value(SecretId=aws["TOTESYS_SECRET_ID"],
                                                    SecretString="host=db user=etl")
    with pytest.raises(db.LoginRefusedError, match=r'(?s)role "wrong_login" does not exist .*'
                                                   r"\(whether the secret was rotated since could "
                                                   r"not be checked: reading it again failed: "
                                                   r"secret .* is not valid JSON") as caught:
        db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    assert errors.kind_of(caught.value) == errors.INPUT
    assert isinstance(caught.value.__cause__, db.SecretFormatError)


def test_a_refusal_whose_pending_version_cannot_be_tried_stays_the_refusal_saying_so(
        aws, postgres, database):
    right = postgres.secret(database("dbbadpending"))
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**right, "username": "wrong_login"}},
                    buckets=())
    boto3.client("secretsmanager").put_secret_value(
        SecretId=aws["TOTESYS_SECRET_ID"], VersionStages=["AWSPENDING"],
        SecretString=json.dumps({**right, "host": "postgres://db.example.com/totesys"}))
    with pytest.raises(db.LoginRefusedError, match=r'(?s)role "wrong_login" does not exist .*'
                                                   r"\(the secret's AWSPENDING version could not "
                                                   r'be tried: .*from "host" in secret .* is a '
                                                   r"URL") as caught:
        db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    assert errors.kind_of(caught.value) == errors.INPUT


def test_a_host_name_that_cannot_exist_is_a_clear_error(aws):
    secret = {"host": "a" * 70 + ".invalid", "username": "etl", "password": "pw-unique-9",
              "dbname": "totesys"}
    stack.provision({aws["TOTESYS_SECRET_ID"]: secret}, buckets=())
    with pytest.raises(db.DatabaseUnavailableError, match="cannot connect to database totesys"):
        db.connect(aws["TOTESYS_SECRET_ID"])


def test_an_rds_master_secret_connects_with_where_given_by_the_template(
        aws, postgres, database, monkeypatch):
    # An RDS-managed master secret: username and password only; host, port and database name
    # come from the function's environment (the TotesysHost/Port/Database parameters).
    name = database("master")
    full = postgres.secret(name)
    stack.provision({aws["TOTESYS_SECRET_ID"]: {"username": full["username"],
                                                "password": full["password"]}}, buckets=())
    monkeypatch.setenv("TOTESYS_HOST", full["host"])
    monkeypatch.setenv("TOTESYS_PORT", str(full["port"]))
    monkeypatch.setenv("TOTESYS_DBNAME", name)
    connection = db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    try:
        assert connection.run("SELECT current_database()") == [[name]]
    finally:
        connection.close()


def test_a_master_secret_without_where_fails_naming_both_places(aws, postgres):
    stack.provision({aws["WAREHOUSE_SECRET_ID"]: {"username": "postgres", "password": ""}},
                    buckets=())
    expected = r"WAREHOUSE_HOST \(template parameter WarehouseHost\)"
    with pytest.raises(db.SecretFormatError, match=expected) as caught:
        db.connect(aws["WAREHOUSE_SECRET_ID"], database=config.WAREHOUSE)
    assert f'put "host" in secret {aws["WAREHOUSE_SECRET_ID"]}' in str(caught.value)


def kept(aws):
    """What a warm invocation of ingest asks for: the source's kept connection."""
    return db.kept_connection(aws["TOTESYS_SECRET_ID"], timeout=30, database=config.TOTESYS)


def _backend(connection):
    return connection.run("SELECT pg_backend_pid()")[0][0]


def test_a_warm_invocation_reuses_the_kept_connection_with_no_transaction_carried_over(
        aws, postgres, database):
    name = database("kept")
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(name)}, buckets=())
    with kept(aws) as first:
        pid = _backend(first)
    with kept(aws) as second:
        assert second is first and _backend(second) == pid
        second.run("START TRANSACTION")  # left open: the connection is not kept
    with kept(aws) as third:
        assert _backend(third) != pid
        assert third.run("SELECT pg_current_xact_id_if_assigned() IS NULL, "
                         "current_setting('transaction_isolation')") == [[True, "read committed"]]


@pytest.fixture
def warm(aws, postgres, database):
    """A container after one invocation: its kept connection, that backend's pid, the database."""
    name = database("warm")
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(name)}, buckets=())
    with kept(aws) as first:
        pid = _backend(first)
    return first, pid, name


def test_a_kept_connection_dropped_between_invocations_is_replaced(aws, postgres, warm):
    first, pid, name = warm
    admin = postgres.connect(name)
    try:
        admin.run("SELECT pg_terminate_backend(:pid)", pid=pid)  # a restart, a failover
    finally:
        admin.close()
    with kept(aws) as second:
        assert second is not first and _backend(second) != pid


def test_a_kept_connection_older_than_its_maximum_age_is_replaced(aws, warm, monkeypatch):
    first, pid, _ = warm
    opened = time.monotonic()
    # As a warm container an hour later: the host name may now lead to another server.
    monkeypatch.setattr(db.time, "monotonic", lambda: opened + db.KEPT_MAX_AGE_SECONDS + 1)
    with kept(aws) as second:
        assert second is not first and _backend(second) != pid


def test_a_kept_connection_whose_liveness_check_breaks_unexpectedly_is_replaced(
        aws, warm, monkeypatch):
    first, pid, _ = warm

    def breaks(*args, **kwargs):
        raise ValueError("a reply pg8000 did not expect")

    with monkeypatch.context() as patch:
        patch.setattr(first, "run", breaks)
        with kept(aws) as second:
            assert second is not first and _backend(second) != pid


def test_a_connection_whose_invocation_failed_is_closed_not_kept(aws, postgres, database):
    name = database("failed")
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(name)}, buckets=())
    with pytest.raises(RuntimeError, match="handler failed"):
        with kept(aws) as first:
            pid = _backend(first)
            raise RuntimeError("handler failed")
    with kept(aws) as second:
        assert _backend(second) != pid


def test_a_secret_pointed_at_another_database_closes_the_kept_connection(aws, postgres, database):
    old, new = database("old"), database("new")
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(old)}, buckets=())
    with kept(aws) as first:
        pid = _backend(first)
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(new)}, buckets=())
    parameters.clear_caches()  # the secret's five-minute cache has run out
    with kept(aws) as second:
        assert second.run("SELECT current_database()") == [[new]]
    admin = postgres.connect(old)
    try:
        for _ in range(50):  # the server ends a closed session's backend a moment later
            if admin.run("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid",
                         pid=pid) == [[0]]:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"the session {pid} on the old database is still open")
    finally:
        admin.close()


@pytest.fixture
def connection(aws, postgres, database):
    """A fresh database reached as the pipeline reaches it: through totes.db.Connection."""
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(database("onetrip"))}, buckets=())
    conn = db.connect(aws["TOTESYS_SECRET_ID"])
    yield conn
    conn.close()


def _waits(connection, monkeypatch):
    """Count the waits for the server: pg8000 reads until a ReadyForQuery in each."""
    waits = []
    handle = connection.handle_messages

    def counted(context):
        waits.append(context)
        return handle(context)

    monkeypatch.setattr(connection, "handle_messages", counted)
    return waits


def test_a_statement_with_values_runs_in_one_round_trip_and_reads_its_rows(
        connection, monkeypatch):
    assert isinstance(connection, db.Connection)
    waits = _waits(connection, monkeypatch)
    rows = connection.run("SELECT :a::int + 1, :b::text, :c::date IS NULL", a=41, b="é", c=None)
    assert rows == [[42, "é", True]] and len(waits) == 1
    connection.run("CREATE TEMPORARY TABLE t (k integer, v text)")
    connection.run("INSERT INTO t VALUES (:k, :v), (:k + 1, :v)", k=1, v="x")
    assert connection.row_count == 2 and len(waits) == 3


def test_a_statement_that_fails_to_parse_leaves_the_connection_usable(connection):
    with pytest.raises(pg8000_native.DatabaseError) as caught:
        connection.run("SELEC :a", a=1)
    assert caught.value.args[0]["C"] == "42601"  # syntax error, reported once
    connection.run("START TRANSACTION")
    with pytest.raises(pg8000_native.DatabaseError, match="division by zero"):
        connection.run("SELECT 1 / :zero", zero=0)
    with pytest.raises(pg8000_native.DatabaseError, match="current transaction is aborted"):
        connection.run("SELECT :a::int", a=1)
    connection.run("ROLLBACK")
    assert connection.run("SELECT :a::int", a=7) == [[7]]


class _Unrenderable:
    """A value whose text form cannot be made: pg8000 renders unknown types with str()."""

    def __str__(self):
        raise ValueError("no text form")


def test_a_value_that_cannot_be_rendered_fails_before_anything_is_sent(connection):
    with pytest.raises(ValueError, match="no text form"):
        connection.run("SELECT :a", a=_Unrenderable())
    assert connection.run("SELECT :a::int", a=3) == [[3]]


def test_a_value_that_cannot_be_encoded_leaves_nothing_to_precede_the_next_statement(
        connection):
    connection.run("START TRANSACTION")
    with pytest.raises(pg8000_native.DatabaseError, match="division by zero"):
        connection.run("SELECT 1 / :zero", zero=0)
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate: JSON allows it, UTF-8 does not
        connection.run("SELECT :a::text", a="\udc80")
    connection.run("ROLLBACK")               # answered at once, not after the socket's timeout
    assert connection.run("SELECT :a::int", a=4) == [[4]]


def test_copy_streams_run_in_one_round_trip_each_way(connection, monkeypatch):
    connection.run("CREATE TEMPORARY TABLE t (k integer, v text)")
    waits = _waits(connection, monkeypatch)
    connection.run("COPY t FROM STDIN", stream=io.BytesIO(b"1\ta\n2\tb\n"))
    assert connection.row_count == 2
    copied = io.BytesIO()
    connection.run("COPY (SELECT k, v FROM t ORDER BY k) TO STDOUT", stream=copied)
    assert copied.getvalue() == b"1\ta\n2\tb\n" and len(waits) == 2
    with pytest.raises(pg8000_native.DatabaseError, match="invalid input syntax"):
        connection.run("COPY t FROM STDIN", stream=io.BytesIO(b"not a number\tc\n"))
    assert connection.run("SELECT count(*) FROM t WHERE k > :k", k=0) == [[2]]


class _FullDisk:
    """A COPY sink whose file system is full: the request's own fault, not the network's."""

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_under_a_copy_stays_its_own_error_not_a_lost_connection(postgres, database):
    conn = db.connect_with(postgres.secret(database("sink")), "test", timeout=10)
    try:
        with pytest.raises(OSError) as raised:
            with db.interruptions_are_transient("totesys"):
                conn.run("COPY (SELECT generate_series(1, 10)) TO STDOUT", stream=_FullDisk())
        assert raised.value.errno == errno.ENOSPC
        assert errors.kind_of(raised.value) != errors.TRANSIENT
        assert not conn.timed_out
    finally:
        db.close_quietly(conn)


def test_a_connection_whose_socket_timed_out_fails_as_a_timeout_and_is_never_used_again(
        postgres, database):
    conn = db.connect_with(postgres.secret(database("slow")), "test", timeout=0.5)
    try:
        with pytest.raises(pg8000_native.InterfaceError) as timed_out:
            conn.run("SELECT pg_sleep(3)")   # no byte of the reply within the socket's timeout
        assert isinstance(timed_out.value.__cause__, TimeoutError)   # not a bare TimeoutError
        with pytest.raises(pg8000_native.InterfaceError) as again:
            conn.run("SELECT 1")   # Python refuses the socket: "cannot read from timed out object"
        assert "cannot be used again" in str(again.value.__cause__)
        assert isinstance(again.value.__cause__, TimeoutError)
        assert db.interruption(timed_out.value, "totesys") is None   # a timeout: no interruption
        assert db.interruption(again.value, "totesys") is None
    finally:
        db.close_quietly(conn)


def test_a_kept_connection_whose_socket_timed_out_is_not_lent_again(aws, warm):
    first, pid, _ = warm
    with pytest.raises(pg8000_native.InterfaceError):
        with db.kept_connection(aws["TOTESYS_SECRET_ID"], timeout=0.5,
                                database=config.TOTESYS) as conn:
            assert conn is first
            conn.run("SELECT pg_sleep(3)")
    with kept(aws) as second:
        assert second is not first and _backend(second) != pid


def test_a_server_older_than_the_minimum_is_refused_naming_its_version_and_the_fix(
        aws, postgres, database, monkeypatch):
    name = database("dbversion")
    stack.provision({aws["TOTESYS_SECRET_ID"]: postgres.secret(name)}, buckets=())
    connection = db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    [[version]] = connection.run("SHOW server_version")
    connection.close()
    # As if the minimum were above this server's major version: what a PostgreSQL 12 meets.
    monkeypatch.setattr(db, "MINIMUM_SERVER_MAJOR", int(version.split(".")[0]) + 1)
    with pytest.raises(db.UnsupportedServerError,
                       match=rf"the server runs PostgreSQL {re.escape(version)}, and the pipeline "
                             r"needs \d+ or later: upgrade it") as caught:
        db.connect(aws["TOTESYS_SECRET_ID"], database=config.TOTESYS)
    assert errors.kind_of(caught.value) == errors.INPUT
