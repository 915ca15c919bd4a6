"""The manifests the stages hand to each other: one owner, typed records, both directions.

A manifest is a stage's commit point: its files exist only for readers once it
does. Every format string lives here, and each record parses a manifest document
(``parse``) and renders one (``to_json``), so no other module reads or builds a
manifest as a plain dict. Formats carry a version; a reader accepts every
version still in a bucket (``totes.ingest/1`` manifests, written before capture
by transaction visibility, are continued from and transformed as they are).
See docs/architecture.md for examples of each.
"""
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, TypeVar

from totes import keys, timestamps
from totes.capture import Snapshot, SnapshotFormatError, SourceIdentity, TableCursor
from totes.errors import InputError
from totes.pgoutput import parse_lsn
from totes.source import DEFINITION_DIGITS, SOURCE_TABLES

#: ingest manifests written before capture by snapshot (a ``last_updated`` watermark).
INGEST_FORMAT_V1 = "totes.ingest/1"
#: ingest manifests with a snapshot cursor, deletes and stamps in the future.
INGEST_FORMAT = "totes.ingest/2"


_Parsed = TypeVar("_Parsed")

#: a SHA-256 in base64, as S3 and :func:`totes.storage.checksum` write it.
_SHA256 = re.compile(r"[A-Za-z0-9+/]{43}=")


class ManifestError(InputError, ValueError):
    """A manifest is not one of the formats this code reads: bad input, a person must act."""


@dataclass(frozen=True)
class DataFile:
    """One data object a manifest lists: its key, rows, bytes and SHA-256 (checked by readers).

    ``sha256`` is the checksum the object was created with (base64, as S3 gives it:
    :func:`totes.storage.checksum`); readers refuse an object whose bytes do not have
    it. None for objects listed before it was recorded, which are read unchecked.
    """

    key: str
    rows: int
    bytes: int
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the manifest's description of the file (``sha256`` only when known)."""
        entry: dict[str, Any] = {"key": self.key, "rows": self.rows, "bytes": self.bytes}
        if self.sha256 is not None:
            entry["sha256"] = self.sha256
        return entry

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "DataFile":
        """Read a file entry; ``bytes`` and ``sha256`` are optional (older manifests lack them)."""
        return cls(str(fields["key"]), int(fields["rows"]), int(fields.get("bytes", 0)),
                   _sha256(fields, "sha256", fields["key"]))


def _sha256(fields: Mapping[str, Any], name: str, of: Any) -> str | None:
    """The optional SHA-256 field ``name`` of the object ``of`` (None in older manifests)."""
    sha256 = fields.get(name)
    if sha256 is not None and not _SHA256.fullmatch(str(sha256)):
        raise ValueError(f"sha256 of {of!r} is not a base64 SHA-256: {sha256!r}")
    return None if sha256 is None else str(sha256)


def _reference_sha256(hashes: Mapping[str, Any]) -> dict[str, str]:
    """A processed manifest's ``reference_sha256`` (empty before it was recorded), checked."""
    return {str(table): str(_sha256(hashes, table, f"the reference snapshot of {table}"))
            for table in hashes if hashes[table] is not None}


def _named(parse: Callable[[Any], _Parsed], document: Any, key: str) -> _Parsed:
    """``parse(document)``, its :class:`ManifestError` naming ``key``, the object it came from."""
    try:
        return parse(document)
    except ManifestError as error:
        raise ManifestError(f"{key}: {error}") from None


def _files(entries: Any) -> tuple[DataFile, ...]:
    return tuple(DataFile.from_json(entry) for entry in entries or ())


