"""Rows deleted at the source, end to end: ingest's key sweep, transform, load, the views.

A deleted order or payment keeps its history in the warehouse and gains one version
marked ``is_deleted``; the ``*_current`` views, and so every dashboard number, leave
it out. A dimension member whose source row is deleted stays: facts point at it.
"""
import pytest
from test_pipeline import FACT_FROM_SOURCE, warehouse_table


@pytest.fixture(scope="module")
def e2e(module_e2e):
    """The module's one pipeline: its tests only inspect what ``deleted`` did to it."""
    return module_e2e


@pytest.fixture(scope="module")
def deleted(e2e):
    """Cycle, delete a payment and a purchase order (with its transaction) at the source, cycle."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
        yield deleted_between_cycles(e2e)


def deleted_between_cycles(e2e):
    """Cycle, delete the rows at the source, cycle; the ids deleted."""
    e2e.pipeline.cycle()
    conn = e2e.source.connect()
    try:
        payment_id = conn.run("SELECT min(payment_id) FROM payment")[0][0]
        order_id, transaction_id = conn.run(
            "SELECT purchase_order_id, transaction_id FROM transaction "
            "WHERE purchase_order_id IS NOT NULL ORDER BY 1 LIMIT 1")[0]
        conn.run("DELETE FROM payment WHERE payment_id = :p OR transaction_id = :t",
                 p=payment_id, t=transaction_id)
        conn.run("DELETE FROM transaction WHERE transaction_id = :t", t=transaction_id)
        conn.run("DELETE FROM purchase_order WHERE purchase_order_id = :o", o=order_id)
    finally:
        conn.close()
    e2e.pipeline.cycle()
    return {"payment_id": payment_id, "purchase_order_id": order_id,
            "transaction_id": transaction_id}


@pytest.mark.parametrize("fact", FACT_FROM_SOURCE)
def test_current_views_equal_the_source_after_deletes(deleted, e2e, fact):
    _, sql = FACT_FROM_SOURCE[fact]
    assert warehouse_table(e2e, f"{fact}_current") == e2e.source_rows(sql)


def test_a_deleted_row_keeps_its_history_and_gains_one_deletion_version(deleted, e2e):
    versions = e2e.warehouse_rows(
        'SELECT "is_deleted", "paid" FROM "fact_payment" WHERE "payment_id" = :p '
        'ORDER BY "payment_record_id"', p=deleted["payment_id"])
    assert [row[0] for row in versions] == [False] * (len(versions) - 1) + [True]
    assert versions[-1][1] == versions[-2][1]  # the last known values, carried
    assert e2e.warehouse_rows(
        'SELECT count(*) FROM "fact_purchase_orders" WHERE "purchase_order_id" = :o '
        'AND "is_deleted"', o=deleted["purchase_order_id"]) == [[1]]


def test_a_deleted_dimension_source_row_stays_in_its_dimension(deleted, e2e):
    assert e2e.warehouse_rows(
        'SELECT count(*) FROM "dim_transaction" WHERE "transaction_id" = :t',
        t=deleted["transaction_id"]) == [[1]]


def test_the_loaded_manifests_record_their_capture_point(deleted, e2e):
    recorded = e2e.warehouse_rows(
        'SELECT "capture_snapshot", "database_time" FROM "etl"."loaded_manifest" '
        'ORDER BY "manifest_key"')
    assert len(recorded) == 2
    assert all(snapshot and ":" in snapshot and clock is not None for snapshot, clock in recorded)
