r"""The analysts' business questions: SQL files in ``sql/queries`` and how to run them safely.

Each file answers one question and starts with a comment header the dashboard
(and a person reading the file) relies on::

    -- Title: Revenue and units by month
    -- Question: How much do we sell each month?
    -- Reading: One row per month and currency ...
    --   (an indented comment line continues the field above)
    -- Chart: line x=month y=revenue color=currency_code

Values reach the SQL only as bound parameters (``:start_date``, ``:end_date``,
``:currency``, ``:order_id``); NULL means "no filter", so the same file serves the
whole warehouse and any filtered view. Numbered files (``01_...``) are the page's
sections in order; unnumbered ones (headline, freshness, filter options) support it.

The page's date and currency filter is written once, in ``filter.psql`` beside the
files: psql variables (``\set name 'SQL'``) naming the filtered orders and payments.
A file that filters includes it after its header (``\ir filter.psql``, which psql
runs itself) and reads ``WITH sales AS (:filtered_sales)``. The runner reads the
same file and substitutes those names as psql does, recursively; only the names
the prelude sets are substituted, only the parameters above are left, and they
are bound, never formatted into SQL.
"""
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import pg8000.native

from totes.db import server_fields

QUERY_DIR = Path(__file__).resolve().parents[2] / "sql" / "queries"
#: the file in QUERY_DIR that writes the page's filter once, and the line that includes it.
FILTER_PRELUDE = "filter.psql"
INCLUDE_PRELUDE = f"\\ir {FILTER_PRELUDE}"

#: the bound parameters a query may use; anything else in a file is an error.
FILTER_PARAMETERS = ("start_date", "end_date", "currency")
PARAMETERS = (*FILTER_PARAMETERS, "order_id")

#: PostgreSQL type oids that arrive as ``Decimal``: shown with two decimals, never as floats.
NUMERIC_TYPE_OIDS = frozenset({1700})

#: connections a page load uses at once (PostgreSQL runs each statement on one core).
DEFAULT_WORKERS = 4

HEADER_FIELDS = ("title", "question", "reading", "chart")
CHART_KINDS = ("line", "bar", "arc", "table", "none")

#: a quoted string (skipped, as psql skips it) or a ``:name`` outside one (not a ``::`` cast).
_PARAMETER = re.compile(r"'(?:[^']|'')*'|(?<![:\w]):([A-Za-z_]\w*)")
#: the one psql command the prelude may hold: a name set to SQL without quotes or backslashes.
_SET = re.compile(r"\\set\s+([A-Za-z_]\w*)\s+'([^'\\]*)'")
_FIELD = re.compile(r"--\s(\w[\w ]*?):\s*(.*)")
_CONTINUATION = re.compile(r"--\s{2,}(\S.*)")
_ORDER = re.compile(r"(\d+)_(.+)")


class QueryFileError(ValueError):
    """A query file does not follow the header or parameter rules; the message names it."""


@dataclass(frozen=True)
class Chart:
    """How a question is best drawn: a mark and the result columns on each channel."""

    kind: str
    channels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def column(self, channel: str) -> str | None:
        """The (first) column on ``channel``, or None when the chart does not use it."""
        columns = self.channels.get(channel, ())
        return columns[0] if columns else None


@dataclass(frozen=True)
class Query:
    """One business question: what it asks, how to read it, and its SQL."""

    name: str
    title: str
    question: str
    reading: str
    sql: str
    parameters: frozenset[str]
    chart: Chart
    position: int | None = None


@dataclass(frozen=True)
class Filters:
    """The page's filters; ``None`` means "all" (the SQL treats a NULL bound value so)."""

    start_date: date | None = None
    end_date: date | None = None
    currency: str | None = None

    def values(self) -> dict[str, Any]:
        """The filters as bound-parameter values by name."""
        return {"start_date": self.start_date, "end_date": self.end_date,
                "currency": self.currency}


