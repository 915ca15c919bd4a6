"""Reading totesys at COPY speed: rows rendered as JSON by the server, streamed in bounded memory.

Everything one run reads comes from one read-only REPEATABLE READ transaction
(:func:`snapshot`), so a manifest describes a single instant and records it.
Rows are rendered by PostgreSQL itself (``row_to_json`` over exactly the
contract's columns, timestamps as ISO-8601 with milliseconds) and streamed with
``COPY ... TO STDOUT``: Python never decodes or re-encodes a value, it only
hands each line on. CSV is the one COPY format that leaves a backslash alone
(text format doubles it inside JSON); its quote and delimiter are set to
control characters that JSON text never contains unescaped, so no line is ever
quoted and each line is exactly one JSON object.

Identifiers come from the allow-list in :mod:`totes.source` and are quoted.
COPY takes no bind parameters, so the values a query needs (the snapshot window,
the resume key, the row limit) are bound through ``set_config`` into
transaction-local settings the query reads back: no value is ever formatted
into SQL text.
"""
import json
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator, Protocol

import pg8000.native

from totes.capture import (XID_MODULUS, FIRST_NORMAL_XID, Snapshot, SourceIdentity, TableCursor,
                           xmin_window)
from totes.db import quote_ident
from totes.errors import TransientError
from totes.source import SOURCE_COLUMNS, SOURCE_TABLES, VERSION_COLUMN, FoundColumn, primary_key

#: how each kind of column's value is rendered as JSON text (``{c}`` is the qualified column),
#: byte for byte what ``row_to_json`` writes: integers and booleans as their own text (no
#: JSON escaping can apply), timestamps with exactly three fractional digits (digits and
#: punctuation only, so quoting them is all the escaping they need), everything else
#: through ``to_json``. A NULL of any kind becomes ``null``.
_RENDER = {
    "int": "{c}::text",
    "bool": "{c}::text",
    "timestamp": "'\"' || to_char({c}, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS') || '\"'",
    "text": "to_json({c})::text",
    "date": "to_json({c})::text",
    "money": "to_json({c})::text",
}
#: ends the line (after the JSON object, before the newline) of a row stamped after the
#: database's clock; other lines end with the object. A suffix, not a prefix: every line's key
#: then starts at the same offset, and a chunk without such a row needs no byte changed.
FUTURE_MARK = b"F"
#: COPY ... CSV with these never quotes a JSON line (see the module docstring).
_COPY_OPTIONS = "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
_SETTING_PREFIX = "totes."
#: how long a run waits for its ``ACCESS SHARE`` locks before giving up until the next run.
LOCK_TIMEOUT_MS = 10_000
#: SQLSTATE of a lock not granted within ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"


class SourceLockTimeoutError(TransientError):
    """A table the run reads is held by an exclusive lock (a rewrite, a TRUNCATE): retry later."""


class LineSink(Protocol):
    """Where COPY hands each rendered line, one call per row (pg8000's stream protocol)."""

    def write(self, line: bytes) -> None:
        """Take one line (bytes, newline-terminated)."""


@dataclass(frozen=True)
class ReadPoint:
    """The snapshot a run reads in, and the database's own clock at that instant (UTC)."""

    snapshot: Snapshot
    database_time: datetime
    #: the cluster and timeline read (fields None where the login may not see them).
    source: SourceIdentity = SourceIdentity()


def source_identity(conn: pg8000.native.Connection) -> SourceIdentity:
    """Return the source's system identifier and timeline, each None if the login may not read it.

    ``pg_control_system()`` and ``pg_control_checkpoint()`` may be closed to
    ordinary logins; the privilege is checked first, so a refusal never raises
    (docs/ingest.md names the GRANT). Read just before the run's transaction: a
    failover or a restore ends every connection, so neither can change in between.
    """
    [[system, checkpoint]] = conn.run(
        "SELECT has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE'), "
        "has_function_privilege('pg_catalog.pg_control_checkpoint()', 'EXECUTE')")
    identifier = (conn.run("SELECT system_identifier::text FROM pg_catalog.pg_control_system()")
                  [0][0] if system else None)
    timeline = (conn.run("SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()")[0][0]
                if checkpoint else None)
    return SourceIdentity(identifier, None if timeline is None else int(timeline))


