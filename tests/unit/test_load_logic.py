"""Load logic that needs no database: ordering, freshness, Parquet checks, the report.

The processed manifest itself is tested with its record (test_processed_manifest.py).
"""
import io
from contextlib import ExitStack
from datetime import date, datetime, time, timezone
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from totes import errors, load, storage, timestamps, warehouse
from totes.warehouse_schema import TABLES, Column, Table, arrow_schema

BUCKET = "load-unit"
CURRENCY = TABLES["dim_currency"]
KEY = "_manifests/2024/11/15/20241115T142009123Z-3f9a1c2e.json"


@pytest.fixture
def s3(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")
    with mock_aws():
        for bucket in (BUCKET, "ingest-unit"):
            storage.s3_client().create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        yield storage.s3_client()


def manifest(**changes) -> dict:
    return {"format": "totes.processed/1", "run_id": "20241115T142009123Z-3f9a1c2e",
            "ingest_started_at": "2024-11-15T14:20:09.123Z",
            "tables": {"dim_currency": {"rows": 2, "files": [{"key": "a.parquet", "rows": 2}]},
                       "fact_payment": {"rows": 0, "files": []}},
            **changes}


def put_parquet(table: pa.Table, key: str = "dim_currency/x.parquet", **options) -> str:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    storage.put_new_object(BUCKET, key, buffer.getvalue(), "application/octet-stream")
    return key


def currencies(rows: int = 3) -> pa.Table:
    return pa.Table.from_pylist(
        [{"currency_id": n, "currency_code": f"C{n}", "currency_name": f"Name {n}"}
         for n in range(rows)], schema=arrow_schema(CURRENCY))


def test_timestamps_without_a_zone_are_utc():
    assert timestamps.parse_instant("2024-11-15T14:20:09") == datetime(
        2024, 11, 15, 14, 20, 9, tzinfo=timezone.utc)
    assert timestamps.parse_instant("2024-11-15T15:20:09+01:00").hour == 14


def test_batches_come_in_contract_order_bounded_in_size(s3):
    reordered = currencies(5).select(["currency_name", "currency_id", "currency_code"])
    key = put_parquet(reordered, row_group_size=2)
    batches = list(load.record_batches(BUCKET, key, CURRENCY, 5, batch_rows=2))
    assert [batch.num_rows for batch in batches] == [2, 2, 1]
    assert all(batch.schema.names == list(CURRENCY.column_names) for batch in batches)


def test_large_strings_are_accepted_as_text(s3):
    table = currencies().cast(pa.schema([
        pa.field("currency_id", pa.int32()), pa.field("currency_code", pa.large_string()),
        pa.field("currency_name", pa.large_string())]))
    batches = load.record_batches(BUCKET, put_parquet(table), CURRENCY, 3)
    assert sum(batch.num_rows for batch in batches) == 3


@pytest.mark.parametrize("table, rows, message", [
    (currencies().drop_columns(["currency_name"]), 3, "column currency_name is missing"),
    (currencies().set_column(0, "currency_id", pa.array([1.0, 2.0, 3.0])), 3,
     "column currency_id is double, the contract says int32"),
    (currencies(), 4, "has 3 rows, the manifest says 4"),
])
def test_a_file_off_contract_is_refused_naming_the_object(s3, table, rows, message):
    key = put_parquet(table)
    with pytest.raises(load.ParquetFileError, match=message) as caught:
        list(load.record_batches(BUCKET, key, CURRENCY, rows))
    assert caught.value.object_key == key and key in str(caught.value)


def _payment_rows(count: int) -> list[dict]:
    return [{"payment_id": n, "created_date": date(2024, 11, 15), "created_time": time(9),
             "last_updated_date": date(2024, 11, 15), "last_updated_time": time(9),
             "transaction_id": n, "counterparty_id": 1, "payment_amount": Decimal("1.00"),
             "currency_id": 1, "payment_type_id": 1, "paid": False,
             "payment_date": date(2024, 11, 20), "is_deleted": False} for n in range(count)]


def test_a_fact_file_of_a_processed_1_manifest_loads_as_ordinary_versions(s3):
    fact = TABLES["fact_payment"]
    before = arrow_schema(fact).remove(arrow_schema(fact).get_field_index("is_deleted"))
    rows = [{k: v for k, v in row.items() if k != "is_deleted"} for row in _payment_rows(5)]
    key = put_parquet(pa.Table.from_pylist(rows, schema=before), "fact_payment/old.parquet",
                      row_group_size=2)
    with pytest.raises(load.ParquetFileError, match="column is_deleted is missing"):
        list(load.record_batches(BUCKET, key, fact, 5))  # a current manifest's file must have it
    batches = list(load.record_batches(BUCKET, key, fact, 5, batch_rows=2, fill_defaults=True))
    assert [batch.num_rows for batch in batches] == [2, 2, 1]
    assert all(batch.schema.names == list(arrow_schema(fact).names) for batch in batches)
    assert all(batch.schema.field("is_deleted").type == pa.bool_() for batch in batches)
    assert [v for batch in batches for v in batch.column("is_deleted").to_pylist()] == \
        [False] * 5


def test_a_column_without_a_default_is_never_made_up(s3):
    fact = TABLES["fact_payment"]
    table = pa.Table.from_pylist(_payment_rows(1), schema=arrow_schema(fact)).drop_columns(
        ["paid"])
    with pytest.raises(load.ParquetFileError, match="column paid is missing"):
        list(load.record_batches(BUCKET, put_parquet(table), fact, 1, fill_defaults=True))


def test_money_as_float_is_refused(s3):
    schema = arrow_schema(TABLES["fact_payment"])
    money = schema.get_field_index("payment_amount")
    floats = schema.set(money, pa.field("payment_amount", pa.float64()))
    table = pa.Table.from_pylist([], schema=floats)
    with pytest.raises(load.ParquetFileError, match="payment_amount is double"):
        list(load.record_batches(BUCKET, put_parquet(table), TABLES["fact_payment"], 0))


def test_unreadable_and_missing_objects_are_refused_naming_them(s3):
    storage.put_new_object(BUCKET, "junk.parquet", b"PAR1 nope", "application/octet-stream")
    with pytest.raises(load.ParquetFileError, match="junk.parquet: cannot read Parquet"):
        list(load.record_batches(BUCKET, "junk.parquet", CURRENCY, 1))
    with pytest.raises(load.ParquetFileError, match="gone.parquet: cannot read Parquet"):
        list(load.record_batches(BUCKET, "gone.parquet", CURRENCY, 1))


@pytest.mark.parametrize("through_prefetch", [False, True])
def test_a_failed_download_is_not_bad_input_so_no_one_is_told_to_skip(
        s3, monkeypatch, through_prefetch):
    key = put_parquet(currencies())
    throttled = ClientError({"Error": {"Code": "SlowDown", "Message": "Please reduce"}},
                            "GetObject")

    def failing(bucket: str, name: str, sha256: str | None = None):
        raise throttled

    monkeypatch.setattr(storage, "spooled", failing)
    with ExitStack() as stack:
        prefetch = (stack.enter_context(storage.Prefetch(BUCKET, [key], ahead=1))
                    if through_prefetch else None)
        with pytest.raises(ClientError) as raised:
            list(load.record_batches(BUCKET, key, CURRENCY, 3, prefetch=prefetch))
    assert raised.value is throttled
    assert errors.kind_of(raised.value) != errors.INPUT


def ingest_and_processed(s3, *stamps: str, transformed: int) -> list[str]:
    keys = [f"_manifests/2024/11/15/20241115T{stamp}Z-0000000{n}.json"
            for n, stamp in enumerate(stamps)]
    for n, key in enumerate(keys):
        started = f"2024-11-15T{stamps[n][:2]}:{stamps[n][2:4]}:00Z"
        storage.put_new_json("ingest-unit", key, {
            "format": "totes.ingest/2", "run_id": key[-33:-5], "started_at": started,
            "tables": {}})
        if n < transformed or n == transformed + 1:
            storage.put_new_json(BUCKET, key, manifest())
    return keys


def test_pending_manifests_stop_at_the_first_one_not_transformed(s3):
    keys = ingest_and_processed(s3, "100000000", "101000000", "102000000", "103000000",
                                transformed=2)
    assert list(load.pending_manifests(BUCKET, "ingest-unit", None)) == keys[:2]
    assert list(load.pending_manifests(BUCKET, "ingest-unit", keys[0])) == keys[1:2]
    assert list(load.pending_manifests(BUCKET, "ingest-unit", keys[1])) == []


def test_pending_manifests_record_where_their_listing_stopped(s3):
    keys = ingest_and_processed(s3, "100000000", "101000000", "102000000", "103000000",
                                transformed=2)
    at_gap = load.ListingEnd()
    assert list(load.pending_manifests(BUCKET, "ingest-unit", None, end=at_gap)) == keys[:2]
    assert at_gap == load.ListingEnd(ended=True, oldest_waiting=keys[2])
    through = load.ListingEnd()
    assert list(load.pending_manifests(BUCKET, "ingest-unit", keys[3], end=through)) == []
    assert through == load.ListingEnd(ended=True, oldest_waiting=None)
    cut_short = load.ListingEnd()
    assert next(load.pending_manifests(BUCKET, "ingest-unit", None, end=cut_short)) == keys[0]
    assert not cut_short.ended  # a run that stopped before the listing did lists anew


def test_freshness_after_an_ended_listing_reads_what_it_left_waiting_without_listing(s3):
    keys = ingest_and_processed(s3, "100000000", "101000000", transformed=2)
    now = datetime(2024, 11, 15, 10, 30, tzinfo=timezone.utc)
    listings = []
    event = "before-call.s3.ListObjectsV2"
    s3.meta.events.register(event, lambda **call: listings.append(call), unique_id="count-listings")
    try:
        waiting = load.ListingEnd(ended=True, oldest_waiting=keys[1])
        assert load.freshness_seconds("ingest-unit", keys[0], now, waiting) == 20 * 60
        caught_up = load.ListingEnd(ended=True)
        assert load.freshness_seconds("ingest-unit", keys[1], now, caught_up) == 0
        assert listings == []
        assert load.freshness_seconds("ingest-unit", keys[0], now, load.ListingEnd()) == 20 * 60
        assert len(listings) == 1
    finally:
        s3.meta.events.unregister(event, unique_id="count-listings")


def test_freshness_is_the_age_of_the_oldest_run_not_loaded(s3):
    keys = ingest_and_processed(s3, "100000000", "101000000", transformed=2)
    now = datetime(2024, 11, 15, 10, 30, tzinfo=timezone.utc)
    assert load.freshness_seconds("ingest-unit", None, now) == 30 * 60
    assert load.freshness_seconds("ingest-unit", keys[0], now) == 20 * 60
    assert load.freshness_seconds("ingest-unit", keys[1], now) == 0
    early = datetime(2024, 11, 15, 9, 0, tzinfo=timezone.utc)
    assert load.freshness_seconds("ingest-unit", None, early) == 0


def test_report_lists_every_table_so_zeros_show():
    report = load.LoadReport(last_loaded_manifest=KEY, manifests_loaded=[KEY])
    report.rows_loaded.update({"fact_payment": 3})
    report.versions_corrected.update({"fact_payment": 1})
    summary = report.as_dict()
    assert summary["manifests_loaded"] == 1 and summary["rows_loaded"]["fact_payment"] == 3
    assert set(summary["rows_loaded"]) == set(TABLES) and summary["rows_loaded"]["dim_date"] == 0
    facts = {"fact_sales_order": 0, "fact_purchase_orders": 0, "fact_payment": 0}
    assert summary["versions_corrected"] == {**facts, "fact_payment": 1}
    assert summary["deletions_loaded"] == facts


def test_csv_keeps_exact_decimals_times_and_null_versus_empty():
    batch = pa.record_batch(
        [pa.array([Decimal("99999999.99"), None], pa.decimal128(10, 2)),
         pa.array(["", None]), pa.array([date(2024, 1, 2), None])], names=["m", "s", "d"])
    assert b"".join(warehouse.csv_chunks([batch])) == b'99999999.99,"",2024-01-02\n,,\n'


def test_a_dimension_without_an_inferred_member_value_is_a_schema_error():
    odd = Table("dim_odd", "dimension", "odd_id", (Column("odd_id", "int"), Column("n", "int")))
    with pytest.raises(ValueError, match="dim_odd.n needs an inferred-member value"):
        warehouse.inferred_member_values(odd)


def test_a_file_corrupt_after_its_footer_is_refused_naming_it(s3):
    buffer = io.BytesIO()
    pq.write_table(currencies(2000), buffer)
    body = bytearray(buffer.getvalue())
    body[4:60] = b"\xff" * 56
    storage.put_new_object(BUCKET, "torn.parquet", bytes(body), "application/octet-stream")
    with pytest.raises(load.ParquetFileError, match="torn.parquet: cannot decode Parquet"):
        list(load.record_batches(BUCKET, "torn.parquet", CURRENCY, 2000))
