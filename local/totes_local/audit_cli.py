"""``totes audit``: the deployed audit's comparison, run locally, printed as a table.

By default it audits the demo's databases (the embedded server in ``.demo/pg``)
with the demo's copy of the ingestion bucket (``.demo/s3``) as the record of what
was captured; ``--dsn-source``/``--dsn-warehouse`` point it at any two servers and
``--ingest-bucket`` at a real bucket (through the usual AWS environment). The
exit status is 0 when the audit is clean and 1 when it found mismatches, so a
script can act on it. :mod:`totes.audit` (and pandas with it, seconds to import) is
imported when an audit runs: the ``totes`` command imports this module, and its
other subcommands start without it.
"""
import argparse
from pathlib import Path
from typing import Any, Mapping

from totes_local import dsn, stack

DEFAULT_DIR = Path(".demo")
MISMATCH_STATUS = 1


class AuditSetupError(Exception):
    """The audit has nothing to read its capture point from; the message says what to do."""


_COLUMNS = (("source_rows", "source"), ("warehouse_rows", "warehouse"), ("missing", "missing"),
            ("extra", "extra"), ("different", "different"), ("in_flight", "in flight"),
            ("retained", "retained"))


#: how to read the table, under it.
NOTES = (
    "  fact_*_current: the views the facts are compared as, the latest version of each order or",
    "    payment with deleted ones left out; the fact tables themselves keep every version.",
    "  in flight: changed at the source after the newest loaded capture point; the next runs",
    "    carry them (not a mismatch).",
    "  retained: dimension rows whose source row is gone, kept because facts point at them, and",
    "    dim_date rows no fact uses any more (by design, not a mismatch).",
)
#: the name a table's row has in the table: facts are compared as their ``*_current`` views.
NAME_WIDTH = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``totes audit``."""
    parser.add_argument("--dsn-source", help="postgresql://… of totesys (default: the demo's)")
    parser.add_argument("--dsn-warehouse",
                        help="postgresql://… of the warehouse (default: the demo's)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--ingest-bucket",
                       help="read manifests and key sweeps from this S3 bucket")
    where.add_argument("--ingest-dir", type=Path,
                       help="read them from a local copy of the ingestion bucket "
                       f"(default {DEFAULT_DIR / 's3' / stack.INGEST_BUCKET})")
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="the demo's directory, for the defaults (default .demo)")


def summary_line(report: Mapping[str, Any]) -> str:
    """One line: do the warehouse (and the lake) match the source? (``report`` as returned)."""
    from totes import audit

    tables = report["tables"]
    lake = report.get("lake") or {"status": audit.LAKE_NOT_CONFIGURED, "tables": {}}
    if report["ok"]:
        also = (f"; so do the lake's {len(lake['tables'])} tables"
                if lake["status"] == audit.LAKE_COMPARED else "")
        return (f"audit: clean - all {len(tables)} warehouse tables match the source "
                f"({report['in_flight']:,} row(s) in flight, {report['seconds']:.1f} s){also}")
    named = [*tables.items(), *((f"lake.{name}", table) for name, table in lake["tables"].items())]
    wrong = [f"{name} ({table['missing']} missing, {table['extra']} extra, "
             f"{table['different']} different; e.g. {', '.join(map(str, table['examples']))})"
             for name, table in named
             if table["missing"] or table["extra"] or table["different"]]
    return f"audit: {report['mismatches']:,} MISMATCH(ES) in " + "; ".join(wrong)


def render(report: Mapping[str, Any]) -> list[str]:
    """The report as lines of a table a person can read, then the summary line."""
    lines = [f"audit of the warehouse against the source at {report['compared_at']}",
             f"  capture point (newest loaded manifest): {report['capture_point'] or 'none yet'}",
             "", f"  {'warehouse table or view':<{NAME_WIDTH}}"
             + "".join(f"{title:>11}" for _, title in _COLUMNS)]
    for name, table in report["tables"].items():
        cells = "".join(f"{table[key]:>11,}" for key, _ in _COLUMNS)
        note = "" if table["compared"] else "  (not compared: not captured yet)"
        shown = f"{name}_current" if name.startswith("fact_") else name
        lines.append(f"  {shown:<{NAME_WIDTH}}{cells}{note}")
    return [*lines, "", *NOTES, "", summary_line(report)]


def _connect(url: str | None, postgres: stack.Postgres | None, dbname: str) -> Any:
    return dsn.connect(url) if url else postgres.connect(dbname)


def run(args: argparse.Namespace) -> int:
    """Audit and print (the ``totes audit`` command); exit 1 on mismatches."""
    from totes import audit

    if args.ingest_bucket:
        store: audit.ObjectStore = audit.BucketStore(args.ingest_bucket)
    else:
        copy = args.ingest_dir or args.dir / "s3" / stack.INGEST_BUCKET
        if not copy.is_dir():
            raise AuditSetupError(f"{copy} is not a copy of the ingestion bucket: run make demo "
                                  "first, or give --ingest-dir or --ingest-bucket")
        store = audit.DirectoryStore(copy)
    postgres = None
    if not (args.dsn_source and args.dsn_warehouse):
        postgres = stack.start_postgres(args.dir / "pg")
    source = _connect(args.dsn_source, postgres, "totesys")
    try:
        warehouse = _connect(args.dsn_warehouse, postgres, "warehouse")
        try:
            report = audit.audit_databases(source, warehouse, store).to_json()
        finally:
            warehouse.close()
    finally:
        source.close()
    print("\n".join(render(report)))
    return 0 if report["ok"] else MISMATCH_STATUS
