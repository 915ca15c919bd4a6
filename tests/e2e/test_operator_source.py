"""What operators do to a running source, end to end: rewrites, undeletes, restores, 2PC.

Each case is done to the source the way a DBA would do it, between or during
runs, and the pipeline goes on by itself: the warehouse's ``*_current`` views
equal the source afterwards, and the audit is clean.
"""
import json
import subprocess  # nosec B404: cp -a and rm -rf of a stopped test cluster's data directory
import tempfile
import time
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
import scratch_postgres
from pipeline_kit import PipelineUnderTest
from test_audit import mismatched, run_audit
from test_hostile_source import current_equals_source, run_on_source
from test_pipeline import FACT_FROM_SOURCE

from totes import db, extract, snapshot_capture, storage
from totes_local import generator, simulator, stack
from totes_local.runner import LocalPipeline

pytestmark = pytest.mark.e2e

DBNAME = "totesys"


def assert_audit_clean(e2e: PipelineUnderTest) -> None:
    """The audit finds nothing, and every current view equals the source."""
    report = run_audit(e2e)
    assert report.ok, mismatched(report)
    for fact in FACT_FROM_SOURCE:
        assert current_equals_source(e2e, fact), fact


def emitted(stdout: str, name: str) -> list[float]:
    """The values of metric ``name`` in the EMF lines the handlers printed."""
    values = [json.loads(line)[name] for line in stdout.splitlines()
              if line.startswith('{"_aws"') and name in json.loads(line)]
    return [value for each in values for value in (each if isinstance(each, list) else [each])]


#: what rewrites a table with new xmins, which a snapshot taken before it commits would see as
#: an empty table (neither is MVCC-safe), by the table and fact it hits.
REWRITES = {
    "alter table type": ("sales_order", "fact_sales_order", (
        ("ALTER TABLE sales_order ADD COLUMN noise float8 DEFAULT random()", {}),)),
    "truncate and reload": ("payment", "fact_payment", (
        ("CREATE TEMPORARY TABLE reload AS SELECT * FROM payment", {}),
        ("TRUNCATE payment", {}),
        ("INSERT INTO payment SELECT * FROM reload", {}))),
}


@pytest.mark.parametrize("rewrite_name", REWRITES)
def test_a_table_rewrite_committed_during_a_run_waits_for_the_run_and_deletes_nothing(
        e2e, monkeypatch, rewrite_name):
    table_hit, fact, statements = REWRITES[rewrite_name]
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    rewrite = threading.Thread(target=run_on_source, args=(e2e, *statements))
    extract_table = snapshot_capture.extract_table

    def rewrite_before_the_table_is_read(conn, table, *args, **options):
        if table == table_hit:
            rewrite.start()
            rewrite.join(timeout=3)   # committed at once, unless the run's lock holds it
        return extract_table(conn, table, *args, **options)

    with monkeypatch.context() as patch:
        patch.setattr(snapshot_capture, "extract_table", rewrite_before_the_table_is_read)
        during = e2e.pipeline.cycle()
    rewrite.join(timeout=30)
    assert not rewrite.is_alive()
    e2e.pipeline.cycle()   # reads every rewritten row again (new xmin): harmless

    assert during.ingest["deleted"].get(table_hit, 0) == 0
    assert e2e.warehouse_rows(f"SELECT count(*) FROM {fact} WHERE is_deleted") == [[0]]
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


def test_a_session_the_server_ends_mid_run_fails_as_transient_naming_why_then_catches_up(
        e2e, captured_logs):
    e2e.pipeline.cycle()
    holder, admin = e2e.source.connect(), e2e.source.connect()
    outcome: dict[str, BaseException] = {}

    def ingest() -> None:
        try:
            e2e.pipeline.ingest()
        except BaseException as error:  # noqa: B036 - handed to the test thread
            outcome["error"] = error

    try:
        holder.run("START TRANSACTION")
        holder.run("LOCK TABLE payment IN ACCESS EXCLUSIVE MODE")   # the run waits here
        run = threading.Thread(target=ingest)
        run.start()
        waiting: list[list[Any]] = []
        for _ in range(200):
            waiting = admin.run("SELECT pid FROM pg_stat_activity WHERE wait_event_type = "
                                "'Lock' AND application_name = 'totes-pipeline'")
            if waiting:
                break
            time.sleep(0.05)
        admin.run("SELECT pg_terminate_backend(:pid)", pid=waiting[0][0])
        run.join(30)
        holder.run("ROLLBACK")
    finally:
        holder.close()
        admin.close()

    assert isinstance(outcome["error"], db.SessionInterruptedError)
    assert "SQLSTATE 57P01: terminating connection due to administrator command" in str(
        outcome["error"])
    [kind] = [line for line in captured_logs() if line["message"].startswith("invocation failed")]
    assert kind["error_kind"] == "transient"
    e2e.pipeline.cycle()
    assert_audit_clean(e2e)


