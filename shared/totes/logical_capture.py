"""Log-based capture (``CAPTURE_MODE=logical``) as a capture mode: the slot's changes since then.

The position is a :class:`totes.manifest.LogicalPosition` in a replication slot
(see :mod:`totes.logical` for the slot, the publication and the decoding). Until
one snapshot pass that began after the slot existed has completed, a run is a
snapshot-capture backfill (:func:`totes.snapshot_capture.read_source`); from then
on it reads the slot, within the row budget. The slot is advanced only in
:meth:`LogicalCapture.release`, once the manifest recording the position exists.
"""
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Iterator, Mapping

import pg8000.native

from totes import config, db, extract, keys, logical, observability, pgoutput, storage, sweep
from totes.capture import (Snapshot, TableCursor, nearest_xid, other_cluster,
                           restarted_since_written, server_restarted)
from totes.capture_mode import CaptureRequest, Captured, IngestSettings, ObjectWriter
from totes.manifest import IngestManifest, LogicalPosition, TableEntry
from totes.snapshot_capture import extract_table, read_source, redefined_since, warn_redefined
from totes.source import SOURCE_TABLES, check_contract, definitions

logger = observability.service_logger()


def _logical_start(settings: IngestSettings, previous: IngestManifest | None,
                   db_timeout: float) -> tuple[LogicalPosition, bool]:
    """Return where log-based capture stands, creating the publication and slot if missing.

    A position carried by the previous manifest must name the configured slot
    and publication: switching them silently would skip or repeat changes. The
    second value is true when a backfill in progress must start again: its slot
    was lost (or its publication made again) and a new slot begins later than the
    backfill's first snapshot, so changes in between would be in neither.
    """
    position = previous.logical if previous else None
    if position is not None and (position.slot, position.publication) != (
            settings.slot, settings.publication):
        raise config.ConfigurationError(
            f"the committed position is in slot {position.slot} (publication "
            f"{position.publication}), not the configured {settings.slot} "
            f"({settings.publication}): restore REPLICATION_SLOT and PUBLICATION, or re-sync "
            "(docs/ingest.md, 'Dropping the slot')")
    if position is not None and position.backfilled:
        return position, False
    conn = db.connect(settings.secret_id, timeout=db_timeout, database=config.TOTESYS)
    try:
        lsn, oid, made = logical.ensure_source(
            conn, settings.slot, settings.publication,
            None if position is None else position.publication_oid)
    finally:
        db.close_quietly(conn)
    fresh = LogicalPosition(settings.slot, settings.publication, pgoutput.lsn_text(lsn),
                            publication_oid=oid)
    if position is None or made:
        return fresh, position is not None
    return replace(position, publication_oid=oid), False


def _resync_tables(conn: pg8000.native.Connection, request: CaptureRequest,
                   previous: IngestManifest, read_point: extract.ReadPoint,
                   passes: dict[str, TableEntry]) -> tuple[dict[str, TableEntry], list[str], int]:
    """Re-read the tables of ``passes`` by snapshot within the row budget; sweep the finished.

    Each table's entry in ``passes`` carries the cursor its pass goes on from (a
    reset one to start it again from the first key). Return their entries, the
    tables still to re-read, and the budget left for the slot.
    """
    budget = request.settings.max_rows_per_run
    entries: dict[str, TableEntry] = {}
    for table, before in passes.items():
        if budget <= 0:
            entries[table] = replace(before, files=(), truncated=True, stamped_in_future=0,
                                     deleted=(), captured_keys=None)
            continue
        entries[table] = extract_table(conn, table, before, read_point, request.run,
                                       request.settings, budget, keep_keys=False)
        budget = 0 if entries[table].truncated else budget - entries[table].rows
    done = [table for table in passes if not entries[table].truncated]
    entries = sweep.sweep_tables(conn, request, read_point, entries, done)
    return entries, [table for table in passes if entries[table].truncated], max(budget, 0)


def _superseded_by(passes: dict[str, TableEntry], tables: Mapping[str, TableEntry],
                   current: Snapshot) -> logical.Superseded:
    """The slot's changes that a snapshot read of their table already holds.

    The snapshot's versions are written before the slot's, and a later line of a key
    wins in the load: a change the slot decodes from before that snapshot (an update
    decoded with an enum label renamed since, or just an older value) would overwrite
    the newer row. So a change is left out when a snapshot that read its key saw its
    transaction. For the tables re-read in this run (``passes``): keys above the
    pass's resume key are read in this run's snapshot, keys at or below it by earlier
    runs of the pass, each in a snapshot that sees at least what the pass's first
    (``resume_since``) saw. For the others (``tables``, the previous manifest's): the
    snapshot their last whole pass began in (``cursor.since``), a re-read the slot may
    not have caught up with yet (the row budget is shared), or the backfill, whose
    snapshot sees no change the slot holds but those committed between the slot's
    start and it. Their deletions are always written: a key sweep, not that pass,
    recorded the ones it saw, and a deletion written twice changes nothing.
    """
    def superseded(table: str, key: int, xid32: int, deletion: bool) -> bool:
        entry = passes.get(table)
        if entry is None:
            cursor = tables[table].cursor if table in tables else TableCursor()
            return (not deletion and cursor.resume_after is None and cursor.since is not None
                    and cursor.since.sees(nearest_xid(xid32, current)))
        if entry.cursor.since is not None or entry.cursor.since_last_updated is not None:
            return False
        cursor = entry.cursor
        reader = (current if cursor.resume_after is None or key > cursor.resume_after
                  else cursor.resume_since)
        return reader is not None and reader.sees(nearest_xid(xid32, current))
    return superseded


