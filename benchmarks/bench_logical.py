"""Benchmark log-based capture beside snapshot capture, on the same changes.

On a generated ``totesys`` (a fresh copy of ``bench_logical_source_<scale>``) in a
separate embedded cluster switched to ``wal_level = logical``, two pipelines,
each with its own bucket, take their first load: one in ``CAPTURE_MODE=snapshot``,
one in ``CAPTURE_MODE=logical`` (which creates its slot first). Then one
transaction rewrites every row of ``sales_order`` and ``payment`` (the bulk fix of
``bench_bulk_update``) and both pipelines ingest it, each run in a freshly spawned
interpreter (a cold Lambda) with its peak RSS. Printed: rows, seconds, rows/s
and peak memory of each mode, and the ratio logical/snapshot. It fails when the
two modes did not write the same number of rows, or when the next logical run
is not empty.

Usage: ``python -m benchmarks.bench_logical [--scale 1] [--reuse]
[--chunk-rows 50000] [--max-rows-per-run N]``.
"""
import argparse
import sys
import uuid
from typing import Any

from benchmarks.bench_bulk_update import bulk_update, drain, working_copy
from benchmarks.bench_ingest import ingest_environment, measure_ingest
from benchmarks.common import (MB, REPO, local_stack, options, parse, run_in_fresh_process,
                               scale_suffix)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options; its cluster has ``wal_level = logical``, its own folder."""
    return parse(options("bench_logical", __doc__, scale=1.0, ingest=True,
                         data_dir=REPO / ".bench" / "pg-logical"), argv)


def line(mode: str, runs: list[dict[str, Any]]) -> tuple[int, float]:
    """Print one mode's measurement; return its rows and seconds."""
    rows = sum(run["rows"] for run in runs)
    seconds = sum(run["seconds"] for run in runs)
    peak = max(run["peak"] for run in runs) / MB
    print(f"{mode:<10} {len(runs):>4} {rows:>10,} {seconds:>9.2f} {rows / seconds:>10,.0f} "
          f"{peak:>9.0f}", flush=True)
    return rows, seconds


def main(argv: list[str]) -> int:
    """Measure both capture modes on the same bulk fix; return 1 when a check fails."""
    from totes_local import stack

    args = parse_args(argv)
    with local_stack(args.data_dir, logical=True) as (postgres, endpoint):
        slot = f"bench_logical_{uuid.uuid4().hex[:8]}"
        stack.drop_slots(postgres, f"bench_logical_{scale_suffix(args.scale)}")
        name, rows = working_copy(postgres, args, prefix="bench_logical_source")
        try:
            snapshot = ingest_environment(postgres, endpoint, name, args.chunk_rows,
                                          args.max_rows_per_run)
            logical = {**ingest_environment(postgres, endpoint, name, args.chunk_rows,
                                            args.max_rows_per_run),
                       "CAPTURE_MODE": "logical", "REPLICATION_SLOT": slot}
            print(f"log-based against snapshot capture: scale {args.scale:g} ({rows:,} rows), "
                  f"CHUNK_ROWS={args.chunk_rows}", flush=True)
            drain(logical)      # the slot exists before either first load
            drain(snapshot)
            updated, _, _ = bulk_update(postgres, name)
            print(f"one transaction rewrote {sum(updated.values()):,} rows "
                  f"({', '.join(f'{table} {n:,}' for table, n in updated.items())})")
            print(f"{'mode':<10} {'runs':>4} {'rows':>10} {'seconds':>9} {'rows/s':>10} "
                  f"{'peak MB':>9}", flush=True)
            snapshot_rows, snapshot_seconds = line("snapshot", drain(snapshot))
            logical_rows, logical_seconds = line("logical", drain(logical))
            idle = run_in_fresh_process(measure_ingest, logical)
            ratio = (logical_rows / logical_seconds) / (snapshot_rows / snapshot_seconds)
            print(f"logical/snapshot throughput: {ratio:.2f}; next logical run: "
                  f"{idle['rows']} rows", flush=True)
        finally:
            stack.drop_slots(postgres, name)
    failed = []
    if logical_rows != snapshot_rows or snapshot_rows != sum(updated.values()):
        failed.append(f"rows differ: logical {logical_rows}, snapshot {snapshot_rows}, "
                      f"updated {sum(updated.values())}")
    if idle["rows"]:
        failed.append(f"the idle logical run wrote {idle['rows']} rows")
    for problem in failed:
        print(f"FAILED: {problem}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
