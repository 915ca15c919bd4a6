"""Log-based capture (``CAPTURE_MODE=logical``) as a capture mode: the slot's changes since then.

The position is a :class:`totes.manifest.LogicalPosition` in a replication slot
(see :mod:`totes.logical` for the slot, the publication and the decoding). Until
one snapshot pass that began after the slot existed has completed, a run is a
snapshot-capture backfill (:func:`totes.snapshot_capture.read_source`); from then
on it reads the slot, within the row budget. The slot is advanced only in
:meth:`LogicalCapture.release`, once the manifest recording the position exists.
"""
from dataclasses import replace

from totes import config, db, extract, logical, observability, pgoutput, sweep
from totes.capture_mode import CaptureRequest, Captured, IngestSettings, ObjectWriter
from totes.manifest import IngestManifest, LogicalPosition, TableEntry
from totes.snapshot_capture import read_source
from totes.source import SOURCE_TABLES, check_contract

logger = observability.service_logger()


def _logical_start(settings: IngestSettings, previous: IngestManifest | None,
                   db_timeout: float) -> LogicalPosition:
    """Return where log-based capture stands, creating the publication and slot if missing.

    A position carried by the previous manifest must name the configured slot
    and publication: switching them silently would skip or repeat changes.
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
        return position
    conn = db.connect(settings.secret_id, timeout=db_timeout, database=config.TOTESYS)
    try:
        lsn = logical.ensure_source(conn, settings.slot, settings.publication)
    finally:
        db.close_quietly(conn)
    return position or LogicalPosition(settings.slot, settings.publication,
                                       pgoutput.lsn_text(lsn))


def _read_slot(request: CaptureRequest, previous: IngestManifest, position: LogicalPosition
               ) -> tuple[extract.ReadPoint, dict[str, TableEntry], logical.ChangeWriter]:
    """Write the slot's changes after ``position``, within the row budget, as this run's files."""
    settings, run, db_timeout = request.settings, request.run, request.db_timeout

    def writer_for(table: str, deletion: bool) -> ObjectWriter:
        return ObjectWriter(settings.bucket, settings.chunk_rows,
                            lambda part: logical.data_key_for(run)(table, deletion, part))

    conn = db.connect(settings.secret_id, timeout=db_timeout, database=config.TOTESYS)
    try:
        logical.resume(conn, position)
        with extract.snapshot(conn) as read_point:
            check_contract(extract.source_columns(conn))
            conn.run("SET LOCAL datestyle = 'ISO, YMD'")  # the text pgoutput renders values in
            changes = logical.read_changes(conn, position, settings.max_rows_per_run,
                                           writer_for, settings.chunk_rows)
    finally:
        db.close_quietly(conn)
    entries = {}
    for table in SOURCE_TABLES:
        captured = (sweep.upload_blocks(settings.bucket, table, run,
                                        logical.key_blocks(changes.keys[table]))
                    if table in changes.keys else None)
        entries[table] = replace(
            previous.table(table), files=changes.writers.files(table, False),
            deleted=changes.writers.files(table, True), truncated=False,
            stamped_in_future=changes.future.get(table, 0), captured_keys=captured)
    logger.info("slot read", extra={
        "run_id": str(run), "slot": position.slot, "from": position.lsn,
        "skipped_in_transaction": position.partial_changes, "to": changes.position.lsn,
        "stopped_inside": changes.position.partial_commit_lsn, "changes": changes.changes,
        "transactions": changes.transactions, "rows": changes.rows, "deleted": changes.deleted,
        "complete": changes.complete})
    if changes.truncated_tables:
        logger.error("TRUNCATE of %s decoded: its rows' deletions are not in the log; re-sync "
                     "through snapshot capture to record them (docs/ingest.md)",
                     ", ".join(changes.truncated_tables),
                     extra={"run_id": str(run), "tables": changes.truncated_tables})
    return read_point, entries, changes


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
        if position.backfilled and state is not None and state[2] < reached:
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
        position = _logical_start(request.settings, previous, request.db_timeout)
        if previous is None or not position.backfilled:
            # The initial load, taken after the slot exists: nothing falls between the two.
            captured = read_source(request, previous)
            return replace(captured, logical=replace(position, backfilled=captured.complete))
        read_point, entries, changes = _read_slot(request, previous, position)
        return Captured(read_point, entries, changes.complete, changes.position)

    def release(self, request: CaptureRequest, manifest: IngestManifest) -> int | None:
        """Advance the slot to the committed manifest's position; return the WAL it holds."""
        position = manifest.logical
        return None if position is None else release_slot(request.settings, position,
                                                          request.db_timeout)
