"""Screen each line a stdio client sends before the SDK sees it, and answer the ones it would drop.

The SDK's stdio transport parses a line with `jsonrpc_message_adapter.validate_json` and, when that
fails, hands the exception to the session, which logs it at debug level and drops it: the client
gets no answer and waits for its timeout. That happens to invalid JSON, a lone UTF-16 surrogate in
any string (`"Maya loves \\ud83d"`, what a JavaScript client sends when it cuts a string mid-emoji),
`params` that is not an object, a `method` that is not a string, an id of the wrong type.

So each line is validated here with the SDK's own validator (the accept/refuse decision is exactly
the SDK's); only a refused line is parsed again, with the standard library, to name the problem
and recover the request id. A refused request gets a JSON-RPC error answer; a refused notification
or response only a warning (JSON-RPC forbids answering those). Logs name the problem and where it
is, never the message's content.

Invalid UTF-8 is refused too, where the SDK would have replaced the bytes with U+FFFD and stored
the damaged text. A lone surrogate is refused rather than replaced, for the same reason.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

log = logging.getLogger(__name__)

# JSON-RPC 2.0's codes, defined here so that importing this module does not load the SDK (the warm
# start uses it before the SDK is ready).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602

_SURROGATE = re.compile("[\ud800-\udfff]")
_WHOLE_CHARACTERS = "send whole characters, encoded as UTF-8"
_ONE_PER_LINE = "send one JSON-RPC message, a JSON object, per line"
_KEY_SHOWN = 40  # characters of a key shown in a path; keys are the client's text too


@dataclass(frozen=True)
class Refusal:
    """Why a line was refused, and whether JSON-RPC lets the server answer it."""

    code: int
    message: str
    request_id: int | str | None = None
    answer: bool = True

    def to_line(self) -> bytes:
        # The SDK's framing: compact JSON of JSONRPCError, fields in this order.
        error = {"code": self.code, "message": self.message}
        body = {"jsonrpc": "2.0", "id": self.request_id, "error": error}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


def screen(line: bytes, write: Callable[[bytes], None]) -> str | None:
    """The line as text when the SDK accepts it; otherwise None, after answering (when allowed)
    through `write` and logging a warning."""
    verdict = check(line)
    if isinstance(verdict, str):
        return verdict
    shown = "" if verdict.request_id is None else f" (id {verdict.request_id!r})"
    if verdict.answer:
        log.warning("answered a malformed message%s with %d: %s", shown, verdict.code, verdict.message)
        write(verdict.to_line())
    else:
        log.warning("ignored a malformed notification or response%s: %s", shown, verdict.message)
    return None


def check(line: bytes) -> str | Refusal:
    """The line decoded when the SDK will accept it, else the Refusal to send."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = line[exc.start : exc.start + 1].hex()
        return Refusal(
            PARSE_ERROR,
            f"parse error: the line is not valid UTF-8 (byte 0x{bad} at offset {exc.start}); "
            + _WHOLE_CHARACTERS,
            _recover_id(line.decode("utf-8", errors="replace")),
        )
    from mcp_types import JSONRPCNotification, jsonrpc_message_adapter
    from pydantic import ValidationError

    try:
        message = jsonrpc_message_adapter.validate_json(text, by_name=False)
    except ValidationError as exc:
        return _diagnose(text, exc)
    # A request whose id the SDK refuses passes as a notification (unknown keys are ignored), which
    # is never answered. Notifications are few, so only they are parsed again. An id of null stays
    # a notification, as JSON-RPC 1.0 clients mean it.
    if isinstance(message, JSONRPCNotification) and '"id"' in text and json.loads(text).get("id") is not None:
        return _diagnose(text, None)
    return text


def loads_as_the_sdk(line: bytes) -> Any:
    """json.loads, also refusing (ValueError) what the SDK's parser refuses and json.loads accepts:
    a lone surrogate. For the warm start, which answers before the SDK is loaded."""
    message = json.loads(line)
    if _lone_surrogate(message) is not None:
        raise ValueError("a string holds a lone UTF-16 surrogate")
    return message


