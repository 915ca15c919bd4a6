"""Test inputs for the load, built without the transform's code.

Rows are plain dicts typed as the warehouse contract says; Parquet is written with
``warehouse_schema.arrow_schema`` (the one schema definition), and manifests in the
documented formats (docs/architecture.md) through ``totes.storage``.
"""
import io
import secrets
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq

from totes import keys, storage
from totes.supersede import revision_prefix
from totes.warehouse_schema import DELETIONS, TABLES, Table, arrow_schema

DAY = date(2024, 11, 15)
T0 = datetime(2024, 11, 15, 14, 0, tzinfo=timezone.utc)


def arrow_table(table: str | Table, rows: list[dict]) -> pa.Table:
    """The rows as an Arrow table of the contract schema."""
    contract = table if isinstance(table, Table) else TABLES[table]
    return pa.Table.from_pylist(rows, schema=arrow_schema(contract))


def parquet_bytes(table: str | Table, rows: list[dict], row_group_size: int | None = None,
                  without: tuple[str, ...] = ()) -> bytes:
    """The rows as a Parquet file, as the transform would write them.

    ``without`` drops columns, as a transform from before they existed wrote them.
    """
    buffer = io.BytesIO()
    pq.write_table(arrow_table(table, rows).drop_columns(list(without)), buffer,
                   row_group_size=row_group_size)
    return buffer.getvalue()


def gone(fact: str, business_id: int, detected: datetime) -> dict:
    """A deletion record of ``fact``: the id and when its deletion was detected (UTC)."""
    return {DELETIONS[fact].column_names[0]: business_id,
            "last_updated_date": detected.date(), "last_updated_time": detected.time()}


def dimensions(**names: str) -> dict[str, list[dict]]:
    """One member of every dimension but dim_date, id 1; ``names`` override staff's first name."""
    return {
        "dim_staff": [{"staff_id": 1, "first_name": names.get("first_name", "Ada"),
                       "last_name": "Lovelace", "department_name": "Sales", "location": "Leeds",
                       "email_address": "ada.lovelace@terrifictotes.com"}],
        "dim_location": [{"location_id": 1, "address_line_1": "1 Canal Street",
                          "address_line_2": None, "district": "", "city": "Leeds",
                          "postal_code": "LS1 4AP", "country": "United Kingdom",
                          "phone": "0113 496 0000"}],
        "dim_currency": [{"currency_id": 1, "currency_code": "GBP",
                          "currency_name": "Pound Sterling"}],
        "dim_design": [{"design_id": 1, "design_name": "Granite", "file_location": "/usr/share",
                        "file_name": "granite-20241115.json"}],
        "dim_counterparty": [{
            "counterparty_id": 1, "counterparty_legal_name": "Fahey and Sons",
            "counterparty_legal_address_line_1": "1 Canal Street",
            "counterparty_legal_address_line_2": None, "counterparty_legal_district": "",
            "counterparty_legal_city": "Leeds", "counterparty_legal_postal_code": "LS1 4AP",
            "counterparty_legal_country": "United Kingdom",
            "counterparty_legal_phone_number": "0113 496 0000"}],
        "dim_payment_type": [{"payment_type_id": 1, "payment_type_name": "SALES_RECEIPT"}],
        "dim_transaction": [{"transaction_id": 1, "transaction_type": "SALE",
                             "sales_order_id": 1, "purchase_order_id": None}],
    }


def _version(updated: time, created: time = time(9, 0)) -> dict:
    return {"created_date": DAY, "created_time": created,
            "last_updated_date": DAY, "last_updated_time": updated, "is_deleted": False}


def sale(order_id: int, updated: time = time(10, 0, 0, 123000), **values) -> dict:
    """One version of a sales order referencing member 1 of every dimension."""
    return {"sales_order_id": order_id, **_version(updated), "sales_staff_id": 1,
            "counterparty_id": 1, "units_sold": 10, "unit_price": Decimal("2.68"),
            "currency_id": 1, "design_id": 1, "agreed_payment_date": date(2024, 11, 20),
            "agreed_delivery_date": date(2024, 11, 18), "agreed_delivery_location_id": 1,
            **values}


def purchase(order_id: int, updated: time = time(10, 0, 0, 123000), **values) -> dict:
    """One version of a purchase order referencing member 1 of every dimension."""
    return {"purchase_order_id": order_id, **_version(updated), "staff_id": 1,
            "counterparty_id": 1, "item_code": "ZDOI5EA", "item_quantity": 3,
            "item_unit_price": Decimal("99999999.99"), "currency_id": 1,
            "agreed_delivery_date": date(2024, 11, 18), "agreed_payment_date": date(2024, 11, 20),
            "agreed_delivery_location_id": 1, **values}


def payment(payment_id: int, updated: time = time(10, 0, 0, 123000), **values) -> dict:
    """One version of a payment referencing member 1 of every dimension."""
    return {"payment_id": payment_id, **_version(updated), "transaction_id": 1,
            "counterparty_id": 1, "payment_amount": Decimal("26.80"), "currency_id": 1,
            "payment_type_id": 1, "paid": False, "payment_date": date(2024, 11, 20), **values}


