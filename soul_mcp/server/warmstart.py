"""Warm start for `soul-mcp serve`: answer a client's opening requests from a cache while the SDK loads.

Why. A host spawns `soul-mcp serve` and waits for the answers to `initialize` and `tools/list`
(handshake era), or to `server/discover` and `tools/list` (2026-07-28 era), before its agent can do
anything. Importing the MCP SDK (pydantic building the protocol models) takes about half a second
or more on a small machine, and a plain start cannot answer before it is done. Those answers are the
same at every start of the same code, so they are kept in a small JSON file and given at once,
while a background thread imports the SDK and builds the server.

Everything else stays the SDK's work. It receives every message the client sent, in order, except
a `tools/list` answered early (and, in the 2026 era, any request answered early but the first): the
`initialize` answered early reaches it (so its session knows the client's name and capabilities:
memories are signed with that name), and so does a first 2026-era request (the first request
settles the connection's era, for the SDK as here). Its own answers to ids that were already
answered are dropped on the way out. Nothing here builds protocol objects, and beyond the stdio
guard nothing parses more than those requests.

    stdin ─▶ reader thread ─▶ inbox ─┬─▶ before the server is ready: the main thread answers
                                     │   the opening requests from the cache, keeps the rest
                                     └─▶ once ready: _LineSource ─▶ the SDK's stdio_server ─▶ server
                                         (the stdio guard: answers, via _Wire, what the SDK would drop)
    stdout ◀─ _Wire ◀─ _Sink ◀─ SDK (drops answers already given; copies new answers to
                                      opening requests into the cache)

The stdio guard (stdio_guard.py): the SDK drops a line it cannot parse (invalid JSON or UTF-8, a
lone surrogate, params that are not an object, an id of the wrong type) without answering, so the
client would wait for its timeout. Each line is checked before the SDK reads it; such a line gets
a JSON-RPC error answer instead, written through the same _Wire, one whole line at a time. Nothing
is answered from the cache for a line the guard will refuse.

The cache: a JSON file in the user cache folder (`SOUL_MCP_CACHE_DIR` overrides the folder),
named after and valid only for the fingerprint it was written with: soul-mcp's version and source
files, the installed mcp, mcp-types, pydantic and pydantic-core, the Python version, the settings
and the SOUL_MCP_* environment. For each negotiated protocol version it holds the `result` objects
the SDK itself wrote for `initialize` and for `tools/list`, and it stores the SDK's negotiation rule
(the handshake-era versions and the latest one) so that the early answer names the version the SDK
will settle on. 2026-era answers are kept per request: each request carries its protocol version
and the client's capabilities in `params._meta`, so the key is the method and the whole params but
the client's name and version (which neither answer reads, and which are answered early only when
plainly valid); a request is answered early only when the SDK already answered the same one, and
the newest 16 such entries are kept. A missing, stale or corrupt file (ignored, logged at debug
level) means a start like a plain one, during which the SDK's answers are captured and the file
is rewritten (a temporary file and os.replace, so concurrent starts never leave a torn file).

Where the SDK offers no public call, this reaches into it (server/sdk_private.py: the low-level
server under MCPServer, to run it on these streams). Should an SDK release move that, the server
starts as `MCPServer.run()` would (the plain start, without the stdio guard) and logs why; messages
already read from stdin are handed to it first, through a pipe. Its negotiation constants missing
only means no new answers are cached.

When the client closes stdin, the SDK ends the session as on a plain start (a request it is still
handling is answered "Connection closed"); when everything the client asked was answered from the
cache, the process exits without opening the database. If the server fails to start, the error
reaches the command line as it would without any of this (traceback on stderr, exit code 1).

This relies on one rule for the rest of the server: what `initialize` and `tools/list` answer may
depend on the code, the installed packages and the settings, never on the database's content.

Not accelerated, only passed through: a handshake at a protocol version the cache does not hold
yet, a 2026-era request the SDK has not answered before (other capabilities, a cursor), a request
of the other era than the first one, and everything after a malformed first line. Their messages
wait, in order, until the SDK is ready, as in a plain start. SOUL_MCP_WARM_START=0 turns
the cache off: the server runs as `MCPServer.run()` would, but reads and writes through the same
reader, guard and _Wire.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import logging
import os
import queue
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import soul_mcp
from soul_mcp.server import sdk_private
from soul_mcp.server.stdio_guard import loads_as_the_sdk, screen

if TYPE_CHECKING:
    from mcp.server import MCPServer

    from soul_mcp.config import Settings

log = logging.getLogger(__name__)

CACHE_DIR_ENV = "SOUL_MCP_CACHE_DIR"
WARM_START_ENV = "SOUL_MCP_WARM_START"
CACHE_FORMAT = 2
# Cache files of other installs (another venv, an older version) are deleted once this old.
_STALE_AFTER_S = 30 * 86_400
INITIALIZE = "initialize"
TOOLS_LIST = "tools/list"
DISCOVER = "server/discover"
# Variables that cannot change what initialize and tools/list say. Every other SOUL_MCP_* variable
# is part of the fingerprint, in case one ever shapes a tool description.
_ENV_OUTSIDE_FINGERPRINT = frozenset({"SOUL_MCP_DB", "SOUL_MCP_LOG_LEVEL", CACHE_DIR_ENV, WARM_START_ENV})
# Installed packages whose code shapes the two answers (the SDK, its types, the schema generator).
_PACKAGES = ("mcp", "mcp_types", "pydantic", "pydantic_core")
# The 2026-07-28 envelope keys: a request carrying the first belongs to that protocol era.
_MODERN_ENVELOPE_KEY = "io.modelcontextprotocol/protocolVersion"
_CLIENT_INFO_KEY = "io.modelcontextprotocol/clientInfo"
# 2026-era answers are kept per request (envelope included), so each host's requests have their
# own entry; the newest this many are kept.
_MODERN_ENTRIES = 16
# Once the server is ready, this many client messages are still looked at for a handshake whose
# answer is worth caching; a session that has not asked by then is not going to.
_WATCH_LIVE_MESSAGES = 16

# What the inbox carries: (kind, value).
_LINE, _EOF, _READY, _FAILED = "line", "eof", "ready", "failed"

_SWITCH_INTERVAL_LOADING = 0.0005  # seconds; see _serve_warm

_IdKey = tuple[str, "int | str"]


# The cache ---------------------------------------------------------------------------------------


@dataclass
class Cache:
    """Handshake answers the SDK gave, per negotiated protocol version, and its negotiation rule;
    2026-era answers per request."""

    handshake_versions: tuple[str, ...]
    latest_handshake: str
    # negotiated version -> method ("initialize" or "tools/list") -> the JSON-RPC `result` object
    answers: dict[str, dict[str, dict[str, Any]]]
    # _modern_key of a server/discover or tools/list request -> the `result` object, oldest first
    modern: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def negotiate(self, requested: object) -> str:
        """The SDK's rule (mcp.server.runner, `_negotiate_initialize`): the client's version when
        the SDK speaks it, else the latest handshake-era version."""
        if isinstance(requested, str) and requested in self.handshake_versions:
            return requested
        return self.latest_handshake


def cache_path(expected_fingerprint: str) -> Path:
    """One file per fingerprint, so that two installs used side by side (a pipx install for one
    host, a development venv for another) do not overwrite each other's cache at every start."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        folder = Path(override).expanduser()
    else:
        from platformdirs import user_cache_dir

        folder = Path(user_cache_dir("soul-mcp", appauthor=False))
    return folder / f"warm-start-{expected_fingerprint[:16]}.json"


