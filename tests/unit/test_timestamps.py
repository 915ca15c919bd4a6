"""Instants and database times: one rendering each, read back to the same moment."""
from datetime import datetime, timedelta, timezone

from totes import timestamps


def test_an_instant_is_utc_with_milliseconds_and_z_whatever_zone_it_came_in():
    paris = timezone(timedelta(hours=1))
    moment = datetime(2024, 11, 15, 15, 20, 9, 123456, tzinfo=paris)
    assert timestamps.instant_text(moment) == "2024-11-15T14:20:09.123Z"
    assert timestamps.parse_instant("2024-11-15T14:20:09.123Z") == datetime(
        2024, 11, 15, 14, 20, 9, 123000, tzinfo=timezone.utc)
    assert timestamps.parse_instant("2024-11-15T15:20:09+01:00").hour == 14
    assert timestamps.parse_instant("2024-11-15T14:20:09").tzinfo == timezone.utc
    assert timestamps.now_text().endswith("Z")


def test_a_database_time_keeps_exactly_three_digits_and_no_zone():
    assert timestamps.database_text(datetime(2024, 11, 15, 14, 20, 9)) == "2024-11-15T14:20:09.000"
    assert timestamps.parse_database_time("2024-11-15T14:20:09.120") == datetime(
        2024, 11, 15, 14, 20, 9, 120000)
    assert timestamps.parse_database_time("2024-11-15T15:20:09.120+01:00") == datetime(
        2024, 11, 15, 14, 20, 9, 120000)
