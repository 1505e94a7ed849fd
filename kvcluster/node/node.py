"""The node layer: every decision between a client request and the Raft core.

`Node` wraps the consensus core (`kvcluster.raft`) and the state machine
(`kvcluster.kv`) and decides, for each client request, what happens to it:
served here at once, after a read barrier, proposed to the log, relayed to the
leader, held until a leader is known, or failed. It tracks proposals and the
requests waiting for them, de-duplicates retries, runs the read modes, applies
committed entries and turns them into answers, triggers snapshots and moves
them to lagging followers in chunks, and carries membership requests.

It does no I/O, in the style of the core (and of h11 or etcd-io/raft): time
comes in as arguments, randomness from an injected `random.Random`, messages
and requests as calls; what must happen comes out of `ready()`. Two drivers
run this one class: the node process (`kvcluster.server`), which adds
sockets, files and a clock, and the simulator (`kvcluster.sim`), which adds a
simulated network, storage and clock and checks every step. Whatever the
simulator shows about this class is true of the code that serves clients.

The driver's loop, after feeding inputs (`tick`, `step`, `submit`,
`forward_answered`/`forward_failed`, `snapshot_saved`/`snapshot_loaded`):

    rd = node.ready()
    while rd:
        persist rd.install, then rd.raft.hard_state and rd.raft.entries
            (any error: stop the process, never retry, never advance)
        send rd.messages; relay rd.forwards; deliver rd.answers
        write rd.capture / decode rd.load in the background
        node.advance(rd)
        rd = node.ready() if node.has_ready() else None
    wake up again at node.next_deadline()

Nothing leaves the process (a message, an answer) before the batch it
depends on is on disk, because the driver persists first; and the core counts
nothing as persisted before `advance`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..kv import KVStore
from ..kv.commands import adds_data, expire_sessions_command, open_session_command
from ..raft import (
    ConfigChangeError,
    Entry,
    EntryKind,
    HardState,
    Membership,
    Message,
    MessageType,
    RaftNode,
    RaftOptions,
    Ready,
    Role,
)
from ..storage import SnapshotMeta, SnapshotReceiver, SnapshotSource
from .leases import LeaseUpkeep, lease_read, min_ttl, stamp
from .options import NodeOptions
from .proposals import Proposals
from .requests import (
    ADD_MEMBER,
    COMMAND,
    DELETE,
    GET,
    LEASE_READ,
    LIST_MAX_BYTES,
    LIST_MAX_KEYS,
    MEMBERSHIP_BUSY,
    NO_LEADER,
    NOT_APPLIED,
    NOT_LEADER,
    OPEN_SESSION,
    PUT,
    RANGE,
    READ_UNCONFIRMED,
    READS,
    REMOVE_MEMBER,
    REMOVED,
    REMOVED_LIFE,
    REMOVED_OUTCOME_UNKNOWN,
    WRITE_TIMEOUT,
    Answer,
    Failure,
    Forward,
    Request,
    leader_silent,
    no_space,
    unreachable,
)
from .snapshots import (
    Incoming,
    OpenReceiver,
    Outgoing,
    ack_message,
    chunk_data,
    chunk_message,
)

MT = MessageType

# What a pending request is doing (its `state`).
HELD = 0  # waiting for a leader (none known, or the known one was unreachable)
PROPOSED = 1  # in our log (we lead or led): waits for its entry to apply
READING = 2  # a read barrier (ReadIndex or lease) is out
WAITING_APPLY = 3  # a read that may be served once we have applied an index
FORWARDING = 4  # relayed to the leader: waits for its answer
CONFIG_WAIT = 5  # a membership change waits for the previous one to commit

_RETRY, _HOLD_EXPIRY = 0, 1  # timer kinds


@dataclass(slots=True)
class _Pending:
    req: Request
    deadline: float
    state: int = HELD
    epoch: int = 0  # bumped on every state change: older timers are void
    failure: Failure = NO_LEADER  # what a hold answers when it expires
    avoid: str | None = None  # a leader a relay could not reach: wait for another
    forwarded_to: str | None = None
    members: Membership | None = None  # a membership change's target
    proposed: bool = False  # a write was in some log (its outcome may be unknown)


@dataclass(slots=True)
class SnapshotCapture:
    """Encode `lines` and save them as the snapshot `meta` (in the background);
    then call `Node.snapshot_saved` with the saved snapshot."""

    meta: SnapshotMeta
    lines: Iterable[bytes]
    keys: int


@dataclass(slots=True)
class NodeReady:
    """What the driver must do now, in the order the module docstring gives."""

    raft: Ready
    messages: list[Message] = field(default_factory=list)
    install: SnapshotSource | None = None
    forwards: list[Forward] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    capture: SnapshotCapture | None = None
    load: SnapshotReceiver | None = None
    membership: Membership | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    # This node has just learned that it was removed from the cluster: the
    # driver stops it once it has done the rest of this batch (see Node.removed).
    removed: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.raft
            or self.messages
            or self.install is not None
            or self.forwards
            or self.answers
            or self.capture is not None
            or self.load is not None
            or self.membership is not None
            or self.events
            or self.removed
        )


class Node:
    """One node's decisions (see the module docstring)."""

    def __init__(
        self,
        node_id: str,
        *,
        options: NodeOptions | None = None,
        raft: RaftOptions | None = None,
        rng: random.Random,
        now: float,
        incarnation: str = "",
        membership: Membership | None = None,
        hard_state: HardState | None = None,
        entries: Iterable[Entry] = (),
        snapshot: SnapshotSource | None = None,
        kv: KVStore | None = None,
        open_receiver: OpenReceiver | None = None,
        clock_offset: float = 0.0,
        bootstrap: Membership | None = None,
    ) -> None:
        # bootstrap: a new cluster's initial members, written into the log if
        # this node has persisted nothing yet (RaftNode, bootstrap_entry).
        self.id = node_id
        self.options = options or NodeOptions()
        self.now = now
        # Added to `now` for the time a leader commits for sessions: the wall
        # clock (time.time() - loop time) in a process, so that leaders on
        # different hosts agree roughly; 0 in the simulator.
        self.clock_offset = clock_offset
        self._session_upkeep: tuple[int, float] | None = None  # (term, when next)
        self._compacting = 0  # the index of the last compaction we proposed
        self._lease_upkeep: LeaseUpkeep | None = None  # the leader's, this term (node/leases.py)
        meta = snapshot.meta if snapshot is not None else None
        if meta is not None:
            membership = Membership.from_dict(meta.membership)
        self.raft = RaftNode(
            node_id,
            options=raft,
            rng=rng,
            now=now,
            incarnation=incarnation,
            membership=membership,
            hard_state=hard_state,
            entries=entries,
            snapshot_index=meta.index if meta else 0,
            snapshot_term=meta.term if meta else 0,
            bootstrap=bootstrap,
        )
        self.kv = kv if kv is not None else KVStore()
        if self.kv.applied_index < self.raft.applied:
            raise ValueError(
                f"the store has applied {self.kv.applied_index}, the snapshot {self.raft.applied}"
            )
        self._open_receiver = open_receiver
        self._snapshot = snapshot
        self._snapshot_index = meta.index if meta else 0
        self._capturing = False
        self._outgoing: dict[str, Outgoing] = {}
        self._incoming: Incoming | None = None
        self._load: SnapshotReceiver | None = None  # received: to verify and decode
        self._install_kv: tuple[int, int, KVStore, SnapshotSource] | None = None

        self._pending: dict[int, _Pending] = {}
        self._deadlines: deque[tuple[float, int]] = deque()  # request deadlines, in order
        self._timers: list[tuple[float, int, int, int]] = []  # (at, request id, epoch, kind)
        self._held: dict[int, _Pending] = {}  # insertion order = arrival order
        self._proposals = Proposals()
        self._reads: dict[int, int] = {}  # ReadIndex ctx -> request id
        self._read_ids = itertools.count(1)
        self._apply_waits: list[tuple[int, int]] = []  # (index, request id), a heap
        self._config_waits: list[int] = []  # request ids

        self._answers: list[Answer] = []
        self._forwards: list[Forward] = []
        self._messages: list[Message] = []
        self._events: list[dict[str, Any]] = []
        self._leader_seen: str | None = None
        self._membership_seen: Membership | None = None
        self._removed_seen = False

    # ------------------------------------------------------------------ queries

    @property
    def is_leader(self) -> bool:
        return self.raft.role is Role.LEADER

    @property
    def leader_id(self) -> str | None:
        return self.raft.leader_id

    @property
    def removed(self) -> bool:
        """This node is out of the cluster: a committed configuration left it
        out (it applied it, or a member told it). It serves nothing any more,
        and whoever drives it should stop it (etcd shuts a removed member
        down): its log is of no use to the cluster, and a node that believes
        it is still a voter would only campaign, in vain, forever."""
        return self.raft.removed

    @property
    def applied_index(self) -> int:
        return self.kv.applied_index

    @property
    def snapshot(self) -> SnapshotSource | None:
        """The latest saved snapshot (what a lagging follower is sent)."""
        return self._snapshot

    def leader_address(self) -> str | None:
        leader = self.raft.leader_id
        return self.raft.membership.address(leader) if leader is not None else None

    def next_deadline(self) -> float:
        """When to call `tick` next, at the latest."""
        t = self.raft.next_deadline()
        deadlines = self._deadlines
        pending = self._pending
        while deadlines and deadlines[0][1] not in pending:
            deadlines.popleft()  # answered long ago
        if deadlines:
            t = min(t, deadlines[0][0])
        timers = self._timers
        while timers and not self._timer_live(timers[0]):
            heapq.heappop(timers)
        if timers:
            t = min(t, timers[0][0])
        for out in self._outgoing.values():
            if out.acked < out.source.size:
                t = min(t, out.last_progress + self._resend_after)
        if self._session_upkeep is not None:
            t = min(t, self._session_upkeep[1])
        lease_wake = self._lease_wake()
        if lease_wake is not None:
            t = min(t, lease_wake)
        return t

    def pending_requests(self) -> int:
        return len(self._pending)

    def status(self, now: float | None = None) -> dict[str, Any]:
        """`now`: the caller's clock, so the election timer's age is current."""
        core = self.raft
        return {
            **core.status(now),
            "applied_index": self.kv.applied_index,
            "revision": self.kv.revision,
            "keys": len(self.kv),
            "read_mode": self.options.read_mode,
            "leader_address": self.leader_address(),
            "members": core.membership.to_dict(),  # the latest in the log (in effect)
            "members_committed": core.membership_at(core.commit).to_dict(),
            "snapshot_index": self._snapshot_index,
            "pending_requests": len(self._pending),
            "sessions": len(self.kv.sessions),
            "raft": {
                "election_timeout": list(core.options.election_timeout),
                "heartbeat_interval": core.options.heartbeat_interval,
                "pre_vote": core.options.pre_vote,
                "check_quorum": core.options.check_quorum,
            },
        }

    # ------------------------------------------------------------------ inputs

    def tick(self, now: float) -> None:
        """Let time pass: the core's timers, request deadlines, holds, transfers."""
        self._time(now)
        self._after_input()

    def step(self, messages: Iterable[Message], now: float) -> None:
        """Messages from peers."""
        self._time(now)
        core = self.raft
        for m in messages:
            if m.dst != self.id:
                continue
            if m.type is MT.SNAPSHOT_CHUNK:
                self._on_chunk(m)
            elif m.type is MT.SNAPSHOT_ACK:
                self._on_chunk_ack(m)
            else:
                core.step(m)
        self._after_input()

    def submit(self, req: Request, now: float) -> Answer | None:
        """A client request. Returns its answer if it is known at once (a read
        served from local state); otherwise the answer comes out of a later
        `ready()`, or a `Forward` does, which the driver must relay."""
        self._time(now)
        self._after_input()
        if self.raft.removed:
            return Answer(req.id, REMOVED.status, REMOVED.body())
        if req.op in READS and (req.serializable or self.options.read_mode == "serializable"):
            return self._read(req)  # local state, possibly stale: nothing to wait for
        p = _Pending(req, now + self.options.request_timeout)
        self._pending[req.id] = p
        self._deadlines.append((p.deadline, req.id))
        self._dispatch(p)
        if self._answers and self._answers[-1].id == req.id:
            return self._answers.pop()
        return None

    def forward_answered(self, request_id: int, status: int, body: bytes, address: str) -> None:
        """The leader answered a relayed request: pass its answer on as it is."""
        p = self._pending.get(request_id)
        if p is not None and p.state == FORWARDING:
            self._finish(p, Answer(request_id, status, raw=body, leader=address))

    def forward_failed(self, request_id: int, *, sent: bool, reason: str) -> None:
        """A relay failed. `sent`: it may have reached the leader (outcome unknown)."""
        p = self._pending.get(request_id)
        if p is None or p.state != FORWARDING:
            return
        if sent:
            self._fail(p, leader_silent(reason))
            return
        # Certainly not delivered, so not applied. The leader we know is likely
        # gone (a refused connection): hold the request for the next one, as a
        # client would have to, rather than fail it in the middle of a failover.
        # An election starts within the longest timeout; wait no longer.
        p.avoid = p.forwarded_to
        hold = self.raft.options.election_timeout[1]
        self._hold(p, unreachable(reason), until=self.now + hold)
        if self.raft.leader_id not in (None, p.avoid):
            self._redispatch(p)

    def snapshot_saved(self, source: SnapshotSource) -> None:
        """The driver saved the snapshot a `capture` asked for."""
        self._capturing = False
        meta = source.meta
        if meta.index <= self._snapshot_index:
            return
        self._snapshot, self._snapshot_index = source, meta.index
        self.raft.compact(meta.index - self.options.snapshot_keep)
        self._events.append(
            {"event": "snapshot_taken", "term": self.raft.term, "index": meta.index}
        )

    def snapshot_loaded(
        self, receiver: SnapshotReceiver, source: SnapshotSource, kv: KVStore
    ) -> None:
        """The driver verified (`receiver.finish()`) and decoded a snapshot the
        leader sent (a `load`): install it."""
        inc = self._incoming
        if inc is None or inc.receiver is not receiver or not inc.loading:
            return  # given up on meanwhile
        self._incoming = None
        meta = source.meta
        self._install_kv = (meta.index, meta.term, kv, source)
        m = Message(
            MT.SNAPSHOT,
            inc.term,
            inc.leader,
            self.id,
            index=meta.index,
            log_term=meta.term,
            snapshot={"membership": meta.membership},
        )
        self.raft.step(m)
        self._after_input()

    def snapshot_load_failed(self, receiver: SnapshotReceiver, reason: str) -> None:
        """A received snapshot failed its check or did not decode: start over."""
        inc = self._incoming
        if inc is None or inc.receiver is not receiver or not inc.loading:
            return
        self._incoming = None
        self._events.append(
            {"event": "snapshot_rejected", "term": self.raft.term, "reason": reason}
        )
        probe = Message(
            MT.SNAPSHOT_CHUNK, inc.term, inc.leader, self.id, inc.meta.index, inc.meta.term
        )
        self._messages.append(ack_message(self.id, inc.leader, probe, 0))

    # ------------------------------------------------------------------ output

    def has_ready(self) -> bool:
        return bool(
            self._answers
            or self._forwards
            or self._messages
            or self._events
            or self.raft.has_ready()
            or self._load is not None
            or self._capture_due()
            or (self.raft.removed and not self._removed_seen)
        )

    def ready(self) -> NodeReady:
        core = self.raft
        rd = NodeReady(core.ready())
        raft = rd.raft
        if raft.snapshot is not None:
            self._install(raft.snapshot, rd)
        for msg in raft.messages:
            if msg.type is MT.SNAPSHOT:
                self._send_snapshot(msg.dst)
            else:
                rd.messages.append(msg)
        if raft.committed:
            self._apply(raft.committed)
        for rs in raft.reads:
            self._read_confirmed(rs.ctx, rs.index)
        for ctx in raft.failed_reads:
            self._read_failed(ctx)
        if core.removed and not self._removed_seen:
            self._on_removed(rd)
        if self._capture_due():
            rd.capture = self._capture()
        rd.load, self._load = self._load, None
        members = core.membership
        if members is not self._membership_seen:
            self._membership_seen = rd.membership = members
            self._events.append(
                {"event": "membership", "term": core.term, "members": members.to_dict()}
            )
        rd.messages.extend(self._messages)
        self._messages = []
        rd.forwards, self._forwards = self._forwards, []
        rd.answers, self._answers = self._answers, []
        rd.events = raft.events
        if self._events:
            rd.events = raft.events + self._events
            self._events = []
        return rd

    def advance(self, rd: NodeReady) -> None:
        """The driver persisted `rd` (and did the rest of what it says)."""
        self.raft.advance(rd.raft)

    # ------------------------------------------------------------------ dispatch

    def _dispatch(self, p: _Pending) -> None:
        req = p.req
        op = req.op
        core = self.raft
        leading = core.role is Role.LEADER
        if op in READS:
            mode = self.options.read_mode
            if req.serializable or mode == "serializable":
                self._serve_read(p)
            elif leading or mode == "read_index":
                self._read_barrier(p)
            else:
                self._forward(p)
        elif op in (PUT, DELETE, OPEN_SESSION, COMMAND):
            if leading:
                self._propose(p)
            else:
                self._forward(p)
        elif op == REMOVE_MEMBER:
            if leading:
                self._change_membership(p)
            else:
                self._forward(p)
        elif op == ADD_MEMBER:
            if leading:
                self._change_membership(p)
            elif core.leader_id is not None and (address := self.leader_address()):
                self._finish(p, Answer(req.id, 307, {"leader": address}, redirect=address))
            else:
                self._hold_for_leader(p)
        else:
            self._fail(p, Failure(400, "bad_request", f"unknown operation {op!r}"))

    def _redispatch(self, p: _Pending) -> None:
        self._held.pop(p.req.id, None)
        p.epoch += 1
        self._dispatch(p)

    def _hold_for_leader(self, p: _Pending) -> None:
        # A request arriving in the middle of an election waits for its outcome
        # (time enough for two elections) rather than fail at once.
        election = 2 * self.raft.options.election_timeout[1]
        self._hold(p, NO_LEADER, until=self.now + election)

    def _hold(self, p: _Pending, failure: Failure, *, until: float, retry: float = 0.0) -> None:
        p.state = HELD
        p.epoch += 1
        p.failure = failure
        self._held[p.req.id] = p
        if until < p.deadline:
            heapq.heappush(self._timers, (until, p.req.id, p.epoch, _HOLD_EXPIRY))
        if retry:
            heapq.heappush(self._timers, (self.now + retry, p.req.id, p.epoch, _RETRY))

    def _forward(self, p: _Pending) -> None:
        req = p.req
        if req.forwarded:
            self._fail(p, NOT_LEADER)  # relayed once already: the client retries
            return
        leader = self.raft.leader_id
        address = self.leader_address()
        if leader is None or leader == p.avoid or address is None:
            if p.avoid is None:
                self._hold_for_leader(p)
            else:  # already held since the relay failed: keep that deadline
                self._held[req.id] = p
            return
        p.state = FORWARDING
        p.epoch += 1
        p.forwarded_to = leader
        if req.op not in READS:
            p.proposed = True  # relayed: from here on the outcome may be unknown
        self._forwards.append(Forward(req, leader, address))

    # ------------------------------------------------------------------ writes

    def _propose(self, p: _Pending) -> None:
        req = p.req
        core = self.raft
        p.epoch += 1
        p.proposed = True
        earlier = self._proposals.pending(req.session, core.term)
        if earlier is not None:
            # A retry of a write still on its way: wait for that entry.
            p.state = PROPOSED
            earlier.waiters.append(req.id)
            return
        if req.op == OPEN_SESSION:
            command = open_session_command(self._clock_ms())
        else:
            command = req.command()
            if req.op == COMMAND:  # a lease grant or keep-alive takes the leader's clock
                command = stamp(command, self._clock_ms(), self._min_lease_ttl)
        used, quota = self.kv.bytes_used, self.options.quota_bytes
        if used >= quota and adds_data(command):
            # Admission by the leader, not a rule of apply: every replica applies
            # whatever was committed, so nodes configured with different quotas
            # cannot diverge. In-flight writes may overshoot by a pipeline's worth.
            self._fail(p, no_space(used, quota))
            return
        index, term = core.propose(command)
        p.state = PROPOSED
        for waiter in self._proposals.add(index, term, req.session, req.id):
            self._fail_id(waiter, NOT_APPLIED)

    def _apply(self, entries: list[Entry]) -> None:
        kv = self.kv
        proposals = self._proposals
        for e in entries:
            result: dict[str, Any] | None = None
            if e.kind is EntryKind.NORMAL:
                result = kv.apply(e.index, e.data)
            else:
                kv.mark_applied(e.index)
            proposal = proposals.pop(e.index) if proposals else None
            if proposal is None:
                continue
            for rid in proposal.waiters:
                p = self._pending.get(rid)
                if p is None or p.state != PROPOSED:
                    continue
                if proposal.term != e.term:
                    self._fail(p, NOT_APPLIED)
                elif e.kind is EntryKind.CONFIG:
                    self._membership_changed(p)
                elif result is not None and "error" in result:
                    self._fail(p, _refusal(result))
                else:
                    self._ok(p, result or {})
        if self._apply_waits:
            self._wake_reads()
        if self._config_waits:
            waiting, self._config_waits = self._config_waits, []
            for rid in waiting:
                p = self._pending.get(rid)
                if p is not None and p.state == CONFIG_WAIT:
                    p.epoch += 1
                    self._dispatch(p)

    # ------------------------------------------------------------------ membership

    def _change_membership(self, p: _Pending) -> None:
        req = p.req
        core = self.raft
        current = core.membership
        if req.op == ADD_MEMBER:
            member = req.member
            assert member is not None, "add_member needs a member"
            old = current.members.get(req.key)
            if old is not None and (old.address, old.incarnation) == (
                member.address,
                member.incarnation,
            ):
                p.members = current  # already added (a retried /register)
                self._membership_changed(p)
                return
            if core.removal_of(req.key, member.incarnation):
                # That life of the node was removed; taken back it could apply the old
                # removal while catching up and stop itself as a member. A node comes
                # back as a new life: with an empty data directory.
                self._fail(p, REMOVED_LIFE)
                return
            new = current.with_member(req.key, member)
        else:
            if req.key not in current.members:
                self._fail(p, Failure(404, "not_found", f"{req.key!r} is not a member"))
                return
            new = current.without(req.key)
        try:
            index, term = core.propose_membership(new)
        except ConfigChangeError:
            # Another change (often a learner's promotion) must commit first.
            p.state = CONFIG_WAIT
            p.epoch += 1
            p.failure = MEMBERSHIP_BUSY
            self._config_waits.append(req.id)
            return
        p.members = new
        p.state = PROPOSED
        p.epoch += 1
        p.proposed = True
        for waiter in self._proposals.add(index, term, None, req.id):
            self._fail_id(waiter, NOT_APPLIED)

    def _on_removed(self, rd: NodeReady) -> None:
        """We are out of the cluster: answer everything still waiting (a write
        that reached a log may yet commit there), stop snapshot transfers, and
        tell the driver to stop us."""
        self._removed_seen = rd.removed = True
        for p in list(self._pending.values()):
            write_out = p.proposed and p.req.op not in READS
            self._fail(p, REMOVED_OUTCOME_UNKNOWN if write_out else REMOVED)
        self._outgoing.clear()
        self._drop_incoming()

    def _membership_changed(self, p: _Pending) -> None:
        members = p.members.to_dict() if p.members is not None else {}
        body: dict[str, Any] = {"members": members}
        if p.req.op == ADD_MEMBER:
            body["leader"] = self.raft.leader_id
        self._ok(p, body)

    # ------------------------------------------------------------------ reads

    def _read_barrier(self, p: _Pending) -> None:
        core = self.raft
        lease = self.options.read_mode == "lease"
        if lease and core.lease_valid() and self.kv.applied_index >= core.commit:
            self._serve_read(p)  # the lease holds and we are up to date: no round trip
            return
        ctx = next(self._read_ids)
        self._reads[ctx] = p.req.id
        p.state = READING
        p.epoch += 1
        core.read_index(ctx, lease=lease)

    def _read_confirmed(self, ctx: int, index: int) -> None:
        rid = self._reads.pop(ctx, None)
        p = self._pending.get(rid) if rid is not None else None
        if p is None or p.state != READING:
            return
        if self.kv.applied_index >= index:
            self._serve_read(p)
        else:
            p.state = WAITING_APPLY
            p.epoch += 1
            heapq.heappush(self._apply_waits, (index, p.req.id))

    def _read_failed(self, ctx: int) -> None:
        rid = self._reads.pop(ctx, None)
        p = self._pending.get(rid) if rid is not None else None
        if p is None or p.state != READING:
            return
        # The leader changed under us, or did not confirm: try again when a
        # leader is known, or shortly if one already is.
        self._hold(p, READ_UNCONFIRMED, until=p.deadline, retry=self.options.read_retry)

    def _wake_reads(self) -> None:
        waits = self._apply_waits
        applied = self.kv.applied_index
        while waits and waits[0][0] <= applied:
            p = self._pending.get(heapq.heappop(waits)[1])
            if p is not None and p.state == WAITING_APPLY:
                self._serve_read(p)

    def _serve_read(self, p: _Pending) -> None:
        self._finish(p, self._read(p.req))

    def _read(self, req: Request) -> Answer:
        """Answer a read from the store as it is now."""
        kv = self.kv
        if req.op == GET:
            item = kv.get(req.key)
            if item is None:
                missing = Failure(
                    404, "not_found", f"no key {req.key!r}", {"revision": kv.revision}
                )
                return Answer(req.id, 404, missing.body(), leader=self.leader_address())
            body = item.to_dict()
            body["revision"] = kv.revision
        elif req.op == RANGE:
            body = kv.range(**(req.payload or {}))
            if "error" in body:
                return Answer(req.id, 409, _refusal(body).body(), leader=self.leader_address())
        elif req.op == LEASE_READ:
            body = lease_read(kv, req.payload or {}, self._clock_ms())
        else:
            after = (req.payload or {}).get("after")
            limit = min(req.limit or LIST_MAX_KEYS, LIST_MAX_KEYS)
            items = kv.list(req.key, limit, after=after, max_bytes=LIST_MAX_BYTES)
            more = bool(items) and bool(kv.list(req.key, 1, after=items[-1].key))
            body = {"kvs": [i.to_dict() for i in items], "count": len(items), "more": more}
            body["revision"] = kv.revision
        return Answer(req.id, 200, body, leader=self.leader_address())

    # ------------------------------------------------------------------ answers

    def _ok(self, p: _Pending, body: dict[str, Any]) -> None:
        self._finish(p, Answer(p.req.id, 200, body, leader=self.leader_address()))

    def _fail(self, p: _Pending, failure: Failure) -> None:
        answer = Answer(p.req.id, failure.status, failure.body(), leader=self.leader_address())
        self._finish(p, answer)

    def _fail_id(self, request_id: int, failure: Failure) -> None:
        p = self._pending.get(request_id)
        if p is not None:
            self._fail(p, failure)

    def _finish(self, p: _Pending, answer: Answer) -> None:
        del self._pending[p.req.id]
        if p.state == HELD:
            self._held.pop(p.req.id, None)
        p.epoch += 1
        self._answers.append(answer)

    # ------------------------------------------------------------------ time

    def _time(self, now: float) -> None:
        self.now = now
        self.raft.tick(now)
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            p = self._pending.get(deadlines.popleft()[1])
            if p is not None:
                self._expire(p)
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, rid, epoch, kind = heapq.heappop(timers)
            p = self._pending.get(rid)
            if p is None or p.epoch != epoch or p.state != HELD:
                continue
            if kind == _HOLD_EXPIRY:
                self._fail(p, p.failure)
            else:
                self._redispatch(p)
        if self._outgoing:
            self._resend_stalled()
        self._keep_sessions()
        self._keep_leases()
        self._keep_history()

    def _keep_history(self) -> None:
        """As leader, compact the store's history through the log once it holds
        twice `history_keep` revisions, down to the last `history_keep`: what
        reads at a past revision and watches from one can reach, in memory and in
        every snapshot. Also once the history holds half the byte quota, down
        to a quarter of it. One compaction at a time (the next waits for it to apply)."""
        keep = self.options.history_keep
        core = self.raft
        if not keep or core.role is not Role.LEADER:
            return
        kv = self.kv
        if self._compacting > kv.applied_index:
            return
        target = 0
        if kv.revision - kv.compacted >= 2 * keep:
            target = kv.revision - keep
        quota = self.options.quota_bytes
        if kv.history_bytes > quota // 2:  # large values: bytes, not revisions, decide
            target = max(target, kv.revision_keeping(quota // 4))
        if target <= kv.compacted:
            return
        index, _ = core.propose({"op": "compact", "revision": target})
        self._compacting = index

    def _clock_ms(self) -> int:
        return max(0, int((self.now + self.clock_offset) * 1000))

    def _keep_sessions(self) -> None:
        """As leader, commit the clock now and then while sessions exist, with the
        idle time after which they expire: every replica then expires the same
        sessions at the same index, and none reads its own clock to do it."""
        core = self.raft
        if core.role is not Role.LEADER or not self.kv.sessions:
            self._session_upkeep = None
            return
        every = self.options.session_ttl / 10
        upkeep = self._session_upkeep
        if upkeep is None or upkeep[0] != core.term:
            self._session_upkeep = (core.term, self.now + every)
        elif self.now >= upkeep[1]:
            ttl_ms = int(self.options.session_ttl * 1000)
            core.propose(expire_sessions_command(self._clock_ms(), ttl_ms))
            self._session_upkeep = (core.term, self.now + every)

    def _keep_leases(self) -> None:
        """As leader, commit the clock for leases: first the promote of this
        term, then an expire whenever a deadline passes (node/leases.py)."""
        core = self.raft
        if core.role is not Role.LEADER:
            self._lease_upkeep = None
            return
        upkeep = self._lease_upkeep
        if upkeep is None or upkeep.term != core.term:
            upkeep = self._lease_upkeep = LeaseUpkeep(core.term)
        upkeep.step(core, self.kv, self._clock_ms())

    def _lease_wake(self) -> float | None:
        """When `_keep_leases` has something to do (our clock), or None."""
        core = self.raft
        if core.role is not Role.LEADER:
            return None
        upkeep = self._lease_upkeep
        if upkeep is None or upkeep.term != core.term:
            return self.now if len(self.kv.leases) else None
        due = upkeep.wake_ms(self.kv)
        if due is None:
            return None
        # 1 ms late, so that the clock then reads at least `due` despite rounding.
        return max(self.now, (due + 1) / 1000 - self.clock_offset)

    @property
    def _min_lease_ttl(self) -> int:
        return min_ttl(self.raft.options.election_timeout[1])

    def _timer_live(self, timer: tuple[float, int, int, int]) -> bool:
        p = self._pending.get(timer[1])
        return p is not None and p.epoch == timer[2] and p.state == HELD

    def _expire(self, p: _Pending) -> None:
        """A request's deadline passed: say what is known of its outcome."""
        if p.req.op in READS:
            self._fail(p, READ_UNCONFIRMED)
        elif p.state == HELD or p.state == CONFIG_WAIT:
            self._fail(p, p.failure)
        elif p.state == FORWARDING:
            self._fail(p, leader_silent("no answer in time"))
        else:
            self._fail(p, WRITE_TIMEOUT)

    def _after_input(self) -> None:
        """Follow leadership changes: held requests go to a new leader (or are
        proposed here, if we won: before the ready that carries our no-op, so
        they travel in the term's first AppendEntries)."""
        leader = self.raft.leader_id
        if leader == self._leader_seen:
            return
        self._leader_seen = leader
        if self._outgoing and self.raft.role is not Role.LEADER:
            self._outgoing.clear()
        if leader is not None and self._held:
            for p in list(self._held.values()):
                if p.avoid is None or p.avoid != leader:
                    self._redispatch(p)

    # ------------------------------------------------------------------ snapshots

    @property
    def _resend_after(self) -> float:
        return self.raft.options.election_timeout[1]

    def _snapshot_due(self) -> bool:
        every = self.options.snapshot_every
        return bool(every) and self.kv.applied_index - self._snapshot_index >= every

    def _capture_due(self) -> bool:
        return not self._capturing and self._snapshot_due() and not self.raft.removed

    def _capture(self) -> SnapshotCapture:
        """Freeze the state machine for the driver to save in the background."""
        self._capturing = True
        core = self.raft
        index = self.kv.applied_index
        term = core.log.term_at(index)
        assert term is not None, "applied entries are still in the log"
        meta = SnapshotMeta(index, term, core.membership_at(index).to_dict())
        frozen = self.kv.freeze()  # a copy of references: the encoding comes later
        return SnapshotCapture(meta, frozen.lines(), len(frozen))

    def _send_snapshot(self, peer: str) -> None:
        """The core wants `peer` to get a snapshot: start (or go on with) a transfer."""
        source = self._snapshot
        if source is None:
            raise AssertionError("the core compacted a log that no snapshot covers")
        out = self._outgoing.get(peer)
        term = self.raft.term
        if out is not None and out.source is source and out.term == term:
            return  # already on its way
        self._outgoing[peer] = out = Outgoing(source, term, last_progress=self.now)
        self._pump(peer, out)

    def _pump(self, peer: str, out: Outgoing) -> None:
        chunk = self.options.snapshot_chunk
        limit = min(out.source.size, out.acked + chunk * self.options.snapshot_window)
        while out.sent < limit:
            length = min(chunk, out.source.size - out.sent)
            self._messages.append(
                chunk_message(self.id, peer, out.term, out.source, out.sent, length)
            )
            out.sent += length

    def _on_chunk_ack(self, m: Message) -> None:
        out = self._outgoing.get(m.src)
        if out is None or m.term != out.term or m.index != out.source.meta.index:
            return
        if m.reject:
            del self._outgoing[m.src]
            return
        offset = min(m.ctx, out.source.size)
        out.last_progress = self.now
        if offset < out.acked or offset > out.sent:
            out.sent = offset  # the follower starts over, or lost what followed
        out.acked = offset
        out.sent = max(out.sent, offset)
        self._pump(m.src, out)

    def _resend_stalled(self) -> None:
        """Resend from the last acknowledged offset what went unanswered; forget
        transfers the core no longer waits for (the follower installed it)."""
        progress = self.raft.progress
        wait = self._resend_after
        for peer, out in list(self._outgoing.items()):
            pr = progress.get(peer)
            if pr is None or pr.match >= out.source.meta.index:
                del self._outgoing[peer]  # installed (or gone from the membership)
            elif out.last_progress + wait <= self.now and out.acked < out.source.size:
                out.sent, out.last_progress = out.acked, self.now
                self._pump(peer, out)

    def _on_chunk(self, m: Message) -> None:
        core = self.raft
        if m.term != core.term or m.src != core.leader_id:
            return  # not (yet) from the leader we follow: it resends
        if m.index <= core.commit or core.log.matches(m.index, m.log_term):
            # We have all that already: let the core answer the leader's request.
            self._drop_incoming()
            self._messages.append(ack_message(self.id, m.src, m, m.commit, stop=True))
            core.step(Message(MT.SNAPSHOT, m.term, m.src, self.id, m.index, m.log_term))
            return
        inc = self._incoming
        if inc is not None and (inc.leader, inc.term, inc.meta.index, inc.meta.term) != (
            m.src,
            m.term,
            m.index,
            m.log_term,
        ):
            self._drop_incoming()
            inc = None
        if inc is None:
            if m.ctx != 0 or self._open_receiver is None:
                self._messages.append(
                    ack_message(self.id, m.src, m, 0, stop=self._open_receiver is None)
                )
                return
            payload = m.snapshot if isinstance(m.snapshot, dict) else {}
            membership = payload.get("membership")
            if not isinstance(membership, dict):
                return
            meta = SnapshotMeta(m.index, m.log_term, membership)
            receiver = self._open_receiver(meta, m.commit)
            inc = self._incoming = Incoming(m.src, m.term, meta, m.commit, receiver)
        if inc.loading:
            self._messages.append(ack_message(self.id, m.src, m, inc.size))
            return
        receiver = inc.receiver
        if m.ctx == receiver.received:
            try:
                data = chunk_data(m)
                if receiver.received + len(data) > inc.size:
                    raise ValueError("more bytes than the snapshot's announced size")
                receiver.write(data)
            except ValueError as exc:
                # Bytes that cannot be this snapshot: start it over.
                self._events.append(
                    {"event": "snapshot_rejected", "term": core.term, "reason": str(exc)}
                )
                self._drop_incoming()
                self._messages.append(ack_message(self.id, m.src, m, 0))
                return
            if receiver.received == inc.size:
                inc.loading = True
                self._load = receiver  # the driver verifies and decodes it off the loop
        self._messages.append(ack_message(self.id, m.src, m, receiver.received))

    def _drop_incoming(self) -> None:
        inc, self._incoming = self._incoming, None
        if inc is not None:
            if self._load is inc.receiver:
                self._load = None
            inc.receiver.abort()

    def _install(self, m: Message, rd: NodeReady) -> None:
        """The core installed a snapshot: the state machine becomes the decoded one."""
        stash = self._install_kv
        self._install_kv = None
        if stash is None or stash[:2] != (m.index, m.log_term):
            raise AssertionError(f"the core installed snapshot {m.index} that was never decoded")
        _, _, kv, source = stash
        self.kv = kv
        self._snapshot, self._snapshot_index = source, m.index
        rd.install = source
        # Reads that waited for entries the snapshot covers may be served now. A
        # write of ours that waited is in it or was lost with the log we dropped:
        # which, only the client's retry can tell (its session answers it).
        if self._apply_waits:
            self._wake_reads()
        for waiter in self._proposals.drop_upto(m.index):
            self._fail_id(waiter, WRITE_TIMEOUT)


def _refusal(result: dict[str, Any]) -> Failure:
    """A store result that is an error (a refused command or read), as an answer:
    409, with whatever else the store said (e.g. the compacted revision)."""
    extra = {k: v for k, v in result.items() if k not in ("error", "message")}
    return Failure(409, str(result["error"]), str(result.get("message", "")), extra)
