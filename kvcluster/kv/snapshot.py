"""The kv state as a stream of JSON lines, so a snapshot never has to be one document.

A 1,000,000-key store is about 100 MB of JSON. Built and encoded as one object
it holds the event loop for seconds; as lines, a worker thread encodes (or
decodes) one bounded line at a time and the GIL changes hands between lines.

Lines (orjson, compact, no newline inside any of them):

    {"format":4,"revision":R,"applied_index":A,"max_sessions":M,
     "max_session_bytes":B,"clock":C,"sessions":S,"keys":K,
     "compacted":P,"events":E,"leases":L,"max_leases":N}
    [[client_id, seq, result or null, last_active], ...]   session lines, S rows in all
    [id, ttl, deadline, id, ...]                           lease lines, L rows of 3
    [key, value, create_revision, mod_revision, version, lease, key, ...]
                                                        key lines, K rows of 6 in all
    [key, value or null, create, mod, version, lease,
     prev value or null, prev create, prev mod, prev version, prev lease, key, ...]
                                                        event lines, E rows of 11

Sessions come in order of last activity (that order decides future expiry and
eviction), leases in id order, keys in key order, events (the history since
the compact revision P, kv/history.py) in revision order: a null value is a
delete, a null prev value a key that did not exist before. Format 3 (rows of
five, no lease, no history) and format 2 (no clock, no activity times, no byte
bound: its sessions count as active at time 0) are still read; their history
starts at their revision. Sessions get lines of their own rather than riding in
the header because a stored result can carry a 1 MiB `prev_value`: a header
holding 10,000 of them would be the unbounded line this format exists to
avoid. A line holds at most `rows_per_line` rows and, unless one row alone is
larger, about `max_line_bytes` of text.

Rows are flat, six values after six, not one array per row: decoding a
million small arrays makes a million short-lived lists that the cyclic GC
promotes and then rescans in full collections (20 of them, up to 57 ms each
with the GIL held, measured at 1M keys), where flat lines cause none.

The reader trusts nothing: bad JSON, wrong shapes, integers outside 64 bits,
revisions that could not have happened, keys out of order or repeated, a
history with a gap or out of order, events that contradict themselves, rows
on leases that do not exist, and counts that disagree with the header all
raise ValueError. (It does not match every event against the rows: that
would need a dict of every key, whose resizes would hold the GIL for tens of
ms in the worker thread; the last event is checked against its row.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson

from .history import Event, Row
from .leases import MAX_LEASE_TTL, LeaseTable
from .sessions import MAX_SESSION_BYTES, SessionTable

if TYPE_CHECKING:
    from .store import KVStore

LINES_FORMAT = 4  # format 1, the whole state as one JSON document, is no longer read
MAX_INT = (1 << 63) - 1  # every integer fits a signed 64-bit field, as on the wire
MIN_INT = -(1 << 63)

_HEADER_KEYS_V2 = frozenset(
    {"format", "revision", "applied_index", "max_sessions", "sessions", "keys"}
)
_HEADER_KEYS_V3 = _HEADER_KEYS_V2 | {"max_session_bytes", "clock"}
_HEADER_KEYS = _HEADER_KEYS_V3 | {"compacted", "events", "leases", "max_leases"}
_KEY = itemgetter(0)
_VALUE = itemgetter(1)
_ROW_OVERHEAD = 56  # brackets, quotes, commas and four integers, roughly
_PREV_VALUE = itemgetter(6)


class FrozenKV:
    """A consistent capture of a KVStore, independent of later applies.

    Taking it costs shallow copies of the sorted rows and of the history (row
    tuples, events and stored session results are never mutated, so sharing
    them is safe) and of the lease deadlines; encoding it is left to
    `lines()`, which is meant to run in a worker thread.
    """

    __slots__ = (
        "_events",
        "_leases",
        "_n_events",
        "_rows",
        "_sessions",
        "applied_index",
        "compacted",
        "max_leases",
        "revision",
    )

    def __init__(
        self,
        *,
        revision: int,
        applied_index: int,
        rows: list[Row],
        sessions: SessionTable,
        compacted: int = 0,
        events: list[Event] | None = None,
        n_events: int = 0,
        leases: dict[int, tuple[int, int]] | None = None,
        max_leases: int = 1,
    ) -> None:
        self.revision = revision
        self.applied_index = applied_index
        self.compacted = compacted
        self.max_leases = max_leases
        self._rows = rows
        self._sessions = sessions
        # The store's append-only history list and its length now (kv/history.py).
        self._events = events if events is not None else []
        self._n_events = n_events
        self._leases = leases if leases is not None else {}

    def _header(self) -> dict[str, Any]:
        sessions = self._sessions
        return {
            "format": LINES_FORMAT,
            "revision": self.revision,
            "applied_index": self.applied_index,
            "max_sessions": sessions.max_sessions,
            "max_session_bytes": sessions.max_bytes,
            "clock": sessions.clock,
            "sessions": len(sessions),
            "keys": len(self._rows),
            "compacted": self.compacted,
            "events": self._n_events,
            "leases": len(self._leases),
            "max_leases": self.max_leases,
        }

    def _session_rows(self) -> list[list[Any]]:
        return [[cid, seq, res, active] for cid, (seq, res, active) in self._sessions.table.items()]

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def meta(self) -> dict[str, Any]:
        """Everything but the keys and the history: header fields plus the sessions
        and leases as rows."""
        leases = [[i, *self._leases[i]] for i in sorted(self._leases)]
        return {**self._header(), "sessions": self._session_rows(), "leases": leases}

    def lines(self, rows_per_line: int = 4096, max_line_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The whole state as newline-free JSON lines (see the module docstring)."""
        if rows_per_line < 1 or max_line_bytes < 1:
            raise ValueError("rows_per_line and max_line_bytes must be positive")
        yield orjson.dumps(self._header())
        sessions = self._session_rows()
        yield from _bounded(sessions, rows_per_line, max_line_bytes, _session_size, list)
        leases = [(i, *self._leases[i]) for i in sorted(self._leases)]
        for start in range(0, len(leases), rows_per_line):
            yield orjson.dumps(_flat(leases[start : start + rows_per_line]))
        rows = self._rows
        for start in range(0, len(rows), rows_per_line):
            part = rows[start : start + rows_per_line]
            # C-level maps and chain: about 0.2 us per row, against 0.5 in a Python loop.
            text = sum(map(len, map(_VALUE, part))) + sum(map(len, map(_KEY, part)))
            if text + _ROW_OVERHEAD * len(part) <= max_line_bytes:
                yield orjson.dumps(list(chain.from_iterable(part)))
            else:  # large values: split by size so no line holds 4096 of them
                yield from _bounded(part, rows_per_line, max_line_bytes, _kv_size, _flat)
        events, n = self._events, self._n_events
        for start in range(0, n, rows_per_line):
            chunk = events[start : min(start + rows_per_line, n)]
            text = sum(map(len, map(_KEY, chunk)))
            text += sum(map(len, filter(None, map(_VALUE, chunk))))
            text += sum(map(len, filter(None, map(_PREV_VALUE, chunk))))
            if text + 2 * _ROW_OVERHEAD * len(chunk) <= max_line_bytes:
                yield orjson.dumps(list(chain.from_iterable(chunk)))
            else:
                yield from _bounded(chunk, rows_per_line, max_line_bytes, _event_size, _flat)


