"""The audit against a warehouse the pipeline built: clean when healthy, precise when damaged."""
import json
from datetime import timedelta

import pytest

from totes import audit, db
from totes_local import simulator

pytestmark = pytest.mark.e2e

HOSTILE = "O'Brien \"Ltd\" '); DROP TABLE staff; --\nsecond line\t\\N \\. ,\u202eRTL \U0001F45C ß"


def run_audit(e2e, **kwargs) -> audit.AuditReport:
    """Audit the pipeline's warehouse against its source, as the handler does."""
    source = e2e.source.connect()
    target = e2e.postgres.connect(e2e.warehouse)
    try:
        return audit.audit_databases(source, target,
                                     audit.BucketStore(e2e.env["INGEST_BUCKET"]), **kwargs)
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


def test_each_kind_of_damage_is_found_in_its_table_with_its_count(e2e, monkeypatch):
    e2e.pipeline.cycle()
    business(e2e, steps=2)
    e2e.pipeline.cycle()
    # A source change that was never captured: an ingest that (by a bug) skips staff 3.
    source = e2e.source.connect()
    try:
        source.run("UPDATE staff SET email_address = 'moved@terrifictotes.com', "
                   "last_updated = last_updated + interval '1 minute' WHERE staff_id = 3")
    finally:
        source.close()
    from totes import extract

    real = extract.changes_sql

    def skipping_staff_3(table, cursor, **options):
        sql = real(table, cursor, **options)
        # The first ORDER BY on a column of t closes the WHERE that chooses the rows.
        return sql.replace(" ORDER BY t.", ' AND t."staff_id" <> 3 ORDER BY t.', 1) if (
            table == "staff") else sql

    monkeypatch.setattr(extract, "changes_sql", skipping_staff_3)
    e2e.pipeline.cycle()
    monkeypatch.undo()

    missing_payment = e2e.warehouse_rows("SELECT max(payment_id) FROM fact_payment")[0][0]
    changed_purchase = e2e.warehouse_rows("SELECT min(purchase_order_id) FROM "
                                          "fact_purchase_orders")[0][0]
    extra_order = e2e.warehouse_rows("SELECT max(sales_order_id) + 1000 "
                                     "FROM fact_sales_order")[0][0]
    e2e.warehouse_rows(f"""
        DELETE FROM fact_payment WHERE payment_id = {missing_payment};
        UPDATE fact_purchase_orders SET item_quantity = item_quantity + 1
          WHERE purchase_record_id = (SELECT max(purchase_record_id) FROM fact_purchase_orders
                                      WHERE purchase_order_id = {changed_purchase});
        INSERT INTO fact_sales_order (sales_order_id, created_date, created_time,
            last_updated_date, last_updated_time, sales_staff_id, counterparty_id, units_sold,
            unit_price, currency_id, design_id, agreed_payment_date, agreed_delivery_date,
            agreed_delivery_location_id)
          SELECT {extra_order}, created_date, created_time, last_updated_date,
            last_updated_time, sales_staff_id, counterparty_id, units_sold, unit_price,
            currency_id, design_id, agreed_payment_date, agreed_delivery_date,
            agreed_delivery_location_id FROM fact_sales_order LIMIT 1;
        UPDATE dim_location SET city = city || ' ' WHERE location_id = 2;
        SET session_replication_role = replica;
        DELETE FROM dim_counterparty WHERE counterparty_id = 4;
        DELETE FROM dim_date WHERE date_id = (SELECT min(created_date) FROM fact_sales_order);
        SET session_replication_role = DEFAULT;
    """)
    report = run_audit(e2e)
    assert not report.ok
    assert mismatched(report) == {
        "dim_date": {"missing": 1, "extra": 0, "different": 0},
        "dim_staff": {"missing": 0, "extra": 0, "different": 1},
        "dim_location": {"missing": 0, "extra": 0, "different": 1},
        "dim_counterparty": {"missing": 1, "extra": 0, "different": 0},
        "fact_sales_order": {"missing": 0, "extra": 1, "different": 0},
        "fact_purchase_orders": {"missing": 0, "extra": 0, "different": 1},
        "fact_payment": {"missing": 1, "extra": 0, "different": 0},
    }
    tables = report.tables
    assert tables["dim_staff"].examples == [3] and tables["dim_staff"].in_flight == 0
    assert tables["dim_location"].examples == [2]
    assert tables["dim_counterparty"].examples == [4]
    assert tables["fact_sales_order"].examples == [extra_order]
    assert tables["fact_purchase_orders"].examples == [changed_purchase]
    assert tables["fact_payment"].examples == [missing_payment]
    assert report.in_flight == 0 and report.mismatches == 7


