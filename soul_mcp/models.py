"""The records of a self. The same models are the domain's values and the MCP tools' output schemas."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, WithJsonSchema, field_validator

# identity (name, creature, vibe) and user (facts about the human) sit beside the soul, as in an
# OpenClaw workspace's IDENTITY.md and USER.md; all five share the same versioning.
from soul_mcp.names import DOCUMENTS, MEMORY_KINDS, DocumentName, MemoryKind  # noqa: F401 (re-exported)

MemoryStatus = Literal["active", "forgotten", "superseded"]


class Actor(BaseModel):
    """Who is making a change: the client's name (or token name) and its session."""

    name: str
    session_id: str | None = None

    @field_validator("name")
    @classmethod
    def _clean(cls, value: str) -> str:
        # Any client can choose its name, and the name is shown in every client's wake_up and in
        # terminals: one line, no escape codes, capped (core/text.py). Imported here because
        # soul_mcp.core imports this module.
        from soul_mcp.core.text import clean_name

        return clean_name(value)


class DocumentVersion(BaseModel):
    """One stored version of a document. Versions are never rewritten."""

    document: DocumentName
    version: int = Field(description="1 for the first write, then counting up")
    content: str
    author: str
    reason: str | None = Field(default=None, description="why this version was written")
    created_at: str = Field(description="UTC, ISO 8601")
    restored_from: int | None = Field(default=None, description="the version this one restored, if any")
    session_id: str | None = Field(default=None, description="the session that wrote it, if known")


class Document(BaseModel):
    """The current (or a requested) version of a document, or the starter text when none exists."""

    document: DocumentName
    version: int | None = Field(description="None when nothing has been written yet")
    content: str
    adopted: bool = Field(description="False while this is the starter text and nothing is stored")
    author: str | None = None
    reason: str | None = None
    created_at: str | None = None
    restored_from: int | None = None
    hint: str | None = Field(default=None, description="what to do next, when there is something to do")


class DocumentWrite(BaseModel):
    """The answer to a write or restore."""

    version: DocumentVersion
    changed: bool = Field(
        description="False when the content was identical to the current version (nothing stored)"
    )


class VersionSummary(BaseModel):
    version: int
    author: str
    reason: str | None
    created_at: str
    chars: int
    restored_from: int | None = None
    session_id: str | None = Field(default=None, description="the session that wrote it, if known")


class History(BaseModel):
    document: DocumentName
    versions: list[VersionSummary] = Field(description="newest first")
    next_before_version: int | None = Field(
        default=None, description="pass as before_version to see older versions; None when no more"
    )


class Diff(BaseModel):
    document: DocumentName
    from_version: int
    to_version: int
    diff: str = Field(description="unified diff; empty when the versions are identical")


class Memory(BaseModel):
    """A stored memory, whatever its status."""

    id: str
    content: str
    kind: MemoryKind
    tags: list[str]
    importance: int = Field(ge=1, le=5)
    occurred_at: str = Field(description="UTC, ISO 8601")
    created_at: str
    author: str
    status: MemoryStatus = "active"
    status_reason: str | None = Field(default=None, description="why it was forgotten or revised")
    status_changed_at: str | None = None
    status_changed_by: str | None = Field(
        default=None, description="who forgot, restored or revised it (none for changes before 0.2)"
    )
    supersedes: str | None = Field(default=None, description="id of the memory this one revised")
    superseded_by: str | None = Field(default=None, description="id of the memory that revised this one")


class NewMemory(BaseModel):
    """A validated memory about to be stored (the store adds id, status and created_at)."""

    content: str
    content_key: str
    kind: MemoryKind
    tags: list[str]
    importance: int
    occurred_at: str
    author: str
    session_id: str | None = None


class MemoryReceipt(BaseModel):
    """What a caller without the read scope learns of a memory it did not write: the id it needs
    and the status, nothing the memory holds (a write-only token must not read through results)."""

    id: str
    status: MemoryStatus
    status_reason: str | None = None


class RememberResult(BaseModel):
    memory: Memory | MemoryReceipt = Field(
        description="the stored memory; only its id and status when the same content was already "
        "stored and the caller may not read (a token without the read scope)"
    )
    is_new: bool = Field(
        description="False when the same content was already stored; that memory is returned"
    )


class MemoryView(Memory):
    """A memory as forget and revise_memory answer: whole, or for a caller without the read scope
    only what it sent and the ids it needs (the rest is null: the memory's text, tags and dates
    were not its to read)."""

    content: str | None = None  # type: ignore[assignment]
    kind: MemoryKind | None = None  # type: ignore[assignment]
    tags: list[str] | None = None  # type: ignore[assignment]
    importance: int | None = Field(default=None, ge=1, le=5)  # type: ignore[assignment]
    occurred_at: str | None = None  # type: ignore[assignment]
    created_at: str | None = None  # type: ignore[assignment]
    author: str | None = None  # type: ignore[assignment]


# Python MCP clients check every tool result against the tool's output schema (jsonschema), and
# recall's is the result they get most. anyOf branches and $refs cost the most there: a page of 10
# hits took 0.55 ms to check against a schema without them, 1.06 ms with (pydantic's defaults).
NullableStr = Annotated[str | None, WithJsonSchema({"type": ["string", "null"]})]