def _flat(rows: list[Any]) -> list[Any]:
    return list(chain.from_iterable(rows))


def _kv_size(row: Any) -> int:
    return len(row[0]) + len(row[1]) + _ROW_OVERHEAD


def _event_size(event: Any) -> int:
    return len(event[0]) + len(event[1] or "") + len(event[6] or "") + 2 * _ROW_OVERHEAD


def _session_size(row: Any) -> int:
    res = row[2] or {}
    return len(row[0]) + sum(len(str(v)) + len(k) + 8 for k, v in res.items()) + _ROW_OVERHEAD


def _bounded(
    rows: list[Any],
    per_line: int,
    max_bytes: int,
    size: Callable[[Any], int],
    shape: Callable[[list[Any]], list[Any]],
) -> Iterator[bytes]:
    """Encode `rows` as lines of at most `per_line` rows and about `max_bytes`."""
    line: list[Any] = []
    used = 0
    for row in rows:
        n = size(row)
        if line and (len(line) >= per_line or used + n > max_bytes):
            yield orjson.dumps(shape(line))
            line, used = [], 0
        line.append(row)
        used += n
    if line:
        yield orjson.dumps(shape(line))


# ---------------------------------------------------------------- decoding


def _int(x: Any, what: str, lo: int = 0) -> int:
    # bool is an int subclass; true as a revision is garbage, not 1.
    if type(x) is not int or not lo <= x <= MAX_INT:
        raise ValueError(f"{what} must be an integer from {lo} to 2**63-1, got {str(x)[:40]}")
    return x


