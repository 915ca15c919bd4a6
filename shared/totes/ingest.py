"""One ingest run: what changed in totesys since the last committed run, into the ingestion bucket.

The run reads the newest manifest for its starting state, then, inside one
database snapshot: checks that the columns it reads still have the contract's
types, copies every table's rows not visible to the previous run's snapshot
(rendered as JSON Lines by the server, packed into objects of at most
``CHUNK_ROWS`` rows), sweeps the primary keys of the tables whose sweep is due
to find deletions, and ends by writing its own manifest with the snapshot it read.
A run writes at most ``INGEST_MAX_ROWS_PER_RUN`` rows: when that budget is
spent it stops at an exact key, and the next run continues above it, so a
backfill drains over several runs that each fit the function's timeout.

The manifest is the commit point: until it exists nothing downstream sees the
run's files and the state has not moved, so a run that fails anywhere before it
is simply repeated by the next one. Every object is created once under a fresh
key and never replaced. Runs may overlap (reserved concurrency is optional, and
schedules deliver at least once): a run that finds a newer manifest than the one
it started from aborts, and of two runs started from the same manifest only the
one that wins the conditional write of its successor claim commits
(:func:`_claim_succession`), so no row is ever committed twice.
"""
import json
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, Callable, Iterator, TypedDict

import pg8000.native
from aws_lambda_powertools.metrics import MetricUnit

from totes import (config, db, extract, keys, logical, observability, pgoutput, storage, sweep,
                   timestamps)
from totes.capture import Snapshot, TableCursor
from totes.errors import TransientError
from totes.manifest import (DataFile, IngestManifest, LogicalPosition, ManifestError, SweepState,
                            TableEntry)
from totes.source import SOURCE_TABLES, check_contract
from totes.stage import Deadline, Metric

logger = observability.service_logger()

CONTENT_TYPE = "application/x-ndjson"
ROWS_METRIC = "RowsIngested"
FUTURE_METRIC = "RowsStampedInFuture"
DELETED_METRIC = "RowsDeleted"
SLOT_LAG_METRIC = "ReplicationSlotLagBytes"
#: keys of future-stamped rows named in one warning line, per table.
LOGGED_KEYS = 20


class Progress(Enum):
    """How far a run got, so a failure's log line says exactly what it left committed."""

    EXTRACTING = "ingest run failed; nothing committed, the next run reads the same rows"
    COMMITTING = ("ingest run failed writing its manifest; the run is committed if the "
                  "manifest or its claim exists (the next run then writes the manifest), "
                  "else nothing is and the next run reads the same rows")
    COMMITTED_BY_RETRY = ("ingest run failed writing its manifest, which exists: a retried "
                          "write found the object its first attempt created, so the run is "
                          "committed")
    COMMITTED = "ingest run failed after committing its manifest; downstream sees the run"


class ConcurrentRunError(TransientError):
    """Another run committed a manifest after this one read its starting state."""


@dataclass(frozen=True)
class IngestSettings:
    """Everything a run needs to know about its environment, read once at its start."""

    bucket: str
    secret_id: str
    chunk_rows: int
    max_rows_per_run: int
    delete_sweep: timedelta
    #: ``snapshot`` or ``logical`` (see :mod:`totes.logical`).
    capture_mode: str = "snapshot"
    slot: str = "totes_ingest"
    publication: str = "totes_ingest"

    @classmethod
    def from_environment(cls) -> "IngestSettings":
        """Read the settings from the Lambda environment, failing early on a missing one."""
        return cls(bucket=config.ingest_bucket(), secret_id=config.totesys_secret_id(),
                   chunk_rows=config.chunk_rows(), max_rows_per_run=config.max_rows_per_run(),
                   delete_sweep=config.delete_sweep_interval(),
                   capture_mode=config.capture_mode(), slot=config.replication_slot(),
                   publication=config.publication())


class IngestSummary(TypedDict):
    """The ingest handler's response: :meth:`IngestReport.summary`."""

    run_id: str
    manifest_key: str
    rows: dict[str, int]
    total_rows: int
    complete: bool
    stamped_in_future: dict[str, int]
    deleted: dict[str, int]
    swept: list[str]


