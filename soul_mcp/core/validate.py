"""Argument checks. Each failure says what was wrong and what is allowed."""

from __future__ import annotations

import re

from soul_mcp.config import Limits
from soul_mcp.core.text import normalize_newlines
from soul_mcp.errors import InvalidInput
from soul_mcp.models import DOCUMENTS, MEMORY_KINDS

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MEMORY_ID = re.compile(r"^m_[0-9a-f]{12}$")
_TAG = re.compile(r"^[^\s,#][^,]*$")


def text(value: str, field: str, max_chars: int, *, allow_empty: bool = False) -> str:
    """Non-empty (unless allowed), no NUL or other control characters, within max_chars."""
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be text")
    value = normalize_newlines(value)
    if _CONTROL.search(value):
        raise InvalidInput(
            f"{field} contains a control character (such as NUL); remove it. Newlines and tabs are fine"
        )
    if not allow_empty and not value.strip():
        raise InvalidInput(f"{field} is empty; it needs at least one visible character")
    if len(value) > max_chars:
        raise InvalidInput(f"{field} is {len(value):,} characters; the limit is {max_chars:,}")
    return value


def reason(value: str | None, limits: Limits) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InvalidInput(
            "reason is required and must not be empty: say in a sentence why this change is made"
        )
    return text(value, "reason", limits.reason_chars).strip()


def document(name: str) -> str:
    if name not in DOCUMENTS:
        raise InvalidInput(f"unknown document {name!r}; documents are: {', '.join(DOCUMENTS)}")
    return name


def kind(value: str | None) -> str:
    if value is None:
        return "other"
    folded = value.strip().lower()
    if folded not in MEMORY_KINDS:
        raise InvalidInput(f"unknown kind {value!r}; kinds are: {', '.join(MEMORY_KINDS)}")
    return folded


def tags(values: list[str] | None, limits: Limits) -> list[str]:
    """Lower-cased, trimmed, de-duplicated tags in the order given."""
    if values is None:
        return []
    if len(values) > limits.tags_per_memory:
        raise InvalidInput(f"{len(values)} tags given; at most {limits.tags_per_memory} are allowed")
    out: dict[str, None] = {}
    for raw in values:
        tag = text(raw, "a tag", limits.tag_chars).strip().lower()
        if not _TAG.match(tag) or "\n" in tag:
            raise InvalidInput(
                f"tag {raw!r} is not allowed: tags are short labels without commas or newlines, "
                "not starting with '#'"
            )
        out.setdefault(tag, None)
    return list(out)


def importance(value: int | None) -> int:
    if value is None:
        return 3
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise InvalidInput(
            f"importance {value!r} is out of range; use a whole number from 1 (minor) to 5 (vital)"
        )
    return value


def limit(value: int | None, default: int, maximum: int, field: str = "limit", minimum: int = 1) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise InvalidInput(
            f"{field} {value!r} is out of range; use a whole number from {minimum} to {maximum} "
            f"(default {default})"
        )
    return value


def memory_id(value: str) -> str:
    if not isinstance(value, str) or not _MEMORY_ID.match(value.strip()):
        raise InvalidInput(
            f"{str(value)[:60]!r} is not a memory id; ids look like 'm_1a2b3c4d5e6f' (recall shows them)"
        )
    return value.strip()


MAX_VERSION = 2**63 - 1  # SQLite's largest integer: no version can be above it


def version(value: int, field: str = "version") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VERSION:
        raise InvalidInput(bad_version(value, field))
    return value


def bad_version(value: object, field: str = "version") -> str:
    """What is wrong with a version number, however it was given (a resource URI gives text)."""
    if isinstance(value, int) and not isinstance(value, bool):
        shown = str(value) if value.bit_length() <= 100 else "(a number of over 30 digits)"
    else:
        shown = repr(value if not isinstance(value, str) else value[:40])
    return (
        f"{field} {shown} is not a version number: use a whole number from 1 to {MAX_VERSION} "
        "(versions start at 1; history lists them)"
    )
