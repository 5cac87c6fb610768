"""docs/team.md ("Running for a team") works as written, on a real PostgreSQL (the throwaway cluster).

The page's own command lines are read from its ```sh blocks and run as a user would run them, with
the page's database URL, hosts and ports replaced by the test cluster's and free loopback ports:
tokens made with the CLI, two `serve --http` servers on one database reached with the page's host
name, `migrate` from a SQLite file, and a pg_dump / dropdb / createdb / pg_restore round trip. Each
is checked by reading the database back through another process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import pytest
from conftest import ROOT
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from postgres_cluster import server_binaries

from soul_mcp.cli import build_parser

PAGE = ROOT / "docs" / "team.md"
PAGE_URL = "postgresql://soul@db.internal/soul"
PAGE_HOST_NAME = "soul.example.com"
TIMEOUT = 60


def sh_lines(program: str) -> list[str]:
    """The lines of the page's ```sh blocks that run `program`, in order (without the page's
    `sudo -u postgres`: the test cluster's user is a superuser already)."""
    blocks = re.findall(r"^ *```sh\n(.*?)^ *```", PAGE.read_text(), flags=re.MULTILINE | re.DOTALL)
    lines = [
        line.strip().removeprefix("sudo -u postgres ") for block in blocks for line in block.splitlines()
    ]
    return [line for line in lines if line.split(" ", 1)[0] == program]


def page_command(starts_with: str) -> str:
    (line,) = [line for line in sh_lines(starts_with.split()[0]) if line.startswith(starts_with)]
    return line


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR", "EDITOR"}}
    out["SOUL_MCP_SEMANTIC"] = "off"  # exact recall results: no background embedding
    return out


def run(line: str, url: str, **replace: str) -> subprocess.CompletedProcess[str]:
    """A page line with its URL (and any `replace` text) swapped for the test's; soul-mcp runs as
    `python -m soul_mcp` with this interpreter."""
    line = line.replace(PAGE_URL, url)
    for old, new in replace.items():
        line = line.replace(old, new)
    argv = shlex.split(line)
    if argv[0] == "soul-mcp":
        argv = [sys.executable, "-m", "soul_mcp", *argv[1:]]
    return subprocess.run(argv, capture_output=True, text=True, env=env(), timeout=TIMEOUT)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"{done.args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def cli_json(url: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "soul_mcp", *args, "--json", "--db", url],
        capture_output=True, text=True, env=env(), timeout=TIMEOUT,
    )  # fmt: skip
    return json.loads(ok(done))


def test_every_soul_mcp_command_on_the_page_is_one_the_cli_takes() -> None:
    lines = sh_lines("soul-mcp")
    assert {tuple(shlex.split(line)[1:3]) for line in lines} == {
        ("token", "create"), ("token", "list"), ("serve", "--http"), ("migrate", "--from"),
        ("backup", "soul-2026-12-06.db"),
    }  # fmt: skip
    # and the ones named in the text, with their placeholders filled in
    inline = [c for c in re.findall(r"`(soul-mcp [^`]+)`", PAGE.read_text()) if len(c.split()) > 2]
    assert len(inline) >= 4
    parser = build_parser()
    for line in lines + [c.replace(" N ", " 1 ") for c in inline]:
        parser.parse_args(shlex.split(line)[1:])  # exits (fails the test) on an unknown option


def test_the_page_does_not_tell_of_options_the_serve_command_lacks() -> None:
    serve = page_command("soul-mcp serve")
    args = build_parser().parse_args(shlex.split(serve)[1:])
    assert (args.http, args.allowed_host, args.db) == (True, [PAGE_HOST_NAME], PAGE_URL)


# Two servers on one database, tokens per agent ------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_as_the_page_says(url: str, log: Path) -> Iterator[str]:
    """The page's serve line on a loopback port of its own; yields the server's /mcp URL."""
    port = str(free_port())
    serve = page_command("soul-mcp serve").replace(PAGE_URL, url)
    argv = shlex.split(serve.replace("--host 10.0.0.11", "--host 127.0.0.1").replace("8765", port))
    process = subprocess.Popen(
        [sys.executable, "-m", "soul_mcp", *argv[1:]],
        env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=TIMEOUT)


