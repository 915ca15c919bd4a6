"""The audit's SQL: each warehouse table and its source counterpart as one canonical text per row.

Both databases render every compared row to the same text, hash it and aggregate
the hashes per key range, so the two can be compared without moving rows. The
text is built from the warehouse contract (:data:`warehouse_schema.TABLES`) and
the source contract (:data:`source.SOURCE_COLUMNS`), following the transform's
mapping in :mod:`totes.star`: timestamps split into a date and a millisecond time,
TEXT dates compared as the ``YYYY-MM-DD`` text the transform parses strictly,
money compared as exact decimals whatever their scale (``trim_scale``), NULL
apart from ``''`` (``quote_nullable``), counterparties joined with their legal
address, staff with their department, currency names from ISO 4217. Every
identifier comes from those allow-lists and is quoted; values are bound.
"""
from dataclasses import dataclass, field
from typing import Any, Mapping

import pycountry

from totes import errors, star
from totes.capture import FIRST_NORMAL_XID, XID_MODULUS, Snapshot, TableCursor, xmin_window
from totes.db import quote_ident
from totes.source import SOURCE_COLUMNS, VERSION_COLUMN, primary_key
from totes.warehouse_schema import CURRENT_VIEWS, TABLES, Column, Table

#: the alias of the main source table in every source relation.
MAIN = "s"

#: warehouse dimension -> the source table it is built from (its key is that table's key).
DIMENSION_SOURCES: Mapping[str, str] = {
    name: spec.source for name, spec in star.BUILDERS.items()
    if isinstance(spec, (star.Dimension, star.JoinedDimension))}
#: warehouse fact -> its source table.
FACT_SOURCES: Mapping[str, str] = {fact: source for source, fact in star.FACT_TABLES.items()}

#: dimensions joined with a second table, as the transform joins them (inner joins):
#: dimension -> (joined table, alias, column of the main table, column of the joined table).
JOINS: Mapping[str, tuple[str, str, str, str]] = {
    "dim_counterparty": ("address", "a", "legal_address_id", "address_id"),
    "dim_staff": ("department", "d", "department_id", "department_id"),
}

#: warehouse columns whose source column has another name: table -> column -> (alias, column).
RENAMED: Mapping[str, Mapping[str, tuple[str, str]]] = {
    "fact_sales_order": {"sales_staff_id": (MAIN, "staff_id")},
    "dim_location": {"location_id": (MAIN, "address_id")},
    "dim_counterparty": {target: ("a", source)
                         for target, source in star._LEGAL_ADDRESS.items()},
}

_DATE = "to_char({e}, 'YYYY-MM-DD')"
_TIME = "to_char({e}, 'HH24:MI:SS.MS')"
_EXACT = "trim_scale({e})::text"
#: how a warehouse value of each logical type becomes canonical text.
WAREHOUSE_TEXT = {"date": _DATE, "time": _TIME, "money": _EXACT, "numeric": _EXACT}
#: how a source value becomes the canonical text of a warehouse type: (source kind, type).
SOURCE_TEXT = {("timestamp", "date"): _DATE, ("timestamp", "time"): _TIME,
               ("money", "money"): _EXACT, ("money", "numeric"): _EXACT}
_PLAIN = "({e})::text"

#: the row hash: the first 64 bits of the MD5 of the row's canonical text, as a bigint.
#: MD5 here is a checksum of rows both sides render identically, not a security control.
_HASH = "('x' || left(md5(convert_to({text}, 'UTF8')), 16))::bit(64)::bigint"


class AuditContractError(errors.InputError, RuntimeError):
    """A warehouse column has no source counterpart the audit knows how to render.

    The warehouse contract gained a column the audit's mapping does not cover: the
    code must change, so a person must act (a unit test covers every table).
    """


@dataclass(frozen=True)
class Relation:
    """One side of a comparison: its FROM clause, integer key, canonical row text and params."""

    from_sql: str
    key_sql: str
    text_sql: str
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def hash_sql(self) -> str:
        """The 64-bit hash of a row's canonical text (summed per segment)."""
        return _HASH.format(text=self.text_sql)


def _q(name: str) -> str:
    return quote_ident(name)


def compared_columns(table: Table) -> tuple[Column, ...]:
    """The columns the audit compares: every data column (the record id is the warehouse's own)."""
    return table.data_columns


def _row_text(values: list[str]) -> str:
    return "concat_ws(',', " + ", ".join(f"quote_nullable({value})" for value in values) + ")"


def warehouse_relation(name: str) -> Relation:
    """The warehouse side of ``name``: a dimension, or the ``*_current`` view of a fact."""
    table = TABLES[name]
    if table.kind == "fact":
        relation, key = name + "_current", CURRENT_VIEWS[name]
    else:
        relation, key = name, table.primary_key
    values = [WAREHOUSE_TEXT.get(column.type, _PLAIN).format(e=f"w.{_q(column.name)}")
              for column in compared_columns(table)]
    return Relation(f"{_q(relation)} AS w", f"w.{_q(key)}", _row_text(values))


