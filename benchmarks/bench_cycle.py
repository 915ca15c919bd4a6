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

The moto server runs in a process of its own (``--moto process``, the default), so
the CPU time printed is split: the handlers' own (this process: the pipeline's code,
boto3's client side, pg8000) and the S3 emulation's (the moto process, which AWS
does not bill). The S3 requests each stage made are counted too. ``--moto thread``
serves S3 from a thread of this process instead, as the earlier measurements did:
its CPU time is then the handlers' and moto's together.

Usage: ``python -m benchmarks.bench_cycle [--scale 1] [--repeat 5] [--moto process|thread]
[--reuse]``.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from datetime import timedelta
from typing import Any, Iterator

from benchmarks.bench_ingest import generate_source
from benchmarks.common import (bench_environment, moto_process, moto_server, options, parse,
                               postgres_server)

STAGES = ("ingest", "transform", "load")
#: what each stage's figures are: handler wall time, this process's CPU time, the moto
#: process's CPU time (zero when moto serves from a thread here) and S3 requests made.
MEASURES = {"": "s", " cpu": "s", " moto cpu": "s", " requests": "n"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    parser = options("bench_cycle", __doc__, scale=1.0)
    parser.add_argument("--repeat", type=int, default=5,
                        help="idle and one-order cycles measured, each (default 5)")
    parser.add_argument("--moto", choices=("process", "thread"), default="process",
                        help="serve S3 from a process of its own, whose CPU is counted apart "
                        "(default), or from a thread of this one")
    return parse(parser, argv)


def time_handlers(pipeline: Any, moto_pid: int | None) -> dict[str, float]:
    """Wrap each of the pipeline's handlers to add its measures to the dict returned.

    Only the handlers are timed, as Lambda bills them: the runner's own listing of the
    manifests to deliver (what S3's notification does in AWS) is not handler time.
    Beside each handler's wall time (``<name>``): its CPU time (``<name> cpu``, this
    process's, never PostgreSQL's; moto's too when it serves from a thread here),
    the moto process's CPU time while it ran (``<name> moto cpu``, when ``moto_pid``
    names one) and the S3 requests it sent (``<name> requests``, counted as botocore
    sends them, background writes included).
    """
    import psutil

    from totes import storage

    seconds: dict[str, float] = {}
    moto = psutil.Process(moto_pid) if moto_pid else None
    requests = [0]

    def count(**_: Any) -> None:
        requests[0] += 1

    storage.s3_client().meta.events.register("before-send.s3", count)

    def moto_cpu() -> float:
        if moto is None:
            return 0.0
        times = moto.cpu_times()
        return float(times.user + times.system)

    def timed(name: str, handler: Any) -> Any:
        def call(event: Any, context: Any) -> Any:
            started, cpu, served, sent = (time.perf_counter(), time.process_time(), moto_cpu(),
                                          requests[0])
            try:
                return handler(event, context)
            finally:
                for measure, value in ((name, time.perf_counter() - started),
                                       (f"{name} cpu", time.process_time() - cpu),
                                       (f"{name} moto cpu", moto_cpu() - served),
                                       (f"{name} requests", requests[0] - sent)):
                    seconds[measure] = seconds.get(measure, 0.0) + value
        return call

    pipeline.handlers = {name: timed(name, handler) for name, handler in pipeline.handlers.items()}
    return seconds


def timed_cycle(pipeline: Any, seconds: dict[str, float]) -> dict[str, float]:
    """Run ingest, transform of each new manifest, and load; return each stage's measures.

    ``seconds`` is what :func:`time_handlers` fills; each measure gets a ``total`` too.
    """
    seconds.clear()
    pipeline.ingest()
    pipeline.deliver_manifest_events()
    pipeline.load()
    cycle: dict[str, float] = {}
    for suffix in MEASURES:
        stages = {stage + suffix: seconds.get(stage + suffix, 0.0) for stage in STAGES}
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


def measure(postgres: Any, endpoint: str, source: str, repeat: int, moto_pid: int | None
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
            seconds = time_handlers(pipeline, moto_pid)
            for _ in range(repeat):
                cycles["idle"].append(timed_cycle(pipeline, seconds))
                book_one_order(postgres, source)
                cycles["one order"].append(timed_cycle(pipeline, seconds))
    return cycles


@contextlib.contextmanager
def s3_server(where: str) -> Iterator[tuple[str, int | None]]:
    """A moto server in a process of its own or in a thread here; yield endpoint and pid."""
    if where == "process":
        with moto_process() as served:
            yield served
    else:
        with moto_server() as endpoint:
            yield endpoint, None


def main(argv: list[str] | None = None) -> int:
    """Measure the warm idle and one-order cycles; print each stage's median measures."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with postgres_server(args.data_dir) as postgres, s3_server(args.moto) as (endpoint, pid):
        source, rows = generate_source(postgres, args.scale, args.seed, args.reuse, "bench_cycle")
        cycles = measure(postgres, endpoint, source, args.repeat, pid)
    cpu = ("CPU seconds of this process (cpu) and of the moto process (moto cpu)" if pid
           else "CPU seconds of this process, moto's thread included (cpu)")
    print(f"warm cycles on a scale {args.scale:g} source ({rows:,} rows), median of "
          f"{args.repeat} each: seconds of handler time, {cpu}, S3 requests", flush=True)
    print(f"{'cycle':<24} {'ingest':>8} {'transform':>10} {'load':>8} {'total':>8}", flush=True)
    for suffix, unit in MEASURES.items():
        if suffix == " moto cpu" and pid is None:
            continue
        for name, runs in cycles.items():
            medians = {stage: statistics.median(run[stage + suffix] for run in runs)
                       for stage in (*STAGES, "total")}
            digits = 3 if unit == "s" else 0
            print(f"{name + suffix:<24}" + "".join(
                f" {medians[stage]:>{width}.{digits}f}"
                for stage, width in zip((*STAGES, "total"), (8, 10, 8, 8))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
