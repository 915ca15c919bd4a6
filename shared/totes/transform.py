"""Transform ingest runs into the Parquet star schema, one ingest manifest at a time, in order.

S3 events arrive at least once, out of order and concurrently, so an event for a
manifest first transforms every earlier ingest manifest not yet transformed. The
processed manifest has the same key as the ingest manifest and is created with
``IfNoneMatch``: it is the commit point, and its existence means "done". Data and
reference objects carry a random attempt id, so a retry after a crash never
collides with the orphans of the failed attempt (which no manifest lists).

Memory stays bounded: fact and large dimension tables are read, transformed and
written one ingest file (at most ``CHUNK_ROWS`` rows) at a time; only the four
small reference tables are held whole. Rows are written in capture order (files
in manifest order, rows in file order) and never deduplicated here: the latest
version of anything is the one captured last, which the load applies in order.

Ingest manifests are read only through :class:`totes.manifest.IngestManifest`
(every format still in the bucket) and the processed manifest is rendered by
:class:`totes.manifest.ProcessedManifest`.
"""
import io
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any, Iterable, Iterator, Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from aws_lambda_powertools.metrics import MetricUnit
from botocore.exceptions import ClientError

from totes import config, jsonl, keys, reference, stage, star, storage, supersede, timestamps
from totes.errors import InputError
from totes.manifest import (CapturePoint, DataFile, IngestManifest, ManifestError,
                            ProcessedManifest, TableOutput)
from totes.observability import service_logger, stray_object
from totes.stage import Deadline, Metric
from totes.source import SOURCE_TABLES
from totes.supersede import Markers
from totes.warehouse_schema import DELETIONS, TABLES, Table

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
_READ_CHUNK_BYTES = 1 << 20

logger = service_logger()

#: Parquet objects of one manifest written at once, while the next is built: a few bodies
#: held (each at most one ingest file's rows), their waits for S3 overlapping.
WRITES_IN_FLIGHT = 4
#: a manifest is not started with less time left than this (seconds), nor with less than
#: the largest manifest of the invocation took.
RESERVE_SECONDS = 30.0
#: per reference table, the snapshot this container wrote or read last: (bucket, key, its
#: SHA-256, its Arrow table as a read of the object returns it). Objects are created once
#: and never replaced, so a key and its hash name the same content for ever; the next
#: manifest's transform starts from exactly that snapshot, which a warm container then
#: need not fetch again. A pointer with another hash is read (and refused) from S3.
_REFERENCE_STATES: dict[str, tuple[str, str, str | None, pa.Table]] = {}

#: per processed bucket, the processed manifest this container committed (or found committed)
#: last: its ingest manifest key, its own key, its reference pointers and their SHA-256s.
#: The next invocation
#: starts from it once one listing proves it is still the newest
#: (:meth:`totes.supersede.Markers.is_newest_processed`), instead of descending the folders
#: and reading the manifest back.
_COMMITTED: dict[str, tuple[str, str, dict[str, str | None], dict[str, str]]] = {}

#: how a transform failure is logged (with the manifest it stopped at).
NOTHING_COMMITTED = "transform failed; nothing committed for this manifest"


class TransformInputError(InputError, ValueError):
    """An ingest object cannot be transformed; the message names its key and the reason."""


class BrokenChainError(TransformInputError):
    """An ingest manifest does not follow the one before it in the bucket: a person must act.

    Ingest writes every manifest after the newest one, naming it (``previous_manifest``),
    so each manifest follows the one listed before it. One that does not shows a manifest
    gone from the chain (deleted, not restored, not yet replicated) or one that is not this
    pipeline's (copied from another stack's bucket): transforming on would lose the missing
    run's rows, or load another's, without a word. The message names both keys;
    ``missing`` is the predecessor the manifest names, which the bucket does not hold there
    (None when it does, but another pipeline's manifest stands in the processed bucket:
    no skip releases that).
    """

    def __init__(self, message: str, missing: str | None):
        """Keep the predecessor named, for the command that releases the stage."""
        super().__init__(message)
        self.missing = missing


