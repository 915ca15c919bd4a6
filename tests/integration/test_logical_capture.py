"""Log-based capture (``CAPTURE_MODE=logical``) on a real server with ``wal_level = logical``.

Every committed change arrives as its own version, in commit order, exactly once
across crashes; what was rolled back never arrives; a large transaction drains
over several runs within the row budget; a source that is not ready fails with
the SQL a DBA must run.
"""
import tracemalloc
import uuid
from dataclasses import replace
from datetime import timedelta

import pytest

from totes import ingest, jsonl, logical, logical_capture, stage, storage
from totes.capture_mode import IngestSettings
from totes.manifest import IngestManifest, LogicalPosition
from totes.observability import metrics_for
from totes_local import stack

from logical_cluster import logical_cluster  # noqa: F401  (the module's fixture)
from test_ingest import T0, insert, sales_order, seed_one_of_each


@pytest.fixture
def source(logical_cluster, aws, monkeypatch):  # noqa: F811
    """A fresh totesys on the logical cluster as the pipeline's source, in logical mode.

    Yields a direct connection; the test's slot (a unique name: slots are per
    cluster) is dropped afterwards.
    """
    name = logical_cluster.fresh_source()
    slot = f"totes_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CAPTURE_MODE", "logical")
    monkeypatch.setenv("REPLICATION_SLOT", slot)
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    stack.provision({aws["TOTESYS_SECRET_ID"]: logical_cluster.postgres.secret(name)},
                    buckets=())
    conn = logical_cluster.postgres.connect(name)
    conn.slot = slot
    yield conn
    conn.run("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
             "WHERE slot_name = :slot", slot=slot)
    conn.close()


def manifests(bucket):
    """Every committed manifest, oldest first."""
    return [storage.read_json(bucket, key) for key in storage.manifest_keys_after(bucket, None)]


def lines(bucket, manifest, table, kind="files"):
    """The rows (or, with ``kind="deleted_files"``, deletion records) a manifest lists."""
    return [row for file in manifest["tables"][table][kind]
            for row in jsonl.decode_lines(storage.read_bytes(bucket, file["key"]).splitlines())]


def history(bucket, table, kind="files"):
    """Every row a table's manifests list, in commit order across runs."""
    return [row for manifest in manifests(bucket) for row in lines(bucket, manifest, table, kind)]


