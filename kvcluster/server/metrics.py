"""A node's Prometheus metrics (GET /metrics) and etcd's health check (GET /health).

Why this shape: an operator's etcd dashboards should work on kvcluster for
every panel that means the same, so metrics that match one of etcd's carry
etcd's name (etcd_server_*, etcd_disk_*, etcd_network_*); the rest are
kvcluster_*. The exposition format and the metric types come from
prometheus_client, in one registry per node process (never the library's
global one: tests run several nodes' drivers in one interpreter).

The hot path pays only for what must be counted as it happens: a plain
integer or dict increment for leader changes, failed proposals, requests,
reads and peer bytes, and a histogram observation for fsyncs, snapshot saves
and request latency. Everything that is state (term, indexes, role, pending
proposals, open connections) is read from the node when Prometheus scrapes
(`_StateCollector`), so it costs nothing between scrapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..node import GET, Answer, Request
from ..raft import Message, MessageType
from .http import Reply, Route
from .http import Request as HttpRequest

if TYPE_CHECKING:
    from .driver import NodeDriver
    from .http import HttpServer

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format
# etcd's buckets: fsync and snapshot save from 1 ms to 8 s, doubling (14 buckets).
ETCD_DISK_BUCKETS = tuple(0.001 * 2**i for i in range(14))
# etcd's round-trip buckets: 0.1 ms to ~3.3 s, doubling.
RTT_BUCKETS = tuple(0.0001 * 2**i for i in range(16))
# Requests from 0.1 ms (a serializable read) to ~3 s (a write behind an election).
REQUEST_BUCKETS = tuple(0.0001 * 2**i for i in range(16))
HEALTH_TIMEOUT = 1.0  # seconds: etcd's /health gives its read this long
HEALTH_KEY = "health"  # any key does: only whether the read is answered matters
KV_PATH = "/v1/kv/"
HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP


class NodeMetrics:
    """Every metric of one node process, and the route handlers that serve them."""

    def __init__(self, driver: NodeDriver) -> None:
        self.driver = driver
        self.http: HttpServer | None = None  # set once the server exists (open connections)
        # No `_created` series (the time each counter was made): etcd has none,
        # and they double the page. This is the library's one global switch.
        disable_created_metrics()
        self.registry = CollectorRegistry(auto_describe=False)
        # Counted as they happen (plain numbers: read by the collector at scrape time).
        self.leader_changes = 0
        self.proposals_failed = 0
        self.requests: dict[tuple[str, str, int], int] = {}
        self.reads: dict[str, int] = {}
        self.peer_received: dict[str, int] = {}
        self.wal_fsync = Histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by the WAL.",
            buckets=ETCD_DISK_BUCKETS,
            registry=self.registry,
        )
        self.snapshot_save = Histogram(
            "etcd_debugging_snap_save_total_duration_seconds",
            "The total latency distributions of save called by snapshot.",
            buckets=ETCD_DISK_BUCKETS,
            registry=self.registry,
        )
        self.peer_rtt = Histogram(
            "etcd_network_peer_round_trip_time_seconds",
            "Round-trip time of a leader's heartbeat to each peer and its answer.",
            ["To"],
            buckets=RTT_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "kvcluster_http_request_duration_seconds",
            "Time from a request's dispatch to its answer, by method and route.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))

    # ------------------------------------------------------------------ hooks

    def raft_events(self, events: Sequence[dict[str, Any]]) -> None:
        """A ready batch's core events: count the leaders this node has seen."""
        for event in events:
            if event["event"] == "leader":
                self.leader_changes += 1

    def read(self, mode: str) -> None:
        self.reads[mode] = self.reads.get(mode, 0) + 1

    def received(self, messages: Sequence[Message], size: int) -> None:
        """A peer's batch (`size` bytes): count them, and time the heartbeats it answers."""
        peer = messages[0].src
        self.peer_received[peer] = self.peer_received.get(peer, 0) + size
        for m in messages:
            if m.type is HEARTBEAT_RESP:
                rtt = self.driver.peers.heartbeat_answered(peer)
                if rtt is not None:
                    self.peer_rtt.labels(peer).observe(rtt)
                break

    def instrument(self, method: str, route: str, handler: Route) -> Route:
        """The same route, its answers counted by status and timed."""
        timers: list[Histogram] = []  # made at the first request: unused routes show nothing
        inner = handler.handler
        requests = self.requests

        def finished(status: int, started: float) -> None:
            if not timers:
                timers.append(self.request_seconds.labels(method, route))
            timers[0].observe(time.perf_counter() - started)
            key = (method, route, status)
            requests[key] = requests.get(key, 0) + 1

        def timed(http: HttpRequest, reply: Reply) -> None:
            inner(http, _TimedReply(reply, finished, time.perf_counter()))

        return Route(timed, max_body=handler.max_body, token=handler.token, lines=handler.lines)

    # ------------------------------------------------------------------ routes

    def table(self) -> dict[str, dict[str, Route]]:
        """/metrics and /health: open, as etcd's are, and they read no client input."""
        return {
            "/metrics": {"GET": Route(self.serve_metrics, max_body=0)},
            "/health": {"GET": Route(self.serve_health, max_body=0)},
        }

    def serve_metrics(self, http: HttpRequest, reply: Reply) -> None:
        start_text(reply, generate_latest(self.registry))

    def serve_health(self, http: HttpRequest, reply: Reply) -> None:
        """etcd's /health: 200 {"health":"true"} only with a leader and a
        linearizable read done within a second; else 503 with the reason."""
        node = self.driver.node
        if node.raft.leader_id is None:
            return _health(reply, "RAFT NO LEADER")
        _HealthRead(self.driver, reply).start()


