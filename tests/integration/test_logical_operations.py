"""Log-based capture survives what operators do to a source: each case on a real server.

A publication that drifted, a TRUNCATE, tables idle on a busy cluster, a slot
lost (dropped, invalidated), an unchanged TOASTed value, a manifest whose
position is beyond the server's WAL: each ends in the right rows and deletions,
or a named error, never silent loss or a wedge.
"""
import time
import uuid
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from aws_lambda_powertools.utilities import parameters

from totes import errors, extract, ingest, keys, logical, storage, timestamps
from totes.capture import RESTART_MARGIN
from totes.manifest import LogicalPosition
from totes.source import SOURCE_TABLES
from totes_local import stack

from logical_cluster import logical_cluster  # noqa: F401  (the module's fixture)
from test_ingest import T0, insert, sales_order, seed_one_of_each
from test_logical_capture import history, lines, manifests, slot_confirmed, source  # noqa: F401

LONG = "Ünïcödé " + "".join(chr(0x41 + (n * 7919) % 26) + str(n % 97) for n in range(4000))


def started(source):  # noqa: F811
    """Seed the source and run twice: the backfill, then a first read of the slot."""
    seed_one_of_each(source)
    ingest.run_ingest()
    ingest.run_ingest()


def restarted_since_the_last_manifest(monkeypatch):
    """Make the server say it started a minute from now: after every manifest, as a restore does.

    S3 stamps the manifests; the test cannot move that clock back, so it moves the start on.
    """
    identity = extract.source_identity
    start = timestamps.instant_text(datetime.now(timezone.utc) + timedelta(minutes=1))
    monkeypatch.setattr(extract, "source_identity",
                        lambda conn: replace(identity(conn), started=start))


def up_past_the_restart_margin(source):  # noqa: F811
    """Wait until the server has run past the restart margin: a manifest written now follows it.

    (S3 stamps whole seconds, and a start up to the margin before the stamp counts as a restart.)
    """
    [[up]] = source.run("SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8")
    time.sleep(max(0.0, RESTART_MARGIN.total_seconds() + 2 - up))


def keys_deleted(bucket, table):
    """Every key a table's deletion records name, across all runs."""
    return sorted(row[SOURCE_TABLES[table]]
                  for row in history(bucket, table, "deleted_files"))


