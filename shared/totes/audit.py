"""The audit: does the warehouse hold what the source says it should, right now?

Every warehouse table is compared with its source counterpart after the
transform's own mapping (:mod:`totes.audit_sql`): the ``*_current`` views with
``sales_order``, ``purchase_order`` and ``payment``, every dimension with its
source rows after propagation, and ``dim_date`` with the dates the facts use.

Cost is bounded at any size. Each database hashes its own rows: per key range,
a count and the sum of a 64-bit hash of each row's canonical text. Only the
segments whose (count, sum) differ are split again, ``FANOUT`` ways, until they
hold at most ``LEAF_ROWS`` rows; only then are keys and hashes (never values)
fetched, and only from those leaves. A table that matches costs one scan on each
side and returns ``FANOUT`` rows.

Rows in flight are not differences. The warehouse's capture point is the ingest
manifest of the newest loaded manifest (read in the same warehouse snapshot the
audit compares in): a source row the next ingest run would read (its writing
transaction not visible to the capture cursor, :mod:`totes.capture`) is left out
on both sides and counted as ``in_flight``; so is a fact that is current in the
warehouse but gone from the source, when its key was in the newest loaded key
sweep or was captured after it (the next sweep will record its deletion).
A dimension row whose source row is gone stays in its dimension by design (facts
point at it): it is counted as ``retained``, not as a mismatch, as are
``dim_date`` rows no fact uses any more.

The comparison takes a :class:`Target`: the warehouse (:class:`WarehouseTarget`), or
the lake (:mod:`totes.audit_lake`), whose dimensions and ``fact_*_current`` tables
are compared the same way in the same source snapshot, judged at the lake's own
capture point (the newest manifest a publish completed); their mismatches count
in the same alarmed metric.
"""
from contextlib import suppress
from dataclasses import dataclass, field, fields
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

import pg8000.native
from aws_lambda_powertools.metrics import MetricUnit

from totes import (audit_sql, config, db, errors, keys, observability, stage, storage, sweep,
                   timestamps, warehouse)
from totes.capture import TableCursor
from totes.extract import ReadPoint
from totes.extract import snapshot as source_snapshot
from totes.manifest import IngestManifest
from totes.warehouse_schema import TABLES

#: segments a differing key range is split into at each level.
FANOUT = 64
#: a differing segment of at most this many rows (either side) is compared key by key.
LEAF_ROWS = 256
#: example keys reported per table (keys only: values may be personal data).
MAX_EXAMPLES = 5
#: above this many source rows in flight (a backfill), a table is not compared this time.
MAX_IN_FLIGHT = 100_000
#: leaf rows fetched per table (both sides together) at most; beyond, counted from counts.
MAX_LEAF_ROWS = 200_000
#: ingest manifests followed back from the capture point to a key sweep, at most: a week of
#: runs every five minutes, far beyond any sweep interval in use.
MAX_WALK = 2_016


class ObjectStore(Protocol):
    """Where the ingest manifests and key sweeps are read from (the bucket, or a local copy)."""

    def read_json(self, key: str) -> Any:
        """Return the parsed content of the JSON object at ``key``."""

    def lines(self, key: str, sha256: str | None = None) -> Iterator[bytes]:
        """Yield the non-empty lines of a gzip object (a key list), streamed and bounded.

        With ``sha256`` (the manifest's record), another version of the object is
        refused (:class:`totes.storage.ObjectChangedError`) once read to its end.
        """


class BucketStore:
    """The ingestion bucket itself (what the deployed function reads)."""

    def __init__(self, bucket: str):
        """Read from ``bucket``."""
        self.bucket = bucket

    def read_json(self, key: str) -> Any:
        """Return a JSON object's parsed content."""
        return storage.read_json(self.bucket, key)

    def lines(self, key: str, sha256: str | None = None) -> Iterator[bytes]:
        """Stream a gzip object's lines, never holding it whole; checked with ``sha256``."""
        return sweep.key_lines(storage.open_stream(self.bucket, key, sha256),
                               f"s3://{self.bucket}/{key}")


class DirectoryStore:
    """A local copy of the ingestion bucket (``make demo`` leaves one in ``.demo/s3``)."""

    def __init__(self, root: Path):
        """Read from the directory ``root`` (object keys are paths under it)."""
        self.root = Path(root)

    def read_json(self, key: str) -> Any:
        """Return a JSON object's parsed content, checked as the bucket's are (its seal)."""
        path = self.root / key
        return storage.parse_json(path.read_bytes(), str(path))

    def lines(self, key: str, sha256: str | None = None) -> Iterator[bytes]:
        """Stream a gzip file's lines, checked with ``sha256`` as the bucket's objects are."""
        raw = storage.checked_file(self.root, key, sha256)
        try:
            yield from sweep.key_lines(raw, str(self.root / key))
        finally:
            raw.close()


