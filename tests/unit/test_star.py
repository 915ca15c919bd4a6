from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest
from ingest_fixtures import T0, decoded, row

from totes import star
from totes.warehouse_schema import DELETIONS, TABLES, arrow_schema


def frame(table, *rows):
    return star.source_frame(table, decoded(table, rows))


def records(warehouse_frame):
    return warehouse_frame.to_dict("records")


# --- parsing the source strictly -------------------------------------------------------------

def test_money_stays_exact_decimal_from_json_to_arrow():
    prices = [Decimal("2.68"), Decimal("0.10"), Decimal("99999999.99"), Decimal("1234567.05")]
    orders = frame("sales_order", *(row("sales_order", sales_order_id=i, unit_price=price)
                                    for i, price in enumerate(prices)))
    fact = star.fact_sales_order(orders)
    table = star.to_arrow("fact_sales_order", fact)
    assert table.schema.field("unit_price").type == pa.decimal128(10, 2)
    assert table.column("unit_price").to_pylist() == prices
    assert all(type(value) is Decimal for value in table.column("unit_price").to_pylist())


def test_integer_money_is_accepted_exactly():
    orders = frame("sales_order", row("sales_order", unit_price=5))
    assert records(star.fact_sales_order(orders))[0]["unit_price"] == Decimal("5.00")


@pytest.mark.parametrize("price", [Decimal("2.675"), Decimal("100000000.00"),
                                   Decimal("-100000000")])
def test_money_that_does_not_fit_numeric_10_2_is_a_clear_error(price):
    with pytest.raises(star.SourceDataError,
                       match=r"sales_order sales_order_id=7: unit_price .* numeric\(10,2\)"):
        frame("sales_order", row("sales_order", sales_order_id=7, unit_price=price))


def test_money_given_as_text_is_rejected():
    with pytest.raises(star.SourceDataError, match="payment payment_id=3: payment_amount"):
        frame("payment", row("payment", payment_id=3, payment_amount="12.00"))


@pytest.mark.parametrize("value", ["2024-1-05", "2024-02-30", "15/11/2024", "2024-11-15x", ""])
def test_malformed_text_date_names_table_key_and_value(value):
    with pytest.raises(star.SourceDataError) as error:
        frame("payment", row("payment", payment_id=42, payment_date=value))
    message = str(error.value)
    assert "payment payment_id=42" in message
    assert "payment_date" in message and repr(value) in message


def test_text_date_that_is_not_a_string_is_rejected():
    with pytest.raises(star.SourceDataError, match="sales_order_id=9: agreed_delivery_date"):
        frame("sales_order", row("sales_order", sales_order_id=9, agreed_delivery_date=20241120))


@pytest.mark.parametrize("value", ["2024-11-15 14:20:09.123", "yesterday", 17])
def test_timestamp_not_in_iso_with_milliseconds_is_rejected(value):
    with pytest.raises(star.SourceDataError, match="currency currency_id=2: last_updated"):
        frame("currency", row("currency", currency_id=2, last_updated=value))


def test_dates_and_timestamps_parsed_together_still_name_the_first_bad_value_in_column_order():
    # created_at (a timestamp) comes before design_id and the two dates: each column's error
    # names its own row and value, and the first bad column wins whatever its kind.
    good = row("sales_order", sales_order_id=1)
    late_date = row("sales_order", sales_order_id=2, agreed_payment_date="2024-02-30")
    with pytest.raises(star.SourceDataError,
                       match="sales_order_id=2: agreed_payment_date '2024-02-30'"):
        frame("sales_order", good, late_date)
    both = row("sales_order", sales_order_id=3, created_at="yesterday", design_id="x",
               agreed_delivery_date="never")
    with pytest.raises(star.SourceDataError, match="sales_order_id=3: created_at 'yesterday'"):
        frame("sales_order", good, both)
    int_first = row("sales_order", sales_order_id=4, design_id="x", agreed_delivery_date="never")
    with pytest.raises(star.SourceDataError, match="sales_order_id=4: design_id 'x'"):
        frame("sales_order", good, int_first)


def test_each_stamp_column_keeps_its_own_values_when_parsed_together():
    orders = frame("sales_order", row("sales_order", sales_order_id=1,
                                      agreed_delivery_date="2024-03-01",
                                      agreed_payment_date="2024-04-02"),
                   row("sales_order", sales_order_id=2, agreed_delivery_date="2025-05-03",
                       agreed_payment_date=None))
    assert orders["agreed_delivery_date"].tolist() == [date(2024, 3, 1), date(2025, 5, 3)]
    assert orders["agreed_payment_date"].isna().tolist() == [False, True]
    assert orders["agreed_payment_date"].iloc[0] == date(2024, 4, 2)


