"""The feed: one JSON frame about the whole cluster, about ten times a second.

Each frame joins what the nodes say (GET /v1/status, asked of every running
node), what they logged (their events files, read as they grow), what the
harness did to them (the Cluster's process handles and link faults, and its
harness.events.jsonl), how many Raft messages went along each link since the
last frame, and the page's client load. The frame's fields are the contract
with the page (kvcluster/dashboard/static); see `Feed.frame`.

Nothing here blocks the event loop: status requests are asynchronous with
short timeouts, and a node that is slow to answer is simply shown as not
answering while its request finishes in the background. While no page is
connected the nodes are not asked anything; the files are still followed so
that a page opened later gets the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard

import orjson

from ..cluster import HARNESS_EVENTS
from ..server.http.client import ConnectionFailed, HttpConnection
from .load import ClientLoad
from .tail import DirectoryTail, JsonlTail
from .topology import faulted_links, process_state

if TYPE_CHECKING:
    from ..cluster import Cluster, NodeHandle

log = logging.getLogger(__name__)

INTERVAL = 0.1  # seconds between frames
STATUS_TIMEOUT = 1.0  # a status request's deadline
STALE = 1.0  # a status older than this: the node is not answering
HISTORY = 10_000  # events and faults kept for a page opened late
MAX_EVENTS_PER_FRAME = 5_000  # more wait for the next frame
MAX_STATUS_BYTES = 1 << 20
STATUS_FIELDS = (
    "role",
    "term",
    "vote",
    "leader",
    "last_index",
    "commit_index",
    "applied_index",
    "election_elapsed",
    "election_timeout",
    "progress",
    "voter",
)


class Subscriber(Protocol):
    """A connected page, as the feed sees it."""

    needs_history: bool

    def send_frame(self, text: str) -> None: ...


class NodePoller:
    """Asks one node for its status, and turns its cumulative message counts
    into what was sent since the previous answer."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.status: dict[str, Any] | None = None
        self.answered_at = -math.inf
        self.task: asyncio.Task[None] | None = None
        self._conn: HttpConnection | None = None
        self._pid: int | None = None
        self._counts: dict[tuple[str, str], int] | None = None  # None: take a new baseline
        self.sent: dict[tuple[str, str], int] = {}  # (peer, type) -> messages since drained

    def forget_counts(self) -> None:
        """Take the next answer's counts as the baseline (nobody watched meanwhile)."""
        self._counts = None
        self.sent.clear()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def poll(self, host: str, port: int, pid: int | None) -> None:
        conn = self._conn
        if conn is None or (conn.host, conn.port) != (host, port):
            self.close()
            conn = self._conn = HttpConnection(host, port)
        try:
            response = await conn.request(
                "GET", "/v1/status", timeout=STATUS_TIMEOUT, max_body=MAX_STATUS_BYTES
            )
            status = orjson.loads(response.body) if response.status == 200 else None
        except (ConnectionFailed, OSError, orjson.JSONDecodeError):
            status = None
        if not isinstance(status, dict):
            self.status = None
            return
        self.status = status
        self.answered_at = time.monotonic()
        self._count(status.get("messages_sent"), pid)

    def _count(self, messages: Any, pid: int | None) -> None:
        counts = _flat_counts(messages)
        if pid != self._pid and self._pid is not None:
            previous: dict[tuple[str, str], int] | None = {}  # a new process counts from 0
        else:
            previous = self._counts
        self._pid = pid
        self._counts = counts
        if previous is None:
            return
        for key, n in counts.items():
            delta = n - previous.get(key, 0)
            if delta > 0:
                self.sent[key] = self.sent.get(key, 0) + delta


def _flat_counts(messages: Any) -> dict[tuple[str, str], int]:
    """{peer: {type: n}} as {(peer, type): n}, anything malformed left out."""
    out: dict[tuple[str, str], int] = {}
    if not isinstance(messages, dict):
        return out
    for peer, by_type in messages.items():
        if isinstance(by_type, dict):
            for kind, n in by_type.items():
                if isinstance(n, int) and not isinstance(n, bool):
                    out[(str(peer), str(kind))] = n
    return out


