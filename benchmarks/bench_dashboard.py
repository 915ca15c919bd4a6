"""What one dashboard page load costs on a large warehouse.

Builds a warehouse with the load's own DDL (``totes.warehouse.ensure_schema``) in a
throwaway embedded PostgreSQL, fills it with ``generate_series`` (about 2.5 million
fact rows at the default size: sales orders, one in five amended, purchase orders,
payments of which four in five have a second, paid version), then times every
query of ``sql/queries`` the way the page runs them: all data, and one currency
over one year. Prints a Markdown table for docs/dashboard.md.

    .venv/bin/python -m benchmarks.bench_dashboard [--orders 600000]
"""
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Sequence

from benchmarks.common import options, parse
from totes import warehouse
from totes_local import queries, stack

DIMENSIONS_SQL = (
    "INSERT INTO dim_date SELECT d, extract(year FROM d), extract(month FROM d), "
    "extract(day FROM d), extract(isodow FROM d), to_char(d, 'FMDay'), to_char(d, 'FMMonth'), "
    "extract(quarter FROM d) "
    "FROM generate_series(date '2021-01-01', date '2025-12-31', interval '1 day') AS g(d)",
    "INSERT INTO dim_currency VALUES (1, 'GBP', 'Pound Sterling'), (2, 'USD', 'US Dollar'), "
    "(3, 'EUR', 'Euro')",
    "INSERT INTO dim_staff SELECT i, 'First' || i, 'Last' || i, 'Department ' || i % 8, 'Leeds', "
    "'staff' || i || '@example.com' FROM generate_series(1, 20) AS i",
    "INSERT INTO dim_location SELECT i, i || ' High Street', NULL, NULL, 'City ' || i, 'AB1', "
    "'Country ' || i % 12, '0113' FROM generate_series(1, 30) AS i",
    "INSERT INTO dim_design SELECT i, 'Design ' || i % 60, '/designs', 'd' || i || '.json' "
    "FROM generate_series(1, 500) AS i",
    "INSERT INTO dim_counterparty SELECT i, 'Counterparty ' || i, '1 Road', NULL, NULL, "
    "'City ' || i, 'AB1', 'Country ' || i % 12, '0113' FROM generate_series(1, 20) AS i",
    "INSERT INTO dim_payment_type VALUES (1, 'SALES_RECEIPT'), (2, 'SALES_REFUND'), "
    "(3, 'PURCHASE_PAYMENT'), (4, 'PURCHASE_REFUND')",
)
#: orders spread evenly over 1,000 days from 2022-01-01, pseudo-random columns from the id.
FACTS_SQL = (
    "INSERT INTO dim_transaction SELECT i, 'SALE', i, NULL "
    "FROM generate_series(1, CAST(:orders AS integer)) AS i",
    "INSERT INTO dim_transaction SELECT :orders + i, 'PURCHASE', NULL, i "
    "FROM generate_series(1, CAST(:purchases AS integer)) AS i",
    "INSERT INTO fact_sales_order (sales_order_id, created_date, created_time, last_updated_date, "
    "last_updated_time, sales_staff_id, counterparty_id, units_sold, unit_price, currency_id, "
    "design_id, agreed_payment_date, agreed_delivery_date, agreed_delivery_location_id) "
    "SELECT i, day, clock, day, clock, 1 + i % 20, 1 + i * 7 % 20, 1000 + i * 37 % 90000, "
    "(200 + i * 13 % 200) / 100.0, 1 + i * 11 % 3, 1 + i * 17 % 500, day + 1 + i % 30, "
    "day + 1 + i * 3 % 30, 1 + i * 19 % 30 "
    "FROM generate_series(1, CAST(:orders AS integer)) AS i, "
    "LATERAL (SELECT date '2022-01-01' + CAST(i * 1000 / :orders AS integer) AS day, "
    "time '08:00' + (i % 39600) * interval '1 second' AS clock) AS at",
    "INSERT INTO fact_sales_order (sales_order_id, created_date, created_time, last_updated_date, "
    "last_updated_time, sales_staff_id, counterparty_id, units_sold, unit_price, currency_id, "
    "design_id, agreed_payment_date, agreed_delivery_date, agreed_delivery_location_id) "
    "SELECT sales_order_id, created_date, created_time, last_updated_date + 2, last_updated_time, "
    "sales_staff_id, counterparty_id, units_sold + 100, unit_price, currency_id, design_id, "
    "agreed_payment_date, agreed_delivery_date + 1, agreed_delivery_location_id "
    "FROM fact_sales_order WHERE sales_order_id % 5 = 0",
    "INSERT INTO fact_purchase_orders (purchase_order_id, created_date, created_time, "
    "last_updated_date, last_updated_time, staff_id, counterparty_id, item_code, item_quantity, "
    "item_unit_price, currency_id, agreed_delivery_date, agreed_payment_date, "
    "agreed_delivery_location_id) "
    "SELECT i, day, clock, day, clock, 1 + i % 20, 1 + i * 3 % 20, 'ITEM' || i % 99, "
    "1 + i * 7 % 900, (100 + i * 31 % 99900) / 100.0, 1 + i * 5 % 3, day + 1 + i % 20, "
    "day + 1 + i % 25, 1 + i * 11 % 30 "
    "FROM generate_series(1, CAST(:purchases AS integer)) AS i, "
    "LATERAL (SELECT date '2022-01-01' + CAST(i * 1000 / :purchases AS integer) AS day, "
    "time '08:00' + (i % 39600) * interval '1 second' AS clock) AS at",
    "INSERT INTO fact_payment (payment_id, created_date, created_time, last_updated_date, "
    "last_updated_time, transaction_id, counterparty_id, payment_amount, currency_id, "
    "payment_type_id, paid, payment_date) "
    "SELECT sales_order_id, created_date, created_time, created_date, created_time, "
    "sales_order_id, counterparty_id, units_sold * unit_price, currency_id, 1, false, "
    "agreed_payment_date FROM fact_sales_order_current "
    "UNION ALL "
    "SELECT :orders + purchase_order_id, created_date, created_time, created_date, created_time, "
    ":orders + purchase_order_id, counterparty_id, item_quantity * item_unit_price, currency_id, "
    "3, false, agreed_payment_date FROM fact_purchase_orders_current",
    "INSERT INTO fact_payment (payment_id, created_date, created_time, last_updated_date, "
    "last_updated_time, transaction_id, counterparty_id, payment_amount, currency_id, "
    "payment_type_id, paid, payment_date) "
    "SELECT payment_id, created_date, created_time, payment_date, time '09:00', transaction_id, "
    "counterparty_id, payment_amount, currency_id, payment_type_id, true, payment_date "
    "FROM fact_payment WHERE payment_id % 5 <> 0",
    "INSERT INTO etl.loaded_manifest VALUES ('_manifests/bench.json', 'bench', now(), now(), 0)",
    "ANALYZE",
)


