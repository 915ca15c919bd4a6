"""Warehouse writes: schema, COPY staging, dimension upserts, fact appends and bookkeeping.

Every statement is built from :mod:`totes.warehouse_schema` (the allow-list of
tables and columns), identifiers quoted, values bound. Data only moves in bulk:
Arrow record batches become CSV and stream through ``COPY ... FROM STDIN`` into a
temporary staging table, and one ``INSERT ... SELECT`` per table moves them into
place. Nothing here commits on its own except :func:`ensure_schema`; the caller
wraps one manifest in :func:`transaction` so the rows and their record in
``etl.loaded_manifest`` commit together or not at all.
"""
import hashlib
import io
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Iterator

import pg8000.native

from totes.db import quote_ident
from totes.warehouse_schema import SQL_TYPES, TABLES, Column, Table, schema_sql

#: advisory lock key (``'totes'`` in ASCII) serialising loads and migrations.
LOAD_LOCK_ID = 0x746F746573

#: what an inferred member's NOT NULL text attributes say until the real row arrives.
UNKNOWN = "Unknown"

#: staging column numbering the rows in file order, so the last duplicate of a key wins.
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
_APPEND = (
    "INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} "
    "ON CONFLICT ({unique_key}) DO NOTHING"
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


def ensure_schema(conn: pg8000.native.Connection) -> bool:
    """Create or migrate the warehouse unless this exact schema is already applied.

    The DDL is idempotent, but ``ALTER TABLE`` and ``CREATE OR REPLACE VIEW`` take
    exclusive locks that would queue behind analysts' queries on every run; the
    fingerprint in ``etl.schema_version`` makes the usual case a single lookup.
    Returns whether DDL ran.
    """
    if _schema_applied(conn):
        return False
    with transaction(conn):
        lock(conn)
        if _schema_applied(conn):
            return False
        for statement in schema_sql():
            conn.run(statement)
        conn.run('INSERT INTO "etl"."schema_version" ("fingerprint") VALUES (:f)',
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
    return conn.run('SELECT max("manifest_key") FROM "etl"."loaded_manifest"')[0][0]


def is_loaded(conn: pg8000.native.Connection, manifest_key: str) -> bool:
    """Tell whether ``manifest_key`` (or a later one, which implies it) is already loaded."""
    rows = conn.run(
        'SELECT EXISTS (SELECT 1 FROM "etl"."loaded_manifest" WHERE "manifest_key" >= :k)',
        k=manifest_key,
    )
    return rows[0][0]


def record_manifest(conn: pg8000.native.Connection, manifest_key: str, run_id: str,
                    ingest_started_at: datetime | None, rows_loaded: int) -> None:
    """Record ``manifest_key`` as loaded, inside the transaction that loaded its rows."""
    conn.run(
        'INSERT INTO "etl"."loaded_manifest" ("manifest_key", "run_id", "ingest_started_at", '
        '"rows_loaded") VALUES (:k, :r, :s, :n)',
        k=manifest_key, r=run_id, s=ingest_started_at, n=rows_loaded,
    )


def create_staging(conn: pg8000.native.Connection, table: Table) -> None:
    """Create the empty staging table for ``table``: its data columns, no constraints.

    Dimensions also get an ordinal filled in COPY order, which decides between two
    rows of the same key in one batch.
    """
    definitions = [f"{_q(column.name)} {SQL_TYPES[column.type]}"
                   for column in table.data_columns]
    if table.kind == "dimension":
        definitions.append(f"{_q(ORDINAL)} bigserial")
    conn.run(_sql(_STAGE, stage=_q(staging_name(table)), definitions=", ".join(definitions)))


def csv_chunks(batches: Iterable[Any]) -> Iterator[bytes]:
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
                      batches: Iterable[Any]) -> int:
    """Stream ``batches`` (columns in contract order) into the staging table; return rows.

    Memory holds one batch at a time. If reading a batch fails, the error is raised
    after the COPY ends, and the caller's transaction rolls the partial rows back.
    """
    stream = _Guarded(csv_chunks(batches))
    conn.run(_sql(_COPY, stage=_q(staging_name(table)), columns=_columns(table.data_columns)),
             stream=stream)
    stream.check()
    return conn.row_count


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
    return conn.row_count


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
    added = {}
    stage = _q(staging_name(fact))
    for dimension_name, columns in _referencing_columns(fact).items():
        dimension = TABLES[dimension_name]
        values = inferred_member_values(dimension)
        referenced = " UNION ".join(
            _sql(_REFERENCED, column=_q(column.name), stage=stage) for column in columns)
        conn.run(_sql(
            _INFER, table=_q(dimension.name), columns=", ".join(_q(name) for name in values),
            values=", ".join(values.values()), referenced=referenced,
            key=_q(dimension.primary_key),
        ), unknown=UNKNOWN)
        added[dimension.name] = conn.row_count
    return added


def append_fact(conn: pg8000.native.Connection, fact: Table) -> int:
    """Append staged fact versions; a version already present is skipped. Return rows added."""
    conn.run(_sql(
        _APPEND, table=_q(fact.name), columns=_columns(fact.data_columns),
        stage=_q(staging_name(fact)), unique_key=", ".join(_q(name) for name in fact.unique_key),
    ))
    return conn.row_count


@dataclass
class TableLoad:
    """What loading one table wrote: its own rows, and inferred members per dimension."""

    rows: int
    inferred: dict[str, int] = field(default_factory=dict)


def load_table(conn: pg8000.native.Connection, table: Table, batches: Iterable[Any]) -> TableLoad:
    """Stage ``batches`` (columns in contract order) and move them into ``table``.

    Dimensions are upserted; facts first get their inferred members, then are appended.
    """
    create_staging(conn, table)
    copy_into_staging(conn, table, batches)
    if table.kind == "dimension":
        return TableLoad(upsert_dimension(conn, table))
    inferred = add_inferred_members(conn, table)
    return TableLoad(append_fact(conn, table), {name: n for name, n in inferred.items() if n})
