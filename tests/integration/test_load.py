"""The load run against real PostgreSQL and moto S3: order, exactly-once, failures, freshness."""
import json
import re
import threading
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import boto3
import pg8000.native
import pytest
from botocore.exceptions import ClientError
from loadkit import (DAY, T0, Buckets, dimensions, gone, parquet_bytes, payment, purchase, sale,
                     snapshot)

from totes import db, errors, keys, load, stage, storage, warehouse
from totes.observability import metrics_for
from totes_local import stack
from totes_local.runner import LambdaContext, load_handler, scheduled_event

NOW = T0 + timedelta(hours=1)


@pytest.fixture
def metrics():
    """The run-level metrics object, emptied after each test."""
    run_metrics = metrics_for()
    yield run_metrics
    run_metrics.clear_metrics()


@pytest.fixture
def warehouse_db(postgres, database):
    """The name of a fresh, empty warehouse database."""
    return database("load")


@pytest.fixture
def conn(postgres, warehouse_db):
    """A connection to the warehouse, as the load function would hold one."""
    connection = postgres.connect(warehouse_db)
    yield connection
    connection.close()


@pytest.fixture
def buckets(aws):
    """Writes test inputs into this test's ingest and processed buckets."""
    return Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"])


def run(conn, metrics, time_left=lambda: 900.0) -> load.LoadReport:
    """One load run at a fixed clock, its report published like the handler does."""
    report = load.load_into(conn, load.LoadSettings.from_environment(),
                            stage.Deadline(time_left), now=lambda: NOW)
    stage.publish(report)
    return report


def count(conn, table: str) -> int:
    return conn.run(f'SELECT count(*) FROM "{table}"')[0][0]


def first_manifest(buckets) -> str:
    return buckets.publish({**dimensions(), "fact_sales_order": [sale(1), sale(2)],
                            "fact_payment": [payment(1)], "fact_purchase_orders": [purchase(1)]})


def test_a_manifest_loads_dimensions_then_facts_and_is_recorded(conn, metrics, buckets):
    key = first_manifest(buckets)
    report = run(conn, metrics)
    assert report.manifests_loaded == [key] and report.last_loaded_manifest == key
    assert report.rows_loaded["fact_sales_order"] == 2
    assert report.rows_loaded["dim_staff"] == 1 and report.rows_loaded["dim_date"] == 3
    assert report.inferred_members == {"dim_date": 3}
    assert report.freshness_seconds == 0
    recorded = conn.run('SELECT "manifest_key", "run_id", "ingest_started_at", "rows_loaded" '
                        'FROM "etl"."loaded_manifest"')
    assert recorded == [[key, key.rsplit("/", 1)[1][:-5], T0 + timedelta(minutes=1),
                         sum(report.rows_loaded.values())]]


def test_running_again_loads_nothing(conn, metrics, buckets):
    first_manifest(buckets)
    run(conn, metrics)
    before = snapshot(conn)
    report = run(conn, metrics)
    assert report.manifests_loaded == [] and snapshot(conn) == before


def test_a_redelivered_fact_version_in_a_later_manifest_adds_nothing(conn, metrics, buckets):
    first_manifest(buckets)
    buckets.publish({"fact_sales_order": [sale(1), sale(2)], "fact_payment": [payment(1)]})
    report = run(conn, metrics)
    assert len(report.manifests_loaded) == 2
    assert count(conn, "fact_sales_order") == 2 and count(conn, "fact_payment") == 1


def test_later_manifests_win_for_dimensions_and_add_fact_history(conn, metrics, buckets):
    first_manifest(buckets)
    buckets.publish({**dimensions(first_name="Grace"),
                     "fact_sales_order": [sale(1, updated=sale(1)["last_updated_time"].replace(
                         hour=11), units_sold=99)]})
    run(conn, metrics)
    assert conn.run('SELECT "first_name" FROM "dim_staff"') == [["Grace"]]
    assert count(conn, "fact_sales_order") == 3
    assert conn.run('SELECT "sales_order_id", "units_sold" FROM "fact_sales_order_current" '
                    'ORDER BY 1') == [[1, 99], [2, 10]]