def test_changes_and_deletes_after_the_capture_point_are_in_flight_not_mismatches(
        e2e, monkeypatch):
    e2e.pipeline.cycle()  # sweeps every table (first run)
    source = e2e.source.connect()
    try:
        clock = simulator.latest_change(source) + timedelta(minutes=1)
        fresh = simulator.new_sales_order(source, clock)
        e2e.pipeline.cycle()  # captures the new order (and its payment); no sweep is due
        first_order = source.run("SELECT min(sales_order_id) FROM sales_order")[0][0]
        simulator.amend_sales_order(source, first_order, clock + timedelta(minutes=1))
        newest_payment = source.run("SELECT payment_id FROM payment p JOIN transaction t "
                                    "USING (transaction_id) WHERE t.sales_order_id = :o",
                                    o=fresh)[0][0]
        oldest_payment = source.run("SELECT min(payment_id) FROM payment")[0][0]
        # Deleted after the newest loaded sweep: one it listed, one captured after it.
        source.run("DELETE FROM payment WHERE payment_id IN (:a, :b)",
                   a=oldest_payment, b=newest_payment)
        simulator.change_address(source, 1, clock + timedelta(minutes=2), city="Hull")
    finally:
        source.close()
    report = run_audit(e2e)
    assert report.ok, mismatched(report)
    assert report.tables["fact_sales_order"].in_flight == 1
    assert report.tables["fact_payment"].in_flight == 2
    assert report.tables["dim_location"].in_flight == 1
    counterparties_at_1 = e2e.source_rows(
        "SELECT count(*) FROM counterparty WHERE legal_address_id = 1")[0][0]
    assert report.tables["dim_counterparty"].in_flight == counterparties_at_1

    # Too much in flight (a backfill): the table waits for the next audit instead.
    monkeypatch.setattr(audit, "MAX_IN_FLIGHT", 0)
    busy = run_audit(e2e).tables["fact_sales_order"]
    assert (busy.compared, busy.in_flight, busy.mismatches) == (False, 1, 0)
    monkeypatch.undo()

    # A delete the warehouse should know about (before the newest loaded sweep) is extra.
    e2e.warehouse_rows("DELETE FROM etl.loaded_manifest WHERE manifest_key = "
                       "(SELECT max(manifest_key) FROM etl.loaded_manifest)")
    report = run_audit(e2e)
    assert mismatched(report)["fact_payment"] == {"missing": 0, "extra": 1, "different": 0}
    assert report.tables["fact_payment"].examples == [newest_payment]


def test_hostile_strings_nulls_and_exact_decimals_compare_equal_when_equal(e2e):
    source = e2e.source.connect()
    try:
        source.run("UPDATE address SET address_line_1 = :h, address_line_2 = NULL, "
                   "district = '', last_updated = last_updated + interval '1 second' "
                   "WHERE address_id = 1", h=HOSTILE)
        source.run("UPDATE design SET design_name = :h, file_name = '' WHERE design_id = 1",
                   h=HOSTILE)
        source.run("UPDATE purchase_order SET item_unit_price = 99999999.99, item_code = :h "
                   "WHERE purchase_order_id = 1", h=HOSTILE)
        source.run("UPDATE sales_order SET unit_price = 0.10 WHERE sales_order_id = 1")
        source.run("UPDATE payment SET payment_amount = 100.00 WHERE payment_id = 1")
    finally:
        source.close()
    e2e.pipeline.cycle()
    report = run_audit(e2e)
    assert report.ok, mismatched(report)
    # ... and they are compared: NULL is not '' and a trailing digit matters.
    e2e.warehouse_rows("UPDATE dim_location SET district = NULL WHERE location_id = 1")
    e2e.warehouse_rows("UPDATE fact_payment SET payment_amount = 100.01 WHERE payment_id = 1")
    e2e.warehouse_rows("UPDATE dim_design SET design_name = design_name || ' ' "
                       "WHERE design_id = 1")
    report = run_audit(e2e)
    assert {name: table.examples for name, table in report.tables.items()
            if table.mismatches} == {"dim_location": [1], "dim_design": [1], "fact_payment": [1]}


