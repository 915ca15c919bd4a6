"""Ingest runs against a real PostgreSQL and a moto S3: what lands, when, and exactly how."""
import json
import re
from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from botocore.exceptions import ClientError

from totes import errors, ingest, jsonl, keys, snapshot_capture, storage
from totes.capture import Snapshot
from totes.source import SOURCE_COLUMNS, SOURCE_TABLES
from totes_local import stack

T0 = datetime(2024, 11, 15, 14, 0, 0, 120000)
DATA_KEY = re.compile(
    r"^(?P<table>[a-z_]+)/2\d{3}/\d{2}/\d{2}/\d{8}T\d{9}Z-[0-9a-f]{8}-(?P<part>\d{5})\.jsonl$")


def insert(conn, table, **values):
    """Insert one row with explicit values (test set-up, so a plain bound INSERT)."""
    names = ", ".join(f'"{name}"' for name in values)
    marks = ", ".join(f":{name}" for name in values)
    conn.run(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', **values)


def seed_one_of_each(conn, at=T0):
    """One consistent row in every source table (and a migration row that must never leave)."""
    stamp = {"created_at": at, "last_updated": at}
    conn.run("INSERT INTO _prisma_migrations (id, checksum, migration_name) "
             "VALUES ('m1', 'c', 'init')")
    insert(conn, "address", address_id=1, address_line_1="1 Road", address_line_2=None,
           district=None, city="Leeds", postal_code="LS1", country="UK", phone="0113",
           **stamp)
    insert(conn, "currency", currency_id=1, currency_code="GBP", **stamp)
    insert(conn, "department", department_id=1, department_name="Sales", location="Leeds",
           manager="Ann", **stamp)
    insert(conn, "design", design_id=1, design_name="Wooden", file_location="/d",
           file_name="w.json", **stamp)
    insert(conn, "payment_type", payment_type_id=1, payment_type_name="SALES_RECEIPT", **stamp)
    insert(conn, "counterparty", counterparty_id=1, counterparty_legal_name="Acme",
           legal_address_id=1, commercial_contact=None, delivery_contact=None, **stamp)
    insert(conn, "staff", staff_id=1, first_name="Jo", last_name="Bloggs", department_id=1,
           email_address="jo@terrifictotes.com", **stamp)
    sales_order(conn, 1, at)
    insert(conn, "purchase_order", purchase_order_id=1, staff_id=1, counterparty_id=1,
           item_code="ABC", item_quantity=3, item_unit_price=Decimal("4.50"), currency_id=1,
           agreed_delivery_date="2024-11-20", agreed_payment_date="2024-11-21",
           agreed_delivery_location_id=1, **stamp)
    insert(conn, "transaction", transaction_id=1, transaction_type="SALE", sales_order_id=1,
           purchase_order_id=None, **stamp)
    insert(conn, "payment", payment_id=1, transaction_id=1, counterparty_id=1,
           payment_amount=Decimal("10.00"), currency_id=1, payment_type_id=1, paid=False,
           payment_date="2024-11-20", company_ac_number=1, counterparty_ac_number=2, **stamp)


def sales_order(conn, order_id, last_updated, unit_price=Decimal("5.00")):
    """Insert one sales order referencing the seeded reference rows."""
    insert(conn, "sales_order", sales_order_id=order_id, created_at=last_updated,
           last_updated=last_updated, design_id=1, staff_id=1, counterparty_id=1, units_sold=2,
           unit_price=unit_price, currency_id=1, agreed_delivery_date="2024-11-20",
           agreed_payment_date="2024-11-21", agreed_delivery_location_id=1)


def latest_manifest(bucket):
    """The newest committed manifest."""
    return storage.read_json(bucket, storage.latest_manifest_key(bucket))


def table_rows(bucket, manifest, table):
    """Every row a manifest lists for ``table``, decoded exactly."""
    return [row for file in manifest["tables"][table]["files"]
            for row in jsonl.decode_lines(storage.read_bytes(bucket, file["key"]).splitlines())]


def committed_then_one_more_order(conn):
    """Commit a first run of one row per table, then book a second order; return that run."""
    seed_one_of_each(conn)
    first = ingest.run_ingest()
    sales_order(conn, 2, T0 + timedelta(minutes=5))
    return first


def all_keys(bucket):
    """Every key in the bucket."""
    return list(storage.list_keys(bucket, ""))


def test_first_run_ingests_all_eleven_tables_and_nothing_else(source_db, aws):
    seed_one_of_each(source_db)

    result = ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert manifest["format"] == "totes.ingest/2" and manifest["run_id"] == result.run_id
    assert manifest["previous_manifest"] is None
    snapshot = Snapshot.parse(manifest["snapshot"])
    assert set(manifest["tables"]) == set(SOURCE_TABLES)
    assert result.rows == {table: 1 for table in SOURCE_TABLES}
    data_keys = [key for key in all_keys(aws["INGEST_BUCKET"]) if not key.startswith("_")]
    assert sorted(DATA_KEY.match(key)["table"] for key in data_keys) == sorted(SOURCE_TABLES)
    for table in SOURCE_TABLES:
        entry = manifest["tables"][table]
        assert entry["cursor"] == {"since": str(snapshot), "since_last_updated": None,
                                   "resume_after": None, "resume_since": None}
        # Exactly the contract's columns, key first: never created_at-only or bank accounts.
        assert list(table_rows(aws["INGEST_BUCKET"], manifest, table)[0]) == list(
            SOURCE_COLUMNS[table])
    payment = table_rows(aws["INGEST_BUCKET"], manifest, "payment")[0]
    assert "company_ac_number" not in payment and "counterparty_ac_number" not in payment


def test_the_manifest_records_the_sha256_s3_stored_for_each_object(source_db, aws):
    # What transform checks each object it reads against (docs/architecture.md).
    seed_one_of_each(source_db)
    ingest.run_ingest()
    manifest = latest_manifest(aws["INGEST_BUCKET"])
    listed = [entry for table in manifest["tables"].values() for entry in table["files"]]
    assert len(listed) == len(SOURCE_TABLES)
    for entry in listed:
        stored = storage.s3_client().head_object(
            Bucket=aws["INGEST_BUCKET"], Key=entry["key"], ChecksumMode="ENABLED")
        assert entry["sha256"] == stored["ChecksumSHA256"], entry["key"]


def test_run_without_source_changes_writes_no_data_but_records_the_run(
        source_db, aws, captured_logs):
    seed_one_of_each(source_db)
    first = ingest.run_ingest()
    keys_after_first = set(all_keys(aws["INGEST_BUCKET"]))

    second = ingest.run_ingest()

    new_keys = set(all_keys(aws["INGEST_BUCKET"])) - keys_after_first
    assert new_keys == {second.manifest_key, keys.successor_claim_key(first.manifest_key)}
    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert manifest["previous_manifest"] == first.manifest_key
    assert all(entry["rows"] == 0 and entry["files"] == [] and entry["cursor"]["since"]
               for entry in manifest["tables"].values())
    summary = [line for line in captured_logs() if line.get("run_id") == second.run_id
               and line["message"].startswith("ingest run committed")]
    assert summary[0]["message"].endswith("nothing changed since the previous run")
    assert summary[0]["rows"] == 0 and summary[0]["files"] == 0


def test_inserts_and_updates_after_a_run_arrive_in_the_next(source_db, aws):
    seed_one_of_each(source_db)
    ingest.run_ingest()
    later = T0 + timedelta(minutes=30)
    sales_order(source_db, 2, later)
    source_db.run("UPDATE payment SET paid = true, last_updated = :at WHERE payment_id = 1",
                  at=later)

    result = ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert {table: rows for table, rows in result.rows.items() if rows} == {
        "sales_order": 1, "payment": 1}
    assert [row["sales_order_id"] for row in
            table_rows(aws["INGEST_BUCKET"], manifest, "sales_order")] == [2]
    [payment] = table_rows(aws["INGEST_BUCKET"], manifest, "payment")
    assert payment["paid"] is True and payment["last_updated"] == "2024-11-15T14:30:00.120"
    assert manifest["tables"]["payment"]["cursor"]["since"] == manifest["snapshot"]


def test_a_row_committed_late_with_an_old_stamp_arrives_in_the_next_run(source_db, aws):
    seed_one_of_each(source_db)
    sales_order(source_db, 2, T0 + timedelta(minutes=10))
    ingest.run_ingest()
    # Stamped long before the newest row read: only its visibility says it is new.
    sales_order(source_db, 3, T0 - timedelta(days=30))

    result = ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert [row["sales_order_id"] for row in
            table_rows(aws["INGEST_BUCKET"], manifest, "sales_order")] == [3]
    assert result.total_rows == 1


def test_crash_before_the_manifest_loses_nothing(source_db, aws, monkeypatch, captured_logs):
    seed_one_of_each(source_db)
    first = ingest.run_ingest()
    committed = set(all_keys(aws["INGEST_BUCKET"]))
    sales_order(source_db, 2, T0 + timedelta(minutes=5))
    source_db.run("UPDATE staff SET last_name = 'Smith', last_updated = :at", at=T0 + timedelta(
        minutes=5))

    def manifest_write_fails(bucket, key, document):
        raise ClientError({"Error": {"Code": "InternalError", "Message": "S3 is down"}},
                          "PutObject")

    with monkeypatch.context() as patch, pytest.raises(ClientError, match="S3 is down"):
        patch.setattr(storage, "put_new_json", manifest_write_fails)
        ingest.run_ingest()
    orphans = {key for key in set(all_keys(aws["INGEST_BUCKET"])) - committed
               if not key.startswith("_")}
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == first.manifest_key
    assert sorted(DATA_KEY.match(key)["table"] for key in orphans) == ["sales_order", "staff"]

    recovered = ingest.run_ingest()

    assert {table: rows for table, rows in recovered.rows.items() if rows} == {
        "sales_order": 1, "staff": 1}
    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert manifest["previous_manifest"] == first.manifest_key
    listed = {file["key"] for entry in manifest["tables"].values() for file in entry["files"]}
    assert listed.isdisjoint(orphans)
    [staff] = table_rows(aws["INGEST_BUCKET"], manifest, "staff")
    assert staff["last_name"] == "Smith"
    [failure] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert "S3 is down" in failure["exception"] and failure["message"].startswith(
        "ingest run failed")


def test_a_warm_run_starts_from_the_manifest_it_committed_unless_another_run_committed_since(
        source_db, aws, monkeypatch):
    seed_one_of_each(source_db)
    first = ingest.run_ingest()
    remembered = dict(ingest._COMMITTED)
    reads = []
    sales_order(source_db, 2, T0 + timedelta(minutes=5))
    with monkeypatch.context() as patch:
        patch.setattr(storage, "read_json", lambda *args: reads.append(args))
        second = ingest.run_ingest()
    assert reads == []  # neither the manifest nor anything else was read back
    assert latest_manifest(aws["INGEST_BUCKET"])["previous_manifest"] == first.manifest_key
    # As a container that last committed `first` sees it, after another container's `second`:
    monkeypatch.setattr(ingest, "_COMMITTED", remembered)
    sales_order(source_db, 3, T0 + timedelta(minutes=6))
    third = ingest.run_ingest()
    assert third.rows["sales_order"] == 1
    assert latest_manifest(aws["INGEST_BUCKET"])["previous_manifest"] == second.manifest_key


@pytest.mark.parametrize("written", [
    pytest.param(lambda key: key.endswith("-captured.keys.gz"), id="captured-keys-list"),
    pytest.param(lambda key: key.startswith("sales_order/"), id="data-object"),
])
def test_a_failed_background_write_fails_the_run_before_its_manifest(
        source_db, aws, monkeypatch, written):
    first = committed_then_one_more_order(source_db)
    put = storage.put_new_object

    def write_fails(bucket, key, body, content_type, sha256=None):
        if written(key):
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "S3 is slow"}},
                              "PutObject")
        put(bucket, key, body, content_type, sha256)

    with monkeypatch.context() as patch, pytest.raises(ClientError, match="S3 is slow"):
        patch.setattr(storage, "put_new_object", write_fails)
        ingest.run_ingest()
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == first.manifest_key
    second = ingest.run_ingest()
    assert second.rows["sales_order"] == 1
    listed = latest_manifest(aws["INGEST_BUCKET"])["tables"]["sales_order"]["captured_keys"]
    assert listed in all_keys(aws["INGEST_BUCKET"])


