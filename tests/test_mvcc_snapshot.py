"""Snapshot lines, format 4: history, compact revision and leases round-trip, and the
reader refuses anything a real store could not have written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mvcc_helpers import (
    Store,
    compact,
    delete_range,
    expire,
    grant,
    put,
    r_delete,
    r_put,
    txn,
)

from kvcluster.kv import KVStore


def _busy() -> Store:
    s = Store(KVStore(max_sessions=4, max_leases=10))
    s(grant(7, 10, now=1_000))
    s(grant(-3, 60, now=1_000))
    s(put("a", "1"))  # 1
    s(put("b", "2", lease=7))  # 2
    s(put("c", "3", lease=-3))  # 3
    s(txn(success=[r_put("d", "4"), r_delete("a")]))  # 4
    s(put("a", "again", lease=7))  # 5
    s(compact(2))
    s(delete_range("x"))  # nothing
    s(put("é", "日本"))  # 6
    return s


def test_round_trip_with_history_leases_and_compaction() -> None:
    s = _busy()
    for rows in (1, 2, 4096):
        lines = s.lines(rows_per_line=rows)
        restored = KVStore.from_lines(lines)
        assert restored == s.kv
        assert list(restored.freeze().lines(rows_per_line=rows)) == lines
        assert restored.compacted == 2 and restored.history_size == s.kv.history_size
        assert restored.lease_ids() == [-3, 7]
        assert restored.lease_time_to_live(7, 1_000, keys=True)["keys"] == ["a", "b"]
        for rev in range(2, 7):
            assert restored.range("\x00", "\x00", revision=rev) == s.kv.range(
                "\x00", "\x00", revision=rev
            )
        assert list(restored.changes_since(2, "\x00", "\x00")) == list(
            s.kv.changes_since(2, "\x00", "\x00")
        )


def test_a_restored_store_continues_identically() -> None:
    s = _busy()
    t = s.copy(rows_per_line=3)
    more = [
        expire(11_000),  # lease 7 goes: a and b deleted at one revision
        put("c", "x", prev_kv=True),
        compact(5),
        txn(success=[r_put("f", "1", prev_kv=True)]),
        put("g", "1", lease=7),  # gone
        grant(0, 5, now=12_000),  # the id is picked from the index: the same on both
    ]
    for cmd in more:
        assert s(cmd) == t(cmd)
    assert s.kv == t.kv and s.lines() == t.lines()


def test_freeze_is_not_changed_by_later_applies_or_compaction() -> None:
    s = _busy()
    frozen = s.kv.freeze()
    before = list(frozen.lines(rows_per_line=2))
    s(put("a", "changed", lease=-3))
    s(compact(6))
    s(expire(1 << 40))
    s(delete_range("\x00", "\x00"))
    assert list(frozen.lines(rows_per_line=2)) == before
    assert KVStore.from_lines(before) == _busy().kv


def test_event_lines_stay_bounded_with_large_values() -> None:
    s = Store()
    big = "v" * 100_000
    for i in range(20):
        s(put(f"k{i % 3}", big))  # each event holds the value and the previous one
    lines = s.lines(max_line_bytes=250_000)
    assert max(len(line) for line in lines) < 250_000 + 200_200
    assert KVStore.from_lines(lines) == s.kv


def _good() -> list[bytes]:
    s = Store(KVStore(max_sessions=2, max_leases=3))
    s(grant(5, 10, now=100))
    s(put("a", "1"))  # 1
    s(put("b", "2", lease=5))  # 2
    s(put("a", "3"))  # 3
    s({"op": "delete", "key": "b"})  # 4
    s(compact(2))
    lines = s.lines()
    assert lines == [HEADER, LEASES, KEYS, EVENTS]
    return lines


HEADER = (
    b'{"format":4,"revision":4,"applied_index":6,"max_sessions":2,"max_session_bytes":67108864,'
    b'"clock":0,"sessions":0,"keys":1,"compacted":2,"events":3,"leases":1,"max_leases":3}'
)
LEASES = b"[5,10,10100]"
KEYS = b'["a","3",1,3,2,0]'
EVENTS = b'["b","2",2,2,1,5,null,0,0,0,0,"a","3",1,3,2,0,"1",1,1,1,0,"b",null,0,4,0,0,"2",2,2,1,5]'


def _header(**changes: Any) -> bytes:
    d = json.loads(HEADER)
    d.update(changes)
    return json.dumps(d).encode()


def _events(*rows: list[Any]) -> bytes:
    return json.dumps([x for row in rows for x in row]).encode()


E1 = ["b", "2", 2, 2, 1, 5, None, 0, 0, 0, 0]
E2 = ["a", "3", 1, 3, 2, 0, "1", 1, 1, 1, 0]
E3 = ["b", None, 0, 4, 0, 0, "2", 2, 2, 1, 5]


def _with(row: list[Any], **changes: Any) -> list[Any]:
    names = ["key", "value", "create", "mod", "version", "lease", "pv", "pc", "pm", "pver", "pl"]
    out = list(row)
    for name, value in changes.items():
        out[names.index(name)] = value
    return out


def test_good_lines_decode() -> None:
    store = KVStore.from_lines(_good())
    assert store.compacted == 2 and store.history_size == 3
    assert store.range("b", revision=2)["kvs"][0]["lease"] == 5
    assert store.next_lease_deadline() == 10_100


@pytest.mark.parametrize(
    "lines",
    [
        [_header(format=5), LEASES, KEYS, EVENTS],
        [_header(compacted=5), LEASES, KEYS, EVENTS],  # beyond the revision
        [_header(compacted=-1), LEASES, KEYS, EVENTS],
        [_header(events=2), LEASES, KEYS, EVENTS],
        [_header(events=4), LEASES, KEYS, EVENTS],
        [_header(leases=2), LEASES, KEYS, EVENTS],
        [_header(max_leases=0), LEASES, KEYS, EVENTS],
        [_header(leases=4, max_leases=3), b"[1,1,1,2,1,1,3,1,1,4,1,1]", KEYS, EVENTS],
        [_header(extra=1), LEASES, KEYS, EVENTS],
        [HEADER, LEASES, KEYS],  # truncated
        [HEADER, LEASES, KEYS, EVENTS, EVENTS],
        [HEADER, b"[0,10,100]", KEYS, EVENTS],  # lease id 0
        [HEADER, b"[5,0,100]", KEYS, EVENTS],  # ttl 0
        [HEADER, b"[5,9000000001,100]", KEYS, EVENTS],
        [HEADER, b"[5,10,-1]", KEYS, EVENTS],
        [HEADER, b'[5,10,"1"]', KEYS, EVENTS],
        [HEADER, b"[5,10]", KEYS, EVENTS],
        [_header(leases=2), b"[5,10,1,5,10,1]", KEYS, EVENTS],  # repeated
        [HEADER, LEASES, b'["a","3",1,3,2]', EVENTS],  # rows of five are format 3's
        [HEADER, LEASES, b'["a","3",1,3,2,"7"]', EVENTS],
        [HEADER, LEASES, b'["a","3",1,3,2,6]', EVENTS],  # lease 6 does not exist
        # the last event (b deleted) disagrees with the rows
        [_header(keys=2), LEASES, b'["a","3",1,3,2,0,"b","2",2,2,1,5]', EVENTS],
        [HEADER, LEASES, KEYS, _events(E1, E2)],  # fewer than announced
        [HEADER, LEASES, KEYS, _events(E1, E2, E3)[:-1]],  # not JSON
        [HEADER, LEASES, KEYS, _events(E1, E2, E3[:10])],  # not rows of eleven
        [HEADER, LEASES, KEYS, _events(E2, E1, E3)],  # out of order
        [HEADER, LEASES, KEYS, _events(_with(E1, mod=1, create=1), E2, E3)],  # before compacted
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, mod=4), E3)],
        [_header(revision=5, applied_index=6), LEASES, KEYS, EVENTS],  # ends before revision
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, version=3), E3)],  # version skips
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, create=2), E3)],  # create changed
        [HEADER, LEASES, KEYS, _events(_with(E1, version=2), E2, E3)],  # a create at version 2
        [HEADER, LEASES, KEYS, _events(_with(E1, create=1), E2, E3)],
        [HEADER, LEASES, KEYS, _events(_with(E1, pc=1), E2, E3)],  # no prev, with fields
        [HEADER, LEASES, KEYS, _events(E1, E2, _with(E3, pv=None, pc=0, pm=0, pver=0, pl=0))],
        [HEADER, LEASES, KEYS, _events(E1, E2, _with(E3, create=2))],  # delete with fields
        [HEADER, LEASES, KEYS, _events(E1, E2, _with(E3, pm=5))],  # previous after it
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, pc=2, create=2), E3)],  # pc > pm
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, value=3), E3)],
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, key=""), E3)],
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, lease="0"), E3)],
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, mod=True), E3)],
        [HEADER, LEASES, KEYS, _events(E1, _with(E2, pv=1), E3)],
    ],
)
def test_from_lines_rejects_malformed_format_4(lines: list[bytes]) -> None:
    assert KVStore.from_lines(_good()) is not None
    with pytest.raises(ValueError):
        KVStore.from_lines(lines)
