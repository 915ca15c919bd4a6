"""One scheduled load: every processed manifest not yet in the warehouse, oldest first.

Order and completeness come from the ingest bucket: the processed manifest of an
ingest run has the same key, so walking the ingest manifests after the last one
loaded and stopping at the first that has not been transformed yet means a gap
is waited for, never skipped. Each manifest loads in one transaction with its
``etl.loaded_manifest`` row, under an advisory lock, so a crash, a timeout or a
concurrent run never loads anything twice or half (see ``docs/load.md``).
"""
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import chain
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, NotRequired, TypedDict

import pg8000.native
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from totes import config, db, errors, stage, storage, supersede, timestamps, warehouse
from totes.errors import InputError, PipelineError
from totes.manifest import PROCESSED_FORMAT_V1, IngestManifest, ProcessedManifest, TableOutput
from totes.observability import service_logger
from totes.stage import Deadline, Metric
from totes.supersede import Markers
from totes.warehouse_schema import DELETIONS, FACTS, TABLES, Table, arrow_schema

if TYPE_CHECKING:  # imported where used at run time, from the AWS SDK for pandas layer
    import pyarrow as pa

#: rows per Arrow batch streamed to COPY: the bound on the load's memory.
BATCH_ROWS = 65_536
#: a manifest's Parquet objects downloaded ahead of the COPY that reads them (on disk, in the
#: order they load): their waits for S3 overlap each other and the warehouse's statements.
PREFETCH_OBJECTS = 4

#: a manifest is not started with less time left than this (seconds).
RESERVE_SECONDS = 60.0

logger = service_logger()


class LoadError(PipelineError):
    """A manifest could not be loaded; names the manifest and, when known, the object.

    Its kind (input or transient) is the kind of the error it wraps, its ``__cause__``.
    """

    def __init__(self, message: str, manifest_key: str, object_key: str | None = None):
        """Keep the keys as attributes so logs and callers can report them structurally."""
        super().__init__(message)
        self.manifest_key = manifest_key
        self.object_key = object_key


class ParquetFileError(InputError, ValueError):
    """A Parquet object is missing, unreadable, or not the table's contract schema."""

    def __init__(self, message: str, object_key: str):
        """Name the object in the message and keep its key for the caller."""
        super().__init__(f"{object_key}: {message}")
        self.object_key = object_key


class SupersededLoadError(InputError):
    """The warehouse holds manifests that were transformed again since: a person must reload."""


class LoadSummary(TypedDict):
    """The load handler's response: :meth:`LoadReport.as_dict`."""

    manifests_loaded: int
    last_loaded_manifest: str | None
    rows_loaded: dict[str, int]
    inferred_members: dict[str, int]
    versions_corrected: dict[str, int]
    deletions_loaded: dict[str, int]
    freshness_seconds: float
    #: present when an operator's marker made this run pass over manifests.
    manifests_skipped: NotRequired[list[str]]


@dataclass(frozen=True)
class LoadSettings:
    """Everything a load run needs to know about its environment, read once at its start."""

    ingest_bucket: str
    processed_bucket: str
    secret_id: str
    batch_rows: int = BATCH_ROWS

    @classmethod
    def from_environment(cls) -> "LoadSettings":
        """Read the settings from the Lambda environment, failing early on a missing one."""
        return cls(ingest_bucket=config.ingest_bucket(),
                   processed_bucket=config.processed_bucket(),
                   secret_id=config.warehouse_secret_id())


@dataclass
class ListingEnd:
    """Where a run's listing of the ingest manifests stopped, for freshness without another.

    ``ended`` once :func:`pending_manifests` ran to its own end: through every manifest
    listed (``oldest_waiting`` None) or to the first one without its processed twin
    (``oldest_waiting``, which nothing after it overtakes). A run that stopped on its
    own before (the deadline, a failure) leaves it unended: its freshness is listed anew.
    """

    ended: bool = False
    oldest_waiting: str | None = None


