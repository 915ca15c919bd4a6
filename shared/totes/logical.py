"""Log-based capture: every committed change of the 11 tables, read from a logical replication slot.

Snapshot capture sees each row as it is at each run; a row amended three times
between two runs arrives once, and a delete only at the next key sweep. Here the
source's write-ahead log is decoded by PostgreSQL's ``pgoutput`` plugin into a
replication slot, read over the same plain SQL connection as everything else:

* :func:`ensure_source` creates the publication (exactly the contract's tables)
  and the slot when missing and the login may, or fails naming the SQL and the
  privileges a DBA must grant;
* :func:`read_changes` peeks (never gets) the changes after the last committed
  position, at most a row budget of them, and streams them through
  :class:`ChangeWriter`, which writes each insert and update as its own version
  line and each delete as a deletion record, in commit order;
* :func:`advance` moves the slot to a committed manifest's position, so the source
  may recycle its WAL; it is only called once that manifest exists.

Rows never cross to Python as a result set: COPY streams one message per line
(hex) and the budget is cut on the server, so memory stays flat whatever a
transaction's size. Values are bound through transaction-local settings (COPY
takes no parameters), identifiers come from the allow-list and are quoted.
"""
from array import array
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable

import pg8000.native

from totes import extract, keys, observability, pgoutput, sweep
from totes.db import quote_ident
from totes.errors import InputError
from totes.manifest import DataFile, LogicalPosition
from totes.source import SOURCE_TABLES, VERSION_COLUMN

logger = observability.service_logger()

PLUGIN = "pgoutput"
#: decoding stops after the first commit past this many messages per budgeted change (a
#: transaction brings a Begin, a Commit and a Relation message or more besides its changes).
MESSAGES_PER_CHANGE = 4
_INSUFFICIENT_PRIVILEGE = "42501"


class LogicalSetupError(InputError, RuntimeError):
    """The source is not ready for log-based capture; the message says what a DBA must run."""


class SlotPositionError(InputError, RuntimeError):
    """The slot is gone or was moved past what the pipeline committed: changes may be lost."""


def _publication_sql(publication: str) -> str:
    tables = ", ".join(quote_ident(table) for table in SOURCE_TABLES)
    return f"CREATE PUBLICATION {quote_ident(publication)} FOR TABLE {tables}"


def _slot_sql(slot: str) -> str:
    return f"SELECT pg_create_logical_replication_slot('{slot}', '{PLUGIN}')"


_PRIVILEGES = (
    "the login needs the REPLICATION attribute (ALTER ROLE <login> REPLICATION; on RDS: "
    "GRANT rds_replication TO <login>) to create and read the slot, and ownership of the "
    "11 tables (or a DBA creating the publication) to create the publication")


def _setup_error(what: str, dba_sql: str,
                 error: pg8000.native.DatabaseError) -> LogicalSetupError:
    """The error for a ``what`` the login could not create: the SQL a DBA must run instead.

    The privileges are named too when the server refused for want of them (SQLSTATE 42501).
    """
    fields = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
    code, message = str(fields.get("C", "")), str(fields.get("M", error))
    return LogicalSetupError(
        f"cannot create {what} ({message}); a DBA must run: {dba_sql}; "
        + ("" if code != _INSUFFICIENT_PRIVILEGE else _PRIVILEGES))


def check_wal_level(conn: pg8000.native.Connection) -> None:
    """Refuse a server whose WAL does not carry logical decoding."""
    [[level]] = conn.run("SHOW wal_level")
    if level != "logical":
        raise LogicalSetupError(
            f"the source's wal_level is {level}, not logical: CAPTURE_MODE=logical needs "
            "ALTER SYSTEM SET wal_level = logical and a restart (on RDS: set "
            "rds.logical_replication = 1 in the DB parameter group and reboot), or use "
            "CAPTURE_MODE=snapshot")


def _ensure_publication(conn: pg8000.native.Connection, publication: str) -> None:
    exists = conn.run("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = :name",
                      name=publication)
    if not exists:
        try:
            conn.run(_publication_sql(publication))
        except pg8000.native.DatabaseError as error:
            raise _setup_error(f"publication {publication}", _publication_sql(publication),
                               error) from None
        logger.info("publication created", extra={"publication": publication})
        return
    published = {row[0] for row in conn.run(
        "SELECT tablename FROM pg_catalog.pg_publication_tables WHERE pubname = :name "
        "AND schemaname = current_schema()", name=publication)}
    missing = [table for table in SOURCE_TABLES if table not in published]
    if missing:
        raise LogicalSetupError(
            f"publication {publication} lacks {', '.join(missing)}; a DBA must run: ALTER "
            f"PUBLICATION {quote_ident(publication)} ADD TABLE "
            + ", ".join(quote_ident(table) for table in missing))


