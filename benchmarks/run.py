"""Run every stage's benchmark in pipeline order (``make bench``).

Each ``bench_<stage>.py`` module exposes ``main(argv)`` and prints its own
measurements (rows, seconds, rows/s, peak memory). Extra arguments are passed
to every benchmark, e.g. ``make bench ARGS="--scale 10"``.
"""
import importlib
import sys

STAGES = ("generate", "ingest", "transform", "load")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks one after another and stop at the first failure."""
    argv = sys.argv[1:] if argv is None else argv
    for stage in STAGES:
        print(f"== benchmark: {stage} ==", flush=True)
        module = importlib.import_module(f"benchmarks.bench_{stage}")
        status = module.main(argv)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
