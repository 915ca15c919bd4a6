"""Snapshot capture (the default): the rows each table gained since the previous run's snapshot.

Inside one read-only REPEATABLE READ snapshot, a run checks that the columns it
reads still have the contract's types, copies every table's rows not visible to
the previous run's snapshot (rendered as JSON Lines by the server, packed into
objects of at most ``CHUNK_ROWS`` rows), and sweeps the primary keys of the
tables whose sweep is due to find deletions (:func:`totes.sweep.sweep_tables`),
in that same snapshot. A run writes at most ``INGEST_MAX_ROWS_PER_RUN`` rows:
when that budget is spent it stops at an exact key, and the next run continues
above it, so a backfill drains over several runs that each fit the function's
timeout. The position is each table's cursor (:class:`totes.capture.TableCursor`),
carried in the manifest's table entries.
"""
import json
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Callable, Iterator

import pg8000.native

from totes import config, db, extract, keys, observability, storage, sweep, timestamps
from totes.capture import FIRST_NORMAL_XID, Snapshot, TableCursor, full_xid, resync_reason
from totes.capture_mode import CaptureRequest, Captured, IngestSettings, ObjectWriter
from totes.errors import SourceDataError
from totes.manifest import IngestManifest, TableEntry
from totes.source import SOURCE_TABLES, FoundColumn, check_contract, definitions, redefined_tables

logger = observability.service_logger()

#: keys of future-stamped rows named in one warning line, per table.
LOGGED_KEYS = 20
#: a prepared transaction older than this is named in a WARNING: a two-phase commit's
#: coordinator ends its transactions within seconds, so one this old looks orphaned.
PREPARED_WARN_SECONDS = 300
#: captured-keys lists written at once while the next tables are read (each a gzip of one
#: table's keys: a few bytes per row).
KEY_LISTS_IN_FLIGHT = 2


#: how the line of a row stamped in the future ends; no other line holds these two bytes,
#: since a JSON object ends with ``}`` and never holds a raw newline.
_FUTURE_END = extract.FUTURE_MARK + b"\n"


class ChangeSink:
    """Takes the chunks COPY sends for one table and writes each as one object, up to the budget.

    The server sends a chunk's rows as one message (:class:`totes.extract.Chunk`),
    so the work here is per chunk and in C-level passes over its bytes: counting
    and unmarking the rows stamped in the future (``count``, ``replace``; a chunk
    without one is written exactly as it came), and taking its keys, which the
    server joined already. Memory stays one object's worth.

    The run asks for one row more than the budget: that row is not written, it
    only proves the table has more, so the cut is exact. It is the last row of the
    last chunk, and dropping it is slicing off the chunk's last line. With
    ``keep_keys`` the chunk's keys (asked of the server for every row) are kept as
    block lines for the next key sweep: a few bytes per row. A table swept in this
    same run needs none: only each chunk's last key comes.
    """

    def __init__(self, writer: ObjectWriter, budget: int, key_column: str,
                 *, keep_keys: bool) -> None:
        """Write at most ``budget`` rows through ``writer``, one object per chunk."""
        self._writer, self._budget = writer, budget
        self._keep_keys = keep_keys
        #: where a line's key starts: after ``{"<key column>":``.
        self._key_start = len(json.dumps(key_column)) + 2
        self._last_line = b""
        self.key_lines: list[bytes] = []
        self.rows = 0
        self.overflow = False
        self.future = 0
        self.future_keys: list[int] = []

    def _key(self, line: bytes) -> bytes:
        return line[self._key_start:line.index(b",", self._key_start)]

    def take(self, chunk: extract.Chunk) -> None:
        """Write one chunk as one object, less the row beyond the budget if it holds it."""
        body, rows, chunk_keys = chunk.lines, chunk.rows, chunk.keys
        if self.rows + rows > self._budget:
            self.overflow = True
            rows = self._budget - self.rows
            if not rows:
                return
            body = body[:body.rindex(b"\n", 0, len(body) - 1) + 1]
            chunk_keys = chunk_keys.rpartition(b",")[0]
        future = body.count(_FUTURE_END)
        if future:
            wanted = max(LOGGED_KEYS - len(self.future_keys), 0)
            self.future_keys += [int(self._key(line)) for line in body.split(b"\n")
                                 if line.endswith(extract.FUTURE_MARK)][:wanted]
            body = body.replace(_FUTURE_END, b"\n")
            self.future += future
        if self._keep_keys:
            self.key_lines += _blocks(chunk_keys, rows)
        self._writer.write_chunk(body, rows)
        self._last_line = body[body.rfind(b"\n", 0, len(body) - 1) + 1:]
        self.rows += rows

    @property
    def last_key(self) -> int | None:
        """The key of the last row written (None before any)."""
        return int(self._key(self._last_line)) if self._last_line else None


