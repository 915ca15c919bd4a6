import importlib.util
import io
import json
import re
from datetime import date, time, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote_plus

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ingest_fixtures import T0, encoded, full_batch, moto_buckets, row, write_run
from botocore.exceptions import ClientError

from totes import config, keys, stage, storage, transform
from totes.capture import Snapshot
from totes.manifest import DataFile, IngestManifest, TableEntry
from totes.warehouse_schema import DELETIONS, TABLES, arrow_schema

INGEST, PROCESSED = "ingest-test", "processed-test"
SETTINGS = transform.TransformSettings(ingest_bucket=INGEST, processed_bucket=PROCESSED)
APP = Path(__file__).resolve().parents[2] / "functions" / "transform" / "app.py"
STAMPS = ("20241115T142009123Z", "20241115T142509001Z", "20241115T143010500Z")


def exists(bucket: str, key: str) -> bool:
    """Whether ``key`` is in ``bucket`` (the pipeline itself never needs to ask)."""
    return key in set(storage.list_keys(bucket, key))


def _load_app():
    spec = importlib.util.spec_from_file_location("transform_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


app = _load_app()


@pytest.fixture(autouse=True)
def buckets(monkeypatch):
    """Fresh in-process S3 buckets for every test."""
    with moto_buckets(monkeypatch, INGEST, PROCESSED):
        yield


def s3_event(*object_keys):
    return {"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
                         "s3": {"bucket": {"name": INGEST},
                                "object": {"key": quote_plus(key)}}} for key in object_keys]}


class LambdaContext:
    function_name = "transform"
    memory_limit_in_mb = 1769
    invoked_function_arn = "arn:aws:lambda:eu-west-2:123456789012:function:transform"
    aws_request_id = "test-request"

    def get_remaining_time_in_millis(self):
        """A fresh invocation of the template's 300 s transform."""
        return 300_000


def handle(*object_keys):
    return app.lambda_handler(s3_event(*object_keys), LambdaContext())


def processed_keys():
    return sorted(storage.list_keys(PROCESSED, ""))


def manifest(ingest_key):
    return storage.read_json(PROCESSED, ingest_key)


def _listed_rows(entry, contract):
    """Every row of the files a manifest entry lists, each file checked against ``contract``."""
    rows = []
    for listed in entry["files"]:
        table = pq.read_table(io.BytesIO(storage.read_bytes(PROCESSED, listed["key"])))
        assert table.schema.equals(arrow_schema(contract))
        assert table.num_rows == listed["rows"]
        rows.extend(table.to_pylist())
    return rows


def rows_of(document, table_name):
    return _listed_rows(document["tables"][table_name], TABLES[table_name])


def deletion_rows(document, fact):
    return _listed_rows(document["deletions"][fact], DELETIONS[fact])


def _put_jsonl(key, body):
    """Write one ingest object as ingest does, its SHA-256 recorded for the manifest."""
    sha256 = storage.put_new_object_on(None, INGEST, key, body, "application/x-ndjson")
    return DataFile(key, body.count(b"\n"), len(body), sha256)


def write_run_v2(tables, deleted=None, stamp=STAMPS[0], snapshot="1000:1004:1001",
                 database_time="2024-11-15T14:20:09.500"):
    """One ``totes.ingest/2`` run: data files, deletion records per table, then the manifest.

    ``deleted`` maps a source table to raw deletion records (dicts written as JSON
    Lines as they are). The manifest is rendered by the ingest manifest record itself.
    """
    run = keys.RunId(stamp, "3f9a1c2e")
    entries = {}
    for table in ("address", "currency", "department", "design", "payment_type",
                  "counterparty", "staff", "sales_order", "purchase_order", "transaction",
                  "payment"):
        files, deletions = (), ()
        if tables.get(table):
            files = (_put_jsonl(keys.data_key(table, run, 0, "jsonl"),
                                encoded(table, tables[table])),)
        if (deleted or {}).get(table):
            body = "".join(json.dumps(record) + "\n" for record in deleted[table]).encode()
            deletions = (_put_jsonl(keys.deletions_key(table, run, 0), body),)
        entries[table] = TableEntry(files=files, deleted=deletions)
    started = run.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    document = IngestManifest(
        run_id=str(run), started_at=started, finished_at=started, previous_manifest=None,
        tables=entries, snapshot=Snapshot.parse(snapshot), database_time=database_time,
    ).to_json()
    assert document["format"] == "totes.ingest/2"
    key = keys.manifest_key(run)
    storage.put_new_json(INGEST, key, document)
    return key


def overwrite(bucket, key, body):
    """Make a bad object acceptable: stands in for deploying a transform that accepts it.

    The buckets are immutable in production (see docs/runbook.md); only tests overwrite.
    """
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=body)


# --- a whole run -----------------------------------------------------------------------------

