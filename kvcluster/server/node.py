"""The node: drives the Raft core with tornado's clock, storage, peers and the kv store.

Every input (a peer batch, a proposal, a read, a timer) only feeds the core and
schedules one `_process_ready` for the end of this IOLoop iteration, so all the
work that arrived together is persisted, sent and applied together.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tornado.ioloop import IOLoop, PeriodicCallback

from ..kv import KVStore
from ..raft import (
    ConfigChangeError,
    Entry,
    EntryKind,
    Member,
    Membership,
    Message,
    MessageType,
    NotLeader,
    RaftNode,
    Ready,
)
from ..storage import DiskStorage, MemoryStorage, Snapshot, Storage
from .config import NodeConfig
from .events import EventLog
from .http_conn import ConnectionFailed, ConnectionPool, KeepAliveConnection
from .transport import LinkFaults, PeerTransport

_T = TypeVar("_T")


@dataclass(slots=True)
class _Proposal:
    """An entry we appended as leader, and who waits for it to apply."""

    term: int
    session: tuple[str, int] | None  # the command's (client_id, seq), if it has one
    waiters: list[asyncio.Future[dict[str, Any] | None]] = field(default_factory=list)


def _session_of(command: Any) -> tuple[str, int] | None:
    if isinstance(command, dict):
        client_id, seq = command.get("client_id"), command.get("seq")
        if isinstance(client_id, str) and isinstance(seq, int):
            return client_id, seq
    return None


class NotApplied(Exception):
    """The command certainly did not take effect (e.g. its entry was overwritten)."""


class ReadFailed(Exception):
    """Leadership could not be confirmed for a linearizable read."""


def open_storage(config: NodeConfig, incarnation: str) -> Storage:
    if config.storage == "disk":
        assert config.data_dir is not None
        return DiskStorage(
            config.data_dir, name=config.name, incarnation=incarnation, fsync=config.fsync
        )
    return MemoryStorage()


class NodeServer:
    def __init__(self, config: NodeConfig, storage: Storage | None = None) -> None:
        self.config = config
        self.events = EventLog(config.events_path, config.name)
        # A node that joins has no place in anyone's memory yet: a fresh
        # incarnation. Disk storage remembers the first one it was given.
        incarnation = config.incarnation or (uuid.uuid4().hex[:12] if config.join else "")
        self.storage: Storage = storage or open_storage(config, incarnation)
        persisted = self.storage.load()
        self.incarnation = (
            persisted.incarnation if persisted.incarnation is not None else incarnation
        )
        self.recovered = not persisted.empty  # back from our own disk, as our old self
        self._snapshot: Snapshot | None = persisted.snapshot
        if persisted.snapshot is not None:
            self.kv = KVStore.restore(persisted.snapshot.data)
            membership = Membership.from_dict(persisted.snapshot.membership)
        else:
            self.kv = KVStore()
            membership = Membership(
                {name: Member(url, True, "") for name, url in config.initial_members.items()}
            )
        self.core = RaftNode(
            config.name,
            options=config.raft,
            rng=random.Random(config.seed),
            now=time.monotonic(),
            incarnation=self.incarnation,
            membership=membership,
            hard_state=persisted.hard_state,
            entries=persisted.entries,
            snapshot_index=persisted.snapshot_index,
            snapshot_term=persisted.snapshot_term,
        )
        self.applied_index = persisted.snapshot_index
        self.transport = PeerTransport(config.name, self.address, config.token, config.peer_timeout)
        self._pools: dict[str, ConnectionPool] = {}
        self._proposals: dict[int, _Proposal] = {}  # by log index, until applied
        self._proposed_sessions: dict[tuple[str, int], int] = {}  # (client_id, seq) -> index
        self._reads: dict[int, asyncio.Future[int]] = {}
        self._read_ids = itertools.count(1)
        self._apply_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        self._ready_scheduled = False
        self._timer: object | None = None
        self._timer_deadline = 0.0
        self._membership_seen: Membership | None = None
        self._leader_seen: str | None = None
        self._leader_waiters: list[asyncio.Future[None]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._join_task: asyncio.Task[None] | None = None
        self._sync_timer: PeriodicCallback | None = None
        self.joined = asyncio.Event()
        self.stopped = False

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        return self.config.advertise_url or f"http://{self.config.host}:{self.config.port}"

    def start(self) -> None:
        self.events.emit("start", incarnation=self.incarnation, address=self.address)
        self._sync_membership()
        self._flush_task = asyncio.ensure_future(self._flush_events())
        known_address = self.core.membership.address(self.config.name)
        if self.config.join and (not self.recovered or known_address != self.address):
            self._join_task = asyncio.ensure_future(self._join())
        else:
            self.joined.set()
        interval = self.storage.sync_interval
        if interval:
            self._sync_timer = PeriodicCallback(self.storage.sync, interval * 1000)
            self._sync_timer.start()
        self._schedule_ready()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.events.emit("stop")
        self.events.close()
        self.transport.close()
        for pool in self._pools.values():
            pool.close()
        for task in (self._flush_task, self._join_task):
            if task is not None:
                task.cancel()
        if self._sync_timer is not None:
            self._sync_timer.stop()
        self.storage.close()

    async def _flush_events(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            self.events.flush()

    # ------------------------------------------------------------------ the ready loop

    def _schedule_ready(self) -> None:
        if not self._ready_scheduled and not self.stopped:
            self._ready_scheduled = True
            IOLoop.current().add_callback(self._process_ready)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule_ready()

    def _process_ready(self) -> None:
        self._ready_scheduled = False
        if self.stopped:
            return
        core = self.core
        core.tick(time.monotonic())
        if self._note_leader() and core.is_leader:
            # We have just won. Let the requests held for a leader run first (their
            # wakeups are queued ahead of this callback): their proposals then go
            # out with our no-op in the term's first AppendEntries, a replication
            # round sooner than after it.
            self._schedule_ready()
            return
        rd: Ready | None = core.ready()
        while rd:
            self._handle_ready(rd)
            rd = core.ready() if core.has_ready() else None
        self._arm_timer(core.next_deadline())

    def _handle_ready(self, rd: Ready) -> None:
        # The Raft contract: persist, then send, then apply.
        if rd.snapshot is not None:
            self._install_snapshot(rd.snapshot)
        if rd.hard_state is not None or rd.entries:
            self.storage.save(rd.hard_state, rd.entries)
        self.core.advance(rd)
        for m in rd.messages:
            if m.type is MessageType.SNAPSHOT:
                self._fill_snapshot(m)
            self.transport.send(m)
        if rd.messages:
            self.transport.flush()
        if rd.committed:
            self._apply(rd.committed)
            every = self.config.snapshot_every
            last = self._snapshot.index if self._snapshot is not None else 0
            if every and self.applied_index - last >= every:
                self._take_snapshot()
        for r in rd.reads:
            fut = self._reads.pop(r.ctx, None)
            if fut is not None and not fut.done():
                fut.set_result(r.index)
        for ctx in rd.failed_reads:
            fut = self._reads.pop(ctx, None)
            if fut is not None and not fut.done():
                fut.set_exception(ReadFailed("leadership could not be confirmed"))
        if rd.events:
            self.events.emit_raft(rd.events)
        self._sync_membership()
        self._note_leader()

    def _note_leader(self) -> bool:
        """Wake wait_for_leader's waiters if the leader changed; True if it did."""
        if self.core.leader_id == self._leader_seen:
            return False
        self._leader_seen = self.core.leader_id
        waiters, self._leader_waiters = self._leader_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        return True

    def _take_snapshot(self) -> None:
        """Capture the state machine, save it, and let the core forget the log
        behind it (but for a margin that slightly slow followers still need)."""
        index = self.applied_index
        term = self.core.log.term_at(index)
        assert term is not None
        membership = self.core.membership_at(index).to_dict()
        self._snapshot = Snapshot(index, term, membership, self.kv.snapshot())
        self.storage.save_snapshot(self._snapshot)
        self.core.compact(index - self.config.snapshot_keep)
        self.events.emit("snapshot_taken", index=index, keys=len(self.kv))

    def _install_snapshot(self, m: Message) -> None:
        """A leader sent its state: it replaces ours before anything else."""
        snap = Snapshot(m.index, m.log_term, m.snapshot["membership"], m.snapshot["data"])
        self.storage.save_snapshot(snap)
        self.kv = KVStore.restore(snap.data)
        self._snapshot = snap
        self.applied_index = snap.index
        self._wake_apply_waiters()

    def _fill_snapshot(self, m: Message) -> None:
        snap = self._snapshot
        assert snap is not None, "the core compacted a log no snapshot covers"
        m.index, m.log_term = snap.index, snap.term
        m.snapshot = {"membership": snap.membership, "data": snap.data}

    def _arm_timer(self, deadline: float) -> None:
        loop = IOLoop.current()
        if self._timer is not None:
            if deadline >= self._timer_deadline:
                return  # the armed timer fires first; it will re-arm
            loop.remove_timeout(self._timer)
        self._timer_deadline = deadline
        self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _apply(self, entries: list[Entry]) -> None:
        for e in entries:
            result: dict[str, Any] | None = None
            if e.kind is EntryKind.NORMAL:
                result = self.kv.apply(e.index, e.data)
            else:
                self.kv.mark_applied(e.index)
            self.applied_index = e.index
            proposal = self._proposals.pop(e.index, None)
            if proposal is not None:
                self._forget_session(proposal, e.index)
                for fut in proposal.waiters:
                    if fut.done():
                        continue
                    if proposal.term == e.term:
                        fut.set_result(result)
                    else:
                        fut.set_exception(NotApplied("the entry was replaced by a new leader"))
        self._wake_apply_waiters()

    def _wake_apply_waiters(self) -> None:
        waiters = self._apply_waiters
        while waiters and waiters[0][0] <= self.applied_index:
            fut_done = heapq.heappop(waiters)[2]
            if not fut_done.done():
                fut_done.set_result(None)

    def _sync_membership(self) -> None:
        m = self.core.membership
        if m is not self._membership_seen:
            self._membership_seen = m
            self.transport.set_peers({i: mem.address for i, mem in m.members.items()})
            self.events.emit("membership", members=m.to_dict())

    # ------------------------------------------------------------------ inputs

    def step(self, messages: list[Message], sender_address: str | None = None) -> None:
        core = self.core
        core.tick(time.monotonic())
        blocked = self.transport.faults.block_in
        if messages and sender_address:
            self.transport.learn(messages[0].src, sender_address)
        for m in messages:
            if m.dst == core.id and m.src not in blocked:
                core.step(m)
        self._schedule_ready()

    async def propose(self, command: Any, timeout: float) -> dict[str, Any] | None:
        """Replicate a command and return the state machine's result.

        Raises NotLeader (not applied), NotApplied, or TimeoutError (outcome unknown).
        A retry of a command still on its way (same client_id and seq, proposed by
        us in this term) waits for that entry instead of appending the command
        again: under overload, clients that give up before the commit would
        otherwise add an entry per retry and make the overload worse.
        """
        session = _session_of(command)
        if session is not None:
            earlier = self._proposals.get(self._proposed_sessions.get(session, 0))
            if (
                earlier is not None
                and earlier.session == session
                and earlier.term == self.core.term
                and self.core.is_leader
            ):
                return await self._wait_proposal(earlier, timeout)
        index, term = self.core.propose(command)
        return await self._wait_entry(index, term, timeout, session)

    async def _wait_entry(
        self, index: int, term: int, timeout: float, session: tuple[str, int] | None = None
    ) -> dict[str, Any] | None:
        replaced = self._proposals.get(index)
        if replaced is not None:
            # Ours from an earlier term, and gone from our log since (entries are
            # never appended twice at one index in a term): it was not committed.
            self._forget_session(replaced, index)
            for fut in replaced.waiters:
                if not fut.done():
                    fut.set_exception(NotApplied("the entry was replaced by a new leader"))
        proposal = self._proposals[index] = _Proposal(term, session)
        if session is not None:
            self._proposed_sessions[session] = index
        self._schedule_ready()
        return await self._wait_proposal(proposal, timeout)

    def _forget_session(self, proposal: _Proposal, index: int) -> None:
        if proposal.session is not None and self._proposed_sessions.get(proposal.session) == index:
            del self._proposed_sessions[proposal.session]

    async def _wait_proposal(self, proposal: _Proposal, timeout: float) -> dict[str, Any] | None:
        fut: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        proposal.waiters.append(fut)
        return await _settled_within(fut, timeout)

    async def wait_applied(self, index: int, timeout: float) -> None:
        if self.applied_index >= index:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._apply_waiters, (index, next(self._waiter_ids), fut))
        await _settled_within(fut, timeout)

    async def wait_for_leader(self, timeout: float, *, other_than: str | None = None) -> str | None:
        """The leader's id, waiting up to `timeout` for an election to finish
        (with `other_than`: for a leader other than that one); None on timeout."""
        deadline = time.monotonic() + timeout
        while self.core.leader_id is None or self.core.leader_id == other_than:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if len(self._leader_waiters) > 1000:  # no election for a while: drop the expired
                self._leader_waiters = [f for f in self._leader_waiters if not f.done()]
            self._leader_waiters.append(fut)
            try:
                await _settled_within(fut, remaining)
            except TimeoutError:
                return None
        return self.core.leader_id

    async def read_barrier(self, *, lease: bool, timeout: float) -> None:
        """Return once a linearizable read may be served from the local kv store.

        Raises ReadFailed or TimeoutError if no leader could confirm in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            ctx = next(self._read_ids)
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._reads[ctx] = fut
            self.core.tick(time.monotonic())  # a lease is judged against the current time
            self.core.read_index(ctx, lease=lease)
            self._schedule_ready()
            try:
                index = await _settled_within(fut, max(0.0, deadline - time.monotonic()))
            except ReadFailed:
                # The leader changed under us; wait for the next one and retry.
                if await self.wait_for_leader(deadline - time.monotonic()) is None:
                    raise
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.005)
                continue
            finally:
                self._reads.pop(ctx, None)
            await self.wait_applied(index, max(0.0, deadline - time.monotonic()))
            return

    # ------------------------------------------------------------------ membership

    async def change_membership(
        self, change: str, node_id: str, timeout: float, member: Member | None = None
    ) -> Membership:
        """Add (as a learner) or remove one member through the log."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.core.membership
            if change == "add":
                assert member is not None
                old = current.members.get(node_id)
                if old and (old.address, old.incarnation) == (member.address, member.incarnation):
                    return current  # already added (a retried /register)
                new = current.with_member(node_id, member)
            else:
                if node_id not in current.members:
                    return current
                new = current.without(node_id)
            try:
                index, term = self.core.propose_membership(new)
            except ConfigChangeError:
                # Another change (often a learner's promotion) must commit first.
                await self.wait_applied(
                    self.applied_index + 1, max(0.0, deadline - time.monotonic())
                )
                continue
            await self._wait_entry(index, term, max(0.0, deadline - time.monotonic()))
            return new

    async def _join(self) -> None:
        """Ask an existing member to add us; a follower redirects us to the leader."""
        body = json.dumps(
            {"id": self.config.name, "address": self.address, "incarnation": self.incarnation}
        ).encode()
        headers = {"Authorization": f"Bearer {self.config.token}"}
        attempt = 0
        while not self.joined.is_set():
            target = self.config.join[attempt % len(self.config.join)] + "/register"
            attempt += 1
            for _hop in range(5):
                base, _, path = target.partition("/register")
                conn = KeepAliveConnection(base)
                try:
                    resp = await conn.request("POST", "/register" + path, body, headers, 10.0)
                except (ConnectionFailed, ValueError):
                    break
                finally:
                    conn.close()
                if resp.status == 307 and "location" in resp.headers:
                    target = resp.headers["location"]
                    continue
                if resp.status == 200:
                    self.events.emit("joined", via=base)
                    self.joined.set()
                break
            if not self.joined.is_set():
                await asyncio.sleep(min(0.05 * attempt, 1.0))

    def set_faults(self, faults: LinkFaults) -> None:
        """Fault injection: what this node drops or delays on its links."""
        self.transport.faults = faults
        self.events.emit("fault", **faults.to_dict())

    # ------------------------------------------------------------------ helpers

    def leader_address(self) -> str | None:
        leader = self.core.leader_id
        return self.core.membership.address(leader) if leader else None

    def pool(self, address: str) -> ConnectionPool:
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = ConnectionPool(address)
        return pool

    def status(self) -> dict[str, Any]:
        core = self.core
        return {
            **core.status(),
            "name": self.config.name,
            "address": self.address,
            "incarnation": self.incarnation,
            "leader_address": self.leader_address(),
            "applied_index": self.applied_index,
            "revision": self.kv.revision,
            "keys": len(self.kv),
            "read_mode": self.config.read_mode,
            "members": core.membership.to_dict(),
            "peer_batches_sent": self.transport.sent_batches,
            "peer_messages_sent": self.transport.sent_messages,
            "raft": {
                "election_timeout": list(core.options.election_timeout),
                "heartbeat_interval": core.options.heartbeat_interval,
                "pre_vote": core.options.pre_vote,
                "check_quorum": core.options.check_quorum,
            },
        }


__all__ = ["NodeServer", "NotApplied", "NotLeader", "ReadFailed"]


async def _settled_within(fut: asyncio.Future[_T], timeout: float) -> _T:
    """`await fut`, or TimeoutError after `timeout` seconds.

    asyncio.wait_for does the same with a second future and two callbacks of
    its own: 5% of a busy leader's CPU when every write and read waits on one.
    Whoever settles `fut` checks `done()` first, so the timeout may win a race.
    """
    handle = asyncio.get_running_loop().call_later(timeout, _time_out, fut)
    try:
        return await fut
    finally:
        handle.cancel()


def _time_out(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