class RecallHit(BaseModel):
    id: str
    content: str
    kind: MemoryKind
    tags: list[str]
    importance: int
    occurred_at: str
    author: str
    score: float = Field(description="relevance (higher is better); 0 when listing by time")
    context_of: NullableStr = Field(
        default=None,
        description="set when this memory lacks the query's words but was stored right beside "
        "the memory with this id, which has them (e.g. the answer after a question)",
    )


# The hits' schema written out in place, not as a $ref (see NullableStr).
RecallHits = Annotated[
    list[RecallHit], WithJsonSchema({"type": "array", "items": RecallHit.model_json_schema()})
]


class RecallResult(BaseModel):
    query: str
    hits: RecallHits
    next_cursor: NullableStr = Field(
        default=None, description="pass as cursor for the next page; None at the end"
    )
    note: NullableStr = Field(
        default=None, description="why nothing or less came back, when that needs saying"
    )


class DocumentInfo(BaseModel):
    """A document's version details without its content (wake-up's text carries the content)."""

    version: int | None
    adopted: bool
    author: str | None = None
    created_at: str | None = None


class WakeUp(BaseModel):
    """Everything a new session needs, assembled within a character budget: read `text`."""

    soul: DocumentInfo
    identity: DocumentInfo = Field(
        default_factory=lambda: DocumentInfo(version=None, adopted=False),
        description="included in text only when written",
    )
    user: DocumentInfo = Field(
        default_factory=lambda: DocumentInfo(version=None, adopted=False),
        description="included in text only when written",
    )
    intent: DocumentInfo
    intent_age: str | None = Field(default=None, description="how long ago the intent was written")
    north_star: DocumentInfo
    focus: str | None = None
    relevant: RecallHits = Field(default_factory=list, description="memories most relevant to focus")
    important: RecallHits = Field(default_factory=list)
    recent: RecallHits = Field(default_factory=list)
    budget_chars: int
    used_chars: int
    trimmed: list[str] = Field(default_factory=list, description="what was cut to fit the budget")
    text: str = Field(description="the assembled self, ready to read")


class Stats(BaseModel):
    memories_active: int
    memories_forgotten: int
    memories_superseded: int
    document_versions: dict[str, int]
    sessions: int


class MemoryPage(BaseModel):
    """One page of memories listed by status and filters (not searched), newest first."""

    status: Literal["active", "forgotten", "superseded", "all"]
    memories: list[Memory]
    total: int = Field(description="how many memories match the status and filters, on all pages")
    offset: int = Field(description="how many matching memories come before this page")
    next_cursor: str | None = Field(default=None, description="pass as cursor for the next page")
    next_offset: int | None = Field(default=None, description="the offset of the next page; None at the end")


class ClientActivity(BaseModel):
    """What one client (an MCP client's name, or cli:<user>) has done, and when it last did it."""

    client: str
    sessions: int = 0
    memories: int = Field(default=0, description="memories it stored, whatever their status now")
    versions: int = Field(default=0, description="document versions it wrote")
    last_session_at: str | None = None
    last_memory_at: str | None = None
    last_version_at: str | None = None
    last_active_at: str | None = Field(default=None, description="the latest of the three")


class StoreDiagnosis(BaseModel):
    """What a store found when it checked itself (doctor turns this into pass / fail lines)."""

    integrity: list[str] = Field(description="the database's own check: ['ok'] when healthy")
    schema_version: int
    expected_schema_version: int
    migrated_from: int | None = Field(
        default=None, description="the schema version the file had before this process opened it"
    )
    index_check: str = Field(description="the full-text index's own check: 'ok' or the error")
    active_memories: int
    indexed_memories: int
    missing_from_index: int = Field(description="active memories the full-text index lacks")
    stale_in_index: int = Field(description="index entries with no active memory behind them")
    journal_mode: str
    synchronous: str


class Backup(BaseModel):
    """A consistent copy of the whole database, checked after it was written."""

    path: str
    bytes: int = Field(description="the size of the copy")
    integrity: str = Field(description="the copy's own PRAGMA integrity_check: 'ok' when sound")
    stats: Stats = Field(description="what the copy holds")


Scope = Literal["read", "write", "identity"]
SCOPES: tuple[str, ...] = ("read", "write", "identity")


class TokenInfo(BaseModel):
    """A bearer token for the HTTP server, as stored: never the token itself, nor its hash."""

    name: str = Field(description="also the author name on everything written with the token")
    scopes: list[Scope]
    created_at: str
    last_used_at: str | None = Field(default=None, description="to the minute; None until first used")
    revoked_at: str | None = None


class NewToken(BaseModel):
    """A token just created: the only time the token itself is seen."""

    info: TokenInfo
    token: str


class Reindexed(BaseModel):
    """What `soul-mcp reindex` rebuilt."""

    text_indexed: int = Field(description="memories in the rebuilt full-text index (the active ones)")
    embedding_model: str | None = Field(default=None, description="None when semantic search is off")
    embedded: int = Field(default=0, description="embeddings computed (missing or made from an older text)")
    with_embeddings: int = Field(default=0, description="active memories that now have an embedding")
    active: int = Field(default=0, description="active memories")
