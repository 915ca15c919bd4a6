"""The ingest Lambda as AWS runs it: response, metrics, failures, secrets, layer-only imports."""
import json
import os
import subprocess  # nosec B404: runs this repository's own handler in a clean interpreter
import sys
import sysconfig
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from totes import config, db, ingest, stage, storage
from totes.source import SOURCE_TABLES
from totes_local import runner, stack

from test_ingest import seed_one_of_each

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "Pw-7f3a91c2-never-log-me"


@pytest.fixture
def handler():
    """The ingest handler, loaded from functions/ingest/app.py the way Lambda loads it."""
    return runner.load_handler("ingest")


def context():
    """A Lambda context object like the one the runtime passes."""
    return runner.LambdaContext(function_name="totes-ingest")


def emf_documents(output):
    """The CloudWatch EMF documents among printed lines."""
    documents = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [document for document in documents if "_aws" in document]


def test_handler_returns_the_run_summary_and_publishes_run_metrics(
        handler, source_db, aws, capsys):
    seed_one_of_each(source_db)

    response = handler({"source": "aws.scheduler"}, context())

    assert response["manifest_key"] == storage.latest_manifest_key(aws["INGEST_BUCKET"])
    assert response["rows"] == {table: 1 for table in SOURCE_TABLES}
    assert response["total_rows"] == 11 and response["run_id"] in response["manifest_key"]
    assert response["complete"] is True
    documents = emf_documents(capsys.readouterr().out)
    [run] = [document for document in documents if "IngestRuns" in document]
    assert (run["IngestRuns"], run["IngestRowsTotal"], run["IngestBacklog"]) == (
        [1.0], [11.0], [0.0])
    assert run["IngestRunDuration"][0] > 0 and "table" not in run
    units = {metric["Name"]: metric["Unit"]
             for metric in run["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units["IngestRunDuration"] == "Milliseconds"
    per_table = {document["table"]: document["RowsIngested"]
                 for document in documents if "RowsIngested" in document}
    assert per_table == {table: [1.0] for table in SOURCE_TABLES}


def socket_timeouts(monkeypatch):
    """Record the socket timeout of every connection the pipeline opens."""
    connect, timeouts = db.connect, []

    def recording(*args, **kwargs):
        conn = connect(*args, **kwargs)
        timeouts.append(conn._usock.gettimeout())
        return conn

    monkeypatch.setattr(db, "connect", recording)
    return timeouts


def test_statements_may_run_for_the_invocation_s_remaining_time(
        handler, source_db, aws, monkeypatch):
    timeouts = socket_timeouts(monkeypatch)
    seed_one_of_each(source_db)

    handler({}, runner.LambdaContext(function_name="totes-ingest", timeout_seconds=120))

    assert len(timeouts) == 2   # the reading's and, beside it, the first run's key sweep's
    assert all(100 < timeout <= 120 for timeout in timeouts)


def test_outside_lambda_statements_may_run_as_long_as_a_lambda_could(
        source_db, aws, monkeypatch):
    timeouts = socket_timeouts(monkeypatch)

    ingest.run_ingest()

    assert timeouts == [stage.UNBOUNDED_SECONDS] * 2


def test_a_run_cut_by_its_row_budget_reports_a_backlog(
        handler, source_db, aws, monkeypatch, capsys):
    seed_one_of_each(source_db)
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "5")

    response = handler({}, context())

    assert (response["total_rows"], response["complete"]) == (5, False)
    [run] = [document for document in emf_documents(capsys.readouterr().out)
             if "IngestRuns" in document]
    assert run["IngestBacklog"] == [1.0]


def test_logs_say_what_each_table_and_the_run_wrote(handler, source_db, aws, captured_logs):
    seed_one_of_each(source_db)

    response = handler({}, context())

    lines = captured_logs()
    tables = {line["table"]: line for line in lines if line["message"] == "table extracted"}
    assert set(tables) == set(SOURCE_TABLES)
    assert all(line["rows"] == 1 and line["files"] == 1 and line["bytes"] > 0
               for line in tables.values())
    [summary] = [line for line in lines if line["message"] == "ingest run committed"]
    assert summary["manifest_key"] == response["manifest_key"] and summary["rows"] == 11
    assert summary["function_name"] == "totes-ingest"


def test_database_password_never_reaches_the_logs(
        handler, source_db, postgres, aws, monkeypatch, captured_logs, capsys):
    seed_one_of_each(source_db)
    dbname = source_db.run("SELECT current_database()")[0][0]
    source_db.run(f"CREATE ROLE ingest_{dbname} LOGIN PASSWORD '{PASSWORD}'")
    source_db.run(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO ingest_{dbname}")
    secret = {**postgres.secret(dbname), "username": f"ingest_{dbname}", "password": PASSWORD}
    stack.provision({aws["TOTESYS_SECRET_ID"]: secret}, buckets=())
    handler({}, context())
    wrong_database = aws["TOTESYS_SECRET_ID"] + "-wrong-db"
    stack.provision({wrong_database: {**secret, "dbname": "no_such_db"}}, buckets=())
    monkeypatch.setenv("TOTESYS_SECRET_ID", wrong_database)

    with pytest.raises(db.DatabaseUnavailableError):
        handler({}, context())

    printed = json.dumps(captured_logs()) + capsys.readouterr().out
    assert "ingest run failed" in printed and "ingest run committed" in printed
    assert PASSWORD not in printed


def _missing_variable(aws, monkeypatch, tmp_path):
    monkeypatch.delenv("TOTESYS_SECRET_ID")


def _secret_not_json(aws, monkeypatch, tmp_path):
    boto3.client("secretsmanager").create_secret(
        Name=aws["TOTESYS_SECRET_ID"], SecretString='{"host": "db", "password": ')


def _database_unreachable(aws, monkeypatch, tmp_path):
    stack.provision({aws["TOTESYS_SECRET_ID"]: {
        "host": str(tmp_path), "port": 5999, "username": "etl", "password": PASSWORD,
        "dbname": "totesys"}}, buckets=())


@pytest.mark.parametrize("break_it, error, cause", [
    (_missing_variable, config.ConfigurationError, "TOTESYS_SECRET_ID is required"),
    (_secret_not_json, db.SecretFormatError, "is not valid JSON"),
    (_database_unreachable, db.DatabaseUnavailableError, "cannot connect to database totesys"),
], ids=["missing-env-var", "secret-not-json", "database-unreachable"])
def test_failures_are_logged_with_their_cause_raised_and_commit_nothing(
        handler, aws, monkeypatch, tmp_path, captured_logs, break_it, error, cause):
    break_it(aws, monkeypatch, tmp_path)

    with pytest.raises(error, match=cause):
        handler({}, context())

    [failure] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert failure["message"].startswith("ingest run failed") and cause in failure["exception"]
    assert PASSWORD not in json.dumps(failure)
    assert list(storage.list_keys(aws["INGEST_BUCKET"], "")) == []


def test_missing_bucket_is_an_s3_error_logged_and_raised(
        handler, source_db, aws, monkeypatch, captured_logs):
    monkeypatch.setenv("INGEST_BUCKET", aws["INGEST_BUCKET"] + "-gone")

    with pytest.raises(ClientError, match="NoSuchBucket"):
        handler({}, context())

    [failure] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert "NoSuchBucket" in failure["exception"]


LAMBDA_SCRIPT = """
import importlib.abc, json, sys

class NotInTheLambda(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"totes_local", "pandas", "pyarrow", "numpy"}:
            raise ImportError(name + " is not deployed with the ingest function")

sys.meta_path.insert(0, NotInTheLambda())

class Context:
    function_name = "totes-ingest"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:eu-west-2:000000000000:function:totes-ingest"
    aws_request_id = "subprocess-test"

    def get_remaining_time_in_millis(self):
        return 180_000

import app, totes
response = app.lambda_handler({}, Context())
print("RESULT " + json.dumps({"response": response, "totes": totes.__file__,
      "modules": sorted(name for name in sys.modules
                        if name.partition(".")[0] in {"totes_local", "pandas", "pyarrow"})}))
"""


def test_handler_runs_with_only_the_layer_and_its_own_folder_on_the_path(source_db, aws):
    seed_one_of_each(source_db)
    path = os.pathsep.join([str(REPO / "functions" / "ingest"), str(REPO / "shared"),
                            sysconfig.get_paths()["purelib"]])
    # -S: no site processing, so neither the editable install nor any .pth adds local/.
    completed = subprocess.run(  # nosec B603: fixed argv, this interpreter
        [sys.executable, "-S", "-c", LAMBDA_SCRIPT], cwd="/",
        env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0, completed.stderr
    [result] = [json.loads(line[len("RESULT "):]) for line in completed.stdout.splitlines()
                if line.startswith("RESULT ")]
    assert result["modules"] == []
    assert result["totes"] == str(REPO / "shared" / "totes" / "__init__.py")
    assert result["response"]["total_rows"] == 11
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == result["response"]["manifest_key"]
