"""Transform Lambda: on every new ingest manifest, bring the Parquet star schema up to date.

Thin on purpose, like every stage's handler: settings from the environment, the
S3 event's keys (decoded, other buckets' set apart and ignored with a warning:
:mod:`totes.s3_events`), :func:`totes.transform.run_transform`, the report
published. A failure propagates (after the library logged it with the object key)
so Lambda retries and the error alarm fires.
"""
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import observability, s3_events, stage
from totes.transform import NOTHING_COMMITTED, TransformSettings, run_transform

logger = observability.service_logger()
metrics = observability.metrics_for()


@observability.instrument("transform", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, list[str]]:
    """Transform the manifests the event names (and any earlier ones still pending)."""
    named = s3_events.event_keys(event)
    settings = stage.read_settings(TransformSettings.from_environment, NOTHING_COMMITTED,
                                   manifest=named[0] if named else None)
    own, foreign = s3_events.split_by_bucket(event, settings.ingest_bucket)
    for url in foreign:
        logger.warning("event record from a bucket other than the ingestion bucket; ignored",
                       extra={"object": url, "ingest_bucket": settings.ingest_bucket})
    report = run_transform(settings, own, stage.Deadline.from_context(context))
    report.ignored[:0] = foreign
    summary: dict[str, list[str]] = stage.publish(report)
    return summary