def fingerprint(settings: Settings) -> str:
    """Everything the cached answers depend on; when any of it changes the cache is stale.

    Costs ~5 ms: the package's source files are read and hashed (a code change must invalidate the
    cache, and mtimes are not reliable across checkouts), the installed versions come from the
    dist-info folder names (importlib.metadata alone takes ~20 ms to import).
    """
    digest = hashlib.sha256()

    def add(text: str) -> None:
        digest.update(text.encode("utf-8", errors="surrogateescape") + b"\n")

    add(f"format {CACHE_FORMAT}; soul-mcp {soul_mcp.__version__}; python {sys.version_info[:2]}")
    for name in _PACKAGES:
        add(f"{name} {_installed(name)}")
    # The database path is the one setting that cannot matter (the answers never read the database).
    add(repr(dataclasses.replace(settings, db_path=Path())))
    for key in sorted(os.environ):
        if key.startswith("SOUL_MCP_") and key not in _ENV_OUTSIDE_FINGERPRINT:
            add(f"{key}={os.environ[key]}")
    package = Path(soul_mcp.__file__).parent
    for path in sorted(package.rglob("*.py")):
        add(path.relative_to(package).as_posix())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _installed(name: str) -> str:
    """Where a package is imported from and the names of its dist-info folders (they carry the
    version); the file's size and mtime when there is no dist-info (a source checkout)."""
    from importlib.util import find_spec

    spec = find_spec(name)
    if spec is None or spec.origin is None:
        return "absent"
    origin = Path(spec.origin)
    try:
        dists = sorted(
            entry
            for entry in os.listdir(origin.parent.parent)
            if entry.endswith(".dist-info") and entry.split("-")[0].lower() == name
        )
        if not dists:
            stat = origin.stat()
            dists = [f"{stat.st_size}:{stat.st_mtime_ns}"]
    except OSError as exc:
        dists = [f"unreadable: {exc}"]
    return f"{origin} {' '.join(dists)}"