def _is_number(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def describe(record: dict[str, Any]) -> str:
    """A harness record (Cluster.mark) in a few words, for the fault list."""
    action = str(record.get("action"))
    node = record.get("node")
    if action == "partition":
        groups = record.get("groups") or []
        return "partition " + " | ".join(" ".join(map(str, g)) for g in groups)
    if action == "cut":
        return f"cut {node} -> {record.get('to')}"
    if action == "drop":
        p = record.get("probability")
        share = f"{p:.0%}" if isinstance(p, int | float) else "?"
        return f"drop {share} {node} -> {record.get('to')}"
    if action == "delay":
        return f"delay {node} -> {record.get('to')} by {record.get('seconds')} s"
    if action == "load_start":
        return f"load {record.get('clients')} clients"
    if action == "load_stop":
        return "load stop"
    return action if node is None else f"{action} {node}"


class Feed:
    """Builds the frames and hands them to every connected page."""

    def __init__(self, cluster: Cluster, t0: float) -> None:
        self.cluster = cluster
        self.t0 = t0
        self.load = ClientLoad(self._load_endpoints)
        self.subscribers: set[Subscriber] = set()
        self.history_events: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.history_faults: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self._pending_events: deque[dict[str, Any]] = deque()
        self._pollers: dict[int, NodePoller] = {}
        self._node_files = DirectoryTail(
            cluster.work_dir, "*.events.jsonl", skip=b'"event":"commit"'
        )
        self._harness = JsonlTail(cluster.work_dir / HARNESS_EVENTS)
        self._watched = False
        self._last: dict[str, Any] | None = None
        self._logged: set[str] = set()

    # ------------------------------------------------------------------ pages

    def subscribe(self, sub: Subscriber) -> None:
        """A page connected: it gets the latest picture and the history at once,
        or with the next frame if the last one is not current (nobody was
        watching, so the nodes were not asked)."""
        self.subscribers.add(sub)
        if self._last is not None and self._watched:
            first = {**self._last, "events": [], "faults": [], "messages": []}
            first["history"] = self._history()
            sub.needs_history = False
            sub.send_frame(orjson.dumps(first).decode())

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Send a frame every INTERVAL seconds until cancelled."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                try:
                    await self.tick(deadline=next_at + INTERVAL * 0.8)
                except Exception as exc:  # a bug in one frame must not end the feed
                    if repr(exc) not in self._logged:  # once, not ten times a second
                        self._logged.add(repr(exc))
                        log.exception("the live view could not make a frame")
                next_at += INTERVAL
                now = loop.time()
                if next_at < now:  # fell behind (a busy machine): skip, do not bunch up
                    next_at = now
                await asyncio.sleep(next_at - now)
        finally:
            await self.load.stop()
            for p in self._pollers.values():
                if p.task is not None:
                    p.task.cancel()
                p.close()

    async def tick(self, deadline: float) -> None:
        """Poll (if anyone watches), then build and send one frame."""
        watched = bool(self.subscribers)
        if watched:
            if not self._watched:
                for p in self._pollers.values():
                    p.forget_counts()
            tasks = self._start_polls()
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
        self._watched = watched
        frame, new_events, new_faults = self.frame()
        if watched:
            self._send(frame)
        self.history_events.extend(new_events)
        self.history_faults.extend(new_faults)

    def _start_polls(self) -> list[asyncio.Task[None]]:
        tasks = []
        for h in list(self.cluster.nodes):
            poller = self._poller(h.index)
            if process_state(h) != "alive":
                poller.close()  # nothing to ask; a killed node's connection is dead
                continue
            if poller.task is None or poller.task.done():
                pid = h.process.pid if h.process is not None else None
                poller.task = asyncio.ensure_future(poller.poll(h.host, h.port, pid))
            tasks.append(poller.task)
        return tasks

    def _poller(self, index: int) -> NodePoller:
        poller = self._pollers.get(index)
        if poller is None:
            poller = self._pollers[index] = NodePoller(index)
        return poller

    def _send(self, frame: dict[str, Any]) -> None:
        if not self.subscribers:
            return
        plain = orjson.dumps(frame).decode()
        with_history: str | None = None
        for sub in list(self.subscribers):
            if sub.needs_history:
                if with_history is None:
                    with_history = orjson.dumps({**frame, "history": self._history()}).decode()
                sub.needs_history = False
                sub.send_frame(with_history)
            else:
                sub.send_frame(plain)

    def _history(self) -> dict[str, list[dict[str, Any]]]:
        return {"events": list(self.history_events), "faults": list(self.history_faults)}

    # ------------------------------------------------------------------ one frame

    def frame(self) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
        """The frame for now, and the events and faults that are new in it."""
        now = time.monotonic()
        cluster = self.cluster
        handles = list(cluster.nodes)
        urls = cluster.endpoints
        links, isolated = faulted_links(cluster)
        nodes = [
            self._node(h, urls[h.index] if h.index < len(urls) else "", now, h.name in isolated)
            for h in handles
        ]
        events = self._new_events()
        faults = self._new_faults()
        options = cluster.raft_options
        frame = {
            "type": "state",
            "t": round(now - self.t0, 4),
            "nodes": nodes,
            "links": [link.to_json() for link in links],
            "messages": self._drain_messages(handles),
            "events": events,
            "faults": faults,
            "load": self.load.stats(now),
            "preset": getattr(cluster, "preset", "default"),
            "heartbeat_interval": options.heartbeat_interval,
            "election_timeout": list(options.election_timeout),
        }
        self._last = frame
        return frame, events, faults

    def _node(self, h: NodeHandle, url: str, now: float, isolated: bool) -> dict[str, Any]:
        state = process_state(h)
        poller = self._poller(h.index)
        status = poller.status
        answering = state == "alive" and status is not None and now - poller.answered_at < STALE
        node: dict[str, Any] = {
            "index": h.index,
            "name": h.name,
            "url": url,
            "process": state,
            "answering": answering,
            "isolated": isolated,
        }
        for field in STATUS_FIELDS:
            node[field] = status.get(field) if answering and status is not None else None
        return node

    def _drain_messages(self, handles: Iterable[NodeHandle]) -> list[dict[str, Any]]:
        out = []
        for h in handles:
            poller = self._pollers.get(h.index)
            if poller is None or not poller.sent:
                continue
            for (peer, kind), count in sorted(poller.sent.items()):
                out.append({"src": h.name, "dst": peer, "type": kind, "count": count})
            poller.sent.clear()
        return out

    def _new_events(self) -> list[dict[str, Any]]:
        records = self._node_files.read(exclude=frozenset({HARNESS_EVENTS}))
        timed = [(t, r) for r in records if _is_number(t := r.get("t"))]
        timed.sort(key=lambda tr: float(tr[0]))
        for t, r in timed:
            self._pending_events.append({**r, "t": round(t - self.t0, 4)})
        events: list[dict[str, Any]] = []
        while self._pending_events and len(events) < MAX_EVENTS_PER_FRAME:
            events.append(self._pending_events.popleft())
        return events

    def _new_faults(self) -> list[dict[str, Any]]:
        faults = []
        for r in self._harness.read():
            t = r.get("t")
            if not _is_number(t):
                continue
            faults.append(
                {
                    "t": round(t - self.t0, 4),
                    "what": describe(r),
                    "action": r.get("action"),
                    "node": r.get("node"),
                }
            )
        return faults

    # ------------------------------------------------------------------ load

    def _load_endpoints(self) -> list[str]:
        """Where the load's workers send: the nodes that run and are not paused."""
        urls = self.cluster.endpoints
        return [
            urls[h.index]
            for h in list(self.cluster.nodes)
            if h.index < len(urls) and process_state(h) == "alive"
        ]

    async def start_load(self, clients: int) -> str:
        self.load.start(clients)
        with contextlib.suppress(OSError):
            self.cluster.mark("load_start", clients=clients)
        return f"load running: {clients} clients"

    async def stop_load(self) -> str:
        was = self.load.clients
        await self.load.stop()
        if was:
            with contextlib.suppress(OSError):
                self.cluster.mark("load_stop")
        return "load stopped" if was else "no load was running"
