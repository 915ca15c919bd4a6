"""Build ingest runs exactly as docs/architecture.md describes them, without the ingest code.

Rows carry every column of the totesys table (as the real extract does), encoded
with ``totes.jsonl`` and laid out with ``totes.keys``; the manifest is the
``totes.ingest/1`` document. Tests override only the values they care about.
"""
import contextlib
from datetime import datetime
from decimal import Decimal
from typing import Any, Iterator, Mapping, Sequence

from totes import jsonl, keys, storage
from totes_local import ingest_lines

T0 = datetime(2024, 11, 15, 14, 20, 9, 123000)

_DEFAULTS: dict[str, dict[str, Any]] = {
    "address": {
        "address_id": 1, "address_line_1": "6826 Herzog Via", "address_line_2": None,
        "district": "Avon", "city": "New Patienceburgh", "postal_code": "28441",
        "country": "Turkey", "phone": "1803 637401", "created_at": T0, "last_updated": T0,
    },
    "counterparty": {
        "counterparty_id": 1, "counterparty_legal_name": "Fahey and Sons",
        "legal_address_id": 1, "commercial_contact": "Micheal Toy",
        "delivery_contact": "Mrs. Lucy Runolfsdottir", "created_at": T0, "last_updated": T0,
    },
    "currency": {"currency_id": 1, "currency_code": "GBP", "created_at": T0, "last_updated": T0},
    "department": {
        "department_id": 1, "department_name": "Sales", "location": "Manchester",
        "manager": "Richard Roma", "created_at": T0, "last_updated": T0,
    },
    "design": {
        "design_id": 1, "created_at": T0, "design_name": "Wooden", "file_location": "/usr",
        "file_name": "wooden-20220717-npgz.json", "last_updated": T0,
    },
    "payment_type": {
        "payment_type_id": 1, "payment_type_name": "SALES_RECEIPT", "created_at": T0,
        "last_updated": T0,
    },
    "staff": {
        "staff_id": 1, "first_name": "Jeremie", "last_name": "Franey", "department_id": 1,
        "email_address": "jeremie.franey@terrifictotes.com", "created_at": T0,
        "last_updated": T0,
    },
    "sales_order": {
        "sales_order_id": 1, "created_at": T0, "last_updated": T0, "design_id": 1,
        "staff_id": 1, "counterparty_id": 1, "units_sold": 100, "unit_price": Decimal("2.68"),
        "currency_id": 1, "agreed_delivery_date": "2024-11-20",
        "agreed_payment_date": "2024-11-21", "agreed_delivery_location_id": 1,
    },
    "purchase_order": {
        "purchase_order_id": 1, "created_at": T0, "last_updated": T0, "staff_id": 1,
        "counterparty_id": 1, "item_code": "ZDOI5EA", "item_quantity": 371,
        "item_unit_price": Decimal("361.39"), "currency_id": 1,
        "agreed_delivery_date": "2024-11-18", "agreed_payment_date": "2024-11-19",
        "agreed_delivery_location_id": 1,
    },
    "transaction": {
        "transaction_id": 1, "transaction_type": "SALE", "sales_order_id": 1,
        "purchase_order_id": None, "created_at": T0, "last_updated": T0,
    },
    "payment": {
        "payment_id": 1, "created_at": T0, "last_updated": T0, "transaction_id": 1,
        "counterparty_id": 1, "payment_amount": Decimal("268.00"), "currency_id": 1,
        "payment_type_id": 1, "paid": False, "payment_date": "2024-11-21",
        "company_ac_number": 67305075, "counterparty_ac_number": 31758074,
    },
}


def row(table: str, **values: Any) -> dict[str, Any]:
    """A complete source row of ``table``: realistic defaults overridden by ``values``."""
    return {**_DEFAULTS[table], **values}


def encoded(table: str, rows: Sequence[Mapping[str, Any]]) -> bytes:
    """The JSON Lines body the ingest would write for ``rows``."""
    columns = list(_DEFAULTS[table])
    return ingest_lines.encode_rows(columns, [[r[column] for column in columns] for r in rows])


def decoded(table: str, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows as the transform reads them back (JSON Lines round trip)."""
    return list(jsonl.decode_lines(encoded(table, rows).splitlines()))


def write_run(bucket: str, tables: Mapping[str, Sequence[Mapping[str, Any]]],
              stamp: str = "20241115T142009123Z", suffix: str = "3f9a1c2e",
              chunk_rows: int = 50_000, previous: str | None = None) -> str:
    """Write one ingest run (data files in chunks, then the manifest) and return its key.

    ``previous`` is the manifest it names as its predecessor, as ingest writes it.
    """
    run = keys.RunId(stamp, suffix)
    manifest_tables = {}
    for table in _DEFAULTS:
        rows = list(tables.get(table, ()))
        files = []
        for part, start in enumerate(range(0, len(rows), chunk_rows)):
            body = encoded(table, rows[start:start + chunk_rows])
            key = keys.data_key(table, run, part, "jsonl")
            storage.put_new_object(bucket, key, body, "application/x-ndjson")
            files.append({"key": key, "rows": len(rows[start:start + chunk_rows]),
                          "bytes": len(body)})
        manifest_tables[table] = {"rows": len(rows), "files": files, "watermark": None,
                                  "recent_versions": []}
    started = run.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    manifest = {
        "format": "totes.ingest/1", "run_id": str(run), "started_at": started,
        "finished_at": started, "previous_manifest": previous, "overlap_minutes": 15,
        "tables": manifest_tables,
    }
    key = keys.manifest_key(run)
    storage.put_new_json(bucket, key, manifest)
    return key


def full_batch() -> dict[str, list[dict[str, Any]]]:
    """One row of every table, consistent with each other: a first ingest run in miniature."""
    return {table: [row(table)] for table in _DEFAULTS}


@contextlib.contextmanager
def moto_buckets(monkeypatch: Any, ingest: str, processed: str,
                 *others: str) -> Iterator[None]:
    """An in-process moto S3 with the pipeline's two buckets (and ``others``), named in the env."""
    from moto import mock_aws

    for name, value in {"AWS_DEFAULT_REGION": "eu-west-2", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "INGEST_BUCKET": ingest,
                        "PROCESSED_BUCKET": processed}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        for bucket in (ingest, processed, *others):
            storage.s3_client().create_bucket(
                Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        yield