def published(conn):
    """(schema, table) of every table the publication holds."""
    return sorted(tuple(row) for row in conn.run(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'totes_ingest'"))


def read_directly(conn, position):
    """Read the slot as a run does, outside a run (writing nothing: the budget is 0)."""
    conn.run("START TRANSACTION")
    try:
        logical.read_changes(conn, position, 0, lambda *_: None, 10)
    finally:
        conn.run("ROLLBACK")


OURS = sorted(("public", table) for table in SOURCE_TABLES)


# --- 18.9: an unchanged TOASTed value -------------------------------------------------------

def test_an_unchanged_toasted_value_is_carried_with_its_right_value_and_never_wedges(
        source, aws):  # noqa: F811
    started(source)
    for address_id in (2, 3):
        insert(source, "address", address_id=address_id, address_line_1="x", city="Leeds",
               postal_code="L", country=LONG, phone="1", created_at=T0, last_updated=T0)
    ingest.run_ingest()
    # Address 2: its update is the first change of the row in the read (filled from the
    # run's snapshot); address 4: inserted and updated in one read (filled from the insert's
    # version); address 3: updated, then deleted before the run (the version is left out).
    insert(source, "address", address_id=4, address_line_1="x", city="Leeds",
           postal_code="L", country=LONG + "4", phone="1", created_at=T0, last_updated=T0)
    source.run("UPDATE address SET phone = '2' WHERE address_id IN (2, 3, 4)")
    source.run("DELETE FROM address WHERE address_id = 3")

    result = ingest.run_ingest()
    assert ingest.run_ingest().total_rows == 0      # nothing left stuck in the slot

    bucket = aws["INGEST_BUCKET"]
    last = [row for row in lines(bucket, manifests(bucket)[-2], "address")]
    assert [(row["address_id"], row["phone"], row["country"]) for row in last] == [
        (4, "1", LONG + "4"), (2, "2", LONG), (4, "2", LONG + "4")]
    assert result.rows["address"] == 3
    assert keys_deleted(bucket, "address") == [3]


# --- 21.5 and 18.5: the publication is exactly the 11 tables ----------------------------------

def test_a_table_of_another_schema_in_the_publication_never_arrives_and_is_removed(
        source, aws):  # noqa: F811
    started(source)
    source.run("CREATE SCHEMA shadow")
    source.run("CREATE TABLE shadow.sales_order (LIKE public.sales_order INCLUDING INDEXES)")
    source.run("ALTER PUBLICATION totes_ingest ADD TABLE shadow.sales_order")
    source.run("INSERT INTO shadow.sales_order SELECT * FROM public.sales_order")
    source.run("UPDATE shadow.sales_order SET sales_order_id = 777")
    sales_order(source, 2, T0)

    ingest.run_ingest()

    ids = [row["sales_order_id"] for row in history(aws["INGEST_BUCKET"], "sales_order")]
    assert 777 not in ids and ids.count(2) == 1
    assert published(source) == OURS


def test_a_table_dropped_from_the_publication_is_added_back_and_re_synced(source, aws):  # noqa: F811,E501
    started(source)
    insert(source, "transaction", transaction_id=2, transaction_type="PURCHASE",
           sales_order_id=None, purchase_order_id=1, created_at=T0, last_updated=T0)
    insert(source, "payment", payment_id=2, transaction_id=2, counterparty_id=1,
           payment_amount=5, currency_id=1, payment_type_id=1, paid=False,
           payment_date="2024-11-20", company_ac_number=1, counterparty_ac_number=2,
           created_at=T0, last_updated=T0)
    ingest.run_ingest()
    source.run("ALTER PUBLICATION totes_ingest DROP TABLE payment")
    source.run("UPDATE payment SET paid = true WHERE payment_id = 1")     # lost from the log
    source.run("DELETE FROM payment WHERE payment_id = 2")                # lost too
    source.run("ALTER PUBLICATION totes_ingest SET (publish = 'insert, update')")

    result = ingest.run_ingest()
    source.run("UPDATE payment SET payment_amount = 11 WHERE payment_id = 1")
    ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    payments = [(row["payment_id"], row["paid"], row["payment_amount"])
                for row in history(bucket, "payment")]
    assert payments[-2:] == [(1, True, 10), (1, True, 11)]
    assert keys_deleted(bucket, "payment") == [2]
    assert published(source) == OURS
    [[actions]] = source.run("SELECT ARRAY[pubinsert, pubupdate, pubdelete, pubtruncate] FROM "
                             "pg_publication WHERE pubname = 'totes_ingest'")
    assert actions == [True] * 4
    assert result.resync is not None and manifests(bucket)[-2]["logical"]["resync"] == []
    assert ingest.run_ingest().total_rows == 0


def test_drift_a_login_may_not_repair_fails_naming_the_sql(source, aws, logical_cluster):  # noqa: F811,E501
    started(source)
    role = f"reader_{uuid.uuid4().hex[:6]}"
    name = source.run("SELECT current_database()")[0][0]
    source.run(f"CREATE ROLE {role} LOGIN REPLICATION")
    source.run(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    source.run("ALTER PUBLICATION totes_ingest DROP TABLE staff")
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**logical_cluster.postgres.secret(name),
                                                "username": role}}, buckets=())
    parameters.clear_caches()                       # the runs above cached the superuser
    try:
        with pytest.raises(logical.LogicalSetupError,
                           match='lacks staff.*a DBA must run: ALTER PUBLICATION "totes_ingest" '
                                 'SET TABLE "public"."address"') as raised:
            ingest.run_ingest()
        assert errors.kind_of(raised.value) == errors.INPUT
    finally:
        source.run(f"DROP OWNED BY {role}")
        source.run(f"DROP ROLE {role}")


