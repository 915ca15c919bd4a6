"""The audit's lake side: the lake's dimensions and current facts as :class:`totes.audit.Target`.

The lake is compared with the source the way the warehouse is
(:func:`totes.audit.audit_table`): the same hashed key-range segments, the same
in-flight rules, the same alarm. Only the rows come from elsewhere: each compared
lake table (a dimension, or a fact's ``*_current`` table) is scanned once, its data
files planned by pyiceberg through the Glue catalog the publish writes
(:func:`totes.lake.glue_catalog`) and read batch by batch, and every row is rendered
here to the canonical text the databases render in SQL
(:mod:`totes.audit_sql`: ``quote_nullable`` of each value's text, joined by commas)
and hashed as they hash it. Only keys and 64-bit hashes are kept, never values.

The lake's capture point is the newest manifest a publish completed: the newest
publish record in force (the revision markers decide which are), the point the
next publish starts after. A publish writes that record only once every lake table
holds the manifest, and the record is read before the tables are opened, so the
tables hold at least what the capture point says. What the pipeline captured after
it (loaded into the warehouse or not) is in flight for the lake, by the rules the
warehouse's capture point is judged by: the lake lagging the warehouse by its own
schedule is never a mismatch.
"""
import hashlib
import re
import time
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence, cast

from totes import audit_sql, lake, observability, storage, supersede
from totes.errors import InputError
from totes.audit import CapturePoint, LakeSettings, ObjectStore, Segments, lake_table_name
from totes.lake_schema import LAKE_TABLES, LakeTable, arrow_schema
from totes.manifest import IngestManifest
from totes.warehouse_schema import CURRENT_VIEWS, TABLES

if TYPE_CHECKING:  # pyiceberg: only the functions that read or write the lake carry it
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa
    from mypy_boto3_s3 import S3Client
    from pyiceberg.table import Table as IcebergTable

    #: keys or row hashes, one int64 each.
    Int64s = npt.NDArray[np.int64]

_HASH_BITS = 64


# --------------------------------------------------------------------------- canonical text

def column_text(values: Any) -> Any:
    """A lake column's canonical text (Arrow strings), as :mod:`totes.audit_sql` renders it.

    Integers and dates (``YYYY-MM-DD``) as Arrow casts them; times are stored as
    ``HH:MM:SS.fff`` text already (what ``to_char(..., 'HH24:MI:SS.MS')`` gives);
    decimals exact without trailing zeros (``trim_scale``: ``100.00`` is ``100``);
    booleans ``true``/``false``; NULL stays NULL.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_boolean(values.type):
        return pc.if_else(values, "true", "false")
    text = values.cast(pa.string())
    if pa.types.is_decimal(values.type):
        text = pc.replace_substring_regex(text, r"(\.\d*?)0+$", r"\1")
        text = pc.replace_substring_regex(text, r"\.$", "")
    return text


def quote_nullable(text: Any) -> Any:
    """Quote Arrow strings as PostgreSQL's ``quote_nullable`` does: ``NULL``, or a literal.

    Quotes are doubled; a value with a backslash gets its backslashes doubled and
    the ``E`` prefix, as ``quote_literal`` does.
    """
    import pyarrow.compute as pc

    doubled = pc.replace_substring(text, "'", "''")
    escaped = pc.binary_join_element_wise("E'", pc.replace_substring(doubled, "\\", "\\\\"),
                                          "'", "")
    plain = pc.binary_join_element_wise("'", doubled, "'", "")
    return pc.fill_null(pc.if_else(pc.match_substring(text, "\\"), escaped, plain), "NULL")


def row_texts(columns: Iterable[Any]) -> list[str]:
    """Each row's canonical text: ``concat_ws(',', quote_nullable(...), ...)`` of its columns."""
    import pyarrow.compute as pc

    quoted = [quote_nullable(column_text(column)) for column in columns]
    texts: list[str] = pc.binary_join_element_wise(*quoted, ",").to_pylist()
    return texts


def row_hash(text: str) -> int:
    """The first 64 bits of the MD5 of ``text`` (UTF-8) as a signed bigint, as the SQL hashes.

    MD5 is a checksum of rows both sides render identically, not a security control.
    """
    digest = int(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:16], 16)
    return digest - (1 << _HASH_BITS) if digest >= 1 << (_HASH_BITS - 1) else digest


# --------------------------------------------------------------------------- hashed rows

#: lake rows rendered to text at a time (their texts as Python strings meanwhile).
CHUNK_ROWS = 50_000
#: a 64-bit hash split in two for exact sums in 64-bit arithmetic: ``hash = high * 2**32 + low``.
_LOW_BITS = 32