def _missing_object(bucket: str, key: str, error: ClientError,
                    named_by_manifest: bool = False) -> TransformInputError:
    """Turn "no such object" into bad input; re-raise any other S3 error as it is.

    Throttling or a 500 says nothing about the input: they are infrastructure
    errors that a retry heals. So is access denied on a key S3 would otherwise
    report missing, except for the files a manifest names (``named_by_manifest``):
    transform may not list the extracts, and S3 answers a missing object with 403
    AccessDenied, not 404, to a caller without ``s3:ListBucket`` on its key. A
    manifest naming an extract that is not there is bad input (the transform is
    stuck on it until an operator acts), not something a retry heals.
    """
    code = error.response.get("Error", {}).get("Code")
    if code in storage.MISSING_CODES:
        return TransformInputError(f"s3://{bucket}/{key} cannot be read: {code}")
    if named_by_manifest and code in storage.DENIED_CODES:
        return TransformInputError(
            f"s3://{bucket}/{key} cannot be read: {code}, which S3 answers for a missing object "
            "to a role that may not list it: the manifest names a file that is not there (or "
            "that transform's role may not read)")
    raise error


@dataclass(frozen=True)
class TransformSettings:
    """Everything a transform needs to know about its environment, read once at its start."""

    ingest_bucket: str
    processed_bucket: str

    @classmethod
    def from_environment(cls) -> "TransformSettings":
        """Read the settings from the Lambda environment, failing early on a missing one."""
        return cls(ingest_bucket=config.ingest_bucket(),
                   processed_bucket=config.processed_bucket())


@dataclass
class TransformReport:
    """What one invocation did: the handler's response and its metrics (``stage.StageReport``)."""

    transformed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    rows_in: Counter[str] = field(default_factory=Counter)
    rows_out: Counter[str] = field(default_factory=Counter)
    deletions_out: Counter[str] = field(default_factory=Counter)
    durations_ms: list[float] = field(default_factory=list)
    #: manifests committed empty because an operator's skip marker said so.
    skipped: list[str] = field(default_factory=list)
    #: the manifest whose input was rejected: nothing behind it moves until a person acts.
    stuck: str | None = None
    #: the deadline stopped the invocation before every pending manifest was done.
    stopped_early: bool = False

    def add(self, manifest: ProcessedManifest, rows_in: Counter[str], milliseconds: float) -> None:
        """Count one manifest this invocation committed (skipped ones apart)."""
        if manifest.skipped_by is not None:
            self.skipped.append(manifest.ingest_manifest)
            return
        self.transformed.append(manifest.ingest_manifest)
        self.rows_in.update(rows_in)
        self.rows_out.update({name: output.rows for name, output in manifest.tables.items()})
        self.deletions_out.update({name: out.rows for name, out in manifest.deletions.items()})
        self.durations_ms.append(milliseconds)

    def metrics(self) -> Iterator[Metric]:
        """Manifests done or skipped, a stuck one, durations, and rows in and out per table."""
        yield Metric("ManifestsTransformed", len(self.transformed))
        if self.skipped:
            yield Metric("ManifestsSkipped", len(self.skipped))
        if self.stuck is not None:
            yield Metric("TransformStuck", 1)
        for milliseconds in self.durations_ms:
            yield Metric("TransformRunDuration", milliseconds, MetricUnit.Milliseconds)
        if not self.transformed:
            return
        for table in SOURCE_TABLES:
            yield Metric("RowsIn", self.rows_in[table], table=table)
        for name in TABLES:
            yield Metric("RowsOut", self.rows_out[name], table=name)
        for name in DELETIONS:
            yield Metric("DeletionsOut", self.deletions_out[name], table=name)

    def response(self) -> dict[str, list[str]]:
        """The handler's response: manifests transformed, keys ignored, and any skipped."""
        response = {"transformed": list(self.transformed), "ignored": list(self.ignored)}
        if self.skipped:
            response["skipped"] = list(self.skipped)
        return response


