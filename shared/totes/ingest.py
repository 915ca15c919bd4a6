"""One ingest run: what changed in totesys since the last committed run, into the ingestion bucket.

The run reads the newest manifest for its starting position, hands it to the
configured capture mode (:mod:`totes.snapshot_capture`, the default, which also
sweeps keys for deletions in its snapshot, or :mod:`totes.logical_capture`),
which writes the changes since that position as create-once objects and returns
the next position; the run then writes its own manifest recording it, and only
then lets the mode release what it holds at the source. Both modes share the
interface of :mod:`totes.capture_mode` and the row budget
``INGEST_MAX_ROWS_PER_RUN``: a run that spends it leaves a backlog the next run
continues, so a backfill drains over several runs that each fit the timeout.

The manifest is the commit point: until it exists nothing downstream sees the
run's files and the state has not moved, so a run that fails anywhere before it
is simply repeated by the next one. Every object is created once under a fresh
key and never replaced. Runs may overlap (reserved concurrency is optional, and
schedules deliver at least once): a run that finds a newer manifest than the one
it started from aborts, and of two runs started from the same manifest only the
one that wins the conditional write of its successor claim commits
(:func:`_claim_succession`), so no row is ever committed twice.
"""
import time
from dataclasses import dataclass, field, replace
from datetime import timedelta
from enum import Enum
from typing import Any, Iterator, TypedDict

from aws_lambda_powertools.metrics import MetricUnit

from totes import db, keys, observability, stage, storage
from totes.capture_mode import CaptureMode, CaptureRequest, Captured, IngestSettings
from totes.errors import TransientError
from totes.extract import SourceLockTimeoutError
from totes.logical_capture import LogicalCapture
from totes.manifest import IngestManifest, LogicalPosition, ManifestError, TableEntry
from totes.snapshot_capture import SnapshotCapture
from totes.stage import Deadline, Metric

logger = observability.service_logger()

ROWS_METRIC = "RowsIngested"
FUTURE_METRIC = "RowsStampedInFuture"
DELETED_METRIC = "RowsDeleted"
SLOT_LAG_METRIC = "ReplicationSlotLagBytes"
RESYNC_METRIC = "SourceResyncs"
FLOOR_AGE_METRIC = "SnapshotFloorAge"
#: how long the transaction holding the floor has held it (alarmed: SnapshotFloorAlarm).
FLOOR_SECONDS_METRIC = "SnapshotFloorAgeSeconds"
#: the capture modes ``CAPTURE_MODE`` names.
MODES: dict[str, CaptureMode] = {"snapshot": SnapshotCapture(), "logical": LogicalCapture()}
#: per bucket, the manifest this process committed last (its key and content, as a read of
#: the stored object returns it): a warm container's next run starts from it after one
#: listing proves it is still the newest, instead of descending the folders and reading it.
_COMMITTED: dict[str, tuple[str, IngestManifest]] = {}


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
    resync: str | None


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
    #: why the run re-synced (read every row, swept every table); None for an ordinary run.
    resync: str | None = None
    #: xids from the snapshot's ``xmin`` (the next run's floor) to its ``xmax``: how far back
    #: the oldest open (or prepared) transaction holds capture.
    floor_age_xids: int | None = None
    #: seconds the transaction holding that floor has held it (snapshot capture), None where
    #: the login may not see when it began.
    floor_age_seconds: float | None = None
    #: runs committed in this invocation: more than one when a slot read stopped before a
    #: key written again after its deletion and the invocation went on (:func:`run_ingest`).
    passes: int = 1
    #: the (last) run's slot read stopped only before such a key, with nothing else waiting.
    stopped_before_reused_key: bool = False

    def then(self, later: "IngestReport") -> "IngestReport":
        """Fold a further run of the same invocation in: its identity and state, both's rows.

        The response and the metrics stay one per invocation: rows, deletions and
        future stamps add up, ``IngestRuns`` counts the runs committed.
        """
        def add(first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
            return {table: first.get(table, 0) + second.get(table, 0)
                    for table in {**first, **second}}
        return replace(later, rows=add(self.rows, later.rows),
                       duration_ms=round(self.duration_ms + later.duration_ms, 1),
                       stamped_in_future=add(self.stamped_in_future, later.stamped_in_future),
                       deleted=add(self.deleted, later.deleted),
                       swept=self.swept + tuple(t for t in later.swept if t not in self.swept),
                       resync=later.resync or self.resync, passes=self.passes + later.passes)

    def metrics(self) -> Iterator[Metric]:
        """Rows, future stamps and deletes per table; the run's totals, backlog, time, lag."""
        for table, rows in self.rows.items():
            yield Metric(ROWS_METRIC, rows, table=table)
            yield Metric(FUTURE_METRIC, self.stamped_in_future.get(table, 0), table=table)
        for table, deleted in self.deleted.items():
            yield Metric(DELETED_METRIC, deleted, table=table)
        yield Metric("IngestRuns", self.passes)
        yield Metric("IngestRowsTotal", self.total_rows)
        yield Metric("IngestRunDuration", self.duration_ms, MetricUnit.Milliseconds)
        yield Metric("IngestBacklog", 0 if self.complete else 1)
        yield Metric("IngestRowsStampedInFuture", sum(self.stamped_in_future.values()))
        yield Metric("IngestRowsDeleted", sum(self.deleted.values()))
        yield Metric(RESYNC_METRIC, 0 if self.resync is None else 1)
        if self.floor_age_xids is not None:
            yield Metric(FLOOR_AGE_METRIC, self.floor_age_xids)
        if self.floor_age_seconds is not None:
            yield Metric(FLOOR_SECONDS_METRIC, self.floor_age_seconds, MetricUnit.Seconds)
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
                "swept": list(self.swept), "resync": self.resync}


