"""Finding deleted rows: a key sweep, compared as a merge of sorted key blocks in bounded memory.

A delete leaves no row behind for change capture to read, so every
``INGEST_DELETE_SWEEP_MINUTES`` a run lists every primary key of each table, in
the same snapshot it captures changes in, and compares them with what it knew:
the keys of the previous sweep *and* the keys captured by every run since then.
The second part matters: an order created, captured and cancelled between two
sweeps is in neither sweep, but it is in the warehouse, and its deletion must be.

Keys travel as **blocks**: ascending keys, comma-separated, one block of at most
:data:`BLOCK_KEYS` per line (the server aggregates them, so Python handles one
line per block instead of one per key). Every input is sorted, so the comparison
is a merge that holds at most one block per input, and the set work happens in
C, block by block. Only the keys found deleted are held (8 bytes each) until
every stored list has been read to its end and accepted: a sweep refused there
(a replaced list) writes no deletion file. Sweep key lists and
each run's captured keys are written, gzip, to the ingestion bucket under fresh
keys like every other object, and the manifest points at them.

A stored key list is read as untrusted input, because anyone who may write to
the bucket could have replaced what a manifest points at: each line may be at
most :data:`MAX_LINE_BYTES` long and the whole list decompress to at most
:data:`MAX_LIST_BYTES`, so a gzip bomb (one endless line of a few hundred
kilobytes compressed) costs a bounded read, not the function's memory; anything
else (not gzip, not keys) is a :class:`KeyListError` naming the object.

:func:`sweep_tables` is the sweep step of a run: it must be called inside the
snapshot the run captured in, so that the keys listed and the rows read describe
one instant.
"""
import gzip
import tempfile
import zlib
from array import array
from bisect import bisect_right
from dataclasses import replace
from datetime import datetime, timedelta
from typing import IO, TYPE_CHECKING, Iterable, Iterator

import pg8000.native

from totes import extract, keys, observability, storage, timestamps
from totes.capture_mode import CaptureRequest, IngestSettings, ObjectWriter
from totes.errors import InputError
from totes.manifest import IngestManifest, SweepState, TableEntry
from totes.source import SOURCE_TABLES

logger = observability.service_logger()

if TYPE_CHECKING:  # botocore-stubs, a development dependency
    from botocore.response import StreamingBody

KEYS_CONTENT_TYPE = "application/gzip"
#: keys per block: about 0.5 MB of text, the unit of memory of a sweep.
BLOCK_KEYS = 65_536

#: gzip's level for key lists: keys are digits and commas, which the fastest level packs
#: within about 5 % of the best in a sixth of the time (gzip's default, 9, spent about
#: 0.7 CPU-seconds on the 1.9 million keys of a backfill's first sweep).
GZIP_LEVEL = 1

#: the longest line a key list holds: a block of the widest keys (a sign and 19 digits) and commas.
MAX_LINE_BYTES = BLOCK_KEYS * 21
#: the most a stored key list may decompress to: about 100 million keys of the widest kind.
MAX_LIST_BYTES = 2 << 30

Block = list[int]


class SweepOrderError(InputError):
    """A key stream that must be sorted was not: comparing it would invent deletions."""


class KeyListError(InputError, ValueError):
    """A stored key list is not one the pipeline writes: a person must look at the object."""


def is_due(previous_swept_at: datetime | None, now: datetime, interval: timedelta) -> bool:
    """Tell whether a table is swept this run: never swept, or its interval has passed."""
    return previous_swept_at is None or now - previous_swept_at >= interval


def parse_block(line: bytes) -> Block:
    """Return the keys of one block line (``1,2,3``); an empty line is an empty block."""
    text = line.strip()
    return [int(key) for key in text.split(b",")] if text else []


def render_block(block: Iterable[int | bytes]) -> bytes:
    """Render keys (ints, or their digits as bytes) as one block line."""
    return b",".join(key if isinstance(key, bytes) else str(key).encode() for key in block) + b"\n"


class _Cursor:
    """Reads a stream of ascending blocks key range by key range, checking the order."""

    def __init__(self, blocks: Iterable[Block], name: str) -> None:
        self._blocks = iter(blocks)
        self._name = name
        self._block: Block = []
        self._at = 0
        self._last: int | None = None
        self.done = False
        self._advance()

    def _advance(self) -> None:
        while self._at >= len(self._block):
            block = next(self._blocks, None)
            if block is None:
                self.done = True
                return
            self._check(block)
            self._block, self._at = block, 0

    def _check(self, block: Block) -> None:
        previous = self._last
        for key in block:
            if previous is not None and key <= previous:
                raise SweepOrderError(f"{self._name} is not in key order ({key} after {previous})")
            previous = key
        self._last = previous

    def horizon(self) -> int:
        """The greatest key of the block in hand: keys up to it can be taken without reading."""
        return self._block[-1]

    def take_through(self, highest: int) -> Block:
        """Take (and return) every remaining key up to ``highest``."""
        taken: Block = []
        while not self.done and self._block[self._at] <= highest:
            end = bisect_right(self._block, highest, self._at)
            taken += self._block[self._at:end]
            self._at = end
            if end < len(self._block):
                break
            self._advance()
        return taken


