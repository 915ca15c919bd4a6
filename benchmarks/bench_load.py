"""Benchmark the load on one large processed batch: seconds, rows/s and peak memory.

A backfill is the load's worst case: one processed manifest listing millions of
fact rows in ``--file-rows``-sized Parquet files. This script synthesises such a
batch from the warehouse contract itself (every column generated from its type in
``totes.warehouse_schema``, so nothing here restates the schema), writes it to a
moto server with the documented manifests, then runs :func:`totes.load.load_into`
against the embedded PostgreSQL in a freshly spawned process, whose peak RSS is
the load's alone (moto keeps the objects in the parent), and whose peak of the
temporary folder (Lambda's ``/tmp``, where the objects read ahead wait) is too.
``dim_date`` is left out on purpose so the inferred-member path runs at full scale.

    .venv/bin/python -m benchmarks.bench_load --rows 2000000
"""
import argparse
import contextlib
import os
import sys
import time
import traceback
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

from benchmarks.common import (MB, TempSpace, current_rss, local_stack, options, parse,
                               peak_rss, run_in_fresh_process)

LAMBDA_MEMORY_MB = 1769
COUNT = "SELECT count(*) FROM {}"
STARTED_AT = datetime(2024, 11, 15, 14, 20, 9, 123000, tzinfo=timezone.utc)

#: members per dimension, as in the real totesys (transactions: enough to vary).
DIMENSION_SIZES = {"dim_staff": 20, "dim_location": 30, "dim_currency": 3, "dim_design": 470,
                   "dim_counterparty": 20, "dim_payment_type": 4, "dim_transaction": 1000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Read the benchmark's options."""
    parser = options("bench_load", __doc__, seed=False, reuse=False)
    parser.add_argument("--rows", type=int, default=2_000_000,
                        help="fact rows, split over the three fact tables (default 2,000,000)")
    parser.add_argument("--file-rows", type=int, default=50_000,
                        help="rows per Parquet object, the transform's CHUNK_ROWS (default 50000)")
    return parse(parser, argv or [])


def synthetic_table(name: str, first: int, count: int) -> Any:
    """Rows ``first .. first+count-1`` of warehouse table ``name``, each column from its type."""
    import numpy as np
    import pyarrow as pa

    from totes.warehouse_schema import TABLES, arrow_schema

    table = TABLES[name]
    schema = arrow_schema(table)
    n = np.arange(first, first + count, dtype=np.int64)
    business_id = table.unique_key[0] if table.unique_key else table.primary_key
    epoch = (date(2024, 1, 1) - date(1970, 1, 1)).days
    arrays = []
    for column in table.data_columns:
        if column.name == business_id:
            values = pa.array(n.astype(np.int32))
        elif column.references == "dim_date":
            values = pa.array((epoch + n % 700).astype(np.int32)).cast(pa.date32())
        elif column.references:
            values = pa.array((n % DIMENSION_SIZES[column.references] + 1).astype(np.int32))
        elif column.type == "int":
            values = pa.array((n % 1000).astype(np.int32))
        elif column.type == "time":
            values = pa.array((n * 37_123 % 86_400_000).astype(np.int32)).cast(pa.time32("ms"))
        elif column.type in ("money", "numeric"):
            values = pa.array([Decimal(int(c)).scaleb(-2) for c in n * 7919 % 9_999_999_999],
                              schema.field(column.name).type)
        elif column.type == "bool":
            values = pa.array(n % 2 == 0)
        else:
            values = pa.array([f"{column.name} {i}" for i in n.tolist()])
        arrays.append(values)
    return pa.Table.from_arrays(arrays, schema=schema)


def synthesise_batch(ingest_bucket: str, processed_bucket: str, rows: int,
                     file_rows: int) -> tuple[str, int]:
    """Write one ingest manifest and its processed twin listing ``rows`` fact rows."""
    import io

    import pyarrow.parquet as pq

    from totes import keys, storage
    from totes.warehouse_schema import FACTS, TABLES

    run = keys.RunId(keys.stamp(STARTED_AT), uuid.uuid4().hex[:8])
    listed: dict[str, Any] = {name: {"rows": 0, "files": []} for name in TABLES}
    per_fact = rows // len(FACTS)
    work = [(name, size) for name, size in DIMENSION_SIZES.items()]
    work += [(fact.name, per_fact) for fact in FACTS]
    for name, count in work:
        for first in range(1, count + 1, file_rows):
            buffer = io.BytesIO()
            pq.write_table(synthetic_table(name, first, min(file_rows, count - first + 1)),
                           buffer)
            key = f"{name}/{run.date_path}/{run}-00000000-{len(listed[name]['files']):05d}.parquet"
            sha256 = storage.put_new_object_on(None, processed_bucket, key, buffer.getvalue(),
                                               "application/vnd.apache.parquet")
            part = min(file_rows, count - first + 1)
            listed[name]["files"].append({"key": key, "rows": part, "bytes": buffer.tell(),
                                          "sha256": sha256})
            listed[name]["rows"] += part
    manifest_key = keys.manifest_key(run)
    started = STARTED_AT.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    storage.put_new_json(ingest_bucket, manifest_key, {
        "format": "totes.ingest/1", "run_id": str(run), "started_at": started,
        "finished_at": started, "previous_manifest": None, "overlap_minutes": 15, "tables": {}})
    storage.put_new_json(processed_bucket, manifest_key, {
        "format": "totes.processed/1", "run_id": str(run), "ingest_manifest": manifest_key,
        "ingest_started_at": started, "transformed_at": started, "tables": listed,
        "reference": {}})
    return manifest_key, per_fact * len(FACTS)


def _load_child(env: dict[str, str]) -> dict[str, Any]:
    """Run in a fresh process so its peak RSS is the load's alone; connect as the handler does.

    Its temporary folder is one of its own, so the /tmp it held is the load's alone too.
    """
    import logging
    import tempfile

    os.environ.update(env)
    tempfile.tempdir = tempfile.mkdtemp(prefix="bench-load-tmp-")
    from totes import config, db, load, stage

    logging.disable(logging.INFO)
    conn = db.connect(config.warehouse_secret_id(), timeout=None, database=config.WAREHOUSE)
    baseline = current_rss()
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), \
            TempSpace() as space:  # EMF lines
        report = load.load_into(conn, load.LoadSettings.from_environment(),
                                stage.Deadline.unbounded())
    seconds = time.perf_counter() - started
    os.rmdir(tempfile.tempdir)  # every spool was deleted with its file
    counts = {name: conn.run(COUNT.format(db.quote_ident(name)))[0][0]
              for name in ("fact_sales_order", "fact_purchase_orders", "fact_payment")}
    conn.close()
    return {"loaded": report.manifests_loaded, "seconds": seconds, "counts": counts,
            "inferred": dict(report.inferred_members), "baseline_mb": baseline / MB,
            "peak_mb": peak_rss() / MB, "tmp_peak_mb": space.peak / MB}


