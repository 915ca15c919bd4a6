"""S3 event keys reach transform decoded, and only the ingestion bucket's are transformed."""
from totes import s3_events
from totes_local.runner import s3_object_created_event


def test_event_keys_are_url_decoded():
    event = {"Records": [{"s3": {"object": {"key": "a+b/c%3Ad.json"}}}]}
    assert s3_events.event_keys(event) == ["a b/c:d.json"]


def test_an_event_without_records_names_no_keys():
    assert s3_events.event_keys({}) == []
    assert s3_events.split_by_bucket({}, "ingest") == ([], [])


def test_keys_of_the_ingestion_bucket_are_kept_and_others_set_apart_as_urls():
    own = s3_object_created_event("ingest", "_manifests/2024/11/15/a b.json")
    other = s3_object_created_event("elsewhere", "_manifests/x:y.json")
    event = {"Records": own["Records"] + other["Records"]}
    assert s3_events.split_by_bucket(event, "ingest") == (
        ["_manifests/2024/11/15/a b.json"], ["s3://elsewhere/_manifests/x:y.json"])


def test_a_record_without_a_bucket_name_counts_as_another_buckets():
    event = {"Records": [{"s3": {"object": {"key": "_manifests/k.json"}}}]}
    assert s3_events.split_by_bucket(event, "ingest") == ([], ["s3://None/_manifests/k.json"])
