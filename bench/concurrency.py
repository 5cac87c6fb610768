"""Many clients on one database: does anything get lost, doubled or corrupted, and how fast is it?

Two loads, each on a fresh database file:

stdio  N `soul-mcp serve` processes (what N MCP hosts on one machine start), each driven by the SDK's
       stdio client, half in the handshake era and half in the 2026 era. Once every process is up,
       each sends M `remember` calls at once (default 8 x 500 = 4,000). Reports errors, how many of
       the requested memories are in the file (and that none is doubled), PRAGMA integrity_check,
       wall time of the write phase, throughput and per-call latency.
http   one `soul-mcp serve --http` process and C concurrent SDK HTTP clients (default 32, half per
       era, each with a bearer token made by `soul-mcp token create`) mixing recall (50 %),
       remember (40 %) and write_intent (10 %) for D seconds (default 30). Reports errors,
       throughput and p50/p95/p99 latency per operation; then checks that every acknowledged
       memory and intent version is in the file and that the file passes integrity_check.

postgres  S `soul-mcp serve --http` processes (default 3) on one PostgreSQL database and C clients
       (default 16, spread over the servers) with the http mix for D seconds; checks every
       acknowledged memory and intent version in the database, none doubled, the intent's versions
       numbered 1..n without a gap. Then the same on a fresh database restarted once in the middle
       (down for --outage seconds): errors must fall in the outage, each a clear "database
       unavailable ... try again" tool error, and nothing acknowledged may be lost. On a throwaway
       cluster (tests/postgres_cluster.py: initdb in a temporary folder, needs PostgreSQL's server
       binaries) unless --db-url names an empty database (then the steady run only).

The load generator runs in this one Python process: on a small machine it competes with the servers
for the CPU, so the figures are a floor, and `load` (the 1-minute load average before the run) says
how busy the machine was. It measures and checks; it asserts nothing about speed.

    .venv/bin/python bench/concurrency.py stdio                      # 8 x 500
    .venv/bin/python bench/concurrency.py http                       # 32 clients x 30 s
    .venv/bin/python bench/concurrency.py all --json /tmp/concurrency.json
    .venv/bin/python bench/concurrency.py stdio --processes 4 --writes 100 --keep
    .venv/bin/python bench/concurrency.py postgres                   # 3 servers x 16 clients, twice
    .venv/bin/python bench/concurrency.py postgres --db-url postgresql://me@db/empty --no-restart

The exit code is 1 when a check failed (an error, a missing or doubled write, integrity not ok).
The test suite runs small versions of both loads through `stdio_load` and `http_load`
(tests/test_durability.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

MODES = ("legacy", "auto")  # the handshake era and the 2026-07-28 era, alternating per client
CALL_TIMEOUT = 120  # seconds: a call that takes longer counts as an error
START_TIMEOUT = 60
WORDS = (
    "garden billing invoice postgres deploy review lunch train meeting budget design release "
    "rust python backup coffee travel Berlin Maya Ada migration schema latency index"
).split()


# Shared helpers ----------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of the samples at or below it."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(seconds)
    return {
        "count": len(ordered),
        **{f"p{p}_ms": round(percentile(ordered, p) * 1000, 2) for p in (50, 95, 99)},
        "max_ms": round(ordered[-1] * 1000, 2) if ordered else None,
    }


def server_env(db: Path | str) -> dict[str, str]:
    """Stdio clients pass a cut-down environment: give the servers what they need explicitly."""
    keep = {"PATH", "HOME", "LANG", "SYSTEMROOT", "TMPDIR", "PYTHONPATH"}
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("SOUL_MCP_")}
    env["SOUL_MCP_DB"] = str(db)
    env.setdefault("SOUL_MCP_LOG_LEVEL", "WARNING")  # the servers' start-up lines would drown the report
    return env


def file_facts(db: Path) -> dict[str, Any]:
    """What is in the file, read with a plain sqlite3 connection of its own."""
    with sqlite3.connect(db, timeout=30) as conn:
        return {
            "integrity": conn.execute("PRAGMA integrity_check").fetchone()[0],
            "contents": [row[0] for row in conn.execute("SELECT content FROM memories")],
            "intents": {
                row[0]
                for row in conn.execute("SELECT content FROM document_versions WHERE document = 'intent'")
            },
        }


def postgres_facts(url: str) -> dict[str, Any]:
    """What is in the database: the memories, the intent's versions (all, to find a doubled one)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=30) as db:
        versions = db.execute(
            "SELECT version, content FROM document_versions WHERE document = 'intent' ORDER BY version"
        ).fetchall()
        contents = [row[0] for row in db.execute("SELECT content FROM memories")]
    numbers = [v for v, _ in versions]
    return {
        # PostgreSQL checks its own pages; ours is that versions are numbered 1..n, once each.
        "integrity": "ok" if numbers == list(range(1, len(numbers) + 1)) else f"intent versions {numbers}",
        "contents": contents,
        "intents": {content for _, content in versions},
    }


