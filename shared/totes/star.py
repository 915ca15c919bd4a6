"""Pure transforms from totesys rows to the warehouse star schema: frames in, frames out.

No I/O here, so every rule of the star schema is testable with small frames.
Source frames come from :func:`source_frame`, which parses JSON Lines values
strictly (exact decimals, millisecond timestamps, ``YYYY-MM-DD`` TEXT dates) and
fails naming the table, primary key and value. Warehouse frames carry exactly
the Arrow types of :mod:`totes.warehouse_schema` (as pandas ``ArrowDtype``
columns), so :func:`to_arrow` is a checked no-op conversion and no money value
ever passes through a float.
"""
import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeAlias, cast

import pandas as pd
import pyarrow as pa
import pycountry

from totes.errors import SourceDataError as SourceDataError  # re-exported
from totes.source import SOURCE_COLUMNS, primary_key
from totes.warehouse_schema import DELETIONS, TABLES, Table, arrow_schema

DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December")

_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"
_TEXT_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_CENT = Decimal("0.01")
_MONEY_LIMIT = Decimal(10) ** 8
_PLAIN_TYPES: dict[str, type] = {"int": int, "text": str, "bool": bool}
_ARROW_TYPES: dict[str, pa.DataType] = {"int": pa.int64(), "text": pa.string(), "bool": pa.bool_()}


#: one column of values, whatever its Arrow type.
ArrowArray: TypeAlias = "pa.Array[pa.Scalar[pa.DataType]]"


def _arrow(series: pd.Series) -> ArrowArray:
    array: ArrowArray = pa.array(series, from_pandas=True)
    return array


def _offender(table: str, keys: Sequence[Any], position: int, column: str, value: Any,
              problem: str) -> SourceDataError:
    return SourceDataError(
        f"{table} {primary_key(table)}={keys[position]}: {column} {value!r} {problem}"
    )


def _parse_money(table: str, column: str, values: list[object], keys: Sequence[Any]) -> ArrowArray:
    for position, value in enumerate(values):
        if value is None:
            continue
        exact = (isinstance(value, (int, Decimal)) and not isinstance(value, bool)
                 and Decimal(value).is_finite() and abs(Decimal(value)) < _MONEY_LIMIT
                 and Decimal(value).quantize(_CENT) == value)
        if not exact:
            raise _offender(table, keys, position, column, value,
                            "does not fit numeric(10,2) exactly")
    return pa.array(values, pa.decimal128(10, 2))


def _parsed_stamps(kind: str, columns: Mapping[str, list[object]]
                   ) -> dict[str, tuple[pd.Series, int | None]]:
    """Parse every ``kind`` (date or timestamp) column of a batch at once; raise nothing.

    Returns per column its parsed values (NaT where missing or bad) and the position of
    its first bad value, if any: the caller raises in column order. One parse for all
    columns of a kind, since on the one-row frames of a small run the parse's fixed
    cost, not the rows, is what is paid. A present value that is not text (or, for a
    date, not ``YYYY-MM-DD``) becomes "", which the parse turns into NaT.
    """
    values = [value for column in columns.values() for value in column]
    present = pd.Series(values, dtype=object).notna().to_numpy()
    if kind == "date":
        text = [value if not given or (isinstance(value, str)
                                       and _TEXT_DATE.fullmatch(value) is not None) else ""
                for value, given in zip(values, present)]
        parsed = pd.to_datetime(pd.Series(text, dtype=object), format="%Y-%m-%d",
                                errors="coerce")
    else:
        text = [value if not given or isinstance(value, str) else ""
                for value, given in zip(values, present)]
        parsed = pd.to_datetime(pd.Series(text, dtype=object), format=_TIMESTAMP_FORMAT,
                                errors="coerce")
    bad = present & parsed.isna().to_numpy()
    result: dict[str, tuple[pd.Series, int | None]] = {}
    start = 0
    for column, column_values in columns.items():
        end = start + len(column_values)
        positions = bad[start:end].nonzero()[0]
        result[column] = (parsed.iloc[start:end],
                          int(positions[0]) if len(positions) else None)
        start = end
    return result


