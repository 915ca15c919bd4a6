"""Fill an empty ``totesys`` with a realistic, reproducible business history.

``generate`` writes two years of trading ending at ``end``: the small reference
tables, designs arriving over time, and at scale 1 about 11k sales and 4.6k
purchase orders, each with its transaction and payment, payments flipped to paid by
the daily batch. The shape (volumes, hours, price and quantity ranges, date offsets,
paid ratio) is the real database's, measured once and kept in :mod:`totes_local.shape`.

Order rows are drawn day by day from a random stream seeded by ``(seed, day)``, so
the same ``seed`` and ``end`` always give the same database, whatever the chunking.
Days are vectorised with numpy and streamed to PostgreSQL with COPY in bounded
chunks, which is what lets ``scale=100`` (millions of rows) load in minutes.
"""
import hashlib
import math
import random
import re
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pg8000.native

from totes.source import SOURCE_TABLES
from totes_local import pgcopy, shape, vocab

if TYPE_CHECKING:  # only a type: stack never needs the generator, nor it stack at run time
    from totes_local import stack

#: Columns written per table, in COPY order.
COLUMNS = {
    "address": ("address_id", "address_line_1", "address_line_2", "district", "city",
                "postal_code", "country", "phone", "created_at", "last_updated"),
    "currency": ("currency_id", "currency_code", "created_at", "last_updated"),
    "department": ("department_id", "department_name", "location", "manager", "created_at",
                   "last_updated"),
    "design": ("design_id", "created_at", "design_name", "file_location", "file_name",
               "last_updated"),
    "payment_type": ("payment_type_id", "payment_type_name", "created_at", "last_updated"),
    "counterparty": ("counterparty_id", "counterparty_legal_name", "legal_address_id",
                     "commercial_contact", "delivery_contact", "created_at", "last_updated"),
    "staff": ("staff_id", "first_name", "last_name", "department_id", "email_address",
              "created_at", "last_updated"),
    "sales_order": ("sales_order_id", "created_at", "last_updated", "design_id", "staff_id",
                    "counterparty_id", "units_sold", "unit_price", "currency_id",
                    "agreed_delivery_date", "agreed_payment_date",
                    "agreed_delivery_location_id"),
    "purchase_order": ("purchase_order_id", "created_at", "last_updated", "staff_id",
                       "counterparty_id", "item_code", "item_quantity", "item_unit_price",
                       "currency_id", "agreed_delivery_date", "agreed_payment_date",
                       "agreed_delivery_location_id"),
    "transaction": ("transaction_id", "transaction_type", "sales_order_id", "purchase_order_id",
                    "created_at", "last_updated"),
    "payment": ("payment_id", "created_at", "last_updated", "transaction_id", "counterparty_id",
                "payment_amount", "currency_id", "payment_type_id", "paid", "payment_date",
                "company_ac_number", "counterparty_ac_number"),
    "_prisma_migrations": ("id", "checksum", "finished_at", "migration_name", "logs",
                           "rolled_back_at", "started_at", "applied_steps_count"),
}
ORDER_TABLES = ("sales_order", "purchase_order", "transaction", "payment")
#: Orders drawn before a chunk is sent: bounds memory at any scale.
CHUNK_ORDERS = 25_000

_ADD_CONSTRAINT = re.compile(r'ALTER TABLE "(?P<table>\w+)" ADD CONSTRAINT "(?P<name>\w+)"')
_MS_PER_DAY = 86_400_000
_EPOCH = datetime(1970, 1, 1)
_DESIGN_STREAM = 0
_DAY_STREAM = 1
_ITEM_CODE_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype=np.uint8)
_SALES_PRICES = np.array([shape.cents_text(c) for c in range(shape.UNIT_PRICE_CENTS[1] + 1)])
_ITEM_PRICES = np.array([shape.cents_text(c) for c in range(shape.ITEM_PRICE_CENTS[1] + 1)])


class GeneratorError(RuntimeError):
    """The target database cannot be generated into (wrong schema, data already there)."""


@dataclass(frozen=True)
class Plan:
    """What to generate: volume multiplier, random seed and the history's time span."""

    scale: float
    seed: int
    start: datetime
    end: datetime

    @classmethod
    def of(cls, scale: float = 1.0, seed: int = 42, end: datetime | None = None) -> "Plan":
        """Validate the arguments of :func:`generate` and derive the history's start."""
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale!r}")
        finish = shape.naive_utc(end or shape.DEFAULT_END)
        return cls(scale=float(scale), seed=int(seed), start=shape.history_start(finish),
                   end=finish)