def test_exact_values_arrive_through_s3_and_parquet(conn, metrics, buckets):
    buckets.publish({**dimensions(), "fact_purchase_orders": [purchase(1)]})
    run(conn, metrics)
    assert conn.run('SELECT "item_unit_price", "last_updated_time"::text '
                    'FROM "fact_purchase_orders"') == [[Decimal("99999999.99"), "10:00:00.123"]]
    assert conn.run('SELECT "address_line_2" IS NULL, "district" = \'\' '
                    'FROM "dim_location"') == [[True, True]]


def test_a_manifest_not_yet_transformed_holds_back_every_later_one(conn, metrics, buckets):
    loaded = first_manifest(buckets)
    waiting = buckets.ingest_run()
    buckets.publish({"fact_payment": [payment(2)]})
    report = run(conn, metrics)
    assert report.manifests_loaded == [loaded] and count(conn, "fact_payment") == 1
    assert report.freshness_seconds == (NOW - (T0 + timedelta(minutes=2))).total_seconds()
    buckets.transform(waiting, {"fact_payment": [payment(3)]})
    assert len(run(conn, metrics).manifests_loaded) == 2
    assert count(conn, "fact_payment") == 3


def test_freshness_is_zero_when_caught_up_and_the_age_of_the_oldest_pending_run(
        conn, metrics, buckets):
    assert run(conn, metrics).freshness_seconds == 0
    buckets.ingest_run(started_at=NOW - timedelta(minutes=40))
    buckets.ingest_run(started_at=NOW - timedelta(minutes=5))
    assert run(conn, metrics).freshness_seconds == 40 * 60


def test_a_run_measures_freshness_from_its_own_listing_of_the_ingest_manifests(
        conn, metrics, buckets, aws):
    first_manifest(buckets)
    waiting = buckets.ingest_run()
    listed = []
    client, event = storage.s3_client(), "before-parameter-build.s3.ListObjectsV2"
    client.meta.events.register(
        event, lambda params, **_: listed.append((params["Bucket"], params["Prefix"])),
        unique_id="ingest-listings")
    try:
        report = run(conn, metrics)
    finally:
        client.meta.events.unregister(event, unique_id="ingest-listings")
    assert report.listing.ended and report.listing.oldest_waiting == waiting
    assert report.freshness_seconds == (NOW - (T0 + timedelta(minutes=2))).total_seconds()
    assert listed.count((aws["INGEST_BUCKET"], "_manifests/")) == 1, listed


def test_a_crash_between_dimensions_and_facts_loads_nothing_and_a_rerun_matches_a_clean_load(
        metrics, buckets, postgres, warehouse_db, database, monkeypatch):
    first_manifest(buckets)
    buckets.publish({**dimensions(first_name="Grace"), "fact_payment": [payment(1, paid=True)]})
    victim, admin = postgres.connect(warehouse_db), postgres.connect(warehouse_db)
    real_infer = warehouse.add_inferred_members

    def crash(connection, fact):
        admin.run("SELECT pg_terminate_backend(:pid)",
                  pid=connection.run("SELECT pg_backend_pid()")[0][0])
        return real_infer(connection, fact)

    with monkeypatch.context() as patch:
        patch.setattr(warehouse, "add_inferred_members", crash)
        with pytest.raises(load.LoadError, match="loading fact_sales_order failed"):
            run(victim, metrics)
    assert admin.run('SELECT count(*) FROM "etl"."loaded_manifest"') == [[0]]
    assert count(admin, "dim_staff") == 0
    assert len(run(admin, metrics).manifests_loaded) == 2
    recovered = snapshot(admin)
    admin.close()
    clean = postgres.connect(database("clean"))
    try:
        run(clean, metrics)
        assert snapshot(clean) == recovered
    finally:
        clean.close()


