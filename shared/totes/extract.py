"""Reading totesys at COPY speed: rows rendered as JSON by the server, streamed in bounded memory.

Everything one run reads comes from one read-only REPEATABLE READ transaction
(:func:`snapshot`), so a manifest describes a single instant and records it.
Rows are rendered by PostgreSQL itself (the bytes ``row_to_json`` writes, over
exactly the contract's columns, timestamps as ISO-8601 with milliseconds) and
streamed with ``COPY ... TO STDOUT``: Python never decodes or re-encodes a
value, it only hands the lines on. CSV is the one COPY format that leaves a
backslash alone (text format doubles it inside JSON); its quote and delimiter
are set to control characters that JSON text never contains unescaped, so
quoting never changes a byte of JSON.

A table's changed rows come as **chunks** (:func:`copy_changes`): the server
joins up to ``CHUNK_ROWS`` rows' lines into one COPY line, with their count and
keys, so Python (and pg8000, whose protocol loop costs about a microsecond and a
half per message) handles one message per object written, not one per row.
Successive chunks continue above the previous chunk's last key (keyset
pagination in the same snapshot), so each is one ordered index range. A table
with more than one chunk to read is read two chunks at a time, the second by a
:class:`SecondReader`: another connection in the same snapshot (exported and
imported, as ``pg_dump -j`` does), which skips the first chunk's rows with
``OFFSET`` and renders the next ones while the first connection renders its own,
so the server renders on two cores. The chunks, and so every object, are the same
as one connection reads them.

Identifiers come from the allow-list in :mod:`totes.source` and are quoted.
COPY takes no bind parameters, so the values a query needs (the snapshot window,
the resume key, the row limit) are bound through ``set_config`` into
transaction-local settings the query reads back: no value is ever formatted
into SQL text.
"""
import json
import re
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterable, Iterator, Protocol

import pg8000.native

from totes.capture import (XID_MODULUS, FIRST_NORMAL_XID, Snapshot, SourceIdentity, TableCursor,
                           xmin_window)
from totes import observability
from totes.db import DatabaseUnavailableError, close_quietly, quote_ident, server_fields
from totes.errors import InputError, SourceDataError, TransientError
from totes.source import SOURCE_COLUMNS, SOURCE_TABLES, VERSION_COLUMN, FoundColumn, primary_key

#: how each kind of column's value is rendered as JSON text (``{c}`` is the qualified column),
#: byte for byte what ``row_to_json`` writes: integers and booleans as their own text (no
#: JSON escaping can apply), timestamps with exactly three fractional digits (digits and
#: punctuation only, so quoting them is all the escaping they need: the quotes are literals
#: of ``to_char``'s format, ``\\"``, which saves two concatenations per value), everything
#: else through ``to_json``. A NULL of any kind becomes ``null``.
_RENDER = {
    "int": "{c}::text",
    "bool": "{c}::text",
    "timestamp": r"""to_char({c}, E'\\"YYYY-MM-DD"T"HH24:MI:SS.MS\\"')""",
    "text": "to_json({c})::text",
    "date": "to_json({c})::text",
    "money": "to_json({c})::text",
}
#: ends the line (after the JSON object, before the newline) of a row stamped after the
#: database's clock; other lines end with the object. A suffix, not a prefix: every line's key
#: then starts at the same offset, and a chunk without such a row needs no byte changed.
FUTURE_MARK = b"F"
#: the timestamps rendered exactly are those from the first instant of year 1 AD up to, not
#: including, the first of year 10000: ``to_char`` writes nothing for an infinity (it would
#: arrive as ``null``), drops the era of a BC year (44 BC would arrive as 44 AD) and the
#: warehouse holds no year after 9999. SQL constants of the code.
_FIRST_STAMP, _END_STAMP = "'0001-01-01'::timestamp", "'10000-01-01'::timestamp"
#: money between these is a number: ``NaN`` sorts above ``Infinity``, so both comparisons
#: leave out the three numerics that are not numbers.
_NUMBERS_ABOVE, _NUMBERS_BELOW = "'-Infinity'::numeric", "'Infinity'::numeric"
#: a chunk's COPY line: its count, its keys, the keys of its rows that cannot be carried exactly
#: (see :func:`row_json`; almost always empty), then its JSON lines, always quoted (they hold
#: newlines); JSON text never holds the delimiter or the quote, so none is ever doubled.
_CHUNK_OPTIONS = "WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01', FORCE_QUOTE (lines))"
_DELIMITER, _QUOTE = b"\x02", b"\x01"
_SETTING_PREFIX = "totes."
#: how long a run waits for its ``ACCESS SHARE`` locks before giving up until the next run.
LOCK_TIMEOUT_MS = 10_000
#: SQLSTATE of a lock not granted within ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"
#: SQLSTATE of a text whose bytes the client encoding cannot hold (character_not_in_repertoire).
INVALID_BYTE_SEQUENCE = "22021"
#: how ``pg_export_snapshot()`` names a snapshot.
SNAPSHOT_ID = re.compile(r"[0-9A-F]+-[0-9A-F]+-[0-9]+")

