"""One ingest run: what changed in totesys since the last committed run, into the ingestion bucket.

The run reads the newest manifest for its starting state, extracts the eleven
tables from one database snapshot in bounded batches (packed into JSON Lines
objects of at most ``CHUNK_ROWS`` rows), and ends by writing its own manifest.
A run writes at most ``INGEST_MAX_ROWS_PER_RUN`` rows: when that budget is spent
it stops, records where it stopped, and the next run continues from there, so a
backfill drains over several runs that each fit the function's timeout.
That manifest is the commit point: until it exists nothing downstream sees the
run's files and the state has not moved, so a run that fails anywhere before it
is simply repeated by the next one. Every object is created once under a fresh
key and never replaced. Runs must not overlap (the function's concurrency is 1);
as a guard, a run that finds a newer manifest than the one it started from
aborts instead of committing a manifest older than it.
"""
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import pg8000.native

from totes import config, db, extract, jsonl, keys, observability, storage
from totes.source import SOURCE_TABLES
from totes.watermark import (MANIFEST_FORMAT, TableWatermark, WatermarkAdvance, format_timestamp,
                             states_from_manifest)

logger = observability.service_logger()

CONTENT_TYPE = "application/x-ndjson"
ROWS_METRIC = "RowsIngested"
#: Rows per FETCH. Decoded rows take about ten times the memory of their JSON, so
#: fetching in batches smaller than an object keeps the peak near one encoded object.
FETCH_ROWS = 5_000
#: Seconds any database wait may take outside Lambda: the longest a Lambda may run.
DEFAULT_DB_TIMEOUT_SECONDS = 900.0

_NOT_COMMITTED = "ingest run failed; nothing committed, the next run reads the same rows"
_COMMIT_UNKNOWN = ("ingest run failed writing its manifest; the run is committed if the "
                   "manifest exists, else nothing is and the next run reads the same rows")
_COMMITTED_BY_RETRY = ("ingest run failed writing its manifest, which exists: a retried write "
                       "found the object its first attempt created, so the run is committed")
_COMMITTED = "ingest run failed after committing its manifest; downstream sees the run"


class ConcurrentRunError(RuntimeError):
    """Another run committed a manifest after this one read its starting state."""


@dataclass(frozen=True)
class IngestSettings:
    """Everything a run needs to know about its environment, read once at its start."""

    bucket: str
    secret_id: str
    overlap: timedelta
    chunk_rows: int
    max_rows_per_run: int

    @classmethod
    def from_environment(cls) -> "IngestSettings":
        """Read the settings from the Lambda environment, failing early on a missing one."""
        return cls(bucket=config.ingest_bucket(), secret_id=config.totesys_secret_id(),
                   overlap=config.overlap_window(), chunk_rows=config.chunk_rows(),
                   max_rows_per_run=config.max_rows_per_run())


@dataclass(frozen=True)
class WrittenFile:
    """One JSON Lines object a run created."""

    key: str
    rows: int
    bytes: int

    def to_json(self) -> dict[str, Any]:
        """Return the manifest's description of the file."""
        return {"key": self.key, "rows": self.rows, "bytes": self.bytes}


@dataclass(frozen=True)
class TableExtract:
    """What a run wrote for one table, and the state the next run continues from."""

    table: str
    files: tuple[WrittenFile, ...]
    state: TableWatermark
    skipped: int
    #: the row budget stopped the run before this table's end (or before the table).
    truncated: bool = False

    @classmethod
    def not_reached(cls, table: str, state: TableWatermark) -> "TableExtract":
        """Return the entry of a table a truncated run did not read: its state is unchanged."""
        return cls(table, (), state, 0, truncated=True)

    @property
    def rows(self) -> int:
        """Rows written for the table in this run."""
        return sum(file.rows for file in self.files)

    @property
    def bytes(self) -> int:
        """Bytes written for the table in this run."""
        return sum(file.bytes for file in self.files)

    def to_json(self) -> dict[str, Any]:
        """Return the table's manifest entry: files written plus the incremental state."""
        return {"rows": self.rows, "files": [file.to_json() for file in self.files],
                "truncated": self.truncated, **self.state.to_json()}


@dataclass(frozen=True)
class IngestResult:
    """The outcome of a committed run, for the handler's response and run-level metrics."""

    run_id: str
    manifest_key: str
    rows: dict[str, int]
    complete: bool
    duration_ms: float

    @property
    def total_rows(self) -> int:
        """Rows written across all tables."""
        return sum(self.rows.values())

    def summary(self) -> dict[str, Any]:
        """Return the run id, manifest key, rows and completeness, JSON-ready: the response."""
        return {"run_id": self.run_id, "manifest_key": self.manifest_key,
                "rows": dict(self.rows), "total_rows": self.total_rows,
                "complete": self.complete}


