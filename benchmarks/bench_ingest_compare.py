"""Compare ingest with dlt and with a raw COPY, on the same rows of one source, in one run.

One ``totesys`` is generated (not timed; the same database ``bench_ingest`` uses,
so ``--reuse`` shares it), then three readers take every row of the 11 tables,
each in a freshly spawned interpreter whose peak RSS (``VmHWM``) is its own:

ours
    ``totes.ingest.run_ingest()`` exactly as the Lambda calls it (settings from the
    environment), as a first run against an empty bucket on a moto server: all
    rows, written as the pipeline writes them, manifest included.
dlt
    dlt's ``sql_database`` source with ``backend="pyarrow"`` over SQLAlchemy and
    pg8000 (``postgresql+pg8000://``), run through ``dlt.pipeline(...).extract``
    only: rows read in ``chunk_size`` batches into Arrow tables and written as
    Parquet files in the pipeline's local working folder (no normalize, no load,
    no destination). Reflection of the 11 tables is timed, it is part of the work.
raw COPY
    ``COPY (SELECT <columns>) TO STDOUT (FORMAT csv)`` of every table through
    pg8000, in one ``REPEATABLE READ READ ONLY`` transaction, into a sink that only
    counts bytes: the floor for getting these rows out of PostgreSQL in Python.

dlt and COPY read exactly the columns of the source contract
(``totes.source.SOURCE_COLUMNS``), the columns ingest selects. Every reader must
return the same rows per table, or the benchmark fails. Before the timed runs one
untimed COPY warms the server's cache, so no reader pays for a cold start that
the next one does not. The ratios printed are of rows/s: above 1 means ours is faster.

Each reader's line also gives the CPU seconds spent on it by its own process
(imports included), by the PostgreSQL server (the postmaster's live and reaped
backends, from ``/proc``) and by moto (this process, which only waits otherwise):
on a shared machine wall times move with the load, CPU times much less.
``--rounds N`` repeats ours and the raw COPY alternately N times (dlt, five times
slower, runs in the first round only) and prints the medians and the median of the
pairwise ratios of their times.

Usage: ``python -m benchmarks.bench_ingest_compare [--scale 1] [--reuse] [--rounds 1]
[--chunk-rows 50000] [--dlt-chunk-size 50000]``. Needs ``requirements-bench.txt``
(``make bench`` installs it).
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from benchmarks.bench_ingest import generate_source, ingest_environment, measure_ingest
from benchmarks.common import (MB, REPO, current_rss, local_stack, options, parse, peak_rss,
                               run_in_fresh_process)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Read the benchmark's options."""
    parser = options("bench_ingest_compare", __doc__, scale=1.0, ingest=True)
    parser.add_argument("--dlt-chunk-size", type=int, default=50_000,
                        help="dlt's chunk_size, rows per Arrow batch (default 50000, dlt's own)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds of ours and raw COPY, alternated (default 1; dlt runs in "
                             "the first only)")
    return parse(parser, argv)


def own_cpu() -> float:
    """Return the CPU seconds (user and system) this process has used so far."""
    times = os.times()
    return times.user + times.system