def slot_state(conn: pg8000.native.Connection, slot: str) -> tuple[str, str, int] | None:
    """Return the slot's plugin, database and confirmed position, or None if it is missing."""
    rows = conn.run("SELECT plugin, database, confirmed_flush_lsn::text "
                    "FROM pg_catalog.pg_replication_slots WHERE slot_name = :slot", slot=slot)
    if not rows:
        return None
    plugin, database, confirmed = rows[0]
    return str(plugin), str(database), pgoutput.parse_lsn(confirmed)


def ensure_source(conn: pg8000.native.Connection, slot: str, publication: str) -> int:
    """Create the publication and the slot if missing; return the slot's confirmed LSN.

    Runs outside any transaction. A slot created here starts at its consistent
    point: every transaction committed after it is decoded, and any snapshot
    taken after this returns sees every transaction committed before it.
    """
    check_wal_level(conn)
    _ensure_publication(conn, publication)
    state = slot_state(conn, slot)
    if state is None:
        try:
            [[lsn]] = conn.run("SELECT lsn::text FROM pg_create_logical_replication_slot("
                               ":slot, :plugin)", slot=slot, plugin=PLUGIN)
        except pg8000.native.DatabaseError as error:
            raise _setup_error(f"replication slot {slot}", _slot_sql(slot), error) from None
        logger.info("replication slot created", extra={"slot": slot, "lsn": lsn})
        return pgoutput.parse_lsn(lsn)
    _check_slot(conn, slot, state)
    return state[2]


def _check_slot(conn: pg8000.native.Connection, slot: str, state: tuple[str, str, int]) -> None:
    plugin, database, _ = state
    [[current]] = conn.run("SELECT current_database()")
    if plugin != PLUGIN or database != current:
        raise LogicalSetupError(
            f"replication slot {slot} decodes {database} with {plugin}, not {current} with "
            f"{PLUGIN}: drop it (SELECT pg_drop_replication_slot('{slot}')) or set "
            "REPLICATION_SLOT to another name")


def resume(conn: pg8000.native.Connection, position: LogicalPosition) -> None:
    """Bring the slot to ``position`` (a committed manifest's) before reading from it.

    A run that failed after committing its manifest but before advancing the slot
    left it behind: it is advanced now, which is safe because that manifest
    exists. A slot that is missing, or ahead of the position (another consumer
    read it with ``get``, or it was advanced by hand), has lost changes the
    warehouse never saw: refused, naming the way back.
    """
    state = slot_state(conn, position.slot)
    fallback = ("set CAPTURE_MODE=snapshot for a re-sync through snapshot capture (see "
                "docs/ingest.md, 'Dropping the slot')")
    if state is None:
        raise SlotPositionError(
            f"replication slot {position.slot} is gone: the changes after {position.lsn} "
            f"can no longer be read from it; {fallback}")
    _check_slot(conn, position.slot, state)
    committed = pgoutput.parse_lsn(position.lsn)
    if state[2] > committed:
        raise SlotPositionError(
            f"replication slot {position.slot} confirms {pgoutput.lsn_text(state[2])}, past "
            f"the committed {position.lsn}: something else consumed it and changes are lost "
            f"to the pipeline; {fallback}")
    if state[2] < committed:
        advance(conn, position.slot, committed)


def advance(conn: pg8000.native.Connection, slot: str, lsn: int) -> None:
    """Move the slot's confirmed position to ``lsn`` (never backwards), freeing older WAL."""
    conn.run("SELECT pg_replication_slot_advance(:slot, CAST(:lsn AS pg_lsn))",
             slot=slot, lsn=pgoutput.lsn_text(lsn))


def lag_bytes(conn: pg8000.native.Connection, slot: str) -> int | None:
    """Bytes of WAL the slot makes the source keep (None when the slot is missing)."""
    rows = conn.run("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint "
                    "FROM pg_catalog.pg_replication_slots WHERE slot_name = :slot", slot=slot)
    return None if not rows or rows[0][0] is None else int(rows[0][0])


