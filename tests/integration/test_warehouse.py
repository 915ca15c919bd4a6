"""The warehouse writes against a real PostgreSQL: DDL, COPY staging, upserts, appends."""
from datetime import date, time
from decimal import Decimal

import pyarrow as pa
import pytest
from loadkit import arrow_table, dimensions, payment, purchase, sale, table_rows

from totes import warehouse
from totes.warehouse_schema import (DELETIONS, FACTS, TABLES, Table, arrow_schema,
                                    create_bookkeeping_sql, create_table_sql)

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


def delete(conn, fact: str, deletions: list[dict]):
    """Load one fact's deletion records in one transaction, after any facts, as the load does."""
    with warehouse.transaction(conn):
        return warehouse.load_deletions(conn, TABLES[fact], pa.Table.from_pylist(
            deletions, schema=arrow_schema(DELETIONS[fact])).to_batches(2))


def gone(business_key: str, business_id: int, day=date(2024, 11, 16), at=time(8, 18, 46, 509000)):
    """A deletion record: the id and when its deletion was detected."""
    return {business_key: business_id, "last_updated_date": day, "last_updated_time": at}


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


def test_a_facts_missing_members_of_every_dimension_are_inferred_in_one_statement(conn):
    load(conn, dimensions())
    fact = TABLES["fact_sales_order"]
    statements = []
    run = conn.run
    with warehouse.transaction(conn):
        warehouse.create_staging(conn, fact)
        warehouse.copy_into_staging(conn, fact, arrow_table("fact_sales_order", [
            sale(1, sales_staff_id=42, design_id=9, created_date=date(2023, 1, 1))]).to_batches())
        conn.run = lambda sql, **params: statements.append(sql) or run(sql, **params)
        added = warehouse.add_inferred_members(conn, fact)
        conn.run = run
    assert len(statements) == 1
    assert {name: rows for name, rows in added.items() if rows} == {
        "dim_staff": 1, "dim_design": 1, "dim_date": 4}
    assert count(conn, "dim_staff") == len(dimensions()["dim_staff"]) + 1


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


# --- versions: capture order, corrections in place, deletions --------------------------------

def payments(conn, view: str = "fact_payment"):
    return conn.run(f'SELECT "payment_record_id", "payment_id", "paid", '  # nosec B608
                    f'"last_updated_time"::text, "is_deleted" FROM "{view}" ORDER BY 1')


def test_a_version_changed_without_a_new_last_updated_is_corrected_in_place_and_counted(conn):
    load(conn, {**dimensions(), "fact_payment": [payment(7), payment(8)]})
    newer = load(conn, {"fact_payment": [payment(8, time(11, 0), paid=True)]})
    assert (newer["fact_payment"].rows, newer["fact_payment"].corrected) == (1, 0)
    fixed = load(conn, {"fact_payment": [payment(7, payment_amount=Decimal("99.99"))]})
    assert (fixed["fact_payment"].rows, fixed["fact_payment"].corrected) == (1, 1)
    history = payments(conn)
    assert [row[1:] for row in history] == [[8, False, "10:00:00.123", False],
                                            [8, True, "11:00:00", False],
                                            [7, False, "10:00:00.123", False]]
    assert history[-1][0] > history[1][0]  # a fresh record id: the correction is the latest
    assert conn.run('SELECT "payment_amount" FROM "fact_payment_current" '
                    'WHERE "payment_id" = 7') == [[Decimal("99.99")]]


def test_an_identical_re_read_changes_nothing_and_is_not_counted(conn):
    load(conn, {**dimensions(), "fact_payment": [payment(7)]})
    before = table_rows(conn, "fact_payment")
    again = load(conn, {"fact_payment": [payment(7), payment(7)]})
    assert (again["fact_payment"].rows, again["fact_payment"].corrected) == (0, 0)
    assert table_rows(conn, "fact_payment") == before


def test_a_correction_of_an_older_version_is_current_because_it_was_captured_last(conn):
    load(conn, {**dimensions(), "fact_payment": [payment(7), payment(7, time(11, 0))]})
    load(conn, {"fact_payment": [payment(7, payment_amount=Decimal("1.00"))]})
    assert conn.run('SELECT "last_updated_time"::text, "payment_amount" '
                    'FROM "fact_payment_current"') == [["10:00:00.123", Decimal("1.00")]]
    assert count(conn, "fact_payment") == 2