def _stamp_array(table: str, column: str, kind: str, values: list[object],
                 keys: Sequence[Any], parsed: tuple[pd.Series, int | None]) -> ArrowArray:
    """One column of :func:`_parsed_stamps` as Arrow, or the error naming its first bad value."""
    stamps, bad = parsed
    if bad is not None:
        expected = "YYYY-MM-DD" if kind == "date" else "YYYY-MM-DDTHH:MM:SS.mmm"
        raise _offender(table, keys, bad, column, values[bad], f"is not a valid {expected} {kind}")
    return _arrow(stamps).cast(pa.date32() if kind == "date" else pa.timestamp("ms"))


def _parse_stamps(table: str, column: str, values: list[object], keys: Sequence[Any],
                  kind: str) -> ArrowArray:
    parsed = _parsed_stamps(kind, {column: values})[column]
    return _stamp_array(table, column, kind, values, keys, parsed)


def _parse_column(table: str, column: str, kind: str, values: list[object],
                  keys: Sequence[Any]) -> ArrowArray:
    if kind == "money":
        return _parse_money(table, column, values, keys)
    python_type = _PLAIN_TYPES[kind]
    for position, value in enumerate(values):
        if value is not None and type(value) is not python_type:
            raise _offender(table, keys, position, column, value, f"is not {kind}")
    return pa.array(values, _ARROW_TYPES[kind])


