"""Raft messages on the wire: compact JSON arrays, one line per batch.

orjson rather than the json module: a batch of 64 puts encodes in 6 us instead
of 86 and decodes in 20 instead of 48, and a leader encodes every batch once
per follower. orjson refuses integers beyond 64 bits and lone surrogates when
encoding, so everything that reaches the log is checked for both on the way
in (`validate`), and every integer a peer sends must fit 63 bits (`_uint`).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..raft import Entry, EntryKind, Message, MessageType


def entry_to_wire(e: Entry) -> list[Any]:
    return [e.index, e.term, int(e.kind), e.data]


MAX_INT = (1 << 63) - 1  # every integer field fits a signed 64-bit one, as in etcd's API
MAX_NAME = 256  # node names and incarnations


def _uint(x: Any) -> int:
    """A non-negative integer of at most 63 bits, or ValueError.

    Terms and indexes beyond that would be valid Python ints, but a node that
    adopted one could not encode its successor (orjson and the WAL stop at 64
    bits): a forged term would become a permanent outage, persisted in the WAL.
    """
    if type(x) is not int or not 0 <= x <= MAX_INT:
        raise ValueError(f"expected an integer from 0 to 2**63-1, got {str(x)[:40]}")
    return x


def _name(x: Any) -> str:
    if not isinstance(x, str) or len(x) > MAX_NAME:
        raise ValueError(f"expected a string of at most {MAX_NAME} characters")
    return x


def entry_from_wire(w: list[Any]) -> Entry:
    return Entry(_uint(w[0]), _uint(w[1]), EntryKind(w[2]), w[3])


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
        raise ValueError("a snapshot payload must be an object with a membership")
    if not isinstance(entries, list) or type(reject) is not bool:
        raise ValueError("entries must be a list and reject a boolean")
    return Message(
        MessageType(t),
        _uint(term),
        _name(src),
        _name(dst),
        index=_uint(index),
        log_term=_uint(log_term),
        entries=[entry_from_wire(e) for e in entries],
        commit=_uint(commit),
        reject=reject,
        hint=_uint(hint),
        ctx=_uint(ctx),
        incarnation=_name(incarnation),
        snapshot=snap,
    )


def _is_snapshot_payload(snap: Any) -> bool:
    """{"membership": {...}} plus, in a SNAPSHOT_CHUNK, "data": the bytes in base64."""
    return (
        isinstance(snap, dict)
        and isinstance(snap.get("membership"), dict)
        and isinstance(snap.get("data", ""), str)
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
