"""Peer transport: one ordered, batching sender per peer over a keep-alive link.

Everything queued for a peer while its previous POST is in flight leaves in
the next one, so under load the number of RPCs stays flat while the entries
per RPC grow. A failed POST drops its batch: Raft retransmits what matters,
and a link that stays FIFO is all the core assumes.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from dataclasses import dataclass, field

from ..raft import Message
from .codec import encode_batch
from .http_conn import ConnectionFailed, KeepAliveConnection

RAFT_PATH = "/raft/messages"
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
        self.conn = KeepAliveConnection(address)
        self.outbox: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failures = 0


class PeerTransport:
    def __init__(
        self, node_id: str, address: str, token: str, timeout: float, max_batch: int = 4096
    ) -> None:
        self.node_id = node_id
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            SENDER_HEADER: address,
        }
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
        link = self._links.get(m.dst)
        if link is None:
            return
        faults = self.faults
        if faults.block_out or faults.drop or faults.delay:
            if m.dst in faults.block_out or self._rng.random() < faults.drop.get(m.dst, 0.0):
                return
            delay = faults.delay.get(m.dst)
            if delay:  # the same delay for every message keeps the link FIFO
                asyncio.get_running_loop().call_later(delay, self._enqueue, link, m)
                return
        self._enqueue(link, m)

    def _enqueue(self, link: _Link, m: Message) -> None:
        link.outbox.append(m)
        link.wake.set()

    async def _run(self, peer: str, link: _Link) -> None:
        while True:
            await link.wake.wait()
            link.wake.clear()
            while link.outbox:
                n = min(len(link.outbox), self._max_batch)
                batch = [link.outbox.popleft() for _ in range(n)]
                try:
                    for body in _bodies(batch):
                        await link.conn.request(
                            "POST", RAFT_PATH, body, self._headers, self._timeout
                        )
                        self.sent_batches += 1
                    link.failures = 0
                    self.sent_messages += n
                except ConnectionFailed:
                    # The peer is down or slow. Drop what is queued (the core will
                    # resend what still matters) and back off a little.
                    link.outbox.clear()
                    link.failures += 1
                    await asyncio.sleep(min(0.01 * 2**link.failures, 0.2))

    def _close_link(self, peer: str) -> None:
        link = self._links.pop(peer)
        if link.task is not None:
            link.task.cancel()
        link.conn.close()

    def close(self) -> None:
        for peer in list(self._links):
            self._close_link(peer)


MAX_BODY = 4 << 20  # well under what a node accepts in one request


def _bodies(batch: list[Message]) -> list[bytes]:
    """Encode a batch as one body, or split it so that no body is too large."""
    body = encode_batch(batch)
    if len(body) <= MAX_BODY or len(batch) == 1:
        return [body]
    half = len(batch) // 2
    return _bodies(batch[:half]) + _bodies(batch[half:])
