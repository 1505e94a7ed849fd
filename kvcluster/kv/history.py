"""The store's history: one event per change, in revision order, since the last compaction.

Shapes (flat tuples of str/int/None only):

    Row   = (key, value, create_revision, mod_revision, version, lease)
    Event = (key, value, create_revision, mod_revision, version, lease,
             prev value, prev create_revision, prev mod_revision, prev version, prev lease)

An event is the key after the change (a delete has value None and zeros but
its mod_revision, etcd's tombstone) followed by the key before it (prev value
None and zeros: the key did not exist). It shares the key, value and integer
objects with the rows, so a put's event costs one 11-slot tuple (128 bytes)
and no copy of the value.

Flat, not (row, previous row): a tuple of tuples stays tracked by the cyclic
GC until a collection finds its members untracked, and a young collection
reorders objects so that it often does not (an overwritten row is reachable
only from young events). Such events were promoted until full collections ran
(6 full collections per 300k puts on 10 keys, 10 with pauses of up to 17 ms
while decoding 400k events), where flat tuples are untracked by their first
young collection and a snapshot decodes them straight from the line with no
allocation beyond the tuple itself.

The events list is ordered by revision; a txn's changes share one revision and
keep the order in which the txn made them (etcd's sub-revisions). It is only
ever appended to: compaction replaces it with a copy of its tail instead of
deleting in place. A position, once written, never changes in a list object,
so a snapshot capture or a watch iterator can hold the list and its length at
the time, with no copy, however many applies follow.

Reading at a past revision R undoes, key by key, the events after R: the state
of a key at R is the previous KV of its first event after R, or its current
row if nothing changed it since. Compaction at C drops the events before C and
keeps those at C, so every revision >= C can still be read and watched from
(etcd answers a watch from the compact revision too).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from operator import itemgetter
from typing import Any, Optional

Row = tuple[str, str, int, int, int, int]  # key, value, create, mod, version, lease
Event = tuple[
    str, Optional[str], int, int, int, int, Optional[str], int, int, int, int  # noqa: UP045
]
NO_PREV = (None, 0, 0, 0, 0)  # the previous-KV half of an event that created its key

ALL = "\x00"  # etcd's range_end for "every key from `key` on"

_event_mod = itemgetter(3)


def first_event_at(events: list[Event], revision: int) -> int:
    """The position of the first event with a revision >= `revision`."""
    return bisect_left(events, revision, key=_event_mod)


def previous(event: Event) -> Row | None:
    """The key's row before the event, None if it did not exist."""
    if event[6] is None:
        return None
    return (event[0], event[6], event[7], event[8], event[9], event[10])


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


def rows_at(
    rows: list[Row], events: list[Event], start: int, key: str, range_end: str | None
) -> list[Row]:
    """The rows in (key, range_end) as they were before events[start:], sorted by key.

    `rows` are the current rows in the range. Cost: one pass over the events
    after `start` plus the rows in the range.
    """
    if range_end is None:  # one key
        first = next(select_events(events, start, key, None), None)
        if first is None:
            return rows
        before = previous(first)
        return [before] if before is not None else []
    older: dict[str, Event] = {}
    for e in select_events(events, start, key, range_end):
        if e[0] not in older:
            older[e[0]] = e
    if not older:
        return rows
    out = [r for r in rows if r[0] not in older]
    out += [p for p in map(previous, older.values()) if p is not None]
    out.sort()  # keys are unique, so tuples compare by key alone
    return out


def kv_dict(row: Row | Event, keys_only: bool = False) -> dict[str, Any]:
    """A row (or the new half of an event) as the contract's KV dict."""
    value = row[1]
    return {
        "key": row[0],
        "value": "" if value is None or keys_only else value,
        "create_revision": row[2],
        "mod_revision": row[3],
        "version": row[4],
        "lease": row[5],
    }


def event_dict(event: Event) -> dict[str, Any]:
    """An event as etcd's watch shows it: type PUT/DELETE, kv, prev_kv (None if none)."""
    before = previous(event)
    return {
        "type": "DELETE" if event[1] is None else "PUT",
        "kv": kv_dict(event),
        "prev_kv": None if before is None else kv_dict(before),
    }


def select_events(
    events: list[Event], start: int, key: str, range_end: str | None, end: int | None = None
) -> Iterator[Event]:
    """The events at positions [start, end) whose key is in (key, range_end).

    Works on a copy of that slice taken now (a memcpy: 0.4 ms for 100k events),
    so later applies and compactions change nothing it yields. Plain
    comparisons in a generator: 30 ns an event, where C-level chains of
    map(key.__eq__, ...) and compress() took twice as long on Python 3.11.
    """
    tail = events[start:end]
    if range_end is None:
        return (e for e in tail if e[0] == key)
    if range_end == ALL:
        return iter(tail) if key == ALL else (e for e in tail if e[0] >= key)
    return (e for e in tail if key <= e[0] < range_end)
