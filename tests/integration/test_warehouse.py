"""The warehouse writes against a real PostgreSQL: DDL, COPY staging, upserts, appends."""
from datetime import date, time
from decimal import Decimal

import pyarrow as pa
import pytest
from loadkit import arrow_table, dimensions, payment, purchase, sale, table_rows

from totes import warehouse
from totes.warehouse_schema import FACTS, TABLES

INFORMATION_TYPES = {
    "serial": ("integer", None, None, None), "int": ("integer", None, None, None),
    "date": ("date", None, None, None), "time": ("time without time zone", None, None, 3),
    "money": ("numeric", 10, 2, None), "numeric": ("numeric", None, None, None),
    "text": ("character varying", None, None, None), "bool": ("boolean", None, None, None),
}


@pytest.fixture
def conn(postgres, database):
    """A connection to a fresh warehouse with the schema applied."""
    connection = postgres.connect(database("wh"))
    warehouse.ensure_schema(connection)
    yield connection
    connection.close()


def load(conn, tables: dict[str, list[dict]]):
    """Load the tables (dimensions first) in one transaction, as one manifest would."""
    results = {}
    with warehouse.transaction(conn):
        for name in TABLES:
            if name in tables:
                results[name] = warehouse.load_table(
                    conn, TABLES[name], arrow_table(name, tables[name]).to_batches(2))
    return results


def count(conn, table: str) -> int:
    return len(table_rows(conn, table))


def test_schema_matches_the_contract_column_for_column(conn):
    found = conn.run(
        "SELECT table_name, column_name, data_type, numeric_precision, numeric_scale, "
        "datetime_precision, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name NOT LIKE '%_current' "
        "ORDER BY table_name, ordinal_position")
    expected = []
    for table in sorted(TABLES.values(), key=lambda t: t.name):
        for column in table.columns:
            data_type, precision, scale, time_precision = INFORMATION_TYPES[column.type]
            if data_type == "integer":
                precision, scale = 32, 0
            expected.append([table.name, column.name, data_type, precision, scale,
                             time_precision if data_type.startswith("time") else (
                                 0 if data_type == "date" else None),
                             "YES" if column.nullable else "NO"])
    assert found == expected


def test_schema_has_keys_foreign_keys_unique_versions_views_and_bookkeeping(conn):
    constraints = conn.run(
        "SELECT constraint_type, count(*) FROM information_schema.table_constraints "
        "WHERE table_schema = 'public' AND constraint_type <> 'CHECK' GROUP BY 1 ORDER BY 1")
    references = sum(1 for t in TABLES.values() for c in t.columns if c.references)
    assert constraints == [["FOREIGN KEY", references], ["PRIMARY KEY", len(TABLES)],
                           ["UNIQUE", len(FACTS)]]
    views = conn.run("SELECT table_name FROM information_schema.views "
                     "WHERE table_schema = 'public' ORDER BY 1")
    assert views == [[f"{fact.name}_current"] for fact in sorted(FACTS, key=lambda t: t.name)]
    etl = conn.run("SELECT table_name FROM information_schema.tables "
                   "WHERE table_schema = 'etl' ORDER BY 1")
    assert etl == [["loaded_manifest"], ["schema_version"]]


def test_applying_the_schema_twice_is_a_no_op(conn):
    before = conn.run("SELECT count(*) FROM pg_constraint")
    assert warehouse.ensure_schema(conn) is False
    assert conn.run("SELECT count(*) FROM pg_constraint") == before


def test_a_warehouse_missing_a_column_is_migrated_without_duplicating_constraints(conn):
    before = conn.run("SELECT count(*) FROM pg_constraint")
    conn.run('ALTER TABLE "dim_staff" DROP COLUMN "location"')
    conn.run('TRUNCATE "etl"."schema_version"')
    assert warehouse.ensure_schema(conn) is True
    assert conn.run("SELECT count(*) FROM information_schema.columns WHERE "
                    "table_name = 'dim_staff' AND column_name = 'location'") == [[1]]
    assert conn.run("SELECT count(*) FROM pg_constraint") == before


def test_exact_values_survive_the_csv_copy(conn):
    dims = dimensions()
    load(conn, {**dims, "fact_purchase_orders": [purchase(1, updated=time(23, 59, 59, 999000))],
                "fact_sales_order": [sale(1)]})
    assert conn.run('SELECT "item_unit_price"::text, "last_updated_time"::text '
                    'FROM "fact_purchase_orders"') == [["99999999.99", "23:59:59.999"]]
    assert conn.run('SELECT "unit_price"::text, "created_time"::text '
                    'FROM "fact_sales_order"') == [["2.68", "09:00:00"]]
    assert conn.run('SELECT "unit_price" FROM "fact_sales_order"') == [[Decimal("2.68")]]


