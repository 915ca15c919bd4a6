"""The one shape of a capture mode: read the changes since a position, return the next position.

An ingest run does not care how changes are found. It hands a capture mode a
:class:`CaptureRequest` (its settings, its run id and the previous committed
manifest, which holds the position reached so far) and gets back a
:class:`Captured`: the files written for every table and the position the next
run starts from. Snapshot capture (:mod:`totes.snapshot_capture`) reads rows by
transaction visibility and sweeps keys for deletions in the same snapshot;
log-based capture (:mod:`totes.logical_capture`) reads a replication slot. Once
the manifest that records the new position exists, the run calls the mode's
:meth:`CaptureMode.release`, so a mode that holds something at the source (a
slot's WAL) lets go of it only after the commit.

The settings both modes read, and the writer that packs a table's JSON lines
into create-once objects, live here because both modes use them.
"""
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Callable, Mapping, Protocol

from totes import config, extract, keys, storage, timestamps
from totes.manifest import DataFile, IngestManifest, LogicalPosition, TableEntry

CONTENT_TYPE = "application/x-ndjson"


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


@dataclass(frozen=True)
class CaptureRequest:
    """One run's question to a capture mode: what changed since the previous manifest?"""

    settings: IngestSettings
    run: keys.RunId
    #: the newest committed manifest (None before the first run) and its key.
    previous: IngestManifest | None
    previous_key: str | None
    #: seconds any database wait may take (the invocation's remaining time).
    db_timeout: float


@dataclass(frozen=True)
class Captured:
    """What a capture mode wrote, and the position the next run starts from."""

    read_point: extract.ReadPoint
    tables: Mapping[str, TableEntry]
    complete: bool
    #: log-based capture's position in its slot (None in snapshot capture).
    logical: LogicalPosition | None = None
    #: why tables were read again by snapshot (a restored source; in log-based capture a lost
    #: slot or a drifted publication), None for an ordinary run.
    resync: str | None = None
    #: how long the transaction holding the snapshot's floor has held it (snapshot capture;
    #: :func:`totes.extract.floor_age_seconds`), None where unknown or not measured.
    floor_age_seconds: float | None = None
    #: since when the snapshot's floor is known to be held (snapshot capture;
    #: :func:`totes.snapshot_capture.floor_held_since`), carried in the manifest.
    floor_held_since: datetime | None = None
    #: each table's fingerprint of its used columns' catalog rows in this run's snapshot
    #: (:func:`totes.source.definitions`), carried in the manifest for the next run.
    definitions: Mapping[str, str] | None = None
    #: the slot read stopped only before a key written again after its deletion
    #: (log-based capture): the invocation may go on at once with a further run.
    stopped_before_reused_key: bool = False

    def manifest(self, request: CaptureRequest) -> IngestManifest:
        """Return the manifest that commits this capture (written last, by the run)."""
        return IngestManifest(
            run_id=str(request.run), started_at=timestamps.instant_text(request.run.started_at),
            finished_at=timestamps.now_text(), previous_manifest=request.previous_key,
            tables=dict(self.tables), complete=self.complete, snapshot=self.read_point.snapshot,
            database_time=timestamps.database_text(self.read_point.database_time),
            logical=self.logical, source=self.read_point.source, resync=self.resync,
            floor_held_since=self.floor_held_since, definitions=self.definitions)


class CaptureMode(Protocol):
    """A way of finding the source's changes: snapshot capture or log-based capture."""

    def capture(self, request: CaptureRequest) -> Captured:
        """Write the changes since the previous manifest's position; return the next position."""

    def release(self, request: CaptureRequest, manifest: IngestManifest) -> int | None:
        """Let go of what the source holds for a committed manifest; return WAL still held."""


class ObjectWriter:
    """Packs JSON lines into objects of at most ``chunk_rows`` lines, each written once.

    Only encoded bytes wait for an object to fill, so the memory held is about one
    object's size whatever the table's. With ``background`` each object is written
    by a thread of its own while the caller reads the next chunk from the source
    (the wait for the server and the wait for S3 overlap); one write at most is in
    flight, so the memory is two objects' worth. :meth:`close` waits for it: the
    objects listed in :attr:`files` exist only once it has returned without error.
    With ``puts`` the objects are written there instead, and exist once the
    caller, who owns it, has closed it (several tables' writers may share one, so a
    table's last write overlaps the reading of the next table).
    """

    def __init__(self, bucket: str, chunk_rows: int, key_for: Callable[[int], str], *,
                 background: bool = False, puts: storage.BackgroundPuts | None = None) -> None:
        """Prepare to write objects named ``key_for(part)``, numbered from part 0."""
        self._bucket, self._chunk_rows, self._key_for = bucket, chunk_rows, key_for
        self._lines: list[bytes] = []
        self.files: list[DataFile] = []
        self._own_puts = storage.BackgroundPuts(1) if background and puts is None else None
        self._puts = puts or self._own_puts

    def add(self, line: bytes) -> None:
        """Take one line; write an object when ``chunk_rows`` lines are waiting."""
        self._lines.append(line)
        if len(self._lines) == self._chunk_rows:
            self.flush()

    def flush(self) -> None:
        """Write the lines waiting (if any) as the next object, created once under a new key."""
        lines, self._lines = self._lines, []
        if lines:
            self.write_chunk(b"".join(lines), len(lines))

    def write_chunk(self, body: bytes, rows: int) -> None:
        """Write ``body``, ``rows`` whole lines joined by the caller, as the next object.

        The bulk path for a sink that packs a whole chunk at once (at most
        ``chunk_rows`` lines); the lines taken by :meth:`add` go first.
        """
        if rows > self._chunk_rows:
            raise ValueError(f"an object holds at most {self._chunk_rows} lines, not {rows}")
        self.flush()
        key = self._key_for(len(self.files))
        sha256 = storage.put_new_object_on(self._puts, self._bucket, key, body, CONTENT_TYPE)
        self.files.append(DataFile(key, rows, len(body), sha256))

    def close(self, *, quietly: bool = False) -> None:
        """Wait for the last write and end the writing thread (not those of a shared ``puts``).

        The write's error is re-raised unless ``quietly`` (the caller is failing
        already, and its own error is the one to report).
        """
        if self._own_puts is not None:
            self._own_puts.close(quietly=quietly)
