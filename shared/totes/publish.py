"""One scheduled publish: every processed manifest not yet in the lake, oldest first.

The lake (Apache Iceberg tables in the Glue catalog, data in the lake bucket) is
the warehouse's star schema for engines that read Iceberg (Athena, Redshift
Spectrum, Spark, Trino, Snowflake, DuckDB); see ``docs/lake.md``. Order and the
operator's decisions come from :mod:`totes.supersede`, as for the load: the
revision in force decides which processed manifest stands for an ingest run, a
load skip passes a manifest over, and a revision puts the tables back before its
manifests are published again (:func:`totes.lake.rewind`).

Each manifest is published table by table, one Iceberg commit per table it
changes, with the manifest in the snapshot summary; then its *publish record*, a
small object in the lake bucket at the processed manifest's own key, says the
manifest is done. The newest record in force is where the next run starts; a
table whose current snapshot already names a manifest is past it, so a run that
crashed half way through a manifest completes it without adding anything twice.
"""
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Iterator, Mapping, NotRequired, TypedDict

from aws_lambda_powertools.metrics import MetricUnit

from totes import config, errors, lake, stage, storage, supersede, timestamps
from totes.errors import InputError, PipelineError, TransientError
from totes.lake_schema import LAKE_TABLES
from totes.load import BATCH_ROWS, PREFETCH_OBJECTS, fetch_all, table_batches
from totes.manifest import ProcessedManifest
from totes.observability import service_logger
from totes.stage import Deadline, Metric
from totes.supersede import Markers
from totes.warehouse_schema import DELETIONS, DIMENSIONS, FACTS, Table, arrow_schema

if TYPE_CHECKING:
    import pyarrow as pa
    from pyiceberg.catalog.glue import GlueCatalog
    from pyiceberg.table import Table as IcebergTable

#: a manifest is not started with less time left than this (seconds).
RESERVE_SECONDS = 60.0

#: bytes of the temporary folder kept free beyond a manifest's objects: pyiceberg's own files
#: (each data file written, each one read, spooled to disk past 8 MB) need room beside them;
#: seven times the largest lake data file the ×40 backfill wrote (17.4 MB, docs/lake.md).
SPOOL_RESERVE_BYTES = 128 << 20

#: what a publish record says it is.
RECORD_FORMAT = "totes.published/1"

logger = service_logger()


class PublishError(PipelineError):
    """A manifest could not be published; names it. Its kind is the kind of its cause."""

    def __init__(self, message: str, manifest_key: str):
        """Keep the manifest key for logs and callers."""
        super().__init__(message)
        self.manifest_key = manifest_key


class PublishSpaceError(InputError):
    """A manifest's objects would not fit the temporary folder: raise ``EphemeralStorage``.

    Refused before the first download, so nothing of the manifest is in the lake; every
    run refuses it the same way until the function has more ``/tmp``.
    """


class LakeBehindError(InputError):
    """A lake table holds an older manifest than the newest publish record says it holds.

    Every commit numbers its metadata file one past the one it replaced, so after its
    Glue entry is pointed back at an older metadata file the table is self-consistent
    and the next commit hides the evidence (the audit's rollback check compares Glue's
    two locations only). The publish records are the evidence that stays: building on
    the older state would give record ids twice and drop versions from the history.
    """


class ProcessedGapError(InputError):
    """A processed manifest does not follow the manifest published last: one between is missing.

    Publish walks the processed manifests alone (load walks the ingest manifests and
    waits at a gap), so without this check a processed manifest deleted, not restored or
    not yet replicated was passed over, and never published once it was back: its fact
    versions lost from the lake's history, with the lake audit (which compares current
    state only) clean. A processed manifest copied in from another stack's bucket (whole,
    sealed, its files beside it) follows a run of that stack, and is refused the same way.
    """


class PublishConflictError(TransientError):
    """Another writer committed to a lake table first: the next run publishes from there."""


