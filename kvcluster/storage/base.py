"""The storage boundary: what the node must persist before Raft may act on it.

The node calls `save()` with each ready batch's hard state and entries before
sending that batch's messages, `save_snapshot()` when it has captured the state
machine (or installed a leader's snapshot), `sync()` periodically, and `load()`
once at start. A write-ahead log implements the same calls with files; neither
the core nor the node knows which one it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..raft import Entry, HardState


class CorruptLogError(Exception):
    """Stored data is damaged somewhere a crash cannot explain: recovery must stop."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"corrupt write-ahead log {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class StorageIdentityError(Exception):
    """The storage directory belongs to another node (or is not a storage directory)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine as of `index` (whose entry had `term`).

    `membership` is `Membership.to_dict()` in effect at `index`; `data` is
    `KVStore.snapshot()`. Both must be JSON-serialisable.
    """

    index: int
    term: int
    membership: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class PersistedState:
    """What `load()` returns: restore the snapshot (if any), then hand the rest to the core.

    `entries` all come after `snapshot_index`. `incarnation` is the identity the
    storage remembers (disk storage), or None if it remembers none (memory).
    """

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot_index: int = 0
    snapshot_term: int = 0
    snapshot: Snapshot | None = None
    incarnation: str | None = None

    def __post_init__(self) -> None:
        s = self.snapshot
        if s is not None:
            if (self.snapshot_index, self.snapshot_term) not in ((0, 0), (s.index, s.term)):
                raise ValueError("snapshot_index/snapshot_term disagree with the snapshot")
            self.snapshot_index, self.snapshot_term = s.index, s.term
        if self.entries and self.entries[0].index != self.snapshot_index + 1:
            raise ValueError("entries must start right after the snapshot")

    @property
    def empty(self) -> bool:
        return self.hard_state == HardState() and not self.entries and not self.snapshot_index


class Storage(Protocol):
    def load(self) -> PersistedState:
        """The persisted state (snapshot, hard state, entries after the snapshot)."""
        ...

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> None:
        """Persist before returning (as far as the fsync policy promises).

        `entries` are contiguous; if the first index is <= the last stored one,
        the stored suffix from there is replaced (a new leader overwrote it).
        """
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep `snapshot` and drop the entries it covers.

        Entries after it survive only if the stored entry at `snapshot.index` has
        `snapshot.term` (Raft's InstallSnapshot rule); otherwise the log restarts
        after the snapshot. A snapshot not newer than the current one is ignored.
        """
        ...

    def sync(self) -> None:
        """Make everything saved so far durable (a no-op unless the policy defers fsyncs)."""
        ...

    @property
    def sync_interval(self) -> float | None:
        """Seconds between the `sync()` calls the node owes, or None if it owes none."""
        ...

    def close(self) -> None: ...
