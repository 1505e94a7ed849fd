"""The kv commands as they travel through the Raft log, and their validation.

A command is a plain JSON dict because the log is replicated and persisted as
JSON. Validation lives here, separate from the store, because a malformed entry
is replicated to every node: it must be rejected the same way everywhere, as a
result and never as an exception that would crash every replica at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KV_OPS = ("put", "delete")
# Session upkeep, proposed by the node layer (never sent by a client as such):
# `open_session` carries the leader's clock (ms); `expire_sessions` its clock and the
# idle time after which sessions go (see kv/sessions.py).
SESSION_OPS = ("open_session", "expire_sessions")
OPS = KV_OPS + SESSION_OPS
MAX_CLOCK_MS = (1 << 63) - 1


class InvalidCommand(ValueError):
    """A log entry that is not a well-formed kv command."""


@dataclass(frozen=True, slots=True)
class Command:
    """A validated command; `client_id`/`seq` are both set or both None.

    `now_ms` and `ttl_ms` belong to the session ops (key is "" for them).
    """

    op: str
    key: str
    value: str | None = None
    client_id: str | None = None
    seq: int | None = None
    now_ms: int = 0
    ttl_ms: int = 0


def _check_ms(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_CLOCK_MS:
        raise InvalidCommand(f"{name} must be an integer from 0 to 2**63-1, got {value!r}")
    return value


def _check_text(name: str, text: Any, *, allow_empty: bool = True) -> str:
    if not isinstance(text, str):
        raise InvalidCommand(f"{name} must be a string, got {type(text).__name__}")
    if not allow_empty and not text:
        raise InvalidCommand(f"{name} must not be empty")
    # json.loads accepts lone surrogates ("\ud800"); such a str is not UTF-8 text and would
    # only fail later, when some node writes a snapshot. Reject it up front, everywhere alike.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidCommand(f"{name} is not valid UTF-8 text") from None
    return text


def parse(command: Any) -> Command:
    """Validate one log entry's data; raise InvalidCommand if it is not a kv command.

    Unknown extra fields are ignored, so newer clients can add some. A null
    `client_id`/`seq` means "no session", like an absent one.
    """
    if not isinstance(command, dict):
        raise InvalidCommand(f"a command must be a JSON object, got {type(command).__name__}")
    op = command.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise InvalidCommand(f"op must be one of {', '.join(OPS)}, got {op!r}")
    if op == "open_session":
        return Command(op, "", now_ms=_check_ms("now", command.get("now")))
    if op == "expire_sessions":
        now = _check_ms("now", command.get("now"))
        return Command(op, "", now_ms=now, ttl_ms=_check_ms("ttl", command.get("ttl")))
    key = _check_text("key", command.get("key"), allow_empty=False)
    value = _check_text("value", command.get("value")) if op == "put" else None

    client_id = command.get("client_id")
    seq = command.get("seq")
    if (client_id is None) != (seq is None):
        raise InvalidCommand("client_id and seq must be given together")
    if client_id is not None:
        client_id = _check_text("client_id", client_id, allow_empty=False)
        # bool is an int subclass; True as a sequence number is a client bug, not 1.
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise InvalidCommand(f"seq must be a non-negative integer, got {seq!r}")
    return Command(op, key, value, client_id, seq)


def put_command(
    key: str, value: str, client_id: str | None = None, seq: int | None = None
) -> dict[str, Any]:
    """Build a put command dict (what a server proposes to Raft)."""
    return _with_session({"op": "put", "key": key, "value": value}, client_id, seq)


def delete_command(
    key: str, client_id: str | None = None, seq: int | None = None
) -> dict[str, Any]:
    """Build a delete command dict."""
    return _with_session({"op": "delete", "key": key}, client_id, seq)


def open_session_command(now_ms: int) -> dict[str, Any]:
    """Open a client session at the leader's time `now_ms`."""
    return {"op": "open_session", "now": now_ms}


def expire_sessions_command(now_ms: int, ttl_ms: int) -> dict[str, Any]:
    """Let the leader's time `now_ms` pass: sessions idle for `ttl_ms` go."""
    return {"op": "expire_sessions", "now": now_ms, "ttl": ttl_ms}


def _with_session(cmd: dict[str, Any], client_id: str | None, seq: int | None) -> dict[str, Any]:
    if client_id is not None:
        cmd["client_id"] = client_id
        cmd["seq"] = seq
    return cmd
