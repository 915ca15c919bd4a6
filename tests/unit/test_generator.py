import math
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import numpy as np
import pytest

from totes_local import generator, shape


def _orders(plan, chunk_orders=generator.CHUNK_ORDERS):
    """Every order table as a list of dicts, from the pure chunk generator."""
    designs = generator.design_rows(plan)
    times = np.array([generator._epoch_ms(row[1]) for row in designs], dtype=np.int64)
    tables = {table: [] for table in generator.ORDER_TABLES}
    for chunk in generator.order_chunks(plan, times, chunk_orders):
        for table in generator.ORDER_TABLES:
            tables[table].extend(dict(zip(generator.COLUMNS[table], row))
                                 for row in zip(*chunk[table]))
    return tables


@pytest.fixture(scope="module")
def plan():
    return generator.Plan.of(scale=0.2, seed=7)


@pytest.fixture(scope="module")
def orders(plan):
    return _orders(plan)


@pytest.mark.parametrize("scale", [0, -1, math.nan, math.inf, "1"])
def test_plan_rejects_scales_that_are_not_positive_numbers(scale):
    with pytest.raises(ValueError, match="scale must be a positive number"):
        generator.Plan.of(scale=scale)


def test_plan_defaults_to_a_fixed_end_and_normalises_zones():
    assert generator.Plan.of().end == datetime(2024, 11, 15, 18, 0)
    paris = timezone(timedelta(hours=1))
    plan = generator.Plan.of(end=datetime(2024, 3, 1, 13, 0, tzinfo=paris))
    assert plan.end == datetime(2024, 3, 1, 12, 0)
    assert plan.end - plan.start == timedelta(days=shape.HISTORY_DAYS)


def test_reference_tables_have_the_real_sizes(plan):
    rows = generator.reference_rows(plan)
    sizes = {table: len(found) for table, found in rows.items()}
    assert sizes == {"address": 30, "currency": 3, "department": 8, "payment_type": 4,
                     "counterparty": 20, "staff": 20, "_prisma_migrations": 2}
    assert [row[1] for row in rows["currency"]] == ["GBP", "USD", "EUR"]
    assert all(1 <= row[2] <= 30 for row in rows["counterparty"])
    assert all(1 <= row[3] <= 8 for row in rows["staff"])
    assert all(row[4].endswith("@terrifictotes.com") for row in rows["staff"])


def test_reference_rows_depend_only_on_the_seed(plan):
    again = generator.Plan.of(scale=5, seed=7)
    other = generator.Plan.of(scale=0.2, seed=8)
    assert generator.reference_rows(plan) == generator.reference_rows(again)
    assert generator.reference_rows(plan)["address"] != generator.reference_rows(other)["address"]


def test_designs_arrive_over_time_in_business_hours(plan):
    designs = generator.design_rows(plan)
    created = [row[1] for row in designs]
    assert created == sorted(created)
    assert [row[0] for row in designs] == list(range(1, len(designs) + 1))
    later = [moment for moment in created if moment > plan.start]
    assert later and all(shape.is_business_time(moment) for moment in later)
    assert all(row[4].startswith(row[2].lower() + "-") for row in designs)


def test_design_count_scales_with_volume():
    small = len(generator.design_rows(generator.Plan.of(scale=0.5)))
    large = len(generator.design_rows(generator.Plan.of(scale=2)))
    assert 3 < large / small < 5


def test_business_days_are_weekdays_within_the_history(plan):
    days = list(generator.business_days(plan))
    assert all(day.weekday() < 5 for day, _, _ in days)
    assert all(opens < closes for _, opens, closes in days)
    assert days[0][0] == plan.start.date() and days[-1][0] == plan.end.date()


def test_order_volume_matches_the_real_rate():
    tables = _orders(generator.Plan.of(scale=1, seed=3))
    assert 10_500 < len(tables["sales_order"]) < 11_900
    assert 4_200 < len(tables["purchase_order"]) < 5_000


def test_each_order_has_one_transaction_and_one_payment_at_its_creation(orders):
    sales = {row["sales_order_id"]: row for row in orders["sales_order"]}
    purchases = {row["purchase_order_id"]: row for row in orders["purchase_order"]}
    transactions = orders["transaction"]
    assert len(transactions) == len(sales) + len(purchases) == len(orders["payment"])
    for tx, payment in zip(transactions, orders["payment"]):
        order = (sales[tx["sales_order_id"]] if tx["transaction_type"] == "SALE"
                 else purchases[tx["purchase_order_id"]])
        assert payment["payment_id"] == payment["transaction_id"] == tx["transaction_id"]
        assert payment["created_at"] == tx["created_at"] == order["created_at"]
        assert payment["counterparty_id"] == order["counterparty_id"]
        assert payment["currency_id"] == order["currency_id"]
        assert payment["payment_date"] == order["agreed_payment_date"]