logger = observability.service_logger()


class SourceLockTimeoutError(TransientError):
    """A table the run reads is held by an exclusive lock (a rewrite, a TRUNCATE): retry later."""


#: SQLSTATEs of a ``LOCK`` on a table the login cannot reach: no ``SELECT`` on it
#: (insufficient_privilege), or not found (undefined_table: no ``USAGE`` on its schema, a
#: ``search_path`` that misses it, or no such table). A person must act, whatever the retries.
SOURCE_NOT_READABLE = ("42501", "42P01")


class SourceAccessError(InputError):
    """The login cannot read a source table: a DBA must grant what docs/deploy.md lists."""


class LineSink(Protocol):
    """Where COPY hands each line it sends, one call per line (pg8000's stream protocol)."""

    def write(self, line: bytes) -> None:
        """Take one line (bytes, newline-terminated)."""


class ChunkFormatError(ValueError):
    """A chunk's COPY line is not in the shape :func:`changes_sql` asks for."""


@dataclass(frozen=True)
class Chunk:
    """Consecutive changed rows of one table, as the server joined them into one COPY line."""

    rows: int
    #: the rows' keys, ascending and comma-separated, or only the last (greatest) one when
    #: :func:`copy_changes` was not asked for all of them.
    keys: bytes
    #: the rows' JSON lines in key order, each ending with a newline.
    lines: bytes
    #: the keys, comma-separated, of rows holding a value that cannot be carried exactly (they
    #: have no line): ingest refuses the chunk (:func:`refuse_unfit`).
    unfit: bytes = b""

    @property
    def last_key(self) -> int:
        """The greatest key of the chunk."""
        return int(self.keys.rpartition(b",")[2])

    @classmethod
    def parse(cls, line: bytes) -> "Chunk":
        """Read one COPY line of :func:`changes_sql`: count, keys, unfit keys, quoted JSON lines.

        The JSON lines are sliced out once (one copy, in C). JSON text escapes
        every control character, so a quote byte inside them means the line is
        not what was asked for, and it is refused rather than written.
        """
        first = line.index(_DELIMITER)
        second = line.index(_DELIMITER, first + 1)
        third = line.index(_DELIMITER, second + 1)
        rows, keys, unfit = int(line[:first]), line[first + 1:second], line[second + 1:third]
        if not rows:
            return cls(0, b"", b"")
        if line[third + 1:third + 2] != _QUOTE or not line.endswith(_QUOTE + b"\n"):
            raise ChunkFormatError("a chunk's JSON lines came unquoted")
        lines = line[third + 2:-2]
        if _QUOTE in lines:
            raise ChunkFormatError("a chunk's JSON lines hold a CSV quote byte")
        return cls(rows, keys, lines, unfit)


class _ChunkReader:
    """The stream a chunk's COPY writes its one line to."""

    def __init__(self) -> None:
        self.chunk = Chunk(0, b"", b"")

    def write(self, line: bytes) -> None:
        self.chunk = Chunk.parse(line)


@dataclass(frozen=True)
class ReadPoint:
    """The snapshot a run reads in, and the database's own clock at that instant (UTC)."""

    snapshot: Snapshot
    database_time: datetime
    #: the cluster and timeline read (fields None where the login may not see them).
    source: SourceIdentity = SourceIdentity()
    #: the same clock to the microsecond, ``YYYY-MM-DD HH24:MI:SS.US``: a row stamped after it
    #: is marked (:data:`FUTURE_MARK`), on every connection reading the snapshot.
    clock: str = ""


def source_identity(conn: pg8000.native.Connection) -> SourceIdentity:
    """Return the source's identity: system identifier, timeline and server start.

    ``pg_control_system()`` and ``pg_control_checkpoint()`` may be closed to
    ordinary logins, and so may the WAL functions; each privilege is checked
    first, so a refusal never raises (docs/ingest.md names the GRANT) and leaves
    that field None. The timeline is the one WAL is written on now (the first
    eight hex digits of the current WAL file's name): ``pg_control_checkpoint()``
    goes on naming the old one until the first checkpoint after a promotion, so
    a run in between would miss it and the run after it re-sync a second time.
    A standby writes no WAL: there the checkpoint's is read. The server's start
    time is open to every login. Read just before the run's transaction: a
    failover or a restore ends every connection, so none can change in between.
    """
    [[system, checkpoint, wal, recovering, started]] = conn.run(
        "SELECT has_function_privilege('pg_catalog.pg_control_system()', 'EXECUTE'), "
        "has_function_privilege('pg_catalog.pg_control_checkpoint()', 'EXECUTE'), "
        "has_function_privilege('pg_catalog.pg_walfile_name(pg_lsn)', 'EXECUTE') "
        "AND has_function_privilege('pg_catalog.pg_current_wal_lsn()', 'EXECUTE'), "
        "pg_catalog.pg_is_in_recovery(), "
        "to_char(pg_catalog.pg_postmaster_start_time() AT TIME ZONE 'UTC', "
        "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    identifier = (conn.run("SELECT system_identifier::text FROM pg_catalog.pg_control_system()")
                  [0][0] if system else None)
    if wal and not recovering:
        timeline = conn.run("SELECT ('x' || substr(pg_catalog.pg_walfile_name("
                            "pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::integer")[0][0]
    elif checkpoint:
        timeline = conn.run("SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()")[0][0]
    else:
        timeline = None
    return SourceIdentity(identifier, None if timeline is None else int(timeline), str(started))