def test_a_failure_in_the_middle_of_the_facts_rolls_back_the_whole_manifest(
        conn, metrics, buckets, aws):
    good = first_manifest(buckets)
    bad = buckets.publish({**dimensions(first_name="Grace"), "fact_sales_order": [sale(5)],
                           "fact_payment": b"this is not parquet"})
    bad_object = buckets.data_key(bad, "fact_payment")
    with pytest.raises(load.LoadError) as caught:
        run(conn, metrics)
    assert caught.value.manifest_key == bad and caught.value.object_key == bad_object
    assert bad_object in str(caught.value) and "fact_payment" in str(caught.value)
    assert conn.run('SELECT "manifest_key" FROM "etl"."loaded_manifest"') == [[good]]
    assert conn.run('SELECT "first_name" FROM "dim_staff"') == [["Ada"]]
    assert count(conn, "fact_sales_order") == 2
    s3 = boto3.client("s3")
    s3.delete_object(Bucket=aws["PROCESSED_BUCKET"], Key=bad_object)
    s3.put_object(Bucket=aws["PROCESSED_BUCKET"], Key=bad_object,
                  Body=parquet_bytes("fact_payment", [payment(9)]))
    assert run(conn, metrics).manifests_loaded == [bad]
    assert count(conn, "fact_sales_order") == 3 and count(conn, "fact_payment") == 2


def test_a_rejected_row_is_reported_by_table_and_constraint_never_by_its_values(
        conn, metrics, buckets, captured_logs):
    first_manifest(buckets)
    run(conn, metrics)
    conn.run("ALTER TABLE dim_staff ADD CONSTRAINT staff_named CHECK (first_name <> 'Zed-7731')")
    buckets.publish({**dimensions(first_name="Zed-7731"), "fact_payment": [payment(3)]})
    with pytest.raises(load.LoadError) as caught:
        run(conn, metrics)
    told = str(caught.value) + json.dumps(captured_logs(), default=str)
    assert "staff_named" in told and "dim_staff" in told and "loading dim_staff failed" in told
    # pg8000 carried "Failing row contains (1, Zed-7731, Lovelace, ...)": personal data.
    assert "Zed-7731" not in told and "Lovelace" not in told and "Failing row" not in told


