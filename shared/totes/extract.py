"""Streaming extraction of totesys tables: bounded chunks from one consistent snapshot.

Rows come through a server-side cursor (``DECLARE ... NO SCROLL CURSOR``, then
``FETCH FORWARD n``), so the function holds one batch at a time however large a
table grows. All tables are read inside one read-only REPEATABLE READ
transaction: a run's manifest then describes a single point in time, and a
sales order is never seen without the transaction committed with it.

Table and column names come from the allow-list in :mod:`totes.source` and are
quoted; the only value in the query, the lower bound, is a bound parameter.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterator

import pg8000.native

from totes.db import quote_ident
from totes.source import primary_key

VERSION_COLUMN = "last_updated"


@dataclass(frozen=True)
class Batch:
    """One fetch of rows, in the column order the database returned them."""

    columns: tuple[str, ...]
    rows: list[list[Any]]


def select_sql(table: str, incremental: bool) -> str:
    """Return the query for ``table``'s rows, oldest version first.

    With ``incremental`` the query takes the bound parameter ``:since`` and reads
    only versions at or after it. Ordering by ``last_updated`` and the primary key
    is what lets the watermark state keep just the versions inside the overlap window.
    """
    key = quote_ident(primary_key(table))
    version = quote_ident(VERSION_COLUMN)
    where = f" WHERE {version} >= :since" if incremental else ""
    # Identifiers come from the allow-list and are quoted; the value is bound.
    return f"SELECT * FROM {quote_ident(table)}{where} ORDER BY {version}, {key}"  # nosec B608


@contextmanager
def snapshot(conn: pg8000.native.Connection) -> Iterator[None]:
    """Hold one read-only REPEATABLE READ transaction: every read sees the same instant.

    On an error the transaction is left for the connection's close to discard;
    nothing was written, so there is nothing to undo.
    """
    conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    yield
    conn.run("COMMIT")


def stream_rows(conn: pg8000.native.Connection, table: str, since: datetime | None,
                batch_rows: int) -> Iterator[Batch]:
    """Yield ``table``'s versions from ``since`` on (all when None) in batches, oldest first.

    Must run inside :func:`snapshot` (a cursor lives only as long as its
    transaction). Each batch holds at most ``batch_rows`` rows. A caller may stop
    early: the cursor then closes when the snapshot's transaction ends.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
    cursor = quote_ident(f"extract_{table}")
    params = {} if since is None else {"since": since}
    conn.run(f"DECLARE {cursor} NO SCROLL CURSOR FOR {select_sql(table, since is not None)}",
             **params)
    while True:
        rows = conn.run(f"FETCH FORWARD {int(batch_rows)} FROM {cursor}")
        if rows:
            yield Batch(tuple(column["name"] for column in conn.columns), rows)
        if len(rows) < batch_rows:
            break
    conn.run(f"CLOSE {cursor}")
