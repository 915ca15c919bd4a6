"""Benchmark a bulk update: every row of two tables rewritten in one transaction, one stamp.

A data fix that rewrites whole tables is the capture state's worst case: every
changed row shares one ``last_updated``. On a generated ``totesys`` (a fresh
copy, ``bench_bulk_<scale>``, of ``bench_bulk_source_<scale>``, which is never
changed, so ``--reuse`` measures the same rows every time), against a fresh
bucket on a moto server:

1. a first full ingest (repeated until complete if the row budget cuts it);
2. one transaction sets ``last_updated`` of every ``sales_order`` and ``payment``
   row to one value (the database's clock, UTC, milliseconds): not timed;
3. the ingest that picks the update up: its rows, time, peak memory, and the
   size of the manifest it commits;
4. an idle ingest, which must write no rows. (Capture by snapshot streams only
   the rows it writes, plus one past a row budget that cuts the run, so it reads
   none either; the watermark capture it replaced wrote none but re-read every
   restamped row on every run until a newer row arrived.)
5. an idle ingest that also sweeps every table's keys for deletes: the cost a
   sweep adds (every ``INGEST_DELETE_SWEEP_MINUTES``, 60 by default).

Every ingest runs in a freshly spawned interpreter (a cold Lambda), so its peak
RSS (``VmHWM``) is its own. The manifest is reported whole and as its state:
the manifest less its lists of data files. Those lists grow with the rows a run
writes (one entry per ``CHUNK_ROWS`` rows, bounded by ``INGEST_MAX_ROWS_PER_RUN``);
the state must not grow with rows at all, and the benchmark fails when it
exceeds ``--max-state-bytes``, when the update run misses an updated row or when
the idle run writes anything.

Usage: ``python -m benchmarks.bench_bulk_update [--scale 10] [--reuse]
[--chunk-rows 50000] [--max-rows-per-run N] [--max-state-bytes 16384]``.
"""
import argparse
import json
import sys
import time
from typing import Any

from benchmarks.bench_ingest import generate_source, ingest_environment, measure_ingest
from benchmarks.common import MB, local_stack, options, parse, run_in_fresh_process

#: the tables the bulk update rewrites, every row of each.
UPDATED_TABLES = ("sales_order", "payment")
#: manifest fields that list data objects: they grow with a run's rows, by design.
FILE_LISTS = ("files", "deleted_files")


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    parser = options("bench_bulk_update", __doc__, scale=10.0, ingest=True)
    parser.add_argument("--max-state-bytes", type=int, default=16_384,
                        help="fail when a manifest's state exceeds this (default 16384)")
    return parse(parser, argv)


def drain(env: dict[str, str], max_runs: int = 100) -> list[dict[str, Any]]:
    """Run ingest in fresh processes until a run reports complete; return every run.

    A backlog still waiting after ``max_runs`` runs is an error, not a reason to run forever.
    """
    runs = [run_in_fresh_process(measure_ingest, env)]
    while not runs[-1]["complete"]:
        if len(runs) == max_runs:
            raise RuntimeError(f"ingest still incomplete after {max_runs} runs")
        runs.append(run_in_fresh_process(measure_ingest, env))
    return runs


