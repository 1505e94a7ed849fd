"""A deterministic in-process network of Raft cores: the simulator's engine.

`RaftNet` runs several `RaftNode`s against a simulated clock and a simulated
network, all driven by one seeded `random.Random`, so a schedule replays exactly
from its seed. It plays the role the node process plays in production: after
every input it drains `ready()` and does what the core asks, in order --
persist (into a per-node `Storage` that survives crashes), send (into the
network), apply (into a per-node list of applied entries, then the
`on_committed` hook, where `kvcluster.sim.cluster` applies to a kv store).

Time only moves when asked (`advance`, `run_until`); the loop is event driven:
it jumps to the next node deadline, message delivery or `schedule()`d callback,
so simulated seconds cost little. With the default latency of 0 every message
is delivered at the instant it is sent, in FIFO order per link. A message is
lost if its link is blocked when it is sent or when it would arrive.

Faults: `crash`/`restart` (optionally amnesiac: storage lost, new incarnation),
`partition`/`isolate`/`block`/`heal` (`block(a, b, both=False)` is a one-way
cut), a random drop/duplicate/long-delay rate, reordering, per-node clocks that
drift and step forward (`clock_rate`, `step_clock`), and `drop(pred)` /
`deliver_all(pred)` to remove or hand-deliver particular messages.

Safety is checked on every `ready()` batch and raises `InvariantViolation`:
  * election safety: at most one leader per term, over the whole run;
  * leader append-only: a leader never removes or changes an entry of its log
    while it leads;
  * leader completeness: a new leader holds every entry committed in an
    earlier term; and, as the invariant its proof rests on, when a leader
    commits an entry no node lacking it is as up to date as a majority (so
    none could ever be elected without it);
  * one vote per term: a persisted vote never changes within a term, terms
    never go back; a node that lost its state does not vote before the log
    names it a voter under its new incarnation;
  * log matching: two logs holding an entry with the same index and term hold
    the same entry and agree on the term of the entry before it (so, by
    induction, on the whole prefix);
  * committed entries are never truncated from the storage of the node that
    committed them; a node's commit index never goes back (while it runs) nor
    passes the end of its log;
  * state machine safety: every node applies the same entry at each index, in
    order, without gaps; every snapshot of an index holds the same state;
  * reads: a ReadState's index is at least every index committed anywhere when
    the read was requested (ReadIndex, and lease reads, are linearizable).

Snapshots: `take_snapshot(nid, data)` persists a node's state machine and
compacts its log; SNAPSHOT messages the core asks for are filled from the
sender's latest snapshot, and a snapshot a follower receives is persisted and
handed to `on_install` (InstallSnapshot), as kvcluster.server does.

`tests/raft_harness.py` re-exports this module for the unit tests of the core.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..raft import (
    Entry,
    EntryKind,
    HardState,
    Member,
    Membership,
    Message,
    MessageType,
    RaftNode,
    RaftOptions,
    Ready,
    Role,
)

MT = MessageType
_VOTE_GRANTS = frozenset({MT.VOTE_RESP, MT.PRE_VOTE_RESP})

MessagePredicate = Callable[[Message], bool]
Callback = Callable[[], None]


class InvariantViolation(AssertionError):
    """A Raft safety property does not hold."""


@dataclass(frozen=True)
class Snapshot:
    """A node's state machine as of `index` (the entry there has `term`)."""

    index: int
    term: int
    membership: dict[str, Any]
    data: Any


