"""The JSON lines the server renders are row_to_json's bytes, with timestamps to the millisecond.

``extract.row_json`` assembles each line from per-value expressions chosen for
their server cost; this checks them, byte for byte, against ``row_to_json`` over
the contract's columns (its timestamps cut to three fractional digits, as the
contract carries them), on every row of a generated history and on rows made to
be hard: NULLs, fractions of every length, years before 1000, hostile text, odd
numerics, and a row stamped in the future (whose line ends with the mark).
"""
import re
from datetime import datetime, timedelta
from decimal import Decimal

from totes import extract
from totes.db import quote_ident
from totes.source import SOURCE_COLUMNS, SOURCE_TABLES, VERSION_COLUMN, primary_key

from test_ingest import insert
from test_logical_decoding import HOSTILE

#: a timestamp value as row_to_json writes it: seconds, then up to six fractional digits.
_STAMP = r'"(\d{4,}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?"'


def contract_order(table):
    """The contract's columns of ``table``, its primary key first, as ingest writes them."""
    key = primary_key(table)
    return [key, *(name for name in SOURCE_COLUMNS[table] if name != key)]


def reference_lines(conn, table):
    """Each row of ``table`` in key order: row_to_json of its contract columns, made the contract.

    Timestamps keep three fractional digits (cut, not rounded); a row stamped after
    the database's clock ends with the future mark. A timestamp's label followed by
    a quote cannot occur inside a JSON string (its quotes are escaped), so the
    substitution touches only timestamp values.
    """
    columns = ", ".join(quote_ident(name) for name in contract_order(table))
    rows = conn.run(
        f"SELECT row_to_json(r)::text, r.{quote_ident(VERSION_COLUMN)} > "  # nosec B608
        f"(now() AT TIME ZONE 'UTC') FROM (SELECT {columns} FROM {quote_ident(table)}) AS r "
        f"ORDER BY r.{quote_ident(primary_key(table))}")
    stamps = [name for name, kind in SOURCE_COLUMNS[table].items() if kind == "timestamp"]
    lines = []
    for text, future in rows:
        for name in stamps:
            text = re.sub(f'("{name}":){_STAMP}', lambda match: (
                f'{match[1]}"{match[2]}.{(match[3] or "").ljust(3, "0")[:3]}"'), text)
        lines.append(text + (extract.FUTURE_MARK.decode() if future else ""))
    return lines


def rendered_lines(conn, table):
    """Each row of ``table`` in key order, as ingest's server-side rendering writes it."""
    key = quote_ident(primary_key(table))
    return [line for [line] in conn.run(
        f"SELECT {extract.row_json_sql(table)} ORDER BY t.{key}")]  # nosec B608


def add_hard_rows(conn):
    """Rows whose every rendered kind meets its edge cases (and columns widened to hold them)."""
    conn.run("ALTER TABLE sales_order ALTER created_at TYPE timestamp, "
             "ALTER unit_price TYPE numeric")
    stamps = [datetime(2024, 11, 15, 14, 0, 0), datetime(2024, 11, 15, 14, 0, 0, 500000),
              datetime(2024, 11, 15, 14, 0, 0, 999), datetime(2024, 11, 15, 14, 0, 0, 123456),
              datetime(2024, 11, 15, 14, 0, 0, 999999), datetime(5, 1, 2, 3, 4, 5, 60000),
              datetime(999, 12, 31, 23, 59, 59, 999000), datetime(9999, 12, 31, 23, 59, 59)]
    prices = [Decimal("-0.01"), Decimal("0"), Decimal("123456789012345678901234.5678"),
              Decimal("-99999999.99"), Decimal("1E-20"), Decimal("0.10"), Decimal("5"),
              Decimal("-7.000")]
    for number, (stamp, price) in enumerate(zip(stamps, prices), start=90_001):
        insert(conn, "sales_order", sales_order_id=number, created_at=stamp,
               last_updated=datetime(2024, 11, 15, 14, 0, 0, 120000), design_id=1, staff_id=1,
               counterparty_id=1, units_sold=-number, unit_price=price, currency_id=1,
               agreed_delivery_date="", agreed_payment_date='"\\\u00e9\n',
               agreed_delivery_location_id=1)
    future = datetime.utcnow() + timedelta(days=400)
    insert(conn, "address", address_id=90_001, created_at=future, last_updated=future, **HOSTILE)
    insert(conn, "address", address_id=90_002, address_line_1="", address_line_2=None,
           district=None, city="\\", postal_code='"', country="\x7f\u00a0", phone="null",
           last_updated=datetime(1, 1, 1))
    insert(conn, "transaction", transaction_id=90_001, transaction_type="SALE",
           sales_order_id=90_001, purchase_order_id=None, last_updated=datetime(2024, 1, 1))
    insert(conn, "payment", payment_id=90_001, transaction_id=90_001, counterparty_id=1,
           payment_amount=Decimal("-0.50"), currency_id=1, payment_type_id=1, paid=True,
           payment_date="not a date, but text", company_ac_number=1, counterparty_ac_number=2,
           created_at=datetime(2024, 2, 29, 0, 0, 0, 1000), last_updated=datetime(2024, 2, 29))


