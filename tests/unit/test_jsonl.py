from datetime import date, datetime, time
from decimal import Decimal

import pytest

from totes import jsonl
from totes_local import ingest_lines

HOSTILE = "O'Brien \"quoted\" '); DROP TABLE staff; --\nline two\t\u202eRTL \U0001F45C ü"


def test_round_trip_keeps_exact_meaning():
    columns = ["id", "price", "big", "at", "text", "missing", "flag", "day", "clock"]
    row = (1, Decimal("2.675"), Decimal("99999999.99"), datetime(2024, 11, 15, 14, 20, 9, 123000),
           HOSTILE, None, True, date(2024, 1, 2), time(9, 30, 0, 5000))
    [decoded] = jsonl.decode_lines(ingest_lines.encode_rows(columns, [row]).splitlines())
    assert decoded == {
        "id": 1, "price": Decimal("2.675"), "big": Decimal("99999999.99"),
        "at": "2024-11-15T14:20:09.123", "text": HOSTILE, "missing": None, "flag": True,
        "day": "2024-01-02", "clock": "09:30:00.005000",
    }


def test_timestamps_always_carry_milliseconds():
    line = ingest_lines.encode_rows(["at"], [(datetime(2024, 1, 1, 8, 0),)])
    assert line == b'{"at":"2024-01-01T08:00:00.000"}\n'


def test_decimals_are_numbers_not_strings_and_never_use_exponents():
    assert ingest_lines.encode_rows(["n"], [(Decimal("1E+2"),)]) == b'{"n":100}\n'
    assert ingest_lines.encode_rows(["n"], [(Decimal("0.10"),)]) == b'{"n":0.10}\n'


def test_one_line_per_row_even_with_newlines_in_values():
    body = ingest_lines.encode_rows(["t"], [("a\nb",), ("c",)])
    assert body.count(b"\n") == 2


def test_blank_lines_are_skipped_when_reading():
    assert list(jsonl.decode_lines([b"", b'{"a": 1}', b"  "])) == [{"a": 1}]


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), object(), 1.5])
def test_values_without_an_exact_encoding_are_refused(value):
    with pytest.raises(ingest_lines.UnencodableValueError):
        ingest_lines.encode_rows(["v"], [(value,)])
