"""Raft messages on the wire: compact JSON arrays, one line per batch.

orjson rather than the json module: a batch of 64 puts encodes in 6 us instead
of 86 and decodes in 20 instead of 48, and a leader encodes every batch once
per follower. orjson refuses integers beyond 64 bits and lone surrogates when
encoding, so everything that reaches the log is checked for both on the way
in (`operations.with_session`, `operations.json_object`).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..raft import Entry, EntryKind, Message, MessageType


def entry_to_wire(e: Entry) -> list[Any]:
    return [e.index, e.term, int(e.kind), e.data]


def entry_from_wire(w: list[Any]) -> Entry:
    return Entry(int(w[0]), int(w[1]), EntryKind(w[2]), w[3])


def message_to_wire(m: Message) -> list[Any]:
    return [
        int(m.type),
        m.term,
        m.src,
        m.dst,
        m.index,
        m.log_term,
        [entry_to_wire(e) for e in m.entries],
        m.commit,
        m.reject,
        m.hint,
        m.ctx,
        m.incarnation,
        m.snapshot,
    ]


def message_from_wire(w: list[Any]) -> Message:
    t, term, src, dst, index, log_term, entries, commit, reject, hint, ctx, incarnation, snap = w
    if snap is not None and not _is_snapshot_payload(snap):
        raise ValueError("a snapshot must be an object with a membership and data")
    return Message(
        MessageType(t),
        int(term),
        str(src),
        str(dst),
        index=int(index),
        log_term=int(log_term),
        entries=[entry_from_wire(e) for e in entries],
        commit=int(commit),
        reject=bool(reject),
        hint=int(hint),
        ctx=int(ctx),
        incarnation=str(incarnation),
        snapshot=snap,
    )


def _is_snapshot_payload(snap: Any) -> bool:
    return (
        isinstance(snap, dict)
        and isinstance(snap.get("membership"), dict)
        and isinstance(snap.get("data"), dict)
    )


def encode_batch(messages: list[Message]) -> bytes:
    return orjson.dumps([message_to_wire(m) for m in messages])


def decode_batch(body: bytes) -> list[Message]:
    """Raises ValueError (or a subclass) on anything malformed."""
    data = orjson.loads(body)
    if not isinstance(data, list):
        raise ValueError("a message batch must be a JSON array")
    try:
        return [message_from_wire(w) for w in data]
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"malformed raft message: {exc}") from exc
