"""Hostile workspaces: links, FIFOs, devices and huge files on import; links in the way on export;
authors claimed by import markers.

Driven through the CLI in process (`main([...])` with capsys) and through import_workspace /
export_workspace on real SQLite files in tmp_path.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from soul_mcp.cli import main
from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.errors import InvalidInput
from soul_mcp.models import Actor, Memory
from soul_mcp.workspace import (
    MEMORY_FILE_BYTES,
    _read_text,
    export_workspace,
    import_workspace,
)

ME = Actor(name="cli:maya")
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
LINK_OUT = "(a link that leads out of the workspace: never read)"
LINK_IN = "(a symbolic link; pass --follow-links to read links that stay inside the workspace)"

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A private key outside the workspace, readable by its owner only."""
    (tmp_path / "home" / ".ssh").mkdir(parents=True)
    key = tmp_path / "home" / ".ssh" / "id_ed25519"
    key.write_text(KEY, encoding="utf-8")
    key.chmod(0o600)
    return key


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    root = tmp_path / "ws"
    (root / "memory").mkdir(parents=True)
    (root / "USER.md").write_text("# USER.md\n- Name: Maya\n", encoding="utf-8")
    (root / "memory" / "2026-11-19.md").write_text("- A real note\n", encoding="utf-8")
    return root


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "soul.db"


def run(*args: str) -> int:
    return main([*args])


def in_self(db: Path, work):  # type: ignore[no-untyped-def]
    """Run `work(agent_self)` on the database, as another process would see it."""

    async def go():  # type: ignore[no-untyped-def]
        agent = await AgentSelf.open(Settings(db_path=db))
        try:
            return await work(agent)
        finally:
            await agent.close()

    return anyio.run(go)


def soul(db: Path) -> str:
    async def read(agent: AgentSelf) -> str:
        return (await agent.read("soul")).content

    return in_self(db, read)


def write_soul(db: Path, text: str) -> None:
    async def write(agent: AgentSelf) -> None:
        await agent.write("soul", text, ME, reason="first")

    in_self(db, write)


def memories(db: Path) -> list[Memory]:
    async def active(agent: AgentSelf) -> list[Memory]:
        return await agent.active_memories()

    return in_self(db, active)


def guarded(args: list[str], fifos: list[Path], seconds: float = 20) -> int:
    """main(args) on a thread; if it is still running after `seconds` it is stuck on a FIFO: open
    each FIFO for writing (which releases a blocked reader with end-of-file) and fail."""
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(main(args)), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in fifos:
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(seconds)
        pytest.fail(f"soul-mcp {' '.join(args[:2])} hung on a FIFO")
    return result[0]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


# Import: links --------------------------------------------------------------------------------------


