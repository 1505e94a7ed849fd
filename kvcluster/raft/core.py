"""The Raft consensus core: every rule of the protocol, and no I/O at all.

The caller feeds it events -- `tick(now)`, `step(message)`, `propose(data)`,
`read_index(ctx)` -- then calls `ready()` and must, in this order:
  1. persist `ready.snapshot`, `ready.hard_state` and `ready.entries`,
  2. send `ready.messages`,
  3. apply `ready.committed` to the state machine,
  4. call `advance(ready)` to say that step 1 is done,
and call `tick()` again no later than `next_deadline()`. Until `advance`, the
core counts nothing in the batch as persisted: a leader counts itself toward a
commit only for entries on its own disk (etcd-io/raft's `Ready`/`Advance`). If
persisting fails the caller must stop, never `advance`, never retry an fsync.
Time is whatever monotonic clock the caller passes in (seconds); randomness
comes from the injected `random.Random`. That is all the core needs, which is
why the same code runs in a node process and in the deterministic simulator.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .log import RaftLog
from .membership import Member, Membership, is_single_server_change
from .messages import Entry, EntryKind, Message, MessageType
from .progress import Progress, ReplicationState

MT = MessageType

# A message claiming a term this far beyond ours is dropped (dropping is always
# safe in Raft: the network may lose anything). No honest cluster jumps so far:
# with pre-vote a term moves only on a real election, and even a node that
# campaigns alone every 10 ms needs over a year for 2**32 terms. Without the
# bound one forged message could push every node's term to the 64-bit limit,
# where no next term can be encoded: a permanent outage, persisted in the WAL.
MAX_TERM_STEP = 1 << 32
MAX_TERM = (1 << 63) - 1  # terms, like every integer on the wire, fit a signed 64-bit field


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


# Bounds of the Raft timing settings (seconds).
MIN_HEARTBEAT = 0.001
MAX_ELECTION_TIMEOUT = 60.0
# A removed node has nothing left to time: its caller stops it.
REMOVED_IDLE = 3600.0


class ConfigError(ValueError):
    """A setting a node cannot work with; `setting` names it (as in `Cluster(...)`).

    Raised wherever configuration is checked (RaftOptions, NodeConfig,
    Cluster); the command line turns it into a usage error naming its flag.
    """

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(f"{setting} {reason}")
        self.setting = setting
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RaftOptions:
    election_timeout: tuple[float, float] = (0.5, 1.0)
    heartbeat_interval: float = 0.1
    pre_vote: bool = True
    check_quorum: bool = True
    max_append_entries: int = 1024  # entries in one AppendEntries
    max_append_bytes: int = 1 << 20  # and roughly this much payload (at least one entry)
    max_inflight: int = 4  # unacknowledged AppendEntries per follower
    lease_ratio: float = 0.9  # a lease lasts this fraction of the shortest election timeout
    auto_promote: bool = True  # promote a learner to voter once it has caught up

    def __post_init__(self) -> None:
        # A heartbeat below 1 ms or an infinite one spins the node's loop at 100%
        # CPU; an election timeout of hours never elects: both are refused here,
        # the one place every caller (CLI, Cluster, simulator) passes through.
        timeout = self.election_timeout
        pair = isinstance(timeout, tuple | list) and len(timeout) == 2
        lo, hi = timeout if pair else (math.nan, math.nan)
        if not (_seconds(lo) and _seconds(hi) and 0 < lo <= hi <= MAX_ELECTION_TIMEOUT):
            raise ConfigError(
                "election_timeout",
                f"must be (lo, hi) seconds with 0 < lo <= hi <= {MAX_ELECTION_TIMEOUT:g}, "
                f"got {timeout!r}",
            )
        hb = self.heartbeat_interval
        if not (_seconds(hb) and MIN_HEARTBEAT <= hb < lo):
            raise ConfigError(
                "heartbeat_interval",
                f"must be at least {MIN_HEARTBEAT:g} s and below the election timeout's low "
                f"end ({lo:g} s), got {hb!r}",
            )
        for name in ("max_append_entries", "max_append_bytes", "max_inflight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(name, f"must be an integer of at least 1, got {value!r}")
        if not (_seconds(self.lease_ratio) and 0 < self.lease_ratio < 1):
            # A lease as long as the election timeout could outlive the leadership.
            raise ConfigError("lease_ratio", f"must be in (0, 1), got {self.lease_ratio!r}")


def _seconds(value: object) -> bool:
    """A finite real number (bools are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class HardState:
    term: int = 0
    vote: str | None = None


@dataclass(frozen=True, slots=True)
class ReadState:
    """A read with id `ctx` may be served once the state machine has applied `index`."""

    ctx: int
    index: int


@dataclass(slots=True)
class Ready:
    hard_state: HardState | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    reads: list[ReadState] = field(default_factory=list)
    failed_reads: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    # A leader's snapshot to install (persist it, then restore the state
    # machine from it) before anything else in this batch; its Message carries
    # index, log_term and the payload.
    snapshot: Message | None = None

    def __bool__(self) -> bool:
        return bool(
            self.hard_state
            or self.entries
            or self.messages
            or self.committed
            or self.reads
            or self.failed_reads
            or self.events
            or self.snapshot
        )


class NotLeader(Exception):
    def __init__(self, leader: str | None) -> None:
        super().__init__(f"not the leader (leader: {leader})")
        self.leader = leader


class ConfigChangeError(Exception):
    pass


@dataclass(slots=True)
class _PendingRead:
    ctx: int
    origin: str  # our own id, or the follower that asked
    index: int
    round: int


BOOTSTRAP_TERM = 0  # the term of the bootstrap entry, and of nothing else


def bootstrap_entry(members: Membership) -> Entry:
    """The first entry of a new cluster's log: its initial members.

    Every bootstrapping node writes it, so a node restarted from its disk knows
    the membership without being told again (etcd writes the initial members
    into the log too). It has term 0, which no leader ever has (the first
    election is for term 1), and that is what makes it safe: no leader can
    ever write another entry at (1, 0), so the nodes' copies, identical since
    they are made from the same initial members, satisfy log matching, and
    the entry is committed by definition -- a node knows that from its own
    log, at bootstrap and after every restart. A node that joins later gets
    it from the leader like any other entry.
    """
    return Entry(1, BOOTSTRAP_TERM, EntryKind.CONFIG, members.to_dict())


class RaftNode:
    def __init__(
        self,
        node_id: str,
        *,
        options: RaftOptions | None = None,
        rng: random.Random,
        now: float = 0.0,
        incarnation: str = "",
        membership: Membership | None = None,
        hard_state: HardState | None = None,
        entries: Iterable[Entry] = (),
        snapshot_index: int = 0,
        snapshot_term: int = 0,
        bootstrap: Membership | None = None,
    ) -> None:
        """`membership` is the membership before the log's first entry (the
        snapshot's, or none); `entries` and the rest are what was persisted.
        `bootstrap`: the initial members of a new cluster, written into the log
        as its first entry if the node has persisted nothing (see
        `bootstrap_entry`); ignored otherwise, the log has it then."""
        self.id = node_id
        self.incarnation = incarnation
        self.options = options or RaftOptions()
        self.rng = rng
        self.now = now
        hs = hard_state or HardState()
        self.term = hs.term
        self.vote = hs.vote
        self._saved_hard_state = hs
        self.log = RaftLog(entries, snapshot_index, snapshot_term)
        self.log.unstable_from = self.log.last_index() + 1  # given to us already persisted
        self.commit = snapshot_index
        self.applied = snapshot_index  # highest index handed out for applying
        self.role = Role.FOLLOWER
        self.leader_id: str | None = None
        # Set once this life of the node is known to be out of the cluster (a
        # committed configuration left it out): it then does nothing more, and
        # its caller shuts it down. removed_at is that configuration's index;
        # removed_by the node that said so (None: we applied it ourselves).
        self.removed = False
        self.removed_at = 0
        self.removed_by: str | None = None
        self._base_membership = membership or Membership()
        self._config_entries: list[tuple[int, Membership]] = []
        # Only a node that has persisted nothing at all: a directory with a term
        # but no log (written before the members went into the log) must get its
        # first entry from the leader, not make one up that the leader would cut.
        if bootstrap is not None and self.log.last_index() == 0 and self.term == 0:
            # Unstable: the first ready() hands it out to persist, like any entry.
            self.log.append(bootstrap_entry(bootstrap))
            self._base_membership = Membership()
        for e in self.log.slice(self.log.first_index(), self.log.last_index() + 1):
            if e.kind is EntryKind.CONFIG:
                self._config_entries.append((e.index, Membership.from_dict(e.data)))
        while self.log.term_at(self.commit + 1) == BOOTSTRAP_TERM:
            self.commit += 1  # committed by definition (see bootstrap_entry)
        self.progress: dict[str, Progress] = {}
        self._votes: dict[str, bool] = {}
        self._msgs: list[Message] = []
        self._events: list[dict[str, Any]] = []
        self._reads: list[ReadState] = []
        self._failed_reads: list[int] = []
        self._pending_reads: list[_PendingRead] = []
        self._forwarded_reads: set[int] = set()
        self._round = 0  # heartbeat rounds sent in this term (ReadIndex, lease)
        self._round_sent_at: dict[int, float] = {}
        self._need_round = False
        self._lease_until = 0.0
        self._snapshot_to_install: Message | None = None
        self._last_leader_contact = -1e18
        # Restarted from persisted state, we may have answered a leader just
        # before: honour its lease as if we had just heard from it.
        self._started_at = now if hs.term > 0 else -1e18
        self._heartbeat_deadline = 0.0
        self._check_quorum_deadline = 0.0
        self._election_deadline = 0.0
        self._election_timeout = 0.0
        self._reset_election_timer()

    # ------------------------------------------------------------------ queries

    @property
    def membership(self) -> Membership:
        return self._config_entries[-1][1] if self._config_entries else self._base_membership

    def membership_at(self, index: int) -> Membership:
        """The membership in effect once the log up to `index` applies."""
        for i, m in reversed(self._config_entries):
            if i <= index:
                return m
        return self._base_membership

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def is_voter(self) -> bool:
        return self.membership.is_voter(self.id, self.incarnation)

    def next_deadline(self) -> float:
        if self.removed:
            return self.now + REMOVED_IDLE
        if self.role is Role.LEADER:
            if self.options.check_quorum:
                return min(self._heartbeat_deadline, self._check_quorum_deadline)
            return self._heartbeat_deadline
        return self._election_deadline

    def lease_valid(self) -> bool:
        """True while no other node can have been elected (needs check-quorum)."""
        return (
            self.role is Role.LEADER
            and self.options.check_quorum
            and self._committed_in_term()
            and (self.now < self._lease_until or self.membership.voters <= {self.id})
        )

    def status(self, now: float | None = None) -> dict[str, Any]:
        """What this node knows, for people and tools (the live view draws it).

        `now` (the caller's clock) makes the election timer's age current even
        when no input has reached the core for a while (a cut-off follower); by
        default it is the time of the last input. The timer and the progress are
        only meaningful on one side: a leader has no election timer, and only a
        leader tracks its followers' logs, so each is None on the other side.
        """
        timer = self.role is not Role.LEADER and not self.removed
        reset_at = self._election_deadline - self._election_timeout
        return {
            "id": self.id,
            "role": "removed" if self.removed else self.role.value,
            "term": self.term,
            "vote": self.vote,
            "leader": self.leader_id,
            "commit_index": self.commit,
            "last_index": self.log.last_index(),
            "voter": self.is_voter(),
            "removed": self.removed,
            "election_elapsed": (
                max(0.0, (self.now if now is None else now) - reset_at) if timer else None
            ),
            "election_timeout": self._election_timeout if timer else None,
            "progress": (
                {
                    peer: {"match": pr.match, "next": pr.next, "state": pr.state.value}
                    for peer, pr in self.progress.items()
                }
                if self.role is Role.LEADER
                else None
            ),
        }

    # ------------------------------------------------------------------ inputs

    def tick(self, now: float) -> None:
        """Let time pass; fire whichever timers are due."""
        self.now = now
        if self.removed:
            return
        if self.role is Role.LEADER:
            if now >= self._heartbeat_deadline:
                self._broadcast_heartbeat()
            if self.options.check_quorum and now >= self._check_quorum_deadline:
                self._check_quorum()
        elif now >= self._election_deadline:
            if self.is_voter():
                self._campaign(pre_vote=self.options.pre_vote)
            else:
                self._ask_if_removed()
                self._reset_election_timer()

    def campaign(self) -> None:
        """Start an election now (tests and leadership experiments)."""
        if self.role is not Role.LEADER and self.is_voter() and not self.removed:
            self._campaign(pre_vote=self.options.pre_vote)

    def propose(self, data: Any) -> tuple[int, int]:
        """Append a command; returns its (index, term). Raises NotLeader."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        return self._append(EntryKind.NORMAL, data)

    def propose_membership(self, new: Membership) -> tuple[int, int]:
        """Append a membership change: one voter added or removed at a time."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._config_entries and self._config_entries[-1][0] > self.commit:
            raise ConfigChangeError("another membership change is still in progress")
        if not self._committed_in_term():
            # An earlier leader may have committed a change we never saw; ours now
            # could let two disjoint majorities form (Ongaro, raft-dev, 2015).
            raise ConfigChangeError("no entry of this term committed yet")
        if not is_single_server_change(self.membership, new):
            raise ConfigChangeError("only one voter may be added or removed at a time")
        return self._append(EntryKind.CONFIG, new.to_dict())

    def read_index(self, ctx: int, *, lease: bool = False) -> None:
        """Ask to serve a linearizable read; its ReadState (or failure) comes in a
        later `ready()`. A follower asks the leader; the leader confirms it is
        still leader with one heartbeat round shared by every waiting read, or
        (lease=True) answers at once while its check-quorum lease holds."""
        if self.removed:
            self._failed_reads.append(ctx)
        elif self.role is Role.LEADER:
            if lease and self.lease_valid():
                self._reads.append(ReadState(ctx, self.commit))
            else:
                self._queue_read(ctx, self.id)
        elif self.leader_id is not None:
            self._forwarded_reads.add(ctx)
            self._send(MT.READ_INDEX, self.leader_id, ctx=ctx)
        else:
            self._failed_reads.append(ctx)

    def compact(self, index: int) -> None:
        """The caller has saved a snapshot covering `index`: forget the log up to
        there. Followers that need those entries will be sent the snapshot."""
        index = min(index, self.applied)
        if index <= self.log.snapshot_index:
            return
        self._base_membership = self.membership_at(index)
        self._config_entries = [(i, m) for i, m in self._config_entries if i > index]
        self.log.compact(index)

    def step(self, m: Message) -> None:
        """Handle one message from a peer."""
        if self.removed or m.term > self.term + MAX_TERM_STEP or m.term > MAX_TERM:
            return
        if m.type is MT.REMOVED:
            self._on_removed(m)
            return
        if m.type in _FROM_MEMBERS and not self.membership.names(m.src, m.incarnation):
            removed_at = self._removal_of(m.src, m.incarnation)
            if removed_at:
                # A life of a node our committed log removed: tell it, and let it
                # disturb nothing (its higher term would depose us otherwise).
                self._send(
                    MT.REMOVED,
                    m.src,
                    index=removed_at,
                    log_term=self.log.term_at(removed_at) or 0,
                    snapshot={
                        "membership": self.membership.to_dict(),
                        "incarnation": m.incarnation,
                    },
                )
                return
        if m.term > self.term:
            if m.type in (MT.VOTE, MT.PRE_VOTE) and self._in_lease():
                return  # a leader is alive: do not let a stray candidate depose it
            if m.type is MT.PRE_VOTE or (m.type is MT.PRE_VOTE_RESP and not m.reject):
                pass  # pre-votes speak of a future term and change nothing
            elif m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                self._become_follower(m.term, m.src)
            else:
                # A vote request alone does not reset a follower's timer (only
                # granting the vote does): a candidate with a stale log must not
                # keep the up-to-date nodes from ever timing out.
                self._become_follower(m.term, None, keep_timer=m.type is MT.VOTE)
        elif m.term < self.term:
            if m.type in (MT.APPEND, MT.HEARTBEAT, MT.SNAPSHOT):
                # Tell a stale leader about the newer term so it steps down.
                self._send(MT.APPEND_RESP, m.src, reject=True)
            elif m.type is MT.PRE_VOTE:
                self._send(MT.PRE_VOTE_RESP, m.src, reject=True)
            elif m.type is MT.VOTE:
                self._send(MT.VOTE_RESP, m.src, reject=True)
            return
        handler = _HANDLERS.get(m.type)
        if handler is not None:
            handler(self, m)

    def has_ready(self) -> bool:
        """Whether ready() has something besides AppendEntries a leader would
        send anyway: what an advance() can unlock (a commit) or inputs left."""
        return bool(
            self.commit > self.applied
            or self._msgs
            or self._reads
            or self._failed_reads
            or self._events
            or self._snapshot_to_install is not None
            or self.log.unstable_from <= self.log.last_index()
            or HardState(self.term, self.vote) != self._saved_hard_state
        )

    def ready(self) -> Ready:
        """Collect everything the caller must now persist, send and apply."""
        if self.role is Role.LEADER:
            for peer, pr in self.progress.items():
                self._send_appends(peer, pr)
            if self._need_round:
                self._broadcast_heartbeat()
        rd = Ready()
        hs = HardState(self.term, self.vote)
        if hs != self._saved_hard_state:
            rd.hard_state = self._saved_hard_state = hs
        rd.entries = self.log.take_unstable()
        if self.commit > self.applied:
            rd.committed = self.log.slice(self.applied + 1, self.commit + 1)
            if self._config_entries and not self.removed:
                self._check_applied_removal(self.applied, self.commit)
            self.applied = self.commit
        rd.messages, self._msgs = self._msgs, []
        rd.reads, self._reads = self._reads, []
        rd.failed_reads, self._failed_reads = self._failed_reads, []
        rd.events, self._events = self._events, []
        rd.snapshot, self._snapshot_to_install = self._snapshot_to_install, None
        return rd

    def advance(self, rd: Ready) -> None:
        """The caller has persisted `rd`'s snapshot, hard state and entries.

        Only now does a leader count those entries as its own copy toward a
        commit (a follower's acknowledgements already wait for the disk: they
        are sent after it). Commits this unlocks come out in the next ready()."""
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if self.role is Role.LEADER:
            self._maybe_commit()

    # ------------------------------------------------------------------ roles

    def _reset_election_timer(self) -> None:
        lo, hi = self.options.election_timeout
        self._election_timeout = self.rng.uniform(lo, hi)  # kept for status()
        self._election_deadline = self.now + self._election_timeout

    def _in_lease(self) -> bool:
        """With check-quorum, refuse to help depose a leader we heard from within
        the shortest election timeout: the leader's lease rests on that."""
        if not self.options.check_quorum:
            return False
        lo = self.options.election_timeout[0]
        if self.now - self._started_at < lo:
            return True  # we may have acknowledged a leader just before restarting
        if self.leader_id is None:
            return False
        if self.role is Role.LEADER:
            return True
        return self.now - self._last_leader_contact < lo

    def _become_follower(self, term: int, leader: str | None, *, keep_timer: bool = False) -> None:
        was = self.role
        if term > self.term:
            self.term, self.vote = term, None
        if was is Role.LEADER:
            self._abandon_leadership()
        self.role = Role.FOLLOWER
        self._set_leader(leader)
        if was is not Role.FOLLOWER or not keep_timer:
            self._reset_election_timer()
        if was is not Role.FOLLOWER:
            self._event("role", role=self.role.value)

    def _set_leader(self, leader: str | None) -> None:
        if leader != self.leader_id:
            self.leader_id = leader
            # Reads forwarded to the old leader will never be answered.
            self._failed_reads.extend(self._forwarded_reads)
            self._forwarded_reads.clear()
            if leader is not None:
                self._event("leader", leader=leader)

    def _abandon_leadership(self) -> None:
        for r in self._pending_reads:
            if r.origin == self.id:
                self._failed_reads.append(r.ctx)
            else:
                self._send(MT.READ_INDEX_RESP, r.origin, ctx=r.ctx, reject=True)
        self._pending_reads.clear()
        self.progress.clear()
        self._round_sent_at.clear()
        self._need_round = False
        self._lease_until = 0.0

    def _campaign(self, *, pre_vote: bool) -> None:
        self._reset_election_timer()
        if self.term >= MAX_TERM:
            self._event("term_exhausted")  # unreachable without 2**31 forged messages
            return
        self._set_leader(None)
        if pre_vote:
            self.role = Role.PRE_CANDIDATE
            term = self.term + 1
        else:
            self.term += 1
            self.vote = self.id
            self.role = Role.CANDIDATE
            term = self.term
        self._event("campaign", role=self.role.value, for_term=term)
        self._votes = {self.id: True}
        kind = MT.PRE_VOTE if pre_vote else MT.VOTE
        for v in sorted(self.membership.voters):  # sets iterate in hash order: replay
            if v != self.id:
                self._send(
                    kind, v, term=term, index=self.log.last_index(), log_term=self.log.last_term()
                )
        self._tally()

    def _tally(self) -> None:
        granted = sum(1 for v, ok in self._votes.items() if ok and v in self.membership.voters)
        rejected = len(self._votes) - granted
        quorum = self.membership.quorum()
        if granted >= quorum:
            if self.role is Role.PRE_CANDIDATE:
                self._campaign(pre_vote=False)
            else:
                self._become_leader()
        elif rejected >= quorum:
            self._become_follower(self.term, None)

    def _become_leader(self) -> None:
        self.role = Role.LEADER
        self._set_leader(self.id)
        self._event("role", role=self.role.value)
        last = self.log.last_index()
        self.progress = {
            p: Progress(next=last + 1, incarnation=m.incarnation)
            for p, m in self.membership.members.items()
            if p != self.id
        }
        self._round = 0
        self._round_sent_at = {}
        self._heartbeat_deadline = self.now
        self._check_quorum_deadline = self.now + self.options.election_timeout[0]
        self._append(EntryKind.NOOP, None)

    def _check_quorum(self) -> None:
        voters = self.membership.voters
        active = sum(1 for p, pr in self.progress.items() if p in voters and pr.recent_active) + (
            self.id in voters
        )
        for pr in self.progress.values():
            pr.recent_active = False
        self._check_quorum_deadline = self.now + self.options.election_timeout[0]
        if active < self.membership.quorum():
            self._event("step_down", reason="check_quorum")
            self._become_follower(self.term, None)

    # ------------------------------------------------------------------ log

    def _append(self, kind: EntryKind, data: Any) -> tuple[int, int]:
        index = self.log.last_index() + 1
        self.log.append(Entry(index, self.term, kind, data))
        if kind is EntryKind.CONFIG:
            self._config_entries.append((index, Membership.from_dict(data)))
            self._on_membership_change()
        return index, self.term

    def _on_membership_change(self) -> None:
        """Membership takes effect as soon as it is in the log (Raft thesis, 4.1)."""
        if self.role is not Role.LEADER:
            return
        members = self.membership.members
        for p in list(self.progress):
            if p not in members:
                del self.progress[p]
        for p, member in members.items():
            pr = self.progress.get(p)
            if p != self.id and (pr is None or pr.incarnation != member.incarnation):
                # New, or back with no memory: what we knew of its log is void.
                self.progress[p] = Progress(
                    next=self.log.last_index() + 1, incarnation=member.incarnation
                )

    def _maybe_commit(self) -> None:
        voters = self.membership.voters
        if not voters:
            return
        matches = sorted(
            (self.log.stable_index if v == self.id else self.progress[v].match)
            for v in voters
            if v == self.id or v in self.progress
        )
        if len(matches) < len(voters):
            matches = [0] * (len(voters) - len(matches)) + matches
        n = matches[len(voters) - self.membership.quorum()]
        # Figure 8: only an entry of our own term is committed by counting replicas.
        if n > self.commit and self.log.term_at(n) == self.term:
            self._advance_commit(n)

    def _advance_commit(self, index: int) -> None:
        self.commit = index
        self._event("commit", index=index)
        if self.role is Role.LEADER:
            self._on_leader_commit()

    def _on_leader_commit(self) -> None:
        if self._pending_reads and self._committed_in_term():
            for r in self._pending_reads:
                if r.index == 0:  # queued before our first commit in this term
                    r.index = self.commit
            self._release_reads()
        m = self.membership
        config_committed = not self._config_entries or self._config_entries[-1][0] <= self.commit
        if config_committed and self.id not in m.voters:
            self._event("step_down", reason="removed")
            self._become_follower(self.term, None)
            return
        if config_committed and self.options.auto_promote and self._committed_in_term():
            for p in sorted(m.learners):
                pr = self.progress.get(p)
                if (
                    pr is not None
                    and pr.state is ReplicationState.REPLICATE  # it has answered us
                    and pr.match + self.options.max_append_entries >= self.commit
                ):
                    self.propose_membership(m.promoted(p))
                    break

    # ------------------------------------------------------------------ removal

    def _check_applied_removal(self, after: int, upto: int) -> None:
        """Entries after..upto are handed out to apply: if one of them is a
        configuration that leaves this life of the node out (and no later one
        in our log takes it back), the node is removed. Only a committed
        configuration counts: an appended one may still be cut from the log,
        and the node would have stopped for nothing -- perhaps as a voter the
        cluster still counts on."""
        me, inc = self.id, self.incarnation
        if self.membership.names(me, inc):
            return
        for index, m in self._config_entries:
            left_out = after < index <= upto and not m.names(me, inc)
            if left_out and self.membership_at(index - 1).names(me, inc):
                self._become_removed(index, None)
                return

    def _ask_if_removed(self) -> None:
        """Our latest configuration leaves this life of the node out, and an
        earlier one named it: we hold our removal, perhaps without its commit,
        and no leader writes to us any more (a leader drops a removed follower
        as soon as the change is in its log; a restarted node has no leader).
        Ask the members with a pre-vote, which changes nothing anywhere; one
        whose log committed the removal answers REMOVED."""
        me, inc = self.id, self.incarnation
        if self.membership.names(me, inc):
            return  # a learner on its way in: the leader writes to it
        was_member = self._base_membership.names(me, inc) or any(
            c.names(me, inc) for _, c in self._config_entries
        )
        if not was_member:
            return
        last, last_term = self.log.last_index(), self.log.last_term()
        for v in sorted(self.membership.voters):
            if v != me:
                self._send(MT.PRE_VOTE, v, term=self.term + 1, index=last, log_term=last_term)

    def removal_of(self, node_id: str, incarnation: str) -> int:
        """The index of the committed configuration that removed this life of
        `node_id`, or 0 (see `_removal_of`)."""
        return self._removal_of(node_id, incarnation)

    def _removal_of(self, node_id: str, incarnation: str) -> int:
        """The index of the committed configuration that removed this life of
        `node_id` (it was a member before, and no configuration in our log
        names it since), or 0 if our log shows no such removal: a node we
        never knew, one still being added, or one whose removal is not
        committed yet. (A removal older than our snapshot is forgotten:
        the snapshot keeps only the membership of its index.)"""
        named = self._base_membership.names(node_id, incarnation)
        removed_at = 0
        for index, m in self._config_entries:
            now_named = m.names(node_id, incarnation)
            if named and not now_named:
                removed_at = index
            elif now_named:
                removed_at = 0
            named = now_named
        return removed_at if not named and removed_at <= self.commit else 0

    def _on_removed(self, m: Message) -> None:
        """A node whose log committed our removal says so: stop, unless the
        message is about another life of ours or our own log has us back."""
        payload = m.snapshot if isinstance(m.snapshot, dict) else {}
        if payload.get("incarnation") != self.incarnation or m.index < 1:
            return
        me, inc = self.id, self.incarnation
        if self.log.snapshot_index >= m.index and self._base_membership.names(me, inc):
            return
        if any(i > m.index and c.names(me, inc) for i, c in self._config_entries):
            return
        self._become_removed(m.index, m.src)

    def _become_removed(self, index: int, by: str | None) -> None:
        if self.role is Role.LEADER:
            self._abandon_leadership()
        self.role = Role.FOLLOWER
        self._set_leader(None)
        self.removed, self.removed_at, self.removed_by = True, index, by
        self._event("removed", index=index, by=by)

    def _may_vote(self) -> bool:
        """Raft servers vote whatever their latest configuration says (thesis 4.1):
        one left out by an uncommitted change may be needed for another's quorum.
        Only a node that no configuration it knows names a voter under its
        incarnation -- one that lost its state -- must not vote."""
        return self._base_membership.is_voter(self.id, self.incarnation) or any(
            m.is_voter(self.id, self.incarnation) for _, m in self._config_entries
        )

    def _committed_in_term(self) -> bool:
        return self.log.term_at(self.commit) == self.term

    def _truncated_membership(self, from_index: int) -> None:
        while self._config_entries and self._config_entries[-1][0] >= from_index:
            self._config_entries.pop()

    # ------------------------------------------------------------------ sending

    def _send(self, kind: MessageType, to: str, *, term: int | None = None, **fields: Any) -> None:
        self._msgs.append(
            Message(
                kind,
                self.term if term is None else term,
                self.id,
                to,
                incarnation=self.incarnation,
                **fields,
            )
        )

    def _send_appends(self, peer: str, pr: Progress) -> None:
        opts = self.options
        last = self.log.last_index()
        while pr.can_send(opts.max_inflight):
            prev = pr.next - 1
            prev_term = self.log.term_at(prev)
            if prev_term is None:  # compacted away: only a snapshot can help
                self._send(
                    MT.SNAPSHOT,
                    peer,
                    index=self.log.snapshot_index,
                    log_term=self.log.snapshot_term,
                    commit=self.commit,
                )
                pr.snapshot_sent(self.now)
                return
            has_entries = pr.next <= last
            if (
                not has_entries
                and pr.state is ReplicationState.REPLICATE
                and pr.sent_commit >= self.commit
            ):
                return
            entries = _within_bytes(
                self.log.slice(pr.next, pr.next + opts.max_append_entries), opts.max_append_bytes
            )
            self._send(
                MT.APPEND, peer, index=prev, log_term=prev_term, entries=entries, commit=self.commit
            )
            pr.sent_commit = self.commit
            if entries:
                pr.sent(entries[-1].index)
            elif pr.state is ReplicationState.PROBE:
                pr.probe_sent = True
            if not entries or pr.state is ReplicationState.PROBE:
                return

    def _broadcast_heartbeat(self) -> None:
        self._round += 1
        self._round_sent_at[self._round] = self.now
        self._need_round = False
        self._heartbeat_deadline = self.now + self.options.heartbeat_interval
        for peer, pr in self.progress.items():
            commit = min(pr.match, self.commit)
            term = self.log.term_at(commit) or 0
            self._send(MT.HEARTBEAT, peer, commit=commit, log_term=term, ctx=self._round)
            pr.heartbeat_round, pr.next_at_heartbeat = self._round, pr.next
        self._on_round_acked()

    # ------------------------------------------------------------------ reads

    def _queue_read(self, ctx: int, origin: str) -> None:
        index = self.commit if self._committed_in_term() else 0
        self._pending_reads.append(_PendingRead(ctx, origin, index, self._round + 1))
        self._need_round = True

    def _confirmed_round(self) -> int:
        """The newest heartbeat round a quorum of voters has answered."""
        voters = self.membership.voters
        acks = sorted(
            (self._round if v == self.id else self.progress[v].acked_round)
            for v in voters
            if v == self.id or v in self.progress
        )
        if len(acks) < len(voters):
            acks = [0] * (len(voters) - len(acks)) + acks
        return acks[len(voters) - self.membership.quorum()] if voters else 0

    def _on_round_acked(self) -> None:
        confirmed = self._confirmed_round()
        sent_at = self._round_sent_at.get(confirmed)
        if sent_at is not None:
            lo = self.options.election_timeout[0]
            self._lease_until = max(self._lease_until, sent_at + lo * self.options.lease_ratio)
            for r in [r for r in self._round_sent_at if r < confirmed]:
                del self._round_sent_at[r]
        self._release_reads()

    def _release_reads(self) -> None:
        if not self._pending_reads or not self._committed_in_term():
            return
        confirmed = self._confirmed_round()
        waiting: list[_PendingRead] = []
        for r in self._pending_reads:
            if r.round > confirmed or r.index == 0:
                waiting.append(r)
            elif r.origin == self.id:
                self._reads.append(ReadState(r.ctx, r.index))
            else:
                self._send(MT.READ_INDEX_RESP, r.origin, ctx=r.ctx, index=r.index)
        self._pending_reads = waiting

    # ------------------------------------------------------------------ handlers

    def _on_vote(self, m: Message) -> None:
        pre = m.type is MT.PRE_VOTE
        up_to_date = (m.log_term, m.index) >= (self.log.last_term(), self.log.last_index())
        if pre:
            heard_leader = self.role is Role.LEADER or (
                self.leader_id is not None
                and self.now - self._last_leader_contact < self.options.election_timeout[0]
            )
            can = m.term > self.term and not heard_leader
            if can and self.role is Role.PRE_CANDIDATE and m.term == self.term + 1:
                # Two nodes that time out together would both pass the pre-vote
                # and split the real one. Of two pre-candidates, only the one
                # with the better log (equal logs: the larger id) has the other's.
                theirs = (m.log_term, m.index, m.src)
                can = theirs > (self.log.last_term(), self.log.last_index(), self.id)
        else:
            can = self.vote == m.src or (self.vote is None and self.leader_id is None)
        grant = can and up_to_date and self._may_vote()
        resp = MT.PRE_VOTE_RESP if pre else MT.VOTE_RESP
        term = m.term if pre and grant else self.term
        self._send(resp, m.src, term=term, reject=not grant)
        if pre and grant and self.role is Role.PRE_CANDIDATE:
            # We back the better pre-candidate: going on too would still split
            # the vote where the others grant pre-votes to both (5 nodes and up).
            self._become_follower(self.term, None)
        if grant and not pre:
            self.vote = m.src
            self._reset_election_timer()
            self._event("vote", to=m.src)

    def _on_vote_resp(self, m: Message) -> None:
        expected = Role.PRE_CANDIDATE if m.type is MT.PRE_VOTE_RESP else Role.CANDIDATE
        if self.role is not expected:
            return
        self._votes[m.src] = not m.reject
        self._tally()

    def _heard_from_leader(self, m: Message) -> None:
        if self.role is not Role.FOLLOWER:
            self._become_follower(m.term, m.src)
        elif self.leader_id == m.src:
            gap = self.now - self._last_leader_contact
            if gap > 2 * self.options.heartbeat_interval:
                # A heartbeat came late (a stalled leader, a busy follower, a
                # slow network): rare in a healthy cluster, and what precedes
                # a spurious election, so it is worth an event.
                self._event("leader_silent", leader=m.src, gap=round(gap, 4))
        self._set_leader(m.src)
        self._last_leader_contact = self.now
        self._reset_election_timer()

    def _on_append(self, m: Message) -> None:
        self._heard_from_leader(m)
        prev, prev_term, entries = m.index, m.log_term, m.entries
        if prev < self.commit:
            # A duplicate or late message: what we committed matches the leader's
            # log, so continue from our commit index.
            entries = [e for e in entries if e.index > self.commit]
            prev, prev_term = self.commit, self.log.term_at(self.commit) or 0
        if not self.log.matches(prev, prev_term):
            last = self.log.last_index()
            if m.index > last:
                self._send(MT.APPEND_RESP, m.src, index=m.index, reject=True, hint=last + 1)
            else:
                conflict = self.log.term_at(m.index) or 0
                first = self.log.first_index_of_term(m.index, self.commit)
                self._send(
                    MT.APPEND_RESP,
                    m.src,
                    index=m.index,
                    reject=True,
                    hint=first,
                    log_term=conflict,
                )
            return
        changed = self.log.merge(prev, entries)
        if changed:
            self._truncated_membership(changed)
            for e in entries:
                if e.kind is EntryKind.CONFIG and e.index >= changed:
                    self._config_entries.append((e.index, Membership.from_dict(e.data)))
        last_new = prev + len(entries)
        if min(m.commit, last_new) > self.commit:
            self._advance_commit(min(m.commit, last_new))
        self._send(MT.APPEND_RESP, m.src, index=last_new)

    def _on_append_resp(self, m: Message) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self.progress.get(m.src)
        if pr is None or m.incarnation != pr.incarnation:
            return  # unknown, or another life of that node: its log is not the one we track
        pr.recent_active = True
        if not m.reject:
            if pr.acked(m.index):
                self._maybe_commit()
                if self.role is Role.LEADER and m.src in self.membership.learners:
                    self._on_leader_commit()  # maybe the learner caught up
            return
        if pr.state is ReplicationState.SNAPSHOT:
            return  # an answer to what we sent before the snapshot
        stale = (
            m.index <= pr.match
            if pr.state is ReplicationState.REPLICATE
            else m.index != pr.next - 1
        )
        if stale:
            return
        if m.log_term > 0:
            ours = self.log.last_index_of_term(m.log_term)
            nxt = ours + 1 if ours > 0 else m.hint
        else:
            nxt = m.hint
        nxt = min(nxt, m.index)
        if not (m.log_term == 0 and m.hint <= pr.match):  # unless the follower lost its log
            nxt = max(nxt, pr.match + 1)
        pr.back_off(nxt)

    def _on_snapshot(self, m: Message) -> None:
        self._heard_from_leader(m)
        if m.index <= self.commit:
            self._send(MT.APPEND_RESP, m.src, index=self.commit)
            return
        if self.log.matches(m.index, m.log_term):
            # We hold that entry already: keep what follows (Raft's rule) and
            # let the entries apply as usual.
            self._advance_commit(m.index)
            self._send(MT.APPEND_RESP, m.src, index=m.index)
            return
        self.log = RaftLog((), m.index, m.log_term)
        self._base_membership = Membership.from_dict(m.snapshot["membership"])
        self._config_entries = []
        self.commit = self.applied = m.index
        self._snapshot_to_install = m
        self._event("snapshot", index=m.index, snapshot_term=m.log_term)
        self._send(MT.APPEND_RESP, m.src, index=m.index)

    def _on_heartbeat(self, m: Message) -> None:
        self._heard_from_leader(m)
        # Only if our entry there is the leader's (then, by log matching, so is
        # all before it): a node that lost its disk may hold another leader's
        # entries up to the index this leader believes it acknowledged.
        if m.commit > self.commit and self.log.matches(m.commit, m.log_term):
            self._advance_commit(m.commit)
        self._send(MT.HEARTBEAT_RESP, m.src, ctx=m.ctx)

    def _on_heartbeat_resp(self, m: Message) -> None:
        if self.role is not Role.LEADER:
            return
        pr = self.progress.get(m.src)
        if pr is None or m.incarnation != pr.incarnation:
            return  # another life of that node cannot vouch for our leadership
        pr.recent_active = True
        if m.ctx > pr.acked_round:
            pr.acked_round = m.ctx
            self._on_round_acked()
        if pr.state is ReplicationState.PROBE:
            pr.probe_sent = False  # the follower is reachable: probe again
        elif pr.state is ReplicationState.SNAPSHOT:
            if self.now - pr.snapshot_sent_at > 2 * self.options.election_timeout[1]:
                pr.back_off(pr.next)  # the snapshot was lost: send it again
        elif m.ctx == pr.heartbeat_round and pr.match < pr.next_at_heartbeat - 1:
            # Links are FIFO, so everything sent before this heartbeat should
            # have been acknowledged before its answer: an AppendEntries was lost.
            pr.back_off(pr.match + 1)

    def _on_read_index(self, m: Message) -> None:
        if self.role is Role.LEADER:
            self._queue_read(m.ctx, m.src)
        else:
            self._send(MT.READ_INDEX_RESP, m.src, ctx=m.ctx, reject=True)

    def _on_read_index_resp(self, m: Message) -> None:
        if m.ctx not in self._forwarded_reads:
            return
        self._forwarded_reads.discard(m.ctx)
        if m.reject:
            self._failed_reads.append(m.ctx)
        else:
            self._reads.append(ReadState(m.ctx, m.index))

    # ------------------------------------------------------------------ events

    def _event(self, kind: str, **fields: Any) -> None:
        self._events.append({"event": kind, "term": self.term, **fields})


def _payload_size(data: Any) -> int:
    """A cheap estimate of an entry's encoded size: strings dominate kv commands."""
    if isinstance(data, dict):
        return 16 + sum(len(v) if isinstance(v, str) else 8 for v in data.values())
    if isinstance(data, str):
        return len(data)
    return 16


def _within_bytes(entries: list[Entry], budget: int) -> list[Entry]:
    """The longest prefix of `entries` (at least one) whose payload fits `budget`,
    so a batch of large values never exceeds what a peer will accept in one body."""
    total = 0
    for i, e in enumerate(entries):
        total += _payload_size(e.data)
        if total > budget and i > 0:
            return entries[:i]
    return entries


# What a member sends: from a node our log no longer names, any of these may
# be answered with REMOVED. (What only a leader sends is left alone: a
# removed node that still believes it leads finds out once it steps down.)
_FROM_MEMBERS = frozenset(
    {
        MT.PRE_VOTE,
        MT.VOTE,
        MT.APPEND_RESP,
        MT.HEARTBEAT_RESP,
        MT.READ_INDEX,
        MT.PRE_VOTE_RESP,
        MT.VOTE_RESP,
        MT.READ_INDEX_RESP,
    }
)

_HANDLERS = {
    MT.VOTE: RaftNode._on_vote,
    MT.PRE_VOTE: RaftNode._on_vote,
    MT.VOTE_RESP: RaftNode._on_vote_resp,
    MT.PRE_VOTE_RESP: RaftNode._on_vote_resp,
    MT.APPEND: RaftNode._on_append,
    MT.APPEND_RESP: RaftNode._on_append_resp,
    MT.HEARTBEAT: RaftNode._on_heartbeat,
    MT.HEARTBEAT_RESP: RaftNode._on_heartbeat_resp,
    MT.READ_INDEX: RaftNode._on_read_index,
    MT.READ_INDEX_RESP: RaftNode._on_read_index_resp,
    MT.SNAPSHOT: RaftNode._on_snapshot,
}

__all__ = [
    "BOOTSTRAP_TERM",
    "ConfigChangeError",
    "ConfigError",
    "HardState",
    "Member",
    "NotLeader",
    "RaftNode",
    "RaftOptions",
    "ReadState",
    "Ready",
    "Role",
    "bootstrap_entry",
]