def test_whole_run_writes_every_table_as_parquet_with_the_exact_schema():
    key = write_run(INGEST, full_batch())
    assert handle(key) == {"transformed": [key], "ignored": []}
    document = manifest(key)
    assert set(document["tables"]) == set(TABLES)
    for table_name in TABLES:
        assert len(rows_of(document, table_name)) == 1 or table_name == "dim_date"
    sale = rows_of(document, "fact_sales_order")[0]
    assert sale["unit_price"] == Decimal("2.68")
    assert sale["created_time"].isoformat() == "14:20:09.123000"
    assert rows_of(document, "dim_currency")[0]["currency_name"] == "Pound Sterling"
    assert rows_of(document, "dim_counterparty")[0]["counterparty_legal_city"] == \
        "New Patienceburgh"
    assert rows_of(document, "dim_staff")[0]["department_name"] == "Sales"
    dates = {r["date_id"] for r in rows_of(document, "dim_date")}
    assert dates == {date(2024, 11, 15), date(2024, 11, 18), date(2024, 11, 19),
                     date(2024, 11, 20), date(2024, 11, 21)}


def test_processed_manifest_follows_the_documented_format():
    key = write_run(INGEST, full_batch())
    handle(key)
    document = manifest(key)
    assert document["format"] == "totes.processed/2"
    assert document["capture"] == {"snapshot": None, "database_time": None}
    assert document["deletions"] == {fact: {"rows": 0, "files": []} for fact in DELETIONS}
    assert document["run_id"] == "20241115T142009123Z-3f9a1c2e"
    assert document["ingest_manifest"] == key
    assert document["ingest_started_at"] == "2024-11-15T14:20:09.123Z"
    assert document["transformed_at"].endswith("Z")
    assert set(document["reference"]) == {"address", "department", "counterparty", "staff"}
    for table, pointer in document["reference"].items():
        assert pointer.startswith(f"_reference/{table}/2024/11/15/20241115T142009123Z-3f9a1c2e-")
        assert exists(PROCESSED, pointer)
    for output in document["tables"].values():
        assert output["rows"] == sum(entry["rows"] for entry in output["files"])
        for entry in output["files"]:
            body = storage.read_bytes(PROCESSED, entry["key"])
            assert entry["bytes"] == len(body) and entry["sha256"] == storage.checksum(body)


def test_empty_run_commits_a_manifest_with_no_files():
    key = write_run(INGEST, {})
    handle(key)
    document = manifest(key)
    assert all(output == {"rows": 0, "files": []} for output in document["tables"].values())
    assert document["reference"] == dict.fromkeys(document["reference"])


def test_metrics_count_rows_in_and_out(capsys):
    handle(write_run(INGEST, full_batch()))
    output = capsys.readouterr().out
    assert '"RowsIn"' in output and '"RowsOut"' in output
    assert '"TransformRunDuration"' in output and '"ManifestsTransformed"' in output


# --- ordering and idempotency ----------------------------------------------------------------

def test_same_event_twice_writes_nothing_the_second_time():
    key = write_run(INGEST, full_batch())
    handle(key)
    before = processed_keys()
    assert handle(key) == {"transformed": [], "ignored": []}
    assert processed_keys() == before


def test_event_for_a_later_manifest_first_transforms_the_earlier_ones_in_order():
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    second = write_run(INGEST, {"payment": [row("payment", paid=True,
                                                last_updated=T0 + timedelta(minutes=5))]},
                       stamp=STAMPS[1])
    assert handle(second)["transformed"] == [first, second]
    assert handle(first)["transformed"] == []
    assert rows_of(manifest(second), "fact_payment")[0]["paid"] is True
    assert manifest(second)["reference"] == manifest(first)["reference"]


def test_event_does_not_transform_manifests_newer_than_its_own():
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    second = write_run(INGEST, {}, stamp=STAMPS[1])
    assert handle(first)["transformed"] == [first]
    assert not exists(PROCESSED, second)