#: the COPY statement streaming the slot's messages after the committed position. Each line
#: is ``<messages decoded> <message as hex>``. The first ``skip`` changes (I, U, D, T: bytes
#: 73, 85, 68, 84; a transaction cut short by the previous run's budget) are left out on
#: the server, and so is everything after the ``skip + budget + 1``-th change, which only
#: proves there is more. Begin, Relation and Type messages in the skipped part are kept:
#: later changes need them. Every value comes from a transaction-local setting.
CHANGES_SQL = (
    "COPY (SELECT total || ' ' || encode(data, 'hex') FROM ("
    "SELECT n, data, get_byte(data, 0) IN (73, 85, 68, 84) AS change, "
    "count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68, 84)) OVER (ORDER BY n) AS c, "
    "count(*) OVER () AS total "
    "FROM pg_logical_slot_peek_binary_changes(current_setting('totes.slot')::name, NULL, "
    "current_setting('totes.upto')::integer, 'proto_version', '1', 'publication_names', "
    "current_setting('totes.publication')) WITH ORDINALITY AS m(lsn, xid, data, n)) AS m "
    "WHERE CASE WHEN change "
    "THEN c > current_setting('totes.skip')::bigint "
    "AND c <= current_setting('totes.skip')::bigint + current_setting('totes.budget')::bigint + 1 "
    "ELSE c <= current_setting('totes.skip')::bigint + current_setting('totes.budget')::bigint "
    "END ORDER BY n) TO STDOUT")


class _Writers:
    """One object writer per table and kind, flushed together when ``chunk_rows`` lines wait."""

    def __init__(self, make: Callable[[str, bool], Any], chunk_rows: int) -> None:
        self._make, self._chunk_rows = make, chunk_rows
        self._writers: dict[tuple[str, bool], Any] = {}
        self._waiting = 0

    def add(self, table: str, deletion: bool, line: bytes) -> None:
        if (table, deletion) not in self._writers:
            self._writers[(table, deletion)] = self._make(table, deletion)
        self._writers[(table, deletion)].add(line)
        self._waiting += 1
        if self._waiting >= self._chunk_rows:
            self.flush()

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()
        self._waiting = 0

    def files(self, table: str, deletion: bool) -> tuple[DataFile, ...]:
        writer = self._writers.get((table, deletion))
        return () if writer is None else tuple(writer.files)


