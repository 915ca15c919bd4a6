"""The source contract: which totesys tables and columns the pipeline reads, and as what.

This is the one allow-list for every SQL identifier that reaches the source
database, and the one description of a source row: ingest selects exactly these
columns (never ``SELECT *``, so a column added upstream changes nothing and
columns the warehouse never uses, such as bank account numbers, never leave the
database), checks their types before it reads, and the transform parses them
with the same kinds. Tables are ordered so that referenced tables come before
the tables that reference them. ``_prisma_migrations`` is deliberately absent.
"""
import hashlib
import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from totes.errors import InputError

#: table name -> primary key column, in foreign-key dependency order.
SOURCE_TABLES = MappingProxyType({
    "address": "address_id",
    "currency": "currency_id",
    "department": "department_id",
    "design": "design_id",
    "payment_type": "payment_type_id",
    "counterparty": "counterparty_id",
    "staff": "staff_id",
    "sales_order": "sales_order_id",
    "purchase_order": "purchase_order_id",
    "transaction": "transaction_id",
    "payment": "payment_id",
})

#: the column holding each row version's business timestamp (never used to decide what changed).
VERSION_COLUMN = "last_updated"

#: source table -> the columns the pipeline reads, each with its kind (how it is carried).
SOURCE_COLUMNS: Mapping[str, Mapping[str, str]] = MappingProxyType({
    "address": {
        "address_id": "int", "address_line_1": "text", "address_line_2": "text",
        "district": "text", "city": "text", "postal_code": "text", "country": "text",
        "phone": "text", "last_updated": "timestamp",
    },
    "counterparty": {
        "counterparty_id": "int", "counterparty_legal_name": "text",
        "legal_address_id": "int", "last_updated": "timestamp",
    },
    "currency": {"currency_id": "int", "currency_code": "text", "last_updated": "timestamp"},
    "department": {
        "department_id": "int", "department_name": "text", "location": "text",
        "last_updated": "timestamp",
    },
    "design": {
        "design_id": "int", "design_name": "text", "file_location": "text", "file_name": "text",
        "last_updated": "timestamp",
    },
    "payment_type": {
        "payment_type_id": "int", "payment_type_name": "text", "last_updated": "timestamp",
    },
    "staff": {
        "staff_id": "int", "first_name": "text", "last_name": "text", "department_id": "int",
        "email_address": "text", "last_updated": "timestamp",
    },
    "sales_order": {
        "sales_order_id": "int", "created_at": "timestamp", "last_updated": "timestamp",
        "design_id": "int", "staff_id": "int", "counterparty_id": "int", "units_sold": "int",
        "unit_price": "money", "currency_id": "int", "agreed_delivery_date": "date",
        "agreed_payment_date": "date", "agreed_delivery_location_id": "int",
    },
    "purchase_order": {
        "purchase_order_id": "int", "created_at": "timestamp", "last_updated": "timestamp",
        "staff_id": "int", "counterparty_id": "int", "item_code": "text",
        "item_quantity": "int", "item_unit_price": "money", "currency_id": "int",
        "agreed_delivery_date": "date", "agreed_payment_date": "date",
        "agreed_delivery_location_id": "int",
    },
    "transaction": {
        "transaction_id": "int", "transaction_type": "text", "sales_order_id": "int",
        "purchase_order_id": "int", "last_updated": "timestamp",
    },
    "payment": {
        "payment_id": "int", "created_at": "timestamp", "last_updated": "timestamp",
        "transaction_id": "int", "counterparty_id": "int", "payment_amount": "money",
        "currency_id": "int", "payment_type_id": "int", "paid": "bool", "payment_date": "date",
    },
})

#: kind -> the PostgreSQL types (``pg_type.typname``) that carry it exactly. ``enum`` stands
#: for any enum type. A float is never money, and a ``timestamptz`` would shift with the
#: session's time zone: both are refused rather than carried inexactly.
ACCEPTED_TYPES: Mapping[str, frozenset[str]] = MappingProxyType({
    "int": frozenset({"int2", "int4", "int8"}),
    "text": frozenset({"text", "varchar", "bpchar", "enum"}),
    "timestamp": frozenset({"timestamp"}),
    "money": frozenset({"numeric"}),
    "date": frozenset({"text", "varchar"}),
    "bool": frozenset({"bool"}),
})


class UnknownTableError(InputError, ValueError):
    """A table name that is not on the allow-list reached code that builds SQL."""


class SourceSchemaError(InputError):
    """A column the pipeline reads is missing or changed type upstream: a person must act.

    Retrying cannot help; the message names every offending table and column.
    """


