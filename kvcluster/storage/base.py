"""The storage boundary: what the node must persist before Raft may act on it.

The node calls `save()` with each ready batch's hard state and entries before
sending that batch's messages, and `load()` once at start. A write-ahead log
implements the same two calls with files; the core never knows which it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..raft import Entry, HardState


@dataclass(slots=True)
class PersistedState:
    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot_index: int = 0
    snapshot_term: int = 0

    @property
    def empty(self) -> bool:
        return self.hard_state == HardState() and not self.entries and not self.snapshot_index


class Storage(Protocol):
    def load(self) -> PersistedState: ...

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None: ...

    def close(self) -> None: ...