def test_every_rendered_line_is_row_to_json_with_millisecond_timestamps(totesys):
    conn = totesys.connect()
    try:
        add_hard_rows(conn)
        for table in SOURCE_TABLES:
            rendered = rendered_lines(conn, table)
            assert rendered == reference_lines(conn, table), table
            assert len(rendered) == totesys.counts[table] + {
                "sales_order": 8, "address": 2, "transaction": 1, "payment": 1}.get(table, 0), table
        [hostile] = [line for line in rendered_lines(conn, "address")
                     if line.startswith('{"address_id":90001,')]
        assert hostile.endswith("}" + extract.FUTURE_MARK.decode())
    finally:
        conn.close()


#: sales orders holding a value the rendering cannot write exactly: timestamps (created_at,
#: last_updated) outside years 1 to 9999 AD, money that is not a number.
UNFIT = {
    90_101: ("infinity", "2024-01-01 00:00:00", "1"),
    90_102: ("-infinity", "2024-01-01 00:00:00", "1"),
    90_103: ("0044-03-15 12:00:00 BC", "2024-01-01 00:00:00", "1"),
    90_104: ("10000-01-01 00:00:00", "2024-01-01 00:00:00", "1"),
    90_105: ("2024-01-01 00:00:00", "infinity", "1"),
    90_106: ("2024-01-01 00:00:00", "-infinity", "1"),
    90_107: ("2024-01-01 00:00:00", "0001-12-31 23:59:59.999 BC", "1"),
    90_108: ("2024-01-01 00:00:00", "294276-12-31 23:59:59", "1"),
    90_109: ("infinity", "10000-01-01 00:00:00", "1"),
    90_110: ("2024-01-01 00:00:00", "2024-01-01 00:00:00", "NaN"),
    90_111: ("2024-01-01 00:00:00", "2024-01-01 00:00:00", "Infinity"),
    90_112: ("2024-01-01 00:00:00", "2024-01-01 00:00:00", "-Infinity"),
    90_113: ("2024-01-01 00:00:00", "9999-12-31 23:59:59", "NaN"),
}
#: and the first and last it can: rendered as any other row (the last as stamped in the future).
FIT = {
    90_121: ("0001-01-01 00:00:00", "0001-01-01 00:00:00", "-99999999.99"),
    90_122: ("9999-12-31 23:59:59.999", "2024-01-01 00:00:00", "1E+30"),
    90_123: ("2024-01-01 00:00:00", "9999-12-31 23:59:59.999", "-1E-30"),
}


def test_a_row_with_a_value_the_rendering_cannot_write_exactly_has_no_line(totesys):
    conn = totesys.connect()
    try:
        conn.run("ALTER TABLE sales_order ALTER created_at TYPE timestamp, "
                 "ALTER last_updated TYPE timestamp, ALTER unit_price TYPE numeric")
        for number, (created, updated, price) in {**UNFIT, **FIT}.items():
            conn.run("INSERT INTO sales_order (sales_order_id, created_at, last_updated, "
                     "design_id, staff_id, counterparty_id, units_sold, unit_price, currency_id, "
                     "agreed_delivery_date, agreed_payment_date, agreed_delivery_location_id) "
                     "VALUES (:number, CAST(:created AS text)::timestamp, "
                     "CAST(:updated AS text)::timestamp, 1, 1, 1, 1, CAST(:price AS numeric), "
                     "1, '', '', 1)", number=number, created=created, updated=updated,
                     price=price)
        key = quote_ident(primary_key("sales_order"))
        lines = dict(conn.run(f"SELECT t.{key}, {extract.row_json('sales_order')} "  # nosec
                              f"FROM sales_order AS t WHERE t.{key} > 90000"))
        reference = {int(line.split(",")[0].split(":")[1]): line
                     for line in reference_lines(conn, "sales_order")}
        assert {number for number, line in lines.items() if line is None} == set(UNFIT)
        assert all(lines[number] == reference[number] for number in FIT)
        assert lines[90_123].endswith("}" + extract.FUTURE_MARK.decode())
    finally:
        conn.close()
