"""Advance a totesys database through simulated business time, one committed step at a time.

The simulated clock starts at the newest ``last_updated`` in the database and only
moves forward, skipping nights and weekends (nothing happens there), so every write
is newer than anything the pipeline has seen. Each step writes what the real system
writes (new orders with their transaction and payment, the 07:55 batch that marks
due payments paid) plus what it rarely or never does but the pipeline must handle:
amended orders, changed addresses and departments, new designs and counterparties
(and, on request, a cancelled order deleted outright).

The single-event functions (``amend_sales_order``, ``change_address``...) are public
so tests can make one precise change; each is one SQL statement, hence atomic even
outside a step's transaction, except ``cancel_order``, which deletes in foreign-key
order (payment, transaction, order): wrap it in a transaction where that matters.
"""
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Callable

import numpy as np
import pg8000.native

from totes.db import quote_ident
from totes.source import SOURCE_TABLES
from totes_local import shape, vocab

Rng = np.random.Generator


@dataclass(frozen=True)
class Rates:
    """Expected events per 20-minute step, scaled for other step lengths.

    Busier than the real business (about 0.6 sales orders per 20 minutes) so that a
    short demo shows every kind of change.
    """

    sales_orders: float = 2.0
    purchase_orders: float = 1.0
    sales_amendments: float = 0.25
    purchase_amendments: float = 0.1
    address_changes: float = 0.1
    department_changes: float = 0.05
    new_designs: float = 0.15
    new_counterparties: float = 0.05


@dataclass(frozen=True)
class OrderKind:
    """Where a kind of order lives and how its payment is booked (an identifier allow-list)."""

    table: str
    key: str
    quantity: str
    price: str
    transaction_type: str
    payment_type: int
    quantities: tuple[int, int]
    prices: tuple[int, int]


SALES = OrderKind("sales_order", "sales_order_id", "units_sold", "unit_price", "SALE",
                  shape.SALES_RECEIPT, shape.UNITS_SOLD, shape.UNIT_PRICE_CENTS)
PURCHASES = OrderKind("purchase_order", "purchase_order_id", "item_quantity",
                      "item_unit_price", "PURCHASE", shape.PURCHASE_PAYMENT,
                      shape.ITEM_QUANTITY, shape.ITEM_PRICE_CENTS)
#: Address columns a change may touch.
ADDRESS_FIELDS = ("address_line_1", "address_line_2", "district", "city", "postal_code",
                  "country", "phone")
EVENT_KINDS = ("sales_orders_created", "purchase_orders_created", "payments_paid",
               "sales_orders_amended", "purchase_orders_amended", "addresses_changed",
               "departments_changed", "designs_created", "counterparties_created",
               "addresses_created")


class SimulationError(RuntimeError):
    """The database cannot be simulated (no schema or no data to start the clock from)."""


# ------------------------------------------------------------------------------- simulate

def simulate(conn: pg8000.native.Connection, steps: int, seed: int = 0,
             step_minutes: int = 20, rates: Rates = Rates()) -> dict[str, Any]:
    """Run ``steps`` business steps of ``step_minutes`` each; say what changed.

    Returns ``{"clock_start", "clock_end", "steps", "counts", "ids"}`` where ``counts``
    and ``ids`` are keyed by the event kinds in :data:`EVENT_KINDS`.
    """
    if steps < 0 or step_minutes <= 0:
        raise ValueError("steps must be >= 0 and step_minutes > 0")
    rng = np.random.default_rng(seed)
    clock = latest_change(conn)
    ids: dict[str, list[int]] = {kind: [] for kind in EVENT_KINDS}
    start = clock
    factor = step_minutes / 20
    for _ in range(steps):
        opened = shape.next_opening(clock + timedelta(milliseconds=1))
        closing = datetime.combine(opened.date(), datetime.min.time()).replace(
            hour=shape.CLOSE_HOUR)
        step_end = min(opened + timedelta(minutes=step_minutes), closing)
        conn.run("START TRANSACTION")
        try:
            _run_payment_batches(conn, clock, step_end, rng, ids)
            _run_step(conn, max(opened, clock), step_end, rng, rates, factor, ids)
            conn.run("COMMIT")
        except Exception:
            conn.run("ROLLBACK")
            raise
        clock = step_end
    return {"clock_start": start, "clock_end": clock, "steps": steps,
            "counts": {kind: len(found) for kind, found in ids.items()}, "ids": ids}