def lock_tables(conn: pg8000.native.Connection, tables: Iterable[str]) -> None:
    """Take ``ACCESS SHARE`` locks on ``tables`` until the transaction ends, as pg_dump does.

    Must run before the transaction's snapshot is taken (``LOCK`` and ``SET`` take
    none). A table rewrite (``ALTER TABLE ... TYPE``, ``ADD COLUMN ... DEFAULT
    random()``, ``TRUNCATE``) is not MVCC-safe: committed after the snapshot, it
    would show the run that table empty and its key sweep every row deleted. With
    the locks held, such a statement waits for the run instead; one already holding
    its lock makes the run wait at most :data:`LOCK_TIMEOUT_MS`, then give up as a
    :class:`SourceLockTimeoutError` (nothing read, the next run retries).
    """
    names = [_quoted_table(table) for table in tables]
    if not names:
        return
    # An int constant from the code; SET takes no bind parameters.
    conn.run(f"SET LOCAL lock_timeout = {int(LOCK_TIMEOUT_MS)}")
    try:
        conn.run(f"LOCK TABLE {', '.join(names)} IN ACCESS SHARE MODE")
    except pg8000.native.DatabaseError as error:
        fields = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
        if fields.get("C") != LOCK_NOT_AVAILABLE:
            raise
        raise SourceLockTimeoutError(
            f"gave up after waiting {LOCK_TIMEOUT_MS} ms for ACCESS SHARE locks on the source "
            "tables: another session holds an exclusive lock on one of them (a table rewrite, "
            "TRUNCATE or other DDL; see pg_locks); nothing was read or committed, the next run "
            "retries") from error


def _quoted_table(table: str) -> str:
    """Return the quoted name of an allow-listed table (any other name is refused)."""
    primary_key(table)
    return quote_ident(table)


@contextmanager
def snapshot(conn: pg8000.native.Connection, locked: Iterable[str] = ()) -> Iterator[ReadPoint]:
    """Hold one read-only REPEATABLE READ transaction and yield the snapshot it reads in.

    The tables in ``locked`` are locked first (:func:`lock_tables`), before the
    snapshot exists. The first statement that needs a snapshot fixes it, and that
    statement is the one that asks for it, so the recorded snapshot is exactly what
    every later read sees. On an error the transaction is left for the connection's
    close to discard; nothing was written, so there is nothing to undo.
    """
    source = source_identity(conn)
    conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    lock_tables(conn, locked)
    row = conn.run("SELECT pg_current_snapshot()::text, "
                   "(now() AT TIME ZONE 'UTC')::timestamp(3)")[0]
    yield ReadPoint(Snapshot.parse(row[0]), row[1], source)
    conn.run("COMMIT")


@dataclass(frozen=True)
class PreparedTransaction:
    """A transaction left prepared for two-phase commit (``pg_prepared_xacts``)."""

    gid: str
    xid: int
    prepared: datetime
    owner: str
    database: str
    age_seconds: float


def prepared_transactions(conn: pg8000.native.Connection,
                          older_than_seconds: float) -> list[PreparedTransaction]:
    """Return the prepared transactions older than ``older_than_seconds``, oldest first.

    A prepared transaction stays open until someone commits or rolls it back by its
    ``gid``, across restarts, with no session to show in ``pg_stat_activity``; while
    it stays, it holds every snapshot's ``xmin`` (the capture floor) back. Any login
    may read the view; it lists every database of the cluster.
    """
    rows = conn.run(
        "SELECT gid, transaction::text::bigint, prepared AT TIME ZONE 'UTC', owner, database, "
        "extract(epoch FROM now() - prepared)::float8 FROM pg_catalog.pg_prepared_xacts "
        "WHERE prepared < now() - make_interval(secs => :seconds) ORDER BY prepared",
        seconds=float(older_than_seconds))
    return [PreparedTransaction(str(gid), int(xid), prepared, str(owner), str(database),
                                float(age))
            for gid, xid, prepared, owner, database, age in rows]


def source_columns(conn: pg8000.native.Connection) -> list[FoundColumn]:
    """Return the catalog's description of every column of the allow-listed tables.

    Read from ``pg_catalog`` in the schema the connection reads (its search path),
    so it needs no privilege beyond the login's own.
    """
    rows = conn.run(
        "SELECT c.relname, a.attname, t.typname, t.typtype = 'e' "
        "FROM pg_catalog.pg_attribute a "
        "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(:tables) "
        "AND a.attnum > 0 AND NOT a.attisdropped",
        tables=list(SOURCE_TABLES))
    return [FoundColumn(table, column, type_name, bool(is_enum))
            for table, column, type_name, is_enum in rows]


def bind_settings(conn: pg8000.native.Connection, **values: Any) -> None:
    """Set transaction-local settings the next COPY reads with ``current_setting('totes.…')``.

    COPY takes no bind parameters; this binds its values all the same.
    """
    for name, value in values.items():
        conn.run("SELECT set_config(:name, :value, true)",
                 name=_SETTING_PREFIX + name, value=str(value))


def _setting(name: str, sql_type: str) -> str:
    return f"current_setting('{_SETTING_PREFIX}{name}')::{sql_type}"


def _text_constant(text: str) -> str:
    """Return ``text`` as an SQL string constant (for text built from allow-listed names)."""
    return "'" + text.replace("'", "''") + "'"