def _log_backlog(run: keys.RunId, settings: IngestSettings,
                 entries: dict[str, TableEntry], position: LogicalPosition | None) -> None:
    waiting = [table for table, entry in entries.items() if entry.truncated]
    if not waiting and position is not None:
        logger.info("slot read stopped early (the row budget, or a key written again after "
                    "its deletion); the next run continues in slot %s after %s",
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
    if storage.is_newest_manifest(bucket, previous_key):
        return
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


def _newest_manifest(bucket: str) -> tuple[str | None, IngestManifest | None]:
    """Return the newest committed manifest's key and content (None, None before the first).

    A warm container that committed the newest itself knows both (one listing
    checks that no run committed since, and that the object is there); otherwise
    they are looked up and read.
    """
    known = _COMMITTED.get(bucket)
    if known is not None and storage.is_newest_manifest(bucket, known[0]):
        return known
    key = storage.latest_manifest_key(bucket)
    return key, (None if key is None
                 else IngestManifest.read(storage.read_json(bucket, key), key))


def _remember(bucket: str, key: str, manifest: IngestManifest) -> None:
    """Keep a committed manifest for the next run, read back from its JSON as a read would."""
    _COMMITTED[bucket] = (key, IngestManifest.read(manifest.to_json(), key))


def _capture(settings: IngestSettings, run: keys.RunId,
             db_timeout: float) -> tuple[CaptureRequest, Captured, IngestManifest]:
    """Capture the changes since the newest manifest; return them and the manifest to commit."""
    previous_key, previous = _newest_manifest(settings.bucket)
    logger.info("ingest run started", extra={
        "run_id": str(run), "previous_manifest": previous_key,
        "previous_snapshot": None if previous is None or previous.snapshot is None
        else str(previous.snapshot),
        "chunk_rows": settings.chunk_rows, "max_rows_per_run": settings.max_rows_per_run,
        "delete_sweep_minutes": settings.delete_sweep // timedelta(minutes=1),
        "capture_mode": settings.capture_mode,
    })
    request = CaptureRequest(settings, run, previous, previous_key, db_timeout)
    with db.interruptions_are_transient("totesys"):
        captured = MODES[settings.capture_mode].capture(request)
    manifest = captured.manifest(request)
    _check_still_newest(settings.bucket, previous_key)
    return request, captured, manifest


def _report(settings: IngestSettings, run: keys.RunId, manifest_key: str,
            captured: Captured, manifest: IngestManifest, started: float) -> IngestReport:
    """Log a committed run and return its report (published by the handler)."""
    entries = manifest.tables
    swept = tuple(table for table, entry in entries.items()
                  if entry.sweep is not None and entry.sweep.run_id == str(run))
    result = IngestReport(
        str(run), manifest_key, {table: entry.rows for table, entry in entries.items()},
        manifest.complete, round((time.perf_counter() - started) * 1000, 1),
        stamped_in_future={table: entry.stamped_in_future for table, entry in entries.items()},
        deleted={table: entries[table].deleted_rows for table in swept}, swept=swept,
        resync=manifest.resync, floor_age_xids=(
            None if manifest.snapshot is None else manifest.snapshot.xmax - manifest.snapshot.xmin),
        floor_age_seconds=captured.floor_age_seconds,
        stopped_before_reused_key=captured.stopped_before_reused_key)
    if manifest.logical is not None and manifest.logical.backfilled:
        # Deletions from the log, and from a re-sync's or a TRUNCATE's sweep.
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
                    "snapshot_floor_age_xids": result.floor_age_xids,
                    "snapshot_floor_age_seconds": result.floor_age_seconds,
                    "duration_ms": result.duration_ms,
                })
    if not result.complete:
        _log_backlog(run, settings, dict(entries), manifest.logical)
    return result


