"""The web page at 10k memories: how heavy the overview is, and how long it takes to render.

A database is filled as bench/latency.py fills it (its natural corpus), given a soul and an intent,
then served by a real `soul-mcp ui --no-browser` process, logged into with its one-time link. Each
page is fetched RUNS times with fresh requests (a new connection each, nothing cached) over
loopback; the time is from sending the request to the last byte of the answer, which on loopback
is the server's time to render (the overview: five documents, the counts, the clients' activity
and a whole wake_up) plus well under a millisecond of transport.

Page weight: the bytes of the overview's HTML, its CSS and its JavaScript, as sent and gzipped
(as a reverse proxy with compression would send them; soul-mcp itself does not compress).

    .venv/bin/python bench/web.py                       # 10k memories, 50 fetches per page
    .venv/bin/python bench/web.py --memories 100000 --runs 30 --workdir /tmp/soul-bench
    .venv/bin/python bench/web.py --json /tmp/web.json
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.models import Actor

PAGES = ("/ui/", "/ui/memories", "/ui/memories?q=coffee+with+Maya", "/ui/documents/soul", "/ui/activity")
LINK = re.compile(r"^soul-mcp ui: (http://[^/]+)/ui/login\?key=(\S+)$")


async def prepare(path: Path, memories: int, seed: int) -> None:
    await latency.fill(path, memories, latency.NaturalCorpus(seed))
    agent_self = await AgentSelf.open(Settings.load(path))
    try:
        me = Actor(name="bench")
        soul = "I am Wren, Maya's assistant. " + "I keep what matters and say when I do not know. " * 20
        await agent_self.write("soul", soul, me, reason="bench")
        await agent_self.write("intent", "Finish the billing refactor; then the release notes.", me)
    finally:
        await agent_self.close()


def start_ui(db: Path) -> tuple[subprocess.Popen[str], str, str]:
    script = Path(sys.executable).parent / "soul-mcp"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "soul_mcp"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUL_MCP_")}
    process = subprocess.Popen(
        [*command, "ui", "--no-browser", "--db", str(db)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert process.stdout is not None
    found = LINK.match(process.stdout.readline().strip())
    if found is None:
        process.kill()
        raise SystemExit("soul-mcp ui did not print its link")
    return process, found.group(1), found.group(2)


def timed(base: str, cookies: dict[str, str], path: str, runs: int) -> tuple[list[float], bytes]:
    times, body = [], b""
    for _ in range(runs):
        # A new client each time: a new connection, as a fresh page load without keep-alive.
        with httpx2.Client(base_url=base, cookies=cookies, timeout=60) as client:
            started = time.perf_counter()
            answer = client.get(path)
            body = answer.content
            times.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise SystemExit(f"{path} answered {answer.status_code}")
    return times, body


def row(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(latency.percentile(ordered, 95) * 1000, 1),
        "runs": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50, help="fetches per page (default 50)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep the filled database here and reuse it")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    folder = args.workdir or Path(tempfile.mkdtemp(prefix="soul-web-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / f"web-{args.memories}-s{args.seed}.db"
    process = None
    try:
        if not db.exists():
            asyncio.run(prepare(db, args.memories, args.seed))
        process, base, key = start_ui(db)
        with httpx2.Client(base_url=base, timeout=60) as client:
            entered = client.get(f"/ui/login?key={key}")
            if entered.status_code != 303:
                raise SystemExit(f"the one-time link answered {entered.status_code}")
            cookies = dict(client.cookies)
        results: dict[str, Any] = {"memories": args.memories, "load_before": os.getloadavg()[0]}
        weight: dict[str, int] = {}
        for path in PAGES:
            timed(base, cookies, path, 2)  # the first render loads the recall index
            times, body = timed(base, cookies, path, args.runs)
            results[path] = row(times)
            if path == "/ui/":
                weight["html"], weight["html_gzip"] = len(body), len(gzip.compress(body))
        for name, path in (("css", "/ui/static/web.css"), ("js", "/ui/static/live.js")):
            body = timed(base, cookies, path, 1)[1]
            weight[name], weight[f"{name}_gzip"] = len(body), len(gzip.compress(body))
        weight["total"] = weight["html"] + weight["css"] + weight["js"]
        weight["total_gzip"] = weight["html_gzip"] + weight["css_gzip"] + weight["js_gzip"]
        results["overview_weight_bytes"] = weight
        results["load_after"] = os.getloadavg()[0]
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
