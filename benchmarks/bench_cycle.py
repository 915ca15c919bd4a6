"""Benchmark the warm one-order cycle: handler time of ingest, transform and load for one new order.

A ``totesys`` is generated at ``--scale`` (its own database, since orders are
added to it) and the pipeline's own handlers (ingest, transform, load, loaded
once as a warm Lambda container keeps them, against a moto server) build the
warehouse from it (not timed). Then, ``--repeat`` times each, in turn: an idle
cycle (nothing changed at the source) and a one-order cycle (one sales order
booked with its transaction and payment, as the simulator books it). Each
handler call is timed as Lambda would bill it, and the medians are printed (then
the same of CPU time, which a busy machine disturbs less).
At scale 1 the fixed costs of a run dominate: this is what a five-minute
schedule pays on almost every invocation.

Usage: ``python -m benchmarks.bench_cycle [--scale 1] [--repeat 5] [--reuse]``.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

from benchmarks.bench_ingest import generate_source
from benchmarks.common import bench_environment, local_stack, options, parse


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    parser = options("bench_cycle", __doc__, scale=1.0)
    parser.add_argument("--repeat", type=int, default=5,
                        help="idle and one-order cycles measured, each (default 5)")
    return parse(parser, argv)


def time_handlers(pipeline: Any) -> dict[str, float]:
    """Wrap each of the pipeline's handlers to add its seconds to the dict returned.

    Only the handlers are timed, as Lambda bills them: the runner's own listing of the
    manifests to deliver (what S3's notification does in AWS) is not handler time.
    Beside each handler's wall time (``<name>``) its CPU time (``<name> cpu``): this
    process's, so moto's too (it serves S3 from a thread here), never PostgreSQL's;
    steadier than wall time on a busy machine.
    """
    seconds: dict[str, float] = {}

    def timed(name: str, handler: Any) -> Any:
        def call(event: Any, context: Any) -> Any:
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return handler(event, context)
            finally:
                seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - started
                seconds[f"{name} cpu"] = (seconds.get(f"{name} cpu", 0.0)
                                          + time.process_time() - cpu)
        return call

    pipeline.handlers = {name: timed(name, handler) for name, handler in pipeline.handlers.items()}
    return seconds


def timed_cycle(pipeline: Any, seconds: dict[str, float]) -> dict[str, float]:
    """Run ingest, transform of each new manifest, and load; return each stage's handler seconds.

    ``seconds`` is what :func:`time_handlers` fills.
    """
    seconds.clear()
    pipeline.ingest()
    pipeline.deliver_manifest_events()
    pipeline.load()
    cycle: dict[str, float] = {}
    for suffix in ("", " cpu"):
        stages = {stage + suffix: seconds.get(stage + suffix, 0.0)
                  for stage in ("ingest", "transform", "load")}
        cycle.update(stages, **{"total" + suffix: sum(stages.values())})
    return cycle


def book_one_order(postgres: Any, source: str) -> None:
    """Book one sales order a minute after the source's latest change."""
    from totes_local import simulator

    conn = postgres.connect(source)
    try:
        simulator.new_sales_order(conn, simulator.latest_change(conn) + timedelta(minutes=1))
    finally:
        conn.close()


def measure(postgres: Any, endpoint: str, source: str, repeat: int
            ) -> dict[str, list[dict[str, float]]]:
    """Build the warehouse, then time ``repeat`` idle and one-order cycles, alternately."""
    from totes_local import stack
    from totes_local.runner import LocalPipeline

    env, warehouse = bench_environment(endpoint, "bench-cycle",
                                       INGEST_MAX_ROWS_PER_RUN=str(10 ** 9))
    postgres.recreate_database(warehouse)
    cycles: dict[str, list[dict[str, float]]] = {"idle": [], "one order": []}
    with stack.environment(env):
        stack.provision({env["TOTESYS_SECRET_ID"]: postgres.secret(source),
                         env["WAREHOUSE_SECRET_ID"]: postgres.secret(warehouse)},
                        buckets=(env["INGEST_BUCKET"], env["PROCESSED_BUCKET"]))
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # EMF lines
            pipeline = LocalPipeline(env["INGEST_BUCKET"])
            pipeline.cycle()  # the first load, and every import: the container is warm after it
            seconds = time_handlers(pipeline)
            for _ in range(repeat):
                cycles["idle"].append(timed_cycle(pipeline, seconds))
                book_one_order(postgres, source)
                cycles["one order"].append(timed_cycle(pipeline, seconds))
    return cycles


def main(argv: list[str] | None = None) -> int:
    """Measure the warm idle and one-order cycles; print each stage's median handler time."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with local_stack(args.data_dir) as (postgres, endpoint):
        source, rows = generate_source(postgres, args.scale, args.seed, args.reuse, "bench_cycle")
        cycles = measure(postgres, endpoint, source, args.repeat)
    print(f"warm cycles on a scale {args.scale:g} source ({rows:,} rows), median of "
          f"{args.repeat} each, seconds of handler time", flush=True)
    print(f"{'cycle':<14} {'ingest':>8} {'transform':>10} {'load':>8} {'total':>8}", flush=True)
    for suffix in ("", " cpu"):
        for name, runs in cycles.items():
            medians = {stage: statistics.median(run[stage + suffix] for run in runs)
                       for stage in ("ingest", "transform", "load", "total")}
            print(f"{name + suffix:<14} {medians['ingest']:>8.3f} {medians['transform']:>10.3f} "
                  f"{medians['load']:>8.3f} {medians['total']:>8.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