class HashedRows:
    """One lake table's rows as sorted (key, hash) pairs: :class:`totes.audit.Segments` in memory.

    The answers a database gives with queries, from the hashes of one scan; the
    keys in flight are left out as the database sides leave them out. Two int64
    arrays (16 bytes a row), so a table of millions of rows costs tens of MB.
    """

    def __init__(self, keys: "Sequence[int] | Int64s", hashes: "Sequence[int] | Int64s",
                 skip: Iterable[int] = (), rows_read: int = 0):
        """Keep ``keys`` and their row ``hashes`` in key order, but for the keys in ``skip``."""
        import numpy as np

        key_array = np.asarray(keys, dtype=np.int64)
        hash_array = np.asarray(hashes, dtype=np.int64)
        left_out = list(skip)
        if left_out:
            kept = ~np.isin(key_array, np.asarray(left_out, dtype=np.int64))
            key_array, hash_array = key_array[kept], hash_array[kept]
        order = np.argsort(key_array, kind="stable")
        self._keys = key_array[order]
        self._hashes = hash_array[order]
        #: one scan of the lake table, however many segments are asked for.
        self.queries = 1
        self.rows_fetched = rows_read

    def _span(self, low: int, high: int) -> tuple[int, int]:
        return (int(self._keys.searchsorted(low, side="left")),
                int(self._keys.searchsorted(high, side="right")))

    def bounds(self) -> tuple[int | None, int | None]:
        """Smallest and greatest key (None, None when empty)."""
        if not len(self._keys):
            return None, None
        return int(self._keys[0]), int(self._keys[-1])

    def segments(self, low: int, high: int, step: int) -> dict[int, tuple[int, Any]]:
        """Segment number -> (rows, sum of row hashes) over ``[low, high]``, ``step`` keys each.

        Sums are exact (as PostgreSQL's ``numeric`` sums): the high and low halves of
        the hashes are summed apart, neither of which can overflow 64 bits.
        """
        import numpy as np

        first, last = self._span(low, high)
        if first == last:
            return {}
        numbers = (self._keys[first:last] - low) // step
        hashes = self._hashes[first:last]
        starts = np.concatenate(([0], np.flatnonzero(np.diff(numbers)) + 1))
        counts = np.diff(np.append(starts, len(numbers)))
        highs = np.add.reduceat(hashes >> _LOW_BITS, starts)
        lows = np.add.reduceat(hashes & ((1 << _LOW_BITS) - 1), starts)
        return {int(number): (int(count), (int(high_sum) << _LOW_BITS) + int(low_sum))
                for number, count, high_sum, low_sum
                in zip(numbers[starts], counts, highs, lows, strict=True)}

    def hashes(self, low: int, high: int) -> dict[int, int]:
        """Key -> row hash over ``[low, high]`` (a leaf)."""
        first, last = self._span(low, high)
        return dict(zip(self._keys[first:last].tolist(), self._hashes[first:last].tolist(),
                        strict=True))

    def keys(self, low: int, high: int, limit: int) -> list[int]:
        """At most ``limit`` keys over ``[low, high]``, in order."""
        first, last = self._span(low, high)
        found: list[int] = self._keys[first:min(last, first + limit)].tolist()
        return found


# --------------------------------------------------------------------------- the lake

def compared_columns(name: str) -> list[str]:
    """The columns of warehouse table ``name`` the audit renders, in the warehouse's order."""
    return [column.name for column in audit_sql.compared_columns(TABLES[name])]


def key_column(name: str) -> str:
    """The key a compared table is compared by: a dimension's key, a fact's business id."""
    table = TABLES[name]
    return CURRENT_VIEWS[name] if table.kind == "fact" else table.primary_key


def hashed_batches(batches: Iterable[Any], name: str) -> tuple["Int64s", "Int64s"]:
    """Keys and row hashes (int64 arrays) of Arrow record ``batches`` of the lake table of ``name``.

    Rendered by Arrow's kernels, at most :data:`CHUNK_ROWS` rows at a time (a data
    file of a backfill holds a million rows); only keys and hashes are kept.
    """
    import numpy as np

    columns, key = compared_columns(name), key_column(name)
    keys: list[Int64s] = [np.empty(0, np.int64)]
    hashes: list[Int64s] = [np.empty(0, np.int64)]
    for batch in batches:
        for offset in range(0, batch.num_rows, CHUNK_ROWS):
            chunk = batch.slice(offset, CHUNK_ROWS)
            texts = row_texts(chunk.column(column) for column in columns)
            keys.append(chunk.column(key).to_numpy(zero_copy_only=False).astype(np.int64))
            hashes.append(np.fromiter((row_hash(text) for text in texts),
                                      dtype=np.int64, count=chunk.num_rows))
    return np.concatenate(keys), np.concatenate(hashes)


