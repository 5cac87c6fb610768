"""What a query says beyond its words, read without a model call: the names in it, the times it
points at, the kind of answer it wants, its quoted phrases.

The ranker (ranker.py) uses these as features only, never as filters: a wrong reading of a
question ("May I ..." is no month) may move a memory down, never hide it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

MONTHS = {
    name: number
    for number, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
# Month abbreviations that are also common words: a month only with a day or a year beside them.
_AMBIGUOUS_MONTHS = {"may", "mar", "jan", "jun", "sep", "dec", "oct", "aug", "apr"}
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# Capitalised words that name no one.
_NOT_NAMES = {"i", "i'm", "i've", "i'd", "i'll", "ok", "okay", "tv", "mr", "mrs", "ms", "dr", *DAYS}

# The first of these that begins a clause says what the question wants.
FORMS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("how_many", re.compile(r"\bhow (?:many|much|often|long)\b")),
    (
        "when",
        re.compile(r"\b(?:when|what (?:time|year|month|day|date)|which (?:year|month|day)|how long ago)\b"),
    ),
    ("who", re.compile(r"\b(?:who|whom|whose)\b")),
    ("where", re.compile(r"\bwhere\b")),
    ("why", re.compile(r"\bwhy\b")),
)

_WORD = re.compile(r"[^\W\d_][\w'’-]*", re.UNICODE)
_QUOTED = re.compile(r"\"([^\"]{2,200})\"|“([^”]{2,200})”")
_SENTENCE_END = re.compile(r"[.!?:;]\s*$")
_YEAR = r"(19\d\d|20\d\d)"
_MONTH_WORDS = "|".join(sorted(MONTHS, key=len, reverse=True))
_DAY_MONTH_YEAR = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+({_MONTH_WORDS})\.?,?\s+{_YEAR}\b", re.I)
_MONTH_DAY_YEAR = re.compile(rf"\b({_MONTH_WORDS})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+{_YEAR}\b", re.I)
_MONTH_YEAR = re.compile(rf"\b({_MONTH_WORDS})\.?,?\s+(?:of\s+)?{_YEAR}\b", re.I)
_SOME_MONTH = re.compile(rf"\b(last|this|in|during|early|late|mid|of|since)?\s*({_MONTH_WORDS})\b", re.I)
_YEAR_ALONE = re.compile(rf"\b{_YEAR}\b")
_AGO = re.compile(r"\b(a|one|two|three|four|five|six|\d{1,2})\s+(day|week|month|year)s?\s+ago\b", re.I)
_NUMBERS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}


@dataclass(frozen=True)
class QueryFacts:
    names: tuple[str, ...] = ()  # lower-case: the words that name someone or something
    periods: tuple[tuple[int, int], ...] = ()  # [start, end) as YYYYMMDDHHMMSS (filters.moments)
    form: str | None = None  # "when", "who", "where", "why", "how_many", or None
    quoted: tuple[str, ...] = ()  # lower-case phrases in double quotes

    @property
    def wants_time(self) -> bool:
        return self.form == "when"


def _moment(day: date) -> int:
    return day.year * 10**10 + day.month * 10**8 + day.day * 10**6


def _period(start: date, end: date) -> tuple[int, int]:
    return _moment(start), _moment(end)


def _month(year: int, month: int) -> tuple[int, int]:
    end = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
    return _period(date(year, month, 1), end)


def _day(year: int, month: int, day: int) -> tuple[int, int] | None:
    try:
        start = date(year, month, day)
    except ValueError:
        return None
    return _period(start, start + timedelta(days=1))


def _months_back(today: date, months: int) -> tuple[int, int]:
    index = today.year * 12 + today.month - 1 - months
    return _month(index // 12, index % 12 + 1)


def periods_in(text: str, today: date) -> list[tuple[int, int]]:
    """The periods a query's time words point at: dates, months, years, and words relative to
    `today` ("yesterday", "last May", "two weeks ago")."""
    found: list[tuple[int, int]] = []
    taken: list[tuple[int, int]] = []  # spans already read as a fuller date

    def free(match: re.Match[str]) -> bool:
        return not any(match.start() < end and start < match.end() for start, end in taken)

    for match in _DAY_MONTH_YEAR.finditer(text):
        if (span := _day(int(match[3]), MONTHS[match[2].lower()], int(match[1]))) is not None:
            found.append(span)
            taken.append(match.span())
    for match in _MONTH_DAY_YEAR.finditer(text):
        if free(match) and (span := _day(int(match[3]), MONTHS[match[1].lower()], int(match[2]))):
            found.append(span)
            taken.append(match.span())
    for match in _MONTH_YEAR.finditer(text):
        if free(match):
            found.append(_month(int(match[2]), MONTHS[match[1].lower()]))
            taken.append(match.span())
    for match in _YEAR_ALONE.finditer(text):
        if free(match):
            year = int(match[1])
            found.append(_period(date(year, 1, 1), date(year + 1, 1, 1)))
    for match in _SOME_MONTH.finditer(text):
        word, lead = match[2], (match[1] or "").lower()
        if not free(match) or (word.lower() in _AMBIGUOUS_MONTHS and not (lead and word[0].isupper())):
            continue  # "may", "march" as words; a month needs a lead word ("in May", "last May")
        month = MONTHS[word.lower()]
        # The latest such month not after this one; "last May" in May is a year ago.
        back = (today.month - month) % 12 or (12 if lead == "last" else 0)
        found.append(_months_back(today, back))
    lowered = text.lower()
    relative = {
        "yesterday": (today - timedelta(days=1), today),
        "today": (today, today + timedelta(days=1)),
        "tonight": (today, today + timedelta(days=1)),
        "last week": (today - timedelta(days=today.weekday() + 7), today - timedelta(days=today.weekday())),
        "this week": (today - timedelta(days=today.weekday()), today + timedelta(days=1)),
        "last weekend": (
            today - timedelta(days=today.weekday() + 2),
            today - timedelta(days=today.weekday()),
        ),
    }
    for words, (start, end) in relative.items():
        if re.search(rf"\b{words}\b", lowered):
            found.append(_period(start, end))
    if re.search(r"\blast month\b", lowered):
        found.append(_months_back(today, 1))
    if re.search(r"\bthis month\b", lowered):
        found.append(_months_back(today, 0))
    if re.search(r"\blast year\b", lowered):
        found.append(_period(date(today.year - 1, 1, 1), date(today.year, 1, 1)))
    if re.search(r"\bthis year\b", lowered):
        found.append(_period(date(today.year, 1, 1), today + timedelta(days=1)))
    for match in _AGO.finditer(text):
        count = int(match[1]) if match[1].isdigit() else _NUMBERS[match[1].lower()]
        days = {"day": 1, "week": 7, "month": 30, "year": 365}[match[2].lower()] * count
        # About then: a window around the moment, as wide as the unit.
        width = {"day": 1, "week": 4, "month": 15, "year": 183}[match[2].lower()]
        middle = today - timedelta(days=days)
        found.append(_period(middle - timedelta(days=width), middle + timedelta(days=width + 1)))
    return list(dict.fromkeys(found))


def names_in(text: str, known: Iterable[str] = ()) -> list[str]:
    """Capitalised words not at a sentence's start (and not a month, a day or "I"), and any word
    of `known` (lower-case names: the speakers, the authors), lower-case, possessives cut."""
    known_set = {k.lower() for k in known}
    names: list[str] = []
    for match in _WORD.finditer(text):
        word = match[0].replace("’", "'")
        bare = re.sub(r"'s?$", "", word)
        lowered = bare.lower()
        if not lowered:
            continue
        at_start = not text[: match.start()].strip() or bool(_SENTENCE_END.search(text[: match.start()]))
        capitalised = bare[0].isupper() and len(bare) > 1
        if lowered in known_set or (
            capitalised and not at_start and lowered not in _NOT_NAMES and lowered not in MONTHS
        ):
            names.append(lowered)
    return list(dict.fromkeys(names))


def form_of(text: str) -> str | None:
    """What the question asks for, from its first question word."""
    lowered = text.lower()
    best: tuple[int, str] | None = None
    for form, pattern in FORMS:
        match = pattern.search(lowered)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), form)
    return best[1] if best else None


def query_facts(text: str, today: date | None = None, known_names: Iterable[str] = ()) -> QueryFacts:
    """The facts of a query `text`; relative times are read against `today` (UTC today)."""
    from datetime import datetime, timezone

    text = unicodedata.normalize("NFKC", text)
    today = today or datetime.now(timezone.utc).date()
    quoted = [(a or b).strip().lower() for a, b in _QUOTED.findall(text)]
    return QueryFacts(
        names=tuple(names_in(text, known_names)),
        periods=tuple(periods_in(text, today)),
        form=form_of(text),
        quoted=tuple(q for q in quoted if q),
    )
