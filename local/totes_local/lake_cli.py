"""``totes lake``: SQL on the demo's lake, with DuckDB over what pyiceberg reads.

The demo's moto server (Glue and S3) lives only while the demo runs, so at its end
the demo reads every lake table back through pyiceberg (the Glue catalog, the
current snapshot) and keeps the rows in ``.demo/lake/<table>.parquet``. ``totes
lake`` opens DuckDB with one view per table over those files, under the lake's
names: the same SQL that runs on Athena runs here (DuckDB's dialect is close to
Athena's for the star schema's queries). ``-c`` runs one statement and exits.
"""
import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from totes import lake
from totes.lake_schema import LAKE_TABLES

LAKE_FOLDER = "lake"
PROMPT = "lake> "


class LakeNotFoundError(FileNotFoundError):
    """The demo has not left a lake to query: the message says what to run."""


class LakeQueryError(Exception):
    """``-c``'s statement failed in DuckDB: reported as one line, like every ``totes`` error."""


def snapshot_lake(bucket: str, database: str, target: Path) -> dict[str, int]:
    """Read every lake table through pyiceberg into ``target/<table>.parquet``; rows per table."""
    import pyarrow.parquet as pq

    target.mkdir(parents=True, exist_ok=True)
    catalog = lake.glue_catalog(bucket)
    counts = {}
    for name in LAKE_TABLES:
        rows = catalog.load_table((database, name)).scan().to_arrow()
        pq.write_table(rows, target / f"{name}.parquet")
        counts[name] = rows.num_rows
    return counts


def connect(folder: Path) -> Any:
    """A DuckDB connection with a view per lake table kept in ``folder``."""
    import duckdb

    if not all((folder / f"{name}.parquet").is_file() for name in LAKE_TABLES):
        raise LakeNotFoundError(f"no lake in {folder}: run `make demo` first")
    connection = duckdb.connect()
    for name in LAKE_TABLES:
        connection.read_parquet(str(folder / f"{name}.parquet")).create_view(name)
    return connection


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``totes lake``."""
    parser.add_argument("--dir", type=Path, default=Path(".demo"),
                        help="the demo's directory (default .demo)")
    # dest "sql", not "command": ``totes`` keeps the subcommand's name in ``args.command``,
    # which its error lines start with ("totes lake: error: ...").
    parser.add_argument("-c", "--command", dest="sql", metavar="SQL",
                        help="run one SQL statement, print it, and exit")


def _show(connection: Any, sql: str, out: TextIO) -> None:
    result = connection.sql(sql)
    if result is not None:
        print(result, file=out)


def run(args: argparse.Namespace, stdin: TextIO | None = None, out: TextIO | None = None) -> int:
    """Run ``-c``'s statement, or read statements (ended by ``;``) until end of input."""
    import duckdb

    stdin, out = stdin or sys.stdin, out or sys.stdout
    connection = connect(args.dir / LAKE_FOLDER)
    if args.sql:
        try:
            _show(connection, args.sql, out)
        except duckdb.Error as error:
            raise LakeQueryError(str(error)) from error
        return 0
    print(f"DuckDB on the demo's lake ({', '.join(LAKE_TABLES)}); end statements with ;",
          file=out)
    statement = ""
    while True:
        if stdin.isatty():
            out.write(PROMPT if not statement else "  ...> ")
            out.flush()
        line = stdin.readline()
        if not line:
            return 0
        statement += line
        if statement.strip().endswith(";"):
            try:
                _show(connection, statement, out)
            except duckdb.Error as error:
                print(f"error: {error}", file=out)
            statement = ""