class LakeReadError(RuntimeError):
    """A lake data file the audit cannot read as publish writes them (Parquet, no delete files).

    Publish rewrites a data file to delete rows (copy on write); a delete file or
    another format means another writer changed the table. The lake audit fails,
    logged at ERROR (alarmed), and the warehouse's verdict stands.
    """


def lake_batches(table: "IcebergTable", spec: LakeTable,
                 columns: Sequence[str]) -> Iterator["pa.RecordBatch"]:
    """Every live row of ``table``'s ``columns``, at most :data:`CHUNK_ROWS` rows a batch.

    ``table`` is the lake table of ``spec``. A column a data file lacks (written
    before the column was added) reads NULL, or a NOT NULL column's default
    (:func:`totes.lake.with_defaults`), as the warehouse's migration gave older rows.

    pyiceberg's own batch reader decodes each data file whole, every file of the
    scan at once in its thread pool, so the table's compared columns were all in
    memory together. Here the files the scan plans are read one after another, each
    batch by batch (pyarrow's ``ParquetFile.iter_batches``: one row group's
    compressed columns and one decoded batch at a time), so memory is bounded by a
    batch, whatever the table's size. The file is opened through the table's own
    file IO (the lake's :class:`totes.lake_io.CreateOnceFileIO`, spooled to disk
    past a few MB).
    """
    import pyarrow.parquet as pq
    from pyiceberg.manifest import FileFormat

    fields = [arrow_schema(spec).field(name) for name in columns]
    for task in table.scan(selected_fields=tuple(columns)).plan_files():
        if task.delete_files or task.file.file_format != FileFormat.PARQUET:
            raise LakeReadError(
                f"{task.file.file_path}: a {task.file.file_format} data file with "
                f"{len(task.delete_files)} delete file(s); publish writes only Parquet data "
                "files without delete files, so another writer changed this table")
        with table.io.new_input(task.file.file_path).open() as stream:
            # A seekable file object (pyiceberg's InputStream protocol), as pyarrow reads one.
            parquet = pq.ParquetFile(cast(IO[bytes], stream))
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=list(columns)):
                yield lake.with_defaults(spec, _with_fields(batch, fields))


def _with_fields(batch: "pa.RecordBatch", fields: Sequence["pa.Field[Any]"]) -> "pa.RecordBatch":
    """``batch`` as ``fields``, in their order: a column the batch lacks reads NULL."""
    import pyarrow as pa

    present = set(batch.schema.names)
    return pa.RecordBatch.from_arrays(
        [batch.column(field.name) if field.name in present
         else pa.nulls(batch.num_rows, field.type) for field in fields],
        names=[field.name for field in fields])


class LakeTables:
    """The lake's tables as the audit's :class:`totes.audit.Target`, at the snapshots opened."""

    def __init__(self, tables: dict[str, "IcebergTable"]):
        """Compare the lake tables ``tables`` (by lake name), each at its loaded snapshot."""
        self.tables = tables

    def side(self, name: str, skip: list[int]) -> Segments:
        """Scan the lake table of ``name`` once (the compared columns only) and hash its rows.

        Batch by batch (:func:`lake_batches`): only the keys and row hashes are kept.
        """
        lake_name = lake_table_name(name)
        columns = list(dict.fromkeys([key_column(name), *compared_columns(name)]))
        keys, hashes = hashed_batches(
            lake_batches(self.tables[lake_name], LAKE_TABLES[lake_name], columns), name)
        return HashedRows(keys, hashes, skip, len(keys))


class LakeRolledBackError(RuntimeError):
    """Glue names an older metadata file than the table's last commit: the table went back.

    Every commit (pyiceberg's, Athena's, Spark's) numbers its metadata file one past
    the one it replaced and records that one in Glue as ``previous_metadata_location``.
    A ``metadata_location`` not numbered past it was set by hand (or by a restore):
    every reader then sees the table as it was, and the next publish would build on
    that state (record ids given twice, versions gone from the history, which the audit
    does not compare). The lake audit fails, logged at ERROR (alarmed).
    """


#: a metadata file's number in its name (``00012-<uuid>.metadata.json``), as every writer names it.
_METADATA_NUMBER = re.compile(r"/(\d+)-[^/]*\.metadata\.json")


