"""The lake's tables come from the warehouse contract, in types every engine reads."""
from datetime import time
from pathlib import Path

import pyarrow as pa
import pytest

from totes.lake_schema import LAKE_TABLES, MANIFEST_KEY, iceberg_schema, time_text, to_lake
from totes.warehouse_schema import CURRENT_VIEWS, TABLES
from totes_local import pandas_layer

ROOT = Path(__file__).resolve().parents[2]


def test_every_warehouse_table_and_current_view_is_a_lake_table_with_its_columns():
    assert set(LAKE_TABLES) == {*TABLES, *(f"{fact}_current" for fact in CURRENT_VIEWS)}
    for name, table in LAKE_TABLES.items():
        extra = () if table.kind == "dimension" else (MANIFEST_KEY.name,)
        assert table.column_names == (*table.source.column_names, *extra), name


def test_times_are_strings_engines_read_and_the_record_id_a_long():
    schema = iceberg_schema(LAKE_TABLES["fact_sales_order"])
    assert str(schema.find_type("created_time")) == "string"
    assert str(schema.find_type("sales_record_id")) == "long"
    assert str(schema.find_type("unit_price")) == "decimal(10, 2)"
    assert schema.identifier_field_ids == []
    current = iceberg_schema(LAKE_TABLES["fact_sales_order_current"])
    assert [current.find_column_name(i) for i in current.identifier_field_ids] == [
        "sales_order_id"]


@pytest.mark.parametrize("value, text", [
    (time(0, 0), "00:00:00.000"), (time(8, 56, 11, 874000), "08:56:11.874"),
    (time(23, 59, 59, 999000), "23:59:59.999"), (None, None)])
def test_time_text_keeps_milliseconds_and_sorts_as_times_do(value, text):
    assert time_text(pa.chunked_array([pa.array([value], pa.time32("ms"))])).to_pylist() == [text]


def test_to_lake_converts_warehouse_rows_exactly():
    table = LAKE_TABLES["dim_currency"]
    rows = pa.table({"currency_id": pa.array([1], pa.int32()), "currency_code": ["GBP"],
                     "currency_name": ["Pound Sterling"]})
    assert to_lake(table, rows).to_pylist() == [
        {"currency_id": 1, "currency_code": "GBP", "currency_name": "Pound Sterling"}]


def test_the_publish_function_pins_what_the_development_environment_pins():
    function = pandas_layer.pins((ROOT / "functions" / "publish" / "requirements.txt").read_text())
    development = pandas_layer.pins((ROOT / "requirements-dev.txt").read_text())
    assert {name: development.get(name) for name in function} == function
