"""The lake as the end-to-end tests read it: pyiceberg's scans, compared with the warehouse."""
from datetime import time
from decimal import Decimal
from typing import Any

from totes import lake, storage
from totes.lake_schema import LAKE_TABLES, MANIFEST_KEY
from totes.warehouse_schema import TABLES
from totes_local import queries


def lake_rows(env: dict, name: str) -> list[dict[str, Any]]:
    """Every row of a lake table, as pyiceberg reads it back from the Glue catalog."""
    table = lake.glue_catalog(env["LAKE_BUCKET"]).load_table((env["LAKE_DATABASE"], name))
    return table.scan().to_arrow().to_pylist()


def snapshot_ids(env: dict) -> dict[str, list[int]]:
    """Every lake table's snapshot ids, oldest first."""
    catalog = lake.glue_catalog(env["LAKE_BUCKET"])
    return {name: [snapshot.snapshot_id for snapshot in
                   catalog.load_table((env["LAKE_DATABASE"], name)).snapshots()]
            for name in LAKE_TABLES}


def lake_objects(env: dict) -> list[str]:
    """Every object key in the lake bucket."""
    return list(storage.list_keys(env["LAKE_BUCKET"], ""))


def _value(value: Any) -> Any:
    if isinstance(value, time):
        return f"{value:%H:%M:%S}.{value.microsecond // 1000:03d}"
    return value


def compared(name: str) -> tuple[list[str], str]:
    """A lake table's columns compared with the warehouse's, and the column rows sort by.

    Dimensions by key, current facts by business id, histories by record id (capture
    order); neither the record ids (each side numbers its own) nor the manifest compared.
    """
    spec = LAKE_TABLES[name]
    columns = [column for column in spec.source.column_names
               if column != spec.source.primary_key or spec.kind == "dimension"]
    return columns, spec.source.primary_key if spec.kind == "history" else spec.key


def warehouse_view(e2e, name: str) -> list[tuple]:
    """A lake table's rows as the warehouse has them: :func:`compared`'s columns, in its order."""
    columns, order = compared(name)
    quoted = ", ".join(f'"{column}"' for column in columns)
    rows = e2e.warehouse_rows(f'SELECT {quoted} FROM "{name}" ORDER BY "{order}"')
    return [tuple(_value(value) for value in row) for row in rows]


def lake_view(env: dict, name: str) -> list[tuple]:
    """The same for the lake's table (see :func:`warehouse_view`)."""
    columns, order = compared(name)
    rows = sorted(lake_rows(env, name), key=lambda row: row[order])
    return [tuple(row[column] for column in columns) for row in rows]


def _plain(value: Any) -> Any:
    if isinstance(value, (Decimal, float)):
        return round(float(value), 6)
    return _value(value)


#: the sales orders whose history is asked of both: those with the most versions (amended or
#: deleted ones first), then by id.
HISTORY_SAMPLE = ('SELECT "sales_order_id" FROM "fact_sales_order" '
                  'GROUP BY "sales_order_id" ORDER BY count(*) DESC, "sales_order_id" LIMIT 5')


def assert_business_questions_agree(e2e) -> None:
    """Every dashboard question, asked of the lake as its named query, gets the warehouse's answer.

    The warehouse answers through the dashboard's file, unfiltered; the lake is asked by
    DuckDB over pyiceberg's scans, row for row. A question that takes a value (the order
    history's order id, Athena's ``?``) is asked for several orders.
    """
    import duckdb

    catalog = lake.glue_catalog(e2e.env["LAKE_BUCKET"])
    engine = duckdb.connect()
    for name in LAKE_TABLES:
        engine.register(name, catalog.load_table((e2e.env["LAKE_DATABASE"], name)).scan()
                        .to_arrow())
    every, lake_sql = queries.load_queries(), queries.lake_queries()
    order_ids = [row[0] for row in e2e.warehouse_rows(HISTORY_SAMPLE)]
    conn = e2e.postgres.connect(e2e.warehouse)
    try:
        for name in queries.LAKE_QUESTIONS:
            wanted_values = queries.lake_parameters(name)
            asked = ([{"order_id": order_id} for order_id in order_ids] if wanted_values
                     else [{}])
            assert all(set(values) == set(wanted_values) for values in asked), name
            for values in asked:
                expected = queries.run_query(conn, every[name], values)
                assert expected.ok, (name, expected.error)
                found = engine.execute(lake_sql[name],
                                       [values[value] for value in wanted_values]).fetchall()
                wanted = [tuple(_plain(v) for v in row)
                          for row in expected.frame.itertuples(index=False)]
                assert wanted, (name, values, "an empty answer proves nothing")
                assert [tuple(_plain(v) for v in row) for row in found] == wanted, (name, values)
    finally:
        conn.close()


def assert_lake_equals_warehouse(e2e) -> None:
    """Every lake table holds what its warehouse table (or view) holds."""
    for name in LAKE_TABLES:
        assert lake_view(e2e.env, name) == warehouse_view(e2e, name), name
    assert set(TABLES) <= set(LAKE_TABLES)
    assert MANIFEST_KEY.name in LAKE_TABLES["fact_payment"].column_names
