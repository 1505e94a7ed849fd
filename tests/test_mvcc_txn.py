"""Transactions: compares, branches, nesting, one revision, atomic failure, etcd's limits.

Where a test says "etcd:", the expected answer is what a real etcd 3.4 gave for the
same requests (its revisions are ours + 1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mvcc_helpers import (
    Store,
    cmp,
    compact,
    grant,
    kv,
    put,
    r_delete,
    r_put,
    r_range,
    r_txn,
    tomb,
    txn,
)


def _abc() -> Store:
    s = Store()
    s(put("a", "1"))  # 1
    s(put("b", "2"))  # 2
    s(put("b", "3"))  # 3: b version 2, created 2, mod 3
    return s


# ---- compares -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (cmp("a", "VALUE", "EQUAL", "1"), True),
        (cmp("a", "VALUE", "NOT_EQUAL", "1"), False),
        (cmp("a", "VALUE", "GREATER", "0"), True),
        (cmp("a", "VALUE", "LESS", "10"), True),  # byte order: a prefix is less
        (cmp("a", "VALUE", "LESS", "2"), True),
        (cmp("b", "VERSION", "EQUAL", 2), True),
        (cmp("b", "VERSION", "GREATER", 1), True),
        (cmp("b", "CREATE", "EQUAL", 2), True),
        (cmp("b", "MOD", "EQUAL", 3), True),
        (cmp("b", "MOD", "LESS", 3), False),
        (cmp("b", "LEASE", "EQUAL", 0), True),
        (cmp("b", "LEASE", "NOT_EQUAL", 0), False),
        # a missing key compares as version/create/mod/lease 0...
        (cmp("zz", "VERSION", "EQUAL", 0), True),
        (cmp("zz", "CREATE", "EQUAL", 0), True),
        (cmp("zz", "MOD", "LESS", 1), True),
        (cmp("zz", "LEASE", "EQUAL", 0), True),
        # ... but any VALUE compare on it fails, even NOT_EQUAL
        (cmp("zz", "VALUE", "NOT_EQUAL", "x"), False),
        (cmp("zz", "VALUE", "EQUAL", ""), False),
        # with a range_end every key in the range must hold
        (cmp("a", "VERSION", "GREATER", 0, range_end="c"), True),
        (cmp("a", "VERSION", "EQUAL", 1, range_end="c"), False),
        (cmp("a", "MOD", "LESS", 4, range_end="\x00"), True),
        (cmp("a", "VALUE", "GREATER", "0", range_end="\x00"), True),
        (cmp("x", "VERSION", "EQUAL", 0, range_end="z"), True),  # empty range: zero KV
        (cmp("x", "VALUE", "EQUAL", "", range_end="z"), False),
        # proto defaults: a compare without a target compares VERSION, without a result EQUAL
        ({"key": "b", "version": 2}, True),
        ({"key": "zz"}, True),
    ],
)
def test_compare(compare: dict[str, Any], holds: bool) -> None:
    s = _abc()
    result = s(txn([compare], [r_put("ok", "1")], [r_put("failed", "1")]))
    assert result["succeeded"] is holds
    assert s.values("failed" if not holds else "ok")


def test_all_compares_must_hold() -> None:
    s = _abc()
    both = [cmp("a", "VALUE", "EQUAL", "1"), cmp("b", "VERSION", "EQUAL", 2)]
    assert s(txn(both))["succeeded"] is True
    one = [cmp("a", "VALUE", "EQUAL", "1"), cmp("b", "VERSION", "EQUAL", 3)]
    assert s(txn(one))["succeeded"] is False


def test_compare_and_swap() -> None:
    s = _abc()
    swap = txn([cmp("a", "MOD", "EQUAL", 1)], [r_put("a", "2")], [r_range("a")])
    first = s(swap)
    assert first == {
        "revision": 4,
        "succeeded": True,
        "responses": [
            {"response_put": {"key": "a", "revision": 4, "created": False, "prev_value": "1"}}
        ],
    }
    second = s(swap)  # a moved: the failure branch reads it, nothing changes
    assert second == {
        "revision": 4,
        "succeeded": False,
        "responses": [
            {
                "response_range": {
                    "revision": 4,
                    "kvs": [kv("a", "2", 1, 4, 2)],
                    "count": 1,
                    "more": False,
                }
            }
        ],
    }


# ---- one revision, in order ---------------------------------------------------------


def test_a_txn_writes_at_one_revision_and_reads_its_own_writes() -> None:
    """etcd: the same requests gave these revisions, counts and keys."""
    s = Store()
    s(put("a", "0"))  # 1
    first = s(txn(success=[r_delete("a", "\x00"), r_put("b", "x")]))
    assert first == {
        "revision": 2,
        "succeeded": True,
        "responses": [
            {"response_delete_range": {"revision": 2, "deleted": 1}},
            {"response_put": {"key": "b", "revision": 2, "created": True, "prev_value": None}},
        ],
    }
    nothing = s(txn(success=[r_delete("a"), r_delete("a")]))
    assert nothing == {
        "revision": 2,
        "succeeded": True,
        "responses": [
            {"response_delete_range": {"revision": 2, "deleted": 0}},
            {"response_delete_range": {"revision": 2, "deleted": 0}},
        ],
    }
    s(put("k", "1"))  # 3
    second = s(
        txn(
            success=[
                r_put("n", "x"),
                r_delete("zz"),
                r_range("n"),
                r_txn(success=[r_range("k")]),
            ]
        )
    )
    assert second["revision"] == 4
    assert [next(iter(r)) for r in second["responses"]] == [
        "response_put",
        "response_delete_range",
        "response_range",
        "response_txn",
    ]
    assert second["responses"][1]["response_delete_range"] == {"revision": 4, "deleted": 0}
    assert second["responses"][2]["response_range"]["kvs"] == [kv("n", "x", 4, 4, 1)]
    assert second["responses"][3] == {  # a nested txn's answer has no revision (etcd: header {})
        "response_txn": {
            "succeeded": True,
            "responses": [
                {
                    "response_range": {
                        "revision": 4,
                        "kvs": [kv("k", "1", 3, 3, 1)],
                        "count": 1,
                        "more": False,
                    }
                }
            ],
        }
    }
    third = s(
        txn(
            success=[
                r_delete("zz"),
                r_range("n"),
                r_put("q", "x"),
                r_range("n"),
                r_delete("a", "\x00"),
            ]
        )
    )
    revisions = [next(iter(r.values()))["revision"] for r in third["responses"]]
    assert revisions == [4, 4, 5, 5, 5]  # the old revision until something changes
    assert third["responses"][4]["response_delete_range"]["deleted"] == 4  # b, k, n, q
    assert s.values() == {} and s.kv.revision == 5
    # q was put and deleted at revision 5: two events, in the order the txn made them
    events = [(e["type"], e["kv"]["key"]) for e in s.kv.changes_since(5, "\x00", "\x00")]
    assert events == [
        ("PUT", "q"),
        ("DELETE", "b"),
        ("DELETE", "k"),
        ("DELETE", "n"),
        ("DELETE", "q"),
    ]
    last = list(s.kv.changes_since(5, "q"))[-1]
    assert last == {"type": "DELETE", "kv": tomb("q", 5), "prev_kv": kv("q", "x", 5, 5, 1)}
    assert s.values(rev=4) == {"b": "x", "k": "1", "n": "x"}  # both undone


def test_a_txn_that_changes_nothing_keeps_the_revision() -> None:
    s = _abc()
    assert s(txn())["revision"] == 3
    assert s(txn(failure=[r_put("x", "1")]))["revision"] == 3  # succeeded: no ops
    assert (
        s(txn([cmp("a", "VALUE", "EQUAL", "1")], [r_range("a"), r_delete("zz")]))["revision"] == 3
    )
    assert s.kv.revision == 3 and s.kv.history_size == 3


def test_ranges_in_a_txn_at_past_revisions_and_options() -> None:
    s = _abc()
    result = s(
        txn(
            success=[
                r_put("a", "new"),
                r_range("a", revision=3),  # before the txn's own write
                r_range("a"),
                r_range("\x00", "\x00", count_only=True),
                r_range("a", "\x00", limit=1, keys_only=True),
            ]
        )
    )
    responses = [r.get("response_range") for r in result["responses"]]
    assert responses[1] is not None and responses[1]["kvs"] == [kv("a", "1", 1, 1, 1)]
    assert responses[2] is not None and responses[2]["kvs"] == [kv("a", "new", 1, 4, 2)]
    assert responses[3] == {"revision": 4, "kvs": [], "count": 2, "more": False}
    assert responses[4] == {"revision": 4, "kvs": [kv("a", "", 1, 4, 2)], "count": 2, "more": True}


def test_put_in_a_txn_with_prev_kv_and_ignore_value() -> None:
    s = _abc()
    result = s(txn(success=[r_put("b", "", ignore_value=True, prev_kv=True)]))
    put_response = result["responses"][0]["response_put"]
    assert put_response["prev_kv"] == kv("b", "3", 2, 3, 2)
    assert s.kv.range("b")["kvs"] == [kv("b", "3", 2, 4, 3)]


def test_delete_in_a_txn_with_prev_kvs() -> None:
    s = _abc()
    result = s(txn(success=[r_delete("a", "c", prev_kv=True)]))
    assert result["responses"][0]["response_delete_range"] == {
        "revision": 4,
        "deleted": 2,
        "prev_kvs": [kv("a", "1", 1, 1, 1), kv("b", "3", 2, 3, 2)],
    }


# ---- nested txns ---------------------------------------------------------------------


def test_nested_compares_see_the_state_before_the_txn() -> None:
    """etcd's compareToPath: every compare, nested or not, is decided before any write."""
    s = _abc()
    inner = r_txn([cmp("a", "VALUE", "EQUAL", "1")], [r_put("seen", "old")], [r_put("seen", "new")])
    result = s(txn(success=[r_put("a", "2"), inner]))
    assert result["responses"][1]["response_txn"]["succeeded"] is True
    assert s.values("seen") == {"seen": "old"}
    assert s.kv.range("seen")["kvs"][0]["mod_revision"] == 4 == s.kv.revision


