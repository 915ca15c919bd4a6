"""Metrics and alarms are scoped by stack; the log level parameter reaches Powertools.

A second stack in the same account and region (a `sam sync` dev stack) must neither
trip nor satisfy production's alarms, so each stack's functions emit into their own
namespace, ``TotesPipeline/<stack name>``, and every custom-metric alarm, metric
filter and dashboard widget reads that namespace. The Powertools checks run in a
fresh interpreter, because Powertools configures a service's logger once per process.
"""
import json
import os
import re
import subprocess  # nosec B404
import sys

import pytest

from test_template import GLOBALS, STACK_NAMESPACE, alarms, resources_of

NAMESPACE_TEXT = STACK_NAMESPACE["Fn::Sub"]


def for_stack(value: dict, stack: str) -> str:
    """Evaluate a ``!Sub`` namespace expression for a stack name."""
    return value["Fn::Sub"].replace("${AWS::StackName}", stack)


def test_functions_emit_into_a_namespace_named_after_their_stack():
    emitted = GLOBALS["Environment"]["Variables"]["POWERTOOLS_METRICS_NAMESPACE"]
    assert for_stack(emitted, "totes-pipeline") == "TotesPipeline/totes-pipeline"
    assert for_stack(emitted, "totes-dev") != for_stack(emitted, "totes-pipeline")


def watched_namespaces(alarm: dict) -> list:
    """The namespaces an alarm reads: its metric's, or each metric a metric-math alarm reads."""
    if "Metrics" in alarm:
        return [query["MetricStat"]["Metric"]["Namespace"] for query in alarm["Metrics"]
                if "MetricStat" in query]
    return [alarm["Namespace"]]


def test_every_custom_metric_alarm_watches_its_own_stacks_namespace():
    custom = {(name, index): namespace for name, alarm in alarms().items()
              for index, namespace in enumerate(watched_namespaces(alarm))
              if not (isinstance(namespace, str) and namespace.startswith("AWS/"))}
    assert len(custom) >= 6  # freshness, ingest not running, three error-log alarms, lake lag
    assert ("LakeLagAlarm", 0) in custom
    for name, namespace in custom.items():
        assert namespace == STACK_NAMESPACE, name


def test_error_log_metric_filters_publish_into_the_stacks_namespace():
    filters = resources_of("AWS::Logs::MetricFilter").values()
    assert filters
    for metric_filter in filters:
        for transformation in metric_filter["Properties"]["MetricTransformations"]:
            assert transformation["MetricNamespace"] == STACK_NAMESPACE


def test_the_dashboard_reads_only_its_own_stacks_custom_metrics():
    (board,) = resources_of("AWS::CloudWatch::Dashboard").values()
    body = board["Properties"]["DashboardBody"]["Fn::Sub"]
    namespaces = re.findall(r'\["(?!AWS/)([^"]+)", "[A-Za-z]+", "service"', body)
    assert namespaces and set(namespaces) == {NAMESPACE_TEXT}
    searches = re.findall(r"SEARCH\('\{([^,]+),", body)
    assert searches and set(searches) == {f'\\"{NAMESPACE_TEXT}\\"'}
    assert "TotesPipeline," not in body and '"TotesPipeline"' not in body


def run_with(env: dict[str, str], code: str) -> str:
    """Run ``code`` in a fresh interpreter with the pipeline's import path and ``env``."""
    result = subprocess.run(  # nosec B603
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
        env={**{key: value for key, value in os.environ.items()
                if not key.startswith(("POWERTOOLS_", "LOG_LEVEL"))}, **env})
    return result.stdout


def test_powertools_emits_into_the_namespace_the_template_sets():
    code = ("from totes import observability\n"
            "m = observability.metrics_for()\n"
            "m.add_metric(name='IngestRuns', unit='Count', value=1)\n"
            "m.flush_metrics()\n"
            "observability.emit_table_metric('RowsIngested', 'staff', 3)\n")
    lines = [json.loads(line) for line in run_with(
        {"POWERTOOLS_METRICS_NAMESPACE": "TotesPipeline/totes-dev"}, code).splitlines()]
    assert [line["_aws"]["CloudWatchMetrics"][0]["Namespace"] for line in lines] == [
        "TotesPipeline/totes-dev"] * 2


@pytest.mark.parametrize("level", ["DEBUG", "WARNING"])
def test_the_log_level_parameter_reaches_the_powertools_logger(level):
    assert GLOBALS["Environment"]["Variables"]["POWERTOOLS_LOG_LEVEL"] == {"Ref": "LogLevel"}
    code = ("import logging\nfrom totes import observability\n"
            "print(logging.getLevelName(observability.service_logger().log_level))\n")
    assert run_with({"POWERTOOLS_LOG_LEVEL": level}, code).strip() == level
