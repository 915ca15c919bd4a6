"""Warehouses of known content for the business-query and dashboard tests.

Two ways to make one, both returning ``Rows`` (the base rows the warehouse holds),
from which the tests compute every expected number in Python, never from the
queries' own output:

- :func:`build_warehouse`: the contract DDL plus rows generated here with a fixed
  seed, shaped to hit every edge the queries care about (amendments that change
  currency or delivery city, every age band of unpaid payments, orders and
  payments deleted at the source); fast.
- :func:`pipeline_warehouse`: the real thing: ``totesys`` seeded by the generator,
  driven through ingest, transform and load by the local runner, business
  simulated and an order amended, driven again; the rows are then read back.
"""
import random
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

from totes.warehouse_schema import (FACTS, TABLES, create_index_sql, create_table_sql,
                                    create_view_sql)
from totes_local import generator, pgcopy, simulator, stack
from totes_local.runner import LocalPipeline

TODAY = date.today()
FIRST_DAY = TODAY - timedelta(days=200)
LAST_DAY = TODAY + timedelta(days=90)
CURRENCIES = {1: "GBP", 2: "USD", 3: "EUR"}
LOADED_MANIFEST_DDL = (
    "CREATE SCHEMA IF NOT EXISTS etl",
    "CREATE TABLE IF NOT EXISTS etl.loaded_manifest (manifest_key text PRIMARY KEY, "
    "run_id text, ingest_started_at timestamptz, loaded_at timestamptz, rows_loaded bigint)",
)
LOADED_AT = datetime(2024, 11, 15, 14, 20, 15, tzinfo=timezone.utc)
INGEST_STARTED_AT = datetime(2024, 11, 15, 14, 20, 9, tzinfo=timezone.utc)


@dataclass
class Rows:
    """The base rows of every warehouse table, as dicts keyed by contract column names."""

    tables: dict[str, list[dict]] = field(default_factory=dict)

    def __getitem__(self, table: str) -> list[dict]:
        """The rows of ``table``."""
        return self.tables.setdefault(table, [])

    def dimension(self, table: str) -> dict[int, dict]:
        """A dimension's rows by primary key."""
        key = TABLES[table].primary_key
        return {row[key]: row for row in self[table]}

    def current(self, fact: str) -> list[dict]:
        """The latest version of each business id, as the ``*_current`` views define it.

        Rows are held in record id order (the order they were loaded in), so the
        latest is the last; an id whose latest version records its deletion is left out.
        """
        business_id = TABLES[fact].unique_key[0]
        latest = {row[business_id]: row for row in self[fact]}
        return [row for row in latest.values() if not row["is_deleted"]]


def version_key(row: dict) -> tuple:
    """Order of versions: last updated date, then time (insertion order breaks no ties here)."""
    return row["last_updated_date"], row["last_updated_time"]