def load_cache(path: Path, expected_fingerprint: str) -> Cache | None:
    """The cache at `path` if it is readable, well formed and written for this fingerprint."""
    try:
        data = json.loads(path.read_bytes())
        return _parse_cache(data, expected_fingerprint)
    except FileNotFoundError:
        log.debug("no warm-start cache at %s yet", path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.debug("ignoring the warm-start cache %s: %s", path, exc)
    return None


def _parse_cache(data: Any, expected_fingerprint: str) -> Cache:
    if data.get("format") != CACHE_FORMAT:
        raise ValueError(f"format {data.get('format')!r}, not {CACHE_FORMAT}")
    if data["fingerprint"] != expected_fingerprint:
        raise ValueError("written for other code, packages or settings")
    versions = tuple(data["handshake_versions"])
    latest = data["latest_handshake"]
    if not all(isinstance(v, str) for v in versions) or latest not in versions:
        raise ValueError("malformed negotiation rule")
    answers: dict[str, dict[str, dict[str, Any]]] = {}
    for version, methods in data["answers"].items():
        if version not in versions:
            raise ValueError(f"answers for unknown version {version!r}")
        for method, result in methods.items():
            if method not in (INITIALIZE, TOOLS_LIST) or not isinstance(result, dict):
                raise ValueError(f"malformed answer for {method!r}")
            if method == INITIALIZE and result.get("protocolVersion") != version:
                raise ValueError(f"initialize answer filed under the wrong version {version!r}")
        answers[version] = dict(methods)
    modern: dict[str, dict[str, Any]] = {}
    for key, result in data["modern"].items():
        request = json.loads(key)
        if not isinstance(request, list) or request[:1] not in ([DISCOVER], [TOOLS_LIST]):
            raise ValueError("malformed 2026-era request key")
        if not isinstance(result, dict):
            raise ValueError(f"malformed 2026-era answer for {request[0]!r}")
        modern[key] = result
    return Cache(handshake_versions=versions, latest_handshake=latest, answers=answers, modern=modern)


def save_cache(path: Path, expected_fingerprint: str, new: Cache) -> None:
    """Merge `new` into the cache file and replace it atomically.

    Two servers starting together may both write: each writes its own temporary file and renames it
    over the cache, so the file is always one complete version (an answer only the loser had is
    captured again at a later start).
    """
    current = load_cache(path, expected_fingerprint)
    answers = {v: dict(m) for v, m in current.answers.items()} if current else {}
    for version, methods in new.answers.items():
        answers.setdefault(version, {}).update(methods)
    modern = dict(current.modern) if current else {}
    for key, result in new.modern.items():
        modern.pop(key, None)  # to the end: the newest
        modern[key] = result
    data = {
        "format": CACHE_FORMAT,
        "fingerprint": expected_fingerprint,
        "written_by": f"soul-mcp {soul_mcp.__version__}",
        "handshake_versions": list(new.handshake_versions),
        "latest_handshake": new.latest_handshake,
        "answers": answers,
        "modern": dict(list(modern.items())[-_MODERN_ENTRIES:]),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".warm-start-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _prune(path)


def _prune(keep: Path) -> None:
    """Delete other installs' cache files and killed writers' temporary files, once old."""
    cutoff = time.time() - _STALE_AFTER_S
    for other in [*keep.parent.glob("warm-start-*.json"), *keep.parent.glob(".warm-start-*.tmp")]:
        try:
            if other != keep and other.stat().st_mtime < cutoff:
                other.unlink()
        except OSError:
            pass  # gone already, or not ours to delete


# The handshake: what was asked, answered and captured --------------------------------------------


def _parse(line: bytes | str) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _id_key(request_id: object) -> _IdKey | None:
    """The ids the SDK accepts (an integer or a string), keyed so that 1 and "1" stay apart."""
    if type(request_id) is int or type(request_id) is str:
        return (type(request_id).__name__, request_id)
    return None


def _response(request_id: int | str, result: dict[str, Any]) -> bytes:
    # The SDK's framing: pydantic's compact JSON of JSONRPCResponse, fields in this order.
    return (
        '{"jsonrpc":"2.0","id":'
        + json.dumps(request_id, ensure_ascii=False)
        + ',"result":'
        + json.dumps(result, ensure_ascii=False, separators=(",", ":"))
        + "}\n"
    ).encode("utf-8")


def _plausible_initialize(params: object) -> bool:
    """Whether the SDK will accept these initialize params; a malformed request is left to it, so
    that the client gets the SDK's own error."""
    if not isinstance(params, dict):
        return False
    info, capabilities = params.get("clientInfo"), params.get("capabilities")
    return (
        isinstance(params.get("protocolVersion"), str)
        and isinstance(info, dict)
        and isinstance(info.get("name"), str)
        and isinstance(info.get("version"), str)
        and isinstance(capabilities, dict)
        and all(value is None or isinstance(value, dict) for value in capabilities.values())
    )


def _plain_tools_list(params: object) -> bool:
    """No cursor, nothing but an optional legacy `_meta`: the request the cached answer is for."""
    if params is None:
        return True
    if not isinstance(params, dict) or set(params) - {"_meta"}:
        return False
    meta = params.get("_meta")
    return meta is None or (isinstance(meta, dict) and _MODERN_ENVELOPE_KEY not in meta)


def _well_formed_request(message: dict[str, Any]) -> bool:
    """A request the stdio guard will pass to the SDK as one (a valid id, params an object)."""
    return (
        message.get("jsonrpc") == "2.0"
        and isinstance(message.get("method"), str)
        and _id_key(message.get("id")) is not None
        and (message.get("params") is None or isinstance(message["params"], dict))
        and "result" not in message
        and "error" not in message
    )


def _opens_modern(method: str, params: object) -> bool:
    """The SDK's rule (mcp.server.runner, `serve_dual_era_loop`): the first request opens a 2026-era
    connection when it is not `initialize` and its `_meta` carries the protocol-version key."""
    if method == INITIALIZE or not isinstance(params, dict):
        return False
    meta = params.get("_meta")
    return isinstance(meta, dict) and _MODERN_ENVELOPE_KEY in meta


def _modern_key(method: str, params: object) -> str | None:
    """What the SDK's answer to a 2026-era `server/discover` or `tools/list` depends on: the method
    and the params, envelope included, except the client's name and version, which neither answer
    reads. None when the client info is not plainly valid: the SDK decides about it."""
    if method not in (DISCOVER, TOOLS_LIST) or not _opens_modern(method, params):
        return None
    assert isinstance(params, dict)
    meta = dict(params["_meta"])
    if _CLIENT_INFO_KEY in meta and not _plain_client_info(meta.pop(_CLIENT_INFO_KEY)):
        return None
    return json.dumps(
        [method, {**params, "_meta": meta}], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )


def _plain_client_info(info: object) -> bool:
    """A client info the SDK's Implementation model accepts: a name and a version, and at most a
    title and a description, all strings. Anything richer is left to the SDK to judge."""
    return (
        isinstance(info, dict)
        and {"name", "version"} <= info.keys() <= {"name", "version", "title", "description"}
        and all(isinstance(value, str) for value in info.values())
    )


class _Handshake:
    """What the client asked and what has been answered, shared by the threads that move messages.

    Before the server is ready the main thread calls `early` for each client message. Afterwards
    the SDK's reader calls `live` (only to spot answers worth caching) and its writer `outgoing`.
    """

    def __init__(self, cache: Cache | None, path: Path, expected_fingerprint: str) -> None:
        self._lock = threading.Lock()
        self._cache = cache
        self._path = path
        self._fingerprint = expected_fingerprint
        # The connection's era, as the SDK will settle it from the first request: "handshake",
        # "2026", or "unsure" when a malformed line came first (nothing is answered early then).
        self._era: str | None = None
        self._version: str | None = None  # the connection's negotiated handshake-era version
        self._answered: Counter[_IdKey] = Counter()  # answered early: drop the SDK's answer
        # request id -> (method, _modern_key or None) of an answer that goes to the cache
        self._capture: dict[_IdKey, tuple[str, str | None]] = {}
        self._captured: dict[str, dict[str, dict[str, Any]]] = {}
        self._captured_modern: dict[str, dict[str, Any]] = {}
        self._rule: tuple[tuple[str, ...], str] | None = None
        self._save_lock = threading.Lock()  # one cache write at a time, each with all captured so far
        self._live_budget = _WATCH_LIVE_MESSAGES
        # A message only the SDK can answer arrived before it was ready: wait for it even after EOF.
        self.needs_server = False

    @property
    def answered_early(self) -> bool:
        """Whether an answer came from the cache that the SDK has not yet answered too."""
        return bool(self._answered)

    def set_rule(self, handshake_versions: tuple[str, ...], latest: str) -> None:
        """The negotiation rule of the SDK now loaded, written with any captured answer."""
        with self._lock:
            self._rule = (tuple(handshake_versions), latest)

    def early(self, line: bytes) -> tuple[bytes | None, bool]:
        """A client message that arrived before the server was ready.

        Returns the answer to write now (or None) and whether the server must still see the
        message. The first request settles the era, as it does for the SDK. Handshake era: only
        the first request may be an `initialize` answered here; `tools/list` is answered here once
        initialize was, and is then not passed on. 2026 era: `server/discover` and `tools/list`
        are answered when the cache holds the SDK's answer to the same request; the first request
        is passed on all the same (it settles the SDK's era), the others are not. A message the
        SDK's parser would refuse is left to the stdio guard, which answers it once the server is
        ready.
        """
        try:
            message = loads_as_the_sdk(line)
        except (ValueError, RecursionError):
            message = None
        if not isinstance(message, dict):
            message = None
        with self._lock:
            if message is None or not isinstance(message.get("method"), str):
                self.needs_server = True  # malformed, or a response: the guard or the SDK deals with it
                if message is None or "id" in message:
                    self._era = self._era or "unsure"
                return None, True
            if "id" not in message:
                return None, True  # a notification needs no answer
            method, key, params = message["method"], _id_key(message["id"]), message.get("params")
            first = self._era is None
            if first:
                if not _well_formed_request(message):
                    self._era = "unsure"
                else:
                    self._era = "2026" if _opens_modern(method, params) else "handshake"
            modern_key = _modern_key(method, params)
            if key is not None and _well_formed_request(message):
                answer, keep = self._from_cache(key, method, params, modern_key, first)
                if answer is not None:
                    return answer, keep
            self._watch(key, method, modern_key)
            self.needs_server = True
            return None, True

    def _from_cache(
        self, key: _IdKey, method: str, params: Any, modern_key: str | None, first: bool
    ) -> tuple[bytes | None, bool]:
        if self._era == "handshake":
            if method == INITIALIZE and first:
                # The SDK still needs it: it sets up the session.
                return self._initialize_from_cache(key, params), True
            if method == TOOLS_LIST and _plain_tools_list(params):
                return self._tools_list_from_cache(key[1]), False
        elif self._era == "2026" and modern_key is not None and self._cache is not None:
            result = self._cache.modern.get(modern_key)
            if result is not None:
                if first:
                    self._answered[key] += 1
                log.debug("answered %s (2026 era) from the warm-start cache", method)
                return _response(key[1], result), first
        return None, True

    def _initialize_from_cache(self, key: _IdKey, params: Any) -> bytes | None:
        if self._cache is None or not _plausible_initialize(params):
            return None
        version = self._cache.negotiate(params["protocolVersion"])
        result = self._cache.answers.get(version, {}).get(INITIALIZE)
        if result is None:
            return None
        self._version = version
        self._answered[key] += 1
        log.debug("answered initialize (%s) from the warm-start cache", version)
        return _response(key[1], result)

    def _tools_list_from_cache(self, request_id: int | str) -> bytes | None:
        if self._cache is None or self._version is None:
            return None
        result = self._cache.answers.get(self._version, {}).get(TOOLS_LIST)
        if result is None:
            return None
        log.debug("answered tools/list from the warm-start cache")
        return _response(request_id, result)

    def _watch(self, key: _IdKey | None, method: str, modern_key: str | None) -> None:
        if key is not None and (modern_key is not None or method in (INITIALIZE, TOOLS_LIST)):
            self._capture[key] = (method, modern_key)

    def live(self, line: bytes) -> None:
        """A client message on its way to the ready server: note a handshake request whose answer
        the cache lacks. Only the first few messages are looked at, and only when they mention one
        of the two methods, so the steady state costs nothing."""
        if self._live_budget <= 0:
            return
        self._live_budget -= 1
        if not any(method in line for method in (b'"initialize"', b'"tools/list"', b'"server/discover"')):
            return
        message = _parse(line)
        if message is not None and "id" in message and isinstance(message.get("method"), str):
            method = message["method"]
            with self._lock:
                self._watch(_id_key(message["id"]), method, _modern_key(method, message.get("params")))

    def outgoing(self, text: str) -> tuple[bool, bool]:
        """A message the SDK writes: (write it to the client?, is there something new to cache?)."""
        if not self._answered and not self._capture:
            return True, False  # the steady state: nothing to look for
        message = _parse(text)
        if message is None or "method" in message or "id" not in message:
            return True, False  # not a response (a notification or a server-to-client request)
        key = _id_key(message["id"])
        if key is None:
            return True, False
        with self._lock:
            if self._answered[key] > 0:
                self._answered[key] -= 1
                if self._answered[key] == 0:
                    del self._answered[key]
                if "error" in message:
                    # Only a malformed request gets here (_plausible_initialize and _modern_key
                    # let the obvious ones through to the SDK): the client already has the
                    # cached success.
                    log.warning(
                        "the server refused a request that was answered from the warm-start cache: %s",
                        message["error"],
                    )
                return False, False
            watched = self._capture.pop(key, None)
            return True, watched is not None and self._keep(*watched, message.get("result"))

    def _keep(self, method: str, modern_key: str | None, result: Any) -> bool:
        if not isinstance(result, dict) or "nextCursor" in result:
            return False  # an error or a partial list: nothing to cache
        if modern_key is not None:
            # Answered, so the SDK accepted the request on a 2026-era connection (a handshake-era
            # one refuses an enveloped request).
            if self._cache is not None and self._cache.modern.get(modern_key) == result:
                return False
            self._captured_modern[modern_key] = result
            return True
        if method == INITIALIZE:
            version = result.get("protocolVersion")
            if not isinstance(version, str):
                return False
            self._version = version
        elif self._version is None:
            return False  # not a handshake-era connection
        else:
            version = self._version
        known = self._cache.answers.get(version, {}).get(method) if self._cache else None
        if known == result:
            return False
        self._captured.setdefault(version, {})[method] = result
        return True

    def save_soon(self) -> None:
        """Write the cache from a thread of its own: the SDK's writer must not wait for the disk (at
        shutdown, an answer whose write is slow to finish is not sent at all)."""
        threading.Thread(target=self._save, name="soul-mcp-cache").start()

    def _save(self) -> None:
        with self._save_lock:
            with self._lock:
                if self._rule is None or not (self._captured or self._captured_modern):
                    return
                new = Cache(
                    handshake_versions=self._rule[0],
                    latest_handshake=self._rule[1],
                    answers={v: dict(m) for v, m in self._captured.items()},
                    modern=dict(self._captured_modern),
                )
            try:
                save_cache(self._path, self._fingerprint, new)
            except OSError as exc:
                log.warning("could not write the warm-start cache %s: %s", self._path, exc)
            else:
                log.debug("wrote the warm-start cache %s", self._path)


# The process's stdin and stdout, and the streams the SDK is given ---------------------------------


def _private_dup(fd: int) -> int:
    """A close-on-exec duplicate above the standard descriptors."""
    if sys.platform == "win32":  # pragma: no cover - duplicates are non-inheritable there
        return os.dup(fd)
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


class _Wire:
    """The real stdin and stdout, moved to private descriptors.

    As the SDK's stdio_server does: fd 0 then reads the null device and fd 1 writes to stderr, so
    a stray print or a child process can neither corrupt the protocol nor steal the client's bytes.
    """

    def __init__(self) -> None:
        sys.stdout.flush()
        self._lock = threading.Lock()
        self.stdin_fd = _private_dup(0)
        self.stdout_fd = _private_dup(1)
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            try:
                os.dup2(null, 0)
            finally:
                os.close(null)
            os.dup2(2, 1)
        except OSError:
            self.restore()  # leave the descriptors as they were for a plain start
            raise

    def write(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.stdout_fd, view) :]

    def restore(self) -> None:
        os.dup2(self.stdout_fd, 1)
        os.dup2(self.stdin_fd, 0)


def _read_client(fd: int, inbox: queue.SimpleQueue[tuple[str, Any]]) -> None:
    """Thread: every line the client writes, then EOF. The descriptor is never closed: the thread
    may still be blocked on it when the process ends."""
    stream = open(fd, "rb", closefd=False)  # noqa: SIM115
    try:
        for line in iter(stream.readline, b""):
            inbox.put((_LINE, line))
    except (OSError, ValueError) as exc:
        log.debug("stdin closed: %s", exc)
    finally:
        inbox.put((_EOF, None))


class _LineSource(io.TextIOBase):
    """The SDK's stdin: the messages kept while it loaded, then the live ones, then EOF.

    Each line passes the stdio guard first: one the SDK would drop unanswered is answered here
    (through the wire, whole lines only) and not passed on. Wrapped with anyio.wrap_file, which is
    what the SDK's stdio_server reads lines from.
    """

    def __init__(
        self,
        kept: list[bytes],
        inbox: queue.SimpleQueue[tuple[str, Any]],
        handshake: _Handshake | None,
        eof: bool,
        wire: _Wire,
    ) -> None:
        super().__init__()
        self._kept = deque(kept)
        self._inbox = inbox
        self._handshake = handshake
        self._eof = eof
        self._wire = wire

    def readable(self) -> bool:
        return True

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]  # text, as TextIOBase reads
        while True:
            if self._kept:
                line, live = self._kept.popleft(), False
            elif self._eof:
                return ""
            else:
                kind, line = self._inbox.get()
                if kind != _LINE:
                    self._eof = True
                    return ""
                live = True
            text = screen(line, self._wire.write)
            if text is not None:
                if live and self._handshake is not None:
                    self._handshake.live(line)
                return text

    def end(self) -> None:
        """Make a pending readline return EOF (when the server stops with stdin still open)."""
        self._inbox.put((_EOF, None))


