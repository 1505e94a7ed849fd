"""The kv commands as they travel through the Raft log, and their validation.

A command is a plain JSON dict because the log is replicated and persisted as
JSON. Validation lives here, separate from the store, because a malformed entry
is replicated to every node: it must be rejected the same way everywhere, as a
result and never as an exception that would crash every replica at once.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

from .leases import LeaseCommand, parse_lease
from .ops import (
    Compact,
    DeleteRange,
    InvalidCommand,
    Txn,
    check_text,
    parse_compact,
    parse_delete_range,
    parse_put,
    parse_txn,
)

KV_OPS = ("put", "delete")
# etcd's writes beyond /v1's (kv/ops.py); they carry no session.
ETCD_OPS = ("delete_range", "txn", "compact")
# Lease upkeep (kv/leases.py): grant/revoke/keepalive come from clients, expire and
# promote from the leader, each with the leader's clock.
LEASE_OPS = ("lease_grant", "lease_revoke", "lease_keepalive", "lease_expire", "lease_promote")
# Session upkeep, proposed by the node layer (never sent by a client as such):
# `open_session` carries the leader's clock (ms); `expire_sessions` its clock and the
# idle time after which sessions go (see kv/sessions.py).
SESSION_OPS = ("open_session", "expire_sessions")
OPS = KV_OPS + ETCD_OPS + LEASE_OPS + SESSION_OPS
MAX_CLOCK_MS = (1 << 63) - 1
_PUT_OPTIONS = frozenset({"lease", "prev_kv", "ignore_value", "ignore_lease"})


class Command(NamedTuple):
    """A validated put, delete or session op; `client_id`/`seq` are both set or both None.

    `now_ms` and `ttl_ms` belong to the session ops (key is "" for them); `lease`
    and the flags after it are etcd's put options (all off for a /v1 put). A
    NamedTuple, not a frozen dataclass: building one is part of every put, and
    a frozen dataclass's __init__ took 1.7 us of a put's 3.
    """

    op: str
    key: str
    value: str | None = None
    client_id: str | None = None
    seq: int | None = None
    now_ms: int = 0
    ttl_ms: int = 0
    lease: int = 0
    prev_kv: bool = False
    ignore_value: bool = False
    ignore_lease: bool = False


def _check_ms(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_CLOCK_MS:
        raise InvalidCommand(f"{name} must be an integer from 0 to 2**63-1, got {value!r}")
    return value


Parsed = Union[Command, Txn, DeleteRange, Compact, LeaseCommand]  # noqa: UP007


def parse(command: Any) -> Parsed:
    """Validate one log entry's data; raise InvalidCommand if it is not a kv command.

    Returns a Command (put, delete, session ops), a kv/ops.py request (txn,
    delete_range, compact) or a kv/leases.py command. Unknown extra fields are
    ignored, so newer clients can add some. A null `client_id`/`seq` means "no
    session", like an absent one.
    """
    if not isinstance(command, dict):
        raise InvalidCommand(f"a command must be a JSON object, got {type(command).__name__}")
    op = command.get("op")
    if op == "put" or op == "delete":  # first: the hot path
        return _parse_kv(op, command)
    if not isinstance(op, str) or op not in OPS:
        raise InvalidCommand(f"op must be one of {', '.join(OPS)}, got {op!r}")
    if op == "open_session":
        return Command(op, "", now_ms=_check_ms("now", command.get("now")))
    if op == "expire_sessions":
        now = _check_ms("now", command.get("now"))
        return Command(op, "", now_ms=now, ttl_ms=_check_ms("ttl", command.get("ttl")))
    if op == "txn":
        return parse_txn(command)
    if op == "delete_range":
        return parse_delete_range(command)
    if op == "compact":
        return parse_compact(command)
    return parse_lease(op, command)


_make = Command._make


def _parse_kv(op: str, command: dict[str, Any]) -> Command:
    key = check_text("key", command.get("key"), allow_empty=False)
    options: tuple[int, bool, bool, bool] | None = None
    value: str | None = None
    if op == "put":
        if _PUT_OPTIONS.isdisjoint(command):  # C-level: a /v1 put pays ~50 ns for options
            value = check_text("value", command.get("value"))
        else:
            p = parse_put(command)
            value = p.value
            options = (p.lease, p.prev_kv, p.ignore_value, p.ignore_lease)

    client_id = command.get("client_id")
    seq = command.get("seq")
    if client_id is None and seq is None:
        if options is None:  # _make skips the generated __new__: 0.1 us, not 0.45
            return _make((op, key, value, None, None, 0, 0, 0, False, False, False))
        return Command(op, key, value, None, None, 0, 0, *options)
    if client_id is None or seq is None:
        raise InvalidCommand("client_id and seq must be given together")
    client_id = check_text("client_id", client_id, allow_empty=False)
    # bool is an int subclass; True as a sequence number is a client bug, not 1.
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise InvalidCommand(f"seq must be a non-negative integer, got {seq!r}")
    if options is not None:
        return Command(op, key, value, client_id, seq, 0, 0, *options)
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


def adds_data(command: Any) -> bool:
    """Whether a command may add keys or values: a put, or a txn with a put in
    any branch (etcd's quota refuses exactly these; deletes, reads, compaction
    and leases go through, so a full store can be emptied)."""
    if not isinstance(command, dict):
        return False
    op = command.get("op")
    if op == "put":
        return True
    return op == "txn" and _txn_puts(command, 0)


def _txn_puts(txn: dict[str, Any], depth: int) -> bool:
    if depth > 64:  # deeper than parse() accepts: it will be refused anyway
        return False
    for branch in ("success", "failure"):
        for request in txn.get(branch) or ():
            if not isinstance(request, dict):
                continue
            if "request_put" in request:
                return True
            nested = request.get("request_txn")
            if isinstance(nested, dict) and _txn_puts(nested, depth + 1):
                return True
    return False