class PublishSummary(TypedDict):
    """The publish handler's response: :meth:`PublishReport.response`."""

    manifests_published: int
    last_published_manifest: str | None
    rows_appended: dict[str, int]
    rows_removed: dict[str, int]
    versions_corrected: dict[str, int]
    deletions_published: dict[str, int]
    #: present when a revision put tables back before its manifests were published.
    tables_rewound: NotRequired[list[str]]
    #: present when an operator's load skip made this run pass over manifests.
    manifests_skipped: NotRequired[list[str]]
    #: present when facts arrived before their dimension rows: placeholders per dimension.
    inferred_members: NotRequired[dict[str, int]]


@dataclass(frozen=True)
class PublishSettings:
    """Everything a publish run needs to know about its environment, read once at its start."""

    processed_bucket: str
    lake_bucket: str
    lake_database: str
    #: snapshots older than this are expired (forgotten, not deleted) after a publish.
    snapshot_retention: timedelta = timedelta(days=7)
    batch_rows: int = BATCH_ROWS

    @classmethod
    def from_environment(cls) -> "PublishSettings":
        """Read the settings from the Lambda environment, failing early on a missing one."""
        return cls(processed_bucket=config.processed_bucket(),
                   lake_bucket=config.lake_bucket(),
                   lake_database=config.lake_database(),
                   snapshot_retention=config.lake_snapshot_retention())


@dataclass
class PublishReport:
    """What one publish run did: the handler's response and its metrics."""

    last_published_manifest: str | None
    manifests_published: list[str] = field(default_factory=list)
    manifests_skipped: list[str] = field(default_factory=list)
    tables_rewound: list[str] = field(default_factory=list)
    snapshots_expired: int = 0
    rows_appended: Counter[str] = field(default_factory=Counter)
    rows_removed: Counter[str] = field(default_factory=Counter)
    versions_corrected: Counter[str] = field(default_factory=Counter)
    deletions_published: Counter[str] = field(default_factory=Counter)
    inferred_members: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def metrics(self) -> Iterator[Metric]:
        """Manifests published, rows appended per lake table, tables rewound, duration."""
        yield Metric("ManifestsPublished", len(self.manifests_published))
        if self.manifests_skipped:
            yield Metric("ManifestsSkipped", len(self.manifests_skipped))
        if self.tables_rewound:
            yield Metric("TablesRewound", len(self.tables_rewound))
        if self.snapshots_expired:
            yield Metric("SnapshotsExpired", self.snapshots_expired)
        yield Metric("PublishRunDuration", self.seconds, MetricUnit.Seconds)
        for table, count in self.inferred_members.items():
            yield Metric("InferredMembers", count, table=table)
        for name in LAKE_TABLES:
            yield Metric("RowsPublished", self.rows_appended[name], table=name)

    def response(self) -> PublishSummary:
        """A JSON-ready summary, every lake table listed so a zero is visible."""
        summary: PublishSummary = {
            "manifests_published": len(self.manifests_published),
            "last_published_manifest": self.last_published_manifest,
            "rows_appended": {name: self.rows_appended[name] for name in LAKE_TABLES},
            "rows_removed": {name: self.rows_removed[name] for name in LAKE_TABLES},
            "versions_corrected": {fact.name: self.versions_corrected[fact.name]
                                   for fact in FACTS},
            "deletions_published": {fact.name: self.deletions_published[fact.name]
                                    for fact in FACTS},
        }
        if self.tables_rewound:
            summary["tables_rewound"] = list(self.tables_rewound)
        if self.manifests_skipped:
            summary["manifests_skipped"] = list(self.manifests_skipped)
        if self.inferred_members:
            summary["inferred_members"] = dict(self.inferred_members)
        return summary


