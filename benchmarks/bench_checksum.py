"""Benchmark what checking a listed object's SHA-256 adds to reading it, alone.

The same objects (``--objects`` JSON Lines objects of ``--mb`` MB each, in an
in-process moto S3) are read as transform reads ingest files (lines, streamed)
and as the load reads Parquet (spooled to a temporary file), with the manifest's
SHA-256 and without it, in alternated pairs after one warm-up of each. Medians of
wall and CPU seconds are printed with the median pairwise ratio. CPU time
includes moto serving the bytes in this process, in both cases.

Usage: ``.venv/bin/python -m benchmarks.bench_checksum [--objects 12 --mb 8 --pairs 5]``.
"""
import argparse
import os
import statistics
import sys
import time
from typing import Callable

#: one ingest-like line: the hash's cost depends only on the bytes, not on what they say.
LINE = (b'{"sales_order_id":123456,"created_at":"2024-11-15T14:20:09.123","units_sold":42,'
        b'"unit_price":2.67,"agreed_payment_date":"2024-11-21"}\n')
BUCKET = "bench-checksum"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    parser = argparse.ArgumentParser(prog="bench_checksum", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=12, help="objects read (default 12)")
    parser.add_argument("--mb", type=int, default=8, help="MB per object (default 8)")
    parser.add_argument("--pairs", type=int, default=5, help="alternated pairs (default 5)")
    return parser.parse_args(argv)


def measure(read: Callable[[bool], None], pairs: int) -> dict[bool, list[tuple[float, float]]]:
    """Wall and CPU seconds of ``read(checked)``, checked then unchecked, ``pairs`` times."""
    read(True)
    read(False)
    seconds: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(pairs):
        for checked in (True, False):
            wall, cpu = time.perf_counter(), time.process_time()
            read(checked)
            seconds[checked].append((time.perf_counter() - wall, time.process_time() - cpu))
    return seconds


def main(argv: list[str]) -> int:
    """Write the objects, read them both ways, print the medians and ratios."""
    args = parse_args(argv)
    for name, value in {"AWS_DEFAULT_REGION": "eu-west-2", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        os.environ.setdefault(name, value)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    from moto import mock_aws

    from totes import storage

    with mock_aws():
        storage.s3_client().create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
        body = LINE * ((args.mb << 20) // len(LINE))
        objects = {f"o/{n}.jsonl": storage.put_new_object_on(None, BUCKET, f"o/{n}.jsonl", body,
                                                             "application/x-ndjson")
                   for n in range(args.objects)}

        def lines(checked: bool) -> None:
            for key, sha256 in objects.items():
                stream = storage.open_stream(BUCKET, key, sha256 if checked else None)
                for _ in stream.iter_lines(chunk_size=1 << 20):
                    pass

        def spooled(checked: bool) -> None:
            for key, sha256 in objects.items():
                storage.spooled(BUCKET, key, sha256 if checked else None).close()

        total = len(body) * len(objects) / 2**20
        for name, read in (("lines (transform)", lines), ("spooled (load)", spooled)):
            seconds = measure(read, args.pairs)
            for index, clock in ((0, "wall"), (1, "cpu")):
                checked = [pair[index] for pair in seconds[True]]
                unchecked = [pair[index] for pair in seconds[False]]
                ratios = [a / b for a, b in zip(checked, unchecked)]
                print(f"{name:<18} {clock:<4} {total:.0f} MB: checked "
                      f"{statistics.median(checked):.3f} s, unchecked "
                      f"{statistics.median(unchecked):.3f} s, median pairwise ratio "
                      f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
