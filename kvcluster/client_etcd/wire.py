"""etcd's JSON gateway as the client reads and writes it: base64 text, 64-bit
integers as strings, key ranges, and etcd's errors as the client's codes."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from ..errors import KvClusterError


@dataclass(frozen=True, slots=True)
class KeyValue:
    """A key's value and revisions, as read; `revision` is the store revision of
    the answer it came in; `lease` the lease it is attached to (0: none)."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    revision: int
    lease: int = 0


def encode(text: str) -> str:
    """Text as the gateway's base64 (standard alphabet, padded)."""
    if not isinstance(text, str):
        raise TypeError(f"keys and values are str, got {type(text).__name__}")
    return base64.b64encode(text.encode("utf-8", "surrogateescape")).decode("ascii")


def decode(data: Any) -> str:
    if not data:
        return ""
    try:
        return base64.b64decode(str(data), validate=True).decode("utf-8", "surrogateescape")
    except (binascii.Error, ValueError) as exc:
        raise malformed(f"{data!r} is not base64 ({exc})") from None


def number(data: Any) -> int:
    """A 64-bit integer from the gateway: a string, a number, or absent (0)."""
    if data is None or data == "":
        return 0
    if isinstance(data, bool):
        raise malformed(f"expected an integer, got {data!r}")
    try:
        return int(data)
    except (TypeError, ValueError):
        raise malformed(f"expected an integer, got {data!r}") from None


def malformed(what: str) -> KvClusterError:
    return KvClusterError(
        f"unexpected answer from the cluster: {what}; is it kvcluster or etcd 3.4 serving /v3?",
        known_outcome=False,
    )


def header_revision(data: dict[str, Any]) -> int:
    header = data.get("header")
    return number(header.get("revision")) if isinstance(header, dict) else 0


def key_value(data: Any, revision: int) -> KeyValue:
    if not isinstance(data, dict):
        raise malformed(f"a key-value must be an object, got {data!r}")
    return KeyValue(
        key=decode(data.get("key")),
        value=decode(data.get("value")),
        create_revision=number(data.get("create_revision")),
        mod_revision=number(data.get("mod_revision")),
        version=number(data.get("version")),
        revision=revision,
        lease=number(data.get("lease")),
    )


def prefix_end(prefix: str) -> str:
    """The range_end that makes [prefix, end) every key starting with `prefix`.

    Computed on characters, not bytes (UTF-8 orders as code points do), so
    the end is text too; "" (and a prefix of only U+10FFFF) means every key.
    """
    chars = list(prefix)
    while chars:
        last = ord(chars.pop())
        if last < 0x10FFFF:
            last += 1
            if 0xD800 <= last <= 0xDFFF:  # surrogates are no characters: skip them
                last = 0xE000
            return "".join(chars) + chr(last)
    return "\x00"


def key_range(key: str, prefix: bool, range_end: str | None) -> dict[str, str]:
    """The key and range_end fields of a request."""
    if prefix and range_end is not None:
        raise ValueError("give prefix=True or a range_end, not both")
    if prefix:
        return {"key": encode(key or "\x00"), "range_end": encode(prefix_end(key))}
    if not key:
        raise ValueError("a key must not be empty (use prefix=True for every key)")
    out = {"key": encode(key)}
    if range_end is not None:
        out["range_end"] = encode(range_end)
    return out


ERR_LEASE_NOT_FOUND = "etcdserver: requested lease not found"
# The gateway's error messages that say what happened, as the codes the client
# retries on (see Client._call); anything else is named after its gRPC code.
_ETCD_MESSAGES = {
    "etcdserver: no leader": "no_leader",
    "etcdserver: not leader": "not_leader",
    "etcdserver: leader changed": "not_leader",
    ERR_LEASE_NOT_FOUND: "lease_not_found",
    "etcdserver: mvcc: required revision has been compacted": "compacted",
    "etcdserver: mvcc: database space exceeded": "no_space",
}
_NOT_APPLIED = frozenset({"no_leader", "not_leader", "unavailable", "shutting_down"})
_GRPC_CODES = (
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
)


def etcd_error(status: int, data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """An etcd gateway error {"error": msg, "message": msg, "code": n} as the
    client's {"error": code, "message": msg}; a status of 503 marks what was
    certainly not applied (the client retries it elsewhere)."""
    message = str(data.get("message") or data.get("error") or f"HTTP {status}")
    code = _ETCD_MESSAGES.get(message)
    if code is None and message.startswith("cannot reach the leader"):
        code = "unavailable"  # a kvcluster follower could not relay it
    if code is None and message.startswith("this node was removed from the cluster"):
        code = "shutting_down"
    if code is None and message.startswith("etcdserver: request timed out"):
        code = "timeout"
    if code is None:
        grpc = data.get("code")
        if isinstance(grpc, int) and 0 <= grpc < len(_GRPC_CODES):
            code = _GRPC_CODES[grpc]
        else:
            code = f"http_{status}"
    if code in _NOT_APPLIED:
        status = 503
    elif code == "no_space":
        status = 409  # a refusal to report, not a 429 to retry: the store is full
    return status, {"error": code, "message": message}
