"""Warehouse writes: schema, COPY staging, dimension upserts, fact versions and bookkeeping.

Every statement is built from :mod:`totes.warehouse_schema` (the allow-list of
tables and columns), identifiers quoted, values bound. Data only moves in bulk:
Arrow record batches become CSV and stream through ``COPY ... FROM STDIN`` into a
temporary staging table, and one ``INSERT ... SELECT`` per table moves them into
place. Fact record ids are assigned in staging (capture) order, which is what
makes the highest record id of a business id its latest version. Nothing here
commits on its own except :func:`ensure_schema`; the caller wraps one manifest in
:func:`transaction` so the rows and their record in ``etl.loaded_manifest``
commit together or not at all.

A migration (:func:`ensure_schema`) first compares the live catalog with the
contract and refuses, before any DDL, a difference it cannot apply in place
(:class:`SchemaMismatchError`); its DDL then waits at most
:data:`MIGRATION_LOCK_TIMEOUT_MS` for each lock (:class:`MigrationLockTimeoutError`),
and the fingerprint is recorded in the transaction that applied all of it.
"""
import hashlib
import io
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import pg8000.native

from totes import timestamps
from totes.db import quote_ident, server_fields
from totes.errors import InputError, TransientError
from totes.observability import service_logger
from totes.warehouse_schema import (CATALOG_TYPES, CURRENT_VIEWS, DELETIONS, FACTS, SQL_TYPES,
                                    TABLES, Column, Table, schema_sql)

if TYPE_CHECKING:  # imported where used at run time, from the AWS SDK for pandas layer
    import pyarrow as pa

#: advisory lock key (``'totes'`` in ASCII) serialising loads and migrations.
LOAD_LOCK_ID = 0x746F746573

#: how long each migration statement may wait for a lock (``lock_timeout``, milliseconds):
#: ``ALTER TABLE`` and ``CREATE OR REPLACE VIEW`` queue behind analysts' queries, and every
#: query on the table would queue behind them; past this the migration gives up and the
#: next run retries.
MIGRATION_LOCK_TIMEOUT_MS = 5000

#: SQLSTATE ``lock_not_available``: a lock wait ended by ``lock_timeout``.
LOCK_NOT_AVAILABLE = "55P03"
#: SQLSTATE of a statement the login has no privilege for (insufficient_privilege).
INSUFFICIENT_PRIVILEGE = "42501"

logger = service_logger()

#: what an inferred member's NOT NULL text attributes say until the real row arrives.
UNKNOWN = "Unknown"

#: staging column numbering the rows in file (capture) order: the last duplicate of a key
#: wins, and fact versions are inserted in this order.
ORDINAL = "_ordinal"

#: how ``dim_date`` attributes derive from the date itself (ISO weekday, English names).
DATE_ATTRIBUTES = {
    "date_id": "{d}",
    "year": "extract(year FROM {d})::int",
    "month": "extract(month FROM {d})::int",
    "day": "extract(day FROM {d})::int",
    "day_of_week": "extract(isodow FROM {d})::int",
    "day_name": "to_char({d}, 'FMDay')",
    "month_name": "to_char({d}, 'FMMonth')",
    "quarter": "extract(quarter FROM {d})::int",
}

SCHEMA_FINGERPRINT = hashlib.sha256(";\n".join(schema_sql()).encode()).hexdigest()