def utc_text(moment: datetime) -> str:
    """Render an aware instant as the manifests do: ISO-8601 UTC with milliseconds and ``Z``."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def build_manifest(run: keys.RunId, previous_key: str | None, overlap: timedelta,
                   extracts: Sequence[TableExtract], finished_at: datetime) -> dict[str, Any]:
    """Return a run's manifest (format ``totes.ingest/1``, see docs/architecture.md).

    ``complete`` is false when the row budget cut the run: more rows are waiting.
    """
    return {
        "format": MANIFEST_FORMAT,
        "run_id": str(run),
        "started_at": utc_text(run.started_at),
        "finished_at": utc_text(finished_at),
        "previous_manifest": previous_key,
        "overlap_minutes": overlap // timedelta(minutes=1),
        "complete": not any(table.truncated for table in extracts),
        "tables": {table.table: table.to_json() for table in extracts},
    }


class ObjectWriter:
    """Packs one table's encoded rows into objects of at most ``chunk_rows`` rows.

    Only encoded bytes wait for an object to fill, never decoded rows, so the
    memory held is about one object's size whatever the fetch pattern.
    """

    def __init__(self, bucket: str, table: str, run: keys.RunId, chunk_rows: int) -> None:
        """Prepare to write ``table``'s objects for ``run``, numbered from part 00000."""
        self._bucket, self._table, self._run, self._chunk_rows = bucket, table, run, chunk_rows
        self._parts: list[bytes] = []
        self._pending = 0
        self.files: list[WrittenFile] = []

    def add(self, columns: tuple[str, ...], rows: list[list[Any]]) -> None:
        """Encode ``rows``, writing an object each time one reaches ``chunk_rows`` rows."""
        while rows:
            room = self._chunk_rows - self._pending
            taken, rows = rows[:room], rows[room:]
            self._parts.append(jsonl.encode_rows(columns, taken))
            self._pending += len(taken)
            if self._pending == self._chunk_rows:
                self.flush()

    def flush(self) -> None:
        """Write the rows waiting (if any) as the next object, created once under a new key."""
        if not self._pending:
            return
        body = b"".join(self._parts)
        key = keys.data_key(self._table, self._run, len(self.files), "jsonl")
        storage.put_new_object(self._bucket, key, body, CONTENT_TYPE)
        self.files.append(WrittenFile(key, self._pending, len(body)))
        self._parts, self._pending = [], 0


def extract_table(conn: pg8000.native.Connection, table: str, state: TableWatermark,
                  run: keys.RunId, settings: IngestSettings, budget: int) -> TableExtract:
    """Write up to ``budget`` of one table's new versions as JSON Lines objects.

    Versions inside the overlap window that an earlier run already wrote are
    skipped, so an unchanged table writes nothing. The cut is exact: once the
    budget is spent, a further new version marks the table truncated and the
    read stops. Rows come oldest first, so what was written is a prefix and the
    new state (the greatest ``last_updated`` written, plus the versions written
    within the overlap of it) is where the next run continues.
    """
    key_column = SOURCE_TABLES[table]
    advance = WatermarkAdvance(state, settings.overlap)
    writer = ObjectWriter(settings.bucket, table, run, settings.chunk_rows)
    skipped, truncated = 0, False
    for batch in extract.stream_rows(conn, table, state.since(settings.overlap),
                                     min(settings.chunk_rows, FETCH_ROWS)):
        key_at = batch.columns.index(key_column)
        version_at = batch.columns.index(extract.VERSION_COLUMN)
        fresh = [row for row in batch.rows if state.is_new(row[key_at], row[version_at])]
        skipped += len(batch.rows) - len(fresh)
        if len(fresh) > budget:
            fresh, truncated = fresh[:budget], True
        budget -= len(fresh)
        writer.add(batch.columns, fresh)
        advance.add((row[key_at], row[version_at]) for row in fresh)
        if truncated:
            break
    writer.flush()
    result = TableExtract(table, tuple(writer.files), advance.result(), skipped, truncated)
    logger.info("table extracted", extra={
        "run_id": str(run), "table": table, "rows": result.rows, "bytes": result.bytes,
        "files": len(result.files), "skipped_already_written": skipped, "truncated": truncated,
        "since": None if state.watermark is None
        else format_timestamp(state.since(settings.overlap)),
    })
    return result


def _extract_all(settings: IngestSettings, states: dict[str, TableWatermark],
                 run: keys.RunId, db_timeout: float) -> list[TableExtract]:
    conn = db.connect(settings.secret_id, timeout=db_timeout)
    try:
        with extract.snapshot(conn):
            return _extract_within_budget(conn, settings, states, run)
    finally:
        # Closing a connection whose socket already failed can only say so again;
        # the original error is the one worth raising.
        with suppress(pg8000.native.InterfaceError, OSError):
            conn.close()