def test_a_version_twice_in_one_batch_keeps_the_last_one(conn):
    loaded = load(conn, {**dimensions(), "fact_sales_order": [
        sale(1, units_sold=1), sale(2), sale(1, units_sold=3)]})
    assert (loaded["fact_sales_order"].rows, loaded["fact_sales_order"].corrected) == (2, 0)
    assert conn.run('SELECT "sales_order_id", "units_sold" FROM "fact_sales_order" '
                    'ORDER BY "sales_record_id"') == [[2, 10], [1, 3]]


def test_a_row_stamped_in_the_future_then_corrected_shows_the_correction(conn):
    future = sale(1, units_sold=1, last_updated_date=date(2027, 1, 1))
    load(conn, {**dimensions(), "fact_sales_order": [future]})
    load(conn, {"fact_sales_order": [sale(1, time(11, 0), units_sold=2)]})
    assert conn.run('SELECT "units_sold", "last_updated_date" FROM "fact_sales_order_current"'
                    ) == [[2, date(2024, 11, 15)]]
    assert count(conn, "fact_sales_order") == 2


def test_a_deleted_id_gets_one_more_version_with_its_last_values_and_leaves_the_view(conn):
    load(conn, {**dimensions(), "fact_payment": [
        payment(7), payment(7, time(11, 0), paid=True), payment(8)]})
    deleted = delete(conn, "fact_payment", [gone("payment_id", 7)])
    assert deleted.rows == 1 and deleted.inferred == {"dim_date": 1}
    history = conn.run('SELECT "payment_id", "paid", "last_updated_date", '
                       '"last_updated_time"::text, "is_deleted", "created_time"::text, '
                       '"payment_amount" FROM "fact_payment" WHERE "payment_id" = 7 '
                       'ORDER BY "payment_record_id"')
    assert history == [
        [7, False, date(2024, 11, 15), "10:00:00.123", False, "09:00:00", Decimal("26.80")],
        [7, True, date(2024, 11, 15), "11:00:00", False, "09:00:00", Decimal("26.80")],
        [7, True, date(2024, 11, 16), "08:18:46.509", True, "09:00:00", Decimal("26.80")]]
    assert conn.run('SELECT "payment_id" FROM "fact_payment_current"') == [[8]]


def test_a_redelivered_deletion_and_a_deletion_of_an_unknown_id_add_nothing(conn):
    load(conn, {**dimensions(), "fact_sales_order": [sale(1)]})
    assert delete(conn, "fact_sales_order", [gone("sales_order_id", 1)]).rows == 1
    before = table_rows(conn, "fact_sales_order")
    again = delete(conn, "fact_sales_order", [
        gone("sales_order_id", 1, at=time(9, 0)), gone("sales_order_id", 404)])
    assert again.rows == 0
    assert table_rows(conn, "fact_sales_order") == before


def test_an_id_deleted_twice_in_one_batch_gets_one_deletion_version(conn):
    load(conn, {**dimensions(), "fact_purchase_orders": [purchase(3)]})
    deleted = delete(conn, "fact_purchase_orders", [
        gone("purchase_order_id", 3), gone("purchase_order_id", 3, at=time(9, 0))])
    assert deleted.rows == 1
    assert conn.run('SELECT count(*) FROM "fact_purchase_orders" WHERE "is_deleted"') == [[1]]


def test_an_id_recreated_after_its_deletion_is_current_again(conn):
    load(conn, {**dimensions(), "fact_payment": [payment(7)]})
    delete(conn, "fact_payment", [gone("payment_id", 7)])
    load(conn, {"fact_payment": [payment(7, time(12, 0), paid=True)]})
    assert conn.run('SELECT "payment_id", "paid" FROM "fact_payment_current"') == [[7, True]]


def test_a_deletion_stamped_as_its_latest_version_still_takes_the_id_out_of_the_view(conn):
    # Log-based capture stamps a deletion with its commit time: a row inserted (or updated)
    # and deleted within the same millisecond has its deletion at its own last_updated.
    load(conn, {**dimensions(), "fact_payment": [payment(7), payment(8)]})
    deleted = delete(conn, "fact_payment", [
        gone("payment_id", 7, day=date(2024, 11, 15), at=time(10, 0, 0, 123000))])
    assert deleted.rows == 1
    assert [row[1:] for row in payments(conn)] == [[8, False, "10:00:00.123", False],
                                                   [7, False, "10:00:00.123", True]]
    assert conn.run('SELECT "payment_id" FROM "fact_payment_current"') == [[8]]
    again = delete(conn, "fact_payment", [   # delivered again: nothing changes
        gone("payment_id", 7, day=date(2024, 11, 15), at=time(10, 0, 0, 123000))])
    assert again.rows == 0