#: statement templates: every ``{part}`` is filled with quoted allow-listed identifiers,
#: never with values (those are bound parameters).
_STAGE = "CREATE TEMPORARY TABLE {stage} ({definitions}) ON COMMIT DROP"
_COPY = "COPY {stage} ({columns}) FROM STDIN WITH (FORMAT csv)"
_UPSERT = (
    "INSERT INTO {table} AS t ({columns}) "
    "SELECT DISTINCT ON ({key}) {columns} FROM {stage} ORDER BY {key}, {ordinal} DESC "
    "ON CONFLICT ({key}) DO UPDATE SET {assignments} "
    "WHERE ({current}) IS DISTINCT FROM ({incoming})"
)
_REFERENCED = "SELECT {column} AS k FROM {stage} WHERE {column} IS NOT NULL"
_INFER = (
    "INSERT INTO {table} ({columns}) SELECT {values} FROM ({referenced}) AS referenced "
    "WHERE NOT EXISTS (SELECT 1 FROM {table} AS d WHERE d.{key} = referenced.k) "
    "ON CONFLICT ({key}) DO NOTHING"
)
#: every dimension's inferred members in one statement (one round trip, not one per
#: dimension): each insert a data-modifying CTE, counted. The dimensions are distinct
#: tables, so no insert can see or hinder another's rows.
_INFER_ALL = "WITH {inserts} SELECT {counts}"
_INFER_ONE = "{name} AS ({insert} RETURNING 1)"
_INFER_COUNT = "(SELECT count(*) FROM {name})"
#: fact versions: the last staged row of each version key, inserted in capture order. A
#: version already present with other values (the source changed a row without changing
#: its ``last_updated``) is corrected in place and given a fresh record id, so it ranks as
#: the latest; so is an identical one that is not its id's latest version (a deletion, or a
#: version the source lost, came after it: the row is back as it was). Re-reading the
#: latest version changes nothing. Counts (inserted, corrected).
_FACT_UPSERT = (
    "WITH written AS ("
    "INSERT INTO {table} AS t ({columns}) "
    "SELECT {columns} FROM (SELECT DISTINCT ON ({unique_key}) {columns}, {ordinal} FROM {stage} "
    "ORDER BY {unique_key}, {ordinal} DESC) AS staged ORDER BY {ordinal} "
    "ON CONFLICT ({unique_key}) DO UPDATE SET {assignments}, "
    "{record_id} = nextval(pg_get_serial_sequence(:fact, :record_id)) "
    "WHERE ({current}) IS DISTINCT FROM ({incoming}) "
    "OR t.{record_id} <> (SELECT max(f.{record_id}) FROM {table} AS f "
    "WHERE f.{business_id} = t.{business_id}) "
    "RETURNING (t.xmax = 0) AS inserted) "
    "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM written"
)
#: deletion versions: for each staged id (the first record of it), a copy of its latest
#: version (highest record id) with ``is_deleted`` and the detection time as last updated;
#: an id with no version, or whose latest version already records a deletion, is skipped.
#: A version already stamped with that time (a row written and deleted within one
#: millisecond, both stamped by log-based capture) becomes the deletion in place, with a
#: fresh record id, as a same-stamp version is corrected; a deletion there already stays.
_DELETE = (
    "INSERT INTO {table} AS t ({columns}) "
    "SELECT {kept}, d.\"last_updated_date\", d.\"last_updated_time\", true "
    "FROM (SELECT DISTINCT ON ({business_id}) {business_id}, \"last_updated_date\", "
    "\"last_updated_time\", {ordinal} FROM {stage} ORDER BY {business_id}, {ordinal}) AS d "
    "JOIN LATERAL (SELECT * FROM {table} AS f WHERE f.{business_id} = d.{business_id} "
    "ORDER BY f.{record_id} DESC LIMIT 1) AS latest ON true "
    "WHERE NOT latest.\"is_deleted\" ORDER BY d.{ordinal} "
    "ON CONFLICT ({unique_key}) DO UPDATE SET {assignments}, \"is_deleted\" = true, "
    "{record_id} = nextval(pg_get_serial_sequence(:fact, :record_id)) "
    "WHERE NOT t.\"is_deleted\""
)


def _sql(template: str, **parts: str) -> str:
    return template.format(**parts)


def _q(name: str) -> str:
    return quote_ident(name)


def _columns(columns: Iterable[Column], prefix: str = "") -> str:
    return ", ".join(prefix + _q(column.name) for column in columns)


def staging_name(table: Table) -> str:
    """Name of the temporary table that stages ``table`` (dropped at commit)."""
    return f"stage_{table.name}"