def store_facts(db: Path | str) -> dict[str, Any]:
    return postgres_facts(db) if isinstance(db, str) else file_facts(db)


# A tool error during an outage must say this much (soul_mcp/storage/postgres.py's `unavailable`).
CLEAR_OUTAGE_ERROR = ("database unavailable", "try again")


def _error_text(result: Any) -> str:
    return result.content[0].text if result.content else "(error without text)"


# stdio: N processes x M remembers ----------------------------------------------------------------


async def stdio_load(
    db: Path, processes: int = 8, writes: int = 500, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """N stdio servers on `db`, each sent `writes` remembers at once; returns the report."""
    command = list(command or [sys.executable, "-m", "soul_mcp", "serve", "--db", str(db)])
    params = StdioServerParameters(command=command[0], args=command[1:], env=server_env(db))
    expected = [
        f"stdio process {p} note {n}: {WORDS[(p * 7 + n) % len(WORDS)]}"
        for p in range(processes)
        for n in range(writes)
    ]
    errors: list[str] = []
    latencies: list[float] = []
    acknowledged = 0
    ready = 0
    all_ready = anyio.Event()
    phase: dict[str, float] = {}

    async def host(p: int) -> None:
        nonlocal ready, acknowledged
        async with Client(params, mode=MODES[p % 2], read_timeout_seconds=CALL_TIMEOUT) as client:
            ready += 1
            if ready == processes:
                phase["start"] = time.perf_counter()
                all_ready.set()
            await all_ready.wait()

            async def remember(n: int) -> None:
                nonlocal acknowledged
                started = time.perf_counter()
                try:
                    result = await client.call_tool("remember", {"content": expected[p * writes + n]})
                except Exception as exc:  # a broken pipe or a timeout is an error to count, not a crash
                    errors.append(f"process {p}: {type(exc).__name__}: {exc}")
                    return
                latencies.append(time.perf_counter() - started)
                if result.is_error:
                    errors.append(f"process {p}: {_error_text(result)}")
                else:
                    acknowledged += 1

            async with anyio.create_task_group() as tg:
                for n in range(writes):
                    tg.start_soon(remember, n)
            phase["end"] = time.perf_counter()

    load = os.getloadavg()[0]
    started = time.perf_counter()
    with anyio.fail_after(START_TIMEOUT + CALL_TIMEOUT * 2):
        async with anyio.create_task_group() as tg:
            for p in range(processes):
                tg.start_soon(host, p)
    total = time.perf_counter() - started
    write_phase = phase["end"] - phase["start"]
    facts = file_facts(db)
    stored = facts["contents"]
    wanted = set(expected)
    present = sum(1 for content in stored if content in wanted)
    return {
        "load": "stdio",
        "processes": processes,
        "writes_each": writes,
        "requested": len(expected),
        "acknowledged": acknowledged,
        "errors": len(errors),
        "error_samples": errors[:5],
        "present": present,
        "doubled": len(stored) - len(set(stored)),
        "integrity": facts["integrity"],
        "write_seconds": round(write_phase, 2),
        "total_seconds": round(total, 2),
        "writes_per_second": round(len(expected) / write_phase, 1),
        "latency": latency_summary(latencies),
        "load_before": load,
        "ok": not errors and present == len(expected) == len(stored) and facts["integrity"] == "ok",
    }


# http: one server, C clients, D seconds ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_token(db: Path | str, name: str = "bench") -> str:
    """A read+write token, made the way a person would: `soul-mcp token create`."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "soul_mcp",
            "token",
            "create",
            name,
            "--scope",
            "read,write",
            "--json",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        env=server_env(db),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"soul-mcp token create failed: {done.stderr.strip()}")
    return str(json.loads(done.stdout)["token"])


@contextmanager
def http_server(db: Path | str, log: Path, auth: bool = True) -> Iterator[str]:
    """`soul-mcp serve --http` on a free loopback port until the block ends (then SIGTERM)."""
    port = free_port()
    flags = [] if auth else ["--insecure-no-auth"]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "soul_mcp",
                "serve",
                "--http",
                "--port",
                str(port),
                "--db",
                str(db),
                *flags,
            ],
            env=server_env(db),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"the HTTP server exited with {process.returncode}:\n{log.read_text()}"
                    )
                try:
                    if httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                except httpx2.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the HTTP server did not answer /healthz:\n{log.read_text()}")
                time.sleep(0.1)
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@asynccontextmanager
async def http_client(url: str, token: str | None, mode: str) -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(CALL_TIMEOUT)) as http,
        Client(
            streamable_http_client(url, http_client=http), mode=mode, read_timeout_seconds=CALL_TIMEOUT
        ) as client,
    ):
        yield client


Outage = Callable[[float], Awaitable[tuple[float, float]]]


async def http_load(
    url: str | Sequence[str],
    db: Path | str,
    token: str | None,
    clients: int = 32,
    duration: float = 30.0,
    seed: int = 1,
    outage: Outage | None = None,
) -> dict[str, Any]:
    """C clients mixing recall, remember and write_intent on `url` (a list: client c on the c-th,
    round robin) for `duration` seconds. `outage`, given the load's deadline, takes the database
    away in the middle and returns when it went down and came back (perf_counter times)."""
    urls = [url] if isinstance(url, str) else list(url)
    latencies: dict[str, list[float]] = {"recall": [], "remember": [], "write_intent": []}
    errors: list[str] = []
    failed: list[tuple[float, float, str]] = []  # each error's start, end and text
    remembered: list[str] = []
    intents: list[str] = []
    ready = 0
    all_ready = anyio.Event()
    window: dict[str, float] = {}

    async def one_client(c: int) -> None:
        nonlocal ready
        rng = random.Random(seed * 1000 + c)
        async with http_client(urls[c % len(urls)], token, MODES[c % 2]) as client:
            ready += 1
            if ready == clients:
                window["start"] = time.perf_counter()
                window["deadline"] = window["start"] + duration
                all_ready.set()
                if outage is not None:
                    tg.start_soon(disturb)
            await all_ready.wait()
            n = 0
            while time.perf_counter() < window["deadline"]:
                n += 1
                roll = rng.random()
                if roll < 0.5:
                    op, args = "recall", {"query": " ".join(rng.sample(WORDS, 2)), "limit": 5}
                elif roll < 0.9:
                    content = f"http client {c} note {n}: {' '.join(rng.sample(WORDS, 3))}"
                    op, args = "remember", {"content": content}
                else:
                    content = f"http client {c} intent {n}: next, {rng.choice(WORDS)}"
                    op, args = "write_intent", {"content": content}
                started = time.perf_counter()
                try:
                    result = await client.call_tool(op, args)
                except Exception as exc:  # a dropped connection or a timeout is an error to count
                    errors.append(f"client {c} {op}: {type(exc).__name__}: {exc}")
                    failed.append((started, time.perf_counter(), f"{type(exc).__name__}: {exc}"))
                    continue
                latencies[op].append(time.perf_counter() - started)
                if result.is_error:
                    errors.append(f"client {c} {op}: {_error_text(result)}")
                    failed.append((started, time.perf_counter(), _error_text(result)))
                elif op == "remember":
                    remembered.append(args["content"])
                elif op == "write_intent":
                    intents.append(args["content"])

    async def disturb() -> None:
        assert outage is not None
        window["down"], window["back"] = await outage(window["deadline"])

    load = os.getloadavg()[0]
    with anyio.fail_after(START_TIMEOUT + duration + CALL_TIMEOUT * 2):
        async with anyio.create_task_group() as tg:
            for c in range(clients):
                tg.start_soon(one_client, c)
    elapsed = time.perf_counter() - window["start"]
    facts = store_facts(db)
    stored = set(facts["contents"])
    calls = sum(len(v) for v in latencies.values())
    missing = [content for content in remembered if content not in stored]
    missing_intents = [content for content in intents if content not in facts["intents"]]
    report: dict[str, Any] = {
        "load": "http" if isinstance(db, Path) else "postgres",
        "servers": len(urls),
        "clients": clients,
        "duration_seconds": duration,
        "elapsed_seconds": round(elapsed, 2),
        "auth": token is not None,
        "calls": calls,
        "errors": len(errors),
        "error_samples": errors[:5],
        "calls_per_second": round(calls / elapsed, 1),
        "latency": latency_summary([s for v in latencies.values() for s in v]),
        "by_operation": {op: latency_summary(v) for op, v in latencies.items()},
        "remembered": len(remembered),
        "missing_memories": len(missing),
        "intents_written": len(intents),
        "missing_intents": len(missing_intents),
        "integrity": facts["integrity"],
        "doubled": len(facts["contents"]) - len(stored),
        "load_before": load,
        "ok": not errors and not missing and not missing_intents and facts["integrity"] == "ok" and calls > 0,
    }
    if outage is not None and "down" in window:
        report.update(outage_facts(failed, window["down"], window["back"], window["start"]))
        report["ok"] = (
            not report["errors_outside_outage"] and not report["unclear_errors"] and not missing
            and not missing_intents and facts["integrity"] == "ok" and not report["doubled"]
        )  # fmt: skip
    else:
        report["ok"] = report["ok"] and not report["doubled"]
    return report


RECOVERY_GRACE_S = 3.0  # a call started this soon after the database is back may still fail


def outage_facts(
    failed: list[tuple[float, float, str]], down: float, back: float, start: float
) -> dict[str, Any]:
    """Which errors fell in the outage (ended after it began, started before it was over plus a
    grace for the pool to reconnect), which did not say clearly what happened, and the outage."""
    inside = [(s, e, t) for s, e, t in failed if e >= down and s <= back + RECOVERY_GRACE_S]
    last_error = max((e for _, e, _ in inside), default=back)
    return {
        "outage_at_s": round(down - start, 2),
        "outage_seconds": round(back - down, 2),
        "errors_in_outage": len(inside),
        "errors_outside_outage": len(failed) - len(inside),
        "unclear_errors": sum(1 for _, _, t in failed if not all(w in t for w in CLEAR_OUTAGE_ERROR)),
        "slowest_error_s": round(max((e - s for s, e, _ in failed), default=0.0), 2),
        "last_error_after_back_s": round(max(0.0, last_error - back), 2),
    }


async def run_http(workdir: Path, clients: int, duration: float, auth: bool) -> dict[str, Any]:
    db = workdir / "http.db"
    token = make_token(db) if auth else None
    with http_server(db, workdir / "http-server.log", auth=auth) as url:
        return await http_load(url, db, token, clients=clients, duration=duration)


# postgres: S servers on one database, C clients, D seconds (and once more with a restart) ---------


@contextmanager
def throwaway_cluster() -> Iterator[Any]:
    """The tests' throwaway PostgreSQL cluster (tests/postgres_cluster.py), stopped at the end."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from postgres_cluster import Cluster, server_binaries

    binaries = server_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) were not found; or pass --db-url")
    cluster = Cluster(binaries)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


