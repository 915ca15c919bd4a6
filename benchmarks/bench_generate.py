"""Benchmark the source generator: rows per second and peak memory of ``generate()``.

Each scale generates a fresh ``totesys`` on the embedded PostgreSQL. Generation runs
in a freshly spawned interpreter, so the peak RSS reported is the generator's own:
orders are drawn and sent with COPY in bounded chunks, so it should stay flat while
the row count grows a hundredfold. Schema creation is not timed.

Usage: ``python -m benchmarks.bench_generate --scale 100 [--scale 1] [--seed 42]``.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (MB, options, parse, peak_rss, run_in_fresh_process,
                               scale_suffix)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    return parse(options("bench_generate", __doc__, scales=(100.0,), reuse=False), argv)


def measure_generate(data_dir: Path, name: str, scale: float, seed: int) -> dict[str, Any]:
    """Generate into the (empty, schema-ready) database ``name``; return counts and timings."""
    from totes_local import generator, stack

    conn = stack.Postgres(server=None, socket_dir=str(data_dir)).connect(name)
    try:
        started = time.perf_counter()
        counts = generator.generate(conn, scale=scale, seed=seed)
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    return {"counts": counts, "seconds": seconds, "peak": peak_rss()}


def bench_scale(postgres: Any, data_dir: Path, scale: float, seed: int) -> dict[str, Any]:
    """Recreate a database for ``scale`` and time one generation into it."""
    from totes_local import generator

    name = f"bench_generate_{scale_suffix(scale)}"
    generator.recreate_empty_source(postgres, name)
    measured = run_in_fresh_process(measure_generate, data_dir, name, scale, seed)
    return {"scale": scale, "rows": sum(measured["counts"].values()), **measured}


def report_line(result: dict[str, Any]) -> str:
    """Format one scale's measurements as a table row."""
    counts = result["counts"]
    return (f"{result['scale']:>7g} {result['rows']:>10,} {result['seconds']:>9.1f} "
            f"{result['rows'] / result['seconds']:>10,.0f} {result['peak'] / MB:>9.1f}   "
            f"sales {counts['sales_order']:,}, purchases {counts['purchase_order']:,}, "
            f"payments {counts['payment']:,}, designs {counts['design']:,}")


def main(argv: list[str] | None = None) -> int:
    """Run the generator benchmark for each scale and print one row per scale."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from totes_local import stack

    postgres = stack.start_postgres(args.data_dir)
    print(f"generate benchmark: seed {args.seed}, COPY in chunks, one fresh database per scale",
          flush=True)
    print(f"{'scale':>7} {'rows':>10} {'seconds':>9} {'rows/s':>10} {'peak MB':>9}", flush=True)
    for scale in args.scales:
        print(report_line(bench_scale(postgres, args.data_dir, scale, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