@dataclass
class DayOrders:
    """One business day's orders, column-wise (times in ms since the epoch, prices in cents)."""

    sales: dict[str, np.ndarray]
    purchases: dict[str, np.ndarray]


# ---------------------------------------------------------------------------------- schema

def create_schema(conn: pg8000.native.Connection) -> bool:
    """Create the totesys tables from ``totesys.sql``; return False if they already exist.

    Idempotent, so every caller can simply ensure the schema; a database holding only some
    of the tables is refused rather than patched, since it is not a totesys we know.
    """
    present = _existing_tables(conn)
    if present == set(SOURCE_TABLES):
        return False
    if present:
        raise GeneratorError(
            f"database has some totesys tables ({', '.join(sorted(present))}) but not all; "
            "use an empty database")
    conn.run("START TRANSACTION")
    try:
        for statement in ddl_statements():
            conn.run(statement)
        conn.run("COMMIT")
    except Exception:
        conn.run("ROLLBACK")
        raise
    return True


def recreate_empty_source(postgres: "stack.Postgres", name: str) -> None:
    """Drop and create database ``name`` on ``postgres`` with the totesys schema and no rows.

    What a test or a benchmark starts from when it generates or writes its own source.
    """
    postgres.recreate_database(name)
    conn = postgres.connect(name)
    try:
        create_schema(conn)
    finally:
        conn.close()


def seed_new(conn: pg8000.native.Connection, scale: float = 1.0, seed: int = 42,
             end: datetime | None = None) -> dict[str, int]:
    """Make a new totesys in the empty database behind ``conn``: schema, then history.

    What every new source starts as (``totes seed``, the demo, the local stack, the
    benchmarks, the tests' sources): one function, so they all build the same database
    the same way, and a change to how a source is made is made once. Returns rows per
    table, as :func:`generate` does.
    """
    create_schema(conn)
    return generate(conn, scale=scale, seed=seed, end=end)


def ddl_statements() -> list[str]:
    """The statements of ``totesys.sql``, comments dropped, in order."""
    ddl = resources.files("totes_local").joinpath("totesys.sql").read_text()
    statements = (part.strip() for part in ddl.split(";\n"))
    return [statement for statement in statements
            if statement and not all(line.startswith("--") for line in statement.splitlines())]


def order_foreign_keys() -> list[tuple[str, str, str]]:
    """``(table, constraint, ADD statement)`` of the foreign keys held by the order tables."""
    found = []
    for statement in ddl_statements():
        match = _ADD_CONSTRAINT.match(statement)
        if match and match["table"] in ORDER_TABLES and "FOREIGN KEY" in statement:
            found.append((match["table"], match["name"], statement))
    return found


def _existing_tables(conn: pg8000.native.Connection) -> set[str]:
    rows = conn.run("SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_name = ANY(:names)",
                    names=list(SOURCE_TABLES))
    return {row[0] for row in rows}


# ------------------------------------------------------------------------------- generate

def generate(conn: pg8000.native.Connection, scale: float = 1.0, seed: int = 42,
             end: datetime | None = None) -> dict[str, int]:
    """Fill an empty totesys schema (see :func:`create_schema`); return rows per table.

    Everything is written in one transaction, so a failure leaves the tables empty.
    The order tables' foreign keys are dropped for the bulk load and re-added (so
    validated in one pass each, rather than per row) from ``totesys.sql`` itself.
    Sequences are moved past the generated ids, so later inserts (the simulator, a
    user) get fresh ids, and the tables are analysed for the pipeline's queries.
    """
    plan = Plan.of(scale, seed, end)
    _require_empty(conn)
    reference = reference_rows(plan)
    designs = design_rows(plan)
    counts = {table: 0 for table in SOURCE_TABLES}
    conn.run("START TRANSACTION")
    try:
        for table, rows in reference.items():
            pgcopy.copy_in(conn, table, COLUMNS[table], [pgcopy.rows_block(rows)])
            counts[table] = len(rows)
        pgcopy.copy_in(conn, "design", COLUMNS["design"], [pgcopy.rows_block(designs)])
        counts["design"] = len(designs)
        design_times = np.array([_epoch_ms(row[1]) for row in designs], dtype=np.int64)
        foreign_keys = order_foreign_keys()
        for table, name, _ in foreign_keys:
            conn.run(f"ALTER TABLE {pgcopy.quote_ident(table)} "
                     f"DROP CONSTRAINT {pgcopy.quote_ident(name)}")
        for chunk in order_chunks(plan, design_times):
            for table in ORDER_TABLES:
                pgcopy.copy_in(conn, table, COLUMNS[table],
                               [pgcopy.columns_block(chunk[table])])
                counts[table] += len(chunk[table][0])
        for _, _, statement in foreign_keys:
            conn.run(statement)
        _advance_sequences(conn, counts)
        conn.run("COMMIT")
    except Exception:
        conn.run("ROLLBACK")
        raise
    conn.run("ANALYZE " + ", ".join(pgcopy.quote_ident(table) for table in SOURCE_TABLES))
    return {table: counts[table] for table in SOURCE_TABLES}


