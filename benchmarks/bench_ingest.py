"""Benchmark the ingest: rows per second and peak memory against sources of growing size.

For each scale a fresh ``totesys`` is generated (not timed), then one full first
ingest runs against a moto server. The ingest runs in a freshly spawned
interpreter, so the peak RSS reported is the ingest's own (what Lambda's
``Max Memory Used`` would show), not the generator's or moto's. Because rows are
fetched and written ``CHUNK_ROWS`` at a time, the peak should stay flat while the
row count grows: that is the claim this benchmark checks.

With ``--max-rows-per-run`` the first load is a backfill: runs repeat (each in a
fresh interpreter, like a cold Lambda) until one reports complete, and every
run is reported, so the time and memory of one bounded run can be read off.

Usage: ``python -m benchmarks.bench_ingest --scale 10 --scale 100 [--chunk-rows 50000]
[--max-rows-per-run 1000000]``.
"""
import argparse
import contextlib
import os
import sys
import time
import uuid
from typing import Any

from benchmarks.common import (MB, current_rss, local_stack, options, parse,
                               peak_rss, run_in_fresh_process, scale_suffix)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    return parse(options("bench_ingest", __doc__, scales=(1.0, 10.0), ingest=True,
                         max_rows_default="the whole source in one run"), argv)


def measure_ingest(env: dict[str, str]) -> dict[str, Any]:
    """Run one ingest in this (fresh) process and return its rows, time and peak memory."""
    os.environ.update(env)
    from totes import ingest

    baseline = current_rss()
    started = time.perf_counter()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # EMF lines
        result = ingest.run_ingest()
    seconds = time.perf_counter() - started
    return {"rows": result.total_rows, "seconds": seconds, "baseline": baseline,
            "peak": peak_rss(), "complete": result.complete, "tables": dict(result.rows),
            "manifest_key": result.manifest_key}


def existing_rows(postgres: Any, name: str) -> int:
    """Return the rows of a totesys left by an earlier run (0 when there is none)."""
    import pg8000.native

    from totes.db import DatabaseUnavailableError, quote_ident
    from totes.source import SOURCE_TABLES

    try:
        conn = postgres.connect(name)
    except DatabaseUnavailableError:  # no such database yet
        return 0
    try:
        return sum(conn.run(f"SELECT count(*) FROM {quote_ident(table)}")[0][0]  # nosec B608
                   for table in SOURCE_TABLES)
    except pg8000.native.DatabaseError:  # no schema: not a source to reuse
        return 0
    finally:
        conn.close()


def generate_source(postgres: Any, scale: float, seed: int, reuse: bool,
                    prefix: str = "bench_ingest") -> tuple[str, int]:
    """Create and fill a fresh totesys for ``scale`` (or reuse one); return name and rows.

    The database is named ``<prefix>_<scale>``: a benchmark that changes its source
    passes its own prefix, so it never alters the one another benchmark reuses.
    """
    from totes_local import generator

    name = f"{prefix}_{scale_suffix(scale)}"
    if reuse and (rows := existing_rows(postgres, name)):
        return name, rows
    generator.recreate_empty_source(postgres, name)
    conn = postgres.connect(name)
    try:
        counts = generator.generate(conn, scale=scale, seed=seed)
    finally:
        conn.close()
    return name, sum(counts.values())


def ingest_environment(postgres: Any, endpoint: str, name: str, chunk_rows: int,
                       max_rows_per_run: int | None) -> dict[str, str]:
    """Provision a fresh bucket and secret for database ``name``; return the ingest's env.

    The bucket is new, so the first ingest against it is a full first run.
    ``max_rows_per_run`` None leaves ``INGEST_MAX_ROWS_PER_RUN`` at ingest's default.
    """
    from totes_local import stack

    suffix = uuid.uuid4().hex[:8]
    bucket, secret_id = f"bench-ingest-{suffix}", f"bench/totesys/{suffix}"
    stack.provision({secret_id: postgres.secret(name)}, buckets=(bucket,))
    env = {**stack.aws_environment(endpoint), "INGEST_BUCKET": bucket,
           "TOTESYS_SECRET_ID": secret_id, "CHUNK_ROWS": str(chunk_rows),
           "LOG_LEVEL": "WARNING"}
    if max_rows_per_run is not None:
        env["INGEST_MAX_ROWS_PER_RUN"] = str(max_rows_per_run)
    return env


def bench_scale(postgres: Any, endpoint: str, scale: float, args: argparse.Namespace
                ) -> list[dict[str, Any]]:
    """Generate a source at ``scale`` and measure every run of its first (full) ingest."""
    started = time.perf_counter()
    name, source_rows = generate_source(postgres, scale, args.seed, args.reuse)
    generated = time.perf_counter() - started
    env = ingest_environment(postgres, endpoint, name, args.chunk_rows,
                             args.max_rows_per_run or source_rows)
    runs: list[dict[str, Any]] = []
    while not runs or not runs[-1]["complete"]:
        runs.append({"scale": scale, "run": len(runs) + 1, "generate_seconds": generated,
                     **run_in_fresh_process(measure_ingest, env)})
    ingested = sum(run["rows"] for run in runs)
    if ingested != source_rows:
        raise RuntimeError(f"ingested {ingested} rows of {source_rows}")
    return runs


def report_line(result: dict[str, Any]) -> str:
    """Format one run's measurements as a table row."""
    return (f"{result['scale']:>7g} {result['run']:>4} {result['rows']:>10,} "
            f"{result['seconds']:>9.1f} {result['rows'] / result['seconds']:>10,.0f} "
            f"{result['peak'] / MB:>10.1f} {(result['peak'] - result['baseline']) / MB:>10.1f}")


def main(argv: list[str] | None = None) -> int:
    """Run the ingest benchmark for each scale and print one row per ingest run."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with local_stack(args.data_dir) as (postgres, endpoint):
        budget = args.max_rows_per_run or "the whole source"
        print(f"ingest benchmark: CHUNK_ROWS={args.chunk_rows}, INGEST_MAX_ROWS_PER_RUN={budget},"
              " a full first load per scale", flush=True)
        print(f"{'scale':>7} {'run':>4} {'rows':>10} {'seconds':>9} {'rows/s':>10} "
              f"{'peak MB':>10} {'growth MB':>10}", flush=True)
        for scale in args.scales:
            runs = bench_scale(postgres, endpoint, scale, args)
            for run in runs:
                print(report_line(run), flush=True)
            if len(runs) > 1:
                print(f"{'':>7} drained in {len(runs)} runs, "
                      f"{sum(run['seconds'] for run in runs):.1f} s of ingest", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
