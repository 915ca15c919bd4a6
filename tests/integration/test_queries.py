"""Every business query against warehouses of known content, checked against Python arithmetic.

The expected numbers are computed here from the base rows the warehouse holds
(``dashboard_warehouse.Rows``), so a query that groups, filters or picks versions
wrongly disagrees with an independent calculation, not with a snapshot of itself.
Each question is asked of two warehouses: hand-made rows aimed at the edge cases,
and one the pipeline itself built from generated and simulated business.
"""
import csv
import subprocess
from collections import defaultdict
from datetime import datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

import pyarrow as pa
import pytest
from dashboard_warehouse import (INGEST_STARTED_AT, LOADED_AT, TODAY, build_warehouse,
                                 pipeline_warehouse)

from totes import warehouse as warehouse_writes
from totes.warehouse_schema import DELETIONS, TABLES, arrow_schema
from totes_local import queries, stack

QUERIES = queries.load_queries()
#: each query's file, by the query's name.
FILES = {queries.parse_query(path.stem, path.read_text(encoding="utf-8")).name: path
         for path in queries.QUERY_DIR.glob("*.sql")}


def window(rows, currency=None):
    """The middle half of the span of order dates, optionally in one currency."""
    days = [row["created_date"] for row in rows["fact_sales_order"]]
    first, span = min(days), max(days) - min(days)
    return queries.Filters(start_date=first + span / 4, end_date=first + span * 3 / 4,
                           currency=currency)


FILTERS = {
    "everything": lambda rows: queries.Filters(),
    "usd_window": lambda rows: window(rows, "USD"),
    "middle_half": window,
}


@pytest.fixture(scope="module")
def known(postgres):
    """The hand-made warehouse: (connection, rows)."""
    name = "queries_known"
    postgres.recreate_database(name)
    rows = build_warehouse(postgres, name)
    connection = postgres.connect(name)
    yield connection, rows
    connection.close()


@pytest.fixture(scope="module")
def pipelined(postgres, moto_endpoint):
    """The warehouse the pipeline built: (connection, rows)."""
    rows = pipeline_warehouse(postgres, "queries_pipeline", moto_endpoint)
    connection = postgres.connect("queries_pipeline")
    yield connection, rows
    connection.close()


@pytest.fixture(params=["known", "pipelined"])
def warehouse(request):
    """Each warehouse in turn."""
    return request.getfixturevalue(request.param)


def one_decimal(value: Decimal) -> Decimal:
    """Round to one decimal as PostgreSQL's ROUND(numeric, 1) does: half away from zero."""
    return value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def two_decimals(value: Decimal) -> Decimal:
    """Round to two decimals as PostgreSQL's ROUND(numeric, 2) does."""
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def month(day):
    return day.replace(day=1)


