"""The pipeline end to end: seed, cycle, simulate, cycle, and the warehouse equals the source."""
from datetime import timedelta

import pytest

from totes import jsonl, storage
from totes.source import SOURCE_TABLES
from totes_local import simulator

HOSTILE = "O'Brien \"Ltd\" '); DROP TABLE staff; --\nsecond line\t\u202eRTL \U0001F45C ß"

#: fact table -> (source table, SQL computing the fact's columns from the source, independently;
#: a current version is never a deletion, so ``is_deleted`` is false)
FACT_FROM_SOURCE = {
    "fact_sales_order": ("sales_order", """
        SELECT sales_order_id, created_at::date, created_at::time(3), last_updated::date,
               last_updated::time(3), staff_id, counterparty_id, units_sold, unit_price,
               currency_id, design_id, agreed_payment_date::date, agreed_delivery_date::date,
               agreed_delivery_location_id, false
        FROM sales_order ORDER BY 1"""),
    "fact_purchase_orders": ("purchase_order", """
        SELECT purchase_order_id, created_at::date, created_at::time(3), last_updated::date,
               last_updated::time(3), staff_id, counterparty_id, item_code, item_quantity,
               item_unit_price, currency_id, agreed_delivery_date::date,
               agreed_payment_date::date, agreed_delivery_location_id, false
        FROM purchase_order ORDER BY 1"""),
    "fact_payment": ("payment", """
        SELECT payment_id, created_at::date, created_at::time(3), last_updated::date,
               last_updated::time(3), transaction_id, counterparty_id, payment_amount,
               currency_id, payment_type_id, paid, payment_date::date, false
        FROM payment ORDER BY 1"""),
}

DIMENSION_FROM_SOURCE = {
    "dim_location": """SELECT address_id, address_line_1, address_line_2, district, city,
                              postal_code, country, phone FROM address ORDER BY 1""",
    "dim_counterparty": """
        SELECT c.counterparty_id, c.counterparty_legal_name, a.address_line_1, a.address_line_2,
               a.district, a.city, a.postal_code, a.country, a.phone
        FROM counterparty c JOIN address a ON a.address_id = c.legal_address_id ORDER BY 1""",
    "dim_staff": """
        SELECT s.staff_id, s.first_name, s.last_name, d.department_name, d.location,
               s.email_address
        FROM staff s JOIN department d USING (department_id) ORDER BY 1""",
    "dim_design": "SELECT design_id, design_name, file_location, file_name FROM design ORDER BY 1",
    "dim_payment_type": "SELECT payment_type_id, payment_type_name::text FROM payment_type "
                        "ORDER BY 1",
    "dim_transaction": """SELECT transaction_id, transaction_type::text, sales_order_id,
                                 purchase_order_id FROM "transaction" ORDER BY 1""",
    "dim_currency": "SELECT currency_id, currency_code FROM currency ORDER BY 1",
}


def warehouse_table(e2e, table: str) -> list[list]:
    """All rows of a warehouse table or view, without the surrogate key, ordered by business id."""
    columns = e2e.warehouse_rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
        "AND column_name NOT LIKE '%%record_id' ORDER BY ordinal_position", t=table)
    names = ", ".join(f'"{name}"' for [name] in columns)
    return e2e.warehouse_rows(f'SELECT {names} FROM "{table}" ORDER BY 1, 2')  # nosec B608


def counts(e2e) -> dict[str, int]:
    """Rows per warehouse table."""
    from totes.warehouse_schema import TABLES

    return {name: e2e.warehouse_rows(f'SELECT count(*) FROM "{name}"')[0][0]  # nosec B608
            for name in TABLES}


def observed_versions(e2e, table: str) -> list[tuple[int, str]]:
    """Every (id, last_updated) the ingest wrote for ``table``, read back from the bucket."""
    bucket = e2e.env["INGEST_BUCKET"]
    versions = []
    for key in storage.manifest_keys_after(bucket, None):
        for item in storage.read_json(bucket, key)["tables"][table]["files"]:
            body = storage.read_bytes(bucket, item["key"])
            versions += [(row[SOURCE_TABLES[table]], row["last_updated"])
                         for row in jsonl.decode_lines(body.splitlines())]
    return versions


def all_object_keys(bucket: str) -> set[str]:
    return set(storage.list_keys(bucket, ""))


def business_happens(e2e) -> dict:
    """A few hours of business plus the rare changes: amendment, moved address, department."""
    conn = e2e.source.connect()
    try:
        summary = simulator.simulate(conn, steps=6, seed=7)
        clock = simulator.latest_change(conn) + timedelta(minutes=1)
        order_id = conn.run("SELECT min(sales_order_id) FROM sales_order")[0][0]
        simulator.amend_sales_order(conn, order_id, clock)
        address_id = conn.run("SELECT legal_address_id FROM counterparty LIMIT 1")[0][0]
        simulator.change_address(conn, address_id, clock)
        department_id = conn.run("SELECT department_id FROM staff LIMIT 1")[0][0]
        simulator.change_department(conn, department_id, clock)
        return {**summary, "order_id": order_id}
    finally:
        conn.close()


@pytest.fixture(scope="module")
def two_cycles(module_e2e):
    """Seed, cycle, simulate business, cycle: once, for every test here that only inspects it."""
    module_e2e.pipeline.cycle()
    module_e2e.changes = business_happens(module_e2e)
    module_e2e.pipeline.cycle()
    return module_e2e