@dataclass(frozen=True)
class Result:
    """The rows one query returned, or the database's error message instead."""

    name: str
    frame: pd.DataFrame | None = None
    numeric_columns: tuple[str, ...] = ()
    error: str | None = None
    error_code: str | None = None

    @property
    def ok(self) -> bool:
        """True when the query ran."""
        return self.error is None


def parse_chart(text: str) -> Chart:
    """Parse ``line x=month y=a,b color=currency_code`` into a :class:`Chart`."""
    kind, *pairs = text.split() or ["none"]
    if kind not in CHART_KINDS:
        raise QueryFileError(f"unknown chart kind {kind!r} (one of {', '.join(CHART_KINDS)})")
    channels = {}
    for pair in pairs:
        channel, _, columns = pair.partition("=")
        if not columns:
            raise QueryFileError(f"chart channel {pair!r} must look like channel=column")
        channels[channel] = tuple(columns.split(","))
    return Chart(kind, channels)


def parse_header(text: str) -> dict[str, str]:
    """Read the leading ``-- Field: value`` comment block into a dict keyed by lower-case field."""
    fields: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        line = line.rstrip()
        if not line.startswith("--"):
            break
        continued = _CONTINUATION.fullmatch(line)
        named = _FIELD.fullmatch(line)
        if continued and current:
            fields[current] += " " + continued.group(1)
        elif named:
            current = named.group(1).lower()
            fields[current] = named.group(2)
    return fields


def parse_prelude(text: str) -> dict[str, str]:
    r"""Read the filter prelude: its ``\set name 'SQL'`` lines as SQL fragments by name.

    That is all of psql the runner understands, so anything else but comments is
    refused, naming the line; a name is set once and is never a parameter's.
    """
    fragments: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("--"):
            continue
        found = _SET.fullmatch(line)
        if not found:
            raise QueryFileError(f"{FILTER_PRELUDE} line {number}: only comments and "
                                 "\\set name 'SQL' lines (no quotes in the SQL) are understood")
        fragment, sql = found.groups()
        if fragment in PARAMETERS or fragment in fragments:
            raise QueryFileError(f"{FILTER_PRELUDE} line {number}: {fragment} is a parameter "
                                 "or already set")
        fragments[fragment] = sql
    return fragments


def read_prelude(directory: Path = QUERY_DIR) -> dict[str, str]:
    """The fragments of ``directory``'s filter prelude (none when it has no prelude)."""
    path = directory / FILTER_PRELUDE
    return parse_prelude(path.read_text(encoding="utf-8")) if path.exists() else {}


def expand(sql: str, fragments: Mapping[str, str], within: tuple[str, ...] = ()) -> str:
    """Substitute each ``:name`` the prelude sets with its SQL, recursively, as psql does.

    Other names (the parameters) and anything in quotes are left as they are.
    """
    def substitute(match: re.Match[str]) -> str:
        fragment = match.group(1)
        if fragment not in fragments:
            return match.group(0)
        if fragment in within:
            raise QueryFileError(f"{FILTER_PRELUDE}: {fragment} refers to itself")
        return expand(fragments[fragment], fragments, (*within, fragment))
    return _PARAMETER.sub(substitute, sql)


def _body(name: str, text: str, prelude: Mapping[str, str]) -> str:
    """The SQL of a query file: comments dropped, the prelude's fragments substituted if included.

    The include is the only psql command a file may hold, and it comes before the
    SQL, since psql substitutes a line's variables as it reads it.
    """
    lines: list[str] = []
    included = False
    for line in text.splitlines():
        command = line.strip()
        if command.startswith("--"):
            continue
        if command.startswith("\\"):
            if command != INCLUDE_PRELUDE or included or any(sql.strip() for sql in lines):
                raise QueryFileError(f"query {name}: the only psql command a file may hold is "
                                     f"one {INCLUDE_PRELUDE!r} before its SQL, not {command!r}")
            included = True
            continue
        lines.append(line)
    body = "\n".join(lines)
    if not included:
        borrowed = sorted(set(_names(body)) & set(prelude))
        if borrowed:
            raise QueryFileError(f"query {name} uses {', '.join(borrowed)} from "
                                 f"{FILTER_PRELUDE} without including it ({INCLUDE_PRELUDE})")
        return body
    return expand(body, prelude)


