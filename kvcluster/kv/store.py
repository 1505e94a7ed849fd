"""The replicated state machine: an etcd-style key/value map with revisions.

Every replica applies the same committed log to its own `KVStore`, so the store
must be a pure function of that log: no clocks, no randomness, no I/O, and no
dependence on hash or set iteration order. Anything ordered (the key index, the
session LRU) is ordered by key or by order of application, both of which are
the same on every node.

Revisions follow etcd: one global `revision` bumped by every mutation that
changes something; per key a `create_revision`, `mod_revision` and `version`
(1 on create, +1 per put; a delete forgets the key, so re-creating it starts
again at version 1 with a new create_revision).

Client sessions (Raft thesis, section 6.3) make retried commands apply once: per
client we keep the highest `seq` applied and its result, bounded to
`max_sessions` clients with least-recently-used eviction.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from .commands import Command, InvalidCommand, parse

SNAPSHOT_FORMAT = 1


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

    def __init__(self, max_sessions: int = 10_000) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.max_sessions = max_sessions
        self.revision = 0
        self.applied_index = 0
        self._data: dict[str, KeyValue] = {}
        # The key index is a sorted list kept up to date with insort/del rather than
        # rebuilt lazily: only creates and deletes touch it (overwrites, the common case,
        # do not), each costs one bisect plus a memmove (microseconds at 100k keys), and
        # listings stay cheap even when they interleave with writes, as in benchmarks.
        # Python orders str by code point, which is also UTF-8 byte order, as in etcd.
        self._keys: list[str] = []
        # client_id -> (highest seq applied, its result); order = least recently used first.
        self._sessions: OrderedDict[str, tuple[int, dict[str, Any]]] = OrderedDict()

    # ---- applying the log -------------------------------------------------------

    def apply(self, index: int, command: Any) -> dict[str, Any]:
        """Apply one committed entry's command and return its result; never raises.

        A malformed command is replicated to every node, so it yields an error
        result and changes nothing but `applied_index`. An index at or below
        `applied_index` (an entry replayed after a snapshot restore) is ignored
        entirely: applying it twice would make this replica diverge.
        """
        if index <= self.applied_index:
            return _error("already_applied", f"index {index} <= applied index {self.applied_index}")
        self.applied_index = index
        try:
            cmd = parse(command)
        except InvalidCommand as e:
            return _error("invalid_command", str(e))

        if cmd.client_id is None or cmd.seq is None:
            return self._execute(cmd)
        session = self._sessions.get(cmd.client_id)
        if session is not None:
            last_seq, last_result = session
            if cmd.seq == last_seq:  # a retry of the last command: answer it again
                self._sessions.move_to_end(cmd.client_id)
                return dict(last_result)
            if cmd.seq < last_seq:
                return _error(
                    "stale_sequence",
                    f"client {cmd.client_id!r} seq {cmd.seq} < last applied seq {last_seq}",
                )
        result = self._execute(cmd)
        self._sessions[cmd.client_id] = (cmd.seq, dict(result))
        self._sessions.move_to_end(cmd.client_id)
        if len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
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
        self.revision += 1
        prev = self._data.get(key)
        if prev is None:
            kv = KeyValue(key, value, self.revision, self.revision, 1)
            insort(self._keys, key)
        else:
            kv = KeyValue(key, value, prev.create_revision, self.revision, prev.version + 1)
        self._data[key] = kv
        return {
            "key": key,
            "revision": self.revision,
            "created": prev is None,
            "prev_value": None if prev is None else prev.value,
        }

    def _delete(self, key: str) -> dict[str, Any]:
        prev = self._data.pop(key, None)
        if prev is not None:
            self.revision += 1
            del self._keys[bisect_left(self._keys, key)]
        return {
            "key": key,
            "deleted": 0 if prev is None else 1,
            "revision": self.revision,
            "prev_value": None if prev is None else prev.value,
        }

    # ---- reads ------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        return self._data.get(key)

    def list(self, prefix: str = "", limit: int | None = None) -> list[KeyValue]:
        """Keys starting with `prefix`, sorted by key; at most `limit` (None = all).

        Keys with a prefix are contiguous in sorted order, so this costs one
        bisect plus the keys returned, whatever the store's size.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be non-negative or None")
        keys = self._keys
        out: list[KeyValue] = []
        i = bisect_left(keys, prefix)
        while i < len(keys) and keys[i].startswith(prefix):
            if limit is not None and len(out) >= limit:
                break
            out.append(self._data[keys[i]])
            i += 1
        return out

    def __len__(self) -> int:
        return len(self._data)

    # ---- snapshots --------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The full state as JSON-serialisable data sharing nothing with the store.

        Keys are rows `[key, value, create_revision, mod_revision, version]` in key
        order (compact for 100k keys); sessions are rows `[client_id, seq, result]`
        in LRU order, because that order decides future evictions.
        """
        return {
            "format": SNAPSHOT_FORMAT,
            "revision": self.revision,
            "applied_index": self.applied_index,
            "max_sessions": self.max_sessions,
            "data": [
                [kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version]
                for kv in (self._data[k] for k in self._keys)
            ],
            "sessions": [[cid, seq, dict(res)] for cid, (seq, res) in self._sessions.items()],
        }

    @classmethod
    def restore(cls, data: dict[str, Any]) -> KVStore:
        """Rebuild a store from `snapshot()` output (also after a JSON round trip).

        Unlike `apply`, this raises ValueError on malformed input: a snapshot is
        local or installed by the leader, and a bad one must stop the node.
        """
        try:
            if data.get("format", SNAPSHOT_FORMAT) != SNAPSHOT_FORMAT:
                raise ValueError(f"unsupported kv snapshot format {data['format']!r}")
            store = cls(max_sessions=int(data["max_sessions"]))
            store.revision = int(data["revision"])
            store.applied_index = int(data["applied_index"])
            for key, value, create_rev, mod_rev, version in data["data"]:
                kv = KeyValue(str(key), str(value), int(create_rev), int(mod_rev), int(version))
                store._data[kv.key] = kv
            store._keys = sorted(store._data)
            for cid, seq, result in data["sessions"]:
                store._sessions[str(cid)] = (int(seq), dict(result))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed kv snapshot: {e}") from e
        return store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVStore):
            return NotImplemented
        return (
            self.revision == other.revision
            and self.applied_index == other.applied_index
            and self.max_sessions == other.max_sessions
            and self._data == other._data
            and self._sessions == other._sessions  # OrderedDict: order-sensitive, as needed
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (
            f"KVStore(keys={len(self)}, revision={self.revision}, "
            f"applied_index={self.applied_index}, sessions={len(self._sessions)})"
        )
