"""Builders for the etcd-style kv commands, and a store that numbers entries itself."""

from __future__ import annotations

from typing import Any

from kvcluster.kv import KVStore


class Store:
    """A KVStore fed with consecutive raft indexes, as the node feeds it."""

    def __init__(self, store: KVStore | None = None) -> None:
        self.kv = store if store is not None else KVStore()

    def __call__(self, command: Any) -> dict[str, Any]:
        return self.kv.apply(self.kv.applied_index + 1, command)

    def lines(self, **options: Any) -> list[bytes]:
        return list(self.kv.freeze().lines(**options))

    def copy(self, **options: Any) -> Store:
        """An independent copy, through a snapshot's lines."""
        return Store(KVStore.from_lines(self.lines(**options)))

    def values(self, key: str = "\x00", end: str | None = "\x00", rev: int = 0) -> dict[str, str]:
        """key -> value of a range (every key by default), at `rev`."""
        result = self.kv.range(key, end, revision=rev)
        assert "error" not in result, result
        return {kv["key"]: kv["value"] for kv in result["kvs"]}


def kv(key: str, value: str, create: int, mod: int, version: int, lease: int = 0) -> dict[str, Any]:
    """A KV dict as range and events show it."""
    return {
        "key": key,
        "value": value,
        "create_revision": create,
        "mod_revision": mod,
        "version": version,
        "lease": lease,
    }


def tomb(key: str, mod: int) -> dict[str, Any]:
    """A deleted key, as a DELETE event's kv shows it (etcd's: key and mod_revision)."""
    return kv(key, "", 0, mod, 0)


def put(key: str, value: str, **options: Any) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": value, **options}


def delete_range(key: str, range_end: str | None = None, **options: Any) -> dict[str, Any]:
    cmd: dict[str, Any] = {"op": "delete_range", "key": key, **options}
    if range_end is not None:
        cmd["range_end"] = range_end
    return cmd


def compact(revision: int) -> dict[str, Any]:
    return {"op": "compact", "revision": revision}


def txn(
    compare: list[dict[str, Any]] | None = None,
    success: list[dict[str, Any]] | None = None,
    failure: list[dict[str, Any]] | None = None,
    op: str | None = "txn",
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if op is not None:
        body["op"] = op
    if compare:
        body["compare"] = compare
    if success:
        body["success"] = success
    if failure:
        body["failure"] = failure
    return body


def cmp(key: str, target: str, result: str, operand: Any, range_end: str | None = None) -> dict:
    """A compare: cmp("a", "VALUE", "EQUAL", "1"), cmp("a", "VERSION", "GREATER", 0)..."""
    field = {
        "VALUE": "value",
        "VERSION": "version",
        "CREATE": "create_revision",
        "MOD": "mod_revision",
        "LEASE": "lease",
    }[target]
    c: dict[str, Any] = {"key": key, "target": target, "result": result, field: operand}
    if range_end is not None:
        c["range_end"] = range_end
    return c


def r_put(key: str, value: str, **options: Any) -> dict[str, Any]:
    return {"request_put": {"key": key, "value": value, **options}}


def r_range(key: str, range_end: str | None = None, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, **options}
    if range_end is not None:
        body["range_end"] = range_end
    return {"request_range": body}


def r_delete(key: str, range_end: str | None = None, **options: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"key": key, **options}
    if range_end is not None:
        body["range_end"] = range_end
    return {"request_delete_range": body}


def r_txn(
    compare: list[dict[str, Any]] | None = None,
    success: list[dict[str, Any]] | None = None,
    failure: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {"request_txn": txn(compare, success, failure, op=None)}


def grant(lease_id: int, ttl: int, now: int = 0) -> dict[str, Any]:
    return {"op": "lease_grant", "id": lease_id, "ttl": ttl, "now": now}


def revoke(lease_id: int) -> dict[str, Any]:
    return {"op": "lease_revoke", "id": lease_id}


def keepalive(lease_id: int, now: int) -> dict[str, Any]:
    return {"op": "lease_keepalive", "id": lease_id, "now": now}


def expire(now: int) -> dict[str, Any]:
    return {"op": "lease_expire", "now": now}


def promote(now: int, extend: int) -> dict[str, Any]:
    return {"op": "lease_promote", "now": now, "extend": extend}