def source_table(name: str) -> str:
    """The source table a warehouse table is built from."""
    return FACT_SOURCES.get(name) or DIMENSION_SOURCES[name]


def source_aliases(name: str) -> dict[str, str]:
    """Alias -> source table of every table the source side of ``name`` reads."""
    aliases = {MAIN: source_table(name)}
    if name in JOINS:
        joined, alias, _, _ = JOINS[name]
        aliases[alias] = joined
    return aliases


def _source_column(name: str, column: Column) -> tuple[str, str]:
    """Return (alias, source column) holding ``column`` of warehouse table ``name``."""
    if column.name in RENAMED.get(name, {}):
        return RENAMED[name][column.name]
    for alias, table in source_aliases(name).items():
        if column.name in SOURCE_COLUMNS[table]:
            return alias, column.name
    if column.type in ("date", "time"):
        prefix = column.name.rsplit("_", 1)[0]
        for candidate in (prefix, prefix + "_at"):
            if SOURCE_COLUMNS[source_table(name)].get(candidate) == "timestamp":
                return MAIN, candidate
    raise AuditContractError(f"{name}.{column.name} has no source column the audit knows")


def _source_value(name: str, column: Column) -> str:
    if column.name == "is_deleted":
        return "'false'"  # a current row is never a deletion version
    if name == "dim_currency" and column.name == "currency_name":
        # star.dim_currency: the ISO 4217 name, or the code itself when ISO does not know it.
        return f"coalesce(iso.name, {MAIN}.\"currency_code\")::text"
    alias, source_column = _source_column(name, column)
    kind = SOURCE_COLUMNS[source_aliases(name)[alias]][source_column]
    template = SOURCE_TEXT.get((kind, column.type), _PLAIN)
    return template.format(e=f"{alias}.{_q(source_column)}")


def iso_currencies() -> dict[str, list[str]]:
    """ISO 4217 codes and English names (pycountry, as the transform names currencies)."""
    currencies = sorted(pycountry.currencies, key=lambda currency: currency.alpha_3)
    return {"iso_codes": [currency.alpha_3 for currency in currencies],
            "iso_names": [star.currency_name(currency.alpha_3) for currency in currencies]}


def source_relation(name: str) -> Relation:
    """The source side of warehouse table ``name``: what the source says it should hold now."""
    table = TABLES[name]
    main = source_table(name)
    from_sql = f"{_q(main)} AS {MAIN}"
    if name in JOINS:
        joined, alias, main_column, joined_column = JOINS[name]
        from_sql += (f" JOIN {_q(joined)} AS {alias} "
                     f"ON {alias}.{_q(joined_column)} = {MAIN}.{_q(main_column)}")
    params: dict[str, Any] = {}
    if name == "dim_currency":
        from_sql += (" LEFT JOIN unnest(CAST(:iso_codes AS text[]), CAST(:iso_names AS text[])) "
                     f"AS iso(code, name) ON iso.code = upper({MAIN}.\"currency_code\")")
        params = iso_currencies()
    values = [_source_value(name, column) for column in compared_columns(table)]
    return Relation(from_sql, f"{MAIN}.{_q(primary_key(main))}", _row_text(values), params)


#: every warehouse table compared by hashed segments (``dim_date`` is checked apart).
SEGMENTED = tuple(name for name in TABLES if name != "dim_date")


# ------------------------------------------------------------------------- in flight

def _window_sql(alias: str, tag: str, floor: Snapshot, current: Snapshot,
                params: dict[str, Any]) -> str:
    window = xmin_window(floor, current)
    params[f"xmax32_{tag}"] = window.xmax32
    params[f"width_{tag}"] = window.width
    xid = f"{alias}.xmin::text::bigint"
    return (f"({xid} >= {FIRST_NORMAL_XID} AND (CAST(:xmax32_{tag} AS bigint) - {xid} + "
            f"{XID_MODULUS}) % {XID_MODULUS} <= CAST(:width_{tag} AS bigint))")


def _since_sql(alias: str, tag: str, cursor: TableCursor, current: Snapshot,
               params: dict[str, Any]) -> str:
    if cursor.since is not None:
        return _window_sql(alias, tag, cursor.since, current, params)
    if cursor.since_last_updated is not None:
        params[f"lu_{tag}"] = cursor.since_last_updated.isoformat()
        return f"{alias}.{_q(VERSION_COLUMN)} >= CAST(:lu_{tag} AS timestamp)"
    return "true"  # never read: nothing of the table is in the warehouse yet


