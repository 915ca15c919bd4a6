"""The totesys tables the pipeline extracts: the allow-list for every SQL identifier.

Ordered so that referenced tables come before the tables that reference them.
`_prisma_migrations` is deliberately absent: it is never read.
"""
from types import MappingProxyType

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


class UnknownTableError(ValueError):
    """A table name that is not on the allow-list reached code that builds SQL."""


def primary_key(table: str) -> str:
    """Return the primary key of an allow-listed table, refusing any other name."""
    try:
        return SOURCE_TABLES[table]
    except KeyError:
        raise UnknownTableError(
            f"table {table!r} is not a totesys table the pipeline reads"
        ) from None