def _blocks(joined: bytes, count: int) -> list[bytes]:
    """Return ``count`` comma-joined keys as block lines of at most ``sweep.BLOCK_KEYS`` keys."""
    if count <= sweep.BLOCK_KEYS:
        return [joined + b"\n"]
    split = joined.split(b",")
    return [sweep.render_block(split[start:start + sweep.BLOCK_KEYS])
            for start in range(0, count, sweep.BLOCK_KEYS)]


def _cursor_text(cursor: TableCursor, current: Snapshot) -> str:
    if cursor.since is not None:
        # A wide window means an old transaction is still open at the source: every run
        # reads again what was written since it began, until it ends.
        width = current.xmax - cursor.since.xmin
        where = f"rows not visible in snapshot {cursor.since} ({width} xids back)"
    elif cursor.since_last_updated is not None:
        where = f"last_updated >= {timestamps.database_text(cursor.since_last_updated)}"
        where += " (once, upgrading from the watermark format)"
    else:
        where = "every row"
    if cursor.resume_after is not None:
        where += f", keys above {cursor.resume_after}"
    return where


def extract_table(conn: pg8000.native.Connection, table: str, previous: TableEntry,
                  read_point: extract.ReadPoint, run: keys.RunId, settings: IngestSettings,
                  budget: int, *, keep_keys: bool,
                  reader: extract.SecondReader | None = None,
                  key_puts: storage.BackgroundPuts | None = None,
                  data_puts: storage.BackgroundPuts | None = None) -> TableEntry:
    """Write up to ``budget`` of ``table``'s unseen rows; return its entry for the manifest.

    With ``keep_keys`` the keys written are stored for the next key sweep (a table
    swept in this same run needs none: its sweep lists them already); by ``key_puts``
    when given, in the background, while the next table is read (the caller closes it
    before the manifest names the list). The data objects are written in the
    background too, by ``data_puts`` when given (closed by the caller before the
    manifest names them: the table's last write then overlaps the next table's
    reading), else by the table's own writer, waited for before this returns. With
    a ``reader`` (of ``conn``), a table of more than one chunk is read on two
    connections in the same snapshot (:func:`totes.extract.copy_changes`).
    """
    writer = ObjectWriter(settings.bucket, settings.chunk_rows,
                          lambda part: keys.data_key(table, run, part, "jsonl"), background=True,
                          puts=data_puts)
    sink = ChangeSink(writer, budget, SOURCE_TABLES[table], keep_keys=keep_keys)
    try:
        for chunk in extract.copy_changes(conn, table, previous.cursor, read_point, budget + 1,
                                          settings.chunk_rows, all_keys=keep_keys,
                                          reader=reader):
            sink.take(chunk)
    except BaseException as error:
        writer.close(quietly=True)
        reason = extract.bytes_not_utf8(error)
        if reason is None:
            raise
        raise SourceDataError(
            f"{table}: a text value is not UTF-8 ({reason}): the source database's encoding is "
            "SQL_ASCII, which keeps whatever bytes a client wrote; nothing of this run was "
            "committed: rewrite the value in UTF-8 at the source (docs/runbook.md, \"A value "
            "that cannot be carried\"), the next run reads it again") from error
    writer.close()  # every object the entry lists exists once this returns, or data_puts closes
    last_key = sink.last_key
    cursor = previous.cursor.after_pass(read_point.snapshot,
                                        cut_at=last_key if sink.overflow else None)
    captured = (sweep.upload_blocks(settings.bucket, table, run, sink.key_lines, key_puts)
                if keep_keys and sink.rows else (None, None))
    entry = TableEntry(files=tuple(writer.files), cursor=cursor, truncated=sink.overflow,
                       stamped_in_future=sink.future, sweep=previous.sweep,
                       captured_keys=captured[0], captured_keys_sha256=captured[1])
    logger.info("table extracted", extra={
        "run_id": str(run), "table": table, "rows": entry.rows, "bytes": entry.bytes,
        "files": len(entry.files), "truncated": entry.truncated, "read": _cursor_text(
            previous.cursor, read_point.snapshot), "stamped_in_future": sink.future})
    if sink.future:
        logger.warning(
            "rows stamped in the future captured: their last_updated is ahead of the "
            "database's clock (a writer's clock or time zone is wrong, or a manual fix)",
            extra={"run_id": str(run), "table": table, "rows": sink.future,
                   "keys": sink.future_keys,
                   "database_time": timestamps.database_text(read_point.database_time)})
    return entry


