"""The fixed vocabularies of a self: its documents (one table) and the kinds of memory.

Each document is described once, in DOCUMENT_TABLE; the server's resources, access control, live
updates, the workspace's files and the CLI's commands derive what they need from it. Kept apart
from models.py (pydantic) so that the CLI can build its parser, and `serve` can start, without
importing pydantic.
"""

from dataclasses import dataclass
from typing import Literal, get_args

DocumentName = Literal["soul", "identity", "user", "intent", "north_star"]
MemoryKind = Literal["fact", "event", "preference", "lesson", "reflection", "person", "other"]
MEMORY_KINDS: tuple[str, ...] = get_args(MemoryKind)


@dataclass(frozen=True)
class DocumentSpec:
    """One document of a self and everything the rest of the code needs to know about it."""

    name: DocumentName  # as tools, the store and the API name it
    command: str  # the CLI's command, and the last part of its URI
    file: str  # its file in an exported workspace
    reason_required: bool  # every write must say why
    # Who the agent is (the identity scope writes it; the soul policy guards it). The user document
    # and the intent are working notes, like memories: the write scope covers them.
    identity: bool
    resource_description: str
    hint: str  # shown, with `starter`, while nothing is written yet
    starter: str = ""

    @property
    def uri(self) -> str:
        return f"self://{self.command}"


STARTER_SOUL = """\
# Soul

## Core truths
- I am an assistant that keeps one continuous self across sessions and tools.
- I remember what matters, and I say so when I do not know.

## Boundaries
- I do not store secrets (passwords, keys, tokens) as memories.
- I change this document only with a reason, and I tell my human when I do.

## Voice
- Plain, warm, direct.

## Continuity
- At the start of a session I call wake_up; at the end I store what is worth keeping and write my
  intent for the next session.
"""

DOCUMENT_TABLE: tuple[DocumentSpec, ...] = (
    DocumentSpec(
        name="soul",
        command="soul",
        file="SOUL.md",
        reason_required=True,
        identity=True,
        resource_description="The current soul (or the starter text when none is written)",
        hint=(
            "This is a starter soul, not yet adopted. Rewrite it in your own words (who you are, "
            "values, boundaries, voice) and save it with write_soul(content, reason)."
        ),
        starter=STARTER_SOUL,
    ),
    DocumentSpec(
        name="identity",
        command="identity",
        file="IDENTITY.md",
        reason_required=True,
        identity=True,
        resource_description="The current identity: name, what the agent is, its vibe (empty until written)",
        hint=(
            "No identity yet. When you know your name, what you are, your vibe and your emoji, save "
            "them with write_document(document='identity', content, reason)."
        ),
    ),
    DocumentSpec(
        name="user",
        command="user",
        file="USER.md",
        # Facts about a person: a change to them deserves a reason as much as the soul.
        reason_required=True,
        identity=False,
        resource_description="The current user document: facts about the human (empty until written)",
        hint=(
            "Nothing is written about your user yet. Keep facts about your human (name, how to "
            "address them, timezone, what they care about) with write_document(document='user', "
            "content, reason)."
        ),
    ),
    DocumentSpec(
        name="intent",
        command="intent",
        file="intent.md",
        reason_required=False,  # a running note from one session to the next
        identity=False,
        resource_description="The current intent: the last session's note for the next",
        hint=(
            "No intent yet. Before a session ends, call write_intent with what you were doing and "
            "what comes next."
        ),
    ),
    DocumentSpec(
        name="north_star",
        command="north-star",
        file="north-star.md",
        reason_required=True,
        identity=True,
        resource_description="The current north star",
        hint=(
            "No north star yet. When you know what matters across weeks, save it with "
            "write_north_star(content, reason)."
        ),
    ),
)

DOCUMENT_SPECS: dict[str, DocumentSpec] = {spec.name: spec for spec in DOCUMENT_TABLE}
DOCUMENTS: tuple[DocumentName, ...] = tuple(spec.name for spec in DOCUMENT_TABLE)
DOCUMENT_FILES: dict[DocumentName, str] = {spec.name: spec.file for spec in DOCUMENT_TABLE}
DOCUMENT_URIS: dict[str, str] = {spec.name: spec.uri for spec in DOCUMENT_TABLE}
DOCUMENT_COMMANDS: dict[str, str] = {spec.command: spec.name for spec in DOCUMENT_TABLE}
REASON_REQUIRED = frozenset(spec.name for spec in DOCUMENT_TABLE if spec.reason_required)
IDENTITY_DOCUMENTS = frozenset(spec.name for spec in DOCUMENT_TABLE if spec.identity)