def test_soul_linked_to_a_private_key_is_not_imported_and_the_dry_run_says_so(
    ws: Path, db: Path, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_soul(db, "I am Ada.\n")
    (ws / "SOUL.md").symlink_to(secret)

    assert run("import", str(ws), "--dry-run", "--db", str(db)) == 0
    dry = capsys.readouterr().out
    assert f"Not imported: SOUL.md {LINK_OUT}" in dry
    assert "SOUL.md -> soul" not in dry

    assert run("import", str(ws), "--dry-run", "--json", "--db", str(db)) == 0
    assert f"SOUL.md {LINK_OUT}" in json.loads(capsys.readouterr().out)["not_imported"]

    assert run("import", str(ws), "--db", str(db)) == 0
    done = capsys.readouterr().out
    assert f"SOUL.md {LINK_OUT}" in done and "USER.md -> user: updated" in done
    assert soul(db) == "I am Ada.\n"
    assert all("PRIVATE KEY" not in m.content for m in memories(db))
    assert secret.read_text(encoding="utf-8") == KEY


def test_a_day_file_linked_to_etc_passwd_is_not_a_memory(
    ws: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (ws / "memory" / "2026-11-20.md").symlink_to("/etc/passwd")
    assert run("import", str(ws), "--db", str(db)) == 0
    assert f"memory/2026-11-20.md {LINK_OUT}" in capsys.readouterr().out
    assert [m.content for m in memories(db)] == ["A real note"]


def test_a_memory_folder_that_is_a_link_is_not_followed(
    ws: Path, db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "2026-11-20.md").write_text("- someone else's diary\n", encoding="utf-8")
    (ws / "memory" / "2026-11-19.md").unlink()
    (ws / "memory").rmdir()
    (ws / "memory").symlink_to(elsewhere, target_is_directory=True)
    for flags in ([], ["--follow-links"]):
        assert run("import", str(ws), "--db", str(db), *flags) == 0
        assert f"memory/ {LINK_OUT}" in capsys.readouterr().out
        assert memories(db) == []


def test_follow_links_reads_links_inside_the_workspace_but_never_out(
    ws: Path, db: Path, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (ws / "drafts").mkdir()
    (ws / "drafts" / "soul-v2.md").write_text("I am Ada, second draft.\n", encoding="utf-8")
    (ws / "drafts" / "day.md").write_text("- A linked note\n", encoding="utf-8")
    (ws / "SOUL.md").symlink_to("drafts/soul-v2.md")
    (ws / "memory" / "2026-11-20.md").symlink_to("../drafts/day.md")
    (ws / "IDENTITY.md").symlink_to(secret)
    (ws / "memory" / "2026-11-21.md").symlink_to(secret)

    assert run("import", str(ws), "--dry-run", "--db", str(db)) == 0
    without = capsys.readouterr().out
    assert f"SOUL.md {LINK_IN}" in without and f"memory/2026-11-20.md {LINK_IN}" in without

    assert run("import", str(ws), "--follow-links", "--db", str(db)) == 0
    out = capsys.readouterr().out
    assert "SOUL.md -> soul: updated" in out
    assert f"IDENTITY.md {LINK_OUT}" in out and f"memory/2026-11-21.md {LINK_OUT}" in out
    assert soul(db) == "I am Ada, second draft.\n"
    assert sorted(m.content for m in memories(db)) == ["A linked note", "A real note"]


# Import: FIFOs, devices, size ------------------------------------------------------------------------


@needs_fifo
def test_a_fifo_in_memory_does_not_hang_the_import(
    ws: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = ws / "memory" / "2026-11-20.md"
    os.mkfifo(fifo)
    assert guarded(["import", str(ws), "--dry-run", "--db", str(db)], [fifo]) == 0
    assert "memory/2026-11-20.md (not a regular file)" in capsys.readouterr().out
    assert guarded(["import", str(ws), "--db", str(db)], [fifo]) == 0
    assert "memory/2026-11-20.md (not a regular file)" in capsys.readouterr().out
    assert [m.content for m in memories(db)] == ["A real note"]


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
@pytest.mark.parametrize("follow", [False, True])
def test_a_link_to_dev_zero_is_refused_without_reading_it(
    ws: Path, db: Path, follow: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    (ws / "memory" / "2026-11-20.md").symlink_to("/dev/zero")
    (ws / "SOUL.md").symlink_to("/dev/zero")
    assert run("import", str(ws), "--db", str(db), *(["--follow-links"] if follow else [])) == 0
    out = capsys.readouterr().out
    assert f"SOUL.md {LINK_OUT}" in out and f"memory/2026-11-20.md {LINK_OUT}" in out


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_a_file_swapped_for_a_device_or_a_link_after_listing_is_not_read(tmp_path: Path) -> None:
    # What import does after listing: open without following, then check the descriptor.
    with pytest.raises(InvalidInput, match=r"SOUL\.md stopped being a regular file during the import"):
        _read_text(Path("/dev/zero"), "SOUL.md", 100, "at most 100 bytes")
    (tmp_path / "SOUL.md").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match=r"SOUL\.md became a symbolic link during the import"):
        _read_text(tmp_path / "SOUL.md", "SOUL.md", 100, "at most 100 bytes")


def test_an_oversized_document_is_refused_with_its_limit_before_anything_is_written(
    ws: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (ws / "SOUL.md").write_bytes(b"x" * 80_004)
    assert run("import", str(ws), "--db", str(db)) == 1
    assert capsys.readouterr().err == (
        "error: SOUL.md has 80,004 bytes; a document file may hold at most 80,003 bytes (the document "
        "limit is 20,000 characters, SOUL_MCP_MAX_DOCUMENT_CHARS); nothing was imported\n"
    )
    assert memories(db) == []


def test_an_oversized_memory_file_is_refused_without_being_read(
    ws: Path, db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    huge = ws / "memory" / "2026-11-20.md"
    with huge.open("wb") as file:
        file.truncate(MEMORY_FILE_BYTES + 1)  # sparse: no disk used, and never read
    assert run("import", str(ws), "--dry-run", "--db", str(db)) == 1
    assert capsys.readouterr().err == (
        "error: memory/2026-11-20.md has 67,108,865 bytes; a memory file may hold at most 64 MiB; "
        "split it into several memory/YYYY-MM-DD.md files; nothing was imported\n"
    )


# Export: links in the way, permissions ---------------------------------------------------------------


@pytest.fixture
async def agent(db: Path):
    agent = await AgentSelf.open(Settings(db_path=db))
    await agent.write("soul", "I am Ada.\n", ME, reason="first")
    await agent.remember("New year", ME, occurred_at="2026-01-01T10:00:00Z")
    try:
        yield agent
    finally:
        await agent.close()


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["memory/2026-01-01.md", "SOUL.md"])
async def test_export_does_not_write_through_a_link_to_a_file_outside(
    agent: AgentSelf, tmp_path: Path, secret: Path, name: str
) -> None:
    out = tmp_path / "out"
    (out / "memory").mkdir(parents=True)
    (out / name).symlink_to(secret)
    before = secret.stat()
    for dry_run in (True, False):
        with pytest.raises(
            InvalidInput,
            match=f"{out / name} is a symbolic link; export does not write through links: remove it or "
            "export into another folder; nothing was written",
        ):
            await export_workspace(agent, out, force=True, dry_run=dry_run)
    assert secret.read_text(encoding="utf-8") == KEY
    assert (secret.stat().st_mode, secret.stat().st_mtime_ns) == (before.st_mode, before.st_mtime_ns)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted(["memory", name])


@pytest.mark.anyio
async def test_export_does_not_write_into_a_memory_folder_that_is_a_link(
    agent: AgentSelf, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "memory").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(InvalidInput, match=f"{out / 'memory'} is a symbolic link; export does not write"):
        await export_workspace(agent, out, force=True)
    assert list(elsewhere.iterdir()) == [] and sorted(p.name for p in out.iterdir()) == ["memory"]


@needs_fifo
def test_export_refuses_a_fifo_where_a_file_goes(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_soul(db, "I am Ada.\n")
    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / "SOUL.md")
    assert guarded(["export", str(out), "--force", "--db", str(db)], [out / "SOUL.md"]) == 1
    assert "SOUL.md is not a regular file; export replaces only regular files" in capsys.readouterr().err


@pytest.mark.anyio
async def test_export_into_a_linked_folder_follows_the_folder_the_user_gave(
    agent: AgentSelf, tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real", target_is_directory=True)
    await export_workspace(agent, tmp_path / "alias")
    assert (tmp_path / "real" / "SOUL.md").read_text(encoding="utf-8") == "I am Ada.\n"


@pytest.mark.anyio
async def test_export_creates_private_folders_and_files(
    agent: AgentSelf, tmp_path: Path, umask_022: None
) -> None:
    out = tmp_path / "new" / "out"
    await export_workspace(agent, out)
    for folder in (tmp_path / "new", out, out / "memory"):
        assert folder.stat().st_mode & 0o777 == 0o700, folder
    for file in (out / "SOUL.md", out / "memory" / "2026-01-01.md"):
        assert file.stat().st_mode & 0o777 == 0o600, file
    # A file being replaced keeps the mode its owner gave it.
    (out / "SOUL.md").chmod(0o644)
    await agent.write("soul", "I am Ada, grown.\n", ME, reason="grew")
    await export_workspace(agent, out, force=True)
    assert (out / "SOUL.md").stat().st_mode & 0o777 == 0o644


# Import markers: the author claimed is marked as imported ---------------------------------------------


@pytest.mark.anyio
async def test_an_author_from_a_marker_is_marked_as_imported_and_round_trips(
    agent: AgentSelf, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    (ws / "memory").mkdir(parents=True)
    long_name = "c" * 100
    (ws / "memory" / "2026-11-20.md").write_text(
        "- Claims to be Claude\n  <!-- soul: at=2026-11-20T09:00:00Z kind=fact by=claude-desktop -->\n\n"
        "- Already marked\n  <!-- soul: at=2026-11-20T10:00:00Z kind=fact by=imported:cursor -->\n\n"
        f"- A long name\n  <!-- soul: at=2026-11-20T11:00:00Z kind=fact by={long_name} -->\n\n"
        "- No marker at all\n",
        encoding="utf-8",
    )
    await import_workspace(agent, ws, Actor(name="cli:sam"))
    authors = {m.content: m.author for m in await agent.active_memories()}
    assert authors["Claims to be Claude"] == "imported:claude-desktop"
    assert authors["Already marked"] == "imported:cursor"
    assert authors["A long name"] == "imported:" + "c" * 91 and len(authors["A long name"]) == 100
    assert authors["No marker at all"] == "cli:sam"

    await export_workspace(agent, tmp_path / "e1")
    day = (tmp_path / "e1" / "memory" / "2026-11-20.md").read_text(encoding="utf-8")
    assert "by=claude-desktop -->" in day and "by=cursor -->" in day and "by=cli:sam -->" in day
    assert "imported:" not in day
    fresh = await AgentSelf.open(Settings(db_path=tmp_path / "fresh.db"))
    try:
        await import_workspace(fresh, tmp_path / "e1", ME)
        assert {m.author for m in await fresh.active_memories()} >= {"imported:cli:sam", "imported:cli:maya"}
        await export_workspace(fresh, tmp_path / "e2")
    finally:
        await fresh.close()
    tree = {p.relative_to(tmp_path / "e1"): p.read_bytes() for p in (tmp_path / "e1").rglob("*.md")}
    assert {p.relative_to(tmp_path / "e2"): p.read_bytes() for p in (tmp_path / "e2").rglob("*.md")} == tree
