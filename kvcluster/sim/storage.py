"""What a simulated node has persisted, and snapshots as bytes in memory.

`Storage` is the simulator's disk: it survives a crash (unless the node is
amnesiac), and the safety checks read it (a committed entry must be on a
majority's disk, a node must not vote twice...). It can be told to fail on
the Nth write, as a full disk does, to show that the node stops and that
nothing it failed to persist was acknowledged or counted.

Snapshots are the production byte streams (`kvcluster.storage.stream`: a
metadata line, the kv store's payload lines, a CRC trailer), held in memory,
read at offsets and received in chunks through the production verifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..raft import Entry, HardState
from ..storage.stream import MemorySnapshot


class DiskFull(OSError):
    """The simulated disk refused a write (ENOSPC): the node must stop."""


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
