"""The shapes of command results and errors, shared by the store and its txns."""

from __future__ import annotations

from typing import Any

from .history import Row, kv_dict

# etcd's messages, so the gateway can pass them on as etcd writes them.
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE = "etcdserver: mvcc: required revision is a future revision"
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
KEY_NOT_FOUND = "etcdserver: key not found"


def error(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """An error result: it changed nothing (but applied_index, for a command)."""
    return {"error": code, "message": message, **extra}


def put_result(row: Row, prev: Row | None, with_prev_kv: bool) -> dict[str, Any]:
    """A put's answer: the /v1 fields, plus etcd's prev_kv when asked and there was one."""
    result: dict[str, Any] = {
        "key": row[0],
        "revision": row[3],
        "created": prev is None,
        "prev_value": None if prev is None else prev[1],
    }
    if with_prev_kv and prev is not None:
        result["prev_kv"] = kv_dict(prev)
    return result


def delete_range_result(prevs: list[Row], with_prev_kv: bool, revision: int) -> dict[str, Any]:
    """A delete_range's answer: how many keys went, and (if asked) what they held."""
    result: dict[str, Any] = {"revision": revision, "deleted": len(prevs)}
    if with_prev_kv:
        result["prev_kvs"] = [kv_dict(r) for r in prevs]
    return result
