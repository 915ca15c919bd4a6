"""The source contract: a changed column is a clear error; an added one changes nothing."""
import pytest

from totes.source import (SOURCE_COLUMNS, FoundColumn, SourceSchemaError, check_contract,
                          contract_problems)

TYPES = {"int": "int4", "text": "text", "timestamp": "timestamp", "money": "numeric",
         "date": "text", "bool": "bool"}


def catalog():
    """The catalog of a source exactly as the contract expects it."""
    return [FoundColumn(table, column, TYPES[kind])
            for table, columns in SOURCE_COLUMNS.items() for column, kind in columns.items()]


def test_the_generated_schema_shape_passes():
    check_contract(catalog())


def test_columns_added_upstream_of_any_type_change_nothing():
    check_contract([*catalog(), FoundColumn("payment", "ref", "uuid"),
                    FoundColumn("sales_order", "meta", "jsonb")])


def test_enums_carry_text():
    found = [FoundColumn(c.table, c.column, "PaymentTypeName", is_enum=True)
             if c.column == "payment_type_name" else c for c in catalog()]
    check_contract(found)


def test_a_used_column_that_changed_type_or_disappeared_is_named():
    found = [FoundColumn(c.table, c.column, "float8") if c.column == "unit_price" else c
             for c in catalog() if c.column != "paid"]
    assert contract_problems(found) == [
        "sales_order.unit_price is float8, expected numeric", "payment.paid is missing"]
    with pytest.raises(SourceSchemaError, match="sales_order.unit_price is float8.*Nothing was"):
        check_contract(found)
