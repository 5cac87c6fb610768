"""Settings: where the database lives and the limits that protect it.

Every value has a default, an environment variable and (for the CLI) a flag; nothing is read at
import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DB_ENV = "SOUL_MCP_DB"


def default_db_path() -> Path:
    """The SQLite file in the platform's user data directory (e.g. ~/.local/share/soul-mcp)."""
    from platformdirs import user_data_dir  # imported here: only needed when no path is given

    return Path(user_data_dir("soul-mcp", appauthor=False)) / "soul.db"


def resolve_db_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--db wins, then $SOUL_MCP_DB, then the platform default."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    return default_db_path()


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None


@dataclass(frozen=True)
class Limits:
    """Size limits. Generous for real use, small enough that one call cannot flood a context."""

    document_chars: int = 20_000
    memory_chars: int = 8_000
    tag_chars: int = 64
    tags_per_memory: int = 20
    reason_chars: int = 1_000
    query_chars: int = 1_000
    recall_limit_max: int = 50
    history_limit_max: int = 100
    # A recall page stops adding hits once its rendered text would pass this bound.
    response_chars: int = 40_000
    wake_budget_default: int = 8_000
    wake_budget_min: int = 500
    wake_budget_max: int = 100_000

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            document_chars=_env_int("SOUL_MCP_MAX_DOCUMENT_CHARS", cls.document_chars),
            memory_chars=_env_int("SOUL_MCP_MAX_MEMORY_CHARS", cls.memory_chars),
        )


@dataclass(frozen=True)
class Settings:
    db_path: Path
    limits: Limits = field(default_factory=Limits)
    # FULL: a write acknowledged to the client survives power loss. NORMAL (WAL) survives a
    # killed process but may lose the last commits on an OS crash; faster on slow disks.
    synchronous: str = "FULL"

    @classmethod
    def load(cls, db: str | os.PathLike[str] | None = None) -> Settings:
        sync = os.environ.get("SOUL_MCP_SYNCHRONOUS", "FULL").upper()
        if sync not in {"FULL", "NORMAL", "EXTRA"}:
            raise SystemExit(f"SOUL_MCP_SYNCHRONOUS must be FULL, NORMAL or EXTRA, got {sync!r}")
        return cls(db_path=resolve_db_path(db), limits=Limits.from_env(), synchronous=sync)