@dataclass
class Storage:
    """What a node has persisted: it survives a crash (unless amnesiac).
    `entries` are those after the snapshot, if there is one."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: Snapshot | None = None

    @property
    def base(self) -> int:
        return self.snapshot.index if self.snapshot is not None else 0

    def last_index(self) -> int:
        return self.base + len(self.entries)

    def term_at(self, index: int) -> int | None:
        base = self.base
        if index == base:
            return self.snapshot.term if self.snapshot is not None else 0
        if base < index <= base + len(self.entries):
            return self.entries[index - base - 1].term
        return None

    def entry(self, index: int) -> Entry | None:
        """The stored entry at `index` (None if absent or in the snapshot)."""
        base = self.base
        if base < index <= base + len(self.entries):
            return self.entries[index - base - 1]
        return None

    def tip(self) -> tuple[int, int]:
        """(last term, last index): what the election restriction compares."""
        if self.entries:
            return self.entries[-1].term, self.last_index()
        return (self.snapshot.term, self.base) if self.snapshot is not None else (0, 0)


@dataclass
class ReadRecord:
    node: str
    ctx: int
    lease: bool
    issued_at: float
    floor: int  # highest index committed anywhere when the read was requested
    index: int | None = None  # the ReadState's index, once served
    failed: bool = False

    @property
    def done(self) -> bool:
        return self.index is not None or self.failed


# A message in flight: (arrival time, send order, message); tuples compare fast.
_InFlight = tuple[float, int, Message]


def make_log(terms: Sequence[int], start: int = 1) -> list[Entry]:
    """Entries with the given terms; the same (index, term) always gets the same
    data, so logs built this way for several nodes agree where they should."""
    return [Entry(i, t, EntryKind.NORMAL, f"i{i}t{t}") for i, t in enumerate(terms, start=start)]


class RaftNet:
    # Judge every ReadState against what was committed when the read was asked.
    # Tests turn it off to show that the linearizability checker, on its own,
    # also catches a stale read.
    check_reads: bool = True

    def __init__(
        self,
        nodes: int | Sequence[str] = 3,
        *,
        seed: int = 0,
        options: RaftOptions | None = None,
        learners: Iterable[str] = (),
        latency: float | tuple[float, float] = 0.0,
        drop_rate: float = 0.0,
        dup_rate: float = 0.0,
        reorder: bool = False,
        delay_rate: float = 0.0,
        max_delay: float = 0.0,
        initial: dict[str, tuple[int, Sequence[int]]] | None = None,
        record: bool = True,
    ) -> None:
        """`initial` maps a node to (term, [term of each log entry]): the state it
        starts from, as if persisted by an earlier run. A message is held up by
        an extra uniform(0, max_delay) with probability `delay_rate` (on a FIFO
        link, so is everything sent after it)."""
        ids = [f"n{i}" for i in range(1, nodes + 1)] if isinstance(nodes, int) else list(nodes)
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = options or RaftOptions()
        self.latency = latency
        self.drop_rate = drop_rate
        self.dup_rate = dup_rate
        self.reorder = reorder
        self.delay_rate = delay_rate
        self.max_delay = max_delay
        self.record = record
        self.now = 0.0
        # Each node's clock reads offset + rate * now: it drifts and steps
        # forward, never back (a monotonic clock).
        self.clock_offset: dict[str, float] = {}
        self.clock_rate: dict[str, float] = {}
        self._timers: list[tuple[float, int, Callback]] = []
        self._deadline: dict[str, float] = {}  # live node -> its next timer, in simulated time
        self._inputs = 0  # inputs handed to any node so far
        learner_set = set(learners)
        self.bootstrap = Membership({i: Member(address=i, voter=i not in learner_set) for i in ids})
        self._voters = sorted(self.bootstrap.voters)

        self.nodes: dict[str, RaftNode] = {}
        self.storage: dict[str, Storage] = {}
        self.incarnations: dict[str, str] = {}
        self.alive: set[str] = set()
        self._alive_sorted: list[str] = []
        self.applied: dict[str, list[Entry]] = {}  # since the node last (re)started
        self.applied_from: dict[str, int] = {}  # the index just before applied[nid][0]
        self._snapshot_digest: dict[int, str] = {}  # index -> repr of every snapshot there
        self._lives: Counter[str] = Counter()

        # network
        self._queue: list[_InFlight] = []
        self._seq = itertools.count()
        self._link_last: dict[tuple[str, str], float] = {}
        self.blocked: set[tuple[str, str]] = set()  # directed (src, dst) links that drop
        self.drop_filter: MessagePredicate | None = None
        self.sent: list[Message] = []  # every message handed to the network (if record)
        self.sent_counts: Counter[MessageType] = Counter()
        self.dropped = 0
        self.delivered = 0
        self.faults: Counter[str] = Counter()  # fault events by kind (the nemesis adds its own)

        # what the checker knows
        self.leaders: dict[int, str] = {}  # term -> the node that led it
        self._leader_checked: set[tuple[str, int]] = set()
        self._leader_tip: dict[str, tuple[int, Entry | None]] = {}  # append-only check
        self._config_seen = False  # a membership change is in some log
        self._commit_seen: dict[RaftNode, int] = {}  # per node object, i.e. per life
        self._amnesiac: set[str] = set()  # nodes whose current life began with no state
        self.committed: dict[int, Entry] = {}  # index -> the entry committed there
        self._commit_term: dict[int, int] = {}  # index -> term in which it was committed
        self._entry_at: dict[tuple[int, int], tuple[Entry, int]] = {}  # (i, t) -> (e, prev term)
        self._durable_commit: dict[str, int] = {}  # per node, survives restarts
        self.reads: dict[tuple[str, int], ReadRecord] = {}
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.observers: list[Callable[[RaftNet, str], None]] = []  # after each flush

        for i in ids:
            st = Storage()
            if initial and i in initial:
                term, terms = initial[i]
                st.hard_state = HardState(term, None)
                st.entries = make_log(terms)
                self._check_new_entries(i, st, st.entries)
            self.storage[i] = st
            self._durable_commit[i] = 0
            self.clock_offset[i], self.clock_rate[i] = 0.0, 1.0
            self._start(i, incarnation="", membership=self.bootstrap)
        if initial:
            # Nodes restarted from persisted state refuse votes for the shortest
            # election timeout (a leader's lease may rest on them); let that pass,
            # as it has in the earlier run this state comes from.
            self.advance(self.options.election_timeout[0])

    # ------------------------------------------------------------------ nodes

    def _start(self, nid: str, *, incarnation: str, membership: Membership) -> None:
        st = self.storage[nid]
        self._lives[nid] += 1
        self.clock_offset.setdefault(nid, 0.0)
        self.clock_rate.setdefault(nid, 1.0)
        snap = st.snapshot
        self.nodes[nid] = RaftNode(
            nid,
            options=self.options,
            rng=random.Random(f"{self.seed}/{nid}/{self._lives[nid]}"),
            now=self.local_time(nid),
            incarnation=incarnation,
            membership=membership if snap is None else Membership.from_dict(snap.membership),
            hard_state=st.hard_state,
            entries=list(st.entries),
            snapshot_index=st.base,
            snapshot_term=snap.term if snap is not None else 0,
        )
        self.incarnations[nid] = incarnation
        self.applied[nid] = []
        self.applied_from[nid] = st.base
        self.alive.add(nid)
        self._alive_sorted = sorted(self.alive)
        self._deadline[nid] = self._sim_time(nid, self.nodes[nid].next_deadline())
        self._leader_tip.pop(nid, None)
        self.on_start(nid)

    def crash(self, nid: str) -> None:
        """Stop a node; what it persisted stays in `storage`. Messages it already
        sent may still arrive; messages to it are lost."""
        if nid in self.alive:
            self.alive.discard(nid)
            self._alive_sorted = sorted(self.alive)
            del self._deadline[nid]
            self.on_crash(nid)

    # ------------------------------------------------------------------ hooks

    def on_start(self, nid: str) -> None:
        """A node (re)started: subclasses build its volatile state here."""

    def on_crash(self, nid: str) -> None:
        """A node crashed: subclasses drop its volatile state here."""

    def on_committed(self, nid: str, entries: list[Entry]) -> None:
        """The node applies `entries` (already checked for state machine safety)."""

    def on_read(self, nid: str, ctx: int, index: int | None) -> None:
        """A read the node asked for may now be served at `index` (None: it failed)."""

    def on_install(self, nid: str, snapshot: Snapshot) -> None:
        """The node installed a leader's snapshot: restore its state machine from it."""

    # ------------------------------------------------------------------ snapshots

    def take_snapshot(self, nid: str, data: Any, *, keep: int = 0) -> Snapshot:
        """`nid` captured `data`, its state machine as of what it has applied:
        persist it, and let the core forget its log up to `keep` entries before."""
        node = self.nodes[nid]
        index = node.applied
        term = node.log.term_at(index)
        if term is None:
            raise ValueError(f"{nid} has compacted past its applied index {index}")
        snap = Snapshot(index, term, node.membership_at(index).to_dict(), data)
        self._check_snapshot(nid, snap)
        self._save_snapshot(nid, snap)
        node.compact(index - keep)
        return snap

    def _save_snapshot(self, nid: str, snap: Snapshot) -> None:
        """Storage keeps the newest snapshot, and the entries after it only if
        its own entry at the snapshot's index agrees (InstallSnapshot's rule)."""
        st = self.storage[nid]
        if snap.index <= st.base:
            return
        if st.term_at(snap.index) == snap.term:
            del st.entries[: snap.index - st.base]
        else:
            st.entries.clear()
        st.snapshot = snap
        self._durable_commit[nid] = max(self._durable_commit[nid], snap.index)

    def _check_snapshot(self, nid: str, snap: Snapshot) -> None:
        """State machine safety for snapshots: every snapshot of an index holds
        the same state, and its term is that of the entry committed there."""
        known = self.committed.get(snap.index)
        if known is not None and known.term != snap.term:
            self._fail(f"{nid}: snapshot at {snap.index} of term {snap.term}, committed {known}")
        digest = repr(snap.data)
        seen = self._snapshot_digest.setdefault(snap.index, digest)
        if seen != digest:
            self._fail(f"state machine safety: {nid}'s snapshot at {snap.index} differs")

    def _install(self, nid: str, m: Message) -> None:
        snap = Snapshot(m.index, m.log_term, m.snapshot["membership"], m.snapshot["data"])
        self._check_snapshot(nid, snap)
        self._save_snapshot(nid, snap)
        self.applied[nid] = []
        self.applied_from[nid] = snap.index
        self.on_install(nid, snap)

    def _fill_snapshot(self, nid: str, m: Message) -> None:
        """The core asks for a SNAPSHOT message; the node sends its latest snapshot."""
        snap = self.storage[nid].snapshot
        if snap is None:
            self._fail(f"{nid} compacted a log that no snapshot covers")
            return
        m.index, m.log_term = snap.index, snap.term
        m.snapshot = {"membership": snap.membership, "data": snap.data}

    # ------------------------------------------------------------------ clocks

    def local_time(self, nid: str) -> float:
        """What `nid`'s clock reads now."""
        return self.clock_offset[nid] + self.clock_rate[nid] * self.now

    def _sim_time(self, nid: str, local: float) -> float:
        """The earliest simulated time at which `nid`'s clock reads `local`."""
        rate, offset = self.clock_rate[nid], self.clock_offset[nid]
        if rate == 1.0 and offset == 0.0:
            return local
        t = (local - offset) / rate
        while offset + rate * t < local:  # float rounding must not leave a timer unfired
            t = math.nextafter(t, math.inf)
        return t

    def step_clock(self, nid: str, dt: float) -> None:
        """Step `nid`'s clock forward by `dt` seconds (an NTP slew, a VM migration)."""
        if dt < 0:
            raise ValueError("a monotonic clock never goes back")
        self.clock_offset[nid] += dt
        self._refresh_deadline(nid)

    def set_clock_rate(self, nid: str, rate: float) -> None:
        """Let `nid`'s clock run at `rate` from now on, without a jump."""
        if rate <= 0:
            raise ValueError("a clock rate must be positive")
        now_local = self.local_time(nid)
        self.clock_rate[nid] = rate
        self.clock_offset[nid] = now_local - rate * self.now
        self._refresh_deadline(nid)

    def _refresh_deadline(self, nid: str) -> None:
        if nid in self.alive:
            self._deadline[nid] = self._sim_time(nid, self.nodes[nid].next_deadline())

    # ------------------------------------------------------------------ timers

    def schedule(self, at: float, callback: Callback) -> None:
        """Call `callback()` at simulated time `at` (clients, request delivery)."""
        heapq.heappush(self._timers, (max(at, self.now), next(self._seq), callback))

    def restart(
        self, nid: str, *, amnesia: bool = False, incarnation: str | None = None
    ) -> RaftNode:
        """Start a crashed (or running) node again from its storage. An amnesiac
        node lost its storage: it comes back empty, knowing no membership, under
        a new incarnation."""
        self.crash(nid)
        if amnesia:
            self.storage[nid] = Storage()
            self._durable_commit[nid] = 0
            self._amnesiac.add(nid)
            inc = incarnation if incarnation is not None else f"{nid}-{self._lives[nid] + 1}"
            self._start(nid, incarnation=inc, membership=Membership())
        else:
            inc = incarnation if incarnation is not None else self.incarnations[nid]
            self._start(nid, incarnation=inc, membership=self.bootstrap)
        return self.nodes[nid]

    def add_node(
        self, nid: str, *, incarnation: str = "", membership: Membership | None = None
    ) -> RaftNode:
        """A brand-new node with empty storage (it is nobody's member yet)."""
        self.storage[nid] = Storage()
        self._durable_commit[nid] = 0
        self._start(nid, incarnation=incarnation, membership=membership or Membership())
        return self.nodes[nid]

    # ------------------------------------------------------------------ queries

    def leader(self) -> str | None:
        """The live leader of the highest term, if any."""
        best: RaftNode | None = None
        for nid in sorted(self.alive):
            n = self.nodes[nid]
            if n.role is Role.LEADER and (best is None or n.term > best.term):
                best = n
        return best.id if best else None

    def live_leaders(self) -> list[str]:
        return [i for i in sorted(self.alive) if self.nodes[i].role is Role.LEADER]

    def has_committed_in_term(self, nid: str) -> bool:
        n = self.nodes[nid]
        return n.log.term_at(n.commit) == n.term

    def stable_leader(self) -> str | None:
        """A live leader that has committed an entry of its term and whose term
        no live node has passed."""
        lid = self.leader()
        if lid is None or not self.has_committed_in_term(lid):
            return None
        top = max(self.nodes[i].term for i in self.alive)
        return lid if self.nodes[lid].term == top else None

    def applied_data(self, nid: str) -> list[Any]:
        """The commands `nid` applied since it started (or installed a snapshot)."""
        return [e.data for e in self.applied[nid] if e.kind is EntryKind.NORMAL]

    def log_terms(self, nid: str) -> list[int]:
        n = self.nodes[nid]
        return [e.term for e in n.log.slice(1, n.log.last_index() + 1)]

    def pending(self, pred: MessagePredicate | None = None) -> list[Message]:
        """Messages in flight, in delivery order."""
        return [m for _, _, m in sorted(self._queue) if pred is None or pred(m)]

    def count_sent(
        self, kind: MessageType, *, src: str | None = None, dst: str | None = None
    ) -> int:
        return sum(
            1
            for m in self.sent
            if m.type is kind and (src is None or m.src == src) and (dst is None or m.dst == dst)
        )

    def events_of(
        self, kind: str, nid: str | None = None
    ) -> list[tuple[float, str, dict[str, Any]]]:
        return [e for e in self.events if e[2]["event"] == kind and (nid is None or e[1] == nid)]

    # ------------------------------------------------------------------ inputs

    def _sync(self, nid: str) -> RaftNode:
        """Bring a node's clock to now (firing its due timers) before an input:
        the core only learns the time through tick()."""
        if nid not in self.alive:
            raise RuntimeError(f"{nid} is down")
        node = self.nodes[nid]
        now = self.local_time(nid)
        if node.now < now:
            due = node.next_deadline() <= now
            node.tick(now)  # with no timer due, this only tells the node the time
            if due:
                self.flush(nid)
        self._inputs += 1
        return node

    def tick(self, nid: str) -> None:
        self._sync(nid).tick(self.local_time(nid))
        self.flush(nid)

    def campaign(self, nid: str) -> None:
        self._sync(nid).campaign()
        self.flush(nid)

    def propose(self, nid: str, data: Any, *, flush: bool = True) -> tuple[int, int]:
        index, term = self._sync(nid).propose(data)
        if flush:
            self.flush(nid)
        return index, term

    def propose_membership(self, nid: str, m: Membership, *, flush: bool = True) -> tuple[int, int]:
        index, term = self._sync(nid).propose_membership(m)
        if flush:
            self.flush(nid)
        return index, term

    def read_index(self, nid: str, ctx: int, *, lease: bool = False, flush: bool = True) -> None:
        key = (nid, ctx)
        if key in self.reads:
            raise ValueError(f"read {ctx} on {nid} already issued")
        self.reads[key] = ReadRecord(nid, ctx, lease, self.now, max(self.committed, default=0))
        self._sync(nid).read_index(ctx, lease=lease)
        if flush:
            self.flush(nid)

    def inject(self, m: Message) -> None:
        """Hand `m` to its destination now, as if the network delivered it."""
        self._sync(m.dst).step(m)
        self.flush(m.dst)

    def flush(self, nid: str) -> None:
        """Do what the node's ready() says: persist, send, apply."""
        node = self.nodes[nid]
        while True:
            inputs = self._inputs
            rd = node.ready()
            if not rd:
                break
            if rd.snapshot is not None:
                self._install(nid, rd.snapshot)
            if rd.hard_state is not None or rd.entries:
                self._persist(nid, rd)
            node.advance(rd)
            for m in rd.messages:
                if m.type in _VOTE_GRANTS and not m.reject:
                    self._check_vote_grant(nid)
                elif m.type is MT.SNAPSHOT:
                    self._fill_snapshot(nid, m)
                self._send(m)
            if rd.committed:
                self._apply(nid, rd.committed)
                self.on_committed(nid, rd.committed)
            for rs in rd.reads:
                self._read_done(nid, rs.ctx, rs.index)
                self.on_read(nid, rs.ctx, rs.index)
            for ctx in rd.failed_reads:
                self._read_done(nid, ctx, None)
                self.on_read(nid, ctx, None)
            for ev in rd.events:
                self.events.append((self.now, nid, ev))
            if self._inputs == inputs and not node.has_ready():
                break  # nothing fed the node while we handled its batch: it has no more
        self._deadline[nid] = self._sim_time(nid, node.next_deadline())
        self._check_node(nid)
        for obs in self.observers:
            obs(self, nid)

    # ------------------------------------------------------------------ network

    def _send(self, m: Message) -> None:
        self.sent_counts[m.type] += 1
        if self.record:
            self.sent.append(m)
        link = (m.src, m.dst)
        if link in self.blocked:
            self.dropped += 1  # sent into a partition
            return
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self.dropped += 1
            self.faults["loss"] += 1
            return
        copies = 1
        if self.dup_rate and self.rng.random() < self.dup_rate:
            copies = 2
            self.faults["duplicate"] += 1
        for _ in range(copies):
            at = self.now + self._latency()
            if self.delay_rate and self.rng.random() < self.delay_rate:
                at += self.rng.uniform(0.0, self.max_delay)
                self.faults["delay"] += 1
            last = self._link_last.get(link, 0.0)
            if at < last:
                if self.reorder:
                    self.faults["reorder"] += 1  # overtakes an earlier message
                else:
                    at = last  # FIFO per link
            else:
                self._link_last[link] = at
            heapq.heappush(self._queue, (at, next(self._seq), m))

    def _latency(self) -> float:
        lat = self.latency
        if isinstance(lat, tuple):
            lo, hi = lat
            return lo + (hi - lo) * self.rng.random()  # what rng.uniform does, inlined
        return lat

    def _deliverable(self, m: Message) -> bool:
        return (
            m.dst in self.alive
            and (m.src, m.dst) not in self.blocked
            and not (self.drop_filter is not None and self.drop_filter(m))
        )

    def _deliver(self, m: Message) -> None:
        if not self._deliverable(m):
            self.dropped += 1
            return
        self.delivered += 1
        self._sync(m.dst).step(m)
        self.flush(m.dst)

    def _pop_due(self, pred: MessagePredicate | None) -> Message | None:
        if pred is None:
            if self._queue and self._queue[0][0] <= self.now:
                return heapq.heappop(self._queue)[2]
            return None
        for f in sorted(self._queue):
            if f[0] > self.now:
                return None
            if pred(f[2]):
                self._queue.remove(f)
                heapq.heapify(self._queue)
                return f[2]
        return None

    def deliver_all(self, pred: MessagePredicate | None = None, *, limit: int = 100_000) -> int:
        """Deliver every due message (matching `pred`), including those sent in
        response, until none is left; returns how many were handled. Time does
        not move."""
        for n in range(limit):
            m = self._pop_due(pred)
            if m is None:
                return n
            self._deliver(m)
        raise RuntimeError("deliver_all: messages keep coming (livelock?)")

    def deliver_one(self, pred: MessagePredicate | None = None) -> Message | None:
        m = self._pop_due(pred)
        if m is not None:
            self._deliver(m)
        return m

    def drop(self, pred: MessagePredicate | None = None) -> list[Message]:
        """Remove in-flight messages (matching `pred`) from the network."""
        gone = [f for f in self._queue if pred is None or pred(f[2])]
        self._queue = [f for f in self._queue if not (pred is None or pred(f[2]))]
        heapq.heapify(self._queue)
        self.dropped += len(gone)
        return [f[2] for f in sorted(gone)]

    def block(self, a: str, b: str, *, both: bool = True) -> None:
        self.blocked.add((a, b))
        if both:
            self.blocked.add((b, a))

    def unblock(self, a: str, b: str, *, both: bool = True) -> None:
        self.blocked.discard((a, b))
        if both:
            self.blocked.discard((b, a))

    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes in the same group can talk; nodes in no group are isolated."""
        sets = [set(g) for g in groups]
        everyone = set(self.nodes)
        self.blocked = {
            (a, b)
            for a in everyone
            for b in everyone
            if a != b and not any(a in g and b in g for g in sets)
        }

    def isolate(self, nid: str) -> None:
        for other in self.nodes:
            if other != nid:
                self.block(nid, other)

    def heal(self) -> None:
        self.blocked.clear()

    # ------------------------------------------------------------------ time

    def advance(self, dt: float, until: Callable[[], bool] | None = None) -> bool:
        """Let `dt` seconds pass (or stop as soon as `until()` holds, returning True).

        One event at a time: a node timer, else the earliest due message or
        callback. `until` is asked before time moves on, so it sees each instant
        only once everything due then has been done."""
        end = self.now + dt
        for nid in self._alive_sorted:  # in case a test fed a node behind our back
            self._refresh_deadline(nid)
        if until is not None and until():
            return True
        deadline, queue, timers = self._deadline, self._queue, self._timers
        inf = math.inf
        same_instant = 0
        while True:
            t_node = min(deadline.values()) if deadline else inf
            t_msg = queue[0][0] if queue else inf
            t_timer = timers[0][0] if timers else inf
            t = min(t_node, t_msg, t_timer)
            if t > self.now:
                if same_instant and until is not None and until():
                    return True
                if t > end:
                    self.now = end
                    return until() if until is not None else False
                self.now = t
                same_instant = 0
            same_instant += 1
            if same_instant > 1_000_000:
                raise RuntimeError(f"livelock at t={self.now}")
            if t_node <= t:
                now = self.now
                for nid in self._alive_sorted:
                    if deadline.get(nid, inf) <= now:
                        self.nodes[nid].tick(self.local_time(nid))
                        self.flush(nid)
            elif t_msg <= t_timer:
                self._deliver(heapq.heappop(queue)[2])
            else:
                heapq.heappop(timers)[2]()

    def run_until(self, pred: Callable[[], bool], max_time: float = 10.0) -> bool:
        return self.advance(max_time, until=pred)

    def elect(self, nid: str, max_time: float = 5.0) -> RaftNode:
        """Make `nid` campaign now and wait until it leads and has committed its
        first entry (and every follower it can reach has heard so)."""
        self.campaign(nid)
        node = self.nodes[nid]
        ok = self.run_until(lambda: node.is_leader and self.has_committed_in_term(nid), max_time)
        if not ok:
            raise AssertionError(f"{nid} did not become leader (leader: {self.leader()})")
        self.deliver_all()
        return node

    # ------------------------------------------------------------------ checks

    def _fail(self, what: str) -> None:
        raise InvariantViolation(f"[seed {self.seed}, t={self.now:.4f}] {what}")

    def _persist(self, nid: str, rd: Ready) -> None:
        st = self.storage[nid]
        if rd.hard_state is not None:
            old, new = st.hard_state, rd.hard_state
            if new.term < old.term:
                self._fail(f"{nid}: term went back from {old.term} to {new.term}")
            if new.term == old.term and old.vote is not None and new.vote != old.vote:
                self._fail(f"{nid}: voted for {old.vote} then {new.vote} in term {new.term}")
            st.hard_state = new
        if rd.entries:
            first, last = rd.entries[0].index, st.last_index()
            if first > last + 1:
                self._fail(f"{nid}: persisting from {first} leaves a gap after {last}")
            if first <= self._durable_commit[nid] and first <= last:
                self._fail(
                    f"{nid}: overwrites entry {first} but had committed up to "
                    f"{self._durable_commit[nid]}"
                )
            base = st.base
            added = [e for e in rd.entries if e.index > base] if first <= base else rd.entries
            del st.entries[max(first - base - 1, 0) :]
            st.entries.extend(added)
            self._check_new_entries(nid, st, added)

    def _check_commit_is_durable(self, nid: str, index: int) -> None:
        """Leader completeness as a state invariant (the one its proof rests on):
        once an entry is committed, no node lacking it is at least as up to date
        as a majority of voters, so none can ever win an election without it.
        This catches an unsafe commit when it happens, not only in the rare
        schedule where such a node then does win (Figure 8).

        Judged on persisted logs with the bootstrap voters; skipped once
        membership changed or a node lost its state (other rules apply then)."""
        if self._config_seen or self._amnesiac:
            return
        term = self.nodes[nid].log.term_at(index)
        voters = self._voters
        tips = {v: self.storage[v].tip() for v in voters}
        quorum = len(voters) // 2 + 1
        for cand in voters:
            st = self.storage[cand]
            if index <= st.base or st.term_at(index) == term:
                continue  # it holds the entry (a snapshot covers only committed ones)
            electors = [v for v in voters if tips[cand] >= tips[v]]
            if len(electors) >= quorum:
                self._fail(
                    f"leader completeness: {nid} commits index {index} (term {term}), but "
                    f"{cand}, whose log lacks it, could be elected by {electors}"
                )

    def _check_new_entries(self, nid: str, st: Storage, new: list[Entry]) -> None:
        for e in new:
            if e.kind is EntryKind.CONFIG:
                self._config_seen = True
            if st.entry(e.index) is not e:
                self._fail(f"{nid}: entry {e.index} persisted at the wrong position")
            prev_term = st.term_at(e.index - 1) or 0
            seen = self._entry_at.setdefault((e.index, e.term), (e, prev_term))
            if seen != (e, prev_term):
                self._fail(
                    f"log matching: {nid} has {e} after term {prev_term}, "
                    f"another log has {seen[0]} after term {seen[1]}"
                )

    def _apply(self, nid: str, entries: list[Entry]) -> None:
        node = self.nodes[nid]
        applied = self.applied[nid]
        st = self.storage[nid]
        for e in entries:
            if e.index != self.applied_from[nid] + len(applied) + 1:
                self._fail(
                    f"{nid}: applies {e.index} after {self.applied_from[nid] + len(applied)}"
                )
            known = self.committed.get(e.index)
            if known is None:
                self.committed[e.index] = e
                self._commit_term[e.index] = node.term
            elif known != e:
                self._fail(f"state machine safety: {nid} applies {e}, another node applied {known}")
            if e.index > st.base and st.entry(e.index) != e:
                self._fail(f"{nid}: applies {e} which is not in its storage")
            applied.append(e)
        if entries:
            self._durable_commit[nid] = max(self._durable_commit[nid], entries[-1].index)

    def _check_vote_grant(self, nid: str) -> None:
        """A node that lost its state votes only once its log names it a voter
        under its new incarnation (it may have voted in this term already, or
        helped commit entries it no longer has)."""
        if nid not in self._amnesiac:
            return
        node = self.nodes[nid]
        st = self.storage[nid]
        named = any(
            Membership.from_dict(e.data).is_voter(nid, node.incarnation)
            for e in st.entries
            if e.kind is EntryKind.CONFIG
        ) or (
            st.snapshot is not None
            and Membership.from_dict(st.snapshot.membership).is_voter(nid, node.incarnation)
        )
        if not named:
            self._fail(f"{nid} lost its state, and votes before the log names it a voter again")

    def _check_node(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.commit > node.log.last_index():
            self._fail(f"{nid}: commit {node.commit} beyond its last index {node.log.last_index()}")
        seen = self._commit_seen.get(node, 0)
        if node.commit < seen:
            self._fail(f"{nid}: commit index went back to {node.commit}")
        if node.commit > seen and node.role is Role.LEADER:
            self._check_commit_is_durable(nid, node.commit)
        self._commit_seen[node] = node.commit
        if node.role is Role.LEADER:
            tip = self._leader_tip.get(nid)
            last = node.log.last_index()
            if tip is not None and tip[0] == node.term:
                _, entry = tip
                # (Entries a snapshot now covers are committed: compaction is no loss.)
                compacted = node.log.snapshot_index
                if entry is not None and (
                    entry.index > last
                    or (entry.index > compacted and node.log.entry(entry.index) is not entry)
                    or (entry.index == compacted and node.log.snapshot_term != entry.term)
                ):
                    self._fail(f"leader append-only: {nid} lost or changed {entry} in its log")
            tip_entry = node.log.entry(last) if last > node.log.snapshot_index else None
            self._leader_tip[nid] = (node.term, tip_entry)
            known = self.leaders.setdefault(node.term, nid)
            if known != nid:
                self._fail(f"election safety: {known} and {nid} both lead term {node.term}")
            if (nid, node.term) not in self._leader_checked:
                self._leader_checked.add((nid, node.term))
                compacted = node.log.snapshot_index  # before it: in a checked snapshot
                for i, e in self.committed.items():
                    if (
                        self._commit_term[i] < node.term
                        and i >= compacted
                        and (
                            node.log.term_at(i) != e.term
                            or (i > compacted and node.log.entry(i) != e)
                        )
                    ):
                        self._fail(
                            f"leader completeness: {nid} leads term {node.term} "
                            f"without committed {e}"
                        )

    def _read_done(self, nid: str, ctx: int, index: int | None) -> None:
        rec = self.reads.get((nid, ctx))
        if rec is None:
            self._fail(f"{nid}: answers read {ctx} that was never asked")
            return
        if rec.done:
            self._fail(f"{nid}: answers read {ctx} twice")
        if index is None:
            rec.failed = True
            return
        rec.index = index
        if index < rec.floor and self.check_reads:
            self._fail(
                f"stale read: {nid} read {ctx} at index {index}, but {rec.floor} was "
                f"committed before it was requested"
            )
        if index > max(self.committed, default=0) and self.check_reads:
            self._fail(f"{nid}: read {ctx} at index {index} that is not committed anywhere")

    def check_logs(self) -> None:
        """Full pairwise check of the stored logs (slow; end of a test)."""
        stores = self.storage
        for a, b in itertools.combinations(sorted(stores), 2):
            sa, sb = stores[a], stores[b]
            lo, hi = max(sa.base, sb.base) + 1, min(sa.last_index(), sb.last_index())
            same = [i for i in range(lo, hi + 1) if sa.term_at(i) == sb.term_at(i)]
            if same and any(sa.entry(i) != sb.entry(i) for i in range(lo, same[-1] + 1)):
                self._fail(f"log matching: {a} and {b} differ before index {same[-1]}")
        for i, e in self.committed.items():
            for nid, st in stores.items():
                if st.base < i <= self._durable_commit[nid] and st.entry(i) != e:
                    self._fail(f"{nid} lost committed entry {e}")

    def converged(self, nids: Iterable[str] | None = None) -> bool:
        """All (live) nodes have applied the same entries."""
        ids = sorted(self.alive if nids is None else nids)
        first = ids[0]
        if any(self.nodes[i].applied != self.nodes[first].applied for i in ids):
            return False
        # Where snapshots cut the lists short, applying checked them against each other.
        return all(
            self.applied[i] == self.applied[first]
            for i in ids
            if self.applied_from[i] == self.applied_from[first]
        )
