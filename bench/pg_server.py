"""Where the benchmarks' PostgreSQL databases come from: a server a URL names (its user must be
allowed to create databases), or without one a throwaway cluster started here as the tests start
theirs (tests/postgres_cluster.py: initdb in a temporary folder, a free loopback port, removed at
the end). latency.py and locomo.py use it."""

from __future__ import annotations

import contextlib
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class PostgresServer:
    """`durable`: the throwaway cluster keeps PostgreSQL's defaults (fsync on), so that a benchmark
    of writes measures a durable commit, as SQLite's synchronous=FULL is."""

    def __init__(self, url: str | None, durable: bool = False) -> None:
        self.url = url
        self.durable = durable
        self.cluster: Any = None

    def __enter__(self) -> PostgresServer:
        if self.url is None:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from postgres_cluster import Cluster, server_binaries

            binaries = server_binaries()
            if binaries is None:
                raise SystemExit("--postgres needs PostgreSQL's server binaries (initdb, pg_ctl)")
            self.cluster = Cluster(binaries, durable=self.durable)
            self.cluster.start()
            self.url = self.cluster.url()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cluster is not None:
            self.cluster.stop()

    def _admin(self, statement: str) -> None:
        import psycopg

        assert self.url is not None
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(statement.encode())  # a name made here, not user input

    @contextlib.contextmanager
    def database(self, name: str | None = None, keep: bool = False) -> Iterator[str]:
        """The URL of a new, empty database (`name`, or a new random one) on the server; dropped
        afterwards unless kept (never kept on a throwaway cluster)."""
        assert self.url is not None
        name = name or "soul_bench_" + secrets.token_hex(5)
        self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self._admin(f"CREATE DATABASE {name} TEMPLATE template0")
        parts = urlsplit(self.url)
        try:
            yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
        finally:
            if not keep or self.cluster is not None:
                self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