def slot_confirmed(conn):
    """The slot's confirmed position, as text."""
    return conn.run("SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                    "WHERE slot_name = :slot", slot=conn.slot)[0][0]


def test_the_first_run_bootstraps_the_slot_and_backfills_then_reads_the_slot(source, aws):
    seed_one_of_each(source)

    first = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    [manifest] = manifests(bucket)
    assert first.total_rows == 11 and first.complete
    assert manifest["logical"]["backfilled"] and manifest["logical"]["slot"] == source.slot
    assert source.run("SELECT count(*) FROM pg_publication_tables WHERE pubname = "
                      "'totes_ingest'") == [[11]]
    assert slot_confirmed(source) == manifest["logical"]["lsn"]
    assert ingest.run_ingest().total_rows == 0   # nothing changed since: the slot is empty


def test_an_order_amended_three_times_between_two_runs_arrives_as_four_versions_in_order(
        source, aws):
    seed_one_of_each(source)
    ingest.run_ingest()
    sales_order(source, 2, T0 + timedelta(minutes=1))
    for minute, units in ((2, 5), (3, 6), (4, 7)):
        source.run("UPDATE sales_order SET units_sold = :u, last_updated = :at "
                   "WHERE sales_order_id = 2", u=units, at=T0 + timedelta(minutes=minute))

    amended = ingest.run_ingest()

    versions = [(row["units_sold"], row["last_updated"])
                for row in history(aws["INGEST_BUCKET"], "sales_order")
                if row["sales_order_id"] == 2]
    assert versions == [(2, "2024-11-15T14:01:00.120"), (5, "2024-11-15T14:02:00.120"),
                        (6, "2024-11-15T14:03:00.120"), (7, "2024-11-15T14:04:00.120")]
    assert amended.rows["sales_order"] == 4 and amended.total_rows == 4


def test_exactly_the_committed_transactions_arrive(source, aws):
    seed_one_of_each(source)
    ingest.run_ingest()
    sales_order(source, 2, T0)                                      # committed
    source.run("START TRANSACTION")
    sales_order(source, 3, T0)
    source.run("UPDATE sales_order SET units_sold = 99 WHERE sales_order_id = 1")
    source.run("ROLLBACK")                                          # rolled back
    source.run("START TRANSACTION")
    sales_order(source, 4, T0)
    source.run("SAVEPOINT s")
    sales_order(source, 5, T0)
    source.run("ROLLBACK TO SAVEPOINT s")                           # half rolled back
    source.run("UPDATE payment SET paid = true WHERE payment_id = 1")
    source.run("COMMIT")
    source.run("DELETE FROM payment WHERE payment_id = 1")         # committed delete
    source.run("START TRANSACTION")
    source.run("DELETE FROM sales_order WHERE sales_order_id = 2")
    source.run("ROLLBACK")                                          # rolled-back delete

    ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    last = manifests(bucket)[-1]
    assert [row["sales_order_id"] for row in lines(bucket, last, "sales_order")] == [2, 4]
    assert [(row["payment_id"], row["paid"]) for row in lines(bucket, last, "payment")] == [
        (1, True)]
    [deletion] = lines(bucket, last, "payment", "deleted_files")
    assert deletion["payment_id"] == 1 and set(deletion) == {"payment_id", "deleted_at"}
    assert lines(bucket, last, "sales_order", "deleted_files") == []
    assert last["tables"]["payment"]["deleted_rows"] == 1


def test_a_transaction_open_across_runs_arrives_once_it_commits(source, aws, logical_cluster):  # noqa: F811,E501
    seed_one_of_each(source)
    ingest.run_ingest()
    slow = logical_cluster.postgres.connect(source.run("SELECT current_database()")[0][0])
    try:
        slow.run("START TRANSACTION")
        sales_order(slow, 2, T0 - timedelta(hours=1))
        sales_order(source, 3, T0)
        during = ingest.run_ingest()
        slow.run("COMMIT")
    finally:
        slow.close()

    after = ingest.run_ingest()

    assert during.rows["sales_order"] == 1 and after.rows["sales_order"] == 1
    assert [row["sales_order_id"] for row in history(aws["INGEST_BUCKET"], "sales_order")] == [
        1, 3, 2]
    assert ingest.run_ingest().total_rows == 0


def changes(conn):
    """A fixed mix of inserts, updates and deletes across several transactions."""
    sales_order(conn, 2, T0)
    conn.run("UPDATE sales_order SET units_sold = 3, last_updated = :at "
             "WHERE sales_order_id = 2", at=T0 + timedelta(minutes=1))
    conn.run("START TRANSACTION")
    conn.run("UPDATE payment SET paid = true WHERE payment_id = 1")
    conn.run("DELETE FROM payment WHERE payment_id = 1")
    insert(conn, "address", address_id=2, address_line_1="2 Road", city="York",
           postal_code="Y1", country="UK", phone="1", created_at=T0, last_updated=T0)
    conn.run("COMMIT")


def warehouse_input(bucket):
    """What transform would read, across all runs, with the deletion times left out."""
    return {table: (history(bucket, table),
                    [{k: v for k, v in row.items() if k != "deleted_at"}
                     for row in history(bucket, table, "deleted_files")])
            for table in ("sales_order", "payment", "address")}


def fail_once(monkeypatch, target, name):
    """Make ``target.name`` raise on its next call only (a crash at that point)."""
    original = getattr(target, name)
    calls = []

    def crash(*args, **kwargs):
        if not calls:
            calls.append(1)
            raise ConnectionResetError(f"crash in {name}")
        return original(*args, **kwargs)
    monkeypatch.setattr(target, name, crash)


@pytest.mark.parametrize("crash", ["after the data files", "after the manifest",
                                   "before the slot advance"])
def test_a_crash_anywhere_ends_identical_to_a_clean_run(source, aws, monkeypatch, crash,
                                                        logical_cluster):  # noqa: F811
    # The clean run, on its own database, slot and bucket.
    clean_env = stack.isolated_environment(aws["AWS_ENDPOINT_URL"], uuid.uuid4().hex[:8])
    clean_db = logical_cluster.fresh_source()
    clean = logical_cluster.postgres.connect(clean_db)
    clean_slot = f"totes_{uuid.uuid4().hex[:8]}"
    try:
        stack.provision({clean_env["TOTESYS_SECRET_ID"]: logical_cluster.postgres.secret(
            clean_db)}, buckets=(clean_env["INGEST_BUCKET"],))
        with monkeypatch.context() as clean_patch:
            for variable in ("INGEST_BUCKET", "TOTESYS_SECRET_ID"):
                clean_patch.setenv(variable, clean_env[variable])
            clean_patch.setenv("REPLICATION_SLOT", clean_slot)
            seed_one_of_each(clean)
            ingest.run_ingest()
            changes(clean)
            ingest.run_ingest()
            expected = warehouse_input(clean_env["INGEST_BUCKET"])
    finally:
        clean.run("SELECT pg_drop_replication_slot(:slot)", slot=clean_slot)
        clean.close()

    seed_one_of_each(source)
    ingest.run_ingest()
    changes(source)
    if crash == "after the data files":
        fail_once(monkeypatch, storage, "put_new_json")
    elif crash == "after the manifest":
        fail_once(monkeypatch, logical_capture, "release_slot")
    else:
        fail_once(monkeypatch, logical, "advance")
    before = slot_confirmed(source)
    with pytest.raises(ConnectionResetError):
        ingest.run_ingest()
    assert slot_confirmed(source) == before    # the slot never moves before a manifest
    ingest.run_ingest()
    ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    assert warehouse_input(bucket) == expected
    assert slot_confirmed(source) == manifests(bucket)[-1]["logical"]["lsn"]


def test_a_large_transaction_drains_over_runs_within_the_budget_in_bounded_memory(
        source, aws, monkeypatch):
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "3000")
    monkeypatch.setenv("CHUNK_ROWS", "1000")
    seed_one_of_each(source)
    ingest.run_ingest()
    source.run("START TRANSACTION")
    source.run(
        "INSERT INTO sales_order (sales_order_id, created_at, last_updated, design_id, "
        "staff_id, counterparty_id, units_sold, unit_price, currency_id, agreed_delivery_date, "
        "agreed_payment_date, agreed_delivery_location_id) SELECT n, :at, :at, 1, 1, 1, n, "
        "n / 100.0, 1, '2024-11-20', '2024-11-21', 1 FROM generate_series(2, 10001) AS n",
        at=T0)
    sales_order(source, 200_000, T0)      # a later change in the same transaction
    source.run("COMMIT")
    sales_order(source, 300_000, T0)      # and a transaction after it

    runs, peaks = [], []
    while not runs or not runs[-1].complete:
        tracemalloc.start()
        runs.append(ingest.run_ingest())
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert len(runs) < 10

    assert [run.total_rows for run in runs] == [3000, 3000, 3000, 1002]
    bucket = aws["INGEST_BUCKET"]
    ids = [row["sales_order_id"] for row in history(bucket, "sales_order")]
    assert ids == [1, *range(2, 10002), 200_000, 300_000]
    positions = [IngestManifest.parse(document).logical for document in manifests(bucket)[1:]]
    assert [p.partial_changes for p in positions] == [3000, 6000, 9000, 0]
    assert len({p.partial_commit_lsn for p in positions[:3]}) == 1
    # A run peaks near 12 MB whether the transaction holds 10,000 or 20,000 rows; its
    # 10,000 rows decoded at once take over 25 MB (peaks at scale: benchmarks/bench_logical.py).
    assert max(peaks) < 20 * 2**20, peaks
    assert ingest.run_ingest().total_rows == 0