def check_not_rolled_back(name: str, parameters: dict[str, str]) -> None:
    """Refuse a table whose Glue entry names a metadata file not newer than the previous one.

    ``parameters`` are the Glue table's, from one ``GetTable``: both locations are
    read together, so a commit in between cannot make them disagree. A location
    named otherwise (another writer's convention) is not judged.
    """
    current = _METADATA_NUMBER.search(parameters.get("metadata_location", ""))
    previous = _METADATA_NUMBER.search(parameters.get("previous_metadata_location", ""))
    if current and previous and int(current[1]) <= int(previous[1]):
        raise LakeRolledBackError(
            f"{name}: Glue's metadata_location {parameters['metadata_location']} is not newer than "
            f"its previous_metadata_location {parameters['previous_metadata_location']}: the "
            "table was pointed back at an older state by hand; point it at the newest metadata "
            "file again (docs/runbook.md, \"Audit errors\")")


# --------------------------------------------------------------------------- the data files

class LakeFileError(InputError, RuntimeError):
    """A data file a lake table's current snapshot lists is gone from the lake bucket, or changed.

    Publish writes every data file once (``If-None-Match``) and the bucket refuses
    deletes but by the break-glass role, so a file missing, or of another size than
    its manifest records, was deleted or replaced by hand. In a fact history nothing
    else would see it: the audit compares only the current tables, and publish reads
    a history's file only when it next rewrites it (then fails on it). The lake audit
    fails, logged at ERROR (``AuditErrorLogsAlarm``); the bucket is versioned, so the
    file's previous version is still there to restore (docs/runbook.md, "Audit errors").
    """


#: objects a ``ListObjectsV2`` page holds (S3's most).
LIST_PAGE_SIZE = 1000
#: findings named in a :class:`LakeFileError`'s message (all are counted).
FINDINGS_NAMED = 20


@dataclass
class FileCheck:
    """What the data-file check read and found, all tables: the log line's counts."""

    tables: int = 0
    #: live files the current snapshots list (data and delete files alike).
    files: int = 0
    #: objects listed under the tables' data prefixes (orphans and older snapshots' files too).
    objects_listed: int = 0
    #: ``ListObjectsV2`` pages, one request each (1,000 objects a page).
    list_requests: int = 0
    #: manifest files read (``GetObject`` each; the manifest lists are read besides).
    manifests_read: int = 0
    seconds: float = 0.0


def recorded_files(table: "IcebergTable", check: FileCheck) -> dict[str, int]:
    """Location -> size of every live file ``table``'s current snapshot lists.

    Metadata only: the snapshot's manifest list and its manifests (one ``GetObject``
    each, read in pyiceberg's thread pool as its scans read them: publish appends a
    manifest per commit and never merges them); the data files are not opened.
    """
    from pyiceberg.utils.concurrent import ExecutorFactory

    snapshot = table.current_snapshot()
    if snapshot is None:
        return {}
    recorded: dict[str, int] = {}
    manifests = snapshot.manifests(table.io)
    check.manifests_read += len(manifests)
    for entries in ExecutorFactory.get_or_create().map(
            lambda manifest: manifest.fetch_manifest_entry(table.io, discard_deleted=True),
            manifests):
        for entry in entries:
            recorded[entry.data_file.file_path] = entry.data_file.file_size_in_bytes
    return recorded


def compare_listing(name: str, recorded: Mapping[str, int],
                    pages: Iterable[Sequence[Mapping[str, Any]]]) -> list[str]:
    """What differs between the files ``recorded`` (key -> size) and a listing of their prefix.

    ``pages`` are ``ListObjectsV2`` pages' ``Contents`` (key and size), compared one
    page at a time: only ``recorded`` is held, never the listing. A listed object no
    file names is no finding (a failed commit's orphan, or a file of an older snapshot
    kept for time travel). A recorded file is wrong when it is missing or of another
    size. Iceberg records no checksum of a file, so a replacement of the same size is
    not seen without reading it. How or when a file was stored is not judged: another
    engine's compaction (Athena's ``OPTIMIZE``) uploads its files in parts, and a
    restored or copied bucket stores every file anew, both legitimately.
    """
    left = dict(recorded)
    findings = []
    for page in pages:
        for listed in page:
            key = listed["Key"]
            size = left.pop(key, None)
            if size is not None and listed["Size"] != size:
                findings.append(f"{name}: s3 key {key}: {listed['Size']} bytes in the bucket, "
                                f"{size} in its manifest")
    findings += [f"{name}: s3 key {key}: missing from the bucket ({size} bytes in its "
                 "manifest)" for key, size in left.items()]
    return findings