def test_crash_half_way_then_retry_gives_one_complete_output(monkeypatch):
    key = write_run(INGEST, full_batch())
    real_put, calls = storage.put_new_object, []

    def crash_on_fifth_write(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 5:
            raise ConnectionError("Lambda ran out of time")
        return real_put(*args, **kwargs)

    monkeypatch.setattr(storage, "put_new_object", crash_on_fifth_write)
    with pytest.raises(ConnectionError):
        handle(key)
    assert not exists(PROCESSED, key)
    orphans = set(processed_keys())
    monkeypatch.setattr(storage, "put_new_object", real_put)

    assert handle(key)["transformed"] == [key]
    document = manifest(key)
    listed = {entry["key"] for output in document["tables"].values()
              for entry in output["files"]}
    assert not listed & orphans
    assert all(len(rows_of(document, name)) == 1 for name in TABLES if name != "dim_date")


def test_concurrent_commit_keeps_the_first_manifest():
    key = write_run(INGEST, full_batch())
    pointers = dict.fromkeys(("address", "department", "counterparty", "staff"))
    first = transform.transform_manifest(SETTINGS, key, pointers)
    second = transform.transform_manifest(SETTINGS, key, pointers)
    assert second == first and first.to_json() == manifest(key)


def test_keys_that_are_not_ingest_manifests_are_acknowledged_and_ignored():
    data_key = "sales_order/2024/11/15/20241115T142009123Z-3f9a1c2e-00000.jsonl"
    others = [data_key, "unknown/prefix.json", "_manifests/notes.txt"]
    assert handle(*others) == {"transformed": [], "ignored": others}
    assert processed_keys() == []


# --- propagation across runs -----------------------------------------------------------------

def test_address_change_in_a_later_run_updates_location_and_its_counterparties():
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    moved = row("address", city="Leeds", last_updated=T0 + timedelta(minutes=3))
    second = write_run(INGEST, {"address": [moved]}, stamp=STAMPS[1])
    handle(second)
    document = manifest(second)
    assert rows_of(document, "dim_location")[0]["city"] == "Leeds"
    assert rows_of(document, "dim_counterparty")[0]["counterparty_legal_city"] == "Leeds"
    assert document["reference"]["address"] != manifest(first)["reference"]["address"]
    assert document["reference"]["counterparty"] == manifest(first)["reference"]["counterparty"]


def test_new_staff_and_counterparty_get_parents_that_arrived_in_an_earlier_run():
    write_run(INGEST, full_batch(), stamp=STAMPS[0])
    later = T0 + timedelta(minutes=4)
    second = write_run(INGEST, {
        "staff": [row("staff", staff_id=2, first_name="New", last_updated=later)],
        "counterparty": [row("counterparty", counterparty_id=2, last_updated=later)],
    }, stamp=STAMPS[1])
    handle(second)
    document = manifest(second)
    assert rows_of(document, "dim_staff") == [{
        "staff_id": 2, "first_name": "New", "last_name": "Franey", "department_name": "Sales",
        "location": "Manchester", "email_address": "jeremie.franey@terrifictotes.com"}]
    assert rows_of(document, "dim_counterparty")[0]["counterparty_legal_city"] == \
        "New Patienceburgh"


def test_department_change_rewrites_its_staff_in_the_same_run_as_the_change():
    write_run(INGEST, full_batch(), stamp=STAMPS[0])
    renamed = row("department", department_name="Retail", last_updated=T0 + timedelta(hours=1))
    second = write_run(INGEST, {"department": [renamed]}, stamp=STAMPS[1])
    handle(second)
    assert rows_of(manifest(second), "dim_staff")[0]["department_name"] == "Retail"


def test_counterparty_without_address_is_deferred_with_a_warning(caplog):
    batch = full_batch()
    batch["counterparty"] = [row("counterparty", legal_address_id=404)]
    key = write_run(INGEST, batch)
    handle(key)
    assert rows_of(manifest(key), "dim_counterparty") == []
    assert "rows deferred until their parent arrives" in caplog.text


def test_unknown_currency_is_named_after_its_code_with_a_warning(caplog):
    key = write_run(INGEST, {"currency": [row("currency", currency_code="XTS"),
                                          row("currency", currency_id=2, currency_code="QQQ")]})
    handle(key)
    currencies = rows_of(manifest(key), "dim_currency")
    names = {r["currency_code"]: r["currency_name"] for r in currencies}
    assert names == {"XTS": "Codes specifically reserved for testing purposes", "QQQ": "QQQ"}
    assert [record.codes for record in caplog.records if hasattr(record, "codes")] == [["QQQ"]]


# --- dedupe within the batch -----------------------------------------------------------------

def test_rows_repeated_across_files_of_a_run_are_written_in_capture_order_for_the_load():
    order = row("sales_order")
    corrected = row("sales_order", units_sold=7)
    amended = row("sales_order", units_sold=5, last_updated=T0 + timedelta(seconds=1))
    transaction = row("transaction")
    renamed = row("transaction", transaction_type="PURCHASE")
    key = write_run(INGEST, {"sales_order": [order, order, corrected, amended],
                             "transaction": [transaction, renamed]}, chunk_rows=1)
    handle(key)
    document = manifest(key)
    assert [r["units_sold"] for r in rows_of(document, "fact_sales_order")] == [100, 100, 7, 5]
    assert [r["transaction_type"] for r in rows_of(document, "dim_transaction")] == [
        "SALE", "PURCHASE"]


def test_large_tables_are_written_one_file_per_ingest_file():
    orders = [row("sales_order", sales_order_id=n) for n in range(1, 6)]
    key = write_run(INGEST, {"sales_order": orders}, chunk_rows=2)
    handle(key)
    output = manifest(key)["tables"]["fact_sales_order"]
    assert [entry["rows"] for entry in output["files"]] == [2, 2, 1]


# --- bad input: a clear error, nothing committed, and a re-run after the fix ----------------

def _data_key(document_key, table):
    return storage.read_json(INGEST, document_key)["tables"][table]["files"][0]["key"]


def _assert_rejected(key, match, caplog):
    with pytest.raises(transform.TransformInputError, match=match):
        handle(key)
    assert not exists(PROCESSED, key)
    assert "ingest input rejected" in caplog.text


def test_truncated_json_lines_is_rejected_then_transformed_after_repair(caplog):
    key = write_run(INGEST, full_batch())
    data = _data_key(key, "payment")
    good = storage.read_bytes(INGEST, data)
    overwrite(INGEST, data, good[: len(good) // 2])
    _assert_rejected(key, f"{data} is not valid JSON Lines", caplog)
    overwrite(INGEST, data, good)
    assert handle(key)["transformed"] == [key]


def test_file_cut_at_a_line_boundary_is_caught_by_the_row_count(caplog):
    orders = [row("sales_order", sales_order_id=n) for n in (1, 2)]
    key = write_run(INGEST, {"sales_order": orders})
    data = _data_key(key, "sales_order")
    overwrite(INGEST, data, encoded("sales_order", orders[:1]))
    _assert_rejected(key, f"{data} holds 1 row.*manifest says 2", caplog)
    overwrite(INGEST, data, encoded("sales_order", orders))
    assert handle(key)["transformed"] == [key]


def test_missing_column_is_rejected_naming_the_object(caplog):
    key = write_run(INGEST, full_batch())
    data = _data_key(key, "staff")
    good = storage.read_bytes(INGEST, data)
    line = json.loads(good)
    del line["email_address"]
    overwrite(INGEST, data, json.dumps(line).encode() + b"\n")
    _assert_rejected(key, f"{data}: staff row 1 lacks column.*email_address", caplog)
    overwrite(INGEST, data, good)
    assert handle(key)["transformed"] == [key]


def test_malformed_date_is_rejected_naming_object_table_key_and_value(caplog):
    batch = full_batch()
    batch["sales_order"] = [row("sales_order", sales_order_id=77,
                                agreed_payment_date="2024-13-01")]
    key = write_run(INGEST, batch)
    _assert_rejected(key, "sales_order sales_order_id=77: agreed_payment_date '2024-13-01'",
                     caplog)


def test_unknown_table_in_manifest_is_rejected_then_accepted_after_repair(caplog):
    key = write_run(INGEST, full_batch())
    good = storage.read_json(INGEST, key)
    overwrite(INGEST, key, json.dumps({**good, "tables": {**good["tables"], "secrets": {}}}))
    _assert_rejected(key, "unknown table.*secrets", caplog)
    overwrite(INGEST, key, json.dumps(good))
    assert handle(key)["transformed"] == [key]


def test_line_that_is_not_a_json_object_is_rejected(caplog):
    key = write_run(INGEST, full_batch())
    data = _data_key(key, "currency")
    overwrite(INGEST, data, b"[1, 2]\n")
    _assert_rejected(key, f"{data} is not valid JSON Lines.*line 1 is not a JSON object", caplog)


def test_manifest_that_cannot_be_read_is_rejected():
    key = "_manifests/2024/11/15/20241115T142009123Z-00000000.json"
    with pytest.raises(transform.TransformInputError, match=f"{key} cannot be read: NoSuchKey"):
        transform.transform_manifest(SETTINGS, key, {})


def test_null_money_is_refused_before_anything_is_committed(caplog):
    key = write_run(INGEST, {"payment": [row("payment", payment_amount=None)]})
    _assert_rejected(key, f"{key} .*fact_payment.payment_amount would hold 1 null", caplog)


def test_id_beyond_the_warehouse_int_is_rejected(caplog):
    key = write_run(INGEST, {"design": [row("design", design_id=2 ** 31)]})
    _assert_rejected(key, f"{key} .*2147483648 not in range", caplog)


@pytest.mark.parametrize("body", [b"{not json", b'{"format": "other"}'])
def test_unreadable_manifest_is_rejected(body, caplog):
    key = write_run(INGEST, {})
    overwrite(INGEST, key, body)
    _assert_rejected(key, key, caplog)


def test_an_ingest_file_replaced_by_a_later_version_is_refused_until_the_original_is_back(
        caplog):
    # A later version of a listed key that passes every other check (valid lines, the
    # row count, the contract) but is not the object ingest wrote: a changed amount.
    storage.s3_client().put_bucket_versioning(
        Bucket=INGEST, VersioningConfiguration={"Status": "Enabled"})
    key = write_run_v2(full_batch())
    listed = storage.read_json(INGEST, key)["tables"]["payment"]["files"][0]
    good = storage.read_bytes(INGEST, listed["key"])
    changed = good.replace(b"\"payment_amount\":268.00", b"\"payment_amount\":2680.00")
    assert changed != good and changed.count(b"\n") == good.count(b"\n")
    overwrite(INGEST, listed["key"], changed)
    _assert_rejected(key, re.escape(
        f"s3://{INGEST}/{listed['key']} is not the object its manifest lists: SHA-256 expected "
        f"{listed['sha256']}, found {storage.checksum(changed)}"), caplog)
    overwrite(INGEST, listed["key"], good)  # the runbook: the original version restored
    assert handle(key)["transformed"] == [key]


def test_a_replaced_ingest_file_whose_early_line_is_bad_json_is_refused_as_replaced():
    # The bad line comes megabytes before the end: the object is still read to its end, so
    # the operator is told to restore the original version, not to fix or skip bad JSON.
    storage.s3_client().put_bucket_versioning(
        Bucket=INGEST, VersioningConfiguration={"Status": "Enabled"})
    good = b"".join(b'{"a": %d}\n' % n for n in range(400_000))
    storage.put_new_object(INGEST, "t/x.jsonl", good, "application/x-ndjson",
                           sha256=storage.checksum(good))
    overwrite(INGEST, "t/x.jsonl", b'{"a": 1}\n{not json\n' + good[20:])
    with pytest.raises(transform.TransformInputError, match="is not the object its manifest"):
        transform._decode(INGEST, "t/x.jsonl", storage.checksum(good))
    overwrite(INGEST, "t/x.jsonl", good)
    assert len(transform._decode(INGEST, "t/x.jsonl", storage.checksum(good))) == 400_000


def test_a_replaced_reference_snapshot_is_refused_not_carried_into_the_dimensions(monkeypatch):
    storage.s3_client().put_bucket_versioning(
        Bucket=PROCESSED, VersioningConfiguration={"Status": "Enabled"})
    first = write_run_v2(full_batch(), stamp=STAMPS[0])
    assert handle(first)["transformed"] == [first]
    pointer = manifest(first)["reference"]["counterparty"]
    good = storage.read_bytes(PROCESSED, pointer)
    assert manifest(first)["reference_sha256"]["counterparty"] == storage.checksum(good)
    state = pq.read_table(io.BytesIO(good))
    name = state.schema.get_field_index("counterparty_legal_name")
    forged = io.BytesIO()
    pq.write_table(state.set_column(name, state.schema.field(name), pa.array(
        ["Forged Ltd"], state.schema.field(name).type)), forged)
    overwrite(PROCESSED, pointer, forged.getvalue())  # a later version of the snapshot
    monkeypatch.setattr(transform, "_REFERENCE_STATES", {})  # a cold container
    monkeypatch.setattr(transform, "_COMMITTED", {})
    moved = row("address", city="Leeds", last_updated=T0 + timedelta(minutes=3))
    second = write_run_v2({"address": [moved]}, stamp=STAMPS[1])
    with pytest.raises(storage.ObjectChangedError, match=re.escape(
            f"s3://{PROCESSED}/{pointer} is not the object its manifest lists")):
        handle(second)
    assert not exists(PROCESSED, second)
    overwrite(PROCESSED, pointer, good)  # the runbook: the original version restored
    assert handle(second)["transformed"] == [second]
    assert rows_of(manifest(second), "dim_counterparty")[0]["counterparty_legal_name"] == (
        "Fahey and Sons")


def test_an_ingest_1_manifest_without_checksums_still_transforms():
    key = write_run(INGEST, full_batch())
    assert "sha256" not in storage.read_json(INGEST, key)["tables"]["payment"]["files"][0]
    assert handle(key)["transformed"] == [key]


def test_manifest_listing_a_missing_file_is_rejected_until_the_file_exists(caplog):
    key = write_run(INGEST, full_batch())
    data = _data_key(key, "design")
    good = storage.read_bytes(INGEST, data)
    boto3.client("s3").delete_object(Bucket=INGEST, Key=data)
    _assert_rejected(key, f"{data} cannot be read: NoSuchKey", caplog)
    overwrite(INGEST, data, good)
    assert handle(key)["transformed"] == [key]


def test_a_listed_file_denied_as_s3_denies_a_missing_key_without_listbucket_is_input(
        monkeypatch, caplog):
    # S3 answers 403 AccessDenied, not 404, for a missing object to a role without
    # s3:ListBucket on the key; transform may list only the manifests. So the file a
    # manifest names is missing: bad input (TransformStuck), not a retried error.
    key = write_run(INGEST, full_batch())
    data = _data_key(key, "design")
    good = storage.read_bytes(INGEST, data)
    boto3.client("s3").delete_object(Bucket=INGEST, Key=data)
    open_stream = storage.open_stream

    def as_s3_answers_without_listbucket(bucket, object_key, sha256=None):
        try:
            return open_stream(bucket, object_key, sha256)
        except ClientError as error:
            if error.response["Error"]["Code"] == "NoSuchKey":
                raise s3_error("AccessDenied") from None
            raise

    monkeypatch.setattr(storage, "open_stream", as_s3_answers_without_listbucket)
    _assert_rejected(key, f"{data} cannot be read: AccessDenied, which S3 answers for a "
                          "missing object", caplog)
    overwrite(INGEST, data, good)
    assert handle(key)["transformed"] == [key]


def test_bad_manifest_blocks_later_ones_and_leaves_earlier_output_intact(caplog):
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    handle(first)
    committed = manifest(first)
    second = write_run(INGEST, {"payment": [row("payment", payment_date="tomorrow")]},
                       stamp=STAMPS[1])
    third = write_run(INGEST, {}, stamp=STAMPS[2])
    with pytest.raises(transform.TransformInputError, match="payment_date 'tomorrow'"):
        handle(third)
    assert not exists(PROCESSED, second)
    assert not exists(PROCESSED, third)
    assert manifest(first) == committed
    data = _data_key(second, "payment")
    overwrite(INGEST, data, encoded("payment", [row("payment")]))
    assert handle(third)["transformed"] == [second, third]


# --- infrastructure failures: logged once with the manifest, raised as they are ------------

def s3_error(code):
    return ClientError({"Error": {"Code": code, "Message": f"S3 says {code}"}}, "GetObject")


def failure_logs(caplog):
    return [record for record in caplog.records if record.levelname == "ERROR"]


@pytest.mark.parametrize("code", ["SlowDown", "InternalError"])
def test_an_unreadable_ingest_file_is_an_infrastructure_error_not_bad_input(
        code, monkeypatch, caplog):
    key = write_run(INGEST, full_batch())
    data = _data_key(key, "payment")
    open_stream = storage.open_stream

    def refused(bucket, object_key, sha256=None):
        if object_key == data:
            raise s3_error(code)
        return open_stream(bucket, object_key, sha256)

    monkeypatch.setattr(storage, "open_stream", refused)
    with pytest.raises(ClientError, match=code):
        handle(key)
    [failure] = failure_logs(caplog)
    assert failure.message == "transform failed; nothing committed for this manifest"
    assert failure.manifest == key and failure.exc_info
    assert not exists(PROCESSED, key)


@pytest.mark.parametrize("code", ["AccessDenied", "SlowDown", "InternalError"])
def test_an_unreadable_ingest_manifest_is_an_infrastructure_error_not_bad_input(
        code, monkeypatch, caplog):
    key = write_run(INGEST, full_batch())
    read_json = storage.read_json

    def refused(bucket, object_key):
        if (bucket, object_key) == (INGEST, key):
            raise s3_error(code)
        return read_json(bucket, object_key)

    monkeypatch.setattr(storage, "read_json", refused)
    with pytest.raises(ClientError, match=code):
        handle(key)
    [failure] = failure_logs(caplog)
    assert failure.message.startswith("transform failed") and failure.manifest == key


def test_a_failed_parquet_write_is_logged_with_the_manifest(monkeypatch, caplog):
    key = write_run(INGEST, full_batch())

    def put_fails(*args, **kwargs):
        raise ClientError({"Error": {"Code": "InternalError", "Message": "S3 is down"}},
                          "PutObject")

    monkeypatch.setattr(storage, "put_new_object", put_fails)
    with pytest.raises(ClientError, match="S3 is down"):
        handle(key)
    [failure] = failure_logs(caplog)
    assert failure.manifest == key and "S3 is down" in caplog.text


def test_a_failure_reading_the_previous_processed_manifest_is_logged(monkeypatch, caplog):
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    handle(first)
    second = write_run(INGEST, {}, stamp=STAMPS[1])
    read_json = storage.read_json

    def refused(bucket, object_key):
        if bucket == PROCESSED:
            raise s3_error("SlowDown")
        return read_json(bucket, object_key)

    monkeypatch.setattr(transform, "_COMMITTED", {})  # a cold container reads it back
    monkeypatch.setattr(storage, "read_json", refused)
    with pytest.raises(ClientError, match="SlowDown"):
        handle(second)
    [failure] = failure_logs(caplog)
    assert failure.manifest == second and failure.message.startswith("transform failed")


def test_a_warm_transform_starts_from_the_manifest_it_committed_without_reading_it_back(
        monkeypatch):
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    handle(first)
    second = write_run(INGEST, {"sales_order": [row("sales_order", sales_order_id=2)]},
                       stamp=STAMPS[1])
    read_back = []
    read_json = storage.read_json

    def recorded(bucket, object_key):
        if bucket == PROCESSED:
            read_back.append(object_key)
        return read_json(bucket, object_key)

    with monkeypatch.context() as patch:
        patch.setattr(storage, "read_json", recorded)
        patch.setattr(storage, "newest_key", lambda *args, **kwargs: pytest.fail("descended"))
        assert handle(second)["transformed"] == [second]
    assert read_back == []
    assert manifest(second)["reference"] == manifest(first)["reference"]


def test_a_warm_transform_does_not_trust_what_it_committed_once_another_committed_since(
        monkeypatch):
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    handle(first)
    remembered = dict(transform._COMMITTED)
    moved = row("address", city="Leeds", last_updated=T0 + timedelta(minutes=3))
    second = write_run(INGEST, {"address": [moved]}, stamp=STAMPS[1])
    handle(second)
    assert manifest(second)["reference"]["address"] != manifest(first)["reference"]["address"]
    # As the container that committed `first` sees it, after another one committed `second`:
    monkeypatch.setattr(transform, "_COMMITTED", remembered)
    third = write_run(INGEST, {"sales_order": [row("sales_order", sales_order_id=3)]},
                      stamp=STAMPS[2])
    before = set(processed_keys())
    assert handle(third)["transformed"] == [third]
    assert manifest(third)["reference"] == manifest(second)["reference"]
    written = set(processed_keys()) - before
    assert written and all(STAMPS[2] in key for key in written)  # `second` not attempted again


def test_a_missing_setting_is_logged_with_the_manifest(monkeypatch, caplog):
    key = write_run(INGEST, {})
    monkeypatch.delenv("PROCESSED_BUCKET")
    with pytest.raises(config.ConfigurationError, match="PROCESSED_BUCKET"):
        handle(key)
    [failure] = failure_logs(caplog)
    assert failure.manifest == key and "PROCESSED_BUCKET" in caplog.text


def test_rejected_input_is_logged_once_with_the_manifest_and_its_traceback(caplog):
    key = write_run(INGEST, {"design": [row("design", design_id=2 ** 31)]})
    with pytest.raises(transform.TransformInputError):
        handle(key)
    [failure] = failure_logs(caplog)
    assert failure.message == "ingest input rejected; nothing committed for this manifest"
    assert failure.manifest == key and failure.exc_info


# --- totes.ingest/2: deletions, the capture point, capture order -----------------------------

def test_an_ingest_2_run_transforms_with_its_capture_point_and_fact_deletions():
    key = write_run_v2(full_batch(), deleted={
        "sales_order": [{"sales_order_id": 1, "deleted_at": "2024-11-16T08:18:46.509"}],
        "payment": [{"payment_id": 1, "deleted_at": "2024-11-17T23:59:59.999"},
                    {"payment_id": 2, "deleted_at": "2024-11-17T00:00:00.000"}]})
    assert handle(key) == {"transformed": [key], "ignored": []}
    document = manifest(key)
    assert document["capture"] == {"snapshot": "1000:1004:1001",
                                   "database_time": "2024-11-15T14:20:09.500"}
    assert deletion_rows(document, "fact_sales_order") == [
        {"sales_order_id": 1, "last_updated_date": date(2024, 11, 16),
         "last_updated_time": time(8, 18, 46, 509000)}]
    assert [(r["payment_id"], r["last_updated_time"]) for r in
            deletion_rows(document, "fact_payment")] == [(1, time(23, 59, 59, 999000)),
                                                         (2, time(0, 0))]
    assert document["deletions"]["fact_purchase_orders"] == {"rows": 0, "files": []}
    assert document["deletions"]["fact_payment"]["files"][0]["key"].startswith("fact_payment/")
    dates = {r["date_id"] for r in rows_of(document, "dim_date")}
    assert {date(2024, 11, 16), date(2024, 11, 17)} <= dates
    assert all(r["is_deleted"] is False for r in rows_of(document, "fact_payment"))


def test_deletions_of_dimension_sources_are_counted_and_not_carried(caplog):
    key = write_run_v2({}, deleted={
        "address": [{"address_id": 1, "deleted_at": "2024-11-16T08:18:46.509"}],
        "design": [{"design_id": 4, "deleted_at": "2024-11-16T08:18:46.509"},
                   {"design_id": 5, "deleted_at": "2024-11-16T08:18:46.509"}]})
    handle(key)
    document = manifest(key)
    assert all(not output["files"] for output in document["tables"].values())
    assert all(not output["files"] for output in document["deletions"].values())
    [record] = [r for r in caplog.records if hasattr(r, "deleted_rows")]
    assert record.deleted_rows == {"address": 1, "design": 2}


@pytest.mark.parametrize("record, match", [
    ({"sales_order_id": 1}, "deletion record 1 lacks deleted_at"),
    ({"sales_order_id": "1", "deleted_at": "2024-11-16T08:18:46.509"},
     "sales_order_id '1' is not int"),
    ({"sales_order_id": 3, "deleted_at": "2024-11-16 08:18"}, "sales_order_id=3: deleted_at"),
])
def test_a_bad_deletion_record_is_rejected_naming_the_object(record, match, caplog):
    key = write_run_v2({}, deleted={"sales_order": [record]})
    _assert_rejected(key, f"-deleted-00000.jsonl: .*{match}", caplog)


def test_a_capture_point_with_an_unreadable_clock_is_rejected(caplog):
    key = write_run_v2({}, database_time="teatime")
    _assert_rejected(key, f"{key}: database_time 'teatime'", caplog)


def test_ingest_1_and_ingest_2_manifests_transform_in_one_sequence():
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    second = write_run_v2({"payment": [row("payment", paid=True,
                                           last_updated=T0 + timedelta(minutes=5))]},
                          stamp=STAMPS[1])
    assert handle(second)["transformed"] == [first, second]
    assert manifest(first)["capture"]["snapshot"] is None
    assert manifest(second)["capture"]["snapshot"] == "1000:1004:1001"
    assert rows_of(manifest(second), "fact_payment")[0]["paid"] is True


def test_a_row_stamped_in_the_future_then_corrected_shows_the_correction():
    write_run(INGEST, full_batch(), stamp=STAMPS[0])
    future = T0.replace(year=2027)
    second = write_run_v2({"address": [row("address", city="Typo", last_updated=future)]},
                          stamp=STAMPS[1])
    third = write_run_v2({"address": [row("address", city="Leeds",
                                          last_updated=T0 + timedelta(hours=1))]},
                         stamp=STAMPS[2])
    handle(third)
    document = manifest(third)
    assert rows_of(document, "dim_location")[0]["city"] == "Leeds"
    assert rows_of(document, "dim_counterparty")[0]["counterparty_legal_city"] == "Leeds"
    state = transform.read_parquet(PROCESSED, document["reference"]["address"])
    assert state["city"].tolist() == ["Leeds"]
    assert manifest(second)["reference"]["address"] != document["reference"]["address"]


def test_a_run_continues_from_a_processed_1_manifest_of_the_previous_transform():
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    handle(first)
    previous = manifest(first)
    old = {key: value for key, value in previous.items() if key not in ("deletions", "capture")}
    overwrite(PROCESSED, first, json.dumps({**old, "format": "totes.processed/1"}))
    moved = row("address", city="Leeds", last_updated=T0 + timedelta(minutes=3))
    second = write_run_v2({"address": [moved]}, stamp=STAMPS[1])
    assert handle(second)["transformed"] == [second]
    assert rows_of(manifest(second), "dim_counterparty")[0]["counterparty_legal_city"] == "Leeds"
    assert manifest(second)["reference"]["staff"] == previous["reference"]["staff"]


# --- the time budget -------------------------------------------------------------------------

def test_a_manifest_is_not_started_without_time_for_it_and_the_next_event_continues(caplog):
    first = write_run(INGEST, full_batch(), stamp=STAMPS[0])
    second = write_run(INGEST, {}, stamp=STAMPS[1])
    almost_out = stage.Deadline(lambda: transform.RESERVE_SECONDS - 1)

    report = transform.run_transform(SETTINGS, [second], almost_out)

    assert report.transformed == [] and report.stopped_early
    assert not exists(PROCESSED, first)
    assert any(record.message == "stopping before the timeout; the next event continues"
               for record in caplog.records)
    assert handle(second)["transformed"] == [first, second]


def test_the_largest_manifest_so_far_sets_the_time_the_next_one_needs():
    keys_ = [write_run(INGEST, full_batch(), stamp=STAMPS[0]),
             write_run(INGEST, {}, stamp=STAMPS[1]), write_run(INGEST, {}, stamp=STAMPS[2])]
    plenty = 10_000.0
    report = transform.TransformReport(durations_ms=[plenty * 1000])
    tight = stage.Deadline(lambda: plenty - 1)  # above the reserve, below the largest so far

    assert not transform.time_for_another(tight, report)
    assert transform.time_for_another(stage.Deadline(lambda: plenty), report)
    done = transform.run_transform(SETTINGS, keys_[-1:], stage.Deadline(lambda: plenty))
    assert done.transformed == keys_


# --- the registry ----------------------------------------------------------------------------

def test_a_new_dimension_is_one_registry_entry_and_one_builder(monkeypatch):
    from types import MappingProxyType

    from totes import star, warehouse_schema
    from totes.warehouse_schema import Column, Table

    codes = Table("dim_currency_code", "dimension", "currency_id",
                  (Column("currency_id", "int"), Column("currency_code", "text")))
    tables = MappingProxyType({**warehouse_schema.TABLES, codes.name: codes})
    for module in (warehouse_schema, star, transform):
        monkeypatch.setattr(module, "TABLES", tables)

    def dim_currency_code(currency):
        return star.conform(codes.name, {"currency_id": currency["currency_id"],
                                         "currency_code": currency["currency_code"]},
                            currency.index)

    monkeypatch.setattr(star, "BUILDERS", MappingProxyType(
        {**star.BUILDERS, codes.name: star.Dimension("currency", dim_currency_code)}))
    key = write_run(INGEST, full_batch())

    handle(key)

    document = manifest(key)
    [entry] = document["tables"][codes.name]["files"]
    written = pq.read_table(io.BytesIO(storage.read_bytes(PROCESSED, entry["key"])))
    assert written.schema.equals(arrow_schema(codes))
    currencies = rows_of(document, "dim_currency")
    assert written.to_pylist() == [{"currency_id": row["currency_id"],
                                    "currency_code": row["currency_code"]} for row in currencies]