@contextmanager
def transaction(conn: pg8000.native.Connection) -> Iterator[None]:
    """Run the block in one transaction: commit if it returns, roll back if it raises.

    A failed rollback (the connection died) is ignored: the server has rolled the
    transaction back already, and the error worth reporting is the original one.
    """
    conn.run("START TRANSACTION")
    try:
        yield
    except BaseException:
        with suppress(Exception):  # the connection is gone, and the transaction with it
            conn.run("ROLLBACK")
        raise
    conn.run("COMMIT")


def lock(conn: pg8000.native.Connection) -> None:
    """Take the load lock until the transaction ends; a concurrent load waits here."""
    conn.run("SELECT pg_advisory_xact_lock(:id)", id=LOAD_LOCK_ID)


@dataclass(frozen=True)
class SchemaDifference:
    """One way the live warehouse differs from the contract: where, and what differs."""

    table: str
    column: str | None
    difference: str

    def __str__(self) -> str:
        """``table.column: difference``, as the error message lists it."""
        where = self.table if self.column is None else f"{self.table}.{self.column}"
        return f"{where}: {self.difference}"


class SchemaMismatchError(InputError):
    """The live warehouse differs from the contract in a way the migration must not apply.

    Raised before any DDL ran; nothing was changed and no fingerprint recorded. A
    person decides (restore the column, or change the contract): ``differences``
    names each table and column and what differs.
    """

    def __init__(self, differences: Sequence[SchemaDifference]):
        """List every difference in the message, so one run names them all."""
        self.differences = tuple(differences)
        super().__init__(
            "the warehouse differs from the contract in ways the migration will not apply "
            "in place; nothing was changed or recorded: "
            + "; ".join(str(difference) for difference in self.differences))


class WarehouseAccessError(InputError):
    """The login may not create what load needs: a DBA must grant what docs/deploy.md lists."""


@contextmanager
def _granted(what: str) -> Iterator[None]:
    """Turn a missing privilege on ``what`` into :class:`WarehouseAccessError`.

    A first deploy whose login lacks a grant would otherwise fail as a driver error
    read as a bug, on every run; this names the statements that fix it.
    """
    try:
        yield
    except pg8000.native.DatabaseError as error:
        fields = server_fields(error)
        if fields.get("C") != INSUFFICIENT_PRIVILEGE:
            raise
        raise WarehouseAccessError(
            f"the warehouse login may not {what} ({fields.get('M')}): it needs CONNECT, CREATE and "
            "TEMPORARY on the database and USAGE, CREATE on schema public (docs/deploy.md, "
            "\"The warehouse database and its login\"), and must own the tables and views it "
            "migrates (one another role made: ALTER … OWNER TO the login); a DBA must act"
        ) from error


class MigrationLockTimeoutError(TransientError):
    """A migration statement waited past ``lock_timeout`` for its lock; nothing was applied."""


@dataclass(frozen=True)
class LiveColumn:
    """A column as the catalog has it: ``format_type()`` spelling, NOT NULL, a default."""

    type: str
    not_null: bool
    has_default: bool


@dataclass(frozen=True)
class LiveRelation:
    """A warehouse relation as the catalog has it: ``relkind`` and its columns in order."""

    kind: str
    columns: dict[str, LiveColumn]


#: every relation the contract owns: its tables and its ``*_current`` views.
_CONTRACT_RELATIONS = (*TABLES, *(f"{fact.name}_current" for fact in FACTS))

#: the contract's relations in the schema the warehouse DDL creates them in (the current one);
#: a default, an identity or a generated value all let an insert leave the column out.
_CATALOG = (
    "SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), "
    "a.attnotnull, (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') "
    "FROM pg_catalog.pg_class AS c "
    "JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_catalog.pg_attribute AS a "
    "ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
    "WHERE n.nspname = current_schema() AND c.relname = ANY(CAST(:names AS text[])) "
    "ORDER BY c.relname, a.attnum"
)

_KINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view",
          "f": "foreign table", "S": "sequence", "i": "index", "I": "partitioned index",
          "c": "composite type"}


