"""The kv state as a stream of JSON lines, so a snapshot never has to be one document.

A 1,000,000-key store is about 100 MB of JSON. Built and encoded as one object
it holds the event loop for seconds; as lines, a worker thread encodes (or
decodes) one bounded line at a time and the GIL changes hands between lines.

Lines (orjson, compact, no newline inside any of them):

    {"format":3,"revision":R,"applied_index":A,"max_sessions":M,
     "max_session_bytes":B,"clock":C,"sessions":S,"keys":K}
    [[client_id, seq, result or null, last_active], ...]   session lines, S rows in all
    [key, value, create_revision, mod_revision, version, key, value, ...]
                                                        key lines, K rows of 5 in all

Sessions come in order of last activity (that order decides future expiry and
eviction), keys in key order. Format 2 (no clock, no activity times, no byte
bound) is still read: its sessions count as active at time 0. Sessions get
lines of their own rather than riding in the header because a stored result
can carry a 1 MiB `prev_value`: a header holding 10,000 of them would be the
unbounded line this format exists to avoid. A line holds at most
`rows_per_line` rows and, unless one row alone is larger, about
`max_line_bytes` of text.

Key rows are flat, five values after five, not one array per row: decoding a
million small arrays makes a million short-lived lists that the cyclic GC
promotes and then rescans in full collections (20 of them, up to 57 ms each
with the GIL held, measured at 1M keys), where flat lines cause none.

The reader trusts nothing: bad JSON, wrong shapes, integers outside
0..2**63-1, revisions that could not have happened, keys out of order or
repeated, and counts that disagree with the header all raise ValueError.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import orjson

from .sessions import MAX_SESSION_BYTES, SessionTable

if TYPE_CHECKING:
    from .store import KVStore

Row = tuple[str, str, int, int, int]  # key, value, create_revision, mod_revision, version

LINES_FORMAT = 3  # format 1, the whole state as one JSON document, is no longer read
MAX_INT = (1 << 63) - 1  # every integer fits a signed 64-bit field, as on the wire

_HEADER_KEYS_V2 = frozenset(
    {"format", "revision", "applied_index", "max_sessions", "sessions", "keys"}
)
_HEADER_KEYS = _HEADER_KEYS_V2 | {"max_session_bytes", "clock"}
_KEY = itemgetter(0)
_VALUE = itemgetter(1)
_ROW_OVERHEAD = 48  # brackets, quotes, commas and three integers, roughly


class FrozenKV:
    """A consistent capture of a KVStore, independent of later applies.

    Taking it costs one shallow copy of the sorted rows (row tuples and stored
    session results are never mutated, so sharing them is safe); encoding it is
    left to `lines()`, which is meant to run in a worker thread.
    """

    __slots__ = ("_rows", "_sessions", "applied_index", "revision")

    def __init__(
        self, *, revision: int, applied_index: int, rows: list[Row], sessions: SessionTable
    ) -> None:
        self.revision = revision
        self.applied_index = applied_index
        self._rows = rows
        self._sessions = sessions

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
        }

    def _session_rows(self) -> list[list[Any]]:
        return [[cid, seq, res, active] for cid, (seq, res, active) in self._sessions.table.items()]

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def meta(self) -> dict[str, Any]:
        """Everything but the keys: header fields plus the sessions as rows."""
        return {**self._header(), "sessions": self._session_rows()}

    def lines(self, rows_per_line: int = 4096, max_line_bytes: int = 1 << 20) -> Iterator[bytes]:
        """The whole state as newline-free JSON lines (see the module docstring)."""
        if rows_per_line < 1 or max_line_bytes < 1:
            raise ValueError("rows_per_line and max_line_bytes must be positive")
        yield orjson.dumps(self._header())
        sessions = self._session_rows()
        yield from _bounded(sessions, rows_per_line, max_line_bytes, _session_size, list)
        rows = self._rows
        for start in range(0, len(rows), rows_per_line):
            part = rows[start : start + rows_per_line]
            # C-level maps and chain: about 0.2 us per row, against 0.5 in a Python loop.
            text = sum(map(len, map(_VALUE, part))) + sum(map(len, map(_KEY, part)))
            if text + _ROW_OVERHEAD * len(part) <= max_line_bytes:
                yield orjson.dumps(list(chain.from_iterable(part)))
            else:  # large values: split by size so no line holds 4096 of them
                yield from _bounded(part, rows_per_line, max_line_bytes, _kv_size, _flat)


def _flat(rows: list[Any]) -> list[Any]:
    return list(chain.from_iterable(rows))


def _kv_size(row: Any) -> int:
    return len(row[0]) + len(row[1]) + _ROW_OVERHEAD


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


def _int(x: Any, what: str) -> int:
    # bool is an int subclass; true as a revision is garbage, not 1.
    if type(x) is not int or not 0 <= x <= MAX_INT:
        raise ValueError(f"{what} must be an integer from 0 to 2**63-1, got {str(x)[:40]}")
    return x


def _rows(line: bytes, what: str) -> list[Any]:
    try:
        rows = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"{what} line is not JSON: {e}") from None
    if type(rows) is not list or not rows:
        raise ValueError(f"{what} line must be a non-empty JSON array")
    return rows


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
    if head.get("format") not in (2, LINES_FORMAT):
        raise ValueError(f"unsupported kv line format {str(head.get('format'))[:40]}")
    v2 = head["format"] == 2
    expected = _HEADER_KEYS_V2 if v2 else _HEADER_KEYS
    if head.keys() != expected:
        raise ValueError(f"header must be an object with exactly {sorted(expected)}")
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
    store.revision, store.applied_index = revision, applied
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

    rows, keys = store._rows, store._keys
    prev = ""  # keys are non-empty, so the first one is > ""
    while len(rows) < n_keys:
        line = next(it, None)
        if line is None:
            raise ValueError(f"{len(rows)} keys of {n_keys}: truncated")
        flat = _rows(line, "key")
        if len(flat) % 5:
            raise ValueError("a key line must hold rows of five values")
        values = iter(flat)
        for row in zip(values, values, values, values, values, strict=True):
            key, value, create, mod, version = row
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
            rows.append(row)
            keys.append(key)
            prev = key
        if len(rows) > n_keys:
            raise ValueError(f"more keys than the {n_keys} announced")
    if next(it, None) is not None:
        raise ValueError("lines after the last key")