@dataclass(frozen=True)
class IngestReport:
    """A committed run: the handler's response and its metrics (``stage.StageReport``)."""

    run_id: str
    manifest_key: str
    rows: dict[str, int]
    complete: bool
    duration_ms: float
    stamped_in_future: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    swept: tuple[str, ...] = ()
    #: bytes of WAL the replication slot still holds after the run (log-based capture only).
    slot_lag_bytes: int | None = None

    def metrics(self) -> Iterator[Metric]:
        """Rows, future stamps and deletes per table; the run's totals, backlog, time, lag."""
        for table, rows in self.rows.items():
            yield Metric(ROWS_METRIC, rows, table=table)
            yield Metric(FUTURE_METRIC, self.stamped_in_future.get(table, 0), table=table)
        for table, deleted in self.deleted.items():
            yield Metric(DELETED_METRIC, deleted, table=table)
        yield Metric("IngestRuns", 1)
        yield Metric("IngestRowsTotal", self.total_rows)
        yield Metric("IngestRunDuration", self.duration_ms, MetricUnit.Milliseconds)
        yield Metric("IngestBacklog", 0 if self.complete else 1)
        yield Metric("IngestRowsStampedInFuture", sum(self.stamped_in_future.values()))
        yield Metric("IngestRowsDeleted", sum(self.deleted.values()))
        if self.slot_lag_bytes is not None:
            yield Metric(SLOT_LAG_METRIC, self.slot_lag_bytes, MetricUnit.Bytes)

    def response(self) -> IngestSummary:
        """The handler's response: :meth:`summary`."""
        return self.summary()

    @property
    def total_rows(self) -> int:
        """Rows written across all tables."""
        return sum(self.rows.values())

    def summary(self) -> IngestSummary:
        """Return the run id, manifest key, rows and completeness, JSON-ready: the response."""
        return {"run_id": self.run_id, "manifest_key": self.manifest_key,
                "rows": dict(self.rows), "total_rows": self.total_rows,
                "complete": self.complete,
                "stamped_in_future": {t: n for t, n in self.stamped_in_future.items() if n},
                "deleted": {t: n for t, n in self.deleted.items() if n},
                "swept": list(self.swept)}