def test_a_value_postgresql_cannot_parse_is_not_quoted_back(conn, metrics, buckets):
    first_manifest(buckets)
    run(conn, metrics)
    conn.run("ALTER TABLE dim_staff ADD COLUMN badge int")
    conn.run("CREATE FUNCTION totes_badge() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             "NEW.badge := NEW.last_name::int; RETURN NEW; END $$")
    conn.run("CREATE TRIGGER staff_badge BEFORE INSERT OR UPDATE ON dim_staff "
             "FOR EACH ROW EXECUTE FUNCTION totes_badge()")
    buckets.publish({**dimensions(first_name="Ann"), "fact_payment": [payment(4)]})
    with pytest.raises(load.LoadError) as caught:
        run(conn, metrics)
    assert "invalid input syntax" in str(caught.value) and "Lovelace" not in str(caught.value)


def test_a_missing_object_is_an_error_naming_it(conn, metrics, buckets, aws):
    key = buckets.publish({"fact_payment": [payment(1)], **dimensions()})
    missing = buckets.data_key(key, "dim_staff")
    boto3.client("s3").delete_object(Bucket=aws["PROCESSED_BUCKET"], Key=missing)
    with pytest.raises(load.LoadError, match=missing):
        run(conn, metrics)
    assert count(conn, "dim_currency") == 0


def test_a_processed_object_replaced_by_a_later_version_is_refused_until_it_is_removed(
        conn, metrics, buckets, aws):
    # Valid Parquet of the contract with the listed row count, only not the object the
    # transform wrote: every other check passes it, the manifest's SHA-256 does not.
    bucket = aws["PROCESSED_BUCKET"]
    s3 = boto3.client("s3")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = buckets.publish({"fact_payment": [payment(1)], **dimensions()})
    listed = storage.read_json(bucket, key)["tables"]["fact_payment"]["files"][0]
    later = s3.put_object(Bucket=bucket, Key=listed["key"], Body=parquet_bytes(
        "fact_payment", [payment(1, payment_amount=Decimal("9999.00"))]))
    with pytest.raises(load.LoadError, match=re.escape(
            f"s3://{bucket}/{listed['key']} is not the object its manifest lists: SHA-256 "
            f"expected {listed['sha256']}, found ")) as refused:
        run(conn, metrics)
    assert errors.kind_of(refused.value) == errors.INPUT
    assert count(conn, "dim_currency") == 0 and count(conn, "fact_payment") == 0
    # The runbook's repair: remove the later version, so the original is the current one.
    s3.delete_object(Bucket=bucket, Key=listed["key"], VersionId=later["VersionId"])
    assert run(conn, metrics).manifests_loaded == [key]
    assert conn.run("SELECT payment_amount FROM fact_payment") == [[Decimal("26.80")]]


def test_a_processed_1_manifest_listing_no_checksums_still_loads(conn, metrics, buckets, aws):
    key = buckets.ingest_run()
    body = parquet_bytes("dim_currency", dimensions()["dim_currency"])
    data = keys.attempt_data_key("dim_currency", keys.parse_manifest_key(key), "0a1b2c3d", 0,
                                 "parquet")
    storage.put_new_object(aws["PROCESSED_BUCKET"], data, body, "application/octet-stream")
    storage.put_new_json(aws["PROCESSED_BUCKET"], key, {
        "format": "totes.processed/1", "run_id": str(keys.parse_manifest_key(key)),
        "ingest_manifest": key, "ingest_started_at": None, "transformed_at": "",
        "tables": {"dim_currency": {"rows": 1, "files": [
            {"key": data, "rows": 1, "bytes": len(body)}]}}, "reference": {}})
    assert run(conn, metrics).manifests_loaded == [key]
    assert count(conn, "dim_currency") == 1


def test_two_racing_loads_load_each_manifest_once(postgres, warehouse_db, metrics, buckets):
    keys = [first_manifest(buckets)]
    keys += [buckets.publish({"fact_payment": [payment(n)], "fact_sales_order": [sale(n)]})
             for n in range(10, 16)]
    barrier = threading.Barrier(2)
    reports, errors = [], []

    def racer():
        connection = postgres.connect(warehouse_db)
        try:
            barrier.wait()
            reports.append(run(connection, metrics))
        except Exception as error:  # noqa: B902 - surfaced by the assertion below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=racer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    loaded = [key for report in reports for key in report.manifests_loaded]
    assert sorted(loaded) == keys
    check = postgres.connect(warehouse_db)
    try:
        assert check.run('SELECT count(*) FROM "etl"."loaded_manifest"') == [[len(keys)]]
        assert count(check, "fact_payment") == 7 and count(check, "fact_sales_order") == 8
    finally:
        check.close()


def test_a_run_short_of_time_starts_no_manifest(conn, metrics, buckets):
    first_manifest(buckets)
    report = run(conn, metrics, time_left=lambda: load.RESERVE_SECONDS - 1)
    assert report.manifests_loaded == [] and report.freshness_seconds > 0


def test_handler_connects_through_the_secret_and_reports(
        aws, postgres, warehouse_db, buckets, capsys):
    stack.provision({aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse_db)}, buckets=())
    key = first_manifest(buckets)
    handler = load_handler("load")
    summary = handler(scheduled_event("load"), LambdaContext(function_name="totes-load"))
    assert summary["manifests_loaded"] == 1 and summary["last_loaded_manifest"] == key
    assert summary["rows_loaded"]["fact_sales_order"] == 2
    assert summary["freshness_seconds"] == 0
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{") and "_aws" in line]
    run_metrics = next(doc for doc in emitted if "FreshnessSeconds" in doc)
    assert run_metrics["FreshnessSeconds"] == [0.0] and run_metrics["ManifestsLoaded"] == [1.0]
    assert "LoadRunDuration" in run_metrics
    rows = {doc["table"]: doc["RowsLoaded"] for doc in emitted if "RowsLoaded" in doc}
    assert rows["fact_sales_order"] == [2.0] and rows["dim_staff"] == [1.0]


def test_handler_fails_clearly_when_the_warehouse_is_down(aws, tmp_path):
    secret = {"host": str(tmp_path), "port": 5999, "username": "etl", "dbname": "warehouse"}
    stack.provision({aws["WAREHOUSE_SECRET_ID"]: secret}, buckets=())
    handler = load_handler("load")
    with pytest.raises(Exception, match="cannot connect to database warehouse"):
        handler(scheduled_event("load"), LambdaContext(function_name="totes-load"))


def test_an_unreadable_processed_manifest_stops_the_load_naming_it(conn, metrics, buckets):
    key = buckets.ingest_run()
    storage.put_new_json(buckets.processed, key, {"format": "totes.processed/0"})
    with pytest.raises(load.LoadError, match=f"manifest {key} cannot be read: {key}: not a totes"):
        run(conn, metrics)
    assert conn.run('SELECT count(*) FROM "etl"."loaded_manifest"') == [[0]]


def ingest_manifests_unreadable(monkeypatch, aws):
    """Make every read of an ingest manifest fail, as freshness needs one."""
    read_json = storage.read_json

    def refused(bucket, key):
        if bucket == aws["INGEST_BUCKET"]:
            raise ClientError({"Error": {"Code": "SlowDown", "Message": "slow down"}},
                              "GetObject")
        return read_json(bucket, key)

    monkeypatch.setattr(storage, "read_json", refused)


def emitted_metrics(capsys, metrics):
    metrics.flush_metrics()
    return {name for line in capsys.readouterr().out.splitlines() if line.startswith("{")
            for name in json.loads(line)}


def test_a_load_error_wins_over_a_freshness_failure_and_metrics_still_go_out(
        conn, metrics, buckets, aws, monkeypatch, captured_logs, capsys):
    key = buckets.publish({"fact_payment": [payment(1)], **dimensions()})
    missing = buckets.data_key(key, "dim_staff")
    boto3.client("s3").delete_object(Bucket=aws["PROCESSED_BUCKET"], Key=missing)
    ingest_manifests_unreadable(monkeypatch, aws)

    with pytest.raises(load.LoadError, match=missing):
        run(conn, metrics)

    errors = [line["message"] for line in captured_logs() if line["level"] == "ERROR"]
    assert errors == ["load failed",
                      "freshness could not be measured; FreshnessSeconds not published"]
    published = emitted_metrics(capsys, metrics)
    assert "ManifestsLoaded" in published and "FreshnessSeconds" not in published


def test_a_freshness_failure_after_a_good_load_is_raised_once_logged(
        conn, metrics, buckets, aws, monkeypatch, captured_logs, capsys):
    first_manifest(buckets)
    buckets.ingest_run()
    ingest_manifests_unreadable(monkeypatch, aws)

    with pytest.raises(ClientError, match="slow down"):
        run(conn, metrics)

    [error] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert error["message"].startswith("freshness could not be measured")
    assert count(conn, "fact_sales_order") == 2
    assert "ManifestsLoaded" in emitted_metrics(capsys, metrics)


def test_a_warehouse_that_cannot_be_prepared_is_logged(
        postgres, warehouse_db, metrics, buckets, captured_logs):
    closed = postgres.connect(warehouse_db)
    closed.close()
    with pytest.raises(pg8000.native.InterfaceError):
        run(closed, metrics)
    [error] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert error["message"] == "load failed preparing the warehouse; nothing loaded"


def test_handler_raises_the_load_error_even_when_the_connection_is_already_broken(
        aws, postgres, warehouse_db, buckets, monkeypatch):
    stack.provision({aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse_db)}, buckets=())

    def load_fails_with_the_backend_gone(conn, *args, **kwargs):
        with pytest.raises(pg8000.native.DatabaseError, match="57P01"):  # the server's report
            conn.run("SELECT pg_terminate_backend(pg_backend_pid())")
        raise load.LoadError("the load's own error", "a manifest")

    monkeypatch.setattr(load, "load_into", load_fails_with_the_backend_gone)
    with pytest.raises(load.LoadError, match="the load's own error"):
        load_handler("load")(scheduled_event("load"), LambdaContext(function_name="totes-load"))


