"""Random command sequences: the store against a brute-force model (every result, the
state at every revision, the change log), and two replicas that apply the same log,
one of them restarting from snapshot lines now and then, staying identical."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from mvcc_helpers import Store
from mvcc_model import Model

from kvcluster.kv import KVStore

KEYS = ["a", "a/1", "a/2", "b", "b/1", "c", "é", "日本"]


class Gen:
    """Random etcd-style commands over a few keys, leases and a moving leader clock."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.now = 0
        self.rev = 0  # the revision so far (as the model reports it), to aim reads

    def key(self) -> str:
        return self.rng.choice(KEYS)

    def span(self) -> tuple[str, str | None]:
        roll = self.rng.random()
        if roll < 0.4:
            return self.key(), None
        if roll < 0.55:
            return self.key(), "\x00"
        if roll < 0.7:
            return "a/", "a0"
        return self.key(), self.key()  # may be empty or backwards

    def lease(self) -> int:
        return self.rng.choice([0, 0, 0, 1, 2, 3, -4, 5])

    def put_body(self) -> dict[str, Any]:
        rng = self.rng
        body: dict[str, Any] = {"key": self.key(), "value": str(rng.randrange(100))}
        if rng.random() < 0.3:
            body["prev_kv"] = True
        roll = rng.random()
        if roll < 0.25:
            body["lease"] = self.lease()
        elif roll < 0.3:
            body["ignore_value"] = True
            body["value"] = ""
        elif roll < 0.35:
            body["ignore_lease"] = True
        return body

    def range_body(self) -> dict[str, Any]:
        rng = self.rng
        key, end = self.span()
        body: dict[str, Any] = {"key": key}
        if end is not None:
            body["range_end"] = end
        if rng.random() < 0.4:
            body["revision"] = rng.randrange(0, self.rev + 2)
        if rng.random() < 0.2:
            body["limit"] = rng.randrange(0, 4)
        if rng.random() < 0.1:
            body["keys_only"] = True
        if rng.random() < 0.1:
            body["count_only"] = True
        return body

    def compare(self) -> dict[str, Any]:
        rng = self.rng
        key, end = self.span()
        target = rng.choice(["VALUE", "VERSION", "CREATE", "MOD", "LEASE"])
        c: dict[str, Any] = {
            "key": key,
            "target": target,
            "result": rng.choice(["EQUAL", "GREATER", "LESS", "NOT_EQUAL"]),
        }
        if end is not None:
            c["range_end"] = end
        if target == "VALUE":
            c["value"] = str(rng.randrange(100))
        else:
            field = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision"}
            c[field.get(target, "lease")] = rng.randrange(-1, self.rev + 2)
        return c

    def op(self, depth: int) -> dict[str, Any]:
        roll = self.rng.random()
        if roll < 0.4:
            return {"request_put": self.put_body()}
        if roll < 0.6:
            key, end = self.span()
            body: dict[str, Any] = {"key": key, "prev_kv": self.rng.random() < 0.3}
            if end is not None:
                body["range_end"] = end
            return {"request_delete_range": body}
        if roll < 0.85 or depth >= 2:
            return {"request_range": self.range_body()}
        return {"request_txn": self.txn(depth + 1)}

    def txn(self, depth: int = 0) -> dict[str, Any]:
        rng = self.rng
        return {
            "compare": [self.compare() for _ in range(rng.randrange(3))],
            "success": [self.op(depth) for _ in range(rng.randrange(4))],
            "failure": [self.op(depth) for _ in range(rng.randrange(3))],
        }

    def command(self) -> dict[str, Any]:
        rng = self.rng
        self.now += rng.randrange(0, 1500)
        roll = rng.random()
        if roll < 0.3:
            return {"op": "put", **self.put_body()}
        if roll < 0.36:
            return {"op": "delete", "key": self.key()}
        if roll < 0.44:
            key, end = self.span()
            cmd: dict[str, Any] = {"op": "delete_range", "key": key, "prev_kv": rng.random() < 0.5}
            if end is not None:
                cmd["range_end"] = end
            return cmd
        if roll < 0.7:
            return {"op": "txn", **self.txn()}
        if roll < 0.74:
            return {"op": "compact", "revision": rng.randrange(0, self.rev + 2)}
        if roll < 0.8:
            ttl = rng.randrange(1, 6)
            return {"op": "lease_grant", "id": self.lease(), "ttl": ttl, "now": self.now}
        if roll < 0.83:
            return {"op": "lease_revoke", "id": self.lease() or 1}
        if roll < 0.88:
            return {"op": "lease_keepalive", "id": self.lease() or 2, "now": self.now}
        if roll < 0.97:
            return {"op": "lease_expire", "now": self.now}
        self.now = rng.randrange(0, self.now + 1)  # a new leader with another clock
        return {"op": "lease_promote", "now": self.now, "extend": rng.randrange(0, 2000)}


