"""The transform handler acts only on events from the ingestion bucket.

The template's invoke permission admits S3 events from the ingestion bucket alone
(tests/unit/test_template_trigger.py); this is the second line: a record naming any
other bucket (a direct invoke, a copied event, a misconfigured notification) is
logged and ignored, even when its key is a real, pending ingest manifest.
"""
import copy
import json
from pathlib import Path
from urllib.parse import quote_plus

import pytest
from ingest_fixtures import full_batch, moto_buckets, write_run

from totes import storage
from totes_local.runner import LambdaContext, load_handler

INGEST, PROCESSED, OTHER = "ingest-handler-test", "processed-handler-test", "someone-elses-bucket"
SAMPLE = Path(__file__).resolve().parents[2] / "events" / "transform_s3_manifest.json"


@pytest.fixture(autouse=True)
def buckets(monkeypatch):
    """Fresh in-process S3 buckets for every test."""
    with moto_buckets(monkeypatch, INGEST, PROCESSED, OTHER):
        yield


def event_for(*records: tuple[str, str]) -> dict:
    """The sample S3 event (events/), one record per (bucket, key)."""
    (template,) = json.loads(SAMPLE.read_text())["Records"]
    out = []
    for bucket, key in records:
        record = copy.deepcopy(template)
        record["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
        record["s3"]["object"]["key"] = quote_plus(key, safe="/")
        out.append(record)
    return {"Records": out}


def invoke(event: dict) -> dict:
    return load_handler("transform")(event, LambdaContext(function_name="transform"))


def processed_manifests() -> list[str]:
    return list(storage.list_keys(PROCESSED, "_manifests/"))


def test_a_record_from_another_bucket_is_logged_and_ignored(captured_logs):
    key = write_run(INGEST, full_batch())
    write_run(OTHER, full_batch())
    summary = invoke(event_for((OTHER, key)))
    assert summary == {"transformed": [], "ignored": [f"s3://{OTHER}/{key}"]}
    assert processed_manifests() == []
    (warning,) = [line for line in captured_logs() if line["level"] == "WARNING"]
    assert warning["object"] == f"s3://{OTHER}/{key}" and warning["ingest_bucket"] == INGEST
    assert "other than the ingestion bucket" in warning["message"]


def test_the_same_manifest_from_the_ingestion_bucket_is_transformed():
    key = write_run(INGEST, full_batch())
    assert invoke(event_for((INGEST, key))) == {"transformed": [key], "ignored": []}
    assert processed_manifests() == [key]


def test_a_mixed_event_transforms_only_the_ingestion_bucket_records(captured_logs):
    key = write_run(INGEST, full_batch())
    summary = invoke(event_for((OTHER, "_manifests/elsewhere.json"), (INGEST, key)))
    assert summary == {"transformed": [key],
                       "ignored": [f"s3://{OTHER}/_manifests/elsewhere.json"]}


def test_a_record_without_a_bucket_name_is_not_trusted():
    key = write_run(INGEST, full_batch())
    summary = invoke({"Records": [{"s3": {"object": {"key": key}}}]})
    assert summary == {"transformed": [], "ignored": [f"s3://None/{key}"]}
    assert processed_manifests() == []