def test_a_session_the_server_ends_between_two_statements_still_names_why(e2e, monkeypatch):
    e2e.pipeline.cycle()
    run_on_source(e2e, ("UPDATE payment SET paid = NOT paid WHERE payment_id = 1", {}))
    extract_table = snapshot_capture.extract_table

    def ended_while_idle(conn, table, *args, **options):
        if table == "payment":   # the run's transaction is idle: its session ends meanwhile
            [[pid]] = conn.run("SELECT pg_backend_pid()")
            # Returns once the backend has exited, its report sent: no sleep to outlast it
            # (a busy machine may not end it in a fixed time, and the run's next statement
            # would then race the server's report, as the audit's sibling test does).
            assert e2e.source_rows("SELECT pg_terminate_backend(:pid, 30000)", pid=pid) == [
                [True]]
        return extract_table(conn, table, *args, **options)

    with monkeypatch.context() as patch:
        patch.setattr(snapshot_capture, "extract_table", ended_while_idle)
        with pytest.raises(db.SessionInterruptedError, match="SQLSTATE 57P01: terminating "
                                                             "connection due to administrator"):
            e2e.pipeline.ingest()   # its next request cannot be sent: the report is read instead

    e2e.pipeline.cycle()
    assert current_equals_source(e2e, "fact_payment")


def test_a_statement_timeout_a_dba_set_on_the_source_fails_runs_as_transient_committing_nothing(
        e2e, captured_logs):
    admin = e2e.postgres.connect("postgres")
    try:   # as ALTER ROLE ... SET would, for the sessions opened after it
        admin.run(f'ALTER DATABASE "{e2e.source.name}" SET statement_timeout = 1')
        with pytest.raises(db.SessionInterruptedError, match="SQLSTATE 57014: canceling "
                                                             "statement due to statement timeout"):
            e2e.pipeline.ingest()   # a first run: every statement reads every row
        assert storage.latest_manifest_key(e2e.env["INGEST_BUCKET"]) is None
    finally:
        admin.run(f'ALTER DATABASE "{e2e.source.name}" RESET statement_timeout')
        admin.close()

    [kind] = [line for line in captured_logs() if line["message"].startswith("invocation failed")]
    assert kind["error_kind"] == "transient"
    e2e.pipeline.cycle()
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


@dataclass
class Cluster:
    """A throw-away embedded cluster holding totesys, which a test may stop, copy and restore."""

    data_dir: Path
    postgres: stack.Postgres

    def stop(self) -> None:
        """Stop the server cleanly (pg_ctl -w stop)."""
        self.postgres.server.cleanup()
        assert not (self.data_dir / "postmaster.pid").exists()

    def start(self) -> None:
        """Start the server on the data directory again."""
        self.postgres = stack.start_postgres(self.data_dir)

    def cold_backup(self) -> Path:
        """Stop the server, copy its files (owners and modes kept), start it again."""
        backup = self.data_dir.parent / "backup"
        backup.mkdir()
        self.stop()
        subprocess.run(["cp", "-a", f"{self.data_dir}/.", str(backup)],  # nosec B603 B607
                       check=True)
        self.start()
        return backup

    def restore(self, backup: Path) -> None:
        """Stop the server, replace its files with ``backup``'s, start it on them."""
        self.stop()
        subprocess.run(["rm", "-rf", str(self.data_dir)], check=True)  # nosec B603 B607
        self.data_dir.mkdir()
        subprocess.run(["cp", "-a", f"{backup}/.", str(self.data_dir)],  # nosec B603 B607
                       check=True)
        self.start()

    def connect(self) -> Any:
        """Open a connection to its totesys."""
        return self.postgres.connect(DBNAME)

    @contextmanager
    def session(self) -> Iterator[Any]:
        """Lend a connection to its totesys, closed after the block."""
        conn = self.connect()
        try:
            yield conn
        finally:
            conn.close()


def copy_of(blank: Path, data_dir: Path) -> Cluster:
    """Start a copy of the ``blank`` cluster's files (owners and modes kept) in ``data_dir``."""
    scratch_postgres.copy(blank, data_dir)
    return Cluster(data_dir, stack.start_postgres(data_dir))


