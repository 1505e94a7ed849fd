"""The replicated state machine: an etcd-style key/value map with revisions.

Every replica applies the same committed log to its own `KVStore`, so the store
must be a pure function of that log: no clocks, no randomness, no I/O, and no
dependence on hash or set iteration order. Anything ordered (the key index, the
sessions) is ordered by key or by order of application, both of which are the
same on every node; the only time it knows is the leader's, committed in the log.

Revisions follow etcd: one global `revision` bumped by every mutation that
changes something; per key a `create_revision`, `mod_revision` and `version`
(1 on create, +1 per put; a delete forgets the key, so re-creating it starts
again at version 1 with a new create_revision).

Client sessions (Raft thesis, section 6.3) make retried commands apply once;
they are opened through the log, expire by the leader's committed clock and
are bounded in number and bytes (`kv/sessions.py`).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .commands import Command, InvalidCommand, parse
from .sessions import MAX_SESSION_BYTES, MAX_SESSIONS, Expired, SessionTable, Stale
from .snapshot import MAX_INT, FrozenKV, Row, decode_lines


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key's current value and revision metadata (immutable, safe to hand out)."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "value": self.value,
            "create_revision": self.create_revision,
            "mod_revision": self.mod_revision,
            "version": self.version,
        }


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": code, "message": message}


class KVStore:
    """The state machine; `apply()` is the only way the replicated state changes."""

    def __init__(
        self, max_sessions: int = MAX_SESSIONS, max_session_bytes: int = MAX_SESSION_BYTES
    ) -> None:
        self.sessions = SessionTable(max_sessions, max_session_bytes)
        self.revision = 0
        self.applied_index = 0
        # Each key is one row tuple (key, value, create_revision, mod_revision, version) in
        # a list sorted by key, with a parallel list of the keys to bisect (a key function
        # would cost ~2 us per bisect). No dict: a lookup is one bisect (2.6 us at 1M keys
        # against 0.2 for a dict; `get` went from 1 to 4.5 us with the KeyValue it builds,
        # an overwrite from ~5 to ~6.5 us), and without one:
        #  - nothing has to resize in one GIL-holding step while a store is rebuilt from
        #    a snapshot in a worker thread (a 700k-entry dict took 40 ms);
        #  - `freeze()` is one list copy (5-15 ms at 1M keys; a dict copy took 30 more).
        # Tuples of str and int are untracked by the cyclic GC, so a million keys add
        # nothing to its full collections: with a million KeyValue objects each one held
        # the GIL for 150-500 ms, and rebuilding a store triggered five of them. KeyValue
        # objects are made only when read. Creates and deletes cost a bisect plus two
        # memmoves (microseconds at 100k keys). Python orders str by code point, which is
        # also UTF-8 byte order, as in etcd.
        self._keys: list[str] = []
        self._rows: list[Row] = []

    @property
    def max_sessions(self) -> int:
        return self.sessions.max_sessions

    # ---- applying the log -------------------------------------------------------

    def apply(self, index: int, command: Any) -> dict[str, Any]:
        """Apply one committed entry's command and return its result; never raises.

        A malformed command is replicated to every node, so it yields an error
        result and changes nothing but `applied_index`. An index at or below
        `applied_index` (an entry replayed after a rebuild from a snapshot) is
        ignored entirely: applying it twice would make this replica diverge.
        """
        if index <= self.applied_index:
            return _error("already_applied", f"index {index} <= applied index {self.applied_index}")
        self.applied_index = index
        try:
            cmd = parse(command)
        except InvalidCommand as e:
            return _error("invalid_command", str(e))
        if cmd.op == "open_session":
            # The session's id is its entry's index: unique, and never reused, so
            # no retry can ever find a new session under an old one's name.
            client_id = str(index)
            evicted = self.sessions.open(client_id, cmd.now_ms)
            return {"client_id": client_id, "revision": self.revision, "evicted": evicted}
        if cmd.op == "expire_sessions":
            expired = self.sessions.expire(cmd.now_ms, cmd.ttl_ms)
            return {"expired": expired, "revision": self.revision}

        if cmd.client_id is None or cmd.seq is None:
            return self._execute(cmd)
        if cmd.seq > MAX_INT:
            # The API refuses such a seq already; one that reaches the log anyway must
            # not enter the sessions, or no snapshot (64-bit integers) could hold them.
            return _error("invalid_command", f"seq must be at most 2**63-1, got {cmd.seq}")
        try:
            replayed = self.sessions.replay(cmd.client_id, cmd.seq)
        except Expired:
            return _error(
                "session_expired",
                f"no session {cmd.client_id!r}: it expired, was evicted or was never opened; "
                "nothing was applied now, but an earlier attempt of this write may have been. "
                "Open a new session (POST /v1/sessions)",
            )
        except Stale as e:
            return _error(
                "stale_sequence",
                f"client {cmd.client_id!r} seq {cmd.seq} < last applied seq {e.args[0]}",
            )
        if replayed is not None:  # a retry of the last command: answer it again
            return replayed
        result = self._execute(cmd)
        self.sessions.record(cmd.client_id, cmd.seq, result)
        return result

    def mark_applied(self, index: int) -> None:
        """Advance `applied_index` past an entry with no kv command (leader no-op, config)."""
        self.applied_index = max(self.applied_index, index)

    def _execute(self, cmd: Command) -> dict[str, Any]:
        if cmd.op == "put":
            assert cmd.value is not None  # parse() guarantees it for put
            return self._put(cmd.key, cmd.value)
        return self._delete(cmd.key)

    def _put(self, key: str, value: str) -> dict[str, Any]:
        rev = self.revision = self.revision + 1
        keys, rows = self._keys, self._rows
        i = bisect_left(keys, key)
        prev = rows[i] if i < len(keys) and keys[i] == key else None
        if prev is None:
            keys.insert(i, key)
            rows.insert(i, (key, value, rev, rev, 1))
        else:
            rows[i] = (key, value, prev[2], rev, prev[4] + 1)
        return {
            "key": key,
            "revision": rev,
            "created": prev is None,
            "prev_value": None if prev is None else prev[1],
        }

    def _delete(self, key: str) -> dict[str, Any]:
        keys, rows = self._keys, self._rows
        i = bisect_left(keys, key)
        prev = rows[i] if i < len(keys) and keys[i] == key else None
        if prev is not None:
            self.revision += 1
            del keys[i]
            del rows[i]
        return {
            "key": key,
            "deleted": 0 if prev is None else 1,
            "revision": self.revision,
            "prev_value": None if prev is None else prev[1],
        }

    # ---- reads ------------------------------------------------------------------

    def _find(self, key: str) -> Row | None:
        keys = self._keys
        i = bisect_left(keys, key)
        return self._rows[i] if i < len(keys) and keys[i] == key else None

    def get(self, key: str) -> KeyValue | None:
        row = self._find(key)
        return None if row is None else KeyValue(*row)

    def list(self, prefix: str = "", limit: int | None = None) -> list[KeyValue]:
        """Keys starting with `prefix`, sorted by key; at most `limit` (None = all).

        Keys with a prefix are contiguous in sorted order, so this costs one
        bisect plus the keys returned, whatever the store's size.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be non-negative or None")
        keys, rows = self._keys, self._rows
        out: list[KeyValue] = []
        i = bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            if limit is not None and len(out) >= limit:
                break
            out.append(KeyValue(*rows[i]))
            i += 1
        return out

    def __len__(self) -> int:
        return len(self._rows)

    # ---- snapshots --------------------------------------------------------------

    def freeze(self) -> FrozenKV:
        """A consistent capture for a snapshot, cheap enough for the event loop.

        One shallow copy of the sorted rows (and of the bounded session
        table): rows are tuples and stored session results are never mutated,
        so later applies replace them in the store and leave the capture as it
        was. Encode it with `FrozenKV.lines()` in a worker thread.
        """
        return FrozenKV(
            revision=self.revision,
            applied_index=self.applied_index,
            rows=self._rows.copy(),
            sessions=self.sessions.copy(),
        )

    @classmethod
    def from_lines(cls, lines: Iterable[bytes]) -> KVStore:
        """Rebuild a store from `FrozenKV.lines()` (meant for a worker thread).

        Unlike `apply`, this raises ValueError on anything malformed: a snapshot
        is ours or installed by the leader, and a bad one must stop the node.
        """
        store = cls()
        decode_lines(lines, store)
        return store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVStore):
            return NotImplemented
        return (
            self.revision == other.revision
            and self.applied_index == other.applied_index
            and self._rows == other._rows
            and self.sessions == other.sessions
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (
            f"KVStore(keys={len(self)}, revision={self.revision}, "
            f"applied_index={self.applied_index}, sessions={len(self.sessions)})"
        )
