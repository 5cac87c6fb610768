"""The web page (soul_mcp/web/) over HTTP: a real `soul-mcp ui` process and a real `serve --http`
process on loopback, driven with httpx2 as a browser without JavaScript would (cookies, forms,
redirects). The browser tests (headless Chromium) drive the same pages through the contract in
docs/web.md; these check the rules: logins, scopes, CSRF, Host and Origin, bad input, live events.

Two servers for the module, each on its own database: `soul-mcp ui` (logged in with its one-time
key, every scope) and `serve --http` (tokens with read, read+write, every scope).
"""

from __future__ import annotations

import html
import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx2
import pytest
from conftest import server_env
from test_http import HttpServer, connect, make_tokens, start_server, tool

from soul_mcp.cli import main
from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.errors import InvalidInput, NotFound
from soul_mcp.models import Actor

TIMEOUT = 30
UI_LINE = re.compile(r"^soul-mcp ui: (http://127\.0\.0\.1:(\d+))/ui/login\?key=([A-Za-z0-9_-]{20,})$")
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
PROBLEM = re.compile(r'class="problem"[^>]*>(.*?)</p>', re.S)

SOUL_V1 = "# Soul\nI am patient.\nI keep notes.\n"
SOUL_V2 = "# Soul\nI am curious.\nI keep notes.\n"


async def _seed(db: Path) -> dict[str, str]:
    """Two soul versions, an intent and a few memories, written as a CLI would."""
    agent_self = await AgentSelf.open(Settings(db_path=db))
    who = Actor(name="cli:tester", session_id="s1")
    try:
        await agent_self.write("soul", SOUL_V1, who, "first words")
        await agent_self.write("soul", SOUL_V2, who, "more curious")
        await agent_self.write("intent", "Finish the garden plan.", who)
        ids = {}
        for key, text in {
            "tea": "The user drinks green tea every morning",
            "bike": "The user's bicycle is a blue Dutch bike",
            "cat": "The cat is called Miso and hates the vacuum cleaner",
        }.items():
            ids[key] = (await agent_self.remember(text, who, kind="fact", tags=["home"])).memory.id
        return ids
    finally:
        await agent_self.close()


def seed(db: Path) -> dict[str, str]:
    return anyio.run(_seed, db)


async def _memory(db: Path, memory_id: str) -> str | None:
    agent_self = await AgentSelf.open(Settings(db_path=db))
    try:
        return (await agent_self.get_memory(memory_id)).status
    except NotFound:
        return None
    finally:
        await agent_self.close()


def memory_status(db: Path, memory_id: str) -> str | None:
    return anyio.run(_memory, db, memory_id)


async def _soul(db: Path) -> tuple[int | None, str | None, str]:
    agent_self = await AgentSelf.open(Settings(db_path=db))
    try:
        soul = await agent_self.read("soul")
        return soul.version, soul.author, soul.content
    finally:
        await agent_self.close()


def soul_now(db: Path) -> tuple[int | None, str | None, str]:
    return anyio.run(_soul, db)


@dataclass
class Browser:
    """httpx2 with cookies, and the CSRF token of the last page it saw."""

    base: str
    http: httpx2.Client = field(init=False)
    csrf: str | None = None

    def __post_init__(self) -> None:
        self.http = httpx2.Client(base_url=self.base, timeout=TIMEOUT, follow_redirects=False)

    def get(self, path: str, **options: object) -> httpx2.Response:
        response = self.http.get(path, **options)  # type: ignore[arg-type]
        if found := CSRF.search(response.text):
            self.csrf = found.group(1)
        return response

    def post(self, path: str, data: dict[str, str], csrf: bool = True, **options: object) -> httpx2.Response:
        if csrf:
            data = {**data, "csrf": self.csrf or ""}
        return self.http.post(path, data=data, **options)  # type: ignore[arg-type]

    def page(self, path: str) -> str:
        response = self.get(path)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        return response.text


def problem(text: str) -> str:
    found = PROBLEM.search(text)
    assert found is not None, text[:2000]
    return html.unescape(found.group(1))


@dataclass
class UiProcess:
    process: subprocess.Popen[str]
    base: str
    key: str
    line: str
    db: Path


