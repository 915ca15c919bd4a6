"""The lake's tables, derived from the one warehouse contract (:mod:`totes.warehouse_schema`).

The lake holds the warehouse's tables under the warehouse's names and columns, as
Apache Iceberg tables, in types every engine that reads Iceberg can read:

* ``*_time`` columns are strings ``'HH:MM:SS.fff'`` (always 12 characters, so they
  sort and compare as times do). The warehouse's ``time(3)`` has no Iceberg
  equivalent that Athena reads (Athena has no Iceberg ``time`` type), Spark refuses
  Parquet TIME(MILLIS) and pyiceberg refuses ``time32[ms]``. A string keeps the
  value exact and readable, and ``CAST(created_time AS time(3))`` (Athena, Trino,
  DuckDB) or ``to_timestamp`` (Spark) turns it back into a time where one is needed;
  milliseconds since midnight would need arithmetic in every query.
* the record id (``sales_record_id`` ...) is a ``long`` the publish assigns in
  capture order, as the warehouse's serial is: within a business id, the highest
  record id is the latest version. The numbers are the lake's own (the warehouse's
  sequences have gaps the lake cannot reproduce); their order is the same.
* every fact (and ``fact_*_current``) has one more column, :data:`MANIFEST_KEY`:
  the ingest manifest the version was captured in. With the record id it gives
  capture order to any engine, and says which source state each version belongs to.

Decimals stay ``decimal(10,2)``, dates ``date``, the rest ``int``, ``string`` and
``boolean``; NOT NULL columns are Iceberg ``required`` fields.
"""
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from totes.warehouse_schema import (CURRENT_VIEWS, DIMENSIONS, FACTS, LOGICAL_TYPES, Column,
                                    Table, made_by)

if TYPE_CHECKING:  # imported where used at run time: only the publish function has pyiceberg
    import pyarrow as pa
    from pyiceberg.schema import Schema
    from pyiceberg.types import IcebergType

#: the column of every lake fact naming the ingest manifest its version was captured in.
MANIFEST_KEY = Column("manifest_key", "text")

#: ``*_time`` values as the lake stores them: Arrow's ``%S`` of a millisecond stamp is ``SS.fff``.
TIME_FORMAT = "%H:%M:%S"


@dataclass(frozen=True)
class LakeTable:
    """One Iceberg table of the lake and the warehouse table it mirrors.

    ``kind`` is ``dimension`` (one row per key, the latest), ``history`` (every
    fact version) or ``current`` (each business id's latest version, deletions left
    out). ``key`` is the column rows are replaced by: the dimension's key, or the
    fact's business id for ``current``; a history table only appends (and corrects).
    """

    name: str
    kind: str
    source: Table
    key: str

    @property
    def columns(self) -> tuple[Column, ...]:
        """The lake table's columns in order: the warehouse's, then the capture manifest."""
        if self.kind == "dimension":
            return self.source.columns
        return (*self.source.columns, MANIFEST_KEY)

    @property
    def column_names(self) -> tuple[str, ...]:
        """The column names in order."""
        return tuple(column.name for column in self.columns)


def _lake_tables() -> tuple[LakeTable, ...]:
    dimensions = tuple(LakeTable(table.name, "dimension", table, table.primary_key)
                       for table in DIMENSIONS)
    history = tuple(LakeTable(fact.name, "history", fact, CURRENT_VIEWS[fact.name])
                    for fact in FACTS)
    current = tuple(LakeTable(f"{fact.name}_current", "current", fact, CURRENT_VIEWS[fact.name])
                    for fact in FACTS)
    return (*dimensions, *history, *current)


#: every lake table by name: the dimensions, the facts' histories, their current states.
LAKE_TABLES = MappingProxyType({table.name: table for table in _lake_tables()})


def iceberg_type(column: Column) -> "IcebergType":
    """The Iceberg type of a warehouse column in the lake (see the module's notes).

    The type is the contract's own row for it (:data:`totes.warehouse_schema.LOGICAL_TYPES`),
    where every system's spelling of a logical type is kept.
    """
    from pyiceberg import types

    iceberg: IcebergType = made_by(types, LOGICAL_TYPES[column.type].iceberg)
    return iceberg


def iceberg_schema(table: LakeTable) -> "Schema":
    """The Iceberg schema of ``table``: field ids in column order, NOT NULL as required.

    The key is the schema's identifier field, which engines that merge by key
    (Flink, Spark's ``MERGE``) pick up; a history table has none (a business id
    repeats there).
    """
    from pyiceberg.schema import Schema
    from pyiceberg.types import NestedField

    fields = [NestedField(position, column.name, iceberg_type(column),
                          required=not column.nullable)
              for position, column in enumerate(table.columns, start=1)]
    identifiers = [] if table.kind == "history" else [table.column_names.index(table.key) + 1]
    return Schema(*fields, identifier_field_ids=identifiers)


def arrow_schema(table: LakeTable) -> "pa.Schema":
    """The Arrow schema pyiceberg writes ``table`` from (nullability as the contract's)."""
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    schema: pa.Schema = schema_to_pyarrow(iceberg_schema(table), include_field_ids=False)
    return schema


def to_lake(table: LakeTable, rows: "pa.Table") -> "pa.Table":
    """Return warehouse rows (Arrow, the contract's types) in the lake's schema.

    ``time32[ms]`` columns become ``HH:MM:SS.fff`` strings, the record id a
    ``long``; every other column is cast safely to the same type it already has.
    """
    import pyarrow as pa

    schema = arrow_schema(table)
    arrays = []
    for field in schema:
        values = rows.column(field.name)
        if pa.types.is_time(values.type):
            values = time_text(values)
        arrays.append(values.cast(field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def time_text(values: "pa.ChunkedArray[Any]") -> "pa.ChunkedArray[Any]":
    """``time32[ms]`` values as ``HH:MM:SS.fff`` strings (NULL stays NULL)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    milliseconds = values.cast(pa.int32()).cast(pa.int64()).cast(pa.duration("ms"))
    stamps: Any = pc.add(pa.scalar(0, pa.timestamp("ms")), milliseconds)
    text: pa.ChunkedArray[Any] = pc.strftime(stamps, TIME_FORMAT)
    return text