def lock_tables(conn: pg8000.native.Connection, tables: Iterable[str], *,
                wait_ms: int | None = None) -> None:
    """Take ``ACCESS SHARE`` locks on ``tables`` until the transaction ends, as pg_dump does.

    Must run before the transaction's snapshot is taken (``LOCK`` and ``SET`` take
    none). A table rewrite (``ALTER TABLE ... TYPE``, ``ADD COLUMN ... DEFAULT
    random()``, ``TRUNCATE``) is not MVCC-safe: committed after the snapshot, it
    would show the run that table empty and its key sweep every row deleted. With
    the locks held, such a statement waits for the run instead; one already holding
    its lock makes the run wait at most ``wait_ms`` (by default :data:`LOCK_TIMEOUT_MS`), then give
    up as a :class:`SourceLockTimeoutError` (nothing read, the next run retries). A table
    the login cannot reach (a grant of the docs missing) is a :class:`SourceAccessError`,
    naming the statements to run: the first thing a new deploy reads, so a person is told.
    """
    names = [_quoted_table(table) for table in tables]
    if not names:
        return
    wait_ms = LOCK_TIMEOUT_MS if wait_ms is None else wait_ms
    # An int from the code; SET takes no bind parameters.
    conn.run(f"SET LOCAL lock_timeout = {int(wait_ms)}")
    try:
        conn.run(f"LOCK TABLE {', '.join(names)} IN ACCESS SHARE MODE")
    except pg8000.native.DatabaseError as error:
        fields = server_fields(error)
        if fields.get("C") in SOURCE_NOT_READABLE:
            raise SourceAccessError(
                f"the login cannot read the source tables ({fields.get('M')}): it needs USAGE "
                "on their schema, SELECT on the 11 tables and a search_path that reaches them; "
                f"{_access_hint(conn, tables)}; a DBA must run the statements of "
                "docs/deploy.md, \"The totesys login\"") from error
        if fields.get("C") != LOCK_NOT_AVAILABLE:
            raise
        raise SourceLockTimeoutError(
            f"gave up after waiting {wait_ms} ms for ACCESS SHARE locks on the source "
            "tables: another session holds an exclusive lock on one of them (a table rewrite, "
            "TRUNCATE or other DDL; see pg_locks); nothing was read or committed, the next run "
            "retries") from error


#: for each source table: whether the login's search_path reaches it, whether it may SELECT it,
#: the schemas holding a table of that name and whether the login may use each; and the login
#: and its search_path. The catalog is readable by every login, whatever it may not use.
_ACCESS = (
    "SELECT t.name, to_regclass(quote_ident(t.name)) IS NOT NULL, "
    "COALESCE(has_table_privilege(to_regclass(quote_ident(t.name)), 'SELECT'), false), "
    "ARRAY(SELECT n.nspname::text FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace "
    "AS n ON n.oid = c.relnamespace WHERE c.relname = t.name AND c.relkind IN ('r', 'p') "
    "ORDER BY n.nspname), "
    "ARRAY(SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_catalog.pg_class AS c "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace WHERE c.relname = t.name "
    "AND c.relkind IN ('r', 'p') ORDER BY n.nspname), "
    "current_user::text, current_setting('search_path') "
    "FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS t(name, i) ORDER BY t.i")


def _access_hint(conn: pg8000.native.Connection, tables: Iterable[str]) -> str:
    """:func:`access_fixes` after the failed ``LOCK``'s rollback, or why it could not be had.

    The refusal is the error a person must see; the catalog's hint only adds to it. A
    catalog a DBA hardened (``REVOKE SELECT ON pg_catalog.pg_namespace FROM PUBLIC``), or
    a session lost meanwhile, leaves the refusal as it is, saying the hint failed and why.
    """
    try:
        conn.run("ROLLBACK")  # failed already, nothing read: the catalog is asked why
        return access_fixes(conn, tables)
    except (pg8000.native.DatabaseError, pg8000.native.InterfaceError, OSError) as error:
        reason = server_fields(error).get("M") or error
        return (f"the catalog could not be asked which grant is missing ({type(error).__name__}: "
                f"{reason})")