def test_missing_column_is_named():
    rows = decoded("staff", [row("staff")])
    del rows[0]["email_address"]
    with pytest.raises(star.SourceDataError, match="staff row 1 lacks column.*email_address"):
        star.source_frame("staff", rows)


@pytest.mark.parametrize("column,value", [("units_sold", "many"), ("staff_id", Decimal("1.5")),
                                          ("units_sold", True)])
def test_integer_column_with_another_type_is_rejected(column, value):
    with pytest.raises(star.SourceDataError, match=f"sales_order_id=1: {column}"):
        frame("sales_order", row("sales_order", **{column: value}))


def test_flag_that_is_not_a_boolean_is_rejected():
    with pytest.raises(star.SourceDataError, match="payment_id=1: paid 1 is not bool"):
        frame("payment", row("payment", paid=1))


def test_extra_source_columns_are_ignored():
    staff = frame("staff", row("staff"))
    assert "created_at" not in staff.columns


# --- facts -----------------------------------------------------------------------------------

def test_fact_sales_order_splits_timestamps_keeping_milliseconds():
    created = datetime(2024, 11, 14, 9, 5, 1, 7000)
    fact = records(star.fact_sales_order(frame("sales_order", row(
        "sales_order", created_at=created, last_updated=T0))))[0]
    assert fact["created_date"] == date(2024, 11, 14)
    assert fact["created_time"] == time(9, 5, 1, 7000)
    assert fact["last_updated_date"] == date(2024, 11, 15)
    assert fact["last_updated_time"] == time(14, 20, 9, 123000)


def test_fact_sales_order_maps_staff_to_sales_staff_and_parses_agreed_dates():
    fact = records(star.fact_sales_order(frame("sales_order", row(
        "sales_order", sales_order_id=5, staff_id=12, design_id=3, counterparty_id=4,
        agreed_delivery_date="2024-12-01", agreed_payment_date="2024-12-31",
        agreed_delivery_location_id=9))))[0]
    assert fact["sales_order_id"] == 5
    assert fact["sales_staff_id"] == 12
    assert (fact["design_id"], fact["counterparty_id"]) == (3, 4)
    assert fact["agreed_delivery_date"] == date(2024, 12, 1)
    assert fact["agreed_payment_date"] == date(2024, 12, 31)
    assert fact["agreed_delivery_location_id"] == 9


def test_every_source_version_becomes_a_fact_row():
    versions = [row("payment", payment_id=1, paid=False),
                row("payment", payment_id=1, paid=True, last_updated=T0 + timedelta(days=1))]
    facts = records(star.fact_payment(frame("payment", *versions)))
    assert [(fact["payment_id"], fact["paid"]) for fact in facts] == [(1, False), (1, True)]


def test_fact_purchase_orders_columns_and_values():
    fact = star.fact_purchase_orders(frame("purchase_order", row(
        "purchase_order", purchase_order_id=8, item_code="ABC", item_unit_price=Decimal("0.05"))))
    assert list(fact.columns) == [c.name for c in TABLES["fact_purchase_orders"].data_columns]
    value = records(fact)[0]
    assert (value["purchase_order_id"], value["item_code"]) == (8, "ABC")
    assert value["item_unit_price"] == Decimal("0.05")


def test_fact_payment_keeps_paid_flag_and_payment_date():
    fact = records(star.fact_payment(frame("payment", row(
        "payment", paid=True, payment_date="2025-01-02", payment_amount=Decimal("1000000.01")))))[0]
    assert fact["paid"] is True
    assert fact["payment_date"] == date(2025, 1, 2)
    assert fact["payment_amount"] == Decimal("1000000.01")


def test_every_fact_row_is_an_ordinary_version_not_a_deletion():
    for spec in star.BUILDERS.values():
        if not isinstance(spec, star.Fact):
            continue
        table = spec.source
        fact = records(spec.build(frame(table, row(table), row(table, last_updated=T0.replace(
            year=2027)))))
        assert [value["is_deleted"] for value in fact] == [False, False]


def test_latest_versions_keeps_the_row_captured_last_whatever_its_last_updated():
    future = row("design", design_id=1, design_name="Typo", last_updated=T0.replace(year=2027))
    corrected = row("design", design_id=1, design_name="Fixed")
    other = row("design", design_id=2, design_name="Other")
    latest = star.latest_versions(frame("design", other, future, corrected), "design")
    assert latest["design_id"].tolist() == [1, 2]
    assert latest["design_name"].tolist() == ["Fixed", "Other"]


# --- deletions -------------------------------------------------------------------------------

