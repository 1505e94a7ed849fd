"""Client sessions: what makes a retried write apply at most once, for good.

A client opens a session (an entry in the log) and numbers its writes 1, 2, 3
...; the table keeps, per session, the highest number applied and its result,
so a retry of that write is answered again instead of applied again (Raft
thesis, section 6.3).

The table must stay bounded, and a session that is forgotten must never make
a retry look new: that is why a session is *opened*, never created by its first
write. A write naming a session the table does not hold is refused with
`session_expired`, whether the session expired, was evicted or never existed,
and the client learns that it must open a new one (and that an earlier attempt
of that write may or may not have applied).

Sessions end in two deterministic ways, identical on every replica:
- by time: the leader commits `expire_sessions` entries carrying its clock;
  the table's clock is the largest time committed so far, a session's
  activity is stamped with it, and sessions idle for `ttl` by that clock go.
  No replica ever reads its own clock (a follower whose clock runs fast must
  not expire anything early);
- by room: opening a session beyond `max_sessions`, or beyond `max_bytes` of
  stored results, evicts the least recently active ones.

Order in the table is order of last activity, so both ends cost O(removed).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MAX_SESSIONS = 10_000
MAX_SESSION_BYTES = 64 << 20  # stored results (a put's result holds its prev_value)
_RESULT_OVERHEAD = 96  # the dict, its small fields and the table's own entry, roughly


class Expired(Exception):
    """The write's session is not in the table (expired, evicted or never opened)."""


class Stale(Exception):
    """The write's number is below the session's last: an old duplicate."""


def result_size(result: dict[str, Any] | None) -> int:
    """What a stored result costs, counted the same way on every replica."""
    if result is None:
        return _RESULT_OVERHEAD
    size = _RESULT_OVERHEAD
    for value in result.values():
        if isinstance(value, str):
            size += len(value)
    return size


# One session: (last seq applied, its result or None before the first write,
# the table clock at its last activity).
Session = tuple[int, dict[str, Any] | None, int]


class SessionTable:
    """The sessions of one store (see the module docstring)."""

    __slots__ = ("bytes", "clock", "max_bytes", "max_sessions", "table")

    def __init__(
        self, max_sessions: int = MAX_SESSIONS, max_bytes: int = MAX_SESSION_BYTES
    ) -> None:
        if max_sessions < 1 or max_bytes < 1:
            raise ValueError("max_sessions and max_bytes must be at least 1")
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self.clock = 0  # milliseconds: the largest leader time committed so far
        self.bytes = 0
        self.table: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self.table)

    def advance_clock(self, now_ms: int) -> None:
        # A new leader's clock may be behind the old one's: time never goes back.
        if now_ms > self.clock:
            self.clock = now_ms

    def open(self, session_id: str, now_ms: int) -> int:
        """Open a session; returns how many older ones were evicted to make room."""
        self.advance_clock(now_ms)
        if session_id in self.table:  # ids are log indexes: only a corrupt log repeats one
            return 0
        self.table[session_id] = (0, None, self.clock)
        self.bytes += result_size(None)
        evicted = 0
        while len(self.table) > self.max_sessions or (
            self.bytes > self.max_bytes and len(self.table) > 1
        ):
            self._pop_oldest()
            evicted += 1
        return evicted

    def expire(self, now_ms: int, ttl_ms: int) -> int:
        """Forget the sessions idle for `ttl_ms` by the table's clock."""
        self.advance_clock(now_ms)
        cutoff = self.clock - ttl_ms
        expired = 0
        table = self.table
        while table and next(iter(table.values()))[2] <= cutoff:
            self._pop_oldest()
            expired += 1
        return expired

    def replay(self, session_id: str, seq: int) -> dict[str, Any] | None:
        """The stored result if `seq` is the session's last write (a retry), None if
        `seq` is new. Raises Expired or Stale."""
        session = self.table.get(session_id)
        if session is None:
            raise Expired(session_id)
        last_seq, last_result, _ = session
        if seq == last_seq and last_result is not None:
            self.table[session_id] = (last_seq, last_result, self.clock)
            self.table.move_to_end(session_id)
            return dict(last_result)
        if seq <= last_seq:
            raise Stale(last_seq)
        return None

    def record(self, session_id: str, seq: int, result: dict[str, Any]) -> None:
        """Keep `result` as the answer to any retry of write `seq`."""
        _, old, _ = self.table[session_id]
        stored = dict(result)
        self.bytes += result_size(stored) - result_size(old)
        self.table[session_id] = (seq, stored, self.clock)
        self.table.move_to_end(session_id)
        while self.bytes > self.max_bytes and len(self.table) > 1:
            self._pop_oldest()

    def _pop_oldest(self) -> None:
        _, (_, result, _) = self.table.popitem(last=False)
        self.bytes -= result_size(result)

    def load(self, session_id: str, seq: int, result: dict[str, Any] | None, active: int) -> None:
        """Add a session read from a snapshot (in table order)."""
        self.table[session_id] = (seq, result, active)
        self.bytes += result_size(result)

    def copy(self) -> SessionTable:
        """A capture for a snapshot: stored results are never mutated, so they are shared."""
        other = SessionTable(self.max_sessions, self.max_bytes)
        other.clock, other.bytes = self.clock, self.bytes
        # OrderedDict.copy runs in C without a tuple per item.
        other.table = self.table.copy()
        return other

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SessionTable):
            return NotImplemented
        return (
            self.clock == other.clock
            and self.max_sessions == other.max_sessions
            and self.max_bytes == other.max_bytes
            and self.table == other.table  # OrderedDict: order-sensitive, as it must be
        )

    __hash__ = None  # type: ignore[assignment]
