"""Ingest Lambda: on every scheduled tick, copy what changed in totesys to the ingestion bucket.

Thin on purpose, like every stage's handler: settings from the environment,
:func:`totes.ingest.run_ingest` until the invocation's deadline, the report
published (rows per table, ``IngestBacklog`` while a backfill drains over runs,
``IngestRowsStampedInFuture``, which is alarmed). A failure propagates (after the
library logged it) so Lambda counts an error.
"""
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import observability, stage
from totes.capture_mode import IngestSettings
from totes.ingest import IngestSummary, Progress, run_ingest

logger = observability.service_logger()
metrics = observability.metrics_for()


@observability.instrument("ingest", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> IngestSummary:
    """Run one ingest and return its run id, manifest key, rows per table and completeness."""
    settings = stage.read_settings(IngestSettings.from_environment, Progress.EXTRACTING.value)
    report = run_ingest(settings, stage.Deadline.from_context(context))
    summary: IngestSummary = stage.publish(report)
    return summary