class ObjectWriter:
    """Packs JSON lines into objects of at most ``chunk_rows`` lines, each written once.

    Only encoded bytes wait for an object to fill, so the memory held is about one
    object's size whatever the table's.
    """

    def __init__(self, bucket: str, chunk_rows: int, key_for: Callable[[int], str]) -> None:
        """Prepare to write objects named ``key_for(part)``, numbered from part 0."""
        self._bucket, self._chunk_rows, self._key_for = bucket, chunk_rows, key_for
        self._lines: list[bytes] = []
        self.files: list[DataFile] = []

    def add(self, line: bytes) -> None:
        """Take one line; write an object when ``chunk_rows`` lines are waiting."""
        self._lines.append(line)
        if len(self._lines) == self._chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Write the lines waiting (if any) as the next object, created once under a new key."""
        if not self._lines:
            return
        body = b"".join(self._lines)
        key = self._key_for(len(self.files))
        storage.put_new_object(self._bucket, key, body, CONTENT_TYPE)
        self.files.append(DataFile(key, len(self._lines), len(body)))
        self._lines = []


class ChangeSink:
    """Takes the marked JSON lines COPY streams for one table; stops counting at the budget.

    The query asks for one row more than the budget: that row is not written, it
    only proves the table has more, so the cut is exact. The key of every row
    written is read off the start of its line (the primary key comes first) and
    kept as block lines for the next key sweep: a few bytes per row.
    """

    def __init__(self, writer: ObjectWriter, budget: int, key_column: str) -> None:
        """Write at most ``budget`` rows through ``writer``."""
        self._writer, self._budget = writer, budget
        self._key_start = len(json.dumps(key_column)) + 2
        self._keys: list[bytes] = []
        self.key_lines: list[bytes] = []
        self.rows = 0
        self.overflow = False
        self.future = 0
        self.future_keys: list[int] = []

    def write(self, line: bytes) -> None:
        """Take one marked line from COPY."""
        if self.rows == self._budget:
            self.overflow = True
            return
        body = line[1:]
        key = body[self._key_start:body.index(b",", self._key_start)]
        if line[:1] == extract.FUTURE_MARK:
            self.future += 1
            if len(self.future_keys) < LOGGED_KEYS:
                self.future_keys.append(int(key))
        self._writer.add(body)
        self._keys.append(key)
        if len(self._keys) == sweep.BLOCK_KEYS:
            self._end_block()
        self.rows += 1

    def _end_block(self) -> None:
        if self._keys:
            self.key_lines.append(sweep.render_block(self._keys))
            self._keys = []

    @property
    def last_key(self) -> int | None:
        """The key of the last row written (None before any)."""
        self._end_block()
        if not self.key_lines:
            return None
        last_line = self.key_lines[-1]
        return int(last_line[last_line.rfind(b",") + 1:])


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
    sink = ChangeSink(writer, budget, SOURCE_TABLES[table])
    extract.copy_changes(conn, table, previous.cursor, read_point, budget + 1, sink)
    writer.flush()
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


def _due_for_sweep(settings: IngestSettings, previous: IngestManifest | None,
                   read_point: extract.ReadPoint) -> list[str]:
    """Return the tables whose key sweep is due in this run."""
    def swept_at(table: str) -> datetime | None:
        state = previous.table(table).sweep if previous else None
        return None if state is None else state.swept_at

    return [table for table in SOURCE_TABLES
            if sweep.is_due(swept_at(table), read_point.database_time, settings.delete_sweep)]


def _extract_within_budget(conn: pg8000.native.Connection, settings: IngestSettings,
                           previous: IngestManifest | None, read_point: extract.ReadPoint,
                           run: keys.RunId, due: list[str]) -> dict[str, TableEntry]:
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


def _runs_since(bucket: str, sweeps: list[SweepState],
                previous_key: str | None) -> Iterator[IngestManifest]:
    """Yield the committed manifests after the oldest of ``sweeps``, oldest first."""
    if not sweeps or previous_key is None:
        return
    oldest = min(sweeps, key=lambda state: state.run_id)
    start = keys.manifest_key(keys.parse_run_id(oldest.run_id))
    for key in storage.manifest_keys_after(bucket, start):
        if key > previous_key:
            return
        yield IngestManifest.read(storage.read_json(bucket, key), key)


def _sweep_tables(conn: pg8000.native.Connection, settings: IngestSettings,
                  previous_key: str | None, read_point: extract.ReadPoint, run: keys.RunId,
                  entries: dict[str, TableEntry], due: list[str]) -> dict[str, TableEntry]:
    """Sweep every table in ``due``; return the entries with their deletions and sweeps."""
    captured: dict[str, list[str]] = {table: [] for table in due}
    sweeps = {table: entries[table].sweep for table in due}
    for manifest in _runs_since(settings.bucket, [state for state in sweeps.values() if state],
                                previous_key):
        for table, state in sweeps.items():
            listed = manifest.table(table).captured_keys
            if state is not None and manifest.run_id > state.run_id and listed:
                captured[table].append(listed)
    swept = dict(entries)
    for table in due:
        swept[table] = _sweep_table(conn, settings, read_point, run, table, entries[table],
                                    captured[table])
    return swept


def _sweep_table(conn: pg8000.native.Connection, settings: IngestSettings,
                 read_point: extract.ReadPoint, run: keys.RunId, table: str,
                 entry: TableEntry, captured: list[str]) -> TableEntry:
    key_column = SOURCE_TABLES[table]
    spool = sweep.KeySpool()
    try:
        extract.copy_keys(conn, table, sweep.BLOCK_KEYS, spool)
        spool.finish()
        writer = ObjectWriter(settings.bucket, settings.chunk_rows,
                              lambda part: keys.deletions_key(table, run, part))
        known = [sweep.stored_blocks(settings.bucket, entry.sweep.key if entry.sweep else None),
                 *(sweep.stored_blocks(settings.bucket, key) for key in captured)]
        for key in sweep.vanished(known, spool.blocks()):
            writer.add(sweep.deletion_line(key_column, key, read_point.database_time))
        writer.flush()
        state = SweepState(key=keys.sweep_key(table, run), keys=spool.keys, run_id=str(run),
                           swept_at=read_point.database_time)
        sweep.upload(settings.bucket, state.key, spool)
    finally:
        spool.close()
    result = replace(entry, deleted=tuple(writer.files), sweep=state, captured_keys=None)
    logger.info("table swept for deletes", extra={
        "run_id": str(run), "table": table, "keys": state.keys, "deleted": result.deleted_rows,
        "compared_with": "nothing (first sweep)" if entry.sweep is None else entry.sweep.key,
        "captured_key_lists": len(captured)})
    return result


def _read_source(settings: IngestSettings, previous: IngestManifest | None,
                 previous_key: str | None, run: keys.RunId,
                 db_timeout: float) -> tuple[extract.ReadPoint, dict[str, TableEntry]]:
    conn = db.connect(settings.secret_id, timeout=db_timeout, database=config.TOTESYS)
    try:
        with extract.snapshot(conn) as read_point:
            check_contract(extract.source_columns(conn))
            due = _due_for_sweep(settings, previous, read_point)
            entries = _extract_within_budget(conn, settings, previous, read_point, run, due)
            entries = _sweep_tables(conn, settings, previous_key, read_point, run, entries, due)
        return read_point, entries
    finally:
        db.close_quietly(conn)


def _log_backlog(run: keys.RunId, settings: IngestSettings,
                 entries: dict[str, TableEntry], position: LogicalPosition | None) -> None:
    waiting = [table for table, entry in entries.items() if entry.truncated]
    if not waiting and position is not None:
        logger.info("row budget reached; the next run continues in slot %s after %s",
                    position.slot, position.lsn, extra={
                        "run_id": str(run), "max_rows_per_run": settings.max_rows_per_run,
                        "partial_commit_lsn": position.partial_commit_lsn,
                        "partial_changes": position.partial_changes})
        return
    cursor = entries[waiting[0]].cursor
    resume = ("its first row" if cursor.resume_after is None
              else f"the row after key {cursor.resume_after}")
    logger.info("row budget reached; the next run continues from %s at %s", waiting[0], resume,
                extra={"run_id": str(run), "max_rows_per_run": settings.max_rows_per_run,
                       "continues_from_table": waiting[0], "tables_waiting": waiting})


def _check_still_newest(bucket: str, previous_key: str | None) -> None:
    """Refuse to commit when another run committed since this one read its state.

    Committing anyway would leave a manifest older than the newest one, which
    transform skips and load waits for forever.
    """
    newest = storage.latest_manifest_key(bucket)
    if newest != previous_key:
        raise ConcurrentRunError(
            f"another ingest run committed {newest} after this run started from "
            f"{previous_key or 'no manifest'}; this run's files are orphans and nothing is lost: "
            "the next run continues from the newer manifest")


def _check_claim(claim_key: str, claim: Any, previous_key: str | None) -> None:
    """Refuse a claim that would have this run write anything but the successor manifest.

    A claim names the key this run writes on its winner's behalf, so it is read like any
    stored manifest: the key must be a manifest key, the manifest must check against it
    (:meth:`IngestManifest.read`) and follow the same predecessor; else a ManifestError
    naming the claim, and nothing is written.
    """
    try:
        key = claim["manifest_key"]
        claimed = IngestManifest.read(claim["manifest"], key)
    except (KeyError, TypeError, ManifestError) as error:
        raise ManifestError(f"{claim_key}: not a successor claim ingest writes ({error})") from None
    if claimed.previous_manifest != previous_key:
        raise ManifestError(f"{claim_key}: claims {key}, which does not follow {previous_key}")


def _claim_succession(bucket: str, manifest_key: str, manifest: IngestManifest) -> None:
    """Become the one run that commits after ``manifest.previous_manifest``, or abort.

    The check of :func:`_check_still_newest` and the manifest's write are two
    requests: two runs started from the same manifest (a duplicate schedule
    delivery, with no reserved concurrency to serialise them) can both pass the
    check and both commit, capturing the same rows and deletions twice. The claim
    closes that gap: one conditional write (``IfNoneMatch``) per predecessor, which
    only one run can win. It carries the whole manifest, so a winner that dies
    before writing its manifest is committed all the same by the next run that
    finds the claim taken (the manifest write is conditional too, so either may
    make it, once). A claim already holding this very manifest is this run's own
    write, retried.
    """
    claim_key = keys.successor_claim_key(manifest.previous_manifest)
    document = manifest.to_json()
    try:
        storage.put_new_json(bucket, claim_key, {"manifest_key": manifest_key,
                                                 "manifest": document})
        return
    except storage.ObjectAlreadyExistsError:
        claim = storage.read_json(bucket, claim_key)
    if claim["manifest_key"] == manifest_key:
        return
    _check_claim(claim_key, claim, manifest.previous_manifest)
    try:
        storage.put_new_json(bucket, claim["manifest_key"], claim["manifest"])
    except storage.ObjectAlreadyExistsError:
        pass  # the winner wrote its manifest, as it usually has
    raise ConcurrentRunError(
        f"another ingest run claimed the commit after {manifest.previous_manifest or 'no manifest'}"
        f" first, as {claim['manifest_key']}; this run's files are orphans and nothing is lost: "
        "the next run continues from that manifest")


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


def _read_slot(settings: IngestSettings, previous: IngestManifest, run: keys.RunId,
               position: LogicalPosition, db_timeout: float
               ) -> tuple[extract.ReadPoint, dict[str, TableEntry], logical.ChangeWriter]:
    """Write the slot's changes after ``position``, within the row budget, as this run's files."""
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


def _extract_logical(settings: IngestSettings, run: keys.RunId, db_timeout: float,
                     previous: IngestManifest | None,
                     previous_key: str | None) -> tuple[extract.ReadPoint, dict[str, TableEntry],
                                                        bool, LogicalPosition]:
    """Run log-based capture: a snapshot backfill until one has completed, then the slot."""
    position = _logical_start(settings, previous, db_timeout)
    if previous is None or not position.backfilled:
        # The initial load, taken after the slot exists: nothing falls between the two.
        read_point, entries = _read_source(settings, previous, previous_key, run, db_timeout)
        complete = not any(entry.truncated for entry in entries.values())
        return read_point, entries, complete, replace(position, backfilled=complete)
    read_point, entries, changes = _read_slot(settings, previous, run, position, db_timeout)
    return read_point, entries, changes.complete, changes.position


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


def _extract_run(settings: IngestSettings, run: keys.RunId, db_timeout: float) -> IngestManifest:
    """Extract the changes since the newest manifest; return the manifest that commits them."""
    previous_key = storage.latest_manifest_key(settings.bucket)
    previous = (None if previous_key is None
                else IngestManifest.read(storage.read_json(settings.bucket, previous_key),
                                         previous_key))
    logger.info("ingest run started", extra={
        "run_id": str(run), "previous_manifest": previous_key,
        "previous_snapshot": None if previous is None or previous.snapshot is None
        else str(previous.snapshot),
        "chunk_rows": settings.chunk_rows, "max_rows_per_run": settings.max_rows_per_run,
        "delete_sweep_minutes": settings.delete_sweep // timedelta(minutes=1),
        "capture_mode": settings.capture_mode,
    })
    if settings.capture_mode == "logical":
        read_point, entries, complete, position = _extract_logical(
            settings, run, db_timeout, previous, previous_key)
        manifest = IngestManifest(
            run_id=str(run), started_at=timestamps.instant_text(run.started_at),
            finished_at=timestamps.now_text(), previous_manifest=previous_key,
            tables=entries, complete=complete, snapshot=read_point.snapshot,
            database_time=timestamps.database_text(read_point.database_time), logical=position)
        _check_still_newest(settings.bucket, previous_key)
        return manifest
    if previous is not None and previous.logical is not None:
        previous = _fall_back_from_logical(previous, previous.logical.slot, run)
    read_point, entries = _read_source(settings, previous, previous_key, run, db_timeout)
    manifest = IngestManifest(
        run_id=str(run), started_at=timestamps.instant_text(run.started_at),
        finished_at=timestamps.now_text(), previous_manifest=previous_key,
        tables=entries, complete=not any(entry.truncated for entry in entries.values()),
        snapshot=read_point.snapshot,
        database_time=timestamps.database_text(read_point.database_time))
    _check_still_newest(settings.bucket, previous_key)
    return manifest


def _report(settings: IngestSettings, run: keys.RunId, manifest_key: str,
            manifest: IngestManifest, started: float) -> IngestReport:
    """Log a committed run and return its report (published by the handler)."""
    entries = manifest.tables
    swept = tuple(table for table, entry in entries.items()
                  if entry.sweep is not None and entry.sweep.run_id == str(run))
    result = IngestReport(
        str(run), manifest_key, {table: entry.rows for table, entry in entries.items()},
        manifest.complete, round((time.perf_counter() - started) * 1000, 1),
        stamped_in_future={table: entry.stamped_in_future for table, entry in entries.items()},
        deleted={table: entries[table].deleted_rows for table in swept}, swept=swept)
    if manifest.logical is not None and manifest.logical.backfilled and not swept:
        result = replace(result, deleted={table: entry.deleted_rows
                                          for table, entry in entries.items()})
    changed = [table for table, entry in entries.items() if entry.rows or entry.deleted_rows]
    logger.info("ingest run committed" if changed
                else "ingest run committed: nothing changed since the previous run", extra={
                    "run_id": result.run_id, "manifest_key": manifest_key,
                    "snapshot": str(manifest.snapshot), "rows": result.total_rows,
                    "bytes": sum(entry.bytes for entry in entries.values()),
                    "files": sum(len(entry.files) for entry in entries.values()),
                    "tables_changed": changed, "complete": result.complete,
                    "stamped_in_future": sum(result.stamped_in_future.values()),
                    "deleted": sum(result.deleted.values()), "swept": list(swept),
                    "duration_ms": result.duration_ms,
                })
    if not result.complete:
        _log_backlog(run, settings, dict(entries), manifest.logical)
    return result


def _release_slot(settings: IngestSettings, position: LogicalPosition,
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


def _failure_message(error: Exception, progress: Progress) -> str:
    """Say what a failure left behind, from how far the run got and the error's class."""
    if isinstance(error, ConcurrentRunError):
        return f"ingest run failed: {error}"
    if progress is Progress.COMMITTING and isinstance(error, storage.ObjectAlreadyExistsError):
        return Progress.COMMITTED_BY_RETRY.value
    return progress.value


