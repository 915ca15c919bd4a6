"""A source that misbehaves, end to end: wrong clocks, unbumped stamps, columns added upstream.

Each case goes from the source through all three handlers to the warehouse's
``*_current`` views, which must equal the source whatever its ``last_updated``
values say; extreme values either arrive exactly (warehouse, lake and audit
agree) or stop ingest naming them, never arrive changed.
"""
from datetime import datetime, timedelta
from types import SimpleNamespace

import pytest
from conftest import pipeline_under_test
from lake_kit import assert_lake_equals_warehouse
from pipeline_kit import encoded_database
from test_audit import mismatched, run_audit
from test_pipeline import DIMENSION_FROM_SOURCE, FACT_FROM_SOURCE, warehouse_table
from test_recovery import supersede

from totes import errors, storage
from totes.transform import TransformInputError
from totes_local import generator


def run_on_source(e2e, *statements):
    """Run statements on the source in one transaction."""
    conn = e2e.source.connect()
    try:
        conn.run("START TRANSACTION")
        for statement, params in statements:
            conn.run(statement, **params)
        conn.run("COMMIT")
    finally:
        conn.close()


def current_equals_source(e2e, fact):
    """The fact's current view, row for row, against the source query the pipeline maps."""
    _, sql = FACT_FROM_SOURCE[fact]
    return warehouse_table(e2e, f"{fact}_current") == e2e.source_rows(sql)


def test_a_row_stamped_in_the_future_then_corrected_shows_the_correction(e2e):
    e2e.pipeline.cycle()
    order_id = e2e.source_rows("SELECT min(sales_order_id) FROM sales_order")[0][0]
    ahead = datetime.now().replace(microsecond=0) + timedelta(days=365)
    run_on_source(e2e, ("UPDATE sales_order SET units_sold = 1, last_updated = :at "
                        "WHERE sales_order_id = :id", {"at": ahead, "id": order_id}))
    first = e2e.pipeline.cycle()
    run_on_source(e2e, ("UPDATE sales_order SET units_sold = 2, last_updated = :at "
                        "WHERE sales_order_id = :id",
                        {"at": datetime(2024, 11, 20, 9, 0), "id": order_id}))

    e2e.pipeline.cycle()

    assert first.ingest["stamped_in_future"] == {"sales_order": 1}
    assert e2e.warehouse_rows(
        'SELECT units_sold FROM fact_sales_order_current WHERE sales_order_id = :id',
        id=order_id) == [[2]]
    assert current_equals_source(e2e, "fact_sales_order")


def test_an_update_that_leaves_last_updated_alone_still_reaches_the_current_view(e2e):
    e2e.pipeline.cycle()
    payment_id = e2e.source_rows("SELECT min(payment_id) FROM payment WHERE NOT paid")[0][0]
    run_on_source(e2e, ("UPDATE payment SET paid = true WHERE payment_id = :id",
                        {"id": payment_id}))

    report = e2e.pipeline.cycle()

    assert report.load["versions_corrected"]["fact_payment"] == 1
    assert e2e.warehouse_rows('SELECT paid FROM fact_payment_current WHERE payment_id = :id',
                              id=payment_id) == [[True]]
    assert current_equals_source(e2e, "fact_payment")


def test_columns_added_upstream_flow_through_nothing_and_break_nothing(e2e):
    e2e.pipeline.cycle()
    run_on_source(
        e2e, ("ALTER TABLE sales_order ADD COLUMN external_ref uuid DEFAULT gen_random_uuid()",
              {}),
        ("ALTER TABLE payment ADD COLUMN attributes jsonb DEFAULT '{\"a\": 1}'", {}),
        ("UPDATE sales_order SET units_sold = units_sold + 1, last_updated = :at "
         "WHERE sales_order_id = (SELECT max(sales_order_id) FROM sales_order)",
         {"at": datetime(2024, 11, 20, 9, 0)}))

    report = e2e.pipeline.cycle()

    assert report.ingest["total_rows"] > 0  # the rewrite re-read rows: harmless
    assert report.load["versions_corrected"]["fact_sales_order"] == 0
    for fact in FACT_FROM_SOURCE:
        assert current_equals_source(e2e, fact), fact