def test_a_run_overtaken_by_another_commit_aborts_and_the_next_run_continues(
        source_db, aws, monkeypatch, captured_logs):
    seed_one_of_each(source_db)
    first = ingest.run_ingest()
    sales_order(source_db, 2, T0 + timedelta(minutes=5))
    read_source, overtaking = snapshot_capture.read_source, []

    def another_run_commits_meanwhile(*args):
        extracts = read_source(*args)
        if not overtaking:
            monkeypatch.setattr(snapshot_capture, "read_source", read_source)
            overtaking.append(ingest.run_ingest())
        return extracts

    monkeypatch.setattr(snapshot_capture, "read_source", another_run_commits_meanwhile)
    with pytest.raises(ingest.ConcurrentRunError):
        ingest.run_ingest()

    [other] = overtaking
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == other.manifest_key
    manifests = [key for key in all_keys(aws["INGEST_BUCKET"]) if key.startswith("_manifests/")]
    assert len(manifests) == 2
    [failure] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert failure["message"] == (
        f"ingest run failed: another ingest run committed {other.manifest_key} after this run "
        f"started from {first.manifest_key}; this run's files are orphans and nothing is lost: "
        "the next run continues from the newer manifest")
    sales_order(source_db, 3, T0 + timedelta(minutes=6))
    assert ingest.run_ingest().rows["sales_order"] == 1
    assert latest_manifest(aws["INGEST_BUCKET"])["previous_manifest"] == other.manifest_key


