"""Benchmark the transform on one large ingest batch: seconds, rows/s and peak memory.

A backfill is the transform's worst case: one ingest manifest listing millions of
rows in ``CHUNK_ROWS``-sized JSON Lines files. This script synthesises such a
batch straight into a moto server, then runs :func:`totes.transform.transform_through`
in a freshly spawned process, whose peak RSS (``VmHWM``) is its own (moto's objects
stay in the parent), and reports it against the Lambda's 1,769 MB.

    .venv/bin/python -m benchmarks.bench_transform --orders 700000
"""
import argparse
import os
import sys
import time
import uuid
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Callable, Iterator

from benchmarks.common import MB, moto_server, options, parse, peak_rss, run_in_fresh_process

LAMBDA_MEMORY_MB = 1769
ORDER_TABLES = ("sales_order", "transaction", "payment")
_EPOCH = datetime(2022, 11, 3, 8, 0, 0, 0)


def _sales_order(n: int) -> list[Any]:
    created = _EPOCH + timedelta(seconds=37 * n, milliseconds=n % 1000)
    day = (created + timedelta(days=5)).date().isoformat()
    return [n, created, created, n % 470 + 1, n % 20 + 1, n % 20 + 1, 100 + n % 900,
            Decimal(f"{2 + n % 3}.{n % 100:02d}"), n % 3 + 1, day, day, n % 30 + 1]


def _transaction(n: int) -> list[Any]:
    created = _EPOCH + timedelta(seconds=37 * n, milliseconds=n % 1000)
    return [n, "SALE", n, None, created, created]


def _payment(n: int) -> list[Any]:
    created = _EPOCH + timedelta(seconds=37 * n, milliseconds=n % 1000)
    day = (created + timedelta(days=5)).date().isoformat()
    return [n, created, created, n, n % 20 + 1, Decimal(f"{(100 + n % 900) * 2}.{n % 100:02d}"),
            n % 3 + 1, 1, n % 2 == 0, day, 67305075, 31758074]


_COLUMNS = {
    "sales_order": ["sales_order_id", "created_at", "last_updated", "design_id", "staff_id",
                    "counterparty_id", "units_sold", "unit_price", "currency_id",
                    "agreed_delivery_date", "agreed_payment_date",
                    "agreed_delivery_location_id"],
    "transaction": ["transaction_id", "transaction_type", "sales_order_id",
                    "purchase_order_id", "created_at", "last_updated"],
    "payment": ["payment_id", "created_at", "last_updated", "transaction_id",
                "counterparty_id", "payment_amount", "currency_id", "payment_type_id", "paid",
                "payment_date", "company_ac_number", "counterparty_ac_number"],
    "address": ["address_id", "address_line_1", "address_line_2", "district", "city",
                "postal_code", "country", "phone", "created_at", "last_updated"],
    "counterparty": ["counterparty_id", "counterparty_legal_name", "legal_address_id",
                     "commercial_contact", "delivery_contact", "created_at", "last_updated"],
    "currency": ["currency_id", "currency_code", "created_at", "last_updated"],
    "department": ["department_id", "department_name", "location", "manager", "created_at",
                   "last_updated"],
    "staff": ["staff_id", "first_name", "last_name", "department_id", "email_address",
              "created_at", "last_updated"],
}
_ORDER_ROWS: dict[str, Callable[[int], list[Any]]] = {
    "sales_order": _sales_order, "transaction": _transaction, "payment": _payment}


def _reference_rows() -> dict[str, list[list[Any]]]:
    at = _EPOCH
    return {
        "address": [[n, f"{n} High Street", None, None, "Leeds", "LS1", "UK", "0113", at, at]
                    for n in range(1, 31)],
        "counterparty": [[n, f"Counterparty {n}", n, None, None, at, at] for n in range(1, 21)],
        "currency": [[n, code, at, at] for n, code in enumerate(("GBP", "USD", "EUR"), 1)],
        "department": [[n, f"Dept {n}", "Leeds", "Boss", at, at] for n in range(1, 9)],
        "staff": [[n, "First", "Last", n % 8 + 1, "a@b.c", at, at] for n in range(1, 21)],
    }


def _chunks(table: str, orders: int, chunk_rows: int) -> Iterator[list[list[Any]]]:
    for start in range(1, orders + 1, chunk_rows):
        yield [_ORDER_ROWS[table](n) for n in range(start, min(start + chunk_rows, orders + 1))]