def test_deletion_records_become_the_fact_deletion_schema_with_the_detection_time():
    deleted = star.deletions("purchase_order", [
        {"purchase_order_id": 8, "deleted_at": "2026-11-27T08:18:46.509"},
        {"purchase_order_id": 9, "deleted_at": "2026-12-31T23:59:59.000", "extra": 1}])
    table = star.to_arrow(DELETIONS["fact_purchase_orders"], deleted)
    assert table.schema.equals(arrow_schema(DELETIONS["fact_purchase_orders"]))
    assert table.to_pylist() == [
        {"purchase_order_id": 8, "last_updated_date": date(2026, 11, 27),
         "last_updated_time": time(8, 18, 46, 509000)},
        {"purchase_order_id": 9, "last_updated_date": date(2026, 12, 31),
         "last_updated_time": time(23, 59, 59)}]
    assert star.fact_dates(DELETIONS["fact_purchase_orders"], deleted) == {
        date(2026, 11, 27), date(2026, 12, 31)}


def test_the_deletion_schema_is_the_business_id_and_the_last_updated_split():
    for fact, deletion in DELETIONS.items():
        assert deletion.column_names == (TABLES[fact].unique_key[0], "last_updated_date",
                                         "last_updated_time")
        assert arrow_schema(deletion).types == [pa.int32(), pa.date32(), pa.time32("ms")]


@pytest.mark.parametrize("record, message", [
    ({"payment_id": 1}, "payment deletion record 1 lacks deleted_at"),
    ({"deleted_at": "2026-11-27T08:18:46.509"}, "lacks payment_id"),
    ({"payment_id": 1.5, "deleted_at": "2026-11-27T08:18:46.509"}, "payment_id 1.5 is not int"),
    ({"payment_id": 4, "deleted_at": "2026-11-27"}, "payment_id=4: deleted_at '2026-11-27'"),
    ({"payment_id": 2 ** 31, "deleted_at": "2026-11-27T08:18:46.509"}, "not in range"),
])
def test_a_bad_deletion_record_is_refused_naming_it(record, message):
    with pytest.raises((star.SourceDataError, pa.ArrowInvalid), match=message):
        star.deletions("payment", [record])


# --- dim_date --------------------------------------------------------------------------------

def test_dim_date_names_and_iso_weekday_for_known_dates():
    rows = {r["date_id"]: r for r in records(star.dim_date([
        date(2024, 1, 1), date(2024, 11, 17), date(2024, 2, 29), date(2023, 12, 31)]))}
    assert rows[date(2024, 1, 1)] == {
        "date_id": date(2024, 1, 1), "year": 2024, "month": 1, "day": 1, "day_of_week": 1,
        "day_name": "Monday", "month_name": "January", "quarter": 1}
    assert (rows[date(2024, 11, 17)]["day_of_week"], rows[date(2024, 11, 17)]["day_name"]) \
        == (7, "Sunday")
    assert rows[date(2024, 2, 29)]["month_name"] == "February"
    assert rows[date(2023, 12, 31)]["quarter"] == 4


def test_dim_date_is_consistent_for_every_day_of_a_leap_year():
    days = [date(2024, 1, 1) + timedelta(days=n) for n in range(366)]
    dims = records(star.dim_date(reversed(days)))
    assert [d["date_id"] for d in dims] == days
    for d in dims:
        assert d["day_of_week"] == d["date_id"].isoweekday()
        assert star.DAY_NAMES[d["day_of_week"] - 1] == d["day_name"]
        assert star.MONTH_NAMES[d["month"] - 1] == d["month_name"]
        assert d["quarter"] == (d["month"] + 2) // 3
        assert (d["year"], d["month"], d["day"]) == (2024, d["date_id"].month, d["date_id"].day)
    assert {d["quarter"] for d in dims} == {1, 2, 3, 4}


def test_dim_date_of_repeated_dates_has_one_row_each():
    assert len(star.dim_date([date(2024, 5, 5)] * 3)) == 1


def test_fact_dates_cover_created_updated_agreed_and_payment_dates():
    sales = star.fact_sales_order(frame("sales_order", row(
        "sales_order", created_at=datetime(2024, 11, 1, 8), last_updated=T0,
        agreed_delivery_date="2024-11-20", agreed_payment_date="2024-11-21")))
    payments = star.fact_payment(frame("payment", row("payment", payment_date="2024-12-25")))
    assert star.fact_dates("fact_sales_order", sales) == {
        date(2024, 11, 1), date(2024, 11, 15), date(2024, 11, 20), date(2024, 11, 21)}
    assert date(2024, 12, 25) in star.fact_dates("fact_payment", payments)


# --- plain dimensions ------------------------------------------------------------------------

@pytest.mark.parametrize("code,name", [("GBP", "Pound Sterling"), ("USD", "US Dollar"),
                                       ("EUR", "Euro"), ("jpy", "Yen")])
def test_currency_names_are_iso_4217_english_names(code, name):
    assert star.currency_name(code) == name


