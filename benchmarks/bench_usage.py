"""Count what each invocation uses of what AWS bills: S3 requests, log bytes, metrics, objects.

docs/deploy.md's "What it costs per month" multiplies these by the invocations a month.
This runs the handlers on the local stack (embedded PostgreSQL, a moto server) at the real
database's rate: idle runs, runs that capture a few new orders, an hourly key sweep, load
runs of two manifests, audits, and publishes (the lake) of quiet and changed manifests.
Every AWS call the handlers make is counted (by botocore operation), every line they write
to stdout (their logs and EMF metrics) is measured, and the distinct metrics (namespace,
name, dimensions) are counted; the lake's files too (totes.lake_io reads and writes them
through botocore). Not part of
``make bench``; run it alone: ``.venv/bin/python -m benchmarks.bench_usage``.
"""
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from typing import Any, Callable, Iterator, Sequence

from benchmarks import common

#: each measured kind of invocation, how many times it runs (averaged).
REPEATS = 3


class Usage:
    """What the invocations of each kind used, summed, and how many there were."""

    def __init__(self) -> None:
        """Start with nothing counted."""
        self.calls: dict[str, Counter[str]] = defaultdict(Counter)
        self.log_bytes: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.invocations: Counter[str] = Counter()
        self.metrics: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
        self._kind: str | None = None

    def count_call(self, operation: str) -> None:
        """Count one AWS call against the invocation running now (none: set-up, not counted)."""
        if self._kind:
            self.calls[self._kind][operation] += 1

    @contextlib.contextmanager
    def invocation(self, kind: str) -> Iterator[None]:
        """Count the calls, the time and the stdout bytes of one invocation of ``kind``."""
        with tempfile.TemporaryFile() as out, _stdout_to(out):
            self._kind = kind
            started = time.perf_counter()
            try:
                yield
            finally:
                self.seconds[kind] += time.perf_counter() - started
                self._kind = None
                sys.stdout.flush()
            out.seek(0)
            text = out.read()
        self.invocations[kind] += 1
        self.log_bytes[kind] += len(text)
        for line in text.decode().splitlines():
            self._note_metrics(line)

    def _note_metrics(self, line: str) -> None:
        """Record the metrics an EMF line publishes, one per name and set of dimensions."""
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict) or "_aws" not in record:
            return
        for directive in record["_aws"]["CloudWatchMetrics"]:
            for metric in directive["Metrics"]:
                for dimensions in directive["Dimensions"]:
                    self.metrics.add((directive["Namespace"], metric["Name"], tuple(
                        (name, str(record.get(name))) for name in dimensions)))


@contextlib.contextmanager
def _stdout_to(target: Any) -> Iterator[None]:
    """Send file descriptor 1 (where the handlers' loggers write) to ``target`` for a while."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(target.fileno(), 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Discard what the handlers write (set-up work, not measured)."""
    with open(os.devnull, "wb") as sink, _stdout_to(sink):
        yield


@contextlib.contextmanager
def counting_calls(usage: Usage) -> Iterator[None]:
    """Count every botocore API call made while inside, as ``service:Operation``."""
    import botocore.client

    original: Callable[..., Any] = botocore.client.BaseClient._make_api_call

    def counted(client: Any, operation: str, params: Any) -> Any:
        usage.count_call(f"{client.meta.service_model.service_name}:{operation}")
        return original(client, operation, params)

    botocore.client.BaseClient._make_api_call = counted  # type: ignore[method-assign]
    try:
        yield
    finally:
        botocore.client.BaseClient._make_api_call = original  # type: ignore[method-assign]


def measure(scale: float, seed: int, data_dir: Any) -> Usage:
    """Seed a source, run the first cycle, then count the invocations of each kind."""
    from totes import storage
    from totes_local import generator, simulator, stack
    from totes_local.runner import LocalPipeline, s3_object_created_event, scheduled_event

    usage = Usage()
    with common.local_stack(data_dir) as (postgres, _), \
            stack.environment(stack.pipeline_environment()):
        for name in ("totesys", "warehouse"):
            postgres.recreate_database(name)
        stack.provision({stack.TOTESYS_SECRET: postgres.secret("totesys"),
                         stack.WAREHOUSE_SECRET: postgres.secret("warehouse")})
        conn = postgres.connect("totesys")
        try:
            generator.seed_new(conn, scale=scale, seed=seed)
        finally:
            conn.close()
        pipeline = LocalPipeline(stack.INGEST_BUCKET)
        with _quiet():
            pipeline.cycle()  # the first load: everything, not what a month is made of
            pipeline.publish()  # the first publish, likewise

        def invoke(kind: str, function: str) -> None:
            with usage.invocation(kind):
                pipeline.invoke(function, scheduled_event(function))
            for key in list(storage.manifest_keys_after(pipeline.ingest_bucket,
                                                        pipeline._last_manifest)):
                with usage.invocation(kind.replace("ingest", "transform")):
                    pipeline.invoke("transform", s3_object_created_event(pipeline.ingest_bucket,
                                                                         key))
                pipeline._last_manifest = key

        with counting_calls(usage):
            for _ in range(REPEATS):
                invoke("ingest, no changes", "ingest")
                invoke("ingest, no changes", "ingest")
                invoke("load, two manifests without changes", "load")
                invoke("publish, two manifests without changes", "publish")
            for step in range(REPEATS):
                conn = postgres.connect("totesys")
                try:  # one step of the simulated business: a few orders, payments made
                    simulator.simulate(conn, steps=1, seed=seed + step)
                finally:
                    conn.close()
                invoke("ingest, with changes", "ingest")
                invoke("load, one manifest with changes", "load")
                invoke("publish, one manifest with changes", "publish")
            os.environ["INGEST_DELETE_SWEEP_MINUTES"] = "0"
            for _ in range(REPEATS):
                invoke("ingest, with a key sweep", "ingest")
            os.environ["INGEST_DELETE_SWEEP_MINUTES"] = "60"
            for _ in range(REPEATS):
                invoke("audit", "audit")
    return usage


def report(usage: Usage) -> None:
    """Print the averages per invocation of each kind, and the distinct metrics."""
    operations = sorted({operation for calls in usage.calls.values() for operation in calls})
    print("per invocation, averaged:")
    print(f"{'invocation':<40}" + "".join(f"{op.split(':')[1]:>16}" for op in operations)
          + f"{'log bytes':>12}{'seconds':>10}")
    for kind, count in usage.invocations.items():
        row = "".join(f"{usage.calls[kind][op] / count:>16.1f}" for op in operations)
        print(f"{kind:<40}{row}{usage.log_bytes[kind] / count:>12,.0f}"
              f"{usage.seconds[kind] / count:>10.2f}")
    names = Counter(name for _, name, _ in usage.metrics)
    print(f"\n{len(usage.metrics)} distinct metrics (name and dimensions):")
    for name, count in sorted(names.items()):
        print(f"  {name}: {count}")


def main(argv: Sequence[str]) -> int:
    """Measure and print; 0 unless something failed."""
    parser = common.options("bench_usage", __doc__, scale=1, reuse=False)
    args = common.parse(parser, argv)
    report(measure(args.scale, args.seed, args.data_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