def test_nested_txn_in_the_failure_branch_three_levels_deep() -> None:
    s = _abc()
    deepest = r_txn([cmp("zz", "VERSION", "EQUAL", 0)], [r_put("deep", "1")])
    middle = r_txn([cmp("a", "VALUE", "EQUAL", "nope")], [r_put("no", "1")], [deepest])
    result = s(txn([cmp("b", "VERSION", "EQUAL", 9)], [r_put("no2", "1")], [middle]))
    assert result["succeeded"] is False
    middle_answer = result["responses"][0]["response_txn"]
    assert middle_answer["succeeded"] is False
    assert middle_answer["responses"][0]["response_txn"]["succeeded"] is True
    assert s.values() == {"a": "1", "b": "3", "deep": "1"}


# ---- atomic failure ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ops", "code"),
    [
        ([r_put("x", "1"), r_put("y", "1", lease=99)], "lease_not_found"),
        ([r_put("x", "1"), r_put("zz", "", ignore_value=True)], "key_not_found"),
        ([r_put("x", "1"), r_put("zz", "v", ignore_lease=True)], "key_not_found"),
        ([r_put("x", "1"), r_range("a", revision=4)], "future_revision"),
        ([r_put("x", "1"), r_range("a", revision=1)], "compacted"),
        ([r_put("x", "1"), r_txn(success=[r_put("y", "1", lease=99)])], "lease_not_found"),
        # a put error wins over a range error, wherever they stand (etcd checks puts first)
        ([r_range("a", revision=1), r_put("y", "1", lease=99)], "lease_not_found"),
    ],
)
def test_one_failing_operation_fails_the_whole_txn(ops: list[dict[str, Any]], code: str) -> None:
    s = _abc()
    s(compact(2))
    before = s.copy()
    result = s(txn(success=ops))
    assert result["error"] == code and result["message"].startswith("etcdserver: ")
    before.kv.mark_applied(s.kv.applied_index)
    assert s.kv == before.kv


