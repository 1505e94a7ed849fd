"""Simulated kvcluster nodes: Raft cores plus kv state machines that answer clients.

`SimCluster` extends `RaftNet` with what the node process (kvcluster.server)
adds around the core: a `KVStore` per node, volatile, so rebuilt after a
restart from the node's latest snapshot and the log after it; a snapshot every
`snapshot_every` applied entries, with log compaction, so lagging followers
are caught up by InstallSnapshot; writes proposed at the leader and answered
when their entry applies; followers forwarding writes (and, in the `proxy` and
`lease` read modes, reads) to the leader they know; linearizable reads through
ReadIndex (or the leader's lease), answered once the node has applied the read
index; serializable reads answered at once from local state.

Client requests and replies are `schedule()`d callbacks with a network delay.
A hop between two nodes (a forwarded request, its answer) is subject to the
same partitions and loss as Raft messages; a hop between a client and a node is
lost only if the node is down or restarts in between (a new process has other
connections). The network never duplicates client requests: HTTP does not;
retries, which carry the same (client_id, seq), are the clients' business.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..kv import KVStore
from ..raft import Entry, EntryKind, NotLeader
from .net import RaftNet, Snapshot

ReadMode = Literal["proxy", "read_index", "lease"]
READ_MODES: tuple[ReadMode, ...] = ("proxy", "read_index", "lease")


@dataclass(frozen=True, slots=True)
class Request:
    """One attempt of a client operation, as it travels to (and between) nodes."""

    client: str
    attempt: int  # the client's attempt number: a late answer to an old one is ignored
    op: Literal["put", "get", "delete"]
    key: str
    value: str | None = None
    seq: int = 0  # with `client` the write session (KVStore dedups retries)
    serializable: bool = False
    via: str | None = None  # the node that forwarded it to the leader


@dataclass(frozen=True, slots=True)
class Reply:
    """What a node answers. `applied` is False only when the request is known
    not to have taken effect (so the client may report a failure)."""

    ok: bool
    value: str | None = None  # what a get observed
    error: str = ""
    leader: str | None = None  # the answering node's idea of the leader
    applied: bool | None = None


ReplyHandler = Callable[[Request, Reply], None]


class SimServer:
    """The volatile half of one node's life: it is lost when the node crashes."""

    def __init__(self, nid: str, snapshot: Snapshot | None = None) -> None:
        self.nid = nid
        self.kv = KVStore() if snapshot is None else KVStore.restore(snapshot.data)
        self.proposals: dict[int, list[tuple[int, Request]]] = {}  # index -> (term, req)
        self.reads: dict[int, Request] = {}  # ReadIndex ctx -> request
        self.read_waiters: list[tuple[int, int, Request]] = []  # (index, n, request)
        self.alive = True