def live_catalog(conn: pg8000.native.Connection) -> dict[str, LiveRelation]:
    """Return the contract's tables and views that exist, as the catalog has them."""
    relations: dict[str, LiveRelation] = {}
    for name, kind, column, type_, not_null, has_default in conn.run(
            _CATALOG, names=list(_CONTRACT_RELATIONS)):
        relation = relations.setdefault(name, LiveRelation(kind, {}))
        if column is not None:
            relation.columns[column] = LiveColumn(type_, not_null, has_default)
    return relations


def _nullability(not_null: bool) -> str:
    return "NOT NULL" if not_null else "nullable"


def _table_differences(table: Table, live: LiveRelation) -> Iterator[SchemaDifference]:
    """Differences the migration refuses between ``table`` and its live version."""
    if live.kind not in ("r", "p"):
        yield SchemaDifference(table.name, None,
                               f"is a {_KINDS.get(live.kind, live.kind)}, the contract has a table")
        return
    for column in table.columns:
        found = live.columns.get(column.name)
        if found is None:
            if not column.nullable and column.default is None:
                yield SchemaDifference(table.name, column.name, (
                    "missing, and NOT NULL without a default, so it cannot be added to a table "
                    "that has rows (dropped by hand, or a contract column that needs a default)"))
            continue
        expected = CATALOG_TYPES[column.type]
        if found.type != expected:
            yield SchemaDifference(table.name, column.name,
                                   f"type is {found.type}, the contract has {expected}")
        if found.not_null != (not column.nullable):
            yield SchemaDifference(table.name, column.name, (
                f"is {_nullability(found.not_null)}, "
                f"the contract has it {_nullability(not column.nullable)}"))
    for name, found in live.columns.items():
        if name not in table.column_names and found.not_null and not found.has_default:
            yield SchemaDifference(table.name, name, (
                "not in the contract, and NOT NULL without a default: "
                "the load could not insert a row"))


def _view_differences(fact: Table, live: LiveRelation) -> Iterator[SchemaDifference]:
    """Differences ``CREATE OR REPLACE VIEW`` cannot apply: it only appends columns."""
    view = f"{fact.name}_current"
    if live.kind != "v":
        yield SchemaDifference(view, None,
                               f"is a {_KINDS.get(live.kind, live.kind)}, the contract has a view")
        return
    for position, (name, found) in enumerate(live.columns.items()):
        if position >= len(fact.columns) or fact.columns[position].name != name:
            expected = (fact.columns[position].name if position < len(fact.columns)
                        else "no such column")
            yield SchemaDifference(view, name, (
                f"is column {position + 1}, where the contract has {expected}: "
                "a view can only gain columns at the end"))
            return
        expected = CATALOG_TYPES[fact.columns[position].type]
        if found.type != expected:
            yield SchemaDifference(view, name, f"type is {found.type}, the contract has {expected}")


def extra_columns(live: dict[str, LiveRelation]) -> list[SchemaDifference]:
    """Columns added by hand to contract tables that the load can live with (left alone)."""
    return [SchemaDifference(table.name, name, "not in the contract: left as it is")
            for table in TABLES.values() if table.name in live
            for name, found in live[table.name].columns.items()
            if name not in table.column_names and not (found.not_null and not found.has_default)]


def schema_differences(live: dict[str, LiveRelation]) -> list[SchemaDifference]:
    """Every difference between the live warehouse and the contract the migration refuses.

    A contract column must exist with the contract's type and nullability, or be
    addable in place (nullable, or NOT NULL with a default). Tables and views that
    do not exist yet are created, so they differ in nothing.
    """
    differences: list[SchemaDifference] = []
    for table in TABLES.values():
        if table.name in live:
            differences.extend(_table_differences(table, live[table.name]))
    for fact in FACTS:
        if f"{fact.name}_current" in live:
            differences.extend(_view_differences(fact, live[f"{fact.name}_current"]))
    return differences


