"""Peer links: one ordered, batching stream per peer, on the one internal HTTP client.

Each link is one long HTTP/1.1 POST to the peer's /raft/stream with a chunked
body: every chunk is a batch of messages as one JSON line (orjson). A message
costs a write into the stream, not a request and a response, which in Python
is most of the price of a message. Everything one ready batch sends to a peer
leaves in one chunk, written in the same loop iteration when the stream is
open. A link connects ahead of need (an election's first messages must not
wait for a handshake), reconnects with a short backoff, and drops what it
cannot send: Raft retransmits what matters, and FIFO per link is all the core
assumes.

Memory is bounded: a peer that stops reading (paused, partitioned without a
reset) lets at most `max_unsent` bytes pile up in its stream before the link is
cut and started again.

`LinkFaults` is the fault injection a `Cluster` drives through /admin/fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..raft import Message, MessageType
from .codec import encode_batch
from .http import ConnectionFailed, RequestStream, open_stream

HEARTBEAT = MessageType.HEARTBEAT
RTT_GIVE_UP = 1.0  # seconds: a heartbeat unanswered this long was lost (not an RTT)

log = logging.getLogger(__name__)

STREAM_PATH = "/raft/stream"  # one long request per link
BATCH_PATH = "/raft/messages"  # one batch per request (tools, tests)
SENDER_HEADER = "X-Kvcluster-Sender"  # the sending node's base URL
MAX_LINE = 8 << 20  # the largest batch line a node accepts from a peer
_SPLIT_AT = 4 << 20  # batches are split well below it


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
    def __init__(self, address: str, sent: dict[MessageType, int]) -> None:
        self.address = address
        self.peer = ""  # its id, set by PeerLinks (bytes sent are counted by peer)
        self.sent = sent  # messages written to this peer by type (PeerLinks keeps them)
        parts = urlsplit(address)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 0
        self.stream: RequestStream | None = None
        self.outbox: list[Message] = []
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failures = 0

    def ready(self) -> RequestStream | None:
        stream = self.stream
        return stream if stream is not None and not stream.closed.done() else None

    def cut(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None


class PeerLinks:
    def __init__(
        self,
        node_id: str,
        address: str,
        token: str,
        timeout: float,
        *,
        max_unsent: int = 16 << 20,
    ) -> None:
        self.node_id = node_id
        self._headers = {
            "Authorization": f"Bearer {token}",
            SENDER_HEADER: address,
            "Content-Type": "application/x-ndjson",
        }
        self._timeout = timeout
        self._max_unsent = max_unsent
        self._links: dict[str, _Link] = {}
        self.faults = LinkFaults()
        self._rng = random.Random()
        self.sent_batches = 0
        self.sent_messages = 0
        self.sent_bytes = 0
        self.cut_slow = 0  # links cut because the peer stopped reading
        # Messages written to each peer's stream, by type: what the live view
        # draws along each link. Kept across reconnects (cumulative).
        self._sent_by_peer: dict[str, dict[MessageType, int]] = {}
        self.bytes_by_peer: dict[str, int] = {}  # bytes written to each peer (metrics)
        # When the oldest unanswered heartbeat to each peer was written: its answer
        # gives the link's round-trip time (metrics; see `heartbeat_answered`).
        self.heartbeat_sent: dict[str, float] = {}

    # ------------------------------------------------------------------ membership

    def set_peers(self, addresses: dict[str, str]) -> None:
        """Follow membership: open links to new peers, close links to departed ones."""
        for peer in list(self._links):
            if addresses.get(peer) != self._links[peer].address:
                self._close_link(peer)
        for peer, address in addresses.items():
            if peer != self.node_id and peer not in self._links:
                self._open_link(peer, address)

    def learn(self, peer: str, address: str) -> None:
        """Reach a sender we have no address for yet: a node that is joining
        hears from the leader before the log has told it who is who."""
        if peer not in self._links and peer != self.node_id:
            self._open_link(peer, address)

    def _open_link(self, peer: str, address: str) -> None:
        link = _Link(address, self._sent_by_peer.setdefault(peer, {}))
        link.peer = peer
        link.task = asyncio.ensure_future(self._run(link))
        self._links[peer] = link

    def _close_link(self, peer: str) -> None:
        link = self._links.pop(peer)
        if link.task is not None:
            link.task.cancel()
        link.cut()

    def close(self) -> None:
        for peer in list(self._links):
            self._close_link(peer)

    # ------------------------------------------------------------------ sending

    def send(self, messages: Iterable[Message]) -> None:
        """Send a ready batch's messages: one chunk per peer, now if its stream is open."""
        faults = self.faults
        touched: list[_Link] = []
        for m in messages:
            link = self._links.get(m.dst)
            if link is None:
                continue
            if faults.block_out or faults.drop or faults.delay:
                if m.dst in faults.block_out or self._rng.random() < faults.drop.get(m.dst, 0.0):
                    continue
                delay = faults.delay.get(m.dst)
                if delay:  # the same delay for every message keeps the link FIFO
                    asyncio.get_running_loop().call_later(delay, self._send_late, link, m)
                    continue
            if not link.outbox:
                touched.append(link)
            link.outbox.append(m)
        for link in touched:
            self._flush(link)

    def _send_late(self, link: _Link, m: Message) -> None:
        link.outbox.append(m)
        self._flush(link)

    def _flush(self, link: _Link) -> None:
        stream = link.ready()
        if stream is None:
            link.wake.set()  # the link's task connects, then sends what is queued
            return
        batch, link.outbox = link.outbox, []
        try:
            by_peer = self.bytes_by_peer
            for body in _bodies(batch):
                stream.send(body + b"\n")
                self.sent_batches += 1
                self.sent_bytes += len(body) + 1
                by_peer[link.peer] = by_peer.get(link.peer, 0) + len(body) + 1
        except ConnectionFailed:
            link.cut()  # dropped: Raft resends what matters
            link.wake.set()
            return
        self.sent_messages += len(batch)
        sent = link.sent
        for m in batch:
            sent[m.type] = sent.get(m.type, 0) + 1
            if m.type is HEARTBEAT:
                self._heartbeat_written(link.peer)
        if stream.unsent > self._max_unsent:
            # The peer does not read (paused, or gone without a reset): cut the
            # link rather than let its backlog grow, and start it again.
            self.cut_slow += 1
            link.cut()
            link.wake.set()

    def _heartbeat_written(self, peer: str) -> None:
        now = time.perf_counter()
        pending = self.heartbeat_sent.get(peer)
        if pending is None or now - pending > RTT_GIVE_UP:  # lost: measure from this one
            self.heartbeat_sent[peer] = now

    def heartbeat_answered(self, peer: str) -> float | None:
        """Seconds since the oldest unanswered heartbeat to `peer` was written,
        now that an answer came (None if none was waiting)."""
        sent = self.heartbeat_sent.pop(peer, None)
        return None if sent is None else time.perf_counter() - sent

    async def _run(self, link: _Link) -> None:
        # Connect before there is anything to say: two followers exchange their
        # first messages in an election, when a connect would add milliseconds.
        with contextlib.suppress(ConnectionFailed, OSError):
            await self._connect(link)
        while True:
            await link.wake.wait()
            link.wake.clear()
            if link.ready() is None:
                try:
                    await self._connect(link)
                except (ConnectionFailed, OSError):
                    link.outbox.clear()  # the peer is down: drop, Raft resends
                    link.failures += 1
                    await asyncio.sleep(min(0.01 * 2**link.failures, 0.2))
                    continue
            if link.outbox:
                self._flush(link)

    async def _connect(self, link: _Link) -> None:
        stream = await open_stream(
            link.host, link.port, STREAM_PATH, self._headers, timeout=self._timeout
        )
        link.stream = stream
        link.failures = 0
        # The peer answers only when it ends the stream (restart, bad token):
        # notice, so that the next batch opens a new one.
        stream.closed.add_done_callback(lambda _f: self._ended(link, stream))

    @staticmethod
    def _ended(link: _Link, stream: RequestStream) -> None:
        if link.stream is stream:
            link.stream = None
            if link.outbox:
                link.wake.set()

    def messages_sent(self) -> dict[str, dict[str, int]]:
        """{peer: {type: count}}, type as MessageType's name in lower case."""
        return {
            peer: {t.name.lower(): n for t, n in sorted(counts.items())}
            for peer, counts in sorted(self._sent_by_peer.items())
        }

    def stats(self) -> dict[str, int]:
        return {
            "peer_batches_sent": self.sent_batches,
            "peer_messages_sent": self.sent_messages,
            "peer_bytes_sent": self.sent_bytes,
            "peer_links_cut_slow": self.cut_slow,
        }


def _bodies(batch: list[Message]) -> list[bytes]:
    """Encode a batch as one line, or split it so that no line is too large."""
    body = encode_batch(batch)
    if len(body) <= _SPLIT_AT or len(batch) == 1:
        return [body]
    half = len(batch) // 2
    return _bodies(batch[:half]) + _bodies(batch[half:])
