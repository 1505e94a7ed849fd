"""Storage that lives only as long as the process: the default for experiments.

A node restarted on memory storage remembers nothing, so it must come back as a
new incarnation (see kvcluster.raft.membership), never as its old self.
It follows exactly the semantics of DiskStorage (the tests run both), so an
experiment on memory storage exercises the same node code paths.
"""

from __future__ import annotations

from ..raft import Entry, HardState
from .base import PersistedState, Snapshot
from .terms import check_batch


class MemoryStorage:
    def __init__(self) -> None:
        self._hard_state = HardState()
        self._entries: list[Entry] = []  # all after the snapshot
        self._snapshot: Snapshot | None = None

    @property
    def _base(self) -> int:
        return self._snapshot.index if self._snapshot else 0

    def load(self) -> PersistedState:
        return PersistedState(self._hard_state, list(self._entries), snapshot=self._snapshot)

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

    def save_snapshot(self, snapshot: Snapshot) -> None:
        base, log = self._base, self._entries
        if snapshot.index <= base:
            return
        pos = snapshot.index - base - 1
        if pos < len(log) and log[pos].term == snapshot.term:
            del log[: pos + 1]
        else:
            log.clear()  # our log disagrees with the snapshot: it restarts after it
        self._snapshot = snapshot

    def sync(self) -> None:
        pass

    @property
    def sync_interval(self) -> float | None:
        return None

    def close(self) -> None:
        pass