def _require_empty(conn: pg8000.native.Connection) -> None:
    missing = set(SOURCE_TABLES) - _existing_tables(conn)
    if missing:
        raise GeneratorError(f"totesys schema missing ({', '.join(sorted(missing))}); "
                             "run create_schema first")
    for table in ("address", "sales_order", "_prisma_migrations"):
        query = f"SELECT EXISTS (SELECT 1 FROM {pgcopy.quote_ident(table)})"  # nosec B608
        if conn.run(query)[0][0]:
            raise GeneratorError(f"totesys already holds data ({table} is not empty); "
                                 "generate into a fresh database")


def _advance_sequences(conn: pg8000.native.Connection, counts: dict[str, int]) -> None:
    for table, key in SOURCE_TABLES.items():
        conn.run("SELECT setval(pg_get_serial_sequence(:table, :key), :value, :called)",
                 table=table, key=key, value=max(counts[table], 1), called=counts[table] > 0)


# ------------------------------------------------------------------------- reference data

def reference_rows(plan: Plan) -> dict[str, list[tuple]]:
    """The small tables, written once at the history's start, in foreign-key order."""
    rng = random.Random(f"totesys-reference-{plan.seed}")  # nosec B311
    born = plan.start
    people_born = born + shape.PEOPLE_DELAY
    addresses = [(i, *vocab.address(rng).values(), born, born)
                 for i in range(1, shape.ADDRESSES + 1)]
    departments = [(i, name, rng.choice(vocab.OFFICES), vocab.person(rng), born, born)
                   for i, name in enumerate(vocab.DEPARTMENTS, start=1)]
    counterparties = [
        (i, vocab.company(rng), rng.randint(1, shape.ADDRESSES), vocab.person(rng, 0.2),
         vocab.person(rng, 0.2), people_born, people_born)
        for i in range(1, shape.COUNTERPARTIES + 1)
    ]
    staff = []
    for i in range(1, shape.STAFF + 1):
        first, last = rng.choice(vocab.FIRST_NAMES), rng.choice(vocab.LAST_NAMES)
        staff.append((i, first, last, rng.randint(1, len(vocab.DEPARTMENTS)),
                      vocab.email(first, last), people_born, people_born))
    return {
        "address": addresses,
        "currency": [(i, code, born, born) for i, code in enumerate(vocab.CURRENCIES, 1)],
        "department": departments,
        "payment_type": [(i, name, born, born)
                         for i, name in enumerate(vocab.PAYMENT_TYPES, 1)],
        "counterparty": counterparties,
        "staff": staff,
        "_prisma_migrations": _migrations(rng, born),
    }


def _migrations(rng: random.Random, born: datetime) -> list[tuple]:
    """Prisma's bookkeeping rows, as a migrated database has them (the pipeline skips them)."""
    rows = []
    for step, name in enumerate(("init", "add_payment_accounts")):
        started = born - timedelta(days=30 - step, seconds=rng.randint(0, 3600))
        stamp = started.strftime("%Y%m%d%H%M%S")
        checksum = hashlib.sha256(f"{stamp}_{name}".encode()).hexdigest()
        rows.append((str(uuid.UUID(int=rng.getrandbits(128), version=4)), checksum,
                     f"{started + timedelta(milliseconds=rng.randint(40, 400))}+00",
                     f"{stamp}_{name}", None, None, f"{started}+00", 1))
    return rows


