"""The analysts' business questions: SQL files in ``sql/queries`` and how to run them safely.

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
"""
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import pg8000.native

QUERY_DIR = Path(__file__).resolve().parents[2] / "sql" / "queries"

#: the bound parameters a query may use; anything else in a file is an error.
FILTER_PARAMETERS = ("start_date", "end_date", "currency")
PARAMETERS = (*FILTER_PARAMETERS, "order_id")

#: PostgreSQL type oids that arrive as ``Decimal``: shown with two decimals, never as floats.
NUMERIC_TYPE_OIDS = frozenset({1700})

#: connections a page load uses at once (PostgreSQL runs each statement on one core).
DEFAULT_WORKERS = 4

HEADER_FIELDS = ("title", "question", "reading", "chart")
CHART_KINDS = ("line", "bar", "arc", "table", "none")

_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
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


def parse_query(name: str, text: str) -> Query:
    """Build a :class:`Query` from a file's text, insisting on the header and known parameters."""
    header = parse_header(text)
    missing = [key for key in HEADER_FIELDS if not header.get(key)]
    if missing:
        raise QueryFileError(f"query {name} lacks header field(s): {', '.join(missing)}")
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    parameters = frozenset(_PARAMETER.findall(body))
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
    queries = [parse_query(path.stem, path.read_text(encoding="utf-8"))
               for path in sorted(directory.glob("*.sql"))]
    queries.sort(key=lambda query: (query.position is None, query.position or 0, query.name))
    return {query.name: query for query in queries}


def sections(queries: Mapping[str, Query]) -> list[Query]:
    """The numbered questions, in page order."""
    return [query for query in queries.values() if query.position is not None]


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
        details = error.args[0] if error.args and isinstance(error.args[0], dict) else {}
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