def latest_change(conn: pg8000.native.Connection) -> datetime:
    """The newest ``last_updated`` of any table: where the simulated clock starts."""
    parts = ", ".join(f"(SELECT max(last_updated) FROM {quote_ident(table)})"  # nosec B608
                      for table in SOURCE_TABLES)
    latest = conn.run(f"SELECT GREATEST({parts})")[0][0]
    if latest is None:
        raise SimulationError("totesys holds no data; seed it first (totes seed)")
    return latest


def _run_payment_batches(conn: pg8000.native.Connection, after: datetime, until: datetime,
                         rng: Rng, ids: dict[str, list[int]]) -> None:
    day = after.date()
    while day <= until.date():
        run_at = shape.payment_run(day, int(rng.integers(400, 1000)))
        if day.weekday() < 5 and after < run_at <= until:
            ids["payments_paid"].extend(pay_due_payments(conn, day, run_at, rng))
        day += timedelta(days=1)


def _run_step(conn: pg8000.native.Connection, begin: datetime, end: datetime, rng: Rng,
              rates: Rates, factor: float, ids: dict[str, list[int]]) -> None:
    """Draw the step's events, shuffle them, and apply them at increasing instants in (begin, end].

    Times follow the order events happen, so nothing refers to a row stamped later than itself.
    """
    events: list[Callable[[datetime], None]] = []

    def add(count: int, action: Callable[[datetime], None]) -> None:
        events.extend([action] * count)

    add(rng.poisson(rates.sales_orders * factor), lambda t: ids["sales_orders_created"].append(
        new_sales_order(conn, t, rng)))
    add(rng.poisson(rates.purchase_orders * factor),
        lambda t: ids["purchase_orders_created"].append(new_purchase_order(conn, t, rng)))
    add(rng.poisson(rates.sales_amendments * factor),
        lambda t: _amend_some(conn, SALES, t, rng, ids["sales_orders_amended"]))
    add(rng.poisson(rates.purchase_amendments * factor),
        lambda t: _amend_some(conn, PURCHASES, t, rng, ids["purchase_orders_amended"]))
    add(rng.poisson(rates.address_changes * factor), lambda t: ids["addresses_changed"].append(
        change_address(conn, _pick(conn, "address", rng), t, rng)))
    add(rng.poisson(rates.department_changes * factor),
        lambda t: ids["departments_changed"].append(
            change_department(conn, _pick(conn, "department", rng), t, rng)))
    add(rng.poisson(rates.new_designs * factor),
        lambda t: ids["designs_created"].append(new_design(conn, t, rng)))
    add(rng.poisson(rates.new_counterparties * factor),
        lambda t: _record_counterparty(new_counterparty(conn, t, rng), ids))
    span = max(int((end - begin) / timedelta(milliseconds=1)), 1)
    order = rng.permutation(len(events))
    offsets = np.sort(rng.integers(1, span + 1, len(events)))
    for index, offset in zip(order, offsets):
        events[index](begin + timedelta(milliseconds=int(offset)))


def _record_counterparty(created: dict[str, int | None], ids: dict[str, list[int]]) -> None:
    ids["counterparties_created"].append(created["counterparty_id"])
    if created["address_id"] is not None:
        ids["addresses_created"].append(created["address_id"])


def _amend_some(conn: pg8000.native.Connection, kind: OrderKind, clock: datetime, rng: Rng,
                found: list[int]) -> None:
    """Amend a recent order whose payment is still open (a paid order is not renegotiated)."""
    rows = conn.run(
        f"SELECT o.{quote_ident(kind.key)} FROM {quote_ident(kind.table)} o "  # nosec B608
        f"JOIN transaction t ON t.{quote_ident(kind.key)} = o.{quote_ident(kind.key)} "
        "JOIN payment p ON p.transaction_id = t.transaction_id "
        f"WHERE NOT p.paid ORDER BY o.{quote_ident(kind.key)} DESC LIMIT 50")
    if rows:
        order_id = int(rows[int(rng.integers(len(rows)))][0])
        amend_order(conn, kind, order_id, clock, rng)
        found.append(order_id)


def _pick(conn: pg8000.native.Connection, table: str, rng: Rng) -> int:
    """A random existing id of a small or indexed table, without fetching them all."""
    key, name = quote_ident(SOURCE_TABLES[table]), quote_ident(table)
    count = conn.run(f"SELECT count(*) FROM {name}")[0][0]  # nosec B608
    if not count:
        raise SimulationError(f"{table} is empty; seed the database first")
    rows = conn.run(f"SELECT {key} FROM {name} ORDER BY {key} OFFSET :skip LIMIT 1",  # nosec B608
                    skip=int(rng.integers(count)))
    return int(rows[0][0])


# -------------------------------------------------------------------------- single events