def expected_rows(scale: float = 1.0) -> int:
    """How many rows :func:`generate` writes at ``scale``, on average (its draws vary a little).

    Derived from the shape it draws from, so the help texts follow the generator
    rather than a number typed in once (47,719 rows at scale 1 with the default seed).
    """
    plan = Plan.of(scale)
    day = (shape.CLOSE_HOUR - shape.OPEN_HOUR) * 3_600_000
    days = sum((closes - opens) / day for _, opens, closes in business_days(plan))
    orders = (shape.SALES_PER_WEEKDAY + shape.PURCHASES_PER_WEEKDAY) * plan.scale * days
    designs = (max(1, round(shape.INITIAL_DESIGNS * plan.scale))
               + shape.DESIGNS_PER_WEEKDAY * plan.scale * days)
    reference = (shape.ADDRESSES + shape.COUNTERPARTIES + shape.STAFF + len(vocab.DEPARTMENTS)
                 + len(vocab.CURRENCIES) + len(vocab.PAYMENT_TYPES))
    return round(3 * orders + designs + reference)  # each order has a transaction and a payment


def size_text(scale: float = 1.0) -> str:
    """``about 48,000 rows``: the expected size at ``scale``, for help texts."""
    rows = expected_rows(scale)
    return f"about {round(rows, 2 - len(str(rows))):,} rows"


def design_rows(plan: Plan) -> list[tuple]:
    """Designs ordered by creation: a few on day one, then new ones on business days."""
    rng = np.random.default_rng([plan.seed, _DESIGN_STREAM])
    names = random.Random(f"totesys-designs-{plan.seed}")  # nosec B311
    initial = max(1, round(shape.INITIAL_DESIGNS * plan.scale))
    times = [_epoch_ms(plan.start)] * initial
    for day, opens, closes in business_days(plan):
        share = (closes - opens) / ((shape.CLOSE_HOUR - shape.OPEN_HOUR) * 3_600_000)
        count = rng.poisson(shape.DESIGNS_PER_WEEKDAY * plan.scale * share)
        times.extend(sorted(rng.integers(opens, closes, count).tolist()))
    rows = []
    for design_id, ms in enumerate(times, start=1):
        created = _from_epoch_ms(ms)
        name = names.choice(vocab.DESIGN_MATERIALS)
        drawn = created.date() - timedelta(days=names.randint(30, 600))
        rows.append((design_id, created, name, names.choice(vocab.FILE_LOCATIONS),
                     vocab.design_file_name(names, name, drawn.strftime("%Y%m%d")), created))
    return rows


# ---------------------------------------------------------------------------- order rows

def business_days(plan: Plan) -> Iterator[tuple[date, int, int]]:
    """Each weekday of the history with its open window [opens, closes) in epoch ms."""
    start_ms, end_ms = _epoch_ms(plan.start), _epoch_ms(plan.end)
    day = plan.start.date()
    while day <= plan.end.date():
        if day.weekday() < 5:
            midnight = _epoch_ms(datetime.combine(day, datetime.min.time()))
            opens = max(midnight + shape.OPEN_HOUR * 3_600_000, start_ms)
            closes = min(midnight + shape.CLOSE_HOUR * 3_600_000, end_ms)
            if opens < closes:
                yield day, opens, closes
        day += timedelta(days=1)


def day_orders(plan: Plan, day: date, opens: int, closes: int,
               design_times: np.ndarray) -> DayOrders:
    """Draw one day's sales and purchase orders from the day's own random stream."""
    rng = np.random.default_rng([plan.seed, _DAY_STREAM, day.toordinal()])
    share = (closes - opens) / ((shape.CLOSE_HOUR - shape.OPEN_HOUR) * 3_600_000)
    n_sales = rng.poisson(shape.SALES_PER_WEEKDAY * plan.scale * share)
    n_purchases = rng.poisson(shape.PURCHASES_PER_WEEKDAY * plan.scale * share)
    sales = _common_columns(rng, n_sales, opens, closes)
    available = np.searchsorted(design_times, sales["created"], side="right")
    sales["design"] = (rng.random(n_sales) * available).astype(np.int64) + 1
    sales["quantity"] = rng.integers(shape.UNITS_SOLD[0], shape.UNITS_SOLD[1] + 1, n_sales)
    sales["price"] = rng.integers(shape.UNIT_PRICE_CENTS[0], shape.UNIT_PRICE_CENTS[1] + 1,
                                  n_sales)
    purchases = _common_columns(rng, n_purchases, opens, closes)
    purchases["quantity"] = rng.integers(shape.ITEM_QUANTITY[0], shape.ITEM_QUANTITY[1] + 1,
                                         n_purchases)
    purchases["price"] = rng.integers(shape.ITEM_PRICE_CENTS[0], shape.ITEM_PRICE_CENTS[1] + 1,
                                      n_purchases)
    letters = rng.integers(0, len(_ITEM_CODE_ALPHABET), (n_purchases, shape.ITEM_CODE_LENGTH))
    purchases["item_code"] = _ITEM_CODE_ALPHABET[letters].view(
        f"S{shape.ITEM_CODE_LENGTH}").ravel()
    return DayOrders(sales=sales, purchases=purchases)