@contextmanager
def _slot_snapshot(conn: pg8000.native.Connection, locked: list[str],
                   previous: IngestManifest, run: keys.RunId
                   ) -> Iterator[tuple[extract.ReadPoint, list[str], dict[str, str]]]:
    """Hold the run's snapshot with ``locked`` locked; yield it and what DDL changed since.

    That is the tables redefined since the previous run (:func:`redefined_since`)
    and every table's definition in this snapshot (:func:`totes.source.definitions`),
    for the manifest. A table redefined (DDL that changes every row while the slot
    carries no row) must be re-read, and so locked before the snapshot as every
    re-read table is: when one is not yet, the snapshot is given up and taken again
    with it locked.
    """
    while True:
        with extract.snapshot(conn, locked) as read_point:
            found = extract.source_columns(conn)
            check_contract(found)
            redefined = redefined_since(found, previous, read_point)
            if set(redefined) <= set(locked):
                warn_redefined(redefined, previous, run)
                yield read_point, redefined, definitions(found)
                return
        locked = [table for table in SOURCE_TABLES if table in locked or table in redefined]


def _read_slot(request: CaptureRequest, previous: IngestManifest, position: LogicalPosition
               ) -> tuple[extract.ReadPoint, dict[str, TableEntry], logical.ChangeWriter,
                          str | None, dict[str, str]]:
    """Write the slot's changes after ``position``, within the row budget, as this run's files.

    Before reading, the publication is checked (and repaired) and the slot brought
    to the position (made again when lost). Tables whose changes the log could not
    give are re-read by snapshot first, in the same snapshot, so the slot's versions
    of them come after. A TRUNCATE decoded is carried by a key sweep of its tables
    after the read. Returns, last, why a re-sync began in this run (None if none) and the
    tables' definitions in the run's snapshot.
    """
    settings, run, db_timeout = request.settings, request.run, request.db_timeout
    offsets: dict[tuple[str, bool], int] = {}

    def writer_for(table: str, deletion: bool) -> ObjectWriter:
        offset = offsets.get((table, deletion), 0)
        return ObjectWriter(settings.bucket, settings.chunk_rows,
                            lambda part: logical.data_key_for(run)(table, deletion,
                                                                   part + offset))

    conn = db.connect(settings.secret_id, timeout=db_timeout, database=config.TOTESYS)
    lookup = None
    try:
        publication = logical.check_publication(conn, position.publication)
        previous_key, source = request.previous_key, extract.source_identity(conn)
        restarted = previous_key is not None and restarted_since_written(
            previous.source, source, lambda: storage.last_modified(settings.bucket, previous_key))
        position, lost = logical.resume(conn, position, publication, request.previous_key,
                                        restarted, other_cluster(previous.source, source),
                                        server_restarted(previous.source, source))
        restart = set(publication.resync) | set(lost.tables if lost else ())
        reason = lost.reason if lost else ("the publication had drifted" if restart else None)
        if reason is not None:
            logger.warning("source re-sync: %s; re-reading %s by snapshot, with a key sweep",
                           reason, ", ".join(sorted(restart)), extra={
                               "run_id": str(run), "reason": reason,
                               "tables": sorted(restart)})
        # Tables re-read or swept are locked first, as snapshot capture does: a rewrite
        # committed mid-run would otherwise show them empty.
        with _slot_snapshot(conn, [table for table in SOURCE_TABLES if table in restart
                                   or table in position.resync], previous, run
                            ) as (read_point, redefined, found_definitions):
            restart |= set(redefined)
            passes = {table: replace(previous.table(table), cursor=TableCursor())
                      if table in restart else previous.table(table)
                      for table in SOURCE_TABLES if table in restart or table in position.resync}
            resync = list(passes)
            conn.run("SET LOCAL datestyle = 'ISO, YMD'")  # the text pgoutput renders values in
            resynced, pending, budget = _resync_tables(conn, request, previous, read_point,
                                                       passes)
            for table, entry in resynced.items():
                offsets[(table, False)], offsets[(table, True)] = (len(entry.files),
                                                                   len(entry.deleted))
            [[snapshot_id]] = conn.run("SELECT pg_export_snapshot()")
            lookup = logical.SnapshotLookup(lambda: db.connect(
                settings.secret_id, timeout=db_timeout, database=config.TOTESYS), snapshot_id)
            changes = logical.read_changes(conn, position, budget, writer_for,
                                           settings.chunk_rows, lookup,
                                           _superseded_by(passes, previous.tables,
                                                          read_point.snapshot))
        changes.position = replace(changes.position, resync=tuple(pending))
        entries = {}
        for table in SOURCE_TABLES:
            captured = (sweep.upload_blocks(settings.bucket, table, run,
                                            logical.key_blocks(changes.keys[table]))
                        if table in changes.keys else (None, None))
            before = resynced.get(table, replace(previous.table(table), files=(), deleted=(),
                                                 truncated=False, stamped_in_future=0))
            entries[table] = replace(
                before, files=before.files + changes.writers.files(table, False),
                deleted=before.deleted + changes.writers.files(table, True),
                stamped_in_future=before.stamped_in_future + changes.future.get(table, 0),
                captured_keys=captured[0], captured_keys_sha256=captured[1])
        # The log carries no keys for a TRUNCATE (nor for the deletes and key changes of a
        # table whose replica identity lacks the key): a key sweep after the read, in a
        # snapshot that sees it, turns the table's vanished rows into deletions.
        if changes.truncated_tables:
            logger.warning("TRUNCATE of %s decoded: sweeping their keys to record the "
                           "deletions", ", ".join(changes.truncated_tables),
                           extra={"run_id": str(run), "tables": changes.truncated_tables})
        swept = [table for table in SOURCE_TABLES
                 if table in changes.truncated_tables or table in changes.unkeyed_tables]
        if swept:
            with extract.snapshot(conn, swept) as after:
                entries = sweep.sweep_tables(conn, request, after, entries, swept)
    finally:
        if lookup is not None:
            lookup.close()
        db.close_quietly(conn)
    logger.info("slot read", extra={
        "run_id": str(run), "slot": position.slot, "from": position.lsn,
        "skipped_in_transaction": position.partial_changes, "to": changes.position.lsn,
        "stopped_inside": changes.position.partial_commit_lsn, "changes": changes.changes,
        "transactions": changes.transactions, "rows": changes.rows, "deleted": changes.deleted,
        "complete": changes.complete, "superseded": changes.skipped, "resync": resync,
        "deletions_replaced": changes.replaced,
        "stopped_before_reused_key": None if changes.reused is None else list(changes.reused),
        "resync_pending": pending,
        "truncated_tables": changes.truncated_tables, "unkeyed_tables": changes.unkeyed_tables,
        "toast_filled": changes.toast_filled})
    return read_point, entries, changes, reason, found_definitions


