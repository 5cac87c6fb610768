"""A real Chromium, driven through Selenium, against real soul-mcp processes: the harness of
tests/test_web_browser.py.

Debian's `chromium` and `chromium-driver` (same version, one package source), so Selenium never has
to find or download a driver: the Service names /usr/bin/chromedriver and the options name the
browser. The browser reaches loopback only: every other host name is unresolvable.

Servers: `soul-mcp ui --no-browser --port 0` (its one-time link read from stdout) and
`soul-mcp serve --http` (tests/test_http.py's start_server), both on one SQLite file seeded through
the MCP tools (a soul of three versions, two intents, five memories), `soul-mcp token create` and
`soul-mcp reindex` (the embeddings, for recall by meaning).
"""

from __future__ import annotations

import getpass
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from conftest import ROOT, server_env
from mcp import Client
from mcp.types import Implementation
from test_cli import as_json, invoke, ok
from test_http import HttpServer, start_server

from soul_mcp.config import Settings
from soul_mcp.server import build_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver, and pip install -e '.[test]' for selenium"
STEP_S = 30  # bound on any one wait; generous for a loaded 2-core machine
SCREENSHOTS = ROOT / "docs" / "img"

T = TypeVar("T")

# The seeded soul: three versions, each line kept, changed or added so that a diff has both sides.
SOUL_VERSIONS = [
    ("# Soul\n\nI am Wren, a careful engineer.\nI write tests before I trust code.\n", "first draft"),
    (
        "# Soul\n\nI am Wren, a careful engineer.\nI write tests before I trust code.\n"
        "I keep my promises small and kept.\n",
        "promises matter",
    ),
    (
        "# Soul\n\nI am Wren, a patient engineer.\nI write tests before I trust code.\n"
        "I keep my promises small and kept.\nI say what I do not know.\n",
        "patience over care; honesty",
    ),
]
FIRST_INTENT = "Seed the self, then start the servers."
INTENT = "Finish the browser tests, then read the screenshots with fresh eyes."
PUPPY = "I adopted a puppy last spring"
OTHER_MEMORIES = [
    ("The billing service moved to PostgreSQL 16", "fact", ["work"]),
    ("Maya prefers short answers with the code first", "preference", ["maya"]),
    ("We went hiking in the Alps in July", "event", ["travel"]),
    ("The quarterly report is due on Friday", "fact", ["work"]),
]
SEED_INFO = Implementation(name="seed-agent", version="1")


# The browser ---------------------------------------------------------------------------------------


def browser_missing() -> str | None:
    """What is missing to run the browser tests, or None."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    return f"{', '.join(missing)} missing" if missing else None


def require_browser() -> None:
    """Under CI a missing browser fails the tests; elsewhere they are skipped, saying how to get it."""
    missing = browser_missing()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests need Chromium and its driver: {missing} ({INSTALL})")
    pytest.skip(f"{missing}: {INSTALL}")


def chromium_arguments(user_data_dir: Path) -> list[str]:
    arguments = [
        "--headless=new",
        f"--user-data-dir={user_data_dir}",
        "--window-size=1280,900",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--no-first-run",
        "--disable-quic",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
    ]
    # Chromium's sandbox refuses to run as root (CI's containers); it stays on for anyone else.
    if os.geteuid() == 0:
        arguments.append("--no-sandbox")
    return arguments


def open_browser(user_data_dir: Path) -> Any:
    """A headless Chromium under Debian's chromedriver (typed Any: selenium is imported lazily)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in chromium_arguments(user_data_dir):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(STEP_S)
    driver.set_script_timeout(STEP_S)
    return driver


def wait_until(condition: Callable[[], T], what: str, timeout: float = STEP_S, page: Any = None) -> T:
    """Poll `condition()` until it gives something true, and return it; fail saying what never came
    (and, given the browser as `page`, where it was and what it showed)."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except WebDriverException:  # the page went on to the next one under the condition's feet
            if time.monotonic() > deadline:
                raise
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            shown = ""
            if page is not None:
                body = page.execute_script("return document.body ? document.body.innerText : ''")
                shown = f"\nthe browser is at {page.current_url}, showing:\n{str(body)[:1500]}"
            pytest.fail(f"after {timeout} s, still not true: {what}{shown}")
        time.sleep(0.05)


def fetch(driver: Any, path: str, fields: dict[str, str], method: str = "POST") -> dict[str, Any]:
    """A form-encoded request from the page's own context (its cookies, its origin), without
    following a redirect: {"status": ..., "text": ...}."""
    script = """
        const [path, fields, method, done] = arguments;
        fetch(path, {method, body: new URLSearchParams(fields), redirect: "manual", credentials: "same-origin"})
            .then(async r => done({status: r.status, text: await r.text()}))
            .catch(e => done({status: -1, text: String(e)}));
    """
    result: dict[str, Any] = driver.execute_async_script(script, path, fields, method)
    return result


def emulate(driver: Any, **media: str) -> None:
    """CSS media features (prefers-color-scheme=dark); none given: back to the browser's own."""
    features = [{"name": name.replace("_", "-"), "value": value} for name, value in media.items()]
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": features})


