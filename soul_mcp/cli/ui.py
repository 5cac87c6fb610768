"""`soul-mcp ui`: the web page on loopback, behind a one-time link (soul_mcp/web/)."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from typing import Any

from soul_mcp.cli.command import Subcommands, database_problem
from soul_mcp.cli.output import EXIT_DATABASE, EXIT_OK, EXIT_USAGE, error, refuse
from soul_mcp.cli.serve import port
from soul_mcp.config import Settings
from soul_mcp.errors import StorageError

log = logging.getLogger("soul_mcp")


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "ui",
        parents=[common],
        help="open the web page to see and tend the self (on this machine only)",
        description="Serve the web page on loopback and open it in the browser. It prints one line, "
        "the link to open: it logs in once (so another user of this machine, or a web page, "
        "cannot use it). Changes made on the page are recorded as web:<your user name>. "
        "Ctrl-C stops it. To reach it from another machine, use `soul-mcp serve --http` (/ui).",
    )
    p.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=lambda text: 0 if text == "0" else port(text), default=0,
                   help="port (default 0: a free one)")  # fmt: skip
    p.add_argument("--no-browser", action="store_true", help="print the link without opening a browser")
    p.set_defaults(func=ui)


def author() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no user name on some containers
        user = "user"
    return f"web:{user}"


def ui(args: argparse.Namespace) -> int:
    from soul_mcp.server.http import BindError, bind, is_loopback

    settings = Settings.load(args.db)
    if not is_loopback(args.host):
        error(f"--host {args.host} is not a loopback address; the page serves this machine only "
              "(for other machines: soul-mcp serve --http, whose pages are under /ui)")  # fmt: skip
        return EXIT_USAGE
    if problem := database_problem(settings, must_exist=True):
        error(problem)
        return EXIT_DATABASE
    try:
        sockets = bind(args.host.strip("[]"), args.port)
    except BindError as exc:
        return refuse(str(exc))
    try:
        return serve(settings, args, sockets)
    except StorageError as exc:
        error(str(exc))
        return EXIT_DATABASE


def serve(settings: Settings, args: argparse.Namespace, sockets: list[Any]) -> int:
    import asyncio

    import anyio
    import uvicorn

    from soul_mcp.core import AgentSelf
    from soul_mcp.web.app import local_app

    class Server(uvicorn.Server):
        """Tells the page's live streams to end when a stop begins, so Ctrl-C is quick."""

        def __init__(self, config: uvicorn.Config, stopping: anyio.Event) -> None:
            super().__init__(config)
            self.stopping = stopping
            self.loop = asyncio.get_running_loop()

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self.loop.call_soon_threadsafe(self.stopping.set)  # called from a signal handler

    async def main() -> None:
        stopping = anyio.Event()
        await (await AgentSelf.open(settings)).close()  # a database that cannot open stops us here
        app, key = local_app(settings, author(), stopping)
        for sock in sockets:  # the link works as soon as it is printed: connections wait in the backlog
            sock.listen(2048)
        bound = sockets[0].getsockname()
        host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{host}:{bound[1]}/ui/login?key={key.key}"
        print(f"soul-mcp ui: {url}", flush=True)
        if not args.no_browser:
            import webbrowser

            webbrowser.open(url)
        config = uvicorn.Config(app, log_config=None, server_header=False, timeout_graceful_shutdown=5)
        log.info("serving the page on %s, database %s", host, settings.shown_db)
        await Server(config, stopping).serve(sockets)

    anyio.run(main)
    sys.stdout.flush()
    return EXIT_OK