def _extract_within_budget(reader: extract.SecondReader, settings: IngestSettings,
                           previous: IngestManifest | None, read_point: extract.ReadPoint,
                           run: keys.RunId, due: list[str]) -> dict[str, TableEntry]:
    """Extract every table in dependency order until the run's row budget is spent.

    Each table's captured-keys list, and its last data object, are written in the
    background while the next table is read (one data object in flight at most, as
    within a table, so the memory held is the same); all of them exist once this
    returns.
    """
    budget = settings.max_rows_per_run
    entries: dict[str, TableEntry] = {}
    key_puts = storage.BackgroundPuts(KEY_LISTS_IN_FLIGHT)
    data_puts = storage.BackgroundPuts(1)
    try:
        for table in SOURCE_TABLES:
            before = previous.table(table) if previous else TableEntry()
            if budget <= 0:
                entries[table] = replace(before, files=(), truncated=True, stamped_in_future=0,
                                         deleted=(), captured_keys=None)
                continue
            entries[table] = extract_table(reader.first, table, before, read_point, run,
                                           settings, budget, keep_keys=table not in due,
                                           reader=reader, key_puts=key_puts,
                                           data_puts=data_puts)
            budget -= entries[table].rows
            if entries[table].truncated:
                budget = 0
        data_puts.close()
        key_puts.close()
    finally:
        data_puts.close(quietly=True)
        key_puts.close(quietly=True)
    return entries


def read_source(request: CaptureRequest, previous: IngestManifest | None) -> Captured:
    """Read every table's unseen rows and sweep the due tables, all in one snapshot.

    ``previous`` is the manifest whose cursors say where each table stands (the
    request's own, or one made to read every row again). When the source is not
    the history those cursors were taken in (:func:`totes.capture.resync_reason`),
    the run re-syncs: every row read again, every table swept.
    """
    settings = request.settings

    def connect() -> pg8000.native.Connection:
        return db.connect(settings.secret_id, timeout=request.db_timeout, database=config.TOTESYS)

    with db.kept_connection(settings.secret_id, timeout=request.db_timeout,
                            database=config.TOTESYS) as conn:
        reader = extract.SecondReader(conn, connect, SOURCE_TABLES)
        try:
            with extract.snapshot(conn, locked=SOURCE_TABLES) as read_point:
                found = extract.source_columns(conn)
                check_contract(found)
                _report_prepared(conn, read_point, request.run)
                resync = _resync_reason(request, read_point)
                held_since = None if resync is not None else floor_held_since(request.previous,
                                                                              read_point)
                floor_age = _floor_age(extract.floor_age_seconds(conn, read_point.snapshot),
                                       held_since, read_point)
                if resync is not None and previous is not None:
                    previous = previous.with_tables({table: replace(entry, cursor=TableCursor())
                                                     for table, entry in previous.tables.items()})
                elif previous is not None:
                    previous = _reread_redefined(found, request, read_point, previous)
                due = (list(SOURCE_TABLES) if resync is not None
                       else sweep.due_tables(settings, previous, read_point))
                with _sweep_beside(reader, request, read_point, previous, due) as swept:
                    entries = swept(_extract_within_budget(reader, settings, previous,
                                                           read_point, request.run, due))
            return Captured(read_point, entries,
                            complete=not any(entry.truncated for entry in entries.values()),
                            resync=resync, floor_age_seconds=floor_age,
                            floor_held_since=held_since or _held_from_now(read_point),
                            definitions=definitions(found))
        finally:
            reader.close()


def redefined_since(found: list[FoundColumn], last: IngestManifest | None,
                    read_point: extract.ReadPoint) -> list[str]:
    """The tables redefined since the manifest ``last`` (none without one).

    A column dropped and added again, or an enum label renamed, changes what every
    row of the table reads while no row is written: capture by row visibility (or
    by the log) would never read those rows again, and the warehouse would keep
    the old values. Such DDL writes the column's catalog rows (``found``, read in
    ``read_point``'s snapshot), so a table whose used columns' catalog rows differ
    from those ``last`` recorded (its ``definitions``) must be read again from its
    first row. A manifest written before they were recorded is judged by the rows'
    writers' xids against its snapshot instead (inexact for DDL in a savepoint of a
    transaction open at that snapshot, or read on a hot standby). Other DDL on a
    used column (``SET STATISTICS``, a default) counts too: only identical versions
    follow, which the load leaves alone.
    """
    if last is None:
        return []
    snapshot = last.snapshot
    return redefined_tables(found, last.definitions or {}, lambda xid32: (
        snapshot is not None and xid32 >= FIRST_NORMAL_XID
        and not snapshot.sees(full_xid(xid32, read_point.snapshot))))


