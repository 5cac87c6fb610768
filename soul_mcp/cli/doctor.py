"""`soul-mcp doctor`: runs the checks of soul_mcp/doctor.py and prints their report."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from soul_mcp.cli import terminal
from soul_mcp.cli.command import Subcommands, db_source
from soul_mcp.cli.output import EXIT_DATABASE, EXIT_OK, emit, style
from soul_mcp.config import Settings

if TYPE_CHECKING:
    from soul_mcp.doctor import DoctorReport


def register(sub: Subcommands, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "doctor",
        parents=[common],
        help="check the database, its index, the configuration and what a client sees",
        description="Check the database's integrity, its schema version, that the full-text index "
        "matches the active memories, the configuration in effect, and what an MCP client sees "
        "(tools, resources, prompts, the size of wake_up). Exits 3 when anything is wrong.",
    )
    p.set_defaults(func=doctor)


def doctor(args: argparse.Namespace) -> int:
    """Check everything a working self needs; exit 3 when anything is wrong."""
    import anyio

    from soul_mcp.doctor import examine

    report = anyio.run(examine, Settings.load(args.db), db_source(args))
    emit(args, report.as_json(), report_text(report))
    return EXIT_OK if report.ok else EXIT_DATABASE


def report_text(report: DoctorReport) -> str:
    paint = style()
    lines = [paint(f"soul-mcp doctor: {report.db_path}", "bold"), ""]
    rows = [
        [paint("FAIL", "red", "bold") if not c.ok else paint("warn", "yellow") if c.warning
         else paint("ok", "green"), c.name, c.detail]
        for c in report.checks
    ]  # fmt: skip
    lines.append(terminal.table(["", "CHECK", "DETAIL"], rows, paint, indent="  "))
    config = report.config
    sync = config.synchronous
    if config.synchronous_in_effect is not None and config.synchronous_in_effect != sync:
        sync += f" (in effect: {config.synchronous_in_effect})"
    lines += [
        "",
        paint("Configuration", "bold"),
        f"  database     {config.db_path} (from {config.db_source.replace('default', 'the platform default')})",
        f"  synchronous  {sync} (SOUL_MCP_SYNCHRONOUS)",
        terminal.wrap(
            "  limits       ",
            f"memory {config.max_memory_chars:,} chars (SOUL_MCP_MAX_MEMORY_CHARS), "
            f"document {config.max_document_chars:,} chars (SOUL_MCP_MAX_DOCUMENT_CHARS)",
        ),
    ]
    view, wake = report.client_view, report.wake_up
    if view and wake:  # a client connects only after wake_up was measured
        trimmed = ", ".join(wake.trimmed) or "nothing trimmed"
        lines += [
            "",
            paint("What a client sees", "bold"),
            f"  server     {view.server}",
            terminal.wrap("  tools      ", ", ".join(view.tools)),
            terminal.wrap("  resources  ", ", ".join(view.resources + view.resource_templates)),
            terminal.wrap("  prompts    ", ", ".join(view.prompts)),
            f"  wake_up    {wake.used_chars:,} of {wake.budget_chars:,} characters, {trimmed}",
        ]
    problems = sum(not c.ok for c in report.checks)
    warnings = sum(c.ok and c.warning for c in report.checks)
    passed = "All checks passed." if not warnings else f"All checks passed, {warnings} with a warning."
    lines += ["", paint(passed, "green") if not problems else
              paint(f"{problems} problem{'s' if problems != 1 else ''} found.", "red", "bold")]  # fmt: skip
    return "\n".join(lines)