class _Sink(io.TextIOBase):
    """The SDK's stdout: drops its answers to ids already answered, feeds new answers to the cache."""

    def __init__(self, wire: _Wire, handshake: _Handshake | None) -> None:
        super().__init__()
        self._wire = wire
        self._handshake = handshake

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self._handshake is None:
            self._wire.write(text.encode("utf-8"))
            return len(text)
        keep, new_answer = self._handshake.outgoing(text)
        if keep:
            self._wire.write(text.encode("utf-8"))
        if new_answer:
            self._handshake.save_soon()
        return len(text)

    def flush(self) -> None:
        pass  # every write goes straight to the descriptor


# Serving ------------------------------------------------------------------------------------------


def serve_stdio(settings: Settings) -> int:
    """Serve MCP on stdin/stdout until the client closes stdin; the exit code for the CLI."""
    if os.environ.get(WARM_START_ENV, "").strip() == "0":
        return _serve_plain(settings)
    started = time.perf_counter()
    try:
        expected = fingerprint(settings)
        path = cache_path(expected)
        cache = load_cache(path, expected)
        wire = _Wire()
    except Exception as exc:  # a shortcut that fails must not stop the server (e.g. no stdin at all)
        log.warning("warm start unavailable (%s); starting normally", exc)
        return _serve_plain(settings)
    try:
        return _serve_warm(settings, wire, _Handshake(cache, path, expected), started)
    finally:
        wire.restore()


