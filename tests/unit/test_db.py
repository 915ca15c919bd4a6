import json
import ssl
import time
from pathlib import Path

import boto3
import botocore.exceptions
import pg8000.native
import pytest
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS
from moto import mock_aws

from totes import config, db, errors

SECRET = {"host": "db.example.com", "port": 5433, "username": "etl", "password": "s3cr3t!",
          "dbname": "totesys", "engine": "postgres"}


def test_tcp_secret_verifies_certificate_and_host_name_by_default():
    kwargs = db.connection_kwargs(SECRET)
    assert (kwargs["host"], kwargs["port"], kwargs["user"], kwargs["database"]) == (
        "db.example.com", 5433, "etl", "totesys")
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_sslmode_require_encrypts_without_verifying():
    context = db.connection_kwargs({**SECRET, "sslmode": "require"})["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_NONE


def test_sslmode_disable_turns_tls_off():
    # False, not None: pg8000 takes None as "TLS if the server offers it" (libpq's prefer).
    assert db.connection_kwargs({**SECRET, "sslmode": "disable"})["ssl_context"] is False


def test_sslmode_verify_full_checks_certificate_and_hostname():
    context = db.connection_kwargs({**SECRET, "sslmode": "verify-full"})["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_sslmode_verify_ca_checks_certificate_only():
    context = db.connection_kwargs({**SECRET, "sslmode": "verify-ca"})["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and not context.check_hostname


def test_unknown_sslmode_is_rejected():
    with pytest.raises(db.SecretFormatError, match="sslmode"):
        db.connection_kwargs({**SECRET, "sslmode": "sometimes"})


def test_host_starting_with_slash_is_a_unix_socket_directory_as_in_libpq():
    kwargs = db.connection_kwargs({**SECRET, "host": "/run/pg"})
    assert kwargs["unix_sock"] == "/run/pg/.s.PGSQL.5433"
    assert "host" not in kwargs and kwargs["ssl_context"] is False


def test_a_root_certificate_file_that_is_not_pem_is_a_secret_error(tmp_path):
    bogus = tmp_path / "bundle.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(db.SecretFormatError, match="bundle.pem cannot be read as PEM"):
        db.connection_kwargs({**SECRET, "sslrootcert": str(bogus)})


def test_the_layer_bundle_lives_in_the_package_and_is_never_committed():
    assert db.LAYER_CA_BUNDLE.parent == Path(db.__file__).parent
    ignored = (Path(__file__).parents[2] / ".gitignore").read_text().splitlines()
    assert "shared/totes/" + db.LAYER_CA_BUNDLE.name in ignored


def test_port_defaults_to_5432_and_empty_password_means_none():
    kwargs = db.connection_kwargs({**SECRET, "port": None, "password": ""})
    assert kwargs["port"] == 5432 and kwargs["password"] is None


def test_missing_keys_are_named_but_values_never_shown():
    with pytest.raises(db.SecretFormatError) as caught:
        db.connection_kwargs({"password": "s3cr3t!", "host": "h"})
    assert "username" in str(caught.value) and "dbname" in str(caught.value)
    assert "s3cr3t!" not in str(caught.value)


def test_non_numeric_port_is_rejected():
    with pytest.raises(db.SecretFormatError, match="port"):
        db.connection_kwargs({**SECRET, "port": "five"})


def test_identifiers_are_quoted():
    assert db.quote_ident("transaction") == '"transaction"'
    assert db.quote_ident('we"ird') == '"we""ird"'


@mock_aws
def test_secret_is_read_from_secrets_manager(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    boto3.client("secretsmanager").create_secret(Name="src", SecretString=json.dumps(SECRET))
    assert db.fetch_secret("src") == SECRET


@mock_aws
@pytest.mark.parametrize("value, message", [("not json", "not valid JSON"),
                                            ("[1, 2]", "JSON object")])
def test_malformed_secret_is_a_clear_error(monkeypatch, value, message):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    boto3.client("secretsmanager").create_secret(Name="bad", SecretString=value)
    with pytest.raises(db.SecretFormatError, match=message) as raised:
        db.fetch_secret("bad")
    assert '{"username": ..., "password": ...}' in str(raised.value)  # what to store instead


MISSING_ARN = "arn:aws:secretsmanager:eu-west-2:123456789012:secret:totes/totesys-AbC123"


@mock_aws
def test_a_secret_that_does_not_exist_says_to_create_it_or_deploy_its_full_arn(monkeypatch):
    # A stack deployed before its secrets, or still naming one deleted and created again.
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    with pytest.raises(db.SecretUnavailableError) as raised:
        db.fetch_secret(MISSING_ARN, config.TOTESYS)
    message = str(raised.value)
    assert MISSING_ARN in message and "ResourceNotFoundException" in message
    assert "create it" in message and "TotesysSecretArn" in message
    assert errors.kind_of(raised.value) == errors.INPUT


@mock_aws
def test_a_secret_without_a_value_yet_is_named_like_a_missing_one(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    arn = boto3.client("secretsmanager").create_secret(Name="totes/warehouse-empty")["ARN"]
    with pytest.raises(db.SecretUnavailableError, match="WarehouseSecretArn"):
        db.connect(arn, database=config.WAREHOUSE)


@mock_aws
def test_a_secret_in_another_region_names_both_regions(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    arn = boto3.client("secretsmanager", region_name="eu-west-2").create_secret(
        Name="totes/elsewhere", SecretString=json.dumps(SECRET))["ARN"]
    with pytest.raises(db.SecretUnavailableError,
                       match="the ARN is in eu-west-2, the function in us-east-1"):
        db.fetch_secret(arn, config.TOTESYS)


@mock_aws
def test_a_secret_scheduled_for_deletion_says_to_restore_it(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    client = boto3.client("secretsmanager")
    arn = client.create_secret(Name="totes/deleted", SecretString=json.dumps(SECRET))["ARN"]
    client.delete_secret(SecretId=arn, RecoveryWindowInDays=7)
    with pytest.raises(db.SecretUnavailableError, match="restore-secret"):
        db.fetch_secret(arn, config.WAREHOUSE)


def test_a_secrets_manager_that_never_answers_fails_in_seconds_naming_vpc_mode(
        monkeypatch, silent_endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", silent_endpoint)
    monkeypatch.setattr(db, "SECRETS_CONNECT_TIMEOUT_SECONDS", 0.5)
    started = time.monotonic()
    with pytest.raises(db.SecretsManagerUnreachableError) as raised:
        db.fetch_secret(MISSING_ARN, config.TOTESYS)
    # botocore's defaults would wait 60 s five times: past every function's timeout.
    assert time.monotonic() - started < 30  # one default attempt alone is 60 s
    message = str(raised.value)
    assert MISSING_ARN in message and "did not answer" in message
    assert "SubnetIds" in message and "interface endpoint" in message
    assert errors.kind_of(raised.value) == errors.TRANSIENT


def _secrets_manager_answers(error: Exception, stage: str | None = None) -> list[str]:
    """Make GetSecretValue of the functions' Secrets Manager client raise ``error``.

    Every call, or only those for the version ``stage``. moto cannot throttle or fail a
    call, so a botocore hook raises what the SDK would after its retries; returns the
    list the hook records each refused call's secret id in.
    """
    refused: list[str] = []

    def answer(params, **_kwargs):
        if stage is None or params.get("VersionStage") == stage:
            refused.append(params["SecretId"])
            raise error

    db._secrets_provider()
    DEFAULT_PROVIDERS["secrets"].client.meta.events.register(
        "before-parameter-build.secrets-manager.GetSecretValue", answer)
    return refused


def _client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    """The error botocore raises for a Secrets Manager answer of ``status`` saying ``code``."""
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": f"{code} said"},
         "ResponseMetadata": {"HTTPStatusCode": status}}, "GetSecretValue")


@mock_aws
@pytest.mark.parametrize("code, status", [("ThrottlingException", 400),
                                          ("InternalServiceError", 500),
                                          ("ServiceUnavailable", 503)])
def test_a_throttled_or_failing_secrets_manager_is_transient_naming_the_secret(
        monkeypatch, code, status):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    _secrets_manager_answers(_client_error(code, status))
    with pytest.raises(db.SecretsManagerBusyError) as raised:
        db.fetch_secret(MISSING_ARN, config.TOTESYS)
    message = str(raised.value)
    assert MISSING_ARN in message and code in message and "the next run" in message
    assert errors.kind_of(raised.value) == errors.TRANSIENT


@mock_aws
def test_a_connection_closed_before_secrets_manager_answered_is_transient(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    _secrets_manager_answers(botocore.exceptions.ConnectionClosedError(
        endpoint_url="https://secretsmanager.eu-west-2.amazonaws.com"))
    with pytest.raises(db.SecretsManagerUnreachableError) as raised:
        db.fetch_secret(MISSING_ARN, config.TOTESYS)
    assert errors.kind_of(raised.value) == errors.TRANSIENT


@mock_aws
def test_an_error_secrets_manager_never_meant_as_a_refusal_or_a_retry_stays_unexpected(
        monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    _secrets_manager_answers(_client_error("SomethingNewException", 400))
    with pytest.raises(parameters.exceptions.GetParameterError) as raised:
        db.fetch_secret(MISSING_ARN, config.TOTESYS)
    assert errors.kind_of(raised.value) == errors.UNEXPECTED


@mock_aws
def test_a_refused_login_whose_secret_read_again_is_throttled_is_retried_not_unexpected(
        monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    arn = boto3.client("secretsmanager").create_secret(
        Name="totes/throttled", SecretString=json.dumps(SECRET))["ARN"]
    db.fetch_secret(arn, config.TOTESYS)  # cached, as a warm container holds it
    refused = _secrets_manager_answers(_client_error("ThrottlingException", 400))
    monkeypatch.setattr(db, "_connect_through", _refused)
    with pytest.raises(db.SecretsManagerBusyError) as raised:
        db.connect(arn, database=config.TOTESYS)
    assert refused == [arn]  # the re-read after the refusal was the throttled call
    assert errors.kind_of(raised.value) == errors.TRANSIENT


@mock_aws
def test_a_refused_login_whose_pending_version_is_throttled_is_retried_not_paged(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    arn = boto3.client("secretsmanager").create_secret(
        Name="totes/rotating", SecretString=json.dumps(SECRET))["ARN"]
    refused = _secrets_manager_answers(_client_error("ThrottlingException", 400), "AWSPENDING")
    monkeypatch.setattr(db, "_connect_through", _refused)
    with pytest.raises(db.SecretsManagerBusyError) as raised:
        db.connect(arn, database=config.TOTESYS)
    assert refused == [arn]  # the current version was read twice; the pending one throttled
    assert errors.kind_of(raised.value) == errors.TRANSIENT


@mock_aws
def test_a_refused_login_without_a_pending_version_stays_the_refusal(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    arn = boto3.client("secretsmanager").create_secret(
        Name="totes/refused", SecretString=json.dumps(SECRET))["ARN"]
    monkeypatch.setattr(db, "_connect_through", _refused)
    with pytest.raises(db.LoginRefusedError) as raised:
        db.connect(arn, database=config.TOTESYS)
    assert errors.kind_of(raised.value) == errors.INPUT


def test_a_caller_can_give_statements_longer_than_the_connect_timeout():
    assert db.connection_kwargs(SECRET)["timeout"] == db.CONNECT_TIMEOUT_SECONDS
    assert db.connection_kwargs(SECRET, timeout=None)["timeout"] is None


def test_closing_a_broken_connection_never_hides_the_error_that_broke_it():
    class Broken:
        def close(self):
            raise pg8000.native.InterfaceError("network error")

    db.close_quietly(Broken())

    class Refusing:
        def close(self):
            raise ValueError("a bug, not a broken socket")

    with pytest.raises(ValueError):
        db.close_quietly(Refusing())


def test_the_layer_build_copies_the_whole_package_bundle_included():
    # shared/Makefile copies the totes folder as it is (rds-ca-bundle.pem with it) and strips
    # only other packages' files.
    recipe = (Path(db.__file__).parents[1] / "Makefile").read_text()
    assert 'cp -R "$(HERE)totes" "$(SITE)/totes"' in recipe
    deletions = [line for line in recipe.splitlines() if "rm -rf" in line]
    assert deletions and not any("totes" in line for line in deletions)
    assert db.LAYER_CA_BUNDLE.parent == Path(db.__file__).parent


RDS_MASTER_SECRET = {"username": "postgres", "password": "s3cr3t!"}


@pytest.fixture
def no_connection_fields(monkeypatch):
    for database in config.DATABASES:
        for field in config.CONNECTION_FIELDS:
            monkeypatch.delenv(database.variable(field), raising=False)
        monkeypatch.delenv(database.secret_variable, raising=False)


def test_a_master_secret_with_only_credentials_gets_where_from_the_environment(
        monkeypatch, no_connection_fields):
    monkeypatch.setenv("WAREHOUSE_HOST", "wh.example.com")
    monkeypatch.setenv("WAREHOUSE_PORT", "6543")
    monkeypatch.setenv("WAREHOUSE_DBNAME", "warehouse")
    merged = db.with_connection_fields(RDS_MASTER_SECRET, config.WAREHOUSE, "wh-secret")
    kwargs = db.connection_kwargs(merged)
    assert (kwargs["host"], kwargs["port"], kwargs["database"], kwargs["user"]) == (
        "wh.example.com", 6543, "warehouse", "postgres")


def test_the_environment_wins_over_the_secrets_own_fields(monkeypatch, no_connection_fields):
    monkeypatch.setenv("TOTESYS_DBNAME", "totesys_copy")
    merged = db.with_connection_fields(SECRET, config.TOTESYS, "ts-secret")
    assert (merged["host"], merged["port"], merged["dbname"]) == (
        "db.example.com", 5433, "totesys_copy")


def test_empty_variables_leave_the_secrets_fields(monkeypatch, no_connection_fields):
    monkeypatch.setenv("TOTESYS_HOST", "  ")
    assert db.with_connection_fields(SECRET, config.TOTESYS, "ts-secret") == SECRET


def test_a_field_neither_place_gives_is_named_with_both_places(no_connection_fields):
    with pytest.raises(db.SecretFormatError) as caught:
        db.with_connection_fields(RDS_MASTER_SECRET, config.TOTESYS, "ts-secret")
    message = str(caught.value)
    assert ('no host for the totesys database: put "host" in secret ts-secret or set '
            "TOTESYS_HOST (template parameter TotesysHost)") in message
    assert "TOTESYS_DBNAME (template parameter TotesysDatabase)" in message
    assert "s3cr3t!" not in message


def test_a_port_variable_that_is_not_a_number_is_refused(monkeypatch, no_connection_fields):
    monkeypatch.setenv("WAREHOUSE_PORT", "54x")
    with pytest.raises(config.ConfigurationError, match="WAREHOUSE_PORT must be a port number"):
        config.connection_fields(config.WAREHOUSE)


def test_a_statement_text_is_parsed_for_its_placeholders_once_per_process():
    text = "SELECT :first_value_unique_to_this_test, :second"
    before = pg8000.native.to_statement.cache_info()
    first = pg8000.native.to_statement(text)
    again = pg8000.native.to_statement(text)
    after = pg8000.native.to_statement.cache_info()
    assert again is first and first[0] == "SELECT $1, $2"
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert first[1]({"second": 2, "first_value_unique_to_this_test": 1}) == (1, 2)


def test_server_fields_reads_the_report_and_an_error_without_one_reads_as_empty():
    reported = pg8000.native.DatabaseError({"C": "42501", "M": "permission denied", "S": "ERROR"})
    assert db.server_fields(reported)["C"] == "42501"
    assert db.server_fields(reported)["M"] == "permission denied"
    assert db.server_fields(pg8000.native.DatabaseError("network error")) == {}
    assert db.server_fields(pg8000.native.DatabaseError()) == {}


def _server_error(**fields):
    return pg8000.native.DatabaseError({"S": "ERROR", **fields})


@pytest.mark.parametrize("error, said", [
    (_server_error(C="40001", M="canceling statement due to conflict with recovery",
                   D="User query might have needed to see row versions that must be removed."),
     "recovery conflict (or a serialization failure); SQLSTATE 40001: canceling statement due "
     "to conflict with recovery (User query might have needed to see row versions"),
    (_server_error(C="57P01", M="terminating connection due to administrator command"),
     "SQLSTATE 57P01: terminating connection due to administrator command"),
    (_server_error(C="57014", M="canceling statement due to statement timeout"),
     "statement_timeout"),
    (_server_error(C="25P03", M="terminating connection due to idle-in-transaction timeout"),
     "idle_in_transaction_session_timeout"),
    (_server_error(C="08006", M="connection failure"), "a connection failure; SQLSTATE 08006"),
    (pg8000.native.InterfaceError("network error"), "lost with no reason from the server"),
], ids=["recovery-conflict", "terminated", "statement-timeout", "idle-timeout", "class-08",
        "socket-closed"])
def test_a_server_that_ended_the_statement_or_session_is_a_transient_error_saying_why(
        error, said):
    interrupted = db.interruption(error, "totesys")
    assert isinstance(interrupted, db.SessionInterruptedError)
    assert errors.kind_of(interrupted) == errors.TRANSIENT
    assert said in str(interrupted) and "the next run retries" in str(interrupted)


def _timed_out():
    try:
        raise pg8000.native.InterfaceError("network error") from TimeoutError("timed out")
    except pg8000.native.InterfaceError as error:
        return error


@pytest.mark.parametrize("error", [
    _server_error(C="23505", M="duplicate key value violates unique constraint"),
    _server_error(C="42P01", M='relation "payment" does not exist'),
    pg8000.native.InterfaceError("connection is closed"),
    _timed_out(),
    KeyError("bug"),
], ids=["constraint", "missing-table", "closed-by-us", "own-deadline", "not-a-driver-error"])
def test_errors_about_the_request_or_the_callers_deadline_are_not_interruptions(error):
    assert db.interruption(error, "totesys") is None


def test_every_connection_asks_for_utf8_at_startup_over_any_role_or_database_setting():
    # A startup parameter outranks ALTER ROLE/DATABASE ... SET client_encoding.
    assert db.connection_kwargs(SECRET)["startup_params"] == {"client_encoding": "UTF8"}


@pytest.mark.parametrize("host", [
    "postgresql://etl:pw-unique-7@db.example.com:5432/totesys",   # a URL, password and all
    "jdbc:postgresql://db.example.com/totesys",
    "host=db.example.com password=pw-unique-7",                    # a libpq keyword string
    "etl@db.example.com",
])
def test_a_host_pasted_as_a_url_is_refused_naming_the_field_never_its_text(host):
    with pytest.raises(db.SecretFormatError, match='"host" is a URL or a connection string') \
            as caught:
        db.connection_kwargs({**SECRET, "host": host})
    assert "pw-unique-7" not in str(caught.value) and "db.example.com" not in str(caught.value)


def test_a_host_with_a_port_says_to_move_the_port_to_its_own_field():
    with pytest.raises(db.SecretFormatError, match=r'"host" ends in a port \(:5432\).*"port"'):
        db.connection_kwargs({**SECRET, "host": "db.example.com:5432"})


def test_white_space_around_a_host_is_dropped_and_inside_it_refused():
    assert db.connection_kwargs({**SECRET, "host": " db.example.com\n"})["host"] == "db.example.com"
    with pytest.raises(db.SecretFormatError, match='"host" contains white space'):
        db.connection_kwargs({**SECRET, "host": "db.example .com"})


def test_an_ipv6_address_is_a_host_not_a_host_with_a_port():
    assert db.connection_kwargs({**SECRET, "host": "fd00::5432"})["host"] == "fd00::5432"


@pytest.mark.parametrize("port, expected", [("5432", 5432), (" 6543 ", 6543), (6543, 6543),
                                            (65535, 65535), (5432.0, 5432)])
def test_a_port_stored_as_text_or_number_works(port, expected):
    assert db.connection_kwargs({**SECRET, "port": port})["port"] == expected


def test_a_port_a_tool_wrote_as_a_whole_json_float_is_that_port():
    secret = json.loads('{"host": "db.example.com", "port": 5432.0, "username": "u", '
                        '"dbname": "d"}')
    assert db.connection_kwargs(secret)["port"] == 5432
    assert isinstance(db.connection_kwargs(secret)["port"], int)


@pytest.mark.parametrize("host", ["db.example.internal.", "my_db.internal", "_pg.db.internal"])
def test_a_host_as_private_dns_names_it_is_kept_as_given(host):
    assert db.connection_kwargs({**SECRET, "host": host})["host"] == host


@pytest.mark.parametrize("port", [0, 65536, "99999", -1, True, 5432.5, "5432.0", "５４３２",
                                  65536.0, 0.0, float("nan"), float("inf")])
def test_a_port_out_of_range_is_refused_naming_the_field(port):
    with pytest.raises(db.SecretFormatError, match='"port" is not a port number from 1 to 65535'):
        db.connection_kwargs({**SECRET, "port": port})


def test_a_port_variable_out_of_range_is_refused_naming_the_variable_and_parameter(
        monkeypatch, no_connection_fields):
    monkeypatch.setenv("TOTESYS_PORT", "65536")
    with pytest.raises(db.SecretFormatError, match=r"totesys database's port from TOTESYS_PORT "
                                                   r"\(template parameter TotesysPort\) is not"):
        db.with_connection_fields(SECRET, config.TOTESYS, "ts-secret")


def test_a_url_in_the_secrets_host_is_named_in_the_secret(no_connection_fields):
    with pytest.raises(db.SecretFormatError, match='host from "host" in secret ts-secret is a URL'):
        db.with_connection_fields({**SECRET, "host": "postgres://db.example.com/totesys"},
                                  config.TOTESYS, "ts-secret")


@pytest.mark.parametrize("host", ["10.0.1.5.", "127.0.0.1.", "::1.", "fd00:ec2::23."])
def test_an_ip_address_with_a_final_dot_is_refused_naming_the_field(host, no_connection_fields):
    with pytest.raises(db.SecretFormatError, match="is an IP address with a final dot"):
        db.with_connection_fields({**SECRET, "host": host}, config.TOTESYS, "ts-secret")


@pytest.mark.parametrize("stored, field", [("database", "dbname"), ("user", "username"),
                                           ("Host", "host"), ("endpoint", "host")])
def test_a_field_stored_under_another_name_says_which_key_to_rename(
        no_connection_fields, stored, field):
    secret = {**SECRET, stored: SECRET.get(field, "x")}
    del secret[field]
    with pytest.raises(db.SecretFormatError,
                       match=f'no {field} .* \\(the secret has "{stored}": the key must be '
                             f'"{field}"\\)'):
        db.with_connection_fields(secret, config.TOTESYS, "ts-secret")
    with pytest.raises(db.SecretFormatError, match=f'lacks {field} \\(the secret has "{stored}"'):
        db.connection_kwargs(secret)


def test_a_password_or_username_stored_as_a_json_integer_is_sent_as_its_digits():
    kwargs = db.connection_kwargs({**SECRET, "username": 1001, "password": 12345678})
    assert (kwargs["user"], kwargs["password"]) == ("1001", "12345678")


@pytest.mark.parametrize("value", [1234.5, ["pw"], True])
def test_a_password_that_is_no_json_string_or_integer_is_refused_naming_the_field(value):
    with pytest.raises(db.SecretFormatError, match='"password" is a JSON .*, not a string') \
            as caught:
        db.connection_kwargs({**SECRET, "password": value})
    assert "1234.5" not in str(caught.value)


def test_a_database_that_never_answers_says_what_a_vpc_needs(silent_endpoint):
    host, port = silent_endpoint.removeprefix("http://").split(":")
    started = time.monotonic()
    with pytest.raises(db.DatabaseUnavailableError,
                       match=r"no answer within 1 s: .*SubnetIds and SecurityGroupIds") as caught:
        db.connect_with({**SECRET, "host": host, "port": port, "sslmode": "disable"}, "test",
                        timeout=1)
    assert time.monotonic() - started < 10
    assert errors.kind_of(caught.value) == errors.TRANSIENT
    assert "s3cr3t!" not in str(caught.value)


def _refused(*_args: object) -> None:
    raise db.LoginRefusedError('password authentication failed for user "etl" (SQLSTATE 28P01)')


def test_a_refused_login_whose_secret_cannot_be_read_again_for_now_is_retried_not_paged(
        monkeypatch):
    def fetch(secret_id, database=None, *, renew=False):
        if renew:  # the re-read after the refusal: Secrets Manager did not answer this time
            raise db.SecretsManagerUnreachableError("Secrets Manager did not answer")
        return {**SECRET, "password": "stale"}

    monkeypatch.setattr(db, "fetch_secret", fetch)
    monkeypatch.setattr(db, "_connect_through", _refused)
    with pytest.raises(db.SecretsManagerUnreachableError) as caught:
        db.connect("s")
    assert errors.kind_of(caught.value) == errors.TRANSIENT


def test_a_pending_version_that_times_out_once_is_retried_not_paged(monkeypatch):
    cached, pending = {**SECRET, "password": "stale"}, {**SECRET, "password": "new"}
    monkeypatch.setattr(db, "fetch_secret", lambda *_args, **_options: cached)
    monkeypatch.setattr(db, "_pending_secret", lambda _secret_id: pending)

    def connect_through(chosen, *_args):
        if chosen is pending:  # the right password, but this connect timed out
            raise db.DatabaseUnavailableError("timed out connecting to db.example.com:5432")
        _refused()

    monkeypatch.setattr(db, "_connect_through", connect_through)
    with pytest.raises(db.DatabaseUnavailableError) as caught:
        db.connect("s")
    assert errors.kind_of(caught.value) == errors.TRANSIENT