@dataclass(frozen=True)
class SweepState:
    """The last key sweep of a table: every primary key present at one snapshot.

    ``key`` is the object holding those keys (ascending blocks, gzip) in the
    ingestion bucket; ``swept_at`` the database's clock at that snapshot, which
    is also the time a deletion it found is stamped with. ``sha256`` is the key
    list's checksum (:func:`totes.storage.checksum`): the next sweep and the audit
    refuse another version, which would hide a source delete for ever. None in
    manifests written before it was recorded (read unchecked).
    """

    key: str
    keys: int
    run_id: str
    swept_at: datetime
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Return the manifest fields of the sweep (``sha256`` only when known)."""
        fields: dict[str, Any] = {"key": self.key, "keys": self.keys, "run_id": self.run_id,
                                  "swept_at": timestamps.database_text(self.swept_at)}
        if self.sha256 is not None:
            fields["sha256"] = self.sha256
        return fields

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "SweepState":
        """Rebuild the sweep from its manifest fields."""
        return cls(str(fields["key"]), int(fields["keys"]), str(fields["run_id"]),
                   timestamps.parse_database_time(fields["swept_at"]),
                   _sha256(fields, "sha256", fields["key"]))


@dataclass(frozen=True)
class TableEntry:
    """What one run wrote for one table, and the state the next run continues from."""

    files: tuple[DataFile, ...] = ()
    cursor: TableCursor = field(default_factory=TableCursor)
    #: the row budget stopped the run before this table's end (or before the table).
    truncated: bool = False
    #: rows written whose ``last_updated`` was ahead of the database's clock.
    stamped_in_future: int = 0
    #: deletion records (``{<key>: id, "deleted_at": ...}``) found by this run's sweep.
    deleted: tuple[DataFile, ...] = ()
    #: the newest sweep of the table (carried forward by runs that do not sweep).
    sweep: SweepState | None = None
    #: the object listing the keys this run captured, for the next sweep (None: no rows,
    #: or the table was swept in this run).
    captured_keys: str | None = None
    #: the SHA-256 of ``captured_keys`` (checked by the sweep and the audit that read it);
    #: None in manifests written before it was recorded, and without ``captured_keys``.
    captured_keys_sha256: str | None = None

    @property
    def rows(self) -> int:
        """Row versions written for the table in this run."""
        return sum(file.rows for file in self.files)

    @property
    def bytes(self) -> int:
        """Bytes of row versions written for the table in this run."""
        return sum(file.bytes for file in self.files)

    @property
    def deleted_rows(self) -> int:
        """Deleted rows the run's sweep found."""
        return sum(file.rows for file in self.deleted)

    def to_json(self) -> dict[str, Any]:
        """Return the table's manifest entry."""
        return {
            "rows": self.rows, "files": [file.to_json() for file in self.files],
            "truncated": self.truncated, "stamped_in_future": self.stamped_in_future,
            "deleted_rows": self.deleted_rows,
            "deleted_files": [file.to_json() for file in self.deleted],
            "cursor": self.cursor.to_json(),
            "sweep": None if self.sweep is None else self.sweep.to_json(),
            "captured_keys": self.captured_keys,
            **({"captured_keys_sha256": self.captured_keys_sha256}
               if self.captured_keys is not None and self.captured_keys_sha256 is not None
               else {}),
        }

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "TableEntry":
        """Read a ``totes.ingest/2`` table entry."""
        sweep = fields.get("sweep")
        return cls(
            files=_files(fields.get("files")),
            cursor=TableCursor.from_json(fields.get("cursor") or {}),
            truncated=bool(fields.get("truncated", False)),
            stamped_in_future=int(fields.get("stamped_in_future", 0)),
            deleted=_files(fields.get("deleted_files")),
            sweep=None if sweep is None else SweepState.from_json(sweep),
            captured_keys=fields.get("captured_keys"),
            captured_keys_sha256=(None if fields.get("captured_keys") is None else _sha256(
                fields, "captured_keys_sha256", fields["captured_keys"])),
        )

    @classmethod
    def from_v1(cls, fields: Mapping[str, Any], overlap: timedelta) -> "TableEntry":
        """Read a ``totes.ingest/1`` entry: its watermark becomes a one-off bridge cursor.

        The next run reads what the watermark rule would have read next
        (``last_updated >= watermark - overlap``) and records a snapshot, from
        which every later run captures by visibility.
        """
        watermark = fields.get("watermark")
        since = (None if watermark is None
                 else timestamps.parse_database_time(watermark) - overlap)
        return cls(files=_files(fields.get("files")),
                   cursor=TableCursor(since_last_updated=since),
                   truncated=bool(fields.get("truncated", False)))


