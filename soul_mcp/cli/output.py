"""What a command prints: its result as text or JSON on stdout, errors on stderr, progress bars,
and the exit codes scripts can rely on (listed in soul_mcp/cli/__init__.py)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from soul_mcp.cli import terminal

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_DATABASE = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # as a shell reports a command stopped by Ctrl-C


def emit(args: argparse.Namespace, model: Any, text: str) -> None:
    """Print `text`, or with --json the model (a pydantic model, or plain data) as JSON."""
    if args.json:
        data = model.model_dump(mode="json") if hasattr(model, "model_dump") else model
        print(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        print(text)


def error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def refuse(message: str) -> int:
    error(message)
    return EXIT_REFUSED


def style() -> terminal.Style:
    return terminal.Style(terminal.colour_enabled(sys.stdout))


def clean_name(name: str) -> str:
    """An author or client name made safe to print: older databases may hold escape codes."""
    from soul_mcp.core.text import clean_name  # imported here: soul_mcp.core is not light

    return clean_name(name)


def terminal_progress(label: str) -> Callable[[int, int], None] | None:
    """A one-line bar on stderr for jobs big enough to wait for; none when stderr is not a
    terminal (scripts and CI logs get only the summary)."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        if total < 200:
            return
        width = 30
        filled = width * done // total
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\r" + " " * (len(label) + width + 2 * len(str(total)) + 6) + "\r")
        sys.stderr.flush()

    return show


def logged_progress(label: str) -> Callable[[int, int], None]:
    """A progress bar on stderr: redrawn in place at a terminal, else a line per tenth of the way
    (a job that takes minutes, such as a reindex, is seen to move in logs too)."""
    at_terminal = sys.stderr.isatty()
    shown = [-1]

    def show(done: int, total: int) -> None:
        if total == 0:
            return
        if at_terminal:
            filled = 30 * done // total
            end = "\n" if done == total else ""
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}{end}")
        elif 10 * done // total > shown[0]:
            shown[0] = 10 * done // total
            sys.stderr.write(f"{label}: {done}/{total}\n")
        sys.stderr.flush()

    return show
