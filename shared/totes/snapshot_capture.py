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
from dataclasses import replace

import pg8000.native

from totes import config, db, extract, keys, observability, sweep, timestamps
from totes.capture import Snapshot, TableCursor, resync_reason
from totes.capture_mode import CaptureRequest, Captured, IngestSettings, ObjectWriter
from totes.manifest import IngestManifest, TableEntry
from totes.source import SOURCE_TABLES, check_contract

logger = observability.service_logger()

#: keys of future-stamped rows named in one warning line, per table.
LOGGED_KEYS = 20
#: a prepared transaction older than this is named in a WARNING: a two-phase commit's
#: coordinator ends its transactions within seconds, so one this old looks orphaned.
PREPARED_WARN_SECONDS = 300


#: how the line of a row stamped in the future ends; no other line holds these two bytes,
#: since a JSON object ends with ``}`` and never holds a raw newline.
_FUTURE_END = extract.FUTURE_MARK + b"\n"


class ChangeSink:
    """Takes the JSON lines COPY streams for one table, a chunk at a time, up to the budget.

    COPY calls :meth:`write` once per row, so that call only keeps the line:
    counting and unmarking the rows stamped in the future and reading the keys
    are done once per chunk of ``chunk_rows`` lines, in C-level passes over the
    joined chunk (``bytes.join``, ``count``), instead of a dozen Python steps per
    row; a chunk without such a row is written exactly as COPY sent it. Memory
    stays one object's worth, as before.

    The query asks for one row more than the budget: that row is not written, it
    only proves the table has more, so the cut is exact. It is the stream's last
    row, so a chunk that may hold it waits for :meth:`finish`, which drops it.
    With ``keep_keys`` the key of every row written is read off the start of its
    line (the primary key comes first) and kept as block lines for the next key
    sweep: a few bytes per row. A table swept in this same run needs none: only
    its last key is read, and the keys of the rows stamped in the future.
    """

    def __init__(self, writer: ObjectWriter, budget: int, key_column: str, chunk_rows: int,
                 *, keep_keys: bool) -> None:
        """Write at most ``budget`` rows through ``writer``, ``chunk_rows`` lines an object."""
        self._writer, self._budget, self._chunk_rows = writer, budget, chunk_rows
        self._keep_keys = keep_keys
        #: where a line's key starts: after ``{"<key column>":``.
        self._key_start = len(json.dumps(key_column)) + 2
        self._lines: list[bytes] = []
        self._keys: list[bytes] = []
        self._last_line = b""
        self.key_lines: list[bytes] = []
        self.rows = 0
        self.overflow = False
        self.future = 0
        self.future_keys: list[int] = []

    def write(self, line: bytes) -> None:
        """Take one line from COPY."""
        lines = self._lines
        lines.append(line)
        if len(lines) == self._chunk_rows and self.rows + len(lines) <= self._budget:
            self._take(lines)
            self._lines = []

    def finish(self) -> None:
        """Write the lines still waiting, less the one beyond the budget; end the key blocks."""
        lines, self._lines = self._lines, []
        if self.rows + len(lines) > self._budget:
            self.overflow = True
            del lines[self._budget - self.rows:]
        if lines:
            self._take(lines)
        if self._keys:
            self.key_lines.append(sweep.render_block(self._keys))
            self._keys = []

    def _key(self, line: bytes) -> bytes:
        return line[self._key_start:line.index(b",", self._key_start)]

    def _take(self, lines: list[bytes]) -> None:
        """Write one chunk of lines (at most ``chunk_rows``) as one object."""
        body = b"".join(lines)
        future = body.count(_FUTURE_END)
        if future:
            body = body.replace(_FUTURE_END, b"\n")
            self.future += future
            wanted = max(LOGGED_KEYS - len(self.future_keys), 0)
            self.future_keys += [int(self._key(line)) for line in lines
                                 if line.endswith(_FUTURE_END)][:wanted]
        if self._keep_keys:
            self._keys += [self._key(line) for line in lines]
            while len(self._keys) >= sweep.BLOCK_KEYS:
                self.key_lines.append(sweep.render_block(self._keys[:sweep.BLOCK_KEYS]))
                del self._keys[:sweep.BLOCK_KEYS]
        self._writer.write_chunk(body, len(lines))
        self._last_line = lines[-1]
        self.rows += len(lines)

    @property
    def last_key(self) -> int | None:
        """The key of the last row written (None before any); read after :meth:`finish`."""
        return int(self._key(self._last_line)) if self._last_line else None


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
                  budget: int, *, keep_keys: bool) -> TableEntry:
    """Write up to ``budget`` of ``table``'s unseen rows; return its entry for the manifest.

    With ``keep_keys`` the keys written are stored for the next key sweep (a table
    swept in this same run needs none: its sweep lists them already).
    """
    writer = ObjectWriter(settings.bucket, settings.chunk_rows,
                          lambda part: keys.data_key(table, run, part, "jsonl"))
    sink = ChangeSink(writer, budget, SOURCE_TABLES[table], settings.chunk_rows,
                      keep_keys=keep_keys)
    extract.copy_changes(conn, table, previous.cursor, read_point, budget + 1, sink)
    sink.finish()
    last_key = sink.last_key
    cursor = previous.cursor.after_pass(read_point.snapshot,
                                        cut_at=last_key if sink.overflow else None)
    captured = (sweep.upload_blocks(settings.bucket, table, run, sink.key_lines)
                if keep_keys and sink.rows else None)
    entry = TableEntry(files=tuple(writer.files), cursor=cursor, truncated=sink.overflow,
                       stamped_in_future=sink.future, sweep=previous.sweep,
                       captured_keys=captured)
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


