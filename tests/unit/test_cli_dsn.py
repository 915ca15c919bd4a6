import getpass

import pytest

from totes import db
from totes_local import cli, dsn


def connection_kwargs(url: str) -> dict:
    """What the pipeline's one connection helper makes of a URL."""
    return db.connection_kwargs(dsn.parse_dsn(url))


def test_tcp_url_becomes_an_rds_style_secret():
    secret = dsn.parse_dsn("postgresql://etl:s%40cret@db.example.com:6543/totesys?sslmode=disable")
    assert secret == {"host": "db.example.com", "port": 6543, "username": "etl",
                      "password": "s@cret", "dbname": "totesys", "sslmode": "disable"}


def test_percent_encoded_socket_directory_is_a_unix_socket():
    kwargs = connection_kwargs("postgres://postgres@%2Ftmp%2Fpg:5433/src")
    assert kwargs["unix_sock"] == "/tmp/pg/.s.PGSQL.5433"
    assert kwargs["database"] == "src" and "host" not in kwargs


def test_host_query_parameter_names_the_socket_directory():
    kwargs = connection_kwargs("postgresql:///totesys?host=/var/run/postgresql&user=me")
    assert kwargs["unix_sock"] == "/var/run/postgresql/.s.PGSQL.5432"
    assert kwargs["user"] == "me"


def test_missing_parts_take_libpq_like_defaults():
    secret = dsn.parse_dsn("postgresql://")
    assert secret["host"] == "localhost" and secret["port"] == 5432
    assert secret["username"] == getpass.getuser()
    assert secret["dbname"] == "totesys" and secret["password"] == ""


def test_tcp_defaults_to_verified_tls_as_the_pipeline_does():
    assert connection_kwargs("postgresql://u@h/d")["ssl_context"].check_hostname
    assert connection_kwargs("postgresql://u@h/d?sslmode=disable")["ssl_context"] is False


@pytest.mark.parametrize("text, message", [
    ("mysql://u@h/d", "postgresql://user:password@host:port/dbname"),
    ("postgresql://u@h:notaport/d", "not a valid PostgreSQL URL"),
    ("postgresql://u@h/d?colour=blue", "unsupported DSN parameter(s): colour"),
    ("postgresql://u@h/d?port=x", "port must be a number"),
])
def test_bad_urls_are_refused_with_the_reason(text, message):
    with pytest.raises(dsn.DsnError) as caught:
        dsn.parse_dsn(text)
    assert message in str(caught.value)


@pytest.mark.parametrize("text, shown", [
    ("postgresql://u:hunter2@h:1/d", "postgresql://***@h:1/d"),
    ("postgresql://u:se#cret9@h:1/d", "postgresql://***@h:1/d"),
    ("postgresql://u:se/cret9@h/d", "postgresql://***@h/d"),
    ("postgresql://u:se?cret9@h/d", "postgresql://***@h/d"),
    ("postgresql://u:p@cret9@h/d", "postgresql://***@h/d"),
    ("postgresql://u@h/d?password=cret9&sslmode=disable",
     "postgresql://***@h/d?password=***&sslmode=disable"),
    ("postgresql:///d?host=/tmp&PASSWORD=se#cret9", "postgresql:///d?host=/tmp&PASSWORD=***"),
    ("host=h password='se cret9' dbname=d", "host=h password=*** dbname=d"),
    ("postgresql://h/d", "postgresql://h/d"),
])
def test_redact_masks_everything_that_may_be_a_password(text, shown):
    assert dsn.redact(text) == shown
    assert "cret9" not in dsn.redact(text) and "hunter2" not in dsn.redact(text)


@pytest.mark.parametrize("text", ["postgresql://u:se#cret9@h:1/d", "postgresql://u:se/cret9@h/d",
                                  "postgresql://u@h/d?port=se#cret9"])
def test_a_url_that_cannot_be_parsed_is_refused_without_quoting_it(text):
    with pytest.raises(dsn.DsnError) as caught:
        dsn.parse_dsn(text)
    assert "cret9" not in str(caught.value) and "'se'" not in str(caught.value)


def test_the_audit_command_never_echoes_a_password_it_cannot_parse(capsys, tmp_path):
    url = "postgresql://u:se#cret9@db.example:5432/totesys"
    assert cli.main(["audit", "--dsn-source", url, "--dsn-warehouse", url,
                     "--ingest-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a valid PostgreSQL URL" in err and "'se'" not in err and "cret9" not in err


def test_only_a_url_with_a_password_is_said_to_hold_one():
    assert dsn.holds_password("postgresql://u:p@h/d")
    assert dsn.holds_password("postgresql://u@h/d?password=x")
    assert not dsn.holds_password("postgresql://u@h/d")
    assert not dsn.holds_password("postgresql:///d?host=/tmp/pg")


@pytest.mark.parametrize("argv, message", [
    (["seed", "--scale", "0"], "must be a positive number"),
    (["seed", "--scale", "-2"], "must be a positive number"),
    (["seed", "--scale", "lots"], "not a number"),
    (["seed", "--end", "yesterday"], "not an ISO-8601 instant"),
    (["simulate", "--steps", "-1"], "must be at least 0"),
    (["simulate", "--step-minutes", "0"], "must be at least 1"),
    (["simulate", "--steps", "x"], "not a whole number"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_arguments_are_one_line_and_exit_status_2(capsys, argv, message):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_dsn_is_one_line_and_exit_status_2(capsys):
    assert cli.main(["seed", "--dsn", "mysql://nobody@nowhere/x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("totes seed: error: a DSN must look like") and err.count("\n") == 1


def test_end_accepts_zulu_and_naive_instants_as_utc():
    parser = cli.build_parser()
    zulu = parser.parse_args(["seed", "--end", "2024-01-02T03:04:05Z"]).end
    naive = parser.parse_args(["seed", "--end", "2024-01-02T03:04:05"]).end
    assert zulu == naive and zulu.utcoffset().total_seconds() == 0


def test_registered_commands_appear_in_the_parser():
    def add(parser):
        parser.add_argument("--flag", action="store_true")

    cli.register("probe", "a test command", add, lambda args: 7 if args.flag else 0)
    try:
        assert cli.main(["probe", "--flag"]) == 7
    finally:
        del cli.COMMANDS["probe"]