def _common_columns(rng: np.random.Generator, n: int, opens: int,
                    closes: int) -> dict[str, np.ndarray]:
    """Columns sales and purchase orders share, plus the draws for their payment."""
    late = rng.random(n) < shape.LATE_DELIVERY_SHARE
    delivery = np.where(late, rng.integers(*shape.LATE_DELIVERY_DAYS, n),
                        np.rint(rng.random(n) * shape.DELIVERY_DAYS)).astype(np.int64)
    return {
        "created": np.sort(rng.integers(opens, closes, n)),
        "staff": rng.integers(1, shape.STAFF + 1, n),
        "counterparty": rng.integers(1, shape.COUNTERPARTIES + 1, n),
        "currency": rng.integers(1, len(vocab.CURRENCIES) + 1, n),
        "location": rng.integers(1, shape.ADDRESSES + 1, n),
        "delivery_days": delivery,
        "payment_days": np.rint(rng.random(n) * shape.PAYMENT_DAYS).astype(np.int64),
        "paid_draw": rng.random(n),
        "company_ac": rng.integers(shape.ACCOUNT_NUMBERS[0], shape.ACCOUNT_NUMBERS[1] + 1, n),
        "counterparty_ac": rng.integers(shape.ACCOUNT_NUMBERS[0], shape.ACCOUNT_NUMBERS[1] + 1,
                                        n),
    }


def order_chunks(plan: Plan, design_times: np.ndarray,
                 chunk_orders: int = CHUNK_ORDERS) -> Iterator[dict[str, list[list[str]]]]:
    """Yield the order tables as COPY-ready text columns, a bounded number of orders at a time.

    Ids follow creation time across both order kinds (transactions interleave sales and
    purchases) and the payment id equals its transaction id, as in the real database.
    """
    next_ids = {"sales": 1, "purchases": 1, "transaction": 1}
    pending: list[DayOrders] = []
    size = 0
    for day, opens, closes in business_days(plan):
        orders = day_orders(plan, day, opens, closes, design_times)
        pending.append(orders)
        size += len(orders.sales["created"]) + len(orders.purchases["created"])
        if size >= chunk_orders:
            yield _chunk_text(plan, pending, next_ids)
            pending, size = [], 0
    if pending:
        yield _chunk_text(plan, pending, next_ids)


def _chunk_text(plan: Plan, days: list[DayOrders],
                next_ids: dict[str, int]) -> dict[str, list[list[str]]]:
    sales = _concat([day.sales for day in days])
    purchases = _concat([day.purchases for day in days])
    for kind, frame in (("sales", sales), ("purchases", purchases)):
        frame["id"] = np.arange(len(frame["created"]), dtype=np.int64) + next_ids[kind]
        next_ids[kind] += len(frame["created"])
        _derive_payment(plan, frame)
    is_sale = np.concatenate([np.ones(len(sales["created"]), bool),
                              np.zeros(len(purchases["created"]), bool)])
    merged = {name: np.concatenate([sales[name], purchases[name]])
              for name in ("created", "id", "counterparty", "currency", "amount", "paid",
                           "last_updated", "payment_date", "company_ac", "counterparty_ac")}
    order = np.lexsort((~is_sale, merged["created"]))
    merged = {name: values[order] for name, values in merged.items()}
    is_sale = is_sale[order]
    transaction_ids = np.arange(len(order), dtype=np.int64) + next_ids["transaction"]
    next_ids["transaction"] += len(order)
    return {
        "sales_order": _sales_text(sales),
        "purchase_order": _purchases_text(purchases),
        "transaction": _transactions_text(merged, is_sale, transaction_ids),
        "payment": _payments_text(merged, is_sale, transaction_ids),
    }


