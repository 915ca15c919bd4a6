"""Capture as a hostile source tries it: wrong clocks, long transactions, bulk fixes, deletes."""
import json
import threading
from datetime import datetime, timedelta

import pytest

from totes import ingest, jsonl, keys, storage, timestamps
from totes.manifest import IngestManifest
from totes.source import SourceSchemaError

from test_ingest import T0, all_keys, latest_manifest, sales_order, seed_one_of_each, table_rows

#: the newest manifest must stay this small whatever a run read (the state is constant size).
MANIFEST_BYTES_BOUND = 16_000


def ids(bucket, table, manifest=None):
    """The primary keys a manifest (the newest by default) lists for ``table``."""
    manifest = manifest or latest_manifest(bucket)
    key = {"sales_order": "sales_order_id", "payment": "payment_id", "staff": "staff_id",
           "address": "address_id", "transaction": "transaction_id"}[table]
    return [row[key] for row in table_rows(bucket, manifest, table)]


def deleted(bucket, table, manifest=None):
    """The deletion records a manifest lists for ``table``."""
    manifest = manifest or latest_manifest(bucket)
    return [row for file in manifest["tables"][table]["deleted_files"]
            for row in jsonl.decode_lines(storage.read_bytes(bucket, file["key"]).splitlines())]


def newest_manifest_bytes(bucket):
    """Size of the newest manifest object."""
    key = storage.latest_manifest_key(bucket)
    return storage.s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]


def test_a_row_stamped_in_the_future_does_not_hide_later_ordinary_changes(
        source_db, aws, captured_logs):
    seed_one_of_each(source_db)
    ingest.run_ingest()
    sales_order(source_db, 2, datetime.now() + timedelta(days=365))
    future = ingest.run_ingest()
    sales_order(source_db, 3, T0 + timedelta(minutes=5))
    source_db.run("UPDATE sales_order SET units_sold = 9, last_updated = :at "
                  "WHERE sales_order_id = 1", at=T0 + timedelta(minutes=6))

    later = ingest.run_ingest()

    assert future.rows["sales_order"] == 1 and future.stamped_in_future == {
        **{table: 0 for table in future.rows}, "sales_order": 1}
    assert later.rows["sales_order"] == 2 and sum(later.stamped_in_future.values()) == 0
    assert ids(aws["INGEST_BUCKET"], "sales_order") == [1, 3]
    [warning] = [line for line in captured_logs() if line["level"] == "WARNING"]
    assert warning["message"].startswith("rows stamped in the future captured")
    assert (warning["table"], warning["keys"], warning["rows"]) == ("sales_order", [2], 1)


def test_a_transaction_open_across_two_runs_and_stamped_an_hour_back_arrives_once_committed(
        source_db, aws, postgres):
    seed_one_of_each(source_db)
    slow = postgres.connect(source_db.run("SELECT current_database()")[0][0])
    try:
        slow.run("START TRANSACTION")
        sales_order(slow, 2, T0 - timedelta(hours=1))
        slow.run("SAVEPOINT inner_work")  # a subtransaction: its xid is in no snapshot's xip list
        sales_order(slow, 3, T0 - timedelta(hours=1))
        slow.run("RELEASE SAVEPOINT inner_work")
        sales_order(source_db, 5, T0)  # a later xid completes: the snapshot's xmax passes both
        run_n = ingest.run_ingest()
        sales_order(source_db, 4, T0 + timedelta(minutes=1))
        run_n1 = ingest.run_ingest()
        slow.run("COMMIT")
    finally:
        slow.close()

    run_n2 = ingest.run_ingest()

    assert run_n.rows["sales_order"] == 2 and run_n1.rows["sales_order"] >= 1
    # The savepoint's row was written by an xid below run N's xmax that its xip list omits:
    # a check by xmax and xip alone would have called it visible and lost it.
    snapshot = IngestManifest.parse(storage.read_json(
        aws["INGEST_BUCKET"], run_n.manifest_key)).snapshot
    [[inner_xid]] = source_db.run("SELECT xmin::text::bigint FROM sales_order "
                                  "WHERE sales_order_id = 3")
    assert inner_xid < snapshot.xmax and inner_xid not in snapshot.xip
    assert 2 in ids(aws["INGEST_BUCKET"], "sales_order")
    assert 3 in ids(aws["INGEST_BUCKET"], "sales_order")
    # Re-reading a row committed while the long transaction was open is allowed, losing is not.
    assert set(ids(aws["INGEST_BUCKET"], "sales_order")) <= {2, 3, 4, 5}
    assert run_n2.rows["sales_order"] >= 2
    assert ingest.run_ingest().total_rows == 0


