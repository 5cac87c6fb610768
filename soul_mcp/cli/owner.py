"""`soul-mcp owner set`: the passphrase with which the owner approves OAuth clients on the consent
page of `serve --http --oauth`. Set on this machine, so nobody on the network can set it."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from soul_mcp.cli.command import Subcommands, run_on_self
from soul_mcp.cli.output import emit
from soul_mcp.errors import InvalidInput, StorageError


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    owner = sub.add_parser(
        "owner",
        help="the owner passphrase that approves OAuth clients (serve --http --oauth)",
        description="The owner passphrase: typed on the consent page of `serve --http --oauth` to approve a "
        "client (a custom connector). Only a scrypt hash of it is stored. At a terminal it is asked twice; "
        "otherwise it is read from the first line of stdin.",
    )
    owner_sub = owner.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = owner_sub.add_parser("set", parents=[common], help="set or change the owner passphrase")
    p.set_defaults(func=set_passphrase)


def read_passphrase() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Owner passphrase (at least 12 characters): ")
    if getpass.getpass("Again: ") != first:
        raise InvalidInput("the two passphrases differ; nothing was changed")
    return first


def set_passphrase(args: argparse.Namespace) -> int:
    from soul_mcp.core import tokens
    from soul_mcp.core.dates import now_stored
    from soul_mcp.storage.oauth_rows import OAuthStore

    async def work(s: Any) -> None:
        passphrase = read_passphrase()
        hashed = tokens.passphrase_hash(passphrase)  # refuses a short one before anything is written
        store = s.store
        if not isinstance(store, OAuthStore):
            raise StorageError(f"{type(store).__name__} keeps no owner passphrase")
        await store.set_owner_secret(hashed, now_stored())
        emit(args, {"owner_passphrase": "set"},
             "The owner passphrase is set (only its scrypt hash is stored). Approve clients with it on the "
             "consent page of `soul-mcp serve --http --oauth`.")  # fmt: skip

    return run_on_self(args, work)