def _check_history(store: KVStore, model: Model) -> None:
    """Every revision still readable reads as the model's copy of it; the change log
    from the compact revision on is the model's."""
    assert (store.revision, store.compacted) == (model.rev, model.compacted)
    for rev in range(model.compacted, model.rev + 1):
        if rev == 0:
            continue
        got = store.range("\x00", "\x00", revision=rev)
        assert got == model.range({"key": "\x00", "range_end": "\x00", "revision": rev}), rev
    if model.compacted > 1:
        assert store.range("a", revision=model.compacted - 1)["error"] == "compacted"
    assert list(store.changes_since(model.compacted, "\x00", "\x00")) == model.changes(
        model.compacted
    )
    for key, end in (("a", None), ("a/", "a0"), ("b", "\x00")):
        expected = [
            e
            for e in model.changes(model.compacted)
            if (e["kv"]["key"] == key if end is None else key <= e["kv"]["key"])
            and (end in (None, "\x00") or e["kv"]["key"] < end)
        ]
        assert list(store.changes_since(model.compacted, key, end)) == expected


@pytest.mark.parametrize("seed", range(8))
def test_store_matches_the_model(seed: int) -> None:
    gen = Gen(seed)
    model = Model()
    s = Store()
    for i in range(600):
        cmd = gen.command()
        expected = model.apply(cmd)
        got = s(cmd)
        assert got == expected, (i, cmd)
        gen.rev = model.rev
        if i % 50 == 49:
            _check_history(s.kv, model)
            _check_bytes(s.kv, model)
    _check_history(s.kv, model)
    _check_bytes(s.kv, model)


def _check_bytes(store: KVStore, model: Model) -> None:
    """The byte counts the quota reads, kept as the store changes, are the model's
    keys and values: live rows, and every event since compaction."""
    rows = model.range({"key": "\x00", "range_end": "\x00"})["kvs"]
    assert store.row_bytes == sum(len(kv["key"]) + len(kv.get("value", "")) for kv in rows)
    events = model.changes(model.compacted)
    assert store.history_bytes == sum(
        len(e["kv"]["key"]) + (len(e["kv"].get("value", "")) if e["type"] == "PUT" else 0)
        for e in events
    )
    assert store.bytes_used == store.row_bytes + store.history_bytes


@pytest.mark.parametrize("seed", range(4))
def test_replicas_stay_identical_through_snapshots(seed: int) -> None:
    """A follower applies the commands as the log delivers them (through JSON) and now
    and then carries on from a snapshot's lines, as after an InstallSnapshot."""
    gen = Gen(100 + seed)
    a, b = Store(KVStore(max_leases=4)), Store(KVStore(max_leases=4))
    rng = random.Random(seed)
    for _ in range(1500):
        cmd = gen.command()
        gen.rev = a.kv.revision
        result = a(cmd)
        assert result == b(json.loads(json.dumps(cmd)))
        json.dumps(result)
        if rng.random() < 0.01:
            b = b.copy(rows_per_line=rng.choice([1, 2, 7, 4096]), max_line_bytes=200)
    assert a.kv == b.kv
    assert a.lines() == b.lines()
    assert (a.kv.row_bytes, a.kv.history_bytes) == (b.kv.row_bytes, b.kv.history_bytes)
    for rev in range(a.kv.compacted, a.kv.revision + 1):
        assert a.kv.range("\x00", "\x00", revision=rev) == b.kv.range("\x00", "\x00", revision=rev)