def release_slot(settings: IngestSettings, position: LogicalPosition,
                 db_timeout: float) -> int | None:
    """Advance the slot to a committed manifest's position; return the WAL it still holds.

    Only ever called once the manifest exists. A failure here leaves the slot
    behind, which the next run corrects before it reads (:func:`logical.resume`).
    """
    conn = db.connect(settings.secret_id, timeout=db_timeout, database=config.TOTESYS)
    try:
        state = logical.slot_state(conn, position.slot)
        reached = pgoutput.parse_lsn(position.lsn)
        if position.backfilled and state is not None and state.confirmed < reached:
            logical.advance(conn, position.slot, reached)
        lag = logical.lag_bytes(conn, position.slot)
    finally:
        db.close_quietly(conn)
    if lag is not None:
        logger.info("replication slot advanced", extra={
            "slot": position.slot, "lsn": position.lsn, "lag_bytes": lag})
    return lag


class LogicalCapture:
    """Log-based capture as a :class:`totes.capture_mode.CaptureMode`."""

    def capture(self, request: CaptureRequest) -> Captured:
        """Run log-based capture: a snapshot backfill until one has completed, then the slot."""
        previous = request.previous
        position, restarted = _logical_start(request.settings, previous, request.db_timeout)
        reason = None
        if previous is not None and restarted:
            reason = "the replication slot was lost during the initial backfill"
            logger.warning("source re-sync: %s; the backfill starts again from every row",
                           reason, extra={"run_id": str(request.run), "reason": reason,
                                          "tables": list(SOURCE_TABLES)})
            # Every row again, and every table swept now (its last sweep made due): rows
            # deleted while no slot recorded it become deletions.
            previous = previous.with_tables({table: replace(
                entry, cursor=TableCursor(), sweep=None if entry.sweep is None else replace(
                    entry.sweep, swept_at=datetime.min))
                for table, entry in previous.tables.items()})
        if previous is None or not position.backfilled:
            # The initial load, taken after the slot exists: nothing falls between the two.
            captured = read_source(request, previous)
            return replace(captured, logical=replace(position, backfilled=captured.complete),
                           resync=reason or captured.resync)
        read_point, entries, changes, reason, found = _read_slot(request, previous, position)
        complete = changes.complete and not changes.position.resync
        return Captured(read_point, entries, complete, changes.position, resync=reason,
                        definitions=found, stopped_before_reused_key=(
                            changes.reused is not None and not changes.position.resync))

    def release(self, request: CaptureRequest, manifest: IngestManifest) -> int | None:
        """Advance the slot to the committed manifest's position; return the WAL it holds."""
        position = manifest.logical
        return None if position is None else release_slot(request.settings, position,
                                                          request.db_timeout)
