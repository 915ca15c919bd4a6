"""The source contract: a changed column is a clear error; an added one changes nothing."""
import pytest

from totes.source import (SOURCE_COLUMNS, FoundColumn, SourceSchemaError, check_contract,
                          contract_problems, redefined_tables)

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


def test_a_table_is_redefined_when_a_used_column_s_catalog_rows_were_written_since():
    found = [FoundColumn("payment", "paid", "bool", written_by=(500,)),
             FoundColumn("payment", "ref", "uuid", written_by=(900,)),      # not a used column
             FoundColumn("transaction", "transaction_type", "TransactionType", is_enum=True,
                         written_by=(400, 401, 950)),                       # a label renamed
             FoundColumn("address", "city", "text", written_by=(100,))]

    assert redefined_tables(found, lambda xid: xid >= 900) == ["transaction"]
    assert redefined_tables(found, lambda xid: xid >= 500) == ["transaction", "payment"]
    assert redefined_tables(found, lambda xid: False) == []
