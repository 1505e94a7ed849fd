"""The MVCC store: history, range (at a revision), delete_range, put options, compaction
and the change log a watch reads. Expected values follow etcd 3.4 (checked against a
real one; its revisions start at 1 where ours start at 0, so they are ours + 1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mvcc_helpers import Store, compact, delete_range, grant, kv, put, tomb

from kvcluster.kv import CompactedError, KVStore


def _history() -> Store:
    """a: created at 1, modified at 3, deleted at 4, re-created at 6; b at 2; c at 5."""
    s = Store()
    s(put("a", "1"))  # 1
    s(put("b", "x"))  # 2
    s(put("a", "2"))  # 3
    s({"op": "delete", "key": "a"})  # 4
    s(put("c", "y"))  # 5
    s(put("a", "new"))  # 6
    return s


# ---- history and range at a revision -------------------------------------------------


def test_every_change_is_a_revision_and_a_delete_ends_a_generation() -> None:
    s = _history()
    assert s.kv.range("a") == {
        "revision": 6,
        "kvs": [kv("a", "new", 6, 6, 1)],
        "count": 1,
        "more": False,
    }
    assert s.kv.range("a", revision=3)["kvs"] == [kv("a", "2", 1, 3, 2)]
    assert s.kv.range("a", revision=1)["kvs"] == [kv("a", "1", 1, 1, 1)]
    assert s.kv.range("a", revision=4)["kvs"] == []
    assert s.kv.range("a", revision=5) == {"revision": 6, "kvs": [], "count": 0, "more": False}
    assert s.kv.range("b", revision=1)["kvs"] == []
    assert s.kv.range("b", revision=2)["kvs"] == [kv("b", "x", 2, 2, 1)]


def test_range_at_each_revision_matches_the_state_then() -> None:
    s = _history()
    expected = {
        1: {"a": "1"},
        2: {"a": "1", "b": "x"},
        3: {"a": "2", "b": "x"},
        4: {"b": "x"},
        5: {"b": "x", "c": "y"},
        6: {"a": "new", "b": "x", "c": "y"},
    }
    for rev, values in expected.items():
        assert s.values(rev=rev) == values
        assert s.values("a", "c", rev=rev) == {k: v for k, v in values.items() if k < "c"}
    assert s.values(rev=0) == s.values(rev=-5) == expected[6]  # <= 0 is the current state


def test_future_revision_is_an_error() -> None:
    s = _history()
    result = s.kv.range("a", revision=7)
    assert result["error"] == "future_revision"
    assert result["message"] == "etcdserver: mvcc: required revision is a future revision"


def test_range_end_selects_like_etcd() -> None:
    s = Store()
    for key in ["a", "a/1", "a/2", "ab", "b", "b/1", "\x00x", "é", "日本"]:
        s(put(key, key))

    def keys(key: str, end: str | None) -> list[str]:
        return [x["key"] for x in s.kv.range(key, end)["kvs"]]

    assert keys("a/", "a0") == ["a/1", "a/2"]  # a prefix: range_end = prefix + 1
    assert keys("a", None) == ["a"]
    assert keys("a", "") == ["a"]  # an empty range_end is the key alone
    assert keys("b", "\x00") == ["b", "b/1", "é", "日本"]  # every key >= key
    assert keys("\x00", "\x00") == sorted(
        ["a", "a/1", "a/2", "ab", "b", "b/1", "\x00x", "é", "日本"]
    )
    assert keys("b", "a") == []  # range_end before key: nothing
    assert keys("b", "b") == []
    assert keys("é", "\U0010ffff") == ["é", "日本"]  # code-point order is UTF-8 byte order
    assert keys("zz", None) == []


def test_limit_count_more_keys_only_count_only() -> None:
    s = Store()
    for i in range(5):
        s(put(f"k{i}", f"v{i}"))
    r = s.kv.range("k", "l", limit=2)
    assert [x["key"] for x in r["kvs"]] == ["k0", "k1"]
    assert (r["count"], r["more"]) == (5, True)
    r = s.kv.range("k", "l", limit=5)
    assert (len(r["kvs"]), r["count"], r["more"]) == (5, 5, False)
    assert s.kv.range("k", "l", limit=-1)["count"] == 5  # <= 0: no limit
    r = s.kv.range("k", "l", keys_only=True, limit=1)
    assert r["kvs"] == [kv("k0", "", 1, 1, 1)] and r["more"]
    r = s.kv.range("k", "l", count_only=True, limit=1)
    assert r == {"revision": 5, "kvs": [], "count": 5, "more": False}
    # the same at a past revision
    r = s.kv.range("k", "l", revision=3, limit=2)
    assert [x["key"] for x in r["kvs"]] == ["k0", "k1"] and (r["count"], r["more"]) == (3, True)
    assert s.kv.range("k", "l", revision=3, count_only=True)["count"] == 3


def test_sort_and_revision_filters() -> None:
    s = Store()
    s(put("b", "2"))  # 1
    s(put("a", "3"))  # 2
    s(put("c", "1"))  # 3
    s(put("b", "0"))  # 4

    def keys(**options: Any) -> list[str]:
        return [x["key"] for x in s.kv.range("a", "\x00", **options)["kvs"]]

    assert keys(sort_order="DESCEND") == ["c", "b", "a"]
    assert keys(sort_target="VALUE") == ["b", "c", "a"]  # a target alone sorts ascending
    assert keys(sort_target="MOD", sort_order="DESCEND") == ["b", "c", "a"]
    assert keys(sort_target="CREATE") == ["b", "a", "c"]
    assert keys(sort_target="VERSION", sort_order="DESCEND") == ["b", "a", "c"]  # ties: key order
    r = s.kv.range("a", "\x00", sort_target="VALUE", limit=2)
    assert [x["key"] for x in r["kvs"]] == ["b", "c"] and r["more"] and r["count"] == 3
    assert keys(min_mod_revision=3) == ["b", "c"]
    assert keys(max_mod_revision=3) == ["a", "c"]
    assert keys(min_create_revision=2) == ["a", "c"]
    assert keys(max_create_revision=1) == ["b"]
    # count is every key in the range, before the filters (as etcd counts)
    assert s.kv.range("a", "\x00", min_mod_revision=4)["count"] == 3
    assert s.kv.range("a", "\x00", sort_order="UP")["error"] == "invalid_command"
    assert s.kv.range("", None)["error"] == "invalid_command"


# ---- delete_range ------------------------------------------------------------------------


def test_delete_range_deletes_at_one_revision_in_key_order() -> None:
    s = Store()
    for key in ["a", "b", "c", "d"]:
        s(put(key, key.upper()))
    result = s(delete_range("b", "d", prev_kv=True))
    assert result == {
        "revision": 5,
        "deleted": 2,
        "prev_kvs": [kv("b", "B", 2, 2, 1), kv("c", "C", 3, 3, 1)],
    }
    assert s.values() == {"a": "A", "d": "D"}
    events = list(s.kv.changes_since(5, "\x00", "\x00"))
    assert [(e["type"], e["kv"]) for e in events] == [
        ("DELETE", tomb("b", 5)),
        ("DELETE", tomb("c", 5)),
    ]
    # nothing to delete: no new revision
    assert s(delete_range("x", "z")) == {"revision": 5, "deleted": 0}
    assert s(delete_range("x", prev_kv=True)) == {"revision": 5, "deleted": 0, "prev_kvs": []}
    assert s(delete_range("a", "\x00")) == {"revision": 6, "deleted": 2}
    assert s.values() == {} and len(s.kv) == 0
    assert s.values(rev=5) == {"a": "A", "d": "D"}


# ---- put options --------------------------------------------------------------------------


def test_put_prev_kv_and_the_v1_fields() -> None:
    s = Store()
    assert s(put("a", "1", prev_kv=True)) == {
        "key": "a",
        "revision": 1,
        "created": True,
        "prev_value": None,
    }
    assert s(put("a", "2", prev_kv=True)) == {
        "key": "a",
        "revision": 2,
        "created": False,
        "prev_value": "1",
        "prev_kv": kv("a", "1", 1, 1, 1),
    }


def test_ignore_value_and_ignore_lease_need_the_key() -> None:
    s = Store()
    assert s(put("a", "", ignore_value=True)) == {
        "error": "key_not_found",
        "message": "etcdserver: key not found",
    }
    assert s(put("a", "x", ignore_lease=True))["error"] == "key_not_found"
    assert s.kv.revision == 0 and s.kv.history_size == 0
    s(grant(7, 100))
    s(put("a", "1", lease=7))  # 1
    s(put("a", "", ignore_value=True))  # 2: value kept, lease dropped (none given)
    assert s.kv.range("a")["kvs"] == [kv("a", "1", 1, 2, 2, 0)]
    s(put("a", "2", lease=7))  # 3
    s(put("a", "3", ignore_lease=True))  # 4: lease kept
    assert s.kv.range("a")["kvs"] == [kv("a", "3", 1, 4, 4, 7)]
    s(put("a", "", ignore_value=True, ignore_lease=True))  # 5: both kept
    assert s.kv.range("a")["kvs"] == [kv("a", "3", 1, 5, 5, 7)]


@pytest.mark.parametrize(
    "command",
    [
        put("a", "x", ignore_value=True),  # etcdserver: value is provided
        put("a", "", lease=5, ignore_lease=True),  # etcdserver: lease is provided
        put("a", "x", lease="5"),
        put("a", "x", lease=1 << 63),
        put("a", "x", prev_kv=1),
        put("a", "x", ignore_value="yes"),
        put("a", 1, prev_kv=True),
        delete_range(""),
        delete_range("a", 3),
        delete_range("a", prev_kv="no"),
        {"op": "delete_range"},
        compact(-1),
        compact(True),
        {"op": "compact"},
        {"op": "compact", "revision": "1"},
    ],
)
def test_malformed_etcd_commands_are_refused_everywhere_alike(command: Any) -> None:
    s = Store()
    s(put("a", "0"))
    before = s.copy()
    result = s(command)
    assert result["error"] == "invalid_command" and result["message"]
    json.dumps(result)
    before.kv.mark_applied(s.kv.applied_index)
    assert s.kv == before.kv


def test_put_on_a_missing_lease_is_refused() -> None:
    s = Store()
    result = s(put("a", "1", lease=42))
    assert result == {
        "error": "lease_not_found",
        "message": "etcdserver: requested lease not found",
    }
    assert s.kv.revision == 0 and s.kv.get("a") is None


# ---- compaction -----------------------------------------------------------------------


def test_compaction_keeps_every_revision_from_the_compacted_one() -> None:
    s = _history()
    assert s(compact(3)) == {"revision": 6}
    assert s.kv.compacted == 3 and s.kv.revision == 6  # no revision of its own
    assert s.values(rev=3) == {"a": "2", "b": "x"}
    assert s.values(rev=4) == {"b": "x"}
    result = s.kv.range("a", revision=2)
    assert result == {
        "error": "compacted",
        "message": "etcdserver: mvcc: required revision has been compacted",
        "compact_revision": 3,
        "revision": 6,
    }
    # events from revision 3 on stay (a watch may start at the compact revision)
    assert [e["kv"]["mod_revision"] for e in s.kv.changes_since(3, "\x00", "\x00")] == [3, 4, 5, 6]
    assert s.kv.history_size == 4
    with pytest.raises(CompactedError) as raised:
        s.kv.changes_since(2, "a")
    assert raised.value.args == (3,)


def test_compaction_errors() -> None:
    s = _history()
    assert s(compact(7)) == {
        "error": "future_revision",
        "message": "etcdserver: mvcc: required revision is a future revision",
        "revision": 6,
    }
    assert s(compact(4)) == {"revision": 6}
    for rev in (4, 3):
        assert s(compact(rev)) == {
            "error": "compacted",
            "message": "etcdserver: mvcc: required revision has been compacted",
            "compact_revision": 4,
        }
    assert s(compact(6)) == {"revision": 6}  # up to the current revision
    assert s.kv.history_size == 1 and s.values(rev=6) == s.values()
    assert s.kv.range("a", revision=5)["error"] == "compacted"
    assert s(compact(0))["error"] == "compacted"  # never back to 0
    assert s.kv.compacted == 6
    assert Store()(compact(0)) == {"revision": 0}  # nothing yet: a no-op, as in etcd


def test_compaction_frees_history_and_reads_still_work() -> None:
    s = Store()
    for i in range(1000):
        s(put(f"k{i % 10}", str(i)))
    assert s.kv.history_size == 1000
    s(compact(990))
    assert s.kv.history_size == 11  # revisions 990..1000
    assert s.values(rev=990) == {f"k{i}": str(980 + i) for i in range(10)}
    assert s.values() == {f"k{i}": str(990 + i) for i in range(10)}


# ---- the change log ---------------------------------------------------------------------


def test_changes_since_has_etcd_event_shapes_in_revision_order() -> None:
    s = _history()
    events = list(s.kv.changes_since(1, "a"))
    assert events == [
        {"type": "PUT", "kv": kv("a", "1", 1, 1, 1), "prev_kv": None},
        {"type": "PUT", "kv": kv("a", "2", 1, 3, 2), "prev_kv": kv("a", "1", 1, 1, 1)},
        {"type": "DELETE", "kv": tomb("a", 4), "prev_kv": kv("a", "2", 1, 3, 2)},
        {"type": "PUT", "kv": kv("a", "new", 6, 6, 1), "prev_kv": None},
    ]
    assert [e["kv"]["key"] for e in s.kv.changes_since(2, "a", "\x00")] == ["b", "a", "a", "c", "a"]
    assert [e["kv"]["key"] for e in s.kv.changes_since(2, "b", "c")] == ["b"]
    assert [e["kv"]["mod_revision"] for e in s.kv.changes_since(5, "\x00", "\x00")] == [5, 6]
    assert list(s.kv.changes_since(7, "\x00", "\x00")) == []
    json.dumps(events)


def test_changes_since_is_not_disturbed_by_later_applies() -> None:
    s = _history()
    it = s.kv.changes_since(1, "\x00", "\x00")
    first = next(it)
    s(put("z", "later"))
    s(compact(7))
    rest = list(it)
    assert [first, *rest] == list(_history().kv.changes_since(1, "\x00", "\x00"))


def test_v1_delete_and_put_make_events_too() -> None:
    s = Store()
    s(put("a", "1"))
    s({"op": "delete", "key": "a"})
    s({"op": "delete", "key": "a"})  # nothing deleted: no event, no revision
    assert [e["type"] for e in s.kv.changes_since(0, "a")] == ["PUT", "DELETE"]
    assert s.kv.revision == 2


def test_an_event_shares_the_values_with_the_rows() -> None:
    """A put adds one flat tuple holding the same value objects as the rows, not copies."""
    s = Store()
    s(put("a", "x" * 1000))
    s(put("a", "y" * 1000))
    first, second = s.kv._events
    assert second[6] is first[1] and second[1] is s.kv._rows[0][1]
    assert first[6:] == (None, 0, 0, 0, 0)  # the put that created the key


def test_store_equality_covers_history() -> None:
    a, b = Store(), Store()
    for s in (a, b):
        s(put("k", "1"))
        s(put("k", "2"))
    assert a.kv == b.kv
    a(compact(2))
    b.kv.mark_applied(a.kv.applied_index)
    assert a.kv != b.kv  # same keys, different history
    assert isinstance(a.kv, KVStore)
