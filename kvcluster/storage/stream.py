"""The snapshot stream: one byte format for snapshot files, transfers and memory.

    KVSNAP02\\n
    {"index":I,"term":T,"membership":{...},"payload":"lines"}\\n     (ASCII JSON)
    <payload line>\\n  ... one per payload line (opaque bytes from kv, no newline)
    END <line count: 20 digits> <crc32 of every byte before this line: 8 hex>\\n

The same bytes are the file on disk, the bytes a leader sends in chunks and the
bytes a follower receives, so a follower verifies exactly what the leader
wrote and a file is never re-encoded on the way. The line count sits in the
trailer, not in the meta line, because the writer learns it only at the end
and the whole stream is written (and CRC'd) in one pass.

`payload` is always "lines" (the kv store's `FrozenKV.lines()`). Earlier
versions also wrote "json" (the whole kv state as one JSON document); such a
stream is refused with `OldPayloadError`, so that recovery says so rather than
take the file for a damaged one and fall back past it (see
SnapshotStore.load_newest).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .base import MAX_INT, SnapshotMeta

MAGIC = b"KVSNAP02\n"
TRAILER_LEN = len(b"END 00000000000000000000 00000000\n")
_TRAILER = re.compile(rb"END ([0-9]{20}) ([0-9a-f]{8})\n\Z")
MAX_META_LINE = 1 << 20  # a membership of thousands of nodes still fits
PAYLOAD = "lines"
OLD_PAYLOAD = "json"  # the whole kv state as one JSON document: refused, see OldPayloadError
READ_BLOCK = 1 << 20


class OldPayloadError(ValueError):
    """A sound meta line naming a payload this version no longer reads."""


def encode_head(meta: SnapshotMeta) -> bytes:
    """Magic and meta line."""
    for name, x in (("index", meta.index), ("term", meta.term)):
        if type(x) is not int or not 0 <= x <= MAX_INT:
            raise ValueError(f"snapshot {name} must be an integer from 0 to 2**63-1, got {x!r}")
    line = json.dumps(
        {"index": meta.index, "term": meta.term, "membership": meta.membership, "payload": PAYLOAD},
        separators=(",", ":"),
    ).encode("ascii")
    if len(line) > MAX_META_LINE:
        raise ValueError(f"snapshot meta line of {len(line)} bytes (at most {MAX_META_LINE})")
    return MAGIC + line + b"\n"


def encode_trailer(lines: int, crc: int) -> bytes:
    return b"END %020d %08x\n" % (lines, crc)


def encode_stream(
    meta: SnapshotMeta, lines: Iterable[bytes], write: Callable[[bytes], Any]
) -> tuple[int, int]:
    """Write the whole stream through `write` in one pass: (size, payload start).

    ValueError if a line holds a newline: the payload could not be split again.
    """
    head = encode_head(meta)
    write(head)
    crc, size, count = zlib.crc32(head), len(head), 0
    for line in lines:
        if b"\n" in line:
            raise ValueError(f"payload line {count} contains a newline")
        write(line)
        write(b"\n")
        crc = zlib.crc32(b"\n", zlib.crc32(line, crc))  # crc32 drops the GIL over 5 KB
        size += len(line) + 1
        count += 1
    write(encode_trailer(count, crc))
    return size + TRAILER_LEN, len(head)


def _decode_meta(line: bytes) -> SnapshotMeta:
    try:
        d = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"snapshot meta line is not ASCII JSON: {e}") from None
    if type(d) is not dict or d.keys() != {"index", "term", "membership", "payload"}:
        raise ValueError("snapshot meta line must hold exactly index, term, membership, payload")
    for name in ("index", "term"):
        x = d[name]
        if type(x) is not int or not 0 <= x <= MAX_INT:
            raise ValueError(f"snapshot {name} must be an integer from 0 to 2**63-1")
    if type(d["membership"]) is not dict:
        raise ValueError("snapshot membership must be an object")
    if d["payload"] == OLD_PAYLOAD:
        raise OldPayloadError(f"snapshot payload {OLD_PAYLOAD!r} is no longer read")
    if d["payload"] != PAYLOAD:
        raise ValueError(f"snapshot payload must be {PAYLOAD!r}")
    return SnapshotMeta(d["index"], d["term"], d["membership"])


class Verifier:
    """Checks a stream as its bytes go by, keeping only the head and the last few.

    `feed` raises ValueError as soon as the bytes cannot be a snapshot (bad
    magic, bad meta line, not the announced meta, more than the announced size);
    `finish` checks the rest (trailer, line count, CRC). After a ValueError the
    verifier is spent: every later call raises again.
    """

    def __init__(self, expect: SnapshotMeta | None = None, size: int | None = None) -> None:
        self.expect, self.size = expect, size
        self.received = 0
        self.meta: SnapshotMeta | None = None
        self.payload_start = 0
        self._head = bytearray()  # until the meta line is complete
        self._crc = 0  # over everything but the last TRAILER_LEN bytes seen
        self._tail = b""
        self._newlines = 0
        self._last = -1  # the last byte under the CRC (the one before the trailer)
        self._error: str | None = None

    def feed(self, data: bytes) -> None:
        if self._error is not None:
            raise ValueError(self._error)
        try:
            self._feed(data)
        except ValueError as e:
            self._error = str(e)
            raise

    def _feed(self, data: bytes) -> None:
        if self.size is not None and self.received + len(data) > self.size:
            raise ValueError(f"more than the {self.size} bytes announced")
        if self.meta is None:
            self._take_head(data)
        self.received += len(data)
        self._newlines += data.count(b"\n")
        if len(data) >= TRAILER_LEN:
            if self._tail:
                self._crc = zlib.crc32(self._tail, self._crc)
            cut = len(data) - TRAILER_LEN
            if cut:
                self._crc = zlib.crc32(memoryview(data)[:cut], self._crc)
                self._last = data[cut - 1]
            elif self._tail:
                self._last = self._tail[-1]
            self._tail = bytes(data[cut:])
        else:
            buf = self._tail + data
            cut = len(buf) - TRAILER_LEN
            if cut > 0:
                self._crc = zlib.crc32(buf[:cut], self._crc)
                self._last = buf[cut - 1]
                buf = buf[cut:]
            self._tail = buf

    def _take_head(self, data: bytes) -> None:
        room = len(MAGIC) + MAX_META_LINE + 1 - len(self._head)
        self._head += data[:room]
        head = self._head
        if head[: len(MAGIC)] != MAGIC[: len(head)]:
            raise ValueError(f"not a snapshot stream (magic {bytes(head[: len(MAGIC)])!r})")
        end = head.find(b"\n", len(MAGIC))
        if end < 0:
            if len(head) > len(MAGIC) + MAX_META_LINE:
                raise ValueError("snapshot meta line too long")
            return
        meta = _decode_meta(bytes(head[len(MAGIC) : end]))
        if self.expect is not None and meta != self.expect:
            raise ValueError(f"the stream holds {meta}, not the announced {self.expect}")
        self.meta, self.payload_start = meta, end + 1
        self._head = bytearray()

    def finish(self) -> SnapshotMeta:
        """The meta of a complete, sound stream."""
        if self._error is not None:
            raise ValueError(self._error)
        try:
            return self._finish()
        except ValueError as e:
            self._error = str(e)
            raise

    def _finish(self) -> SnapshotMeta:
        if self.meta is None:
            raise ValueError(f"truncated: {self.received} bytes, no complete header")
        if self.size is not None and self.received != self.size:
            raise ValueError(f"truncated: {self.received} of {self.size} bytes")
        m = _TRAILER.match(self._tail)
        if self.received < self.payload_start + TRAILER_LEN or m is None:
            raise ValueError("truncated or damaged: no trailer line at the end")
        lines, crc = int(m[1]), int(m[2], 16)
        if crc != self._crc:
            raise ValueError(f"CRC mismatch: trailer says {crc:08x}, bytes give {self._crc:08x}")
        # Every payload line ends in a newline: the byte before the trailer is one
        # (the meta line's own, for an empty payload), and the count adds up.
        if self._newlines != lines + 3 or self._last != ord("\n"):
            raise ValueError(f"the payload does not hold the {lines} lines its trailer says")
        return self.meta


def iter_lines(read: Callable[[int, int], bytes], start: int, end: int) -> Iterator[bytes]:
    """The newline-terminated lines in bytes [start, end), without their newlines,
    read in blocks so a huge line costs no quadratic copying."""
    pending = bytearray()
    pos = start
    while pos < end:
        block = read(pos, min(READ_BLOCK, end - pos))
        if not block:
            raise ValueError(f"snapshot ends at {pos}, before {end}")
        pos += len(block)
        i = 0
        while True:
            j = block.find(b"\n", i)
            if j < 0:
                pending += block[i:]
                break
            if pending:
                pending += block[i:j]
                yield bytes(pending)
                pending.clear()
            else:
                yield block[i:j]
            i = j + 1
    if pending:
        raise ValueError("the last payload line has no newline")


def check_range(offset: int, length: int, size: int) -> None:
    if not 0 <= offset <= size or length < 0:
        raise ValueError(f"read({offset}, {length}) outside a snapshot of {size} bytes")


class MemorySnapshot:
    """A snapshot stream held as bytes (MemoryStorage)."""

    def __init__(self, data: bytes, meta: SnapshotMeta, payload_start: int, owner: object) -> None:
        self.data = data
        self.meta = meta
        self.size = len(data)
        self.payload_start = payload_start
        self.owner = owner  # the storage that made it: only that one may adopt it

    @classmethod
    def encode(cls, meta: SnapshotMeta, lines: Iterable[bytes], owner: object) -> MemorySnapshot:
        parts: list[bytes] = []
        _, start = encode_stream(meta, lines, parts.append)
        return cls(b"".join(parts), meta, start, owner)

    def read(self, offset: int, length: int) -> bytes:
        check_range(offset, length, self.size)
        return self.data[offset : offset + length]

    def payload(self) -> Iterator[bytes]:
        end = self.size - TRAILER_LEN
        if end > self.payload_start:
            yield from self.data[self.payload_start : end - 1].split(b"\n")

    def close(self) -> None:
        pass


class MemoryReceiver:
    """Receives a stream into memory, verifying it as it comes."""

    def __init__(self, meta: SnapshotMeta, size: int | None, owner: object) -> None:
        self.meta = meta
        self.owner = owner  # only this storage may adopt the result
        self._verifier = Verifier(meta, size)
        self._parts: list[bytes] | None = []

    @property
    def received(self) -> int:
        return self._verifier.received

    def write(self, data: bytes) -> None:
        if self._parts is None:
            raise ValueError("the receiver is finished or aborted")
        self._verifier.feed(data)
        self._parts.append(bytes(data))

    def finish(self) -> MemorySnapshot:
        if self._parts is None:
            raise ValueError("the receiver is finished or aborted")
        try:
            meta = self._verifier.finish()
        except ValueError:
            self.abort()
            raise
        data, self._parts = b"".join(self._parts), None
        return MemorySnapshot(data, meta, self._verifier.payload_start, self.owner)

    def abort(self) -> None:
        self._parts = None