def warn_redefined(tables: list[str], last: IngestManifest | None, run: keys.RunId) -> None:
    """Name the tables :func:`redefined_since` found, if any, in the WARNING the runbook quotes."""
    if tables:
        logger.warning("source tables redefined since the previous run (a column dropped and "
                       "added again, an enum label renamed, other DDL): reading every row of "
                       "them again", extra={"run_id": str(run), "tables": tables,
                                            "previous_snapshot": str(
                                                None if last is None else last.snapshot)})


def _reread_redefined(found: list[FoundColumn], request: CaptureRequest,
                      read_point: extract.ReadPoint, previous: IngestManifest) -> IngestManifest:
    """``previous`` with every table redefined since the last run (:func:`redefined_since`) reset.

    Each is read again from its first row, within the row budget.
    """
    redefined = redefined_since(found, request.previous, read_point)
    warn_redefined(redefined, request.previous, request.run)
    if not redefined:
        return previous
    return previous.with_tables({table: replace(entry, cursor=TableCursor())
                                 if table in redefined else entry
                                 for table, entry in previous.tables.items()})


def floor_held_since(previous: IngestManifest | None,
                     read_point: extract.ReadPoint) -> datetime | None:
    """Since when the previous manifest proves this snapshot's floor held, or None.

    Needs no privilege: a transaction that holds the floor cannot hide its xid. The
    previous snapshot's ``xmin``, when below its ``xmax``, was a transaction running
    then; xids (64-bit) are never reused, so finding the same ``xmin`` now means the
    same transaction has run throughout, since the previous run's ``database_time``
    or whatever earlier time that manifest carried (``floor_held_since``). A ``xmin``
    equal to ``xmax`` names no transaction known to run then, so it proves nothing. The caller
    leaves out re-syncs: a restored source reuses xids.
    """
    earlier = None if previous is None else previous.snapshot
    if previous is None or earlier is None or previous.database_time is None or not (
            earlier.xmin == read_point.snapshot.xmin < earlier.xmax):
        return None
    return previous.floor_held_since or timestamps.parse_database_time(previous.database_time)


def _held_from_now(read_point: extract.ReadPoint) -> datetime | None:
    """The floor's first sighting: held since this snapshot if a transaction holds it."""
    snapshot = read_point.snapshot
    return read_point.database_time if snapshot.xmin < snapshot.xmax else None


def _floor_age(visible: float | None, held_since: datetime | None,
               read_point: extract.ReadPoint) -> float | None:
    """The floor's age in seconds: the larger of its holder's visible age and the proven one.

    ``visible`` (:func:`totes.extract.floor_age_seconds`) is exact but None when
    another role's session holds the floor and the login lacks ``pg_read_all_stats``;
    the age proven by earlier manifests (``held_since``) is a lower bound that needs
    no grant, so the alarm fires either way. None only when neither is known.
    """
    proven = None if held_since is None else max(
        0.0, (read_point.database_time - held_since).total_seconds())
    known = [age for age in (visible, proven) if age is not None]
    return max(known) if known else None


@contextmanager
def _sweep_beside(reader: extract.SecondReader, request: CaptureRequest,
                  read_point: extract.ReadPoint, previous: IngestManifest | None,
                  due: list[str]) -> Iterator[Callable[[dict[str, TableEntry]],
                                                       dict[str, TableEntry]]]:
    """Sweep the ``due`` tables while the rows are read; yield what adds the sweeps to the entries.

    Listing every key of a table is a statement of its own and most of a sweep's
    time: run after the reading, on the first connection, it was a serial tail of
    every run that sweeps (a quarter of a backfill's first run). So it runs on
    another connection in the same snapshot (:meth:`totes.extract.SecondReader.open_another`),
    in a thread, from the entries the reading cannot change for a swept table (its
    previous sweep; no deletions and no captured keys before the sweep, as
    :func:`extract_table` leaves a table swept in its run); the sweeps join the read
    entries when the caller hands them over, and a failure of either is raised
    there, before the manifest. Where that connection cannot be opened the sweep
    runs after the reading on the first, as it did.
    """
    conn = reader.open_another() if due else None
    if conn is None:
        yield lambda entries: sweep.sweep_tables(reader.first, request, read_point, entries, due)
        return
    unswept = {table: TableEntry(sweep=previous.table(table).sweep if previous else None)
               for table in due}

    def sweep_and_close() -> dict[str, TableEntry]:
        try:
            return sweep.sweep_tables(conn, request, read_point, unswept, due)
        finally:
            db.close_quietly(conn)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="totes-sweep") as pool:
        future = pool.submit(sweep_and_close)
        yield lambda entries: _with_sweeps(entries, future.result(), due)


