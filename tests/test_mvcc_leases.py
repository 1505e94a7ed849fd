"""Leases: grant, keep-alive, revoke, expiry by the leader's committed clock, promote, and
the keys that go with a lease at one revision (etcd 3.4's behaviour, checked against one)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mvcc_helpers import (
    Store,
    delete_range,
    expire,
    grant,
    keepalive,
    kv,
    promote,
    put,
    revoke,
    tomb,
)

from kvcluster.kv import KVStore


def test_grant_keepalive_time_to_live() -> None:
    s = Store()
    assert s(grant(7, 10, now=1_000)) == {"id": 7, "ttl": 10, "revision": 0}
    assert s.kv.lease_time_to_live(7, 1_000) == {
        "id": 7,
        "ttl": 10,
        "granted_ttl": 10,
        "keys": [],
    }
    assert s.kv.lease_time_to_live(7, 4_500)["ttl"] == 6  # whole seconds left, truncated
    assert s.kv.lease_time_to_live(7, 99_000)["ttl"] == 0  # overdue, not yet expired
    assert s.kv.next_lease_deadline() == 11_000
    assert s(keepalive(7, 5_000)) == {"id": 7, "ttl": 10, "revision": 0}
    assert s.kv.next_lease_deadline() == 15_000
    assert s.kv.lease_time_to_live(7, 5_000)["ttl"] == 10
    # an unknown lease: etcd answers TTL -1
    assert s.kv.lease_time_to_live(8, 0) == {"id": 8, "ttl": -1, "granted_ttl": 0, "keys": []}
    assert s(keepalive(8, 0)) == {
        "error": "lease_not_found",
        "message": "etcdserver: requested lease not found",
    }


def test_grant_ids_errors_and_bounds() -> None:
    s = Store(KVStore(max_leases=3))
    assert s(grant(0, 5))["id"] == 1  # no id: the entry's index
    assert s(grant(2, 5))["id"] == 2
    s.kv.applied_index = 1  # the next entry is index 2, which a client took: the next free
    assert s({"op": "lease_grant", "ttl": 5, "now": 0})["id"] == 3
    assert s.kv.lease_ids() == [1, 2, 3]
    assert s(grant(9, 5))["error"] == "too_many_leases"
    exists = {"error": "lease_exists", "message": "etcdserver: lease already exists"}
    assert s(grant(2, 5)) == exists
    s(revoke(1))
    assert s(grant(-5, 5))["id"] == -5  # etcd takes negative ids
    assert s.kv.lease_ids() == [-5, 2, 3]
    big = s(grant(11, 9_000_000_001))
    assert big == {"error": "lease_ttl_too_large", "message": "etcdserver: too large lease TTL"}


@pytest.mark.parametrize(
    "command",
    [
        grant(1, 0),
        grant(1, -5),
        grant(1, "5"),
        {"op": "lease_grant", "id": 1, "ttl": 5},
        grant(1 << 63, 5),
        grant(True, 5),
        grant(1, 5, now=-1),
        revoke(0),
        {"op": "lease_revoke"},
        keepalive(0, 1),
        keepalive(1, 1.5),
        {"op": "lease_keepalive", "id": 1},
        {"op": "lease_expire"},
        expire(-1),
        {"op": "lease_promote", "now": 1},
        promote(1, -1),
    ],
)
def test_malformed_lease_commands_are_refused(command: dict[str, Any]) -> None:
    s = Store()
    s(grant(1, 10))
    before = s.copy()
    result = s(command)
    assert result["error"] == "invalid_command" and result["message"]
    json.dumps(result)
    before.kv.mark_applied(s.kv.applied_index)
    assert s.kv == before.kv


def test_revoke_deletes_the_keys_at_one_revision_in_key_order() -> None:
    """etcd: the same requests gave one DELETE event per key, key order, one revision,
    and a put without a lease took its key off the lease."""
    s = Store()
    s(grant(500, 100))
    for key in ["z", "y", "x"]:
        s(put(key, "1", lease=500))  # 1, 2, 3
    s(put("x", "2"))  # 4: detached
    assert s.kv.lease_time_to_live(500, 0, keys=True)["keys"] == ["y", "z"]
    assert s(revoke(500)) == {"revision": 5, "deleted": 2}
    events = list(s.kv.changes_since(5, "\x00", "\x00"))
    assert events == [
        {"type": "DELETE", "kv": tomb("y", 5), "prev_kv": kv("y", "1", 2, 2, 1, 500)},
        {"type": "DELETE", "kv": tomb("z", 5), "prev_kv": kv("z", "1", 1, 1, 1, 500)},
    ]
    assert s.values() == {"x": "2"} and s.kv.lease_ids() == []
    assert s(revoke(500))["error"] == "lease_not_found"
    assert s(put("q", "1", lease=500))["error"] == "lease_not_found"


def test_a_lease_without_keys_goes_without_a_revision() -> None:
    s = Store()
    s(grant(1, 10))
    s(put("a", "1", lease=1))
    s({"op": "delete", "key": "a"})  # detaches
    assert s(revoke(1)) == {"revision": 2, "deleted": 0}


def test_moving_a_key_between_leases() -> None:
    s = Store()
    s(grant(1, 10))
    s(grant(2, 10))
    s(put("k", "v", lease=1))
    s(put("k", "v", lease=2))
    assert s.kv.lease_time_to_live(1, 0, keys=True)["keys"] == []
    assert s.kv.lease_time_to_live(2, 0, keys=True)["keys"] == ["k"]
    s(revoke(1))
    assert s.values() == {"k": "v"}
    s(delete_range("k"))
    s(put("k", "w"))  # a new generation: no lease
    s(revoke(2))
    assert s.values() == {"k": "w"}


def test_expiry_follows_the_committed_clock_lease_by_lease() -> None:
    s = Store()
    s(grant(3, 5, now=0))  # due 5_000
    s(grant(1, 5, now=0))  # due 5_000
    s(grant(2, 1, now=0))  # due 1_000
    s(grant(4, 60, now=0))  # due 60_000, no keys
    s(put("a", "1", lease=1))  # 1
    s(put("b", "1", lease=2))  # 2
    s(put("c", "1", lease=3))  # 3
    s(put("d", "1", lease=3))  # 4
    assert s(expire(999)) == {"expired": [], "revision": 4}
    assert s(expire(1_000)) == {"expired": [2], "revision": 5}
    s(keepalive(3, 2_000))  # due 7_000 now
    assert s(expire(6_000)) == {"expired": [1], "revision": 6}
    assert s(expire(10_000)) == {"expired": [3], "revision": 7}  # c and d at one revision
    assert [e["kv"]["mod_revision"] for e in s.kv.changes_since(7, "\x00", "\x00")] == [7, 7]
    assert s(expire(60_000)) == {"expired": [4], "revision": 7}  # no keys: no revision
    assert s.values() == {} and s.kv.lease_ids() == [] and s.kv.next_lease_deadline() is None


def test_leases_due_together_go_in_id_order() -> None:
    s = Store()
    for lease_id in (9, -2, 4):
        s(grant(lease_id, 1, now=0))
        s(put(f"k{lease_id}", "v", lease=lease_id))
    assert s(expire(1_000))["expired"] == [-2, 4, 9]
    revisions = {e["kv"]["key"]: e["kv"]["mod_revision"] for e in s.kv.changes_since(4, "k", "l")}
    assert revisions == {"k-2": 4, "k4": 5, "k9": 6}


def test_promote_restarts_every_lease_on_the_new_leaders_clock() -> None:
    """A new leader (whose clock may differ from the old one's) gives every lease its
    full TTL plus its election timeout before it may expire any (etcd's Promote)."""
    s = Store()
    s(grant(1, 10, now=50_000))  # due 60_000 on the old leader's clock
    s(grant(2, 3, now=55_000))  # due 58_000
    s(put("a", "1", lease=1))
    assert s(promote(now=1_000, extend=2_000)) == {"leases": 2, "revision": 1}
    assert s.kv.next_lease_deadline() == 6_000  # 1_000 + 3 s + 2 s
    assert s(expire(5_999))["expired"] == []
    assert s(expire(6_000))["expired"] == [2]
    assert s(expire(12_999))["expired"] == []
    assert s(expire(13_000))["expired"] == [1]
    assert s.values() == {}


def test_revoking_a_lease_with_many_keys() -> None:
    s = Store()
    s(grant(1, 10))
    for i in range(300):
        s(put(f"k{i:03d}", "v", lease=1 if i % 3 else 0))
    s(revoke(1))
    assert list(s.values()) == [f"k{i:03d}" for i in range(0, 300, 3)]
    deleted = [e["kv"]["key"] for e in s.kv.changes_since(301, "\x00", "\x00")]
    assert deleted == [f"k{i:03d}" for i in range(300) if i % 3]
    assert s.copy().kv == s.kv  # rows and index still agree (the reader checks order)
    assert [kv.key for kv in s.kv.list()] == list(s.values())


def test_leases_survive_a_snapshot() -> None:
    s = Store()
    s(grant(1, 10, now=0))
    s(grant(2, 20, now=0))
    s(put("a", "1", lease=1))
    s(put("b", "1", lease=2))
    t = s.copy()
    assert t.kv.lease_time_to_live(2, 0, keys=True) == s.kv.lease_time_to_live(2, 0, keys=True)
    for cmd in (keepalive(1, 15_000), expire(20_000), put("c", "1", lease=1), expire(26_000)):
        assert s(cmd) == t(cmd)
    assert s.kv == t.kv and t.values() == {}


def test_a_keepalive_in_the_grants_millisecond_expires_the_lease_once() -> None:
    """Found in review: a grant and a keep-alive stamped in the same millisecond
    left two identical heap entries; the expiry then revoked the lease twice (a
    KeyError after the keys were deleted) on replicas that applied both live,
    and once on a replica rebuilt from a snapshot in between."""
    live = KVStore()
    live.apply(1, {"op": "lease_grant", "id": 7, "ttl": 5, "now": 1000})
    live.apply(2, {"op": "put", "key": "k", "value": "v", "lease": 7})
    live.apply(3, {"op": "lease_keepalive", "id": 7, "now": 1000})
    rebuilt = KVStore.from_lines(live.freeze().lines())
    expire = {"op": "lease_expire", "now": 10_000}
    assert live.apply(4, expire) == rebuilt.apply(4, expire)
    assert live.get("k") is None and 7 not in live.leases
    assert list(live.freeze().lines()) == list(rebuilt.freeze().lines())