@dataclass(frozen=True)
class LogicalPosition:
    """Where log-based capture stands in the replication slot after a committed run.

    ``lsn`` is the end of the last transaction whose changes are all written: the
    slot is advanced to it once the manifest exists, and decoding resumes at the
    first transaction committed after it. While the row budget has cut a
    transaction short, ``partial_commit_lsn`` names it (its commit record's LSN)
    and ``partial_changes`` says how many of its changes are written, so the next
    run skips exactly those. ``backfilled`` turns true once a snapshot-mode pass
    that began after the slot existed has completed: only then is the slot read.
    ``publication_oid`` is the publication the slot decodes (one dropped and made
    again has a new oid, and the slot must be made again); ``resync`` names the
    tables whose re-read by snapshot (after a lost slot or a drifted publication)
    has not completed yet.
    """

    slot: str
    publication: str
    lsn: str
    partial_commit_lsn: str | None = None
    partial_changes: int = 0
    backfilled: bool = False
    publication_oid: int | None = None
    resync: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Return the manifest's ``logical`` object."""
        return {"slot": self.slot, "publication": self.publication, "lsn": self.lsn,
                "partial_commit_lsn": self.partial_commit_lsn,
                "partial_changes": self.partial_changes, "backfilled": self.backfilled,
                "publication_oid": self.publication_oid, "resync": list(self.resync)}

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "LogicalPosition":
        """Rebuild the position, checking both LSNs parse and ``resync`` names our tables."""
        partial = fields.get("partial_commit_lsn")
        oid = fields.get("publication_oid")
        resync = tuple(str(table) for table in fields.get("resync") or ())
        position = cls(str(fields["slot"]), str(fields["publication"]), str(fields["lsn"]),
                       None if partial is None else str(partial),
                       int(fields.get("partial_changes", 0)), bool(fields.get("backfilled")),
                       None if oid is None else int(oid), resync)
        parse_lsn(position.lsn)
        if position.partial_commit_lsn is not None:
            parse_lsn(position.partial_commit_lsn)
        unknown = [table for table in resync if table not in SOURCE_TABLES]
        if unknown:
            raise ValueError(f"resync names tables outside the contract: {unknown[:3]}")
        return position