def _serve_plain(settings: Settings) -> int:
    """No cache, but the same reader, guard and writer as the warm start."""
    _read_ahead(settings)
    from soul_mcp.server.app import build_server, freeze_startup_heap

    server = build_server(settings)
    freeze_startup_heap()
    missing = _sdk_internals_missing(server)
    if missing is not None:
        log.warning("%s; starting without the stdio guard, as MCPServer.run() does", missing)
        server.run()
        return 0
    try:
        wire = _Wire()
    except OSError as exc:  # e.g. no stdin at all: let the SDK's own transport deal with it
        log.warning("stdio guard unavailable (%s); malformed messages will go unanswered", exc)
        server.run()
        return 0
    try:
        import anyio

        inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        threading.Thread(
            target=_read_client, args=(wire.stdin_fd, inbox), name="soul-mcp-stdin", daemon=True
        ).start()
        anyio.run(_run_server, server, _LineSource([], inbox, None, False, wire), _Sink(wire, None))
    finally:
        wire.restore()
    return 0


def _serve_warm(settings: Settings, wire: _Wire, handshake: _Handshake, started: float) -> int:
    inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    loader = threading.Thread(target=_load, args=(settings, handshake, inbox, started), name="soul-mcp-load")
    loader.start()
    _read_ahead(settings)
    threading.Thread(
        target=_read_client, args=(wire.stdin_fd, inbox), name="soul-mcp-stdin", daemon=True
    ).start()

    # The loader holds the GIL while it imports; a thread woken by a client message waits for it up
    # to the switch interval (5 ms by default) at each step: read, hand over, answer. Switching
    # more often costs only when another thread is waiting, which is when an answer is due.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(_SWITCH_INTERVAL_LOADING)
    try:
        server, kept, eof = _answer_until_ready(handshake, wire, inbox)
    finally:
        sys.setswitchinterval(switch_interval)
    if server is None:
        # Everything the client asked was answered from the cache. Let the loader finish (the
        # interpreter would wait for it anyway) and leave without opening the database.
        log.debug("stdin closed before the server was ready; nothing left to answer")
        loader.join()
        return 0
    missing = _sdk_internals_missing(server)
    if missing is not None:
        log.warning("%s; starting as MCPServer.run() does, without the warm start", missing)
        if handshake.answered_early:
            log.warning("the client may see a second answer to its first request (one came from the cache)")
        _serve_with_the_sdk_transport(server, wire, kept, inbox, eof)
        return 0

    import anyio

    anyio.run(_run_server, server, _LineSource(kept, inbox, handshake, eof, wire), _Sink(wire, handshake))
    return 0