async def call(server: str, token: str, name: str, arguments: dict[str, Any]) -> Any:
    """One tool call through the SDK's HTTP client, as an agent behind the proxy makes it: the
    proxy passes the page's host name on in the Host header."""
    headers = {"Authorization": f"Bearer {token}", "Host": PAGE_HOST_NAME}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(TIMEOUT)) as http,
        Client(streamable_http_client(server, http_client=http)) as client,
    ):
        return await client.call_tool(name, arguments)


def test_two_servers_on_one_database_serve_each_agent_with_its_own_token(
    postgres_database_url: str, tmp_path: Path
) -> None:
    url = postgres_database_url
    tokens = {}
    for line in sh_lines("soul-mcp"):
        if line.startswith("soul-mcp token create"):
            name = shlex.split(line)[3]
            tokens[name] = re.findall(r"Bearer (soul_\S+)", ok(run(line, url)))[0]
    assert set(tokens) == {"agent-ci", "agent-support"}
    listed = ok(run(page_command("soul-mcp token list"), url))
    assert "agent-ci" in listed and "agent-support" in listed

    with (
        serve_as_the_page_says(url, tmp_path / "app1.log") as app1,
        serve_as_the_page_says(url, tmp_path / "app2.log") as app2,
    ):
        stored = anyio.run(
            call, app1, tokens["agent-ci"], "remember", {"content": "The CI agent ships on Tuesdays"}
        )
        assert not stored.is_error, stored.content
        assert stored.structured_content["memory"]["author"] == "agent-ci"
        # The other server, another agent: the memory is there at once.
        found = anyio.run(call, app2, tokens["agent-support"], "recall", {"query": "ships Tuesdays"})
        assert [h["author"] for h in found.structured_content["hits"]] == ["agent-ci"]
        refused = anyio.run(call, app2, tokens["agent-support"], "remember", {"content": "x"})
        assert refused.is_error and "write" in refused.content[0].text

        # The proxy's health check names the server by its address: /healthz answers it.
        health = app1.replace("/mcp", "/healthz")
        assert httpx2.get(health, headers={"Host": "10.0.0.11:8765"}).json() == {"status": "ok"}
        # A name other than --allowed-host is refused (DNS-rebinding protection stays on).
        other = httpx2.post(
            app1,
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            headers={"Authorization": f"Bearer {tokens['agent-support']}", "Host": "elsewhere.example.com",
                     "Accept": "application/json, text/event-stream"},
        )  # fmt: skip
        assert other.status_code == 421

        # Revoked with the page's command, on both servers at the next request.
        revoke = f"soul-mcp token revoke agent-ci --db {PAGE_URL}"
        assert revoke in PAGE.read_text()
        ok(run(revoke, url))
        for server in (app1, app2):
            answer = httpx2.post(
                server,
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={"Authorization": f"Bearer {tokens['agent-ci']}", "Host": PAGE_HOST_NAME,
                         "Accept": "application/json, text/event-stream"},
            )  # fmt: skip
            assert answer.status_code == 401


# Moving a self in, backups ---------------------------------------------------------------------------


def test_a_sqlite_self_moves_in_with_the_pages_migrate_command(
    postgres_database_url: str, tmp_path: Path
) -> None:
    sqlite_file = tmp_path / "soul.db"
    cli_json(str(sqlite_file), "remember", "Maya reviews the release notes", "--tag", "release")
    line = page_command("soul-mcp migrate")
    ok(run(line, postgres_database_url, **{"~/.local/share/soul-mcp/soul.db": str(sqlite_file)}))
    hits = cli_json(postgres_database_url, "recall", "release notes")["hits"]
    assert [(h["content"], h["tags"]) for h in hits] == [("Maya reviews the release notes", ["release"])]


