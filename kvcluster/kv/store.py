"""The replicated state machine: an etcd-style MVCC key/value store.

Every replica applies the same committed log to its own `KVStore`, so the store
must be a pure function of that log: no clocks, no randomness, no I/O, and no
dependence on hash or set iteration order. Anything ordered (the key index, the
history, the sessions, the keys a lease deletes) is ordered by key, by
revision or by order of application, all the same on every node; the only time
it knows is the leader's, committed in the log.

Revisions follow etcd: one global `revision` bumped by every command that
changes something (a txn's changes share one); per key a `create_revision`,
`mod_revision`, `version` (1 on create, +1 per put; a delete ends the key's
generation, so re-creating it starts again at version 1 with a new
create_revision) and `lease`. The history of changes since the last compaction
(kv/history.py) answers reads at a past revision and feeds watches.

Commands (kv/commands.py validates them; none ever raises here):
    {"op":"put","key","value"[, "lease","prev_kv","ignore_value","ignore_lease"]
        [, "client_id","seq"]}
        -> {"key","revision","created","prev_value"[, "prev_kv"]}
    {"op":"delete","key"[, "client_id","seq"]} -> {"key","deleted","revision","prev_value"}
    {"op":"delete_range","key"[, "range_end","prev_kv"]}
        -> {"revision","deleted"[, "prev_kvs"]}
    {"op":"txn","compare","success","failure"} -> {"revision","succeeded","responses"}
    {"op":"compact","revision"} -> {"revision"}
    {"op":"lease_grant","id"?,"ttl","now"} -> {"id","ttl","revision"}
    {"op":"lease_revoke","id"} -> {"revision","deleted"}
    {"op":"lease_keepalive","id","now"} -> {"id","ttl","revision"}
    {"op":"lease_expire","now"} -> {"expired":[ids],"revision"}
    {"op":"lease_promote","now","extend"} -> {"leases","revision"}
    {"op":"open_session","now"}, {"op":"expire_sessions","now","ttl"} (kv/sessions.py)
An error is {"error": code, "message": ...} and changes nothing but
`applied_index`.

Client sessions (Raft thesis, section 6.3) make retried /v1 writes apply once;
they are opened through the log, expire by the leader's committed clock and
are bounded in number and bytes (`kv/sessions.py`).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from . import txn as txns
from .commands import Command, parse
from .history import (
    NO_PREV,
    Event,
    Row,
    event_dict,
    first_event_at,
    kv_dict,
    rows_at,
    select_events,
    span,
)
from .leases import (
    MAX_LEASES,
    LeaseExpire,
    LeaseGrant,
    LeaseKeepAlive,
    LeasePromote,
    LeaseRevoke,
    LeaseTable,
    deadline,
)
from .ops import Compact, DeleteRange, InvalidCommand, Range, Txn
from .results import (
    COMPACTED,
    FUTURE,
    KEY_NOT_FOUND,
    LEASE_NOT_FOUND,
    delete_range_result,
    put_result,
)
from .results import error as _error
from .sessions import MAX_SESSION_BYTES, MAX_SESSIONS, Expired, SessionTable, Stale
from .snapshot import MAX_INT, FrozenKV, decode_lines


class CompactedError(Exception):
    """A read from a revision that compaction has dropped; args[0] is the compact revision."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key's current value and revision metadata (immutable, safe to hand out)."""

    key: str
    value: str
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The /v1 shape (no lease: /v1 has none)."""
        return {
            "key": self.key,
            "value": self.value,
            "create_revision": self.create_revision,
            "mod_revision": self.mod_revision,
            "version": self.version,
        }


def _event_bytes(events: Iterable[Event]) -> int:
    """Keys and values in these history events (a delete's value is None)."""
    return sum(len(e[0]) + (len(e[1]) if e[1] is not None else 0) for e in events)


class KVStore:
    """The state machine; `apply()` is the only way the replicated state changes."""

    def __init__(
        self,
        max_sessions: int = MAX_SESSIONS,
        max_session_bytes: int = MAX_SESSION_BYTES,
        max_leases: int = MAX_LEASES,
    ) -> None:
        self.sessions = SessionTable(max_sessions, max_session_bytes)
        self.leases = LeaseTable(max_leases)
        self.revision = 0
        self.applied_index = 0
        self.compacted = 0  # reads and watches from any revision >= this one work
        # Each key is one row tuple (key, value, create_revision, mod_revision, version,
        # lease) in a list sorted by key, with a parallel list of the keys to bisect (a key
        # function would cost ~2 us per bisect). No dict: a lookup is one bisect (2.6 us at
        # 1M keys against 0.2 for a dict; `get` went from 1 to 4.5 us with the KeyValue it
        # builds, an overwrite from ~5 to ~6.5 us), and without one:
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
        # The changes since `compacted`, in revision order (kv/history.py): one flat
        # tuple per change, sharing the rows' values. Append-only: compaction replaces
        # the list, so a capture needs no copy of it.
        self._events: list[Event] = []
        # Bytes of keys and values held (counted as they change, for the node's
        # quota): live rows, plus every event since compaction (a current value
        # still in the history counts in both, as etcd counts every revision kept).
        self.row_bytes = 0
        self.history_bytes = 0

    @property
    def bytes_used(self) -> int:
        """Keys and values held, rows and history: what the node's quota bounds."""
        return self.row_bytes + self.history_bytes

    def recount(self) -> None:
        """Count `row_bytes` and `history_bytes` from scratch (after a rebuild)."""
        self.row_bytes = sum(len(r[0]) + len(r[1]) for r in self._rows)
        self.history_bytes = _event_bytes(self._events)

    def revision_keeping(self, history_bytes: int) -> int:
        """The oldest revision a compaction may keep so that at most about
        `history_bytes` of history remain (whole revisions; never beyond the
        current revision)."""
        events = self._events
        total = self.history_bytes
        for e in events:
            if total <= history_bytes:
                return int(e[3])
            total -= len(e[0]) + (len(e[1]) if e[1] is not None else 0)
        return self.revision

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
            return _error(e.code, str(e))
        if type(cmd) is not Command:
            return self._apply_other(index, cmd)
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
            if cmd.lease or cmd.prev_kv or cmd.ignore_value or cmd.ignore_lease:
                return self._put_with_options(cmd)
            return self._put(cmd.key, cmd.value)
        return self._delete(cmd.key)

    def _put(self, key: str, value: str) -> dict[str, Any]:
        """A plain /v1 put, kept short: it is the hot path."""
        rev = self.revision = self.revision + 1
        keys, rows = self._keys, self._rows
        i = bisect_left(keys, key)
        prev = rows[i] if i < len(keys) and keys[i] == key else None
        size = len(key) + len(value)
        self.history_bytes += size
        if prev is None:
            keys.insert(i, key)
            rows.insert(i, (key, value, rev, rev, 1, 0))
            self._events.append((key, value, rev, rev, 1, 0, None, 0, 0, 0, 0))
            self.row_bytes += size
        else:
            _, pv, pc, pm, pver, pl = prev  # unpacked once: the fastest way to both tuples
            version = pver + 1
            rows[i] = (key, value, pc, rev, version, 0)
            self._events.append((key, value, pc, rev, version, 0, pv, pc, pm, pver, pl))
            self.row_bytes += len(value) - len(pv)
            if pl:  # a put without a lease detaches the key from its lease, as etcd's
                self.leases.detach(key, pl)
        return {
            "key": key,
            "revision": rev,
            "created": prev is None,
            "prev_value": None if prev is None else prev[1],
        }

    def _put_with_options(self, cmd: Command) -> dict[str, Any]:
        assert cmd.value is not None
        if cmd.lease and cmd.lease not in self.leases:
            return _error("lease_not_found", LEASE_NOT_FOUND)
        if (cmd.ignore_value or cmd.ignore_lease) and self._find(cmd.key) is None:
            return _error("key_not_found", KEY_NOT_FOUND)
        rev = self.revision = self.revision + 1
        row, prev = self.write_put(
            cmd.key, cmd.value, cmd.lease, cmd.ignore_value, cmd.ignore_lease, rev
        )
        return put_result(row, prev, cmd.prev_kv)

    def _delete(self, key: str) -> dict[str, Any]:
        keys = self._keys
        i = bisect_left(keys, key)
        prev = self._rows[i] if i < len(keys) and keys[i] == key else None
        if prev is not None:
            self.revision += 1
            self.write_delete(i, i + 1, self.revision)
        return {
            "key": key,
            "deleted": 0 if prev is None else 1,
            "revision": self.revision,
            "prev_value": None if prev is None else prev[1],
        }

    def _apply_other(self, index: int, cmd: Any) -> dict[str, Any]:
        """The etcd commands beyond /v1's: delete_range, txn, compact and leases."""
        if isinstance(cmd, Txn):
            return txns.apply_txn(self, cmd)
        if isinstance(cmd, DeleteRange):
            rev = self.revision + 1
            prevs = self.write_delete_range(cmd.key, cmd.range_end, rev)
            if prevs:
                self.revision = rev
            return delete_range_result(prevs, cmd.prev_kv, self.revision)
        if isinstance(cmd, Compact):
            return self._compact(cmd.revision)
        return self._apply_lease(index, cmd)

    def _compact(self, revision: int) -> dict[str, Any]:
        if revision > self.revision:
            return _error("future_revision", FUTURE, revision=self.revision)
        if revision < self.compacted or 0 < revision == self.compacted:
            # (compact 0 on a store never compacted is a no-op, as etcd's first compact 0 is)
            return _error("compacted", COMPACTED, compact_revision=self.compacted)
        # Keep the events *at* `revision`: a watch may start there (etcd allows it). A new
        # list, not a deletion in place: captures and iterators hold the old one.
        first = first_event_at(self._events, revision)
        self.history_bytes -= _event_bytes(self._events[:first])
        self._events = self._events[first:]
        self.compacted = revision
        return {"revision": self.revision}

    # ---- the write primitives (also used by txn.py): callers have checked everything

    def write_put(
        self, key: str, value: str, lease: int, ignore_value: bool, ignore_lease: bool, rev: int
    ) -> tuple[Row, Row | None]:
        """Put `key` at revision `rev`; the lease, if any, exists; returns (row, prev)."""
        keys, rows = self._keys, self._rows
        i = bisect_left(keys, key)
        prev = rows[i] if i < len(keys) and keys[i] == key else None
        if prev is None:
            row = (key, value, rev, rev, 1, lease)
            keys.insert(i, key)
            rows.insert(i, row)
            self._events.append(row + NO_PREV)
            self.row_bytes += len(key) + len(value)
        else:
            if ignore_value:
                value = prev[1]
            if ignore_lease:
                lease = prev[5]
            row = (key, value, prev[2], rev, prev[4] + 1, lease)
            rows[i] = row
            self._events.append(row + prev[1:])
            self.row_bytes += len(value) - len(prev[1])
        self.history_bytes += len(key) + len(value)
        old_lease = 0 if prev is None else prev[5]
        if old_lease != lease:
            if old_lease:
                self.leases.detach(key, old_lease)
            if lease:
                self.leases.attach(key, lease)
        return row, prev

    def write_delete(self, i: int, j: int, rev: int) -> list[Row]:
        """Delete the rows at positions [i, j) at revision `rev`; returns them."""
        gone = self._rows[i:j]
        events, leases = self._events, self.leases
        for key, pv, pc, pm, pver, pl in gone:
            events.append((key, None, 0, rev, 0, 0, pv, pc, pm, pver, pl))
            self.row_bytes -= len(key) + len(pv)
            self.history_bytes += len(key)
            if pl:
                leases.detach(key, pl)
        del self._keys[i:j]
        del self._rows[i:j]
        return gone

    def write_delete_range(self, key: str, range_end: str | None, rev: int) -> list[Row]:
        i, j = span(self._keys, key, range_end)
        return self.write_delete(i, j, rev) if i < j else []

    def _write_delete_keys(self, keys: list[str], rev: int) -> int:
        """Delete these keys (sorted, all present) at `rev`, in one pass over the rows."""
        positions = [bisect_left(self._keys, k) for k in keys]
        if len(positions) <= 16:  # a few memmoves beat rebuilding the lists
            for n, i in enumerate(positions):
                self.write_delete(i - n, i - n + 1, rev)
            return len(positions)
        events, old_keys, old_rows = self._events, self._keys, self._rows
        new_keys: list[str] = []
        new_rows: list[Row] = []
        start = 0
        for i in positions:
            new_keys += old_keys[start:i]
            new_rows += old_rows[start:i]
            key, pv, pc, pm, pver, pl = old_rows[i]
            events.append((key, None, 0, rev, 0, 0, pv, pc, pm, pver, pl))
            self.row_bytes -= len(key) + len(pv)
            self.history_bytes += len(key)
            start = i + 1
        new_keys += old_keys[start:]
        new_rows += old_rows[start:]
        old_keys[:] = new_keys  # in place: the lists' identity never changes
        old_rows[:] = new_rows
        return len(positions)

    # ---- leases -----------------------------------------------------------------

    def _apply_lease(self, index: int, cmd: Any) -> dict[str, Any]:
        leases = self.leases
        if isinstance(cmd, LeaseGrant):
            if cmd.id and cmd.id in leases:
                return _error("lease_exists", "etcdserver: lease already exists")
            if len(leases) >= leases.max_leases:
                return _error(
                    "too_many_leases",
                    f"{len(leases)} leases exist, the most this store keeps; "
                    "revoke some (or let them expire) first",
                )
            lease_id = leases.pick_id(cmd.id, index)
            leases.set(lease_id, cmd.ttl, deadline(cmd.now, cmd.ttl))
            return {"id": lease_id, "ttl": cmd.ttl, "revision": self.revision}
        if isinstance(cmd, LeaseRevoke):
            if cmd.id not in leases:
                return _error("lease_not_found", LEASE_NOT_FOUND)
            deleted = self._revoke(cmd.id)
            return {"revision": self.revision, "deleted": deleted}
        if isinstance(cmd, LeaseKeepAlive):
            lease = leases.leases.get(cmd.id)
            if lease is None:
                return _error("lease_not_found", LEASE_NOT_FOUND)
            leases.set(cmd.id, lease[0], deadline(cmd.now, lease[0]))
            return {"id": cmd.id, "ttl": lease[0], "revision": self.revision}
        if isinstance(cmd, LeaseExpire):
            expired = leases.expired(cmd.now)
            for lease_id in expired:
                self._revoke(lease_id)
            return {"expired": expired, "revision": self.revision}
        assert isinstance(cmd, LeasePromote)
        leases.promote(cmd.now, cmd.extend)
        return {"leases": len(leases), "revision": self.revision}

    def _revoke(self, lease_id: int) -> int:
        """Drop a lease and delete its keys, all at one new revision (none if no keys)."""
        keys = self.leases.remove(lease_id)
        if not keys:
            return 0
        self.revision += 1
        return self._write_delete_keys(keys, self.revision)

    def lease_time_to_live(self, lease_id: int, now_ms: int, keys: bool = False) -> dict[str, Any]:
        """etcd's LeaseTimeToLive at the leader's clock `now_ms`: remaining seconds
        (truncated, never below 0), the granted TTL and, if asked, the attached keys
        in key order. An unknown lease answers ttl -1, as etcd does."""
        lease = self.leases.leases.get(lease_id)
        if lease is None:
            return {"id": lease_id, "ttl": -1, "granted_ttl": 0, "keys": []}
        ttl, due = lease
        out: dict[str, Any] = {
            "id": lease_id,
            "ttl": max(0, (due - now_ms) // 1000),
            "granted_ttl": ttl,
            "keys": sorted(self.leases.keys[lease_id]) if keys else [],
        }
        return out

    def lease_ids(self) -> list[int]:
        """Every lease's id, in order."""
        return sorted(self.leases.leases)

    def next_lease_deadline(self) -> int | None:
        """The leader's clock time (ms) at which the first lease expires, or None."""
        return self.leases.next_deadline()

    # ---- reads ------------------------------------------------------------------

    def _find(self, key: str) -> Row | None:
        keys = self._keys
        i = bisect_left(keys, key)
        return self._rows[i] if i < len(keys) and keys[i] == key else None

    def get(self, key: str) -> KeyValue | None:
        row = self._find(key)
        return None if row is None else KeyValue(*row)

    def list(
        self,
        prefix: str = "",
        limit: int | None = None,
        *,
        after: str | None = None,
        max_bytes: int | None = None,
    ) -> list[KeyValue]:
        """Keys starting with `prefix` (and after `after`, if given), sorted by
        key; at most `limit` (None = all), and no more keys once their keys and
        values pass `max_bytes` (at least one).

        Keys with a prefix are contiguous in sorted order, so this costs one
        bisect plus the keys returned, whatever the store's size.
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be non-negative or None")
        keys, rows = self._keys, self._rows
        out: list[KeyValue] = []
        i = (
            bisect_left(keys, prefix)
            if after is None or after < prefix
            else bisect_right(keys, after)
        )
        size = 0
        while i < len(keys) and keys[i].startswith(prefix):
            if limit is not None and len(out) >= limit:
                break
            if max_bytes is not None and out and size >= max_bytes:
                break
            row = rows[i]
            out.append(KeyValue(*row))
            size += len(row[0]) + len(row[1])
            i += 1
        return out

    def range(
        self,
        key: str,
        range_end: str | None = None,
        revision: int = 0,
        limit: int = 0,
        keys_only: bool = False,
        count_only: bool = False,
        *,
        sort_order: str = "NONE",
        sort_target: str = "KEY",
        min_mod_revision: int = 0,
        max_mod_revision: int = 0,
        min_create_revision: int = 0,
        max_create_revision: int = 0,
    ) -> dict[str, Any]:
        """etcd's Range: {"revision": current, "kvs": [KV...], "count": n, "more": bool}.

        `range_end` None selects `key` alone, "\\x00" every key >= `key`, else
        [key, range_end). `revision` <= 0 reads the current state; one below
        the compact revision answers error "compacted" (with compact_revision),
        one above the current revision "future_revision". `limit` <= 0 means
        none; `count` is every key in the range, `more` says `limit` cut some
        off. The sort and min/max options are etcd's (ties keep key order).
        """
        if not isinstance(key, str) or not key:
            return _error("invalid_command", "etcdserver: key is not provided")
        req = Range(
            key,
            range_end or None,
            revision,
            limit,
            keys_only,
            count_only,
            sort_order,
            sort_target,
            min_mod_revision,
            max_mod_revision,
            min_create_revision,
            max_create_revision,
        )
        error = self.check_range(req)
        return error if error is not None else self.do_range(req, self.revision)

    def check_range(self, req: Range) -> dict[str, Any] | None:
        """The error a range at `req.revision` gets, if any (etcd's checkRequestRange)."""
        if req.revision > self.revision:
            return _error("future_revision", FUTURE, revision=self.revision)
        if 0 < req.revision < self.compacted:
            return _error(
                "compacted", COMPACTED, compact_revision=self.compacted, revision=self.revision
            )
        if req.sort_order not in txns.SORT_ORDERS or req.sort_target not in txns.SORT_KEYS:
            return _error("invalid_command", "unknown sort_order or sort_target")
        return None

    def do_range(self, req: Range, current: int) -> dict[str, Any]:
        """Run a checked range; `current` is the revision to report (a txn's own)."""
        i, j = span(self._keys, req.key, req.range_end)
        events = self._events
        at = req.revision
        if at > 0 and events and events[-1][3] > at:
            start = first_event_at(events, at + 1)
            rows = rows_at(self._rows[i:j], events, start, req.key, req.range_end)
        elif (
            req.sort_order == "NONE"
            and req.sort_target == "KEY"
            and not (req.min_mod_revision or req.max_mod_revision)
            and not (req.min_create_revision or req.max_create_revision)
        ):  # the common case: a slice of the rows, however large the range
            count = j - i
            if req.count_only:
                return {"revision": current, "kvs": [], "count": count, "more": False}
            end = j if req.limit <= 0 else min(j, i + req.limit)
            kvs = [kv_dict(r, req.keys_only) for r in self._rows[i:end]]
            return {"revision": current, "kvs": kvs, "count": count, "more": end < j}
        else:
            rows = self._rows[i:j]
        return txns.finish_range(req, rows, current)

    def changes_since(
        self, revision: int, key: str, range_end: str | None = None, *, upto: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """The events at `revision` and after (up to revision `upto` if given) on keys
        in (key, range_end), in revision order (a txn's in the order it made them),
        as etcd's watch shows them: {"type": "PUT"|"DELETE", "kv": KV, "prev_kv": KV | None}.

        Raises CompactedError(compact revision) if `revision` < `compacted`.
        The iterator works on the history as it is now: later applies do not
        show up in it (ask again from the last revision seen + 1).
        """
        if revision < self.compacted:
            raise CompactedError(self.compacted)
        events = self._events
        start = first_event_at(events, revision)
        end = None if upto is None else first_event_at(events, upto + 1)
        return map(event_dict, select_events(events, start, key, range_end or None, end))

    def scan_horizon(self, revision: int, events: int) -> int:
        """The last revision a scan of about `events` history events from `revision`
        reaches, whole revisions, at least one: how a watcher far behind reads
        the history in bounded steps rather than all of it at once."""
        history = self._events
        last = first_event_at(history, revision) + max(events, 1) - 1
        if last >= len(history):
            return self.revision
        return max(int(history[last][3]), revision)  # its mod_revision

    @property
    def history_size(self) -> int:
        """Events kept since the last compaction (what compaction frees)."""
        return len(self._events)

    def __len__(self) -> int:
        return len(self._rows)

    # ---- snapshots --------------------------------------------------------------

    def freeze(self) -> FrozenKV:
        """A consistent capture for a snapshot, cheap enough for the event loop.

        Shallow copies of the sorted rows (tuples, never mutated), of the lease
        table's ids and deadlines, and of the bounded session table (its stored
        results are never mutated): later applies replace entries in the store
        and leave the capture as it was. The history is not copied at all: the
        capture keeps the append-only list and its present length. Encode it
        with `FrozenKV.lines()` in a worker thread.
        """
        return FrozenKV(
            revision=self.revision,
            applied_index=self.applied_index,
            rows=self._rows.copy(),
            sessions=self.sessions.copy(),
            compacted=self.compacted,
            events=self._events,
            n_events=len(self._events),
            leases=self.leases.copy(),
            max_leases=self.leases.max_leases,
        )

    @classmethod
    def from_lines(cls, lines: Iterable[bytes]) -> KVStore:
        """Rebuild a store from `FrozenKV.lines()` (meant for a worker thread).

        Unlike `apply`, this raises ValueError on anything malformed: a snapshot
        is ours or installed by the leader, and a bad one must stop the node.
        """
        store = cls()
        decode_lines(lines, store)
        store.recount()
        return store

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVStore):
            return NotImplemented
        return (
            self.revision == other.revision
            and self.applied_index == other.applied_index
            and self.compacted == other.compacted
            and self._rows == other._rows
            and self._events == other._events
            and self.sessions == other.sessions
            and self.leases == other.leases
        )

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return (
            f"KVStore(keys={len(self)}, revision={self.revision}, "
            f"applied_index={self.applied_index}, compacted={self.compacted}, "
            f"history={len(self._events)}, sessions={len(self.sessions)}, "
            f"leases={len(self.leases)})"
        )