@dataclass
class _TransformAttempt:
    """One attempt at transforming one ingest manifest.

    ``run_id`` names the ingest run that wrote the manifest; ``attempt_id`` is this
    attempt's own, in every object it writes, so a retry never collides with the objects
    of an attempt that crashed.
    """

    key: str
    run_id: keys.RunId
    manifest: IngestManifest
    ingest_bucket: str
    processed_bucket: str
    attempt_id: str = field(default_factory=lambda: secrets.token_hex(4))
    outputs: dict[str, list[DataFile]] = field(
        default_factory=lambda: {name: [] for name in TABLES})
    deletions: dict[str, list[DataFile]] = field(
        default_factory=lambda: {name: [] for name in DELETIONS})
    rows_in: Counter[str] = field(default_factory=Counter)
    #: the attempt's objects, written while the next is built; all exist once it is closed.
    puts: storage.BackgroundPuts = field(
        default_factory=lambda: storage.BackgroundPuts(WRITES_IN_FLIGHT))

    def files(self, table: str) -> tuple[DataFile, ...]:
        """The ingest files of ``table`` listed by the manifest (none if it is absent)."""
        return self.manifest.table(table).files

    def write(self, table_name: str, frame: pd.DataFrame) -> None:
        """Write one warehouse frame as a new Parquet object and record it for the manifest."""
        self._write(TABLES[table_name], frame, self.outputs[table_name], table_name, "parquet")

    def write_deletions(self, fact_name: str, frame: pd.DataFrame) -> None:
        """Write one fact's deletion records as a new Parquet object beside its versions."""
        self._write(DELETIONS[fact_name], frame, self.deletions[fact_name], fact_name,
                    "deleted.parquet")

    def _write(self, table: Table, frame: pd.DataFrame, listed: list[DataFile], folder: str,
               extension: str) -> None:
        if frame.empty:
            return
        key = keys.attempt_data_key(folder, self.run_id, self.attempt_id, len(listed), extension)
        body = parquet_bytes(star.to_arrow(table, frame))
        sha256 = self.puts.put(self.processed_bucket, key, body, PARQUET_CONTENT_TYPE)
        listed.append(DataFile(key, len(frame), len(body), sha256))


def parquet_bytes(table: pa.Table) -> bytes:
    """Serialise an Arrow table as one Parquet object (snappy, the pyarrow default)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _parquet_table(body: bytes) -> pa.Table:
    """One Parquet object's bytes as the Arrow table a read of it returns."""
    return pq.read_table(io.BytesIO(body))


def _frame(table: pa.Table) -> pd.DataFrame:
    """An Arrow table as a frame with Arrow-typed columns, as the transform works on them."""
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def read_parquet(bucket: str, key: str) -> pd.DataFrame:
    """Read a Parquet object back into a frame with Arrow-typed columns."""
    return _frame(_parquet_table(storage.read_bytes(bucket, key)))


def _reference_state(bucket: str, key: str, sha256: str | None, table: str) -> pd.DataFrame:
    """Read a reference snapshot as :func:`read_parquet` does, from memory when it is the last.

    With ``sha256`` (the previous processed manifest's record), another version of
    the snapshot is refused (:class:`totes.storage.ObjectChangedError`), nothing
    committed: every later manifest would start from the replaced state.
    """
    known = _REFERENCE_STATES.get(table)
    if known is None or known[:3] != (bucket, key, sha256):
        known = _REFERENCE_STATES[table] = (
            bucket, key, sha256, _parquet_table(storage.read_bytes(bucket, key, sha256)))
    return _frame(known[3])


