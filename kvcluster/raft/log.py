"""The in-memory Raft log, with a compaction offset so snapshots can slot in."""

from __future__ import annotations

from collections.abc import Iterable

from .messages import Entry


class RaftLog:
    """Entries `first_index()..last_index()`; everything up to `snapshot_index`
    is compacted away and only its last term is remembered."""

    __slots__ = ("_entries", "snapshot_index", "snapshot_term", "stable_index", "unstable_from")

    def __init__(
        self, entries: Iterable[Entry] = (), snapshot_index: int = 0, snapshot_term: int = 0
    ) -> None:
        self._entries: list[Entry] = list(entries)
        self.snapshot_index = snapshot_index
        self.snapshot_term = snapshot_term
        # Entries from this index on have not been handed to storage yet ...
        self.unstable_from = self.last_index() + 1
        # ... and entries after this one are not known to be on disk: handed
        # out, maybe, but the caller has not said (`RaftNode.advance`) that
        # they were persisted. A leader counts itself only up to here.
        self.stable_index = self.last_index()

    def first_index(self) -> int:
        return self.snapshot_index + 1

    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snapshot_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, or None if it is not (or no longer) here."""
        if index == self.snapshot_index:
            return self.snapshot_term
        if self.snapshot_index < index <= self.last_index():
            return self._entries[index - self.snapshot_index - 1].term
        return None

    def matches(self, index: int, term: int) -> bool:
        return self.term_at(index) == term

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.snapshot_index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries with lo <= index < hi."""
        base = self.snapshot_index + 1
        return self._entries[max(lo, base) - base : max(hi, base) - base]

    def append(self, entry: Entry) -> None:
        self._entries.append(entry)

    def merge(self, prev_index: int, entries: list[Entry]) -> int:
        """Add a leader's entries after `prev_index` (which must match), cutting
        our log only at the first real conflict so a stale or duplicated
        AppendEntries never truncates entries that are still valid.
        Returns the index of the first entry that changed, or 0 if none did."""
        for i, e in enumerate(entries):
            t = self.term_at(e.index)
            if t is None and e.index <= self.snapshot_index:
                continue  # already compacted, hence committed and identical
            if t != e.term:
                del self._entries[e.index - self.snapshot_index - 1 :]
                self._entries.extend(entries[i:])
                self.unstable_from = min(self.unstable_from, e.index)
                self.stable_index = min(self.stable_index, e.index - 1)
                return e.index
        return 0

    def stable_to(self, index: int, term: int) -> None:
        """Storage holds the log up to `index` (whose entry had `term`) now.

        Ignored if that entry has been replaced since it was handed out: then
        what reached the disk is not what the log holds there."""
        if index > self.stable_index and self.term_at(index) == term:
            self.stable_index = min(index, self.last_index())

    def take_unstable(self) -> list[Entry]:
        out = self.slice(self.unstable_from, self.last_index() + 1)
        self.unstable_from = self.last_index() + 1
        return out

    def first_index_of_term(self, index: int, floor: int) -> int:
        """The first index (> floor) of the run of entries with the term at `index`."""
        term = self.term_at(index)
        while index - 1 > max(floor, self.snapshot_index) and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int) -> int:
        """Our last index holding `term`, or 0 if we hold none."""
        for e in reversed(self._entries):
            if e.term == term:
                return e.index
            if e.term < term:
                break
        return 0

    def compact(self, index: int) -> None:
        """Drop entries up to `index` (included): they are in a snapshot now."""
        if index <= self.snapshot_index:
            return
        term = self.term_at(index)
        assert term is not None, "cannot compact past the end of the log"
        del self._entries[: index - self.snapshot_index]
        self.snapshot_index, self.snapshot_term = index, term
        self.stable_index = max(self.stable_index, index)