# --------------------------------------------------------------------------- capture point

@dataclass(frozen=True)
class CapturePoint:
    """What the warehouse has loaded: the newest loaded manifest's key and its ingest manifest."""

    manifest_key: str | None
    manifest: IngestManifest | None

    def cursor(self, table: str) -> TableCursor | None:
        """Where capture of ``table`` stands: its rows not seen from here on are in flight.

        None before the first load (nothing captured). In snapshot capture, the
        table's own cursor. In log-based capture, once the slot is read, the table
        cursors stay at the backfill's snapshot; a run that read the slot to its end
        has captured every transaction its snapshot (taken before the read) sees,
        so that snapshot is the floor. A run cut short by its row budget keeps the
        table cursor: more in flight, never a false mismatch.
        """
        manifest = self.manifest
        if manifest is None:
            return None
        logical = manifest.logical
        if (logical is not None and logical.backfilled and manifest.complete
                and manifest.snapshot is not None):
            return TableCursor(since=manifest.snapshot)
        return manifest.table(table).cursor


class CapturePointError(errors.InputError, RuntimeError):
    """The ingest manifest the warehouse says it loaded is not the one the bucket holds.

    Configuration, not chance: the audit reads another pipeline's bucket (or the
    warehouse was restored from another environment). A person must act.
    """


class ManifestWalkError(errors.InputError, RuntimeError):
    """The chain of ``previous_manifest`` back to a key sweep is longer than :data:`MAX_WALK`.

    Each step is checked to go strictly back in time, so the chain cannot loop;
    one this long means a sweep far older than any interval in use, or manifests
    that were forged. A person must look at the manifests named.
    """


def _recorded_snapshot(conn: pg8000.native.Connection, key: str) -> str | None:
    """The capture snapshot the load recorded with ``key`` (None before loads recorded it)."""
    recorded = conn.run("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE "
                        "table_schema = 'etl' AND table_name = 'loaded_manifest' "
                        "AND column_name = 'capture_snapshot')")[0][0]
    if not recorded:
        return None
    snapshot: str | None = conn.run('SELECT "capture_snapshot" FROM "etl"."loaded_manifest" '
                                    'WHERE "manifest_key" = :k', k=key)[0][0]
    return snapshot


def capture_point(conn: pg8000.native.Connection, store: ObjectStore) -> CapturePoint:
    """Read the newest loaded manifest's key from the warehouse and its ingest manifest.

    The ingest manifest is needed even where the load records the capture snapshot:
    it alone holds each table's capture cursor (a backfill's resume key included)
    and newest key sweep. The recorded snapshot must equal the manifest's, or the
    audit is reading another pipeline's bucket and every verdict would be wrong.
    """
    exists = conn.run("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
                      "WHERE schemaname = 'etl' AND tablename = 'loaded_manifest')")[0][0]
    key = warehouse.last_loaded_key(conn) if exists else None
    if key is None:
        return CapturePoint(None, None)
    manifest = IngestManifest.read(store.read_json(key), key)
    recorded = _recorded_snapshot(conn, key)
    if recorded is not None and manifest.snapshot is not None and recorded != str(
            manifest.snapshot):
        raise CapturePointError(
            f"the warehouse loaded {key} at snapshot {recorded}, but the ingestion bucket's "
            f"manifest says {manifest.snapshot}: is the audit reading the bucket this warehouse "
            "is loaded from?")
    return CapturePoint(key, manifest)


def _runs_after_sweep(store: ObjectStore, point: CapturePoint,
                      sweep_run: str) -> Iterator[IngestManifest]:
    """The loaded ingest manifests newer than the sweep's run, newest first.

    Each manifest is read with its references checked (its ``previous_manifest``
    strictly before it), so the walk only goes back in time, and it stops with
    :class:`ManifestWalkError` after :data:`MAX_WALK` manifests.
    """
    sweep_key = keys.manifest_key(keys.parse_run_id(sweep_run))
    key, manifest = point.manifest_key, point.manifest
    walked = 0
    while key is not None and key > sweep_key and manifest is not None:
        yield manifest
        walked += 1
        key = manifest.previous_manifest
        if key is None or key <= sweep_key:
            return
        if walked >= MAX_WALK:
            raise ManifestWalkError(
                f"{point.manifest_key}: more than {MAX_WALK:,} manifests back to the key sweep "
                f"of run {sweep_run} (stopped at {key}); the audit compared nothing")
        manifest = IngestManifest.read(store.read_json(key), key)


