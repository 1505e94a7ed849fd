"""Unit tests of the kv state machine: etcd revision semantics, sessions, snapshots."""

from __future__ import annotations

import gc
import json
import random
from typing import Any

import pytest

from kvcluster.kv import KeyValue, KVStore, delete_command, put_command
from kvcluster.kv.commands import expire_sessions_command, open_session_command


class Feeder:
    """Applies commands with consecutive raft indexes, as the node does.

    Sessions are opened by name (`open("c1")`); a command naming an opened
    session gets its real id (the index of its open_session entry), any other
    client_id goes through as it is.
    """

    def __init__(self, store: KVStore | None = None) -> None:
        self.store = store if store is not None else KVStore()
        self.ids: dict[str, str] = {}
        self.now = 0  # the leader's clock, in ms

    def __call__(self, command: Any) -> dict[str, Any]:
        if isinstance(command, dict) and command.get("client_id") in self.ids:
            command = {**command, "client_id": self.ids[command["client_id"]]}
        return self.store.apply(self.store.applied_index + 1, command)

    def open(self, *names: str) -> None:
        for name in names:
            self.ids[name] = self(open_session_command(self.now))["client_id"]

    def expire(self, now: int, ttl: int) -> int:
        self.now = now
        return int(self(expire_sessions_command(now, ttl))["expired"])

    def names(self) -> list[str]:
        """The open sessions by name, least recently active first."""
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id.get(cid, cid) for cid in _session_ids(self.store)]


def put(key: str, value: str, **session: Any) -> dict[str, Any]:
    return {"op": "put", "key": key, "value": value, **session}


def delete(key: str, **session: Any) -> dict[str, Any]:
    return {"op": "delete", "key": key, **session}


def _lines(store: KVStore, **options: Any) -> list[bytes]:
    """The store as a snapshot holds it."""
    return list(store.freeze().lines(**options))


def _copy(store: KVStore) -> KVStore:
    """An independent copy, through a snapshot's lines."""
    return KVStore.from_lines(_lines(store))


def _session_ids(store: KVStore) -> list[str]:
    """The clients with a session, least recently used first (as a snapshot holds them)."""
    return [row[0] for row in store.freeze().meta["sessions"]]


# ---- revisions and versions ---------------------------------------------------------


def test_empty_store() -> None:
    s = KVStore()
    assert (s.revision, s.applied_index, len(s)) == (0, 0, 0)
    assert s.get("a") is None
    assert s.list() == []


def test_put_get_overwrite_delete_recreate_follow_etcd() -> None:
    f = Feeder()
    s = f.store
    assert f(put("a", "1")) == {"key": "a", "revision": 1, "created": True, "prev_value": None}
    assert s.get("a") == KeyValue("a", "1", create_revision=1, mod_revision=1, version=1)

    assert f(put("b", "x")) == {"key": "b", "revision": 2, "created": True, "prev_value": None}
    assert f(put("a", "2")) == {"key": "a", "revision": 3, "created": False, "prev_value": "1"}
    assert s.get("a") == KeyValue("a", "2", 1, 3, 2)
    assert f(put("a", "2")) == {"key": "a", "revision": 4, "created": False, "prev_value": "2"}
    assert s.get("a") == KeyValue("a", "2", 1, 4, 3)  # a put always bumps, even same value

    assert f(delete("a")) == {"key": "a", "deleted": 1, "revision": 5, "prev_value": "2"}
    assert s.get("a") is None
    assert (s.revision, len(s)) == (5, 1)

    assert f(put("a", "new"))["created"] is True
    assert s.get("a") == KeyValue("a", "new", 6, 6, 1)  # version and create_revision reset
    assert s.get("b") == KeyValue("b", "x", 2, 2, 1)  # untouched by the others
    assert s.applied_index == 6


def test_delete_of_missing_key_does_not_bump_revision() -> None:
    f = Feeder()
    f(put("a", "1"))
    result = f(delete("nope"))
    assert result == {"key": "nope", "deleted": 0, "revision": 1, "prev_value": None}
    assert f.store.revision == 1
    assert f.store.applied_index == 2  # the entry is still consumed


def test_to_dict() -> None:
    kv = KeyValue("k", "v", 3, 5, 2)
    assert kv.to_dict() == {
        "key": "k",
        "value": "v",
        "create_revision": 3,
        "mod_revision": 5,
        "version": 2,
    }
    json.dumps(kv.to_dict())


