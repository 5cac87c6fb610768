"""Turning what a person or a model types into something safe to store and to search."""

from __future__ import annotations

import re
import unicodedata

# Words that carry no meaning for recall. Dropped from queries (not from the index), so that
# "what did I say about the garden" searches for "say" and "garden".
STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most
    my myself no nor not now of off on once only or other our ours ourselves out over own same she should
    so some such than that the their theirs them themselves then there these they this those through to
    too under until up very was we were what when where which while who whom why will with would you
    your yours yourself yourselves i'm i've i'd i'll it's that's what's let's s t don doesn didn won
    also get got ever anything something thing things really yes yeah ok okay
    """.split()
)

# Letters and digits in any script; an apostrophe inside a word is kept ("don't").
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*", re.UNICODE)
_SPACE = re.compile(r"\s+")


def query_terms(text: str, max_terms: int = 32) -> list[str]:
    """Distinct lower-case words of a query, stopwords dropped, in order of appearance.

    Punctuation (quotes, '*', '-', ':', parentheses) never reaches the search engine, so any input
    is a valid query. If every word is a stopword, the words are kept: "who am I" still searches.
    """
    words = [w.casefold() for w in _WORD.findall(unicodedata.normalize("NFKC", text))]
    meaningful = [w for w in words if w not in STOPWORDS]
    # "maya's" -> "maya", "s": the parts, as the index splits them, without the stopword parts.
    parts = [p for w in meaningful for p in w.split("'") if p and p not in STOPWORDS]
    if not parts:  # only stopwords: search for them rather than for nothing
        parts = [p for w in words for p in w.split("'") if p]
    seen = dict.fromkeys(parts)
    return list(seen)[:max_terms]


def content_key(text: str) -> str:
    """The form under which two memories count as the same: case and whitespace folded."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def clip(text: str, limit: int, marker: str = " …[trimmed]") -> str:
    """Cut text to at most `limit` characters, saying so."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(marker))].rstrip() + marker


NAME_CHARS = 100
PLACEHOLDER = "\ufffd"
# What a terminal could run or a reader be fooled by: control characters (C0, DEL, C1: escape
# codes), format characters (bidi overrides, invisible ones) and unpaired surrogates. Line and
# paragraph separators are whitespace and fold like the rest. The zero-width joiners stay: emoji
# sequences and several scripts need them, and they run nothing.
_UNSHOWABLE = frozenset({"Cc", "Cf", "Cs"})
_JOINERS = frozenset({"\u200c", "\u200d"})


def _shown(char: str) -> str:
    if char.isspace():
        return " "
    if char in _JOINERS or unicodedata.category(char) not in _UNSHOWABLE:
        return char
    return PLACEHOLDER


def clean_name(value: str) -> str:
    """A client's, token's or person's name as it may be stored and shown: one line, nothing a
    terminal runs (each such character becomes U+FFFD, so a forgery stays visible), at most
    NAME_CHARS characters; "unknown" when nothing is left."""
    name = _SPACE.sub(" ", "".join(map(_shown, str(value)))).strip()
    if len(name) > NAME_CHARS:
        name = name[: NAME_CHARS - 1].rstrip() + "…"
    return name or "unknown"