def row_json_sql(table: str) -> str:
    """Return the select list rendering one row of ``table`` as a marked JSON line.

    Exactly the contract's columns, the primary key first (so a key can be read off
    the start of a line); a trailing :data:`FUTURE_MARK` says ``last_updated`` is
    after the database's clock (stamped in the future). The object is assembled by
    ``concat`` from each value's JSON text (:data:`_RENDER`), the same bytes
    ``row_to_json`` writes for these kinds at about two thirds of its server time:
    rendering is most of what the server spends on a backfill.
    """
    key = primary_key(table)
    kinds = SOURCE_COLUMNS[table]
    parts = []
    for number, name in enumerate((key, *(name for name in kinds if name != key))):
        # The allow-listed name, JSON-quoted, is a constant of the code: no value reaches it.
        label = ("{" if number == 0 else ",") + json.dumps(name) + ":"
        value = _RENDER[kinds[name]].format(c=f"t.{quote_ident(name)}")
        parts += [_text_constant(label), f"coalesce({value}, 'null')"]
    version = f"t.{quote_ident(VERSION_COLUMN)}"
    mark = (f"CASE WHEN {version} > (now() AT TIME ZONE 'UTC') THEN "
            f"'{FUTURE_MARK.decode()}' ELSE '' END")
    return f"concat({', '.join(parts)}, '}}', {mark}) FROM {quote_ident(table)} AS t"


def changes_sql(table: str, cursor: TableCursor) -> str:
    """Return the COPY statement reading ``table``'s rows the ``cursor`` has not seen yet.

    Rows come in primary-key order, at most ``limit`` of them, so a run cut by its
    row budget stops at an exact key the next run continues after. Which rows are
    new is decided by the writing transaction (see :mod:`totes.capture`), or, once,
    by ``last_updated`` for a table carried over from the watermark format.
    """
    key = f"t.{quote_ident(primary_key(table))}"
    conditions = []
    if cursor.since is not None:
        xmin = "t.xmin::text::bigint"
        conditions += [f"{xmin} >= {FIRST_NORMAL_XID}",
                       f"({_setting('xmax32', 'bigint')} - {xmin} + {XID_MODULUS}) "
                       f"% {XID_MODULUS} <= {_setting('width', 'bigint')}"]
    elif cursor.since_last_updated is not None:
        conditions.append(f"t.{quote_ident(VERSION_COLUMN)} >= "
                          f"{_setting('since_last_updated', 'timestamp')}")
    if cursor.resume_after is not None:
        conditions.append(f"{key} > {_setting('after', 'bigint')}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    # Identifiers are allow-listed and quoted; values are bound through set_config.
    query = (f"SELECT {row_json_sql(table)}{where} "  # nosec B608
             f"ORDER BY {key} LIMIT {_setting('limit', 'bigint')}")
    return f"COPY ({query}) TO STDOUT {_COPY_OPTIONS}"


def copy_changes(conn: pg8000.native.Connection, table: str, cursor: TableCursor,
                 read_point: ReadPoint, limit: int, sink: LineSink) -> None:
    """Stream ``table``'s unseen rows (at most ``limit``) into ``sink``, one line per row.

    Must run inside :func:`snapshot`, whose read point decides the xid window.
    """
    values: dict[str, Any] = {"limit": limit}
    if cursor.since is not None:
        window = xmin_window(cursor.since, read_point.snapshot)
        values.update(xmax32=window.xmax32, width=window.width)
    elif cursor.since_last_updated is not None:
        values["since_last_updated"] = cursor.since_last_updated.isoformat()
    if cursor.resume_after is not None:
        values["after"] = cursor.resume_after
    bind_settings(conn, **values)
    conn.run(changes_sql(table, cursor), stream=sink)


def keys_sql(table: str, block_keys: int) -> str:
    """Return the COPY statement listing every primary key of ``table`` as ascending blocks.

    The server joins up to ``block_keys`` keys per line (``1,2,3``), so Python
    handles one line per block, not one per key. ``block_keys`` is an int from
    the code, never input.
    """
    key = quote_ident(primary_key(table))
    block = f"(row_number() OVER (ORDER BY {key}) - 1) / {int(block_keys)}"
    # Identifiers are allow-listed and quoted; the only number is an int constant.
    return (f"COPY (SELECT string_agg(k::text, ',' ORDER BY k) FROM (SELECT {key} AS k, "  # nosec
            f"{block} AS block FROM {quote_ident(table)}) AS keys GROUP BY block "
            "ORDER BY block) TO STDOUT")


def copy_keys(conn: pg8000.native.Connection, table: str, block_keys: int,
              sink: LineSink) -> None:
    """Stream every primary key of ``table`` in ascending blocks, one line per block."""
    conn.run(keys_sql(table, block_keys), stream=sink)
