"""Migrations against a real PostgreSQL: what they refuse, what they tolerate, how they wait.

Each test starts from a warehouse at the current contract, changes it by hand as an
analyst or a DBA might, forgets the fingerprint (so the next run migrates), and runs
the migration again.
"""
import time

import pytest
from loadkit import Buckets, dimensions, payment

from totes import warehouse
from totes.errors import INPUT, TRANSIENT, kind_of
from totes.warehouse import SchemaDifference, SchemaMismatchError
from totes.warehouse_schema import TABLES, Column, Table
from totes_local import stack
from totes_local.runner import LambdaContext, load_handler, scheduled_event


@pytest.fixture
def wh(postgres, database):
    """A warehouse at the current contract whose fingerprint is forgotten: the next run migrates."""
    name = database("migr")
    connection = postgres.connect(name)
    assert warehouse.ensure_schema(connection) is True
    forget(connection)
    yield connection
    connection.close()


def forget(conn) -> None:
    conn.run('TRUNCATE "etl"."schema_version"')


def fingerprints(conn) -> list[list[str]]:
    return conn.run('SELECT "fingerprint" FROM "etl"."schema_version"')


def has_column(conn, table: str, column: str) -> bool:
    return conn.run("SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                    "'public' AND table_name = :t AND column_name = :c", t=table, c=column
                    ) == [[1]]


def refused(conn) -> SchemaMismatchError:
    """Run the migration, expect it refused; check nothing was recorded."""
    with pytest.raises(SchemaMismatchError) as raised:
        warehouse.ensure_schema(conn)
    assert kind_of(raised.value) == INPUT
    assert fingerprints(conn) == []
    return raised.value


def test_a_warehouse_at_the_contract_differs_in_nothing(wh):
    live = warehouse.live_catalog(wh)
    assert set(live) == {*TABLES, "fact_sales_order_current", "fact_purchase_orders_current",
                         "fact_payment_current"}
    assert warehouse.schema_differences(live) == []
    assert warehouse.extra_columns(live) == []
    assert warehouse.ensure_schema(wh) is True
    assert fingerprints(wh) == [[warehouse.SCHEMA_FINGERPRINT]]


def test_a_type_changed_by_hand_is_refused_naming_table_and_column_before_any_ddl(wh):
    wh.run('ALTER TABLE "dim_location" ALTER COLUMN "city" TYPE text')
    wh.run('ALTER TABLE "dim_staff" DROP COLUMN "location"')  # addable: shows no DDL ran
    error = refused(wh)
    assert error.differences == (SchemaDifference(
        "dim_location", "city", "type is text, the contract has character varying"),)
    assert "dim_location.city: type is text, the contract has character varying" in str(error)
    assert not has_column(wh, "dim_staff", "location")


def test_a_nullability_changed_by_hand_is_refused_either_way(wh):
    wh.run('ALTER TABLE "dim_staff" ALTER COLUMN "email_address" DROP NOT NULL')
    wh.run('ALTER TABLE "dim_location" ALTER COLUMN "district" SET NOT NULL')
    error = refused(wh)
    assert set(error.differences) == {
        SchemaDifference("dim_staff", "email_address",
                         "is nullable, the contract has it NOT NULL"),
        SchemaDifference("dim_location", "district", "is NOT NULL, the contract has it nullable"),
    }


def test_a_not_null_column_dropped_by_hand_is_refused(wh):
    wh.run('ALTER TABLE "dim_staff" DROP COLUMN "first_name"')
    error = refused(wh)
    assert [(d.table, d.column) for d in error.differences] == [("dim_staff", "first_name")]
    assert "missing, and NOT NULL without a default" in str(error)
    assert not has_column(wh, "dim_staff", "first_name")


def test_a_new_not_null_column_without_a_default_cannot_be_added_but_one_with_a_default_can(wh):
    staff = TABLES["dim_staff"]
    live = warehouse.live_catalog(wh)["dim_staff"]
    without = Table(staff.name, staff.kind, staff.primary_key,
                    (*staff.columns, Column("grade", "int")))
    with_default = Table(staff.name, staff.kind, staff.primary_key,
                         (*staff.columns, Column("grade", "int", default=0)))
    nullable = Table(staff.name, staff.kind, staff.primary_key,
                     (*staff.columns, Column("grade", "int", nullable=True)))
    assert [(d.table, d.column) for d in warehouse._table_differences(without, live)] == [
        ("dim_staff", "grade")]
    assert list(warehouse._table_differences(with_default, live)) == []
    assert list(warehouse._table_differences(nullable, live)) == []


def test_a_nullable_column_dropped_by_hand_is_added_back(wh):
    wh.run('ALTER TABLE "dim_staff" DROP COLUMN "location"')
    assert warehouse.ensure_schema(wh) is True
    assert has_column(wh, "dim_staff", "location")
    assert fingerprints(wh) == [[warehouse.SCHEMA_FINGERPRINT]]


