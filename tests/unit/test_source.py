"""The source contract: a changed column is a clear error; an added one changes nothing."""
import pytest

from totes.source import (SOURCE_COLUMNS, SOURCE_TABLES, FoundColumn, SourceSchemaError,
                          check_contract, contract_problems, definitions, redefined_tables)

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


def redefinable():
    """A few columns with the xids that wrote their catalog rows (one not a used column)."""
    return [FoundColumn("payment", "paid", "bool", written_by=(500,)),
            FoundColumn("payment", "ref", "uuid", written_by=(900,)),      # not a used column
            FoundColumn("transaction", "transaction_type", "TransactionType", is_enum=True,
                        written_by=(400, 401, 950)),                       # a label renamed
            FoundColumn("address", "city", "text", written_by=(100,))]


def test_without_recorded_definitions_a_table_is_redefined_when_its_catalog_rows_are_newer():
    found = redefinable()

    assert redefined_tables(found, {}, lambda xid: xid >= 900) == ["transaction"]
    assert redefined_tables(found, {}, lambda xid: xid >= 500) == ["transaction", "payment"]
    assert redefined_tables(found, {}, lambda xid: False) == []


def test_a_table_is_redefined_exactly_when_its_definition_differs_from_the_recorded_one():
    before = definitions(redefinable())
    renamed = [FoundColumn(c.table, c.column, c.type_name, c.is_enum, (400, 401, 951))
               if c.column == "transaction_type" else c for c in redefinable()]

    # Whatever the xids say against the previous snapshot (a savepoint's xid, a standby's
    # empty in-progress list), a recorded definition decides.
    assert redefined_tables(renamed, before, lambda xid: False) == ["transaction"]
    assert redefined_tables(redefinable(), before, lambda xid: True) == []
    # A table the previous manifest recorded no definition for falls back to the xids.
    partial = {table: fingerprint for table, fingerprint in before.items() if table != "payment"}
    assert redefined_tables(renamed, partial, lambda xid: xid >= 500) == [
        "transaction", "payment"]


def test_a_definition_is_of_the_used_columns_catalog_rows_only_and_in_no_particular_order():
    found = redefinable()
    fingerprints = definitions(found)

    assert list(fingerprints) == list(SOURCE_TABLES)
    assert all(len(fingerprint) == 16 for fingerprint in fingerprints.values())
    assert definitions(list(reversed(found))) == fingerprints
    assert definitions([FoundColumn(c.table, c.column, c.type_name, c.is_enum,
                                    tuple(reversed(c.written_by))) for c in found]) == fingerprints
    added = definitions([*found, FoundColumn("payment", "meta", "jsonb", written_by=(990,))])
    assert added == fingerprints                                 # a column nobody reads
    dropped_and_added = definitions([FoundColumn("address", "city", "text", written_by=(990,))
                                     if c.column == "city" else c for c in found])
    assert {table for table in fingerprints
            if dropped_and_added[table] != fingerprints[table]} == {"address"}