async def run_postgres(
    url: str,
    workdir: Path,
    servers: int,
    clients: int,
    duration: float,
    restart: Any = None,
    outage_s: float = 5.0,
) -> dict[str, Any]:
    """S HTTP servers on the empty database `url`; `restart` (a Cluster) takes it down mid-run."""

    async def outage(deadline: float) -> tuple[float, float]:
        await anyio.sleep(max(0.0, deadline - duration / 2 - outage_s / 2 - time.perf_counter()))
        down = time.perf_counter()
        await anyio.to_thread.run_sync(restart.stop_server)
        await anyio.sleep(outage_s)
        await anyio.to_thread.run_sync(restart.start_server)
        return down, time.perf_counter()

    token = make_token(url)
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(
                http_server(url, workdir / f"pg-server-{n}{'-restart' if restart else ''}.log")
            )
            for n in range(servers)
        ]
        return await http_load(
            urls, url, token, clients=clients, duration=duration, outage=outage if restart else None
        )


# Command line ------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    root = Path(__file__).resolve().parent.parent
    git = subprocess.run(
        ["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    return {
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "sqlite": sqlite3.sqlite_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "synchronous": os.environ.get("SOUL_MCP_SYNCHRONOUS", "FULL"),
        "git": git.stdout.strip(),
    }


def print_report(report: dict[str, Any]) -> None:
    if report["load"] == "stdio":
        lat = report["latency"]
        print(
            f"stdio: {report['processes']} processes x {report['writes_each']} remembers = {report['requested']}: "
            f"{report['errors']} errors, {report['present']} present, {report['doubled']} doubled, "
            f"integrity {report['integrity']}; {report['write_seconds']} s "
            f"({report['writes_per_second']} writes/s); latency p50 {lat['p50_ms']} ms, p95 {lat['p95_ms']} ms, "
            f"max {lat['max_ms']} ms; load {report['load_before']:.2f}"
        )
    else:
        lat = report["latency"]
        if report["load"] == "postgres":
            print(f"postgres: {report['servers']} servers, doubled memories {report['doubled']}", end="")
            if "outage_seconds" in report:
                print(
                    f"; restart at {report['outage_at_s']} s, down {report['outage_seconds']} s: "
                    f"{report['errors_in_outage']} errors in the outage, {report['errors_outside_outage']} "
                    f"outside, {report['unclear_errors']} unclear, slowest error {report['slowest_error_s']} s, "
                    f"last error {report['last_error_after_back_s']} s after it was back",
                    end="",
                )
            print()
        per_op = ", ".join(
            f"{op} {s['count']} (p50 {s['p50_ms']} / p95 {s['p95_ms']} ms)"
            for op, s in report["by_operation"].items()
        )
        print(
            f"http: {report['clients']} clients x {report['elapsed_seconds']} s: {report['calls']} calls, "
            f"{report['errors']} errors, {report['calls_per_second']} calls/s; latency p50 {lat['p50_ms']} ms, "
            f"p95 {lat['p95_ms']} ms, p99 {lat['p99_ms']} ms; {per_op}; missing memories "
            f"{report['missing_memories']}, missing intents {report['missing_intents']}, integrity "
            f"{report['integrity']}; load {report['load_before']:.2f}"
        )
    for sample in report["error_samples"]:
        print(f"  error: {sample}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("load", choices=["stdio", "http", "all", "postgres"])
    parser.add_argument("--processes", type=int, default=8, help="stdio servers (default 8)")
    parser.add_argument("--writes", type=int, default=500, help="remembers per stdio server (default 500)")
    parser.add_argument("--clients", type=int, help="HTTP clients (default 32; postgres 16)")
    parser.add_argument("--servers", type=int, default=3, help="HTTP servers in postgres (default 3)")
    parser.add_argument("--db-url", help="postgres: an empty database to use instead of a throwaway cluster")
    parser.add_argument("--no-restart", action="store_true", help="postgres: skip the run with a restart")
    parser.add_argument("--outage", type=float, default=5.0, help="postgres: seconds the database is down")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of HTTP load (default 30)")
    parser.add_argument("--no-auth", action="store_true", help="HTTP without tokens (--insecure-no-auth)")
    parser.add_argument("--workdir", type=Path, help="where the databases go (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soul-concurrency-"))
    workdir.mkdir(parents=True, exist_ok=True)
    reports: list[dict[str, Any]] = []
    try:
        if args.load in ("stdio", "all"):
            db = workdir / "stdio.db"
            for stale in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
                stale.unlink(missing_ok=True)
            reports.append(anyio.run(stdio_load, db, args.processes, args.writes))
            print_report(reports[-1])
        if args.load in ("http", "all"):
            for stale in ("http.db", "http.db-wal", "http.db-shm"):
                (workdir / stale).unlink(missing_ok=True)
            reports.append(anyio.run(run_http, workdir, args.clients or 32, args.duration, not args.no_auth))
            print_report(reports[-1])
        if args.load == "postgres":
            clients = args.clients or 16
            if args.db_url:
                reports.append(
                    anyio.run(run_postgres, args.db_url, workdir, args.servers, clients, args.duration)
                )
                print_report(reports[-1])
            else:
                with throwaway_cluster() as cluster:
                    for restart in (None,) if args.no_restart else (None, cluster):
                        url = cluster.url(cluster.new_database())
                        reports.append(
                            anyio.run(
                                run_postgres,
                                url,
                                workdir,
                                args.servers,
                                clients,
                                args.duration,
                                restart,
                                args.outage,
                            )
                        )
                        print_report(reports[-1])
    finally:
        if args.keep or args.workdir:
            print(f"databases kept in {workdir}", file=sys.stderr)
        else:
            for path in sorted(workdir.iterdir()):
                path.unlink()
            workdir.rmdir()
    result = {"machine": machine(), "reports": reports}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0 if all(r["ok"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