@dataclass(frozen=True)
class FoundColumn:
    """One column as the source database's catalog describes it."""

    table: str
    column: str
    type_name: str
    is_enum: bool = False
    #: the 32-bit xids that wrote the column's catalog rows: its ``pg_attribute`` row and, for
    #: an enum, its labels' ``pg_enum`` rows. DDL that changes what every row reads without
    #: writing a row (a column dropped and added again, an enum label renamed) writes these.
    written_by: tuple[int, ...] = ()

    @property
    def kind_type(self) -> str:
        """The type name to check against :data:`ACCEPTED_TYPES` (``enum`` for any enum)."""
        return "enum" if self.is_enum else self.type_name


def primary_key(table: str) -> str:
    """Return the primary key of an allow-listed table, refusing any other name."""
    try:
        return SOURCE_TABLES[table]
    except KeyError:
        raise UnknownTableError(
            f"table {table!r} is not a totesys table the pipeline reads"
        ) from None


#: hex digits of a table's definition fingerprint (:func:`definitions`): 64 bits of SHA-256.
DEFINITION_DIGITS = 16


def _used_columns(found: list[FoundColumn]) -> list[FoundColumn]:
    """The found columns the contract reads (others, added upstream, change nothing)."""
    used = {(table, column) for table, columns in SOURCE_COLUMNS.items() for column in columns}
    return [column for column in found if (column.table, column.column) in used]


def definitions(found: list[FoundColumn]) -> dict[str, str]:
    """Each table's fingerprint of its used columns' catalog rows, as ``found`` read them.

    DDL that changes what every row reads without writing one (a column dropped and
    added again, an enum label renamed) writes those catalog rows, so it changes the
    fingerprint; a run compares it with the previous manifest's, which was read in
    that run's snapshot. Exact where judging the writers' xids against the previous
    snapshot is not: a subtransaction's xid, or any xid on a hot standby, is in no
    ``pg_current_snapshot()`` in-progress list.
    """
    written: dict[str, list[tuple[str, list[int]]]] = {table: [] for table in SOURCE_TABLES}
    for column in _used_columns(found):
        written[column.table].append((column.column, sorted(column.written_by)))
    return {table: hashlib.sha256(json.dumps(sorted(columns)).encode()).hexdigest()[
        :DEFINITION_DIGITS] for table, columns in written.items()}


def redefined_tables(found: list[FoundColumn], before: Mapping[str, str],
                     written_since: Callable[[int], bool]) -> list[str]:
    """The tables, in allow-list order, whose used columns' catalog rows changed since.

    ``before`` holds the previous run's fingerprints (:func:`definitions`): a table
    listed there is redefined when its fingerprint differs. A table it lacks (a
    manifest written before they were recorded) falls back to the writers' xids:
    ``written_since(xid32)`` says whether a transaction is newer than the previous
    run's snapshot. Such a table may read differently in rows no transaction wrote
    since (a column dropped and added again reads NULL, a renamed enum label its new
    name), which no capture by row visibility sees: it must be read in full again.
    """
    now = definitions(found)
    changed = {table for table in before if before[table] != now.get(table)}
    changed |= {column.table for column in _used_columns(found) if column.table not in before
                and any(written_since(xid) for xid in column.written_by)}
    return [table for table in SOURCE_TABLES if table in changed]


def contract_problems(found: list[FoundColumn]) -> list[str]:
    """Return one line per used column that is missing or of a type the contract refuses.

    Columns the contract does not use are ignored, whatever their type: a column
    added upstream (a uuid, a jsonb) changes nothing.
    """
    types = {(column.table, column.column): column for column in found}
    problems = []
    for table, columns in SOURCE_COLUMNS.items():
        for name, kind in columns.items():
            column = types.get((table, name))
            if column is None:
                problems.append(f"{table}.{name} is missing")
            elif column.kind_type not in ACCEPTED_TYPES[kind]:
                accepted = ", ".join(sorted(ACCEPTED_TYPES[kind]))
                problems.append(f"{table}.{name} is {column.type_name}, expected {accepted}")
    return problems


def check_contract(found: list[FoundColumn]) -> None:
    """Refuse to read a source whose used columns no longer match the contract."""
    problems = contract_problems(found)
    if problems:
        raise SourceSchemaError(
            "the source no longer matches the columns the pipeline reads: "
            + "; ".join(problems)
            + ". Nothing was read or committed; restore the column or change the contract "
            "in shared/totes/source.py")
