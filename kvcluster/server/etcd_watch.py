"""POST /v3/watch: etcd's watch stream over the JSON gateway, served by any node.

etcd's gateway reads the whole request body over HTTP/1.1 before it streams
the answer, so the body holds every request of the stream (etcd3gw and curl
send one create_request); the stream then carries one JSON message per HTTP
chunk, each ending in a newline: the answers to those requests (created,
canceled, progress), then the events as this node applies them. Closing
the connection ends the stream and its watches, which is how etcd3gw
cancels.

The decisions are the node layer's (`kvcluster.node.watches`): each watcher is
a cursor into the store's history, and this module only moves messages from
it to the connection while the client reads them: after entries are applied
(the driver's `on_applied`), when the client has taken what it was sent (the
stream's `on_drain`), and when a progress notification falls due (one timer
for the node). Nothing is buffered here, so a client that reads slowly holds
at most its connection's max_unsent bytes, and one that reads nothing is
dropped by the HTTP server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from ..node.watches import (
    CANCELED,
    COMPACTED,
    CREATED,
    DUPLICATE_ID,
    EVENTS,
    NOTIFY,
    PROGRESS,
    PROGRESS_INTERVAL,
    WatchHub,
    WatchMessage,
    WatchSpec,
    WatchStream,
)
from . import etcd_wire as wire
from .driver import NodeDriver
from .http import Reply, ResponseStream, start_stream
from .http import Request as HttpRequest

WATCH_BODY = 64 << 10  # a stream's requests: a few creates, cancels and progress requests

Head = Callable[[int], Mapping[str, str]]


def spec_of(create: wire.WatchCreate) -> WatchSpec:
    """etcd's create_request as the node layer's WatchSpec."""
    return WatchSpec(
        key=create.key,
        range_end=create.range_end,
        start_revision=create.start_revision,
        prev_kv=create.prev_kv,
        no_put="NOPUT" in create.filters,
        no_delete="NODELETE" in create.filters,
        progress_notify=create.progress_notify,
        watch_id=create.watch_id,
    )


def render(message: WatchMessage, head: Head) -> bytes:
    """One node-layer message as one line of etcd's watch stream."""
    kind, watch_id = message.kind, message.watch_id
    h = head(message.revision)
    if kind == EVENTS:
        return wire.render_watch_events(h, watch_id, message.events)
    if kind == CREATED:
        return wire.render_watch_created(h, watch_id)
    if kind == CANCELED:
        return wire.render_watch_canceled(h, watch_id)
    if kind == COMPACTED:
        return wire.render_watch_compacted(h, watch_id, message.compact_revision)
    if kind == PROGRESS:
        return wire.render_watch_progress(h)
    if kind == NOTIFY:
        return wire.render_watch_response(h, watch_id=watch_id)
    if message.reason == DUPLICATE_ID:
        return wire.render_watch_duplicate_id(h)
    refused = wire.PROGRESS_WATCH_ID  # etcd's watch_id for a create it did not make
    return wire.render_watch_response(
        h, watch_id=refused, created=True, canceled=True, cancel_reason=message.reason
    )


class EtcdWatches:
    """The node's watch streams and the POST /v3/watch handler (`watch`)."""

    def __init__(
        self,
        driver: NodeDriver,
        head: Head,
        limits: wire.Limits,
        fail: Callable[[Reply, wire.EtcdError], None],
        progress_interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self.driver = driver
        self.head = head
        self.limits = limits
        self.fail = fail  # answers a bad body with etcd's error
        self.hub = WatchHub(progress_interval)
        self.sinks: dict[WatchStream, ResponseStream] = {}
        self._resume: set[WatchStream] = set()  # streams with a scan step to come
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        driver.on_applied = self.applied

    def watch(self, http: HttpRequest, reply: Reply) -> None:
        """POST /v3/watch (see the module docstring)."""
        try:
            requests = wire.parse_watch_body(http.body, self.limits)
        except wire.EtcdError as exc:
            return self.fail(reply, exc)
        stream = self.hub.open()
        sink = start_stream(
            reply,
            200,
            (),
            on_close=lambda _reason: self._closed(stream),
            on_drain=lambda: self._pump(stream),
        )
        if not sink.open:  # the client left before its answer began
            self.hub.close(stream)
            return
        self.sinks[stream] = sink
        kv = self.driver.node.kv
        now = time.monotonic()
        for request in requests:
            if isinstance(request, wire.WatchCreate):
                stream.create(spec_of(request), kv, now)
            elif isinstance(request, wire.WatchCancel):
                stream.cancel(request.watch_id, kv)
            else:
                stream.progress(kv)
        self._pump(stream)
        self._arm()

    def applied(self) -> None:
        """The node applied entries: send each stream what is new for it."""
        if not self.sinks:
            return
        for stream in list(self.sinks):
            self._pump(stream)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ------------------------------------------------------------------ pumping

    def _pump(self, stream: WatchStream) -> None:
        """Send what the stream has to say while its client reads."""
        sink = self.sinks.get(stream)
        if sink is None:
            return
        kv = self.driver.node.kv  # looked up each time: a snapshot install replaces it
        now = time.monotonic()
        head = self.head
        while sink.writable:
            message = stream.next_message(kv, now)
            if message is None:
                if stream.pending(kv) and stream not in self._resume:
                    # A watcher far behind reads the history in steps: the
                    # next one after whatever else the loop has to do.
                    self._resume.add(stream)
                    asyncio.get_running_loop().call_soon(self._resume_pump, stream)
                break
            sink.write(render(message, head))

    def _resume_pump(self, stream: WatchStream) -> None:
        self._resume.discard(stream)
        self._pump(stream)

    def _closed(self, stream: WatchStream) -> None:
        self.sinks.pop(stream, None)
        self.hub.close(stream)

    def _arm(self) -> None:
        """One timer for the node's next progress notification."""
        deadline = self.hub.next_deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if deadline >= self._timer_at:
                return
            self._timer.cancel()
        self._timer_at = deadline
        delay = max(0.0, deadline - time.monotonic())
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.applied()
        self._arm()