def test_a_session_the_warehouse_ends_mid_load_fails_the_invocation_as_transient(
        aws, postgres, warehouse_db, buckets, monkeypatch, captured_logs):
    stack.provision({aws["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse_db)}, buckets=())
    manifest = first_manifest(buckets)
    admin, real_infer = postgres.connect(warehouse_db), warehouse.add_inferred_members

    def terminated(connection, fact):   # an administrator, a failover, a recovery conflict
        admin.run("SELECT pg_terminate_backend(:pid)",
                  pid=connection.run("SELECT pg_backend_pid()")[0][0])
        return real_infer(connection, fact)

    try:
        with monkeypatch.context() as patch:
            patch.setattr(warehouse, "add_inferred_members", terminated)
            # The server's report (57P01) when it is still readable, else a reset socket.
            with pytest.raises(db.SessionInterruptedError, match="the warehouse server ended "
                               "the run's statement or session.*SQLSTATE 57P01|the connection "
                               "to the warehouse server was lost") as caught:
                load_handler("load")(scheduled_event("load"),
                                     LambdaContext(function_name="totes-load"))
        assert isinstance(caught.value.__cause__, load.LoadError)
        assert caught.value.__cause__.manifest_key == manifest   # still named in the chain
        [kind] = [line for line in captured_logs()
                  if line["message"].startswith("invocation failed")]
        assert kind["error_kind"] == "transient"
        assert admin.run('SELECT count(*) FROM "etl"."loaded_manifest"') == [[0]]
    finally:
        admin.close()


@pytest.mark.parametrize("secret, cause", [
    ('{"host": "db", "password": ', "is not valid JSON"),
    ('{"host": "db"}', 'no username for the warehouse database: put "username" in secret'),
], ids=["not-json", "missing-keys"])
def test_handler_logs_a_bad_secret_with_its_cause(aws, secret, cause, captured_logs):
    boto3.client("secretsmanager").create_secret(Name=aws["WAREHOUSE_SECRET_ID"],
                                                 SecretString=secret)
    with pytest.raises(db.SecretFormatError, match=cause):
        load_handler("load")(scheduled_event("load"), LambdaContext(function_name="totes-load"))
    [error] = [line for line in captured_logs() if line["level"] == "ERROR"]
    assert error["message"].startswith("load failed connecting") and cause in error["exception"]


# --- formats, deletions, corrections ---------------------------------------------------------

DETECTED = datetime(2024, 11, 16, 8, 18, 46, 509000)
CAPTURE = {"snapshot": "1000:1004:1001", "database_time": "2024-11-16T08:18:46.509"}


def current_ids(conn, fact: str, business_id: str) -> list[int]:
    return [row[0] for row in conn.run(
        f'SELECT "{business_id}" FROM "{fact}_current" ORDER BY 1')]  # nosec B608


def test_a_processed_1_manifest_of_the_previous_transform_still_loads(conn, metrics, buckets):
    key = buckets.publish({**dimensions(), "fact_payment": [payment(1)],
                           "fact_sales_order": [sale(1)]}, version=1)
    assert storage.read_json(buckets.processed, key)["format"] == "totes.processed/1"
    report = run(conn, metrics)
    assert report.manifests_loaded == [key]
    assert conn.run('SELECT "payment_id", "is_deleted" FROM "fact_payment"') == [[1, False]]
    assert conn.run('SELECT "capture_snapshot", "database_time" FROM "etl"."loaded_manifest"'
                    ) == [[None, None]]


def test_deletions_become_versions_after_the_facts_and_the_capture_point_is_recorded(
        conn, metrics, buckets, capsys):
    first_manifest(buckets)
    key = buckets.publish(
        {"fact_payment": [payment(1, time(11, 0), paid=True)]},
        deletions={"fact_payment": [gone("fact_payment", 1, DETECTED)],
                   "fact_sales_order": [gone("fact_sales_order", 2, DETECTED)]},
        capture=CAPTURE)
    report = run(conn, metrics)
    assert report.deletions_loaded == {"fact_payment": 1, "fact_sales_order": 1}
    assert report.rows_loaded["fact_payment"] == 3 and report.inferred_members["dim_date"] == 4
    assert report.as_dict()["deletions_loaded"] == {
        "fact_sales_order": 1, "fact_purchase_orders": 0, "fact_payment": 1}
    assert current_ids(conn, "fact_payment", "payment_id") == []
    assert current_ids(conn, "fact_sales_order", "sales_order_id") == [1]
    assert conn.run('SELECT "paid", "is_deleted", "last_updated_date" FROM "fact_payment" '
                    'ORDER BY "payment_record_id"') == [
        [False, False, DAY], [True, False, DAY], [True, True, date(2024, 11, 16)]]
    assert conn.run('SELECT "capture_snapshot", "database_time" FROM "etl"."loaded_manifest" '
                    'WHERE "manifest_key" = :k', k=key) == [["1000:1004:1001", DETECTED]]
    metrics.flush_metrics()
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines()
               if line.startswith("{") and "_aws" in line]
    deleted = {doc["table"]: doc["DeletionsLoaded"] for doc in emitted if "DeletionsLoaded" in doc}
    assert deleted == {"fact_sales_order": [1.0], "fact_purchase_orders": [0.0],
                       "fact_payment": [1.0]}


def test_a_redelivered_deletion_in_a_later_manifest_adds_nothing(conn, metrics, buckets):
    first_manifest(buckets)
    deletion = {"fact_purchase_orders": [gone("fact_purchase_orders", 1, DETECTED)]}
    buckets.publish({}, deletions=deletion)
    buckets.publish({}, deletions={"fact_purchase_orders": [
        gone("fact_purchase_orders", 1, DETECTED + timedelta(hours=1))]})
    report = run(conn, metrics)
    assert len(report.manifests_loaded) == 3
    assert report.deletions_loaded == {"fact_purchase_orders": 1}
    assert count(conn, "fact_purchase_orders") == 2
    assert current_ids(conn, "fact_purchase_orders", "purchase_order_id") == []


def test_a_same_stamp_change_is_corrected_and_counted_and_a_re_read_is_not(
        conn, metrics, buckets, capsys):
    first_manifest(buckets)
    run(conn, metrics)
    buckets.publish({"fact_sales_order": [sale(1, units_sold=77), sale(2)]})
    report = run(conn, metrics)
    assert report.versions_corrected == {"fact_sales_order": 1}
    assert report.rows_loaded["fact_sales_order"] == 1
    assert count(conn, "fact_sales_order") == 2
    assert conn.run('SELECT "sales_order_id", "units_sold" FROM "fact_sales_order_current" '
                    'ORDER BY 1') == [[1, 77], [2, 10]]
    metrics.flush_metrics()
    corrected = {json.loads(line)["table"]: json.loads(line)["VersionsCorrected"]
                 for line in capsys.readouterr().out.splitlines()
                 if line.startswith("{") and "VersionsCorrected" in line}
    assert corrected["fact_sales_order"] == [1.0] and corrected["fact_payment"] == [0.0]


def test_an_order_stamped_in_the_future_then_corrected_shows_the_correction(
        conn, metrics, buckets):
    buckets.publish({**dimensions(), "fact_sales_order": [
        sale(1, units_sold=1, last_updated_date=date(2027, 1, 1))]})
    buckets.publish({"fact_sales_order": [sale(1, time(11, 0), units_sold=2)]})
    run(conn, metrics)
    assert conn.run('SELECT "units_sold", "last_updated_date" FROM "fact_sales_order_current"'
                    ) == [[2, DAY]]
    assert count(conn, "fact_sales_order") == 2


#: the model's ids start here, clear of first_manifest's payment 1.
FIRST_MODELLED_ID = 100


class PaymentSource:
    """A model of the source's payment table, captured the way ingest captures it.

    Each id is present (its current version: last updated, amount, paid) or
    deleted. A capture carries every row changed since the last one, a random
    share of unchanged rows read again (the overlap window, a long transaction
    holding the floor back), and a deletion record for each id present at the
    last capture and gone now (the key sweep). A restore sets a row back to one
    of its earlier versions, last updated included, as a backup restore does.
    """

    def __init__(self, rng):
        """Start with no rows; the clock ticks a second per change, from 10:00."""
        self.rng, self.clock = rng, 0
        self.current: dict[int, tuple | None] = {}
        self.versions: dict[int, list[tuple]] = {}
        self.changed: set[int] = set()
        self.captured_present: set[int] = set()
        self.captured: set[tuple] = set()

    def _tick(self) -> time:
        self.clock += 1
        return (datetime.combine(DAY, time(10)) + timedelta(seconds=self.clock)).time()

    def change(self) -> None:
        """One random change: a new row, an update, a deletion or a restore."""
        ids = sorted(self.current)
        action = self.rng.choice(["create", "update", "update", "delete", "restore"])
        if action == "create" or not ids:
            payment_id = FIRST_MODELLED_ID + len(ids)
        else:
            payment_id = self.rng.choice(ids)
        if action == "delete" and self.current.get(payment_id) is not None:
            self.current[payment_id] = None
        elif action == "restore" and self.versions.get(payment_id):
            self.current[payment_id] = self.rng.choice(self.versions[payment_id])
        else:
            version = (self._tick(), Decimal(self.rng.randrange(1, 10_000)) / 100,
                       self.rng.random() < 0.5)
            self.versions.setdefault(payment_id, []).append(version)
            self.current[payment_id] = version
        self.changed.add(payment_id)

    def capture(self) -> tuple[list[dict], list[dict]]:
        """The rows and deletion records of one ingest run, then forget what changed.

        A version overwritten before any capture saw it is never captured, as in ingest.
        """
        present = {i for i, version in self.current.items() if version is not None}
        again = {i for i in present - self.changed if self.rng.random() < 0.3}
        rows = [payment(i, self.current[i][0], payment_amount=self.current[i][1],
                        paid=self.current[i][2]) for i in sorted((self.changed | again) & present)]
        self.captured |= {(row["payment_id"], row["last_updated_time"]) for row in rows}
        detected = datetime.combine(DAY, self._tick())
        deletions = [gone("fact_payment", i, detected)
                     for i in sorted(self.captured_present - present)]
        self.changed, self.captured_present = set(), present
        return rows, deletions


@pytest.mark.parametrize("seed", range(4))
def test_the_warehouse_ends_as_the_source_whatever_order_of_changes_restores_and_rereads(
        conn, metrics, buckets, seed):
    # Guards the fact rules together: a re-read changes nothing, a deletion is a version, and
    # an older version arriving again (a restore) becomes the latest, over random histories.
    import random

    source = PaymentSource(random.Random(seed))
    first_manifest(buckets)
    for _ in range(12):
        for _ in range(source.rng.randrange(0, 5)):
            source.change()
        rows, deletions = source.capture()
        buckets.publish({"fact_payment": rows} if rows else {},
                        deletions={"fact_payment": deletions} if deletions else None)
        if source.rng.random() < 0.5:
            run(conn, metrics)
    run(conn, metrics)
    assert conn.run('SELECT "payment_id", "last_updated_time", "payment_amount", "paid" '
                    'FROM "fact_payment_current" WHERE "payment_id" >= :first '
                    'ORDER BY "payment_id"', first=FIRST_MODELLED_ID) == [
        [i, *version] for i, version in sorted(source.current.items()) if version is not None]
    stored = {(i, t) for i, t in conn.run(
        'SELECT "payment_id", "last_updated_time" FROM "fact_payment" WHERE NOT "is_deleted"')}
    assert source.captured <= stored