@pytest.fixture(scope="module")
def totesys_files(blank_cluster) -> Iterator[Path]:
    """A stopped cluster's files holding a generated totesys, prepared transactions enabled.

    Made once per module (a new cluster takes seconds to make on a busy machine, the
    generation more): each test starts a copy of its own, which it may stop, back up,
    restore or promote. Prepared transactions are off by default.
    """
    root = Path(tempfile.mkdtemp(prefix="totes-operator-template-"))
    root.chmod(0o755)
    try:
        made = copy_of(blank_cluster, root / "data")
        admin = made.postgres.connect("postgres")
        try:
            admin.run("ALTER SYSTEM SET max_prepared_transactions = 4")
        finally:
            admin.close()
        generator.recreate_empty_source(made.postgres, DBNAME)
        with made.session() as conn:
            generator.generate(conn, scale=0.02)
        stack.stop_postgres(root / "data")
        yield root / "data"
    finally:
        stack.stop_postgres(root / "data")
        subprocess.run(["rm", "-rf", str(root)], check=False)  # nosec B603 B607


@pytest.fixture
def cluster(aws, postgres, database,
            totesys_files) -> Iterator[tuple[Cluster, PipelineUnderTest]]:
    """A copy of the module's generated totesys as the source; the warehouse on the session server.

    Stopped and deleted at the end, whatever happened.
    """
    root = Path(tempfile.mkdtemp(prefix="totes-operator-pg-"))
    root.chmod(0o755)
    try:
        made = copy_of(totesys_files, root / "data")
        warehouse = database("warehouse")
        stack.provision({aws["TOTESYS_SECRET_ID"]: made.postgres.secret(DBNAME),
                         aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)}, buckets=())
        source = type("Source", (), {"connect": staticmethod(made.connect)})()
        yield made, PipelineUnderTest(source=source, warehouse=warehouse, env=aws,
                                      postgres=postgres,
                                      pipeline=LocalPipeline(aws["INGEST_BUCKET"]))
    finally:
        stack.stop_postgres(root / "data")
        subprocess.run(["rm", "-rf", str(root)], check=False)  # nosec B603 B607


def business(conn: Any, seed: int, steps: int) -> None:
    """Simulate ``steps`` steps of trading, each in transactions of its own."""
    simulator.simulate(conn, steps=steps, seed=seed)


def test_a_source_restored_from_a_backup_resyncs_by_itself(
        cluster, monkeypatch, captured_logs, capsys):
    made, e2e = cluster
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    backup = made.cold_backup()
    with made.session() as conn:
        business(conn, seed=5, steps=8)        # lost by the restore
        [[lost_payment]] = conn.run("SELECT max(payment_id) FROM payment")
        for _ in range(50):
            conn.run("SELECT pg_current_xact_id()")   # xids the restore takes back
    e2e.pipeline.cycle()
    made.restore(backup)
    with made.session() as conn:
        business(conn, seed=9, steps=2)        # written after the restore, with reused xids
    capsys.readouterr()

    resynced = e2e.pipeline.cycle()
    again = e2e.pipeline.cycle()

    # The first is the stop that took the cold backup: a restart, which cannot be told from
    # a restore, re-syncs too.
    first, warning = [line for line in captured_logs() if line["level"] == "WARNING"
                      and line["message"].startswith("source re-sync")]
    assert "restarted" in first["message"] and "went back" in warning["message"]
    assert resynced.ingest["resync"] and again.ingest["resync"] is None
    assert e2e.warehouse_rows("SELECT count(*) FROM fact_payment_current WHERE payment_id = :id",
                              id=lost_payment) == [[0]]
    assert emitted(capsys.readouterr().out, "SourceResyncs") == [1, 0]
    assert_audit_clean(e2e)


def test_a_restore_whose_counter_overtook_the_last_run_before_the_next_still_resyncs(
        cluster, monkeypatch, captured_logs):
    made, e2e = cluster
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    backup = made.cold_backup()
    with made.session() as conn:
        business(conn, seed=5, steps=2)        # lost by the restore
    e2e.pipeline.cycle()
    made.restore(backup)
    with made.session() as conn:
        business(conn, seed=9, steps=2)        # xids the run before the restore counts as read
        for _ in range(500):
            conn.run("SELECT pg_current_xact_id()")   # the counter passes the last run's xmax

    resynced = e2e.pipeline.cycle()

    # The backup's stop and the restore each started the server; the restored counter is
    # past the last run's xmax (not "went back"), so only the restart tells.
    _, warning = [line for line in captured_logs() if line["level"] == "WARNING"
                  and line["message"].startswith("source re-sync")]
    assert "restarted" in warning["message"]
    assert resynced.ingest["resync"]
    assert_audit_clean(e2e)