def test_a_publication_for_all_tables_is_refused_and_once_made_again_everything_re_syncs(
        source, aws):  # noqa: F811
    started(source)
    source.run("DROP PUBLICATION totes_ingest")
    source.run("UPDATE sales_order SET units_sold = 42 WHERE sales_order_id = 1")
    source.run("CREATE PUBLICATION totes_ingest FOR ALL TABLES")
    with pytest.raises(logical.LogicalSetupError, match="FOR ALL TABLES.*DROP PUBLICATION"):
        ingest.run_ingest()
    source.run("DROP PUBLICATION totes_ingest")                        # the DBA does as told
    source.run(logical._publication_sql("totes_ingest"))
    source.run("DELETE FROM payment WHERE payment_id = 1")

    result = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    assert result.resync is not None and result.complete
    assert [row["units_sold"] for row in history(bucket, "sales_order")][-1] == 42
    assert keys_deleted(bucket, "payment") == [1]
    sales_order(source, 2, T0)
    assert ingest.run_ingest().rows["sales_order"] == 1


# --- 18.6: TRUNCATE ---------------------------------------------------------------------------

def test_a_truncate_turns_the_tables_rows_into_deletions_in_the_same_run(source, aws):  # noqa: F811,E501
    started(source)
    sales_order(source, 2, T0)
    sales_order(source, 3, T0)
    ingest.run_ingest()
    source.run("START TRANSACTION")
    sales_order(source, 4, T0)                      # inserted, then truncated with the rest
    source.run("TRUNCATE sales_order CASCADE")      # transaction and payment go too
    sales_order(source, 3, T0)                      # reloaded: stays current
    source.run("COMMIT")

    result = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    assert keys_deleted(bucket, "sales_order") == [1, 2, 4]
    assert keys_deleted(bucket, "transaction") == [1] and keys_deleted(bucket, "payment") == [1]
    assert result.deleted["sales_order"] == 3
    assert ingest.run_ingest().total_rows == 0


# --- 18.7: quiet tables on a busy cluster -----------------------------------------------------

def test_idle_tables_on_a_busy_cluster_keep_the_slots_lag_bounded(source, aws):  # noqa: F811
    started(source)
    source.run("CREATE TABLE noise (n integer, pad text)")
    lags, held = [], []
    for _ in range(6):
        source.run("INSERT INTO noise SELECT n, repeat('x', 200) FROM generate_series(1, 5000) n")
        # What the background writer logs every 15 s on a busy server (a record of the
        # running transactions), which lets a slot's restart point follow its position.
        source.run("SELECT pg_log_standby_snapshot()")
        result = ingest.run_ingest()
        assert result.total_rows == 0
        [[behind]] = source.run(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
            "FROM pg_replication_slots WHERE slot_name = :slot", slot=source.slot)
        lags.append(behind)
        held.append(result.slot_lag_bytes)
    # Each round writes about 1.3 MB of WAL to a table outside the publication.
    assert max(lags) < 200_000, lags
    assert max(held[2:]) < 4 * 2**20, held
    sales_order(source, 2, T0)
    assert ingest.run_ingest().rows["sales_order"] == 1


# --- 18.8: a lost slot ------------------------------------------------------------------------