def _decode(bucket: str, key: str, sha256: str | None = None) -> list[dict[str, Any]]:
    """Read one JSON Lines object whole; bad input raises :class:`TransformInputError`.

    With ``sha256`` (the manifest's record), an object that is not the one listed is
    refused at its end (:class:`totes.storage.ObjectChangedError`), before any commit.
    """
    rows: list[dict[str, Any]] = []
    try:
        body = storage.open_stream(bucket, key, sha256)
        try:
            for row in jsonl.decode_lines(body.iter_lines(chunk_size=_READ_CHUNK_BYTES)):
                if not isinstance(row, dict):
                    raise ValueError(f"line {len(rows) + 1} is not a JSON object")
                rows.append(row)
        except ValueError as error:
            # A replaced object is said as such, not as bad JSON: the runbook's advice for
            # bad JSON (fix or skip the manifest) would throw away the original version.
            for _ in body.iter_chunks(_READ_CHUNK_BYTES):
                pass
            raise TransformInputError(
                f"s3://{bucket}/{key} is not valid JSON Lines after {len(rows)} row(s): {error}"
            ) from None
        return rows
    except ClientError as error:
        raise _missing_object(bucket, key, error, named_by_manifest=True) from None
    except storage.ObjectChangedError as error:
        raise TransformInputError(str(error)) from error


def read_source(attempt: _TransformAttempt, table: str) -> Iterator[pd.DataFrame]:
    """Yield one typed source frame per ingest file of ``table``, checking each file whole.

    The row count must match the manifest's, so a file truncated at a line
    boundary is caught as surely as one cut mid-line.
    """
    total = 0
    for rows, key in _checked_files(attempt, attempt.files(table)):
        try:
            frame = star.source_frame(table, rows)
        except star.SourceDataError as error:
            raise TransformInputError(f"s3://{attempt.ingest_bucket}/{key}: {error}") from None
        total += len(frame)
        yield frame
    attempt.rows_in[table] += total


def _checked_files(attempt: _TransformAttempt,
                   files: Iterable[DataFile]) -> Iterator[tuple[list[dict[str, Any]], str]]:
    """Yield each file's decoded rows and key, its row count checked against the manifest's."""
    for entry in files:
        rows = _decode(attempt.ingest_bucket, entry.key, entry.sha256)
        if len(rows) != entry.rows:
            raise TransformInputError(
                f"s3://{attempt.ingest_bucket}/{entry.key} holds {len(rows)} row(s), "
                f"the manifest says {entry.rows}"
            )
        yield rows, entry.key


def read_deletions(attempt: _TransformAttempt, table: str) -> Iterator[pd.DataFrame]:
    """Yield the deletion frame of a fact source table, one per deletion file of the manifest."""
    for rows, key in _checked_files(attempt, attempt.manifest.table(table).deleted):
        try:
            yield star.deletions(table, rows)
        except star.SourceDataError as error:
            raise TransformInputError(f"s3://{attempt.ingest_bucket}/{key}: {error}") from None


def _read_whole(attempt: _TransformAttempt, table: str) -> pd.DataFrame:
    frames = [frame for frame in read_source(attempt, table) if len(frame)]
    if not frames:
        return star.empty_source_frame(table)
    return star.latest_versions(pd.concat(frames, ignore_index=True), table)


def _reference_dimensions(attempt: _TransformAttempt, pointers: dict[str, str | None],
                          hashes: Mapping[str, str]
                          ) -> tuple[dict[str, str | None], dict[str, str]]:
    """Merge the batch into the reference state, write the propagated dimensions and new state.

    Return the new pointers and their SHA-256s (``hashes`` are the old ones'). A
    manifest with no file of any reference table changes nothing here (no member
    changes, none waits for a parent it brings), so the state is not even read.
    """
    if not any(attempt.files(table) for table in reference.REFERENCE_TABLES):
        return dict(pointers), dict(hashes)
    state, changed = {}, {}
    for table in reference.REFERENCE_TABLES:
        batch = _read_whole(attempt, table)
        pointer = pointers.get(table)
        previous = (_reference_state(attempt.processed_bucket, pointer, hashes.get(table), table)
                    if pointer else star.empty_source_frame(table))
        state[table] = reference.merge_latest(previous, batch, table)
        changed[table] = reference.changed_ids(batch, table)
    propagation = reference.propagate(state, changed)
    for table_name, frame in propagation.dimensions.items():
        attempt.write(table_name, frame)
    for table_name, ids in propagation.deferred.items():
        logger.warning("rows deferred until their parent arrives",
                       extra={"table": table_name, "ids": ids, "manifest": attempt.key})
    new_pointers, new_hashes = dict(pointers), dict(hashes)
    for table in reference.REFERENCE_TABLES:
        if changed[table]:
            key = keys.reference_key(table, attempt.run_id, attempt.attempt_id)
            body = parquet_bytes(pa.Table.from_pandas(state[table], preserve_index=False))
            sha256 = attempt.puts.put(attempt.processed_bucket, key, body, PARQUET_CONTENT_TYPE)
            new_pointers[table], new_hashes[table] = key, sha256
            _REFERENCE_STATES[table] = (attempt.processed_bucket, key, sha256,
                                        _parquet_table(body))
    return new_pointers, new_hashes