def check_schema(conn: pg8000.native.Connection) -> None:
    """Raise :class:`SchemaMismatchError` unless the migration can apply the contract in place.

    Columns added by hand that the load can live with are logged and left alone.
    """
    live = live_catalog(conn)
    for extra in extra_columns(live):
        logger.warning("warehouse column not in the contract, left as it is",
                       extra={"table": extra.table, "column": extra.column})
    differences = schema_differences(live)
    if differences:
        raise SchemaMismatchError(differences)


def _run_ddl(conn: pg8000.native.Connection, statement: str, **params: str) -> None:
    """Run one migration statement; a lock not granted within ``lock_timeout`` is transient."""
    try:
        with _granted("create the star schema"):
            conn.run(statement, **params)
    except pg8000.native.DatabaseError as error:
        if server_fields(error).get("C") != LOCK_NOT_AVAILABLE:
            raise
        raise MigrationLockTimeoutError(
            f"schema migration gave up after waiting {MIGRATION_LOCK_TIMEOUT_MS} ms for a lock "
            f"({statement.splitlines()[0][:120]}): other sessions, such as analysts' queries, "
            "hold conflicting locks (see pg_locks); nothing was applied or recorded, "
            "the next run retries") from error


def ensure_schema(conn: pg8000.native.Connection) -> bool:
    """Create or migrate the warehouse unless this exact schema is already applied.

    The DDL is idempotent, but ``ALTER TABLE`` and ``CREATE OR REPLACE VIEW`` take
    exclusive locks that would queue behind analysts' queries on every run; the
    fingerprint in ``etl.schema_version`` makes the usual case a single lookup.

    Before any DDL the live catalog is checked against the contract
    (:func:`check_schema`): a difference the additive migration cannot apply raises
    :class:`SchemaMismatchError`. The DDL then runs with ``lock_timeout``; a lock not
    granted in time raises :class:`MigrationLockTimeoutError`. Either way the
    transaction rolls back and no fingerprint is recorded: it is written only in
    the transaction whose DDL all applied. Returns whether DDL ran.
    """
    if _schema_applied(conn):
        return False
    with transaction(conn):
        lock(conn)
        if _schema_applied(conn):
            return False
        check_schema(conn)
        # after the advisory lock: a concurrent load holding it is waited for, not an error.
        conn.run("SELECT set_config('lock_timeout', :timeout, true)",
                 timeout=f"{MIGRATION_LOCK_TIMEOUT_MS}ms")
        for statement in schema_sql():
            _run_ddl(conn, statement)
        _run_ddl(conn, 'INSERT INTO "etl"."schema_version" ("fingerprint") VALUES (:f)',
                 f=SCHEMA_FINGERPRINT)
    return True


def _schema_applied(conn: pg8000.native.Connection) -> bool:
    # pg_tables, not to_regclass(): the catalog cache behind to_regclass() can miss a
    # table that a concurrent migration committed while this session waited for the lock.
    exists = conn.run("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_tables "
                      "WHERE schemaname = 'etl' AND tablename = 'schema_version')")
    if not exists[0][0]:
        return False
    found = conn.run('SELECT 1 FROM "etl"."schema_version" WHERE "fingerprint" = :f',
                     f=SCHEMA_FINGERPRINT)
    return bool(found)


def last_loaded_key(conn: pg8000.native.Connection) -> str | None:
    """Return the greatest manifest key already loaded (None before the first load)."""
    key: str | None = conn.run('SELECT max("manifest_key") FROM "etl"."loaded_manifest"')[0][0]
    return key


def first_loaded_key(conn: pg8000.native.Connection) -> str | None:
    """Return the oldest manifest key loaded (None before the first load).

    Where a lake that was never published stands: behind everything the warehouse holds.
    """
    key: str | None = conn.run('SELECT min("manifest_key") FROM "etl"."loaded_manifest"')[0][0]
    return key


def is_loaded(conn: pg8000.native.Connection, manifest_key: str) -> bool:
    """Tell whether ``manifest_key`` (or a later one, which implies it) is already loaded."""
    rows = conn.run(
        'SELECT EXISTS (SELECT 1 FROM "etl"."loaded_manifest" WHERE "manifest_key" >= :k)',
        k=manifest_key,
    )
    loaded: bool = rows[0][0]
    return loaded


