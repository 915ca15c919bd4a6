"""Transform Lambda: on every new ingest manifest, bring the Parquet star schema up to date.

Thin on purpose, like every stage's handler: settings from the environment, the
S3 event read through Powertools' ``S3Event`` (keys arrive URL-encoded, and are
decoded here), :func:`totes.transform.run_transform`, the report published. A failure
propagates (after the library logged it with the object key) so Lambda retries
and the error alarm fires.

Records from any other bucket are ignored, with a warning: the invoke permission
already admits only the ingestion bucket, but whoever may invoke the function
directly could otherwise make it read a manifest key from another bucket's event
as if it were one of ours.
"""
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import observability, stage
from totes.transform import NOTHING_COMMITTED, TransformSettings, run_transform

logger = observability.service_logger()
metrics = observability.metrics_for()


def _records(event: dict[str, Any]) -> list[S3EventRecord]:
    """The event's records (none for an event without any, such as a test invoke)."""
    return list(S3Event(event).records) if event.get("Records") else []


def event_keys(event: dict[str, Any]) -> list[str]:
    """Return the decoded object keys of an S3 ObjectCreated event, in record order."""
    return [unquote_plus(record.s3.get_object.key) for record in _records(event)]


def split_by_bucket(event: dict[str, Any], bucket: str) -> tuple[list[str], list[str]]:
    """Split an S3 event's keys into those of ``bucket`` and the others, as ``s3://`` URLs.

    A record without a bucket name counts as another bucket's: S3 always names it.
    """
    own, foreign = [], []
    for record in _records(event):
        raw: dict[str, Any] = record.raw_event
        name = raw.get("s3", {}).get("bucket", {}).get("name")
        if name == bucket:
            own.append(unquote_plus(record.s3.get_object.key))
        else:
            key = raw.get("s3", {}).get("object", {}).get("key", "")
            foreign.append(f"s3://{name}/{unquote_plus(key)}")
    return own, foreign


@observability.instrument("transform", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, list[str]]:
    """Transform the manifests the event names (and any earlier ones still pending)."""
    named = event_keys(event)
    settings = stage.read_settings(TransformSettings.from_environment, NOTHING_COMMITTED,
                                   manifest=named[0] if named else None)
    own, foreign = split_by_bucket(event, settings.ingest_bucket)
    for url in foreign:
        logger.warning("event record from a bucket other than the ingestion bucket; ignored",
                       extra={"object": url, "ingest_bucket": settings.ingest_bucket})
    report = run_transform(settings, own, stage.Deadline.from_context(context))
    report.ignored[:0] = foreign
    summary: dict[str, list[str]] = stage.publish(report)
    return summary