def run_ingest(settings: IngestSettings | None = None,
               deadline: Deadline = Deadline.unbounded()) -> IngestReport:
    """Run one ingest: extract the changes since the last manifest, then commit a new manifest.

    At most ``max_rows_per_run`` rows are written; the report's ``complete`` says
    whether the run caught up or left a backlog for the next run. The deadline
    bounds every database wait, statements included: a backfill's first COPY sorts
    every row it returns, and no wait may outlive the invocation.

    The handler passes the settings it read; local tools and tests may leave them to
    be read from the environment here. Any failure (configuration, secret, database,
    S3, a changed source column, a concurrent run) is logged once with its cause and
    with what it left committed, and re-raised, so Lambda's Errors metric sees it.
    """
    started = time.perf_counter()
    run = keys.new_run_id()
    manifest_key = keys.manifest_key(run)
    progress = Progress.EXTRACTING
    try:
        settings = settings or IngestSettings.from_environment()
        manifest = _extract_run(settings, run, deadline.remaining())
        progress = Progress.COMMITTING
        _claim_succession(settings.bucket, manifest_key, manifest)
        storage.put_new_json(settings.bucket, manifest_key, manifest.to_json())
        progress = Progress.COMMITTED
        lag = (None if manifest.logical is None
               else _release_slot(settings, manifest.logical, deadline.remaining()))
        return replace(_report(settings, run, manifest_key, manifest, started),
                       slot_lag_bytes=lag)
    except Exception as error:
        logger.exception(_failure_message(error, progress),
                         extra={"run_id": str(run), "manifest_key": manifest_key})
        raise
