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

The load generator runs in this one Python process: on a small machine it competes with the servers
for the CPU, so the figures are a floor, and `load` (the 1-minute load average before the run) says
how busy the machine was. It measures and checks; it asserts nothing about speed.

    .venv/bin/python bench/concurrency.py stdio                      # 8 x 500
    .venv/bin/python bench/concurrency.py http                       # 32 clients x 30 s
    .venv/bin/python bench/concurrency.py all --json /tmp/concurrency.json
    .venv/bin/python bench/concurrency.py stdio --processes 4 --writes 100 --keep

The exit code is 1 when a check failed (an error, a missing or doubled write, integrity not ok).
The test suite runs small versions of both loads through `stdio_load` and `http_load`
(tests/test_durability.py).
"""

from __future__ import annotations

import argparse
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
from collections.abc import AsyncIterator, Iterator, Sequence
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


def server_env(db: Path) -> dict[str, str]:
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


def make_token(db: Path, name: str = "bench") -> str:
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
def http_server(db: Path, log: Path, auth: bool = True) -> Iterator[str]:
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


async def http_load(
    url: str, db: Path, token: str | None, clients: int = 32, duration: float = 30.0, seed: int = 1
) -> dict[str, Any]:
    """C clients mixing recall, remember and write_intent on `url` for `duration` seconds."""
    latencies: dict[str, list[float]] = {"recall": [], "remember": [], "write_intent": []}
    errors: list[str] = []
    remembered: list[str] = []
    intents: list[str] = []
    ready = 0
    all_ready = anyio.Event()
    window: dict[str, float] = {}

    async def one_client(c: int) -> None:
        nonlocal ready
        rng = random.Random(seed * 1000 + c)
        async with http_client(url, token, MODES[c % 2]) as client:
            ready += 1
            if ready == clients:
                window["start"] = time.perf_counter()
                window["deadline"] = window["start"] + duration
                all_ready.set()
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
                    continue
                latencies[op].append(time.perf_counter() - started)
                if result.is_error:
                    errors.append(f"client {c} {op}: {_error_text(result)}")
                elif op == "remember":
                    remembered.append(args["content"])
                elif op == "write_intent":
                    intents.append(args["content"])

    load = os.getloadavg()[0]
    with anyio.fail_after(START_TIMEOUT + duration + CALL_TIMEOUT * 2):
        async with anyio.create_task_group() as tg:
            for c in range(clients):
                tg.start_soon(one_client, c)
    elapsed = time.perf_counter() - window["start"]
    facts = file_facts(db)
    stored = set(facts["contents"])
    calls = sum(len(v) for v in latencies.values())
    missing = [content for content in remembered if content not in stored]
    missing_intents = [content for content in intents if content not in facts["intents"]]
    return {
        "load": "http",
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
        "load_before": load,
        "ok": not errors and not missing and not missing_intents and facts["integrity"] == "ok" and calls > 0,
    }


async def run_http(workdir: Path, clients: int, duration: float, auth: bool) -> dict[str, Any]:
    db = workdir / "http.db"
    token = make_token(db) if auth else None
    with http_server(db, workdir / "http-server.log", auth=auth) as url:
        return await http_load(url, db, token, clients=clients, duration=duration)


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
    parser.add_argument("load", choices=["stdio", "http", "all"])
    parser.add_argument("--processes", type=int, default=8, help="stdio servers (default 8)")
    parser.add_argument("--writes", type=int, default=500, help="remembers per stdio server (default 500)")
    parser.add_argument("--clients", type=int, default=32, help="HTTP clients (default 32)")
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
            reports.append(anyio.run(run_http, workdir, args.clients, args.duration, not args.no_auth))
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