def test_the_first_and_last_instants_and_dates_the_warehouse_holds_arrive_exactly_everywhere(e2e):
    e2e.pipeline.cycle()
    order_id = e2e.source_rows("SELECT min(sales_order_id) FROM sales_order")[0][0]
    run_on_source(e2e, ("UPDATE sales_order SET created_at = '0001-01-01 00:00:00', "
                        "last_updated = '9999-12-31 23:59:59.999', "
                        "agreed_payment_date = '0001-01-01', agreed_delivery_date = '9999-12-31' "
                        "WHERE sales_order_id = :id", {"id": order_id}))

    e2e.pipeline.cycle()
    e2e.pipeline.publish()

    assert current_equals_source(e2e, "fact_sales_order")
    assert_lake_equals_warehouse(e2e)
    report = run_audit(e2e)
    assert report.ok, mismatched(report)


@pytest.mark.parametrize("assignment, named", [
    ("created_at = 'infinity'", "created_at 'infinity'"),
    ("last_updated = '0044-03-15 12:00:00 BC'", "last_updated '0044-03-15 12:00:00 BC'"),
    ("unit_price = 'NaN'", "unit_price 'NaN'"),
])
def test_a_value_that_cannot_be_carried_stops_ingest_naming_it_until_the_row_is_corrected(
        e2e, assignment, named):
    e2e.pipeline.cycle()
    committed = storage.latest_manifest_key(e2e.env["INGEST_BUCKET"])
    order_id = e2e.source_rows("SELECT min(sales_order_id) FROM sales_order")[0][0]
    # The assignment is one of the test's constants; the key is bound.
    run_on_source(e2e, (f"UPDATE sales_order SET {assignment} "  # nosec B608
                        "WHERE sales_order_id = :id", {"id": order_id}))

    with pytest.raises(errors.SourceDataError) as refused:
        e2e.pipeline.ingest()

    assert f"sales_order sales_order_id={order_id}: {named}" in str(refused.value)
    assert storage.latest_manifest_key(e2e.env["INGEST_BUCKET"]) == committed
    waiting = run_audit(e2e)  # the row changed after the last capture: in flight, not a mismatch
    assert waiting.ok and waiting.tables["fact_sales_order"].in_flight == 1, mismatched(waiting)
    run_on_source(e2e, ("UPDATE sales_order SET created_at = :at, last_updated = :at, "
                        "unit_price = 1.25 WHERE sales_order_id = :id",
                        {"at": datetime(2024, 11, 20, 9, 0), "id": order_id}))
    e2e.pipeline.cycle()
    assert current_equals_source(e2e, "fact_sales_order")
    report = run_audit(e2e)
    assert report.ok, mismatched(report)


def test_a_text_date_that_is_not_a_date_stops_transform_naming_it_and_the_runbook_recovers(
        e2e, capsys):
    e2e.pipeline.cycle()
    order_id = e2e.source_rows("SELECT min(sales_order_id) FROM sales_order")[0][0]
    run_on_source(e2e, ("UPDATE sales_order SET agreed_payment_date = '2024-02-30' "
                        "WHERE sales_order_id = :id", {"id": order_id}))
    e2e.pipeline.ingest()
    stuck = storage.latest_manifest_key(e2e.env["INGEST_BUCKET"])

    with pytest.raises(TransformInputError) as refused:
        e2e.pipeline.deliver_manifest_events()

    assert (f"sales_order sales_order_id={order_id}: agreed_payment_date '2024-02-30' is not a "
            "valid YYYY-MM-DD date") in str(refused.value)
    run_on_source(e2e, ("UPDATE sales_order SET agreed_payment_date = '2024-02-29' "
                        "WHERE sales_order_id = :id", {"id": order_id}))
    supersede(e2e, "skip", "--stage", "transform", "--manifest", stuck, "--reason", "bad date")
    e2e.pipeline.cycle()
    assert current_equals_source(e2e, "fact_sales_order")
    report = run_audit(e2e)
    assert report.ok, mismatched(report)
    capsys.readouterr()