def start_ui(db: Path, *flags: str) -> UiProcess:
    process = subprocess.Popen(
        [sys.executable, "-m", "soul_mcp", "ui", "--no-browser", "--db", str(db), *flags],
        env=server_env(db),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=(db.parent / "ui.log").open("w"),
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().rstrip("\n")  # the one line; then nothing more on stdout
    found = UI_LINE.match(line)
    assert found is not None, f"unexpected first line {line!r}: {(db.parent / 'ui.log').read_text()}"
    return UiProcess(process, found.group(1), found.group(3), line, db)


def stop(process: subprocess.Popen[str]) -> bool:
    """SIGTERM; True when it ended by it (uvicorn stops, then ends by the signal it caught)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    return process.wait(timeout=TIMEOUT) == -signal.SIGTERM


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UiProcess, Browser, dict[str, str]]]:
    db = tmp_path_factory.mktemp("ui") / "soul.db"
    ids = seed(db)
    started = start_ui(db)
    browser = Browser(started.base)
    # The first request may come while the page opens its database: uvicorn answers once it has.
    entered = browser.get(f"/ui/login?key={started.key}")
    assert entered.status_code == 303 and entered.headers["location"] == "/ui/"
    try:
        yield started, browser, ids
    finally:
        assert stop(started.process)
        assert started.process.stdout is not None
        assert started.process.stdout.read() == ""  # one line on stdout, logs on stderr


@pytest.fixture(scope="module")
def http(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HttpServer, dict[str, str], dict[str, str]]]:
    db = tmp_path_factory.mktemp("http") / "soul.db"
    ids = seed(db)
    tokens = anyio.run(
        make_tokens, db, {"reader": "read", "writer": "read,write", "owner": "read,write,identity"}
    )
    server = start_server(db)
    try:
        yield server, tokens, ids
    finally:
        server.stop()


def logged_in(server: HttpServer, token: str) -> Browser:
    browser = Browser(f"http://127.0.0.1:{server.port}")
    browser.get("/ui/login")
    answer = browser.post("/ui/login", {"token": token})
    assert answer.status_code == 303, problem(answer.text)
    return browser


# Access -------------------------------------------------------------------------------------------


def test_ui_prints_one_line_whose_key_works_once(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    started, _, _ = ui
    assert UI_LINE.match(started.line)
    again = Browser(started.base)
    used = again.get(f"/ui/login?key={started.key}")
    assert used.status_code == 403
    assert "works once" in problem(used.text)
    assert again.get("/ui/").status_code == 303  # not logged in


@pytest.mark.parametrize(
    "path",
    [
        "/ui/",
        "/ui/documents/soul",
        "/ui/documents/soul/diff?a=1&b=2",
        "/ui/memories",
        "/ui/activity",
        "/ui/events",
    ],
)
def test_pages_need_a_login(ui: tuple[UiProcess, Browser, dict[str, str]], path: str) -> None:
    started, _, _ = ui
    answer = Browser(started.base).get(path)
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    login = Browser(started.base).page("/ui/login")
    assert "soul-mcp ui" in login and 'name="token"' not in login  # says how to get a link


def test_the_session_cookie_is_httponly_and_strict(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    started = start_ui(ui[0].db)
    try:
        answer = Browser(started.base).get(f"/ui/login?key={started.key}")
        cookie = answer.headers["set-cookie"].lower()
        assert cookie.startswith("soul_ui=") and "httponly" in cookie and "samesite=strict" in cookie
        assert "secure" not in cookie  # plain http on loopback
    finally:
        assert stop(started.process)


def test_token_login_under_serve_http(http: tuple[HttpServer, dict[str, str], dict[str, str]]) -> None:
    server, tokens, _ = http
    browser = Browser(f"http://127.0.0.1:{server.port}")
    assert browser.get("/ui/").status_code == 303
    assert 'name="token"' in browser.page("/ui/login")
    wrong = browser.post("/ui/login", {"token": "soul_" + "x" * 40})
    assert wrong.status_code == 403 and "not known" in problem(wrong.text)
    assert browser.get("/ui/").status_code == 303
    right = browser.post("/ui/login", {"token": tokens["reader"]})
    assert right.status_code == 303 and "soul_ui=" in right.headers["set-cookie"]
    assert "web:reader" in browser.page("/ui/")
    # Logging out ends the session.
    assert browser.post("/ui/logout", {}).status_code == 303
    assert browser.get("/ui/").status_code == 303


def test_a_revoked_token_ends_its_sessions(http: tuple[HttpServer, dict[str, str], dict[str, str]]) -> None:
    server, _, _ = http
    token = anyio.run(make_tokens, server.db, {"short-lived": "read"})["short-lived"]
    browser = logged_in(server, token)
    assert browser.get("/ui/").status_code == 200
    assert main(["token", "revoke", "short-lived", "--db", str(server.db)]) == 0
    assert browser.get("/ui/").status_code == 303


# The pages ----------------------------------------------------------------------------------------


def test_each_page_shows_the_self(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    _, browser, ids = ui
    overview = browser.page("/ui/")
    assert "I am curious." in overview and "Finish the garden plan." in overview
    assert '<details id="wake-up">' in overview and "cli:tester" in overview
    assert re.search(r"<dt>active memories</dt><dd>\d+</dd>", overview)
    timeline = browser.page("/ui/documents/soul")
    assert re.search(r'<tr data-version="2">.*?cli:tester.*?more curious', timeline, re.S)
    assert '<tr data-version="1">' in timeline
    listed = browser.page("/ui/memories")
    assert f'<li class="memory" data-id="{ids["cat"]}">' in listed
    memory = browser.page(f"/ui/memories/{ids['cat']}")
    assert "Miso" in memory and 'id="forget"' in memory
    activity = browser.page("/ui/activity")
    assert activity.count('<tr class="change">') >= 6  # 3 versions, 3 memories
    assert browser.page("/ui/documents/north-star")  # nothing written: a page all the same
    assert browser.get("/ui/documents/nonsense").status_code == 404
    assert browser.get("/ui/memories/m_nonexistent").status_code in (400, 404)


def test_diff_marks_lines_added_and_removed(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    _, browser, _ = ui
    page = browser.page("/ui/documents/soul/diff?a=1&b=2")
    diff = page[page.index('<div id="diff"') :]
    assert "<del>I am patient.</del>" in diff and "<ins>I am curious.</ins>" in diff
    assert "<span>I keep notes.</span>" in diff
    assert '<span class="hunk">lines 1-3 → lines 1-3</span>' in diff  # where the change is, in words
    bad = browser.get("/ui/documents/soul/diff?a=1&b=x")
    assert bad.status_code == 400 and "b must be a version number" in problem(bad.text)


def test_restore_makes_a_new_version_by_the_web_author(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    started, browser, _ = ui
    before, _, _ = soul_now(started.db)
    assert before is not None
    browser.page("/ui/documents/soul")
    done = browser.post("/ui/documents/soul/restore", {"version": "1", "reason": "back to patience"})
    assert done.status_code == 303 and done.headers["location"].startswith("/ui/documents/soul")
    version, author, content = soul_now(started.db)
    assert (version, content) == (before + 1, SOUL_V1)
    assert author is not None and author.startswith("web:")
    same = browser.post("/ui/documents/soul/restore", {"version": "1", "reason": "once more"})
    assert same.status_code == 303 and "unchanged=1" in same.headers["location"]
    assert soul_now(started.db)[0] == version  # the same text again: nothing stored, as for the tools
    timeline = browser.page(done.headers["location"])
    assert re.search(
        rf'<tr data-version="{version}">.*?restores 1.*?{re.escape(author)}.*?back to patience',
        timeline,
        re.S,
    )


def test_search_finds_what_the_tools_recall_finds(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    started, browser, ids = ui
    page = browser.page("/ui/memories?q=bicycle")
    shown = re.findall(r'<li class="memory" data-id="([^"]+)">', page)
    assert shown[0] == ids["bike"]

    async def recalled() -> list[str]:
        agent_self = await AgentSelf.open(Settings(db_path=started.db))
        try:
            return [hit.id for hit in (await agent_self.recall("bicycle", 20)).hits]
        finally:
            await agent_self.close()

    assert shown == anyio.run(recalled)
    filtered = browser.page("/ui/memories?q=&kind=person")
    assert ids["bike"] not in filtered
    bad = browser.get("/ui/memories?since=yesterday-ish&q=tea")
    assert bad.status_code == 400 and "since" in problem(bad.text) and 'value="yesterday-ish"' in bad.text


def test_forget_restore_revise_and_purge(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    started, browser, ids = ui
    memory_id = ids["tea"]
    browser.page(f"/ui/memories/{memory_id}")
    assert (
        browser.post(f"/ui/memories/{memory_id}/forget", {"reason": "not true any more"}).status_code == 303
    )
    assert memory_status(started.db, memory_id) == "forgotten"
    page = browser.page(f"/ui/memories/{memory_id}")
    assert "not true any more" in page and 'id="restore"' in page
    assert browser.post(f"/ui/memories/{memory_id}/restore", {}).status_code == 303
    assert memory_status(started.db, memory_id) == "active"

    revised = browser.post(
        f"/ui/memories/{memory_id}/revise",
        {"content": "The user drinks black tea", "reason": "changed taste"},
    )
    assert revised.status_code == 303
    new_id = revised.headers["location"].split("/ui/memories/")[1].split("?")[0]
    assert new_id != memory_id and memory_status(started.db, memory_id) == "superseded"
    history = browser.page(f"/ui/memories/{new_id}")
    assert memory_id in history and "changed taste" in history

    assert browser.post(f"/ui/memories/{new_id}/forget", {"reason": "to purge it"}).status_code == 303
    # Purge asks twice: a first page with the confirmation box, then the id typed in it.
    assert 'id="purge"' not in browser.page(f"/ui/memories/{new_id}")
    assert 'id="purge"' in browser.page(f"/ui/memories/{new_id}?purge=1")
    unconfirmed = browser.post(f"/ui/memories/{new_id}/purge", {"confirm": "yes"})
    assert unconfirmed.status_code == 400 and "type its id" in problem(unconfirmed.text)
    assert memory_status(started.db, new_id) == "forgotten"
    assert browser.post(f"/ui/memories/{new_id}/purge", {"confirm": new_id}).status_code == 303
    assert memory_status(started.db, new_id) is None
    assert browser.post(f"/ui/memories/{memory_id}/delete", {}).status_code == 404


def test_a_post_without_csrf_is_refused_and_changes_nothing(
    ui: tuple[UiProcess, Browser, dict[str, str]],
) -> None:
    started, browser, ids = ui
    memory_id = ids["cat"]
    for form in ({"reason": "sneaky"}, {"reason": "sneaky", "csrf": "forged"}):
        answer = browser.post(f"/ui/memories/{memory_id}/forget", form, csrf=False)
        assert answer.status_code == 403 and "CSRF" in problem(answer.text)
    assert memory_status(started.db, memory_id) == "active"
    restore = browser.post("/ui/documents/soul/restore", {"version": "1", "reason": "x"}, csrf=False)
    assert restore.status_code == 403


def test_a_too_long_reason_is_refused_and_kept(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    started, browser, ids = ui
    memory_id = ids["cat"]
    reason = "because <b>" + "x" * 1200

    async def the_tools_message() -> str:
        agent_self = await AgentSelf.open(Settings(db_path=started.db))
        try:
            await agent_self.forget(memory_id, reason, Actor(name="tester"))
        except InvalidInput as exc:
            return str(exc)
        finally:
            await agent_self.close()
        raise AssertionError("the long reason was accepted")

    expected = anyio.run(the_tools_message)
    browser.page(f"/ui/memories/{memory_id}")
    answer = browser.post(f"/ui/memories/{memory_id}/forget", {"reason": reason})
    assert answer.status_code == 400 and problem(answer.text) == expected
    assert f'value="{html.escape(reason)}"' in answer.text
    assert memory_status(started.db, memory_id) == "active"
    timeline = browser.post("/ui/documents/soul/restore", {"version": "1", "reason": reason})
    assert timeline.status_code == 400 and html.escape(reason) + "</textarea>" in timeline.text


# Scopes, hosts ------------------------------------------------------------------------------------


def test_scopes_refuse_what_a_token_may_not_do(
    http: tuple[HttpServer, dict[str, str], dict[str, str]],
) -> None:
    server, tokens, ids = http
    reader = logged_in(server, tokens["reader"])
    reader.page(f"/ui/memories/{ids['bike']}")
    refused = reader.post(f"/ui/memories/{ids['bike']}/forget", {"reason": "read-only tries"})
    assert refused.status_code == 403 and "'write' scope" in problem(refused.text)
    assert memory_status(server.db, ids["bike"]) == "active"

    before = soul_now(server.db)
    writer = logged_in(server, tokens["writer"])
    writer.page("/ui/documents/soul")
    refused = writer.post("/ui/documents/soul/restore", {"version": "1", "reason": "rw tries"})
    assert refused.status_code == 403 and "'identity' scope" in problem(refused.text)
    assert soul_now(server.db) == before
    # The intent is not identity: write restores it.
    writer.page("/ui/documents/intent")
    assert writer.post("/ui/documents/intent/restore", {"version": "1", "reason": "same"}).status_code == 303

    owner = logged_in(server, tokens["owner"])
    owner.page("/ui/documents/soul")
    assert (
        owner.post("/ui/documents/soul/restore", {"version": "1", "reason": "owner may"}).status_code == 303
    )
    assert soul_now(server.db)[1] == "web:owner"


def check_host_and_origin(browser: Browser) -> None:
    assert browser.get("/ui/", headers={"host": "evil.example"}).status_code == 421
    assert browser.get("/ui/login", headers={"host": "evil.example:80"}).status_code == 421
    browser.page("/ui/memories")
    crossed = browser.post("/ui/logout", {}, headers={"origin": "http://evil.example"})
    assert crossed.status_code == 403
    assert browser.get("/ui/").status_code == 200  # still logged in: the POST did nothing
    # A browser sends the page's own origin with every form: accepted.
    assert browser.post("/ui/logout", {}, headers={"origin": browser.base}).status_code == 303
    assert browser.get("/ui/").status_code == 303


def test_host_and_origin_are_checked_by_ui(ui: tuple[UiProcess, Browser, dict[str, str]]) -> None:
    started = start_ui(ui[0].db)  # a session of its own: this test logs out
    try:
        browser = Browser(started.base)
        assert browser.get(f"/ui/login?key={started.key}").status_code == 303
        check_host_and_origin(browser)
    finally:
        assert stop(started.process)


def test_host_and_origin_are_checked_under_serve_http(
    http: tuple[HttpServer, dict[str, str], dict[str, str]],
) -> None:
    server, tokens, _ = http
    check_host_and_origin(logged_in(server, tokens["writer"]))


def test_ui_refuses_another_host_and_a_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ui", "--no-browser", "--host", "0.0.0.0", "--db", str(tmp_path / "x.db")]) == 2
    assert "not a loopback address" in capsys.readouterr().err
    assert main(["ui", "--no-browser", "--db", str(tmp_path / "missing.db")]) == 3
    assert "soul-mcp init" in capsys.readouterr().err


# Live ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_events_tell_of_a_soul_written_by_an_mcp_client(
    http: tuple[HttpServer, dict[str, str], dict[str, str]],
) -> None:
    server, tokens, _ = http
    browser = await anyio.to_thread.run_sync(logged_in, server, tokens["reader"])
    cookies = dict(browser.http.cookies)
    events: list[dict[str, object]] = []
    async with (
        httpx2.AsyncClient(base_url=browser.base, cookies=cookies, timeout=TIMEOUT) as client,
        client.stream("GET", "/ui/events") as stream,
    ):
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.aiter_lines()
        assert (await lines.__anext__()).startswith("retry:")
        async with connect(server.url, tokens["owner"]) as mcp:
            await tool(mcp, "write_soul", {"content": "# Soul\nWritten live.\n", "reason": "live test"})
            await tool(mcp, "remember", {"content": "A memory stored while the page watched"})
        with anyio.fail_after(TIMEOUT):
            event = None
            async for line in lines:
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and event == "change":
                    events.append(json.loads(line[5:]))
                    if {e["what"] for e in events} >= {"document", "memory"}:
                        break
    assert any(e["what"] == "document" and e["name"] == "soul" for e in events), events
    assert any(e["what"] == "memory" and e["name"] == "remembered" and e["id"] for e in events), events