def _diagnose(text: str, exc: ValidationError | None) -> Refusal:
    if not text.strip():
        return Refusal(PARSE_ERROR, f"parse error: empty line; {_ONE_PER_LINE}")
    try:
        message = json.loads(text)
    except json.JSONDecodeError as err:
        return Refusal(PARSE_ERROR, f"parse error: {err.msg} at column {err.colno}; {_ONE_PER_LINE}")
    except (ValueError, RecursionError):
        return Refusal(PARSE_ERROR, f"parse error: not JSON, or nested too deeply; {_ONE_PER_LINE}")
    if not isinstance(message, dict):
        batch = " (batches are not supported)" if isinstance(message, list) else ""
        return Refusal(INVALID_REQUEST, f"invalid request: got {_kind(message)}{batch}; {_ONE_PER_LINE}")

    # JSON-RPC answers a request, and a message too broken to tell what it is; never a notification
    # or a response.
    answer = (message.get("id") is not None and "method" in message) or not _is_notification_or_response(
        message
    )
    try:
        refusal = _envelope_problem(message) or _content_problem(message) or _sdk_words(exc)
    except RecursionError:
        refusal = Refusal(PARSE_ERROR, f"parse error: nested too deeply; {_ONE_PER_LINE}")
    return dataclasses.replace(refusal, request_id=_valid_id(message.get("id")), answer=answer)


def _sdk_words(exc: ValidationError | None) -> Refusal:
    """For a refusal nothing here names: the SDK's own first complaint."""
    if exc is None:
        return Refusal(INVALID_REQUEST, "invalid request: not a JSON-RPC 2.0 message")
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    if first["type"] == "json_invalid":
        return Refusal(PARSE_ERROR, f"parse error: {first['msg']}")
    return Refusal(INVALID_REQUEST, f"invalid request: {first['msg']}")


def _is_notification_or_response(message: dict[str, Any]) -> bool:
    if "method" in message:
        return isinstance(message["method"], str) and message.get("jsonrpc") == "2.0"
    return "result" in message or "error" in message


def _envelope_problem(message: dict[str, Any]) -> Refusal | None:
    if message.get("jsonrpc") != "2.0":
        return Refusal(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"')
    if (
        message.get("id") is not None
        and _valid_id(message["id"]) is None
        and not _lone_surrogate(message["id"])
    ):
        return Refusal(
            INVALID_REQUEST,
            f'invalid request: "id" must be a string or an integer, got {_kind(message["id"])}',
        )
    if "method" not in message:
        if "result" in message or "error" in message:
            return None
        return Refusal(INVALID_REQUEST, 'invalid request: "method" is missing')
    if not isinstance(message["method"], str):
        return Refusal(
            INVALID_REQUEST, f'invalid request: "method" must be a string, got {_kind(message["method"])}'
        )
    return None


def _content_problem(message: dict[str, Any]) -> Refusal | None:
    # The envelope first: a broken method or id matters more than broken params.
    envelope = {key: value for key, value in message.items() if key != "params"}
    for code, kind, found in (
        (INVALID_REQUEST, "request", _lone_surrogate(envelope)),
        (INVALID_PARAMS, "params", _lone_surrogate(message.get("params"), "params")),
    ):
        if found is not None:
            character, path = found
            return Refusal(
                code,
                f"invalid {kind}: a string holds a lone UTF-16 surrogate ({character} at {path}); "
                + _WHOLE_CHARACTERS,
            )
    params = message.get("params")
    if "method" in message and params is not None and not isinstance(params, dict):
        return Refusal(INVALID_PARAMS, f"invalid params: params must be an object, got {_kind(params)}")
    return None


def _lone_surrogate(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first lone surrogate in a parsed JSON value, escaped, and where it is (json.loads joins
    a valid pair into one character, so any surrogate left is a lone one)."""
    if isinstance(value, str):
        match = _SURROGATE.search(value)
        return (f"\\u{ord(match.group()):04x}", path or "the message") if match else None
    if isinstance(value, dict):
        for key, item in value.items():
            if match := _SURROGATE.search(key):
                return f"\\u{ord(match.group()):04x}", f"a key of {path or 'the message'}"
            found = _lone_surrogate(item, f"{path}.{_shorten(key)}" if path else _shorten(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _lone_surrogate(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _recover_id(text: str) -> int | str | None:
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return _valid_id(message.get("id")) if isinstance(message, dict) else None


def _valid_id(value: Any) -> int | str | None:
    """The id to answer with: one the SDK accepts, that can be written back as UTF-8."""
    if type(value) is int or (type(value) is str and not _SURROGATE.search(value)):
        return value
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _shorten(key: str) -> str:
    return key if len(key) <= _KEY_SHOWN else key[:_KEY_SHOWN] + "…"