def _stored_keys(store: ObjectStore, key: str, sha256: str | None = None) -> Iterator[int]:
    for block in sweep.parse_blocks(store.lines(key, sha256), key):
        yield from block


def deleted_in_flight(store: ObjectStore, point: CapturePoint, table: str,
                      candidates: Iterable[int]) -> set[int]:
    """Of ``candidates`` (keys gone from the source), those whose deletion is still in flight.

    A key is in flight when it was in the newest loaded sweep of ``table`` or was
    captured by a loaded run after that sweep (each run stores the keys it
    captured for the next sweep): the next sweep records its deletion. Key lists
    are streamed block by block and checked against the few candidates.
    """
    remaining = set(candidates)
    state = point.manifest.table(table).sweep if point.manifest is not None else None
    if not remaining or state is None:
        return set()
    runs = _runs_after_sweep(store, point, state.run_id)
    entries = [manifest.table(table) for manifest in runs]
    lists = [(state.key, state.sha256),
             *((entry.captured_keys, entry.captured_keys_sha256) for entry in entries)]
    return {key for listed, sha256 in lists if listed
            for key in _stored_keys(store, listed, sha256) if key in remaining}


# --------------------------------------------------------------------------- comparison

class Segments(Protocol):
    """What :func:`compare` asks of each side: keys, hashed segments, leaves and example keys.

    A database relation (:class:`Side`) answers with queries; the lake
    (:class:`totes.audit_lake.HashedRows`) from the row hashes of its scan. Both leave
    out the keys in flight they were given, and count what they did.
    """

    queries: int
    rows_fetched: int

    def bounds(self) -> tuple[int | None, int | None]:
        """Smallest and greatest key."""

    def segments(self, low: int, high: int, step: int) -> dict[int, tuple[int, Any]]:
        """Segment number -> (rows, sum of row hashes) over ``[low, high]``, ``step`` keys each."""

    def hashes(self, low: int, high: int) -> dict[int, int]:
        """Key -> row hash over ``[low, high]`` (a leaf)."""

    def keys(self, low: int, high: int, limit: int) -> list[int]:
        """At most ``limit`` keys over ``[low, high]``."""


class Target(Protocol):
    """What the source is compared with: the warehouse, or the lake.

    It gives each compared table (named as in the warehouse) as :class:`Segments`
    rendering every row to the canonical text of :mod:`totes.audit_sql`, so one
    comparison and one set of in-flight rules serve both.
    """

    def side(self, name: str, skip: list[int]) -> Segments:
        """The target's rows of ``name``, leaving out the keys in ``skip`` (rows in flight)."""


class Side:
    """One database's view of a relation, counting the queries it runs and the rows it returns."""

    def __init__(self, conn: pg8000.native.Connection, relation: audit_sql.Relation,
                 skip: list[int]):
        """Compare ``relation`` on ``conn``, leaving out the keys in ``skip`` (rows in flight)."""
        self.conn = conn
        self.relation = relation
        self.skip = skip
        self.queries = 0
        self.rows_fetched = 0

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        """Run one query with the relation's own parameters (and the skipped keys if any)."""
        if self.skip and ":skip" in sql:
            params["skip"] = self.skip
        rows: list[list[Any]] = self.conn.run(sql, **self.relation.params, **params)
        self.queries += 1
        self.rows_fetched += len(rows)
        return rows

    def bounds(self) -> tuple[int | None, int | None]:
        """Smallest and greatest key."""
        low, high = self.run(audit_sql.bounds_sql(self.relation))[0]
        return low, high

    def segments(self, low: int, high: int, step: int) -> dict[int, tuple[int, Any]]:
        """Segment number -> (rows, sum of row hashes) over ``[low, high]``, ``step`` keys each."""
        rows = self.run(audit_sql.segments_sql(self.relation, bool(self.skip)),
                        lo=low, hi=high, step=step)
        return {segment: (count, total) for segment, count, total in rows}

    def hashes(self, low: int, high: int) -> dict[int, int]:
        """Key -> row hash over ``[low, high]`` (a leaf)."""
        rows = self.run(audit_sql.rows_sql(self.relation, bool(self.skip)), lo=low, hi=high)
        return {key: digest for key, digest in rows}

    def keys(self, low: int, high: int, limit: int) -> list[int]:
        """At most ``limit`` keys over ``[low, high]``."""
        rows = self.run(audit_sql.keys_sql(self.relation, bool(self.skip)),
                        lo=low, hi=high, limit=limit)
        return [row[0] for row in rows]