def record_manifest(conn: pg8000.native.Connection, manifest_key: str, run_id: str,
                    ingest_started_at: datetime | None, rows_loaded: int,
                    capture_snapshot: str | None = None,
                    database_time: datetime | None = None, *,
                    processed_key: str | None = None, skipped_by: str | None = None) -> None:
    """Record ``manifest_key`` as loaded, inside the transaction that loaded its rows.

    With it goes the capture point of its ingest run (the source snapshot and the
    database's clock then), so the warehouse can say which source state it holds,
    the processed manifest it came from when that is another revision's, and the
    operator's skip marker when it was passed over.
    """
    conn.run(
        'INSERT INTO "etl"."loaded_manifest" ("manifest_key", "run_id", "ingest_started_at", '
        '"rows_loaded", "capture_snapshot", "database_time", "processed_key", "skipped_by") '
        "VALUES (:k, :r, :s, :n, :snapshot, CAST(:t AS timestamp(3)), :processed, :skipped)",
        k=manifest_key, r=run_id, s=ingest_started_at, n=rows_loaded,
        snapshot=capture_snapshot,
        t=None if database_time is None else timestamps.database_text(database_time),
        processed=None if processed_key == manifest_key else processed_key,
        skipped=skipped_by,
    )


def loaded_revisions(conn: pg8000.native.Connection,
                     since: str) -> list[tuple[str, str]]:
    """Each manifest loaded from ``since`` on, with the processed manifest it was loaded from."""
    rows: list[tuple[str, str]] = [
        (key, processed or key) for key, processed in conn.run(
            'SELECT "manifest_key", "processed_key" FROM "etl"."loaded_manifest" '
            'WHERE "manifest_key" >= :k ORDER BY "manifest_key"', k=since)]
    return rows


def create_staging(conn: pg8000.native.Connection, table: Table) -> None:
    """Create the empty staging table for ``table``: its data columns, no constraints.

    An ordinal filled in COPY order decides between two rows of the same key in
    one batch (the last wins) and orders the fact versions as they were captured.
    """
    definitions = [f"{_q(column.name)} {SQL_TYPES[column.type]}"
                   for column in table.data_columns]
    definitions.append(f"{_q(ORDINAL)} bigserial")
    with _granted("create temporary tables"):
        conn.run(_sql(_STAGE, stage=_q(staging_name(table)), definitions=", ".join(definitions)))


def csv_chunks(batches: Iterable["pa.RecordBatch"]) -> Iterator[bytes]:
    """Render Arrow record batches as headerless CSV, one chunk per batch.

    Arrow quotes every string and writes NULL as an unquoted empty field, which is
    exactly how PostgreSQL's CSV COPY tells NULL from ``''``; decimals, dates and
    millisecond times are written as exact text.
    """
    import pyarrow.csv

    options = pyarrow.csv.WriteOptions(include_header=False)
    for batch in batches:
        buffer = io.BytesIO()
        pyarrow.csv.write_csv(batch, buffer, options)
        yield buffer.getvalue()


class _Guarded:
    """Iterate chunks for COPY; an error in the source ends the stream and is kept.

    Raising inside pg8000's COPY loop would leave the protocol mid-COPY; ending the
    stream cleanly keeps the connection usable, and :meth:`check` re-raises after.
    """

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = chunks
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks
        except Exception as error:  # noqa: B902 - re-raised by check()
            self.error = error

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def copy_into_staging(conn: pg8000.native.Connection, table: Table,
                      batches: Iterable["pa.RecordBatch"]) -> int:
    """Stream ``batches`` (columns in contract order) into the staging table; return rows.

    Memory holds one batch at a time. If reading a batch fails, the error is raised
    after the COPY ends, and the caller's transaction rolls the partial rows back.
    """
    stream = _Guarded(csv_chunks(batches))
    conn.run(_sql(_COPY, stage=_q(staging_name(table)), columns=_columns(table.data_columns)),
             stream=stream)
    stream.check()
    written: int = conn.row_count
    return written