def vanished(known: Iterable[Iterable[Block]], present: Iterable[Block]) -> Iterator[int]:
    """Yield, once each and in order, the keys of any ``known`` stream absent from ``present``.

    Streams are iterables of ascending blocks. Each step takes every stream up to
    the smallest key any of them is sure of without reading further, so at most one
    block per stream is held. A stream out of order raises :class:`SweepOrderError`
    rather than report a live row deleted.
    """
    streams = [_Cursor(blocks, f"known key stream {number}")
               for number, blocks in enumerate(known)]
    current = _Cursor(present, "the current key list")
    while True:
        pending = [stream for stream in streams if not stream.done]
        if not pending:
            return
        highest = min(stream.horizon() for stream in pending)
        if not current.done:
            highest = min(highest, current.horizon())
        candidates: set[int] = set()
        for stream in pending:
            candidates.update(stream.take_through(highest))
        yield from sorted(candidates.difference(current.take_through(highest)))


class KeySpool:
    """A COPY sink spooling key block lines, gzip, to a temporary file: flat memory."""

    def __init__(self) -> None:
        """Open an empty spool."""
        self.file: IO[bytes] = tempfile.TemporaryFile()
        self._gzip = gzip.GzipFile(fileobj=self.file, mode="wb", compresslevel=GZIP_LEVEL)
        self.keys = 0

    def write(self, line: bytes) -> None:
        """Take one block line from COPY."""
        self._gzip.write(line)
        self.keys += line.count(b",") + 1 if line.strip() else 0

    def finish(self) -> None:
        """Close the gzip stream so the spool can be read back and uploaded."""
        self._gzip.close()

    def blocks(self) -> Iterator[Block]:
        """Yield the spooled blocks from the start."""
        self.file.seek(0)
        return (parse_block(line) for line in gzip.GzipFile(fileobj=self.file, mode="rb"))

    def close(self) -> None:
        """Delete the spool."""
        self.file.close()


def held_on_disk(keys: Iterable[int], block: int = BLOCK_KEYS) -> Iterator[int]:
    """Take every one of ``keys`` first, then yield them back, holding them on disk, not in memory.

    A sweep writes its deletion files only once every key list it compares with was read
    to its end and accepted, so what it found is held until then; a table emptied
    between two sweeps (a TRUNCATE, a mass delete) finds every key gone, and in memory
    that would be 8 bytes a key, millions of them. On disk (8 bytes a key, in
    ``block``-key writes) memory stays one block.
    """
    spool = tempfile.TemporaryFile()
    pending = array("q")
    for key in keys:
        pending.append(key)
        if len(pending) >= block:
            pending.tofile(spool)
            pending = array("q")
    pending.tofile(spool)
    return _read_back(spool, block)


def _read_back(spool: IO[bytes], block: int) -> Iterator[int]:
    """Yield the keys :func:`held_on_disk` wrote, in order, and delete the file at the end."""
    with spool:
        spool.seek(0)
        while chunk := spool.read(block * 8):
            yield from array("q", chunk)


def key_lines(raw: "IO[bytes] | StreamingBody", name: str, *, max_line: int = MAX_LINE_BYTES,
              max_total: int = MAX_LIST_BYTES) -> Iterator[bytes]:
    """Yield the non-empty lines of the gzip key list ``name`` read from ``raw``, within bounds.

    Each line is read with a limit, so a line beyond ``max_line`` is refused after
    reading at most that much, and the list after ``max_total`` decompressed bytes.
    """
    body = gzip.GzipFile(fileobj=raw, mode="rb")
    total = 0
    while True:
        try:
            line = body.readline(max_line + 1)
        except (OSError, EOFError, zlib.error) as error:
            raise KeyListError(f"{name}: not a gzip key list ({error})") from None
        if not line:
            return
        total += len(line)
        if len(line) > max_line:
            raise KeyListError(f"{name}: a line longer than {max_line:,} bytes; no key list "
                               "the pipeline writes has one (a gzip bomb or a foreign object)")
        if total > max_total:
            raise KeyListError(f"{name}: decompresses to more than {max_total:,} bytes, beyond "
                               "any key list the pipeline writes")
        if line.strip():
            yield line


def parse_blocks(lines: Iterable[bytes], name: str) -> Iterator[Block]:
    """Parse the lines of the key list ``name`` as blocks, refusing a line that is not keys."""
    for line in lines:
        try:
            yield parse_block(line)
        except ValueError:
            raise KeyListError(f"{name}: a line that is not comma-separated keys") from None


def stored_blocks(bucket: str, key: str | None, sha256: str | None = None) -> Iterator[Block]:
    """Stream the key blocks of a stored key list (none when there is no object).

    With ``sha256`` (the manifest's record), another version of the list is refused
    (:class:`totes.storage.ObjectChangedError`) once read to its end, before the
    sweep's deletions are written: a replaced list would hide a delete for ever.
    """
    if key is None:
        return iter(())
    name = f"s3://{bucket}/{key}"
    return parse_blocks(key_lines(storage.open_stream(bucket, key, sha256), name), name)