def test_of_two_runs_past_the_newest_manifest_check_only_the_first_to_claim_commits(
        source_db, aws, monkeypatch, captured_logs):
    seed_one_of_each(source_db)
    first = ingest.run_ingest()
    sales_order(source_db, 2, T0 + timedelta(minutes=5))
    check, overtaking = ingest._check_still_newest, []

    def another_run_commits_right_after_the_check(bucket, previous_key):
        check(bucket, previous_key)
        if not overtaking:
            monkeypatch.setattr(ingest, "_check_still_newest", check)
            overtaking.append(ingest.run_ingest())

    monkeypatch.setattr(ingest, "_check_still_newest", another_run_commits_right_after_the_check)
    with pytest.raises(ingest.ConcurrentRunError, match="claimed the commit after"):
        ingest.run_ingest()

    [other] = overtaking
    manifests = [key for key in all_keys(aws["INGEST_BUCKET"]) if key.startswith("_manifests/")]
    assert manifests == [first.manifest_key, other.manifest_key]
    assert latest_manifest(aws["INGEST_BUCKET"])["previous_manifest"] == first.manifest_key
    [failure] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert failure["message"] == (
        f"ingest run failed: another ingest run claimed the commit after {first.manifest_key} "
        f"first, as {other.manifest_key}; this run's files are orphans and nothing is lost: "
        "the next run continues from that manifest")