@dataclass
class LoadReport:
    """What one load run did: the handler's response and its metrics (``stage.StageReport``)."""

    last_loaded_manifest: str | None
    #: the operator's decisions in force (revisions, skips), read when the run starts.
    markers: Markers = field(default_factory=Markers)
    manifests_loaded: list[str] = field(default_factory=list)
    #: manifests recorded as loaded with nothing, because an operator's skip marker said so.
    manifests_skipped: list[str] = field(default_factory=list)
    #: the manifest whose input was rejected: nothing behind it loads until a person acts.
    stuck: str | None = None
    rows_loaded: Counter[str] = field(default_factory=Counter)
    inferred_members: Counter[str] = field(default_factory=Counter)
    #: fact versions corrected in place (same ``last_updated``, other values), per fact.
    versions_corrected: Counter[str] = field(default_factory=Counter)
    #: deletion versions written, per fact.
    deletions_loaded: Counter[str] = field(default_factory=Counter)
    freshness_seconds: float = 0.0
    #: where this run's listing of the ingest manifests stopped (its freshness reads it).
    listing: ListingEnd = field(default_factory=ListingEnd)
    #: False when freshness could not be measured: a missing point, never a made-up one.
    freshness_measured: bool = True
    seconds: float = 0.0

    def metrics(self) -> Iterator[Metric]:
        """Freshness (alarmed at 30 minutes), volume per table, corrections, deletions, time."""
        if self.freshness_measured:
            yield Metric("FreshnessSeconds", self.freshness_seconds, MetricUnit.Seconds)
        yield Metric("ManifestsLoaded", len(self.manifests_loaded))
        if self.manifests_skipped:
            yield Metric("ManifestsSkipped", len(self.manifests_skipped))
        if self.stuck is not None:
            yield Metric("LoadStuck", 1)
        yield Metric("LoadRunDuration", self.seconds, MetricUnit.Seconds)
        for table in TABLES:
            yield Metric("RowsLoaded", self.rows_loaded[table], table=table)
        for table, count in self.inferred_members.items():
            yield Metric("InferredMembers", count, table=table)
        for fact in FACTS:
            yield Metric("VersionsCorrected", self.versions_corrected[fact.name], table=fact.name)
            yield Metric("DeletionsLoaded", self.deletions_loaded[fact.name], table=fact.name)

    def response(self) -> LoadSummary:
        """The handler's response: :meth:`as_dict`."""
        return self.as_dict()

    def as_dict(self) -> LoadSummary:
        """A JSON-ready summary, every table listed so a zero is visible."""
        summary: LoadSummary = {
            "manifests_loaded": len(self.manifests_loaded),
            "last_loaded_manifest": self.last_loaded_manifest,
            "rows_loaded": {name: self.rows_loaded[name] for name in TABLES},
            "inferred_members": dict(self.inferred_members),
            "versions_corrected": {fact.name: self.versions_corrected[fact.name]
                                   for fact in FACTS},
            "deletions_loaded": {fact.name: self.deletions_loaded[fact.name] for fact in FACTS},
            "freshness_seconds": self.freshness_seconds,
        }
        if self.manifests_skipped:
            summary["manifests_skipped"] = list(self.manifests_skipped)
        return summary


def _same_type(found: "pa.DataType", expected: "pa.DataType") -> bool:
    import pyarrow as pa

    text = pa.types.is_string(found) or pa.types.is_large_string(found)
    return found == expected or (text and expected == pa.string())