def fill(connection, orders: int) -> dict[str, int]:
    """Create the schema and fill it; return the rows per fact table."""
    warehouse.ensure_schema(connection)
    for statement in DIMENSIONS_SQL:
        connection.run(statement)
    for statement in FACTS_SQL:
        bound = {name: value for name, value in
                 {"orders": orders, "purchases": orders * 2 // 5}.items()
                 if f":{name}" in statement}
        connection.run(statement, **bound)
    return {table: connection.run(f"SELECT count(*) FROM {table}")[0][0]  # nosec B608
            for table in ("fact_sales_order", "fact_purchase_orders", "fact_payment")}


def time_queries(connection, filters: queries.Filters, repeats: int = 3) -> dict[str, float]:
    """Median seconds of each query of the page with ``filters``."""
    values = {**filters.values(), "order_id": 1}
    timings = {}
    for query in queries.load_queries().values():
        measured = []
        for _ in range(repeats):
            started = time.perf_counter()
            result = queries.run_query(connection, query, values)
            measured.append(time.perf_counter() - started)
            if not result.ok:
                raise RuntimeError(f"{query.name}: {result.error}")
        timings[query.name] = statistics.median(measured)
    return timings


def time_page(postgres, filters: queries.Filters, repeats: int = 3) -> float:
    """Median seconds of a whole page load as the app runs it (concurrent connections)."""
    page = [query for query in queries.load_queries().values() if query.name != "order_history"]
    measured = []
    for _ in range(repeats):
        started = time.perf_counter()
        queries.run_queries_concurrently(lambda: postgres.connect("warehouse"), page,
                                         filters.values())
        measured.append(time.perf_counter() - started)
    return statistics.median(measured)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the large warehouse, time the page, print a Markdown table."""
    parser = options("bench_dashboard", __doc__, seed=False, reuse=False, data_dir=None)
    parser.add_argument("--orders", type=int, default=600_000, help="sales orders to generate")
    args = parse(parser, sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="totes-bench-dashboard-") as folder:
        postgres = stack.start_postgres(Path(folder) / "pg")
        postgres.recreate_database("warehouse")
        connection = postgres.connect("warehouse")
        try:
            started = time.perf_counter()
            counts = fill(connection, args.orders)
            print(f"filled {sum(counts.values()):,} fact rows ({counts}) "
                  f"in {time.perf_counter() - started:.1f} s", flush=True)
            one_year = queries.Filters(start_date=date(2023, 1, 1), end_date=date(2023, 12, 31),
                                       currency="GBP")
            everything = time_queries(connection, queries.Filters())
            filtered = time_queries(connection, one_year)
            pages = time_page(postgres, queries.Filters()), time_page(postgres, one_year)
        finally:
            connection.close()
            postgres.server.cleanup()
    print("\n| query | all data (ms) | GBP, 2023 (ms) |\n|---|---:|---:|")
    for name in everything:
        print(f"| {name} | {everything[name] * 1000:,.0f} | {filtered[name] * 1000:,.0f} |")
    print(f"| sum, one after another | {sum(everything.values()) * 1000:,.0f} | "
          f"{sum(filtered.values()) * 1000:,.0f} |")
    print(f"| **page load as the app runs it ({queries.DEFAULT_WORKERS} connections)** | "
          f"**{pages[0] * 1000:,.0f}** | **{pages[1] * 1000:,.0f}** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