class Lake:
    """The lake's tables, opened (created when missing) once per run."""

    def __init__(self, catalog: "GlueCatalog", database: str,
                 uuids: Mapping[str, str] | None = None):
        """Open every lake table of ``database``.

        Each must be the table ``uuids`` names (the newest publish record's, when it
        names them), checked before anything is committed to it: not another stack's or
        database's table of the same name (:func:`totes.lake.check_own_metadata`). A
        column change that lost the race to another writer again after computing it
        afresh (:func:`totes.lake.with_new_columns`) is a conflict like a manifest's.
        """
        from pyiceberg.exceptions import CommitFailedException

        self.tables: dict[str, IcebergTable] = {}
        for name, spec in LAKE_TABLES.items():
            try:
                self.tables[name] = lake.open_table(catalog, database, spec,
                                                    (uuids or {}).get(name))
            except CommitFailedException as error:
                raise PublishConflictError(
                    f"{name}: another writer committed first, twice, while the contract's "
                    f"columns were added ({error}); the next run adds them") from error

    def expire(self, older_than: datetime) -> int:
        """Expire every table's snapshots older than ``older_than``; how many in all."""
        return sum(lake.expire_snapshots(table, older_than) for table in self.tables.values())

    def uuids(self) -> dict[str, str]:
        """Each table's Iceberg table uuid, which the publish record keeps."""
        return {name: str(table.metadata.table_uuid) for name, table in self.tables.items()}

    def manifests(self) -> dict[str, str]:
        """The newest ingest manifest each table holds rows of (tables holding none left out)."""
        held = {name: lake.last_manifest(table) for name, table in self.tables.items()}
        return {name: manifest for name, manifest in held.items() if manifest is not None}

    def check_not_behind(self, record_key: str, recorded: Mapping[str, str]) -> None:
        """Refuse a table holding an older manifest than the newest publish record in force says.

        ``recorded`` is that record's ``tables`` (the record at ``record_key``, read by
        :func:`totes.lake.newest_record`). A table past the record (a run that crashed
        before writing it), one the record does not name (newly added), a first publish
        and records written before they named their tables are not judged; after a
        revision's rewind, the record in force is the one before the revision, and the
        rewound tables hold what they held then.
        """
        for name, manifest in sorted(recorded.items()):
            table = self.tables.get(name)
            if table is None:
                continue
            held = lake.last_manifest(table)
            if held is None or held < manifest:  # a run at once may have committed since
                held = lake.last_manifest(table.refresh())
            # A snapshot naming no manifest, on history another engine expired, cannot be
            # judged; a table with no snapshot at all holds nothing.
            if held is None and table.current_snapshot() is not None:
                continue
            if (held or "") < manifest:
                raise LakeBehindError(
                    f"{name}: the lake table holds manifest {held}, but the newest "
                    f"publish record ({record_key}) says it holds {manifest}: its Glue entry "
                    "was pointed back at an older metadata file; point it at the newest one "
                    "again before publishing (docs/runbook.md, \"Publish errors\")")

    def rewind(self, markers: Markers) -> list[str]:
        """Put back every table a revision superseded; return their names."""
        return [name for name, table in self.tables.items() if lake.rewind(table, markers)]

    def commit(self, name: str, change: lake.TableChange, key: str, processed_key: str) -> int:
        """Commit one table's change for a manifest (nothing when it is empty); rows appended."""
        from pyiceberg.exceptions import CommitFailedException

        if change.empty:
            return 0
        change.properties.update({lake.MANIFEST_PROPERTY: key,
                                  lake.PROCESSED_PROPERTY: processed_key})
        try:
            with self.tables[name].transaction() as transaction:
                change.commit(transaction)
        except CommitFailedException as error:
            raise PublishConflictError(
                f"{name}: another writer committed first ({error}); the next run "
                "publishes from there") from error
        return 0 if change.appended is None else change.appended.num_rows


def _rows(bucket: str, manifest: ProcessedManifest, table: Table, batch_rows: int,
          prefetch: storage.Prefetch, deletions: bool = False) -> "pa.Table":
    """Every row a manifest lists for ``table`` (its deletion records with ``deletions``)."""
    import pyarrow as pa

    contract = DELETIONS[table.name] if deletions else table
    output = manifest.deleted(table.name) if deletions else manifest.table(table.name)
    batches = list(table_batches(bucket, output, contract, batch_rows, manifest, prefetch))
    return pa.Table.from_batches(batches, schema=arrow_schema(contract))