def _read_ahead(settings: Settings) -> None:
    """A thread reads what the first recall needs while the SDK imports (opening.read_ahead)."""

    def read() -> None:
        try:
            from soul_mcp.opening import read_ahead

            read_ahead(settings)
        except Exception:  # the first recall reads it itself then
            log.debug("reading ahead for the first recall failed", exc_info=True)

    threading.Thread(target=read, name="soul-mcp-read-ahead", daemon=True).start()


def _answer_until_ready(
    handshake: _Handshake, wire: _Wire, inbox: queue.SimpleQueue[tuple[str, Any]]
) -> tuple[MCPServer[Any] | None, list[bytes], bool]:
    """Answer what the cache can while the loader works.

    Returns the server once ready (None when the client left with nothing for it to do), the
    messages it must still see, in order, and whether the client has closed stdin.
    """
    kept: list[bytes] = []
    eof = False
    while True:
        kind, value = inbox.get()
        if kind == _LINE:
            answer, keep = handshake.early(value)
            if answer is not None:
                wire.write(answer)
            if keep:
                kept.append(value)
        elif kind == _EOF:
            if not handshake.needs_server:
                return None, kept, True
            eof = True
        elif kind == _FAILED:
            raise value
        else:
            return value, kept, eof


def _load(
    settings: Settings, handshake: _Handshake, inbox: queue.SimpleQueue[tuple[str, Any]], started: float
) -> None:
    """Thread: import the SDK and build the server; hand it (or the failure) to the main thread."""
    try:
        import anyio  # noqa: F401 - loaded here so that the main thread finds it ready
        import mcp.server.stdio  # noqa: F401

        from soul_mcp.server.app import build_server, freeze_startup_heap

        server = build_server(settings)
        freeze_startup_heap()
    except BaseException as exc:  # re-raised by the main thread: a failed start exits non-zero
        inbox.put((_FAILED, exc))
        return
    try:
        from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
    except ImportError as exc:  # without the rule nothing is cached; serving is unaffected
        log.warning(
            "the SDK's protocol versions are not where soul-mcp looks (%s): the warm-start cache is not written",
            exc,
        )
    else:
        handshake.set_rule(HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION)
    log.debug("the SDK loaded and the server built, %.3f s after serve began", time.perf_counter() - started)
    inbox.put((_READY, server))


