"""Transform Lambda: on every new ingest manifest, bring the Parquet star schema up to date.

Thin on purpose: the work is :func:`totes.transform.handle_keys`. The handler only
decodes the S3 event (keys arrive URL-encoded), adds the Lambda context to every
log line and flushes the metrics; a failure propagates (after the library logged
it with the object key) so Lambda retries and the error alarm fires.
"""
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.metrics import MetricUnit

from totes import observability
from totes.transform import handle_keys

logger = observability.service_logger()
metrics = observability.metrics_for()


def event_keys(event: dict[str, Any]) -> list[str]:
    """Return the decoded object keys of an S3 ObjectCreated event, in record order."""
    return [unquote_plus(record["s3"]["object"]["key"]) for record in event.get("Records", ())]


@observability.instrument("transform", logger, metrics)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, list[str]]:
    """Transform the manifests the event names (and any earlier ones still pending)."""
    summary = handle_keys(event_keys(event))
    metrics.add_metric(name="ManifestsTransformed", unit=MetricUnit.Count,
                       value=len(summary["transformed"]))
    return summary