@pytest.mark.parametrize("fact", FACT_FROM_SOURCE)
def test_current_views_equal_the_current_source_rows(two_cycles, fact):
    source_table, sql = FACT_FROM_SOURCE[fact]
    expected = two_cycles.source_rows(sql)
    assert warehouse_table(two_cycles, f"{fact}_current") == expected


@pytest.mark.parametrize("fact", FACT_FROM_SOURCE)
def test_every_observed_version_is_exactly_one_fact_row(two_cycles, fact):
    source_table, _ = FACT_FROM_SOURCE[fact]
    observed = observed_versions(two_cycles, source_table)
    id_column = {"fact_sales_order": "sales_order_id", "fact_purchase_orders": "purchase_order_id",
                 "fact_payment": "payment_id"}[fact]
    in_warehouse = two_cycles.warehouse_rows(
        f'SELECT "{id_column}", to_char(last_updated_date + last_updated_time, '  # nosec B608
        f"'YYYY-MM-DD\"T\"HH24:MI:SS.MS') FROM \"{fact}\"")
    assert len(in_warehouse) == len(set(observed))
    assert sorted(map(tuple, in_warehouse)) == sorted(set(observed))


def test_amended_order_keeps_its_history(two_cycles):
    history = two_cycles.warehouse_rows(
        "SELECT last_updated_date, last_updated_time FROM fact_sales_order "
        "WHERE sales_order_id = :id ORDER BY 1, 2", id=two_cycles.changes["order_id"])
    assert len(history) == 2 and history[0] < history[1]


@pytest.mark.parametrize("dimension", DIMENSION_FROM_SOURCE)
def test_dimensions_equal_the_latest_source_state_with_propagated_changes(two_cycles, dimension):
    expected = two_cycles.source_rows(DIMENSION_FROM_SOURCE[dimension])
    actual = warehouse_table(two_cycles, dimension)
    if dimension == "dim_currency":
        actual = [row[:2] for row in actual]
    assert actual == expected


def test_currency_names_are_iso_4217_english_names(two_cycles):
    names = dict(two_cycles.warehouse_rows("SELECT currency_code, currency_name FROM dim_currency"))
    assert names == {"GBP": "Pound Sterling", "USD": "US Dollar", "EUR": "Euro"}


def test_dim_date_covers_every_referenced_date_with_correct_attributes(two_cycles):
    from totes.warehouse_schema import FACTS

    for fact in FACTS:
        for column in (c.name for c in fact.columns if c.references == "dim_date"):
            missing = two_cycles.warehouse_rows(
                f'SELECT count(*) FROM "{fact.name}" f WHERE NOT EXISTS '  # nosec B608
                f'(SELECT 1 FROM dim_date d WHERE d.date_id = f."{column}")')
            assert missing == [[0]], (fact.name, column)
    wrong = two_cycles.warehouse_rows("""
        SELECT count(*) FROM dim_date WHERE year <> extract(year FROM date_id)
          OR month <> extract(month FROM date_id) OR day <> extract(day FROM date_id)
          OR day_of_week <> extract(isodow FROM date_id)
          OR quarter <> extract(quarter FROM date_id)
          OR day_name <> trim(to_char(date_id, 'FMDay'))
          OR month_name <> trim(to_char(date_id, 'FMMonth'))""")
    assert wrong == [[0]]


def test_a_cycle_without_source_changes_adds_nothing_anywhere(e2e):
    e2e.pipeline.cycle()
    before = counts(e2e)
    objects = {b: all_object_keys(e2e.env[b]) for b in ("INGEST_BUCKET", "PROCESSED_BUCKET")}
    e2e.pipeline.cycle()
    assert counts(e2e) == before
    for bucket, keys in objects.items():
        new = all_object_keys(e2e.env[bucket]) - keys
        # a run's manifest and its claim on the previous one's succession, nothing else
        assert all(key.startswith(("_manifests/", "_claims/")) for key in new), new


def test_delivering_the_same_s3_event_twice_adds_nothing(e2e):
    report = e2e.pipeline.cycle()
    assert report.transforms
    processed = all_object_keys(e2e.env["PROCESSED_BUCKET"])
    before = counts(e2e)
    [manifest] = list(storage.manifest_keys_after(e2e.env["INGEST_BUCKET"], None))
    from totes_local.runner import s3_object_created_event

    e2e.pipeline.invoke("transform", s3_object_created_event(e2e.env["INGEST_BUCKET"], manifest))
    e2e.pipeline.load()
    assert all_object_keys(e2e.env["PROCESSED_BUCKET"]) == processed
    assert counts(e2e) == before


def test_a_hostile_string_reaches_the_warehouse_byte_for_byte(e2e):
    conn = e2e.source.connect()
    try:
        design_id = conn.run("SELECT min(design_id) FROM design")[0][0]
        conn.run("UPDATE design SET design_name = :name, last_updated = last_updated "
                 "+ interval '1 second' WHERE design_id = :id", name=HOSTILE, id=design_id)
    finally:
        conn.close()
    e2e.pipeline.cycle()
    stored = e2e.warehouse_rows("SELECT design_name FROM dim_design WHERE design_id = :id",
                                id=design_id)
    assert stored == [[HOSTILE]]
    assert stored[0][0].encode() == HOSTILE.encode()