@dataclass(frozen=True)
class IngestManifest:
    """One committed ingest run: its files per table and the capture state it reached."""

    run_id: str
    started_at: str
    finished_at: str
    previous_manifest: str | None
    tables: Mapping[str, TableEntry]
    complete: bool = True
    #: the snapshot the run read in (None in ``totes.ingest/1`` manifests).
    snapshot: Snapshot | None = None
    #: the database's clock (UTC) when the snapshot was taken.
    database_time: str | None = None
    format: str = INGEST_FORMAT
    #: log-based capture's position in the slot (None in snapshot mode and older manifests).
    logical: LogicalPosition | None = None
    #: the cluster and timeline the run read (None in older manifests); with the snapshot's
    #: ``xmax``, how the next run knows the source was restored or failed over.
    source: SourceIdentity | None = None
    #: why this run read every row again and swept every table (None: it did not).
    resync: str | None = None
    #: snapshot capture: the database time since which the snapshot's floor (its ``xmin``) is
    #: known to be held, carried forward while every run finds the same transaction holding
    #: it (:func:`totes.snapshot_capture.floor_held_since`); None when nothing held it, or not
    #: recorded.
    floor_held_since: datetime | None = None
    #: table -> the fingerprint of its used columns' catalog rows as the run's snapshot read
    #: them (:func:`totes.source.definitions`), which the next run compares to find tables
    #: redefined since; None in manifests written before it was recorded.
    definitions: Mapping[str, str] | None = None

    def table(self, name: str) -> TableEntry:
        """Return the entry of ``name`` (an empty one if the manifest does not list it)."""
        return self.tables.get(name) or TableEntry()

    def with_tables(self, tables: Mapping[str, TableEntry]) -> "IngestManifest":
        """Return a copy listing ``tables`` instead."""
        return replace(self, tables=dict(tables))

    def to_json(self) -> dict[str, Any]:
        """Render the manifest (always in the current format; ``logical`` only when set)."""
        document: dict[str, Any] = {
            "format": INGEST_FORMAT,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "previous_manifest": self.previous_manifest,
            "snapshot": None if self.snapshot is None else str(self.snapshot),
            "database_time": self.database_time,
            "complete": self.complete,
            "tables": {name: entry.to_json() for name, entry in self.tables.items()},
        }
        if self.logical is not None:
            document["logical"] = self.logical.to_json()
        if self.source is not None:
            document["source"] = self.source.to_json()
        if self.resync is not None:
            document["resync"] = self.resync
        if self.floor_held_since is not None:
            document["floor_held_since"] = timestamps.database_text(self.floor_held_since)
        if self.definitions is not None:
            document["definitions"] = dict(self.definitions)
        return document

    @classmethod
    def parse(cls, document: Any) -> "IngestManifest":
        """Read an ingest manifest of any supported format, or raise :class:`ManifestError`."""
        if not isinstance(document, Mapping) or not isinstance(document.get("tables"), Mapping):
            raise ManifestError("not an ingest manifest (no tables)")
        kind = document.get("format")
        if kind not in (INGEST_FORMAT, INGEST_FORMAT_V1):
            raise ManifestError(f"ingest manifest format {kind!r} is not one this code reads "
                                f"({INGEST_FORMAT}, {INGEST_FORMAT_V1})")
        unknown = sorted(set(document["tables"]) - set(SOURCE_TABLES))
        if unknown:
            raise ManifestError(f"ingest manifest lists unknown table(s): {', '.join(unknown)}")
        try:
            return cls._parse(document, kind)
        except (KeyError, TypeError, ValueError, SnapshotFormatError) as error:
            raise ManifestError(
                f"malformed {kind} manifest: {type(error).__name__}: {error}") from None

    @classmethod
    def read(cls, document: Any, key: str) -> "IngestManifest":
        """Read the ingest manifest stored at ``key``: :meth:`parse`, then its references.

        What every reader of a bucket calls: a manifest found at ``key`` is only
        trusted as far as :meth:`check_references` allows. A malformed one's error
        names ``key``.
        """
        manifest = _named(cls.parse, document, key)
        manifest.check_references(key)
        return manifest

    def check_references(self, key: str) -> None:
        """Refuse a manifest at ``key`` that names any object outside its own place in time.

        Readers follow what a manifest names (the previous manifest, data files,
        key sweeps, captured keys), so each must be a key of its layout, of the
        table it is listed under, and written no later than the manifest: data,
        deletions and captured keys by this run, a sweep by this run or an earlier
        one, the previous manifest strictly before this one. So a forged or stray
        manifest cannot send a reader round a cycle, into another prefix or into
        an object written later. A breach is a :class:`ManifestError` naming both.
        """
        run = keys.parse_manifest_key(key)
        if run is None or str(run) != self.run_id:
            raise ManifestError(f"{key}: run_id {self.run_id!r} is not the run its key names")
        previous = self.previous_manifest
        if previous is not None and not (isinstance(previous, str)
                                         and keys.is_manifest_key(previous) and previous < key):
            raise ManifestError(f"{key}: previous_manifest {previous!r} is not a manifest key "
                                "before this one")
        for table, entry in self.tables.items():
            named = [(file.key, keys.parse_data_key(file.key)) for file in entry.files]
            named += [(file.key, keys.parse_data_key(file.key, deleted=True))
                      for file in entry.deleted]
            if entry.captured_keys is not None:
                named.append((entry.captured_keys,
                              keys.parse_sweep_key(str(entry.captured_keys), captured=True)))
            for reference, found in named:
                if found != (table, run):
                    raise ManifestError(f"{key}: {table} names {reference!r}, which is not a key "
                                        f"of {table} written by this run")
            swept = None if entry.sweep is None else keys.parse_sweep_key(entry.sweep.key)
            if entry.sweep is not None and (swept is None or swept[0] != table or str(
                    swept[1]) != entry.sweep.run_id or swept[1] > run):
                raise ManifestError(f"{key}: the key sweep of {table}, {entry.sweep.key!r}, is not "
                                    f"one of {table} by run {entry.sweep.run_id} at or before "
                                    "this one")

    @classmethod
    def _parse(cls, document: Mapping[str, Any], kind: str) -> "IngestManifest":
        if kind == INGEST_FORMAT_V1:
            overlap = timedelta(minutes=int(document.get("overlap_minutes", 0)))
            tables = {name: TableEntry.from_v1(fields, overlap)
                      for name, fields in document["tables"].items()}
        else:
            tables = {name: TableEntry.from_json(fields)
                      for name, fields in document["tables"].items()}
        snapshot, logical = document.get("snapshot"), document.get("logical")
        source, resync = document.get("source"), document.get("resync")
        held, definitions = document.get("floor_held_since"), document.get("definitions")
        return cls(
            run_id=str(document["run_id"]),
            started_at=str(document["started_at"]),
            finished_at=str(document.get("finished_at", document["started_at"])),
            previous_manifest=document.get("previous_manifest"),
            tables=tables,
            complete=bool(document.get("complete", True)),
            snapshot=None if snapshot is None else Snapshot.parse(snapshot),
            database_time=document.get("database_time"),
            format=kind,
            logical=None if logical is None else LogicalPosition.from_json(logical),
            source=None if source is None else SourceIdentity.from_json(source),
            resync=None if resync is None else str(resync),
            floor_held_since=None if held is None else timestamps.parse_database_time(str(held)),
            definitions=None if definitions is None else _definitions(definitions),
        )