def test_errors_in_the_branch_not_taken_do_not_matter() -> None:
    s = _abc()
    holds = [cmp("a", "VALUE", "EQUAL", "1")]
    result = s(txn(holds, [r_put("x", "1")], [r_put("y", "1", lease=9)]))
    assert result["succeeded"] and s.values("x") == {"x": "1"}


def test_a_leased_put_in_a_txn() -> None:
    s = _abc()
    s(grant(5, 100))
    s(txn(success=[r_put("x", "1", lease=5)]))
    assert s.kv.range("x")["kvs"][0]["lease"] == 5
    assert s.kv.lease_time_to_live(5, 0, keys=True)["keys"] == ["x"]


# ---- etcd's limits -------------------------------------------------------------------


def _ops(n: int) -> list[dict[str, Any]]:
    return [r_put(f"k{i:03d}", "v") for i in range(n)]


def test_at_most_128_operations_per_branch() -> None:
    s = Store()
    assert s(txn(success=_ops(128)))["revision"] == 1
    assert len(s.kv) == 128
    for body in (
        txn(success=_ops(129)),
        txn(failure=_ops(129)),
        txn([cmp(f"k{i}", "VERSION", "EQUAL", 0) for i in range(129)]),
    ):
        assert s(body) == {
            "error": "too_many_ops",
            "message": "etcdserver: too many operations in txn request",
        }
    # a nested txn gets what its parent leaves: 100 used above, so at most 28 below
    inner = [r_put(f"n{i}", "v") for i in range(28)]
    assert "error" not in s(txn(success=[*_ops(99), r_txn(success=inner)]))
    inner = [r_put(f"n{i}", "v") for i in range(29)]
    assert s(txn(success=[*_ops(99), r_txn(success=inner)]))["error"] == "too_many_ops"


