from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from totes_local import shape


@pytest.mark.parametrize("cents, text", [(0, "0.00"), (5, "0.05"), (200, "2.00"),
                                         (123456789, "1234567.89"), (-150, "-1.50")])
def test_cents_text_is_exact_numeric_text(cents, text):
    assert shape.cents_text(cents) == text
    assert shape.money(cents) == Decimal(text)


def test_text_date_is_iso_day():
    assert shape.text_date(date(2024, 1, 5)) == "2024-01-05"


def test_naive_utc_converts_zones_and_truncates_to_milliseconds():
    aware = datetime(2024, 11, 15, 19, 0, 0, 123987, tzinfo=timezone(timedelta(hours=1)))
    assert shape.naive_utc(aware) == datetime(2024, 11, 15, 18, 0, 0, 123000)
    assert shape.naive_utc(datetime(2024, 1, 1, 0, 0, 0, 999)) == datetime(2024, 1, 1)


def test_history_spans_two_years_before_the_end():
    start = shape.history_start(shape.DEFAULT_END)
    assert start == datetime(2022, 11, 3, 18, 0)


@pytest.mark.parametrize("moment, expected", [
    (datetime(2024, 11, 15, 8, 0), True),            # Friday opening
    (datetime(2024, 11, 15, 18, 59, 59), True),
    (datetime(2024, 11, 15, 19, 0), False),          # closed
    (datetime(2024, 11, 15, 7, 59), False),
    (datetime(2024, 11, 16, 12, 0), False),          # Saturday
])
def test_business_time_is_weekdays_eight_to_seven(moment, expected):
    assert shape.is_business_time(moment) is expected


@pytest.mark.parametrize("moment, opening", [
    (datetime(2024, 11, 15, 12, 0), datetime(2024, 11, 15, 12, 0)),
    (datetime(2024, 11, 15, 19, 0), datetime(2024, 11, 18, 8, 0)),   # Friday night -> Monday
    (datetime(2024, 11, 16, 9, 0), datetime(2024, 11, 18, 8, 0)),    # Saturday -> Monday
    (datetime(2024, 11, 18, 6, 30), datetime(2024, 11, 18, 8, 0)),   # early Monday
    (datetime(2024, 11, 19, 20, 0), datetime(2024, 11, 20, 8, 0)),   # Tuesday night
])
def test_next_opening_skips_nights_and_weekends(moment, opening):
    assert shape.next_opening(moment) == opening


def test_payment_run_is_the_morning_batch():
    assert shape.payment_run(date(2024, 11, 18), 885) == datetime(2024, 11, 18, 7, 55, 11, 885000)
