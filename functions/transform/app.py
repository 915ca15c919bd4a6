"""Transform Lambda: on every new ingest manifest, bring the Parquet star schema up to date.

Thin on purpose: the work is :func:`totes.transform.handle_keys`. The handler only
decodes the S3 event (keys arrive URL-encoded), keeps the records of the ingestion
bucket, adds the Lambda context to every log line and flushes the metrics; a
failure propagates (after the library logged it with the object key) so Lambda
retries and the error alarm fires.

Records from any other bucket are ignored, with a warning: the invoke permission
already admits only the ingestion bucket, but whoever may invoke the function
directly could otherwise make it read a manifest key from another bucket's event
as if it were one of ours.
"""
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from totes import config, observability
from totes.transform import handle_keys

logger = observability.service_logger()
metrics = observability.metrics_for()


def event_keys(event: dict[str, Any]) -> list[str]:
    """Return the decoded object keys of an S3 ObjectCreated event, in record order."""
    return [unquote_plus(record["s3"]["object"]["key"]) for record in event.get("Records", ())]


def split_by_bucket(event: dict[str, Any], bucket: str) -> tuple[dict[str, Any], list[str]]:
    """Split an S3 event into the records of ``bucket`` and the others, as ``s3://`` URLs.

    A record without a bucket name counts as another bucket's: S3 always names it.
    """
    own, foreign = [], []
    for record in event.get("Records", ()):
        name = record.get("s3", {}).get("bucket", {}).get("name")
        if name == bucket:
            own.append(record)
        else:
            key = record.get("s3", {}).get("object", {}).get("key", "")
            foreign.append(f"s3://{name}/{unquote_plus(key)}")
    return {**event, "Records": own}, foreign


@observability.instrument("transform", logger, metrics)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, list[str]]:
    """Transform the manifests the event names (and any earlier ones still pending)."""
    ingest_bucket = config.ingest_bucket()
    own, foreign = split_by_bucket(event, ingest_bucket)
    for url in foreign:
        logger.warning("event record from a bucket other than the ingestion bucket; ignored",
                       extra={"object": url, "ingest_bucket": ingest_bucket})
    summary = handle_keys(event_keys(own))
    summary["ignored"] = [*foreign, *summary["ignored"]]
    metrics.add_metric(name="ManifestsTransformed", unit=MetricUnit.Count,
                       value=len(summary["transformed"]))
    return summary