#: city names whose bytes differ between UTF-8 and LATIN1 ('Ã©' is the UTF-8 of 'é' read as
#: LATIN1: sent in one and read in the other, each turns into the other, silently).
CITIES = ("Café", "CafÃ©")


def set_cities(e2e, cities):
    """Give the first addresses these city names at the source; return the rows that changed."""
    for address_id, city in enumerate(cities, start=1):
        run_on_source(e2e, ("UPDATE address SET city = :city, last_updated = last_updated "
                            "+ interval '1 minute' WHERE address_id = :id",
                            {"city": city, "id": address_id}))


def locations_equal_source(e2e):
    """dim_location, row for row, against the source's addresses."""
    return warehouse_table(e2e, "dim_location") == e2e.source_rows(
        DIMENSION_FROM_SOURCE["dim_location"])


def test_a_client_encoding_an_operator_set_on_either_database_changes_no_character(e2e):
    admin = e2e.postgres.connect("postgres")
    try:   # as ALTER ROLE ... SET client_encoding would, for every session of the login
        for name in (e2e.source.name, e2e.warehouse):
            admin.run(f'ALTER DATABASE "{name}" SET client_encoding = \'LATIN1\'')
    finally:
        admin.close()
    e2e.pipeline.cycle()
    set_cities(e2e, (*CITIES, "Łódź"))   # Ł: no LATIN1 byte at all

    e2e.pipeline.cycle()

    assert e2e.warehouse_rows("SELECT city FROM dim_location WHERE location_id <= 3 "
                              "ORDER BY location_id") == [[city] for city in (*CITIES, "Łódź")]
    assert locations_equal_source(e2e)
    report = run_audit(e2e)
    assert report.ok, mismatched(report)


@pytest.fixture
def encoded_totesys(request, postgres):
    """A generated totesys in a database whose encoding the test is parametrized with."""
    name = encoded_database(postgres, request.param)
    conn = postgres.connect(name)
    try:
        generator.seed_new(conn, scale=0.02)
    finally:
        conn.close()
    return SimpleNamespace(name=name, secret=postgres.secret(name),
                           connect=lambda: postgres.connect(name))


@pytest.mark.parametrize("encoded_totesys", ["WIN1252"], indirect=True)
def test_a_win1252_source_database_arrives_as_the_same_characters(
        aws, postgres, database, encoded_totesys):
    e2e = pipeline_under_test(aws, postgres, database, encoded_totesys)
    e2e.pipeline.cycle()
    set_cities(e2e, CITIES)

    e2e.pipeline.cycle()

    assert e2e.warehouse_rows("SELECT city FROM dim_location WHERE location_id <= 2 "
                              "ORDER BY location_id") == [[city] for city in CITIES]
    assert locations_equal_source(e2e)
    report = run_audit(e2e)
    assert report.ok, mismatched(report)


