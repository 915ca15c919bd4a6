"""The two ways the pipeline writes a point in time, and reads it back.

* An **instant** (when a run started, finished, was transformed): UTC, ISO-8601,
  milliseconds and a ``Z``: ``2024-11-15T14:20:09.123Z``. Read back as an aware
  UTC datetime; an offset or no zone at all is accepted and taken as UTC.
* A **database time** (a source row's ``last_updated``, the database's clock at a
  snapshot, a sweep): the source's own ``timestamp(3)``, naive, ISO-8601 with
  exactly three fractional digits: ``2024-11-15T14:20:09.120``. totesys stamps in
  UTC, so a zone on input is converted to UTC and dropped.

Object keys use a third, compact form owned by :mod:`totes.keys`.
"""
from datetime import datetime, timezone


def instant_text(moment: datetime) -> str:
    """Render an aware instant as UTC with milliseconds and ``Z``."""
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z"


def now_text() -> str:
    """The current instant, rendered by :func:`instant_text`."""
    return instant_text(datetime.now(timezone.utc))


def parse_instant(text: str) -> datetime:
    """Parse an instant as an aware UTC datetime (no zone means UTC)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def database_text(moment: datetime) -> str:
    """Render a database time: naive ISO-8601 with exactly three fractional digits."""
    return moment.isoformat(timespec="milliseconds")


def parse_database_time(text: str) -> datetime:
    """Parse a database time; one with a zone is converted to UTC and the zone dropped."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment
