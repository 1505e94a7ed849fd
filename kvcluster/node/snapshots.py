"""InstallSnapshot in bounded, resumable chunks, and what a snapshot is to the node layer.

The core only says "send follower F a snapshot" (a SNAPSHOT message) and, on
a follower, takes a SNAPSHOT message once the state it describes is ready to
install. In between, this module moves the bytes: the leader sends the saved
snapshot in chunks of `chunk` bytes at explicit offsets, at most `window`
chunks ahead of the follower's acknowledgements; the follower writes each
chunk through to its storage (so it buffers one chunk, whatever the snapshot's
size) and acknowledges the offset it wants next. A lost chunk, a restarted
follower or a leader that moved on all come down to "continue from the offset
the follower asks for", so a transfer survives anything but a change of
snapshot or of leader, after which it starts again.

The bytes themselves are opaque here: storage frames and verifies them, the kv
store encodes and decodes its state. Reading a chunk of a saved snapshot
(`SnapshotSource.read`) and writing one (`SnapshotReceiver.write`) are the
only storage calls the node layer makes itself: both are bounded, page-cache
sized operations, where queueing them through the driver would buy nothing.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass

from ..raft import Message, MessageType
from ..storage import SnapshotMeta, SnapshotReceiver, SnapshotSource

MT = MessageType


OpenReceiver = Callable[[SnapshotMeta, int], SnapshotReceiver]  # (meta, size)


@dataclass(slots=True)
class Outgoing:
    """A snapshot on its way to one follower."""

    source: SnapshotSource
    term: int  # ours when we started: a new term starts over
    acked: int = 0  # the follower has everything before this offset
    sent: int = 0  # and we sent everything before this one
    last_progress: float = 0.0


@dataclass(slots=True)
class Incoming:
    """A snapshot arriving from the leader."""

    leader: str
    term: int
    meta: SnapshotMeta
    size: int
    receiver: SnapshotReceiver
    loading: bool = False  # complete: the driver verifies and decodes it


def chunk_message(
    src: str, dst: str, term: int, source: SnapshotSource, offset: int, length: int
) -> Message:
    meta = source.meta
    data = source.read(offset, length)
    return Message(
        MT.SNAPSHOT_CHUNK,
        term,
        src,
        dst,
        index=meta.index,
        log_term=meta.term,
        ctx=offset,
        commit=source.size,
        snapshot={"membership": meta.membership, "data": base64.b64encode(data).decode()},
    )


def ack_message(src: str, dst: str, m: Message, offset: int, *, stop: bool = False) -> Message:
    """Ask the sender of chunk `m` for `offset` next (`stop`: for nothing more)."""
    return Message(
        MT.SNAPSHOT_ACK,
        m.term,
        src,
        dst,
        index=m.index,
        log_term=m.log_term,
        ctx=offset,
        reject=stop,
    )


def chunk_data(m: Message) -> bytes:
    """The bytes a chunk carries; ValueError if they are not base64."""
    payload = m.snapshot
    if not isinstance(payload, dict) or not isinstance(payload.get("data"), str):
        raise ValueError("a snapshot chunk carries its bytes as a base64 string")
    try:
        return base64.b64decode(payload["data"], validate=True)
    except binascii.Error as exc:
        raise ValueError(f"a snapshot chunk is not base64: {exc}") from exc
