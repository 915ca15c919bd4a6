"""One stage shape: settings read once, a deadline, a report published the same way."""
import json

import pytest
from aws_lambda_powertools.metrics import MetricUnit

from totes import stage
from totes.config import ConfigurationError, require_env
from totes.observability import metrics_for
from totes_local.runner import LambdaContext


class Report:
    """A stage report with one run metric and one table metric."""

    def metrics(self):
        yield stage.Metric("Runs", 1)
        yield stage.Metric("RowsSeen", 4, MetricUnit.Count, table="payment")

    def response(self):
        return {"ok": True}


def test_publishing_a_report_emits_its_metrics_and_returns_its_response(capsys):
    assert stage.publish(Report()) == {"ok": True}
    metrics_for().flush_metrics()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith('{"_aws"')]
    assert any(line.get("table") == "payment" and line["RowsSeen"] in (4.0, [4.0])
               for line in lines)
    assert any(line.get("Runs") in (1.0, [1.0]) for line in lines)


def test_the_deadline_is_the_invocation_s_remaining_time():
    assert 0 < stage.Deadline.from_context(LambdaContext("f")).remaining() <= 900
    assert stage.Deadline.unbounded().remaining() == stage.UNBOUNDED_SECONDS


def test_a_bad_environment_is_logged_once_as_the_stage_s_failure(monkeypatch, captured_logs):
    monkeypatch.delenv("TOTES_NOT_SET", raising=False)
    with pytest.raises(ConfigurationError, match="TOTES_NOT_SET"):
        stage.read_settings(lambda: require_env("TOTES_NOT_SET"), "stage failed", manifest="m")
    [line] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert line["message"] == "stage failed" and line["manifest"] == "m"
    assert "TOTES_NOT_SET" in line["exception"]
