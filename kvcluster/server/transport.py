"""Peer transport: one ordered, batching stream per peer.

Each link is one long HTTP/1.1 POST to the peer's /raft/stream with a chunked
body: every chunk is a batch of messages as one JSON line. That keeps "JSON
over HTTP with keep-alive" while costing a write per batch instead of a whole
request and response, which in Python is most of the price of a message.
Everything queued while a write is in progress leaves in the next chunk, so
under load the chunks grow rather than multiply. A broken stream drops what
was queued: Raft retransmits what matters, and FIFO per link is all the core
assumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
from collections import deque
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tornado.iostream import IOStream, StreamClosedError

from ..raft import Message
from .codec import encode_batch
from .http_conn import tcp_client

RAFT_PATH = "/raft/messages"  # one batch per request (tools, tests)
STREAM_PATH = "/raft/stream"  # one long request per link (the transport)
SENDER_HEADER = "X-Kvcluster-Sender"  # the sending node's base URL


@dataclass
class LinkFaults:
    """Injected network faults, as this node applies them to its own links."""

    block_in: set[str] = field(default_factory=set)  # drop everything from these peers
    block_out: set[str] = field(default_factory=set)  # drop everything to these peers
    drop: dict[str, float] = field(default_factory=dict)  # peer -> loss probability (outgoing)
    delay: dict[str, float] = field(default_factory=dict)  # peer -> seconds (outgoing)

    def to_dict(self) -> dict[str, object]:
        return {
            "block_in": sorted(self.block_in),
            "block_out": sorted(self.block_out),
            "drop": dict(sorted(self.drop.items())),
            "delay": dict(sorted(self.delay.items())),
        }


class _Link:
    def __init__(self, address: str) -> None:
        self.address = address
        parts = urlsplit(address)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.stream: IOStream | None = None
        self.outbox: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.watcher: asyncio.Future[None] | None = None
        self.failures = 0
        self.busy = False  # the task holds a batch it has not finished writing

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class PeerTransport:
    def __init__(
        self, node_id: str, address: str, token: str, timeout: float, max_batch: int = 4096
    ) -> None:
        self.node_id = node_id
        self._head = (
            f"POST {STREAM_PATH} HTTP/1.1\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"{SENDER_HEADER}: {address}\r\n"
            "Content-Type: application/x-ndjson\r\n"
            "Transfer-Encoding: chunked\r\n"
        )
        self._tcp = tcp_client()
        self._timeout = timeout
        self._max_batch = max_batch
        self._links: dict[str, _Link] = {}
        self.faults = LinkFaults()
        self._rng = random.Random()
        self.sent_batches = 0
        self.sent_messages = 0

    def set_peers(self, addresses: dict[str, str]) -> None:
        """Follow membership: open links to new peers, close links to departed ones."""
        for peer in list(self._links):
            if addresses.get(peer) != self._links[peer].address:
                self._close_link(peer)
        for peer, address in addresses.items():
            if peer != self.node_id and peer not in self._links:
                self._open_link(peer, address)

    def _open_link(self, peer: str, address: str) -> None:
        link = _Link(address)
        link.task = asyncio.ensure_future(self._run(peer, link))
        self._links[peer] = link

    def learn(self, peer: str, address: str) -> None:
        """Reach a sender we have no address for yet: a node that is joining
        hears from the leader before the log has told it who is who."""
        if peer not in self._links and peer != self.node_id:
            self._open_link(peer, address)

    def send(self, m: Message) -> None:
        """Queue a message; `flush` sends what was queued."""
        link = self._links.get(m.dst)
        if link is None:
            return
        faults = self.faults
        if faults.block_out or faults.drop or faults.delay:
            if m.dst in faults.block_out or self._rng.random() < faults.drop.get(m.dst, 0.0):
                return
            delay = faults.delay.get(m.dst)
            if delay:  # the same delay for every message keeps the link FIFO
                asyncio.get_running_loop().call_later(delay, self._send_late, link, m)
                return
        link.outbox.append(m)

    def _send_late(self, link: _Link, m: Message) -> None:
        link.outbox.append(m)
        self._flush_link(link)

    def flush(self) -> None:
        """Send everything queued since the last flush, one chunk per link."""
        for link in self._links.values():
            if link.outbox:
                self._flush_link(link)

    def _flush_link(self, link: _Link) -> None:
        """Write at once on an idle, open stream (saving the link's task a loop
        iteration per batch: on loopback that is a tenth of a round trip);
        leave the rest to the task, which connects, waits and times out."""
        stream = link.stream
        if link.busy or stream is None or stream.closed() or stream.writing():
            link.wake.set()
            return
        batch = list(link.outbox)
        link.outbox.clear()
        try:
            for body in _bodies(batch):
                written = stream.write(_chunk(body))
                written.add_done_callback(functools.partial(self._written, link, stream))
                self.sent_batches += 1
        except StreamClosedError:
            link.close()  # dropped, as the task would: Raft resends what matters
            return
        self.sent_messages += len(batch)

    @staticmethod
    def _written(link: _Link, stream: IOStream, f: asyncio.Future[None]) -> None:
        failed = f.cancelled() or f.exception() is not None
        if failed and link.stream is stream:
            link.close()

    async def _run(self, peer: str, link: _Link) -> None:
        # Connect before there is anything to say: two followers exchange their
        # first messages in an election, when a connect would add milliseconds.
        with contextlib.suppress(OSError, StreamClosedError, TimeoutError):
            await self._connect(link)
        while True:
            await link.wake.wait()
            link.wake.clear()
            while link.outbox:
                n = min(len(link.outbox), self._max_batch)
                batch = [link.outbox.popleft() for _ in range(n)]
                link.busy = True
                try:
                    stream = link.stream or await self._connect(link)
                    for body in _bodies(batch):
                        await asyncio.wait_for(stream.write(_chunk(body)), self._timeout)
                        self.sent_batches += 1
                    link.failures = 0
                    self.sent_messages += n
                except (OSError, StreamClosedError, TimeoutError):
                    # The peer is down or stuck. Drop what is queued (the core
                    # will resend what still matters) and back off a little.
                    link.close()
                    link.outbox.clear()
                    link.failures += 1
                    await asyncio.sleep(min(0.01 * 2**link.failures, 0.2))
                finally:
                    link.busy = False

    async def _connect(self, link: _Link) -> IOStream:
        stream = await asyncio.wait_for(self._tcp.connect(link.host, link.port), self._timeout)
        stream.set_nodelay(True)
        head = f"{self._head}Host: {link.host}:{link.port}\r\n\r\n"
        await stream.write(head.encode("latin-1"))
        link.stream = stream
        # The peer answers only when it ends the stream (restart, bad token):
        # notice, so that the next batch opens a new one.
        link.watcher = asyncio.ensure_future(self._watch(link, stream))
        return stream

    @staticmethod
    async def _watch(link: _Link, stream: IOStream) -> None:
        with contextlib.suppress(StreamClosedError):
            await stream.read_until_close()
        if link.stream is stream:
            link.close()

    def _close_link(self, peer: str) -> None:
        link = self._links.pop(peer)
        if link.task is not None:
            link.task.cancel()
        link.close()

    def close(self) -> None:
        for peer in list(self._links):
            self._close_link(peer)


MAX_BODY = 4 << 20  # well under what a node accepts in one request


def _chunk(body: bytes) -> bytes:
    """One batch as one chunk of the stream's chunked body: a JSON line."""
    return b"%x\r\n%s\n\r\n" % (len(body) + 1, body)


def _bodies(batch: list[Message]) -> list[bytes]:
    """Encode a batch as one body, or split it so that no body is too large."""
    body = encode_batch(batch)
    if len(body) <= MAX_BODY or len(batch) == 1:
        return [body]
    half = len(batch) // 2
    return _bodies(batch[:half]) + _bodies(batch[half:])