def _rows(line: bytes, what: str) -> list[Any]:
    try:
        rows = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{what} line is not JSON: {e}") from None
    if type(rows) is not list or not rows:
        raise ValueError(f"{what} line must be a non-empty JSON array")
    return rows


def _groups(it: Iterator[bytes], count: int, width: int, what: str) -> Iterator[tuple[Any, ...]]:
    """`count` flat rows of `width` values from the next lines of `it`."""
    seen = 0
    while seen < count:
        line = next(it, None)
        if line is None:
            raise ValueError(f"{seen} {what}s of {count}: truncated")
        flat = _rows(line, what)
        if len(flat) % width:
            raise ValueError(f"a {what} line must hold rows of {width} values")
        seen += len(flat) // width
        if seen > count:
            raise ValueError(f"more {what}s than the {count} announced")
        values = iter(flat)
        yield from zip(*([values] * width), strict=True)


def decode_lines(lines: Iterable[bytes], store: KVStore) -> None:
    """Fill an empty `store` from `lines`; ValueError on anything malformed."""
    it = iter(lines)
    first = next(it, None)
    if first is None:
        raise ValueError("no header line")
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"header line is not JSON: {e}") from None
    if type(head) is not dict:
        raise ValueError("the header line must be a JSON object")
    version = head.get("format")
    if version not in (2, 3, LINES_FORMAT) or type(version) is not int:
        raise ValueError(f"unsupported kv line format {str(version)[:40]}")
    expected = {2: _HEADER_KEYS_V2, 3: _HEADER_KEYS_V3, LINES_FORMAT: _HEADER_KEYS}[version]
    if head.keys() != expected:
        raise ValueError(f"header must be an object with exactly {sorted(expected)}")
    v2 = version == 2
    revision = _int(head["revision"], "revision")
    applied = _int(head["applied_index"], "applied_index")
    max_sessions = _int(head["max_sessions"], "max_sessions")
    max_bytes = MAX_SESSION_BYTES if v2 else _int(head["max_session_bytes"], "max_session_bytes")
    clock = 0 if v2 else _int(head["clock"], "clock")
    n_sessions = _int(head["sessions"], "sessions")
    n_keys = _int(head["keys"], "keys")
    if revision > applied:
        raise ValueError(f"revision {revision} > applied_index {applied}: impossible")
    if max_sessions < 1 or max_bytes < 1 or n_sessions > max_sessions:
        raise ValueError(f"{n_sessions} sessions do not fit max_sessions {max_sessions}")
    if version == LINES_FORMAT:
        compacted = _int(head["compacted"], "compacted")
        n_events = _int(head["events"], "events")
        n_leases = _int(head["leases"], "leases")
        max_leases = _int(head["max_leases"], "max_leases")
        if compacted > revision:
            raise ValueError(f"compacted {compacted} > revision {revision}: impossible")
        if max_leases < 1 or n_leases > max_leases:
            raise ValueError(f"{n_leases} leases do not fit max_leases {max_leases}")
    else:  # no history before this snapshot: reads start at its revision
        compacted, n_events, n_leases, max_leases = revision, 0, 0, store.leases.max_leases
    store.revision, store.applied_index, store.compacted = revision, applied, compacted
    _decode_sessions(it, store, n_sessions, max_sessions, max_bytes, clock, v2)
    leases = store.leases = LeaseTable(max_leases)
    _decode_leases(it, leases, n_leases)
    if version == LINES_FORMAT:
        _decode_keys(it, store, n_keys, 6)
    else:
        _decode_keys(it, store, n_keys, 5)
    _decode_events(it, store, n_events)
    if next(it, None) is not None:
        raise ValueError("lines after the last event")