def _extract_within_budget(conn: pg8000.native.Connection, settings: IngestSettings,
                           states: dict[str, TableWatermark], run: keys.RunId
                           ) -> list[TableExtract]:
    budget = settings.max_rows_per_run
    extracts: list[TableExtract] = []
    for table in SOURCE_TABLES:
        if extracts and extracts[-1].truncated:
            extracts.append(TableExtract.not_reached(table, states[table]))
            continue
        extracts.append(extract_table(conn, table, states[table], run, settings, budget))
        budget -= extracts[-1].rows
    return extracts


def _log_backlog(run: keys.RunId, settings: IngestSettings, extracts: list[TableExtract]) -> None:
    cut = next(item for item in extracts if item.truncated)
    watermark = cut.state.watermark
    resume = "its first row" if watermark is None else f"last_updated {format_timestamp(watermark)}"
    logger.info("row budget reached; the next run continues from %s at %s", cut.table, resume,
                extra={"run_id": str(run), "max_rows_per_run": settings.max_rows_per_run,
                       "continues_from_table": cut.table,
                       "tables_waiting": [item.table for item in extracts if item.truncated]})


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


def _extract_run(settings: IngestSettings, run: keys.RunId, db_timeout: float
                 ) -> tuple[dict[str, Any], list[TableExtract]]:
    """Extract the changes since the newest manifest; return the manifest that commits them."""
    previous_key = storage.latest_manifest_key(settings.bucket)
    previous = None if previous_key is None else storage.read_json(settings.bucket, previous_key)
    logger.info("ingest run started", extra={
        "run_id": str(run), "previous_manifest": previous_key,
        "overlap_minutes": settings.overlap // timedelta(minutes=1),
        "chunk_rows": settings.chunk_rows, "max_rows_per_run": settings.max_rows_per_run,
    })
    extracts = _extract_all(settings, states_from_manifest(previous), run, db_timeout)
    manifest = build_manifest(run, previous_key, settings.overlap, extracts,
                              datetime.now(timezone.utc))
    _check_still_newest(settings.bucket, previous_key)
    return manifest, extracts


def _report(settings: IngestSettings, run: keys.RunId, manifest_key: str,
            extracts: list[TableExtract], complete: bool, started: float) -> IngestResult:
    """Publish a committed run's metrics and log lines; return its result."""
    result = IngestResult(str(run), manifest_key, {item.table: item.rows for item in extracts},
                          complete, round((time.perf_counter() - started) * 1000, 1))
    for item in extracts:
        observability.emit_table_metric(ROWS_METRIC, item.table, item.rows)
    changed = [item.table for item in extracts if item.rows]
    logger.info("ingest run committed" if changed
                else "ingest run committed: nothing changed since the previous run", extra={
                    "run_id": result.run_id, "manifest_key": manifest_key,
                    "rows": result.total_rows, "bytes": sum(item.bytes for item in extracts),
                    "files": sum(len(item.files) for item in extracts),
                    "tables_changed": changed, "complete": result.complete,
                    "duration_ms": result.duration_ms,
                })
    if not result.complete:
        _log_backlog(run, settings, extracts)
    return result


def _failure_message(error: Exception, left_behind: str) -> str:
    """Say what a failure left behind: ``left_behind`` is what the run's progress implies."""
    if isinstance(error, ConcurrentRunError):
        return f"ingest run failed: {error}"
    if left_behind == _COMMIT_UNKNOWN and isinstance(error, storage.ObjectAlreadyExistsError):
        return _COMMITTED_BY_RETRY
    return left_behind


def run_ingest(settings: IngestSettings | None = None, *,
               db_timeout: float = DEFAULT_DB_TIMEOUT_SECONDS) -> IngestResult:
    """Run one ingest: extract the changes since the last manifest, then commit a new manifest.

    At most ``max_rows_per_run`` rows are written; the result's ``complete`` says
    whether the run caught up or left a backlog for the next run. ``db_timeout``
    bounds every database wait, statements included: the handler passes the
    invocation's remaining time, as the first FETCH of a backfill sorts every row
    it will return and may take far longer than a connect.

    Settings default to the Lambda environment. Any failure (configuration,
    secret, database, S3, a concurrent run) is logged once with its cause and with
    what it left committed, and re-raised, so Lambda's Errors metric sees it.
    """
    started = time.perf_counter()
    run = keys.new_run_id()
    manifest_key = keys.manifest_key(run)
    left_behind = _NOT_COMMITTED  # what a failure at this point leaves, as the log says it
    try:
        settings = settings or IngestSettings.from_environment()
        manifest, extracts = _extract_run(settings, run, db_timeout)
        left_behind = _COMMIT_UNKNOWN
        storage.put_new_json(settings.bucket, manifest_key, manifest)
        left_behind = _COMMITTED
        return _report(settings, run, manifest_key, extracts, manifest["complete"], started)
    except Exception as error:
        logger.exception(_failure_message(error, left_behind),
                         extra={"run_id": str(run), "manifest_key": manifest_key})
        raise