def test_a_bulk_fix_of_every_row_of_two_tables_arrives_whole_with_a_small_manifest(
        totesys, aws, monkeypatch):
    from totes_local import stack
    stack.provision({aws["TOTESYS_SECRET_ID"]: totesys.secret}, buckets=())
    ingest.run_ingest()
    conn = totesys.connect()
    try:
        conn.run("START TRANSACTION")
        conn.run("UPDATE payment SET last_updated = :at", at=T0)
        conn.run("UPDATE sales_order SET last_updated = :at", at=T0)
        conn.run("COMMIT")
    finally:
        conn.close()

    fixed = ingest.run_ingest()

    assert fixed.rows["payment"] == totesys.counts["payment"]
    assert fixed.rows["sales_order"] == totesys.counts["sales_order"]
    assert fixed.total_rows == totesys.counts["payment"] + totesys.counts["sales_order"]
    assert newest_manifest_bytes(aws["INGEST_BUCKET"]) < MANIFEST_BYTES_BOUND
    idle = ingest.run_ingest()
    assert idle.total_rows == 0
    assert newest_manifest_bytes(aws["INGEST_BUCKET"]) < MANIFEST_BYTES_BOUND


def test_an_update_that_does_not_touch_last_updated_is_captured(source_db, aws):
    seed_one_of_each(source_db)
    ingest.run_ingest()
    source_db.run("UPDATE payment SET paid = true WHERE payment_id = 1")

    result = ingest.run_ingest()

    [payment] = table_rows(aws["INGEST_BUCKET"], latest_manifest(aws["INGEST_BUCKET"]), "payment")
    assert result.rows["payment"] == 1
    assert payment["paid"] is True and payment["last_updated"] == "2024-11-15T14:00:00.120"


def test_columns_added_upstream_change_nothing(source_db, aws):
    seed_one_of_each(source_db)
    ingest.run_ingest()
    source_db.run("ALTER TABLE payment ADD COLUMN reference uuid DEFAULT gen_random_uuid()")
    source_db.run("ALTER TABLE sales_order ADD COLUMN meta jsonb")
    sales_order(source_db, 2, T0 + timedelta(minutes=1))
    source_db.run("UPDATE sales_order SET meta = '{\"a\": [1, \"x\"]}' WHERE sales_order_id = 2")

    ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    [order] = table_rows(aws["INGEST_BUCKET"], manifest, "sales_order")
    assert order["sales_order_id"] == 2 and "meta" not in order
    # The volatile default rewrote every payment: read again (harmless), never with the column.
    assert all("reference" not in row
               for row in table_rows(aws["INGEST_BUCKET"], manifest, "payment"))


@pytest.mark.parametrize("change, named", [
    ("ALTER TABLE sales_order ALTER COLUMN unit_price TYPE double precision",
     "sales_order.unit_price is float8"),
    ("ALTER TABLE payment DROP COLUMN paid", "payment.paid is missing"),
    ("ALTER TABLE staff RENAME COLUMN email_address TO email", "staff.email_address is missing"),
])
def test_a_used_column_changed_upstream_stops_the_run_naming_it_with_nothing_committed(
        source_db, aws, captured_logs, change, named):
    seed_one_of_each(source_db)
    first = ingest.run_ingest()
    before = set(all_keys(aws["INGEST_BUCKET"]))
    source_db.run(change)
    sales_order(source_db, 2, T0 + timedelta(minutes=1))

    with pytest.raises(SourceSchemaError, match=named):
        ingest.run_ingest()

    assert set(all_keys(aws["INGEST_BUCKET"])) == before
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == first.manifest_key
    [failure] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert "nothing committed" in failure["message"] and named in failure["exception"]


