"""The node process's driver: the node layer with a real clock, real files and sockets.

All decisions live in `kvcluster.node.Node`; this module only does what its
ready batches say, in their order, with the process's I/O:

- every input (a peer batch, a client request, a relayed answer, a timer)
  feeds the node and schedules one `_process` for the end of this event loop
  iteration, so all the work that arrived together is persisted, sent and
  answered together;
- persisting comes first, and any storage error stops the process at once
  with one log line and exit status 3 (fail-stop: never a retry of an fsync,
  never serving on after a failed write);
- relays to the leader go through the one internal HTTP client;
- snapshots are encoded and written, or verified and decoded, in one worker
  thread, so the event loop keeps answering heartbeats meanwhile;
- a node that learns it was removed from the cluster says so in its log and
  calls `on_removed` (the server then closes and the process exits with 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import random
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..kv import KVStore
from ..node import Answer, Forward, Node, NodeOptions, NodeReady, Request
from ..node.node import SnapshotCapture
from ..raft import Member, Membership, Message
from ..storage import (
    DiskStorage,
    MemoryStorage,
    SnapshotReceiver,
    SnapshotSource,
    Storage,
    StorageError,
)
from ..storage.faulty import FailingStorage
from .config import NodeConfig
from .events import EventLog
from .http import ConnectionFailed, ConnectionPool
from .metrics import NodeMetrics
from .peers import LinkFaults, PeerLinks

log = logging.getLogger("kvcluster.node")

LEADER_HEADER = "X-Kvcluster-Leader"
FORWARDED_HEADER = "X-Kvcluster-Forwarded"
EXIT_STORAGE_FAILED = 3
FLUSH_EVERY = 0.05  # seconds between event-file flushes (and loop stall checks)
GC_PAUSE_EVENT = 0.02  # seconds: a collection longer than this is an event
SLOW_PERSIST = 0.05  # seconds: a ready batch that took longer to persist is an event
FREEZE_EVERY = 20_000  # applied entries between two gc.freeze() (see _freeze_long_lived)

Responder = Callable[[Answer], None]


def open_storage(config: NodeConfig, incarnation: str) -> Storage:
    if config.storage == "disk":
        assert config.data_dir is not None
        return DiskStorage(
            config.data_dir, name=config.name, incarnation=incarnation, fsync=config.fsync
        )
    return MemoryStorage()


def fail_stop(what: str, exc: BaseException) -> None:
    """Stop the process now: its storage can no longer be trusted (a failed
    fsync may have dropped the data it was meant to make durable), so no
    answer, message or acknowledgement may leave it. A restart recovers from
    what the disk really holds."""
    log.critical("storage failed while %s: %r; stopping the node (fail-stop)", what, exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_STORAGE_FAILED)


@contextlib.contextmanager
def _storage_errors_stop(what: str) -> Iterator[None]:
    """The node layer reads and writes snapshot chunks itself (a saved snapshot's
    bytes for a follower, a leader's chunks into a receiver), and does no other
    I/O: an OSError out of it is a storage error, and it stops the node too."""
    try:
        yield
    except (OSError, StorageError) as exc:
        fail_stop(what, exc)


class NodeDriver:
    """One node process's I/O around its `Node` (see the module docstring)."""

    def __init__(self, config: NodeConfig, storage: Storage | None = None) -> None:
        self.config = config
        self.events = EventLog(config.events_path, config.name)
        # A node that joins has no place in anyone's memory yet: a fresh
        # incarnation. Disk storage remembers the first one it was given.
        incarnation = config.incarnation or (uuid.uuid4().hex[:12] if config.join else "")
        # A corrupt log found while recovering stops the node like any storage
        # error: one line naming the file and offset, exit 3, nothing served.
        with _storage_errors_stop("recovering the data directory"):
            self.storage: Storage = storage or open_storage(config, incarnation)
            persisted = self.storage.load()
        self.incarnation = (
            persisted.incarnation if persisted.incarnation is not None else incarnation
        )
        self.recovered = not persisted.empty  # back from our own disk, as our old self
        source = persisted.source
        kv = KVStore.from_lines(source.payload()) if source is not None else KVStore()
        bootstrap = Membership(
            {name: Member(url, True, "") for name, url in config.initial_members.items()}
        )
        self.node = Node(
            config.name,
            options=NodeOptions(
                read_mode=config.read_mode,
                request_timeout=config.request_timeout,
                snapshot_every=config.snapshot_every,
                snapshot_keep=config.snapshot_keep,
                session_ttl=config.session_ttl,
                history_keep=config.history_keep,
                quota_bytes=config.quota_bytes,
            ),
            raft=config.raft,
            rng=random.Random(config.seed),
            now=time.monotonic(),
            incarnation=self.incarnation,
            membership=bootstrap,
            hard_state=persisted.hard_state,
            entries=persisted.entries,
            snapshot=source,
            kv=kv,
            open_receiver=self._open_receiver,
            clock_offset=time.time() - time.monotonic(),
            # A new cluster's members go into the log: after a restart the node
            # needs only its data directory (the log has them).
            bootstrap=bootstrap if bootstrap.members else None,
        )
        self.peers = PeerLinks(config.name, self.address, config.token, config.peer_timeout)
        # Prometheus metrics (GET /metrics): WAL fsyncs are timed where they happen.
        self.metrics = NodeMetrics(self)
        if isinstance(self.storage, DiskStorage):
            self.storage.on_wal_fsync = self.metrics.wal_fsync.observe
        self._waiting: dict[int, Responder] = {}
        self._ids = itertools.count(1)
        self._pools: dict[str, ConnectionPool] = {}
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._background = ThreadPoolExecutor(1, thread_name_prefix=f"{config.name}-snapshot")
        self._tasks: set[asyncio.Future[Any]] = set()
        self._sync_timer: asyncio.TimerHandle | None = None
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flush_due = 0.0
        self._gc_started = 0.0
        self.gc_collected_full = 0  # cyclic garbage found by full collections
        self._freeze_at = 0
        self._gc_frozen = 0  # objects in the permanent generation at the last freeze
        self.loop_stall_max = 0.0  # seconds: the longest the event loop was held up
        self.stopped = False
        # Called once the node has learned that it is no longer a member.
        self.on_removed: Callable[[], None] | None = None
        # Called after entries were applied (watches send what changed); None: no cost.
        self.on_applied: Callable[[], None] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def address(self) -> str:
        config = self.config
        host = f"[{config.host}]" if ":" in config.host else config.host
        return config.advertise_url or f"{config.scheme}://{host}:{config.port}"

    def start(self) -> None:
        self.events.emit("start", incarnation=self.incarnation, address=self.address)
        gc.callbacks.append(self._gc_watch)
        self._freeze_long_lived()  # the store loaded from a snapshot, the log from the WAL
        self._schedule_sync()
        self._schedule_flush()
        self._schedule()

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._gc_watch)
        self.events.emit("stop")
        self.events.close()
        self.peers.close()
        for pool in self._pools.values():
            pool.close()
        for task in list(self._tasks):
            task.cancel()
        for handle in (self._timer, self._sync_timer, self._flush_timer):
            if handle is not None:
                handle.cancel()
        self._background.shutdown(wait=False, cancel_futures=True)
        self.storage.close()

    def _freeze_long_lived(self) -> None:
        """Take what is alive now out of the cyclic garbage collector's reach.

        A full collection walks every tracked object while it holds the GIL:
        250,000 log entries took 200-250 ms on a busy 2-core machine, a
        heartbeat missed (measured with bench/snapshot_install.py). What a node
        keeps for long (its log entries, its store, its sessions) is freed by
        reference counting when it goes, never by the cycle collector, so every
        FREEZE_EVERY applied entries, and after loading, taking or installing a
        snapshot, what is alive moves to the permanent generation (gc.freeze)
        and full collections walk only what came since. The young generations
        are collected first, so recent cyclic garbage is not frozen with it;
        older cyclic garbage would be kept, and there is next to none: under
        25 s of 64 clients writing, reading and forwarding on 3 nodes, full
        collections found 0 objects (`gc_collected_full` in /v1/status)."""
        gc.collect(1)
        gc.freeze()
        # Counted here, not in status(): counting walks the whole permanent
        # generation (0.23 ms with a fresh node's ~100,000 objects), and the
        # live view asks for the status ten times a second.
        self._gc_frozen = gc.get_freeze_count()
        self._freeze_at = self.node.applied_index + FREEZE_EVERY

    def _gc_watch(self, phase: str, info: dict[str, int]) -> None:
        """Record the cyclic garbage collector's long pauses: a full collection
        walks every tracked object and holds the GIL (and the event loop) while
        it does, so on a large store it is what can delay a heartbeat."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        if info.get("generation") == 2:
            self.gc_collected_full += info.get("collected", 0)
        if pause > GC_PAUSE_EVENT:
            self.events.emit(
                "gc_pause",
                seconds=round(pause, 4),
                generation=info.get("generation"),
                collected=info.get("collected"),
            )

    def _schedule_sync(self) -> None:
        interval = self.storage.sync_interval
        if interval and not self.stopped:
            self._sync_timer = asyncio.get_running_loop().call_later(interval, self._sync)

    def _sync(self) -> None:
        try:
            self.storage.sync()
        except Exception as exc:
            fail_stop("syncing the write-ahead log", exc)
        self._schedule_sync()

    def _schedule_flush(self) -> None:
        if not self.stopped:
            self._flush_due = time.monotonic() + FLUSH_EVERY
            self._flush_timer = asyncio.get_running_loop().call_later(
                FLUSH_EVERY, self._flush_events
            )

    def _flush_events(self) -> None:
        # This timer doubles as the event loop's stall detector: when it fires
        # late, nothing else on the loop ran either (heartbeats included).
        stall = time.monotonic() - self._flush_due
        self.loop_stall_max = max(self.loop_stall_max, stall)
        if stall > self.config.raft.heartbeat_interval:
            self.events.emit("loop_stall", seconds=round(stall, 4))
        self.events.flush()
        self._schedule_flush()

    # ------------------------------------------------------------------ inputs

    def submit(self, req: Request, respond: Responder) -> None:
        """A client request; `respond` gets its answer (now or later)."""
        req.id = next(self._ids)
        answer = self.node.submit(req, time.monotonic())
        if answer is not None:
            respond(answer)
        else:
            self._waiting[req.id] = respond
        self._schedule()

    def step(self, messages: list[Message], sender_address: str | None = None) -> None:
        """A batch of messages from a peer."""
        blocked = self.peers.faults.block_in
        if messages and sender_address:
            self.peers.learn(messages[0].src, sender_address)
        if blocked:
            messages = [m for m in messages if m.src not in blocked]
        with _storage_errors_stop("sending or receiving a snapshot"):
            self.node.step(messages, time.monotonic())
        self._schedule()

    def set_faults(self, faults: LinkFaults) -> None:
        """Fault injection: what this node drops or delays on its links."""
        self.peers.faults = faults
        self.events.emit("fault", **faults.to_dict())

    def break_disk(self, kind: str, after: int) -> None:
        """Fault injection: the `after`-th storage call of `kind` from now fails,
        as a full or failing disk does (the node then stops: fail-stop)."""
        self.storage = FailingStorage(self.storage, (kind, after))
        self.events.emit("disk_fault", kind=kind, after=after)

    # ------------------------------------------------------------------ the loop

    def _schedule(self) -> None:
        if not self._scheduled and not self.stopped:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._process)

    def _on_timer(self) -> None:
        self._timer = None
        self._process()

    def _process(self) -> None:
        self._scheduled = False
        if self.stopped:
            return
        node = self.node
        applied = node.applied_index
        with _storage_errors_stop("sending a snapshot"):
            node.tick(time.monotonic())
            rd: NodeReady | None = node.ready()
            while rd:
                self._handle(rd)
                rd = node.ready() if node.has_ready() else None
        self._arm_timer(node.next_deadline())
        if self.on_applied is not None and node.applied_index != applied:
            self.on_applied()

    def _handle(self, rd: NodeReady) -> None:
        raft = rd.raft
        try:
            if rd.install is not None:
                self.storage.adopt_snapshot(rd.install)
            if raft.hard_state is not None or raft.entries:
                started = time.perf_counter()
                self.storage.save(raft.hard_state, raft.entries)
                took = time.perf_counter() - started
                if took > SLOW_PERSIST:  # an fsync behind other writeback, a slow disk
                    self.events.emit(
                        "slow_persist", seconds=round(took, 4), entries=len(raft.entries)
                    )
        except Exception as exc:  # ENOSPC, EIO, EMFILE, a failed fsync: all the same
            fail_stop("persisting a ready batch", exc)
        if rd.membership is not None:
            self.peers.set_peers({i: m.address for i, m in rd.membership.members.items()})
        if rd.messages:
            self.peers.send(rd.messages)
        for f in rd.forwards:
            self._start(self._relay(f))
        for answer in rd.answers:
            respond = self._waiting.pop(answer.id, None)
            if respond is not None:
                respond(answer)
        if rd.capture is not None:
            self._start(self._save_snapshot(rd.capture))
        if rd.load is not None:
            self._start(self._load_snapshot(rd.load))
        if rd.events:
            self.events.emit_raft(rd.events)
            self.metrics.raft_events(rd.events)
        if rd.removed:
            self._removed()
        self.node.advance(rd)
        if self.node.applied_index >= self._freeze_at:
            self._freeze_long_lived()

    def _removed(self) -> None:
        """Out of the cluster: say why in the node's log, then let the process end."""
        core = self.node.raft
        how = f"{core.removed_by} says so" if core.removed_by else "this node applied that change"
        data = self.config.data_dir
        keep = (
            f" Its data directory {data} is of no further use: to bring {self.config.name} back,"
            " empty it and start it with --join."
            if data
            else ""
        )
        log.warning(
            "node %s was removed from the cluster (the membership change at index %d is "
            "committed; %s): it stops serving and exits.%s",
            self.config.name,
            core.removed_at,
            how,
            keep,
        )
        self.events.emit("exit", reason="removed", index=core.removed_at)
        self.events.flush()
        if self.on_removed is not None:
            self.on_removed()

    def _arm_timer(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        if self._timer is not None:
            if deadline >= self._timer_at:
                return  # the armed timer fires first; it will re-arm
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._on_timer)

    def _start(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ relays

    def pool(self, address: str) -> ConnectionPool:
        pool = self._pools.get(address)
        if pool is None:
            pool = self._pools[address] = ConnectionPool(address)
        return pool

    async def _relay(self, f: Forward) -> None:
        """Relay a request to the leader with the one internal client."""
        method, target, body, auth = f.request.wire
        headers = {FORWARDED_HEADER: "1", "Content-Type": "application/json"}
        if auth:
            headers["Authorization"] = auth
        rid = f.request.id
        try:
            resp = await self.pool(f.address).request(
                method, target, body, headers, timeout=self.config.request_timeout
            )
        except ConnectionFailed as exc:
            self.node.forward_failed(rid, sent=exc.sent, reason=str(exc))
        else:
            self.node.forward_answered(rid, resp.status, resp.body, f.address)
        self._schedule()

    # ------------------------------------------------------------------ snapshots

    def _open_receiver(self, meta: Any, size: int) -> SnapshotReceiver:
        try:
            return self.storage.open_receiver(meta, size)
        except Exception as exc:
            fail_stop("opening a snapshot to receive", exc)
            raise  # not reached

    async def _save_snapshot(self, capture: SnapshotCapture) -> None:
        """Encode and write a snapshot in the worker thread; adopt it here."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            source = await loop.run_in_executor(
                self._background, self.storage.write_snapshot, capture.meta, capture.lines
            )
            adopted = self.storage.adopt_snapshot(source)
        except Exception as exc:
            fail_stop("writing a snapshot", exc)
        if not adopted:  # a newer one (a leader's) was installed meanwhile
            self.node.snapshot_saved(self.storage.latest_snapshot() or source)
            self._schedule()
            return
        self.node.snapshot_saved(source)
        self._freeze_long_lived()
        took = time.monotonic() - started
        self.metrics.snapshot_save.observe(took)
        self.events.emit(
            "snapshot_saved",
            index=capture.meta.index,
            keys=capture.keys,
            bytes=source.size,
            seconds=round(took, 4),
        )
        self._schedule()

    async def _load_snapshot(self, receiver: SnapshotReceiver) -> None:
        """Verify and decode a snapshot a leader sent, in the worker thread."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            source, kv = await loop.run_in_executor(self._background, _finish_and_decode, receiver)
        except ValueError as exc:
            self.node.snapshot_load_failed(receiver, str(exc))
        except Exception as exc:
            fail_stop("receiving a snapshot", exc)
        else:
            self.node.snapshot_loaded(receiver, source, kv)
            self._freeze_long_lived()
            self.events.emit(
                "snapshot_received",
                index=source.meta.index,
                keys=len(kv),
                bytes=source.size,
                seconds=round(time.monotonic() - started, 4),
            )
        self._schedule()

    # ------------------------------------------------------------------ queries

    def status(self) -> dict[str, Any]:
        return {
            **self.node.status(time.monotonic()),
            "name": self.config.name,
            "address": self.address,
            "incarnation": self.incarnation,
            "loop_stall_max": round(self.loop_stall_max, 4),
            "gc_frozen": self._gc_frozen,  # at the last freeze
            "gc_collected_full": self.gc_collected_full,
            **self.peers.stats(),
            "messages_sent": self.peers.messages_sent(),
        }


def _finish_and_decode(receiver: SnapshotReceiver) -> tuple[SnapshotSource, KVStore]:
    source = receiver.finish()
    return source, KVStore.from_lines(source.payload())
