"""How the real totesys behaves, as numbers and rules both the generator and simulator obey.

Every constant was measured on the November 2024 extract of the real database
(see docs/source-database.md for the measurements). Keeping them in one place
means the bulk generator and the step-by-step simulator cannot drift apart, and
the rules (business hours, money, TEXT dates) are pure functions a unit test can pin.
"""
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

#: The default instant a generated history ends at, so one command always gives one database.
DEFAULT_END = datetime(2024, 11, 15, 18, 0, tzinfo=timezone.utc)
#: Length of the generated history: the real extract spans 2022-11-03 to 2024-11-15.
HISTORY_DAYS = 743

ADDRESSES = 30
COUNTERPARTIES = 20
STAFF = 20

#: Orders per weekday at scale 1 (real: 21.1 sales and 8.8 purchase orders per weekday).
SALES_PER_WEEKDAY = 21.07
PURCHASES_PER_WEEKDAY = 8.79
#: Designs on day one, then new ones per weekday at scale 1 (real: 473 designs in two years).
INITIAL_DESIGNS = 10
DESIGNS_PER_WEEKDAY = 0.87

#: Orders are written on weekdays from 08:00 until 19:00 UTC.
OPEN_HOUR = 8
CLOSE_HOUR = 19

#: Inclusive ranges; prices in pence/cents (real: units 1,001-99,973 at 2.00-4.00 each,
#: items 1-999 at 3.32-999.07 each, all uniform).
UNITS_SOLD = (1001, 99999)
UNIT_PRICE_CENTS = (200, 400)
ITEM_QUANTITY = (1, 999)
ITEM_PRICE_CENTS = (100, 99999)
ITEM_CODE_LENGTH = 7

#: Agreed dates are whole days after the order's date: delivery 0-7 (ends half as likely),
#: payment 0-6; 0.3% of deliveries are agreed months ahead.
DELIVERY_DAYS = 7
PAYMENT_DAYS = 6
LATE_DELIVERY_SHARE = 0.003
LATE_DELIVERY_DAYS = (8, 650)

#: A daily batch at 07:55:11 on weekdays flips the payments due that day to paid; it misses
#: payments created after it ran (due the same day) and weekend dates, and about 0.5% of others.
PAYMENT_RUN = time(7, 55, 11)
PAID_SHARE = 0.995

ACCOUNT_NUMBERS = (10_000_000, 99_999_999)
SALES_RECEIPT = 1
PURCHASE_PAYMENT = 3
#: The seed batch wrote counterparties and staff 1.601 s after the other reference tables.
PEOPLE_DELAY = timedelta(milliseconds=1601)


def money(cents: int) -> Decimal:
    """An exact two-place amount from integer cents (never through float)."""
    return Decimal(cents).scaleb(-2)


def cents_text(cents: int) -> str:
    """Format integer cents as the numeric(10,2) text PostgreSQL reads ("1234.05")."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(cents), 100)
    return f"{sign}{whole}.{part:02d}"


def text_date(day: date) -> str:
    """The TEXT date format of the agreed_* and payment_date columns: 'YYYY-MM-DD'."""
    return day.strftime("%Y-%m-%d")


def naive_utc(moment: datetime) -> datetime:
    """A ``timestamp(3)`` value: UTC without zone, truncated to milliseconds."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def history_start(end: datetime) -> datetime:
    """Where a generated history ending at ``end`` begins."""
    return naive_utc(end) - timedelta(days=HISTORY_DAYS)


def is_business_time(moment: datetime) -> bool:
    """True on weekdays between opening and closing time, when orders are written."""
    return moment.weekday() < 5 and OPEN_HOUR <= moment.hour < CLOSE_HOUR


def next_opening(moment: datetime) -> datetime:
    """The next instant at or after ``moment`` when the business is open."""
    if is_business_time(moment):
        return moment
    day = moment.date()
    if moment.hour >= CLOSE_HOUR or moment.weekday() >= 5:
        day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return datetime.combine(day, time(OPEN_HOUR))


def payment_run(day: date, millisecond: int = 0) -> datetime:
    """The instant of the daily batch that marks ``day``'s payments as paid."""
    return datetime.combine(day, PAYMENT_RUN) + timedelta(milliseconds=millisecond)