def _names(sql: str) -> list[str]:
    """The ``:name`` references of ``sql`` outside quotes."""
    return [found for found in _PARAMETER.findall(sql) if found]


def parse_query(name: str, text: str, prelude: Mapping[str, str] | None = None) -> Query:
    """Build a :class:`Query` from a file's text, insisting on the header and known parameters.

    ``prelude`` is the filter prelude's fragments (:func:`read_prelude`), by default
    those of :data:`QUERY_DIR`.
    """
    header = parse_header(text)
    missing = [key for key in HEADER_FIELDS if not header.get(key)]
    if missing:
        raise QueryFileError(f"query {name} lacks header field(s): {', '.join(missing)}")
    body = _body(name, text, read_prelude() if prelude is None else prelude)
    parameters = frozenset(_names(body))
    unknown = sorted(parameters - set(PARAMETERS))
    if unknown:
        raise QueryFileError(f"query {name} uses unknown parameter(s): {', '.join(unknown)}")
    try:
        chart = parse_chart(header["chart"])
    except QueryFileError as error:
        raise QueryFileError(f"query {name}: {error}") from None
    numbered = _ORDER.fullmatch(name)
    return Query(
        name=numbered.group(2) if numbered else name,
        title=header["title"], question=header["question"], reading=header["reading"],
        sql=body.strip().rstrip(";"), parameters=parameters,
        chart=chart,
        position=int(numbered.group(1)) if numbered else None,
    )


def load_queries(directory: Path = QUERY_DIR) -> dict[str, Query]:
    """Every query file in ``directory`` by name: the numbered sections first, in order."""
    prelude = read_prelude(directory)
    queries = [parse_query(path.stem, path.read_text(encoding="utf-8"), prelude)
               for path in sorted(directory.glob("*.sql"))]
    queries.sort(key=lambda query: (query.position is None, query.position or 0, query.name))
    return {query.name: query for query in queries}


def sections(queries: Mapping[str, Query]) -> list[Query]:
    """The numbered questions, in page order."""
    return [query for query in queries.values() if query.position is not None]


#: the dashboard's questions as the lake's engines (Athena's Trino, DuckDB) ask them: template.yaml
#: publishes each as an Athena named query. Most run as their files say them, once the page's
#: filter is TRUE; the :data:`LAKE_TRANSLATED` ones use PostgreSQL's own syntax (date
#: subtraction, arrays, ``jsonb``, ``MATERIALIZED``), so their lake SQL is its own file.
LAKE_QUESTIONS = ("revenue_by_month", "top_designs", "sales_by_delivery_location",
                  "revenue_by_staff", "top_counterparties", "currency_mix",
                  "purchases_vs_sales_by_month", "outstanding_payments", "days_to_payment",
                  "order_amendments", "order_history", "headline")

#: the questions whose lake SQL is written in Athena's SQL in :data:`LAKE_QUERY_DIR` (each
#: file says what it changed from the PostgreSQL one, and why).
LAKE_TRANSLATED = ("outstanding_payments", "days_to_payment", "order_history")
LAKE_QUERY_DIR = QUERY_DIR.parent / "lake"

#: a ``?`` outside quotes: the positional parameters (Athena's execution parameters).
_POSITIONAL = re.compile(r"'(?:[^']|'')*'|(\?)")


def lake_parameters(name: str, directory: Path = QUERY_DIR) -> tuple[str, ...]:
    """The values the lake's version of question ``name`` takes, in the order of its ``?``.

    Those of the dashboard's file that are not the page's filter (which the lake's
    versions leave out): ``order_id`` for the order history, none for the rest.
    """
    path = next(directory.glob(f"*{name}.sql"))
    query = parse_query(path.stem, path.read_text(encoding="utf-8"), read_prelude(directory))
    return tuple(sorted(query.parameters - set(FILTER_PARAMETERS)))


