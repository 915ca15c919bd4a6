"""``make demo``: the whole pipeline on a laptop, twice, with a summary a person can read.

Starts embedded PostgreSQL (source ``totesys`` and ``warehouse``) and a moto
server, seeds a realistic ``totesys``, runs ingest -> transform -> load the way
AWS triggers them, simulates a few hours of business (including an amended
order, a moved address and a cancelled order), runs again, prints what happened, and
ends with the audit's verdict: does the warehouse match the source? After each
cycle it publishes the lake (Iceberg tables in moto's Glue) and prints what the
lake holds. The handlers' structured logs and metrics go to ``.demo/pipeline.log``;
both buckets are copied to ``.demo/s3/`` and the lake's tables, as pyiceberg reads
them, to ``.demo/lake/`` (``totes lake``), so they can be browsed after the
in-memory moto server is gone.
"""
import argparse
import contextlib
import logging
import os
import shutil
import signal
# psql, bundled with pgserver, run with a fixed argument list and no shell.
import subprocess  # nosec B404
import time
import warnings
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import boto3

from totes import config, db, warehouse_schema
from totes_local import audit_cli, generator, lake_cli, simulator, stack
from totes_local.arguments import positive_float, whole
from totes_local.runner import CycleReport, LocalPipeline

DEFAULT_DIR = Path(".demo")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``totes demo``."""
    parser.add_argument("--scale", type=positive_float, default=1.0,
                        help="size of the generated totesys; 1 is the real database's size "
                        f"({generator.size_text(1)})")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the generator")
    parser.add_argument("--steps", type=whole(0), default=9,
                        help="20-minute business steps simulated between the two cycles")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="where the demo keeps its database, logs and bucket copies")
    parser.add_argument("--capture-mode", choices=config.CAPTURE_MODES,
                        help="how ingest finds changes (default: $CAPTURE_MODE, else snapshot); "
                             "logical restarts the demo's server with wal_level = logical")


def warehouse_counts(postgres: stack.Postgres) -> dict[str, int]:
    """Rows per warehouse table, in contract order."""
    conn = postgres.connect("warehouse")
    try:
        return {name: conn.run(f"SELECT count(*) FROM {db.quote_ident(name)}")[0][0]  # nosec B608
                for name in warehouse_schema.TABLES}
    finally:
        conn.close()


def order_history(postgres: stack.Postgres, order_id: int) -> list[list[Any]]:
    """Every version of one sales order as the warehouse keeps it, in capture order."""
    conn = postgres.connect("warehouse")
    try:
        return conn.run(
            "SELECT sales_record_id, last_updated_date, last_updated_time, units_sold, "
            "unit_price, agreed_delivery_date, is_deleted FROM fact_sales_order "
            "WHERE sales_order_id = :order_id ORDER BY sales_record_id",
            order_id=order_id)
    finally:
        conn.close()


def _business_changes(postgres: stack.Postgres, steps: int, seed: int) -> dict[str, Any]:
    """Simulate ``steps`` of business, then amend an order, move an address, cancel an order.

    The amended and the cancelled order are ones the first cycle already loaded, so
    their histories show two versions each: the cancellation's is a deletion.
    """
    conn = postgres.connect("totesys")
    try:
        order_id, cancelled = conn.run("SELECT max(sales_order_id), max(sales_order_id) - 1 "
                                       "FROM sales_order")[0]
        summary = simulator.simulate(conn, steps=steps, seed=seed)
        clock = simulator.latest_change(conn) + timedelta(minutes=1)
        # Amended twice between the cycles: log-based capture keeps both amendments,
        # snapshot capture sees only the second.
        simulator.amend_sales_order(conn, order_id, clock)
        simulator.amend_sales_order(conn, order_id, clock + timedelta(seconds=30))
        address_id = conn.run("SELECT legal_address_id FROM counterparty "
                              "ORDER BY counterparty_id LIMIT 1")[0][0]
        simulator.change_address(conn, address_id, clock + timedelta(minutes=1))
        simulator.cancel_order(conn, simulator.SALES, cancelled)
        summary["amended_order"] = order_id
        summary["moved_address"] = address_id
        summary["cancelled_order"] = cancelled
        return summary
    finally:
        conn.close()


@contextlib.contextmanager
def _pipeline_output(log: Path) -> Iterator[None]:
    """Send the handlers' JSON logs and EMF metrics to ``log``, keeping the terminal readable.

    Powertools binds its handler to the stdout of import time, so its stream is
    switched explicitly; EMF metrics are printed, so stdout is redirected as well.
    """
    service_logger = logging.getLogger(os.environ.get("POWERTOOLS_SERVICE_NAME", "totes"))
    handlers = [handler for handler in service_logger.handlers
                if isinstance(handler, logging.StreamHandler)]
    with log.open("a") as sink, contextlib.redirect_stdout(sink), warnings.catch_warnings():
        # A handler interrupted by Ctrl-C flushes no metrics, and Powertools warns so.
        warnings.filterwarnings("ignore", message="No application metrics to publish")
        streams = [handler.stream for handler in handlers]
        for handler in handlers:
            handler.stream = sink
        try:
            yield
        finally:
            for handler, stream in zip(handlers, streams):
                handler.stream = stream


def _mirror_buckets(target: Path, buckets: tuple[str, ...]) -> dict[str, Counter]:
    """Copy every object of ``buckets`` under ``target``; count the objects per top-level folder."""
    s3 = boto3.client("s3")
    folders: dict[str, Counter] = {}
    for bucket in buckets:
        folders[bucket] = Counter()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", ()):
                path = target / bucket / item["Key"]
                path.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(path))
                folders[bucket][item["Key"].split("/", 1)[0]] += 1
    return folders


def _print_files(folders: dict[str, Counter]) -> None:
    print("\n  files written (objects per folder):")
    for bucket, counts in folders.items():
        listed = ", ".join(f"{folder} {n}" for folder, n in sorted(counts.items()))
        print(f"    {bucket}: {listed}")


def _print_cycle(title: str, report: CycleReport) -> None:
    rows = report.ingest.get("rows", {})
    changed = {table: count for table, count in rows.items() if count}
    print(f"\n{title}: {report.seconds:.1f} s end to end "
          f"({len(report.transforms)} manifest(s) transformed, "
          f"{report.load.get('manifests_loaded', report.load.get('loaded', '?'))} loaded)")
    print("  ingested rows: " + (", ".join(f"{t} {n}" for t, n in changed.items()) or "none"))


def _print_counts(before: dict[str, int], after: dict[str, int]) -> None:
    print(f"\n  {'warehouse table':<24}{'after cycle 1':>15}{'after cycle 2':>15}{'change':>9}")
    for table, count in after.items():
        delta = count - before.get(table, 0)
        print(f"  {table:<24}{before.get(table, 0):>15,}{count:>15,}{delta:>+9,}")


def _print_lake(counts: dict[str, int], published: dict[str, Any]) -> None:
    print(f"\n  the lake (Iceberg tables in Glue, {stack.LAKE_DATABASE}), as pyiceberg reads it:")
    print(f"  {'lake table':<30}{'rows':>10}{'appended by cycle 2':>22}")
    for name, rows in counts.items():
        print(f"  {name:<30}{rows:>10,}{published['rows_appended'][name]:>+22,}")


def _print_history(what: str, order_id: int, history: list[list[Any]]) -> None:
    print(f"\n  history of {what} sales order {order_id} in fact_sales_order:")
    print(f"    {'record':>7}  {'last updated':<24}{'units':>7}{'unit price':>12}  delivery")
    for record, day, clock, units, price, delivery, deleted in history:
        updated = f"{day} {clock.isoformat(timespec='milliseconds')}"
        note = "  (deleted)" if deleted else ""
        print(f"    {record:>7}  {updated:<24}{units:>7}{price:>12}  {delivery}{note}")


def run(args: argparse.Namespace) -> int:
    """Seed, cycle, simulate, cycle, summarise (the ``totes demo`` command)."""
    # Settings first: a mistake is one line before anything is started or seeded.
    args.capture_mode = args.capture_mode or config.capture_mode()
    root: Path = args.dir
    shutil.rmtree(root / "s3", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    log = root / "pipeline.log"
    log.write_text("")
    postgres = stack.start_postgres(root / "pg")
    if args.capture_mode == "logical":
        postgres = stack.with_logical_decoding(postgres)
    stack.drop_slots(postgres, "totesys")  # a previous logical demo's slot pins the database
    for name in ("totesys", "warehouse"):
        postgres.recreate_database(name)
    server, endpoint = stack.start_moto()
    try:
        # Sweep for deletes on every run: the demo's second cycle is seconds after the first.
        with stack.environment({**stack.aws_environment(endpoint),
                                **stack.pipeline_environment(),
                                "INGEST_DELETE_SWEEP_MINUTES": "0",
                                "CAPTURE_MODE": args.capture_mode}):
            stack.provision({stack.TOTESYS_SECRET: postgres.secret("totesys"),
                             stack.WAREHOUSE_SECRET: postgres.secret("warehouse")})
            started = time.perf_counter()
            conn = postgres.connect("totesys")
            try:
                seeded = generator.seed_new(conn, scale=args.scale, seed=args.seed)
            finally:
                conn.close()
            print(f"seeded totesys: {sum(seeded.values()):,} rows in 11 tables "
                  f"({time.perf_counter() - started:.1f} s); capture mode {args.capture_mode}")
            pipeline = LocalPipeline(stack.INGEST_BUCKET)
            with _pipeline_output(log):
                first = pipeline.cycle()
                pipeline.publish()
            _print_cycle("cycle 1 (first run: everything)", first)
            before = warehouse_counts(postgres)
            changes = _business_changes(postgres, args.steps, args.seed)
            print(f"\nsimulated {changes['steps']} steps of business "
                  f"({changes['clock_start']:%Y-%m-%d %H:%M} -> "
                  f"{changes['clock_end']:%Y-%m-%d %H:%M}): "
                  + ", ".join(f"{kind} {n}" for kind, n in changes["counts"].items() if n)
                  + f"; amended sales order {changes['amended_order']} twice, "
                  f"moved address {changes['moved_address']}, "
                  f"cancelled (deleted) sales order {changes['cancelled_order']}")
            with _pipeline_output(log):
                second = pipeline.cycle()
                published = pipeline.publish()
            _print_cycle("cycle 2 (incremental)", second)
            _print_counts(before, warehouse_counts(postgres))
            for what in ("amended", "cancelled"):
                order_id = changes[f"{what}_order"]
                _print_history(what, order_id, order_history(postgres, order_id))
            folders = _mirror_buckets(root / "s3", (stack.INGEST_BUCKET, stack.PROCESSED_BUCKET))
            _print_files(folders)
            _print_lake(lake_cli.snapshot_lake(stack.LAKE_BUCKET, stack.LAKE_DATABASE,
                                               root / lake_cli.LAKE_FOLDER), published)
            with _pipeline_output(log):
                audited = pipeline.audit()
            print("\n" + audit_cli.summary_line(audited))
    finally:
        server.stop()
    places = {
        "SQL prompt on the warehouse": ".venv/bin/totes sql warehouse   (or: totesys)",
        "SQL prompt on the lake": ".venv/bin/totes lake   (DuckDB)",
        "the audit, table by table": ".venv/bin/totes audit",
        "dashboard": "make dashboard",
        "copies of the bucket files": f"{root / 's3'}/",
        "structured logs and metrics": str(log),
    }
    print("\nwhere to look:")
    for what, where in places.items():
        print(f"  {what + ':':<30}{where}")
    return 0


def add_sql_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``totes sql``."""
    parser.add_argument("database", nargs="?", default="warehouse",
                        choices=("warehouse", "totesys"),
                        help="which demo database to open (default warehouse)")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="the demo's directory (default .demo)")


