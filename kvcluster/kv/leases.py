"""Leases: keys that live as long as their owner keeps them alive.

A lease has an id, a TTL in seconds and a deadline. Nothing here reads a
clock: every time is the leader's, committed in the log (a grant or a
keep-alive carries the leader's `now`; the leader proposes `lease_expire` when
its clock passes a deadline, and `lease_promote` when it takes office, which
restarts every lease's full TTL on its own clock plus a grace period, as etcd
does, so that a failover never expires a lease whose owner kept it alive).
Deadlines are therefore in the clock of the leader that set them, and the
promote entry moves them all to the new leader's clock.

The table holds only leases and which keys are attached; deleting those keys
is the store's job (kv/store.py), which keeps `keys` in step with its rows.
The attached keys are derived state: a snapshot holds the leases alone and the
keys come back from the rows' lease ids.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Union

from .ops import MAX_INT, MIN_INT, InvalidCommand, check_int

MAX_LEASES = 100_000
MAX_LEASE_TTL = 9_000_000_000  # seconds, etcd's MaxLeaseTTL
MAX_CLOCK_MS = MAX_INT


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    id: int  # 0: the store picks one
    ttl: int  # seconds
    now: int  # the leader's clock, ms


@dataclass(frozen=True, slots=True)
class LeaseRevoke:
    id: int


@dataclass(frozen=True, slots=True)
class LeaseKeepAlive:
    id: int
    now: int


@dataclass(frozen=True, slots=True)
class LeaseExpire:
    now: int


@dataclass(frozen=True, slots=True)
class LeasePromote:
    now: int
    extend: int  # ms added to every lease's TTL (the new leader's election timeout)


LeaseCommand = Union[LeaseGrant, LeaseRevoke, LeaseKeepAlive, LeaseExpire, LeasePromote]  # noqa: UP007


def _ms(name: str, value: object) -> int:
    return check_int(name, value, 0, MAX_CLOCK_MS)


def _id(value: object, *, allow_zero: bool) -> int:
    if value is None and allow_zero:
        return 0
    lease_id = check_int("id", value, MIN_INT, MAX_INT)
    if lease_id == 0 and not allow_zero:
        raise InvalidCommand("id must not be 0 (0 means no lease)")
    return lease_id


def parse_lease(op: str, body: dict[str, object]) -> LeaseCommand:
    """Validate a lease_* command (`op` is known to be one)."""
    if op == "lease_grant":
        ttl = check_int("ttl", body.get("ttl"), 1, MAX_INT)
        if ttl > MAX_LEASE_TTL:
            raise InvalidCommand("etcdserver: too large lease TTL", code="lease_ttl_too_large")
        return LeaseGrant(_id(body.get("id"), allow_zero=True), ttl, _ms("now", body.get("now")))
    if op == "lease_revoke":
        return LeaseRevoke(_id(body.get("id"), allow_zero=False))
    if op == "lease_keepalive":
        return LeaseKeepAlive(_id(body.get("id"), allow_zero=False), _ms("now", body.get("now")))
    if op == "lease_expire":
        return LeaseExpire(_ms("now", body.get("now")))
    assert op == "lease_promote"
    return LeasePromote(_ms("now", body.get("now")), _ms("extend", body.get("extend")))


def deadline(now: int, ttl: int, extend: int = 0) -> int:
    """When a lease of `ttl` seconds renewed at `now` expires (ms, capped to 63 bits)."""
    return min(now + ttl * 1000 + extend, MAX_CLOCK_MS)


class LeaseTable:
    """Leases by id: (ttl, deadline), the keys attached to each, and a heap of deadlines."""

    __slots__ = ("_heap", "keys", "leases", "max_leases")

    def __init__(self, max_leases: int = MAX_LEASES) -> None:
        if max_leases < 1:
            raise ValueError("max_leases must be at least 1")
        self.max_leases = max_leases
        self.leases: dict[int, tuple[int, int]] = {}  # id -> (ttl seconds, deadline ms)
        self.keys: dict[int, set[str]] = {}  # id -> attached keys (iterate sorted!)
        # (deadline, id), possibly stale after a keep-alive or revoke: checked on pop.
        self._heap: list[tuple[int, int]] = []

    def __len__(self) -> int:
        return len(self.leases)

    def __contains__(self, lease_id: int) -> bool:
        return lease_id in self.leases

    def set(self, lease_id: int, ttl: int, due: int) -> None:
        """Grant or renew: `lease_id` expires at `due`."""
        old = self.leases.get(lease_id)
        self.leases[lease_id] = (ttl, due)
        self.keys.setdefault(lease_id, set())
        if old is None or old[1] != due:  # the same deadline again is in the heap already
            heapq.heappush(self._heap, (due, lease_id))
        if len(self._heap) > 2 * len(self.leases) + 64:
            self._rebuild_heap()

    def remove(self, lease_id: int) -> list[str]:
        """Forget a lease; returns its attached keys, sorted (the order etcd deletes them in)."""
        del self.leases[lease_id]
        return sorted(self.keys.pop(lease_id))

    def attach(self, key: str, lease_id: int) -> None:
        self.keys[lease_id].add(key)

    def detach(self, key: str, lease_id: int) -> None:
        keys = self.keys.get(lease_id)
        if keys is not None:
            keys.discard(key)

    def promote(self, now: int, extend: int) -> None:
        """A new leader takes office: every lease gets its full TTL again plus `extend`."""
        for lease_id, (ttl, _) in self.leases.items():
            self.leases[lease_id] = (ttl, deadline(now, ttl, extend))
        self._rebuild_heap()

    def _rebuild_heap(self) -> None:
        self._heap = [(due, lease_id) for lease_id, (_, due) in self.leases.items()]
        heapq.heapify(self._heap)

    def _clean_top(self) -> None:
        heap, leases = self._heap, self.leases
        while heap:
            due, lease_id = heap[0]
            current = leases.get(lease_id)
            if current is not None and current[1] == due:
                return
            heapq.heappop(heap)

    def next_deadline(self) -> int | None:
        """The earliest deadline of any lease (what the leader waits for), or None."""
        self._clean_top()
        return self._heap[0][0] if self._heap else None

    def expired(self, now: int) -> list[int]:
        """The leases whose deadline is at or before `now`, earliest first (ties by id)."""
        out: list[int] = []
        heap = self._heap
        self._clean_top()
        while heap and heap[0][0] <= now:
            _, lease_id = heapq.heappop(heap)
            # Never twice: the heap may hold the same (deadline, id) more than once
            # where a replica that was rebuilt from a snapshot holds it once.
            if not out or lease_id not in out:
                out.append(lease_id)
            self._clean_top()
        # Popped entries leave the heap; the caller removes these leases right away.
        return out

    def pick_id(self, wanted: int, index: int) -> int:
        """The id for a grant: the one asked for, else the entry's index (unique in the
        log; a client may have taken it, then the next free one after it)."""
        if wanted:
            return wanted
        lease_id = max(index, 1)
        while lease_id in self.leases:
            lease_id = lease_id + 1 if lease_id < MAX_INT else 1
        return lease_id

    def copy(self) -> dict[int, tuple[int, int]]:
        """What a snapshot needs: the leases (the keys come back from the rows)."""
        return self.leases.copy()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LeaseTable):
            return NotImplemented
        return (
            self.max_leases == other.max_leases
            and self.leases == other.leases
            and self.keys == other.keys
        )

    __hash__ = None  # type: ignore[assignment]