def test_empty_value_and_odd_keys_are_allowed() -> None:
    f = Feeder()
    for key in ["/", "a/b/c", " ", "ключ", "🔑", "a\x00b"]:
        assert f(put(key, ""))["created"] is True
        assert f.store.get(key) == KeyValue(key, "", f.store.revision, f.store.revision, 1)


# ---- listing ------------------------------------------------------------------------


def test_list_prefix_sorted_with_slashes_and_non_ascii() -> None:
    f = Feeder()
    keys = ["b", "a/2", "a/10", "a/1", "a", "ab", "a/é", "a/z", "a/日本", "a/😀", "c/a"]
    for k in keys:
        f(put(k, k.upper()))
    s = f.store
    assert [kv.key for kv in s.list()] == sorted(keys)
    assert [kv.key for kv in s.list("a/")] == ["a/1", "a/10", "a/2", "a/z", "a/é", "a/日本", "a/😀"]
    assert [kv.key for kv in s.list("a")] == sorted(k for k in keys if k.startswith("a"))
    assert [kv.key for kv in s.list("a/日")] == ["a/日本"]
    assert s.list("zzz") == [] and s.list("a/1/") == []
    assert s.list("a/1")[0] == KeyValue("a/1", "A/1", 4, 4, 1)
    # code-point order is UTF-8 byte order (etcd compares bytes)
    listed = [kv.key.encode() for kv in s.list()]
    assert listed == sorted(listed)


def test_list_limit() -> None:
    f = Feeder()
    for i in range(10):
        f(put(f"k/{i:02d}", str(i)))
    s = f.store
    assert [kv.key for kv in s.list("k/", limit=3)] == ["k/00", "k/01", "k/02"]
    assert len(s.list(limit=100)) == 10
    assert s.list(limit=0) == []
    assert len(s.list("k/0", limit=None)) == 10
    with pytest.raises(ValueError):
        s.list(limit=-1)


def test_list_pages_after_a_key_and_within_a_byte_budget() -> None:
    f = Feeder()
    for i in range(10):
        f(put(f"k/{i:02d}", "v" * 100))
    f(put("l", "x"))
    s = f.store
    assert [kv.key for kv in s.list("k/", after="k/03")] == [f"k/{i:02d}" for i in range(4, 10)]
    assert [kv.key for kv in s.list("k/", 2, after="k/03")] == ["k/04", "k/05"]
    assert [kv.key for kv in s.list("k/", after="a")] == [kv.key for kv in s.list("k/")]
    assert s.list("k/", after="k/09") == []
    # Stops once the keys and values passed the budget; never less than one key.
    assert len(s.list("k/", max_bytes=250)) == 3  # 104 + 104 = 208 < 250, then 312
    assert len(s.list("k/", max_bytes=1)) == 1


def test_list_reflects_deletes_and_recreates() -> None:
    f = Feeder()
    for k in "dcba":
        f(put(k, k))
    f(delete("b"))
    f(delete("d"))
    f(delete("d"))
    assert [kv.key for kv in f.store.list()] == ["a", "c"]
    f(put("b", "again"))
    assert [kv.key for kv in f.store.list()] == ["a", "b", "c"]
    assert len(f.store) == 3


# ---- sessions -----------------------------------------------------------------------


def test_same_seq_returns_stored_result_without_reapplying() -> None:
    f = Feeder()
    f.open("c1")
    first = f(put("a", "1", client_id="c1", seq=1))
    assert f.store.revision == 1
    again = f(put("a", "1", client_id="c1", seq=1))  # retried after a failover
    assert again == first
    assert f.store.revision == 1
    assert f.store.get("a") == KeyValue("a", "1", 1, 1, 1)
    assert f.store.applied_index == 3

    # a deleted key is not re-deleted either, and the original answer is kept
    f(delete("a", client_id="c1", seq=2))
    f(put("a", "x"))
    assert f(delete("a", client_id="c1", seq=2))["deleted"] == 1
    assert f.store.get("a") is not None


def test_a_session_id_is_its_open_entry_index_and_opening_changes_no_key() -> None:
    f = Feeder()
    f(put("a", "1"))
    result = f(open_session_command(5))
    assert result == {"client_id": "2", "revision": 1, "evicted": 0}
    assert f.store.sessions.clock == 5 and f.store.get("a") == KeyValue("a", "1", 1, 1, 1)


def test_returned_results_are_copies() -> None:
    f = Feeder()
    f.open("c1")
    first = f(put("a", "1", client_id="c1", seq=1))
    first["revision"] = 99
    assert f(put("a", "1", client_id="c1", seq=1))["revision"] == 1