class SimCluster(RaftNet):
    """RaftNet with a kv server on every node (see the module docstring)."""

    def __init__(
        self,
        nodes: int = 3,
        *,
        read_mode: ReadMode = "read_index",
        client_latency: tuple[float, float] = (0.001, 0.005),
        snapshot_every: int = 0,
        snapshot_keep: int = 0,
        **net_args: Any,
    ) -> None:
        """Every `snapshot_every` applied entries (0: never) a node snapshots its
        kv store and compacts its log but for the last `snapshot_keep` entries,
        as `kvcluster serve --snapshot-every` does."""
        self.servers: dict[str, SimServer] = {}
        self.read_mode = read_mode
        self.snapshot_every = snapshot_every
        self.snapshot_keep = snapshot_keep
        self.snapshots_taken = 0
        self.snapshots_installed = 0
        self.client_latency = client_latency
        self.reply_to: ReplyHandler = lambda req, reply: None  # set by the clients
        self._ctx = itertools.count(1)
        self._waiter_ids = itertools.count()
        self.forwarded = 0
        super().__init__(nodes, record=False, **net_args)

    # ------------------------------------------------------------------ lifecycle

    def on_start(self, nid: str) -> None:
        self.servers[nid] = SimServer(nid, self.storage[nid].snapshot)

    def on_crash(self, nid: str) -> None:
        self.servers[nid].alive = False

    # ------------------------------------------------------------------ transport

    def _client_hop(self) -> float:
        return self.rng.uniform(*self.client_latency)

    def submit(self, nid: str, req: Request) -> None:
        """A client sends `req` to node `nid`."""
        target = self.servers[nid]
        self.schedule(self.now + self._client_hop(), lambda: self._arrive(target, req))

    def _arrive(self, server: SimServer, req: Request) -> None:
        if server.alive:  # a request to a crashed (or since restarted) process is lost
            self._handle(server, req)

    def _node_hop(self, src: str, dst: str, deliver: Callable[[], None]) -> None:
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

    def _reply(self, server: SimServer, req: Request, reply: Reply) -> None:
        """Answer `req` from `server`, through the node that forwarded it, if any."""
        if req.via is None:
            self.schedule(self.now + self._client_hop(), lambda: self.reply_to(req, reply))
            return
        via = self.servers[req.via]

        def relay() -> None:
            if via.alive:
                self.schedule(self.now + self._client_hop(), lambda: self.reply_to(req, reply))

        self._node_hop(server.nid, via.nid, relay)

    # ------------------------------------------------------------------ serving

    def _handle(self, server: SimServer, req: Request) -> None:
        nid = server.nid
        node = self._sync(nid)
        if req.op == "get":
            if req.serializable:
                self._serve_read(server, req)
            elif node.is_leader or self.read_mode == "read_index":
                self._read_barrier(server, req)
            else:
                self._forward(server, req)
        elif node.is_leader:
            self._propose(server, req)
        else:
            self._forward(server, req)

    def _forward(self, server: SimServer, req: Request) -> None:
        leader = self.nodes[server.nid].leader_id
        if req.via is not None or leader is None or leader == server.nid:
            # Not (or no longer) the leader, and no better idea: the client retries.
            self._reply(server, req, Reply(False, error="not_leader", leader=leader, applied=False))
            return
        self.forwarded += 1
        fwd = replace(req, via=server.nid)
        target = self.servers[leader]
        self._node_hop(server.nid, leader, lambda: self._arrive(target, fwd))

    def _propose(self, server: SimServer, req: Request) -> None:
        cmd: dict[str, Any] = {
            "op": req.op,
            "key": req.key,
            "client_id": req.client,
            "seq": req.seq,
        }
        if req.op == "put":
            cmd["value"] = req.value
        try:
            index, term = self.propose(server.nid, cmd, flush=False)
        except NotLeader as exc:
            self._reply(
                server, req, Reply(False, error="not_leader", leader=exc.leader, applied=False)
            )
            return
        server.proposals.setdefault(index, []).append((term, req))
        self.flush(server.nid)

    def _read_barrier(self, server: SimServer, req: Request) -> None:
        ctx = next(self._ctx)
        server.reads[ctx] = req
        self.read_index(server.nid, ctx, lease=self.read_mode == "lease")

    def _serve_read(self, server: SimServer, req: Request) -> None:
        kv = server.kv.get(req.key)
        leader = self.nodes[server.nid].leader_id
        self._reply(server, req, Reply(True, value=None if kv is None else kv.value, leader=leader))

    # ------------------------------------------------------------------ hooks

    def on_committed(self, nid: str, entries: list[Entry]) -> None:
        server = self.servers[nid]
        kv = server.kv
        for e in entries:
            result: dict[str, Any] | None = None
            if e.kind is EntryKind.NORMAL:
                result = kv.apply(e.index, e.data)
            else:
                kv.mark_applied(e.index)
            waiting = server.proposals.pop(e.index, None)
            for term, req in waiting or ():
                if term != e.term:
                    reply = Reply(False, error="not_applied", applied=False)
                elif result is not None and "error" in result:
                    reply = Reply(False, error=str(result["error"]), applied=False)
                else:
                    reply = Reply(True, leader=nid)
                self._reply(server, req, reply)
        every = self.snapshot_every
        if every and kv.applied_index - self.storage[nid].base >= every:
            self.take_snapshot(nid, kv.snapshot(), keep=self.snapshot_keep)
            self.snapshots_taken += 1
        self._wake_reads(server)

    def on_install(self, nid: str, snapshot: Snapshot) -> None:
        server = self.servers[nid]
        server.kv = KVStore.restore(snapshot.data)
        self.snapshots_installed += 1
        self._wake_reads(server)

    def _wake_reads(self, server: SimServer) -> None:
        waiters = server.read_waiters
        while waiters and waiters[0][0] <= server.kv.applied_index:
            self._serve_read(server, heapq.heappop(waiters)[2])

    def on_read(self, nid: str, ctx: int, index: int | None) -> None:
        server = self.servers[nid]
        req = server.reads.pop(ctx, None)
        if req is None:
            return
        if index is None:
            leader = self.nodes[nid].leader_id
            self._reply(server, req, Reply(False, error="read_failed", leader=leader))
        elif server.kv.applied_index >= index:
            self._serve_read(server, req)
        else:
            heapq.heappush(server.read_waiters, (index, next(self._waiter_ids), req))

    # ------------------------------------------------------------------ checks

    def check_stores(self) -> None:
        """Live nodes that applied the same prefix hold the same kv state."""
        by_index: dict[int, tuple[str, KVStore]] = {}
        for nid in sorted(self.alive):
            kv = self.servers[nid].kv
            seen = by_index.setdefault(kv.applied_index, (nid, kv))
            if seen[1] != kv:
                self._fail(
                    f"state machine safety: {seen[0]} and {nid} applied up to "
                    f"{kv.applied_index} but hold different kv states"
                )
