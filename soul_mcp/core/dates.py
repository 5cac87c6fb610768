"""Dates as the tools accept them, and as the store keeps them.

Stored form: UTC, 'YYYY-MM-DDTHH:MM:SSZ', so text order is time order. Accepted input:
- a date, '2024-05-08' (midnight UTC);
- a date-time, '2024-05-08T14:30', '2024-05-08 14:30:00', with an optional 'Z' or '+02:00' offset;
  a date-time without an offset is taken as UTC.
For `until`, a bare date means the end of that day: until='2024-05-08' includes all of the 8th.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from soul_mcp.errors import InvalidInput

_DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
ALLOWED = "an ISO 8601 date or date-time such as '2024-05-08' or '2024-05-08T14:30:00Z'"


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def to_stored(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_stored() -> str:
    return to_stored(now_utc())


def parse_moment(value: str, field: str, end_of_day: bool = False) -> str:
    """Parse a user's date or date-time into the stored form, or explain what is allowed."""
    text = value.strip()
    if not text:
        raise InvalidInput(f"{field} is empty; give {ALLOWED}, or leave it out")
    if len(text) > 40:
        raise InvalidInput(f"{field} is too long to be a date; give {ALLOWED}")
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        raise InvalidInput(f"{field} {value!r} is not a date; give {ALLOWED}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if end_of_day and _DATE_ONLY.match(text):
        moment += timedelta(days=1)
    if not 1 <= moment.year <= 9998:
        raise InvalidInput(f"{field} {value!r} is out of range; give {ALLOWED}")
    return to_stored(moment)


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