def server_cpu(postgres: Any) -> float:
    """Return the CPU seconds the PostgreSQL server has used: postmaster, live and reaped backends.

    Read from ``/proc`` through psutil; a backend that exits between the two reads is
    counted in neither, which the differences the benchmark takes absorb (its own
    readers' backends live until their reader's process ends, and are reaped then).
    """
    import psutil

    pid = int(Path(postgres.socket_dir, "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    times = postmaster.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in postmaster.children():
        try:
            child_times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += child_times.user + child_times.system
    return total


def with_cpu(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Call a reader and add the CPU seconds its (fresh) process used, imports included."""
    result = function(*args)
    result["cpu"] = own_cpu()
    return result


def measured(postgres: Any, function: Callable[..., dict[str, Any]],
             *args: Any) -> dict[str, Any]:
    """Run a reader in a fresh process; add its CPU, the server's and moto's over the call."""
    server, moto = server_cpu(postgres), own_cpu()
    result = run_in_fresh_process(with_cpu, function, *args)
    result.update(server_cpu=server_cpu(postgres) - server, moto_cpu=own_cpu() - moto)
    return result


def contract_select(table: str) -> str:
    """Return ``SELECT <the contract's columns> FROM <table>``, every identifier quoted."""
    from totes.db import quote_ident
    from totes.source import SOURCE_COLUMNS

    columns = ", ".join(quote_ident(column) for column in SOURCE_COLUMNS[table])
    return f"SELECT {columns} FROM {quote_ident(table)}"  # nosec B608: allow-listed names


class CountingSink:
    """A writable stream that keeps nothing: COPY's output is counted, then dropped."""

    def __init__(self) -> None:
        """Start from zero bytes."""
        self.bytes = 0

    def write(self, data: bytes) -> int:
        """Count ``data`` and discard it."""
        self.bytes += len(data)
        return len(data)


def measure_copy(secret: dict[str, Any]) -> dict[str, Any]:
    """COPY every table's contract columns as CSV into a null sink; return rows, time, peak."""
    from totes import db
    from totes.source import SOURCE_TABLES

    baseline = current_rss()
    started = time.perf_counter()
    conn = db.connect_with(secret, "benchmark", timeout=None)
    tables: dict[str, int] = {}
    sink = CountingSink()
    try:
        conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for table in SOURCE_TABLES:
            conn.run(f"COPY ({contract_select(table)}) TO STDOUT (FORMAT csv)", stream=sink)
            tables[table] = conn.row_count
        conn.run("COMMIT")
    finally:
        conn.close()
    seconds = time.perf_counter() - started
    return {"rows": sum(tables.values()), "tables": tables, "seconds": seconds,
            "baseline": baseline, "peak": peak_rss(), "bytes": sink.bytes}


def sqlalchemy_url(secret: dict[str, Any]) -> str:
    """Return the ``postgresql+pg8000://`` URL of an RDS-shaped secret (socket or TCP)."""
    from sqlalchemy.engine import URL

    host, port = str(secret["host"]), int(secret.get("port") or 5432)
    query = {}
    if host.startswith("/"):
        query["unix_sock"] = os.path.join(host, f".s.PGSQL.{port}")
        host_part: dict[str, Any] = {}
    else:
        host_part = {"host": host, "port": port}
    url = URL.create("postgresql+pg8000", username=secret["username"],
                     password=secret.get("password") or None, database=secret["dbname"],
                     query=query, **host_part)
    return url.render_as_string(hide_password=False)


def keep_contract_columns(table: Any) -> None:
    """Drop every reflected column the source contract does not read (a dlt table adapter)."""
    from totes.source import SOURCE_COLUMNS

    wanted = SOURCE_COLUMNS[table.name]
    for column in list(table.columns):
        if column.name not in wanted:
            table._columns.remove(column)


def measure_dlt(url: str, work_dir: str, chunk_size: int) -> dict[str, Any]:
    """Extract the 11 tables with dlt's ``sql_database`` (pyarrow backend); return the numbers.

    Only ``pipeline.extract`` runs: rows are read and written as Parquet files under
    ``work_dir``. Row counts come from dlt's own extract metrics.
    """
    os.environ.update({"RUNTIME__DLTHUB_TELEMETRY": "false", "DLT_DATA_DIR": work_dir})
    import dlt
    from dlt.sources.sql_database import sql_database

    from totes.source import SOURCE_TABLES

    baseline = current_rss()
    started = time.perf_counter()
    source = sql_database(url, table_names=list(SOURCE_TABLES), backend="pyarrow",
                          chunk_size=chunk_size, table_adapter_callback=keep_contract_columns)
    pipeline = dlt.pipeline(pipeline_name="bench_ingest_compare", pipelines_dir=work_dir)
    setup = time.perf_counter() - started
    info = pipeline.extract(source)
    seconds = time.perf_counter() - started
    tables = {table: 0 for table in SOURCE_TABLES}
    for metrics in info.metrics.values():
        for step in metrics:
            for table, table_metrics in step["table_metrics"].items():
                if table in tables:
                    tables[table] += table_metrics.items_count
    written = sum(path.stat().st_size for path in Path(work_dir).rglob("*.parquet"))
    return {"rows": sum(tables.values()), "tables": tables, "seconds": seconds,
            "baseline": baseline, "peak": peak_rss(), "bytes": written,
            "version": dlt.__version__, "setup": setup}


def data_bytes(bucket: str) -> int:
    """Return the bytes of the data objects in ``bucket`` (manifests and state excluded)."""
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(item["Size"] for page in pages for item in page.get("Contents", ())
               if item["Key"].endswith(".jsonl"))


def check_same_rows(results: dict[str, dict[str, Any]]) -> None:
    """Fail unless every reader returned the same rows for every table."""
    expected = results["ours"]["tables"]
    for reader, result in results.items():
        if result["tables"] != expected:
            differ = {table: (rows, result["tables"].get(table))
                      for table, rows in expected.items() if result["tables"].get(table) != rows}
            raise RuntimeError(f"{reader} read other rows than ours (ours, theirs): {differ}")


def report(results: dict[str, dict[str, Any]], scale: float) -> None:
    """Print one line per reader (time, rate, memory, CPU), then ingest's ratios to the others."""
    labels = {
        "ours": "ours: run_ingest, first full run",
        "dlt": f"dlt {results['dlt']['version']} sql_database pyarrow, extract"
        if "dlt" in results else "dlt",
        "copy": "raw COPY (FORMAT csv), null sink",
    }
    print(f"{'scale':>7} {'reader':<44} {'rows':>10} {'seconds':>9} {'rows/s':>10} "
          f"{'peak MB':>9} {'out MB':>8} {'CPU own':>8} {'server':>7} {'moto':>6}", flush=True)
    for reader, result in results.items():
        result["rate"] = result["rows"] / result["seconds"]
        print(f"{scale:>7g} {labels[reader]:<44} {result['rows']:>10,} "
              f"{result['seconds']:>9.2f} {result['rate']:>10,.0f} "
              f"{result['peak'] / MB:>9.1f} {result['bytes'] / MB:>8.1f} "
              f"{result['cpu']:>8.2f} {result['server_cpu']:>7.2f} {result['moto_cpu']:>6.2f}",
              flush=True)
    if "dlt" in results:
        dlt_run = results["dlt"]
        print(f"{'':>7} dlt's time includes {dlt_run['setup']:.2f} s of reflecting the tables "
              f"and creating the pipeline before the first row; without it: "
              f"{dlt_run['rows'] / (dlt_run['seconds'] - dlt_run['setup']):,.0f} rows/s",
              flush=True)
    ours = results["ours"]["rate"]
    for reader, name in (("dlt", "dlt"), ("copy", "raw COPY")):
        if reader not in results:
            continue
        ratio = ours / results[reader]["rate"]
        verdict = ("ours is faster" if ratio >= 1
                   else f"{name} is {1 / ratio:.1f} times faster")
        print(f"{'':>7} ours / {name}: {ratio:.2f} ({verdict})", flush=True)


def report_rounds(rounds: list[dict[str, dict[str, Any]]]) -> None:
    """Print the medians of ours and raw COPY over alternated rounds, and of their time ratios."""
    print(f"{'':>7} over {len(rounds)} alternated rounds, medians:", flush=True)
    for reader, name in (("ours", "ours"), ("copy", "raw COPY")):
        values = {field: statistics.median(run[reader][field] for run in rounds)
                  for field in ("seconds", "cpu", "server_cpu", "moto_cpu", "peak")}
        print(f"{'':>7} {name}: {values['seconds']:.2f} s, CPU own {values['cpu']:.2f} s, "
              f"server {values['server_cpu']:.2f} s, moto {values['moto_cpu']:.2f} s, "
              f"peak {values['peak'] / MB:.1f} MB", flush=True)
    times = statistics.median(run["ours"]["seconds"] / run["copy"]["seconds"] for run in rounds)
    print(f"{'':>7} ours' time / raw COPY's time, median of the rounds' ratios: {times:.2f} "
          "(2 or less aimed at)", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Generate one source, read it with all three readers, print their numbers and ratios."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("dlt") is None:
        print("dlt is not installed: `make bench` installs it, or "
              ".venv/bin/pip install -c requirements-dev.txt -r requirements-bench.txt",
              file=sys.stderr, flush=True)
        return 1
    work_dir = REPO / ".bench" / "dlt" / uuid.uuid4().hex[:8]
    try:
        with local_stack(args.data_dir) as (postgres, endpoint):
            name, source_rows = generate_source(postgres, args.scale, args.seed, args.reuse)
            secret = postgres.secret(name)
            print(f"ingest compared on the same {source_rows:,} rows (scale {args.scale:g}): "
                  f"ours with CHUNK_ROWS={args.chunk_rows}, dlt with chunk_size="
                  f"{args.dlt_chunk_size} (extract to local Parquet), raw COPY to a null sink; "
                  "each in a fresh process", flush=True)
            run_in_fresh_process(measure_copy, secret)  # warm the server's cache, untimed
            rounds = []
            for number in range(max(args.rounds, 1)):
                env = ingest_environment(postgres, endpoint, name, args.chunk_rows, source_rows)
                results = {"ours": measured(postgres, measure_ingest, env)}
                if not number:
                    results["dlt"] = measured(postgres, measure_dlt, sqlalchemy_url(secret),
                                              str(work_dir), args.dlt_chunk_size)
                results["copy"] = measured(postgres, measure_copy, secret)
                results["ours"]["bytes"] = data_bytes(env["INGEST_BUCKET"])
                check_same_rows(results)
                report(results, args.scale)
                rounds.append(results)
            if len(rounds) > 1:
                report_rounds(rounds)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
