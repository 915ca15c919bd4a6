"""Finding deleted rows: a key sweep, streamed as a sorted merge in bounded memory.

A delete leaves no row behind for change capture to read, so every
``INGEST_DELETE_SWEEP_MINUTES`` a run lists every primary key of each table, in
the same snapshot it captures changes in, and compares them with what it knew:
the keys of the previous sweep *and* the keys captured by every run since then.
The second part matters: an order created, captured and cancelled between two
sweeps is in neither sweep, but it is in the warehouse, and its deletion must be.
Every input is sorted by key (sweeps and each run's files are written in key
order), so the comparison is a merge of streams that never holds a set of keys:
memory stays flat at any table size. The sweep's key list is written, gzip,
to the ingestion bucket under a fresh key like every other object, and the
manifest points at it.
"""
import gzip
import heapq
import json
import tempfile
from datetime import datetime, timedelta
from typing import IO, Any, Iterable, Iterator

from totes import keys, storage
from totes.manifest import DataFile, SweepState

KEYS_CONTENT_TYPE = "application/gzip"
#: key lines compressed at once by :class:`KeySpool` (about 0.5 MB).
SPOOL_LINES = 65_536


class SweepOrderError(RuntimeError):
    """A key stream that must be sorted was not: comparing it would invent deletions."""


def is_due(previous: SweepState | None, now: datetime, interval: timedelta) -> bool:
    """Tell whether a table is swept this run: never swept, or its interval has passed."""
    return previous is None or now - previous.swept_at >= interval


def _ascending(stream: Iterable[int], name: str) -> Iterator[int]:
    last = None
    for key in stream:
        if last is not None and key < last:
            raise SweepOrderError(f"{name} is not in key order ({key} after {last})")
        last = key
        yield key


def vanished(known: Iterable[Iterable[int]], present: Iterable[int]) -> Iterator[int]:
    """Yield, once each and in order, the keys of any ``known`` stream absent from ``present``.

    Every stream must be ascending (``known`` streams may repeat keys); a stream
    out of order raises :class:`SweepOrderError` rather than report a live row deleted.
    """
    remaining = iter(_ascending(present, "the current key list"))
    current = next(remaining, None)
    previous = None
    merged = heapq.merge(*(_ascending(stream, f"known key stream {number}")
                           for number, stream in enumerate(known)))
    for key in merged:
        if key == previous:
            continue
        previous = key
        while current is not None and current < key:
            current = next(remaining, None)
        if current != key:
            yield key


class KeySpool:
    """A COPY sink spooling the current keys, gzip, to a temporary file: flat memory.

    Lines are compressed in blocks of :data:`SPOOL_LINES`: one gzip call per key
    would cost more than the COPY that produces it.
    """

    def __init__(self) -> None:
        """Open an empty spool."""
        self.file: IO[bytes] = tempfile.TemporaryFile()
        self._gzip = gzip.GzipFile(fileobj=self.file, mode="wb")
        self._lines: list[bytes] = []
        self.keys = 0

    def write(self, line: bytes) -> None:
        """Take one key line from COPY."""
        self._lines.append(line)
        if len(self._lines) == SPOOL_LINES:
            self._flush()

    def _flush(self) -> None:
        self._gzip.write(b"".join(self._lines))
        self.keys += len(self._lines)
        self._lines = []

    def finish(self) -> None:
        """Close the gzip stream so the spool can be read back and uploaded."""
        self._flush()
        self._gzip.close()

    def read_keys(self) -> Iterator[int]:
        """Yield the spooled keys from the start."""
        self.file.seek(0)
        return _int_lines(gzip.GzipFile(fileobj=self.file, mode="rb"))

    def close(self) -> None:
        """Delete the spool."""
        self.file.close()


def _int_lines(lines: Iterable[bytes]) -> Iterator[int]:
    return (int(line) for line in lines if line.strip())


def previous_keys(bucket: str, sweep: SweepState | None) -> Iterator[int]:
    """Stream the keys of an earlier sweep from the bucket (none before the first)."""
    if sweep is None:
        return iter(())
    return _int_lines(gzip.GzipFile(fileobj=storage.open_stream(bucket, sweep.key), mode="rb"))


def captured_keys(bucket: str, files: Iterable[DataFile], key_column: str) -> Iterator[int]:
    """Stream the primary keys of one run's JSON Lines files of a table, in file order.

    Ingest renders the primary key first (``{"<key>":123,...``), so it is read
    from the start of each line; any other shape falls back to a full parse.
    """
    prefix = json.dumps(key_column).encode() + b":"
    for file in files:
        for line in storage.open_stream(bucket, file.key).iter_lines():
            if not line:
                continue
            if line.startswith(b"{" + prefix):
                end = line.find(b",", len(prefix) + 1)
                yield int(line[len(prefix) + 1:end if end > 0 else -1])
            else:
                yield int(json.loads(line)[key_column])


def upload(bucket: str, table: str, run: keys.RunId, spool: KeySpool,
           swept_at: datetime) -> SweepState:
    """Write the spooled key list once under a fresh key; return the state that names it."""
    key = keys.sweep_key(table, run)
    spool.file.seek(0)
    storage.put_new_object(bucket, key, spool.file, KEYS_CONTENT_TYPE)
    return SweepState(key=key, keys=spool.keys, run_id=str(run), swept_at=swept_at)


def deletion_line(key_column: str, key: int, deleted_at: datetime) -> bytes:
    """Render one deletion record as a JSON line (the transform's input contract)."""
    return (json.dumps({key_column: key,
                        "deleted_at": deleted_at.isoformat(timespec="milliseconds")})
            + "\n").encode()


def known_streams(bucket: str, previous: SweepState | None, key_column: str,
                  runs: Iterable[Iterable[DataFile]]) -> list[Iterator[Any]]:
    """Return the sorted key streams a sweep compares against: last sweep plus each run's keys."""
    return [previous_keys(bucket, previous),
            *(captured_keys(bucket, files, key_column) for files in runs)]
