import json
import sys

import pytest
from aws_lambda_powertools.metrics import MetricUnit

from totes import observability
from totes.config import ConfigurationError
from totes.db import DatabaseUnavailableError
from totes_local.runner import LambdaContext


def handler_for(stage):
    logger = observability.service_logger()
    metrics = observability.metrics_for()

    @observability.instrument(stage, logger, metrics)
    def handler(event, context):
        logger.info("working")
        metrics.add_metric(name="Runs", unit=MetricUnit.Count, value=1)
        return stage

    return handler


def test_each_invocation_logs_its_own_stage_when_functions_share_a_process(request):
    ingest, load = handler_for("ingest"), handler_for("load")
    captured_logs = request.getfixturevalue("captured_logs")
    assert ingest({}, LambdaContext("totes-ingest")) == "ingest"
    assert load({}, LambdaContext("totes-load")) == "load"
    lines = [line for line in captured_logs() if line["message"] == "working"]
    assert [(line["stage"], line["function_name"]) for line in lines] == [
        ("ingest", "totes-ingest"), ("load", "totes-load")]


def test_metrics_are_flushed_as_emf_when_the_handler_returns(capsys):
    handler_for("transform")({}, LambdaContext("totes-transform"))
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith('{"_aws"')]
    assert emitted and emitted[-1]["Runs"] in (1.0, [1.0])


def test_table_metrics_carry_their_table_dimension(capsys):
    observability.emit_table_metric("RowsIngested", "sales_order", 7)
    [line] = [json.loads(line) for line in capsys.readouterr().out.splitlines()
              if line.startswith('{"_aws"')]
    assert line["table"] == "sales_order" and line["RowsIngested"] in (7.0, [7.0])
    assert line["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "TotesPipeline"


def failing_handler(error):
    """A handler that fails with ``error``, wrapped like every function's."""
    logger, metrics = observability.service_logger(), observability.metrics_for()

    @observability.instrument("load", logger, metrics)
    def handler(event, context):
        raise error

    return handler


def test_a_failure_a_person_must_fix_is_logged_as_input_and_counted(capsys, captured_logs):
    with pytest.raises(ConfigurationError):
        failing_handler(ConfigurationError("INGEST_BUCKET is required"))(
            {}, LambdaContext("totes-load"))

    [line] = [line for line in captured_logs() if line["message"].startswith("invocation failed")]
    assert line["error_kind"] == "input" and line["error_class"] == "ConfigurationError"
    assert "a person must act" in line["message"]
    emitted = [json.loads(text) for text in capsys.readouterr().out.splitlines()
               if text.startswith('{"_aws"')]
    assert emitted and emitted[-1]["InputErrors"] in (1.0, [1.0])


def test_a_transient_failure_says_the_next_run_retries_and_is_not_counted(capsys, captured_logs):
    with pytest.raises(DatabaseUnavailableError):
        failing_handler(DatabaseUnavailableError("connection refused"))(
            {}, LambdaContext("totes-load"))

    [line] = [line for line in captured_logs() if line["message"].startswith("invocation failed")]
    assert line["error_kind"] == "transient" and "the next run retries" in line["message"]
    assert "InputErrors" not in capsys.readouterr().out


@pytest.fixture
def fresh_process(monkeypatch):
    """As a new Lambda container: no package of the pandas layer compared yet."""
    monkeypatch.setattr(observability, "_compared", set())


def untested_version_lines(captured_logs):
    return [line for line in captured_logs() if "not the versions" in line["message"]]


def test_a_pandas_layer_of_another_release_is_warned_of_once_naming_both_versions(
        monkeypatch, fresh_process, captured_logs):
    import pyarrow
    monkeypatch.setattr(pyarrow, "__version__", "22.0.0")
    handler = handler_for("load")
    handler({}, LambdaContext("totes-load"))
    handler({}, LambdaContext("totes-load"))
    [line] = untested_version_lines(captured_logs)
    assert line["level"] == "WARNING"
    assert "pyarrow 22.0.0 (tested 20.0.0)" in line["message"]
    assert "PandasLayerArn" in line["message"]
    assert line["untested_versions"] == {"pyarrow": "22.0.0"}


def test_the_pinned_versions_are_the_tested_ones_and_warn_of_nothing(
        fresh_process, captured_logs):
    import numpy
    import pandas
    import pyarrow
    handler_for("transform")({}, LambdaContext("totes-transform"))
    assert untested_version_lines(captured_logs) == []
    assert {"pandas": pandas.__version__, "numpy": numpy.__version__,
            "pyarrow": pyarrow.__version__} == observability.TESTED_VERSIONS


def test_a_package_not_imported_is_neither_imported_nor_compared(monkeypatch, fresh_process):
    monkeypatch.delitem(sys.modules, "numpy", raising=False)
    observability.warn_of_untested_versions(observability.service_logger())
    assert "numpy" not in sys.modules and "numpy" not in observability._compared
