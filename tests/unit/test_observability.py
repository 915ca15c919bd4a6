import json

from aws_lambda_powertools.metrics import MetricUnit

from totes import observability
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
