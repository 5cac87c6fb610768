"""AgentSelf: the one entry point that the MCP server and the CLI both call.

It validates and normalises every argument, then asks the store. Methods that change something take
an `Actor` (who is changing it), so that every memory and version records its author.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from soul_mcp.config import Limits, Settings
from soul_mcp.core import cursor as cursors
from soul_mcp.core import render, tokens, validate
from soul_mcp.core.dates import now_stored, parse_moment
from soul_mcp.core.starter import EMPTY_DOCUMENTS
from soul_mcp.core.text import content_key, query_terms
from soul_mcp.core.wakeup import assemble_wake_up
from soul_mcp.errors import InvalidInput, NotFound
from soul_mcp.models import (
    Actor,
    Backup,
    ClientActivity,
    Diff,
    Document,
    DocumentVersion,
    DocumentWrite,
    History,
    Memory,
    MemoryPage,
    NewMemory,
    NewToken,
    RecallHit,
    RecallResult,
    Reindexed,
    RememberResult,
    Stats,
    StoreDiagnosis,
    TokenInfo,
    VersionSummary,
    WakeUp,
)
from soul_mcp.names import REASON_REQUIRED  # documents whose every write must say why
from soul_mcp.opening import open_semantic, open_store
from soul_mcp.recall import RANKED_MAX, QueryVector, Recall, SearchQuery
from soul_mcp.storage.base import EmbeddingStore, Store

if TYPE_CHECKING:
    from soul_mcp.semantic.indexer import SemanticIndexer

# Listing memories (for people, not models): a page may be larger than a recall page.
MEMORY_LIST_STATUSES = ("active", "forgotten", "superseded", "all")
MEMORY_LIST_MAX = 200


def _hit(memory: Memory, score: float = 0.0, context_of: str | None = None) -> RecallHit:
    return RecallHit(
        id=memory.id,
        content=memory.content,
        kind=memory.kind,
        tags=memory.tags,
        importance=memory.importance,
        occurred_at=memory.occurred_at,
        author=memory.author,
        # Four decimals, but a match never shows 0: FTS5 weighs a word that more than half the
        # memories hold by 1e-6 (its idf floor), as every word of a small database may be.
        score=round(score, 4) or float(f"{score:.2g}"),
        context_of=context_of,
    )


class AgentSelf:
    def __init__(
        self, store: Store, limits: Limits | None = None, semantic: SemanticIndexer | None = None
    ) -> None:
        self.store = store
        # Ranks the store's memories (the store is its RecallSource); holds what recall keeps in memory.
        self.recall_engine = Recall(store)
        self.limits = limits or Limits()
        # Hybrid recall (the `semantic` extra or an embeddings endpoint); None: BM25 alone.
        self.semantic = semantic if isinstance(store, EmbeddingStore) else None

    @classmethod
    async def open(cls, settings: Settings) -> AgentSelf:
        """Open the store and the semantic indexer the settings name (soul_mcp.opening)."""
        store = await open_store(settings)
        return cls(store, settings.limits, open_semantic(settings))

    @property
    def read_only(self) -> str | None:
        """Why this process can only read the database (e.g. its folder is not writable); None
        when it can write."""
        return self.store.read_only

    async def close(self) -> None:
        if self.semantic is not None:
            await self.semantic.close()
        await self.recall_engine.close()
        await self.store.close()

    def _changed(self, status: bool = False) -> None:
        """Memories were stored (or changed `status`, which drops their neighbours' embeddings):
        the background indexer (when on) embeds what is now missing."""
        if self.semantic is not None:
            self.semantic.kick(everything=status)

    # Documents ---------------------------------------------------------------------------------

    async def read(self, document: str, version: int | None = None) -> Document:
        validate.document(document)
        if version is not None:
            validate.version(version)
        stored = await self.store.get_version(document, version)
        if stored is None:
            if version is not None:
                latest = await self.store.get_version(document)
                have = f"versions 1 to {latest.version} exist" if latest else "no versions exist yet"
                raise NotFound(f"{document} has no version {version}; {have}")
            content, hint = EMPTY_DOCUMENTS[document]
            return Document(document=document, version=None, content=content, adopted=False, hint=hint)  # type: ignore[arg-type]
        return Document(
            document=stored.document,
            version=stored.version,
            content=stored.content,
            adopted=True,
            author=stored.author,
            reason=stored.reason,
            created_at=stored.created_at,
            restored_from=stored.restored_from,
        )

    async def write(
        self, document: str, content: str, actor: Actor, reason: str | None = None
    ) -> DocumentWrite:
        validate.document(document)
        content = validate.text(content, "content", self.limits.document_chars)
        if document in REASON_REQUIRED or reason is not None:
            reason = validate.reason(reason, self.limits)
        current = await self.store.get_version(document)
        if current is not None and current.content == content:
            return DocumentWrite(version=current, changed=False)
        stored = await self.store.append_version(
            document, content, actor.name, reason, now_stored(), actor.session_id
        )
        return DocumentWrite(version=stored, changed=True)

    async def restore(self, document: str, version: int, reason: str, actor: Actor) -> DocumentWrite:
        """Make an old version current again by storing it as a new version."""
        validate.document(document)
        reason = validate.reason(reason, self.limits)
        old = await self._version(document, validate.version(version))
        current = await self.store.get_version(document)
        if current is not None and current.content == old.content:
            return DocumentWrite(version=current, changed=False)
        stored = await self.store.append_version(
            document,
            old.content,
            actor.name,
            reason,
            now_stored(),
            actor.session_id,
            restored_from=old.version,
        )
        return DocumentWrite(version=stored, changed=True)

    async def history(
        self, document: str, limit: int | None = None, before_version: int | None = None
    ) -> History:
        validate.document(document)
        limit = validate.limit(limit, 20, self.limits.history_limit_max)
        if before_version is not None:
            validate.version(before_version, "before_version")
        versions = await self.store.list_versions(document, limit + 1, before_version)
        more = len(versions) > limit
        versions = versions[:limit]
        return History(
            document=document,  # type: ignore[arg-type]
            versions=[
                VersionSummary(
                    version=v.version,
                    author=v.author,
                    reason=v.reason,
                    created_at=v.created_at,
                    chars=len(v.content),
                    restored_from=v.restored_from,
                    session_id=v.session_id,
                )
                for v in versions
            ],
            next_before_version=versions[-1].version if more else None,
        )

    async def diff(self, document: str, from_version: int, to_version: int) -> Diff:
        validate.document(document)
        a = await self._version(document, validate.version(from_version, "from_version"))
        b = await self._version(document, validate.version(to_version, "to_version"))
        lines = difflib.unified_diff(
            a.content.splitlines(keepends=True),
            b.content.splitlines(keepends=True),
            fromfile=f"{document} v{a.version}",
            tofile=f"{document} v{b.version}",
        )
        text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
        return Diff(document=document, from_version=a.version, to_version=b.version, diff=text)  # type: ignore[arg-type]

    async def _version(self, document: str, version: int) -> DocumentVersion:
        stored = await self.store.get_version(document, version)
        if stored is None:
            latest = await self.store.get_version(document)
            have = f"versions 1 to {latest.version} exist" if latest else "no versions exist yet"
            raise NotFound(f"{document} has no version {version}; {have}")
        return stored

    # Memories ----------------------------------------------------------------------------------

    def _new_memory(
        self,
        content: str,
        actor: Actor,
        kind: str | None,
        tags: list[str] | None,
        importance: int | None,
        occurred_at: str | None,
    ) -> NewMemory:
        content = validate.text(content, "content", self.limits.memory_chars).strip()
        return NewMemory(
            content=content,
            content_key=content_key(content),
            kind=validate.kind(kind),  # type: ignore[arg-type]
            tags=validate.tags(tags, self.limits),
            importance=validate.importance(importance),
            occurred_at=parse_moment(occurred_at, "occurred_at") if occurred_at is not None else now_stored(),
            author=actor.name,
            session_id=actor.session_id,
        )

    async def remember(
        self,
        content: str,
        actor: Actor,
        kind: str | None = None,
        tags: list[str] | None = None,
        importance: int | None = None,
        occurred_at: str | None = None,
    ) -> RememberResult:
        new = self._new_memory(content, actor, kind, tags, importance, occurred_at)
        memory, is_new = await self.store.add_memory(new, now_stored())
        self._changed()
        return RememberResult(memory=memory, is_new=is_new)

    async def get_memory(self, memory_id: str) -> Memory:
        memory_id = validate.memory_id(memory_id)
        memory = await self.store.get_memory(memory_id)
        if memory is None:
            raise NotFound(f"no memory has the id {memory_id!r}; recall lists memories with their ids")
        return memory

    async def forget(self, memory_id: str, reason: str, actor: Actor) -> Memory:
        """Take a memory out of recall. It stays stored and can be restored until purged."""
        reason = validate.reason(reason, self.limits)
        forgotten = await self.store.set_memory_status(
            validate.memory_id(memory_id),
            "forgotten",
            reason,
            now_stored(),
            expect=("active",),
            by=actor.name,
        )
        self._changed(status=True)  # its neighbours are embedded again without its words
        return forgotten

    async def restore_memory(self, memory_id: str, actor: Actor) -> Memory:
        restored = await self.store.set_memory_status(
            validate.memory_id(memory_id), "active", None, now_stored(), expect=("forgotten",), by=actor.name
        )
        self._changed(status=True)
        return restored

    async def purge(self, memory_id: str) -> None:
        """Delete a forgotten memory for good. The only way anything is ever lost."""
        await self.store.purge_memory(validate.memory_id(memory_id))
        self._changed(status=True)  # its position may be reused by the next memory stored

    async def revise(self, memory_id: str, content: str, reason: str, actor: Actor) -> tuple[Memory, Memory]:
        """Store corrected content as a new memory that supersedes the old one (which stays readable)."""
        memory_id = validate.memory_id(memory_id)
        reason = validate.reason(reason, self.limits)
        old = await self.get_memory(memory_id)
        new = self._new_memory(content, actor, old.kind, old.tags, old.importance, old.occurred_at)
        revised = await self.store.revise_memory(memory_id, new, reason, now_stored())
        self._changed(status=True)
        return revised

    async def recall(
        self,
        query: str | None = None,
        limit: int | None = None,
        tags: list[str] | None = None,
        kind: str | None = None,
        since: str | None = None,
        until: str | None = None,
        cursor: str | None = None,
    ) -> RecallResult:
        query = validate.text(query or "", "query", self.limits.query_chars, allow_empty=True).strip()
        limit = validate.limit(limit, 10, self.limits.recall_limit_max)
        tag_list = validate.tags(tags, self.limits)
        kind_ = validate.kind(kind) if kind is not None else None
        since_ = parse_moment(since, "since") if since is not None else None
        until_ = parse_moment(until, "until", end_of_period=True) if until is not None else None
        if since_ and until_ and since_ >= until_:
            raise InvalidInput(f"since ({since}) must be before until ({until})")
        terms = query_terms(query) if query else []
        if query and not terms:
            return RecallResult(
                query=query,
                hits=[],
                note="The query has no words to search for (only punctuation or symbols). "
                "Use words, or an empty query to list recent memories.",
            )
        fingerprint = cursors.fingerprint(terms, tag_list, kind_, since_, until_)
        offset = cursors.decode(cursor, fingerprint) if cursor else 0
        search = SearchQuery(
            terms=tuple(terms),
            text=query,
            tags=tuple(tag_list),
            kind=kind_,
            since=since_,
            until=until_,
            order="relevance" if terms else "recent",
            offset=offset,
            limit=limit + 1,
        )
        if self.semantic is not None and terms:
            self.semantic.start()  # the first recall starts the backfill of older memories
            # Embedded when recall asks for the vector, after its full-text part (QueryVector).
            vector = QueryVector(self.semantic.model, partial(self.semantic.embed_query, query))
            search = replace(search, vector=vector)
        found = await self.recall_engine.search(search)
        hits: list[RecallHit] = []
        size = 0
        for found_hit in found[:limit]:
            hit = _hit(found_hit.memory, found_hit.score, found_hit.context_of)
            size += len(render.hit_line(hit)) + 1
            if hits and size > self.limits.response_chars:
                break  # the page is full; the rest comes with the cursor
            hits.append(hit)
        more = len(found) > len(hits)
        note = None
        if terms and not more and offset + len(hits) >= RANKED_MAX:
            note = (
                f"Recall ranks the best {RANKED_MAX} matches and this is the last of them; "
                "use more specific words or a filter (tags, kind, since, until) to reach others."
            )
        return RecallResult(
            query=query,
            hits=hits,
            next_cursor=cursors.encode(offset + len(hits), fingerprint) if more else None,
            note=note,
        )

    # Wake-up -----------------------------------------------------------------------------------

    async def wake_up(
        self, actor: Actor, focus: str | None = None, budget_chars: int | None = None
    ) -> WakeUp:
        budget = validate.limit(
            budget_chars,
            self.limits.wake_budget_default,
            self.limits.wake_budget_max,
            "budget_chars",
            minimum=self.limits.wake_budget_min,
        )
        if focus is not None:
            focus = validate.text(focus, "focus", self.limits.query_chars, allow_empty=True).strip() or None
        soul = await self.read("soul")
        intent = await self.read("intent")
        north_star = await self.read("north_star")
        identity = await self.read("identity")
        user = await self.read("user")

        relevant: list[RecallHit] = []
        if focus:
            relevant = (await self.recall(focus, limit=8)).hits
        seen = tuple(h.id for h in relevant)
        important = [
            _hit(h.memory)
            for h in await self.recall_engine.search(
                SearchQuery(order="importance", limit=8, exclude_ids=seen)
            )
            if h.memory.importance >= 4
        ]
        seen += tuple(h.id for h in important)
        recent = [
            _hit(h.memory)
            for h in await self.recall_engine.search(SearchQuery(order="recent", limit=8, exclude_ids=seen))
        ]

        if actor.session_id:
            await self.store.record_session(actor.session_id, actor.name, now_stored())
        return assemble_wake_up(
            soul, intent, north_star, focus, relevant, important, recent, budget, identity=identity, user=user
        )

    async def stats(self) -> Stats:
        return await self.store.stats()

    # Indexes -----------------------------------------------------------------------------------

    async def index_embeddings(
        self, progress: Callable[[int, int], None] | None = None, check_text: bool = False
    ) -> int:
        """Embed now, in this task, the active memories that lack an embedding (with `check_text`,
        also those embedded from a text that has changed); 0 when semantic search is off."""
        if self.semantic is None:
            return 0
        return await self.semantic.index(self.store, progress, check_text)  # type: ignore[arg-type]

    async def reindex(self, progress: Callable[[int, int], None] | None = None) -> Reindexed:
        """Rebuild the full-text index, then compute every missing or stale embedding."""
        if not isinstance(self.store, EmbeddingStore):
            raise InvalidInput("this store cannot rebuild its indexes")
        # Rebuilding cannot mend a damaged file; it would only report success on one.
        await self.store.check_intact()
        indexed = await self.store.rebuild_text_index()
        if self.semantic is None:
            return Reindexed(text_indexed=indexed)
        embedded = await self.index_embeddings(progress, check_text=True)
        with_vectors, active = await self.store.embedding_counts(self.semantic.model)
        return Reindexed(
            text_indexed=indexed,
            embedding_model=self.semantic.model,
            embedded=embedded,
            with_embeddings=with_vectors,
            active=active,
        )

    async def active_memories(self) -> list[Memory]:
        """Every active memory, oldest first (by occurred_at, then in the order stored): what an
        export writes, in one read so that it is a consistent snapshot."""
        found = await self.recall_engine.search(SearchQuery(order="recent", limit=2**62))
        return [hit.memory for hit in reversed(found)]

    async def backup(self, path: str | Path, overwrite: bool = False) -> Backup:
        """A consistent copy of the whole self in a new file, safe while servers are writing."""
        target = Path(path).expanduser().absolute()
        if target.is_dir():
            raise InvalidInput(f"{target} is a folder; name a file in it, e.g. {target / 'soul-backup.db'}")
        if not target.parent.is_dir():
            raise InvalidInput(f"the folder {target.parent} does not exist; create it or choose another path")
        if target.exists() and not overwrite:
            raise InvalidInput(
                f"{target} already exists; choose a new file name, or allow overwriting it "
                "(soul-mcp backup --force)"
            )
        return await self.store.backup(target)

    # For the people who run the self (the CLI) -------------------------------------------------

    async def client_activity(self) -> list[ClientActivity]:
        """Each client that left a trace, most recently active first."""
        return await self.store.client_activity()

    async def list_memories(
        self,
        status: str = "active",
        kind: str | None = None,
        tags: list[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        offset: int | None = None,
    ) -> MemoryPage:
        """List memories by status (not ranked, newest first), with filters and paging."""
        if status not in MEMORY_LIST_STATUSES:
            raise InvalidInput(f"unknown status {status!r}; use one of: {', '.join(MEMORY_LIST_STATUSES)}")
        limit = validate.limit(limit, 20, MEMORY_LIST_MAX)
        tag_list = validate.tags(tags, self.limits)
        kind_ = validate.kind(kind) if kind is not None else None
        since_ = parse_moment(since, "since") if since is not None else None
        until_ = parse_moment(until, "until", end_of_period=True) if until is not None else None
        if since_ and until_ and since_ >= until_:
            raise InvalidInput(f"since ({since}) must be before until ({until})")
        if cursor is not None and offset is not None:
            raise InvalidInput("give cursor or offset, not both")
        fingerprint = cursors.fingerprint("list", status, tag_list, kind_, since_, until_)
        if cursor is not None:
            offset = cursors.decode(cursor, fingerprint)
        elif offset is None:
            offset = 0
        elif isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidInput(f"offset {offset!r} is not allowed; use a whole number from 0")
        statuses = ("active", "forgotten", "superseded") if status == "all" else (status,)
        memories, total = await self.store.list_memories(
            statuses, kind_, tuple(tag_list), since_, until_, offset, limit
        )
        more = offset + len(memories) < total
        return MemoryPage(
            status=status,  # type: ignore[arg-type]
            memories=memories,
            total=total,
            offset=offset,
            next_cursor=cursors.encode(offset + len(memories), fingerprint) if more else None,
            next_offset=offset + len(memories) if more else None,
        )

    async def diagnose(self) -> StoreDiagnosis:
        """The store's check of itself (database integrity, schema, full-text index)."""
        return await self.store.diagnose()

    # Bearer tokens for the HTTP server ---------------------------------------------------------

    async def create_token(self, name: str, scopes: list[str] | tuple[str, ...] | str) -> NewToken:
        """A new random token; the store keeps only its hash, so this is the one time it is seen."""
        name = tokens.name(name)
        scope_list = tokens.scopes(scopes)
        token = tokens.new_token()
        info = await self.store.add_token(name, tokens.token_hash(token), scope_list, now_stored())
        return NewToken(info=info, token=token)

    async def list_tokens(self) -> list[TokenInfo]:
        return await self.store.list_tokens()

    async def revoke_token(self, name: str) -> TokenInfo:
        return await self.store.revoke_token(tokens.name(name), now_stored())

    async def check_token(self, token: str) -> TokenInfo | None:
        """The live token this bearer string is, or None (unknown or revoked). Does not record use."""
        if not isinstance(token, str) or not token.startswith(tokens.PREFIX) or len(token) > 200:
            return None
        found = await self.store.find_token(tokens.token_hash(token))
        return found if found is not None and found.revoked_at is None else None

    async def token_used(self, name: str) -> None:
        await self.store.touch_token(name, now_stored())