def _plain_dimensions(attempt: _TransformAttempt) -> None:
    """Write the dimensions that need no join, file by file, in capture order.

    An id in several files of the batch is written from each; the load's upsert
    keeps the last (the one captured last).
    """
    for table_name, spec in star.BUILDERS.items():
        if not isinstance(spec, star.Dimension) or spec.source in reference.REFERENCE_TABLES:
            continue
        for frame in read_source(attempt, spec.source):
            latest = star.latest_versions(frame, spec.source)
            unknown = star.unknown_currency_codes(latest) if spec.source == "currency" else []
            if unknown:
                logger.warning("currency codes unknown to ISO 4217 keep the code as name",
                               extra={"codes": unknown})
            attempt.write(table_name, spec.build(latest))


def _facts(attempt: _TransformAttempt) -> None:
    """Write every fact version and every fact deletion file by file, then their ``dim_date``.

    Versions are written as captured, repeats included: the load corrects a
    version whose values changed and ignores an identical re-read. Deletions of
    the other source tables are counted in the log and not carried: a dimension
    member whose source row was deleted stays, since facts still point at it.
    """
    dates: set[date] = set()
    for fact_name, spec in star.BUILDERS.items():
        if not isinstance(spec, star.Fact):
            continue
        table = spec.source
        for frame in read_source(attempt, table):
            fact = spec.build(frame)
            dates |= star.fact_dates(fact_name, fact)
            attempt.write(fact_name, fact)
        for deleted in read_deletions(attempt, table):
            dates |= star.fact_dates(DELETIONS[fact_name], deleted)
            attempt.write_deletions(fact_name, deleted)
    ignored = {table: attempt.manifest.table(table).deleted_rows for table in SOURCE_TABLES
               if table not in star.FACT_TABLES and attempt.manifest.table(table).deleted_rows}
    if ignored:
        logger.info("deletions of dimension sources not carried; their members stay",
                    extra={"manifest": attempt.key, "deleted_rows": ignored})
    for table_name, spec in star.BUILDERS.items():
        if isinstance(spec, star.DateDimension):
            attempt.write(table_name, spec.build(dates))


def _read_ingest_manifest(bucket: str, key: str) -> IngestManifest:
    try:
        document = storage.read_json(bucket, key)
    except ClientError as error:
        raise _missing_object(bucket, key, error) from None
    except ValueError as error:  # a DamagedObjectError, or too large: each names the object
        raise TransformInputError(str(error)) from None
    try:
        return IngestManifest.read(document, key)
    except ManifestError as error:
        raise TransformInputError(f"s3://{bucket}/{key}: {error}") from None