def test_lower_seq_is_rejected() -> None:
    f = Feeder()
    f.open("c1")
    f(put("a", "1", client_id="c1", seq=5))
    before = _copy(f.store)
    result = f(put("a", "old", client_id="c1", seq=4))
    assert result["error"] == "stale_sequence" and result["message"]
    assert f.store.applied_index == before.applied_index + 1
    before.mark_applied(f.store.applied_index)
    assert f.store == before


def test_seq_may_skip_but_not_repeat_the_opening_zero() -> None:
    f = Feeder()
    f.open("c1")
    assert f(put("a", "0", client_id="c1", seq=0))["error"] == "stale_sequence"
    assert f(put("a", "1", client_id="c1", seq=1))["revision"] == 1
    assert f(put("a", "2", client_id="c1", seq=7))["revision"] == 2
    assert f(put("a", "3", client_id="c1", seq=7))["revision"] == 2


def test_clients_are_independent() -> None:
    f = Feeder()
    f.open("c1", "c2")
    f(put("a", "1", client_id="c1", seq=3))
    assert f(put("a", "2", client_id="c2", seq=1))["revision"] == 2  # c2's seq 1 is fresh
    assert f(put("a", "3", client_id="c1", seq=1))["error"] == "stale_sequence"
    assert f(put("a", "4"))["revision"] == 3  # no session: always applies
    assert f(put("a", "4"))["revision"] == 4


def test_a_write_for_a_session_never_opened_is_refused_and_changes_nothing() -> None:
    f = Feeder()
    f(put("a", "1"))
    before = _copy(f.store)
    result = f(put("a", "2", client_id="made-up", seq=1))
    assert result["error"] == "session_expired" and "Open a new session" in result["message"]
    before.mark_applied(f.store.applied_index)
    assert f.store == before


def test_evicted_session_is_refused_not_applied_again() -> None:
    """The hole an LRU table had: an evicted client's retry looked new."""
    f = Feeder(KVStore(max_sessions=2))
    f.open("c1", "c2")
    f(put("a", "1", client_id="c1", seq=1))
    f(put("b", "1", client_id="c2", seq=1))
    f(put("a", "1", client_id="c1", seq=1))  # a retry counts as activity: c2 is now the oldest
    f.open("c3")  # evicts c2
    assert f.names() == ["c1", "c3"]
    retry = f(put("b", "1", client_id="c2", seq=1))
    assert retry["error"] == "session_expired"
    assert f.store.get("b") == KeyValue("b", "1", 2, 2, 1)  # applied once, as it was


def test_sessions_expire_by_the_committed_clock_only() -> None:
    f = Feeder()
    f.now = 1_000
    f.open("old")
    f.now = 5_000
    f.open("new")
    f(put("k", "1", client_id="old", seq=1))  # activity at clock 5000: old is now the newest
    assert f.names() == ["new", "old"]
    assert f.expire(10_000, ttl=6_000) == 0  # both active at 5000 > 10000 - 6000
    assert f.expire(11_000, ttl=6_000) == 2
    assert f(put("k", "1", client_id="old", seq=1))["error"] == "session_expired"
    assert f.store.get("k") == KeyValue("k", "1", 1, 1, 1)


def test_the_clock_never_goes_back_under_a_new_leader() -> None:
    f = Feeder()
    f.now = 50_000
    f.open("c1")
    assert f.expire(10_000, ttl=1_000) == 0  # a new leader whose clock is behind
    assert f.store.sessions.clock == 50_000
    assert f.expire(51_000, ttl=1_000) == 1


def test_stored_results_are_bounded_in_bytes() -> None:
    f = Feeder(KVStore(max_sessions=100, max_session_bytes=300_000))
    big = "v" * 100_000
    names = [f"c{i}" for i in range(5)]
    for i, name in enumerate(names):
        f.open(name)
        f(put(f"k{i}", big))
        f(put(f"k{i}", big, client_id=name, seq=1))  # each result holds a 100 kB prev_value
    assert f.store.sessions.bytes <= 300_000
    assert f.names() == ["c3", "c4"]  # the oldest went to make room
    assert f(put("k0", "again", client_id="c0", seq=1))["error"] == "session_expired"