class Expect:
    """Independent answers to each question, from the base rows and the filters."""

    def __init__(self, rows, filters):
        self.rows, self.filters = rows, filters
        self.codes = {key: row["currency_code"]
                      for key, row in rows.dimension("dim_currency").items()}

    def _keep(self, row):
        code = self.codes[row["currency_id"]]
        f = self.filters
        return ((f.start_date is None or row["created_date"] >= f.start_date)
                and (f.end_date is None or row["created_date"] <= f.end_date)
                and (f.currency is None or code == f.currency))

    def current(self, fact):
        return [{**row, "code": self.codes[row["currency_id"]]}
                for row in self.rows.current(fact) if self._keep(row)]

    def sales(self):
        return [{**row, "value": row["units_sold"] * row["unit_price"]}
                for row in self.current("fact_sales_order")]

    def purchases(self):
        return [{**row, "value": row["item_quantity"] * row["item_unit_price"]}
                for row in self.current("fact_purchase_orders")]

    def _sum_sales(self, key):
        groups = defaultdict(lambda: [0, 0, Decimal(0)])
        for row in self.sales():
            group = groups[key(row)]
            group[0] += 1
            group[1] += row["units_sold"]
            group[2] += row["value"]
        return groups

    @staticmethod
    def _top_ten(groups, revenue_at):
        by_currency = defaultdict(list)
        for (entity, code), values in groups.items():
            by_currency[code].append((entity, values))
        for code in sorted(by_currency):
            ranked = sorted(by_currency[code], key=lambda item: (-revenue_at(item[1]), item[0]))
            yield from ((code, rank, entity, values)
                        for rank, (entity, values) in enumerate(ranked[:10], start=1))

    def revenue_by_month(self):
        groups = self._sum_sales(lambda row: (month(row["created_date"]), row["code"]))
        return [(*key, *values) for key, values in sorted(groups.items())]

    def top_designs(self):
        names = self.rows.dimension("dim_design")
        groups = self._sum_sales(lambda row: (row["design_id"], row["code"]))
        return [(code, rank, f"{names[design]['design_name']} #{design}", *values)
                for code, rank, design, values in self._top_ten(groups, lambda v: v[2])]

    def sales_by_delivery_location(self):
        places = self.rows.dimension("dim_location")
        groups = self._sum_sales(lambda row: (
            places[row["agreed_delivery_location_id"]]["country"],
            places[row["agreed_delivery_location_id"]]["city"], row["code"]))
        ordered = sorted(groups.items(), key=lambda item: (-item[1][2], item[0]))
        return [(*key, *values) for key, values in ordered]

    def revenue_by_staff(self):
        staff = self.rows.dimension("dim_staff")
        groups = self._sum_sales(lambda row: (row["sales_staff_id"], row["code"]))
        ordered = sorted(groups.items(), key=lambda item: (-item[1][2], item[0]))
        return [(staff[person]["department_name"],
                 f"{staff[person]['first_name']} {staff[person]['last_name']}",
                 person, code, orders, revenue)
                for (person, code), (orders, _, revenue) in ordered]

    def top_counterparties(self):
        parties = self.rows.dimension("dim_counterparty")
        groups = self._sum_sales(lambda row: (row["counterparty_id"], row["code"]))
        return [(code, rank, parties[party]["counterparty_legal_name"],
                 parties[party]["counterparty_legal_country"], party, values[0], values[2])
                for code, rank, party, values in self._top_ten(groups, lambda v: v[2])]

    def _by_currency(self):
        mix = defaultdict(lambda: [0, Decimal(0), 0, Decimal(0)])
        for row in self.sales():
            mix[row["code"]][0] += 1
            mix[row["code"]][1] += row["value"]
        for row in self.purchases():
            mix[row["code"]][2] += 1
            mix[row["code"]][3] += row["value"]
        return mix

    def currency_mix(self):
        mix = self._by_currency()
        total = sum(values[0] + values[2] for values in mix.values())
        names = {row["currency_code"]: row["currency_name"] for row in self.rows["dim_currency"]}
        ordered = sorted(mix.items(), key=lambda item: (-(item[1][0] + item[1][2]), item[0]))
        return [(code, names[code], so + po, one_decimal(Decimal(100 * (so + po)) / total),
                 so, revenue, po, spend)
                for code, (so, revenue, po, spend) in ordered]

    def purchases_vs_sales_by_month(self):
        months = defaultdict(lambda: [0, Decimal(0), 0, Decimal(0)])
        for row in self.sales():
            key = (month(row["created_date"]), row["code"])
            months[key][0] += 1
            months[key][1] += row["value"]
        for row in self.purchases():
            key = (month(row["created_date"]), row["code"])
            months[key][2] += 1
            months[key][3] += row["value"]
        return [(*key, so, revenue, po, spend, revenue - spend)
                for key, (so, revenue, po, spend) in sorted(months.items())]

    def outstanding_payments(self):
        bands = defaultdict(lambda: [0, Decimal(0), None])
        labels = ["not yet due", "1-30 days overdue", "31-60 days overdue",
                  "61-90 days overdue", "over 90 days overdue"]
        as_of = max(row["last_updated_date"] for row in self.rows["fact_payment"]
                    if not row["is_deleted"])
        for row in self.current("fact_payment"):
            if row["paid"]:
                continue
            late = (as_of - row["payment_date"]).days
            band = 0 if late <= 0 else 1 if late <= 30 else 2 if late <= 60 else (
                3 if late <= 90 else 4)
            group = bands[(band, row["code"])]
            group[0] += 1
            group[1] += row["payment_amount"]
            group[2] = min(filter(None, [group[2], row["payment_date"]]))
        return [(labels[band], code, *values) for (band, code), values in sorted(bands.items())]

    def days_to_payment(self):
        kept = {row["payment_id"]: row for row in self.current("fact_payment")}
        paid_on = {}
        for row in self.rows["fact_payment"]:
            if row["paid"] and row["payment_id"] in kept:
                paid_on[row["payment_id"]] = min(
                    filter(None, [paid_on.get(row["payment_id"]), row["last_updated_date"]]))
        types = self.rows.dimension("dim_payment_type")
        groups = defaultdict(list)
        for payment_id, paid in paid_on.items():
            row = kept[payment_id]
            days = ((paid - row["created_date"]).days, (paid - row["payment_date"]).days)
            groups[types[row["payment_type_id"]]["payment_type_name"]].append(days)
        groups_all = [days for name in sorted(groups) for days in groups[name]]

        def line(name, days):
            return (name, len(days), one_decimal(Decimal(sum(d[0] for d in days)) / len(days)),
                    one_decimal(Decimal(sum(d[1] for d in days)) / len(days)))
        return ([line(name, groups[name]) for name in sorted(groups)]
                + [line("all payment types", groups_all)])

    def order_amendments(self):
        lines = []
        for kind, fact in (("sales order", "fact_sales_order"),
                           ("purchase order", "fact_purchase_orders")):
            business_id = queries_business_id(fact)
            kept = {row[business_id] for row in self.current(fact)}
            versions = defaultdict(int)
            for row in self.rows[fact]:
                if row[business_id] in kept:
                    versions[row[business_id]] += 1
            amended = sum(1 for count in versions.values() if count > 1)
            lines.append((kind, len(versions), amended,
                          two_decimals(Decimal(100 * amended) / len(versions)),
                          sum(count - 1 for count in versions.values()), max(versions.values())))
        return lines

    def headline(self):
        codes = defaultdict(lambda: [0, Decimal(0), 0, Decimal(0)])
        for row in self.sales():
            codes[row["code"]][0] += 1
            codes[row["code"]][1] += row["value"]
        for row in self.current("fact_payment"):
            if not row["paid"]:
                codes[row["code"]][2] += 1
                codes[row["code"]][3] += row["payment_amount"]
        return [(code, *values) for code, values in sorted(codes.items())]


