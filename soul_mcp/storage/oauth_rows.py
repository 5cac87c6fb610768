"""The rows of the OAuth authorization server (`serve --http --oauth`): clients, codes, grants,
tokens and the owner's passphrase hash, the same SQL for SQLite and PostgreSQL.

A grant is what the owner approved for one client: its scopes, and the author name of its writes
(the client's name). Its tokens (access and refresh) and its pending codes are kept only as
SHA-256 hashes, like the static tokens: each is 32 random bytes, so a hash cannot be reversed by
guessing. A refresh token is marked used when it is exchanged (rotation): presented again, it
shows that two parties hold it, and the grant ends. Revoking a grant ends all its tokens at once.

Both stores run the statements below on the connection their `_transaction()` yields and through
their `_fetchall()`; only the placeholder differs (`?` in SQLite, `%s` in psycopg).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class OAuthCode:
    """An authorization code the owner approved, not yet exchanged."""

    client_id: str
    scopes: tuple[str, ...]
    redirect_uri: str
    redirect_uri_explicit: bool
    code_challenge: str
    resource: str | None
    expires_at: int  # unix seconds


@dataclass(frozen=True)
class OAuthGrant:
    """One approval by the owner: a client, its scopes, and its tokens' life."""

    id: int
    client_id: str
    client_name: str
    scopes: tuple[str, ...]
    resource: str | None
    created_at: str
    last_used_at: str | None
    revoked_at: str | None

    @property
    def name(self) -> str:
        # ':' is never in a static token's name, so `token revoke` tells the two apart.
        return f"oauth:{self.id}"


@dataclass(frozen=True)
class OAuthTokenRow:
    """An access or refresh token found by its hash, with its grant."""

    kind: str  # "access" or "refresh"
    expires_at: int  # unix seconds
    used_at: str | None  # refresh tokens: when exchanged (then never valid again)
    grant: OAuthGrant


@dataclass(frozen=True)
class IssuedTokens:
    """The hashes and expiries of a new access and refresh token pair (unix seconds)."""

    issued_at: int
    access_hash: str
    access_expires_at: int
    refresh_hash: str
    refresh_expires_at: int


@runtime_checkable
class OAuthStore(Protocol):
    """What the authorization server keeps (SQLiteStore and PostgresStore implement it)."""

    async def save_oauth_client(
        self, client_id: str, client_name: str, registration: str, created_at: str
    ) -> None: ...

    async def unapproved_oauth_clients(self, registered_before: str) -> int: ...

    async def oauth_client(self, client_id: str) -> str | None:
        """The client's registration (JSON), or None."""
        ...

    async def add_oauth_code(self, code_hash: str, code: OAuthCode) -> None: ...

    async def find_oauth_code(self, code_hash: str) -> OAuthCode | None: ...

    async def redeem_oauth_code(
        self, code_hash: str, client_name: str, scopes: tuple[str, ...], tokens: IssuedTokens, now: str
    ) -> OAuthGrant | None:
        """Use the code once: delete it, make its grant and first tokens; None if it was used."""
        ...

    async def find_oauth_token(self, token_hash: str) -> OAuthTokenRow | None: ...

    async def rotate_oauth_refresh(self, refresh_hash: str, tokens: IssuedTokens, now: str) -> bool:
        """Mark the refresh token used and add the new pair to its grant; False if it was used."""
        ...

    async def revoke_oauth_grant(self, grant_id: int, now: str) -> OAuthGrant | None: ...

    async def list_oauth_grants(self) -> list[OAuthGrant]: ...

    async def touch_oauth_grant(self, grant_id: int, used_at: str) -> None: ...

    async def set_owner_secret(self, secret_hash: str, now: str) -> None: ...

    async def owner_secret(self) -> str | None: ...


GRANT_COLUMNS = (
    "g.id, g.client_id, g.client_name, g.scopes, g.resource, g.created_at, g.last_used_at, g.revoked_at"
)
CODE_COLUMNS = "client_id, scopes, redirect_uri, redirect_uri_explicit, code_challenge, resource, expires_at"


def _scopes(text: str) -> tuple[str, ...]:
    return tuple(s for s in text.split(",") if s)