def phone_width(driver: Any, on: bool) -> None:
    """A phone's viewport (390 x 844 CSS pixels, touch, mobile meta viewport honoured), or back."""
    if on:
        metrics = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    else:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def screenshot(driver: Any, name: str) -> None:
    """docs/img/NAME.png of the whole page, only when SOUL_MCP_SCREENSHOTS=1 (CI keeps its tree clean)."""
    if os.environ.get("SOUL_MCP_SCREENSHOTS") != "1":
        return
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": min(int(height), 2000), "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SCREENSHOTS / f"{name}.png")), f"no screenshot of {name}"
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# The self -------------------------------------------------------------------------------------------


@dataclass
class Seed:
    db: Path
    puppy: str  # the memory found by meaning ("new dog")
    memories: dict[str, str] = field(default_factory=dict)  # text -> id
    tokens: dict[str, str] = field(default_factory=dict)  # name -> token


async def _seed_through_mcp(db: Path) -> Seed:
    async with Client(build_server(Settings(db_path=db)), client_info=SEED_INFO) as client:
        for content, reason in SOUL_VERSIONS:
            done = await client.call_tool("write_soul", {"content": content, "reason": reason})
            assert not done.is_error, done.content
        for intent in (FIRST_INTENT, INTENT):
            done = await client.call_tool("write_intent", {"content": intent})
            assert not done.is_error, done.content
        memories = {}
        for text, kind, tags in OTHER_MEMORIES:
            done = await client.call_tool("remember", {"content": text, "kind": kind, "tags": tags})
            assert not done.is_error, done.content
            memories[text] = done.structured_content["memory"]["id"]  # type: ignore[index]
    # The puppy in a session of its own: a memory is embedded with the one before it in its session.
    async with Client(build_server(Settings(db_path=db)), client_info=SEED_INFO) as client:
        done = await client.call_tool("remember", {"content": PUPPY, "kind": "event", "tags": ["family"]})
        assert not done.is_error, done.content
        puppy = done.structured_content["memory"]["id"]  # type: ignore[index]
    memories[PUPPY] = puppy
    return Seed(db=db, puppy=puppy, memories=memories)


def seed_self(db: Path) -> Seed:
    """A soul of three versions, two intents and five memories through the MCP tools, then through
    the command line tokens (`reader`: read, `writer`: read,write, `owner`: all three) and the
    memories' embeddings."""
    seed = anyio.run(_seed_through_mcp, db)
    for name, scopes in {"reader": "read", "writer": "read,write", "owner": "read,write,identity"}.items():
        created = as_json(invoke("token", "create", name, "--scope", scopes, "--json", "--db", str(db)))
        seed.tokens[name] = created["token"]
    # The embeddings now, so that recall by meaning does not wait on a server's background indexer.
    ok(invoke("reindex", "--db", str(db), env={"SOUL_MCP_SEMANTIC": "local"}))
    assert embedded(db, list(seed.memories.values())), "reindex left memories without an embedding"
    return seed


# The servers ----------------------------------------------------------------------------------------


def servers_env(db: Path) -> dict[str, str]:
    """What both servers run with: hybrid recall on (the local model), the test's user name."""
    env = server_env(db)
    env["SOUL_MCP_SEMANTIC"] = "local"
    env["USER"] = env["LOGNAME"] = getpass.getuser()
    return env


@dataclass
class UiServer:
    process: subprocess.Popen[str]
    link: str  # the one-time login link printed at start
    log: Path

    @property
    def base(self) -> str:
        return self.link.split("/ui/", 1)[0]

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STEP_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_ui(db: Path, env: dict[str, str]) -> UiServer:
    """`soul-mcp ui --no-browser --port 0`, once it has printed its one line with the link."""
    log = db.with_suffix(".ui.log")
    process = subprocess.Popen(
        [sys.executable, "-m", "soul_mcp", "ui", "--no-browser", "--port", "0", "--db", str(db)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def drain() -> None:  # stdout is read to the end, so that the server never blocks on a full pipe
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=drain, daemon=True).start()
    try:
        first = lines.get(timeout=STEP_S)
    except queue.Empty:
        first = ""
    prefix = "soul-mcp ui: "
    if not first.startswith(prefix) or "/ui/login?key=" not in first:
        process.kill()
        process.wait()
        raise AssertionError(
            f"`soul-mcp ui` printed {first!r} (exit {process.returncode}), not `{prefix}URL`:\n"
            + log.read_text(errors="replace")
        )
    return UiServer(process, first[len(prefix) :].strip(), log)


@dataclass
class Servers:
    seed: Seed
    ui: UiServer
    http: HttpServer

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.http.port}"


@pytest.fixture(scope="module", name="servers")
def servers_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Both servers on one seeded SQLite file, for the module."""
    require_browser()
    db = tmp_path_factory.mktemp("web") / "soul.db"
    seed = seed_self(db)
    env = servers_env(db)
    ui = start_ui(db, env)
    try:
        http = start_server(db, env=env)
    except BaseException:
        ui.stop()
        raise
    try:
        yield Servers(seed, ui, http)
    finally:
        http.stop()
        ui.stop()


def embedded(db: Path, memory_ids: list[str]) -> bool:
    """Whether the background indexer has stored every one of these memories' embeddings yet."""
    with sqlite3.connect(db) as conn:
        done = {
            row[0]
            for row in conn.execute(
                "SELECT m.id FROM memory_embeddings e JOIN memories m ON m.rowid = e.memory_rowid"
            )
        }
    return set(memory_ids) <= done


def cli_json(db: Path, *argv: str) -> Any:
    """`soul-mcp ARGV --json --db DB`, in process."""
    return as_json(invoke(*argv, "--json", "--db", str(db)))