def queries_business_id(fact):
    return {"fact_sales_order": "sales_order_id",
            "fact_purchase_orders": "purchase_order_id"}[fact]


def answer(connection, name, values):
    result = queries.run_query(connection, QUERIES[name], values)
    assert result.ok, result.error
    return [tuple(row) for row in result.frame.astype(object).itertuples(index=False)]


FILTERED = [query.name for query in QUERIES.values()
            if set(queries.FILTER_PARAMETERS) <= query.parameters]


@pytest.mark.parametrize("choose", FILTERS.values(), ids=FILTERS.keys())
@pytest.mark.parametrize("name", FILTERED)
def test_query_matches_an_independent_calculation(warehouse, name, choose):
    connection, rows = warehouse
    filters = choose(rows)
    expected = getattr(Expect(rows, filters), name)()
    assert expected, "the known warehouse must give every question something to answer"
    assert answer(connection, name, filters.values()) == expected


def psql_text(value) -> str:
    """A value as ``psql --csv`` prints it (NULL empty, booleans t/f)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


@pytest.mark.parametrize("choose", FILTERS.values(), ids=FILTERS.keys())
@pytest.mark.parametrize("name", FILTERED)
def test_each_file_runs_in_psql_as_documented_with_the_runners_answer(postgres, known, name,
                                                                      choose):
    """``psql -X -v start_date="'2024-01-01'" -v end_date=NULL ... -f <file>``, as documented."""
    connection, rows = known
    values = choose(rows).values()
    variables = [argument for key, value in values.items() for argument in
                 ("-v", f"{key}=" + ("NULL" if value is None else f"'{value}'"))]
    ran = subprocess.run(
        [*stack.psql_argv(postgres, "queries_known"), "-X", "--csv", "-v", "ON_ERROR_STOP=1",
         *variables, "-f", str(FILES[name])],
        capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0 and not ran.stderr, ran.stderr
    header, *printed = csv.reader(ran.stdout.splitlines())
    result = queries.run_query(connection, QUERIES[name], values)
    assert header == list(result.frame.columns)
    assert printed == [[psql_text(value) for value in row]
                       for row in answer(connection, name, values)]
    assert printed, "the known warehouse answers every question"


def test_every_question_but_the_single_order_history_takes_the_page_filters():
    assert set(FILTERED) == {query.name for query in QUERIES.values()} - {
        "order_history", "freshness", "filter_options"}


def test_money_columns_come_back_as_exact_numerics_not_floats(warehouse):
    connection, _ = warehouse
    result = queries.run_query(connection, QUERIES["revenue_by_month"], {})
    assert result.numeric_columns == ("revenue",)
    assert all(isinstance(value, Decimal) for value in result.frame["revenue"])


def test_order_history_lists_every_version_and_what_changed(warehouse):
    connection, rows = warehouse
    counts = defaultdict(list)
    for row in rows["fact_sales_order"]:  # in record id order: the order they were captured
        counts[row["sales_order_id"]].append(row)
    order_id, versions = max(counts.items(), key=lambda item: (len(item[1]), -item[0]))
    result = queries.run_query(connection, QUERIES["order_history"], {"order_id": order_id})
    frame = result.frame
    assert list(frame["version"]) == list(range(1, len(versions) + 1)) and len(versions) > 1
    assert list(frame["units_sold"]) == [row["units_sold"] for row in versions]
    assert list(frame["order_value"]) == [row["units_sold"] * row["unit_price"]
                                          for row in versions]
    assert list(frame["changed"]) == expected_changes(versions)


def expected_changes(versions):
    labels = {"units_sold": "units sold", "unit_price": "unit price", "currency_id": "currency",
              "design_id": "design", "agreed_delivery_location_id": "delivery location",
              "agreed_delivery_date": "delivery date", "agreed_payment_date": "payment date",
              "counterparty_id": "counterparty", "sales_staff_id": "staff"}
    return ["placed"] + ["deleted" if new["is_deleted"] else
                         ", ".join(label for column, label in labels.items()
                                   if new[column] != old[column])
                         for old, new in zip(versions, versions[1:])]


def test_the_known_warehouse_deletes_some_of_every_fact(known):
    _, rows = known
    for fact in ("fact_sales_order", "fact_purchase_orders", "fact_payment"):
        deleted = {row[TABLES[fact].unique_key[0]] for row in rows[fact] if row["is_deleted"]}
        assert 0 < len(deleted) < len(rows.current(fact)), fact


def test_the_history_of_a_deleted_order_ends_with_its_deletion(known):
    connection, rows = known
    deleted = [row for row in rows["fact_sales_order"] if row["is_deleted"]]
    assert deleted, "the known warehouse deletes some sales orders"
    order_id = deleted[0]["sales_order_id"]
    versions = [row for row in rows["fact_sales_order"] if row["sales_order_id"] == order_id]
    result = queries.run_query(connection, QUERIES["order_history"], {"order_id": order_id})
    assert list(result.frame["changed"]) == expected_changes(versions)
    assert list(result.frame["changed"])[-1] == "deleted"


def test_an_unknown_order_has_an_empty_history(warehouse):
    connection, _ = warehouse
    result = queries.run_query(connection, QUERIES["order_history"], {"order_id": 10 ** 6})
    assert result.ok and result.frame.empty and "changed" in result.frame.columns


def test_freshness_reports_the_last_load_and_the_data_it_carries(known):
    connection, rows = known
    assert answer(connection, "freshness", {}) == [
        (LOADED_AT, INGEST_STARTED_AT, 1, sum(len(table) for table in rows.tables.values()))]


def test_filter_options_list_currencies_and_the_span_of_dates(warehouse):
    connection, rows = warehouse
    days = [row["created_date"] for fact in ("fact_sales_order", "fact_purchase_orders",
                                             "fact_payment") for row in rows[fact]]
    versions = defaultdict(int)
    for row in rows["fact_sales_order"]:
        versions[row["sales_order_id"]] += 1
    newest_amended = max(order for order, count in versions.items() if count > 1)
    codes = sorted(row["currency_code"] for row in rows["dim_currency"])
    assert answer(connection, "filter_options", {}) == [
        (codes, min(days), max(days), newest_amended)]


def test_filter_values_are_bound_so_quotes_cannot_change_the_query(warehouse):
    connection, _ = warehouse
    hostile = {"currency": "GBP' OR '1'='1", "start_date": None, "end_date": None}
    result = queries.run_query(connection, QUERIES["headline"], hostile)
    assert result.ok and result.frame.empty


def test_a_database_error_becomes_a_result_with_the_server_message(postgres, database):
    connection = postgres.connect(database("queries_empty"))
    try:
        result = queries.run_query(connection, QUERIES["headline"], {})
    finally:
        connection.close()
    assert not result.ok and result.frame is None
    assert result.error_code == "42P01" and "fact_sales_order_current" in result.error


def test_run_queries_answers_each_query_by_name(warehouse):
    connection, _ = warehouse
    results = queries.run_queries(connection, queries.sections(QUERIES), {})
    assert list(results) == [query.name for query in queries.sections(QUERIES)]
    assert all(result.ok for result in results.values())


def test_concurrent_run_gives_the_same_answers_in_the_same_order(postgres, known):
    connection, _ = known
    sections = queries.sections(QUERIES)
    serial = queries.run_queries(connection, sections, {})
    concurrent = queries.run_queries_concurrently(
        lambda: postgres.connect("queries_known"), sections, {}, workers=3)
    assert list(concurrent) == list(serial)
    for name, result in serial.items():
        assert concurrent[name].frame.equals(result.frame), name


def test_every_chart_names_columns_its_query_returns(known):
    connection, _ = known
    for query in QUERIES.values():
        result = queries.run_query(connection, query, {"order_id": 1})
        named = {column for columns in query.chart.channels.values() for column in columns}
        assert named <= set(result.frame.columns), query.name


def test_an_order_and_a_payment_deleted_at_the_source_leave_the_headline_numbers(postgres):
    """Deleted through the load's own path; the headline loses exactly them, nothing else."""
    name = "queries_deleted"
    postgres.recreate_database(name)
    rows = build_warehouse(postgres, name)
    connection = postgres.connect(name)
    try:
        before = {line[0]: line for line in answer(connection, "headline", {})}
        order = rows.current("fact_sales_order")[0]
        unpaid = next(row for row in rows.current("fact_payment") if not row["paid"])
        detected = datetime.combine(TODAY, time(12, 0, 0, 1000))
        with warehouse_writes.transaction(connection):
            for fact, business_id in (("fact_sales_order", order["sales_order_id"]),
                                      ("fact_payment", unpaid["payment_id"])):
                record = {DELETIONS[fact].column_names[0]: business_id,
                          "last_updated_date": detected.date(),
                          "last_updated_time": detected.time()}
                batches = pa.Table.from_pylist(
                    [record], schema=arrow_schema(DELETIONS[fact])).to_batches()
                added = warehouse_writes.load_deletions(connection, TABLES[fact], batches)
                assert added.rows == 1
        after = {line[0]: line for line in answer(connection, "headline", {})}
    finally:
        connection.close()
    codes = {key: row["currency_code"] for key, row in rows.dimension("dim_currency").items()}
    expected = {code: list(line) for code, line in before.items()}
    sold = expected[codes[order["currency_id"]]]
    sold[1] -= 1
    sold[2] -= order["units_sold"] * order["unit_price"]
    owed = expected[codes[unpaid["currency_id"]]]
    owed[3] -= 1
    owed[4] -= unpaid["payment_amount"]
    assert {code: list(line) for code, line in after.items()} == expected


def test_a_deletion_detected_long_after_the_history_leaves_payment_ages_alone(postgres):
    """The demo's deletions are stamped when detected, years after its history ends."""
    name = "queries_late_deletion"
    postgres.recreate_database(name)
    rows = build_warehouse(postgres, name)
    connection = postgres.connect(name)
    try:
        before = answer(connection, "outstanding_payments", {})
        paid = next(row for row in rows.current("fact_payment") if row["paid"])
        detected = datetime.combine(TODAY + timedelta(days=400), time(12, 0))
        record = {DELETIONS["fact_payment"].column_names[0]: paid["payment_id"],
                  "last_updated_date": detected.date(), "last_updated_time": detected.time()}
        batches = pa.Table.from_pylist(
            [record], schema=arrow_schema(DELETIONS["fact_payment"])).to_batches()
        with warehouse_writes.transaction(connection):
            assert warehouse_writes.load_deletions(connection, TABLES["fact_payment"],
                                                   batches).rows == 1
        after = answer(connection, "outstanding_payments", {})
    finally:
        connection.close()
    assert len({line[0] for line in before}) > 1
    assert after == before
