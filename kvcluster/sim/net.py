"""A deterministic in-process network of kvcluster nodes: the simulator's engine.

`RaftNet` runs several nodes -- the production node layer (`kvcluster.node`)
around the production Raft core -- against a simulated clock and a simulated
network, all driven by one seeded `random.Random`, so a schedule replays
exactly from its seed. It plays the part the node process plays in production
(`kvcluster.server`): it feeds each node its inputs and does what the node's
ready batch says, in the same order: persist (into a per-node `Storage` that
survives crashes and can be told to fail), send (into the network), relay
requests to the leader, deliver answers, save and load snapshots, `advance`.
It holds no node logic of its own: what it proves, it proves of the code that
serves clients.

Time only moves when asked (`advance`, `run_until`); the loop is event driven:
it jumps to the next node deadline, message delivery or `schedule()`d callback,
so simulated seconds cost little. With the default latency of 0 every message
is delivered at the instant it is sent, in FIFO order per link. A message is
lost if its link is blocked when it is sent or when it would arrive.

Faults: `crash`/`restart` (optionally amnesiac: storage lost, new incarnation),
`partition`/`isolate`/`block`/`heal` (`block(a, b, both=False)` is a one-way
cut), a random drop/duplicate/long-delay rate, reordering, per-node clocks that
drift and step forward (`clock_rate`, `step_clock`), a disk that fills up
(`fail_storage`), and `drop(pred)` / `deliver_all(pred)` to remove or
hand-deliver particular messages. A node that learns of its own removal from
the membership stops, as the node process exits (`removed`).

Clients (`kvcluster.sim.clients`) `submit` requests to a node over a client
hop; a follower's relay to the leader is a node-to-node hop, as exposed to
partitions and loss as Raft's messages; answers travel back the same way.

Every ready batch is checked for Raft's safety properties (`checks.py`):
election safety, leader append-only, log matching, leader completeness, one
vote per term, durable commits, state machine safety (entries and snapshots),
and linearizable ReadIndex/lease reads.

`tests/raft_harness.py` re-exports this module for the unit tests of the core.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import orjson

from ..kv import KVStore
from ..node import (
    Answer,
    Forward,
    Node,
    NodeOptions,
    NodeReady,
    Request,
    SnapshotCapture,
    SnapshotReceiver,
    SnapshotSource,
)
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
from ..storage.stream import MemoryReceiver, MemorySnapshot
from .checks import InvariantViolation, ReadRecord, SafetyChecks
from .storage import DiskFull, Storage

MT = MessageType
_VOTE_GRANTS = frozenset({MT.VOTE_RESP, MT.PRE_VOTE_RESP})

MessagePredicate = Callable[[Message], bool]
Callback = Callable[[], None]
ReplyHandler = Callable[[Any, Answer], None]  # (the request's wire, the answer)

# A message in flight: (arrival time, send order, message); tuples compare fast.
_InFlight = tuple[float, int, Message]

# Core-level tests drive the cores directly: no snapshots unless asked for.
CORE_TEST_OPTIONS = NodeOptions(snapshot_every=0, snapshot_keep=0, request_timeout=1.0)


__all__ = [
    "InvariantViolation",
    "MessagePredicate",
    "RaftNet",
    "ReadRecord",
    "Storage",
    "make_log",
]


def make_log(terms: Sequence[int], start: int = 1) -> list[Entry]:
    """Entries with the given terms; the same (index, term) always gets the same
    data, so logs built this way for several nodes agree where they should."""
    return [Entry(i, t, EntryKind.NORMAL, f"i{i}t{t}") for i, t in enumerate(terms, start=start)]


class RaftNet(SafetyChecks):
    def __init__(
        self,
        nodes: int | Sequence[str] = 3,
        *,
        seed: int = 0,
        options: RaftOptions | None = None,
        node_options: NodeOptions | None = None,
        learners: Iterable[str] = (),
        latency: float | tuple[float, float] = 0.0,
        drop_rate: float = 0.0,
        dup_rate: float = 0.0,
        reorder: bool = False,
        delay_rate: float = 0.0,
        max_delay: float = 0.0,
        client_latency: tuple[float, float] = (0.001, 0.005),
        background: tuple[float, float] = (0.0, 0.0),
        initial: dict[str, tuple[int, Sequence[int]]] | None = None,
        record: bool = True,
        bootstrap_in_log: bool = False,
    ) -> None:
        """`initial` maps a node to (term, [term of each log entry]): the state it
        starts from, as if persisted by an earlier run. A message is held up by
        an extra uniform(0, max_delay) with probability `delay_rate` (on a FIFO
        link, so is everything sent after it). `background` is how long saving
        or decoding a snapshot takes (uniform, simulated seconds): the node
        process does both off its event loop, and the node must cope with
        anything that happens meanwhile. `bootstrap_in_log`: the initial members
        are the log's first entry, as in the node process, and a node restarts
        from its storage alone; otherwise (the core tests' indexes count on it)
        every node is given them, at every start, as the membership before its
        log."""
        if bootstrap_in_log and initial:
            raise ValueError("`initial` logs come without a bootstrap entry")
        ids = [f"n{i}" for i in range(1, nodes + 1)] if isinstance(nodes, int) else list(nodes)
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = options or RaftOptions()
        self.node_options = node_options or CORE_TEST_OPTIONS
        self.latency = latency
        self.drop_rate = drop_rate
        self.dup_rate = dup_rate
        self.reorder = reorder
        self.delay_rate = delay_rate
        self.max_delay = max_delay
        self.client_latency = client_latency
        self.background = background
        self.record = record
        self.bootstrap_in_log = bootstrap_in_log
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

        self.servers: dict[str, Node] = {}  # the node layer of each node ...
        self.nodes: dict[str, RaftNode] = {}  # ... and its Raft core
        self.storage: dict[str, Storage] = {}
        self.incarnations: dict[str, str] = {}
        self.alive: set[str] = set()
        self.removed: set[str] = set()  # stopped because they learned of their removal
        self._alive_sorted: list[str] = []
        self.applied: dict[str, list[Entry]] = {}  # since the node last (re)started
        self.applied_from: dict[str, int] = {}  # the index just before applied[nid][0]
        self._snapshot_digest: dict[int, bytes] = {}  # index -> the bytes of every snapshot there
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

        # requests
        self.reply_to: ReplyHandler = lambda wire, answer: None  # set by the clients
        self._request_ids = itertools.count(1)
        # (node, request id) -> (the client's wire, or the relaying node's (node, id, life))
        self._routes: dict[tuple[str, int], tuple[Any, tuple[str, int, int] | None]] = {}
        self.forwarded = 0
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        self.storage_failures = 0

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
            self._start(i, incarnation="", membership=self._base(), bootstrap=self.bootstrap_in_log)
        if initial:
            # Nodes restarted from persisted state refuse votes for the shortest
            # election timeout (a leader's lease may rest on them); let that pass,
            # as it has in the earlier run this state comes from.
            self.advance(self.options.election_timeout[0])

    # ------------------------------------------------------------------ nodes

    def _base(self) -> Membership:
        """The membership a node starts with before its log (see bootstrap_in_log)."""
        return Membership() if self.bootstrap_in_log else self.bootstrap

    def _start(
        self, nid: str, *, incarnation: str, membership: Membership, bootstrap: bool = False
    ) -> None:
        st = self.storage[nid]
        self._lives[nid] += 1
        self.clock_offset.setdefault(nid, 0.0)
        self.clock_rate.setdefault(nid, 1.0)
        snap = st.snapshot
        kv = KVStore.from_lines(snap.payload()) if snap is not None else KVStore()
        server = Node(
            nid,
            options=self.node_options,
            raft=self.options,
            rng=random.Random(f"{self.seed}/{nid}/{self._lives[nid]}"),
            now=self.local_time(nid),
            incarnation=incarnation,
            membership=membership,
            hard_state=st.hard_state,
            entries=list(st.entries),
            snapshot=snap,
            kv=kv,
            open_receiver=lambda meta, size: MemoryReceiver(meta, size, None),
            bootstrap=self.bootstrap if bootstrap else None,
        )
        self.servers[nid] = server
        self.nodes[nid] = server.raft
        self._watch_reads(nid, server.raft)
        self.incarnations[nid] = incarnation
        self.applied[nid] = []
        self.applied_from[nid] = st.base
        self.alive.add(nid)
        self._alive_sorted = sorted(self.alive)
        self._deadline[nid] = self._sim_time(nid, server.next_deadline())
        self._leader_tip.pop(nid, None)

    def _watch_reads(self, nid: str, core: RaftNode) -> None:
        """Record every read the node asks its core for, with what was committed
        anywhere at that moment: the floor its ReadState must reach."""
        ask = core.read_index
        # A new life numbers its reads from 1 again: forget the last life's.
        for key in [k for k in self.reads if k[0] == nid]:
            del self.reads[key]

        def read_index(ctx: int, *, lease: bool = False) -> None:
            key = (nid, ctx)
            if key in self.reads and not self.reads[key].done:
                raise ValueError(f"read {ctx} on {nid} already issued")
            self.reads[key] = ReadRecord(nid, ctx, lease, self.now, max(self.committed, default=0))
            ask(ctx, lease=lease)

        core.read_index = read_index  # type: ignore[method-assign]

    def crash(self, nid: str, *, power_cut: bool = False) -> None:
        """Stop a node; what it persisted stays in `storage` (after a power cut,
        only what its fsync policy had synced: see Storage). Messages it already
        sent may still arrive; messages to it (and its pending requests) are lost."""
        if power_cut:
            self.storage[nid].power_cut()
        if nid in self.alive:
            self.alive.discard(nid)
            self._alive_sorted = sorted(self.alive)
            del self._deadline[nid]

    def fail_storage(self, nid: str, after: int = 0) -> None:
        """`nid`'s disk fills up: `after` more writes succeed, the next one fails."""
        st = self.storage[nid]
        st.fail_after = st.writes + after

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
        self.removed.discard(nid)
        self.storage[nid].fail_after = None  # whatever failed, the operator mended
        if amnesia:
            self.storage[nid] = Storage()
            self._durable_commit[nid] = 0
            self._amnesiac.add(nid)
            inc = incarnation if incarnation is not None else f"{nid}-{self._lives[nid] + 1}"
            self._start(nid, incarnation=inc, membership=Membership())
        else:
            inc = incarnation if incarnation is not None else self.incarnations[nid]
            self._start(
                nid, incarnation=inc, membership=self._base(), bootstrap=self.bootstrap_in_log
            )
        return self.nodes[nid]

    def add_node(
        self, nid: str, *, incarnation: str = "", membership: Membership | None = None
    ) -> RaftNode:
        """A brand-new node with empty storage (it is nobody's member yet)."""
        self.storage[nid] = Storage()
        self._durable_commit[nid] = 0
        self._start(nid, incarnation=incarnation, membership=membership or Membership())
        return self.nodes[nid]

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
            self._deadline[nid] = self._sim_time(nid, self.servers[nid].next_deadline())

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

    def _sync(self, nid: str) -> Node:
        """Bring a node's clock to now before an input: it only learns the time
        through its inputs. (The caller flushes after the input.)"""
        if nid not in self.alive:
            raise RuntimeError(f"{nid} is down")
        server = self.servers[nid]
        now = self.local_time(nid)
        if server.now < now:
            server.tick(now)
        self._inputs += 1
        return server

    def tick(self, nid: str) -> None:
        self._sync(nid)
        self.flush(nid)

    def campaign(self, nid: str) -> None:
        self._sync(nid).raft.campaign()
        self.flush(nid)

    def propose(self, nid: str, data: Any, *, flush: bool = True) -> tuple[int, int]:
        """Append `data` to `nid`'s log directly (core tests: no client, no answer)."""
        index, term = self._sync(nid).raft.propose(data)
        if flush:
            self.flush(nid)
        return index, term

    def propose_membership(self, nid: str, m: Membership, *, flush: bool = True) -> tuple[int, int]:
        index, term = self._sync(nid).raft.propose_membership(m)
        if flush:
            self.flush(nid)
        return index, term

    def read_index(self, nid: str, ctx: int, *, lease: bool = False, flush: bool = True) -> None:
        """Ask `nid`'s core for a read directly (core tests); see `reads`."""
        self._sync(nid).raft.read_index(ctx, lease=lease)
        if flush:
            self.flush(nid)

    def inject(self, m: Message) -> None:
        """Hand `m` to its destination now, as if the network delivered it."""
        self._sync(m.dst).step((m,), self.local_time(m.dst))
        self.flush(m.dst)

    # ------------------------------------------------------------------ requests

    def _client_hop(self) -> float:
        return self.rng.uniform(*self.client_latency)

    def submit(self, nid: str, req: Request) -> None:
        """A client sends `req` to node `nid`. Its answer reaches `reply_to`
        with `req.wire`, unless the node dies first (then nothing does)."""
        life = self._lives[nid]
        self.schedule(self.now + self._client_hop(), lambda: self._arrive(nid, life, req, None))

    def _arrive(
        self, nid: str, life: int, req: Request, origin: tuple[str, int, int] | None
    ) -> None:
        """`req` reaches `nid`: from a client, or relayed by the node `origin`."""
        if nid not in self.alive or self._lives[nid] != life:
            return  # a request to a crashed (or since restarted) process is lost
        server = self._sync(nid)
        rid = next(self._request_ids)
        self._routes[(nid, rid)] = (req.wire, origin)
        answer = server.submit(replace(req, id=rid, forwarded=origin is not None), server.now)
        if answer is not None:
            self._answer(nid, answer)
        self.flush(nid)

    def _answer(self, nid: str, answer: Answer) -> None:
        """Send `answer` back the way its request came: to the client, or to the
        node that relayed it (which passes it on as it came)."""
        route = self._routes.pop((nid, answer.id), None)
        if route is None:
            return
        wire, origin = route
        if origin is None:
            self.schedule(self.now + self._client_hop(), lambda: self.reply_to(wire, answer))
            return
        via, via_id, via_life = origin
        raw = answer.raw if answer.raw is not None else orjson.dumps(answer.body)

        def relayed() -> None:
            if via in self.alive and self._lives[via] == via_life:
                self._sync(via).forward_answered(via_id, answer.status, raw, nid)
                self.flush(via)

        self._node_hop(nid, via, relayed)

    def _forward(self, nid: str, f: Forward) -> None:
        """Relay a request to the leader, over the network between nodes."""
        self.forwarded += 1
        target, life = f.leader, self._lives[nid]
        req = f.request
        if target not in self.alive:
            # A refused connection: certainly not delivered.
            def refused() -> None:
                if nid in self.alive and self._lives[nid] == life:
                    self._sync(nid).forward_failed(req.id, sent=False, reason="refused")
                    self.flush(nid)

            self.schedule(self.now + self._latency(), refused)
            return
        origin = (nid, req.id, life)
        target_life = self._lives[target]
        self._node_hop(nid, target, lambda: self._arrive(target, target_life, req, origin))

    def _node_hop(self, src: str, dst: str, deliver: Callback) -> None:
        """Node to node, as exposed to partitions and loss as Raft's messages."""
        if (src, dst) in self.blocked or (self.drop_rate and self.rng.random() < self.drop_rate):
            return
        at = self.now + self._latency()
        if self.delay_rate and self.rng.random() < self.delay_rate:
            at += self.rng.uniform(0.0, self.max_delay)

        def arrive() -> None:
            if (src, dst) not in self.blocked:
                deliver()

        self.schedule(at, arrive)

    # ------------------------------------------------------------------ the driver

    def flush(self, nid: str) -> None:
        """Do what the node's ready batch says, as the node process does: persist,
        send, relay, answer, save or load snapshots in the background, advance."""
        server = self.servers[nid]
        removed = False
        while True:
            inputs = self._inputs
            rd = server.ready()
            if not rd:
                break
            removed = removed or rd.removed
            try:
                self._persist(nid, rd)
            except DiskFull:
                # Fail-stop: the process exits; nothing of this batch leaves it.
                self._storage_failed(nid)
                return
            raft = rd.raft
            for m in rd.messages:
                if m.type in _VOTE_GRANTS and not m.reject:
                    self._check_vote_grant(nid)
                self._send(m)
            for f in rd.forwards:
                self._forward(nid, f)
            for answer in rd.answers:
                self._answer(nid, answer)
            if raft.committed:
                self._check_applied(nid, raft.committed)
            for rs in raft.reads:
                self._read_done(nid, rs.ctx, rs.index)
            for ctx in raft.failed_reads:
                self._read_done(nid, ctx, None)
            for ev in rd.events:
                self.events.append((self.now, nid, ev))
            if rd.capture is not None:
                self._background(nid, partial(self._save_capture, nid, rd.capture))
            if rd.load is not None:
                self._background(nid, partial(self._decode, nid, rd.load))
            server.advance(rd)
            if self._inputs == inputs and not server.has_ready():
                break  # nothing fed the node while we handled its batch: it has no more
        self._deadline[nid] = self._sim_time(nid, server.next_deadline())
        self._check_node(nid)
        for obs in self.observers:
            obs(self, nid)
        if removed:
            self._stop_removed(nid)

    def _stop_removed(self, nid: str) -> None:
        """The node learned that it is out of the cluster: it stops, as the node
        process exits (a test may still `restart` it, as an operator might)."""
        self.removed.add(nid)
        self.faults["removed"] += 1
        self.crash(nid)

    def _storage_failed(self, nid: str) -> None:
        """Fail-stop: a write failed, so the process exits there and then."""
        self.storage_failures += 1
        self.faults["storage_failed"] += 1
        self.events.append((self.now, nid, {"event": "storage_failed"}))
        self.crash(nid)

    def _persist(self, nid: str, rd: NodeReady) -> None:
        """Write a ready batch to `nid`'s storage (checking what it writes).
        Raises DiskFull (having written only part of the batch) if the disk is
        full: the caller must stop the node."""
        if rd.install is not None:
            self._install(nid, rd.install)
        raft = rd.raft
        if raft.hard_state is None and not raft.entries:
            return
        st = self.storage[nid]
        if not st.writing():
            # A torn write: a prefix of the batch's records made it (the hard
            # state is the first record, as in the write-ahead log).
            records = (raft.hard_state is not None) + len(raft.entries)
            kept = self.rng.randrange(records + 1)
            hs = raft.hard_state if kept and raft.hard_state is not None else None
            torn = raft.entries[: kept - (raft.hard_state is not None)] if kept else []
            self._persist_raft(nid, Ready(hard_state=hs, entries=torn))
            raise DiskFull(f"{nid}: no space left on the simulated disk")
        self._persist_raft(nid, raft)

    def _persist_raft(self, nid: str, rd: Ready) -> None:
        st = self.storage[nid]
        if rd.hard_state is not None:
            old, new = st.hard_state, rd.hard_state
            if new.term < old.term:
                self._fail(f"{nid}: term went back from {old.term} to {new.term}")
            if new.term == old.term and old.vote is not None and new.vote != old.vote:
                self._fail(f"{nid}: voted for {old.vote} then {new.vote} in term {new.term}")
        if rd.entries:
            first, last = rd.entries[0].index, st.last_index()
            if first > last + 1:
                self._fail(f"{nid}: persisting from {first} leaves a gap after {last}")
            if first <= self._durable_commit[nid] and first <= last:
                self._fail(
                    f"{nid}: overwrites entry {first} but had committed up to "
                    f"{self._durable_commit[nid]}"
                )
        added = st.save(rd.hard_state, rd.entries)
        if added:
            self._check_new_entries(nid, st, added)

    # ------------------------------------------------------------------ snapshots

    def _background(self, nid: str, work: Callback) -> None:
        """Work the node process does off its event loop: it finishes a little
        later, and not at all if the node dies meanwhile."""
        life = self._lives[nid]
        lo, hi = self.background

        def done() -> None:
            if nid in self.alive and self._lives[nid] == life:
                work()

        self.schedule(self.now + (self.rng.uniform(lo, hi) if hi > 0 else 0.0), done)

    def _save_capture(self, nid: str, capture: SnapshotCapture) -> None:
        snap = MemorySnapshot.encode(capture.meta, capture.lines, None)
        self._check_snapshot(nid, snap)
        st = self.storage[nid]
        if not st.writing():
            self._storage_failed(nid)
            return
        self._save_snapshot(nid, snap)
        self.snapshots_taken += 1
        self._sync(nid).snapshot_saved(snap)
        self.flush(nid)

    def _decode(self, nid: str, receiver: SnapshotReceiver) -> None:
        server = self._sync(nid)
        try:
            source = receiver.finish()
            kv = KVStore.from_lines(source.payload())
        except ValueError as exc:
            server.snapshot_load_failed(receiver, str(exc))
        else:
            server.snapshot_loaded(receiver, source, kv)
        self.flush(nid)

    def _save_snapshot(self, nid: str, snap: MemorySnapshot) -> None:
        """Storage keeps the newest snapshot, and the entries after it only if
        its own entry at the snapshot's index agrees (InstallSnapshot's rule)."""
        if self.storage[nid].save_snapshot(snap):
            self._durable_commit[nid] = max(self._durable_commit[nid], snap.meta.index)

    def _install(self, nid: str, source: SnapshotSource) -> None:
        """A follower persists the snapshot its leader sent, replacing its state."""
        assert isinstance(source, MemorySnapshot), "the simulator's receivers make these"
        snap = source
        self._check_snapshot(nid, snap)
        st = self.storage[nid]
        if not st.writing():
            raise DiskFull(f"{nid}: no space left for a snapshot")
        self._save_snapshot(nid, snap)
        self.applied[nid] = []
        self.applied_from[nid] = snap.meta.index
        self.snapshots_installed += 1

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
        self._sync(m.dst).step((m,), self.local_time(m.dst))
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
                        self.servers[nid].tick(self.local_time(nid))
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
