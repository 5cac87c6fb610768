"""Cold start of `soul-mcp serve` over stdio: spawn to the first `tools/list` answer, per protocol era.

Each run spawns a fresh server and speaks to it as a host does, one step after the other:

- handshake era (2025-11-25): `initialize`, wait for its answer, `notifications/initialized` and
  `tools/list`, wait for that answer;
- 2026-07-28 era: `server/discover`, wait for its answer, `tools/list`, wait for that answer.

The time is taken from just before the spawn to the moment the `tools/list` answer is read. The
warm start's cache is primed by one untimed start per era; `plain` rows turn it off
(SOUL_MCP_WARM_START=0). By default a minimal JSON-RPC client on the pipes, so no client library is
timed; `--client sdk` uses `mcp.Client` instead (`mode="legacy"`, `mode="auto"`), from its
construction to `list_tools()` returning.

    .venv/bin/python bench/cold_start.py                      # 15 runs per row, an empty database
    .venv/bin/python bench/cold_start.py --runs 20 --db /tmp/soul-bench/fill-100000-s7-v2.db
    .venv/bin/python bench/cold_start.py --rows warm --client sdk --json /tmp/cold.json

`--db` is copied once into a temporary folder (the server may migrate it); without it every run
opens a new empty database. The servers run a copy of soul_mcp taken at the start: the cache is
keyed by a hash of the source files, which an edit made meanwhile would change. Results: median and
p95 (nearest rank) in seconds, per row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "cold-start-bench", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}
INITIALIZE = {
    "protocolVersion": "2025-11-25",
    "capabilities": {},
    "clientInfo": {"name": "cold-start-bench", "version": "1"},
}
# era -> the steps: each a list of messages sent together, then the id whose answer ends the step
STEPS: dict[str, list[tuple[list[dict[str, Any]], int]]] = {
    "handshake": [
        ([{"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": INITIALIZE}], 0),
        (
            [
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
                {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            ],
            1,
        ),
    ],
    "2026": [
        ([{"jsonrpc": "2.0", "id": 0, "method": "server/discover", "params": {"_meta": ENVELOPE}}], 0),
        ([{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": ENVELOPE}}], 1),
    ],
}


def one_start(era: str, db: Path, env: dict[str, str]) -> float:
    """Seconds from spawn to the tools/list answer."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "soul_mcp", "serve", "--db", str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        for messages, wanted in STEPS[era]:
            process.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in messages))
            process.stdin.flush()
            while True:
                line = process.stdout.readline()
                if not line:
                    raise RuntimeError(f"the server closed stdout before answering id {wanted}")
                answer = json.loads(line)
                if answer.get("id") == wanted and "method" not in answer:
                    if "result" not in answer:
                        raise RuntimeError(f"error answer: {answer}")
                    break
        elapsed = time.perf_counter() - started
    finally:
        process.stdin.close()
        process.wait(timeout=60)
        process.stdout.close()
    return elapsed


def one_sdk_start(era: str, db: Path, env: dict[str, str]) -> float:
    """Seconds from the client's construction (it spawns the server) to list_tools() returning."""
    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "soul_mcp", "serve", "--db", str(db)], env=env
    )

    async def run() -> float:
        started = time.perf_counter()
        async with Client(params, mode="legacy" if era == "handshake" else "auto") as client:
            await client.list_tools()
            return time.perf_counter() - started

    return anyio.run(run)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--db", type=Path, help="a database to start on (copied first)")
    parser.add_argument("--rows", default="warm,plain", help="warm, plain or both (comma-separated)")
    parser.add_argument("--eras", default="handshake,2026")
    parser.add_argument("--client", choices=("raw", "sdk"), default="raw")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="soul-cold-") as tmp:
        work = Path(tmp)
        db = work / "soul.db"
        if args.db is not None:
            shutil.copy2(args.db, db)
        env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH"}}
        shutil.copytree(
            ROOT / "soul_mcp", work / "code" / "soul_mcp", ignore=shutil.ignore_patterns("__pycache__")
        )
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work / "code"), env.get("PYTHONPATH")]))
        env["PYTHONSAFEPATH"] = "1"  # `python -m` would otherwise import soul_mcp from the current folder
        env["SOUL_MCP_CACHE_DIR"] = str(work / "cache")
        env["SOUL_MCP_LOG_LEVEL"] = "WARNING"  # the server's stderr is the bench's with --client sdk
        start = one_start if args.client == "raw" else one_sdk_start
        for row in args.rows.split(","):
            for era in args.eras.split(","):
                row_env = env | {"SOUL_MCP_WARM_START": "1" if row == "warm" else "0"}
                start(era, db, row_env)  # primes the cache (warm) and the file system
                times = []
                for _ in range(args.runs):
                    if args.db is None:
                        db.unlink(missing_ok=True)
                    times.append(start(era, db, row_env))
                name = f"{row} {era} ({args.client})"
                results[name] = {
                    "runs": len(times),
                    "median_s": statistics.median(times),
                    "p95_s": p95(times),
                    "min_s": min(times),
                    "max_s": max(times),
                }
                print(
                    f"{name:22} median {statistics.median(times):.3f} s  p95 {p95(times):.3f} s"
                    f"  (min {min(times):.3f}, max {max(times):.3f}, {len(times)} runs)",
                    flush=True,
                )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