class Buckets:
    """Writes what ingest and transform would: data, processed and ingest manifests."""

    def __init__(self, ingest_bucket: str, processed_bucket: str):
        """Remember the buckets; runs start at T0 and move on a minute each."""
        self.ingest = ingest_bucket
        self.processed = processed_bucket
        self.runs = 0

    def _next_run(self, started_at: datetime | None) -> keys.RunId:
        self.runs += 1
        moment = started_at or T0 + timedelta(minutes=self.runs)
        return keys.RunId(keys.stamp(moment), secrets.token_hex(4))

    def ingest_run(self, started_at: datetime | None = None) -> str:
        """Write an ingest manifest only (a run the transform has not processed yet)."""
        run = self._next_run(started_at)
        key = keys.manifest_key(run)
        storage.put_new_json(self.ingest, key, {
            "format": "totes.ingest/1", "run_id": str(run),
            "started_at": run.started_at.isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "finished_at": run.started_at.isoformat(), "previous_manifest": None,
            "overlap_minutes": 15, "tables": {}})
        return key

    def _put(self, folder: str, run: keys.RunId, body: bytes, rows: int,
             extension: str = "parquet", checked: bool = True) -> dict:
        key = keys.attempt_data_key(folder, run, secrets.token_hex(4), 0, extension)
        sha256 = storage.put_new_object_on(None, self.processed, key, body,
                                           "application/vnd.apache.parquet")
        listed = {"key": key, "rows": rows, "bytes": len(body)}
        return {"rows": rows, "files": [listed | ({"sha256": sha256} if checked else {})]}

    def transform(self, ingest_key: str, tables: dict[str, list[dict] | bytes],
                  deletions: dict[str, list[dict]] | None = None,
                  capture: dict | None = None, version: int = 2, revision: int = 0) -> str:
        """Write the processed twin of ``ingest_key``: one object per table, then the manifest.

        A table given as bytes is written as that (possibly broken) object, listed without
        its SHA-256 (as before manifests recorded one) so a test may repair it in place. Version 2
        (``totes.processed/2``) lists ``deletions`` per fact and the ``capture`` point;
        version 1 is the manifest and Parquet of the transform before them (facts
        without ``is_deleted``). A ``revision`` above 0 writes it where that revision of
        transform does (after an operator's "transform again").
        """
        run = keys.parse_manifest_key(ingest_key)
        document = storage.read_json(self.ingest, ingest_key)
        listed = {}
        for name, rows in tables.items():
            if isinstance(rows, bytes):
                listed[name] = self._put(name, run, rows, 1, checked=False)
                continue
            old = ("is_deleted",) if version == 1 and TABLES[name].kind == "fact" else ()
            listed[name] = self._put(name, run, parquet_bytes(name, rows, without=old), len(rows))
        manifest = {
            "format": f"totes.processed/{version}", "run_id": str(run),
            "ingest_manifest": ingest_key, "ingest_started_at": document["started_at"],
            "transformed_at": document["started_at"],
            "tables": {name: listed.get(name, {"rows": 0, "files": []}) for name in TABLES},
            "reference": {}}
        if version == 2:
            manifest["deletions"] = {
                fact: self._put(fact, run, parquet_bytes(DELETIONS[fact], rows), len(rows),
                                "deleted.parquet")
                if rows else {"rows": 0, "files": []}
                for fact, rows in {name: (deletions or {}).get(name) for name in DELETIONS}.items()}
            manifest["capture"] = capture or {"snapshot": None, "database_time": None}
        storage.put_new_json(self.processed, revision_prefix(revision) + ingest_key, manifest)
        return ingest_key

    def publish(self, tables: dict[str, list[dict] | bytes],
                started_at: datetime | None = None, **options) -> str:
        """One ingest run and its transform: a manifest ready to load."""
        return self.transform(self.ingest_run(started_at), tables, **options)

    def data_key(self, manifest_key: str, table: str) -> str:
        """The key of ``table``'s object listed in a processed manifest."""
        return storage.read_json(self.processed, manifest_key)["tables"][table]["files"][0]["key"]


def table_rows(conn, table: str) -> list[tuple]:
    """Every row of a warehouse table or view, all columns, in a stable order."""
    from totes.db import quote_ident

    return [tuple(row) for row in conn.run(f"SELECT * FROM {quote_ident(table)} ORDER BY 1, 2")]


def snapshot(conn) -> dict[str, list[tuple]]:
    """The whole warehouse (tables and views), to compare two loads."""
    names = [*TABLES, "fact_sales_order_current", "fact_purchase_orders_current",
             "fact_payment_current"]
    return {name: table_rows(conn, name) for name in names}


def created_without(aws: dict[str, str], spec, column: str):
    """``spec``'s lake table as a release before the contract had ``column`` created it."""
    from pyiceberg.schema import Schema

    from totes import lake, lake_schema

    catalog = lake.glue_catalog(aws["LAKE_BUCKET"])
    current = lake_schema.iceberg_schema(spec)
    older = Schema(*[field for field in current.fields if field.name != column],
                   identifier_field_ids=current.identifier_field_ids)
    return catalog.create_table((aws["LAKE_DATABASE"], spec.name), schema=older,
                                properties=lake.TABLE_PROPERTIES)