def test_the_pages_backup_writes_a_sqlite_copy_of_the_self(
    postgres_database_url: str, tmp_path: Path
) -> None:
    cli_json(postgres_database_url, "remember", "The backup keeps this memory", "--tag", "ops")
    line = page_command("soul-mcp backup")
    ok(run(line, postgres_database_url, **{"soul-2026-12-06.db": str(tmp_path / "copy.db")}))
    # An ordinary SQLite self, read by another process without the database server.
    hits = cli_json(str(tmp_path / "copy.db"), "recall", "backup keeps")["hits"]
    assert [(h["content"], h["tags"]) for h in hits] == [("The backup keeps this memory", ["ops"])]


@pytest.fixture
def postgres_tools(postgres_database_url: str) -> Iterator[dict[str, str]]:
    """PATH with the cluster's client programs first, and PG* settings that reach the cluster."""
    binaries = server_binaries()
    assert binaries is not None
    parts = urlsplit(postgres_database_url)
    yield {
        "PATH": f"{binaries}{os.pathsep}{os.environ['PATH']}",
        "PGHOST": parts.hostname or "",
        "PGPORT": str(parts.port),
        "PGUSER": parts.username or "",
    }


def test_the_pages_dump_and_restore_bring_the_self_back(
    postgres_database_url: str, postgres_tools: dict[str, str], tmp_path: Path
) -> None:
    url = postgres_database_url
    database = urlsplit(url).path.lstrip("/")
    cli_json(url, "remember", "The support agent answers in English and French")
    soul = tmp_path / "soul.md"
    soul.write_text("I keep the team's memory.\n")
    # `soul edit` runs $EDITOR on the document's file: here a copy of ours over it.
    edit = [sys.executable, "-m", "soul_mcp", "soul", "edit", "--reason", "first", "--db", url]
    ok(subprocess.run(edit, capture_output=True, text=True, env={**env(), "EDITOR": f"cp {soul}"}))
    before = cli_json(url, "stats")

    def page_line(program: str, index: int = 0) -> list[str]:
        line = sh_lines(program)[index].replace(PAGE_URL, url)
        argv = shlex.split(line)
        if program in {"dropdb", "createdb"}:  # the page's database name, "soul", is the last word
            assert argv[-1] == "soul"
            argv[-1] = database
        return argv

    def shell(argv: list[str]) -> None:
        done = subprocess.run(
            argv, capture_output=True, text=True, cwd=tmp_path, timeout=TIMEOUT,
            env={**env(), **postgres_tools},
        )  # fmt: skip
        assert done.returncode == 0, f"{argv}: {done.stderr}"

    shell(page_line("pg_dump"))
    assert (tmp_path / "soul.dump").stat().st_size > 0
    shell(page_line("dropdb"))
    with pytest.raises(AssertionError):  # gone: the restore below is what brings it back
        cli_json(url, "stats")
    shell(page_line("createdb", 1))  # [0] is the first createdb, of the setup
    shell(page_line("pg_restore"))

    after = cli_json(url, "stats")
    for key in ("memories_active", "document_versions", "clients"):
        assert after[key] == before[key]
    assert [h["content"] for h in cli_json(url, "recall", "French")["hits"]] == [
        "The support agent answers in English and French"
    ]
    assert cli_json(url, "soul", "show")["content"] == "I keep the team's memory.\n"
    ok(run(f"soul-mcp remember 'written after the restore' --db {PAGE_URL}", url))  # still writable


def test_the_pages_multi_host_url_connects(postgres_database_url: str) -> None:
    """The failover URL's form: two host names, libpq picks the writable one."""
    (page_url,) = re.findall(r"`(postgresql://soul@db1\S+)`", PAGE.read_text())
    parts = urlsplit(postgres_database_url)
    test_url = page_url.replace("db1.internal,db2.internal", "127.0.0.1,localhost").replace(
        "/soul?", f"{parts.path}?port={parts.port},{parts.port}&"
    )
    assert cli_json(test_url, "stats")["memories_active"] == 0