def _dimensions(rng: random.Random, rows: Rows) -> None:
    day = FIRST_DAY
    while day <= LAST_DAY:
        rows["dim_date"].append({
            "date_id": day, "year": day.year, "month": day.month, "day": day.day,
            "day_of_week": day.isoweekday(), "day_name": day.strftime("%A"),
            "month_name": day.strftime("%B"), "quarter": (day.month - 1) // 3 + 1})
        day += timedelta(days=1)
    for currency_id, code in CURRENCIES.items():
        rows["dim_currency"].append({"currency_id": currency_id, "currency_code": code,
                                     "currency_name": f"{code} name"})
    departments = ["Sales", "Purchasing", "Finance"]
    for staff_id in range(1, 7):
        rows["dim_staff"].append({
            "staff_id": staff_id, "first_name": f"First{staff_id}", "last_name": f"Last{staff_id}",
            "department_name": departments[staff_id % 3], "location": "Leeds",
            "email_address": f"staff{staff_id}@terrifictotes.com"})
    places = [("UK", "Leeds"), ("UK", "York"), ("France", "Paris"), ("France", "Lyon"),
              ("USA", "Boston"), ("USA", "Austin")]
    for location_id, (country, city) in enumerate(places, start=1):
        rows["dim_location"].append({
            "location_id": location_id, "address_line_1": f"{location_id} High Street",
            "address_line_2": None, "district": None, "city": city, "postal_code": "AB1 2CD",
            "country": country, "phone": "0113 496 0000"})
    for design_id in range(1, 16):
        rows["dim_design"].append({"design_id": design_id, "design_name": f"Design {design_id:02d}",
                                   "file_location": "/designs", "file_name": f"d{design_id}.json"})
    for counterparty_id in range(1, 8):
        country, city = places[counterparty_id % len(places)]
        rows["dim_counterparty"].append({
            "counterparty_id": counterparty_id,
            "counterparty_legal_name": f"Counterparty {counterparty_id} Ltd",
            "counterparty_legal_address_line_1": "1 Road",
            "counterparty_legal_address_line_2": None, "counterparty_legal_district": None,
            "counterparty_legal_city": city, "counterparty_legal_postal_code": "AB1 2CD",
            "counterparty_legal_country": country,
            "counterparty_legal_phone_number": "0113 496 0001"})
    for type_id, name in enumerate(["SALES_RECEIPT", "SALES_REFUND", "PURCHASE_PAYMENT",
                                    "PURCHASE_REFUND"], start=1):
        rows["dim_payment_type"].append({"payment_type_id": type_id, "payment_type_name": name})


def _clock(rng: random.Random) -> time:
    return time(rng.randint(8, 18), rng.randint(0, 59), rng.randint(0, 59),
                rng.randint(0, 999) * 1000)


def _versions(rng: random.Random, base: dict, amend) -> list[dict]:
    """The order as placed, then zero to two amendments on later days."""
    versions = [base]
    for _ in range(rng.choice([0, 0, 0, 1, 2])):
        previous = versions[-1]
        changed = {**previous, **amend(previous)}
        changed["last_updated_date"] = min(TODAY, previous["last_updated_date"]
                                           + timedelta(days=rng.randint(1, 5)))
        changed["last_updated_time"] = _clock(rng)
        if version_key(changed) > version_key(previous):
            versions.append(changed)
    return versions


def _sales(rng: random.Random, rows: Rows, count: int) -> None:
    for order_id in range(1, count + 1):
        created = FIRST_DAY + timedelta(days=rng.randint(0, 190))
        clock = _clock(rng)
        base = {
            "sales_order_id": order_id, "created_date": created, "created_time": clock,
            "last_updated_date": created, "last_updated_time": clock,
            "sales_staff_id": rng.randint(1, 6), "counterparty_id": rng.randint(1, 7),
            "units_sold": rng.randint(1000, 90000),
            "unit_price": Decimal(rng.randint(200, 400)) / 100,
            "currency_id": rng.choice([1, 1, 2, 3]), "design_id": rng.randint(1, 15),
            "agreed_payment_date": created + timedelta(days=rng.randint(1, 60)),
            "agreed_delivery_date": created + timedelta(days=rng.randint(1, 60)),
            "agreed_delivery_location_id": rng.randint(1, 6), "is_deleted": False,
        }
        rows["fact_sales_order"].extend(_versions(rng, base, lambda old: {
            "units_sold": old["units_sold"] + rng.randint(1, 500),
            "currency_id": rng.choice([old["currency_id"], 1, 2]),
            "agreed_delivery_location_id": rng.randint(1, 6)}))
        rows["dim_transaction"].append({"transaction_id": order_id,
                                        "transaction_type": "SALE",
                                        "sales_order_id": order_id, "purchase_order_id": None})


def _purchases(rng: random.Random, rows: Rows, count: int, first_transaction: int) -> None:
    for order_id in range(1, count + 1):
        created = FIRST_DAY + timedelta(days=rng.randint(0, 190))
        clock = _clock(rng)
        base = {
            "purchase_order_id": order_id, "created_date": created, "created_time": clock,
            "last_updated_date": created, "last_updated_time": clock,
            "staff_id": rng.randint(1, 6), "counterparty_id": rng.randint(1, 7),
            "item_code": f"ITEM{rng.randint(1, 99):03d}", "item_quantity": rng.randint(1, 900),
            "item_unit_price": Decimal(rng.randint(100, 99999)) / 100,
            "currency_id": rng.choice([1, 2, 3]),
            "agreed_delivery_date": created + timedelta(days=rng.randint(1, 30)),
            "agreed_payment_date": created + timedelta(days=rng.randint(1, 30)),
            "agreed_delivery_location_id": rng.randint(1, 6), "is_deleted": False,
        }
        rows["fact_purchase_orders"].extend(_versions(rng, base, lambda old: {
            "item_quantity": old["item_quantity"] + rng.randint(1, 50)}))
        rows["dim_transaction"].append({"transaction_id": first_transaction + order_id,
                                        "transaction_type": "PURCHASE",
                                        "sales_order_id": None, "purchase_order_id": order_id})


def _payments(rng: random.Random, rows: Rows) -> None:
    """One payment per transaction; those due in the past mostly flip to paid in a new version."""
    orders = {("SALE", row["sales_order_id"]): row for row in rows.current("fact_sales_order")}
    orders.update({("PURCHASE", row["purchase_order_id"]): row
                   for row in rows.current("fact_purchase_orders")})
    for payment_id, transaction in enumerate(rows["dim_transaction"], start=1):
        kind = transaction["transaction_type"]
        order = orders[(kind, transaction["sales_order_id"] or transaction["purchase_order_id"])]
        amount = (order["units_sold"] * order["unit_price"] if kind == "SALE"
                  else order["item_quantity"] * order["item_unit_price"])
        created, clock = order["created_date"], order["created_time"]
        due = TODAY + timedelta(days=rng.randint(-150, 30))
        base = {
            "payment_id": payment_id, "created_date": created, "created_time": clock,
            "last_updated_date": created, "last_updated_time": clock,
            "transaction_id": transaction["transaction_id"],
            "counterparty_id": order["counterparty_id"], "payment_amount": amount,
            "currency_id": order["currency_id"],
            "payment_type_id": rng.choice([1, 2]) if kind == "SALE" else rng.choice([3, 4]),
            "paid": False, "payment_date": max(due, created), "is_deleted": False,
        }
        versions = [base]
        paid_on = base["payment_date"] + timedelta(days=rng.randint(-3, 10))
        if paid_on < TODAY and rng.random() < 0.7:
            paid_on = max(paid_on, created + timedelta(days=1))
            versions.append({**base, "paid": True, "last_updated_date": paid_on,
                             "last_updated_time": _clock(rng)})
        rows["fact_payment"].extend(versions)


def deletion_version(latest: dict, detected: datetime) -> dict:
    """The version the load adds when a source row is deleted: its last values, marked deleted."""
    return {**latest, "is_deleted": True, "last_updated_date": detected.date(),
            "last_updated_time": detected.time()}


def _deletions(rng: random.Random, rows: Rows) -> None:
    """Delete about one in twelve orders and payments at the source, after everything else."""
    for fact in ("fact_sales_order", "fact_purchase_orders", "fact_payment"):
        for latest in rows.current(fact):
            if rng.random() >= 1 / 12:
                continue
            day = min(TODAY, latest["last_updated_date"] + timedelta(days=rng.randint(1, 9)))
            deleted = deletion_version(latest, datetime.combine(day, _clock(rng)))
            if version_key(deleted) > version_key(latest):
                rows[fact].append(deleted)


def known_rows(seed: int = 20241115, sales: int = 160, purchases: int = 60) -> Rows:
    """Deterministic warehouse content: dimensions, amended orders, paid and unpaid payments.

    Some orders and payments are then deleted (one more version each, loaded last).
    """
    rng = random.Random(seed)
    rows = Rows()
    _dimensions(rng, rows)
    _sales(rng, rows, sales)
    _purchases(rng, rows, purchases, first_transaction=sales)
    _payments(rng, rows)
    _deletions(rng, rows)
    return rows


def create_schema(connection) -> None:
    """The contract schema (tables, ``*_current`` views) and the load's bookkeeping table."""
    for table in TABLES.values():
        connection.run(create_table_sql(table))
    for fact in FACTS:
        connection.run(create_index_sql(fact))
        connection.run(create_view_sql(fact))
    for statement in LOADED_MANIFEST_DDL:
        connection.run(statement)


def insert(connection, rows: Rows) -> None:
    """COPY every table's rows, dimensions first, and record one loaded manifest."""
    for table in TABLES.values():
        columns = [column.name for column in table.data_columns]
        block = pgcopy.rows_block([row[name] for name in columns] for row in rows[table.name])
        pgcopy.copy_in(connection, table.name, columns, [block])
    total = sum(len(rows[table]) for table in TABLES)
    connection.run(
        "INSERT INTO etl.loaded_manifest VALUES (:key, :run, :started, :loaded, :rows)",
        key="_manifests/2024/11/15/20241115T142009123Z-3f9a1c2e.json",
        run="20241115T142009123Z-3f9a1c2e", started=INGEST_STARTED_AT, loaded=LOADED_AT,
        rows=total)


def build_warehouse(postgres, dbname: str) -> Rows:
    """Fill the empty database ``dbname`` and return the rows it now holds."""
    rows = known_rows()
    connection = postgres.connect(dbname)
    try:
        create_schema(connection)
        insert(connection, rows)
    finally:
        connection.close()
    return rows


def read_rows(postgres, dbname: str) -> Rows:
    """Every row of every warehouse table, as the warehouse holds it, in key (record id) order."""
    connection = postgres.connect(dbname)
    try:
        rows = Rows()
        for table in TABLES.values():
            names = ", ".join(f'"{name}"' for name in table.column_names)
            found = connection.run(f'SELECT {names} FROM "{table.name}" '  # nosec B608
                                   f'ORDER BY "{table.primary_key}"')
            rows.tables[table.name] = [dict(zip(table.column_names, row)) for row in found]
        return rows
    finally:
        connection.close()


def pipeline_warehouse(postgres, dbname: str, moto_endpoint: str, scale: float = 0.02) -> Rows:
    """Fill ``dbname`` by running the pipeline twice over generated, then changed, business."""
    source = f"{dbname}_source"
    for name in (source, dbname):
        postgres.recreate_database(name)
    env = stack.isolated_environment(moto_endpoint, uuid.uuid4().hex[:8])
    with stack.environment(env):
        stack.provision({env["TOTESYS_SECRET_ID"]: postgres.secret(source),
                         env["WAREHOUSE_SECRET_ID"]: postgres.secret(dbname)},
                        buckets=(env["INGEST_BUCKET"], env["PROCESSED_BUCKET"]))
        connection = postgres.connect(source)
        try:
            generator.seed_new(connection, scale=scale, seed=7)
            pipeline = LocalPipeline(env["INGEST_BUCKET"])
            pipeline.cycle()
            first_order = connection.run("SELECT min(sales_order_id) FROM sales_order")[0][0]
            simulator.simulate(connection, steps=6, seed=7)
            clock = simulator.latest_change(connection) + timedelta(minutes=1)
            simulator.amend_sales_order(connection, first_order, clock)
            pipeline.cycle()
        finally:
            connection.close()
    return read_rows(postgres, dbname)