def test_a_dropped_slot_is_made_again_and_every_table_re_synced(source, aws, caplog):  # noqa: F811,E501
    started(source)
    source.run("SELECT pg_drop_replication_slot(:slot)", slot=source.slot)
    source.run("UPDATE sales_order SET units_sold = 9 WHERE sales_order_id = 1")   # unlogged
    source.run("DELETE FROM payment WHERE payment_id = 1")                         # unlogged

    result = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    assert result.resync is not None and result.complete
    assert ("SourceResyncs", 1) in [(m.name, m.value) for m in result.metrics()]
    assert "replication slot is missing" in caplog.text
    assert [row["units_sold"] for row in history(bucket, "sales_order")][-1] == 9
    assert keys_deleted(bucket, "payment") == [1]
    assert slot_confirmed(source) == manifests(bucket)[-1]["logical"]["lsn"]
    sales_order(source, 2, T0)
    follow = ingest.run_ingest()
    assert follow.rows["sales_order"] == 1 and follow.resync is None


def test_a_slot_ahead_of_the_last_run_on_a_restarted_server_re_syncs_instead_of_refusing(
        source, aws, monkeypatch, caplog):  # noqa: F811
    started(source)
    sales_order(source, 2, T0)
    # As a run that re-synced for a restart left it: the slot made again past the committed
    # position, then the run failed before its manifest.
    source.run("SELECT pg_replication_slot_advance(:slot, pg_current_wal_lsn())",
               slot=source.slot)
    restarted_since_the_last_manifest(monkeypatch)

    result = ingest.run_ingest()

    assert result.resync is not None and result.complete
    assert "is not at that run's position" in caplog.text
    assert 2 in [row["sales_order_id"] for row in history(aws["INGEST_BUCKET"], "sales_order")]


@pytest.mark.parametrize("server_start", [None, "2020-01-01T00:00:00.000000Z"],
                         ids=["this server's start", "another server start"])
def test_a_slot_ahead_of_the_last_run_on_a_server_that_did_not_restart_is_refused(
        source, aws, server_start):  # noqa: F811
    started(source)
    bucket = aws["INGEST_BUCKET"]
    sales_order(source, 2, T0)
    # Another consumer read the slot past the last run's position.
    source.run("SELECT pg_replication_slot_advance(:slot, pg_current_wal_lsn())",
               slot=source.slot)
    ahead = slot_confirmed(source)
    # The newest manifest, written after the server started, may record another start (a
    # forger's, or another server's): only a start after S3 stored it tells of a restart.
    last, run = manifests(bucket)[-1], keys.new_run_id()
    last.update(run_id=str(run), previous_manifest=storage.latest_manifest_key(bucket))
    for entry in last["tables"].values():
        entry.update(rows=0, files=[], deleted_rows=0, deleted_files=[], captured_keys=None)
    last["source"]["started"] = server_start or last["source"]["started"]
    up_past_the_restart_margin(source)
    storage.put_new_json(bucket, keys.manifest_key(run), last)

    with pytest.raises(logical.SlotPositionError, match="something else consumed it"):
        ingest.run_ingest()

    assert slot_confirmed(source) == ahead


def test_a_slot_invalidated_by_max_slot_wal_keep_size_is_made_again(source, aws):  # noqa: F811
    started(source)
    source.run("ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'")
    source.run("SELECT pg_reload_conf()")
    try:
        source.run("CREATE TABLE noise (n integer)")
        for n in range(4):
            source.run("INSERT INTO noise VALUES (:n)", n=n)
            source.run("SELECT pg_switch_wal()")
        source.run("UPDATE sales_order SET units_sold = 8 WHERE sales_order_id = 1")
        source.run("CHECKPOINT")
        [[status]] = source.run("SELECT wal_status FROM pg_replication_slots "
                                "WHERE slot_name = :slot", slot=source.slot)
        assert status == "lost"
        position = LogicalPosition(source.slot, "totes_ingest", "0/0", backfilled=True)
        with pytest.raises(logical.SlotUnavailableError, match="55000") as raised:
            read_directly(source, position)
        assert errors.kind_of(raised.value) == errors.TRANSIENT
    finally:
        source.run("ALTER SYSTEM RESET max_slot_wal_keep_size")
        source.run("SELECT pg_reload_conf()")

    result = ingest.run_ingest()

    assert result.resync is not None
    assert [row["units_sold"] for row in history(aws["INGEST_BUCKET"], "sales_order")][-1] == 8
    [[status]] = source.run("SELECT wal_status FROM pg_replication_slots WHERE slot_name = :slot",
                            slot=source.slot)
    assert status != "lost"