def _listing(s3: "S3Client", bucket: str, prefix: str,
             check: FileCheck) -> Iterator[Sequence[Mapping[str, Any]]]:
    """Every page of a ``ListObjectsV2`` of ``prefix``, counted in ``check``."""
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": LIST_PAGE_SIZE})
    for page in pages:
        contents = page.get("Contents", [])
        check.list_requests += 1
        check.objects_listed += len(contents)
        yield cast(Sequence[Mapping[str, Any]], contents)


def check_data_files(tables: Mapping[str, "IcebergTable"],
                     s3: "S3Client | None" = None) -> FileCheck:
    """Check every file each table's current snapshot lists against one listing of its data prefix.

    Per table: its manifests (metadata only, :func:`recorded_files`), then its data
    prefix listed once (``ListObjectsV2``, paginated: one request per 1,000 objects,
    whatever the table holds), compared page by page (:func:`compare_listing`). Never
    a request per file, and no data file is read. Memory: one table's recorded files
    at a time, a key and an integer each (about 200 bytes), so some 20 MB for
    100,000 files; the listing is held a page at a time. A file outside the table's
    data prefix (publish writes none there) is a finding too. Every finding of every
    table is gathered, then raised as one :class:`LakeFileError`.
    """
    s3 = storage.s3_client() if s3 is None else s3
    check = FileCheck()
    started = time.monotonic()
    findings: list[str] = []
    for name, table in tables.items():
        check.tables += 1
        data_path = table.location_provider().data_path.rstrip("/") + "/"
        bucket, prefix = storage.bucket_and_key(data_path)
        recorded: dict[str, int] = {}
        for location, size in recorded_files(table, check).items():
            file_bucket, key = storage.bucket_and_key(location)
            if file_bucket == bucket and key.startswith(prefix):
                recorded[key] = size
            else:
                findings.append(f"{name}: {location}: not under the table's data prefix "
                                f"{data_path}, where publish writes every data file")
        check.files += len(recorded)
        findings += compare_listing(name, recorded, _listing(s3, bucket, prefix, check))
    check.seconds = time.monotonic() - started
    if findings:
        named = f" (the first {FINDINGS_NAMED})" if len(findings) > FINDINGS_NAMED else ""
        raise LakeFileError(
            f"{len(findings)} data file(s) that lake tables' current snapshots list are not in "
            f"the lake bucket as their manifests record them{named}"
            f": {'; '.join(findings[:FINDINGS_NAMED])}; restore each object's previous version "
            "from the bucket's versioning (docs/runbook.md, \"Audit errors\")")
    return check


@dataclass(frozen=True)
class IcebergLake:
    """The deployed lake, read with pyiceberg through the publish's Glue catalog; never written."""

    settings: LakeSettings

    def published(self) -> tuple[str, dict[str, str]] | None:
        """The newest ingest manifest a publish completed, in force, and its tables' uuids.

        None before the first publish; the uuids are those its record names (none in
        records written before they were kept).
        """
        markers = supersede.read_markers(self.settings.processed_bucket)
        newest = lake.newest_record(self.settings.lake_bucket, markers)
        if newest is None:
            return None
        key, record = newest
        return key, dict(record.get("table_uuids", {}))

    def open(self, store: ObjectStore) -> tuple[CapturePoint, LakeTables | None]:
        """The lake's capture point, then its tables (loaded after it: at least as new)."""
        published = self.published()
        if published is None:
            return CapturePoint(None, None), None
        key, uuids = published
        point = CapturePoint(key, IngestManifest.read(store.read_json(key), key))
        catalog = lake.glue_catalog(self.settings.lake_bucket)
        # Every table, the histories too: not compared, but built on by publish. Each must
        # be its own (Glue not pointed at another table's metadata, nor at another stack's
        # table of the same name) and not rolled back.
        loaded = {name: lake.check_own_metadata(
            catalog.load_table((self.settings.lake_database, name)), name, uuids.get(name))
            for name in LAKE_TABLES}
        for name in LAKE_TABLES:
            found = catalog.glue.get_table(DatabaseName=self.settings.lake_database, Name=name)
            check_not_rolled_back(name, found["Table"].get("Parameters", {}))
        # Every file each current snapshot lists, the histories' too: present, as recorded.
        check = check_data_files(loaded)
        observability.service_logger().info(
            f"lake data files as recorded: {check.files} file(s) of {check.tables} tables, "
            f"{check.objects_listed} object(s) listed in {check.list_requests} request(s), "
            f"{check.manifests_read} manifest(s) read, {check.seconds:.2f} s")
        return point, LakeTables({lake_table_name(name): loaded[lake_table_name(name)]
                                  for name in audit_sql.SEGMENTED})
