"""Run every stage's benchmark in pipeline order (``make bench``).

Each ``bench_<stage>.py`` module exposes ``main(argv)`` with defaults sized to
show that time scales and memory does not (see each module's ``--help``); this
runs them all with those defaults and prints their measurements in turn. To
measure one stage differently, run it directly, e.g.
``.venv/bin/python -m benchmarks.bench_ingest --scale 100``.
"""
import importlib
import sys

STAGES = ("generate", "ingest", "transform", "load", "dashboard")


def main() -> int:
    """Run the benchmarks one after another and stop at the first failure."""
    for stage in STAGES:
        print(f"== benchmark: {stage} ==", flush=True)
        status = importlib.import_module(f"benchmarks.bench_{stage}").main([])
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