def main(argv: list[str] | None = None) -> int:
    """Synthesise a large batch, load it in a child process, print the measurements."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from totes_local import stack

    dbname = f"bench_load_{uuid.uuid4().hex[:8]}"
    with local_stack(args.data_dir) as (postgres, endpoint):
        postgres.recreate_database(dbname)
        try:
            suffix = uuid.uuid4().hex[:8]
            env = {**stack.aws_environment(endpoint), "INGEST_BUCKET": f"bench-ingest-{suffix}",
                   "PROCESSED_BUCKET": f"bench-processed-{suffix}",
                   "WAREHOUSE_SECRET_ID": f"bench-warehouse-{suffix}"}
            os.environ.update(env)
            stack.provision({env["WAREHOUSE_SECRET_ID"]: postgres.secret(dbname)},
                            buckets=(env["INGEST_BUCKET"], env["PROCESSED_BUCKET"]))
            started = time.perf_counter()
            manifest_key, rows = synthesise_batch(env["INGEST_BUCKET"], env["PROCESSED_BUCKET"],
                                                  args.rows, args.file_rows)
            print(f"synthesised {rows:,} fact rows in {time.perf_counter() - started:.1f} s",
                  flush=True)
            try:
                result = run_in_fresh_process(_load_child, env)
            except Exception:  # the load's own failure, with the child's traceback
                traceback.print_exc()
                print("load failed, see the traceback above", flush=True)
                return 1
        finally:
            admin = postgres.connect("postgres")
            admin.run(f'DROP DATABASE "{dbname}" WITH (FORCE)')
            admin.close()
    print(f"load: {rows:,} fact rows in {result['seconds']:.1f} s "
          f"({rows / result['seconds']:,.0f} rows/s); rows per fact {result['counts']}; "
          f"inferred members {result['inferred']}")
    print(f"peak RSS {result['peak_mb']:.0f} MB (connected, before loading "
          f"{result['baseline_mb']:.0f} MB), "
          f"Lambda memory {LAMBDA_MEMORY_MB} MB; peak /tmp {result['tmp_peak_mb']:.1f} MB")
    loaded_all = result["loaded"] == [manifest_key] and sum(result["counts"].values()) == rows
    return 0 if loaded_all and result["peak_mb"] < LAMBDA_MEMORY_MB else 1


if __name__ == "__main__":
    sys.exit(main())