def upsert_dimension(conn: pg8000.native.Connection, table: Table) -> int:
    """Insert new members and overwrite changed ones from staging; return rows written.

    Unchanged rows are not rewritten (no dead tuples, no row count), and an inferred
    member is overwritten like any other row once its real values arrive.
    """
    attributes = [c for c in table.data_columns if c.name != table.primary_key]
    conn.run(_sql(
        _UPSERT, table=_q(table.name), columns=_columns(table.data_columns),
        key=_q(table.primary_key), stage=_q(staging_name(table)), ordinal=_q(ORDINAL),
        assignments=", ".join(f"{_q(c.name)} = EXCLUDED.{_q(c.name)}" for c in attributes),
        current=_columns(attributes, "t."), incoming=_columns(attributes, "EXCLUDED."),
    ))
    written: int = conn.row_count
    return written


def _referencing_columns(fact: Table) -> dict[str, list[Column]]:
    references: dict[str, list[Column]] = {}
    for column in fact.data_columns:
        if column.references:
            references.setdefault(column.references, []).append(column)
    return references


def inferred_member_values(dimension: Table) -> dict[str, str]:
    """SQL expressions (over ``referenced.k``, the key) for an inferred member's columns."""
    if dimension.name == "dim_date":
        return {column.name: DATE_ATTRIBUTES[column.name].format(d="referenced.k")
                for column in dimension.columns}
    values = {dimension.primary_key: "referenced.k"}
    for column in dimension.columns:
        if column.name == dimension.primary_key or column.nullable:
            continue
        if column.type != "text":
            raise ValueError(f"{dimension.name}.{column.name} needs an inferred-member value")
        values[column.name] = ":unknown"
    return values


def add_inferred_members(conn: pg8000.native.Connection, fact: Table) -> dict[str, int]:
    """Give every dimension key the staged facts reference a row; return rows added per table.

    A missing ``dim_date`` row is derived from the date itself; any other missing
    member gets a placeholder (``'Unknown'`` text, NULL where nullable) that the
    dimension's upsert overwrites when the real row arrives. Facts never wait.
    """
    stage = _q(staging_name(fact))
    inserts = []
    references = _referencing_columns(fact)
    for number, (dimension_name, columns) in enumerate(references.items()):
        dimension = TABLES[dimension_name]
        values = inferred_member_values(dimension)
        referenced = " UNION ".join(
            _sql(_REFERENCED, column=_q(column.name), stage=stage) for column in columns)
        inserts.append(_sql(_INFER_ONE, name=_q(f"inferred_{number}"), insert=_sql(
            _INFER, table=_q(dimension.name), columns=", ".join(_q(name) for name in values),
            values=", ".join(values.values()), referenced=referenced,
            key=_q(dimension.primary_key))))
    if not inserts:
        return {}
    counts = conn.run(_sql(_INFER_ALL, inserts=", ".join(inserts), counts=", ".join(
        _sql(_INFER_COUNT, name=_q(f"inferred_{number}")) for number in range(len(inserts)))),
        unknown=UNKNOWN)[0]
    return {name: int(count) for name, count in zip(references, counts)}


def upsert_fact(conn: pg8000.native.Connection, fact: Table) -> tuple[int, int]:
    """Write the staged fact versions; return (versions inserted, versions corrected).

    A new version is inserted. A version already present (same business id and
    ``last_updated``) is corrected in place when its values differ, with a fresh
    record id so it becomes the latest. It is taken the same way when its values
    are equal but it is not its id's latest version: ingest only ever reads a row's
    current state, so an older version arriving again means the source has it again
    (a row restored after its deletion, a source restored from a backup that lost
    the later versions), and leaving the deletion or the lost version latest would
    be wrong for good. Re-reading the latest version is a no-op. Within the batch
    the last staged row of a version wins.
    """
    key = set(fact.unique_key)
    attributes = [c for c in fact.data_columns if c.name not in key]
    inserted, corrected = conn.run(_sql(
        _FACT_UPSERT, table=_q(fact.name), columns=_columns(fact.data_columns),
        stage=_q(staging_name(fact)), ordinal=_q(ORDINAL),
        unique_key=", ".join(_q(name) for name in fact.unique_key),
        assignments=", ".join(f"{_q(c.name)} = EXCLUDED.{_q(c.name)}" for c in attributes),
        record_id=_q(fact.primary_key), business_id=_q(CURRENT_VIEWS[fact.name]),
        current=_columns(attributes, "t."), incoming=_columns(attributes, "EXCLUDED."),
    ), fact=_q(fact.name), record_id=fact.primary_key)[0]
    return inserted, corrected