def test_session_eviction_and_expiry_are_deterministic() -> None:
    commands: list[Any] = []
    for i in range(300):
        if i % 17 == 0:
            commands.append(open_session_command(i * 10))
        elif i % 29 == 0:
            commands.append(expire_sessions_command(i * 10, 700))
        else:
            cid = str(1 + (i * 5) % 40)  # some are sessions, some never were
            commands.append(put(f"k{i % 7}", str(i), client_id=cid, seq=i // 3))
    a, b = Feeder(KVStore(max_sessions=4)), Feeder(KVStore(max_sessions=4))
    results_a = [a(c) for c in commands]
    results_b = [b(json.loads(json.dumps(c))) for c in commands]
    assert results_a == results_b
    assert a.store == b.store
    assert _lines(a.store) == _lines(b.store)
    assert 0 < len(_session_ids(a.store)) <= 4
    assert any(r.get("error") == "session_expired" for r in results_a)


def test_max_sessions_must_be_positive() -> None:
    with pytest.raises(ValueError):
        KVStore(max_sessions=0)
    with pytest.raises(ValueError):
        KVStore(max_session_bytes=0)


# ---- malformed commands -------------------------------------------------------------

MALFORMED: list[Any] = [
    None,
    "put a 1",
    ["put", "a", "1"],
    42,
    {},
    {"op": "get", "key": "a"},
    {"op": "PUT", "key": "a", "value": "1"},
    {"op": None, "key": "a"},
    {"op": ["put"], "key": "a", "value": "1"},
    {"op": "put", "value": "1"},
    {"op": "put", "key": "", "value": "1"},
    {"op": "put", "key": 1, "value": "1"},
    {"op": "put", "key": "a"},
    {"op": "put", "key": "a", "value": None},
    {"op": "put", "key": "a", "value": 1},
    {"op": "put", "key": "a", "value": b"1"},
    {"op": "put", "key": "\ud800", "value": "1"},  # lone surrogate: not UTF-8
    {"op": "put", "key": "a", "value": "x\udfff"},
    {"op": "delete", "key": None},
    {"op": "delete", "key": ""},
    put("a", "1", client_id="c1"),
    put("a", "1", seq=1),
    put("a", "1", client_id=1, seq=1),
    put("a", "1", client_id="", seq=1),
    put("a", "1", client_id="c1", seq=-1),
    put("a", "1", client_id="c1", seq="1"),
    put("a", "1", client_id="c1", seq=1.0),
    put("a", "1", client_id="c1", seq=True),
]


def _is_json(value: Any) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


JSON_MALFORMED = [c for c in MALFORMED if _is_json(c)]  # what can actually reach the log


@pytest.mark.parametrize("command", MALFORMED)
def test_malformed_commands_return_errors_and_change_nothing(command: Any) -> None:
    f = Feeder()
    f(put("a", "0", client_id="c1", seq=0))
    before = _copy(f.store)
    result = f(command)
    assert result["error"] == "invalid_command"
    assert isinstance(result["message"], str) and result["message"]
    json.dumps(result)
    assert f.store.applied_index == 2
    before.mark_applied(2)
    assert f.store == before


def test_extra_fields_are_ignored_and_null_session_means_none() -> None:
    f = Feeder()
    assert f({**put("a", "1"), "future": [1, 2]})["revision"] == 1
    assert f(put("a", "2", client_id=None, seq=None))["revision"] == 2
    assert f(delete("a", value=123))["deleted"] == 1  # value is irrelevant to delete
    assert _session_ids(f.store) == []


def test_command_builders() -> None:
    assert put_command("k", "v") == {"op": "put", "key": "k", "value": "v"}
    assert delete_command("k", "c", 3) == {"op": "delete", "key": "k", "client_id": "c", "seq": 3}
    f = Feeder()
    f.open("c")
    assert f(put_command("k", "v", client_id="c", seq=1))["created"] is True


# ---- raft indexes -------------------------------------------------------------------


def test_applied_index_tracks_entries_and_replays_are_ignored() -> None:
    s = KVStore()
    s.apply(3, put("a", "1"))
    assert (s.applied_index, s.revision) == (3, 1)
    replay = s.apply(3, put("a", "1"))
    assert replay["error"] == "already_applied"
    assert s.apply(2, put("b", "1"))["error"] == "already_applied"
    assert (s.applied_index, s.revision, len(s)) == (3, 1, 1)
    s.mark_applied(5)  # e.g. a leader's no-op entry
    assert s.applied_index == 5
    s.mark_applied(4)
    assert s.applied_index == 5


# ---- snapshots ----------------------------------------------------------------------


def _busy_feeder(max_sessions: int = 3) -> Feeder:
    f = Feeder(KVStore(max_sessions=max_sessions))
    f.now = 100
    f.open("c1", "c2", "c3")
    f(put("x/1", "é"))
    f(put("x/2", "2", client_id="c1", seq=1))
    f(put("x/1", "again", client_id="c2", seq=4))
    f(delete("x/2", client_id="c3", seq=1))
    f(put("日本", "値", client_id="c1", seq=2))
    f(delete("missing"))
    f.expire(200, 1_000)  # expires nothing, moves the clock
    f.open("c4")  # evicts c2
    f(put("z", "", client_id="c4", seq=9))
    return f


def test_lines_round_trip_including_sessions() -> None:
    f = _busy_feeder()
    lines = _lines(f.store, rows_per_line=2)
    restored = KVStore.from_lines(lines)
    assert restored == f.store
    assert _lines(restored, rows_per_line=2) == lines
    assert restored.max_sessions == 3 and restored.sessions.clock == 200
    assert _session_ids(restored) == _session_ids(f.store)
    assert f.names() == ["c3", "c1", "c4"]
    assert [kv.key for kv in restored.list()] == ["x/1", "z", "日本"]
    assert restored.get("x/1") == f.store.get("x/1")
    assert len(restored) == len(f.store) == 3


def test_a_rebuilt_store_shares_nothing_with_the_original() -> None:
    original = _busy_feeder()
    lines = _lines(original.store)
    rebuilt = Feeder(KVStore.from_lines(lines))
    rebuilt.ids = dict(original.ids)
    rebuilt(put("x/1", "changed", client_id="c1", seq=3))  # a row and a session result
    rebuilt(delete("z"))
    assert _lines(original.store) == lines
    original(put("日本", "changed", client_id="c4", seq=10))
    original(delete("x/1"))
    assert rebuilt.store.get("日本") == KeyValue("日本", "値", 5, 5, 1)
    assert rebuilt.store.get("x/1") == KeyValue("x/1", "changed", 1, 7, 3)
    assert "error" not in rebuilt.store.apply(
        99, put("q", "1", client_id=original.ids["c1"], seq=4)
    )


def test_rebuilt_store_continues_identically() -> None:
    original = _busy_feeder()
    restored = Feeder(KVStore.from_lines(_lines(original.store, rows_per_line=2)))
    restored.ids = dict(original.ids)
    more = [
        put("x/1", "3", client_id="c1", seq=2),  # duplicate: stored result
        put("x/1", "3", client_id="c1", seq=1),  # stale
        put("x/1", "3", client_id="c2", seq=4),  # c2 was evicted: refused
        open_session_command(300),  # evicts the least recently active session
        expire_sessions_command(1_200, 1_000),  # c3 (active at 100) expires
        delete("日本"),
        put("日本", "again"),
    ]
    for cmd in more:
        assert original(cmd) == restored(cmd)
    assert original.store == restored.store
    assert _lines(original.store) == _lines(restored.store)


def test_equality_notices_session_order() -> None:
    a, b = Feeder(), Feeder()
    a.open("c1", "c2")
    b.open("c1", "c2")
    a(put("k", "1", client_id="c1", seq=1))
    a(put("k", "2", client_id="c2", seq=1))
    b(put("k", "1", client_id="c2", seq=1))
    b(put("k", "2", client_id="c1", seq=1))
    assert a.store.get("k") == b.store.get("k")
    assert a.store != b.store  # session results and order differ


# ---- determinism --------------------------------------------------------------------


def _random_command(rng: random.Random) -> Any:
    key = rng.choice(["a", "a/b", "a/c", "b", "é/1", "日本", "k" + str(rng.randrange(40))])
    session: dict[str, Any] = {}
    if rng.random() < 0.6:
        session = {"client_id": str(rng.randrange(40)), "seq": rng.randrange(30)}
    roll = rng.random()
    if roll < 0.05:
        return open_session_command(rng.randrange(10_000))
    if roll < 0.08:
        return expire_sessions_command(rng.randrange(10_000), rng.randrange(3_000))
    if roll < 0.55:
        return put(key, str(rng.randrange(1000)), **session)
    if roll < 0.9:
        return delete(key, **session)
    return rng.choice(JSON_MALFORMED)


@pytest.mark.parametrize("seed", range(5))
def test_same_commands_give_identical_stores(seed: int) -> None:
    """A follower applies the commands as the log delivers them (through JSON)
    and now and then carries on from a snapshot, as after an InstallSnapshot:
    it ends identical to the leader."""
    rng = random.Random(seed)
    commands = [_random_command(rng) for _ in range(3000)]
    a, b = Feeder(KVStore(max_sessions=5)), Feeder(KVStore(max_sessions=5))
    for i, cmd in enumerate(commands):
        assert a(cmd) == b(json.loads(json.dumps(cmd)))
        if i % 1000 == 500:
            rows = rng.choice([1, 3, 4096])
            b = Feeder(KVStore.from_lines(b.store.freeze().lines(rows_per_line=rows)))
    assert _lines(a.store) == _lines(b.store)
    assert a.store == b.store
    # the sorted index agrees with the data
    assert [kv.key for kv in a.store.list()] == sorted(kv.key for kv in a.store.list())
    assert len(a.store.list()) == len(a.store)


def test_large_store_listing() -> None:
    s = KVStore()
    rng = random.Random(7)
    keys = [f"user/{rng.randrange(10**9):09d}" for _ in range(20_000)]
    for i, k in enumerate(keys, start=1):
        s.apply(i, put(k, "v"))
    assert len(s) == len(set(keys))
    assert [kv.key for kv in s.list("user/", limit=5)] == sorted(set(keys))[:5]
    assert [kv.key for kv in s.list("user/1")] == sorted(k for k in set(keys) if k[5] == "1")


# ---- freeze and the line encoding ---------------------------------------------------


def test_freeze_is_a_consistent_capture_later_applies_do_not_change() -> None:
    f = _busy_feeder()
    frozen = f.store.freeze()
    expected = _busy_feeder().store  # the same state, built without any snapshot
    before = list(frozen.lines(rows_per_line=1))
    f(put("x/1", "changed", client_id="c1", seq=3))  # overwrite + session update
    f(delete("z"))  # delete
    f.open("c9")  # evicts a session
    f(put("a", "new", client_id="c9", seq=1))  # create
    assert list(frozen.lines(rows_per_line=1)) == before
    assert len(frozen) == 3 and frozen.meta["revision"] == expected.revision
    assert KVStore.from_lines(before) == expected != f.store


def test_lines_are_newline_free_json_header_then_sessions_then_keys_in_order() -> None:
    f = Feeder(KVStore(max_sessions=5, max_session_bytes=1 << 20))
    f.now = 7
    f.open("c0", "c1", "c2")
    for i in range(10):
        f(put(f"k{9 - i}", "line\nbreak ✓", client_id=f"c{i % 3}", seq=i + 1))
    lines = _lines(f.store, rows_per_line=4)
    assert all(b"\n" not in line for line in lines)
    header = json.loads(lines[0])
    assert header == {
        "format": 4,
        "revision": 10,
        "applied_index": 13,
        "max_sessions": 5,
        "max_session_bytes": 1 << 20,
        "clock": 7,
        "sessions": 3,
        "keys": 10,
        "compacted": 0,
        "events": 10,
        "leases": 0,
        "max_leases": 100_000,
    }
    sessions = json.loads(lines[1])
    # order of last activity, each with its last seq and the clock at that activity
    assert [(row[0], row[1], row[3]) for row in sessions] == [
        ("2", 8, 7),
        ("3", 9, 7),
        ("1", 10, 7),
    ]
    flat = [x for line in lines[2:5] for x in json.loads(line)]  # rows of six, flat
    key_rows = [flat[i : i + 6] for i in range(0, len(flat), 6)]
    assert [len(json.loads(line)) for line in lines[2:5]] == [24, 24, 12]
    assert [r[0] for r in key_rows] == sorted(f"k{i}" for i in range(10))
    assert key_rows[0] == ["k0", "line\nbreak ✓", 10, 10, 1, 0]
    # then the history, in revision order, rows of eleven (no previous KV: null, zeros)
    flat = [x for line in lines[5:] for x in json.loads(line)]
    assert [len(json.loads(line)) for line in lines[5:]] == [44, 44, 22]
    events = [flat[i : i + 11] for i in range(0, len(flat), 11)]
    assert [e[3] for e in events] == list(range(1, 11))
    assert events[0] == ["k9", "line\nbreak ✓", 1, 1, 1, 0, None, 0, 0, 0, 0]


def test_lines_stay_bounded_with_large_values_and_session_results() -> None:
    f = Feeder(KVStore(max_sessions=100))
    big = "v" * 100_000
    f.open(*[f"c{i}" for i in range(20)])
    for i in range(20):
        f(put(f"k{i:02d}", big))
        f(put(f"k{i:02d}", big, client_id=f"c{i}", seq=1))  # the result holds prev_value
    lines = _lines(f.store, max_line_bytes=250_000)
    assert max(len(line) for line in lines) < 250_000 + 100_100
    assert len(lines) > 1 + 20 // 3
    assert KVStore.from_lines(lines) == f.store


def test_empty_store_lines() -> None:
    lines = _lines(KVStore())
    assert len(lines) == 1
    assert KVStore.from_lines(lines) == KVStore()
    with pytest.raises(ValueError):
        KVStore().freeze().lines(rows_per_line=0).__next__()


def test_apply_refuses_a_seq_beyond_63_bits() -> None:
    f = Feeder()
    f.open("c")
    result = f(put("a", "1", client_id="c", seq=1 << 63))
    assert result["error"] == "invalid_command"
    assert f.store.get("a") is None and f.store.sessions.table["1"] == (0, None, 0)
    assert "error" not in f(put("a", "1", client_id="c", seq=(1 << 63) - 1))
    assert KVStore.from_lines(_lines(f.store)) == f.store


def _good_lines() -> list[bytes]:
    """A format 3 snapshot (before history and leases), which is still read."""
    f = Feeder(KVStore(max_sessions=3, max_session_bytes=1000))
    f.now = 9
    f.open("c1")
    f(put("a", "1", client_id="c1", seq=1))
    f(put("b", "2"))
    f(put("a", "3"))
    lines = [HEADER, SESSIONS, KEYS]
    store = KVStore.from_lines(lines)
    assert store.list() == f.store.list() and store.sessions == f.store.sessions
    # no history before the snapshot: reads and watches start at its revision
    assert (store.revision, store.compacted, store.history_size) == (3, 3, 0)
    assert store.range("a", revision=2)["error"] == "compacted"
    return lines


# Format 3 (still read): rows of five, no lease, no history.
HEADER = (
    b'{"format":3,"revision":3,"applied_index":4,"max_sessions":3,"max_session_bytes":1000,'
    b'"clock":9,"sessions":1,"keys":2}'
)
SESSIONS = b'[["1",1,{"key":"a","revision":1,"created":true,"prev_value":null},9]]'
KEYS = b'["a","3",1,3,2,"b","2",2,2,1]'
HEADER_V2 = b'{"format":2,"revision":3,"applied_index":4,"max_sessions":3,"sessions":1,"keys":2}'
SESSIONS_V2 = b'[["c1",1,{"key":"a","revision":1,"created":true,"prev_value":null}]]'


def test_format_2_lines_are_still_read() -> None:
    store = KVStore.from_lines([HEADER_V2, SESSIONS_V2, KEYS])
    assert store.sessions.table == {
        "c1": (1, {"key": "a", "revision": 1, "created": True, "prev_value": None}, 0)
    }
    assert store.get("a") == KeyValue("a", "3", 1, 3, 2) and store.sessions.clock == 0


def _header(**changes: Any) -> bytes:
    d = json.loads(HEADER)
    d.update(changes)
    for k in [k for k, v in changes.items() if v is Ellipsis]:
        del d[k]
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    "lines",
    [
        [],
        [b"{not json"],
        [b"{}"],
        [b"[1, 2]", SESSIONS, KEYS],
        # format 1, the whole state as one document, is no longer read
        [b'{"format":1,"revision":0,"applied_index":0,"max_sessions":3,"data":[],"sessions":[]}'],
        [_header(format=4), SESSIONS, KEYS],
        [_header(format=2), SESSIONS, KEYS],  # format 2 has no clock
        [_header(clock=8), SESSIONS, KEYS],  # a session active after the clock
        [_header(clock=-1), SESSIONS, KEYS],
        [_header(max_session_bytes=0), SESSIONS, KEYS],
        [HEADER, b'[["1",1,{},9,0]]', KEYS],  # five values
        [HEADER, b'[["1",1,{},"9"]]', KEYS],
        [_header(sessions=2), b'[["1",1,{},9],["2",1,{},8]]', KEYS],  # activity out of order
        [_header(keys=...), SESSIONS, KEYS],
        [_header(extra=1), SESSIONS, KEYS],
        [_header(revision=True), SESSIONS, KEYS],
        [_header(revision=-1), SESSIONS, KEYS],
        [_header(revision=1 << 63, applied_index=1 << 63), SESSIONS, KEYS],
        [_header(applied_index=18446744073709551616), SESSIONS, KEYS],
        [_header(revision=3.0), SESSIONS, KEYS],
        [_header(applied_index=2), SESSIONS, KEYS],  # revision beyond what was applied
        [_header(max_sessions=0, sessions=0), KEYS],
        [_header(sessions=4), SESSIONS, KEYS],  # more than max_sessions
        [HEADER, SESSIONS],  # truncated
        [HEADER, KEYS],  # no session line
        [HEADER, SESSIONS, KEYS, KEYS],  # a line too many
        [_header(keys=1), SESSIONS, KEYS],  # more rows than announced
        [HEADER, SESSIONS, b"[]"],
        [HEADER, SESSIONS, b'{"a": 1}'],
        [HEADER, SESSIONS, b'[["a","3",1,3,2],["b","2",2,2,1]]'],  # rows must be flat
        [HEADER, SESSIONS, b'["a","3",1,3,2,"b","2",2,2]'],  # not rows of five
        [HEADER, SESSIONS, b'["b","2",2,2,1,"a","3",1,3,2]'],  # out of order
        [HEADER, SESSIONS, b'["a","3",1,3,2,"a","2",2,2,1]'],  # repeated
        [HEADER, SESSIONS, b'["","3",1,3,2,"b","2",2,2,1]'],  # empty key
        [HEADER, SESSIONS, b'["a","3",1,3,"b","2",2,2,1]'],  # short row
        [HEADER, SESSIONS, b'["a",3,1,3,2,"b","2",2,2,1]'],  # value not a string
        [HEADER, SESSIONS, b'["a","3",0,3,2,"b","2",2,2,1]'],  # create 0
        [HEADER, SESSIONS, b'["a","3",1,4,2,"b","2",2,2,1]'],  # mod > revision
        [HEADER, SESSIONS, b'["a","3",2,1,1,"b","2",2,2,1]'],  # create > mod
        [HEADER, SESSIONS, b'["a","3",1,3,4,"b","2",2,2,1]'],  # too many versions
        [HEADER, SESSIONS, b'["a","3",1,3,true,"b","2",2,2,1]'],
        [HEADER, SESSIONS, b'["a","3",1,3,2.0,"b","2",2,2,1]'],
        [HEADER, SESSIONS, b'["a","\\ud800",1,3,2,"b","2",2,2,1]'],  # lone surrogate
        [HEADER, b'[["c1",1,{}]]', KEYS],
        [HEADER, b'[["c1","1",{},9]]', KEYS],
        [HEADER, b'[["c1",-1,{},9]]', KEYS],
        [HEADER, b'[["c1",9223372036854775808,{},9]]', KEYS],
        [HEADER, b'[["c1",1,[],9]]', KEYS],
        [HEADER, b'[["",1,{},9]]', KEYS],
        [_header(sessions=2), b'[["c1",1,{},9],["c1",2,{},9]]', KEYS],  # repeated client
        [HEADER, b'[["c1",1,{},9],["c2",2,{},9]]', KEYS],  # more sessions than announced
    ],
)
def test_from_lines_rejects_malformed_input(lines: list[bytes]) -> None:
    assert KVStore.from_lines(_good_lines()) is not None
    with pytest.raises(ValueError):
        KVStore.from_lines(lines)


def test_stored_rows_are_invisible_to_the_cyclic_gc() -> None:
    """Why rows are tuples: a million tracked objects make every full collection
    hold the GIL for hundreds of ms (measured in bench/snapshot_gil.py)."""
    f = _busy_feeder()
    rebuilt = KVStore.from_lines(_lines(f.store, rows_per_line=1))
    gc.collect()
    for store in (f.store, rebuilt):
        assert store._rows and not any(gc.is_tracked(row) for row in store._rows)
        # the history's events too: flat tuples (see kv/history.py for why not nested)
        assert store._events and not any(gc.is_tracked(e) for e in store._events)
        kv = store.get("x/1")
        assert kv is not None and kv == KeyValue("x/1", "again", 1, 3, 2)


@pytest.mark.parametrize(
    "command",
    [
        {"op": "open_session"},
        {"op": "open_session", "now": -1},
        {"op": "open_session", "now": True},
        {"op": "open_session", "now": 1.5},
        {"op": "open_session", "now": 1 << 63},
        {"op": "expire_sessions", "now": 5},
        {"op": "expire_sessions", "now": 5, "ttl": "10"},
    ],
)
def test_malformed_session_upkeep_is_refused_everywhere_alike(command: Any) -> None:
    f = Feeder()
    result = f(command)
    assert result["error"] == "invalid_command"
    assert len(f.store.sessions) == 0 and f.store.sessions.clock == 0