def test_null_stays_null_and_empty_string_stays_empty(conn):
    load(conn, dimensions())
    assert conn.run('SELECT "address_line_2" IS NULL, "district" FROM "dim_location"') == [
        [True, ""]]


def test_a_hostile_string_round_trips_byte_for_byte(conn):
    hostile = ('O\'Brien "quoted", comma\r\nnew line\n\\.\n\\N \\ back\\slash \t tab '
               'NULL ,"" ; DROP TABLE dim_staff; -- ünïcødé 😀 \u2028 end')
    staff = dimensions()["dim_staff"]
    staff[0]["first_name"] = hostile
    staff.append({**staff[0], "staff_id": 2, "first_name": "\\N", "location": "NULL"})
    load(conn, {"dim_staff": staff})
    assert conn.run('SELECT "first_name", "location" FROM "dim_staff" ORDER BY "staff_id"') == [
        [hostile, "Leeds"], ["\\N", "NULL"]]


def test_dimension_upsert_overwrites_with_the_latest_and_skips_unchanged_rows(conn):
    assert load(conn, dimensions())["dim_staff"].rows == 1
    assert load(conn, dimensions())["dim_staff"].rows == 0
    assert load(conn, dimensions(first_name="Grace"))["dim_staff"].rows == 1
    assert conn.run('SELECT "first_name" FROM "dim_staff"') == [["Grace"]]


def test_the_last_row_of_a_key_in_one_batch_wins(conn):
    first, = dimensions()["dim_staff"]
    load(conn, {"dim_staff": [first, {**first, "first_name": "Second"},
                              {**first, "first_name": "Third"}]})
    assert conn.run('SELECT "first_name" FROM "dim_staff"') == [["Third"]]


def test_fact_versions_are_appended_once_and_the_view_shows_the_latest(conn):
    dims = dimensions()
    loaded = load(conn, {**dims, "fact_payment": [payment(7), payment(8)]})
    assert loaded["fact_payment"].rows == 2
    again = load(conn, {"fact_payment": [payment(7), payment(7, time(11, 0), paid=True)]})
    assert again["fact_payment"].rows == 1
    assert count(conn, "fact_payment") == 3
    assert conn.run('SELECT "payment_id", "paid", "last_updated_time"::text '
                    'FROM "fact_payment_current" ORDER BY 1') == [
        [7, True, "11:00:00"], [8, False, "10:00:00.123"]]


def test_missing_dimension_members_are_inferred_then_overwritten_by_the_real_row(conn):
    loaded = load(conn, {**dimensions(), "fact_sales_order": [
        sale(1, sales_staff_id=42, design_id=9, created_date=date(2023, 1, 1))]})
    assert loaded["fact_sales_order"].rows == 1
    assert loaded["fact_sales_order"].inferred == {"dim_staff": 1, "dim_design": 1, "dim_date": 4}
    assert conn.run('SELECT * FROM "dim_staff" WHERE "staff_id" = 42') == [
        [42, "Unknown", "Unknown", "Unknown", None, "Unknown"]]
    real = {**dimensions()["dim_staff"][0], "staff_id": 42, "first_name": "Real"}
    assert load(conn, {"dim_staff": [real]})["dim_staff"].rows == 1
    assert conn.run('SELECT "first_name", "location" FROM "dim_staff" WHERE "staff_id" = 42') == [
        ["Real", "Leeds"]]


def test_missing_dates_are_derived_from_the_date_itself(conn):
    load(conn, {**dimensions(), "fact_sales_order": [sale(1, created_date=date(2023, 1, 1))]})
    assert conn.run('SELECT * FROM "dim_date" WHERE "date_id" IN (:a, :b) ORDER BY 1',
                    a=date(2023, 1, 1), b=date(2024, 11, 15)) == [
        [date(2023, 1, 1), 2023, 1, 1, 7, "Sunday", "January", 1],
        [date(2024, 11, 15), 2024, 11, 15, 5, "Friday", "November", 4]]


def test_a_source_that_fails_mid_copy_raises_and_leaves_the_connection_usable(conn):
    def batches():
        yield arrow_table("dim_currency", dimensions()["dim_currency"]).to_batches()[0]
        raise OSError("stream cut")

    with pytest.raises(OSError, match="stream cut"):
        with warehouse.transaction(conn):
            warehouse.load_table(conn, TABLES["dim_currency"], batches())
    assert conn.run("SELECT 1") == [[1]]
    assert count(conn, "dim_currency") == 0


def test_csv_rendering_tells_null_from_empty():
    batch = pa.record_batch([pa.array(["", None, "x"])], names=["s"])
    assert b"".join(warehouse.csv_chunks([batch])) == b'""\n\n"x"\n'