#: the ``*_current`` view of the previous contract: newest ``last_updated`` per business id.
PREVIOUS_VIEW = (
    'CREATE VIEW "{fact}_current" AS SELECT DISTINCT ON ("{business_id}") {columns} '
    'FROM "{fact}" ORDER BY "{business_id}", "last_updated_date" DESC, '
    '"last_updated_time" DESC, "{record_id}" DESC')


def _without_is_deleted(table: Table) -> Table:
    return Table(table.name, table.kind, table.primary_key,
                 tuple(c for c in table.columns if c.name != "is_deleted"), table.unique_key)


def test_a_warehouse_created_by_the_previous_contract_gains_is_deleted_in_place(
        postgres, database):
    """The schema before ``is_deleted``: the same tables without it, views by last_updated."""
    old = postgres.connect(database("old_wh"))
    try:
        old.run(create_bookkeeping_sql()[0])
        old.run('CREATE TABLE "etl"."loaded_manifest" ("manifest_key" text PRIMARY KEY, '
                '"run_id" text NOT NULL, "ingest_started_at" timestamptz, "loaded_at" '
                'timestamptz NOT NULL DEFAULT clock_timestamp(), "rows_loaded" bigint NOT NULL)')
        old.run('CREATE TABLE "etl"."schema_version" ("fingerprint" text PRIMARY KEY, '
                '"applied_at" timestamptz NOT NULL DEFAULT clock_timestamp())')
        for table in TABLES.values():
            old.run(create_table_sql(_without_is_deleted(table)))
        for fact in FACTS:
            old.run(PREVIOUS_VIEW.format(
                fact=fact.name, business_id=fact.unique_key[0], record_id=fact.primary_key,
                columns=", ".join(f'"{c.name}"' for c in _without_is_deleted(fact).columns)))
        old.run('INSERT INTO "etl"."schema_version" VALUES (\'the previous contract\')')
        old.run('INSERT INTO "etl"."loaded_manifest" VALUES (\'m\', \'r\', NULL, now(), 1)')
        dims = dimensions()
        for name, rows in dims.items():
            names = ", ".join(f'"{k}"' for k in rows[0])
            values = ", ".join(f":{k}" for k in rows[0])
            old.run(f'INSERT INTO "{name}" ({names}) VALUES ({values})',  # nosec B608
                    **rows[0])
        old.run('INSERT INTO "dim_date" VALUES (:d, 2024, 11, 15, 5, \'Friday\', '
                '\'November\', 4)', d=date(2024, 11, 15))
        old.run('INSERT INTO "dim_date" VALUES (:d, 2024, 11, 20, 3, \'Wednesday\', '
                '\'November\', 4)', d=date(2024, 11, 20))
        old.run('INSERT INTO "fact_payment" ("payment_id", "created_date", "created_time", '
                '"last_updated_date", "last_updated_time", "transaction_id", '
                '"counterparty_id", "payment_amount", "currency_id", "payment_type_id", '
                '"paid", "payment_date") VALUES (7, :d, \'09:00\', :d, \'10:00\', 1, 1, 26.80, '
                '1, 1, false, :p)', d=date(2024, 11, 15), p=date(2024, 11, 20))

        assert warehouse.ensure_schema(old) is True

        assert old.run('SELECT "payment_id", "is_deleted" FROM "fact_payment"') == [[7, False]]
        assert old.run("SELECT column_default, is_nullable FROM information_schema.columns "
                       "WHERE table_name = 'fact_sales_order' AND column_name = 'is_deleted'"
                       ) == [["false", "NO"]]
        assert old.run('SELECT "manifest_key", "capture_snapshot", "database_time" '
                       'FROM "etl"."loaded_manifest"') == [["m", None, None]]
        assert old.run("SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%_latest'"
                       ) == [[3]]
        delete(old, "fact_payment", [gone("payment_id", 7)])
        assert old.run('SELECT count(*) FROM "fact_payment_current"') == [[0]]
        assert old.run('SELECT count(*) FROM "fact_payment"') == [[2]]
    finally:
        old.close()
