"""Bookkeeping shared by the storages: batch validation and a compact index->term map.

Disk storage does not keep entries in memory, yet `adopt_snapshot` must know the
term of the stored entry at the snapshot's index (to keep or drop the entries
after it), and `save` must know the last index (to refuse gaps). Terms change
rarely, so runs of (first index, term) cost a few tuples per election.
"""

from __future__ import annotations

import bisect

from ..raft import Entry


def check_batch(entries: list[Entry], last_index: int) -> None:
    """Refuse a batch that would leave a hole in the log: that is a caller bug,
    and a log with a hole could not be replayed."""
    if not entries:
        return
    first = entries[0].index
    if first < 1 or first > last_index + 1:
        raise ValueError(f"entries start at {first} but the log ends at {last_index}")
    for i, e in enumerate(entries):
        if e.index != first + i:
            raise ValueError(f"entries are not contiguous at {e.index} (expected {first + i})")


class TermRuns:
    """Terms of the entries after a base (snapshot) index, as runs."""

    __slots__ = ("_starts", "_terms", "base_index", "base_term", "last_index")

    def __init__(self, base_index: int = 0, base_term: int = 0) -> None:
        self.base_index, self.base_term = base_index, base_term
        self.last_index = base_index
        self._starts: list[int] = []
        self._terms: list[int] = []

    def term_at(self, index: int) -> int | None:
        if index == self.base_index:
            return self.base_term
        if not self.base_index < index <= self.last_index:
            return None
        return self._terms[bisect.bisect_right(self._starts, index) - 1]

    def append(self, index: int, term: int) -> None:
        """Record an entry; one at or before the end truncates the suffix first."""
        if index <= self.base_index:
            self._cut(self.base_index + 1)
            return
        if index <= self.last_index:
            self._cut(index)
        if self._terms and self._terms[-1] == term:
            self.last_index = index
            return
        self._starts.append(index)
        self._terms.append(term)
        self.last_index = index

    def compact(self, index: int, term: int, keep: bool) -> None:
        """The log now starts after (index, term); keep the later runs only if `keep`."""
        if keep and index < self.last_index:
            k = bisect.bisect_right(self._starts, index + 1) - 1  # the run holding index + 1
            self._starts[: k + 1] = [index + 1]
            del self._terms[:k]
        else:
            self._starts.clear()
            self._terms.clear()
            self.last_index = index
        self.base_index, self.base_term = index, term

    def _cut(self, index: int) -> None:
        """Drop entries >= index."""
        k = bisect.bisect_left(self._starts, index)
        del self._starts[k:]
        del self._terms[k:]
        self.last_index = index - 1