class DemoNotFoundError(RuntimeError):
    """The command needs the demo's databases and ``make demo`` has not made them yet."""


def demo_server(data_dir: Path, dbname: str) -> stack.Postgres:
    """The demo's server, started if needed, once ``dbname`` is known to exist on it.

    Refuses before starting anything when the folder holds no server; when the
    database is missing the server is stopped again at exit (this process is its
    only user), so a mistake never leaves a server behind.
    """
    if not (data_dir / "PG_VERSION").exists():
        raise DemoNotFoundError(f"no demo databases in {data_dir}: run make demo first")
    postgres = stack.start_postgres(data_dir)
    conn = postgres.connect("postgres")
    try:
        found = conn.run("SELECT 1 FROM pg_database WHERE datname = :name", name=dbname)
    finally:
        conn.close()
    if not found:
        raise DemoNotFoundError(f"no {dbname} database in {data_dir}: run make demo first")
    return postgres


def open_sql_prompt(args: argparse.Namespace) -> int:
    """Run psql on a demo database as a child, and return its exit status.

    A child, not ``exec``: this process stays the server's user while psql runs
    and stops the server when it exits, unless something else still uses it.
    Ctrl-C belongs to psql (it cancels the running query) while the prompt is open.
    """
    postgres = demo_server(args.dir / "pg", args.database)
    argv = stack.psql_argv(postgres, args.database)
    previous = signal.signal(signal.SIGINT, lambda *_: None)  # reset to default in psql by exec
    try:
        return subprocess.run(argv, check=False).returncode  # nosec B603
    finally:
        signal.signal(signal.SIGINT, previous)