def _lake_translation(name: str, directory: Path, lake_directory: Path) -> str:
    """The SQL of a :data:`LAKE_TRANSLATED` file: comments dropped, one ``?`` per parameter."""
    text = (lake_directory / f"{name}.sql").read_text(encoding="utf-8")
    kept = [line for line in text.splitlines() if not line.strip().startswith("--")]
    sql = "\n".join(kept).strip().rstrip(";")
    if _names(sql):
        raise QueryFileError(f"lake query {name}: Athena takes ? parameters, not :names")
    wanted = lake_parameters(name, directory)
    found = [mark for mark in _POSITIONAL.findall(sql) if mark]
    if len(found) != len(wanted):
        raise QueryFileError(f"lake query {name} has {len(found)} ? for {len(wanted)} "
                             f"parameter(s) ({', '.join(wanted) or 'none'})")
    return sql


def lake_queries(directory: Path = QUERY_DIR,
                 lake_directory: Path = LAKE_QUERY_DIR) -> dict[str, str]:
    """The SQL of :data:`LAKE_QUESTIONS` for the lake's engines, unfiltered.

    The prelude's page filter becomes ``TRUE`` (Athena's named queries take no
    dashboard filter), which leaves no parameter and no PostgreSQL-only cast; the
    :data:`LAKE_TRANSLATED` questions are read from ``lake_directory``.
    """
    prelude = {**read_prelude(directory), "page_filter": "TRUE"}
    found = {}
    for name in LAKE_QUESTIONS:
        if name in LAKE_TRANSLATED:
            found[name] = _lake_translation(name, directory, lake_directory)
            continue
        path = next(directory.glob(f"*{name}.sql"))
        query = parse_query(path.stem, path.read_text(encoding="utf-8"), prelude)
        if query.parameters:
            raise QueryFileError(f"query {name} needs a value the lake's version cannot bind")
        found[name] = query.sql
    return found


def run_query(connection: pg8000.native.Connection, query: Query,
              values: Mapping[str, Any]) -> Result:
    """Run ``query`` with the values it declares bound (missing ones NULL).

    A database error becomes a :class:`Result` carrying the server's message, so one
    failing question never takes the rest of the page down with it.
    """
    bound = {name: values.get(name) for name in query.parameters}
    try:
        rows = connection.run(query.sql, **bound)
    except pg8000.native.DatabaseError as error:
        details = server_fields(error)
        return Result(query.name, error=details.get("M", str(error)), error_code=details.get("C"))
    columns = connection.columns or []
    names = [column["name"] for column in columns]
    numeric = tuple(column["name"] for column in columns
                    if column["type_oid"] in NUMERIC_TYPE_OIDS)
    return Result(query.name, pd.DataFrame(rows or [], columns=names), numeric)


def run_queries(connection: pg8000.native.Connection, queries: Iterable[Query],
                values: Mapping[str, Any]) -> dict[str, Result]:
    """Run several queries on one connection, each with the same filter values."""
    return {query.name: run_query(connection, query, values) for query in queries}


def run_queries_concurrently(connect: Callable[[], pg8000.native.Connection],
                             queries: Iterable[Query], values: Mapping[str, Any],
                             workers: int = DEFAULT_WORKERS) -> dict[str, Result]:
    """Run the queries over ``workers`` connections at once, answers in the queries' order.

    Each query of a page scans the facts on its own; PostgreSQL runs one statement
    per connection on one core, so spreading them over a few connections divides a
    cold page load by up to the number of cores the server has.
    """
    queries = list(queries)
    groups = [queries[index::workers] for index in range(min(workers, len(queries)))]

    def run_group(group: list[Query]) -> dict[str, Result]:
        connection = connect()
        try:
            return run_queries(connection, group, values)
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=max(1, len(groups))) as pool:
        answered = {name: result for found in pool.map(run_group, groups)
                    for name, result in found.items()}
    return {query.name: answered[query.name] for query in queries}