def _definitions(fingerprints: Any) -> dict[str, str]:
    """An ingest manifest's ``definitions``, checked: our tables, each a fingerprint in hex."""
    if not isinstance(fingerprints, Mapping):
        raise ValueError(f"definitions must be an object, not {fingerprints!r}")
    unknown = [table for table in fingerprints if table not in SOURCE_TABLES]
    if unknown:
        raise ValueError(f"definitions name tables outside the contract: {unknown[:3]}")
    checked = {str(table): str(fingerprint) for table, fingerprint in fingerprints.items()}
    malformed = [table for table, fingerprint in checked.items()
                 if not re.fullmatch(f"[0-9a-f]{{{DEFINITION_DIGITS}}}", fingerprint)]
    if malformed:
        raise ValueError(f"definitions of {malformed[:3]} are not fingerprints")
    return checked


# --- processed manifests: the transform's commit point, the load's input -------------------

#: processed manifests written before deletions and the capture point were carried.
PROCESSED_FORMAT_V1 = "totes.processed/1"
#: processed manifests with ``deletions`` per fact and the ingest run's ``capture`` point.
PROCESSED_FORMAT = "totes.processed/2"


@dataclass(frozen=True)
class TableOutput:
    """The Parquet objects a transform wrote for one warehouse table (or its deletions)."""

    files: tuple[DataFile, ...] = ()

    @property
    def rows(self) -> int:
        """Rows in all the table's objects."""
        return sum(file.rows for file in self.files)

    def to_json(self) -> dict[str, Any]:
        """Return the manifest entry: ``{"rows", "files"}``."""
        return {"rows": self.rows, "files": [file.to_json() for file in self.files]}

    @classmethod
    def from_json(cls, fields: Mapping[str, Any]) -> "TableOutput":
        """Read a table entry; its ``rows`` must be the sum of its files' rows."""
        output = cls(_files(fields["files"]))
        if "rows" in fields and int(fields["rows"]) != output.rows:
            raise ValueError(f"rows {fields['rows']} is not the sum of its files' {output.rows}")
        return output


@dataclass(frozen=True)
class CapturePoint:
    """Where the ingest run that a processed manifest came from stood in the source.

    ``snapshot`` is the run's ``pg_snapshot`` text and ``database_time`` the
    database's clock (UTC) when it was taken; both are None for runs written
    before capture by snapshot (``totes.ingest/1``). The load records them with
    the manifest, so the warehouse can say which source state it reflects.
    """

    snapshot: str | None = None
    database_time: str | None = None

    @classmethod
    def of(cls, ingest: "IngestManifest") -> "CapturePoint":
        """Copy the capture point of an ingest manifest, checking the clock reading parses."""
        point = cls(None if ingest.snapshot is None else str(ingest.snapshot),
                    ingest.database_time)
        point.database_moment()
        return point

    def database_moment(self) -> datetime | None:
        """``database_time`` as a UTC datetime without zone (a ``timestamp`` value)."""
        if self.database_time is None:
            return None
        return timestamps.parse_database_time(str(self.database_time))

    def to_json(self) -> dict[str, Any]:
        """Return the manifest's ``capture`` object."""
        return {"snapshot": self.snapshot, "database_time": self.database_time}

    @classmethod
    def from_json(cls, fields: Mapping[str, Any] | None) -> "CapturePoint":
        """Read a ``capture`` object (absent in ``totes.processed/1``), checking both fields."""
        if not fields:
            return cls()
        snapshot, database_time = fields.get("snapshot"), fields.get("database_time")
        point = cls(None if snapshot is None else str(Snapshot.parse(snapshot)),
                    None if database_time is None else str(database_time))
        point.database_moment()
        return point


