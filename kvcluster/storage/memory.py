"""Storage that lives only as long as the process: the default for experiments.

A node restarted on memory storage remembers nothing, so it must come back as a
new incarnation (see kvcluster.raft.membership), never as its old self.
"""

from __future__ import annotations

from ..raft import Entry, HardState
from .base import PersistedState


class MemoryStorage:
    def __init__(self) -> None:
        self._state = PersistedState()

    def load(self) -> PersistedState:
        return self._state

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        if hard_state is not None:
            self._state.hard_state = hard_state
        if entries:
            log = self._state.entries
            first = entries[0].index - self._state.snapshot_index - 1
            del log[first:]  # a new leader may overwrite our uncommitted tail
            log.extend(entries)

    def close(self) -> None:
        pass