@pytest.mark.parametrize("encoded_totesys", ["SQL_ASCII"], indirect=True)
def test_a_sql_ascii_text_that_is_not_utf8_stops_ingest_naming_its_table_until_rewritten(
        aws, postgres, database, encoded_totesys):
    e2e = pipeline_under_test(aws, postgres, database, encoded_totesys)
    e2e.pipeline.cycle()
    committed = storage.latest_manifest_key(e2e.env["INGEST_BUCKET"])
    set_cities(e2e, ["Café"])   # UTF-8 bytes: SQL_ASCII keeps them, and they travel
    run_on_source(e2e, ("UPDATE address SET city = convert_from(:latin1, 'SQL_ASCII') "
                        "WHERE address_id = 2", {"latin1": "Café".encode("latin-1")}))

    with pytest.raises(errors.SourceDataError, match="^address: a text value is not UTF-8 "
                                                     r"\(invalid byte sequence"):
        e2e.pipeline.ingest()

    assert storage.latest_manifest_key(e2e.env["INGEST_BUCKET"]) == committed
    set_cities(e2e, ["Café", "Café"])   # rewritten in UTF-8
    e2e.pipeline.cycle()
    assert e2e.warehouse_rows("SELECT city FROM dim_location WHERE location_id <= 2 "
                              "ORDER BY location_id") == [["Café"], ["Café"]]
    assert locations_equal_source(e2e)


def payment_versions(e2e, payment_id):
    """(payment amount, is_deleted) of every version of a payment, in load order."""
    return [tuple(row) for row in e2e.warehouse_rows(
        'SELECT "payment_amount", "is_deleted" FROM "fact_payment" WHERE "payment_id" = :p '
        'ORDER BY "payment_record_id"', p=payment_id)]


def test_a_primary_key_changed_then_reused_leaves_no_phantom_and_keeps_each_history(
        e2e, monkeypatch):
    monkeypatch.setenv("INGEST_DELETE_SWEEP_MINUTES", "0")
    e2e.pipeline.cycle()
    [[payment_id, amount]] = e2e.source_rows(
        "SELECT payment_id, payment_amount FROM payment ORDER BY 1 LIMIT 1")
    run_on_source(e2e, ("UPDATE payment SET payment_id = 900000 WHERE payment_id = :p",
                        {"p": payment_id}))   # key 5 becomes 500: no stamp bumped

    e2e.pipeline.cycle()

    assert current_equals_source(e2e, "fact_payment")   # no phantom of the old key
    assert payment_versions(e2e, payment_id) == [(amount, False), (amount, True)]
    assert payment_versions(e2e, 900000) == [(amount, False)]
    run_on_source(e2e, ("UPDATE payment SET payment_id = :p, payment_amount = payment_amount + 1, "
                        "last_updated = last_updated + interval '1 day' WHERE payment_id = 900000",
                        {"p": payment_id}))   # and back: the old key is used again

    e2e.pipeline.cycle()

    assert current_equals_source(e2e, "fact_payment")
    assert payment_versions(e2e, payment_id) == [(amount, False), (amount, True),
                                                 (amount + 1, False)]
    assert payment_versions(e2e, 900000) == [(amount, False), (amount, True)]


@pytest.mark.parametrize("statements, dimension", [
    (['ALTER TYPE "TransactionType" RENAME VALUE \'SALE\' TO \'SALES\''], "dim_transaction"),
    (["ALTER TABLE address DROP COLUMN city",
      "ALTER TABLE address ADD COLUMN city text NOT NULL DEFAULT 'Leeds'"], "dim_location"),
], ids=["enum-label-renamed", "column-dropped-and-added-again"])
def test_ddl_that_changes_every_row_without_writing_one_reads_the_table_again(
        e2e, captured_logs, statements, dimension):
    e2e.pipeline.cycle()
    run_on_source(e2e, *((statement, {}) for statement in statements))   # no row is written

    second = e2e.pipeline.cycle()

    [table] = {"dim_transaction": ["transaction"], "dim_location": ["address"]}[dimension]
    assert second.ingest["rows"][table] == e2e.source_rows(f'SELECT count(*) FROM "{table}"')[0][0]
    [warning] = [line for line in captured_logs()
                 if line["message"].startswith("source tables redefined since the previous run")]
    assert warning["tables"] == [table]
    assert warehouse_table(e2e, dimension) == e2e.source_rows(DIMENSION_FROM_SOURCE[dimension])
    report = run_audit(e2e)
    assert report.ok, mismatched(report)
    assert e2e.pipeline.cycle().ingest["total_rows"] == 0   # once: the next run reads nothing