# --- 18.10: a slot or publication missing mid-run is a named, transient error -------------------

def test_a_slot_or_publication_missing_when_read_is_a_named_transient_error(source):  # noqa: F811,E501
    seed_one_of_each(source)
    logical.ensure_source(source, source.slot, "totes_ingest")
    position = LogicalPosition(source.slot, "totes_ingest", "0/0", backfilled=True)

    with pytest.raises(logical.SlotUnavailableError, match="42704") as raised:
        read_directly(source, LogicalPosition("totes_nosuchslot", "totes_ingest", "0/0"))
    assert errors.kind_of(raised.value) == errors.TRANSIENT
    source.run("DROP PUBLICATION totes_ingest")
    sales_order(source, 2, T0)
    with pytest.raises(logical.SlotUnavailableError, match="42704.*publication"):
        read_directly(source, position)


# --- 21.2: a manifest's position beyond the server's WAL ---------------------------------------

@pytest.mark.parametrize("server_start", [None, "2020-01-01T00:00:00.000000Z"],
                         ids=["this server's start", "another server start"])
def test_a_manifest_position_beyond_the_servers_wal_is_refused_naming_it(
        source, aws, server_start):  # noqa: F811
    started(source)
    bucket = aws["INGEST_BUCKET"]
    # Forged well: its own run, after the newest manifest, naming no files; only the LSN lies.
    forged, run = manifests(bucket)[-1], keys.new_run_id()
    forged.update(run_id=str(run), previous_manifest=storage.latest_manifest_key(bucket))
    for entry in forged["tables"].values():
        entry.update(rows=0, files=[], deleted_rows=0, deleted_files=[], captured_keys=None)
    forged["logical"]["lsn"] = "FFFF/0"
    # A stray manifest from another server, or a forger, records another server start: the
    # server did not start after the manifest was written, so no restore explains it.
    forged["source"]["started"] = server_start or forged["source"]["started"]
    up_past_the_restart_margin(source)
    forged_key = keys.manifest_key(run)
    storage.put_new_json(bucket, forged_key, forged)
    before = slot_confirmed(source)

    with pytest.raises(logical.ManifestPositionError, match=f"{forged_key}.*FFFF/0") as raised:
        ingest.run_ingest()

    assert errors.kind_of(raised.value) == errors.INPUT
    assert slot_confirmed(source) == before


def test_a_manifest_from_another_cluster_within_the_wal_re_syncs_instead_of_skipping_changes(
        source, aws, caplog):  # noqa: F811
    started(source)
    bucket = aws["INGEST_BUCKET"]
    sales_order(source, 2, T0)
    # A stray manifest (or a secret pointed at another cluster): its position lies within this
    # server's WAL, past the slot; advancing the slot to it would skip sales order 2.
    [[wal]] = source.run("SELECT pg_current_wal_lsn()::text")
    stray, run = manifests(bucket)[-1], keys.new_run_id()
    stray.update(run_id=str(run), previous_manifest=storage.latest_manifest_key(bucket))
    for entry in stray["tables"].values():
        entry.update(rows=0, files=[], deleted_rows=0, deleted_files=[], captured_keys=None)
    stray["logical"]["lsn"] = wal
    stray["source"]["system_identifier"] = "7000000000000000001"
    storage.put_new_json(bucket, keys.manifest_key(run), stray)

    result = ingest.run_ingest()

    assert result.resync is not None and result.complete
    assert "the source is another cluster" in caplog.text
    assert 2 in [row["sales_order_id"] for row in history(bucket, "sales_order")]