def _failure_message(error: Exception, progress: Progress) -> str:
    """Say what a failure left behind, from how far the run got and the error's class."""
    if isinstance(error, (ConcurrentRunError, SourceLockTimeoutError, db.SessionInterruptedError)):
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

    A slot read that stopped only before a key written again after its deletion
    (:class:`totes.logical.ChangeWriter`) is followed at once by a further run, the
    next in the manifest chain, while the invocation's row budget has rows left and
    more than half of the time it began with remains: else each such key would cost
    a scheduled run, and an application that saves rows by delete and insert would
    hold capture behind without end. Each run commits on its own, so a crash between
    two is a crash between two runs, and a further run that fails publishes the
    metrics of those before it first.

    The handler passes the settings it read; local tools and tests may leave them to
    be read from the environment here. Any failure (configuration, secret, database,
    S3, a changed source column, a concurrent run) is logged once with its cause and
    with what it left committed, and re-raised, so Lambda's Errors metric sees it.
    """
    began = deadline.remaining()
    settings, report = _run_once(settings, deadline)
    while report.stopped_before_reused_key and deadline.remaining() > began / 2:
        left = settings.max_rows_per_run - report.total_rows - sum(report.deleted.values())
        if left <= 0:
            break
        logger.info("slot read stopped before a key written again after its deletion: "
                    "a further run continues at once", extra={
                        "run_id": report.run_id, "runs_so_far": report.passes,
                        "rows_left": left, "seconds_left": round(deadline.remaining(), 1)})
        try:
            further = _run_once(replace(settings, max_rows_per_run=left), deadline)[1]
        except Exception:
            # The runs before it are committed: their metrics (rows stamped in the future
            # are alarmed) are published now, as no later run counts them again.
            stage.publish(report)
            raise
        report = report.then(further)
    return report


def _run_once(settings: IngestSettings | None,
              deadline: Deadline) -> tuple[IngestSettings, IngestReport]:
    """Capture and commit one run (one manifest): :func:`run_ingest`'s step."""
    started = time.perf_counter()
    run = keys.new_run_id()
    manifest_key = keys.manifest_key(run)
    progress = Progress.EXTRACTING
    try:
        settings = settings or IngestSettings.from_environment()
        request, captured, manifest = _capture(settings, run, deadline.remaining())
        progress = Progress.COMMITTING
        _claim_succession(settings.bucket, manifest_key, manifest)
        storage.put_new_json(settings.bucket, manifest_key, manifest.to_json())
        progress = Progress.COMMITTED
        _remember(settings.bucket, manifest_key, manifest)
        lag = MODES[settings.capture_mode].release(
            replace(request, db_timeout=deadline.remaining()), manifest)
        return settings, replace(_report(settings, run, manifest_key, captured, manifest,
                                         started), slot_lag_bytes=lag)
    except Exception as error:
        logger.exception(_failure_message(error, progress),
                         extra={"run_id": str(run), "manifest_key": manifest_key})
        raise
