"""`soul-mcp token create|list|revoke`: the bearer tokens of the HTTP server, and the OAuth grants
the owner approved (`serve --http --oauth`), named `oauth:N`."""

from __future__ import annotations

import argparse
from typing import Any

from soul_mcp.cli import terminal
from soul_mcp.cli.command import Subcommands, run_on_self
from soul_mcp.cli.output import emit, style


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    token = sub.add_parser(
        "token",
        help="create, list and revoke bearer tokens for the HTTP server",
        description="Bearer tokens for `soul-mcp serve --http`. Scopes: read (wake_up, recall, reading "
        "documents, resources and prompts), write (remember, forget, revise_memory, the intent and user "
        "documents) and identity (the soul, the north star and the identity document). The token's name "
        "is the author of everything written with it.",
    )
    token_sub = token.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = token_sub.add_parser("create", parents=[common], help="make a token and print it (once)")
    p.add_argument("name", help="1 to 64 letters, digits, '.', '_' or '-', e.g. laptop")
    p.add_argument("--scope", default="read,write",
                   help="comma-separated: read, write, identity (default read,write)")  # fmt: skip
    p.set_defaults(func=create)

    p = token_sub.add_parser(
        "list", parents=[common], help="names, scopes, created and last used; OAuth grants with their client"
    )
    p.set_defaults(func=list_)

    p = token_sub.add_parser(
        "revoke", parents=[common], help="stop a token or an OAuth grant from working, at once"
    )
    p.add_argument("name", help="a token's name, or an OAuth grant's (oauth:N, as token list shows it)")
    p.set_defaults(func=revoke)


def create(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        new = await s.create_token(args.name, args.scope)
        info = new.info
        emit(
            args,
            {**info.model_dump(mode="json"), "token": new.token},
            f"Created token {info.name!r} with scopes {', '.join(info.scopes)}.\n"
            "This is the only time it is shown (only its hash is stored); put it in the client's "
            "Authorization header:\n\n"
            f"{new.token}\n\n"
            f"Authorization: Bearer {new.token}",
        )

    return run_on_self(args, work)


def _oauth(s: Any) -> Any:
    from soul_mcp.storage.oauth_rows import OAuthStore

    return s.store if isinstance(s.store, OAuthStore) else None


def _grant_json(g: Any) -> dict[str, Any]:
    return {"name": g.name, "kind": "oauth", "client": g.client_name, "client_id": g.client_id,
            "scopes": list(g.scopes), "created_at": g.created_at, "last_used_at": g.last_used_at,
            "revoked_at": g.revoked_at}  # fmt: skip


def list_(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        found = await s.list_tokens()
        store = _oauth(s)
        grants = await store.list_oauth_grants() if store is not None else []
        if args.json:
            data = [{**t.model_dump(mode="json"), "kind": "static"} for t in found]
            emit(args, data + [_grant_json(g) for g in grants], "")
            return
        if not found and not grants:
            print("No tokens yet. Create one: soul-mcp token create NAME --scope read,write")
            return
        rows = [
            [t.name, "", ",".join(t.scopes), t.created_at, t.last_used_at or "never",
             f"revoked {t.revoked_at}" if t.revoked_at else "active"]
            for t in found
        ] + [
            [g.name, g.client_name, ",".join(g.scopes), g.created_at, g.last_used_at or "never",
             f"revoked {g.revoked_at}" if g.revoked_at else "active"]
            for g in grants
        ]  # fmt: skip
        print(
            terminal.table(
                ["NAME", "OAUTH CLIENT", "SCOPES", "CREATED", "LAST USED", "STATUS"], rows, style()
            )
        )

    return run_on_self(args, work, must_exist=True)


def revoke(args: argparse.Namespace) -> int:
    if args.name.startswith("oauth:"):
        return revoke_grant(args)

    async def work(s: Any) -> None:
        info = await s.revoke_token(args.name)
        emit(args, info, f"Revoked token {info.name!r} ({info.revoked_at}); requests with it now get 401.")

    return run_on_self(args, work, must_exist=True)


def revoke_grant(args: argparse.Namespace) -> int:
    from soul_mcp.core.dates import now_stored
    from soul_mcp.errors import NotFound

    async def work(s: Any) -> None:
        number = args.name.removeprefix("oauth:")
        store = _oauth(s)
        grant = None
        if store is not None and number.isascii() and number.isdigit() and len(number) < 19:
            grant = await store.revoke_oauth_grant(int(number), now_stored())
        if grant is None:
            raise NotFound(f"no OAuth grant is named {args.name!r}; token list shows the names")
        emit(args, _grant_json(grant),
             f"Revoked {grant.name} ({grant.client_name}, {grant.revoked_at}); its tokens now get 401.")  # fmt: skip

    return run_on_self(args, work, must_exist=True)