def _decode_sessions(
    it: Iterator[bytes],
    store: KVStore,
    n_sessions: int,
    max_sessions: int,
    max_bytes: int,
    clock: int,
    v2: bool,
) -> None:
    sessions = store.sessions = SessionTable(max_sessions, max_bytes)
    sessions.clock = clock
    table = sessions.table
    row_len = 3 if v2 else 4
    last_active = 0
    while len(table) < n_sessions:
        line = next(it, None)
        if line is None:
            raise ValueError(f"{len(table)} sessions of {n_sessions}: truncated")
        for row in _rows(line, "session"):
            if type(row) is not list or len(row) != row_len:
                raise ValueError(f"a session row must hold {row_len} values")
            cid, seq, result = row[:3]
            active = 0 if v2 else _int(row[3], "last_active")
            if type(cid) is not str or not cid or cid in table:
                raise ValueError(f"bad or repeated session client_id {str(cid)[:40]}")
            if result is not None and type(result) is not dict:
                raise ValueError("a session result must be an object or null")
            if not last_active <= active <= clock:
                raise ValueError(f"session {cid[:40]!r}: activity out of order or in the future")
            last_active = active
            sessions.load(cid, _int(seq, "seq"), result, active)
        if len(table) > n_sessions:
            raise ValueError(f"more sessions than the {n_sessions} announced")


def _decode_leases(it: Iterator[bytes], leases: LeaseTable, n_leases: int) -> None:
    prev = MIN_INT - 1
    for lease_id, ttl, due in _groups(it, n_leases, 3, "lease"):
        if type(lease_id) is not int or not MIN_INT <= lease_id <= MAX_INT or not lease_id:
            raise ValueError(f"lease id {str(lease_id)[:40]} is not a non-zero 64-bit integer")
        if lease_id <= prev:
            raise ValueError(f"lease {lease_id} is out of order or repeated")
        if type(ttl) is not int or not 1 <= ttl <= MAX_LEASE_TTL:
            raise ValueError(f"lease {lease_id}: ttl {str(ttl)[:40]} out of range")
        leases.set(lease_id, ttl, _int(due, "lease deadline"))
        prev = lease_id