def in_flight_sql(alias: str, table: str, cursor: TableCursor | None, current: Snapshot,
                  params: dict[str, Any]) -> str:
    """Return the predicate on ``alias`` (a row of ``table``) the next ingest run would read.

    Those rows changed after the warehouse's capture point: the rows whose writing
    transaction the table's capture cursor has not seen (the xmin window of
    :mod:`totes.capture`, exact across wraparound), and while a row budget cut a
    pass short, below the resume key the window of the pass's older snapshot.
    """
    if cursor is None:
        return "true"
    since = _since_sql(alias, alias, cursor, current, params)
    if cursor.resume_after is None:
        return since
    params[f"after_{alias}"] = cursor.resume_after
    below = (_window_sql(alias, alias + "r", cursor.resume_since, current, params)
             if cursor.resume_since is not None else since)
    key = f"{alias}.{_q(primary_key(table))}"
    return (f"(CASE WHEN {key} <= CAST(:after_{alias} AS bigint) THEN {below} "
            f"ELSE {since} END)")


# ------------------------------------------------------------------------- segment queries

def _where(relation: Relation, skip: bool) -> str:
    where = f"{relation.key_sql} BETWEEN CAST(:lo AS bigint) AND CAST(:hi AS bigint)"
    if skip:
        where += f" AND NOT ({relation.key_sql} = ANY(CAST(:skip AS bigint[])))"
    return where


def bounds_sql(relation: Relation) -> str:
    """Smallest and greatest key of the relation."""
    # Identifiers are allow-listed and quoted; values are bound.
    return (f"SELECT min({relation.key_sql}), max({relation.key_sql}) "  # nosec B608
            f"FROM {relation.from_sql}")


def segments_sql(relation: Relation, skip: bool) -> str:
    """Per segment of ``step`` keys from ``lo``: row count and the sum of row hashes."""
    segment = f"({relation.key_sql} - CAST(:lo AS bigint)) / CAST(:step AS bigint)"
    return (f"SELECT {segment}, count(*), sum({relation.hash_sql}) "  # nosec B608
            f"FROM {relation.from_sql} "
            f"WHERE {_where(relation, skip)} GROUP BY 1")


def rows_sql(relation: Relation, skip: bool) -> str:
    """Each row's key and hash in a key range (a leaf segment), in key order."""
    return (f"SELECT {relation.key_sql}, {relation.hash_sql} "  # nosec B608
            f"FROM {relation.from_sql} WHERE {_where(relation, skip)} ORDER BY 1")


def keys_sql(relation: Relation, skip: bool) -> str:
    """A few keys of a key range (examples of a segment missing from the other side)."""
    return (f"SELECT {relation.key_sql} FROM {relation.from_sql} "  # nosec B608
            f"WHERE {_where(relation, skip)} ORDER BY 1 LIMIT CAST(:limit AS bigint)")


def in_flight_keys_sql(relation: Relation, predicate: str) -> str:
    """Keys of the source rows in flight, in order, at most ``limit``."""
    return (f"SELECT {relation.key_sql} FROM {relation.from_sql} "  # nosec B608
            f"WHERE {predicate} ORDER BY 1 LIMIT CAST(:limit AS bigint)")


def count_sql(relation: Relation, predicate: str = "true") -> str:
    """Rows of the relation matching ``predicate``."""
    return f"SELECT count(*) FROM {relation.from_sql} WHERE {predicate}"  # nosec B608


# ------------------------------------------------------------------------- dim_date

def _fact_dates_sql() -> str:
    selects = [f"SELECT {_q(column.name)} AS d FROM {_q(fact.name)}"  # nosec B608
               for fact in TABLES.values() if fact.kind == "fact"
               for column in fact.columns if column.references == "dim_date"]
    return " UNION ".join(selects)


def dim_date_sql(date_attributes: Mapping[str, str]) -> dict[str, Any]:
    """Queries checking ``dim_date`` inside the warehouse: coverage, extras and attributes.

    ``date_attributes`` derives each attribute from the date (the load's own rules).
    ``used`` and ``rows`` are counts; the others are (key, ``FROM ... WHERE ...``) pairs
    to count or to list a few keys of.
    """
    used = _fact_dates_sql()
    dim = _q("dim_date")
    key = _q(TABLES["dim_date"].primary_key)
    wrong = " OR ".join(
        f"{_q(name)} IS DISTINCT FROM {expression.format(d='x.' + key)}"
        for name, expression in date_attributes.items() if name != "date_id")
    return {
        "used": f"SELECT count(*) FROM ({used}) AS u",  # nosec B608
        "rows": f"SELECT count(*) FROM {dim}",  # nosec B608
        "missing": ("u.d", f"FROM ({used}) AS u WHERE NOT EXISTS "  # nosec B608
                    f"(SELECT 1 FROM {dim} AS x WHERE x.{key} = u.d)"),
        "unused": (f"x.{key}", f"FROM {dim} AS x WHERE NOT EXISTS "  # nosec B608
                   f"(SELECT 1 FROM ({used}) AS u WHERE u.d = x.{key})"),
        "different": (f"x.{key}", f"FROM {dim} AS x WHERE {wrong}"),
    }