def test_a_claim_whose_run_died_before_its_manifest_is_committed_by_the_next_run(
        source_db, aws, monkeypatch):
    first = committed_then_one_more_order(source_db)
    put_new_json = storage.put_new_json

    def dies_after_its_claim(bucket, key, document):
        put_new_json(bucket, key, document)
        if key.startswith("_claims/"):
            raise RuntimeError("the function timed out")

    monkeypatch.setattr(storage, "put_new_json", dies_after_its_claim)
    with pytest.raises(RuntimeError):
        ingest.run_ingest()
    monkeypatch.setattr(storage, "put_new_json", put_new_json)
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == first.manifest_key
    [claim] = [key for key in all_keys(aws["INGEST_BUCKET"])
               if key.startswith("_claims/") and key != "_claims/first.json"]
    claimed = storage.read_json(aws["INGEST_BUCKET"], claim)["manifest_key"]

    with pytest.raises(ingest.ConcurrentRunError, match=f"as {claimed}"):
        ingest.run_ingest()
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == claimed
    [order] = table_rows(aws["INGEST_BUCKET"], latest_manifest(aws["INGEST_BUCKET"]),
                         "sales_order")
    assert order["sales_order_id"] == 2
    sales_order(source_db, 3, T0 + timedelta(minutes=6))
    third = ingest.run_ingest()
    assert third.rows["sales_order"] == 1
    assert latest_manifest(aws["INGEST_BUCKET"])["previous_manifest"] == claimed


