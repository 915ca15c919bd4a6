"""The lake end to end: publish after the pipeline, read back with pyiceberg, equal the warehouse.

Publishing twice adds nothing (not a snapshot), a later change arrives at the next
publish, and a revision replaces what it supersedes through Iceberg's own history.
"""
import pytest
from lake_kit import (assert_business_questions_agree, assert_lake_equals_warehouse,
                      lake_objects, lake_rows, snapshot_ids)

from totes import lake, storage
from totes_local import cli
from totes_local.runner import s3_object_created_event

pytestmark = pytest.mark.e2e


def change_source(e2e) -> None:
    conn = e2e.source.connect()
    try:
        conn.run("UPDATE sales_order SET units_sold = units_sold + 1, last_updated = now() "
                 "WHERE sales_order_id IN (1, 2)")
        conn.run("UPDATE address SET city = 'Elsewhere', last_updated = now() "
                 "WHERE address_id = 1")
        conn.run("UPDATE payment SET paid = true, last_updated = now() WHERE payment_id = 3")
        conn.run("DELETE FROM payment WHERE payment_id = 4")
    finally:
        conn.close()


@pytest.mark.slow
def test_the_lake_follows_the_warehouse_change_after_change_and_revision(
        e2e, capsys, monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    first = e2e.pipeline.publish()
    assert first["manifests_published"] == 1
    assert first["rows_appended"]["fact_sales_order"] == e2e.warehouse_rows(
        'SELECT count(*) FROM "fact_sales_order"')[0][0]
    assert_lake_equals_warehouse(e2e)
    assert_business_questions_agree(e2e)
    snapshots, objects = snapshot_ids(e2e.env), lake_objects(e2e.env)

    again = e2e.pipeline.publish()
    assert again["manifests_published"] == 0
    assert snapshot_ids(e2e.env) == snapshots  # nothing new: no snapshot, not even a file
    assert lake_objects(e2e.env) == objects

    change_source(e2e)
    e2e.pipeline.cycle()
    second = e2e.pipeline.publish()
    assert second["manifests_published"] == 1
    assert second["deletions_published"]["fact_payment"] == 1
    assert_lake_equals_warehouse(e2e)
    history = sorted((row for row in lake_rows(e2e.env, "fact_sales_order")
                      if row["sales_order_id"] == 1), key=lambda row: row["sales_record_id"])
    assert [row["units_sold"] - history[0]["units_sold"] for row in history] == [0, 1]
    assert history[0]["manifest_key"] < history[1]["manifest_key"]
    deleted = [row for row in lake_rows(e2e.env, "fact_payment") if row["payment_id"] == 4]
    assert [row["is_deleted"] for row in sorted(deleted, key=lambda r: r["payment_record_id"])] \
        == [False, True]
    # amended orders, a payment now paid, a deleted one: the questions that read history
    assert_business_questions_agree(e2e)
    manifests = list(storage.manifest_keys_after(e2e.env["INGEST_BUCKET"], None))
    assert lake.last_manifest(_table(e2e, "fact_sales_order")) == manifests[-1]
    before = snapshot_ids(e2e.env)

    retransform(e2e, capsys, manifests[1])
    report = e2e.pipeline.publish()
    assert report["manifests_published"] == 1
    assert "fact_sales_order" in report["tables_rewound"]
    assert_lake_equals_warehouse(e2e)
    after = snapshot_ids(e2e.env)
    for name, ids in before.items():  # new snapshots on top: the old ones stay readable
        assert after[name][:len(ids)] == ids
    assert _table(e2e, "fact_sales_order").current_snapshot().summary[
        lake.PROCESSED_PROPERTY] == f"_revisions/0001/{manifests[1]}"
    assert e2e.pipeline.publish()["manifests_published"] == 0


def _table(e2e, name: str):
    return lake.glue_catalog(e2e.env["LAKE_BUCKET"]).load_table((e2e.env["LAKE_DATABASE"], name))


def retransform(e2e, capsys, start: str) -> None:
    """Declare revision 1 from ``start``, reload the warehouse as printed, transform and load."""
    capsys.readouterr()
    assert cli.main(["supersede", "retransform", "--from", start, "--reason", "bug 31",
                     "--processed-bucket", e2e.env["PROCESSED_BUCKET"]]) == 0
    printed = capsys.readouterr().out
    conn = e2e.postgres.connect(e2e.warehouse)
    try:
        conn.run(printed[printed.index("BEGIN;"):])
    finally:
        conn.close()
    newest = storage.latest_manifest_key(e2e.env["INGEST_BUCKET"])
    e2e.pipeline.invoke("transform", s3_object_created_event(e2e.env["INGEST_BUCKET"], newest))
    e2e.pipeline.load()
