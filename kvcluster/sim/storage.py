"""What a simulated node has persisted, and snapshots as bytes in memory.

`Storage` is the simulator's disk: it survives a crash (unless the node is
amnesiac), and the safety checks read it (a committed entry must be on a
majority's disk, a node must not vote twice...). It can be told to fail on
the Nth write, as a full disk does, to show that the node stops and that
nothing it failed to persist was acknowledged or counted.

Snapshots are held the way the node layer sends and receives them: as bytes
(`MemorySnapshot`), a JSON line with the metadata and then the kv store's
payload lines, read at offsets and received in chunks (`MemoryReceiver`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from ..raft import Entry, HardState
from ..storage import SnapshotMeta


class DiskFull(OSError):
    """The simulated disk refused a write (ENOSPC): the node must stop."""


class MemorySnapshot:
    """A complete snapshot: a metadata line, then the payload lines."""

    def __init__(self, meta: SnapshotMeta, data: bytes) -> None:
        self._meta = meta
        self.data = data

    @classmethod
    def build(cls, meta: SnapshotMeta, lines: Iterable[bytes]) -> MemorySnapshot:
        head = orjson.dumps({"index": meta.index, "term": meta.term, "membership": meta.membership})
        return cls(meta, b"".join([head, b"\n", *(line + b"\n" for line in lines)]))

    @classmethod
    def parse(cls, data: bytes) -> MemorySnapshot:
        head, _, _ = data.partition(b"\n")
        try:
            d = orjson.loads(head)
            meta = SnapshotMeta(int(d["index"]), int(d["term"]), dict(d["membership"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a snapshot: {exc}") from exc
        return cls(meta, data)

    @property
    def meta(self) -> SnapshotMeta:
        return self._meta

    @property
    def size(self) -> int:
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]

    def payload(self) -> Iterator[bytes]:
        lines = self.data.split(b"\n")
        return iter(lines[1:-1])  # after the metadata; the last "line" is empty

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"MemorySnapshot({self._meta.index}, {self._meta.term}, {self.size} bytes)"


class MemoryReceiver:
    """A snapshot arriving in chunks: never more than its announced size."""

    def __init__(self, meta: SnapshotMeta, size: int) -> None:
        self.meta = meta
        self.size = size
        self._buf = bytearray()
        self.aborted = False

    @property
    def received(self) -> int:
        return len(self._buf)

    def write(self, data: bytes) -> None:
        if len(self._buf) + len(data) > self.size:
            raise ValueError("more bytes than the snapshot's size")
        self._buf += data

    def finish(self) -> MemorySnapshot:
        snap = MemorySnapshot.parse(bytes(self._buf))
        if snap.meta != self.meta:
            raise ValueError(f"received {snap.meta}, announced {self.meta}")
        return snap

    def abort(self) -> None:
        self.aborted = True
        self._buf.clear()


@dataclass
class Storage:
    """What a node has persisted: it survives a crash (unless amnesiac).
    `entries` are those after the snapshot, if there is one.

    `fail_after`: the number of further writes (hard state and entries, or a
    snapshot) that succeed before the disk is full: the one after raises
    `DiskFull` having persisted only a prefix of its batch (a torn write)."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: MemorySnapshot | None = None
    fail_after: int | None = None
    writes: int = 0

    @property
    def base(self) -> int:
        return self.snapshot.meta.index if self.snapshot is not None else 0

    def last_index(self) -> int:
        return self.base + len(self.entries)

    def term_at(self, index: int) -> int | None:
        base = self.base
        if index == base:
            return self.snapshot.meta.term if self.snapshot is not None else 0
        if base < index <= base + len(self.entries):
            return self.entries[index - base - 1].term
        return None

    def entry(self, index: int) -> Entry | None:
        """The stored entry at `index` (None if absent or in the snapshot)."""
        base = self.base
        if base < index <= base + len(self.entries):
            return self.entries[index - base - 1]
        return None

    def tip(self) -> tuple[int, int]:
        """(last term, last index): what the election restriction compares."""
        if self.entries:
            return self.entries[-1].term, self.last_index()
        snap = self.snapshot
        return (snap.meta.term, snap.meta.index) if snap is not None else (0, 0)

    def writing(self) -> bool:
        """Count a write; False if the disk is full now (the write must fail)."""
        self.writes += 1
        return self.fail_after is None or self.writes <= self.fail_after