def check_follows(settings: TransformSettings, ingest_key: str, manifest: IngestManifest,
                  previous: str | None, markers: Markers = Markers()) -> None:
    """Refuse ``manifest`` at ``ingest_key`` unless it follows ``previous``, the one before it.

    ``previous`` is the ingest manifest transformed last (None before the first): the
    key listed just before ``ingest_key``. A manifest naming no predecessor is taken as it
    stands (the first ingest run's, or one written by hand before the chain was checked).
    A predecessor an operator skipped for transform (``totes supersede skip``: it is gone
    for good), at any revision, is passed over, with a warning: manifests lost before it
    too cannot be seen. So is one before ``previous`` that the ingestion bucket still
    holds and that was transformed: the bucket lost manifests transform had already taken
    (a restore to an earlier point), and ingest captured again from there (a warning says
    so). One never transformed means ``previous`` is not this chain's (a processed
    manifest copied in from another pipeline). Otherwise a :class:`BrokenChainError`.
    """
    named = manifest.previous_manifest
    if named is None or named == previous:
        return
    if markers.skipped_at_any_revision("transform", named):
        logger.warning("passing over a manifest an operator skipped for transform: any other "
                       "manifest lost before it cannot be seen from here (docs/runbook.md, "
                       "\"An ingest manifest is missing from the chain\")", extra={
                           "manifest": ingest_key, "skipped": named, "transformed_last": previous})
        return
    if previous is not None and named < previous and _listed(settings.ingest_bucket, named):
        if not _listed(settings.processed_bucket, markers.processed_key(named)):
            raise BrokenChainError(
                f"{ingest_key}: its previous manifest {named} was never transformed, but "
                f"{previous}, later, was: the processed bucket holds a manifest that is not "
                "this chain's (copied from another pipeline's bucket?); nothing was committed "
                "(docs/runbook.md, \"An ingest manifest is missing from the chain\")", None)
        logger.warning("ingest captured again from an earlier manifest: the ingestion bucket "
                       "no longer holds manifests transformed after it; their rows are read "
                       "again", extra={"manifest": ingest_key, "previous_manifest": named,
                                       "transformed_last": previous})
        return
    where = (f"the manifest transformed last is {previous}" if previous is not None
             else "no manifest was transformed before it")
    raise BrokenChainError(
        f"{ingest_key}: its previous manifest {named} is not in the bucket where it should be "
        f"({where}): a manifest deleted or not restored, or one copied from another "
        "pipeline's bucket; nothing was committed (docs/runbook.md, \"An ingest manifest is "
        "missing from the chain\")", named)


def _listed(bucket: str, key: str) -> bool:
    """Whether ``bucket`` holds ``key`` (one listing of it as a prefix: no GET, no HEAD)."""
    return next(storage.list_keys(bucket, key), None) == key


def transform_manifest(settings: TransformSettings, ingest_key: str,
                       pointers: dict[str, str | None],
                       report: TransformReport | None = None,
                       markers: Markers = Markers(),
                       reference_sha256: Mapping[str, str] | None = None, *,
                       follows: tuple[str | None] | None = None) -> ProcessedManifest:
    """Transform one ingest manifest and commit its processed manifest; return that manifest.

    ``pointers`` are the reference snapshots of the previous processed manifest,
    ``reference_sha256`` their SHA-256s as it records them (each snapshot is checked).
    The processed manifest goes where ``markers`` say the revision in force puts
    it; an operator's skip makes it an empty one. ``follows`` holds the manifest transformed
    last (None before the first), which the ingest manifest must follow
    (:func:`check_follows`); without it the chain is not checked. If another invocation committed
    this manifest first, its manifest is returned and this attempt's objects stay
    unlisted orphans; otherwise the manifest is counted in ``report``.
    """
    started = time.monotonic()
    run_id = keys.parse_manifest_key(ingest_key)
    if run_id is None:  # the callers pass manifest keys only
        raise ValueError(f"{ingest_key} is not an ingest manifest key")
    skip = markers.skip("transform", ingest_key)
    hashes = dict(reference_sha256 or {})
    processed, rows_in = (
        (supersede.skipped_manifest(settings.ingest_bucket, skip, {
            table: pointers.get(table) for table in reference.REFERENCE_TABLES}, hashes),
         Counter[str]())
        if skip is not None else _transformed(settings, ingest_key, run_id, pointers, hashes,
                                              markers, follows))
    target = markers.processed_key(ingest_key)
    # What it follows is recorded only where it was checked (``follows``): publish, which
    # walks the processed manifests alone, refuses one that does not follow the one before.
    processed = replace(processed, revision=markers.revision_for(ingest_key),
                        follows=None if follows is None else follows[0])
    try:
        storage.put_new_json(settings.processed_bucket, target, processed.to_json())
    except storage.ObjectAlreadyExistsError:
        logger.info("manifest already transformed by another invocation",
                    extra={"manifest": ingest_key, "processed_manifest": target})
        return _read_processed(settings, target)
    if report is not None:
        report.add(processed, rows_in, (time.monotonic() - started) * 1000)
    if skip is not None:
        logger.warning("manifest skipped by an operator's marker: its data is not transformed",
                       extra={"manifest": ingest_key, "marker": skip.key, "reason": skip.reason,
                              "created_by": skip.created_by})
        return processed
    logger.info("manifest transformed", extra={
        "manifest": ingest_key, "processed_manifest": target,
        "rows": {name: output.rows for name, output in processed.tables.items()},
        "deletions": {name: output.rows for name, output in processed.deletions.items()},
    })
    return processed