def test_a_column_added_by_hand_is_tolerated_and_logged(wh, captured_logs):
    wh.run('ALTER TABLE "fact_payment" ADD COLUMN "analyst_note" text')
    wh.run('ALTER TABLE "dim_staff" ADD COLUMN "grade" integer NOT NULL DEFAULT 1')
    assert warehouse.ensure_schema(wh) is True
    assert fingerprints(wh) == [[warehouse.SCHEMA_FINGERPRINT]]
    assert has_column(wh, "fact_payment", "analyst_note")
    logged = {(line["table"], line["column"]) for line in captured_logs()
              if line["message"] == "warehouse column not in the contract, left as it is"}
    assert logged == {("fact_payment", "analyst_note"), ("dim_staff", "grade")}


def test_a_column_added_by_hand_that_every_insert_would_violate_is_refused(wh):
    wh.run('ALTER TABLE "dim_currency" ADD COLUMN "owner" text NOT NULL DEFAULT \'x\'')
    wh.run('ALTER TABLE "dim_currency" ALTER COLUMN "owner" DROP DEFAULT')
    error = refused(wh)
    assert [(d.table, d.column) for d in error.differences] == [("dim_currency", "owner")]


def test_a_view_redefined_by_hand_is_refused_naming_the_column(wh):
    wh.run('DROP VIEW "fact_payment_current"')
    wh.run('CREATE VIEW "fact_payment_current" AS '
           'SELECT "payment_record_id", "paid" FROM "fact_payment"')
    error = refused(wh)
    assert error.differences == (SchemaDifference(
        "fact_payment_current", "paid", "is column 2, where the contract has payment_id: "
        "a view can only gain columns at the end"),)


def test_a_contract_table_replaced_by_a_view_is_refused(wh):
    wh.run('ALTER TABLE "dim_design" RENAME TO "dim_design_old"')
    wh.run('CREATE VIEW "dim_design" AS SELECT * FROM "dim_design_old"')
    error = refused(wh)
    assert error.differences == (SchemaDifference(
        "dim_design", None, "is a view, the contract has a table"),)


def test_a_migration_blocked_by_an_analysts_lock_fails_fast_as_transient_then_succeeds(
        wh, postgres, monkeypatch):
    monkeypatch.setattr(warehouse, "MIGRATION_LOCK_TIMEOUT_MS", 300)
    wh.run('ALTER TABLE "dim_staff" DROP COLUMN "location"')
    database_name = wh.run("SELECT current_database()")[0][0]
    analyst = postgres.connect(database_name)
    try:
        analyst.run("START TRANSACTION")
        # a long report: a plain read holds ACCESS SHARE until it ends, which ALTER TABLE waits for
        analyst.run('LOCK TABLE "fact_payment" IN ACCESS SHARE MODE')
        started = time.monotonic()
        with pytest.raises(warehouse.MigrationLockTimeoutError) as raised:
            warehouse.ensure_schema(wh)
        assert time.monotonic() - started < 5
        assert kind_of(raised.value) == TRANSIENT
        assert '"fact_payment"' in str(raised.value)
        assert "nothing was applied or recorded" in str(raised.value)
        assert fingerprints(wh) == []
        assert not has_column(wh, "dim_staff", "location")  # the ALTER before it rolled back
        assert wh.run("SHOW lock_timeout") == [["0"]]  # SET LOCAL: loads do not inherit it
        assert analyst.run('SELECT count(*) FROM "fact_payment"') == [[0]]
        analyst.run("COMMIT")

        assert warehouse.ensure_schema(wh) is True
        assert fingerprints(wh) == [[warehouse.SCHEMA_FINGERPRINT]]
        assert has_column(wh, "dim_staff", "location")
    finally:
        analyst.close()


def test_an_analysts_access_exclusive_lock_fails_the_migration_as_transient(
        wh, postgres, monkeypatch):
    monkeypatch.setattr(warehouse, "MIGRATION_LOCK_TIMEOUT_MS", 300)
    analyst = postgres.connect(wh.run("SELECT current_database()")[0][0])
    try:
        analyst.run("START TRANSACTION")
        analyst.run('LOCK TABLE "fact_sales_order" IN ACCESS EXCLUSIVE MODE')
        with pytest.raises(warehouse.MigrationLockTimeoutError):
            warehouse.ensure_schema(wh)
        assert fingerprints(wh) == []
        analyst.run("ROLLBACK")
        assert warehouse.ensure_schema(wh) is True
    finally:
        analyst.close()


def test_a_refused_migration_fails_the_load_as_an_input_error_and_loads_nothing(
        wh, postgres, aws, captured_logs):
    database_name = wh.run("SELECT current_database()")[0][0]
    stack.provision({aws["WAREHOUSE_SECRET_ID"]: postgres.secret(database_name)}, buckets=())
    Buckets(aws["INGEST_BUCKET"], aws["PROCESSED_BUCKET"]).publish(
        {**dimensions(), "fact_payment": [payment(1)]})
    wh.run('ALTER TABLE "dim_location" ALTER COLUMN "city" TYPE text')

    with pytest.raises(SchemaMismatchError, match="dim_location.city"):
        load_handler("load")(scheduled_event("load"), LambdaContext(function_name="totes-load"))

    assert wh.run('SELECT count(*) FROM "etl"."loaded_manifest"') == [[0]]
    assert wh.run('SELECT count(*) FROM "dim_location"') == [[0]]
    assert fingerprints(wh) == []
    [failed] = [line for line in captured_logs()
                if line["message"].startswith("invocation failed")]
    assert (failed["error_kind"], failed["error_class"]) == (INPUT, "SchemaMismatchError")