def publish_manifest(lake_tables: Lake, settings: PublishSettings, key: str, processed_key: str,
                     manifest: ProcessedManifest, report: PublishReport) -> None:
    """Publish one processed manifest into every lake table it changes, dimensions first.

    A table whose current snapshot already names ``key`` (or a later manifest) is
    past it: its share was committed by a run that stopped before the manifest's
    publish record.

    Every object the manifest lists is downloaded, and checked against its SHA-256,
    before the first commit (:func:`totes.load.fetch_all`, held on disk): a
    replaced object of a later table is refused with nothing of the manifest in the
    lake, not after the tables before it were committed. So the temporary folder
    must hold them all: a manifest that would not fit is refused before the first
    download (:func:`check_temporary_space`).
    """
    files = [file for table in (*DIMENSIONS, *FACTS)
             for output in (manifest.table(table.name), manifest.deleted(table.name))
             for file in output.files]
    check_temporary_space(key, sum(file.bytes for file in files))
    with storage.Prefetch.of_files(settings.processed_bucket, files, PREFETCH_OBJECTS) as prefetch:
        fetch_all(prefetch, [file.key for file in files])
        _publish_tables(lake_tables, settings, key, processed_key, manifest, report, prefetch)


def free_temporary_bytes() -> int:
    """Bytes free in the temporary folder the downloads are held in (Lambda's ``/tmp``)."""
    return shutil.disk_usage(tempfile.gettempdir()).free


def check_temporary_space(key: str, listed_bytes: int) -> None:
    """Refuse a manifest whose objects, and pyiceberg's spools beside them, would not fit.

    Without it, a manifest too large for the function's ``EphemeralStorage`` fails
    part way through its downloads with the operating system's "No space left on
    device", every run, with no word of what to change.
    """
    needed, free = listed_bytes + SPOOL_RESERVE_BYTES, free_temporary_bytes()
    if needed > free:
        raise PublishSpaceError(
            f"manifest {key}: its objects ({listed_bytes:,} bytes) and "
            f"{SPOOL_RESERVE_BYTES:,} bytes for the lake's own files need {needed:,} bytes "
            f"of {tempfile.gettempdir()}, which has {free:,} free: raise PublishFunction's "
            "EphemeralStorage in template.yaml (docs/lake.md, \"Within Lambda's limits\")")


def _publish_tables(lake_tables: Lake, settings: PublishSettings, key: str, processed_key: str,
                    manifest: ProcessedManifest, report: PublishReport,
                    prefetch: storage.Prefetch) -> None:
    """Commit each table the manifest changes, dimensions first, from what ``prefetch`` holds."""
    bucket, batch_rows = settings.processed_bucket, settings.batch_rows

    def pending(name: str) -> bool:
        done = lake.last_manifest(lake_tables.tables[name])
        return done is None or done < key

    for table in DIMENSIONS:
        if manifest.table(table.name).files and pending(table.name):
            spec = LAKE_TABLES[table.name]
            change = lake.dimension_change(lake_tables.tables[table.name], spec,
                                           _rows(bucket, manifest, table, batch_rows, prefetch))
            _count(report, table.name, change,
                   lake_tables.commit(table.name, change, key, processed_key))
    for fact in FACTS:
        if not (manifest.table(fact.name).files or manifest.deleted(fact.name).files):
            continue
        # The current state is committed before the history, so a history past the manifest
        # means the current state holds it or had nothing to commit; worked out again from
        # that history, the manifest's versions would rank against its own deletions.
        if not pending(fact.name):
            continue
        current_name = f"{fact.name}_current"
        history = lake_tables.tables[fact.name]
        rows = _rows(bucket, manifest, fact, batch_rows, prefetch)
        _infer_members(lake_tables, fact, rows, key, processed_key, report)
        facts = lake.fact_change(
            history, lake_tables.tables[current_name], LAKE_TABLES[fact.name], key, rows,
            _rows(bucket, manifest, fact, batch_rows, prefetch, deletions=True),
            _next_record_id(history))
        # The current state first: after a crash between the two, the history (untouched)
        # still gives the same change for the table not yet committed.
        if pending(current_name):
            _count(report, current_name, facts.current,
                   lake_tables.commit(current_name, facts.current, key, processed_key))
        _count(report, fact.name, facts.history,
               lake_tables.commit(fact.name, facts.history, key, processed_key))
        report.versions_corrected[fact.name] += facts.corrected
        report.deletions_published[fact.name] += facts.deletions