def test_the_handler_returns_logs_and_publishes_the_audit(e2e, capsys, captured_logs):
    e2e.pipeline.cycle()
    e2e.warehouse_rows("UPDATE dim_design SET file_name = 'x' WHERE design_id = 2")
    capsys.readouterr()
    summary = e2e.pipeline.audit()
    assert summary["ok"] is False and summary["mismatches"] == 1
    assert summary["tables"]["dim_design"]["examples"] == [2]
    assert set(summary["tables"]) == set(audit.TABLES)
    (line,) = [line for line in captured_logs() if line["message"].startswith("audit found")]
    assert line["level"] == "WARNING" and line["stage"] == "audit"
    assert line["audit"]["tables"]["dim_design"]["different"] == 1
    assert "file_name" not in json.dumps(line) and "'x'" not in json.dumps(line)
    metrics = [json.loads(text) for text in capsys.readouterr().out.splitlines()
               if text.startswith('{"_aws"')]
    per_table = {m["table"]: m["AuditMismatches"] for m in metrics
                 if "AuditMismatches" in m and "table" in m}
    assert per_table["dim_design"] == [1.0] and per_table["fact_payment"] == [0.0]
    (run,) = [m for m in metrics if "AuditInFlight" in m]
    assert run["AuditMismatches"] == [1.0] and run["AuditInFlight"] == [0.0]


def test_an_audit_that_cannot_run_fails_loudly(e2e, captured_logs, monkeypatch):
    monkeypatch.setenv("WAREHOUSE_SECRET_ID", "no-such-secret")
    with pytest.raises(Exception):
        e2e.pipeline.audit()
    assert any(line["message"] == "audit failed; nothing compared" and line["level"] == "ERROR"
               for line in captured_logs())


def test_a_warehouse_loaded_from_another_bucket_is_refused_not_audited(e2e):
    e2e.pipeline.cycle()
    e2e.warehouse_rows("UPDATE etl.loaded_manifest SET capture_snapshot = '1:1:'")
    with pytest.raises(audit.CapturePointError, match="is the audit reading the bucket"):
        run_audit(e2e)


def test_the_handler_says_a_misconfigured_audit_needs_a_person(e2e, captured_logs):
    e2e.pipeline.cycle()
    e2e.warehouse_rows("UPDATE etl.loaded_manifest SET capture_snapshot = '1:1:'")
    with pytest.raises(audit.CapturePointError):
        e2e.pipeline.audit()
    (line,) = [line for line in captured_logs() if line["message"].startswith("invocation failed")]
    assert line["error_kind"] == "input" and line["stage"] == "audit"


def test_a_session_the_server_ends_mid_audit_fails_the_invocation_as_transient(
        e2e, captured_logs, monkeypatch):
    e2e.pipeline.cycle()
    audit_table = audit.audit_table

    def terminated(name, source_conn, *args, **options):   # an administrator, a failover
        [[pid]] = source_conn.run("SELECT pg_backend_pid()")
        e2e.source_rows("SELECT pg_terminate_backend(:pid)", pid=pid)
        return audit_table(name, source_conn, *args, **options)

    monkeypatch.setattr(audit, "audit_table", terminated)
    # The server sends its report (57P01) and closes; a reset may reach the client first.
    with pytest.raises(db.SessionInterruptedError,
                       match="SQLSTATE 57P01|lost with no reason from the server"):
        e2e.pipeline.audit()
    (line,) = [line for line in captured_logs() if line["message"].startswith("invocation failed")]
    assert line["error_kind"] == "transient" and line["stage"] == "audit"
