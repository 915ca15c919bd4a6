"""The warehouse contract, defined once: the transform writes it, the load creates and fills it.

Each table is described by its columns (name, logical type, nullability, the
dimension it references). From that one description come the Parquet schema
(:func:`arrow_schema`) and the PostgreSQL DDL (:func:`create_table_sql`), so the
two can never drift apart. The warehouse table and column names are a contract
the analysts' queries depend on; ``is_deleted`` on the facts is the one addition.

Facts keep every captured version of a business id. The latest version is the one
loaded last (the highest record id, which the load assigns in capture order), not
the one with the greatest ``last_updated``: a source clock can stamp a row in the
future and a later correction must still win. A deleted source row becomes one
more version marked ``is_deleted``, and the ``*_current`` views leave its id out.
"""
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from totes.db import quote_ident

if TYPE_CHECKING:  # imported where used at run time: the ingest function has no pyarrow
    import pyarrow as pa


@dataclass(frozen=True)
class LogicalType:
    """One logical type of the contract, as each system that holds its columns spells it.

    Every translation of a column's type lives in :data:`LOGICAL_TYPES`, one row per
    type, so a new or changed type is one line and no two mappings can drift apart.
    ``arrow`` and ``iceberg`` name a factory (a ``pyarrow`` function, a
    ``pyiceberg.types`` class) and its arguments rather than call it: only the functions
    that need those libraries import them.
    """

    #: the PostgreSQL type in DDL.
    sql: str
    #: how PostgreSQL's ``format_type()`` spells it in the catalog: what a live column must
    #: say to be the contract's (a ``serial`` is an ``integer`` with a sequence default).
    catalog: str
    #: the Arrow type the transform writes it as (None: never in Parquet, the load makes it).
    arrow: tuple[Any, ...] | None
    #: the Iceberg type the lake keeps it as (:mod:`totes.lake_schema` says why).
    iceberg: tuple[Any, ...]


#: logical type -> its spellings: PostgreSQL DDL and catalog, Arrow, the lake's Iceberg.
LOGICAL_TYPES = MappingProxyType({
    "serial": LogicalType("serial", "integer", None, ("LongType",)),
    "int": LogicalType("integer", "integer", ("int32",), ("IntegerType",)),
    "date": LogicalType("date", "date", ("date32",), ("DateType",)),
    "time": LogicalType("time(3)", "time(3) without time zone", ("time32", "ms"),
                        ("StringType",)),
    "money": LogicalType("numeric(10,2)", "numeric(10,2)", ("decimal128", 10, 2),
                         ("DecimalType", 10, 2)),
    "numeric": LogicalType("numeric", "numeric", ("decimal128", 10, 2), ("DecimalType", 10, 2)),
    "text": LogicalType("varchar", "character varying", ("string",), ("StringType",)),
    "bool": LogicalType("boolean", "boolean", ("bool_",), ("BooleanType",)),
})

#: logical type -> PostgreSQL type
SQL_TYPES = MappingProxyType({name: kind.sql for name, kind in LOGICAL_TYPES.items()})

#: logical type -> how PostgreSQL's ``format_type()`` spells it (:attr:`LogicalType.catalog`).
CATALOG_TYPES = MappingProxyType({name: kind.catalog for name, kind in LOGICAL_TYPES.items()})


def made_by(module: Any, factory: tuple[Any, ...]) -> Any:
    """The type ``factory`` names, made by ``module``: one of :data:`LOGICAL_TYPES`' spellings.

    ``made_by(pa, ("decimal128", 10, 2))`` is ``pa.decimal128(10, 2)``.
    """
    name, *arguments = factory
    return getattr(module, name)(*arguments)


@dataclass(frozen=True)
class Column:
    """One warehouse column; ``references`` names the table its values must exist in.

    ``default`` (a Python value) is what rows written before the column existed
    hold: the additive migration adds the column with it, and the load fills it
    in for Parquet files written before the column was in the contract.
    """

    name: str
    type: str
    nullable: bool = False
    references: str | None = None
    default: bool | int | None = None


