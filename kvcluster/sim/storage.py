"""What a simulated node has persisted, and snapshots as bytes in memory.

`Storage` is the simulator's disk: it survives a crash (unless the node is
amnesiac), and the safety checks read it (a committed entry must be on a
majority's disk, a node must not vote twice...). It can be told to fail on
the Nth write, as a full disk does, to show that the node stops and that
nothing it failed to persist was acknowledged or counted.

It models DiskStorage's fsync policies too: a process crash loses nothing,
a power cut loses what was not synced yet (see `Storage`).

Snapshots are the production byte streams (`kvcluster.storage.stream`: a
metadata line, the kv store's payload lines, a CRC trailer), held in memory,
read at offsets and received in chunks through the production verifier.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..raft import Entry, HardState
from ..storage import FsyncPolicy
from ..storage.stream import MemorySnapshot


class DiskFull(OSError):
    """The simulated disk refused a write (ENOSPC): the node must stop."""


@dataclass
class Storage:
    """What a node has persisted: it survives a crash (unless amnesiac).
    `entries` are those after the snapshot, if there is one.

    `fail_after`: the number of further writes (hard state and entries, or a
    snapshot) that succeed before the disk is full: the one after raises
    `DiskFull` having persisted only a prefix of its batch (a torn write).

    `fsync`: DiskStorage's policy, for what a power cut (`power_cut()`, or
    `RaftNet.crash(nid, power_cut=True)`) loses; a process crash loses nothing.
    Under `always` a cut loses nothing either. Under `batch` and `never` it
    loses the entries saved since the last sync, never the hard state: a save
    that changes the term or vote is fsynced before it returns under every
    policy (so a node cannot vote twice in a term), and that fsync makes the
    entries written before it durable too (they are in the same file; under
    `never` DiskStorage syncs only the open segment, which the model ignores).
    No `sync()` timer runs here, so `batch` is modelled at its worst: the cut
    comes just before the timer. Snapshots survive a cut (DiskStorage fsyncs
    them under `always` and `batch`)."""

    hard_state: HardState = field(default_factory=HardState)
    entries: list[Entry] = field(default_factory=list)
    snapshot: MemorySnapshot | None = None
    fail_after: int | None = None
    writes: int = 0
    fsync: FsyncPolicy = "always"
    # The entries as a power cut would leave them, once a save is not durable
    # yet (None while everything is): copied at the first such save.
    _synced: list[Entry] | None = field(default=None, repr=False)
    # Whether a cut keeps the synced entries after the snapshot (see save_snapshot).
    _keep_after_cut: bool = field(default=True, repr=False)

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

    def save(self, hard_state: HardState | None, entries: list[Entry]) -> list[Entry]:
        """Persist a ready batch the caller has checked, as DiskStorage.save does:
        replace the stored suffix from the first entry on. Returns the entries
        added (those after the snapshot)."""
        changed = hard_state is not None and hard_state != self.hard_state
        if entries and self.fsync != "always" and self._synced is None:
            self._synced = list(self.entries)
        if hard_state is not None:
            self.hard_state = hard_state
        added: list[Entry] = []
        if entries:
            base, first = self.base, entries[0].index
            added = [e for e in entries if e.index > base] if first <= base else entries
            del self.entries[max(first - base - 1, 0) :]
            self.entries.extend(added)
        if changed or self.fsync == "always":
            self.sync()
        return added

    def save_snapshot(self, snap: MemorySnapshot) -> bool:
        """Keep a newer snapshot, and the entries after it only if the stored
        entry at its index agrees (InstallSnapshot's rule); False if not newer."""
        index, term = snap.meta.index, snap.meta.term
        if index <= self.base:
            return False
        keep = self.term_at(index) == term
        if keep:
            del self.entries[: index - self.base]
        else:
            self.entries.clear()
        self.snapshot = snap
        if self._synced is not None:
            # Its marker in the log is not synced: recovery applies the marker to
            # what the log holds, dropping it all if the log disagreed (disk.py).
            self._keep_after_cut = keep
        return True

    def sync(self) -> None:
        """Everything saved so far is durable (an fsync of the log)."""
        self._synced = None
        self._keep_after_cut = True

    def power_cut(self) -> None:
        """The machine lost power: the entries go back to what was synced (see
        the class docstring); the hard state and the snapshot stay."""
        if self._synced is None:
            return
        base = self.base
        kept = [e for e in self._synced if e.index > base] if self._keep_after_cut else []
        self.entries = kept
        self.sync()
