"""Snapshot capture from a hot standby, as docs/ingest.md says it works: a read replica as source.

The primary is a throw-away embedded cluster with a generated totesys and the docs'
ingest login; the standby is its streaming replica (a base backup with
``standby.signal`` and ``primary_conninfo``, ``pg_basebackup -R``). The secret names the
standby. Each run there locks the tables in recovery, reads with a second connection
in the exported snapshot (a standby exports snapshots since PostgreSQL 10), records the
standby's identity (its own start, the checkpoint's timeline: a standby writes no WAL),
re-syncs when the standby restarts or is promoted, and measures a floor held by a
transaction open on the primary, which the standby's ``pg_stat_activity`` never shows.
"""
import os
import pwd
import secrets
import subprocess  # nosec B404: pg_basebackup, and rm -rf of the test's own clusters
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest
from pgserver import _commands
from pipeline_kit import PipelineUnderTest
from test_first_deploy import (INGEST_LOGIN, Administrator, assert_clean, latest_source_identity,
                               sql_block)
from test_operator_source import DBNAME, Cluster, business, copy_of, emitted

from totes import db, extract, snapshot_capture
from totes_local import generator, stack
from totes_local.runner import LocalPipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: lines per chunk: small enough that most tables are read in several chunks, two at a time.
CHUNK_ROWS = "40"


def base_backup(primary: Cluster, data_dir: Path) -> None:
    """Make ``data_dir`` a streaming standby of ``primary`` (``pg_basebackup -R``)."""
    owner = primary.data_dir.stat()
    data_dir.mkdir(mode=0o700)
    os.chown(data_dir, owner.st_uid, owner.st_gid)
    user = pwd.getpwuid(owner.st_uid).pw_name if os.geteuid() == 0 else None
    _commands.pg_basebackup(["-D", str(data_dir), "-R", "-X", "stream", "-c", "fast",
                             "-d", f"host={primary.postgres.socket_dir} "
                             f"port={primary.postgres.port} user={primary.postgres.user}"],
                            user=user)
    # The primary's socket lives in its data directory, so its lock file came along.
    for lock in data_dir.glob(".s.PGSQL.*.lock"):
        lock.unlink()


def caught_up(primary: Cluster, standby: Cluster) -> None:
    """Wait until the standby has replayed everything the primary has written so far."""
    with primary.session() as conn:
        [[written]] = conn.run("SELECT pg_current_wal_lsn()::text")
    deadline = time.monotonic() + 60
    while True:
        with standby.session() as conn:
            [[replayed]] = conn.run("SELECT pg_last_wal_replay_lsn() >= CAST(:lsn AS pg_lsn)",
                                    lsn=written)
        if replayed:
            return
        assert time.monotonic() < deadline, "the standby did not catch up in 60 s"
        time.sleep(0.05)


@pytest.fixture
def replica(aws, postgres, database,
            blank_cluster) -> Iterator[tuple[Cluster, Cluster, PipelineUnderTest]]:
    """A primary with a generated totesys, its hot standby as the source; the warehouse apart.

    Both clusters are stopped and deleted at the end, whatever happened.
    """
    root = Path(tempfile.mkdtemp(prefix="totes-standby-pg-"))
    root.chmod(0o755)
    try:
        primary = copy_of(blank_cluster, root / "primary")
        generator.recreate_empty_source(primary.postgres, DBNAME)
        with primary.session() as conn:
            generator.generate(conn, scale=0.02)
        admin = Administrator(primary, secrets.token_urlsafe(16))
        admin.run(sql_block("deploy.md", "### The totesys login"), DBNAME)
        base_backup(primary, root / "standby")
        standby = Cluster(root / "standby", stack.start_postgres(root / "standby"))
        with standby.session() as conn:
            assert conn.run("SELECT pg_is_in_recovery()") == [[True]]
        warehouse = database("warehouse")
        stack.provision({aws["TOTESYS_SECRET_ID"]: {**standby.postgres.secret(DBNAME),
                                                    "username": INGEST_LOGIN,
                                                    "password": admin.password},
                         aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)}, buckets=())
        source = type("Source", (), {"connect": staticmethod(standby.connect)})()
        yield primary, standby, PipelineUnderTest(
            source=source, warehouse=warehouse, env=aws, postgres=postgres,
            pipeline=LocalPipeline(aws["INGEST_BUCKET"]))
    finally:
        for data_dir in (root / "standby", root / "primary"):   # fast: kept connections end
            stack.stop_postgres(data_dir)
        subprocess.run(["rm", "-rf", str(root)], check=False)  # nosec B603 B607