def working_copy(postgres: Any, args: argparse.Namespace,
                 prefix: str = "bench_bulk_source") -> tuple[str, int]:
    """Return a fresh copy of the generated source (and its rows) for the update to change.

    The source itself (``bench_bulk_source_<scale>``) is never updated, so ``--reuse``
    measures the same rows every time; the copy is a file-level ``CREATE DATABASE
    ... TEMPLATE``, seconds even at scale 10.
    """
    from totes.db import quote_ident

    source, rows = generate_source(postgres, args.scale, args.seed, args.reuse, prefix=prefix)
    name = source.replace(prefix, prefix.removesuffix("_source"), 1)
    admin = postgres.connect("postgres")
    try:
        admin.run(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        admin.run(f"CREATE DATABASE {quote_ident(name)} TEMPLATE {quote_ident(source)}")
    finally:
        admin.close()
    return name, rows


def bulk_update(postgres: Any, name: str) -> tuple[dict[str, int], str, float]:
    """Restamp every row of :data:`UPDATED_TABLES` in one transaction with one value.

    Returns the rows updated per table, the stamp, and the seconds the update took.
    """
    from totes.db import quote_ident

    conn = postgres.connect(name)
    started = time.perf_counter()
    try:
        conn.run("START TRANSACTION")
        stamp = conn.run("SELECT (now() AT TIME ZONE 'UTC')::timestamp(3)")[0][0]
        updated = {}
        for table in UPDATED_TABLES:
            # The table name comes from the constant above and is quoted; the value is bound.
            conn.run(f"UPDATE {quote_ident(table)} SET last_updated = :stamp",  # nosec B608
                     stamp=stamp)
            updated[table] = conn.row_count
        conn.run("COMMIT")
    finally:
        conn.close()
    return updated, stamp.isoformat(timespec="milliseconds"), time.perf_counter() - started


def manifest_sizes(bucket: str, key: str) -> tuple[int, int]:
    """Return a manifest's size in bytes, whole and without its lists of data files.

    The state is measured in the manifest's own serialization (``indent=1``,
    sorted keys, as :func:`totes.storage.put_new_json` writes it).
    """
    from totes import storage

    body = storage.read_bytes(bucket, key)
    document = json.loads(body)
    for entry in document.get("tables", {}).values():
        for field in FILE_LISTS:
            entry.pop(field, None)
    return len(body), len(json.dumps(document, indent=1, sort_keys=True).encode())


def phase_line(phase: str, runs: list[dict[str, Any]], bucket: str) -> dict[str, Any]:
    """Summarise one phase (its runs and its last manifest) and print it as a table row."""
    rows = sum(run["rows"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    peak = max(run["peak"] for run in runs)
    manifest, state = manifest_sizes(bucket, runs[-1]["manifest_key"])
    rate = f"{rows / seconds:>10,.0f}" if rows else f"{'-':>10}"
    print(f"{phase:<28} {len(runs):>4} {rows:>10,} {seconds:>9.2f} {rate} "
          f"{peak / MB:>9.1f} {manifest:>14,} {state:>11,}", flush=True)
    tables: dict[str, int] = {}
    for run in runs:
        for table, count in run["tables"].items():
            tables[table] = tables.get(table, 0) + count
    return {"rows": rows, "tables": tables, "manifest": manifest, "state": state}


def problems(updated: dict[str, int], bulk: dict[str, Any], idle: dict[str, Any],
             max_state: int) -> list[str]:
    """Return what the runs got wrong: a missed updated row, an idle write, a large state."""
    found = []
    for table, count in updated.items():
        if bulk["tables"].get(table, 0) < count:
            found.append(f"the update run wrote {bulk['tables'].get(table, 0):,} {table} rows "
                         f"of the {count:,} updated")
    if idle["rows"]:
        found.append(f"the idle run wrote {idle['rows']:,} rows, expected 0 "
                     f"({ {table: rows for table, rows in idle['tables'].items() if rows} })")
    for phase, summary in (("update", bulk), ("idle", idle)):
        if summary["state"] > max_state:
            found.append(f"the {phase} run's manifest state is {summary['state']:,} bytes, "
                         f"above the bound of {max_state:,}: it grows with the rows updated")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the first ingest, the bulk update, its ingest and an idle ingest; print and check."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with local_stack(args.data_dir) as (postgres, endpoint):
        name, source_rows = working_copy(postgres, args)
        env = ingest_environment(postgres, endpoint, name, args.chunk_rows,
                                 args.max_rows_per_run)
        bucket = env["INGEST_BUCKET"]
        budget = args.max_rows_per_run or "ingest's default"
        print(f"bulk update benchmark: scale {args.scale:g} ({source_rows:,} rows), "
              f"CHUNK_ROWS={args.chunk_rows}, INGEST_MAX_ROWS_PER_RUN={budget}", flush=True)
        print(f"{'phase':<28} {'runs':>4} {'rows':>10} {'seconds':>9} {'rows/s':>10} "
              f"{'peak MB':>9} {'manifest bytes':>14} {'state bytes':>11}", flush=True)
        phase_line("first full ingest", drain(env), bucket)
        updated, stamp, seconds = bulk_update(postgres, name)
        what = " and ".join(f"{rows:,} {table}" for table, rows in updated.items())
        print(f"  one transaction restamped {what} rows with last_updated {stamp} "
              f"({seconds:.1f} s)", flush=True)
        bulk = phase_line("ingest after the bulk update", drain(env), bucket)
        idle = phase_line("idle ingest", drain(env), bucket)
        phase_line("idle ingest with a key sweep", drain(
            {**env, "INGEST_DELETE_SWEEP_MINUTES": "0"}), bucket)
    found = problems(updated, bulk, idle, args.max_state_bytes)
    for problem in found:
        print(f"FAILED: {problem}", flush=True)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