def source_frame(table: str, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Parse decoded JSON Lines rows of ``table`` into a typed frame of the columns we read.

    Every value is checked here, once, so the builders below can trust their input:
    a missing column, a timestamp or TEXT date that is not strictly ISO, or money
    that does not fit ``numeric(10,2)`` raises :class:`SourceDataError` (naming the
    first bad value in column order).
    """
    columns = SOURCE_COLUMNS[table]
    for position, row in enumerate(rows):
        missing = [column for column in columns if column not in row]
        if missing:
            raise SourceDataError(
                f"{table} row {position + 1} lacks column(s) {', '.join(missing)}"
            )
    keys = [row[primary_key(table)] for row in rows]
    values = {column: [row[column] for row in rows] for column in columns}
    parsed: dict[str, tuple[pd.Series, int | None]] = {}
    for stamp_kind in ("date", "timestamp"):
        of_kind = {column: values[column] for column, kind in columns.items() if kind == stamp_kind}
        if of_kind:
            parsed.update(_parsed_stamps(stamp_kind, of_kind))
    arrays = [_stamp_array(table, column, kind, values[column], keys, parsed[column])
              if column in parsed else _parse_column(table, column, kind, values[column], keys)
              for column, kind in columns.items()]
    return pa.table(arrays, names=list(columns)).to_pandas(types_mapper=pd.ArrowDtype)


def empty_source_frame(table: str) -> pd.DataFrame:
    """A typed source frame with no rows: the state of a table never seen yet."""
    return source_frame(table, [])


def latest_versions(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Keep one row per primary key: the one captured last (the last in ``frame``'s order).

    Frames are in capture order (files in manifest order, rows in file order, the
    previous state before a batch), and capture order is the truth: a row first
    stamped in the future and then corrected with an ordinary ``last_updated``
    must show the correction, which the greatest ``last_updated`` would not.
    The result is ordered by primary key.
    """
    ordered = frame.sort_values(primary_key(table), kind="stable")
    return ordered.drop_duplicates(subset=[primary_key(table)], keep="last")


def _contract(table: str | Table) -> Table:
    return table if isinstance(table, Table) else TABLES[table]


def conform(table_name: str | Table, columns: "Mapping[str, pd.Series | ArrowArray]",
            index: pd.Index | None = None) -> pd.DataFrame:
    """Build a warehouse frame with the contract's columns, in order, cast to their Arrow types.

    Casts are safe: an integer that overflows ``int32`` or a decimal that loses
    digits fails rather than being silently changed.
    """
    schema = arrow_schema(_contract(table_name))
    arrays = []
    for field in schema:
        values = columns[field.name]
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else _arrow(values)
        arrays.append(array.cast(field.type))
    # One conversion of the whole table: a Series per column and a frame built from them cost
    # about twice as much on the few-row frames of a small run, for the same columns.
    frame = pa.Table.from_arrays(arrays, names=schema.names).to_pandas(types_mapper=pd.ArrowDtype)
    if index is not None:
        frame.index = index
    return frame


def to_arrow(table_name: str | Table, frame: pd.DataFrame) -> pa.Table:
    """Return ``frame`` as an Arrow table with exactly the warehouse schema, nulls checked.

    Arrow does not enforce ``nullable=False`` by itself, so a null where the
    contract forbids one is reported here, before it reaches the warehouse.
    """
    contract = _contract(table_name)
    schema = arrow_schema(contract)
    # Converted as nullable first, then each column's null count (which Arrow keeps, so
    # no pass over the frame per column) is checked against the contract's.
    nullable = pa.schema([field.with_nullable(True) for field in schema])
    columns = pa.Table.from_pandas(frame, schema=nullable, preserve_index=False).columns
    for field, column in zip(schema, columns):
        if column.null_count and not field.nullable:
            raise SourceDataError(f"{contract.name}.{field.name} would hold "
                                  f"{column.null_count} null(s) but is NOT NULL")
    return pa.Table.from_arrays(columns, schema=schema)


def _split_stamp(stamps: ArrowArray, prefix: str) -> dict[str, ArrowArray]:
    return {f"{prefix}_date": stamps.cast(pa.date32()),
            f"{prefix}_time": stamps.cast(pa.time32("ms"))}


def _version_columns(frame: pd.DataFrame) -> dict[str, ArrowArray]:
    """Split timestamps into date and time, and mark the version as an ordinary one."""
    return {
        **_split_stamp(_arrow(frame["created_at"]), "created"),
        **_split_stamp(_arrow(frame["last_updated"]), "last_updated"),
        "is_deleted": pa.array([False] * len(frame), pa.bool_()),
    }


def _same_columns(frame: pd.DataFrame, names: Iterable[str]) -> dict[str, pd.Series]:
    return {name: frame[name] for name in names}


def fact_sales_order(sales_order: pd.DataFrame) -> pd.DataFrame:
    """One fact row per sales order version; the order's ``staff_id`` is the sales staff."""
    return conform("fact_sales_order", {
        **_same_columns(sales_order, (
            "sales_order_id", "counterparty_id", "units_sold", "unit_price", "currency_id",
            "design_id", "agreed_payment_date", "agreed_delivery_date",
            "agreed_delivery_location_id",
        )),
        **_version_columns(sales_order),
        "sales_staff_id": sales_order["staff_id"],
    }, sales_order.index)


def fact_purchase_orders(purchase_order: pd.DataFrame) -> pd.DataFrame:
    """One fact row per purchase order version."""
    return conform("fact_purchase_orders", {
        **_same_columns(purchase_order, (
            "purchase_order_id", "staff_id", "counterparty_id", "item_code", "item_quantity",
            "item_unit_price", "currency_id", "agreed_delivery_date", "agreed_payment_date",
            "agreed_delivery_location_id",
        )),
        **_version_columns(purchase_order),
    }, purchase_order.index)


def fact_payment(payment: pd.DataFrame) -> pd.DataFrame:
    """One fact row per payment version (a payment flipping to paid is a new version)."""
    return conform("fact_payment", {
        **_same_columns(payment, (
            "payment_id", "transaction_id", "counterparty_id", "payment_amount", "currency_id",
            "payment_type_id", "paid", "payment_date",
        )),
        **_version_columns(payment),
    }, payment.index)


#: the column of a deletion record holding when the deletion was detected (database clock, UTC).
DELETED_AT = "deleted_at"


def deletions(table: str, rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Turn decoded deletion records of a fact source table into its fact's deletion frame.

    Each record is ``{<primary key>: id, "deleted_at": "YYYY-MM-DDTHH:MM:SS.mmm"}``;
    the detection time becomes the ``last_updated`` of the deletion version the
    load writes. Values are checked as strictly as source rows.
    """
    key = primary_key(table)
    for position, row in enumerate(rows):
        missing = [column for column in (key, DELETED_AT) if column not in row]
        if missing:
            raise SourceDataError(
                f"{table} deletion record {position + 1} lacks {', '.join(missing)}")
    ids = [row[key] for row in rows]
    for position, value in enumerate(ids):
        if type(value) is not int:
            raise _offender(table, ids, position, key, value, "is not int")
    stamps = _parse_stamps(table, DELETED_AT, [row[DELETED_AT] for row in rows], ids,
                           "timestamp")
    return conform(DELETIONS[FACT_TABLES[table]], {
        key: pa.array(ids, pa.int64()), **_split_stamp(stamps, "last_updated")})


def fact_dates(fact_name: str | Table, fact: pd.DataFrame) -> set[date]:
    """Return every date a fact or deletion frame references (each column on ``dim_date``)."""
    dates: set[date | None] = set()
    for column in _contract(fact_name).columns:
        if column.references == "dim_date":
            # the contract types every column that references dim_date as date32
            days = cast("pa.Date32Array", _arrow(fact[column.name]))
            dates.update(days.unique().to_pylist())
    return {day for day in dates if day is not None}


def dim_date(dates: Iterable[date]) -> pd.DataFrame:
    """Build ``dim_date`` rows for ``dates``: ISO weekday (Monday 1) and English names.

    Names come from fixed tables, not ``strftime``, so the result never depends
    on the locale of the machine that runs the transform.
    """
    days = sorted(set(dates))
    return conform("dim_date", {
        "date_id": pa.array(days, pa.date32()),
        "year": pa.array([day.year for day in days], pa.int32()),
        "month": pa.array([day.month for day in days], pa.int32()),
        "day": pa.array([day.day for day in days], pa.int32()),
        "day_of_week": pa.array([day.isoweekday() for day in days], pa.int32()),
        "day_name": pa.array([DAY_NAMES[day.weekday()] for day in days]),
        "month_name": pa.array([MONTH_NAMES[day.month - 1] for day in days]),
        "quarter": pa.array([(day.month - 1) // 3 + 1 for day in days], pa.int32()),
    })


def currency_name(code: str) -> str | None:
    """Return the ISO 4217 English name of ``code`` (pycountry), or None if it is unknown."""
    currency = pycountry.currencies.get(alpha_3=code.upper())
    return currency.name if currency else None


def dim_currency(currency: pd.DataFrame) -> pd.DataFrame:
    """Currencies with their ISO 4217 names; an unknown code is its own name (never null).

    The caller logs the unknown codes (see :func:`unknown_currency_codes`).
    """
    codes = currency["currency_code"].tolist()
    return conform("dim_currency", {
        "currency_id": currency["currency_id"],
        "currency_code": currency["currency_code"],
        "currency_name": pa.array([currency_name(code) or code for code in codes]),
    }, currency.index)


def unknown_currency_codes(currency: pd.DataFrame) -> list[str]:
    """Return the codes ISO 4217 does not know, for a warning."""
    return sorted({code for code in currency["currency_code"] if currency_name(code) is None})


def dim_design(design: pd.DataFrame) -> pd.DataFrame:
    """Designs straight from the source."""
    return conform("dim_design", _same_columns(
        design, ("design_id", "design_name", "file_location", "file_name")), design.index)


def dim_payment_type(payment_type: pd.DataFrame) -> pd.DataFrame:
    """Payment types straight from the source (the enum label is the name)."""
    return conform("dim_payment_type", _same_columns(
        payment_type, ("payment_type_id", "payment_type_name")), payment_type.index)


def dim_transaction(transaction: pd.DataFrame) -> pd.DataFrame:
    """Transactions straight from the source; the order ids stay null where they are null."""
    return conform("dim_transaction", _same_columns(
        transaction, ("transaction_id", "transaction_type", "sales_order_id",
                      "purchase_order_id")), transaction.index)


def dim_location(address: pd.DataFrame) -> pd.DataFrame:
    """Locations are addresses: ``location_id`` is the ``address_id``."""
    return conform("dim_location", {
        "location_id": address["address_id"],
        **_same_columns(address, ("address_line_1", "address_line_2", "district", "city",
                                  "postal_code", "country", "phone")),
    }, address.index)


_LEGAL_ADDRESS = {
    "counterparty_legal_address_line_1": "address_line_1",
    "counterparty_legal_address_line_2": "address_line_2",
    "counterparty_legal_district": "district",
    "counterparty_legal_city": "city",
    "counterparty_legal_postal_code": "postal_code",
    "counterparty_legal_country": "country",
    "counterparty_legal_phone_number": "phone",
}


def dim_counterparty(counterparty: pd.DataFrame, address: pd.DataFrame) -> pd.DataFrame:
    """Counterparties with their legal address columns taken from ``address``.

    An inner join: a counterparty whose address is not in ``address`` yields no
    row (the caller defers it until the address arrives).
    """
    joined = counterparty.merge(address, how="inner", left_on="legal_address_id",
                                right_on="address_id", suffixes=("", "_address"))
    return conform("dim_counterparty", {
        "counterparty_id": joined["counterparty_id"],
        "counterparty_legal_name": joined["counterparty_legal_name"],
        **{target: joined[source] for target, source in _LEGAL_ADDRESS.items()},
    }, joined.index)


def dim_staff(staff: pd.DataFrame, department: pd.DataFrame) -> pd.DataFrame:
    """Staff with their department's name and location (inner join, like counterparties)."""
    joined = staff.merge(department, how="inner", on="department_id",
                         suffixes=("", "_department"))
    return conform("dim_staff", {
        **_same_columns(joined, ("staff_id", "first_name", "last_name", "department_name",
                                 "location", "email_address")),
    }, joined.index)


@dataclass(frozen=True)
class Fact:
    """A fact: one row per captured version of ``source``, and one per deletion of it."""

    source: str
    build: Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class Dimension:
    """A dimension built from ``source`` alone: the latest version of each of its ids."""

    source: str
    build: Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class JoinedDimension:
    """A dimension of ``source`` joined with ``parent`` on ``parent_key``.

    A change on either side rewrites it, so the transform keeps both tables' latest
    state between runs (:mod:`totes.reference`).
    """

    source: str
    parent: str
    parent_key: str
    build: Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class DateDimension:
    """``dim_date``: one row per date the batch's facts (and deletions) reference."""

    build: Callable[[Iterable[date]], pd.DataFrame]


Builder = Fact | Dimension | JoinedDimension | DateDimension

#: every warehouse table -> how the transform builds it. A new table is one entry here,
#: one builder function above and its columns in ``warehouse_schema.TABLES``.
BUILDERS: Mapping[str, Builder] = MappingProxyType({
    "dim_date": DateDimension(dim_date),
    "dim_staff": JoinedDimension("staff", "department", "department_id", dim_staff),
    "dim_location": Dimension("address", dim_location),
    "dim_currency": Dimension("currency", dim_currency),
    "dim_design": Dimension("design", dim_design),
    "dim_counterparty": JoinedDimension("counterparty", "address", "legal_address_id",
                                        dim_counterparty),
    "dim_payment_type": Dimension("payment_type", dim_payment_type),
    "dim_transaction": Dimension("transaction", dim_transaction),
    "fact_sales_order": Fact("sales_order", fact_sales_order),
    "fact_purchase_orders": Fact("purchase_order", fact_purchase_orders),
    "fact_payment": Fact("payment", fact_payment),
})

#: source fact table -> the warehouse fact it becomes (one row per source version).
FACT_TABLES: Mapping[str, str] = MappingProxyType(
    {spec.source: name for name, spec in BUILDERS.items() if isinstance(spec, Fact)})
