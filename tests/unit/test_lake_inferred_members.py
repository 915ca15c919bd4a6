"""The lake's inferred members follow the warehouse's rule: the key, 'Unknown', NULL."""
import pytest

from totes import lake, warehouse
from totes.lake_schema import LAKE_TABLES
from totes.warehouse_schema import DIMENSIONS


@pytest.mark.parametrize("name", [table.name for table in DIMENSIONS if table.name != "dim_date"])
def test_a_placeholder_has_the_key_unknown_text_and_null_where_nullable(name):
    spec = LAKE_TABLES[name]
    rows = lake.inferred_members(spec, [7, 3, 7])
    assert rows.schema == lake.arrow_schema(spec)
    assert rows[spec.key].to_pylist() == [3, 7]
    for column in spec.columns:
        if column.name != spec.key:
            expected = None if column.nullable else warehouse.UNKNOWN
            assert rows[column.name].to_pylist() == [expected, expected], column.name


def test_the_same_columns_are_filled_as_the_loads_sql_fills_them():
    for table in DIMENSIONS:
        if table.name == "dim_date":
            continue
        filled = set(warehouse.inferred_member_values(table)) - {table.primary_key}
        rows = lake.inferred_members(LAKE_TABLES[table.name], [1])
        assert {name for name in rows.column_names
                if rows[name].to_pylist() == [warehouse.UNKNOWN]} == filled, table.name