def add_deletion_versions(conn: pg8000.native.Connection, fact: Table) -> int:
    """Turn staged deletion records into deletion versions of ``fact``; return versions added.

    The staging table is the fact's deletion table (see ``warehouse_schema.DELETIONS``).
    Each deleted id gets one more version: its latest version's values, ``is_deleted``
    true, and the detection time as ``last_updated``. Ids never loaded, or already
    deleted (a re-delivered deletion), get nothing. A version already stamped with the
    detection time becomes the deletion in place (see ``_DELETE``).
    """
    stamped = {CURRENT_VIEWS[fact.name], "last_updated_date", "last_updated_time", "is_deleted"}
    kept = [column for column in fact.data_columns if column.name not in stamped]
    business_id = _q(CURRENT_VIEWS[fact.name])
    columns = [fact.column(CURRENT_VIEWS[fact.name]), *kept, fact.column("last_updated_date"),
               fact.column("last_updated_time"), fact.column("is_deleted")]
    conn.run(_sql(
        _DELETE, table=_q(fact.name), columns=_columns(columns),
        kept=", ".join([f"d.{business_id}", *(f"latest.{_q(c.name)}" for c in kept)]),
        business_id=business_id, stage=_q(staging_name(DELETIONS[fact.name])),
        ordinal=_q(ORDINAL), record_id=_q(fact.primary_key),
        unique_key=", ".join(_q(name) for name in fact.unique_key),
        assignments=", ".join(f"{_q(c.name)} = EXCLUDED.{_q(c.name)}" for c in kept),
    ), fact=_q(fact.name), record_id=fact.primary_key)
    written: int = conn.row_count
    return written


@dataclass
class TableLoad:
    """What loading one table wrote: its rows, corrected versions, inferred members per dimension.

    ``rows`` counts every row written (for a fact: inserted and corrected versions);
    ``corrected`` the fact versions corrected in place.
    """

    rows: int
    inferred: dict[str, int] = field(default_factory=dict)
    corrected: int = 0


def _stage(conn: pg8000.native.Connection, table: Table,
           batches: Iterable["pa.RecordBatch"]) -> None:
    create_staging(conn, table)
    copy_into_staging(conn, table, batches)


def load_table(conn: pg8000.native.Connection, table: Table,
               batches: Iterable["pa.RecordBatch"]) -> TableLoad:
    """Stage ``batches`` (columns in contract order) and move them into ``table``.

    Dimensions are upserted; facts first get their inferred members, then their
    versions are inserted or corrected.
    """
    _stage(conn, table, batches)
    if table.kind == "dimension":
        return TableLoad(upsert_dimension(conn, table))
    inferred = add_inferred_members(conn, table)
    inserted, corrected = upsert_fact(conn, table)
    return TableLoad(inserted + corrected, {name: n for name, n in inferred.items() if n},
                     corrected)


def load_deletions(conn: pg8000.native.Connection, fact: Table,
                   batches: Iterable["pa.RecordBatch"]) -> TableLoad:
    """Stage deletion records of ``fact`` (columns of its deletion table) and add their versions.

    Run after the manifest's fact versions, so a row changed and then deleted in
    one run ends deleted. The detection dates get their ``dim_date`` rows first.
    """
    deletion = DELETIONS[fact.name]
    _stage(conn, deletion, batches)
    inferred = add_inferred_members(conn, deletion)
    return TableLoad(add_deletion_versions(conn, fact),
                     {name: n for name, n in inferred.items() if n})