async def _run_server(server: MCPServer[Any], source: _LineSource, sink: _Sink) -> None:
    """`MCPServer.run_stdio_async`, on our streams instead of the process's descriptors.

    The SDK has no public call for that (run() always claims fd 0 and 1), so its low-level server
    is reached the way run_stdio_async reaches it.
    """
    import anyio
    from mcp.server.stdio import stdio_server

    lowlevel = sdk_private.lowlevel_server(server)
    assert lowlevel is not None, "checked by _sdk_internals_missing"
    # Line-oriented text streams, which is all stdio_server uses of a file.
    stdin, stdout = cast("IO[str]", source), cast("IO[str]", sink)
    async with stdio_server(stdin=anyio.wrap_file(stdin), stdout=anyio.wrap_file(stdout)) as (read, write):
        try:
            await lowlevel.run(read, write, lowlevel.create_initialization_options())
        finally:
            # If the server stopped on its own (a crash), the SDK's reader may be blocked waiting
            # for a line, and the transport waits for its reader: hand it EOF.
            source.end()


def _sdk_internals_missing(server: MCPServer[Any]) -> str | None:
    """Why _run_server cannot run this server (an SDK release changed what it relies on), or None."""
    if sdk_private.lowlevel_server(server) is None:
        return "the MCP SDK no longer has the low-level server the stdio guard runs"
    try:
        from mcp.server.stdio import stdio_server
    except ImportError as exc:
        return f"the MCP SDK's stdio transport moved ({exc})"
    try:
        parameters = inspect.signature(stdio_server).parameters
    except (TypeError, ValueError) as exc:
        return f"the MCP SDK's stdio transport cannot be inspected ({exc})"
    if not {"stdin", "stdout"} <= parameters.keys():
        return "the MCP SDK's stdio transport no longer takes the streams to serve"
    return None


def _serve_with_the_sdk_transport(
    server: MCPServer[Any],
    wire: _Wire,
    kept: list[bytes],
    inbox: queue.SimpleQueue[tuple[str, Any]],
    eof: bool,
) -> None:
    """The plain start, after the client's first messages were read: `MCPServer.run()` on fd 0,
    now a pipe fed those messages and then the rest, and fd 1, the client's stdout again."""
    read_fd, write_fd = os.pipe()
    os.dup2(read_fd, 0)
    os.close(read_fd)
    os.dup2(wire.stdout_fd, 1)
    threading.Thread(
        target=_relay, args=(kept, inbox, eof, write_fd), name="soul-mcp-relay", daemon=True
    ).start()
    server.run()


def _relay(kept: list[bytes], inbox: queue.SimpleQueue[tuple[str, Any]], eof: bool, fd: int) -> None:
    """Thread: the client's messages, unchanged, into the SDK's stdin; EOF when the client's ends."""
    try:
        for line in kept:
            _write_all(fd, line)
        while not eof:
            kind, line = inbox.get()
            if kind != _LINE:
                break
            _write_all(fd, line)
    except OSError as exc:  # the server stopped reading
        log.debug("stopped passing messages to the server: %s", exc)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
