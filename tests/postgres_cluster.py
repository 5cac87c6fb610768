"""A throwaway PostgreSQL cluster for the tests, and the pytest fixtures on it (a plugin module).

The session starts one cluster (initdb in a temporary folder, a free loopback port, its unix socket
in that folder) and removes it at the end; each test that asks for `postgres_url` gets a database
of its own. As root, the server runs as the unprivileged `postgres` user (PostgreSQL refuses root).
Without PostgreSQL's server binaries the tests that need them skip, saying how to install them;
under CI (CI=true) that is a failure instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found on PATH or in /usr/lib/postgresql/*/bin: "
    "install them (Debian/Ubuntu: apt-get install postgresql; macOS: brew install postgresql) to run "
    "the PostgreSQL store's tests"
)


def server_binaries() -> Path | None:
    """The folder holding initdb and pg_ctl (the newest PostgreSQL's), or None."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        folder = Path(os.path.realpath(initdb)).parent
        if (folder / "pg_ctl").exists():
            return folder
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[-3]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One running PostgreSQL server on 127.0.0.1, owned by the test session."""

    def __init__(self, binaries: Path, durable: bool = False) -> None:
        self.binaries = binaries
        self.durable = durable  # PostgreSQL's defaults (fsync on), for benchmarks of writes
        self.folder = Path(tempfile.mkdtemp(prefix="soul-pg-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self.user = "soul"
        self._as: list[str] = []
        if os.geteuid() == 0:
            # PostgreSQL will not run as root: run it as `postgres`, which must own the folder.
            shutil.chown(self.folder, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-U", self.user, "-A", "trust",
                  "-E", "UTF8", "--locale=C", "--no-sync")  # fmt: skip
        self.start_server()

    def start_server(self) -> None:
        # fsync off: a stopped server's writes are still in the OS's cache. synchronous_commit stays
        # on, so that a commit is in the WAL when it returns (the restart test relies on it).
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "log"),
                  "-o", options, "-w", "-t", "60", "start")  # fmt: skip

    def stop_server(self) -> None:
        """Stop the server as a crash would (the cluster stays, for start_server)."""
        self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.stop_server()
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = "t_" + secrets.token_hex(6)
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    under_ci = os.environ.get("CI", "").lower() == "true"
    binaries = server_binaries()
    if binaries is None:
        if under_ci:
            pytest.fail(INSTALL_HINT + " (CI: .ci/run installs them; a skip would hide the tests)")
        pytest.skip(INSTALL_HINT)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        driver = "the PostgreSQL driver is not installed: pip install -e '.[postgres]'"
        if under_ci:
            pytest.fail(driver + " (CI: .ci/run installs it; a skip would hide the tests)")
        pytest.skip(driver)
    cluster = Cluster(binaries)
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        log = cluster.folder / "log"
        details = exc.stderr or (log.read_text() if log.exists() else "")
        cluster.stop()
        pytest.fail(f"the test PostgreSQL cluster did not start: {details}")
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres_cluster: Cluster) -> Iterator[str]:
    """The URL of a new, empty database of the session's cluster, dropped after the test."""
    name = postgres_cluster.new_database()
    yield postgres_cluster.url(name)
    postgres_cluster.drop_database(name)