@dataclass
class ChangeWriter:
    """Takes the slot's messages, line by line from COPY, and writes them as ingest files.

    Inserts and updates become version lines of their table (the new row), deletes
    deletion records stamped with their commit time; an update that changed the
    primary key is both. ``position`` moves to each commit as it passes; at the end
    it names the transaction the budget cut short, if any.
    """

    writers: _Writers
    position: LogicalPosition
    budget: int
    upto: int
    changes: int = 0
    overflow: bool = False
    decoded: int = 0
    transactions: int = 0
    truncated_tables: list[str] = field(default_factory=list)
    future: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    #: table -> keys of the versions written (8 bytes each), for a later key sweep.
    keys: dict[str, "array[int]"] = field(default_factory=dict)
    _shapes: dict[int, pgoutput.RowShape | None] = field(default_factory=dict)
    _begin: pgoutput.Begin | None = None
    _in_transaction: int = 0
    _first: bool = True

    def write(self, line: bytes) -> None:
        """Take one ``<total> <hex>`` line from COPY."""
        total, _, data = line.rstrip(b"\n").partition(b" ")
        self.decoded = int(total)
        message = pgoutput.decode(bytes.fromhex(data.decode("ascii")))
        if isinstance(message, pgoutput.Begin):
            self._start(message)
        elif isinstance(message, pgoutput.Commit):
            self.position = replace(self.position, lsn=pgoutput.lsn_text(message.end_lsn),
                                    partial_commit_lsn=None, partial_changes=0)
            self._begin, self._in_transaction = None, 0
            self.transactions += 1
        elif isinstance(message, pgoutput.Relation):
            self._shapes[message.oid] = (pgoutput.RowShape.of(message)
                                         if message.name in SOURCE_TABLES else None)
        elif isinstance(message, (pgoutput.Insert, pgoutput.Update, pgoutput.Delete,
                                  pgoutput.Truncate)):
            self._change(message)

    def _start(self, begin: pgoutput.Begin) -> None:
        self._begin, self._in_transaction = begin, 0
        if self._first and self.position.partial_commit_lsn is not None:
            expected = pgoutput.parse_lsn(self.position.partial_commit_lsn)
            if begin.final_lsn != expected:
                raise SlotPositionError(
                    f"the slot's first transaction commits at {pgoutput.lsn_text(begin.final_lsn)}"
                    f", not at {self.position.partial_commit_lsn} where the previous run "
                    "stopped inside a transaction: the slot was moved")
            self._in_transaction = self.position.partial_changes
        self._first = False

    def _change(self, message: Any) -> None:
        if self.changes == self.budget:
            self.overflow = True
            return
        if self._begin is None:
            raise pgoutput.DecodeError("a change arrived outside a transaction")
        self.changes += 1
        self._in_transaction += 1
        if isinstance(message, pgoutput.Truncate):
            names = [shape.table for oid in message.relations
                     if (shape := self._shapes.get(oid)) is not None]
            self.truncated_tables += names
            return
        shape = self._shapes.get(message.relation)
        if shape is None:
            if message.relation not in self._shapes:
                raise pgoutput.DecodeError(f"a change to relation {message.relation} arrived "
                                           "before its Relation message")
            return
        at = self._begin.commit_time
        if isinstance(message, pgoutput.Delete):
            self._delete(shape, shape.key(message.old), at)
            return
        if isinstance(message, pgoutput.Update) and message.old is not None \
                and shape.key(message.old) != shape.key(message.new):
            self._delete(shape, shape.key(message.old), at)
        fallback = message.old if getattr(message, "old_kind", None) == "O" else None
        self.writers.add(shape.table, False, shape.line(message.new, fallback))
        self.rows[shape.table] = self.rows.get(shape.table, 0) + 1
        self.keys.setdefault(shape.table, array("q")).append(shape.key(message.new))
        stamp = message.new[shape.positions[VERSION_COLUMN]]
        if isinstance(stamp, str) and datetime.fromisoformat(stamp) > at:
            self.future[shape.table] = self.future.get(shape.table, 0) + 1

    def _delete(self, shape: pgoutput.RowShape, key: int, at: datetime) -> None:
        self.writers.add(shape.table, True, sweep.deletion_line(SOURCE_TABLES[shape.table],
                                                                key, at))
        self.deleted[shape.table] = self.deleted.get(shape.table, 0) + 1

    def finish(self) -> LogicalPosition:
        """Flush every object; return the position reached (inside a cut transaction, if any)."""
        self.writers.flush()
        if self._begin is not None and self._in_transaction:
            self.position = replace(
                self.position, partial_commit_lsn=pgoutput.lsn_text(self._begin.final_lsn),
                partial_changes=self._in_transaction)
        return self.position

    @property
    def complete(self) -> bool:
        """Whether the slot had nothing more to give after this run's changes."""
        return not self.overflow and self.decoded < self.upto


def read_changes(conn: pg8000.native.Connection, position: LogicalPosition, budget: int,
                 writer_for: Callable[[str, bool], Any], chunk_rows: int) -> ChangeWriter:
    """Stream at most ``budget`` changes after ``position`` into new objects.

    Must run inside a transaction (the settings are transaction-local), after
    :func:`resume`. ``writer_for(table, deletion)`` makes the object writer of a
    table's versions or deletions.
    """
    upto = MESSAGES_PER_CHANGE * (position.partial_changes + budget + 1)
    values = {"slot": position.slot, "publication": position.publication,
              "skip": position.partial_changes, "budget": budget, "upto": upto}
    extract.bind_settings(conn, **values)
    writer = ChangeWriter(_Writers(writer_for, chunk_rows), position, budget, upto)
    conn.run(CHANGES_SQL, stream=writer)
    writer.finish()
    return writer


def key_blocks(captured: "array[int]") -> list[bytes]:
    """Render captured keys as the sweep's ascending, distinct block lines.

    Snapshot capture lists the keys it captured for the next key sweep; log-based
    capture does the same, so a fall back to snapshot capture finds the deletion of
    a row created while the slot was read.
    """
    ordered = sorted(set(captured))
    return [sweep.render_block(ordered[at:at + sweep.BLOCK_KEYS])
            for at in range(0, len(ordered), sweep.BLOCK_KEYS)]


def data_key_for(run: keys.RunId) -> Callable[[str, bool, int], str]:
    """Return the key of a run's part: a table's versions, or its deletion records."""
    def key(table: str, deletion: bool, part: int) -> str:
        return keys.deletions_key(table, run, part) if deletion else \
            keys.data_key(table, run, part, "jsonl")
    return key
