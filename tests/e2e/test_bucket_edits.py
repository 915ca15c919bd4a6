"""Edits to the buckets that no seal or checksum can see: whole manifests gone or planted.

Each manifest is sealed and each file it lists hashed, so a manifest edited or a file
replaced is refused. What those checks cannot see is a manifest that is not there at all
(deleted by a person, left behind by a restore or a replication) or one that is whole but
not this pipeline's (copied from another stack's bucket, its seal intact). Ingest chains
its manifests (``previous_manifest``), so a transform that follows the chain finds both.
"""
import boto3
import pytest

from totes import keys, storage
from totes.errors import INPUT, kind_of
from totes.transform import TransformInputError
from totes_local.runner import s3_object_created_event

pytestmark = pytest.mark.e2e


def versions_of_order_1(e2e) -> list[int]:
    """``units_sold`` of every version of sales order 1 the warehouse holds, oldest first."""
    return [row[0] for row in e2e.warehouse_rows(
        "SELECT units_sold FROM fact_sales_order WHERE sales_order_id = 1 "
        "ORDER BY sales_record_id")]


def test_an_ingest_manifest_gone_from_the_middle_of_the_chain_stops_transform_with_nothing_lost(
        e2e, capsys):
    e2e.pipeline.cycle()
    before = versions_of_order_1(e2e)
    e2e.change_sales_order(1, 70001)
    middle = e2e.pipeline.ingest()["manifest_key"]
    e2e.change_sales_order(1, 70002)
    last = e2e.pipeline.ingest()["manifest_key"]
    bucket = e2e.env["INGEST_BUCKET"]
    s3 = boto3.client("s3")
    document = s3.get_object(Bucket=bucket, Key=middle)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=middle)  # a test's privilege: the policy denies it

    with pytest.raises(TransformInputError, match=f"{last}: its previous manifest {middle} "
                                                  "is not in the bucket") as caught:
        e2e.pipeline.deliver_manifest_events()
    assert kind_of(caught.value) == INPUT
    assert e2e.pipeline.load()["manifests_loaded"] == 0
    assert versions_of_order_1(e2e) == before

    # Restored (the version under the delete marker, here written back): nothing was lost.
    storage.put_new_object(bucket, middle, document, "application/json")
    e2e.pipeline.invoke("transform", s3_object_created_event(bucket, last))
    assert e2e.pipeline.load()["manifests_loaded"] == 2
    assert versions_of_order_1(e2e)[-2:] == [70001, 70002]
    assert e2e.pipeline.audit()["ok"]
    capsys.readouterr()


def test_an_ingest_manifest_copied_in_from_another_stack_is_not_transformed(e2e, capsys):
    e2e.pipeline.cycle()
    bucket = e2e.env["INGEST_BUCKET"]
    newest = storage.latest_manifest_key(bucket)
    # Another stack's run, whole and sealed, under this bucket's layout: it follows a manifest
    # of its own bucket, which is not here.
    ours = storage.read_json(bucket, newest)
    foreign_previous = keys.manifest_key(keys.RunId("20000101T000000000Z", "0badf00d"))
    run = keys.RunId("29990101T000000000Z", "0badf00d")
    planted = keys.manifest_key(run)
    storage.put_new_json(bucket, planted, {
        **ours, "run_id": str(run), "previous_manifest": foreign_previous,
        "tables": {table: {**entry, "files": [], "deleted_files": [], "rows": 0}
                   for table, entry in ours["tables"].items()}})
    with pytest.raises(TransformInputError, match=f"{planted}: its previous manifest "
                                                  f"{foreign_previous} is not"):
        e2e.pipeline.invoke("transform", s3_object_created_event(bucket, planted))
    assert not list(storage.list_keys(e2e.env["PROCESSED_BUCKET"], planted))
    capsys.readouterr()
