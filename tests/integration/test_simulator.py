from datetime import date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from totes_local import generator, shape, simulator


@pytest.fixture
def conn(totesys):
    connection = totesys.connect()
    yield connection
    connection.close()


def _order_and_payment(conn, order_id):
    return conn.run("""
        SELECT s.units_sold, s.unit_price, s.agreed_delivery_date, s.last_updated,
               p.payment_amount, p.last_updated
        FROM sales_order s JOIN transaction t USING (sales_order_id)
        JOIN payment p USING (transaction_id) WHERE s.sales_order_id = :id""", id=order_id)[0]


def test_simulation_moves_the_clock_forward_and_commits_every_change(conn, totesys):
    before = simulator.latest_change(conn)
    summary = simulator.simulate(conn, steps=30, seed=3)
    assert summary["clock_start"] == before < summary["clock_end"]
    assert summary["counts"]["sales_orders_created"] > 0
    assert summary["counts"]["purchase_orders_created"] > 0
    other = totesys.connect()   # a second session sees the committed changes
    try:
        assert simulator.latest_change(other) > before
        newest = summary["ids"]["sales_orders_created"][-1]
        assert other.run("SELECT count(*) FROM sales_order WHERE sales_order_id = :i",
                         i=newest) == [[1]]
    finally:
        other.close()
    stale = conn.run("SELECT count(*) FROM sales_order WHERE last_updated > :end "
                     "OR (created_at > :start AND last_updated <= :start)",
                     end=summary["clock_end"], start=before)
    assert stale == [[0]]


def test_new_orders_are_consistent_and_in_business_hours(conn):
    summary = simulator.simulate(conn, steps=40, seed=4)
    ids = summary["ids"]["sales_orders_created"]
    rows = conn.run("""
        SELECT s.created_at, p.created_at, t.created_at, p.payment_amount,
               s.units_sold * s.unit_price, p.currency_id = s.currency_id, p.paid,
               p.payment_type_id
        FROM sales_order s JOIN transaction t USING (sales_order_id)
        JOIN payment p USING (transaction_id) WHERE s.sales_order_id = ANY(:ids)""", ids=ids)
    assert len(rows) == len(ids)
    for created, paid_at, tx_at, amount, expected, same_currency, _, payment_type in rows:
        assert created == paid_at == tx_at and shape.is_business_time(created)
        assert amount == expected and same_currency and payment_type == shape.SALES_RECEIPT


def test_simulation_produces_every_rare_event_kind(conn):
    rates = simulator.Rates(sales_amendments=1, purchase_amendments=1, address_changes=1,
                            department_changes=1, new_designs=1, new_counterparties=2)
    summary = simulator.simulate(conn, steps=40, seed=5, rates=rates)
    assert all(summary["counts"][kind] > 0 for kind in simulator.EVENT_KINDS)
    for order_id in summary["ids"]["sales_orders_amended"]:
        quantity, price, _, order_updated, amount, _ = _order_and_payment(conn, order_id)
        assert amount == quantity * price and order_updated > summary["clock_start"]


def test_payment_batch_pays_due_payments_at_the_morning_run(conn):
    summary = simulator.simulate(conn, steps=40, seed=6)
    paid = summary["ids"]["payments_paid"]
    assert paid
    rows = conn.run("SELECT paid, payment_date, last_updated FROM payment "
                    "WHERE payment_id = ANY(:ids)", ids=paid)
    for is_paid, due, updated in rows:
        assert is_paid and updated.date() == date.fromisoformat(due)
        assert updated.strftime("%H:%M") == "07:55"


def test_same_seed_on_the_same_data_simulates_the_same_changes(postgres, database):
    summaries = []
    for _ in range(2):
        connection = postgres.connect(database("simsame"))
        try:
            generator.seed_new(connection, scale=0.02, seed=1)
            summaries.append(simulator.simulate(connection, steps=12, seed=9))
        finally:
            connection.close()
    assert summaries[0] == summaries[1]


def test_amending_a_sales_order_bumps_it_and_keeps_the_payment_consistent(conn):
    clock = simulator.latest_change(conn) + timedelta(minutes=5)
    simulator.amend_sales_order(conn, 1, clock, units_sold=12345, unit_price=Decimal("3.33"))
    quantity, price, _, order_updated, amount, payment_updated = _order_and_payment(conn, 1)
    assert (quantity, price, amount) == (12345, Decimal("3.33"), Decimal("41108.85"))
    assert order_updated == payment_updated == clock


def test_changing_only_the_delivery_date_leaves_the_payment_alone(conn):
    _, _, delivery, _, _, payment_before = _order_and_payment(conn, 2)
    clock = simulator.latest_change(conn) + timedelta(minutes=1)
    later = shape.text_date(date.fromisoformat(delivery) + timedelta(days=3))
    simulator.amend_sales_order(conn, 2, clock, agreed_delivery_date=later)
    _, _, delivery_now, order_updated, _, payment_after = _order_and_payment(conn, 2)
    assert delivery_now == later and order_updated == clock
    assert payment_after == payment_before


def test_random_purchase_amendment_changes_one_term_consistently(conn):
    before = conn.run("SELECT item_quantity, item_unit_price, agreed_delivery_date "
                      "FROM purchase_order WHERE purchase_order_id = 1")[0]
    clock = simulator.latest_change(conn) + timedelta(minutes=1)
    simulator.amend_order(conn, simulator.PURCHASES, 1, clock, np.random.default_rng(2))
    after = conn.run("""
        SELECT o.item_quantity, o.item_unit_price, o.agreed_delivery_date, p.payment_amount
        FROM purchase_order o JOIN transaction t USING (purchase_order_id)
        JOIN payment p USING (transaction_id) WHERE o.purchase_order_id = 1""")[0]
    assert sum(a != b for a, b in zip(before, after[:3])) == 1
    assert after[3] == after[0] * after[1]


