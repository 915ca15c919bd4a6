"""Every metric the template alarms on or charts is one the handlers really emit, as emitted.

A renamed metric or an extra dimension would leave the template valid but the
dashboard blank and the freshness alarm permanently firing: only running the
handlers and reading their EMF output shows it.
"""
import json
import re
from pathlib import Path

import pytest
from cfnlint.decode import cfn_yaml

from totes import keys, observability, storage
from totes.load import LoadError
from totes.transform import TransformInputError
from totes_local.runner import s3_object_created_event

TEMPLATE_PATH = Path(__file__).resolve().parents[2] / "template.yaml"
#: metrics published only by log-based capture, not by this snapshot-mode cycle.
LOGICAL_ONLY = {"ReplicationSlotLagBytes"}
#: the template scopes the namespace to the stack; the handlers read it from the environment.
STACK_NAMESPACE = observability.DEFAULT_NAMESPACE + "/${AWS::StackName}"
SEARCH = re.compile(r"SEARCH\('\{\\\"" + re.escape(STACK_NAMESPACE)
                    + r"\\\",([\w,]+)\} MetricName=\\?\"(\w+)\\?\"")
METRIC_ROW = re.compile(r'\["' + re.escape(STACK_NAMESPACE) + r'", "(\w+)"((?:, "[\w-]+")*)')


def watched_metrics() -> set[tuple[str, frozenset]]:
    """(metric, dimension names) pairs the template's alarms and dashboard read from our code."""
    text = TEMPLATE_PATH.read_text()
    resources = cfn_yaml.load(str(TEMPLATE_PATH))["Resources"]
    from_log_filters = {transformation["MetricName"]
                        for resource in resources.values()
                        if resource["Type"] == "AWS::Logs::MetricFilter"
                        for transformation in resource["Properties"]["MetricTransformations"]}
    alarmed = [props for props in (r["Properties"] for r in resources.values()
                                   if r["Type"] == "AWS::CloudWatch::Alarm")]
    # An alarm on one metric names it; a metric-math alarm names each metric it reads.
    alarmed += [query["MetricStat"]["Metric"] for props in alarmed
                for query in props.get("Metrics", ()) if "MetricStat" in query]
    watched = {(props["MetricName"], frozenset(d["Name"] for d in props.get("Dimensions", ())))
               for props in alarmed if props.get("Namespace") == {"Fn::Sub": STACK_NAMESPACE}}
    watched |= {(name, frozenset(dimensions.split(",")))
                for dimensions, name in SEARCH.findall(text)}
    for name, pairs in METRIC_ROW.findall(text):
        values = re.findall(r'"([\w-]+)"', pairs)
        watched.add((name, frozenset(values[0::2])))
    return {(name, dims) for name, dims in watched if name not in from_log_filters}


def emitted_metrics(stdout: str) -> set[tuple[str, frozenset]]:
    """(metric, dimension names) pairs in the EMF lines the handlers printed."""
    emitted = set()
    for line in stdout.splitlines():
        if not line.startswith('{"_aws"'):
            continue
        for directive in json.loads(line)["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == observability.DEFAULT_NAMESPACE
            for dimensions in directive["Dimensions"]:
                emitted |= {(metric["Name"], frozenset(dimensions))
                            for metric in directive["Metrics"]}
    return emitted


def test_template_watches_only_metrics_the_handlers_emit(e2e, capsys):
    capsys.readouterr()
    # An object off the layout where the stages list manifests, so StrayObjects is seen.
    storage.put_new_json(e2e.env["INGEST_BUCKET"], "_manifests/notes.json", {"note": "mine"})
    e2e.pipeline.cycle()
    e2e.pipeline.publish()  # a lake with a capture point, so the audit measures its lag
    e2e.pipeline.audit()
    # An input error (a malformed manifest), so the metric only failures emit is seen too.
    bad = keys.manifest_key(keys.new_run_id())
    storage.put_new_json(e2e.env["INGEST_BUCKET"], bad, {"format": "not a manifest"})
    with pytest.raises(TransformInputError):
        e2e.pipeline.invoke("transform", s3_object_created_event(e2e.env["INGEST_BUCKET"], bad))
    # ... and a processed manifest the load cannot read, so it reports itself stuck too.
    storage.put_new_json(e2e.env["PROCESSED_BUCKET"], bad, {"format": "totes.processed/2"})
    with pytest.raises(LoadError):
        e2e.pipeline.load()
    # Emitted only with CAPTURE_MODE=logical: tests/e2e/test_logical.py checks it.
    watched = {metric for metric in watched_metrics() if metric[0] not in LOGICAL_ONLY}
    assert {"FreshnessSeconds", "RowsLoaded", "IngestRuns", "RowsIngested",
            "IngestRowsStampedInFuture", "InputErrors", "AuditMismatches",
            "AuditInFlight", "LakeLagSeconds"} <= {name for name, _ in watched}
    assert watched <= emitted_metrics(capsys.readouterr().out)