def _grant(row: Sequence[Any]) -> OAuthGrant:
    id_, client_id, client_name, scopes, resource, created_at, last_used_at, revoked_at = row
    return OAuthGrant(
        int(id_), client_id, client_name, _scopes(scopes), resource, created_at, last_used_at, revoked_at
    )


def _code(row: Sequence[Any]) -> OAuthCode:
    client_id, scopes, redirect_uri, explicit, challenge, resource, expires_at = row
    return OAuthCode(
        client_id, _scopes(scopes), redirect_uri, bool(explicit), challenge, resource, int(expires_at)
    )


class OAuthRows:
    """The OAuthStore methods, over a store's `_transaction()` and `_fetchall()`."""

    PARAM = "?"

    if TYPE_CHECKING:  # the store's own
        _fetchall: Callable[..., Awaitable[list[tuple[Any, ...]]]]
        _transaction: Callable[[], AbstractAsyncContextManager[Any]]

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self.PARAM)

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return await self._fetchall(self._sql(sql), tuple(params))

    @staticmethod
    async def _run(db: Any, sql: str, params: Sequence[Any]) -> list[Any]:
        cursor = await db.execute(sql, tuple(params))
        return list(await cursor.fetchall()) if cursor.description else []

    async def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[list[Any]]:
        async with self._transaction() as db:
            return [await self._run(db, self._sql(sql), params) for sql, params in statements]

    # Clients -----------------------------------------------------------------------------------

    async def save_oauth_client(
        self, client_id: str, client_name: str, registration: str, created_at: str
    ) -> None:
        await self._write(
            # Again for a client ID metadata document fetched anew: the latest one counts.
            [("INSERT INTO oauth_clients (client_id, client_name, registration, created_at) VALUES (?, ?, ?, ?) "
              "ON CONFLICT (client_id) DO UPDATE SET client_name = excluded.client_name, "
              "registration = excluded.registration",
              (client_id, client_name, registration, created_at))]
        )  # fmt: skip

    async def unapproved_oauth_clients(self, registered_before: str) -> int:
        """Drops the registrations made before `registered_before` that the owner never approved
        (registration is open to anyone), and counts the ones left."""
        unapproved = "NOT EXISTS (SELECT 1 FROM oauth_grants g WHERE g.client_id = oauth_clients.client_id)"
        await self._write(
            [(f"DELETE FROM oauth_clients WHERE created_at < ? AND {unapproved}", (registered_before,))]
        )
        rows = await self._fetch(f"SELECT count(*) FROM oauth_clients WHERE {unapproved}", ())
        return int(rows[0][0])

    async def oauth_client(self, client_id: str) -> str | None:
        rows = await self._fetch("SELECT registration FROM oauth_clients WHERE client_id = ?", (client_id,))
        return str(rows[0][0]) if rows else None

    # Codes -------------------------------------------------------------------------------------

    async def add_oauth_code(self, code_hash: str, code: OAuthCode) -> None:
        await self._write(
            [(f"INSERT INTO oauth_codes (code_hash, {CODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
              (code_hash, code.client_id, ",".join(code.scopes), code.redirect_uri,
               int(code.redirect_uri_explicit), code.code_challenge, code.resource, code.expires_at))]
        )  # fmt: skip

    async def find_oauth_code(self, code_hash: str) -> OAuthCode | None:
        rows = await self._fetch(f"SELECT {CODE_COLUMNS} FROM oauth_codes WHERE code_hash = ?", (code_hash,))
        return _code(rows[0]) if rows else None

    async def redeem_oauth_code(
        self, code_hash: str, client_name: str, scopes: tuple[str, ...], tokens: IssuedTokens, now: str
    ) -> OAuthGrant | None:
        async with self._transaction() as db:
            deleted = await self._run(
                db,
                self._sql(f"DELETE FROM oauth_codes WHERE code_hash = ? RETURNING {CODE_COLUMNS}"),
                (code_hash,),
            )
            if not deleted:
                return None
            code = _code(deleted[0])
            inserted = await self._run(
                db,
                self._sql(
                    "INSERT INTO oauth_grants (client_id, client_name, scopes, resource, created_at) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING id"
                ),
                (code.client_id, client_name, ",".join(scopes), code.resource, now),
            )
            grant_id = int(inserted[0][0])
            await self._add_tokens(db, grant_id, tokens)
            # Codes nobody exchanged are no use to anyone.
            await self._run(
                db, self._sql("DELETE FROM oauth_codes WHERE expires_at < ?"), (tokens.issued_at,)
            )
        return OAuthGrant(grant_id, code.client_id, client_name, scopes, code.resource, now, None, None)

    async def _add_tokens(self, db: Any, grant_id: int, tokens: IssuedTokens) -> None:
        insert = self._sql(
            "INSERT INTO oauth_tokens (token_hash, grant_id, kind, expires_at) VALUES (?, ?, ?, ?)"
        )
        await self._run(db, insert, (tokens.access_hash, grant_id, "access", tokens.access_expires_at))
        await self._run(db, insert, (tokens.refresh_hash, grant_id, "refresh", tokens.refresh_expires_at))

    # Tokens and grants -------------------------------------------------------------------------

    async def find_oauth_token(self, token_hash: str) -> OAuthTokenRow | None:
        rows = await self._fetch(
            f"SELECT t.kind, t.expires_at, t.used_at, {GRANT_COLUMNS} FROM oauth_tokens t "
            "JOIN oauth_grants g ON g.id = t.grant_id WHERE t.token_hash = ?",
            (token_hash,),
        )
        if not rows:
            return None
        kind, expires_at, used_at, *grant = rows[0]
        return OAuthTokenRow(kind, int(expires_at), used_at, _grant(grant))

    async def rotate_oauth_refresh(self, refresh_hash: str, tokens: IssuedTokens, now: str) -> bool:
        async with self._transaction() as db:
            used = await self._run(
                db,
                self._sql(
                    "UPDATE oauth_tokens SET used_at = ? WHERE token_hash = ? AND kind = 'refresh' "
                    "AND used_at IS NULL RETURNING grant_id"
                ),
                (now, refresh_hash),
            )
            if not used:
                return False
            grant_id = int(used[0][0])
            # The grant's older access tokens work until they expire; a used refresh token stays
            # until its own expiry, so that a replay is recognised.
            await self._run(
                db, self._sql("DELETE FROM oauth_tokens WHERE grant_id = ? AND expires_at < ?"),
                (grant_id, tokens.issued_at),
            )  # fmt: skip
            await self._add_tokens(db, grant_id, tokens)
        return True

    async def revoke_oauth_grant(self, grant_id: int, now: str) -> OAuthGrant | None:
        async with self._transaction() as db:
            await self._run(
                db, self._sql("UPDATE oauth_grants SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"),
                (now, grant_id),
            )  # fmt: skip
            # The tokens go: a revoked grant's hashes serve nobody.
            await self._run(db, self._sql("DELETE FROM oauth_tokens WHERE grant_id = ?"), (grant_id,))
            rows = await self._run(
                db, self._sql(f"SELECT {GRANT_COLUMNS} FROM oauth_grants g WHERE g.id = ?"), (grant_id,)
            )
        return _grant(rows[0]) if rows else None

    async def list_oauth_grants(self) -> list[OAuthGrant]:
        rows = await self._fetch(f"SELECT {GRANT_COLUMNS} FROM oauth_grants g ORDER BY g.id", ())
        return [_grant(row) for row in rows]

    async def touch_oauth_grant(self, grant_id: int, used_at: str) -> None:
        await self._write([("UPDATE oauth_grants SET last_used_at = ? WHERE id = ?", (used_at, grant_id))])

    # The owner ---------------------------------------------------------------------------------

    async def set_owner_secret(self, secret_hash: str, now: str) -> None:
        await self._write(
            [("DELETE FROM oauth_owner", ()),
             ("INSERT INTO oauth_owner (id, secret_hash, set_at) VALUES (1, ?, ?)", (secret_hash, now))]
        )  # fmt: skip

    async def owner_secret(self) -> str | None:
        rows = await self._fetch("SELECT secret_hash FROM oauth_owner WHERE id = 1", ())
        return str(rows[0][0]) if rows else None


class PostgresOAuthRows(OAuthRows):
    PARAM = "%s"