@pytest.fixture
def second_chunks(monkeypatch) -> list[int]:
    """The chunks each run's second connection read, in the order the runs ended."""
    read: list[int] = []
    close = extract.SecondReader.close

    def counted(reader: extract.SecondReader) -> None:
        read.append(reader.second_chunks)
        close(reader)

    monkeypatch.setattr(extract.SecondReader, "close", counted)
    return read


def audit_clean(e2e: PipelineUnderTest) -> None:
    """The audit handler, reading the standby, finds the warehouse equal to it."""
    assert_clean(e2e.pipeline.audit())


def test_a_backfill_from_a_hot_standby_reads_with_two_connections_and_audits_clean(
        replica, monkeypatch, second_chunks):
    primary, standby, e2e = replica
    monkeypatch.setenv("CHUNK_ROWS", CHUNK_ROWS)
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")

    first = e2e.pipeline.cycle()
    with primary.session() as conn:
        business(conn, seed=5, steps=2)
        conn.run("DELETE FROM payment WHERE payment_id = (SELECT min(payment_id) FROM payment)")
    caught_up(primary, standby)
    second = e2e.pipeline.cycle()

    assert first.ingest["complete"] and second.ingest["resync"] is None
    assert second.ingest["deleted"] == {"payment": 1}
    assert second_chunks[0] > 0, second_chunks     # the backfill's second connection read
    with primary.session() as conn:
        [[primary_id]] = conn.run("SELECT system_identifier::text FROM pg_control_system()")
    identity = latest_source_identity(e2e)
    assert identity["system_identifier"] == primary_id and identity["timeline"] == 1, identity
    audit_clean(e2e)


def test_a_standby_restarted_or_promoted_resyncs_naming_why(replica, monkeypatch, captured_logs):
    primary, standby, e2e = replica
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    standby.stop()
    standby.start()
    restarted = e2e.pipeline.cycle()
    with standby.session() as conn:
        assert conn.run("SELECT pg_promote(true, 60)") == [[True]]   # the failover
        business(conn, seed=9, steps=2)
    promoted = e2e.pipeline.cycle()
    again = e2e.pipeline.cycle()

    first, second = [line["message"] for line in captured_logs()
                     if line["level"] == "WARNING" and line["message"].startswith("source re-sync")]
    assert "restarted" in first and "timeline changed from 1 to 2" in second
    assert restarted.ingest["resync"] and promoted.ingest["resync"]
    assert again.ingest["resync"] is None
    audit_clean(e2e)


def test_a_floor_held_on_the_primary_is_measured_from_the_standby_by_the_manifests(
        replica, capsys):
    primary, standby, e2e = replica
    e2e.pipeline.cycle()
    holder = primary.connect()
    try:
        holder.run("START TRANSACTION")
        holder.run("UPDATE address SET city = city WHERE address_id = 1")   # holds an xid
        [[xid]] = holder.run("SELECT backend_xid::text FROM pg_stat_activity "
                             "WHERE pid = pg_backend_pid()")
        opened = time.monotonic()
        with primary.session() as conn:
            business(conn, seed=5, steps=2)
        caught_up(primary, standby)
        capsys.readouterr()
        e2e.pipeline.cycle()
        e2e.pipeline.cycle()
        out = capsys.readouterr().out
        elapsed = time.monotonic() - opened
        with standby.session() as conn:     # the standby lists its own sessions only
            assert conn.run("SELECT count(*) FROM pg_stat_activity WHERE backend_xid::text = :xid",
                            xid=xid) == [[0]]
        holder.run("COMMIT")
    finally:
        holder.close()
    caught_up(primary, standby)
    e2e.pipeline.cycle()

    assert all(age > 0 for age in emitted(out, "SnapshotFloorAge"))
    # Left out on the first sighting (no session there shows when it began), then proven by
    # the manifests: at least the time between the two runs.
    [held] = emitted(out, "SnapshotFloorAgeSeconds")
    assert 0 < held <= elapsed + 1
    assert emitted(capsys.readouterr().out, "SnapshotFloorAgeSeconds") == [0]
    audit_clean(e2e)