def new_sales_order(conn: pg8000.native.Connection, clock: datetime, rng: Rng | None = None,
                    ) -> int:
    """Book a sales order with its SALE transaction and open payment; return its id."""
    rng = rng or np.random.default_rng(0)
    return _new_order(conn, SALES, clock, rng, design_id=_pick(conn, "design", rng))


def new_purchase_order(conn: pg8000.native.Connection, clock: datetime,
                       rng: Rng | None = None) -> int:
    """Book a purchase order with its PURCHASE transaction and open payment; return its id."""
    rng = rng or np.random.default_rng(0)
    code = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"),
                              shape.ITEM_CODE_LENGTH))
    return _new_order(conn, PURCHASES, clock, rng, item_code=code)


def _new_order(conn: pg8000.native.Connection, kind: OrderKind, clock: datetime, rng: Rng,
               **specific: Any) -> int:
    """Insert order, transaction and payment in one statement, the amount computed by SQL."""
    moment = shape.naive_utc(clock)
    today = moment.date()
    values = {
        **specific,
        "staff_id": _pick(conn, "staff", rng),
        "counterparty_id": _pick(conn, "counterparty", rng),
        kind.quantity: int(rng.integers(kind.quantities[0], kind.quantities[1] + 1)),
        kind.price: shape.money(int(rng.integers(kind.prices[0], kind.prices[1] + 1))),
        "currency_id": _pick(conn, "currency", rng),
        "agreed_delivery_date": shape.text_date(
            today + timedelta(days=int(round(rng.random() * shape.DELIVERY_DAYS)))),
        "agreed_payment_date": shape.text_date(
            today + timedelta(days=int(round(rng.random() * shape.PAYMENT_DAYS)))),
        "agreed_delivery_location_id": _pick(conn, "address", rng),
    }
    columns = ", ".join(quote_ident(name) for name in values)
    params = ", ".join(f":v{i}" for i in range(len(values)))
    key, table = quote_ident(kind.key), quote_ident(kind.table)
    rows = conn.run(
        f"WITH o AS (INSERT INTO {table} (created_at, last_updated, {columns}) "  # nosec B608
        f"VALUES (:t, :t, {params}) RETURNING {key} AS id, counterparty_id, currency_id, "
        f"agreed_payment_date, {quote_ident(kind.quantity)} * {quote_ident(kind.price)} AS amount"
        f"), tx AS (INSERT INTO transaction (transaction_type, {key}, created_at, last_updated) "
        "SELECT CAST(:tx_type AS \"TransactionType\"), id, :t, :t FROM o "
        "RETURNING transaction_id) "
        "INSERT INTO payment (created_at, last_updated, transaction_id, counterparty_id, "
        "payment_amount, currency_id, payment_type_id, paid, payment_date, company_ac_number, "
        "counterparty_ac_number) SELECT :t, :t, tx.transaction_id, o.counterparty_id, o.amount, "
        "o.currency_id, :payment_type, false, o.agreed_payment_date, :company_ac, :their_ac "
        "FROM o, tx RETURNING (SELECT id FROM o)",
        t=moment, tx_type=kind.transaction_type, payment_type=kind.payment_type,
        company_ac=_account(rng), their_ac=_account(rng),
        **{f"v{i}": value for i, value in enumerate(values.values())})
    return int(rows[0][0])


def _account(rng: Rng) -> int:
    return int(rng.integers(shape.ACCOUNT_NUMBERS[0], shape.ACCOUNT_NUMBERS[1] + 1))


def amend_sales_order(conn: pg8000.native.Connection, order_id: int, clock: datetime,
                      rng: Rng | None = None, **changes: Any) -> None:
    """Amend a sales order (``units_sold``, ``unit_price``, ``agreed_delivery_date``)."""
    amend_order(conn, SALES, order_id, clock, rng, **changes)


