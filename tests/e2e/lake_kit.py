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


def warehouse_view(e2e, name: str) -> list[tuple]:
    """A lake table's rows as the warehouse has them, in the order the lake's are compared in.

    Dimensions by key, current facts by business id, histories in record id (capture)
    order; neither the record ids (each side numbers its own) nor the manifest compared.
    """
    spec = LAKE_TABLES[name]
    columns = [column for column in spec.source.column_names
               if column != spec.source.primary_key or spec.kind == "dimension"]
    order = spec.source.primary_key if spec.kind == "history" else spec.key
    quoted = ", ".join(f'"{column}"' for column in columns)
    rows = e2e.warehouse_rows(f'SELECT {quoted} FROM "{name}" ORDER BY "{order}"')
    return [tuple(_value(value) for value in row) for row in rows]


def lake_view(env: dict, name: str) -> list[tuple]:
    """The same for the lake's table (see :func:`warehouse_view`)."""
    spec = LAKE_TABLES[name]
    columns = [column for column in spec.source.column_names
               if column != spec.source.primary_key or spec.kind == "dimension"]
    order = spec.source.primary_key if spec.kind == "history" else spec.key
    rows = sorted(lake_rows(env, name), key=lambda row: row[order])
    return [tuple(row[column] for column in columns) for row in rows]


def _plain(value: Any) -> Any:
    if isinstance(value, (Decimal, float)):
        return round(float(value), 6)
    return _value(value)


def assert_business_questions_agree(e2e) -> None:
    """The dashboard's questions Athena gets, asked of the lake, give the warehouse's answers.

    Asked by DuckDB over pyiceberg's scans, compared row for row.
    """
    import duckdb

    catalog = lake.glue_catalog(e2e.env["LAKE_BUCKET"])
    engine = duckdb.connect()
    for name in LAKE_TABLES:
        engine.register(name, catalog.load_table((e2e.env["LAKE_DATABASE"], name)).scan()
                        .to_arrow())
    every, lake_sql = queries.load_queries(), queries.lake_queries()
    conn = e2e.postgres.connect(e2e.warehouse)
    try:
        for name in queries.LAKE_QUESTIONS:
            expected = queries.run_query(conn, every[name], {})
            assert expected.ok, (name, expected.error)
            found = engine.sql(lake_sql[name]).fetchall()
            wanted = [tuple(_plain(v) for v in row)
                      for row in expected.frame.itertuples(index=False)]
            assert [tuple(_plain(v) for v in row) for row in found] == wanted, name
    finally:
        conn.close()


def assert_lake_equals_warehouse(e2e) -> None:
    """Every lake table holds what its warehouse table (or view) holds."""
    for name in LAKE_TABLES:
        assert lake_view(e2e.env, name) == warehouse_view(e2e, name), name
    assert set(TABLES) <= set(LAKE_TABLES)
    assert MANIFEST_KEY.name in LAKE_TABLES["fact_payment"].column_names