def _transformed(settings: TransformSettings, ingest_key: str, run_id: keys.RunId,
                 pointers: dict[str, str | None], hashes: Mapping[str, str], markers: Markers,
                 follows: tuple[str | None] | None) -> tuple[ProcessedManifest, Counter[str]]:
    """Read the ingest run and write its Parquet objects; return its manifest and rows read.

    With ``follows``, the run must follow the manifest it holds (:func:`check_follows`).
    """
    ingest = _read_ingest_manifest(settings.ingest_bucket, ingest_key)
    if follows is not None:
        check_follows(settings, ingest_key, ingest, follows[0], markers)
    attempt = _TransformAttempt(key=ingest_key, run_id=run_id, manifest=ingest,
                                ingest_bucket=settings.ingest_bucket,
                                processed_bucket=settings.processed_bucket)
    try:
        capture = CapturePoint.of(ingest)
    except ValueError as error:
        raise TransformInputError(f"s3://{attempt.ingest_bucket}/{ingest_key}: database_time "
                                  f"{ingest.database_time!r} is not a time: {error}") from None
    try:
        new_pointers, new_hashes = _reference_dimensions(attempt, pointers, hashes)
        _plain_dimensions(attempt)
        _facts(attempt)
        attempt.puts.close()  # every object the processed manifest lists exists
    except (star.SourceDataError, pa.ArrowInvalid) as error:
        raise TransformInputError(
            f"s3://{attempt.ingest_bucket}/{ingest_key} (a file it lists): {error}") from None
    finally:
        attempt.puts.close(quietly=True)
    return ProcessedManifest(
        run_id=str(attempt.run_id),
        ingest_manifest=ingest_key,
        ingest_started_at=ingest.started_at,
        transformed_at=timestamps.now_text(),
        tables={name: TableOutput(tuple(files)) for name, files in attempt.outputs.items()},
        reference={table: new_pointers.get(table) for table in reference.REFERENCE_TABLES},
        reference_sha256={table: new_hashes[table] for table in reference.REFERENCE_TABLES
                          if new_pointers.get(table) and table in new_hashes},
        deletions={name: TableOutput(tuple(files)) for name, files in attempt.deletions.items()},
        capture=capture,
    ), attempt.rows_in


def _pending(ingest_bucket: str, latest: str | None, through: str) -> Iterator[str]:
    for key in storage.manifest_keys_after(ingest_bucket, latest):
        if key > through:
            return
        if keys.parse_manifest_key(key):
            yield key


def time_for_another(deadline: Deadline, report: TransformReport) -> bool:
    """Tell whether another manifest can start: enough time left for the largest one so far.

    The largest manifest this invocation transformed is the best estimate of the next
    one (a backlog is a run of similar manifests); :data:`RESERVE_SECONDS` is the floor
    before any has been timed. Stopping early leaves the rest to the next event,
    never to a timeout that would kill an invocation mid-manifest.
    """
    largest = max(report.durations_ms, default=0.0) / 1000
    return deadline.remaining() >= max(RESERVE_SECONDS, largest)


def _read_processed(settings: TransformSettings, key: str) -> ProcessedManifest:
    """The processed manifest at ``key``, checked against its key like every reader's."""
    return ProcessedManifest.read(storage.read_json(settings.processed_bucket, key), key)