def test_payment_amount_is_quantity_times_price_exactly(orders):
    by_tx = {row["transaction_id"]: row for row in orders["payment"]}
    sales = {row["sales_order_id"]: row for row in orders["sales_order"]}
    purchases = {row["purchase_order_id"]: row for row in orders["purchase_order"]}
    for tx in orders["transaction"]:
        payment = by_tx[tx["transaction_id"]]
        if tx["transaction_type"] == "SALE":
            order = sales[tx["sales_order_id"]]
            expected = int(order["units_sold"]) * Decimal(order["unit_price"])
            assert payment["payment_type_id"] == "1"
        else:
            order = purchases[tx["purchase_order_id"]]
            expected = int(order["item_quantity"]) * Decimal(order["item_unit_price"])
            assert payment["payment_type_id"] == "3"
        assert Decimal(payment["payment_amount"]) == expected


def test_transaction_ids_follow_creation_time_across_order_kinds(orders):
    created = [row["created_at"] for row in orders["transaction"]]
    assert created == sorted(created)
    assert Counter(row["transaction_type"] for row in orders["transaction"]).keys() == {
        "SALE", "PURCHASE"}
    ids = [int(row["sales_order_id"]) for row in orders["sales_order"]]
    assert ids == list(range(1, len(ids) + 1))


def test_orders_are_written_on_weekdays_in_business_hours_with_milliseconds(orders, plan):
    for row in orders["sales_order"] + orders["purchase_order"]:
        moment = datetime.fromisoformat(row["created_at"])
        assert shape.is_business_time(moment) and moment <= plan.end
        assert len(row["created_at"].rsplit(".", 1)[1]) == 3


def test_values_stay_in_the_measured_ranges(orders):
    for row in orders["sales_order"]:
        assert 1001 <= int(row["units_sold"]) <= 99999
        assert Decimal("2.00") <= Decimal(row["unit_price"]) <= Decimal("4.00")
        assert 1 <= int(row["design_id"])
    for row in orders["purchase_order"]:
        assert 1 <= int(row["item_quantity"]) <= 999
        assert len(row["item_code"]) == 7 and row["item_code"].isalnum()
    for row in orders["payment"]:
        assert 10_000_000 <= int(row["company_ac_number"]) <= 99_999_999


def test_agreed_dates_are_text_days_shortly_after_the_order(orders):
    offsets = Counter()
    for row in orders["sales_order"]:
        created = datetime.fromisoformat(row["created_at"]).date()
        delivery = date.fromisoformat(row["agreed_delivery_date"]) - created
        payment = date.fromisoformat(row["agreed_payment_date"]) - created
        assert 0 <= payment.days <= shape.PAYMENT_DAYS
        assert 0 <= delivery.days <= shape.LATE_DELIVERY_DAYS[1]
        offsets[delivery.days] += 1
    assert set(range(8)) <= set(offsets)
    assert sum(count for days, count in offsets.items() if days > 7) < 0.02 * sum(
        offsets.values())


def test_payments_are_paid_by_the_morning_batch_on_weekday_due_dates(orders, plan):
    paid = [row for row in orders["payment"] if row["paid"] == "t"]
    open_ = [row for row in orders["payment"] if row["paid"] == "f"]
    assert 0.5 < len(paid) / len(orders["payment"]) < 0.7   # real database: 0.61
    for row in paid:
        updated = datetime.fromisoformat(row["last_updated"])
        assert updated.date() == date.fromisoformat(row["payment_date"])
        assert updated.weekday() < 5 and updated.time().strftime("%H:%M:%S") == "07:55:11"
        assert datetime.fromisoformat(row["created_at"]) < updated <= plan.end
    assert all(row["last_updated"] == row["created_at"] for row in open_)
    assert not [row for row in paid if date.fromisoformat(row["payment_date"]).weekday() > 4]


def test_same_seed_and_end_give_identical_rows_whatever_the_chunk_size(plan, orders):
    assert _orders(plan, chunk_orders=7) == orders


def test_another_seed_or_end_gives_other_rows(plan, orders):
    assert _orders(generator.Plan.of(scale=0.2, seed=8)) != orders
    moved = generator.Plan.of(scale=0.2, seed=7, end=plan.end + timedelta(days=1))
    assert _orders(moved)["sales_order"][0] != orders["sales_order"][0]
