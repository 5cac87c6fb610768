"""Shared fixtures: a real SQLite file per test, and the server built on it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

# The throwaway PostgreSQL cluster's fixtures, for every test file (postgres_url is also
# postgres_database_url, a name that no module's function shadows).
from postgres_cluster import postgres_cluster, postgres_url  # noqa: F401
from postgres_cluster import postgres_url as postgres_database_url  # noqa: F401

from soul_mcp import config
from soul_mcp.config import Settings
from soul_mcp.server import build_server

ROOT = Path(__file__).resolve().parent.parent
NODE_TOOLS = ROOT / ".ci" / "node_modules"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True, scope="session")
def session_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """soul-mcp's caches (the warm start's answers, a PostgreSQL store's recall snapshots) go to a
    folder of the test session, not the user's, in this process and the servers it starts."""
    os.environ.setdefault("SOUL_MCP_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "soul.db"


@pytest.fixture
def settings(db_path: Path) -> Settings:
    return Settings(db_path=db_path)


@pytest.fixture
def server(settings: Settings):
    return build_server(settings)


@pytest.fixture(params=["sqlite", "postgres"])
def settings_on_each_backend(request: pytest.FixtureRequest, db_path: Path) -> Settings:
    """Settings for a new, empty self on SQLite (a file in tmp_path) and on PostgreSQL (a database
    of the session's throwaway cluster): a test file that takes this as its `settings` runs on both."""
    if request.param == "sqlite":
        return Settings(db_path=db_path)
    url = request.getfixturevalue("postgres_database_url")
    assert config.postgres_url(url) == url
    # As the command line reads it, but with the defaults of Settings() otherwise (semantic off).
    return Settings(db_path=Settings.load(url).db_path, db_url=url)


@pytest.fixture(params=["auto", "legacy"], ids=["era-2026", "era-handshake"])
def mode(request: pytest.FixtureRequest) -> str:
    """Both protocol eras the SDK speaks: 2026-07-28 (no handshake) and the handshake era."""
    return request.param


def server_command(db: Path) -> tuple[str, list[str]]:
    """How to start `soul-mcp serve` as a subprocess with this interpreter."""
    return sys.executable, ["-m", "soul_mcp", "serve", "--db", str(db)]


def server_env(db: Path) -> dict[str, str]:
    """Stdio clients pass a cut-down environment; give the server what it needs explicitly."""
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR"}}
    env["SOUL_MCP_DB"] = str(db)
    # The warm-start cache goes beside the test's database, not into the user's cache folder.
    env["SOUL_MCP_CACHE_DIR"] = str(db.parent / "cache")
    return env


@pytest.fixture(scope="session")
def node_tools() -> Path:
    """The pinned npm tools in .ci/node_modules; installed here when .ci/run has not done it yet."""
    if not (NODE_TOOLS / ".bin" / "mcp-inspector").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                "npm is needed for the interop tests (MCP Inspector, TypeScript SDK); install Node.js"
            )
        subprocess.run(
            [npm, "install", "--prefix", str(ROOT / ".ci"), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
            timeout=600,
        )
    return NODE_TOOLS


def load_bench(name: str) -> ModuleType:
    """A script from bench/ as a module, so that a test runs the benchmark's own load code."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
