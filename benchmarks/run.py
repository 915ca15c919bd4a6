"""Run every stage's benchmark in pipeline order (``make bench``).

Each ``bench_<stage>.py`` module exposes ``main(argv)`` with defaults sized to
show that time scales and memory does not (see each module's ``--help``); this
runs them all with those defaults and prints their measurements in turn. To
measure one stage differently, run it directly, e.g.
``.venv/bin/python -m benchmarks.bench_ingest --scale 100``. What the stages share
(their common options, the local stack, measuring in a fresh process) is in
:mod:`benchmarks.common`.

Besides one stage each, two benchmarks measure ingest against yardsticks:
``bench_ingest_compare`` (ours, dlt's ``sql_database`` with the pyarrow backend and
a raw ``COPY ... TO STDOUT`` on the same rows, scale 1; dlt comes from
``requirements-bench.txt``, which ``make bench`` installs) and ``bench_bulk_update``
(every row of two tables restamped in one transaction, scale 10: the capture
state must stay small and the next idle run must read nothing), and ``bench_logical``
(log-based capture beside snapshot capture on the same bulk fix, scale 1, on its own
cluster with ``wal_level = logical``). ``bench_cycle`` times the handlers of a warm
idle cycle and a warm one-order cycle (ingest, transform, load) at scale 1. ``bench_publish``
publishes the ×40 backfill into the lake and checks it against the publish function's memory and
timeout in template.yaml. ``bench_checksum`` (not run here) measures, alone, what checking a
listed object's SHA-256 adds to reading it.
"""
import importlib
import sys

STAGES = ("generate", "ingest", "ingest_compare", "bulk_update", "logical", "transform", "load",
          "cycle", "dashboard", "audit", "publish")


def main() -> int:
    """Run the benchmarks one after another; fail at the end if any stage's checks failed.

    A stage whose checks fail (``bulk_update``'s bound on the manifest, say) has
    printed its numbers and says why; the later stages still run, so one failed
    check does not hide the other measurements.
    """
    failed = []
    for stage in STAGES:
        print(f"== benchmark: {stage} ==", flush=True)
        if importlib.import_module(f"benchmarks.bench_{stage}").main([]):
            failed.append(stage)
    if failed:
        print(f"== failed: {', '.join(failed)} ==", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