def _newest_processed(settings: TransformSettings, markers: Markers
                      ) -> tuple[str | None, dict[str, str | None], dict[str, str]]:
    """The newest transformed ingest manifest, its reference pointers and their SHA-256s.

    None and none before any.

    A warm container that committed the newest itself knows both, once one listing
    proves no other invocation committed since; otherwise they are looked up and read.
    """
    known = _COMMITTED.get(settings.processed_bucket)
    if known is not None and markers.is_newest_processed(settings.processed_bucket, *known[:2]):
        return known[0], dict(known[2]), dict(known[3])
    latest = markers.newest_processed(settings.processed_bucket)
    if latest is None:
        return None, dict.fromkeys(reference.REFERENCE_TABLES), {}
    newest = _read_processed(settings, markers.processed_key(latest))
    return latest, dict(newest.reference), dict(newest.reference_sha256)


def transform_through(settings: TransformSettings, ingest_key: str, report: TransformReport,
                      deadline: Deadline = Deadline.unbounded()) -> list[str]:
    """Transform every ingest manifest not yet transformed, oldest first, up to ``ingest_key``.

    Returns the manifest keys this call transformed (empty when ``ingest_key`` was
    already done: a duplicate or late event), each also counted in ``report``. When
    the deadline leaves too little time for another manifest it stops; the next
    event (ingest writes one every run) continues from there.
    Any failure is logged once, naming the manifest it stopped at, and re-raised:
    bad input as ``ingest input rejected``, anything else (S3) as ``transform failed``.
    """
    done: list[str] = []
    current = ingest_key
    try:
        markers = supersede.read_markers(settings.processed_bucket)
        latest, pointers, hashes = _newest_processed(settings, markers)
        if latest is not None and latest >= ingest_key:
            logger.info("already transformed", extra={"manifest": ingest_key, "latest": latest})
            return []
        previous = latest
        for key in _pending(settings.ingest_bucket, latest, ingest_key):
            if not time_for_another(deadline, report):
                logger.warning("stopping before the timeout; the next event continues", extra={
                    "next": key, "seconds_left": round(deadline.remaining(), 1),
                    "largest_manifest_ms": max(report.durations_ms, default=0.0)})
                report.stopped_early = True
                return done
            current = key
            processed = transform_manifest(settings, key, pointers, report, markers, hashes,
                                           follows=(previous,))
            previous = key
            pointers, hashes = dict(processed.reference), dict(processed.reference_sha256)
            _COMMITTED[settings.processed_bucket] = (key, markers.processed_key(key),
                                                     dict(pointers), dict(hashes))
            done.append(key)
            current = ingest_key  # a failure to list the next one leaves the event's undone
        return done
    except TransformInputError as error:
        report.stuck = current
        # A broken chain is released (once the runbook's checks are done) by skipping the
        # manifest that is missing, never the one that names it.
        release = current if not isinstance(error, BrokenChainError) else error.missing
        logger.exception("ingest input rejected; nothing committed for this manifest", extra={
            "manifest": current, "error": str(error),
            "release": "none: see the runbook" if release is None else
            supersede.release_command("transform", release, settings.processed_bucket)})
        raise
    except Exception:
        logger.exception(NOTHING_COMMITTED, extra={"manifest": current, "transformed": done})
        raise


def run_transform(settings: TransformSettings, object_keys: Iterable[str],
                  deadline: Deadline) -> TransformReport:
    """Handle the (decoded) keys of an S3 event: transform manifests, acknowledge the rest.

    A failure after some manifests were committed publishes the partial report
    before it propagates, so their metrics are not lost with the invocation.
    """
    report = TransformReport()
    try:
        for key in object_keys:
            if keys.parse_manifest_key(key) is None:
                if key.startswith(keys.MANIFEST_PREFIX):
                    stray_object(settings.ingest_bucket, key)
                logger.info("not an ingest manifest; ignored", extra={"key": key})
                report.ignored.append(key)
                continue
            if report.stopped_early:
                continue  # the next event continues: it transforms everything pending
            transform_through(settings, key, report, deadline)
    except Exception:
        stage.publish(report)
        raise
    return report
