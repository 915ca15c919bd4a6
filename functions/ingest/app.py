"""Ingest Lambda: on every scheduled tick, copy what changed in totesys to the ingestion bucket.

Thin on purpose: the work is :func:`totes.ingest.run_ingest`. The handler adds
the Lambda context to every log line and publishes the run-level metrics, among
them ``IngestBacklog`` (1 while a backfill is still draining over runs) and
``IngestRowsStampedInFuture`` (alarmed: rows whose stamp is ahead of the source's clock); a
failure propagates (after the library logged it) so Lambda counts an error.
"""
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import observability
from totes.ingest import IngestSummary, run_ingest

logger = observability.service_logger()
metrics = observability.metrics_for()


@observability.instrument("ingest", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> IngestSummary:
    """Run one ingest and return its run id, manifest key, rows per table and completeness."""
    # A backfill's first COPY sorts every row it returns: no wait outlives the invocation.
    result = run_ingest(db_timeout=context.get_remaining_time_in_millis() / 1000)
    metrics.add_metric(name="IngestRuns", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="IngestRowsTotal", unit=MetricUnit.Count, value=result.total_rows)
    metrics.add_metric(name="IngestRunDuration", unit=MetricUnit.Milliseconds,
                       value=result.duration_ms)
    metrics.add_metric(name="IngestBacklog", unit=MetricUnit.Count,
                       value=0 if result.complete else 1)
    metrics.add_metric(name="IngestRowsStampedInFuture", unit=MetricUnit.Count,
                       value=sum(result.stamped_in_future.values()))
    metrics.add_metric(name="IngestRowsDeleted", unit=MetricUnit.Count,
                       value=sum(result.deleted.values()))
    return result.summary()
