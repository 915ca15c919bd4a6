"""The dashboard page, rendered headless with Streamlit's AppTest against real warehouses."""
import runpy
import subprocess
import sys
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pandas as pd
import pytest
import streamlit as st
from dashboard_warehouse import build_warehouse, create_schema
from streamlit.testing.v1 import AppTest

from totes_local import cli, queries, stack
from totes_local.dashboard import launch, present, source


def dsn_for(postgres, dbname: str) -> str:
    return f"postgresql://{postgres.user}@/{dbname}?host={postgres.socket_dir}&port={postgres.port}"


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test sees its own warehouse, not results cached by an earlier one."""
    st.cache_data.clear()
    yield
    st.cache_data.clear()


@pytest.fixture(scope="module")
def known(postgres):
    """A warehouse of known content: its URL and its rows."""
    name = "dashboard_known"
    postgres.recreate_database(name)
    return dsn_for(postgres, name), build_warehouse(postgres, name)


def render(monkeypatch, dsn: str) -> AppTest:
    monkeypatch.setenv(source.DSN_VARIABLE, dsn)
    app = AppTest.from_file(str(launch.APP), default_timeout=60)
    return app.run()


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def test_page_renders_every_question_without_exceptions(monkeypatch, known):
    app = render(monkeypatch, known[0])
    assert not app.exception and not app.error
    titles = texts(app.subheader)
    assert "Revenue and units by month" in titles and "The history of one sales order" in titles
    assert len(titles) == 11


def test_headline_numbers_match_the_rows_in_the_warehouse(monkeypatch, known):
    dsn, rows = known
    revenue, unpaid = defaultdict(Decimal), defaultdict(Decimal)
    codes = {key: row["currency_code"] for key, row in rows.dimension("dim_currency").items()}
    orders = rows.current("fact_sales_order")
    for row in orders:
        revenue[codes[row["currency_id"]]] += row["units_sold"] * row["unit_price"]
    for row in rows.current("fact_payment"):
        if not row["paid"]:
            unpaid[codes[row["currency_id"]]] += row["payment_amount"]
    app = render(monkeypatch, dsn)
    shown = {metric.label: metric.value for metric in app.metric}
    assert shown["Sales orders"] == f"{len(orders):,}"
    for code in codes.values():
        assert shown[f"Revenue {code}"] == f"{revenue[code]:,.2f}"
        assert shown[f"Unpaid {code}"] == f"{unpaid[code]:,.2f}"


def test_currency_filter_narrows_the_headline_to_that_currency(monkeypatch, known):
    app = render(monkeypatch, known[0])
    app.sidebar.selectbox[0].select("EUR").run()
    labels = [metric.label for metric in app.metric]
    assert "Revenue EUR" in labels and "Revenue GBP" not in labels and not app.exception


def test_data_freshness_says_when_the_warehouse_last_loaded(monkeypatch, known):
    app = render(monkeypatch, known[0])
    notes = texts(app.caption) + texts(app.warning)
    assert any("Last load 2024-11-15 14:20:15 UTC" in note for note in notes)


def test_order_history_follows_the_chosen_order_id(monkeypatch, known):
    app = render(monkeypatch, known[0])
    app.number_input[0].set_value(1).run()
    assert not app.exception and not app.error
    assert app.dataframe[-1].value["changed"].iloc[0] == "placed"


def test_empty_warehouse_says_so_instead_of_failing(monkeypatch, postgres, database):
    app = render(monkeypatch, dsn_for(postgres, database("dash_empty")))
    assert not app.exception and not app.error
    assert "The warehouse is empty" in app.info[0].value


def test_schema_without_any_load_counts_as_empty(monkeypatch, postgres, database):
    name = database("dash_schema")
    connection = postgres.connect(name)
    try:
        create_schema(connection)
    finally:
        connection.close()
    app = render(monkeypatch, dsn_for(postgres, name))
    assert "The warehouse is empty" in app.info[0].value and not app.exception


def test_a_failing_query_is_a_message_in_its_section_and_the_rest_still_renders(
        monkeypatch, postgres, database):
    name = database("dash_broken")
    build_warehouse(postgres, name)
    connection = postgres.connect(name)
    try:
        connection.run("DROP TABLE dim_payment_type CASCADE")
    finally:
        connection.close()
    app = render(monkeypatch, dsn_for(postgres, name))
    assert not app.exception
    errors = texts(app.error)
    assert len(errors) == 1 and "could not be answered" in errors[0]
    assert "dim_payment_type" in errors[0]
    assert app.metric, "the headline does not need the broken table and still shows"


def test_unreachable_warehouse_is_one_clear_message(monkeypatch, tmp_path):
    app = render(monkeypatch, f"postgresql://nobody:hunter2@/warehouse?host={tmp_path}")
    assert not app.exception
    assert "Cannot reach the warehouse" in app.error[0].value
    assert "hunter2" not in app.error[0].value


def test_missing_demo_warehouse_tells_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.delenv(source.DSN_VARIABLE, raising=False)
    monkeypatch.delenv(source.SECRET_VARIABLE, raising=False)
    monkeypatch.setenv(source.DEMO_DIR_VARIABLE, str(tmp_path / "pg"))
    app = AppTest.from_file(str(launch.APP), default_timeout=60).run()
    assert "make demo" in app.error[0].value and not app.exception


def test_revenue_and_units_by_month_draws_both_each_on_its_own_scale():
    query = queries.load_queries()["revenue_by_month"]
    frame = pd.DataFrame({"month": [date(2024, 1, 1), date(2024, 2, 1)],
                          "currency_code": ["GBP", "GBP"], "orders": [3, 4],
                          "units": [1000, 2000], "revenue": [Decimal("2500.00"),
                                                             Decimal("5000.00")]})
    result = queries.Result(query.name, frame, numeric_columns=("revenue",))
    drawn = present.chart(result, query.chart).to_dict()
    assert drawn["facet"]["row"]["field"] == present.MEASURE
    assert drawn["spec"]["transform"][0]["fold"] == ["revenue", "units"]
    assert drawn["resolve"]["scale"]["y"] == "independent"


def test_money_is_shown_exactly_with_two_decimals():
    assert present.money(Decimal("1234567.5")) == "1,234,567.50"
    assert present.money(Decimal("98765432109876543.21")) == "98,765,432,109,876,543.21"


@pytest.mark.parametrize("entry", ["totes", "python -m"])
def test_launcher_passes_the_dsn_in_the_environment_never_on_the_command_line(
        monkeypatch, entry):
    seen = {}

    def run(argv, env, check):
        seen.update(argv=argv, env=env)
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(launch.subprocess, "run", run)
    url = "postgresql://analyst:hunter2@db.example/warehouse"
    monkeypatch.setenv(source.DSN_VARIABLE, url)
    options = ["--port", "8600"]
    status = cli.main(["dashboard", *options]) if entry == "totes" else launch.main(options)
    assert status == 0
    assert "hunter2" not in " ".join(seen["argv"])
    assert seen["env"][source.DSN_VARIABLE] == url
    assert seen["argv"][seen["argv"].index("--server.port") + 1] == "8600"
    assert seen["argv"][seen["argv"].index("--server.address") + 1] == "127.0.0.1"
    # Without a password, --dsn still names the warehouse (a Unix socket's URL, say).
    socket_url = "postgresql://analyst@%2Ftmp%2Fpg/warehouse"
    assert launch.main(["--dsn", socket_url]) == 0
    assert seen["env"][source.DSN_VARIABLE] == socket_url


@pytest.mark.parametrize("entry", ["totes", "python -m"])
@pytest.mark.parametrize("url", ["postgresql://analyst:hunter2@db.example/warehouse",
                                 "postgresql://analyst:hun#ter2@db.example/warehouse",
                                 "postgresql://analyst@db.example/warehouse?password=hunter2"])
def test_a_password_on_the_launcher_command_line_is_refused_without_echoing_it(
        monkeypatch, capsys, entry, url):
    monkeypatch.setattr(launch.subprocess, "run", lambda *_, **__: pytest.fail("started"))
    options = ["--dsn", url]
    status = cli.main(["dashboard", *options]) if entry == "totes" else launch.main(options)
    err = capsys.readouterr().err
    assert status == 2 and source.DSN_VARIABLE in err and "hunter2" not in err
    assert "ter2" not in err


@pytest.mark.parametrize("url", ["postgresql://u:se#cret9@db.example/warehouse",
                                 "postgresql://u@db.example/warehouse?password=se/cret9"])
def test_the_page_names_its_warehouse_without_any_part_of_the_password(url):
    shown = source.WarehouseSource("dsn", url).describe()
    assert "cret9" not in shown and "db.example/warehouse" in shown


@pytest.mark.parametrize("entry", ["totes", "python -m"])
@pytest.mark.parametrize("url, reason", [
    ("localhost:5432/warehouse", "must look like postgresql://"),
    ("postgresql://analyst:hunter2@db.example:54x2/warehouse", "not a valid PostgreSQL URL"),
    ("postgresql://analyst:hunter2@db.example/warehouse?sslmod=require", "unsupported DSN"),
])
def test_a_malformed_warehouse_url_is_refused_in_one_line_without_its_password(
        monkeypatch, capsys, entry, url, reason):
    monkeypatch.setattr(launch.subprocess, "run", lambda *args, **kwargs: pytest.fail("started"))
    monkeypatch.setenv(source.DSN_VARIABLE, url)
    status = cli.main(["dashboard"]) if entry == "totes" else launch.main([])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert "WAREHOUSE_DSN (or --dsn) is not a usable warehouse URL" in err and reason in err
    assert "hunter2" not in err


def test_the_page_refuses_a_malformed_warehouse_url_too(monkeypatch):
    app = render(monkeypatch, "postgresql://analyst:hunter2@db.example:54x2/warehouse")
    assert not app.exception and "not a usable warehouse URL" in app.error[0].value
    assert "hunter2" not in app.error[0].value


def test_reads_the_warehouse_named_by_the_pipeline_secret(monkeypatch, aws, postgres, known):
    monkeypatch.delenv(source.DSN_VARIABLE, raising=False)
    stack.provision({aws["WAREHOUSE_SECRET_ID"]: postgres.secret("dashboard_known")}, buckets=())
    app = AppTest.from_file(str(launch.APP), default_timeout=60).run()
    assert not app.exception and not app.error
    assert any(aws["WAREHOUSE_SECRET_ID"] in caption for caption in texts(app.caption))
    assert app.metric


def test_without_any_setting_it_reads_the_demo_warehouse(monkeypatch, postgres):
    postgres.recreate_database(source.DEMO_DATABASE)
    build_warehouse(postgres, source.DEMO_DATABASE)
    monkeypatch.delenv(source.DSN_VARIABLE, raising=False)
    monkeypatch.delenv(source.SECRET_VARIABLE, raising=False)
    monkeypatch.setenv(source.DEMO_DIR_VARIABLE, postgres.socket_dir)
    app = AppTest.from_file(str(launch.APP), default_timeout=60).run()
    assert not app.exception and not app.error
    assert any("demo warehouse" in caption for caption in texts(app.caption)) and app.metric


def test_filters_that_match_nothing_say_so(monkeypatch, known):
    dsn, rows = known
    busy = {row["created_date"] for fact in ("fact_sales_order", "fact_purchase_orders",
                                             "fact_payment") for row in rows[fact]}
    quiet = next(min(busy) + timedelta(days=offset) for offset in range(1, 400)
                 if min(busy) + timedelta(days=offset) not in busy)
    app = render(monkeypatch, dsn)
    app.sidebar.date_input[0].set_value((quiet, quiet)).run()
    assert not app.exception and not app.metric
    notes = texts(app.info)
    assert "No orders or payments match these filters." in notes
    assert notes.count("No rows for these filters.") == 10


def test_a_drifted_schema_shows_each_failure_on_the_page(monkeypatch, postgres, database):
    name = database("dash_drift")
    build_warehouse(postgres, name)
    connection = postgres.connect(name)
    try:
        connection.run("ALTER TABLE dim_currency RENAME COLUMN currency_code TO code")
        connection.run("ALTER TABLE etl.loaded_manifest RENAME COLUMN loaded_at TO loaded")
    finally:
        connection.close()
    app = render(monkeypatch, dsn_for(postgres, name))
    assert not app.exception
    errors = texts(app.error)
    assert any(error.startswith("Cannot tell when the warehouse last loaded") for error in errors)
    assert any(error.startswith("Filter options unavailable") for error in texts(app.sidebar.error))
    assert any(error.startswith("Headline numbers unavailable") for error in errors)
    assert sum("could not be answered" in error for error in errors) == 11


def test_python_dash_m_serves_the_page(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["python -m totes_local.dashboard", "--help"])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_module("totes_local.dashboard", run_name="__main__")
    assert stopped.value.code == 0


def test_freshness_turns_to_a_warning_past_the_30_minute_target():
    now = datetime(2024, 11, 15, 15, 0, tzinfo=timezone.utc)
    row = {"last_loaded_at": now - timedelta(minutes=5), "data_as_of": now - timedelta(minutes=31),
           "loads": 3, "rows_loaded": 12345}
    stale = present.freshness(row, now)
    assert stale.stale and "(5 min ago)" in stale.text and "(31 min ago)" in stale.text
    assert "3 loads, 12,345 rows" in stale.text
    assert not present.freshness({**row, "data_as_of": now - timedelta(minutes=29)}, now).stale


@pytest.mark.parametrize("age, said", [(timedelta(seconds=20), "just now"),
                                       (timedelta(hours=3), "3 h ago"),
                                       (timedelta(days=3), "3 days ago")])
def test_ages_read_naturally(age, said):
    now = datetime(2024, 11, 15, 15, 0, tzinfo=timezone.utc)
    row = {"last_loaded_at": now - age, "data_as_of": now - age, "loads": 1, "rows_loaded": 1}
    assert f"({said})" in present.freshness(row, now).text