def _with_sweeps(entries: dict[str, TableEntry], swept: dict[str, TableEntry],
                 due: list[str]) -> dict[str, TableEntry]:
    """The read ``entries`` with the deletions and sweep state ``swept`` found for ``due``."""
    return {**entries, **{table: replace(entries[table], deleted=swept[table].deleted,
                                         sweep=swept[table].sweep, captured_keys=None)
                          for table in due}}


def _report_prepared(conn: pg8000.native.Connection, read_point: extract.ReadPoint,
                     run: keys.RunId) -> None:
    """Name, in a WARNING each, the prepared transactions old enough to look orphaned.

    Such a transaction holds the snapshot floor back: every run reads again all
    that was written since it began, until someone ends it by its gid.
    """
    snapshot = read_point.snapshot
    for orphan in extract.prepared_transactions(conn, PREPARED_WARN_SECONDS):
        logger.warning(
            "prepared transaction %s has been open for %d s and holds the snapshot floor back "
            "(%d xids): every run reads again what was written since it began; a person must "
            "COMMIT PREPARED or ROLLBACK PREPARED it (docs/runbook.md, 'Orphaned prepared "
            "transactions')", orphan.gid, orphan.age_seconds, snapshot.xmax - snapshot.xmin,
            extra={"run_id": str(run), "gid": orphan.gid, "xid": orphan.xid,
                   "prepared": timestamps.database_text(orphan.prepared),
                   "owner": orphan.owner, "database": orphan.database,
                   "snapshot": str(snapshot), "floor_age_xids": snapshot.xmax - snapshot.xmin})


def _resync_reason(request: CaptureRequest, read_point: extract.ReadPoint) -> str | None:
    """Say (and log, as a WARNING) why this run must re-sync, or return None."""
    previous = request.previous
    if previous is None:
        return None
    reason = resync_reason(previous.snapshot, previous.source, read_point.snapshot,
                           read_point.source)
    if reason is not None:
        logger.warning(
            "source re-sync: %s; reading every row again and sweeping every table: rows the "
            "source no longer has become deletions, rows it has again are current again "
            "(docs/runbook.md, 'Source re-syncs')", reason, extra={
                "run_id": str(request.run), "previous_manifest": request.previous_key,
                "previous_snapshot": str(previous.snapshot), "snapshot": str(read_point.snapshot),
                "previous_source": None if previous.source is None else previous.source.to_json(),
                "source": read_point.source.to_json()})
    return reason


def _fall_back_from_logical(previous: IngestManifest, slot: str,
                            run: keys.RunId) -> IngestManifest:
    """Start a full re-sync by snapshot capture after log-based capture: every row, once.

    The snapshot cursors a log-based manifest carries are those of its backfill,
    possibly long ago, so every row is read again instead (identical versions
    change nothing downstream). Key sweeps go on from the last sweep and the keys
    every log-based run captured, so a row created while the slot was read and
    deleted since is still found.
    """
    logger.warning("capture mode is snapshot after log-based capture (slot %s): re-reading "
                   "every row once; drop the slot if it is still there (docs/ingest.md)",
                   slot,
                   extra={"run_id": str(run), "previous_manifest_run": previous.run_id})
    return previous.with_tables({table: replace(entry, cursor=TableCursor())
                                 for table, entry in previous.tables.items()})


class SnapshotCapture:
    """Snapshot capture as a :class:`totes.capture_mode.CaptureMode`."""

    def capture(self, request: CaptureRequest) -> Captured:
        """Read what changed since the previous manifest's snapshot (every row after logical)."""
        previous = request.previous
        if previous is not None and previous.logical is not None:
            previous = _fall_back_from_logical(previous, previous.logical.slot, request.run)
        return read_source(request, previous)

    def release(self, request: CaptureRequest, manifest: IngestManifest) -> int | None:
        """Hold nothing at the source: the snapshot ended with the run's transaction."""
        return None
