"""Edits to the processed bucket, the lake bucket and Glue that publish must not take silently.

Every processed manifest is sealed and every file it lists hashed, so an edited
manifest or a replaced file is refused. What neither can see is a processed manifest
that is not there at all (deleted, not restored, not yet replicated) or one that is
whole but not this pipeline's, and a Glue entry pointed at another table's metadata.
"""
import boto3
import pytest

from totes import errors, lake, publish, storage

pytestmark = pytest.mark.e2e


def lake_versions_of_order_1(e2e) -> list[int]:
    """``units_sold`` of every version of sales order 1 the lake's history holds, in order."""
    table = lake.glue_catalog(e2e.env["LAKE_BUCKET"]).load_table(
        (e2e.env["LAKE_DATABASE"], "fact_sales_order"))
    rows = table.scan().to_arrow().to_pylist()
    return [row["units_sold"] for row in sorted(rows, key=lambda row: row["sales_record_id"])
            if row["sales_order_id"] == 1]


def test_a_processed_manifest_gone_from_the_middle_stops_publish_with_nothing_lost(e2e, capsys):
    e2e.pipeline.cycle()
    assert e2e.pipeline.publish()["manifests_published"] == 1
    e2e.change_sales_order(1, 70001)
    middle = e2e.pipeline.ingest()["manifest_key"]
    e2e.change_sales_order(1, 70002)
    last = e2e.pipeline.ingest()["manifest_key"]
    e2e.pipeline.deliver_manifest_events()
    bucket = e2e.env["PROCESSED_BUCKET"]
    s3 = boto3.client("s3")
    document = s3.get_object(Bucket=bucket, Key=middle)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=middle)  # a test's privilege: the policy denies it

    assert e2e.pipeline.load()["manifests_loaded"] == 0  # the load waits at the gap
    with pytest.raises(publish.ProcessedGapError, match=f"{last}: .*{middle}") as caught:
        e2e.pipeline.publish()
    assert errors.kind_of(caught.value) == errors.INPUT
    assert next(storage.list_keys(e2e.env["LAKE_BUCKET"], last), None) is None
    assert 70002 not in lake_versions_of_order_1(e2e)

    # Restored (the version under the delete marker, here written back): nothing was lost.
    storage.put_new_object(bucket, middle, document, "application/json")
    assert e2e.pipeline.publish()["manifests_published"] == 2
    assert lake_versions_of_order_1(e2e)[-2:] == [70001, 70002]
    assert e2e.pipeline.load()["manifests_loaded"] == 2
    capsys.readouterr()