def test_a_manifest_write_retried_into_its_own_object_is_logged_as_committed(
        source_db, aws, monkeypatch, captured_logs):
    seed_one_of_each(source_db)
    put_new_json = storage.put_new_json

    def response_lost_and_retry_refused(bucket, key, document):
        put_new_json(bucket, key, document)
        raise storage.ObjectAlreadyExistsError(f"s3://{bucket}/{key} already exists")

    monkeypatch.setattr(storage, "put_new_json", response_lost_and_retry_refused)
    with pytest.raises(storage.ObjectAlreadyExistsError):
        ingest.run_ingest()

    [failure] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == failure["manifest_key"]
    assert "the run is committed" in failure["message"]
    assert "nothing committed" not in failure["message"]


def test_no_object_is_ever_overwritten(source_db, aws):
    s3 = storage.s3_client()
    s3.put_bucket_versioning(Bucket=aws["INGEST_BUCKET"],
                             VersioningConfiguration={"Status": "Enabled"})
    conditions = []
    s3.meta.events.register("provide-client-params.s3.PutObject",
                            lambda params, **_: conditions.append(params.get("IfNoneMatch")))
    seed_one_of_each(source_db)
    for minute in (1, 2):
        ingest.run_ingest()
        sales_order(source_db, 1 + minute, T0 + timedelta(minutes=minute))
    ingest.run_ingest()

    versions = s3.list_object_versions(Bucket=aws["INGEST_BUCKET"])["Versions"]
    written = [version["Key"] for version in versions]
    # 11 tables, 3 manifests and their 3 successor claims, 2 later orders (each with its
    # captured-keys list for the next sweep), and the first run's key sweep of each table.
    assert len(written) == len(set(written)) == 11 + 3 * 2 + 2 * 2 + 11
    assert conditions and set(conditions) == {"*"}


def test_hostile_text_arrives_byte_for_byte(source_db, aws):
    seed_one_of_each(source_db)
    hostile = {
        "address_line_1": "'); DROP TABLE staff; --",
        "address_line_2": 'quote " and \\ backslash \' apostrophe',
        "district": "emoji 👜🧳 and RTL עברית العربية \u200f mark",
        "city": "line one\nline two\r\n\ttabbed \x01\x1f control",
        "postal_code": "\u2028\u2029 separators",
        "country": "Ünïcödé ß ﬁ",
        "phone": "",
    }
    insert(source_db, "address", address_id=2, created_at=T0, last_updated=T0, **hostile)

    ingest.run_ingest()

    rows = table_rows(aws["INGEST_BUCKET"], latest_manifest(aws["INGEST_BUCKET"]), "address")
    [landed] = [row for row in rows if row["address_id"] == 2]
    assert {name: landed[name] for name in hostile} == hostile
    assert source_db.run("SELECT count(*) FROM staff") == [[1]]


def test_numbers_timestamps_and_nulls_keep_their_exact_meaning(source_db, aws):
    seed_one_of_each(source_db)
    prices = ["2.67", "99999999.99", "0.10", "0.01"]
    for offset, price in enumerate(prices, start=2):
        sales_order(source_db, offset, T0 + timedelta(milliseconds=offset), Decimal(price))

    ingest.run_ingest()

    manifest = latest_manifest(aws["INGEST_BUCKET"])
    raw = b"".join(storage.read_bytes(aws["INGEST_BUCKET"], file["key"])
                   for file in manifest["tables"]["sales_order"]["files"]).decode()
    for price in prices:
        assert f'"unit_price":{price},' in raw
    rows = table_rows(aws["INGEST_BUCKET"], manifest, "sales_order")
    assert [row["unit_price"] for row in rows[1:]] == [Decimal(price) for price in prices]
    assert [row["last_updated"] for row in rows] == [
        "2024-11-15T14:00:00.120", "2024-11-15T14:00:00.122", "2024-11-15T14:00:00.123",
        "2024-11-15T14:00:00.124", "2024-11-15T14:00:00.125"]
    [address] = table_rows(aws["INGEST_BUCKET"], manifest, "address")
    assert address["address_line_2"] is None and '"address_line_2":null' in json.dumps(
        address, separators=(",", ":"), default=str)