@pytest.mark.parametrize(
    ("success", "duplicate"),
    [
        ([r_put("a", "1"), r_put("a", "2")], True),
        ([r_put("a", "1"), r_delete("a")], True),
        ([r_delete("a", "c"), r_put("b", "1")], True),  # etcd: duplicate key
        ([r_delete("a"), r_delete("a")], False),  # etcd: accepted
        ([r_delete("a", "c"), r_delete("b")], False),
        ([r_put("a", "1"), r_put("b", "1")], False),
        ([r_put("c", "1"), r_delete("a", "c")], False),  # range_end is exclusive
        # etcd 3.4 compares a range_end of "\0" as bytes, so it covers nothing here
        ([r_delete("a", "\x00"), r_put("b", "x")], False),  # etcd: accepted
        ([r_put("a", "1"), r_txn(success=[r_put("a", "2")])], True),
        ([r_txn(success=[r_put("a", "1")], failure=[r_put("a", "2")])], False),
        ([r_txn(success=[r_put("a", "1")]), r_txn(failure=[r_put("a", "2")])], True),
        ([r_delete("a"), r_txn(success=[r_put("a", "2")])], True),
        ([r_txn(success=[r_delete("a")]), r_put("a", "1")], True),
        ([r_txn(success=[r_put("a", "1")], failure=[r_delete("a")])], False),
        # etcd checks a put only against the deletes met before it, so order matters:
        ([r_txn(success=[r_put("a", "1")]), r_txn(success=[r_delete("a")])], False),
        ([r_txn(success=[r_delete("a")]), r_txn(success=[r_put("a", "1")])], True),
        ([r_txn(success=[r_txn(success=[r_put("a", "1")])], failure=[r_put("a", "2")])], False),
    ],
)
def test_a_key_may_not_be_written_twice(success: list[dict[str, Any]], duplicate: bool) -> None:
    """Each case is what a real etcd 3.4 answered."""
    s = _abc()
    result = s(txn(success=success))
    if duplicate:
        assert result == {
            "error": "duplicate_key",
            "message": "etcdserver: duplicate key given in txn request",
        }
        assert s.kv.revision == 3
    else:
        assert "error" not in result


@pytest.mark.parametrize(
    "body",
    [
        txn(success=[{}]),
        txn(success=[{"request_put": {"key": "a", "value": "1"}, "request_range": {"key": "a"}}]),
        txn(success=[{"request_put": None}]),
        txn(success=[{"request_noop": {}}]),
        txn(success=[r_put("", "1")]),
        txn(success=[r_range("")]),
        txn(success=[r_range("a", revision="3")]),
        txn(success=[r_range("a", limit=1.5)]),
        txn(success=[r_range("a", sort_order="UP")]),
        txn(success=[r_delete("a", prev_kv=1)]),
        txn(success=[r_put("a", "1", lease=True)]),
        txn(success="r_put"),
        txn(success=[["request_put", {"key": "a"}]]),
        txn([cmp("", "VERSION", "EQUAL", 0)]),
        txn([cmp("a", "VERSION", "EQUAL", "0")]),
        txn([cmp("a", "VALUE", "EQUAL", 1)]),
        txn([cmp("a", "VERSION", "EQUAL", 1 << 63)]),
        txn([{"key": "a", "target": "SIZE"}]),
        txn([{"key": "a", "result": "GREATER_EQUAL"}]),
        txn(["a == 1"]),
        {"op": "txn", "compare": {"key": "a"}},
        txn(success=[r_txn(success=[r_put("a", "\ud800")])]),
    ],
)
def test_malformed_txns_are_refused_and_change_nothing(body: dict[str, Any]) -> None:
    s = _abc()
    before = s.copy()
    result = s(body)
    assert result["error"] == "invalid_command" and result["message"], result
    json.dumps(result)
    before.kv.mark_applied(s.kv.applied_index)
    assert s.kv == before.kv


def test_deep_nesting_is_bounded_by_the_operation_budget() -> None:
    body: dict[str, Any] = r_txn(success=[r_put("x", "1")])
    for _ in range(126):
        body = r_txn(success=[body])
    s = Store()
    assert s(txn(success=[body]))["revision"] == 1  # 128 levels, one op each: allowed
    assert s(txn(success=[r_txn(success=[body])]))["error"] == "too_many_ops"
