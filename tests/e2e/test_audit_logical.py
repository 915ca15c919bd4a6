"""The audit of a warehouse fed by log-based capture: clean, and in flight only what is."""
from datetime import timedelta

from logical_cluster import logical_cluster  # noqa: F401  (the fixture of test_logical's e2e)
from test_logical import e2e  # noqa: F401  (a pipeline in CAPTURE_MODE=logical)


def test_log_based_capture_audits_clean_with_only_the_uncaptured_change_in_flight(
        e2e):  # noqa: F811
    e2e.pipeline.cycle()          # the snapshot backfill
    report = e2e.pipeline.audit()
    assert report["ok"] and report["in_flight"] == 0, report
    assert all(table["compared"] for table in report["tables"].values())

    [[order_id, stamp]] = e2e.source_rows(
        "SELECT sales_order_id, last_updated FROM sales_order ORDER BY 1 LIMIT 1")
    e2e.source_rows("UPDATE sales_order SET units_sold = 4242, last_updated = :at "
                    "WHERE sales_order_id = :o", at=stamp + timedelta(minutes=1), o=order_id)
    e2e.source_rows("UPDATE address SET city = 'York', last_updated = last_updated + "
                    "interval '1 minute' WHERE address_id = 1")
    e2e.pipeline.cycle()          # from the slot
    report = e2e.pipeline.audit()
    assert report["ok"] and report["in_flight"] == 0, report  # the slot's run is the floor

    [[payment_id]] = e2e.source_rows("SELECT max(payment_id) FROM payment")
    e2e.source_rows("DELETE FROM payment WHERE payment_id = :p", p=payment_id)
    e2e.source_rows("UPDATE sales_order SET units_sold = 1, last_updated = :at "
                    "WHERE sales_order_id = :o", at=stamp + timedelta(minutes=2), o=order_id)
    report = e2e.pipeline.audit()  # neither is captured yet
    assert report["ok"], report
    assert report["tables"]["fact_sales_order"]["in_flight"] == 1
    assert report["tables"]["fact_payment"]["in_flight"] == 1

    e2e.pipeline.cycle()
    report = e2e.pipeline.audit()
    assert report["ok"] and report["in_flight"] == 0, report

    e2e.warehouse_rows('UPDATE "fact_sales_order" SET "units_sold" = 2 WHERE "sales_record_id" '
                       '= (SELECT max("sales_record_id") FROM "fact_sales_order" '
                       'WHERE "sales_order_id" = :o)', o=order_id)
    report = e2e.pipeline.audit()
    assert not report["ok"] and report["tables"]["fact_sales_order"]["examples"] == [order_id]