@pytest.mark.parametrize("chunk_rows, objects", [(3, [3, 3, 3, 1]), (4, [4, 4, 2])])
def test_chunk_rows_bounds_every_object(source_db, aws, monkeypatch, chunk_rows, objects):
    monkeypatch.setenv("CHUNK_ROWS", str(chunk_rows))
    seed_one_of_each(source_db)
    for design_id in range(2, 11):
        insert(source_db, "design", design_id=design_id, design_name=f"d{design_id}",
               file_location="/d", file_name="f", created_at=T0,
               last_updated=T0 + timedelta(seconds=design_id))

    ingest.run_ingest()

    files = latest_manifest(aws["INGEST_BUCKET"])["tables"]["design"]["files"]
    assert [file["rows"] for file in files] == objects
    assert [int(DATA_KEY.match(file["key"])["part"]) for file in files] == list(
        range(len(objects)))
    manifest = latest_manifest(aws["INGEST_BUCKET"])
    assert [row["design_id"] for row in table_rows(aws["INGEST_BUCKET"], manifest, "design")] == (
        list(range(1, 11)))


def test_one_run_reads_every_table_at_the_same_instant(source_db, aws, monkeypatch, postgres):
    seed_one_of_each(source_db)
    extract_table = snapshot_capture.extract_table

    def commit_an_order_midway(conn, table, *args, **options):
        extracted = extract_table(conn, table, *args, **options)
        if table == "address":
            sales_order(source_db, 2, T0 + timedelta(minutes=1))
            insert(source_db, "transaction", transaction_id=2, transaction_type="SALE",
                   sales_order_id=2, created_at=T0, last_updated=T0 + timedelta(minutes=1))
        return extracted

    with monkeypatch.context() as patch:
        patch.setattr(snapshot_capture, "extract_table", commit_an_order_midway)
        first = ingest.run_ingest()
    second = ingest.run_ingest()

    assert (first.rows["sales_order"], first.rows["transaction"]) == (1, 1)
    assert (second.rows["sales_order"], second.rows["transaction"]) == (1, 1)


def test_a_generated_history_is_ingested_in_full_once(totesys, aws):
    stack.provision({aws["TOTESYS_SECRET_ID"]: totesys.secret}, buckets=())

    first = ingest.run_ingest()
    second = ingest.run_ingest()

    assert first.rows == {table: totesys.counts[table] for table in SOURCE_TABLES}
    assert second.total_rows == 0


def forge_next_manifest(bucket, **payment_sweep):
    """Add a manifest after the newest, as anyone with write access could.

    It lists no files of its own; the payment table's key sweep fields are replaced.
    """
    from totes import keys

    previous = storage.latest_manifest_key(bucket)
    document = storage.read_json(bucket, previous)
    run = keys.new_run_id()
    document.update(run_id=str(run), previous_manifest=previous)
    for entry in document["tables"].values():
        entry.update(files=[], deleted_files=[], captured_keys=None)
    document["tables"]["payment"]["sweep"].update(payment_sweep)
    key = keys.manifest_key(run)
    storage.put_new_json(bucket, key, document)
    return key, run