def _infer_members(lake_tables: Lake, fact: Table, rows: "pa.Table", key: str,
                   processed_key: str, report: PublishReport) -> None:
    """Give every dimension key ``rows`` reference a member, before the facts are committed.

    As the load does (:func:`totes.warehouse.add_inferred_members`), so the lake's
    dimensions equal the warehouse's: a fact that arrives before its dimension row
    finds a placeholder, replaced when the row arrives. ``dim_date`` needs none: the
    transform writes a date row for every date its facts use. Computed from what the
    dimension holds now, so a rerun after a crash adds nothing twice.
    """
    referenced: dict[str, set[object]] = {}
    for column in fact.data_columns:
        if column.references is not None and column.references != "dim_date":
            referenced.setdefault(column.references, set()).update(rows[column.name].to_pylist())
    for name, keys in referenced.items():
        change = lake.missing_members(lake_tables.tables[name], LAKE_TABLES[name], keys)
        appended = lake_tables.commit(name, change, key, processed_key)
        if appended:
            report.inferred_members[name] += appended
            report.rows_appended[name] += appended


def _next_record_id(history: "IcebergTable") -> int:
    value = lake.summary_value(lake.published_snapshot(history), lake.NEXT_RECORD_ID_PROPERTY)
    return 1 if value is None else int(value)


def _count(report: PublishReport, name: str, change: lake.TableChange, appended: int) -> None:
    report.rows_appended[name] += appended
    if not change.empty:
        report.rows_removed[name] += change.removed


def _record(settings: PublishSettings, key: str, processed_key: str,
            skipped_by: str | None, lake_tables: Lake) -> None:
    """Write the manifest's publish record: the manifest is in every lake table it changes.

    It names the newest manifest each table then holds, and each table's uuid, which
    the next run and the audit check the tables against (:meth:`Lake.check_not_behind`).
    """
    storage.put_new_json(settings.lake_bucket, processed_key, {
        "format": RECORD_FORMAT, "ingest_manifest": key, "processed_manifest": processed_key,
        "published_at": timestamps.now_text(), "skipped_by": skipped_by,
        "tables": lake_tables.manifests(), "table_uuids": lake_tables.uuids()})


def release_arrow_memory() -> None:
    """Give back to the system what Arrow's allocator freed, once a manifest's work is done.

    A manifest is worked on whole, table by table, and pyarrow's allocator (mimalloc or
    jemalloc) keeps the memory freed after it for reuse: measured on the ×40 backfill, a
    process still held about 1 GB after its first manifest, and the next manifest's work
    stacked on it. Released, each manifest starts from what is really in use, in this
    invocation and in the next one of a warm container.
    """
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def check_follows(processed_key: str, manifest: ProcessedManifest,
                  published: str | None) -> None:
    """Refuse a manifest that transform did not write right after ``published``, the last one.

    ``manifest.follows`` is the ingest manifest transform had committed just before it
    (under the revision then in force: after a revision, the one before its start, which
    is where the rewound lake's newest record in force is too). A manifest written before
    it was recorded (no ``revision`` either) is not judged; one that records none while
    something was published is refused too: the first run of another pipeline's chain.
    """
    if manifest.follows == published or (manifest.follows is None and (
            manifest.revision is None or published is None)):
        return
    last = ("no manifest was published before it" if published is None
            else f"the last manifest published is {published}")
    if manifest.follows is None:
        raise ProcessedGapError(
            f"{processed_key}: it follows no manifest (a chain's first), but {last}: it was "
            "copied in from another pipeline's bucket; nothing of it was published "
            "(docs/runbook.md, \"A processed manifest is missing\")")
    raise ProcessedGapError(
        f"{processed_key}: it follows {manifest.follows}, but {last}: the processed "
        f"manifest of {manifest.follows} is not in the processed bucket where it should be "
        "(deleted, not restored or not yet replicated), or "
        f"{processed_key} was copied in from another pipeline's bucket; nothing of it was "
        "published (docs/runbook.md, \"A processed manifest is missing\")")