def test_a_promotion_to_a_new_timeline_resyncs_naming_the_timeline(cluster, monkeypatch,
                                                                   captured_logs):
    made, e2e = cluster
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    made.stop()
    (made.data_dir / "standby.signal").touch()   # start as a standby of nothing, then promote
    made.start()
    with made.session() as conn:
        assert conn.run("SELECT pg_is_in_recovery()") == [[True]]
        assert conn.run("SELECT pg_promote(true, 60)") == [[True]]
        # No checkpoint yet: pg_control_checkpoint() still names timeline 1 here.
        business(conn, seed=9, steps=2)

    resynced = e2e.pipeline.cycle()
    with made.session() as conn:
        conn.run("CHECKPOINT")                   # now pg_control_checkpoint() says 2 too
    again = e2e.pipeline.cycle()

    [warning] = [line for line in captured_logs() if line["level"] == "WARNING"
                 and line["message"].startswith("source re-sync")]
    assert "timeline changed from 1 to 2" in warning["message"]
    assert resynced.ingest["resync"] and again.ingest["resync"] is None
    assert_audit_clean(e2e)


def test_a_restore_under_log_based_capture_whose_wal_passed_the_slot_position_resyncs(
        cluster, monkeypatch, captured_logs):
    made, e2e = cluster
    made.postgres = stack.with_logical_decoding(made.postgres)
    monkeypatch.setenv("CAPTURE_MODE", "logical")
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()                       # the backfill, then the slot from here on
    e2e.pipeline.cycle()
    backup = made.cold_backup()      # the slot too, at the last run's position
    with made.session() as conn:
        business(conn, seed=5, steps=6)        # lost by the restore
    e2e.pipeline.cycle()                       # the slot moves past the backup's WAL
    made.restore(backup)
    with made.session() as conn:
        business(conn, seed=9, steps=1)        # WAL the last run's position counts as read
        conn.run("SELECT pg_switch_wal()")     # the WAL passes that position
        conn.run("CREATE TEMPORARY TABLE noise AS SELECT 1 AS n")

    resynced = e2e.pipeline.cycle()

    [warning] = [line for line in captured_logs() if line["level"] == "WARNING"
                 and line["message"].startswith("source re-sync")]
    assert "restarted" in warning["message"] and "slot is not at" in warning["message"]
    assert resynced.ingest["resync"]
    assert_audit_clean(e2e)


def test_an_orphaned_prepared_transaction_is_named_and_its_floor_age_measured(
        cluster, monkeypatch, captured_logs, capsys):
    made, e2e = cluster
    monkeypatch.setattr(snapshot_capture, "PREPARED_WARN_SECONDS", 0)
    e2e.pipeline.cycle()
    orphan = made.connect()
    try:
        orphan.run("START TRANSACTION")
        orphan.run("UPDATE address SET city = city WHERE address_id = 1")
        orphan.run("PREPARE TRANSACTION 'totes-orphan-1'")
    finally:
        orphan.close()
    prepared = time.monotonic()
    with made.session() as conn:
        business(conn, seed=5, steps=2)
    capsys.readouterr()

    e2e.pipeline.cycle()
    with made.session() as conn:
        business(conn, seed=6, steps=2)        # the floor stays, the counter moves on
    e2e.pipeline.cycle()
    elapsed = time.monotonic() - prepared

    warnings = [line for line in captured_logs() if line["level"] == "WARNING"
                and "prepared transaction" in line["message"]]
    assert len(warnings) == 2 and all(line["gid"] == "totes-orphan-1" for line in warnings)
    out = capsys.readouterr().out
    ages = emitted(out, "SnapshotFloorAge")
    assert len(ages) == 2 and ages[1] > ages[0] > 0
    # In seconds: since it was prepared (no session shows it), growing with the clock.
    held = emitted(out, "SnapshotFloorAgeSeconds")
    assert len(held) == 2 and 0 < held[0] < held[1] <= elapsed + 1
    with made.session() as conn:
        conn.run("COMMIT PREPARED 'totes-orphan-1'")
    e2e.pipeline.cycle()
    assert emitted(capsys.readouterr().out, "SnapshotFloorAgeSeconds") == [0]
    assert_audit_clean(e2e)