def amend_order(conn: pg8000.native.Connection, kind: OrderKind, order_id: int,
                clock: datetime, rng: Rng | None = None, **changes: Any) -> None:
    """Change an order's quantity, price or delivery date and keep its payment consistent.

    With no ``changes`` one of the three is renegotiated at random. The order's
    ``last_updated`` moves to ``clock``; the payment gets a new amount (and version)
    only when the amount actually changed.
    """
    allowed = {kind.quantity, kind.price, "agreed_delivery_date"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"cannot amend {', '.join(sorted(unknown))} of a {kind.table}")
    key, table = quote_ident(kind.key), quote_ident(kind.table)
    quantity, price = quote_ident(kind.quantity), quote_ident(kind.price)
    current = conn.run(f"SELECT {quantity}, {price}, agreed_delivery_date "  # nosec B608
                       f"FROM {table} WHERE {key} = :id", id=order_id)
    if not current:
        raise LookupError(f"{kind.table} {order_id} does not exist")
    if not changes:
        changes = _renegotiate(kind, *current[0], rng or np.random.default_rng(0))
    assignments = ", ".join(f"{quote_ident(column)} = :{column}" for column in changes)
    conn.run(
        f"WITH o AS (UPDATE {table} SET {assignments}, last_updated = :t "  # nosec B608
        f"WHERE {key} = :id RETURNING {key} AS id, {quantity} * {price} AS amount) "
        "UPDATE payment p SET payment_amount = o.amount, last_updated = :t "
        f"FROM transaction tx, o WHERE tx.{key} = o.id AND p.transaction_id = tx.transaction_id "
        "AND p.payment_amount <> o.amount",
        t=shape.naive_utc(clock), id=order_id, **changes)