def access_fixes(conn: pg8000.native.Connection, tables: Iterable[str]) -> str:
    """Say why the login cannot read the source tables, and the statements that fix it.

    Run outside any transaction, after the ``LOCK`` that failed. A table the search_path
    misses is named with the schema it is in, one in a schema the login may not use with
    the ``GRANT USAGE``, one it may not select with the ``GRANT SELECT``, and one in no
    schema at all as missing: perhaps the secret names another database.
    """
    wanted = list(tables)
    fixes: list[str] = []
    unselectable: list[str] = []
    unusable: dict[str, list[str]] = {}   # schema the login may not use -> its tables
    off_path: dict[str, list[str]] = {}   # schema outside the search_path -> its tables
    login = path = ""
    for name, visible, selectable, schemas, usable, login, path in conn.run(
            _ACCESS, names=wanted):
        on_path = {part.strip().strip('"').replace("$user", login) for part in path.split(",")}
        if visible and not selectable:
            unselectable.append(quote_ident(name))
        elif not visible and not schemas:
            fixes.append(f"no table {name} in any schema of this database: is the secret's "
                         "dbname the totesys database?")
        for schema, may_use in zip([] if visible else schemas, usable):
            if not may_use:
                unusable.setdefault(schema, []).append(name)
            if schema not in on_path:
                off_path.setdefault(schema, []).append(name)
    role = quote_ident(login)
    if unselectable:
        fixes.append(f"GRANT SELECT ON {', '.join(unselectable)} TO {role}")
    fixes += [f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {role} (for {', '.join(names)})"
              for schema, names in unusable.items()]
    if len(off_path) == 1 and sum(map(len, off_path.values())) == len(wanted):
        [schema] = off_path
        fixes.append(f"ALTER ROLE {role} SET search_path = {quote_ident(schema)} (the tables are "
                     f"in schema {schema}, outside the login's search_path {path})")
    elif off_path:
        # The tables are read from one schema, the first of the search_path (the catalog
        # check's current_schema()): a path reaching several would still not do.
        fixes.append("the 11 tables must be in one schema, the first of the login's search_path "
                     f"({path}): " + "; ".join(f"{', '.join(names)} in schema {schema}"
                                               for schema, names in off_path.items())
                     + ": move them into one schema (ALTER TABLE ... SET SCHEMA) and set the "
                     f"login's search_path to it (ALTER ROLE {role} SET search_path = ...)")
    return "; ".join(fixes) or "the catalog shows no missing grant"


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
                   "(now() AT TIME ZONE 'UTC')::timestamp(3), "
                   "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")[0]
    yield ReadPoint(Snapshot.parse(row[0]), row[1], source, row[2])
    conn.run("COMMIT")


