"""What operators do to a running source, end to end: rewrites, undeletes, restores, 2PC.

Each case is done to the source the way a DBA would do it, between or during
runs, and the pipeline goes on by itself: the warehouse's ``*_current`` views
equal the source afterwards, and the audit is clean.
"""
import threading

import pytest
from pipeline_kit import PipelineUnderTest
from test_audit import mismatched, run_audit
from test_hostile_source import current_equals_source, run_on_source
from test_pipeline import FACT_FROM_SOURCE

from totes import extract, snapshot_capture

pytestmark = pytest.mark.e2e


def assert_audit_clean(e2e: PipelineUnderTest) -> None:
    """The audit finds nothing, and every current view equals the source."""
    report = run_audit(e2e)
    assert report.ok, mismatched(report)
    for fact in FACT_FROM_SOURCE:
        assert current_equals_source(e2e, fact), fact


def test_a_table_rewrite_committed_during_a_run_waits_for_the_run_and_deletes_nothing(
        e2e, monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    rewrite = threading.Thread(target=run_on_source, args=(e2e, (
        "ALTER TABLE sales_order ADD COLUMN noise float8 DEFAULT random()", {})))
    extract_table = snapshot_capture.extract_table

    def rewrite_before_sales_order_is_read(conn, table, *args, **options):
        if table == "sales_order":
            rewrite.start()
            rewrite.join(timeout=3)   # committed at once, unless the run's lock holds it
        return extract_table(conn, table, *args, **options)

    with monkeypatch.context() as patch:
        patch.setattr(snapshot_capture, "extract_table", rewrite_before_sales_order_is_read)
        during = e2e.pipeline.cycle()
    rewrite.join(timeout=30)
    assert not rewrite.is_alive()
    e2e.pipeline.cycle()   # reads every rewritten row again (new xmin): harmless

    assert during.ingest["deleted"].get("sales_order", 0) == 0
    assert e2e.warehouse_rows("SELECT count(*) FROM fact_sales_order WHERE is_deleted") == [[0]]
    assert_audit_clean(e2e)


def test_a_run_that_finds_a_table_locked_by_a_rewrite_fails_as_transient_then_catches_up(
        e2e, monkeypatch, captured_logs):
    monkeypatch.setattr(extract, "LOCK_TIMEOUT_MS", 300)
    e2e.pipeline.cycle()
    holder = e2e.source.connect()
    try:
        holder.run("START TRANSACTION")
        holder.run("LOCK TABLE payment IN ACCESS EXCLUSIVE MODE")   # as TRUNCATE or ALTER takes
        with pytest.raises(extract.SourceLockTimeoutError):
            e2e.pipeline.ingest()
        holder.run("ROLLBACK")
    finally:
        holder.close()

    e2e.pipeline.cycle()

    [failure] = [line for line in captured_logs() if line["level"] == "ERROR"
                 and line["message"].startswith("ingest run failed")]
    assert "gave up after waiting 300 ms" in failure["message"]
    assert "the next run retries" in failure["message"]
    [kind] = [line for line in captured_logs() if line["message"].startswith("invocation failed")]
    assert kind["error_kind"] == "transient"
    assert_audit_clean(e2e)


def test_a_payment_deleted_then_restored_with_the_same_values_is_current_again(
        e2e, monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    [[payment_id]] = e2e.source_rows("SELECT min(payment_id) FROM payment")
    run_on_source(e2e, ("CREATE TABLE payment_backup AS SELECT * FROM payment "
                        "WHERE payment_id = :id", {"id": payment_id}),
                  ("DELETE FROM payment WHERE payment_id = :id", {"id": payment_id}))
    deleted = e2e.pipeline.cycle()
    run_on_source(e2e, ("INSERT INTO payment SELECT * FROM payment_backup", {}),
                  ("DROP TABLE payment_backup", {}))

    e2e.pipeline.cycle()

    assert deleted.ingest["deleted"] == {"payment": 1}
    versions = e2e.warehouse_rows(
        "SELECT is_deleted FROM fact_payment WHERE payment_id = :id ORDER BY payment_record_id",
        id=payment_id)
    assert versions == [[True], [False]]   # the version moved after the deletion: current
    assert e2e.warehouse_rows("SELECT count(*) FROM fact_payment_current WHERE payment_id = :id",
                              id=payment_id) == [[1]]
    assert_audit_clean(e2e)
