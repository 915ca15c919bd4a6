"""The object keys an S3 ObjectCreated event names, decoded, and sorted by bucket.

Transform is invoked by the ingestion bucket's notification. S3 URL-encodes each
key in the event (a space arrives as ``+``, ``:`` as ``%3A``), so keys are decoded
here once, for every caller. Records from any other bucket are set apart: the
invoke permission already admits only the ingestion bucket, but whoever may invoke
the function directly could otherwise make it read a manifest key from another
bucket's event as if it were one of ours. Kept in the layer, beside the stage it
feeds, so that the handler stays as thin as the other stages' handlers.
"""
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools.utilities.data_classes import S3Event
from aws_lambda_powertools.utilities.data_classes.s3_event import S3EventRecord


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
