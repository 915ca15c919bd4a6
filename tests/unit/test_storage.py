import pytest
from moto import mock_aws

from totes import storage

BUCKET = "storage-test"


@pytest.fixture
def bucket(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    with mock_aws():
        storage.s3_client().create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        yield BUCKET


def test_objects_are_created_once_and_never_overwritten(bucket):
    storage.put_new_object(bucket, "a/b.jsonl", b"first", "application/x-ndjson")
    with pytest.raises(storage.ObjectAlreadyExistsError, match="a/b.jsonl"):
        storage.put_new_object(bucket, "a/b.jsonl", b"second", "application/x-ndjson")
    assert storage.read_bytes(bucket, "a/b.jsonl") == b"first"


def test_json_documents_round_trip(bucket):
    storage.put_new_json(bucket, "doc.json", {"rows": 3, "tables": ["x"]})
    assert storage.read_json(bucket, "doc.json") == {"rows": 3, "tables": ["x"]}
    assert storage.open_stream(bucket, "doc.json").read().startswith(b"{")


def test_other_s3_errors_are_not_mistaken_for_existing_objects(bucket):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        storage.put_new_object("no-such-bucket-here", "k", b"x", "text/plain")


def test_listing_is_ordered_and_can_start_after_a_key(bucket):
    for key in ("p/3", "p/1", "p/2", "q/1"):
        storage.put_new_object(bucket, key, b"", "text/plain")
    assert list(storage.list_keys(bucket, "p/")) == ["p/1", "p/2", "p/3"]
    assert list(storage.list_keys(bucket, "p/", start_after="p/1")) == ["p/2", "p/3"]


def test_latest_manifest_is_found_by_descending_the_date_folders(bucket):
    assert storage.latest_manifest_key(bucket) is None
    keys = ["_manifests/2023/12/31/20231231T235959999Z-aaaaaaaa.json",
            "_manifests/2024/01/02/20240102T080000000Z-bbbbbbbb.json",
            "_manifests/2024/01/02/20240102T090000000Z-cccccccc.json",
            "_manifests/2024/01/10/20240110T070000000Z-dddddddd.json"]
    for key in keys:
        storage.put_new_json(bucket, key, {})
    storage.put_new_object(bucket, "sales_order/2099/01/01/x.jsonl", b"", "text/plain")
    assert storage.latest_manifest_key(bucket) == keys[-1]
    assert list(storage.manifest_keys_after(bucket, keys[1])) == keys[2:]
    assert list(storage.manifest_keys_after(bucket, None)) == keys