def delete_order_with_its_payment(conn, order_id):
    """Delete a sales order the way the source must: payment, transaction, then the order."""
    conn.run("DELETE FROM payment WHERE transaction_id IN "
             "(SELECT transaction_id FROM transaction WHERE sales_order_id = :id)", id=order_id)
    conn.run("DELETE FROM transaction WHERE sales_order_id = :id", id=order_id)
    conn.run("DELETE FROM sales_order WHERE sales_order_id = :id", id=order_id)


def test_deleted_rows_are_recorded_with_the_detection_time(source_db, aws, monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    seed_one_of_each(source_db)
    from test_ingest import insert
    insert(source_db, "address", address_id=2, address_line_1="2 Road", address_line_2=None,
           district=None, city="York", postal_code="Y1", country="UK", phone="01",
           created_at=T0, last_updated=T0)
    ingest.run_ingest()
    delete_order_with_its_payment(source_db, 1)
    source_db.run("DELETE FROM address WHERE address_id = 2")

    result = ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert result.deleted == {table: 0 for table in result.deleted} | {
        "sales_order": 1, "transaction": 1, "payment": 1, "address": 1}
    assert result.total_rows == 0
    [record] = deleted(aws["INGEST_BUCKET"], "sales_order")
    detected = datetime.fromisoformat(record["deleted_at"])
    assert record["sales_order_id"] == 1
    assert detected == datetime.fromisoformat(manifest["database_time"])
    assert [row["address_id"] for row in deleted(aws["INGEST_BUCKET"], "address")] == [2]
    # Reported once: the next sweep compares with keys that no longer hold them.
    assert sum(ingest.run_ingest().deleted.values()) == 0


def test_a_row_created_captured_and_deleted_between_two_sweeps_is_still_found(
        source_db, aws, monkeypatch):
    seed_one_of_each(source_db)
    first = ingest.run_ingest()               # sweeps: the order table has key 1
    sales_order(source_db, 2, T0 + timedelta(minutes=1))
    assert ingest.run_ingest().rows["sales_order"] == 1   # captured, not swept (interval 60)
    source_db.run("DELETE FROM sales_order WHERE sales_order_id = 2")
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")

    swept = ingest.run_ingest()

    assert "sales_order" in swept.swept and first.deleted["sales_order"] == 0
    assert swept.deleted["sales_order"] == 1
    assert [row["sales_order_id"] for row in deleted(aws["INGEST_BUCKET"], "sales_order")] == [2]


def add_address(conn, address_id):
    """One more address (nothing references it, so it may be deleted alone)."""
    from test_ingest import insert
    insert(conn, "address", address_id=address_id, address_line_1="2 Road", address_line_2=None,
           district=None, city="York", postal_code="Y1", country="UK", phone="01",
           created_at=T0, last_updated=T0)


def test_the_key_sweep_runs_beside_the_reading_on_its_own_connection_in_the_runs_snapshot(
        source_db, aws, monkeypatch):
    from totes import snapshot_capture, sweep

    seed_one_of_each(source_db)
    for address_id in (2, 3):
        add_address(source_db, address_id)
    ingest.run_ingest()
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    source_db.run("DELETE FROM address WHERE address_id = 2")
    readers, listers = set(), set()
    extract_table, copy_keys = snapshot_capture.extract_table, sweep.extract.copy_keys

    def read(conn, table, *args, **options):
        readers.add((threading.current_thread().name, conn.run("SELECT pg_backend_pid()")[0][0]))
        return extract_table(conn, table, *args, **options)

    def listed(conn, table, *args, **options):
        listers.add((threading.current_thread().name, conn.run("SELECT pg_backend_pid()")[0][0]))
        if table == "address":  # committed after the run's snapshot, before its sweep lists keys
            source_db.run("DELETE FROM address WHERE address_id = 3")
        return copy_keys(conn, table, *args, **options)

    with monkeypatch.context() as patch:
        patch.setattr(snapshot_capture, "extract_table", read)
        patch.setattr(sweep.extract, "copy_keys", listed)
        swept = ingest.run_ingest()

    [(reading_thread, reading_pid)] = readers
    [(sweeping_thread, sweeping_pid)] = listers
    assert sweeping_thread.startswith("totes-sweep") and sweeping_thread != reading_thread
    assert sweeping_pid != reading_pid
    assert [row["address_id"] for row in deleted(aws["INGEST_BUCKET"], "address")] == [2]
    assert swept.deleted["address"] == 1 and len(swept.swept) == len(swept.rows)
    assert ingest.run_ingest().deleted["address"] == 1   # 3, deleted after the snapshot


def test_a_sweep_that_cannot_open_its_connection_runs_after_the_reading_on_the_first(
        source_db, aws, monkeypatch):
    from totes import extract, sweep

    seed_one_of_each(source_db)
    add_address(source_db, 2)
    ingest.run_ingest()
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    source_db.run("DELETE FROM address WHERE address_id = 2")
    listers = set()
    copy_keys = sweep.extract.copy_keys

    def listed(conn, *args, **options):
        listers.add(threading.current_thread().name)
        return copy_keys(conn, *args, **options)

    with monkeypatch.context() as patch:
        patch.setattr(extract.SecondReader, "open_another", lambda reader: None)
        patch.setattr(sweep.extract, "copy_keys", listed)
        swept = ingest.run_ingest()

    assert listers == {threading.current_thread().name}
    assert swept.deleted["address"] == 1
    assert [row["address_id"] for row in deleted(aws["INGEST_BUCKET"], "address")] == [2]


def test_the_sweep_state_is_an_immutable_gzip_key_list_in_blocks_named_by_the_manifest(
        source_db, aws, monkeypatch):
    import gzip
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    seed_one_of_each(source_db)
    for order_id in range(2, 6):
        sales_order(source_db, order_id, T0)

    ingest.run_ingest()

    sweep = latest_manifest(aws["INGEST_BUCKET"])["tables"]["sales_order"]["sweep"]
    assert sweep["key"].startswith("_sweeps/sales_order/") and sweep["keys"] == 5
    body = gzip.decompress(storage.read_bytes(aws["INGEST_BUCKET"], sweep["key"]))
    assert body == b"1,2,3,4,5\n"


def watermark_manifest(bucket, watermark):
    """Commit a manifest exactly as the watermark-format ingest wrote it, an hour ago."""
    run = keys.new_run_id(datetime.now().astimezone() - timedelta(hours=1))
    document = {
        "format": "totes.ingest/1", "run_id": str(run),
        "started_at": timestamps.instant_text(run.started_at),
        "finished_at": timestamps.instant_text(run.started_at), "previous_manifest": None,
        "overlap_minutes": 15, "complete": True,
        "tables": {table: {"rows": 0, "files": [], "truncated": False,
                           "watermark": watermark.isoformat(timespec="milliseconds"),
                           "recent_versions": []}
                   for table in ("address", "currency", "department", "design", "payment_type",
                                 "counterparty", "staff", "sales_order", "purchase_order",
                                 "transaction", "payment")},
    }
    key = keys.manifest_key(run)
    storage.put_new_json(bucket, key, document)
    return key


def test_the_first_run_after_upgrading_continues_a_watermark_manifest_without_a_gap(
        source_db, aws):
    seed_one_of_each(source_db)                       # all stamped T0, read by the old ingest
    old = watermark_manifest(aws["INGEST_BUCKET"], T0 + timedelta(minutes=30))
    sales_order(source_db, 2, T0 + timedelta(minutes=20))   # within the old overlap
    sales_order(source_db, 3, T0 + timedelta(minutes=40))   # after the old watermark

    bridge = ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert manifest["previous_manifest"] == old and manifest["format"] == "totes.ingest/2"
    assert ids(aws["INGEST_BUCKET"], "sales_order") == [2, 3]
    assert bridge.total_rows == 2                       # not everything again
    assert all(entry["cursor"]["since"] == manifest["snapshot"]
               for entry in manifest["tables"].values())
    sales_order(source_db, 4, T0 - timedelta(days=3))    # now stamps do not matter
    assert ingest.run_ingest().rows["sales_order"] == 1
    assert IngestManifest.parse(latest_manifest(aws["INGEST_BUCKET"])).snapshot is not None


def test_the_recorded_snapshot_is_the_one_the_run_read_in(source_db, aws):
    seed_one_of_each(source_db)
    ingest.run_ingest()
    manifest = latest_manifest(aws["INGEST_BUCKET"])
    xmax = int(manifest["snapshot"].split(":")[1])
    current = int(source_db.run("SELECT pg_current_xact_id()::text")[0][0])
    assert xmax <= current
    assert json.dumps(manifest).count(manifest["snapshot"]) >= 11


@pytest.mark.parametrize("savepoint", [False, True], ids=["top-level", "in-a-savepoint"])
def test_an_enum_label_renamed_by_a_transaction_open_at_the_previous_run_is_read_again_once(
        source_db, aws, postgres, captured_logs, savepoint):
    seed_one_of_each(source_db)
    ingest.run_ingest()
    ddl = postgres.connect(source_db.run("SELECT current_database()")[0][0])
    try:
        ddl.run("START TRANSACTION")
        ddl.run("SELECT txid_current()")   # the top-level xid, in every snapshot's xip list
        if savepoint:                      # the label's pg_enum row: a subtransaction's xid,
            ddl.run("SAVEPOINT rename")    # which no snapshot's xip list names
        ddl.run('ALTER TYPE "TransactionType" RENAME VALUE \'SALE\' TO \'SALES\'')
        if savepoint:
            ddl.run("RELEASE SAVEPOINT rename")
        sales_order(source_db, 2, T0)      # a later xid completes: the snapshot's xmax passes
        while_open = ingest.run_ingest()
        ddl.run("COMMIT")
    finally:
        ddl.close()

    renamed = ingest.run_ingest()

    bucket = aws["INGEST_BUCKET"]
    assert while_open.rows["transaction"] == 0
    assert renamed.rows["transaction"] == 1
    assert [row["transaction_type"] for row in table_rows(
        bucket, latest_manifest(bucket), "transaction")] == ["SALES"]
    [warning] = [line for line in captured_logs()
                 if line["message"].startswith("source tables redefined since the previous run")]
    assert warning["tables"] == ["transaction"]
    assert ingest.run_ingest().total_rows == 0   # once: the next run reads nothing


def test_the_xid_window_is_read_once_per_chunk_not_for_every_row_scanned(totesys):
    from totes import extract
    from totes.capture import Snapshot, TableCursor, xmin_window

    conn = totesys.connect()
    try:
        conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        [[text]] = conn.run("SELECT pg_current_snapshot()::text")
        snapshot = Snapshot.parse(text)
        window = xmin_window(snapshot, snapshot)
        extract.bind_settings(conn, clock="2026-01-01 00:00:00", xmax32=window.xmax32,
                              width=window.width, limit=10)
        copy = extract.changes_sql("sales_order", TableCursor(since=snapshot))
        query = copy[len("COPY ("):copy.rindex(") TO STDOUT")]
        plan = [line.strip() for [line] in conn.run("EXPLAIN " + query)]
        assert conn.run(query)[0][0] == 0  # nothing committed since the snapshot it reads
    finally:
        conn.close()
    [window_filter] = [line for line in plan if line.startswith("Filter:") and "xmin" in line]
    assert "current_setting" not in window_filter  # both settings are InitPlans' parameters
    assert sum(line.startswith("InitPlan") for line in plan) >= 2


def test_a_chunk_renders_each_row_once_below_its_aggregates_in_key_order_without_a_sort(totesys):
    from totes import extract
    from totes.capture import TableCursor

    conn = totesys.connect()
    try:
        conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        extract.bind_settings(conn, clock="2026-01-01 00:00:00", limit=10)
        copy = extract.changes_sql("sales_order", TableCursor(), all_keys=True)
        query = copy[len("COPY ("):copy.rindex(") TO STDOUT")]
        [[[plan]]] = conn.run("EXPLAIN (VERBOSE, FORMAT JSON) " + query)
        [[rows, keys, unfit, lines]] = conn.run(query)
    finally:
        conn.close()
    assert (rows, keys, unfit) == (10, ",".join(map(str, range(1, 11))), None)
    assert lines.count('{"sales_order_id":') == 10
    # Inlined into the aggregates, the line was rendered once for the lines' aggregate and
    # again for the unfit keys' FILTER: twice per row. Rendered by the node below them, once.
    aggregate = plan["Plan"]
    [below] = [node for node in aggregate["Plans"] if node["Parent Relationship"] == "Outer"]
    assert aggregate["Node Type"] == "Aggregate"
    assert below["Node Type"] == "Subquery Scan"
    assert any('{"sales_order_id":' in output for output in below["Output"])
    assert "Sort" not in json.dumps(plan)  # the index scan's order carries up to the aggregates