def synthesise_batch(bucket: str, orders: int, chunk_rows: int) -> tuple[str, int]:
    """Write one ingest run with ``orders`` sales orders, transactions and payments.

    Each file's SHA-256 is listed as ingest lists it, so the transform checks what it reads.
    """
    from totes import keys, storage
    from totes_local import ingest_lines

    run = keys.RunId("20241115T142009123Z", uuid.uuid4().hex[:8])
    tables: dict[str, Any] = {}
    total = 0

    def put(table: str, rows: list[list[Any]]) -> None:
        nonlocal total
        entry = tables.setdefault(table, {"rows": 0, "files": [], "watermark": None,
                                          "recent_versions": []})
        body = ingest_lines.encode_rows(_COLUMNS[table], rows)
        key = keys.data_key(table, run, len(entry["files"]), "jsonl")
        sha256 = storage.put_new_object_on(None, bucket, key, body, "application/x-ndjson")
        entry["files"].append({"key": key, "rows": len(rows), "bytes": len(body),
                               "sha256": sha256})
        entry["rows"] += len(rows)
        total += len(rows)

    for table, rows in _reference_rows().items():
        put(table, rows)
    for table in ORDER_TABLES:
        for rows in _chunks(table, orders, chunk_rows):
            put(table, rows)
    manifest_key = keys.manifest_key(run)
    storage.put_new_json(bucket, manifest_key, {
        "format": "totes.ingest/1", "run_id": str(run), "started_at": "2024-11-15T14:20:09.123Z",
        "finished_at": "2024-11-15T14:20:09.123Z", "previous_manifest": None,
        "overlap_minutes": 15, "tables": tables,
    })
    return manifest_key, total


def _transform_child(manifest_key: str) -> dict[str, Any]:
    """Run in a fresh process so its peak RSS is the transform's alone."""
    import logging

    from totes import transform

    logging.disable(logging.INFO)
    baseline = peak_rss() / MB
    started = time.perf_counter()
    done = transform.transform_through(transform.TransformSettings.from_environment(),
                                       manifest_key, transform.TransformReport())
    seconds = time.perf_counter() - started
    return {"done": done, "seconds": seconds, "baseline_mb": baseline,
            "peak_mb": peak_rss() / MB}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    parser = options("bench_transform", __doc__, seed=False, reuse=False, data_dir=None)
    parser.add_argument("--orders", type=int, default=700_000,
                        help="sales orders (each with a transaction and a payment)")
    parser.add_argument("--chunk-rows", type=int, default=50_000,
                        help="CHUNK_ROWS: rows per ingest file and per transformed frame")
    return parse(parser, argv)


def main(argv: list[str] | None = None) -> int:
    """Synthesise a large batch, transform it in a child process, print the measurements."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from totes_local import stack

    with moto_server() as endpoint:
        suffix = uuid.uuid4().hex[:8]
        env = {**stack.aws_environment(endpoint), "INGEST_BUCKET": f"bench-ingest-{suffix}",
               "PROCESSED_BUCKET": f"bench-processed-{suffix}",
               "CHUNK_ROWS": str(args.chunk_rows), "POWERTOOLS_METRICS_DISABLED": "true"}
        os.environ.update(env)
        stack.provision({}, buckets=(env["INGEST_BUCKET"], env["PROCESSED_BUCKET"]))
        started = time.perf_counter()
        manifest_key, rows = synthesise_batch(env["INGEST_BUCKET"], args.orders,
                                              args.chunk_rows)
        print(f"synthesised {rows:,} rows in {time.perf_counter() - started:.1f} s", flush=True)
        result = run_in_fresh_process(_transform_child, manifest_key)
    print(f"transform: {rows:,} rows in {result['seconds']:.1f} s "
          f"({rows / result['seconds']:,.0f} rows/s)")
    print(f"peak RSS {result['peak_mb']:.0f} MB (after imports {result['baseline_mb']:.0f} MB), "
          f"Lambda memory {LAMBDA_MEMORY_MB} MB")
    return 0 if result["done"] == [manifest_key] and result["peak_mb"] < LAMBDA_MEMORY_MB else 1


if __name__ == "__main__":
    sys.exit(main())