def _concat(frames: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([frame[name] for frame in frames]) for name in frames[0]}


def _derive_payment(plan: Plan, frame: dict[str, np.ndarray]) -> None:
    """Agreed dates, amount and paid state: the daily batch pays what is due that day."""
    created_day = frame["created"] // _MS_PER_DAY
    frame["delivery_date"] = created_day + frame["delivery_days"]
    frame["payment_date"] = created_day + frame["payment_days"]
    frame["amount"] = frame["quantity"] * frame["price"]
    batch = frame["payment_date"] * _MS_PER_DAY + _batch_offsets(plan, frame["payment_date"])
    weekday = (frame["payment_date"] + 3) % 7 < 5
    frame["paid"] = (weekday & (batch > frame["created"]) & (batch <= _epoch_ms(plan.end))
                     & (frame["paid_draw"] < shape.PAID_SHARE))
    frame["last_updated"] = np.where(frame["paid"], batch, frame["created"])


def _batch_offsets(plan: Plan, days: np.ndarray) -> np.ndarray:
    """Milliseconds after midnight of each day's payment batch (07:55:11.xxx, fixed per day)."""
    run = shape.PAYMENT_RUN
    base = ((run.hour * 60 + run.minute) * 60 + run.second) * 1000
    return base + (days * 7919 + plan.seed * 104729) % 500 + 400


def _timestamps(ms: np.ndarray) -> list[str]:
    return np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms").tolist()


def _dates(days: np.ndarray) -> list[str]:
    return np.datetime_as_string(days.astype("datetime64[D]"), unit="D").tolist()


def _ints(values: np.ndarray) -> list[str]:
    return values.astype(str).tolist()


def _sales_text(frame: dict[str, np.ndarray]) -> list[list[str]]:
    return [_ints(frame["id"]), _timestamps(frame["created"]), _timestamps(frame["created"]),
            _ints(frame["design"]), _ints(frame["staff"]), _ints(frame["counterparty"]),
            _ints(frame["quantity"]), _SALES_PRICES[frame["price"]].tolist(),
            _ints(frame["currency"]), _dates(frame["delivery_date"]),
            _dates(frame["payment_date"]), _ints(frame["location"])]


def _purchases_text(frame: dict[str, np.ndarray]) -> list[list[str]]:
    return [_ints(frame["id"]), _timestamps(frame["created"]), _timestamps(frame["created"]),
            _ints(frame["staff"]), _ints(frame["counterparty"]),
            [code.decode() for code in frame["item_code"].tolist()],
            _ints(frame["quantity"]), _ITEM_PRICES[frame["price"]].tolist(),
            _ints(frame["currency"]), _dates(frame["delivery_date"]),
            _dates(frame["payment_date"]), _ints(frame["location"])]


def _transactions_text(merged: dict[str, np.ndarray], is_sale: np.ndarray,
                       ids: np.ndarray) -> list[list[str]]:
    order_ids = _ints(merged["id"])
    created = _timestamps(merged["created"])
    return [_ints(ids), np.where(is_sale, "SALE", "PURCHASE").tolist(),
            np.where(is_sale, order_ids, pgcopy.NULL).tolist(),
            np.where(is_sale, pgcopy.NULL, order_ids).tolist(), created, created]


def _payments_text(merged: dict[str, np.ndarray], is_sale: np.ndarray,
                   ids: np.ndarray) -> list[list[str]]:
    payment_type = np.where(is_sale, shape.SALES_RECEIPT, shape.PURCHASE_PAYMENT)
    return [_ints(ids), _timestamps(merged["created"]), _timestamps(merged["last_updated"]),
            _ints(ids), _ints(merged["counterparty"]),
            [shape.cents_text(cents) for cents in merged["amount"].tolist()],
            _ints(merged["currency"]), _ints(payment_type),
            np.where(merged["paid"], "t", "f").tolist(), _dates(merged["payment_date"]),
            _ints(merged["company_ac"]), _ints(merged["counterparty_ac"])]


def _epoch_ms(moment: datetime) -> int:
    return int((moment - _EPOCH) / timedelta(milliseconds=1))


def _from_epoch_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)