def test_a_slot_lost_during_the_initial_backfill_starts_it_again(source, aws, monkeypatch):  # noqa: F811,E501
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "6")
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "100000")   # only a forced sweep runs
    seed_one_of_each(source)
    insert(source, "design", design_id=2, design_name="Steel", file_location="/d",
           file_name="s.json", created_at=T0, last_updated=T0)
    first = ingest.run_ingest()           # address, currency, department, design 1 and 2, …
    assert not first.complete and first.rows["design"] == 2
    source.run("SELECT pg_drop_replication_slot(:slot)", slot=source.slot)
    source.run("UPDATE address SET city = 'York' WHERE address_id = 1")   # no slot sees these
    source.run("DELETE FROM design WHERE design_id = 2")

    runs = [ingest.run_ingest()]
    while not runs[-1].complete:
        runs.append(ingest.run_ingest())
        assert len(runs) < 10

    bucket = aws["INGEST_BUCKET"]
    assert runs[0].resync is not None and all(run.resync is None for run in runs[1:])
    assert [row["city"] for row in history(bucket, "address")][-1] == "York"
    assert keys_deleted(bucket, "design") == [2]
    sales_order(source, 2, T0)
    source.run("DELETE FROM purchase_order")
    follow = ingest.run_ingest()
    assert follow.rows["sales_order"] == 1 and follow.deleted["purchase_order"] == 1


def test_a_position_beyond_the_wal_of_a_restarted_server_re_syncs_instead_of_refusing(
        source, aws, monkeypatch, caplog):  # noqa: F811
    started(source)
    bucket = aws["INGEST_BUCKET"]
    # As after a restore from a backup, before the restored server's WAL has reached the
    # last run's position: the newest manifest is this pipeline's, the server went back.
    last, run = manifests(bucket)[-1], keys.new_run_id()
    last.update(run_id=str(run), previous_manifest=storage.latest_manifest_key(bucket))
    for entry in last["tables"].values():
        entry.update(rows=0, files=[], deleted_rows=0, deleted_files=[], captured_keys=None)
    last["logical"]["lsn"] = "FFFF/0"
    storage.put_new_json(bucket, keys.manifest_key(run), last)
    restarted_since_the_last_manifest(monkeypatch)
    sales_order(source, 2, T0)

    result = ingest.run_ingest()

    assert result.resync is not None and result.complete
    assert "WAL is behind that run's position" in caplog.text
    assert 2 in [row["sales_order_id"] for row in history(bucket, "sales_order")]


def test_a_restored_server_started_before_the_last_manifest_re_syncs_rather_than_skip_its_changes(
        source, aws):  # noqa: F811
    # A restore to a new instance (same cluster, same timeline) comes up while the old server
    # still serves the pipeline; the endpoint is switched after the last manifest was written.
    # The restored server cannot prove a restart since that manifest (it started before it),
    # but its start differs from the one recorded, and its slot is behind: advancing the slot
    # would skip the changes it took (sales order 2), so every table is re-read instead.
    started(source)
    bucket = aws["INGEST_BUCKET"]
    sales_order(source, 2, T0)
    [[wal]] = source.run("SELECT pg_current_wal_lsn()::text")
    last, run = manifests(bucket)[-1], keys.new_run_id()
    last.update(run_id=str(run), previous_manifest=storage.latest_manifest_key(bucket))
    for entry in last["tables"].values():
        entry.update(rows=0, files=[], deleted_rows=0, deleted_files=[], captured_keys=None)
    last["logical"]["lsn"] = wal
    last["source"]["started"] = "2020-01-01T00:00:00.000000Z"  # the old server's start
    up_past_the_restart_margin(source)
    storage.put_new_json(bucket, keys.manifest_key(run), last)

    result = ingest.run_ingest()

    assert result.resync is not None and "another start time" in result.resync
    assert 2 in [row["sales_order_id"] for row in history(bucket, "sales_order")]