def test_a_forged_sweep_key_is_an_input_error_naming_the_manifest_and_nothing_is_committed(
        source_db, aws, monkeypatch):
    from totes.errors import INPUT, kind_of
    from totes.manifest import ManifestError

    seed_one_of_each(source_db)
    ingest.run_ingest()
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    bucket = aws["INGEST_BUCKET"]
    forged, _ = forge_next_manifest(bucket, key=storage.latest_manifest_key(bucket))
    before = set(all_keys(bucket))
    with pytest.raises(ManifestError, match="key sweep of payment") as caught:
        ingest.run_ingest()
    assert forged in str(caught.value) and kind_of(caught.value) == INPUT
    assert {key for key in all_keys(bucket) if key.startswith("_manifests/")} == {
        key for key in before if key.startswith("_manifests/")}


def test_a_gzip_bomb_as_a_key_sweep_is_refused_after_a_bounded_read(source_db, aws, monkeypatch):
    import gzip

    from totes import keys, sweep

    seed_one_of_each(source_db)
    ingest.run_ingest()
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    bucket = aws["INGEST_BUCKET"]
    from datetime import timezone

    bomb_run = keys.new_run_id(datetime.now(timezone.utc) - timedelta(seconds=1))
    bomb = keys.sweep_key("payment", bomb_run)
    storage.put_new_object(bucket, bomb, gzip.compress(b"7" * (64 << 20)), "application/gzip")
    forge_next_manifest(bucket, key=bomb, run_id=str(bomb_run))
    with pytest.raises(sweep.KeyListError, match="a line longer than") as caught:
        ingest.run_ingest()
    assert bomb in str(caught.value)


def test_a_replaced_key_sweep_is_refused_not_read_as_no_deletions(source_db, aws, monkeypatch):
    import gzip

    import boto3

    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    seed_one_of_each(source_db)
    for order_id in range(2, 6):
        sales_order(source_db, order_id, T0)
    ingest.run_ingest()
    bucket = aws["INGEST_BUCKET"]
    swept = latest_manifest(bucket)["tables"]["sales_order"]["sweep"]
    assert swept["sha256"] == storage.checksum(storage.read_bytes(bucket, swept["key"]))
    boto3.client("s3").put_object(  # a later version without order 5: its delete would be lost
        Bucket=bucket, Key=swept["key"], Body=gzip.compress(b"1,2,3,4\n"))
    source_db.run("DELETE FROM sales_order WHERE sales_order_id = 5")
    before = storage.latest_manifest_key(bucket)
    with pytest.raises(storage.ObjectChangedError, match=re.escape(
            f"{swept['key']} is not the object its manifest lists")) as refused:
        ingest.run_ingest()
    assert errors.kind_of(refused.value) == errors.INPUT
    assert storage.latest_manifest_key(bucket) == before


def test_a_refused_sweep_leaves_no_deletion_file_in_the_bucket(source_db, aws, monkeypatch):
    import gzip

    import boto3

    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    monkeypatch.setenv("CHUNK_ROWS", "1000")   # deletions fill objects before the list's end
    seed_one_of_each(source_db)
    ingest.run_ingest()   # the first sweep
    bucket = aws["INGEST_BUCKET"]
    swept = latest_manifest(bucket)["tables"]["sales_order"]["sweep"]
    ghosts = b"".join(b"%d\n" % key for key in range(900_000, 903_000))   # 21 kB of keys
    boto3.client("s3").put_object(   # a later version naming keys the source never had
        Bucket=bucket, Key=swept["key"], Body=gzip.compress(b"1\n" + ghosts))

    with pytest.raises(storage.ObjectChangedError, match=re.escape(swept["key"])):
        ingest.run_ingest()

    assert [key for key in storage.list_keys(bucket, "sales_order/") if "-deleted-" in key] == []


def test_a_replaced_captured_key_list_is_refused_by_the_next_sweep(source_db, aws, monkeypatch):
    import gzip

    import boto3

    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "60")
    seed_one_of_each(source_db)
    ingest.run_ingest()  # the first sweep
    sales_order(source_db, 7, T0 + timedelta(minutes=5))
    ingest.run_ingest()  # no sweep due: the keys it captured are kept for the next one
    bucket = aws["INGEST_BUCKET"]
    entry = latest_manifest(bucket)["tables"]["sales_order"]
    assert entry["captured_keys_sha256"] == storage.checksum(
        storage.read_bytes(bucket, entry["captured_keys"]))
    boto3.client("s3").put_object(  # a later version without order 7: its delete would be lost
        Bucket=bucket, Key=entry["captured_keys"], Body=gzip.compress(b"1\n"))
    source_db.run("DELETE FROM sales_order WHERE sales_order_id = 7")
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    with pytest.raises(storage.ObjectChangedError, match=re.escape(entry["captured_keys"])):
        ingest.run_ingest()