def join_snapshot(conn: pg8000.native.Connection, snapshot_id: str) -> None:
    """Start a read-only REPEATABLE READ transaction on ``conn`` in an exported snapshot.

    ``snapshot_id`` comes from ``pg_export_snapshot()`` in a transaction still open:
    every read of ``conn`` then sees exactly what that transaction's reads see.
    """
    if not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise ValueError(f"{snapshot_id!r} is not an exported snapshot id")
    conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    # SET TRANSACTION SNAPSHOT takes no parameter; the id passed the pattern above.
    conn.run(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")


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


def floor_age_seconds(conn: pg8000.native.Connection, snapshot: Snapshot) -> float | None:
    """How long the transaction holding ``snapshot``'s floor (its ``xmin``) has held it, in seconds.

    The next run reads again everything written since the floor, so an old floor is
    a transaction left open: this makes its age alarmable in time, which the floor's
    distance in xids (it grows with the write rate) is not. The holder is the
    transaction whose xid is ``xmin`` (one still running may also have ``xmin = xmax``);
    its start is a prepared transaction's ``prepared`` (``pg_prepared_xacts``, readable
    by any login) or a session's ``xact_start`` (``pg_stat_activity``, which shows
    another role's only to ``pg_read_all_stats``). 0 when nothing holds the floor any
    more (no such transaction runs); None when one still runs and the login may not see
    when it began. Read in the run's transaction: ``now()`` is the snapshot's instant.
    """
    [[age, running]] = conn.run(
        "SELECT (SELECT extract(epoch FROM now() - min(began))::float8 FROM ("
        "SELECT prepared AS began FROM pg_catalog.pg_prepared_xacts "
        "WHERE transaction::text::bigint = :xid32 "
        "UNION ALL SELECT xact_start FROM pg_catalog.pg_stat_activity "
        "WHERE backend_xid::text::bigint = :xid32) AS holder), "
        "CASE WHEN CAST(:xid AS bigint) < CAST(:xmax AS bigint) THEN pg_catalog.pg_xact_status("
        "CAST(CAST(:xid AS bigint) AS text)::xid8) = 'in progress' "
        "ELSE EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity "
        "WHERE backend_xid::text::bigint = :xid32) END",
        xid=snapshot.xmin, xmax=snapshot.xmax, xid32=snapshot.xmin % XID_MODULUS)
    if age is not None:
        return max(0.0, float(age))
    return None if running else 0.0


def source_columns(conn: pg8000.native.Connection) -> list[FoundColumn]:
    """Return the catalog's description of every column of the allow-listed tables.

    Read from ``pg_catalog`` in the schema the connection reads (its search path),
    so it needs no privilege beyond the login's own.
    """
    rows = conn.run(
        "SELECT c.relname, a.attname, t.typname, t.typtype = 'e', "
        "a.xmin::text::bigint || ARRAY(SELECT e.xmin::text::bigint FROM pg_catalog.pg_enum e "
        "WHERE e.enumtypid = a.atttypid) "
        "FROM pg_catalog.pg_attribute a "
        "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_type t ON t.oid = a.atttypid "
        "WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(:tables) "
        "AND a.attnum > 0 AND NOT a.attisdropped",
        tables=list(SOURCE_TABLES))
    return [FoundColumn(table, column, type_name, bool(is_enum), tuple(written_by))
            for table, column, type_name, is_enum, written_by in rows]


def bind_settings(conn: pg8000.native.Connection, **values: Any) -> None:
    """Set transaction-local settings the next COPY reads with ``current_setting('totes.…')``.

    COPY takes no bind parameters; this binds its values all the same, names and
    values alike, in one statement (one round trip however many there are).
    """
    if not values:
        return
    calls = ", ".join(f"set_config(:n{number}, :v{number}, true)"
                      for number in range(len(values)))
    bound: dict[str, str] = {}
    for number, (name, value) in enumerate(values.items()):
        bound[f"n{number}"], bound[f"v{number}"] = _SETTING_PREFIX + name, str(value)
    conn.run(f"SELECT {calls}", **bound)


def _setting(name: str, sql_type: str) -> str:
    return f"current_setting('{_SETTING_PREFIX}{name}')::{sql_type}"


def _setting_once(name: str, sql_type: str) -> str:
    """A bound setting as a scalar subquery: an InitPlan, read once per statement, not per row.

    ``current_setting`` is only stable, so written bare in a filter it is looked up
    and cast again for every row scanned: the xid window's two settings took about
    half of an idle table scan (docs/ingest.md, "The warm one-order cycle"). Only for
    values no plan depends on: the planner estimates a bare setting's value (a key
    bound, a limit), never an InitPlan's.
    """
    return f"(SELECT {_setting(name, sql_type)})"


def _text_constant(text: str) -> str:
    """Return ``text`` as an SQL string constant (for text built from allow-listed names)."""
    return "'" + text.replace("'", "''") + "'"


def row_json_sql(table: str) -> str:
    """Return ``<row_json(table)> FROM <table> AS t``: one marked JSON line per row."""
    return f"{row_json(table)} FROM {quote_ident(table)} AS t"


def row_json(table: str, clock: str = "(now() AT TIME ZONE 'UTC')") -> str:
    """Return the expression rendering one row of ``table`` (as ``t``) as a marked JSON line.

    Exactly the contract's columns, the primary key first (so a key can be read off
    the start of a line); a trailing :data:`FUTURE_MARK` says ``last_updated`` is
    after the database's clock (stamped in the future): ``clock``, an SQL expression,
    is this transaction's own unless the caller binds the read point's. A row holding
    a value the line would not carry exactly (a timestamp outside years 1 to 9999 AD,
    money that is not a number) has no line (NULL): the same ``CASE`` that marks
    the future finds it with a few comparisons, and renders nothing more. The object is assembled by
    ``||`` from each value's JSON text (:data:`_RENDER`), the same bytes
    ``row_to_json`` writes for these kinds: rendering is most of what the server
    spends on a backfill, and ``||`` costs less than ``concat``, which looks up each
    argument's output function on every call (docs/ingest.md, "Performance").
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
    unfit = [f"t.{quote_ident(name)} < {_FIRST_STAMP}" if name == VERSION_COLUMN
             else _stamp_unfit(f"t.{quote_ident(name)}")
             for name, kind in kinds.items() if kind == "timestamp"]
    unfit += [_money_unfit(f"t.{quote_ident(name)}") for name, kind in kinds.items()
              if kind == "money"]
    # A row not stamped in the future has a version before year 10000: one comparison fewer.
    future_unfit = " OR ".join([f"{_END_STAMP} <= {version}", *unfit])
    mark = (f"CASE WHEN {version} > {clock} THEN CASE WHEN {future_unfit} THEN NULL "
            f"ELSE '{FUTURE_MARK.decode()}' END WHEN {' OR '.join(unfit)} THEN NULL ELSE '' END")
    return " || ".join([*parts, "'}'", f"({mark})"])


def _stamp_unfit(stamp: str) -> str:
    """The condition that the timestamp ``stamp`` (an SQL expression) is not rendered exactly."""
    return f"{stamp} < {_FIRST_STAMP} OR {_END_STAMP} <= {stamp}"


def _money_unfit(money: str) -> str:
    """The condition that the numeric ``money`` (an SQL expression) is not a number."""
    return f"{money} <= {_NUMBERS_ABOVE} OR {money} >= {_NUMBERS_BELOW}"


def refuse_unfit(conn: pg8000.native.Connection, table: str, keys: Iterable[int]) -> None:
    """Raise :class:`SourceDataError` naming the first of ``keys`` and its value that cannot travel.

    Read again, on the connection (and so in the snapshot) that rendered the rows, as
    the server's own text (``infinity``, ``0044-03-15 12:00:00 BC``, ``NaN``), so the
    message shows the value as it is at the source, not as it would have arrived.
    Called only for the keys of a chunk's rows :func:`row_json` found unfit: nothing of
    the run is committed.
    """
    key = primary_key(table)
    kinds = SOURCE_COLUMNS[table]
    unfit = {"timestamp": _stamp_unfit, "money": _money_unfit}
    checks = [(name, unfit[kind](f"t.{quote_ident(name)}"))
              for name, kind in kinds.items() if kind in unfit]
    texts = ", ".join(f"t.{quote_ident(name)}::text, coalesce({condition}, false)"
                      for name, condition in checks)
    # Identifiers are allow-listed and quoted; the keys are bound.
    [[found, *values]] = conn.run(
        f"SELECT t.{quote_ident(key)}, {texts} FROM {quote_ident(table)} AS t "  # nosec B608
        f"WHERE t.{quote_ident(key)} = (SELECT min(k) FROM unnest(CAST(:keys AS bigint[])) AS k)",
        keys=[int(each) for each in keys])
    column, value = next((name, values[2 * number])
                         for number, (name, _) in enumerate(checks) if values[2 * number + 1])
    raise SourceDataError(
        f"{table} {key}={found}: {column} {value!r} cannot be carried exactly (the warehouse "
        "and the lake take timestamps of years 1 to 9999 AD and money that is a number); "
        "nothing of this run was committed: correct the row at the source (docs/runbook.md, "
        "\"A value that cannot be carried\"), the next run reads it again")


def bytes_not_utf8(error: BaseException) -> str | None:
    """The server's words when it could not send a text as UTF-8, else None.

    Every connection asks for UTF-8 (:data:`totes.db.CLIENT_ENCODING`), and the server
    converts from its database's encoding, checking the result. Only a ``SQL_ASCII``
    database, which stores whatever bytes a client sent, can hold a text that is no
    UTF-8 at all (a LATIN1 ``é``): the read fails (SQLSTATE 22021) rather than send it.
    """
    fields = server_fields(error)
    return fields.get("M", "") if fields.get("C") == INVALID_BYTE_SEQUENCE else None


def changes_sql(table: str, cursor: TableCursor, *, after: bool = False,
                all_keys: bool = False, offset: bool = False) -> str:
    """Return the COPY statement reading one chunk of ``table``'s rows the ``cursor`` has not seen.

    The chunk is the next ``limit`` rows in primary-key order (above the key bound
    as ``after`` when ``after`` is set or the cursor resumes; past the first
    ``offset`` of them with ``offset``), joined by the server into one line: their
    count, their keys (all of them with ``all_keys``, else the greatest), their JSON
    lines in key order, and the keys of rows that have no line because a value of theirs
    cannot be carried exactly (:class:`Chunk`). A run cut by its row budget so stops at an
    exact key the next run continues after. Which rows are new is decided by the
    writing transaction (see :mod:`totes.capture`), or, once, by ``last_updated`` for
    a table carried over from the watermark format. Rows are rendered above the
    ``LIMIT``, so the rows an ``OFFSET`` skips are read but never rendered; a row is
    marked as stamped in the future against the bound ``clock`` (the read point's).

    The aggregates' ``ORDER BY k`` is what guarantees the order; from PostgreSQL 16
    the planner sees the rows already come sorted and skips the sort.
    """
    key = quote_ident(primary_key(table))
    conditions = []
    if cursor.since is not None:
        xmin = "t.xmin::text::bigint"
        conditions += [f"{xmin} >= {FIRST_NORMAL_XID}",
                       f"({_setting_once('xmax32', 'bigint')} - {xmin} + {XID_MODULUS}) "
                       f"% {XID_MODULUS} <= {_setting_once('width', 'bigint')}"]
    elif cursor.since_last_updated is not None:
        conditions.append(f"t.{quote_ident(VERSION_COLUMN)} >= "
                          f"{_setting('since_last_updated', 'timestamp')}")
    if after or cursor.resume_after is not None:
        conditions.append(f"t.{key} > {_setting('after', 'bigint')}")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    skip = f" OFFSET {_setting('offset', 'bigint')}" if offset else ""
    columns = ", ".join(f"t.{quote_ident(name)}" for name in SOURCE_COLUMNS[table])
    # Identifiers are allow-listed and quoted; values are bound through set_config.
    chosen = (f"SELECT {columns} FROM {quote_ident(table)} AS t{where} "  # nosec B608
              f"ORDER BY t.{key}{skip} LIMIT {_setting('limit', 'bigint')}")
    # The database's clock at the read point: the one instant every connection of a run marks
    # future rows by.
    clock = _setting_once("clock", "timestamp")
    # OFFSET 0 keeps the planner from inlining ``line`` into each aggregate that names it (the
    # lines' and the unfit keys' FILTER), which rendered every row twice; the ORDER BY, which
    # the index scan below already satisfies, passes its order up to the aggregates.
    rows = (f"SELECT t.{key} AS k, {row_json(table, clock)} AS line "  # nosec B608: as above
            f"FROM ({chosen}) AS t ORDER BY t.{key} OFFSET 0")
    keys = "string_agg(k::text, ',' ORDER BY k)" if all_keys else "max(k)::text"
    unfit = "string_agg(k::text, ',' ORDER BY k) FILTER (WHERE line IS NULL)"
    # The query above, wrapped in constant aggregates: still no value in the text.
    query = (f"SELECT count(*), {keys}, {unfit}, "  # nosec B608
             f"coalesce(string_agg(line, E'\\n' ORDER BY k), '') || E'\\n' AS lines "
             f"FROM ({rows}) AS chunk")
    return f"COPY ({query}) TO STDOUT {_CHUNK_OPTIONS}"


class SecondReader:
    """A second connection reading in the run's snapshot, opened when a table first needs it.

    Opening it exports the first connection's snapshot (``pg_export_snapshot()``) and
    imports it into a new read-only REPEATABLE READ transaction, which then takes its
    own ``ACCESS SHARE`` locks waiting at most a millisecond (after the snapshot is
    safe here: the first connection's locks predate it, so no rewrite can have
    committed since). Only a lock request queued behind the first connection's locks
    (a rewrite waiting for this run) can refuse them, and then this run reads with one
    connection, as it would have; so it does when the second connection cannot be
    opened (the login's or the server's connection limit reached, say).
    Each statement either connection runs goes through a two-thread pool, so the two
    render at once; a failure on either is raised to the run, before its manifest.
    """

    def __init__(self, first: pg8000.native.Connection,
                 connect: Callable[[], pg8000.native.Connection], tables: Iterable[str]) -> None:
        """Read with ``first`` and, once needed, a connection ``connect`` opens; lock ``tables``."""
        self.first = first
        self._connect, self._tables = connect, list(tables)
        self._second: pg8000.native.Connection | None = None
        self._opened = False
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="totes-read")
        #: chunks read on the second connection so far.
        self.second_chunks = 0

    def second(self) -> pg8000.native.Connection | None:
        """Return the second connection, opening it the first time; None if it may not read."""
        if not self._opened:
            self._opened = True
            self._second = self.open_another()
        return self._second

    def open_another(self) -> pg8000.native.Connection | None:
        """Open one more connection reading in the run's snapshot; None if it may not read.

        Opened as the second connection is, and on the caller's thread while the
        first connection is idle (the export is a statement on it); the caller
        closes it. The key sweep reads on one beside the reading of the rows.
        """
        [[exported]] = self.first.run("SELECT pg_export_snapshot()")
        try:
            conn = self._connect()
        except DatabaseUnavailableError as error:
            logger.warning("a second connection could not be opened (%s); reading with one "
                           "connection", error)
            return None
        try:
            join_snapshot(conn, str(exported))
            lock_tables(conn, self._tables, wait_ms=1)
        except SourceLockTimeoutError:
            close_quietly(conn)
            logger.info("a second connection could not lock the source tables at once (a "
                        "table rewrite waits for this run); reading with one connection")
            return None
        except BaseException:
            close_quietly(conn)
            raise
        return conn

    def submit(self, conn: pg8000.native.Connection, table: str, cursor: TableCursor,
               values: dict[str, Any], *, all_keys: bool) -> "Future[Chunk]":
        """Read one chunk on ``conn`` (either connection) in the pool; its future."""
        return self._pool.submit(_read_chunk, conn, table, cursor, values, all_keys=all_keys)

    def close(self) -> None:
        """End the second connection's transaction and the pool (after its last read)."""
        self._pool.shutdown(wait=True)
        if self._second is not None:
            close_quietly(self._second)


def _read_chunk(conn: pg8000.native.Connection, table: str, cursor: TableCursor,
                values: dict[str, Any], *, all_keys: bool) -> Chunk:
    """Bind ``values`` on ``conn`` and read the one chunk they describe."""
    bind_settings(conn, **values)
    reader = _ChunkReader()
    conn.run(changes_sql(table, cursor, after="after" in values, all_keys=all_keys,
                         offset="offset" in values), stream=reader)
    if reader.chunk.unfit:
        refuse_unfit(conn, table, map(int, reader.chunk.unfit.split(b",")))
    return reader.chunk


def copy_changes(conn: pg8000.native.Connection, table: str, cursor: TableCursor,
                 read_point: ReadPoint, limit: int, chunk_rows: int, *,
                 all_keys: bool = False, reader: SecondReader | None = None) -> Iterator[Chunk]:
    """Yield ``table``'s unseen rows (at most ``limit``) in key order, ``chunk_rows`` a chunk.

    One COPY statement per chunk, each continuing above the last key of the one
    before; a chunk shorter than asked is the last. ``all_keys`` asks for every
    row's key, not only each chunk's last. Must run inside :func:`snapshot`, whose
    read point decides the xid window and keeps every chunk in one snapshot.

    With a ``reader`` (whose first connection is ``conn``), the chunks after a full
    first one are read in pairs: the first on ``conn``, the second on the reader's
    second connection, skipping the first's rows; the next pair is asked for before
    this one is yielded, so the server renders while the caller writes. At most four
    chunks are held, so memory stays bounded by ``chunk_rows``, not by the table.
    """
    if reader is not None and reader.first is not conn:
        raise ValueError("copy_changes reads with a SecondReader of its own connection only")
    values: dict[str, Any] = {"clock": read_point.clock}
    if cursor.since is not None:
        window = xmin_window(cursor.since, read_point.snapshot)
        values.update(xmax32=window.xmax32, width=window.width)
    elif cursor.since_last_updated is not None:
        values["since_last_updated"] = cursor.since_last_updated.isoformat()
    after = cursor.resume_after
    remaining = limit
    while remaining > 0:
        asked = min(chunk_rows, remaining)
        chunk = _read_chunk(conn, table, cursor, _chunk_values(values, after, asked),
                            all_keys=all_keys)
        if chunk.rows:
            yield chunk
        if chunk.rows < asked:
            return
        remaining -= chunk.rows
        after = chunk.last_key
        if reader is not None and remaining > 0:
            yield from _copy_in_pairs(reader, table, cursor, values, after, remaining,
                                      chunk_rows, all_keys)
            return


def _chunk_values(values: dict[str, Any], after: int | None, limit: int,
                  offset: int = 0) -> dict[str, Any]:
    """The settings of one chunk's statement: the table's, its start, size and skip."""
    chunk = {**values, "limit": limit}
    if after is not None:
        chunk["after"] = after
    if offset:
        chunk["offset"] = offset
    return chunk


def _copy_in_pairs(reader: SecondReader, table: str, cursor: TableCursor,
                   values: dict[str, Any], after: int | None, remaining: int, chunk_rows: int,
                   all_keys: bool) -> Iterator[Chunk]:
    """Read the chunks of :func:`copy_changes` after its first two at a time, on two connections.

    Only a table whose first chunk came back full gets here: most runs' tables fit in
    one chunk, and then no second connection is opened nor thread used.
    """
    def ask(after: int | None, remaining: int) -> list[tuple["Future[Chunk]", int]]:
        first = min(chunk_rows, remaining)
        second = min(chunk_rows, remaining - first)
        conn = reader.second() if second > 0 else None  # before either read: it uses the first
        pair = [(reader.submit(reader.first, table, cursor, _chunk_values(values, after, first),
                               all_keys=all_keys), first)]
        if conn is not None:
            pair.append((reader.submit(conn, table, cursor,
                                       _chunk_values(values, after, second, first),
                                       all_keys=all_keys), second))
            reader.second_chunks += 1
        return pair

    pending: list[tuple["Future[Chunk]", int]] = []
    try:
        pending = ask(after, remaining)
        while pending:
            ready, after, remaining = _take_pair(pending, after, remaining)
            pending = ask(after, remaining) if remaining > 0 else []
            while ready:  # each chunk let go of as soon as the caller has it
                yield ready.pop(0)
    finally:
        wait([future for future, _ in pending])


def _take_pair(pending: list[tuple["Future[Chunk]", int]], after: int | None,
               remaining: int) -> tuple[list[Chunk], int | None, int]:
    """Wait for a pair's chunks; return those holding rows, the last key, the rows still wanted.

    A chunk shorter than asked was the table's last: nothing is wanted after it. Both
    reads are waited for first, so neither connection is still busy when the next
    statement is sent to it.
    """
    wait([future for future, _ in pending])
    ready = []
    for future, asked in pending:
        chunk = future.result()
        if chunk.rows:
            ready.append(chunk)
        if chunk.rows < asked:
            return ready, after, 0
        remaining -= chunk.rows
        after = chunk.last_key
    return ready, after, remaining


def keys_sql(table: str, block_keys: int, *, after: bool) -> str:
    """Return the query of the next block of ``table``'s primary keys: ascending, comma-joined.

    At most ``block_keys`` keys (an int from the code, never input), above the bound
    ``:after`` when ``after`` is set: one index range per block, so a table's blocks
    are a keyset walk like its chunks. Numbering every key with ``row_number()`` to
    group them into blocks in one statement made the server sort them all again (a
    second pass over the table's keys, about 0.7 of the 1.0 CPU-seconds of listing
    1.9 million; docs/ingest.md, "Performance").
    """
    key = quote_ident(primary_key(table))
    above = f" WHERE {key} > :after" if after else ""
    # Identifiers are allow-listed and quoted; the only number is an int constant.
    return (f"SELECT string_agg(k::text, ',' ORDER BY k) FROM (SELECT {key} AS k "  # nosec
            f"FROM {quote_ident(table)}{above} ORDER BY {key} LIMIT {int(block_keys)}) AS block")


def copy_keys(conn: pg8000.native.Connection, table: str, block_keys: int,
              sink: LineSink) -> None:
    """Hand ``sink`` every primary key of ``table`` in ascending blocks, one line per block.

    The server joins each block's keys, so Python handles one line per block, not
    one per key; a table with no rows gives no line.
    """
    last: int | None = None
    while True:
        bound = {} if last is None else {"after": last}
        [[joined]] = conn.run(keys_sql(table, block_keys, after=last is not None), **bound)
        if joined is None:
            return
        sink.write(joined.encode() + b"\n")
        if joined.count(",") + 1 < block_keys:
            return
        last = int(joined.rpartition(",")[2])