def record_batches(bucket: str, key: str, table: Table, expected_rows: int,
                   batch_rows: int = BATCH_ROWS, fill_defaults: bool = False,
                   prefetch: storage.Prefetch | None = None,
                   sha256: str | None = None) -> Iterator["pa.RecordBatch"]:
    """Yield the object's rows as record batches with the table's columns in contract order.

    The object is spooled to a temporary file (Parquet needs to seek to its footer)
    and read one row group batch at a time, so memory stays bounded by ``batch_rows``.
    The schema and the row count are checked against the contract and the manifest
    before any row is yielded. With ``fill_defaults`` (a ``totes.processed/1``
    manifest's files), a column added to the contract since, with a default (a
    fact's ``is_deleted``), may be absent: it is filled with the default, so old
    processed data still loads as it was meant. With ``prefetch``, the object is the
    one it downloaded (or is downloading). With ``sha256`` (the manifest's record), an
    object that is not the one listed is refused before any row is yielded
    (:class:`totes.storage.ObjectChangedError`; a prefetch checks against its own record).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = arrow_schema(table)
    defaults = {column.name: column.default for column in table.data_columns
                if fill_defaults and column.default is not None}
    with _unreadable_is_input(key):
        spool = storage.spooled(bucket, key, sha256) if prefetch is None else prefetch.open(key)
    with spool:
        try:
            parquet = pq.ParquetFile(spool)
        except Exception as error:
            raise ParquetFileError(f"cannot read Parquet: {error}", key) from error
        found = parquet.schema_arrow
        absent = {}
        for column in expected:
            index = found.get_field_index(column.name)
            if index < 0 and column.name in defaults:
                absent[column.name] = column
                continue
            if index < 0:
                raise ParquetFileError(f"column {column.name} is missing", key)
            if not _same_type(found.field(index).type, column.type):
                raise ParquetFileError(
                    f"column {column.name} is {found.field(index).type}, "
                    f"the contract says {column.type}", key)
        if parquet.metadata.num_rows != expected_rows:
            raise ParquetFileError(
                f"has {parquet.metadata.num_rows} rows, the manifest says {expected_rows}", key)
        present = [name for name in expected.names if name not in absent]
        try:
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=present):
                for name, column in absent.items():
                    batch = batch.append_column(column, pa.array(
                        [defaults[name]] * batch.num_rows, column.type))
                yield batch.select(expected.names)
        except Exception as error:
            raise ParquetFileError(f"cannot decode Parquet: {error}", key) from error


@contextmanager
def _unreadable_is_input(key: str) -> Iterator[None]:
    """Raise a missing or denied listed object as :class:`ParquetFileError`, bad input.

    A missing (or, to a role that may not list it, denied) object the processed
    manifest names is bad input; throttling, a 500 or a dropped connection is not,
    and passes as it is: the next run downloads it again.
    """
    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in storage.UNREADABLE_CODES:
            raise
        raise ParquetFileError(f"cannot read Parquet: {error}", key) from error


def fetch_all(prefetch: storage.Prefetch, keys: Iterable[str]) -> None:
    """Download and check every one of ``keys`` (in order) before the caller commits anything.

    Each is held on disk by ``prefetch`` (:meth:`totes.storage.Prefetch.hold`) for
    :func:`record_batches`; an unreadable one is bad input as it reports them.
    """
    for key in keys:
        with _unreadable_is_input(key):
            prefetch.hold(key)


def pending_manifests(processed_bucket: str, ingest_bucket: str, after: str | None,
                      markers: Markers = Markers(),
                      end: ListingEnd | None = None) -> Iterator[str]:
    """Yield ingest manifest keys to load, oldest first, stopping at the first gap.

    Each ingest manifest after ``after`` must have its processed twin (of the
    revision in force, per ``markers``) before it can load, and nothing after it
    may load before it does. Where the listing stopped is recorded in ``end``.
    """
    end = ListingEnd() if end is None else end
    processed = markers.processed_after(processed_bucket, after)
    for ingest_key in storage.manifest_keys_after(ingest_bucket, after):
        end.oldest_waiting = ingest_key
        if next(processed, None) != ingest_key:
            end.ended = True
            return
        yield ingest_key
    end.ended, end.oldest_waiting = True, None


def freshness_seconds(ingest_bucket: str, loaded_through: str | None, now: datetime,
                      end: ListingEnd | None = None) -> float:
    """Age of the oldest ingest run not yet visible in the warehouse; 0 when none waits.

    When the run's own listing ended (``end``), the manifest it left waiting is that
    run, so the ingest manifests are not listed a second time: one committed since
    the listing is measured by the next run, as one committed just after it would be.
    """
    oldest = (end.oldest_waiting if end is not None and end.ended
              else next(storage.manifest_keys_after(ingest_bucket, loaded_through), None))
    if oldest is None:
        return 0.0
    manifest = IngestManifest.read(storage.read_json(ingest_bucket, oldest), oldest)
    started = timestamps.parse_instant(manifest.started_at)
    return max(0.0, (now - started).total_seconds())


def table_batches(bucket: str, output: TableOutput, table: Table, batch_rows: int,
                  manifest: ProcessedManifest,
                  prefetch: storage.Prefetch | None = None) -> Iterator["pa.RecordBatch"]:
    """Yield every row a manifest lists for one table (or its deletions), file after file.

    Shared by the load and the publish, so both read processed data the same way:
    checked against the contract and the manifest, old formats filled in. With
    ``prefetch``, the files are the ones it downloads ahead.
    """
    old = manifest.format == PROCESSED_FORMAT_V1
    return chain.from_iterable(
        record_batches(bucket, file.key, table, file.rows, batch_rows, fill_defaults=old,
                       prefetch=prefetch, sha256=file.sha256)
        for file in output.files)


@dataclass
class ManifestLoad:
    """What one manifest wrote, per table: rows, members inferred, versions corrected, deletions.

    ``rows`` includes inferred members and deletion versions.
    """

    rows: Counter[str] = field(default_factory=Counter)
    inferred: Counter[str] = field(default_factory=Counter)
    corrected: Counter[str] = field(default_factory=Counter)
    deletions: Counter[str] = field(default_factory=Counter)

    def add(self, table: str, loaded: warehouse.TableLoad) -> None:
        """Count what loading one table (or a fact's deletions) wrote."""
        self.rows[table] += loaded.rows
        self.rows.update(loaded.inferred)
        self.inferred.update(loaded.inferred)
        if loaded.corrected:
            self.corrected[table] += loaded.corrected


def _guarded(key: str, what: str, step: Callable[[], warehouse.TableLoad]) -> warehouse.TableLoad:
    try:
        return step()
    except Exception as error:
        db.drop_row_values(error)
        raise LoadError(f"manifest {key}: loading {what} failed: {error}",
                        key, getattr(error, "object_key", None)) from error


def load_manifest(conn: pg8000.native.Connection, bucket: str, key: str,
                  manifest: ProcessedManifest, batch_rows: int = BATCH_ROWS, *,
                  processed_key: str | None = None) -> ManifestLoad | None:
    """Load one manifest in one transaction with its bookkeeping row; None if already loaded.

    Dimensions load before facts (the order of ``TABLES``), and each fact's
    deletions after every fact version of the manifest, so a row changed and then
    deleted ends deleted. The manifest's capture point is recorded with it. Any
    failure rolls the whole manifest back and is raised as a :class:`LoadError`
    naming the table. Its objects are downloaded a few ahead
    (:data:`PREFETCH_OBJECTS`), from before the lock is taken.
    """
    result = ManifestLoad()
    outputs = [manifest.table(table.name) for table in TABLES.values()]
    deletions = [manifest.deleted(fact.name) for fact in FACTS]
    in_order = [file for output in (*outputs, *deletions) for file in output.files]
    with storage.Prefetch.of_files(bucket, in_order, PREFETCH_OBJECTS) as prefetch, \
            warehouse.transaction(conn):
        warehouse.lock(conn)
        if warehouse.is_loaded(conn, key):
            return None
        for table, output in zip(TABLES.values(), outputs):
            if output.files:
                result.add(table.name, _guarded(key, table.name, lambda: warehouse.load_table(
                    conn, table, table_batches(bucket, output, table, batch_rows, manifest,
                                               prefetch))))
        for fact, output in zip(FACTS, deletions):
            if output.files:
                loaded = _guarded(key, f"deletions of {fact.name}", lambda: (
                    warehouse.load_deletions(conn, fact, table_batches(
                        bucket, output, DELETIONS[fact.name], batch_rows, manifest, prefetch))))
                result.add(fact.name, loaded)
                result.deletions[fact.name] += loaded.rows
        warehouse.record_manifest(conn, key, manifest.run_id, manifest.started(),
                                  sum(result.rows.values()), manifest.capture.snapshot,
                                  manifest.capture.database_moment(),
                                  processed_key=processed_key, skipped_by=manifest.skipped_by)
    return result


def check_revisions(conn: pg8000.native.Connection, markers: Markers) -> None:
    """Refuse to load on top of output that a revision has superseded.

    After "transform again from X", the warehouse must first forget what it
    loaded from X on (the runbook's reload); loading the new revision's
    manifests after the old ones would keep both. Until a person has done that,
    every run stops here with nothing loaded.
    """
    if not markers.revisions:
        return
    since = min(revision.from_manifest for revision in markers.revisions)
    stale = [key for key, loaded_from in warehouse.loaded_revisions(conn, since)
             if loaded_from != markers.processed_key(key)]
    if stale:
        number = markers.revision_for(stale[0])
        marker = next(r for r in markers.revisions if r.number == number)
        raise SupersededLoadError(
            f"{len(stale)} loaded manifest(s) from {stale[0]} on were transformed again as "
            f"revision {number} ({marker.key}: {marker.reason}), but the warehouse still holds "
            f"what was loaded before. Reload the warehouse from {stale[0]} (docs/runbook.md, "
            "\"Transform again from a manifest\"); nothing was loaded")


def _read_manifest(bucket: str, key: str) -> ProcessedManifest:
    try:
        return ProcessedManifest.read(storage.read_json(bucket, key), key)
    except Exception as error:  # a ManifestError, an S3 or a JSON error: all name the key
        raise LoadError(f"manifest {key} cannot be read: {error}", key, key) from error


def run_load(settings: LoadSettings, deadline: Deadline, *,
             now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> LoadReport:
    """Connect to the warehouse with its secret and run :func:`load_into`.

    A warm container reuses the connection of its last invocation when it still
    answers (:func:`totes.db.kept_connection`); after a failure it is closed, and a
    failure because the server ended the session is transient
    (:func:`totes.db.interruptions_are_transient`). A
    statement may legitimately run for minutes (a bulk COPY), so no database wait
    outlives the invocation: the connection's timeout is the deadline's remaining time.
    """
    with ExitStack() as stack:
        try:
            conn = stack.enter_context(db.kept_connection(
                settings.secret_id, timeout=deadline.remaining(), database=config.WAREHOUSE))
        except Exception:
            # Configuration, secret or network: load_into logs every failure after this point.
            logger.exception("load failed connecting to the warehouse; nothing loaded")
            raise
        with db.interruptions_are_transient("warehouse"):
            return load_into(conn, settings, deadline, now=now)


def load_into(conn: pg8000.native.Connection, settings: LoadSettings, deadline: Deadline, *,
              now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> LoadReport:
    """Create or migrate the warehouse, then load every pending manifest, oldest first.

    Stops starting new manifests when the deadline's remaining time drops under
    :data:`RESERVE_SECONDS`, so a Lambda timeout never cuts a manifest short.
    Every failure is logged once (with the manifest and object keys when there are
    some) and raised. Once the warehouse is ready, a failed run still publishes
    its partial report (freshness above all) before the error propagates; if
    freshness cannot be measured that is logged on its own, and an error from the
    load itself is the one raised.
    """
    started = time.monotonic()
    report = _prepare(conn, settings.processed_bucket)
    try:
        _load_pending(conn, settings, report, deadline)
    except Exception:
        _finish(report, settings, now(), started)
        stage.publish(report)
        raise
    freshness_error = _finish(report, settings, now(), started)
    if freshness_error is not None:
        stage.publish(report)
        raise freshness_error
    return report


def _finish(report: LoadReport, settings: LoadSettings, now: datetime,
            started: float) -> Exception | None:
    """Complete the report: its duration and freshness (or the error measuring it)."""
    report.seconds = time.monotonic() - started
    error = _measure_freshness(report, settings.ingest_bucket, now)
    report.freshness_measured = error is None
    return error


def _prepare(conn: pg8000.native.Connection, processed_bucket: str) -> LoadReport:
    """Create or migrate the warehouse, read the operator's markers and where the last load stopped.

    The markers are checked against what is loaded before anything new is.
    """
    try:
        if warehouse.ensure_schema(conn):
            logger.info("warehouse schema created or migrated")
        markers = supersede.read_markers(processed_bucket)
        check_revisions(conn, markers)
        return LoadReport(last_loaded_manifest=warehouse.last_loaded_key(conn), markers=markers)
    except Exception:
        logger.exception("load failed preparing the warehouse; nothing loaded")
        raise


def _measure_freshness(report: LoadReport, ingest_bucket: str,
                       now: datetime) -> Exception | None:
    """Set the report's freshness; return (after logging) instead of raising an error.

    Called while a load error may be propagating: raising here would replace it.
    """
    try:
        report.freshness_seconds = freshness_seconds(
            ingest_bucket, report.last_loaded_manifest, now, report.listing)
    except Exception as error:
        logger.exception("freshness could not be measured; FreshnessSeconds not published",
                         extra={"last_loaded_manifest": report.last_loaded_manifest})
        return error
    return None


def _load_pending(conn: pg8000.native.Connection, settings: LoadSettings, report: LoadReport,
                  deadline: Deadline) -> None:
    processed_bucket, markers = settings.processed_bucket, report.markers
    for key in pending_manifests(processed_bucket, settings.ingest_bucket,
                                 report.last_loaded_manifest, markers, report.listing):
        if deadline.remaining() < RESERVE_SECONDS:
            logger.warning("stopping early to finish before the timeout", extra={"next": key})
            return
        skip, processed_key = markers.skip("load", key), markers.processed_key(key)
        try:
            # A skipped manifest is not read (it may be what is broken): its stand-in is.
            manifest = (supersede.skipped_manifest(settings.ingest_bucket, skip, {})
                        if skip is not None else _read_manifest(processed_bucket, processed_key))
            loaded = load_manifest(conn, processed_bucket, key, manifest, settings.batch_rows,
                                   processed_key=processed_key)
        except Exception as error:
            db.drop_row_values(error)
            report.stuck = key if errors.kind_of(error) == errors.INPUT else None
            logger.exception("load failed", extra={
                "manifest": key, "processed_manifest": processed_key,
                "object": getattr(error, "object_key", None),
                **({"release": supersede.release_command("load", key, processed_bucket)}
                   if report.stuck else {})})
            raise
        report.last_loaded_manifest = key
        if loaded is None:
            logger.info("manifest already loaded by another run", extra={"manifest": key})
            continue
        if skip is not None:
            report.manifests_skipped.append(key)
            logger.warning("manifest skipped by an operator's marker: nothing of it loaded",
                           extra={"manifest": key, "marker": skip.key, "reason": skip.reason,
                                  "created_by": skip.created_by})
            continue
        report.manifests_loaded.append(key)
        report.rows_loaded.update(loaded.rows)
        report.inferred_members.update(loaded.inferred)
        report.versions_corrected.update(loaded.corrected)
        report.deletions_loaded.update(loaded.deletions)
        logger.info("manifest loaded", extra={
            "manifest": key, "rows": dict(loaded.rows), "inferred_members": dict(loaded.inferred),
            "versions_corrected": dict(loaded.corrected),
            "deletions_loaded": dict(loaded.deletions)})
