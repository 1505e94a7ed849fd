"""Storage that lives only as long as the process: the default for experiments.

A node restarted on memory storage remembers nothing, so it must come back as a
new incarnation (see kvcluster.raft.membership), never as its old self.
It follows exactly the semantics of DiskStorage (the tests run both), so an
experiment on memory storage exercises the same node code paths. Snapshots are
the same byte streams as on disk (stream.py), held as bytes, so `read(offset,
length)` is exact however small the chunks are.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..raft import Entry, HardState
from .base import PersistedState, SnapshotMeta, SnapshotSource
from .stream import MemoryReceiver, MemorySnapshot
from .terms import check_batch


class MemoryStorage:
    def __init__(self) -> None:
        self._hard_state = HardState()
        self._entries: list[Entry] = []  # all after the snapshot
        self._base = 0  # the snapshot's index and term (0, 0: none)
        self._base_term = 0
        self._source: MemorySnapshot | None = None  # the adopted snapshot

    def load(self) -> PersistedState:
        return PersistedState(
            self._hard_state,
            list(self._entries),
            snapshot_index=self._base,
            snapshot_term=self._base_term,
            source=self._source,
        )

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        base, log = self._base, self._entries
        check_batch(entries, base + len(log))
        if hard_state is not None:
            self._hard_state = hard_state
        if entries:
            # A new leader may overwrite our uncommitted tail; entries the snapshot
            # covers are committed, so only what follows them is cut and replaced.
            del log[max(entries[0].index - base - 1, 0) :]
            log.extend(e for e in entries if e.index > base)

    def write_snapshot(self, meta: SnapshotMeta, lines: Iterable[bytes]) -> MemorySnapshot:
        """Encode the stream into bytes; touches no state, so any thread may call it."""
        return MemorySnapshot.encode(meta, lines, self)

    def open_receiver(self, meta: SnapshotMeta, size: int | None = None) -> MemoryReceiver:
        return MemoryReceiver(meta, size, self)

    def adopt_snapshot(self, source: SnapshotSource) -> bool:
        if not isinstance(source, MemorySnapshot) or source.owner is not self:
            raise ValueError("only a snapshot this storage wrote or received can be adopted")
        if not self._compact(source.meta.index, source.meta.term):
            return False
        self._source = source
        return True

    def latest_snapshot(self) -> MemorySnapshot | None:
        return self._source

    def _compact(self, index: int, term: int) -> bool:
        """Drop the entries a snapshot at (index, term) covers; False if it is not newer."""
        base, log = self._base, self._entries
        if index <= base:
            return False
        pos = index - base - 1
        if pos < len(log) and log[pos].term == term:
            del log[: pos + 1]
        else:
            log.clear()  # our log disagrees with the snapshot: it restarts after it
        self._base, self._base_term = index, term
        return True

    def sync(self) -> None:
        pass

    @property
    def sync_interval(self) -> float | None:
        return None

    def close(self) -> None:
        pass