def test_unknown_currency_keeps_its_code_as_name():
    currencies = frame("currency", row("currency", currency_id=1, currency_code="GBP"),
                       row("currency", currency_id=2, currency_code="ZZZ"))
    names = dict(zip(*(star.dim_currency(currencies)[c] for c in ("currency_code",
                                                                  "currency_name"))))
    assert names == {"GBP": "Pound Sterling", "ZZZ": "ZZZ"}
    assert star.unknown_currency_codes(currencies) == ["ZZZ"]


def test_dim_design_payment_type_and_transaction_come_straight_from_source():
    design = records(star.dim_design(frame("design", row("design", design_id=4))))[0]
    assert design == {"design_id": 4, "design_name": "Wooden", "file_location": "/usr",
                      "file_name": "wooden-20220717-npgz.json"}
    kind = records(star.dim_payment_type(frame("payment_type", row("payment_type"))))[0]
    assert kind == {"payment_type_id": 1, "payment_type_name": "SALES_RECEIPT"}
    transactions = records(star.dim_transaction(frame(
        "transaction", row("transaction"),
        row("transaction", transaction_id=2, transaction_type="PURCHASE", sales_order_id=None,
            purchase_order_id=6))))
    assert transactions == [
        {"transaction_id": 1, "transaction_type": "SALE", "sales_order_id": 1,
         "purchase_order_id": None},
        {"transaction_id": 2, "transaction_type": "PURCHASE", "sales_order_id": None,
         "purchase_order_id": 6}]


def test_dim_location_is_the_address_with_its_id_as_location_id():
    location = records(star.dim_location(frame("address", row("address", address_id=30))))[0]
    assert location["location_id"] == 30
    assert location["address_line_2"] is None
    assert location["phone"] == "1803 637401"


def test_dim_counterparty_takes_legal_address_columns_from_address():
    counterparty = frame("counterparty", row("counterparty", counterparty_id=2,
                                             legal_address_id=5))
    address = frame("address", row("address", address_id=5, city="Leeds", phone="0113"),
                    row("address", address_id=6, city="York"))
    result = records(star.dim_counterparty(counterparty, address))
    assert len(result) == 1
    assert result[0]["counterparty_legal_city"] == "Leeds"
    assert result[0]["counterparty_legal_phone_number"] == "0113"
    assert result[0]["counterparty_legal_address_line_2"] is None


def test_dim_staff_takes_department_name_and_location():
    staff = frame("staff", row("staff", staff_id=3, department_id=2))
    department = frame("department", row("department", department_id=2,
                                         department_name="Finance", location=None))
    assert records(star.dim_staff(staff, department)) == [{
        "staff_id": 3, "first_name": "Jeremie", "last_name": "Franey",
        "department_name": "Finance", "location": None,
        "email_address": "jeremie.franey@terrifictotes.com"}]


# --- the Arrow contract ----------------------------------------------------------------------

@pytest.mark.parametrize("table_name", sorted(TABLES))
def test_every_builder_output_has_exactly_the_warehouse_schema(table_name):
    builders = {
        "fact_sales_order": lambda: star.fact_sales_order(frame("sales_order",
                                                                row("sales_order"))),
        "fact_purchase_orders": lambda: star.fact_purchase_orders(frame(
            "purchase_order", row("purchase_order"))),
        "fact_payment": lambda: star.fact_payment(frame("payment", row("payment"))),
        "dim_date": lambda: star.dim_date([date(2024, 1, 1)]),
        "dim_staff": lambda: star.dim_staff(frame("staff", row("staff")),
                                            frame("department", row("department"))),
        "dim_location": lambda: star.dim_location(frame("address", row("address"))),
        "dim_currency": lambda: star.dim_currency(frame("currency", row("currency"))),
        "dim_design": lambda: star.dim_design(frame("design", row("design"))),
        "dim_counterparty": lambda: star.dim_counterparty(
            frame("counterparty", row("counterparty")), frame("address", row("address"))),
        "dim_payment_type": lambda: star.dim_payment_type(frame("payment_type",
                                                                row("payment_type"))),
        "dim_transaction": lambda: star.dim_transaction(frame("transaction", row("transaction"))),
    }
    table = star.to_arrow(table_name, builders[table_name]())
    assert table.schema.equals(arrow_schema(TABLES[table_name]), check_metadata=True)
    assert table.num_rows == 1


def test_null_in_a_not_null_column_is_refused():
    location = star.dim_location(frame("address", row("address", phone=None)))
    with pytest.raises(star.SourceDataError, match="dim_location.phone .*NOT NULL"):
        star.to_arrow("dim_location", location)


def test_id_beyond_int32_is_refused_rather_than_wrapped():
    with pytest.raises(pa.ArrowInvalid):
        star.dim_design(frame("design", row("design", design_id=2 ** 31)))


def test_empty_source_frames_build_empty_dimensions():
    assert star.dim_transaction(star.empty_source_frame("transaction")).empty
    assert star.dim_date([]).empty