def test_amendment_rejects_unknown_columns_and_orders(conn):
    clock = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="cannot amend item_code"):
        simulator.amend_sales_order(conn, 1, clock, item_code="X")
    with pytest.raises(LookupError, match="sales_order 999999 does not exist"):
        simulator.amend_sales_order(conn, 999999, clock)


def test_changed_address_is_visible_with_a_newer_last_updated(conn):
    clock = simulator.latest_change(conn) + timedelta(minutes=3)
    assert simulator.change_address(conn, 7, clock, phone="0000 111111") == 7
    assert conn.run("SELECT phone, last_updated FROM address WHERE address_id = 7") == [
        ["0000 111111", clock]]
    simulator.change_address(conn, 8, clock, np.random.default_rng(1))
    assert conn.run("SELECT last_updated FROM address WHERE address_id = 8") == [
        [clock]]
    with pytest.raises(ValueError, match="not address fields: manager"):
        simulator.change_address(conn, 7, clock, manager="x")
    with pytest.raises(LookupError):
        simulator.change_address(conn, 999, clock, phone="1")


def test_changed_department_gets_a_new_manager_or_location(conn):
    clock = simulator.latest_change(conn) + timedelta(minutes=3)
    simulator.change_department(conn, 2, clock, location="Sheffield", manager="Ann Other")
    changed = conn.run("SELECT location, manager, last_updated FROM department "
                       "WHERE department_id = 2")
    assert changed == [["Sheffield", "Ann Other", clock]]
    before = conn.run("SELECT location, manager FROM department WHERE department_id = 3")
    simulator.change_department(conn, 3, clock, np.random.default_rng(0))
    assert conn.run("SELECT location, manager FROM department "
                    "WHERE department_id = 3") != before
    with pytest.raises(ValueError):
        simulator.change_department(conn, 3, clock, department_name="x")
    with pytest.raises(LookupError):
        simulator.change_department(conn, 99, clock, manager="x")


def test_new_counterparty_with_a_brand_new_address(conn):
    clock = simulator.latest_change(conn) + timedelta(minutes=3)
    created = simulator.new_counterparty(conn, clock, new_address=True)
    assert created["address_id"] == 31
    assert conn.run("SELECT legal_address_id, created_at FROM counterparty "
                    "WHERE counterparty_id = :i", i=created["counterparty_id"]) == [
        [31, clock]]
    existing = simulator.new_counterparty(conn, clock, new_address=False)
    assert existing["address_id"] is None and existing["counterparty_id"] == 22


def test_new_design_and_orders_get_the_next_ids(conn, totesys):
    clock = simulator.latest_change(conn) + timedelta(minutes=3)
    assert simulator.new_design(conn, clock) == totesys.counts["design"] + 1
    sale = simulator.new_sales_order(conn, clock)
    purchase = simulator.new_purchase_order(conn, clock)
    assert sale == totesys.counts["sales_order"] + 1
    assert purchase == totesys.counts["purchase_order"] + 1
    assert conn.run("SELECT max(payment_id) = max(transaction_id) FROM payment") == [[True]]


def test_pay_due_payments_only_touches_open_payments_due_that_day(conn):
    due = conn.run("SELECT payment_date FROM payment WHERE NOT paid "
                   "ORDER BY payment_date DESC LIMIT 1")[0][0]
    day = date.fromisoformat(due)
    run_at = shape.payment_run(day) + timedelta(days=30)
    paid = simulator.pay_due_payments(conn, day, run_at)
    assert paid
    assert conn.run("SELECT count(*) FROM payment WHERE payment_id = ANY(:ids) "
                    "AND paid AND payment_date = :d", ids=paid, d=due) == [[len(paid)]]


def test_simulating_an_empty_database_is_refused(postgres, database):
    connection = postgres.connect(database("simempty"))
    try:
        generator.create_schema(connection)
        with pytest.raises(simulator.SimulationError, match="seed it first"):
            simulator.simulate(connection, steps=1)
    finally:
        connection.close()


def test_nonsense_step_arguments_are_refused(conn):
    with pytest.raises(ValueError):
        simulator.simulate(conn, steps=-1)
    with pytest.raises(ValueError):
        simulator.simulate(conn, steps=1, step_minutes=0)


def test_a_failing_step_is_rolled_back_whole(conn, monkeypatch):
    before = conn.run("SELECT count(*), max(last_updated) FROM sales_order")
    run_step = simulator._run_step

    def fails_after_writing(*args, **kwargs):
        run_step(*args, **kwargs)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(simulator, "_run_step", fails_after_writing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        simulator.simulate(conn, steps=1, seed=1, rates=simulator.Rates(sales_orders=20))
    assert conn.run("SELECT count(*), max(last_updated) FROM sales_order") == before


def test_cancelling_an_order_deletes_its_payment_and_transaction_too(conn):
    order_id = conn.run("SELECT max(sales_order_id) FROM sales_order")[0][0]
    before = {table: conn.run(f"SELECT count(*) FROM {table}")[0][0]  # nosec B608
              for table in ("sales_order", "transaction", "payment")}

    assert simulator.cancel_order(conn, simulator.SALES, order_id) == order_id

    after = {table: conn.run(f"SELECT count(*) FROM {table}")[0][0]  # nosec B608
             for table in before}
    assert {table: before[table] - after[table] for table in before} == {
        "sales_order": 1, "transaction": 1, "payment": 1}
    with pytest.raises(ValueError, match="does not exist"):
        simulator.cancel_order(conn, simulator.SALES, order_id)
