"""The rules every query file follows: a readable header, known parameters, drawable charts."""
import pytest

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
