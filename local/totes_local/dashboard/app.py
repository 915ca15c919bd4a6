"""The Streamlit page: the business questions of ``sql/queries``, answered from the live warehouse.

Streamlit runs this file top to bottom on every interaction. Query results are
cached for :data:`CACHE_SECONDS` per warehouse and filter choice, so the page is
live (a new load shows within a minute) but a busy page costs the warehouse one
round of queries a minute, not one per click. Every failure a person can meet
(no warehouse, unreachable server, nothing loaded yet, one query failing) is a
message on the page, never a traceback.
"""
from datetime import datetime, timezone
from typing import Any

import botocore.exceptions
import pg8000.native
import streamlit as st

from totes import config, db
from totes_local import dsn, queries
from totes_local.dashboard import present, source

CACHE_SECONDS = 60
TITLE = "Terrific Totes: sales, purchases and payments"
ALL_CURRENCIES = "All currencies"
#: rows a section's table shows before it scrolls.
TABLE_ROWS = 10
#: what can go wrong before any query runs, each shown as one line on the page.
CONNECTION_ERRORS = (source.WarehouseNotFoundError, db.DatabaseUnavailableError,
                     db.SecretFormatError, dsn.DsnError, config.ConfigurationError,
                     pg8000.native.InterfaceError, pg8000.native.DatabaseError,
                     botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
UNDEFINED_TABLE = "42P01"


@st.cache_resource
def questions() -> dict[str, queries.Query]:
    """The query files, read once per server process."""
    return queries.load_queries()


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Asking the warehouse…")
def fetch(kind: str, target: str, names: tuple[str, ...],
          values: tuple[tuple[str, Any], ...]) -> dict[str, queries.Result]:
    """Run the named queries over a few read-only connections; cached briefly per source/values."""
    where = source.WarehouseSource(kind, target)
    return queries.run_queries_concurrently(lambda: source.connect(where),
                                            [questions()[name] for name in names], dict(values))


def _ask(where: source.WarehouseSource, names: tuple[str, ...],
         values: dict[str, Any]) -> dict[str, queries.Result]:
    return fetch(where.kind, where.target, names, tuple(sorted(values.items())))


def _is_empty(results: dict[str, queries.Result]) -> bool:
    """Nothing loaded yet: no bookkeeping or star tables, or no load recorded."""
    freshness, options = results["freshness"], results["filter_options"]
    if UNDEFINED_TABLE in (freshness.error_code, options.error_code):
        return True
    return freshness.ok and int(freshness.frame["loads"].iloc[0]) == 0


def show_freshness(result: queries.Result) -> None:
    """When the warehouse last loaded, as a warning if it is older than the target."""
    if not result.ok:
        st.error(f"Cannot tell when the warehouse last loaded: {result.error}")
        return
    status = present.freshness(result.frame.iloc[0], datetime.now(timezone.utc))
    (st.warning if status.stale else st.caption)(status.text)


def choose_filters(options: queries.Result) -> queries.Filters:
    """The sidebar: a date range within the data's span and a currency."""
    st.sidebar.header("Filters")
    if not options.ok:
        st.sidebar.error(f"Filter options unavailable: {options.error}")
        return queries.Filters()
    row = options.frame.iloc[0]
    first, last = row["first_date"], row["last_date"]
    chosen = st.sidebar.date_input("Orders and payments created", value=(first, last),
                                   min_value=first, max_value=last)
    start, end = (tuple(chosen) + (None, None))[:2]
    currency = st.sidebar.selectbox("Currency", [ALL_CURRENCIES, *row["currencies"]])
    st.sidebar.caption("Amounts in different currencies are never added together.")
    return queries.Filters(start_date=start, end_date=end,
                           currency=None if currency == ALL_CURRENCIES else currency)


def show_headline(result: queries.Result) -> None:
    """Orders, revenue and unpaid amounts as big numbers."""
    if not result.ok:
        st.error(f"Headline numbers unavailable: {result.error}")
        return
    if result.frame.empty:
        st.info("No orders or payments match these filters.")
        return
    for row in present.headline_rows(result.frame):
        for column, figure in zip(st.columns(max(len(row), 3)), row):
            column.metric(figure.label, figure.value)


def show_section(query: queries.Query, result: queries.Result) -> None:
    """One question: its title, chart, table and how to read it."""
    st.subheader(query.title)
    st.markdown(f"*{query.question}*")
    if not result.ok:
        st.error(f"This question could not be answered: {result.error}")
        return
    if result.frame.empty:
        st.info("No rows for these filters.")
        return
    chart = present.chart(result, query.chart)
    if chart is not None:
        st.altair_chart(chart, width="stretch")
    visible_rows = min(len(result.frame), TABLE_ROWS)
    st.dataframe(present.table(result), hide_index=True, height=36 + 35 * visible_rows)
    st.caption(query.reading)


def show_order_history(where: source.WarehouseSource, query: queries.Query,
                       options: queries.Result) -> None:
    """The versions of one sales order, chosen by id (bound, never formatted into SQL)."""
    newest = int(options.frame["example_sales_order_id"].iloc[0] or 1) if options.ok else 1
    order_id = st.number_input("Sales order id", min_value=1, value=newest, step=1)
    show_section(query, _ask(where, (query.name,), {"order_id": int(order_id)})[query.name])


def main() -> None:
    """Lay out the page: freshness, filters, headline numbers, then one section per question."""
    st.set_page_config(page_title="Terrific Totes dashboard", layout="wide")
    st.title(TITLE)
    where = source.resolve()
    try:
        source.check(where)
    except dsn.DsnError as error:
        st.error(str(error))
        return
    st.caption(f"Warehouse: {where.describe()}. Results are at most {CACHE_SECONDS} s old.")
    try:
        source.prepare(where)
        status = _ask(where, ("freshness", "filter_options"), {})
        if _is_empty(status):
            st.info("The warehouse is empty: nothing has been loaded yet. Run `make demo`, "
                    "or wait for the load function's next scheduled run.")
            return
        show_freshness(status["freshness"])
        filters = choose_filters(status["filter_options"])
        sections = [query for query in queries.sections(questions()) if "order_id"
                    not in query.parameters]
        answers = _ask(where, ("headline", *(query.name for query in sections)), filters.values())
        show_headline(answers["headline"])
        left, right = st.columns(2, gap="large")
        for index, query in enumerate(sections):
            with left if index % 2 == 0 else right:
                show_section(query, answers[query.name])
        show_order_history(where, questions()["order_history"], status["filter_options"])
    except CONNECTION_ERRORS as error:
        st.error(f"Cannot reach the warehouse ({where.describe()}): {_reason(error)}")


def _reason(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


main()