def test_a_source_without_logical_wal_is_refused_naming_the_setting(source_db, aws, monkeypatch):
    monkeypatch.setenv("CAPTURE_MODE", "logical")
    with pytest.raises(logical.LogicalSetupError, match="wal_level.*rds.logical_replication"):
        ingest.run_ingest()
    assert manifests(aws["INGEST_BUCKET"]) == []


def test_a_slot_to_make_again_on_a_source_whose_wal_level_was_lowered_names_the_setting(
        source_db):
    # wal_level lowered after a restart (the server only starts once the slot is dropped):
    # the slot is missing, and making it again cannot work until the setting is back.
    position = LogicalPosition("totes_gone", "totes_ingest", "0/0", backfilled=True)
    with pytest.raises(logical.LogicalSetupError, match="wal_level is replica, not logical"):
        logical.resume(source_db, position, logical.PublicationState(oid=1))


def test_a_login_without_the_privileges_gets_the_sql_to_run(source, aws, logical_cluster):  # noqa: F811,E501
    role = f"reader_{uuid.uuid4().hex[:6]}"
    name = source.run("SELECT current_database()")[0][0]
    source.run(f"CREATE ROLE {role} LOGIN")
    source.run(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    stack.provision({aws["TOTESYS_SECRET_ID"]: {**logical_cluster.postgres.secret(name),
                                                "username": role}}, buckets=())
    try:
        with pytest.raises(logical.LogicalSetupError,
                           match='CREATE PUBLICATION "totes_ingest" FOR TABLE "address".*'
                                 "REPLICATION.*rds_replication"):
            ingest.run_ingest()
        source.run(logical._publication_sql("totes_ingest"))        # the DBA runs it
        with pytest.raises(logical.LogicalSetupError,
                           match=f"pg_create_logical_replication_slot\\('{source.slot}', "
                                 "'pgoutput'\\).*rds_replication"):
            ingest.run_ingest()
        source.run(f"ALTER ROLE {role} REPLICATION")                  # and grants this
        seed_one_of_each(source)
        assert ingest.run_ingest().total_rows == 11
    finally:
        source.run("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                   "WHERE slot_name = :slot", slot=source.slot)
        source.run("DROP PUBLICATION IF EXISTS totes_ingest")
        source.run(f"DROP OWNED BY {role}")
        source.run(f"DROP ROLE {role}")


def test_the_lag_rises_while_ingest_is_paused(source, aws):
    seed_one_of_each(source)
    ingest.run_ingest()
    idle = logical.lag_bytes(source, source.slot)
    for order in range(2, 200):
        sales_order(source, order, T0)
    paused = logical.lag_bytes(source, source.slot)
    ingest.run_ingest()
    source.run("CHECKPOINT")
    assert paused > idle + 20_000


def test_a_version_stamped_after_its_commit_is_counted_as_stamped_in_the_future(source, aws):
    seed_one_of_each(source)
    ingest.run_ingest()
    [[now]] = source.run("SELECT (now() AT TIME ZONE 'UTC')::timestamp(3)")
    sales_order(source, 2, now + timedelta(days=365))
    sales_order(source, 3, T0)

    result = ingest.run_ingest()

    assert result.rows["sales_order"] == 2
    assert {table: n for table, n in result.stamped_in_future.items() if n} == {"sales_order": 1}


@pytest.mark.parametrize("statements, table, column, now", [
    (['ALTER TYPE "TransactionType" RENAME VALUE \'SALE\' TO \'SALES\''],
     "transaction", "transaction_type", "SALES"),
    (["ALTER TABLE address DROP COLUMN city",
      "ALTER TABLE address ADD COLUMN city text NOT NULL DEFAULT 'Leeds'"],
     "address", "city", "Leeds"),
], ids=["enum-label-renamed", "column-dropped-and-added-again"])
def test_ddl_that_changes_every_row_without_writing_one_is_read_again_and_no_older_change_follows(
        source, aws, captured_logs, statements, table, column, now):
    seed_one_of_each(source)
    ingest.run_ingest()
    source.run(f'UPDATE "{table}" SET last_updated = :at',   # decoded with the old definition
               at=T0 + timedelta(minutes=1))
    for statement in statements:
        source.run(statement)                                # no row is written

    redefined = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    assert [row[column] for row in lines(bucket, manifests(bucket)[-1], table)] == [now]
    assert redefined.rows[table] == 1   # the re-read row; the slot's older update is not after it
    [warning] = [line for line in captured_logs()
                 if line["message"].startswith("source tables redefined since the previous run")]
    assert warning["tables"] == [table]
    assert ingest.run_ingest().total_rows == 0   # once: the next run reads nothing


def test_an_enum_label_renamed_in_a_savepoint_of_a_transaction_open_at_the_previous_slot_read(
        source, aws, logical_cluster, captured_logs):  # noqa: F811
    seed_one_of_each(source)
    ingest.run_ingest()                                    # the backfill
    ddl = logical_cluster.postgres.connect(source.run("SELECT current_database()")[0][0])
    try:
        ddl.run("START TRANSACTION")
        ddl.run("SELECT txid_current()")                   # the top-level xid
        ddl.run("SAVEPOINT rename")                        # the pg_enum row's xid: in no xip list
        ddl.run('ALTER TYPE "TransactionType" RENAME VALUE \'SALE\' TO \'SALES\'')
        ddl.run("RELEASE SAVEPOINT rename")
        source.run("UPDATE sales_order SET last_updated = :at", at=T0 + timedelta(minutes=5))
        ingest.run_ingest()                                # its snapshot taken while it is open
        ddl.run("COMMIT")
    finally:
        ddl.close()

    renamed = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    assert renamed.rows["transaction"] == 1
    assert [row["transaction_type"] for row in history(bucket, "transaction")][-1] == "SALES"
    [warning] = [line for line in captured_logs()
                 if line["message"].startswith("source tables redefined since the previous run")]
    assert warning["tables"] == ["transaction"]
    assert ingest.run_ingest().total_rows == 0


def test_a_slot_lagging_behind_a_finished_re_read_writes_no_older_version_after_it(
        source, aws, monkeypatch):
    seed_one_of_each(source)
    ingest.run_ingest()                                    # the backfill
    for minute in range(6):                                # a backlog in the log
        source.run("UPDATE sales_order SET last_updated = :at",
                   at=T0 + timedelta(minutes=minute + 1))
    source.run('UPDATE "transaction" SET last_updated = :at', at=T0 + timedelta(minutes=30))
    source.run('ALTER TYPE "TransactionType" RENAME VALUE \'SALE\' TO \'SALES\'')
    monkeypatch.setenv("INGEST_MAX_ROWS_PER_RUN", "4")     # the re-read ends before the slot
    runs = [ingest.run_ingest()]                           # reaches the update of transaction
    while not runs[-1].complete:
        runs.append(ingest.run_ingest())
        assert len(runs) < 10

    bucket = aws["INGEST_BUCKET"]
    assert len(runs) > 1
    # The backfill's version, then the re-read's (which holds the update): the update the
    # slot decodes later, with the old label, is not written after it.
    assert [row["transaction_type"] for row in history(bucket, "transaction")] == [
        "SALE", "SALES"]


@pytest.mark.parametrize("held, passes, deleted", [
    (logical.PENDING_DELETIONS, 1, []), (2, 2, [2, 3, 4])],
                         ids=["deletions-held-to-commit", "more-deletions-than-held"])
def test_a_transaction_deleting_and_inserting_the_same_keys_never_ends_them_deleted(
        source, aws, monkeypatch, held, passes, deleted):
    seed_one_of_each(source)
    for order_id in (2, 3, 4):
        sales_order(source, order_id, T0)
    ingest.run_ingest()
    monkeypatch.setattr(logical, "PENDING_DELETIONS", held)
    source.run("START TRANSACTION")   # a "replace": every order deleted, then inserted again
    source.run("DELETE FROM sales_order WHERE sales_order_id > 1")
    for order_id in (2, 3, 4):
        sales_order(source, order_id, T0 + timedelta(minutes=1))
    source.run("COMMIT")

    # Deletions past what a transaction holds are written; the read then stops before
    # their keys are written again, so a further run's versions load after them.
    run = ingest.run_ingest()
    assert (run.complete, run.passes) == (True, passes)
    bucket = aws["INGEST_BUCKET"]
    deletions = history(bucket, "sales_order", "deleted_files")
    assert sorted(row["sales_order_id"] for row in deletions) == deleted
    [*_, last] = manifests(bucket)
    assert sorted(row["sales_order_id"] for row in lines(bucket, last, "sales_order")) == [2, 3, 4]


def test_rows_saved_by_delete_then_insert_are_all_captured_in_one_invocation(source, aws):
    seed_one_of_each(source)
    for order_id in range(2, 8):
        sales_order(source, order_id, T0)
    ingest.run_ingest()
    bucket = aws["INGEST_BUCKET"]
    before = len(manifests(bucket))
    for order_id in range(2, 8):   # an application "saving" rows by DELETE + INSERT, autocommit
        source.run("DELETE FROM sales_order WHERE sales_order_id = :o", o=order_id)
        sales_order(source, order_id, T0 + timedelta(minutes=order_id))

    run = ingest.run_ingest()

    # One run per reused key, all committed by this one invocation, each key's deletion
    # in a manifest before the one carrying its new version.
    assert run.complete
    assert (run.passes, run.rows["sales_order"], run.deleted["sales_order"]) == (7, 6, 6)
    runs = manifests(bucket)[before:]
    assert [sorted(row["sales_order_id"] for row in lines(bucket, manifest, "sales_order",
                                                          "deleted_files"))
            for manifest in runs] == [[2], [3], [4], [5], [6], [7], []]
    assert [sorted(row["sales_order_id"] for row in lines(bucket, manifest, "sales_order"))
            for manifest in runs] == [[], [2], [3], [4], [5], [6], [7]]
    assert [manifest["complete"] for manifest in runs] == [False] * 6 + [True]


def half_spent_after_first_look() -> stage.Deadline:
    """An invocation with 180 s at its start and 80 s (less than half) at every later look."""
    looks = iter([180.0])
    return stage.Deadline(lambda: next(looks, 80.0))


@pytest.mark.parametrize("budget, deadline, passes", [
    (None, half_spent_after_first_look, 1), (3, stage.Deadline.unbounded, 2)],
                         ids=["past-half-the-time", "row-budget-spent"])
def test_further_runs_for_reused_keys_stop_within_the_invocation_s_time_and_row_budget(
        source, aws, budget, deadline, passes):
    seed_one_of_each(source)
    for order_id in (2, 3, 4):
        sales_order(source, order_id, T0)
    ingest.run_ingest()
    for order_id in (2, 3, 4):
        source.run("DELETE FROM sales_order WHERE sales_order_id = :o", o=order_id)
        sales_order(source, order_id, T0 + timedelta(minutes=order_id))
    settings = IngestSettings.from_environment()
    if budget is not None:
        settings = replace(settings, max_rows_per_run=budget)

    run = ingest.run_ingest(settings, deadline())

    assert (run.complete, run.passes) == (False, passes)
    assert ingest.run_ingest().complete   # the next scheduled run goes on from there


def test_a_crash_in_a_further_run_for_a_reused_key_leaves_the_earlier_runs_committed(
        source, aws, monkeypatch):
    seed_one_of_each(source)
    for order_id in (2, 3, 4):
        sales_order(source, order_id, T0)
    ingest.run_ingest()
    bucket = aws["INGEST_BUCKET"]
    before = len(manifests(bucket))
    for order_id in (2, 3, 4):
        source.run("DELETE FROM sales_order WHERE sales_order_id = :o", o=order_id)
        sales_order(source, order_id, T0 + timedelta(minutes=order_id))
    release, calls = logical_capture.release_slot, []

    def crash_on_the_second(*args, **kwargs):   # after the second run's manifest
        calls.append(1)
        if len(calls) == 2:
            raise ConnectionResetError("crash before the second run's slot advance")
        return release(*args, **kwargs)
    monkeypatch.setattr(logical_capture, "release_slot", crash_on_the_second)

    run_metrics = metrics_for()
    run_metrics.clear_metrics()
    with pytest.raises(ConnectionResetError):
        ingest.run_ingest()
    assert len(manifests(bucket)) == before + 2
    # The first further run's metrics were published though the invocation failed after it.
    assert run_metrics.metric_set["IngestRuns"]["Value"] == [1.0]
    run_metrics.clear_metrics()
    assert ingest.run_ingest().complete   # the next run goes on from the second manifest

    runs = manifests(bucket)[before:]
    assert [[row["sales_order_id"] for row in lines(bucket, manifest, "sales_order", kind)]
            for kind in ("deleted_files", "files") for manifest in runs] == [
        [2], [3], [4], [], [], [2], [3], [4]]
    assert slot_confirmed(source) == runs[-1]["logical"]["lsn"]


def orders_2_and_3_captured_then_identity(source, columns):
    """Capture orders 2 and 3, then make a unique index on ``columns`` the replica identity."""
    seed_one_of_each(source)
    for order_id in (2, 3):
        sales_order(source, order_id, T0 + timedelta(minutes=order_id))
    ingest.run_ingest()
    # Identifiers are the test's own literals.
    source.run(f"CREATE UNIQUE INDEX sales_order_created ON sales_order ({columns})")
    source.run("ALTER TABLE sales_order REPLICA IDENTITY USING INDEX sales_order_created")


def test_a_replica_identity_without_the_key_has_its_deletions_found_by_a_sweep(
        source, aws, captured_logs):
    # A DBA's replica identity: a unique index without the primary key, so the log's
    # deletes and key changes carry no sales_order_id.
    orders_2_and_3_captured_then_identity(source, "created_at")
    source.run("DELETE FROM sales_order WHERE sales_order_id = 2")
    source.run("UPDATE sales_order SET sales_order_id = 30, created_at = created_at + "
               "interval '1 second' WHERE sales_order_id = 3")

    run = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    [*_, last] = manifests(bucket)
    assert run.complete
    deletions = lines(bucket, last, "sales_order", "deleted_files")
    assert sorted(row["sales_order_id"] for row in deletions) == [2, 3]
    assert [row["sales_order_id"] for row in lines(bucket, last, "sales_order")] == [30]
    [warning] = [line for line in captured_logs() if "replica identity" in line["message"]]
    assert "REPLICA IDENTITY DEFAULT" in warning["message"]


def test_a_key_changed_under_a_replica_identity_without_it_is_found_deleted_though_no_old_row_came(
        source, aws, captured_logs):
    orders_2_and_3_captured_then_identity(source, "created_at")
    # The identity's column (created_at) is unchanged: pgoutput sends no old row at all.
    source.run("UPDATE sales_order SET sales_order_id = 30 WHERE sales_order_id = 3")

    run = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    [*_, last] = manifests(bucket)
    assert run.complete
    assert [row["sales_order_id"] for row in lines(bucket, last, "sales_order",
                                                   "deleted_files")] == [3]
    assert [row["sales_order_id"] for row in lines(bucket, last, "sales_order")] == [30]
    [warning] = [line for line in captured_logs() if "replica identity" in line["message"]]
    assert "REPLICA IDENTITY DEFAULT" in warning["message"]


def test_a_replica_identity_index_with_the_key_keeps_commit_time_deletions_and_no_sweep(
        source, aws, captured_logs):
    orders_2_and_3_captured_then_identity(source, "created_at, sales_order_id")
    source.run("UPDATE sales_order SET created_at = created_at + interval '1 second' "
               "WHERE sales_order_id = 2")
    source.run("UPDATE sales_order SET sales_order_id = 30 WHERE sales_order_id = 3")

    run = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    [*_, last] = manifests(bucket)
    assert [row["sales_order_id"] for row in lines(bucket, last, "sales_order",
                                                   "deleted_files")] == [3]
    assert list(run.swept) == []
    assert not [line for line in captured_logs() if "replica identity" in line["message"]]