def _extract_within_budget(conn: pg8000.native.Connection, settings: IngestSettings,
                           previous: IngestManifest | None, read_point: extract.ReadPoint,
                           run: keys.RunId, due: list[str]) -> dict[str, TableEntry]:
    """Extract every table in dependency order until the run's row budget is spent."""
    budget = settings.max_rows_per_run
    entries: dict[str, TableEntry] = {}
    for table in SOURCE_TABLES:
        before = previous.table(table) if previous else TableEntry()
        if budget <= 0:
            entries[table] = replace(before, files=(), truncated=True, stamped_in_future=0,
                                     deleted=(), captured_keys=None)
            continue
        entries[table] = extract_table(conn, table, before, read_point, run, settings, budget,
                                       keep_keys=table not in due)
        budget -= entries[table].rows
        if entries[table].truncated:
            budget = 0
    return entries


def read_source(request: CaptureRequest, previous: IngestManifest | None) -> Captured:
    """Read every table's unseen rows and sweep the due tables, all in one snapshot.

    ``previous`` is the manifest whose cursors say where each table stands (the
    request's own, or one made to read every row again). When the source is not
    the history those cursors were taken in (:func:`totes.capture.resync_reason`),
    the run re-syncs: every row read again, every table swept.
    """
    settings = request.settings
    conn = db.connect(settings.secret_id, timeout=request.db_timeout, database=config.TOTESYS)
    try:
        with extract.snapshot(conn, locked=SOURCE_TABLES) as read_point:
            check_contract(extract.source_columns(conn))
            _report_prepared(conn, read_point, request.run)
            resync = _resync_reason(request, read_point)
            if resync is not None and previous is not None:
                previous = previous.with_tables({table: replace(entry, cursor=TableCursor())
                                                 for table, entry in previous.tables.items()})
            due = (list(SOURCE_TABLES) if resync is not None
                   else sweep.due_tables(settings, previous, read_point))
            entries = _extract_within_budget(conn, settings, previous, read_point, request.run,
                                             due)
            entries = sweep.sweep_tables(conn, request, read_point, entries, due)
        return Captured(read_point, entries,
                        complete=not any(entry.truncated for entry in entries.values()),
                        resync=resync)
    finally:
        db.close_quietly(conn)


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