def _renegotiate(kind: OrderKind, quantity: int, price: Decimal, delivery: str,
                 rng: Rng) -> dict[str, Any]:
    """One plausible amendment: more or fewer units, a new price, or a later delivery."""
    what = int(rng.integers(3))
    direction = int(rng.choice([-1, 1]))
    if what == 0:
        change = max(1, int(quantity * (0.1 + 0.2 * float(rng.random()))))
        return {kind.quantity: _within(quantity, change * direction, kind.quantities)}
    if what == 1:
        cents = int(price * 100)
        change = max(1, cents // 10)
        return {kind.price: shape.money(_within(cents, change * direction, kind.prices))}
    later = date.fromisoformat(delivery) + timedelta(days=int(rng.integers(1, 15)))
    return {"agreed_delivery_date": shape.text_date(later)}


def _within(value: int, change: int, bounds: tuple[int, int]) -> int:
    """``value + change``, or ``value - change`` if that would leave ``bounds``."""
    low, high = bounds
    return value + change if low <= value + change <= high else value - change


def pay_due_payments(conn: pg8000.native.Connection, day: date, run_at: datetime,
                     rng: Rng | None = None) -> list[int]:
    """The daily batch: mark open payments due on ``day`` (created before it runs) paid.

    Like the real batch it misses a small share (see :data:`shape.PAID_SHARE`).
    """
    rng = rng or np.random.default_rng(0)
    moment = shape.naive_utc(run_at)
    due = [row[0] for row in conn.run(
        "SELECT payment_id FROM payment WHERE NOT paid AND payment_date = :day "
        "AND created_at < :t ORDER BY payment_id", day=shape.text_date(day), t=moment)]
    chosen = [int(pid) for pid, draw in zip(due, rng.random(len(due)))
              if draw < shape.PAID_SHARE]
    if chosen:
        conn.run("UPDATE payment SET paid = true, last_updated = :t "
                 "WHERE payment_id = ANY(:ids)", t=moment, ids=chosen)
    return chosen


def cancel_order(conn: pg8000.native.Connection, kind: OrderKind, order_id: int) -> int:
    """Delete an order the way the source must: its payment, its transaction, then the order.

    The real business never deletes, but a source can (a cancelled order, a GDPR
    erasure, a fix), and the pipeline must carry it as history. Returns the order id.
    """
    key = quote_ident(kind.key)
    found = conn.run(f"SELECT 1 FROM {quote_ident(kind.table)} "  # nosec B608: allow-listed
                     f"WHERE {key} = :id", id=order_id)
    if not found:
        raise ValueError(f"{kind.table} {order_id} does not exist")
    conn.run("DELETE FROM payment WHERE transaction_id IN (SELECT transaction_id "  # nosec B608
             f"FROM transaction WHERE {key} = :id)", id=order_id)
    conn.run(f"DELETE FROM transaction WHERE {key} = :id", id=order_id)  # nosec B608
    conn.run(f"DELETE FROM {quote_ident(kind.table)} WHERE {key} = :id",  # nosec B608
             id=order_id)
    return order_id


def change_address(conn: pg8000.native.Connection, address_id: int, clock: datetime,
                   rng: Rng | None = None, **fields: str | None) -> int:
    """Update an address (given ``fields``, or a random move / new phone); return its id."""
    _check_fields("address", fields, ADDRESS_FIELDS)
    return _update_row(conn, "address", address_id, clock,
                       fields or _address_change(_py_random(rng)))


def _check_fields(table: str, fields: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = set(fields) - set(allowed)
    if unknown:
        raise ValueError(f"not {table} fields: {', '.join(sorted(unknown))}")


def _update_row(conn: pg8000.native.Connection, table: str, row_id: int, clock: datetime,
                fields: dict[str, Any]) -> int:
    """Set ``fields`` on one row of a reference table as a new version at ``clock``."""
    key = quote_ident(SOURCE_TABLES[table])
    assignments = ", ".join(f"{quote_ident(column)} = :{column}" for column in fields)
    rows = conn.run(f"UPDATE {quote_ident(table)} SET {assignments}, "  # nosec B608
                    f"last_updated = :t WHERE {key} = :id RETURNING {key}",
                    t=shape.naive_utc(clock), id=row_id, **fields)
    if not rows:
        raise LookupError(f"{table} {row_id} does not exist")
    return row_id


def _address_change(rng: random.Random) -> dict[str, str | None]:
    """A new phone number, or a move to a new street (sometimes a whole new town)."""
    fresh = vocab.address(rng)
    choice = rng.randrange(3)
    if choice == 0:
        return {"phone": fresh["phone"]}
    if choice == 1:
        return {"address_line_1": fresh["address_line_1"],
                "address_line_2": fresh["address_line_2"]}
    return {name: fresh[name] for name in ("address_line_1", "address_line_2", "district",
                                           "city", "postal_code")}


def change_department(conn: pg8000.native.Connection, department_id: int, clock: datetime,
                      rng: Rng | None = None, **fields: str | None) -> int:
    """Give a department a new ``manager`` or ``location`` (random if not given); return its id."""
    _check_fields("department", fields, ("manager", "location"))
    if not fields:
        py = _py_random(rng)
        fields = ({"manager": vocab.person(py)} if py.random() < 0.7
                  else {"location": py.choice(vocab.OFFICES + ("Liverpool", "Sheffield"))})
    return _update_row(conn, "department", department_id, clock, fields)


def new_design(conn: pg8000.native.Connection, clock: datetime, rng: Rng | None = None) -> int:
    """Add a design drawn a few months ago; return its id."""
    py = _py_random(rng)
    moment = shape.naive_utc(clock)
    name = py.choice(vocab.DESIGN_MATERIALS)
    drawn = (moment.date() - timedelta(days=py.randint(30, 600))).strftime("%Y%m%d")
    rows = conn.run("INSERT INTO design (created_at, last_updated, design_name, file_location, "
                    "file_name) VALUES (:t, :t, :name, :location, :file) RETURNING design_id",
                    t=moment, name=name, location=py.choice(vocab.FILE_LOCATIONS),
                    file=vocab.design_file_name(py, name, drawn))
    return int(rows[0][0])


def new_counterparty(conn: pg8000.native.Connection, clock: datetime, rng: Rng | None = None,
                     new_address: bool | None = None) -> dict[str, int | None]:
    """Add a counterparty, at an existing address or (``new_address``) a brand-new one.

    Returns ``{"counterparty_id", "address_id"}``, the latter None when no address was made.
    """
    py = _py_random(rng)
    moment = shape.naive_utc(clock)
    if new_address is None:
        new_address = py.random() < 0.5
    party = {"name": vocab.company(py), "commercial": vocab.person(py, 0.2),
             "delivery": vocab.person(py, 0.2), "t": moment}
    if not new_address:
        existing = conn.run("SELECT address_id FROM address ORDER BY address_id")
        rows = conn.run(
            "INSERT INTO counterparty (counterparty_legal_name, legal_address_id, "
            "commercial_contact, delivery_contact, created_at, last_updated) VALUES "
            "(:name, :address, :commercial, :delivery, :t, :t) RETURNING counterparty_id",
            address=py.choice(existing)[0], **party)
        return {"counterparty_id": int(rows[0][0]), "address_id": None}
    place = vocab.address(py)
    rows = conn.run(
        "WITH a AS (INSERT INTO address (address_line_1, address_line_2, district, city, "
        "postal_code, country, phone, created_at, last_updated) VALUES (:address_line_1, "
        ":address_line_2, :district, :city, :postal_code, :country, :phone, :t, :t) "
        "RETURNING address_id) INSERT INTO counterparty (counterparty_legal_name, "
        "legal_address_id, commercial_contact, delivery_contact, created_at, last_updated) "
        "SELECT :name, address_id, :commercial, :delivery, :t, :t FROM a "
        "RETURNING counterparty_id, legal_address_id", **place, **party)
    return {"counterparty_id": int(rows[0][0]), "address_id": int(rows[0][1])}


def _py_random(rng: Rng | None) -> random.Random:
    """A ``random.Random`` seeded from ``rng``, for the vocabulary composers."""
    source = rng or np.random.default_rng(0)
    return random.Random(int(source.integers(2**63)))  # nosec B311
