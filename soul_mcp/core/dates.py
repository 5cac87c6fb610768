"""Dates as the tools accept them, and as the store keeps them.

Stored form: UTC, 'YYYY-MM-DDTHH:MM:SSZ', so text order is time order. Accepted input:
- a date-time, '2024-05-08T14:30', '2024-05-08 14:30:00', with an optional 'Z' or '+02:00' offset;
  a date-time without an offset is taken as UTC;
- a period: a day '2024-05-08', a month '2024-05', a year '2024', or words (UTC calendar):
  'today', 'yesterday', 'this week', 'last week', 'this month', 'last month', 'this year',
  'last year', 'N days ago', 'N weeks ago', 'N months ago', 'N years ago' (weeks start on Monday).
A period is a span: `since` takes its start and `until` its end, so since='last week' and
until='last week' together mean all of last week, and until='2024-05-08' includes the whole 8th.
A date-time is a point: since includes it, until stops just before it.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone

from soul_mcp.errors import InvalidInput

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_BASIC_DATE = re.compile(r"^\d{8}$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_YEAR = re.compile(r"^(\d{4})$")
_AGO = re.compile(r"^(\d{1,4}) (day|week|month|year)s? ago$")
ALLOWED = (
    "an ISO 8601 date or date-time such as '2024-05-08' or '2024-05-08T14:30:00Z', a month '2024-05', "
    "a year '2024', or 'today', 'yesterday', 'this week', 'last week', 'this month', 'last month', "
    "'this year', 'last year', 'N days ago', 'N weeks ago', 'N months ago', 'N years ago'"
)
POINT_ONLY = "an ISO 8601 date or date-time such as '2024-05-08' or '2024-05-08T14:30:00Z'"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def to_stored(moment: datetime) -> str:
    u = moment.astimezone(timezone.utc)
    # Not strftime: its %Y does not pad years below 1000 on every platform.
    return f"{u.year:04d}-{u.month:02d}-{u.day:02d}T{u.hour:02d}:{u.minute:02d}:{u.second:02d}Z"


def now_stored() -> str:
    return to_stored(now_utc())


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + day.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _period(text: str, today: date) -> tuple[date, date] | None:
    """The [start, end) days a period names, or None when the text is not a period."""
    if _DATE_ONLY.match(text) or _BASIC_DATE.match(text):
        start = date.fromisoformat(text if "-" in text else f"{text[:4]}-{text[4:6]}-{text[6:]}")
        return start, start + timedelta(days=1)
    if m := _MONTH.match(text):
        start = date(int(m[1]), int(m[2]), 1)
        return start, _add_months(start, 1)
    if m := _YEAR.match(text):
        start = date(int(m[1]), 1, 1)
        return start, date(start.year + 1, 1, 1)
    week = today - timedelta(days=today.weekday())
    month = today.replace(day=1)
    year = today.replace(month=1, day=1)
    named = {
        "today": (today, today + timedelta(days=1)),
        "yesterday": (today - timedelta(days=1), today),
        "this week": (week, week + timedelta(days=7)),
        "last week": (week - timedelta(days=7), week),
        "this month": (month, _add_months(month, 1)),
        "last month": (_add_months(month, -1), month),
        "this year": (year, date(year.year + 1, 1, 1)),
        "last year": (date(year.year - 1, 1, 1), year),
    }
    if text in named:
        return named[text]
    if m := _AGO.match(text):
        n, unit = int(m[1]), m[2]
        if unit == "day":
            start = today - timedelta(days=n)
            return start, start + timedelta(days=1)
        if unit == "week":
            start = week - timedelta(days=7 * n)
            return start, start + timedelta(days=7)
        if unit == "month":
            start = _add_months(month, -n)
            return start, _add_months(start, 1)
        return date(year.year - n, 1, 1), date(year.year - n + 1, 1, 1)
    return None


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def parse_moment(value: str, field: str, end_of_period: bool = False, now: datetime | None = None) -> str:
    """Parse a user's date, date-time or period into the stored form, or explain what is allowed.

    end_of_period=False (since, occurred_at) gives a period's start; True (until) gives its end.
    """
    text = " ".join(value.strip().lower().split())
    allowed = ALLOWED if field in {"since", "until"} else POINT_ONLY
    if not text:
        raise InvalidInput(f"{field} is empty; give {allowed}, or leave it out")
    if len(text) > 40:
        raise InvalidInput(f"{field} is too long to be a date; give {allowed}")
    today = (now or now_utc()).astimezone(timezone.utc).date()
    try:
        is_day = _DATE_ONLY.match(text) or _BASIC_DATE.match(text)
        period = _period(text, today) if field in {"since", "until"} or is_day else None
    except ValueError:  # 2024-13 or 2024-02-30
        raise InvalidInput(f"{field} {value!r} is not a real date; give {allowed}") from None
    if period is not None:
        start, end = period
        if not 1 <= start.year <= 9998:
            raise InvalidInput(f"{field} {value!r} is out of range; give {allowed}")
        return to_stored(_midnight(end if end_of_period else start))
    iso = text[:-1] + "+00:00" if text.endswith("z") else text
    try:
        moment = datetime.fromisoformat(iso.upper() if "t" in iso else iso)
    except ValueError:
        raise InvalidInput(f"{field} {value!r} is not a date; give {allowed}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        stored = to_stored(moment)  # converting to UTC can step outside year 1..9999
    except (OverflowError, ValueError):
        stored = ""
    if not stored or not "0001" <= stored[:4] <= "9998":
        raise InvalidInput(f"{field} {value!r} is out of range; give {allowed}")
    return stored


def describe_age(stored: str, now: datetime | None = None) -> str:
    """'3 hours ago', for the intent's age in wake-up."""
    then = datetime.fromisoformat(stored.replace("Z", "+00:00"))
    seconds = int(((now or now_utc()) - then).total_seconds())
    if seconds < 0:
        return "in the future"
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return "just now"
