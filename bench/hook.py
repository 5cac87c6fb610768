"""How long the SessionStart hook holds up a new session: `soul-mcp hook claude-code` run fresh, as
the host runs it, against a filled database.

Each run spawns the installed `soul-mcp` script (what `--install` writes into the host's
settings), writes Claude Code's SessionStart event to its stdin, and reads its answer to the end;
the time is from just before the spawn to the process's exit. For scale, the same is timed for a
bare interpreter (`python -c pass`) and for `soul-mcp version` (the command line's own start). The
database is filled the way bench/latency.py does (its natural corpus), then given a soul and an
intent, so the wake-up has every section.

    .venv/bin/python bench/hook.py                                # 10k memories, 30 runs per row
    .venv/bin/python bench/hook.py --memories 100000 --runs 20 --workdir /tmp/soul-bench
    .venv/bin/python bench/hook.py --json /tmp/hook.json

Results: median (p50) and p95 (nearest rank) in seconds per row, and the context's length.
"""

from __future__ import annotations

import argparse
import asyncio
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import latency

from soul_mcp.config import Settings
from soul_mcp.core import AgentSelf
from soul_mcp.models import Actor

EVENT = json.dumps(
    {
        "session_id": "bench",
        "transcript_path": "/tmp/bench.jsonl",
        "cwd": "/tmp",
        "hook_event_name": "SessionStart",
        "source": "startup",
    }
).encode()


def soul_mcp() -> list[str]:
    script = Path(sys.executable).parent / ("soul-mcp.exe" if os.name == "nt" else "soul-mcp")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "soul_mcp"]


async def prepare(path: Path, memories: int, seed: int) -> None:
    corpus = latency.NaturalCorpus(seed)
    await latency.fill(path, memories, corpus)
    agent_self = await AgentSelf.open(Settings.load(path))
    try:
        me = Actor(name="bench")
        soul = "I am Wren, Maya's assistant. " + "I keep what matters and say when I do not know. " * 20
        await agent_self.write("soul", soul, me, reason="bench")
        await agent_self.write("intent", "Finish the billing refactor; then the release notes.", me)
    finally:
        await agent_self.close()


def time_runs(argv: list[str], runs: int, stdin: bytes) -> tuple[list[float], bytes]:
    times, out = [], b""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOUL_MCP_")}
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{argv} failed: {done.stderr.decode(errors='replace')}")
        out = done.stdout
    return times, out


def row(times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "p95_s": round(latency.percentile(ordered, 95), 3),
        "runs": len(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=30, help="spawns per row (default 30)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, help="keep the filled database here and reuse it")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    folder = args.workdir or Path(tempfile.mkdtemp(prefix="soul-hook-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / f"hook-{args.memories}-s{args.seed}.db"
    try:
        if not db.exists():
            asyncio.run(prepare(db, args.memories, args.seed))
        command = [*soul_mcp(), "hook", "claude-code", "--db", str(db)]
        time_runs(command, 2, EVENT)  # the page cache warm, as on a machine in use
        results: dict[str, Any] = {"memories": args.memories, "load_before": os.getloadavg()[0]}
        results["python -c pass"] = row(time_runs([sys.executable, "-c", "pass"], args.runs, b"")[0])
        results["soul-mcp version"] = row(time_runs([*soul_mcp(), "version"], args.runs, b"")[0])
        hook_times, answer = time_runs(command, args.runs, EVENT)
        results["soul-mcp hook claude-code"] = row(hook_times)
        context = json.loads(answer)["hookSpecificOutput"]["additionalContext"]
        results["context_chars"] = len(context)
        results["load_after"] = os.getloadavg()[0]
    finally:
        if args.workdir is None:
            shutil.rmtree(folder, ignore_errors=True)

    print(f"{args.memories} memories, {args.runs} fresh runs per row (seconds, spawn to exit)")
    for name in ("python -c pass", "soul-mcp version", "soul-mcp hook claude-code"):
        print(f"  {name:28} p50 {results[name]['p50_s']:.3f}  p95 {results[name]['p95_s']:.3f}")
    print(f"  context: {results['context_chars']} characters; load average {results['load_before']:.2f} "
          f"-> {results['load_after']:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