@dataclass(frozen=True)
class Table:
    """One warehouse table: a dimension keyed by source id, or a fact with one row per version."""

    name: str
    kind: str
    primary_key: str
    columns: tuple[Column, ...]
    unique_key: tuple[str, ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        """All column names in contract order."""
        return tuple(column.name for column in self.columns)

    @property
    def data_columns(self) -> tuple[Column, ...]:
        """Columns present in Parquet: everything but the warehouse-generated surrogate key."""
        return tuple(column for column in self.columns if column.type != "serial")

    def column(self, name: str) -> Column:
        """Return the column called ``name``."""
        return next(column for column in self.columns if column.name == name)


def _c(name: str, type_: str = "int", nullable: bool = False,
       references: str | None = None) -> Column:
    return Column(name, type_, nullable, references)


#: every fact's last column: true on the version that records the source row's deletion.
IS_DELETED = Column("is_deleted", "bool", default=False)


def _date(name: str) -> Column:
    return Column(name, "date", False, "dim_date")


def _fact(name: str, record_key: str, business_key: str, *columns: Column) -> Table:
    """One fact table, laid out as every fact is: one row per business id and version stamp.

    Its record id, the business id, when the version was created and stamped, ``columns``,
    then :data:`IS_DELETED`.
    """
    return Table(name, "fact", record_key, (
        _c(record_key, "serial"), _c(business_key),
        _date("created_date"), _c("created_time", "time"),
        _date("last_updated_date"), _c("last_updated_time", "time"),
        *columns, IS_DELETED,
    ), unique_key=(business_key, "last_updated_date", "last_updated_time"))


DIMENSIONS = (
    Table("dim_date", "dimension", "date_id", (
        _c("date_id", "date"), _c("year"), _c("month"), _c("day"), _c("day_of_week"),
        _c("day_name", "text"), _c("month_name", "text"), _c("quarter"),
    )),
    Table("dim_staff", "dimension", "staff_id", (
        _c("staff_id"), _c("first_name", "text"), _c("last_name", "text"),
        _c("department_name", "text"), _c("location", "text", nullable=True),
        _c("email_address", "text"),
    )),
    Table("dim_location", "dimension", "location_id", (
        _c("location_id"), _c("address_line_1", "text"),
        _c("address_line_2", "text", nullable=True), _c("district", "text", nullable=True),
        _c("city", "text"), _c("postal_code", "text"), _c("country", "text"), _c("phone", "text"),
    )),
    Table("dim_currency", "dimension", "currency_id", (
        _c("currency_id"), _c("currency_code", "text"), _c("currency_name", "text"),
    )),
    Table("dim_design", "dimension", "design_id", (
        _c("design_id"), _c("design_name", "text"), _c("file_location", "text"),
        _c("file_name", "text"),
    )),
    Table("dim_counterparty", "dimension", "counterparty_id", (
        _c("counterparty_id"), _c("counterparty_legal_name", "text"),
        _c("counterparty_legal_address_line_1", "text"),
        _c("counterparty_legal_address_line_2", "text", nullable=True),
        _c("counterparty_legal_district", "text", nullable=True),
        _c("counterparty_legal_city", "text"), _c("counterparty_legal_postal_code", "text"),
        _c("counterparty_legal_country", "text"), _c("counterparty_legal_phone_number", "text"),
    )),
    Table("dim_payment_type", "dimension", "payment_type_id", (
        _c("payment_type_id"), _c("payment_type_name", "text"),
    )),
    Table("dim_transaction", "dimension", "transaction_id", (
        _c("transaction_id"), _c("transaction_type", "text"),
        _c("sales_order_id", nullable=True), _c("purchase_order_id", nullable=True),
    )),
)

FACTS = (
    _fact("fact_sales_order", "sales_record_id", "sales_order_id",
          _c("sales_staff_id", references="dim_staff"),
          _c("counterparty_id", references="dim_counterparty"),
          _c("units_sold"), _c("unit_price", "money"),
          _c("currency_id", references="dim_currency"), _c("design_id", references="dim_design"),
          _date("agreed_payment_date"), _date("agreed_delivery_date"),
          _c("agreed_delivery_location_id", references="dim_location")),
    _fact("fact_purchase_orders", "purchase_record_id", "purchase_order_id",
          _c("staff_id", references="dim_staff"),
          _c("counterparty_id", references="dim_counterparty"),
          _c("item_code", "text"), _c("item_quantity"), _c("item_unit_price", "numeric"),
          _c("currency_id", references="dim_currency"),
          _date("agreed_delivery_date"), _date("agreed_payment_date"),
          _c("agreed_delivery_location_id", references="dim_location")),
    _fact("fact_payment", "payment_record_id", "payment_id",
          _c("transaction_id", references="dim_transaction"),
          _c("counterparty_id", references="dim_counterparty"),
          _c("payment_amount", "numeric"), _c("currency_id", references="dim_currency"),
          _c("payment_type_id", references="dim_payment_type"), _c("paid", "bool"),
          _date("payment_date")),
)

#: every warehouse table by name, dimensions first (the order they must load in).
TABLES = MappingProxyType({table.name: table for table in (*DIMENSIONS, *FACTS)})

#: fact table -> the business id column its ``*_current`` view groups by.
CURRENT_VIEWS = MappingProxyType({table.name: table.unique_key[0] for table in FACTS})


def _deletion_table(fact: Table) -> Table:
    business_id = CURRENT_VIEWS[fact.name]
    return Table(f"{fact.name}_deletion", "deletion", business_id, tuple(
        fact.column(name) for name in (business_id, "last_updated_date", "last_updated_time")))


#: fact table -> the records of its deleted business ids, as the transform writes them
#: (Parquet) and the load stages them: the id, and the date and time (UTC, ms) the
#: deletion was detected, which become the deletion version's ``last_updated``.
DELETIONS = MappingProxyType({fact.name: _deletion_table(fact) for fact in FACTS})


def arrow_type(column: Column) -> "pa.DataType":
    """Return the pyarrow type that carries ``column`` exactly (decimals stay decimals)."""
    import pyarrow as pa

    factory = LOGICAL_TYPES[column.type].arrow
    if factory is None:
        raise ValueError(f"{column.name} is {column.type}: never in Parquet, no Arrow type")
    data_type: pa.DataType = made_by(pa, factory)
    return data_type


def arrow_schema(table: Table) -> "pa.Schema":
    """Return the Parquet/Arrow schema of ``table``'s data columns."""
    import pyarrow as pa

    return pa.schema([
        pa.field(column.name, arrow_type(column), nullable=column.nullable)
        for column in table.data_columns
    ])


def _default_sql(value: bool | int) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    raise ValueError(f"no SQL literal for the default {value!r}")


def _column_sql(table: Table, column: Column) -> str:
    line = f"{quote_ident(column.name)} {SQL_TYPES[column.type]}"
    if column.default is not None:
        line += f" DEFAULT {_default_sql(column.default)}"
    if not column.nullable:
        line += " NOT NULL"
    if column.name == table.primary_key:
        line += " PRIMARY KEY"
    if column.references:
        target = TABLES[column.references]
        line += f" REFERENCES {quote_ident(target.name)} ({quote_ident(target.primary_key)})"
    return line


def create_table_sql(table: Table) -> str:
    """Return idempotent DDL for ``table`` (keys, foreign keys and the fact unique key)."""
    lines = [_column_sql(table, column) for column in table.columns]
    if table.unique_key:
        lines.append(f"UNIQUE ({', '.join(quote_ident(name) for name in table.unique_key)})")
    body = ",\n  ".join(lines)
    return f"CREATE TABLE IF NOT EXISTS {quote_ident(table.name)} (\n  {body}\n)"


_CURRENT_VIEW = (
    "CREATE OR REPLACE VIEW {view} AS SELECT {columns} FROM ("
    "SELECT DISTINCT ON ({business_id}) {columns} FROM {fact} "
    "ORDER BY {business_id}, {record_id} DESC) AS latest "
    "WHERE NOT latest.\"is_deleted\""
)


def create_view_sql(fact: Table) -> str:
    """Return DDL for ``<fact>_current``: each business id's latest version, unless deleted.

    Latest is the highest record id (the version loaded last, so captured last),
    whatever its ``last_updated`` says; an id whose latest version records its
    deletion is left out. :func:`create_index_sql` keeps the view an index scan.
    """
    return _CURRENT_VIEW.format(
        view=quote_ident(fact.name + "_current"),
        business_id=quote_ident(CURRENT_VIEWS[fact.name]),
        columns=", ".join(quote_ident(name) for name in fact.column_names),
        fact=quote_ident(fact.name),
        record_id=quote_ident(fact.primary_key),
    )


def create_index_sql(fact: Table) -> str:
    """Return DDL for the index on (business id, record id) that finds each id's latest version.

    Used by the ``*_current`` views (``DISTINCT ON`` in this order) and by the load
    when it looks up the latest version of a deleted id.
    """
    return (f"CREATE INDEX IF NOT EXISTS {quote_ident(fact.name + '_latest')} "
            f"ON {quote_ident(fact.name)} ({quote_ident(CURRENT_VIEWS[fact.name])}, "
            f"{quote_ident(fact.primary_key)} DESC)")


def add_columns_sql(table: Table) -> tuple[str, ...]:
    """Return one idempotent ``ADD COLUMN IF NOT EXISTS`` per non-key column of ``table``.

    This is the additive migration: a warehouse created by an older contract gains
    the columns added since, and a current one is left as it is.
    """
    return tuple(
        f"ALTER TABLE {quote_ident(table.name)} "
        f"ADD COLUMN IF NOT EXISTS {_column_sql(table, column)}"
        for column in table.columns if column.name != table.primary_key
    )


#: the schema that holds the loader's own bookkeeping, apart from the analysts' tables.
ETL_SCHEMA = "etl"


#: added after the first release, so warehouses created before gain them in place: the
#: capture point of each loaded manifest (its ingest snapshot and the database's clock), the
#: processed manifest it was loaded from (NULL: revision 0, the ingest manifest's own key) and
#: the operator's skip marker when it was passed over (see totes.supersede).
LOADED_MANIFEST_ADDED_COLUMNS = ('"capture_snapshot" text', '"database_time" timestamp(3)',
                                 '"processed_key" text', '"skipped_by" text')


def create_bookkeeping_sql() -> tuple[str, ...]:
    """Return idempotent DDL for schema ``etl``: the manifests loaded and the schema applied.

    ``loaded_manifest`` is written in the same transaction as a manifest's rows, which
    is what makes each load exactly-once; ``schema_version`` records the fingerprint
    of the DDL last applied, so an unchanged schema costs one lookup and no locks.
    """
    etl = quote_ident(ETL_SCHEMA)
    return (
        f"CREATE SCHEMA IF NOT EXISTS {etl}",
        f"CREATE TABLE IF NOT EXISTS {etl}.\"loaded_manifest\" (\n"
        "  \"manifest_key\" text PRIMARY KEY,\n  \"run_id\" text NOT NULL,\n"
        "  \"ingest_started_at\" timestamptz,\n"
        "  \"loaded_at\" timestamptz NOT NULL DEFAULT clock_timestamp(),\n"
        "  \"rows_loaded\" bigint NOT NULL,\n"
        "  \"capture_snapshot\" text,\n  \"database_time\" timestamp(3)\n)",
        *(f"ALTER TABLE {etl}.\"loaded_manifest\" ADD COLUMN IF NOT EXISTS {column}"
          for column in LOADED_MANIFEST_ADDED_COLUMNS),
        f"CREATE TABLE IF NOT EXISTS {etl}.\"schema_version\" (\n"
        "  \"fingerprint\" text PRIMARY KEY,\n"
        "  \"applied_at\" timestamptz NOT NULL DEFAULT clock_timestamp()\n)",
    )


def schema_sql() -> tuple[str, ...]:
    """Return every statement that creates or migrates the warehouse, in dependency order."""
    return (
        *create_bookkeeping_sql(),
        *(create_table_sql(table) for table in TABLES.values()),
        *(statement for table in TABLES.values() for statement in add_columns_sql(table)),
        *(create_index_sql(fact) for fact in FACTS),
        *(create_view_sql(fact) for fact in FACTS),
    )
