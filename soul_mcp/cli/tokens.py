"""`soul-mcp token create|list|revoke`: the bearer tokens of the HTTP server."""

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

    p = token_sub.add_parser("list", parents=[common], help="names, scopes, created and last used")
    p.set_defaults(func=list_)

    p = token_sub.add_parser("revoke", parents=[common], help="stop a token from working, at once")
    p.add_argument("name")
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


def list_(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        found = await s.list_tokens()
        if args.json:
            emit(args, [t.model_dump(mode="json") for t in found], "")
            return
        if not found:
            print("No tokens yet. Create one: soul-mcp token create NAME --scope read,write")
            return
        rows = [
            [t.name, ",".join(t.scopes), t.created_at, t.last_used_at or "never",
             f"revoked {t.revoked_at}" if t.revoked_at else "active"]
            for t in found
        ]  # fmt: skip
        print(terminal.table(["NAME", "SCOPES", "CREATED", "LAST USED", "STATUS"], rows, style()))

    return run_on_self(args, work, must_exist=True)


def revoke(args: argparse.Namespace) -> int:
    async def work(s: Any) -> None:
        info = await s.revoke_token(args.name)
        emit(args, info, f"Revoked token {info.name!r} ({info.revoked_at}); requests with it now get 401.")

    return run_on_self(args, work, must_exist=True)
