"""The hosts whose session-start hook can put text into a new session's context, where each keeps
its hooks, and our entry merged into (or taken out of) that file with nothing else in it touched.

Checked against each host's documentation (2026-12). All three share one shape:

    {"hooks": {"SessionStart": [{"matcher": M, "hooks": [{"type": "command", "command": C, ...}]}]}}

and read the same answer on stdout: {"hookSpecificOutput": {"hookEventName": "SessionStart",
"additionalContext": TEXT}}.
- Claude Code: ~/.claude/settings.json, .claude/settings.json, .claude/settings.local.json; the
  matcher is the session's source (startup, resume, clear, compact), `|` between several; timeout
  in seconds.
- Gemini CLI: ~/.gemini/settings.json, .gemini/settings.json; a lifecycle matcher is one exact
  source, so "*" for all; timeout in milliseconds; `name` is shown in its /hooks panel.
- Codex: ~/.codex/hooks.json, .codex/hooks.json; the matcher a regular expression over the source
  (startup, resume, clear); timeout in seconds; it asks the user to trust a new hook once.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from soul_mcp.errors import InvalidInput

EVENT = "SessionStart"
# The host kills a hook that runs longer; ours gives up well before (hook.py's --timeout).
HOST_TIMEOUT_S = 10
NEW_FILE_MODE = 0o600  # a settings file can hold tokens in its `env` block


class HookSettingsError(InvalidInput):
    """A settings file we will not change: it is not JSON, or not shaped as the host documents."""


@dataclass(frozen=True)
class HookHost:
    name: str
    title: str
    files: dict[str, str]  # scope -> file, under the home folder (user) or the project folder
    matcher: str
    timeout: int  # in the host's unit
    extra: dict[str, Any] = field(default_factory=dict)

    def handler(self, command: str) -> dict[str, Any]:
        return {"type": "command", "command": command, "timeout": self.timeout, **self.extra}

    def group(self, command: str) -> dict[str, Any]:
        return {"matcher": self.matcher, "hooks": [self.handler(command)]}

    def settings_file(self, scope: str, project: Path) -> Path:
        base = Path.home() if scope == "user" else project
        return base / self.files[scope]


HOSTS = {
    host.name: host
    for host in (
        HookHost(
            "claude-code",
            "Claude Code",
            {
                "user": ".claude/settings.json",
                "project": ".claude/settings.json",
                "local": ".claude/settings.local.json",
            },
            "startup|resume|clear|compact",
            HOST_TIMEOUT_S,
        ),
        HookHost(
            "gemini",
            "Gemini CLI",
            {"user": ".gemini/settings.json", "project": ".gemini/settings.json"},
            "*",
            HOST_TIMEOUT_S * 1000,
            {"name": "soul-mcp-wake", "description": "the soul-mcp self in the new session's context"},
        ),
        HookHost(
            "codex",
            "Codex",
            {"user": ".codex/hooks.json", "project": ".codex/hooks.json"},
            "startup|resume|clear",
            HOST_TIMEOUT_S,
            {"statusMessage": "Waking the soul-mcp self"},
        ),
    )
}


def is_ours(handler: Any, host: HookHost) -> bool:
    """A handler that runs some soul-mcp's `hook HOST`: ours to replace or remove, whatever the
    path or options it was installed with."""
    if not isinstance(handler, dict) or not isinstance(handler.get("command"), str):
        return False
    try:
        words = shlex.split(handler["command"], posix=os.name != "nt")
    except ValueError:  # unbalanced quotes: someone else's command
        return False
    soul_mcp = any(Path(w.strip('"')).name in {"soul-mcp", "soul-mcp.exe"} for w in words[:1]) or (
        "-m" in words and "soul_mcp" in words
    )
    runs_hook = any(words[i : i + 2] == ["hook", host.name] for i in range(len(words) - 1))
    return soul_mcp and runs_hook


def _groups(settings: dict[str, Any], create: bool) -> list[Any] | None:
    hooks = settings.get("hooks")
    if hooks is None:
        if not create:
            return None
        hooks = settings["hooks"] = {}
    if not isinstance(hooks, dict):
        raise HookSettingsError('its "hooks" is not an object')
    groups = hooks.get(EVENT)
    if groups is None:
        if not create:
            return None
        groups = hooks[EVENT] = []
    if not isinstance(groups, list):
        raise HookSettingsError(f'its "hooks"."{EVENT}" is not a list')
    return groups


def _take_ours(groups: list[Any], host: HookHost) -> int:
    """Remove our handlers from every group, and the groups left empty by that; how many went."""
    removed = 0
    for group in list(groups):
        handlers = group.get("hooks") if isinstance(group, dict) else None
        if not isinstance(handlers, list):
            continue
        kept = [h for h in handlers if not is_ours(h, host)]
        if len(kept) < len(handlers):
            removed += len(handlers) - len(kept)
            if kept:
                group["hooks"] = kept
            else:
                groups.remove(group)
    return removed


def merge_hook(settings: dict[str, Any], host: HookHost, command: str) -> bool:
    """Put our hook into `settings` (in place), once; False when it was there already as is."""
    groups = _groups(settings, create=True)
    assert groups is not None
    ours = [
        (group, h)
        for group in groups
        if isinstance(group, dict) and isinstance(group.get("hooks"), list)
        for h in group["hooks"]
        if is_ours(h, host)
    ]
    if len(ours) == 1 and ours[0][1] == host.handler(command) and ours[0][0].get("matcher") == host.matcher:
        return False
    _take_ours(groups, host)
    groups.append(host.group(command))
    return True


def remove_hook(settings: dict[str, Any], host: HookHost) -> bool:
    """Take our hook out of `settings` (in place), and the containers it leaves empty; False when
    it was not there."""
    groups = _groups(settings, create=False)
    if groups is None or not _take_ours(groups, host):
        return False
    hooks = settings["hooks"]
    if not groups:
        del hooks[EVENT]
    if not hooks:
        del settings["hooks"]
    return True


def read_settings(path: Path) -> dict[str, Any]:
    """The settings in `path` ({} when it does not exist or is empty); refused, with the file left
    alone, when it is not a JSON object."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError:
        raise HookSettingsError(f"{path} is not UTF-8 text; nothing was changed") from None
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise HookSettingsError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}; comments "
            "are not JSON either); nothing was changed: fix it, or add the hook by hand from --print"
        ) from None
    if not isinstance(data, dict):
        raise HookSettingsError(f"{path} holds JSON but not an object; nothing was changed")
    return data


def write_settings(path: Path, settings: dict[str, Any]) -> Path:
    """Replace the file atomically (a reader sees the old file or the new one, never half), with
    the mode it had; a settings file kept as a link (dotfiles) stays one: its target is written.
    Returns the file written."""
    target = path.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else NEW_FILE_MODE
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(json.dumps(settings, indent=2, ensure_ascii=False) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target
