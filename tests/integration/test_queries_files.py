"""The rules every query file follows: a readable header, known parameters, drawable charts.

And the page's filter written once: in ``filter.psql``, which a file includes and
the runner reads as psql would.
"""
import re

import pytest

from totes.warehouse_schema import CURRENT_VIEWS
from totes_local import queries

HEADER = """-- Title: Units
-- Question: How many?
-- Reading: One row,
--   with a continuation.
-- Chart: bar x=units y=name color=currency_code
"""


def test_header_fields_and_continuation_lines_are_read():
    query = queries.parse_query("07_units", HEADER + "SELECT :currency AS currency_code")
    assert (query.name, query.position, query.title) == ("units", 7, "Units")
    assert query.reading == "One row, with a continuation."
    assert query.chart.column("x") == "units" and query.chart.column("facet") is None
    assert query.parameters == {"currency"} and query.sql == "SELECT :currency AS currency_code"


def test_casts_and_colons_in_strings_are_not_parameters():
    sql = "SELECT CAST(:start_date AS date), '1:30'::text"
    query = queries.parse_query("support", HEADER + sql)
    assert query.parameters == {"start_date"} and query.position is None


@pytest.mark.parametrize("text, message", [
    ("-- Title: T\n-- Question: Q\n-- Chart: none\nSELECT 1", "lacks header field"),
    (HEADER + "SELECT :limit", "unknown parameter"),
    (HEADER.replace("Chart: bar", "Chart: pie"), "unknown chart kind"),
    (HEADER.replace("y=name", "y"), "must look like channel=column"),
    (HEADER + "WITH sales AS (:filtered_sales) SELECT 1", "without including it"),
    (HEADER + r"\i ../../secrets.sql" + "\nSELECT 1", "only psql command"),
    (HEADER + "SELECT 1\n" + queries.INCLUDE_PRELUDE, "only psql command"),
    (HEADER + (queries.INCLUDE_PRELUDE + "\n") * 2 + "SELECT 1", "only psql command"),
])
def test_a_file_breaking_the_rules_is_refused_naming_it(text, message):
    with pytest.raises(queries.QueryFileError, match=message) as refused:
        queries.parse_query("broken", text)
    assert "query broken" in str(refused.value)


def test_every_file_in_the_repository_follows_the_rules():
    loaded = queries.load_queries()
    assert [query.position for query in queries.sections(loaded)] == list(range(1, 12))
    assert {"headline", "freshness", "filter_options"} <= set(loaded)
    for query in loaded.values():
        assert query.title and query.question.endswith("?") and query.reading


FILTERED_SETS = {"filtered_sales": "fact_sales_order", "filtered_purchases": "fact_purchase_orders",
                 "filtered_payments": "fact_payment"}


def test_no_query_file_repeats_the_page_filter():
    """The filter's values are named in filter.psql only; every file that filters includes it."""
    including = set()
    for path in sorted(queries.QUERY_DIR.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        named = set(re.findall(r"(?<![:\w]):(\w+)", text))
        assert not named & set(queries.FILTER_PARAMETERS), path.name
        if queries.INCLUDE_PRELUDE in text.splitlines():
            including.add(queries.parse_query(path.stem, text).name)
    loaded = queries.load_queries()
    assert including == {query.name for query in loaded.values()
                         if set(queries.FILTER_PARAMETERS) <= query.parameters}
    assert len(including) == 11


def test_the_filtered_sets_are_the_current_views_filtered_by_creation_date_and_currency():
    prelude = queries.read_prelude()
    for fragment, fact in FILTERED_SETS.items():
        sql = queries.expand(f":{fragment}", prelude)
        assert fact in CURRENT_VIEWS and f" FROM {fact}_current AS f " in sql
        for condition in ("f.created_date >= CAST(:start_date AS date)",
                          "f.created_date <= CAST(:end_date AS date)",
                          "c.currency_code = CAST(:currency AS text)"):
            assert sql.count(condition) == 1, (fragment, condition)


def test_an_included_filter_gives_the_file_its_parameters_to_bind():
    query = queries.parse_query(
        "07_units", HEADER + queries.INCLUDE_PRELUDE + "\nWITH sales AS (:filtered_sales)\n"
        "SELECT COUNT(*) AS units, ':filtered_sales' AS name, currency_code FROM sales "
        "GROUP BY currency_code")
    assert query.parameters == set(queries.FILTER_PARAMETERS)
    assert "FROM fact_sales_order_current AS f" in query.sql
    assert "\\ir" not in query.sql and "':filtered_sales' AS name" in query.sql


@pytest.mark.parametrize("text, message", [
    ("\\set a 'SELECT 1'\n\\if :{?a}\n", "line 2: only comments"),
    ("\\set a 'SELECT ''x'''", "line 1: only comments"),
    ("\\set a 'SELECT 1'\n-- again\n\\set a 'SELECT 2'", "line 3: a is a parameter or already"),
    ("\\set currency 'GBP'", "line 1: currency is a parameter"),
])
def test_a_prelude_beyond_what_the_runner_understands_is_refused(text, message):
    with pytest.raises(queries.QueryFileError, match=message):
        queries.parse_prelude(text)


def test_a_fragment_that_refers_to_itself_is_refused():
    prelude = queries.parse_prelude("\\set a 'SELECT :b'\n\\set b '(:a)'")
    with pytest.raises(queries.QueryFileError, match="a refers to itself"):
        queries.expand("WITH x AS (:a) SELECT 1", prelude)