def _decode_keys(it: Iterator[bytes], store: KVStore, n_keys: int, width: int) -> None:
    rows, keys = store._rows, store._keys
    revision = store.revision
    leases = store.leases
    prev = ""  # keys are non-empty, so the first one is > ""
    for row in _groups(it, n_keys, width, "key"):
        if width == 5:  # format 2 and 3: no lease
            row = (*row, 0)
        key, value, create, mod, version, lease = row
        if type(key) is not str or type(value) is not str:
            raise ValueError("key and value must be strings")
        if key <= prev:
            raise ValueError(f"key {key[:40]!r} is out of order, repeated or empty")
        if type(create) is not int or type(mod) is not int or type(version) is not int:
            raise ValueError(f"key {key[:40]!r}: revisions and version must be integers")
        # Each put bumps the revision once, so these bounds hold for any real store
        # (and they bound every integer by `revision`, itself <= 2**63-1).
        if not (0 < create <= mod <= revision and 0 < version <= mod - create + 1):
            raise ValueError(f"key {key[:40]!r}: impossible revisions {create, mod, version}")
        if type(lease) is not int:
            raise ValueError(f"key {key[:40]!r}: lease must be an integer")
        if lease:
            if lease not in leases:
                raise ValueError(f"key {key[:40]!r} is attached to lease {lease}, which is absent")
            leases.attach(key, lease)
        rows.append(row)
        keys.append(key)
        prev = key


_INT_COLUMNS = (2, 3, 4, 7, 8, 9)  # create, mod, version, then the previous KV's


def _check_event_columns(flat: list[Any]) -> None:
    """Types and ranges of a line's events, a column at a time at C speed, so the
    per-event loop only has the relations between fields left to check."""
    keys = flat[0::11]
    if set(map(type, keys)) != {str} or not all(keys):
        raise ValueError("an event's key must be a non-empty string")
    for column in (1, 6):
        if not set(map(type, flat[column::11])) <= {str, type(None)}:
            raise ValueError("an event's values must be strings or null")
    for column in (*_INT_COLUMNS, 5, 10):
        values = flat[column::11]
        if set(map(type, values)) != {int}:
            raise ValueError("an event's revisions, versions and leases must be integers")
        lo = MIN_INT if column in (5, 10) else 0
        if min(values) < lo or max(values) > MAX_INT:
            raise ValueError("an event's integers must fit 64 bits (revisions: not negative)")


def _decode_events(it: Iterator[bytes], store: KVStore, n_events: int) -> None:
    """The history: each event consistent in itself, in revision order without a gap
    (every revision after the compacted one made at least one change)."""
    events = store._events
    append = events.append
    compacted, revision = store.compacted, store.revision
    last = compacted
    seen = 0
    while seen < n_events:
        line = next(it, None)
        if line is None:
            raise ValueError(f"{seen} events of {n_events}: truncated")
        flat = _rows(line, "event")
        if len(flat) % 11:
            raise ValueError("an event line must hold rows of 11 values")
        seen += len(flat) // 11
        if seen > n_events:
            raise ValueError(f"more events than the {n_events} announced")
        _check_event_columns(flat)
        values = iter(flat)
        for event in zip(*([values] * 11), strict=True):
            key, value, create, mod, version, lease, pv, pc, pm, pver, pl = event
            if not last <= mod <= last + 1 or mod > revision:
                raise ValueError(f"event on {key[:40]!r} at {mod}: out of order or after a gap")
            last = mod
            if pv is None:
                if pc or pm or pver or pl:
                    raise ValueError(f"event on {key[:40]!r}: a missing previous KV with fields")
                if value is None or create != mod or version != 1:
                    raise ValueError(f"event on {key[:40]!r}: must create the key at version 1")
                append(event)
                continue
            if not (0 < pc <= pm <= mod and 0 < pver <= pm - pc + 1):
                raise ValueError(f"event on {key[:40]!r}: impossible previous KV")
            if value is None:
                if create or version or lease:
                    raise ValueError(f"event on {key[:40]!r}: a delete with fields")
            elif create != pc or version != pver + 1 or version > mod - create + 1:
                raise ValueError(f"event on {key[:40]!r}: does not follow its previous KV")
            append(event)
    if revision > compacted and (not events or last != revision):
        raise ValueError(f"the history ends at {last}, not at revision {revision}")
    if events:  # the last change is its key's last: it must be the key's current state
        new = events[-1][:6]
        current = store._find(new[0])
        if current != (None if new[1] is None else new):
            raise ValueError(f"the last event on {new[0][:40]!r} disagrees with its row")
