"""The store's history: one event per change, in revision order, since the last compaction.

Shapes (all tuples of str/int/None, so the cyclic GC untracks them and a
million of them cost nothing in its full collections):

    Row   = (key, value, create_revision, mod_revision, version, lease)
    Tomb  = (key, None, 0, mod_revision, 0, 0)     a delete, as etcd's watch shows it
    Event = (Row | Tomb, previous Row | None)      the key after and before the change

An event references the row tuples the store already holds (the new row is
the key's current row until the next change; the previous row is the one it
replaced), so a put adds one 2-tuple to memory and no copy of the value. The
events list is ordered by revision; a txn's changes share one revision and keep
the order in which the txn made them (etcd's sub-revisions).

Reading at a past revision R undoes, key by key, the events after R: the state
of a key at R is the previous row of its first event after R, or its current
row if nothing changed it since. Compaction at C drops the events before C and
keeps those at C, so every revision >= C can still be read and watched from
(etcd answers a watch from the compact revision too).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any, Optional

Row = tuple[str, str, int, int, int, int]  # key, value, create, mod, version, lease
KVTuple = tuple[str, Optional[str], int, int, int, int]  # a Row or a Tomb (value None)  # noqa: UP045
Event = tuple[KVTuple, Optional[Row]]  # noqa: UP045

ALL = "\x00"  # etcd's range_end for "every key from `key` on"


def _event_mod(event: Event) -> int:
    return event[0][3]


def first_event_at(events: list[Event], revision: int) -> int:
    """The position of the first event with a revision >= `revision`."""
    return bisect_left(events, revision, key=_event_mod)


def span(keys: list[str], key: str, range_end: str | None) -> tuple[int, int]:
    """The positions [i, j) of the keys etcd's (key, range_end) selects in sorted `keys`."""
    i = bisect_left(keys, key)
    if range_end is None:
        return i, i + 1 if i < len(keys) and keys[i] == key else i
    if range_end == ALL:
        return i, len(keys)
    if range_end <= key:
        return i, i
    return i, bisect_left(keys, range_end, lo=i)


def selector(key: str, range_end: str | None) -> Callable[[str], bool]:
    """A test for "this key is in etcd's (key, range_end)"."""
    if range_end is None:
        return key.__eq__
    if range_end == ALL:
        return key.__le__
    return lambda k: key <= k < range_end


def rows_at(
    rows: list[Row], events: list[Event], start: int, key: str, range_end: str | None
) -> list[Row]:
    """The rows in (key, range_end) as they were before events[start:], sorted by key.

    `rows` are the current rows in the range. Cost: one pass over the events
    after `start` plus the rows in the range.
    """
    if range_end is None:  # one key: C-level filtering over the events after start
        tail = [e for e in events[start:] if e[0][0] == key]
        if not tail:
            return rows
        before = tail[0][1]
        return [before] if before is not None else []
    inside = selector(key, range_end)
    older: dict[str, Row | None] = {}
    for new, prev in events[start:]:
        k = new[0]
        if k not in older and inside(k):
            older[k] = prev
    if not older:
        return rows
    out = [r for r in rows if r[0] not in older]
    out += [p for p in older.values() if p is not None]
    out.sort()  # keys are unique, so tuples compare by key alone
    return out


def kv_dict(row: KVTuple, keys_only: bool = False) -> dict[str, Any]:
    """A row (or a tombstone) as the contract's KV dict."""
    key, value, create, mod, version, lease = row
    return {
        "key": key,
        "value": "" if value is None or keys_only else value,
        "create_revision": create,
        "mod_revision": mod,
        "version": version,
        "lease": lease,
    }


def event_dict(event: Event) -> dict[str, Any]:
    """An event as etcd's watch shows it: type PUT/DELETE, kv, prev_kv (None if none)."""
    new, prev = event
    return {
        "type": "DELETE" if new[1] is None else "PUT",
        "kv": kv_dict(new),
        "prev_kv": None if prev is None else kv_dict(prev),
    }


def select_events(
    events: list[Event], start: int, key: str, range_end: str | None
) -> Iterator[Event]:
    """The events from position `start` on whose key is in (key, range_end).

    Works on a copy of the tail taken now, so applies (and compactions) that
    happen while the iterator is alive change nothing it yields.
    """
    tail = events[start:]
    if range_end == ALL and key == ALL:
        return iter(tail)
    inside = selector(key, range_end)
    return (e for e in tail if inside(e[0][0]))
