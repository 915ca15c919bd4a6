"""The audit against a warehouse the pipeline built: clean when healthy, precise when damaged."""
from datetime import timedelta

import pytest

from totes import audit
from totes_local import simulator

pytestmark = pytest.mark.e2e

HOSTILE = "O'Brien \"Ltd\" '); DROP TABLE staff; --\nsecond line\t\\N \\. ,\u202eRTL \U0001F45C ß"


def run_audit(e2e, **kwargs) -> audit.AuditReport:
    """Audit the pipeline's warehouse against its source, as the handler does."""
    source = e2e.source.connect()
    target = e2e.postgres.connect(e2e.warehouse)
    try:
        return audit.run(source, target, audit.BucketStore(e2e.env["INGEST_BUCKET"]), **kwargs)
    finally:
        source.close()
        target.close()


def mismatched(report: audit.AuditReport) -> dict[str, dict]:
    """Tables with mismatches, with their counts."""
    return {name: {kind: table.to_json()[kind] for kind in ("missing", "extra", "different")}
            for name, table in report.tables.items() if table.mismatches}


def business(e2e, steps: int = 6) -> None:
    """Simulate business with an amendment, an address move and a department change."""
    conn = e2e.source.connect()
    try:
        simulator.simulate(conn, steps=steps, seed=3)
        clock = simulator.latest_change(conn) + timedelta(minutes=1)
        order = conn.run("SELECT min(sales_order_id) FROM sales_order")[0][0]
        simulator.amend_sales_order(conn, order, clock)
        address = conn.run("SELECT legal_address_id FROM counterparty "
                           "ORDER BY counterparty_id LIMIT 1")[0][0]
        simulator.change_address(conn, address, clock + timedelta(minutes=1))
        simulator.change_department(conn, 1, clock + timedelta(minutes=2))
    finally:
        conn.close()


def test_a_backfilled_warehouse_audits_clean_and_so_does_one_after_business(e2e):
    before = run_audit(e2e)
    assert before.ok and before.capture_point is None
    assert all(not table.compared for table in before.tables.values())
    assert before.tables["fact_payment"].in_flight == e2e.source.counts["payment"]

    e2e.pipeline.cycle()
    report = run_audit(e2e)
    assert report.ok, mismatched(report)
    assert report.in_flight == 0
    sales = report.tables["fact_sales_order"]
    assert sales.source_rows == sales.warehouse_rows == e2e.source.counts["sales_order"]
    assert report.tables["dim_date"].warehouse_rows > 0

    business(e2e)
    e2e.pipeline.cycle()
    report = run_audit(e2e)
    assert report.ok, mismatched(report)
    assert report.in_flight == 0
    assert report.to_json()["tables"]["dim_staff"]["different"] == 0