@dataclass(frozen=True)
class ProcessedManifest:
    """One transformed ingest run: the Parquet objects per warehouse table, deletions per fact.

    Its key is the ingest manifest's key, under the prefix of the revision in force
    for it (:mod:`totes.supersede`). ``reference`` points at the reference
    snapshots the next transform continues from (None for a table never seen);
    ``reference_sha256`` their SHA-256s (:func:`totes.storage.checksum`), which the
    next transform checks them against: a table missing there (a manifest written
    before it was recorded) is read unchecked. ``skipped_by`` names the operator's
    skip marker when the ingest run was passed over on purpose (no tables then).
    ``revision`` is the revision it was written for: a manifest of another revision
    copied or restored over its key (sealed, and naming only this run's files) is
    refused by every reader (:meth:`check_references`). ``follows`` is the ingest
    manifest whose processed manifest (in force) transform had committed last when it
    wrote this one, so a reader that takes them in order (publish) can tell one gone
    from between them, or one not this pipeline's (:class:`totes.publish.ProcessedGapError`).
    """

    run_id: str
    ingest_manifest: str
    ingest_started_at: str | None
    transformed_at: str
    tables: Mapping[str, TableOutput]
    reference: Mapping[str, str | None] = field(default_factory=dict)
    reference_sha256: Mapping[str, str] = field(default_factory=dict)
    #: fact table -> its deletion records (empty in ``totes.processed/1``).
    deletions: Mapping[str, TableOutput] = field(default_factory=dict)
    capture: CapturePoint = field(default_factory=CapturePoint)
    skipped_by: str | None = None
    format: str = PROCESSED_FORMAT
    #: the revision it was written for (:mod:`totes.supersede`), which its key must be
    #: under; None in manifests written before it was recorded (not checked).
    revision: int | None = None
    #: the ingest manifest transformed just before it (None for the first one, and in
    #: manifests written before it was recorded: not checked).
    follows: str | None = None

    def table(self, name: str) -> TableOutput:
        """The objects of warehouse table ``name`` (none if the manifest does not list it)."""
        return self.tables.get(name) or TableOutput()

    def deleted(self, fact: str) -> TableOutput:
        """The deletion records of fact table ``fact`` (none if the manifest has none)."""
        return self.deletions.get(fact) or TableOutput()

    def started(self) -> datetime | None:
        """``ingest_started_at`` as an aware UTC datetime (a stamp without zone is UTC)."""
        if self.ingest_started_at is None:
            return None
        return timestamps.parse_instant(self.ingest_started_at)

    @classmethod
    def read(cls, document: Any, key: str) -> "ProcessedManifest":
        """Parse a processed manifest stored at ``key`` and check what it names against it.

        What every reader of the processed bucket calls (load, publish, transform
        continuing from its last manifest): a manifest is only followed as far as
        :meth:`check_references` allows. A malformed one's error names ``key``.
        """
        manifest = _named(cls.parse, document, key)
        manifest.check_references(key)
        return manifest

    def check_references(self, key: str) -> None:
        """Refuse a manifest at ``key`` that names any object outside its own run and tables.

        Load and publish read every Parquet object a processed manifest lists, and
        transform continues from its ``reference`` snapshots, so each must be a key
        of its layout: a table's objects and deletions written for this run, under
        that table's own folder; a reference snapshot of that table written by this
        run or an earlier one. So a forged or mistaken manifest cannot make load read
        another table's rows, another run's objects or anything outside the layout.
        A breach is a :class:`ManifestError` naming both.
        """
        run = keys.parse_processed_manifest_key(key)
        if run is None or str(run) != self.run_id:
            raise ManifestError(f"{key}: run_id {self.run_id!r} is not the run its key names")
        revision = keys.processed_manifest_revision(key)
        if self.revision is not None and self.revision != revision:
            raise ManifestError(
                f"{key}: written for revision {self.revision}, but its key is revision "
                f"{revision}'s: copied or restored over it from another revision, its files "
                "are not the ones this revision's transform wrote (docs/runbook.md, \"A "
                "manifest or marker is damaged\")")
        if self.follows is not None and not (keys.is_manifest_key(self.follows)
                                             and self.follows < keys.manifest_key(run)):
            raise ManifestError(f"{key}: follows {self.follows!r}, which is not an ingest "
                                "manifest key of an earlier run")
        if self.ingest_manifest and keys.parse_manifest_key(self.ingest_manifest) != run:
            raise ManifestError(f"{key}: ingest_manifest {self.ingest_manifest!r} is not the "
                                "ingest manifest of this run")
        named = [(table, file.key, keys.parse_processed_key(file.key))
                 for table, output in self.tables.items() for file in output.files]
        named += [(fact, file.key, keys.parse_processed_key(file.key, deleted=True))
                  for fact, output in self.deletions.items() for file in output.files]
        for table, reference, found in named:
            if found != (table, run):
                raise ManifestError(f"{key}: {table} names {reference!r}, which is not an object "
                                    f"of {table} written for this run")
        for table, pointer in self.reference.items():
            found = None if pointer is None else keys.parse_reference_key(str(pointer))
            if pointer is not None and (found is None or found[0] != table or found[1] > run):
                raise ManifestError(f"{key}: the reference snapshot of {table}, {pointer!r}, is "
                                    f"not one of {table} written by this run or an earlier one")

    def to_json(self) -> dict[str, Any]:
        """Render the manifest (in the current format; ``skipped_by``, ``revision`` when set)."""
        document: dict[str, Any] = {
            "format": PROCESSED_FORMAT,
            "run_id": self.run_id,
            "ingest_manifest": self.ingest_manifest,
            "ingest_started_at": self.ingest_started_at,
            "transformed_at": self.transformed_at,
            "capture": self.capture.to_json(),
            "tables": {name: output.to_json() for name, output in self.tables.items()},
            "deletions": {name: output.to_json() for name, output in self.deletions.items()},
            "reference": dict(self.reference),
        }
        if self.reference_sha256:
            document["reference_sha256"] = dict(self.reference_sha256)
        if self.skipped_by is not None:
            document["skipped_by"] = self.skipped_by
        if self.revision is not None:
            document["revision"] = self.revision
        if self.follows is not None:
            document["follows"] = self.follows
        return document

    @classmethod
    def parse(cls, document: Any) -> "ProcessedManifest":
        """Read a processed manifest of any supported format, or raise :class:`ManifestError`.

        Table names are an allow-list (the warehouse contract); deletions are only
        ever listed for fact tables.
        """
        # Imported here: the warehouse contract is the processed manifest's vocabulary only.
        from totes.warehouse_schema import DELETIONS, TABLES

        kind = document.get("format") if isinstance(document, Mapping) else None
        if kind not in (PROCESSED_FORMAT, PROCESSED_FORMAT_V1):
            raise ManifestError(f"not a {PROCESSED_FORMAT} or {PROCESSED_FORMAT_V1} manifest "
                                f"(format {kind!r})")
        tables = document.get("tables") or {}
        deletions = (document.get("deletions") or {}) if kind == PROCESSED_FORMAT else {}
        if not isinstance(tables, Mapping) or not isinstance(deletions, Mapping):
            raise ManifestError(f"malformed {kind} manifest: tables and deletions must be objects")
        unknown = sorted(set(tables) - set(TABLES)) + sorted(
            f"deletions of {name}" for name in set(deletions) - set(DELETIONS))
        if unknown:
            raise ManifestError(f"unknown warehouse tables {', '.join(unknown)}")
        try:
            manifest = cls(
                run_id=_text(document["run_id"], "run_id"),
                ingest_manifest=str(document.get("ingest_manifest") or ""),
                ingest_started_at=document.get("ingest_started_at"),
                transformed_at=str(document.get("transformed_at") or ""),
                tables={name: TableOutput.from_json(fields) for name, fields in tables.items()},
                reference=dict(document.get("reference") or {}),
                reference_sha256=_reference_sha256(document.get("reference_sha256") or {}),
                deletions={name: TableOutput.from_json(fields)
                           for name, fields in deletions.items()},
                capture=CapturePoint.from_json(document.get("capture")),
                skipped_by=None if document.get("skipped_by") is None
                else _text(document["skipped_by"], "skipped_by"),
                format=kind,
                revision=_revision(document.get("revision")),
                follows=None if document.get("follows") is None
                else _text(document["follows"], "follows"),
            )
            manifest.started()
            return manifest
        except (KeyError, TypeError, ValueError, AttributeError, SnapshotFormatError) as error:
            raise ManifestError(
                f"malformed {kind} manifest: {type(error).__name__}: {error}") from None


def _revision(value: Any) -> int | None:
    """A processed manifest's ``revision`` (None before it was recorded), checked."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"revision must be a whole number from 0, not {value!r}")
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, not {value!r}")
    return value