class _HealthRead:
    """etcd's read behind /health: a linearizable GET of one key through the
    node layer (forwarded or confirmed by a quorum as any read), given
    HEALTH_TIMEOUT to be answered; a missing key is an answer too."""

    def __init__(self, driver: NodeDriver, reply: Reply) -> None:
        self.driver = driver
        self.reply = reply
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        req = Request(0, GET, HEALTH_KEY)
        # What a follower relays to the leader: the same read on /v1 (not /health).
        req.wire = ("GET", KV_PATH + HEALTH_KEY, b"", None)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(HEALTH_TIMEOUT, self.finish, "RANGE ERROR:timed out")
        self.driver.submit(req, self.answered)

    def answered(self, answer: Answer) -> None:
        ok = answer.status in (200, 404)
        self.finish(None if ok else f"RANGE ERROR:status {answer.status}")

    def finish(self, error: str | None) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        _health(self.reply, error)


class _TimedReply:
    """A Reply that tells the metrics its status before answering (or streaming)."""

    __slots__ = ("finished", "reply", "started")

    def __init__(self, reply: Reply, finished: Callable[[int, float], None], started: float):
        self.reply = reply
        self.finished = finished
        self.started = started

    def __call__(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.finished(status, self.started)
        self.reply(status, body, headers)

    def start_stream(self, status: int, headers: Any, on_close: Any, on_drain: Any) -> Any:
        self.finished(status, self.started)
        return self.reply.start_stream(status, headers, on_close, on_drain)  # type: ignore[attr-defined]


def start_text(reply: Reply, body: bytes) -> None:
    """Answer with Prometheus' text format (the stack's default is JSON)."""
    reply(200, body, [("Content-Type", CONTENT_TYPE)])


def _health(reply: Reply, error: str | None) -> None:
    if error is None:
        reply(200, orjson.dumps({"health": "true", "reason": ""}), ())
    else:
        reply(503, orjson.dumps({"health": "false", "reason": error}), ())


class _StateCollector(Collector):
    """The node's state, read at scrape time."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        driver = m.driver
        node = driver.node
        core = node.raft
        leader = core.leader_id
        name = driver.config.name

        yield _gauge("etcd_server_has_leader", "Whether a leader exists: 1 yes, 0 no.", leader)
        yield _gauge(
            "etcd_server_is_leader", "Whether this member is the leader.", leader == core.id
        )
        server_id = GaugeMetricFamily(
            "etcd_server_id", "This member's id (as a label; the value is 1).", labels=["server_id"]
        )
        server_id.add_metric([name], 1)
        yield server_id
        yield CounterMetricFamily(
            "etcd_server_leader_changes_seen",
            "The number of leader changes seen.",
            value=m.leader_changes,
        )
        yield _gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed (the commit index).",
            core.commit,
        )
        yield _gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied (the applied index).",
            node.applied_index,
        )
        yield _gauge(
            "etcd_server_proposals_pending",
            "The number of requests waiting for the log (proposals and reads).",
            node.status()["pending_requests"],
        )
        yield CounterMetricFamily(
            "etcd_server_proposals_failed",
            "Client writes that reached this node first and failed (5xx: no leader, timeout...).",
            value=m.proposals_failed,
        )
        yield _gauge("kvcluster_raft_term", "The current Raft term.", core.term)
        yield _gauge("kvcluster_raft_commit_index", "The commit index.", core.commit)
        yield _gauge("kvcluster_raft_applied_index", "The applied index.", node.applied_index)
        yield _gauge(
            "kvcluster_raft_last_index",
            "The index of the last entry in the log.",
            core.log.last_index(),
        )

        sent = CounterMetricFamily(
            "etcd_network_peer_sent_bytes",
            "The number of bytes sent to peers.",
            labels=["To"],
        )
        for peer, size in sorted(driver.peers.bytes_by_peer.items()):
            sent.add_metric([peer], size)
        yield sent
        received = CounterMetricFamily(
            "etcd_network_peer_received_bytes",
            "The number of bytes received from peers.",
            labels=["From"],
        )
        for peer, size in sorted(m.peer_received.items()):
            received.add_metric([peer], size)
        yield received

        requests = CounterMetricFamily(
            "kvcluster_http_requests",
            "Requests answered, by method, route and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(m.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        reads = CounterMetricFamily(
            "kvcluster_reads", "Reads submitted, by read mode.", labels=["mode"]
        )
        for mode, count in sorted(m.reads.items()):
            reads.add_metric([mode], count)
        yield reads
        if m.http is not None:
            conns = GaugeMetricFamily(
                "kvcluster_http_connections", "Open HTTP connections by kind.", labels=["kind"]
            )
            conns.add_metric(["client"], m.http.clients)
            conns.add_metric(["peer"], m.http.peers)
            conns.add_metric(["pending"], m.http.pending)
            yield conns


def _gauge(name: str, documentation: str, value: object) -> GaugeMetricFamily:
    if value is None or isinstance(value, bool | str):
        value = 1 if value not in (None, False) else 0
    return GaugeMetricFamily(name, documentation, value=float(value))  # type: ignore[arg-type]
