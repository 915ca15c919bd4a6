"""Structured logs and CloudWatch metrics, set up the same way for every function.

Service name and metrics namespace come from the Powertools variables
(``POWERTOOLS_SERVICE_NAME``, ``POWERTOOLS_METRICS_NAMESPACE``) that the template
sets in Globals; the defaults keep local runs and tests working without them.
Per-table metrics use ``single_metric`` so each carries its own ``table``
dimension instead of leaking it onto the run-level metrics.
"""
import os

from aws_lambda_powertools import Logger, Metrics, single_metric
from aws_lambda_powertools.metrics import MetricUnit

DEFAULT_SERVICE = "totes"
DEFAULT_NAMESPACE = "TotesPipeline"


def _service() -> str:
    return os.environ.get("POWERTOOLS_SERVICE_NAME", DEFAULT_SERVICE)


def _namespace() -> str:
    return os.environ.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE)


def logger_for(stage: str) -> Logger:
    """Return the Powertools logger for a pipeline stage (ingest, transform or load)."""
    return Logger(service=_service(), stage=stage)


def metrics_for() -> Metrics:
    """Return the run-level EMF metrics object (flushed by the handler decorator)."""
    return Metrics(namespace=_namespace(), service=_service())


def emit_table_metric(name: str, table: str, value: float,
                      unit: str = MetricUnit.Count) -> None:
    """Emit one metric dimensioned by table (e.g. ``RowsIngested`` for ``sales_order``)."""
    with single_metric(name=name, unit=unit, value=value, namespace=_namespace(),
                       default_dimensions={"service": _service()}) as metric:
        metric.add_dimension(name="table", value=table)
