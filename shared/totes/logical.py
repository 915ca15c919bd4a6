"""Log-based capture: every committed change of the 11 tables, read from a logical replication slot.

Snapshot capture sees each row as it is at each run; a row amended three times
between two runs arrives once, and a delete only at the next key sweep. Here the
source's write-ahead log is decoded by PostgreSQL's ``pgoutput`` plugin into a
replication slot, read over the same plain SQL connection as everything else:

* :func:`ensure_source` creates the publication (exactly the contract's tables)
  and the slot when missing and the login may, or fails naming the SQL and the
  privileges a DBA must grant;
* :func:`check_publication` (every run) finds a publication that drifted from
  the 11 tables and repairs it where the login may, naming the tables to re-sync;
* :func:`resume` refuses a position beyond the server's WAL, makes a lost slot
  again (naming a re-sync of every table), and catches a slot up to the position;
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
import json
from array import array
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Callable

import pg8000.native

from totes import extract, keys, observability, pgoutput, sweep
from totes.db import close_quietly, quote_ident, server_fields
from totes.errors import InputError, TransientError
from totes.manifest import DataFile, LogicalPosition
from totes.source import SOURCE_COLUMNS, SOURCE_TABLES, VERSION_COLUMN

logger = observability.service_logger()

PLUGIN = "pgoutput"
#: decoding stops after the first commit past this many messages per budgeted change (a
#: transaction brings a Begin, a Commit and a Relation message or more besides its changes).
MESSAGES_PER_CHANGE = 4
_INSUFFICIENT_PRIVILEGE = "42501"


class LogicalSetupError(InputError, RuntimeError):
    """The source is not ready for log-based capture; the message says what a DBA must run."""


class SlotPositionError(InputError, RuntimeError):
    """The slot was moved past what the pipeline committed: changes may be lost."""


class ManifestPositionError(InputError, ValueError):
    """A manifest's position lies beyond the server's WAL: forged, or from another server."""


class SlotUnavailableError(TransientError, RuntimeError):
    """The slot or publication vanished or was busy while a run used it.

    The next run checks both again before reading, re-creates what is missing and
    re-syncs by snapshot, so a retry will do.
    """


#: SQLSTATEs of a slot or publication that is missing (42704), unusable (55000: invalidated,
#: not reserving WAL, wrong kind) or in use by another process (55006).
_UNAVAILABLE = {"42704": "does not exist", "55000": "cannot be used",
                "55006": "is in use by another process"}


def _sqlstate(error: pg8000.native.DatabaseError) -> tuple[str, str]:
    """The SQLSTATE and message of ``error`` (the error's text when the server sent none)."""
    fields = server_fields(error)
    return fields.get("C", ""), fields.get("M", str(error))


def _slot_call(conn: pg8000.native.Connection, which: str, sql: str, **params: Any) -> Any:
    """Run a statement on the slot, naming a missing or unusable slot or publication.

    The checks before a read make these rare (a slot dropped or invalidated, a
    publication dropped, between the check and the read); they end as
    :class:`SlotUnavailableError`, never as a raw database error.
    """
    try:
        return conn.run(sql, **params)
    except pg8000.native.DatabaseError as error:
        code, message = _sqlstate(error)
        if code not in _UNAVAILABLE:
            raise
        raise SlotUnavailableError(
            f"replication slot {which} or its publication {_UNAVAILABLE[code]} (SQLSTATE "
            f"{code}: {message}); the next run checks both, re-creates what is missing and "
            "re-syncs by snapshot (docs/runbook.md, 'Replication slot or publication "
            "unavailable')") from None


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
    code, message = _sqlstate(error)
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


@dataclass(frozen=True)
class PublicationState:
    """The publication as the catalog describes it, and the tables whose changes it lost.

    ``resync`` names the contract's tables whose changes the publication did not
    (fully) publish until this run repaired it: they are re-read by snapshot.
    """

    oid: int
    resync: tuple[str, ...] = ()
    #: made by this run: the slot's history predates it, so the slot must be made again.
    created: bool = False


def _publication_drift(conn: pg8000.native.Connection, publication: str,
                       schema: str) -> tuple[list[str], list[str], set[str]]:
    """Return what is wrong with the publication: problems, foreign tables, tables affected."""
    [[all_tables, actions]] = conn.run(
        "SELECT puballtables, ARRAY[pubinsert, pubupdate, pubdelete, pubtruncate] "
        "FROM pg_catalog.pg_publication WHERE pubname = :name", name=publication)
    published = {(str(namespace), str(table)) for namespace, table in conn.run(
        "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables "
        "WHERE pubname = :name", name=publication)}
    problems: list[str] = []
    affected: set[str] = set()
    if not all(actions):
        problems.append("does not publish every insert, update, delete and truncate")
        affected |= set(SOURCE_TABLES)
    missing = [table for table in SOURCE_TABLES if (schema, table) not in published]
    if missing:
        problems.append(f"lacks {', '.join(missing)}")
        affected |= set(missing)
    [[version]] = conn.run("SELECT current_setting('server_version_num')::integer")
    if version >= 150000:  # row filters and column lists exist from PostgreSQL 15 on
        filtered = [str(table) for [table] in conn.run(
            "SELECT c.relname FROM pg_catalog.pg_publication_rel r "
            "JOIN pg_catalog.pg_publication p ON p.oid = r.prpubid "
            "JOIN pg_catalog.pg_class c ON c.oid = r.prrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE p.pubname = :name AND n.nspname = :schema "
            "AND (r.prqual IS NOT NULL OR r.prattrs IS NOT NULL)",
            name=publication, schema=schema)]
        if filtered:
            problems.append(f"has a row filter or column list on {', '.join(sorted(filtered))}")
            affected |= set(filtered) & set(SOURCE_TABLES)
    foreign = sorted(f"{namespace}.{table}" for namespace, table in published
                     if namespace != schema or table not in SOURCE_TABLES)
    if all_tables:
        problems.append("is FOR ALL TABLES")
    elif foreign:
        problems.append(f"also publishes {', '.join(foreign[:10])}"
                        + (f" and {len(foreign) - 10} more" if len(foreign) > 10 else ""))
    return problems, foreign, affected


def _repair_sql(publication: str, schema: str) -> list[str]:
    """The statements that make the publication exactly the contract's tables, every action."""
    name = quote_ident(publication)
    tables = ", ".join(f"{quote_ident(schema)}.{quote_ident(table)}" for table in SOURCE_TABLES)
    return [f"ALTER PUBLICATION {name} SET TABLE {tables}",
            f"ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate')"]


def check_publication(conn: pg8000.native.Connection, publication: str) -> PublicationState:
    """Make sure the publication is exactly the 11 tables, every action, nothing filtered.

    Checked on every run, because a publication that drifted drops changes
    silently: a table removed from it, a row filter or a column list, an action
    no longer published. Other tables in it (``FOR ALL TABLES``, a DBA's
    addition) are refused too: log-based capture reads only our tables. The
    publication is created when missing, and repaired, when the login may (it
    owns the tables); the tables whose changes it dropped are named for a
    re-sync by snapshot. Otherwise the run fails naming the SQL a DBA must run.
    A ``FOR ALL TABLES`` publication cannot be altered: it must be made again
    (a new publication: the next run re-creates the slot and re-syncs).
    """
    [[schema]] = conn.run("SELECT current_schema()")
    exists = conn.run("SELECT oid FROM pg_catalog.pg_publication WHERE pubname = :name",
                      name=publication)
    if not exists:
        try:
            conn.run(_publication_sql(publication))
        except pg8000.native.DatabaseError as error:
            raise _setup_error(f"publication {publication}", _publication_sql(publication),
                               error) from None
        logger.info("publication created", extra={"publication": publication})
        [[oid]] = conn.run("SELECT oid FROM pg_catalog.pg_publication WHERE pubname = :name",
                           name=publication)
        return PublicationState(int(oid), created=True)
    oid = int(exists[0][0])
    problems, foreign, affected = _publication_drift(conn, publication, str(schema))
    if not problems:
        return PublicationState(oid)
    [[all_tables]] = conn.run("SELECT puballtables FROM pg_catalog.pg_publication "
                              "WHERE pubname = :name", name=publication)
    repair = _repair_sql(publication, str(schema))
    if all_tables:
        dba = (f"DROP PUBLICATION {quote_ident(publication)}; "
               f"{_publication_sql(publication)}")
        raise LogicalSetupError(
            f"publication {publication} {'; '.join(problems)}: log-based capture reads only "
            f"the 11 tables of {schema}; a DBA must run: {dba} (the next run then re-syncs "
            "every table by snapshot)")
    try:
        for statement in repair:
            conn.run(statement)
    except pg8000.native.DatabaseError as error:
        code, message = _sqlstate(error)
        raise LogicalSetupError(
            f"publication {publication} {'; '.join(problems)}, and repairing it failed "
            f"({message}); a DBA must run: {'; '.join(repair)}"
            + ("" if code != _INSUFFICIENT_PRIVILEGE else f"; {_PRIVILEGES}")) from None
    resync = tuple(table for table in SOURCE_TABLES if table in affected)
    logger.warning("publication %s had drifted (%s): repaired; re-syncing %s by snapshot",
                   publication, "; ".join(problems), ", ".join(resync) or "nothing",
                   extra={"publication": publication, "problems": problems,
                          "foreign_tables": foreign[:10], "resync": list(resync)})
    return PublicationState(oid, resync)


@dataclass(frozen=True)
class SlotState:
    """The slot as ``pg_replication_slots`` describes it."""

    plugin: str
    database: str
    confirmed: int
    #: why the server invalidated the slot ('lost' WAL, a conflict), None while usable.
    invalidated: str | None = None


def slot_state(conn: pg8000.native.Connection, slot: str) -> SlotState | None:
    """Return the slot's plugin, database, confirmed position and validity, or None if missing.

    ``to_jsonb`` reads the columns each server version has (``wal_status`` from 13,
    ``conflicting`` from 16, ``invalidation_reason`` from 17) in one query.
    """
    rows = _slot_call(conn, slot, "SELECT to_jsonb(s) FROM pg_catalog.pg_replication_slots s "
                      "WHERE slot_name = :slot", slot=slot)
    if not rows:
        return None
    fields = rows[0][0]
    fields = json.loads(fields) if isinstance(fields, str) else fields
    reason = fields.get("invalidation_reason")
    if reason is None and fields.get("wal_status") == "lost":
        reason = "its WAL was removed (max_slot_wal_keep_size)"
    if reason is None and fields.get("conflicting"):
        reason = "a recovery conflict"
    confirmed = fields.get("confirmed_flush_lsn")
    return SlotState(str(fields.get("plugin")), str(fields.get("database")),
                     0 if confirmed is None else pgoutput.parse_lsn(confirmed),
                     None if reason is None else str(reason))


_CREATE_SLOT = "SELECT lsn::text FROM pg_create_logical_replication_slot(:slot, :plugin, false)"
#: temporary false, two_phase false, failover true (PostgreSQL 17 and later).
_CREATE_SLOT_FAILOVER = ("SELECT lsn::text FROM pg_create_logical_replication_slot(:slot, "
                         ":plugin, false, false, true)")


def create_slot(conn: pg8000.native.Connection, slot: str) -> int:
    """Create the slot; return its consistent point (where decoding starts).

    On PostgreSQL 17 and later the slot is made with ``failover``, so a standby
    configured with ``sync_replication_slots`` keeps a copy and the slot survives
    a failover.
    """
    [[version]] = conn.run("SELECT current_setting('server_version_num')::integer")
    sql = _CREATE_SLOT_FAILOVER if version >= 170000 else _CREATE_SLOT
    try:
        [[lsn]] = conn.run(sql, slot=slot, plugin=PLUGIN)
    except pg8000.native.DatabaseError as error:
        raise _setup_error(f"replication slot {slot}", _slot_sql(slot), error) from None
    logger.info("replication slot created", extra={"slot": slot, "lsn": lsn,
                                                   "failover": version >= 170000})
    return pgoutput.parse_lsn(lsn)


def ensure_source(conn: pg8000.native.Connection, slot: str, publication: str,
                  publication_oid: int | None = None) -> tuple[int, int, bool]:
    """Create the publication and the slot if missing; return the slot's LSN, the oid, made.

    Runs outside any transaction. A slot created here starts at its consistent
    point: every transaction committed after it is decoded, and any snapshot
    taken after this returns sees every transaction committed before it. A slot
    that is invalidated, or older than its publication (made in this call, or with
    an oid other than ``publication_oid``, the one recorded), cannot serve: it is
    made again. The last value says whether the slot was made in this call.
    """
    check_wal_level(conn)
    state_of_publication = check_publication(conn, publication)
    oid = state_of_publication.oid
    remade = state_of_publication.created or publication_oid not in (None, oid)
    state = slot_state(conn, slot)
    if state is None or state.invalidated is not None or remade:
        if state is not None:
            drop_slot(conn, slot)
        return create_slot(conn, slot), oid, True
    _check_slot(conn, slot, state)
    return state.confirmed, oid, False


def drop_slot(conn: pg8000.native.Connection, slot: str) -> None:
    """Drop a slot that can no longer serve (invalidated, or decoding a dropped publication)."""
    _slot_call(conn, slot, "SELECT pg_drop_replication_slot(slot_name) FROM "
               "pg_catalog.pg_replication_slots WHERE slot_name = :slot", slot=slot)


def _check_slot(conn: pg8000.native.Connection, slot: str, state: SlotState) -> None:
    [[current]] = conn.run("SELECT current_database()")
    if state.plugin != PLUGIN or state.database != current:
        raise LogicalSetupError(
            f"replication slot {slot} decodes {state.database} with {state.plugin}, not "
            f"{current} with {PLUGIN}: drop it (SELECT pg_drop_replication_slot('{slot}')) "
            "or set REPLICATION_SLOT to another name")


@dataclass(frozen=True)
class Resync:
    """Why a run re-reads tables by snapshot, and which: the slot could not give their changes."""

    reason: str
    tables: tuple[str, ...]


def check_position(conn: pg8000.native.Connection, position: LogicalPosition,
                   manifest_key: str | None) -> None:
    """Refuse a committed position beyond the server's WAL.

    Only this server's decoding can have produced it, so a position ahead of
    ``pg_current_wal_lsn()`` was forged (or names another server): advancing the
    slot to it would skip changes nobody read. A person must look at the manifest.
    """
    [[current]] = conn.run("SELECT pg_current_wal_lsn()::text")
    for name, lsn in (("lsn", position.lsn), ("partial_commit_lsn", position.partial_commit_lsn)):
        if lsn is not None and pgoutput.parse_lsn(lsn) > pgoutput.parse_lsn(current):
            raise ManifestPositionError(
                f"manifest {manifest_key} records {name} {lsn}, beyond the source's current "
                f"WAL position {current}: it was not written by this pipeline against this "
                "server; refusing to advance the slot to it (docs/runbook.md, 'Manifest "
                "position beyond the server')")


def resume(conn: pg8000.native.Connection, position: LogicalPosition,
           publication: PublicationState, manifest_key: str | None = None,
           server_restarted: bool = False, other_cluster: str | None = None,
           start_changed: bool = False) -> tuple[LogicalPosition, Resync | None]:
    """Bring the slot to ``position`` (a committed manifest's) before reading from it.

    A run that failed after committing its manifest but before advancing the slot
    left it behind: it is advanced now, which is safe because that manifest
    exists. A slot that is missing (dropped, or gone after a failover),
    invalidated (``max_slot_wal_keep_size``), or decoding a publication that was
    dropped and made again (its history no longer resolves: every read would
    fail with 42704) cannot give the changes after the position: it is made
    again, and the returned :class:`Resync` says every table must be re-read by
    snapshot, as on the first day. So is a slot behind the position on a server
    that started since the position was committed (``server_restarted``, on evidence the
    manifest cannot forge: :func:`totes.capture.restarted_since_written`): a restore from a backup
    brings the slot back with the rest, and once the restored server's WAL has
    passed the position, advancing the slot would skip every change written since
    the restore; a crash that lost the slot's last advance looks the same, and
    costs one needless re-read. So does a slot ahead of the position on a server
    that restarted: a run that re-synced for that restart made the slot again, then
    failed before its manifest, and the next run must not be refused for it. On a
    server that did not restart, a slot ahead of the position (another consumer read
    it with ``get``, or it was advanced by hand) is refused: something else uses it,
    and a person must decide. A position beyond the server's WAL is refused too
    (:func:`check_position`), except on a server that restarted: a restore, or a
    failover to a server that had not caught up, whose WAL has not yet reached the
    position; the slot is made again and every table re-synced then as well. So is
    any slot when the position was recorded on another cluster (``other_cluster``,
    the reason: :func:`totes.capture.other_cluster`): a position within this
    server's WAL says nothing of what was read here, and advancing to it would
    skip changes; one beyond the WAL is refused all the same. A slot behind the
    position when the server's start differs from the one the manifest recorded
    (``start_changed``), but no restart since the manifest can be shown, is
    re-synced too, never advanced: a restored server started before the last
    manifest was written (a new instance brought up while the old one still served
    the pipeline) cannot prove it, and advancing its slot would skip its own
    changes; a forged or stray manifest costs no more than a re-read here.
    """
    try:
        check_position(conn, position, manifest_key)
        behind = False
    except ManifestPositionError:
        if not server_restarted:
            raise
        behind = True
    state = slot_state(conn, position.slot)
    remade = publication.created or position.publication_oid not in (None, publication.oid)
    reason = None
    if behind:
        reason = ("the source's server restarted since the last run and its WAL is behind that "
                  f"run's position {position.lsn}: a restore from a backup, or a failover to a "
                  "server that had not caught up")
    elif other_cluster is not None:
        reason = f"{other_cluster}: the last run's position is not this server's"
    elif state is None:
        reason = "the replication slot is missing (dropped, or not on this server after a failover)"
    elif state.invalidated is not None:
        reason = f"the replication slot was invalidated: {state.invalidated}"
    elif remade:
        reason = "the publication was dropped and made again since the last run"
    elif server_restarted and state.confirmed != pgoutput.parse_lsn(position.lsn):
        reason = ("the source's server restarted since the last run and the replication slot "
                  f"is not at that run's position ({pgoutput.lsn_text(state.confirmed)}): a "
                  "restore from a backup cannot be told from a crash that lost its last "
                  "advance, nor from a re-sync that made the slot again and failed before "
                  "its manifest")
    elif start_changed and state.confirmed < pgoutput.parse_lsn(position.lsn):
        reason = ("the source's server is not the one the last run read (another start time) "
                  "and the replication slot is behind that run's position "
                  f"({pgoutput.lsn_text(state.confirmed)}): a server restored or promoted "
                  "while the last run read another; advancing the slot could skip its changes")
    if reason is not None or state is None:  # (a missing slot always has its reason)
        check_wal_level(conn)  # lowered since: the slot could not be made, nor read
        if state is not None:
            drop_slot(conn, position.slot)
        lsn = create_slot(conn, position.slot)
        logger.warning("%s: replication slot %s made again at %s; re-syncing every table by "
                       "snapshot (changes since %s may be lost from the log, not from the "
                       "warehouse)", reason, position.slot, pgoutput.lsn_text(lsn), position.lsn,
                       extra={"slot": position.slot, "reason": reason,
                              "previous_lsn": position.lsn, "lsn": pgoutput.lsn_text(lsn)})
        restarted = replace(position, lsn=pgoutput.lsn_text(lsn), partial_commit_lsn=None,
                            partial_changes=0, publication_oid=publication.oid)
        return restarted, Resync(str(reason), tuple(SOURCE_TABLES))
    _check_slot(conn, position.slot, state)
    committed = pgoutput.parse_lsn(position.lsn)
    if state.confirmed > committed:
        raise SlotPositionError(
            f"replication slot {position.slot} confirms {pgoutput.lsn_text(state.confirmed)}, "
            f"past the committed {position.lsn}: something else consumed it and changes are "
            "lost to the pipeline; stop the other consumer, then drop the slot (SELECT "
            f"pg_drop_replication_slot('{position.slot}')): the next run makes it again and "
            "re-syncs by snapshot")
    if state.confirmed < committed:
        advance(conn, position.slot, committed)
    return replace(position, publication_oid=publication.oid), None


def advance(conn: pg8000.native.Connection, slot: str, lsn: int) -> None:
    """Move the slot's confirmed position to ``lsn`` (never backwards), freeing older WAL."""
    _slot_call(conn, slot, "SELECT pg_replication_slot_advance(:slot, CAST(:lsn AS pg_lsn))",
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
#: later changes need them. Decoding stops at ``upto_lsn`` (the WAL flushed when the read
#: began), so a complete read has consumed everything before it, whatever the other
#: tables of the cluster wrote. Every value comes from a transaction-local setting.
CHANGES_SQL = (
    "COPY (SELECT total || ' ' || encode(data, 'hex') FROM ("
    "SELECT n, data, get_byte(data, 0) IN (73, 85, 68, 84) AS change, "
    "count(*) FILTER (WHERE get_byte(data, 0) IN (73, 85, 68, 84)) OVER (ORDER BY n) AS c, "
    "count(*) OVER () AS total "
    "FROM pg_logical_slot_peek_binary_changes(current_setting('totes.slot')::name, "
    "current_setting('totes.upto_lsn')::pg_lsn, "
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


#: looks up the current values of ``columns`` of one row (table, key), None when it is gone.
Lookup = Callable[[str, int, tuple[str, ...]], "dict[str, str | None] | None"]
#: tells whether the change of one row (table, key) by a transaction (32-bit xid), a deletion
#: or not, is already in what a snapshot read, so the slot must not write it again after that.
Superseded = Callable[[str, int, int, bool], bool]
#: a text value shorter than this many characters is never stored out of line by TOAST in
#: the 11 tables (a row of at most 14 columns each under 128 bytes stays under the 2 kB
#: TOAST threshold; a character is at most 4 bytes), so it is never sent as "unchanged".
TOASTABLE_CHARS = 32
#: characters of recent long values kept per read to fill in unchanged TOASTed values.
RECENT_CHARS = 8 * 2**20
#: deletions of one transaction held until its commit, so that the same transaction
#: inserting the key again replaces its deletion; past this many they are written.
PENDING_DELETIONS = 65_536


@dataclass
class ChangeWriter:
    """Takes the slot's messages, line by line from COPY, and writes them as ingest files.

    Inserts and updates become version lines of their table (the new row), deletes
    deletion records stamped with their commit time; an update that changed the
    primary key is both. ``position`` moves to each commit as it passes; at the end
    it names the transaction the budget cut short, if any. Only relations of
    ``schema`` with the contract's names are ours: a same-named table elsewhere is
    never read.

    An update under ``REPLICA IDENTITY DEFAULT`` does not resend a TOASTed value
    it left unchanged. That value is the row's previous version's: taken from the
    old row when the table sends it (``REPLICA IDENTITY FULL``), else from the last
    version of the row in this read (long values are kept, up to
    :data:`RECENT_CHARS`), else from the row as the run's snapshot holds it
    (``lookup``). A row the snapshot no longer holds was deleted later in the log:
    that one version is left out with a WARNING, its deletion follows.

    A change ``superseded`` says the run's re-read by snapshot already holds is
    counted (the budget and the position move past it) but not written
    (``skipped``): its version may be older than the row re-read.

    A key deleted and written again in one read would end deleted: the load
    applies a manifest's deletions after all its versions. So a transaction's
    deletions wait for its commit, and a key it writes again meanwhile drops its
    deletion (``replaced``): no committed state lacked the row. A key whose
    deletion is already written (an earlier transaction's) stops the read just
    before the change that writes it again (``reused``, as the budget would), so
    the next run's manifest carries the new version after this one's deletion.
    """

    writers: _Writers
    position: LogicalPosition
    budget: int
    upto: int
    schema: str = "public"
    lookup: Lookup | None = None
    superseded: Superseded | None = None
    changes: int = 0
    skipped: int = 0
    overflow: bool = False
    decoded: int = 0
    transactions: int = 0
    truncated_tables: list[str] = field(default_factory=list)
    #: tables with an update or delete under a replica identity without the primary key,
    #: whose deletes and key changes the log cannot tell: swept after the read, as for a
    #: TRUNCATE.
    unkeyed_tables: list[str] = field(default_factory=list)
    future: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    #: table -> keys of the versions written (8 bytes each), for a later key sweep.
    keys: dict[str, "array[int]"] = field(default_factory=dict)
    #: unchanged TOASTed values filled in, by where they came from.
    toast_filled: dict[str, int] = field(default_factory=dict)
    _shapes: dict[int, pgoutput.RowShape | None] = field(default_factory=dict)
    _recent: dict[tuple[str, int], dict[int, str]] = field(default_factory=dict)
    _recent_chars: int = 0
    #: deletions of the current transaction dropped because it wrote the key again.
    replaced: int = 0
    #: (table, key) written again after this read's deletion of it: the read stopped there.
    reused: tuple[str, int] | None = None
    _begin: pgoutput.Begin | None = None
    _in_transaction: int = 0
    _first: bool = True
    #: table -> keys whose deletion this read wrote.
    _deleted_keys: dict[str, set[int]] = field(default_factory=dict)
    #: (table, key) -> deletion line of the current transaction, not yet written.
    _pending: dict[tuple[str, int], bytes] = field(default_factory=dict)

    def write(self, line: bytes) -> None:
        """Take one ``<total> <hex>`` line from COPY."""
        total, _, data = line.rstrip(b"\n").partition(b" ")
        self.decoded = int(total)
        if self.reused is not None:
            return
        message = pgoutput.decode(bytes.fromhex(data.decode("ascii")))
        if isinstance(message, pgoutput.Begin):
            self._start(message)
        elif isinstance(message, pgoutput.Commit):
            self._write_pending()
            self.position = replace(self.position, lsn=pgoutput.lsn_text(message.end_lsn),
                                    partial_commit_lsn=None, partial_changes=0)
            self._begin, self._in_transaction = None, 0
            self.transactions += 1
        elif isinstance(message, pgoutput.Relation):
            ours = message.namespace == self.schema and message.name in SOURCE_TABLES
            self._shapes[message.oid] = pgoutput.RowShape.of(message) if ours else None
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
        if self._writes_deleted_key(message):
            self.overflow = True
            return
        self.changes += 1
        self._in_transaction += 1
        if isinstance(message, pgoutput.Truncate):
            names = [shape.table for oid in message.relations
                     if (shape := self._shapes.get(oid)) is not None]
            self.truncated_tables += [name for name in names if name not in self.truncated_tables]
            return
        shape = self._shapes.get(message.relation)
        if shape is None:
            if message.relation not in self._shapes:
                raise pgoutput.DecodeError(f"a change to relation {message.relation} arrived "
                                           "before its Relation message")
            return
        at, xid = self._begin.commit_time, self._begin.xid
        if isinstance(message, pgoutput.Delete):
            if shape.identity_has_key:
                self._delete(shape, shape.key(message.old), at, xid)
            else:
                self._unkeyed(shape.table)
            return
        key = shape.key(message.new)
        if isinstance(message, pgoutput.Update):
            if not shape.identity_has_key:
                self._unkeyed(shape.table)
            elif message.old is not None and (old := shape.key(message.old)) != key:
                self._delete(shape, old, at, xid)
        if self._pending.pop((shape.table, key), None) is not None:
            self.replaced += 1
        if self._is_superseded(shape.table, key, xid, deletion=False):
            return
        fallback = message.old if getattr(message, "old_kind", None) == "O" else None
        values = self._fill_unchanged(shape, key, message.new, fallback)
        if values is None:
            return
        self._remember(shape, key, values)
        self.writers.add(shape.table, False, shape.line(values))
        self.rows[shape.table] = self.rows.get(shape.table, 0) + 1
        self.keys.setdefault(shape.table, array("q")).append(key)
        stamp = values[shape.positions[VERSION_COLUMN]]
        if isinstance(stamp, str) and datetime.fromisoformat(stamp) > at:
            self.future[shape.table] = self.future.get(shape.table, 0) + 1

    def _fill_unchanged(self, shape: pgoutput.RowShape, key: int,
                        values: tuple[pgoutput.Value, ...],
                        old: tuple[pgoutput.Value, ...] | None
                        ) -> tuple[pgoutput.Value, ...] | None:
        """Return the row with its unchanged TOASTed values filled in (see the class)."""
        names = shape.unchanged(values)
        if not names:
            return values
        filled = list(values)
        recent = self._recent.get((shape.table, key), {})
        wanted: list[str] = []
        for name in names:
            position = shape.positions[name]
            if old is not None and old[position] is not pgoutput.UNCHANGED:
                filled[position], source = old[position], "old row"
            elif position in recent:
                filled[position], source = recent[position], "earlier version in this read"
            else:
                wanted.append(name)
                continue
            self.toast_filled[source] = self.toast_filled.get(source, 0) + 1
        if wanted:
            found = None if self.lookup is None else self.lookup(shape.table, key, tuple(wanted))
            if found is None:
                logger.warning(
                    "an update of %s %s left %s unchanged (a TOASTed value the log does not "
                    "resend) and the row is gone from the run's snapshot: this version is "
                    "left out; the row's deletion follows in the log", shape.table, key,
                    ", ".join(wanted), extra={"table": shape.table, "key": key,
                                              "columns": wanted})
                return None
            for name in wanted:
                filled[shape.positions[name]] = found[name]
            self.toast_filled["run's snapshot"] = (self.toast_filled.get("run's snapshot", 0)
                                                   + len(wanted))
        return tuple(filled)

    def _remember(self, shape: pgoutput.RowShape, key: int,
                  values: tuple[pgoutput.Value, ...]) -> None:
        """Keep a version's long values, which a later update of the row may not resend."""
        long = {position: value for position in shape.positions.values()
                if isinstance(value := values[position], str) and len(value) >= TOASTABLE_CHARS}
        if not long and (shape.table, key) not in self._recent:
            return
        if self._recent_chars > RECENT_CHARS:  # bounded: the snapshot lookup covers the rest
            self._recent.clear()
            self._recent_chars = 0
        self._recent[(shape.table, key)] = long
        self._recent_chars += sum(len(value) for value in long.values())

    def _unkeyed(self, table: str) -> None:
        """Note a table whose update or delete may have changed or removed an unseen key.

        Under a replica identity without the primary key (``USING INDEX`` on an index
        without it) a delete's old row lacks the key and a key change sends none (no old
        row at all when the identity's columns are unchanged): the table is swept after
        the read (``unkeyed_tables``), which finds the keys that vanished.
        """
        if table in self.unkeyed_tables:
            return
        self.unkeyed_tables.append(table)
        logger.warning(
            "%s's replica identity lacks its primary key %s, so the log cannot tell its "
            "deletes and key changes: after a read with an update or delete of it, its keys "
            "are swept, and its deletions carry the sweep's time. Set it back: ALTER TABLE "
            "\"%s\" REPLICA IDENTITY DEFAULT", table, SOURCE_TABLES[table], table,
            extra={"table": table})

    def _writes_deleted_key(self, message: Any) -> bool:
        """Tell (and note) whether a change writes a key whose deletion this read wrote."""
        if not self._deleted_keys or not isinstance(message, (pgoutput.Insert, pgoutput.Update)):
            return False
        shape = self._shapes.get(message.relation)
        if shape is None or (key := shape.key(message.new)) not in self._deleted_keys.get(
                shape.table, ()):
            return False
        self.reused = (shape.table, key)
        logger.info("%s %s written again after its deletion in this read: the read stops "
                    "before it, so the deletion is loaded first and the next run carries "
                    "the new version", shape.table, key,
                    extra={"table": shape.table, "key": key})
        return True

    def _is_superseded(self, table: str, key: int, xid: int, *, deletion: bool) -> bool:
        """Tell (and count) whether transaction ``xid``'s change of ``key`` was read already."""
        if self.superseded is None or not self.superseded(table, key, xid, deletion):
            return False
        self.skipped += 1
        return True

    def _delete(self, shape: pgoutput.RowShape, key: int, at: datetime, xid: int) -> None:
        if self._is_superseded(shape.table, key, xid, deletion=True):
            return
        self._pending[(shape.table, key)] = sweep.deletion_line(SOURCE_TABLES[shape.table],
                                                                key, at)
        self._recent.pop((shape.table, key), None)
        if len(self._pending) >= PENDING_DELETIONS:
            self._write_pending()

    def _write_pending(self) -> None:
        """Write the deletions held for the current transaction (see the class)."""
        for (table, key), line in self._pending.items():
            self.writers.add(table, True, line)
            self.deleted[table] = self.deleted.get(table, 0) + 1
            self._deleted_keys.setdefault(table, set()).add(key)
        self._pending.clear()

    def finish(self, read_to: int | None = None) -> LogicalPosition:
        """Flush every object; return the position reached (inside a cut transaction, if any).

        A complete read consumed every transaction committed before ``read_to``
        (the read's upper bound): the position moves there even when none of
        them touched our tables, so the slot releases the WAL the rest of the
        cluster wrote meanwhile.
        """
        self._write_pending()
        self.writers.flush()
        if self._begin is not None and self._in_transaction:
            self.position = replace(
                self.position, partial_commit_lsn=pgoutput.lsn_text(self._begin.final_lsn),
                partial_changes=self._in_transaction)
        elif read_to is not None and self.complete \
                and read_to > pgoutput.parse_lsn(self.position.lsn):
            self.position = replace(self.position, lsn=pgoutput.lsn_text(read_to))
        return self.position

    @property
    def complete(self) -> bool:
        """Whether the slot had nothing more to give after this run's changes."""
        return not self.overflow and self.decoded < self.upto


def read_changes(conn: pg8000.native.Connection, position: LogicalPosition, budget: int,
                 writer_for: Callable[[str, bool], Any], chunk_rows: int,
                 lookup: Lookup | None = None,
                 superseded: Superseded | None = None) -> ChangeWriter:
    """Stream at most ``budget`` changes after ``position`` into new objects.

    Must run inside a transaction (the settings are transaction-local), after
    :func:`resume`. ``writer_for(table, deletion)`` makes the object writer of a
    table's versions or deletions; ``lookup`` reads a row in the run's snapshot;
    ``superseded`` names the changes the run's re-read already holds.
    """
    [[schema, read_to]] = conn.run("SELECT current_schema(), pg_current_wal_flush_lsn()::text")
    upto = MESSAGES_PER_CHANGE * (position.partial_changes + budget + 1)
    values = {"slot": position.slot, "publication": position.publication,
              "skip": position.partial_changes, "budget": budget, "upto": upto,
              "upto_lsn": read_to}
    extract.bind_settings(conn, **values)
    writer = ChangeWriter(_Writers(writer_for, chunk_rows), position, budget, upto,
                          schema=str(schema), lookup=lookup, superseded=superseded)
    try:
        _slot_call(conn, position.slot, CHANGES_SQL, stream=writer)
    except pg8000.native.DatabaseError as error:
        reason = extract.bytes_not_utf8(error)
        if reason is None:
            raise
        raise pgoutput.DecodeError(
            f"a change in slot {position.slot} holds a text value that is not UTF-8 ({reason}; "
            f"{server_fields(error).get('W', '')}): the source database's encoding is "
            "SQL_ASCII, which keeps whatever bytes a client wrote; the change stays in the "
            "slot (docs/runbook.md, \"Input errors\", DecodeError)") from error
    writer.finish(pgoutput.parse_lsn(read_to))
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


class SnapshotLookup:
    """Reads single rows in a run's exported snapshot, on a connection of its own.

    The run's connection is busy streaming the slot when an unchanged TOASTed
    value needs filling in, so the row is read on a second connection, opened on
    first use, that imports the run's snapshot: it sees the row exactly as the
    run's own reads do.
    """

    def __init__(self, connect: Callable[[], pg8000.native.Connection],
                 snapshot_id: str) -> None:
        """Prepare to read in ``snapshot_id`` (from ``pg_export_snapshot()``)."""
        if not extract.SNAPSHOT_ID.fullmatch(snapshot_id):
            raise ValueError(f"{snapshot_id!r} is not an exported snapshot id")
        self._connect, self._snapshot_id = connect, snapshot_id
        self._conn: pg8000.native.Connection | None = None

    def __call__(self, table: str, key: int,
                 columns: tuple[str, ...]) -> dict[str, str | None] | None:
        """Return the text of ``columns`` of ``table``'s row ``key``, or None if it is gone."""
        if self._conn is None:
            self._conn = self._connect()
            extract.join_snapshot(self._conn, self._snapshot_id)
        unknown = [name for name in columns if name not in SOURCE_COLUMNS[table]]
        if unknown:
            raise ValueError(f"{table} has no contract column(s) {unknown}")
        select = ", ".join(f"{quote_ident(name)}::text" for name in columns)
        rows = self._conn.run(
            f"SELECT {select} FROM {quote_ident(table)} "  # nosec B608
            f"WHERE {quote_ident(SOURCE_TABLES[table])} = :key", key=key)
        return None if not rows else dict(zip(columns, rows[0]))

    def close(self) -> None:
        """Close the connection, if one was opened."""
        if self._conn is not None:
            close_quietly(self._conn)