@dataclass
class Counts:
    """What comparing a table's two sides counts: the comparison's and the table audit's own."""

    source_rows: int = 0
    warehouse_rows: int = 0
    missing: int = 0
    different: int = 0
    approximate: bool = False

    def counts(self) -> dict[str, Any]:
        """Just these counts, to start a :class:`TableAudit` from a comparison's."""
        return {count.name: getattr(self, count.name) for count in fields(Counts)}


@dataclass
class Differences(Counts):
    """What a comparison found: counts, and the keys behind them (bounded by the leaf budget)."""

    #: warehouse rows the source lacks, key by key (to be told in flight or not).
    extra_keys: list[int] = field(default_factory=list)
    #: warehouse-only rows of segments too large to resolve within the budget.
    extra_unresolved: int = 0
    missing_keys: list[int] = field(default_factory=list)
    different_keys: list[int] = field(default_factory=list)


class WarehouseTarget:
    """The warehouse as a :class:`Target`: its dimensions and its facts' ``*_current`` views."""

    def __init__(self, conn: pg8000.native.Connection):
        """Compare on ``conn`` (inside the audit's read-only snapshot)."""
        self.conn = conn

    def side(self, name: str, skip: list[int]) -> Segments:
        """``name`` as the warehouse holds it, hashed by the warehouse itself."""
        return Side(self.conn, audit_sql.warehouse_relation(name), skip)


def _range_of(low: int, high: int, step: int, segment: int) -> tuple[int, int]:
    first = low + segment * step
    return first, min(high, first + step - 1)