@pytest.mark.parametrize("forged_key", [
    "sales_order/2024/11/15/20241115T140000000Z-aa-00000.jsonl", "_supersede/skips/x.json"])
def test_a_forged_successor_claim_never_makes_ingest_write_what_it_names(
        source_db, aws, forged_key):
    from totes import keys
    from totes.manifest import ManifestError

    seed_one_of_each(source_db)
    first = ingest.run_ingest()
    bucket = aws["INGEST_BUCKET"]
    storage.put_new_json(bucket, keys.successor_claim_key(first.manifest_key), {
        "manifest_key": forged_key, "manifest": latest_manifest(bucket)})
    with pytest.raises(ManifestError, match="_claims/.*not a successor claim"):
        ingest.run_ingest()
    assert forged_key not in all_keys(bucket)
    assert storage.latest_manifest_key(bucket) == first.manifest_key


@pytest.mark.parametrize("column, stored, widen", [
    ("created_at", "infinity", False),
    ("last_updated", "-infinity", False),
    ("created_at", "0044-03-15 12:00:00 BC", False),
    ("last_updated", "10000-01-01 00:00:00", False),
    ("unit_price", "NaN", False),
    ("unit_price", "-Infinity", True),
])
def test_a_value_that_cannot_arrive_exactly_fails_the_run_naming_it_before_the_manifest(
        source_db, aws, column, stored, widen):
    seed_one_of_each(source_db)
    first = ingest.run_ingest()
    if widen:  # numeric(10,2) holds no infinity; the contract takes any numeric
        source_db.run("ALTER TABLE sales_order ALTER unit_price TYPE numeric")
    sales_order(source_db, 2, T0 + timedelta(minutes=5))
    source_db.run(f'UPDATE sales_order SET "{column}" = CAST(:stored AS text)::'  # nosec B608
                  f'{"numeric" if column == "unit_price" else "timestamp"} '
                  "WHERE sales_order_id = 2", stored=stored)

    with pytest.raises(errors.SourceDataError) as refused:
        ingest.run_ingest()

    assert f"sales_order sales_order_id=2: {column} {stored!r} cannot be carried exactly" in str(
        refused.value)
    assert errors.kind_of(refused.value) == errors.INPUT
    assert storage.latest_manifest_key(aws["INGEST_BUCKET"]) == first.manifest_key
    source_db.run(f'UPDATE sales_order SET "{column}" = :fixed '  # nosec B608
                  "WHERE sales_order_id = 2",
                  fixed=Decimal("5.00") if column == "unit_price" else T0)
    ingest.run_ingest()
    rows = table_rows(aws["INGEST_BUCKET"], latest_manifest(aws["INGEST_BUCKET"]), "sales_order")
    [fixed] = [row for row in rows if row["sales_order_id"] == 2]
    assert fixed[column] == (Decimal("5.00") if column == "unit_price"
                             else "2024-11-15T14:00:00.120")


@pytest.mark.parametrize("stamp, arrives", [
    ("0001-01-01 00:00:00", "0001-01-01T00:00:00.000"),
    ("9999-12-31 23:59:59.999", "9999-12-31T23:59:59.999"),
])
def test_the_first_and_last_timestamps_the_rendering_writes_exactly_arrive(
        source_db, aws, stamp, arrives):
    seed_one_of_each(source_db)
    source_db.run("UPDATE sales_order SET created_at = CAST(:stamp AS text)::timestamp",
                  stamp=stamp)

    ingest.run_ingest()

    [row] = table_rows(aws["INGEST_BUCKET"], latest_manifest(aws["INGEST_BUCKET"]), "sales_order")
    assert row["created_at"] == arrives