def configure(standby: Cluster, **settings: str) -> None:
    """Set the standby's server settings (``ALTER SYSTEM``) and reload them."""
    conn = standby.postgres.connect("postgres")
    try:
        for name, value in settings.items():
            conn.run(f"ALTER SYSTEM SET {name} = '{value}'")   # names and values from the test
        conn.run("SELECT pg_reload_conf()")
    finally:
        conn.close()


def test_a_run_on_a_standby_outlives_the_primarys_vacuum_only_with_hot_standby_feedback(
        replica, monkeypatch):
    primary, standby, e2e = replica
    # What a busy primary does within max_standby_streaming_delay (30 s by default) of a
    # long run: here within 100 ms, so a short run meets it.
    configure(standby, max_standby_streaming_delay="100ms", wal_receiver_status_interval="1s")
    e2e.pipeline.cycle()
    extract_table = snapshot_capture.extract_table
    vacuumed: list[bool] = []

    def vacuum_on_the_primary_first(conn, table, *args, **options):
        if table == "payment" and not vacuumed:
            vacuumed.append(True)
            with primary.session() as writer:
                writer.run("UPDATE payment SET payment_amount = payment_amount")
                if feedback:                 # the primary has heard the run's snapshot
                    deadline = time.monotonic() + 30
                    while writer.run("SELECT count(backend_xmin) FROM pg_stat_replication") == [
                            [0]]:
                        assert time.monotonic() < deadline
                        time.sleep(0.1)
                writer.run("VACUUM payment")     # removes the versions the run still sees
            caught_up(primary, standby)
            time.sleep(0.5)
        return extract_table(conn, table, *args, **options)

    feedback = False
    with monkeypatch.context() as patch:
        patch.setattr(snapshot_capture, "extract_table", vacuum_on_the_primary_first)
        with pytest.raises(db.SessionInterruptedError, match="recovery conflict.*SQLSTATE 40001: "
                           "(canceling statement|terminating connection) due to conflict with "
                           "recovery"):
            e2e.pipeline.ingest()            # the standby ends the run's statement or session
        configure(standby, hot_standby_feedback="on")
        feedback, vacuumed[:] = True, []
        e2e.pipeline.cycle()
    caught_up(primary, standby)
    e2e.pipeline.cycle()                     # the update made during the run

    assert vacuumed
    audit_clean(e2e)


def test_an_enum_label_renamed_on_the_primary_while_a_run_read_the_standby_is_read_again(
        replica, captured_logs):
    primary, standby, e2e = replica
    e2e.pipeline.cycle()
    ddl = primary.connect()
    try:
        ddl.run("START TRANSACTION")
        ddl.run('ALTER TYPE "TransactionType" RENAME VALUE \'SALE\' TO \'SALES\'')
        with primary.session() as conn:   # a later xid completes: the snapshot's xmax passes
            business(conn, seed=5, steps=1)
        caught_up(primary, standby)
        # A standby's snapshot lists no running xid: judged by xids, the rename looks seen.
        while_open = e2e.pipeline.cycle()
        ddl.run("COMMIT")
    finally:
        ddl.close()
    caught_up(primary, standby)

    renamed = e2e.pipeline.cycle()

    with standby.session() as conn:
        [[transactions]] = conn.run('SELECT count(*) FROM "transaction"')
    assert while_open.ingest["rows"]["transaction"] < transactions
    assert renamed.ingest["rows"]["transaction"] == transactions
    [warning] = [line for line in captured_logs()
                 if line["message"].startswith("source tables redefined since the previous run")]
    assert warning["tables"] == ["transaction"]
    audit_clean(e2e)