def compare(source: Segments, target: Segments, *, fanout: int = FANOUT, leaf_rows: int = LEAF_ROWS,
            max_leaf_rows: int = MAX_LEAF_ROWS) -> Differences:
    """Compare two sides by hashed key-range segments, descending only where they differ."""
    found = Differences()
    ends = [end for end in (*source.bounds(), *target.bounds()) if end is not None]
    if not ends:
        return found
    pending = [(min(ends), max(ends))]
    budget = max_leaf_rows
    top = True
    while pending:
        low, high = pending.pop()
        step = -(-(high - low + 1) // fanout)
        ours, theirs = source.segments(low, high, step), target.segments(low, high, step)
        if top:
            found.source_rows = sum(count for count, _ in ours.values())
            found.warehouse_rows = sum(count for count, _ in theirs.values())
            top = False
        for segment in sorted(set(ours) | set(theirs), reverse=True):
            here, there = ours.get(segment, (0, 0)), theirs.get(segment, (0, 0))
            if here == there:
                continue
            first, last = _range_of(low, high, step, segment)
            if there[0] == 0:
                found.missing += here[0]
                room = MAX_EXAMPLES - len(found.missing_keys)
                if room > 0:
                    found.missing_keys += source.keys(first, last, room)
            elif max(here[0], there[0]) > leaf_rows and step > 1:
                pending.append((first, last))
            elif here[0] + there[0] > budget:
                found.approximate = True
                found.missing += max(0, here[0] - there[0])
                found.extra_unresolved += max(0, there[0] - here[0])
                found.different += min(here[0], there[0])
            else:
                budget -= here[0] + there[0]
                _compare_leaf(source.hashes(first, last), target.hashes(first, last), found)
    return found


def _compare_leaf(ours: dict[int, int], theirs: dict[int, int], found: Differences) -> None:
    for key, digest in ours.items():
        if key not in theirs:
            found.missing += 1
            found.missing_keys.append(key)
        elif theirs[key] != digest:
            found.different += 1
            found.different_keys.append(key)
    found.extra_keys += [key for key in theirs if key not in ours]


# --------------------------------------------------------------------------- per table

@dataclass
class TableAudit(Counts):
    """The audit of one warehouse table: the comparison's counts, its in-flight rows told apart."""

    extra: int = 0
    in_flight: int = 0
    #: rows kept by design without a source row now (a deleted dimension member, an unused date).
    retained: int = 0
    examples: list[Any] = field(default_factory=list)
    #: False when too much of the table is in flight to compare (a backfill in progress).
    compared: bool = True
    queries: int = 0
    rows_fetched: int = 0

    @property
    def mismatches(self) -> int:
        """Differences that are not in flight: the number the alarm watches."""
        return self.missing + self.extra + self.different

    def to_json(self) -> dict[str, Any]:
        """Counts and example keys (never row values)."""
        return {
            "source_rows": self.source_rows, "warehouse_rows": self.warehouse_rows,
            "missing": self.missing, "extra": self.extra, "different": self.different,
            "in_flight": self.in_flight, "retained": self.retained,
            "examples": [value.isoformat() if isinstance(value, date) else value
                         for value in self.examples],
            "compared": self.compared, "approximate": self.approximate,
            "queries": self.queries, "rows_fetched": self.rows_fetched,
        }


def _examples(*groups: list[Any]) -> list[Any]:
    examples: list[Any] = []
    for group in groups:
        examples += group[:MAX_EXAMPLES - len(examples)]
    return examples


def in_flight_predicate(name: str, point: CapturePoint, read_point: ReadPoint,
                        params: dict[str, Any]) -> str:
    """The predicate on the source side of ``name`` selecting the rows in flight."""
    return " OR ".join(
        audit_sql.in_flight_sql(alias, table, point.cursor(table), read_point.snapshot, params)
        for alias, table in audit_sql.source_aliases(name).items())


def audit_table(name: str, source_conn: pg8000.native.Connection, target: Target,
                point: CapturePoint, read_point: ReadPoint, store: ObjectStore) -> TableAudit:
    """Compare one table (not ``dim_date``) of ``target`` with what the source says it should hold.

    ``point`` is the target's own capture point: what the source changed after it
    is in flight, whether the target is the warehouse or the lake.
    """
    relation = audit_sql.source_relation(name)
    params: dict[str, Any] = {}
    predicate = in_flight_predicate(name, point, read_point, params)
    flight = source_conn.run(audit_sql.in_flight_keys_sql(relation, predicate),
                             **relation.params, **params, limit=MAX_IN_FLIGHT + 1)
    if len(flight) > MAX_IN_FLIGHT or point.manifest is None:
        total = source_conn.run(audit_sql.count_sql(relation, predicate),
                                **relation.params, **params)[0][0]
        return TableAudit(in_flight=total, compared=False, queries=2)
    skip = [row[0] for row in flight]
    source = Side(source_conn, relation, skip)
    theirs = target.side(name, skip)
    found = compare(source, theirs)
    result = TableAudit(
        **found.counts(), in_flight=len(skip), queries=1 + source.queries + theirs.queries,
        rows_fetched=len(skip) + source.rows_fetched + theirs.rows_fetched)
    extra_keys = found.extra_keys
    if TABLES[name].kind == "fact":
        gone = deleted_in_flight(store, point, audit_sql.source_table(name), extra_keys)
        result.in_flight += len(gone)
        extra_keys = [key for key in extra_keys if key not in gone]
        result.extra = len(extra_keys) + found.extra_unresolved
    else:
        result.retained = len(extra_keys) + found.extra_unresolved
        extra_keys = []
    result.examples = _examples(found.missing_keys, extra_keys, found.different_keys)
    return result


def audit_dim_date(conn: pg8000.native.Connection) -> TableAudit:
    """Check ``dim_date`` inside the warehouse: every date a fact uses, with the right attributes.

    The expected attributes are the load's own derivation from the date
    (:data:`totes.warehouse.DATE_ATTRIBUTES`, equal to the transform's tables).
    """
    queries = audit_sql.dim_date_sql(warehouse.DATE_ATTRIBUTES)
    counts = {name: conn.run(queries[name])[0][0] for name in ("used", "rows")}
    examples = {}
    for name in ("missing", "unused", "different"):
        key, tail = queries[name]
        counts[name] = conn.run(f"SELECT count(*) {tail}")[0][0]
        examples[name] = [row[0] for row in conn.run(
            f"SELECT {key} {tail} ORDER BY 1 LIMIT CAST(:limit AS bigint)",
            limit=MAX_EXAMPLES)]
    return TableAudit(source_rows=counts["used"], warehouse_rows=counts["rows"],
                      missing=counts["missing"], different=counts["different"],
                      retained=counts["unused"], queries=8,
                      examples=_examples(examples["missing"], examples["different"]))


# --------------------------------------------------------------------------- the lake

#: the lake's audit compared its tables with the source.
LAKE_COMPARED = "compared"
#: the audit has no lake to compare (no ``LAKE_DATABASE``): only the warehouse is audited.
LAKE_NOT_CONFIGURED = "not configured"
#: the lake is configured but no publish has completed a manifest yet: nothing to compare.
LAKE_NEVER_PUBLISHED = "never published"
#: the lake could not be read (logged at ERROR, which its alarm watches); the warehouse's verdict
#: stands.
LAKE_FAILED = "failed"
#: how far the lake's capture point is behind the warehouse's, in seconds of capture time:
#: ``LakeLagAlarm`` fires when it exceeds two publish intervals and 30 minutes.
LAKE_LAG_METRIC = "LakeLagSeconds"
#: how a lake audit that failed is logged.
LAKE_NOT_COMPARED = "lake audit failed; the lake not compared (the warehouse's verdict stands)"


class LakeReader(Protocol):
    """Where the lake stands and its tables, read before the source snapshot is taken."""

    def open(self, store: ObjectStore) -> tuple[CapturePoint, Target | None]:
        """The lake's capture point and its tables (None before the first publish)."""


@dataclass
class LakeAudit:
    """The lake's audit: its dimensions and current facts against the source.

    Judged against the lake's own capture point (the newest manifest a publish
    completed), so what the warehouse has loaded but publish has not yet
    published is in flight, as the warehouse's unloaded changes are.
    """

    status: str
    capture_point: str | None = None
    tables: dict[str, TableAudit] = field(default_factory=dict)
    #: how far the lake's capture point is behind the warehouse's, in seconds of capture time
    #: (negative when publish is ahead of load; for a lake never published, from the oldest
    #: manifest loaded): reported, never a mismatch by itself.
    lag_seconds: float | None = None

    @property
    def mismatches(self) -> int:
        """Differences that are not in flight, all lake tables (added to the alarmed metric)."""
        return sum(table.mismatches for table in self.tables.values())

    @property
    def in_flight(self) -> int:
        """Source rows in flight for the lake, all tables."""
        return sum(table.in_flight for table in self.tables.values())

    def to_json(self) -> dict[str, Any]:
        """The lake's part of the summary: per lake table (``fact_*_current``), counts and keys."""
        tables = {}
        for name, table in self.tables.items():
            counts = table.to_json()
            counts["lake_rows"] = counts.pop("warehouse_rows")
            tables[lake_table_name(name)] = counts
        return {"status": self.status, "capture_point": self.capture_point,
                "lag_seconds": self.lag_seconds, "mismatches": self.mismatches,
                "in_flight": self.in_flight, "tables": tables}


def lake_table_name(name: str) -> str:
    """The lake table a warehouse table is compared as: a fact's ``*_current`` table."""
    return f"{name}_current" if TABLES[name].kind == "fact" else name


def lag_seconds(warehouse_key: str | None, lake_key: str | None) -> float | None:
    """Capture time between two capture points' manifests (None unless both are manifests)."""
    runs = [None if key is None else keys.parse_manifest_key(key)
            for key in (warehouse_key, lake_key)]
    if runs[0] is None or runs[1] is None:
        return None
    return (runs[0].started_at - runs[1].started_at).total_seconds()


@dataclass(frozen=True)
class LakeState:
    """The lake as opened before the source snapshot: whether to compare, from where, with what."""

    status: str
    point: CapturePoint = CapturePoint(None, None)
    target: Target | None = None


def open_lake(lake: LakeReader | None, store: ObjectStore) -> LakeState:
    """Read the lake's capture point and open its tables; a lake that cannot be read is logged.

    Never raises for the lake: its failure is an ERROR line (alarmed) and a status,
    and the warehouse's audit goes on.
    """
    if lake is None:
        return LakeState(LAKE_NOT_CONFIGURED)
    try:
        point, target = lake.open(store)
    except Exception:
        observability.service_logger().exception(LAKE_NOT_COMPARED)
        return LakeState(LAKE_FAILED)
    if target is None or point.manifest is None:
        return LakeState(LAKE_NEVER_PUBLISHED)
    return LakeState(LAKE_COMPARED, point, target)


def audit_lake(state: LakeState, warehouse_key: str | None,
               source_conn: pg8000.native.Connection, read_point: ReadPoint,
               store: ObjectStore, first_loaded_key: str | None = None) -> LakeAudit:
    """Compare the lake's tables with the source at the lake's capture point (if it is open).

    A failure while comparing is logged like one while opening, and reported as
    ``failed``: the warehouse's tables were compared already. A lake never
    published still has a lag, so that ``LakeLagAlarm`` hears of a publish broken
    or disabled from the first day: it lacks everything the warehouse holds, so it
    is at least as far behind as the oldest manifest loaded (``first_loaded_key``).
    """
    if state.target is None:
        return LakeAudit(state.status, lag_seconds=lag_seconds(warehouse_key, first_loaded_key)
                         if state.status == LAKE_NEVER_PUBLISHED else None)
    point, target = state.point, state.target
    lag = lag_seconds(warehouse_key, point.manifest_key)
    try:
        tables = {name: audit_table(name, source_conn, target, point, read_point, store)
                  for name in audit_sql.SEGMENTED}
    except Exception:
        observability.service_logger().exception(LAKE_NOT_COMPARED)
        return LakeAudit(LAKE_FAILED, point.manifest_key, lag_seconds=lag)
    return LakeAudit(LAKE_COMPARED, point.manifest_key, tables, lag)


# --------------------------------------------------------------------------- the whole audit

@dataclass
class AuditReport:
    """The whole audit: per warehouse table, and the capture point it was judged against."""

    compared_at: str
    capture_point: str | None
    tables: dict[str, TableAudit]
    seconds: float = 0.0
    lake: LakeAudit = field(default_factory=lambda: LakeAudit(LAKE_NOT_CONFIGURED))

    @property
    def ok(self) -> bool:
        """True when no table, of the warehouse or the lake, has a difference not in flight."""
        return self.mismatches == 0

    @property
    def mismatches(self) -> int:
        """Differences not in flight, all tables of the warehouse and of the lake."""
        return sum(table.mismatches for table in self.tables.values()) + self.lake.mismatches

    @property
    def in_flight(self) -> int:
        """Rows in flight for the warehouse, all tables (the lake's are in :attr:`lake`)."""
        return sum(table.in_flight for table in self.tables.values())

    def metrics(self) -> Iterator[stage.Metric]:
        """``AuditMismatches`` per table and for the run (alarmed), ``AuditInFlight``, duration.

        The lake's mismatches count in the run's ``AuditMismatches`` (the one alarm);
        per table they are in the report and the log line, not in metrics of their own.
        The lake's lag (:data:`LAKE_LAG_METRIC`, alarmed) is published whenever the lake's
        capture point was read, or the lake was never published while the warehouse holds
        manifests, so a lake that stops advancing, or never starts, shows even when nothing
        in it differs from the source.
        """
        for name, table in self.tables.items():
            yield stage.Metric("AuditMismatches", table.mismatches, table=name)
        yield stage.Metric("AuditMismatches", self.mismatches)
        yield stage.Metric("AuditInFlight", self.in_flight)
        yield stage.Metric("AuditRunDuration", self.seconds, MetricUnit.Seconds)
        if self.lake.lag_seconds is not None:
            yield stage.Metric(LAKE_LAG_METRIC, self.lake.lag_seconds, MetricUnit.Seconds)

    def response(self) -> dict[str, Any]:
        """The handler's response: the summary."""
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        """The summary the handler returns and logs (keys only, never row values)."""
        return {"ok": self.ok, "compared_at": self.compared_at,
                "capture_point": self.capture_point, "mismatches": self.mismatches,
                "in_flight": self.in_flight, "seconds": round(self.seconds, 3),
                "tables": {name: table.to_json() for name, table in self.tables.items()},
                "lake": self.lake.to_json()}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def audit_databases(source_conn: pg8000.native.Connection,
                    warehouse_conn: pg8000.native.Connection, store: ObjectStore, *,
                    tables: Iterable[str] = tuple(TABLES),
                    lake: LakeReader | None = None) -> AuditReport:
    """Audit ``tables`` (every warehouse table by default) in one snapshot of each database.

    The warehouse snapshot is taken first and the capture point read in it, then
    the lake's capture point and tables (``lake``, when there is one), then the
    source snapshot: a change a target has not loaded (or published) is in flight
    by the time the source is read, never compared against a stale target.
    """
    started = _now()
    warehouse_conn.run("START TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        point = capture_point(warehouse_conn, store)
        lake_state = open_lake(lake, store)
        results: dict[str, TableAudit] = {}
        with source_snapshot(source_conn) as read_point:
            for name in tables:
                if name == "dim_date":
                    if point.manifest is not None:
                        results[name] = audit_dim_date(warehouse_conn)
                    else:
                        results[name] = TableAudit(compared=False)
                else:
                    results[name] = audit_table(name, source_conn,
                                                WarehouseTarget(warehouse_conn), point,
                                                read_point, store)
            first_loaded = (warehouse.first_loaded_key(warehouse_conn)
                            if lake_state.status == LAKE_NEVER_PUBLISHED
                            and point.manifest_key is not None else None)
            lake_audit = audit_lake(lake_state, point.manifest_key, source_conn, read_point,
                                    store, first_loaded)
    except BaseException:
        with suppress(Exception):  # a broken connection: the error worth raising is the first
            warehouse_conn.run("ROLLBACK")
        raise
    warehouse_conn.run("ROLLBACK")  # read only: nothing to commit
    report = AuditReport(timestamps.instant_text(started), point.manifest_key, results,
                         lake=lake_audit)
    report.seconds = (_now() - started).total_seconds()
    return report


#: how a failed audit is logged (before its kind is, by the handler's instrumentation).
NOTHING_COMPARED = "audit failed; nothing compared"


@dataclass(frozen=True)
class AuditSettings:
    """Everything an audit needs to know about its environment, read once at its start."""

    ingest_bucket: str
    totesys_secret_id: str
    warehouse_secret_id: str
    #: the lake to audit too; None where no lake is deployed (``LAKE_DATABASE`` unset).
    lake: "LakeSettings | None" = None

    @classmethod
    def from_environment(cls) -> "AuditSettings":
        """Read the settings from the Lambda environment, failing early on a missing one."""
        return cls(ingest_bucket=config.ingest_bucket(),
                   totesys_secret_id=config.totesys_secret_id(),
                   warehouse_secret_id=config.warehouse_secret_id(),
                   lake=LakeSettings.from_environment() if config.lake_configured() else None)


@dataclass(frozen=True)
class LakeSettings:
    """Where the lake is: the publish's settings, read by the audit (which writes nothing)."""

    #: where the operators' markers are (which revision is in force decides the capture point).
    processed_bucket: str
    lake_bucket: str
    lake_database: str

    @classmethod
    def from_environment(cls) -> "LakeSettings":
        """Read the lake's settings, failing early on a missing one."""
        return cls(processed_bucket=config.processed_bucket(), lake_bucket=config.lake_bucket(),
                   lake_database=config.lake_database())


def log_report(report: AuditReport) -> None:
    """Log the verdict with the whole summary: INFO when clean, WARNING naming the tables.

    Lake tables are named ``lake.<table>``; a lake not compared is said so, once.
    """
    logger = observability.service_logger()
    summary = report.to_json()
    if report.lake.status != LAKE_COMPARED:
        logger.info(f"the lake was not audited: {report.lake.status}")
    if report.ok:
        logger.info("audit clean: the warehouse matches the source"
                    + (" and so does the lake" if report.lake.status == LAKE_COMPARED else ""),
                    extra={"audit": summary})
    else:
        mismatched = sorted(name for name, table in report.tables.items() if table.mismatches)
        mismatched += sorted(f"lake.{lake_table_name(name)}"
                             for name, table in report.lake.tables.items() if table.mismatches)
        logger.warning(f"audit found {report.mismatches} mismatch(es) in "
                       f"{', '.join(mismatched)}", extra={"audit": summary})


def run_audit(settings: AuditSettings, deadline: stage.Deadline) -> AuditReport:
    """Connect to both databases with their secrets, audit (the lake too, if any), log the verdict.

    Every database wait is bounded by the invocation's remaining time (a segment
    query scans a whole table). A failure is logged once and raised: an audit
    that could not compare must never read as clean; one because a server ended
    the session is transient (:func:`totes.db.interruptions_are_transient`).
    """
    source = target = None
    try:
        with db.interruptions_are_transient("source or warehouse"):
            timeout = deadline.remaining()
            source = db.connect(settings.totesys_secret_id, timeout=timeout,
                                database=config.TOTESYS)
            target = db.connect(settings.warehouse_secret_id, timeout=timeout,
                                database=config.WAREHOUSE)
            lake = None
            if settings.lake is not None:
                from totes import audit_lake  # pyiceberg: imported only where a lake is audited

                lake = audit_lake.IcebergLake(settings.lake)
            report = audit_databases(source, target, BucketStore(settings.ingest_bucket),
                                     lake=lake)
    except Exception:
        observability.service_logger().exception(NOTHING_COMPARED)
        raise
    finally:
        for conn in (source, target):
            if conn is not None:
                db.close_quietly(conn)
    log_report(report)
    return report