def upload(bucket: str, key: str, spool: KeySpool) -> str:
    """Write the spooled key list once under ``key`` (never replaced); return its SHA-256.

    The spool is hashed first and the hash sent with it (S3 refuses other bytes),
    for the manifest, so the next sweep reads this list and no other.
    """
    sha256 = storage.checksum(spool.file)
    storage.put_new_object(bucket, key, spool.file, KEYS_CONTENT_TYPE, sha256)
    return sha256


def upload_blocks(bucket: str, table: str, run: keys.RunId, lines: list[bytes],
                  puts: storage.BackgroundPuts | None = None) -> tuple[str, str]:
    """Write one run's captured keys of ``table`` (block lines, in order) once.

    Return its key and SHA-256, for the manifest (the next sweep checks it). With
    ``puts`` the write is only started: the object exists once ``puts`` is closed.
    """
    key = keys.captured_keys_key(table, run)
    sha256 = storage.put_new_object_on(
        puts, bucket, key, gzip.compress(b"".join(lines), GZIP_LEVEL), KEYS_CONTENT_TYPE)
    return key, sha256


def deletion_line(key_column: str, key: int, deleted_at: datetime) -> bytes:
    """Render one deletion record as a JSON line (the transform's input contract)."""
    stamp = timestamps.database_text(deleted_at)
    return f'{{"{key_column}": {key}, "deleted_at": "{stamp}"}}\n'.encode()


def due_tables(settings: IngestSettings, previous: IngestManifest | None,
               read_point: extract.ReadPoint) -> list[str]:
    """Return the tables whose key sweep is due in this run."""
    def swept_at(table: str) -> datetime | None:
        state = previous.table(table).sweep if previous else None
        return None if state is None else state.swept_at

    return [table for table in SOURCE_TABLES
            if is_due(swept_at(table), read_point.database_time, settings.delete_sweep)]


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


def sweep_tables(conn: pg8000.native.Connection, request: CaptureRequest,
                 read_point: extract.ReadPoint, entries: dict[str, TableEntry],
                 due: list[str]) -> dict[str, TableEntry]:
    """Sweep every table in ``due``; return the entries with their deletions and sweeps."""
    settings = request.settings
    captured: dict[str, list[tuple[str, str | None]]] = {table: [] for table in due}
    sweeps = {table: entries[table].sweep for table in due}
    for manifest in _runs_since(settings.bucket, [state for state in sweeps.values() if state],
                                request.previous_key):
        for table, state in sweeps.items():
            entry = manifest.table(table)
            if state is not None and manifest.run_id > state.run_id and entry.captured_keys:
                captured[table].append((entry.captured_keys, entry.captured_keys_sha256))
    swept = dict(entries)
    for table in due:
        swept[table] = _sweep_table(conn, settings, read_point, request.run, table,
                                    entries[table], captured[table])
    return swept


def _sweep_table(conn: pg8000.native.Connection, settings: IngestSettings,
                 read_point: extract.ReadPoint, run: keys.RunId, table: str,
                 entry: TableEntry, captured: list[tuple[str, str | None]]) -> TableEntry:
    key_column = SOURCE_TABLES[table]
    spool = KeySpool()
    try:
        extract.copy_keys(conn, table, BLOCK_KEYS, spool)
        spool.finish()
        own = [(entry.captured_keys, entry.captured_keys_sha256)] if entry.captured_keys else []
        known = [stored_blocks(settings.bucket, *((entry.sweep.key, entry.sweep.sha256)
                                                  if entry.sweep else (None, None))),
                 *(stored_blocks(settings.bucket, key, sha256)
                   for key, sha256 in [*captured, *own])]
        # Written only once every key list was read to its end and accepted (a replaced one
        # is refused there): a refused sweep leaves no deletion file behind.
        gone = held_on_disk(vanished(known, spool.blocks()))
        # Deletions this run already wrote (from the slot) keep their part numbers.
        writer = ObjectWriter(settings.bucket, settings.chunk_rows,
                              lambda part: keys.deletions_key(table, run,
                                                              part + len(entry.deleted)))
        for key in gone:
            writer.add(deletion_line(key_column, key, read_point.database_time))
        writer.flush()
        sweep_key = keys.sweep_key(table, run)
        state = SweepState(key=sweep_key, keys=spool.keys, run_id=str(run),
                           swept_at=read_point.database_time,
                           sha256=upload(settings.bucket, sweep_key, spool))
    finally:
        spool.close()
    result = replace(entry, deleted=entry.deleted + tuple(writer.files), sweep=state,
                     captured_keys=None)
    logger.info("table swept for deletes", extra={
        "run_id": str(run), "table": table, "keys": state.keys, "deleted": result.deleted_rows,
        "compared_with": "nothing (first sweep)" if entry.sweep is None else entry.sweep.key,
        "captured_key_lists": len(captured)})
    return result
