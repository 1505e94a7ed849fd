"""Leases in the node layer: the leader's clock goes into the log, nowhere else.

A lease's life is measured on one clock only, the leader's, and every use of
that clock is committed (kv/leases.py keeps the table; this module decides
what the leader proposes and when):

- a grant or a keep-alive is stamped with the leader's `now` when the leader
  proposes it (a follower relays it unstamped), so every replica computes the
  same deadline;
- a leader proposes `lease_expire` with its `now` once its clock passes the
  earliest deadline: every replica then deletes the same keys at the same
  index, and no follower ever expires anything by its own clock;
- a new leader first commits `lease_promote` (every lease: full TTL again, plus
  its election timeout), and only after that entry has applied may it expire
  anything. The deadlines in the table were set on the old leader's clock, and
  an owner whose keep-alive was lost in the failover needs time to find the
  new leader: this is etcd's rule, and why a failover never expires a lease
  whose owner kept it alive.

Time-to-live and the list of leases are reads (`lease_read`), served like a
range read: behind a read barrier, at the node's own clock (the leader's in
every read mode but read_index; the remaining TTL is informative, never a
decision).
"""

from __future__ import annotations

import math
from typing import Any

from ..kv import KVStore
from ..raft import RaftNode

GRANT, KEEPALIVE = "lease_grant", "lease_keepalive"
TIME_TO_LIVE, LIST = "timetolive", "leases"  # the two kinds of lease_read


def min_ttl(election_timeout: float) -> int:
    """etcd's shortest lease (seconds): one and a half election timeouts, rounded
    up. A shorter lease could expire in the time a failover takes."""
    return max(1, math.ceil(1.5 * election_timeout))


def stamp(command: dict[str, Any], now_ms: int, shortest: int) -> dict[str, Any]:
    """The command the leader appends: a grant or keep-alive gets the leader's
    clock (and a grant a TTL of at least `shortest`, as etcd raises it);
    anything else is appended as given."""
    op = command.get("op")
    if op == KEEPALIVE:
        return {**command, "now": now_ms}
    if op == GRANT:
        ttl = command.get("ttl")
        if isinstance(ttl, int) and not isinstance(ttl, bool) and ttl < shortest:
            ttl = shortest  # etcd's too: 0 or less included (a non-integer: the store refuses)
        return {**command, "ttl": ttl, "now": now_ms}
    return command


def promote_command(now_ms: int, extend_ms: int) -> dict[str, Any]:
    return {"op": "lease_promote", "now": now_ms, "extend": extend_ms}


def expire_command(now_ms: int) -> dict[str, Any]:
    return {"op": "lease_expire", "now": now_ms}


class LeaseUpkeep:
    """What the leader of one term has proposed for leases: its promote entry
    (0: not yet) and its latest expire entry. Nothing new is proposed while
    either is unapplied, so one due lease yields one expire entry, not one per
    tick."""

    __slots__ = ("expire", "promote", "term")

    def __init__(self, term: int) -> None:
        self.term = term
        self.promote = 0
        self.expire = 0

    def step(self, core: RaftNode, kv: KVStore, now_ms: int) -> None:
        """Propose what is due at the leader's clock `now_ms` (we lead in `term`)."""
        if not len(kv.leases):
            return
        if not self.promote:
            extend = int(core.options.election_timeout[1] * 1000)
            self.promote = core.propose(promote_command(now_ms, extend))[0]
            return
        if self._waiting(kv):
            return
        due = kv.next_lease_deadline()
        if due is not None and due <= now_ms:
            self.expire = core.propose(expire_command(now_ms))[0]

    def wake_ms(self, kv: KVStore) -> int | None:
        """The leader's clock time (ms) at which `step` has something to do;
        None while nothing can be done before an entry applies (the apply
        wakes the driver) or there is no lease."""
        if not len(kv.leases):
            return None
        if not self.promote:
            return 0  # at once
        if self._waiting(kv):
            return None
        return kv.next_lease_deadline()

    def _waiting(self, kv: KVStore) -> bool:
        applied = kv.applied_index
        return applied < self.promote or applied < self.expire


def lease_read(kv: KVStore, args: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """Answer a lease read from the store as it is now, at the clock `now_ms`:
    {"kind": "timetolive", "id", "keys"} -> the store's time-to-live;
    {"kind": "leases"} -> {"ids": [...]}, soonest expiry first, as etcd lists them."""
    if args.get("kind") == LIST:
        table = kv.leases.leases
        ids = sorted(table, key=lambda i: (table[i][1], i))
        return {"ids": ids, "revision": kv.revision}
    out = kv.lease_time_to_live(int(args["id"]), now_ms, keys=bool(args.get("keys")))
    out["revision"] = kv.revision
    return out