def pending_manifests(settings: PublishSettings, markers: Markers) -> Iterator[str]:
    """Yield the ingest keys to publish, oldest first: after the newest publish record in force."""
    after = markers.newest_processed(settings.lake_bucket)
    return markers.processed_after(settings.processed_bucket, after)


def run_publish(settings: PublishSettings, deadline: Deadline,
                catalog: "GlueCatalog | None" = None) -> PublishReport:
    """Publish every pending manifest, oldest first, until the deadline's reserve.

    Every failure is logged once with the manifest it concerns and raised; the
    partial report is published first, so the metrics show what was done.
    """
    started = time.monotonic()
    try:
        markers = supersede.read_markers(settings.processed_bucket)
        newest, record = lake.newest_record(settings.lake_bucket, markers) or (None, {})
        lake_tables = Lake(catalog or lake.glue_catalog(settings.lake_bucket),
                           settings.lake_database, record.get("table_uuids"))
        report = PublishReport(last_published_manifest=newest)
        report.tables_rewound = lake_tables.rewind(markers)
        if newest is not None:
            lake_tables.check_not_behind(markers.processed_key(newest), record.get("tables", {}))
    except Exception:
        logger.exception("publish failed preparing the lake; nothing published")
        raise
    for name in report.tables_rewound:
        logger.warning("lake table put back to before a revision", extra={"table": name})
    try:
        _publish_pending(lake_tables, settings, markers, report, deadline)
        if report.manifests_published:  # a quiet run changes nothing, metadata included
            report.snapshots_expired = lake_tables.expire(
                datetime.now(timezone.utc) - settings.snapshot_retention)
    finally:
        report.seconds = time.monotonic() - started
    return report


def _publish_pending(lake_tables: Lake, settings: PublishSettings, markers: Markers,
                     report: PublishReport, deadline: Deadline) -> None:
    for key in pending_manifests(settings, markers):
        if deadline.remaining() < RESERVE_SECONDS:
            logger.warning("stopping early to finish before the timeout", extra={"next": key})
            return
        processed_key, skip = markers.processed_key(key), markers.skip("load", key)
        try:
            if skip is None:
                manifest = ProcessedManifest.read(
                    storage.read_json(settings.processed_bucket, processed_key), processed_key)
                check_follows(processed_key, manifest, report.last_published_manifest)
                publish_manifest(lake_tables, settings, key, processed_key, manifest, report)
            _record(settings, key, processed_key, None if skip is None else skip.key,
                    lake_tables)
        except Exception as error:
            logger.exception("publish failed", extra={
                "manifest": key, "processed_manifest": processed_key,
                "error_kind": errors.kind_of(error)})
            stage.publish(report)
            if isinstance(error, PipelineError):
                raise
            raise PublishError(f"manifest {key}: publishing failed: {error}", key) from error
        finally:
            release_arrow_memory()
        report.last_published_manifest = key
        if skip is not None:
            report.manifests_skipped.append(key)
            logger.warning("manifest skipped by an operator's load skip: nothing of it published",
                           extra={"manifest": key, "marker": skip.key, "reason": skip.reason})
            continue
        report.manifests_published.append(key)
        logger.info("manifest published", extra={"manifest": key})
