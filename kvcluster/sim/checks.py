"""The simulator's safety checks: Raft's properties, judged after every step.

`SafetyChecks` is mixed into `RaftNet` (net.py), whose state it reads: the
nodes, what each has persisted (`storage`), what each applied, the messages.
Every check raises `InvariantViolation` with the seed and the simulated time,
so a failing run says where to look and replays exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..node import Node
from ..raft import BOOTSTRAP_TERM, Entry, EntryKind, Membership, RaftNode, Role
from ..storage.stream import MemorySnapshot
from .storage import Storage


class InvariantViolation(AssertionError):
    """A Raft safety property does not hold."""


@dataclass
class ReadRecord:
    node: str
    ctx: int
    lease: bool
    issued_at: float
    floor: int  # highest index committed anywhere when the read was requested
    index: int | None = None  # the ReadState's index, once served
    failed: bool = False

    @property
    def done(self) -> bool:
        return self.index is not None or self.failed


class SafetyChecks:
    """The checks (see the module docstring); `RaftNet` provides the state."""

    # Judge every ReadState against what was committed when the read was asked.
    # Tests turn it off to show that the linearizability checker, on its own,
    # also catches a stale read.
    check_reads: bool = True

    seed: int
    now: float
    nodes: dict[str, RaftNode]
    servers: dict[str, Node]
    storage: dict[str, Storage]
    alive: set[str]
    applied: dict[str, list[Entry]]
    applied_from: dict[str, int]
    committed: dict[int, Entry]
    leaders: dict[int, str]
    reads: dict[tuple[str, int], ReadRecord]
    _voters: list[str]
    _config_seen: bool
    _amnesiac: set[str]
    _commit_term: dict[int, int]
    _entry_at: dict[tuple[int, int], tuple[Entry, int]]
    _durable_commit: dict[str, int]
    _commit_seen: dict[RaftNode, int]
    _leader_tip: dict[str, tuple[int, Entry | None]]
    _leader_checked: set[tuple[str, int]]
    _snapshot_digest: dict[int, bytes]

    def _fail(self, what: str) -> None:
        raise InvariantViolation(f"[seed {self.seed}, t={self.now:.4f}] {what}")

    def _check_commit_is_durable(self, nid: str, index: int) -> None:
        """Leader completeness as a state invariant (the one its proof rests on):
        once an entry is committed, no node lacking it is at least as up to date
        as a majority of voters, so none can ever win an election without it.
        This catches an unsafe commit when it happens, not only in the rare
        schedule where such a node then does win (Figure 8).

        Judged on persisted logs with the bootstrap voters; skipped once
        membership changed or a node lost its state (other rules apply then)."""
        if self._config_seen or self._amnesiac:
            return
        term = self.nodes[nid].log.term_at(index)
        voters = self._voters
        tips = {v: self.storage[v].tip() for v in voters}
        quorum = len(voters) // 2 + 1
        for cand in voters:
            st = self.storage[cand]
            if index <= st.base or st.term_at(index) == term:
                continue  # it holds the entry (a snapshot covers only committed ones)
            electors = [v for v in voters if tips[cand] >= tips[v]]
            if len(electors) >= quorum:
                self._fail(
                    f"leader completeness: {nid} commits index {index} (term {term}), but "
                    f"{cand}, whose log lacks it, could be elected by {electors}"
                )

    def _check_new_entries(self, nid: str, st: Storage, new: list[Entry]) -> None:
        for e in new:
            if e.kind is EntryKind.CONFIG and e.term != BOOTSTRAP_TERM:
                self._config_seen = True  # a change (the bootstrap entry is no change)
            if st.entry(e.index) is not e:
                self._fail(f"{nid}: entry {e.index} persisted at the wrong position")
            prev_term = st.term_at(e.index - 1) or 0
            seen = self._entry_at.setdefault((e.index, e.term), (e, prev_term))
            if seen != (e, prev_term):
                self._fail(
                    f"log matching: {nid} has {e} after term {prev_term}, "
                    f"another log has {seen[0]} after term {seen[1]}"
                )

    def _check_applied(self, nid: str, entries: list[Entry]) -> None:
        node = self.nodes[nid]
        applied = self.applied[nid]
        st = self.storage[nid]
        for e in entries:
            if e.index != self.applied_from[nid] + len(applied) + 1:
                self._fail(
                    f"{nid}: applies {e.index} after {self.applied_from[nid] + len(applied)}"
                )
            known = self.committed.get(e.index)
            if known is None:
                self.committed[e.index] = e
                self._commit_term[e.index] = node.term
            elif known != e:
                self._fail(f"state machine safety: {nid} applies {e}, another node applied {known}")
            if e.index > st.base and st.entry(e.index) != e:
                self._fail(f"{nid}: applies {e} which is not in its storage")
            applied.append(e)
        if entries:
            self._durable_commit[nid] = max(self._durable_commit[nid], entries[-1].index)

    def _check_vote_grant(self, nid: str) -> None:
        """A node that lost its state votes only once its log names it a voter
        under its new incarnation (it may have voted in this term already, or
        helped commit entries it no longer has)."""
        if nid not in self._amnesiac:
            return
        node = self.nodes[nid]
        st = self.storage[nid]
        named = any(
            Membership.from_dict(e.data).is_voter(nid, node.incarnation)
            for e in st.entries
            if e.kind is EntryKind.CONFIG
        ) or (
            st.snapshot is not None
            and Membership.from_dict(st.snapshot.meta.membership).is_voter(nid, node.incarnation)
        )
        if not named:
            self._fail(f"{nid} lost its state, and votes before the log names it a voter again")

    def _check_node(self, nid: str) -> None:
        node = self.nodes[nid]
        if node.commit > node.log.last_index():
            self._fail(f"{nid}: commit {node.commit} beyond its last index {node.log.last_index()}")
        seen = self._commit_seen.get(node, 0)
        if node.commit < seen:
            self._fail(f"{nid}: commit index went back to {node.commit}")
        if node.commit > seen and node.role is Role.LEADER:
            self._check_commit_is_durable(nid, node.commit)
        self._commit_seen[node] = node.commit
        if node.role is Role.LEADER:
            tip = self._leader_tip.get(nid)
            last = node.log.last_index()
            if tip is not None and tip[0] == node.term:
                _, entry = tip
                # (Entries a snapshot now covers are committed: compaction is no loss.)
                compacted = node.log.snapshot_index
                if entry is not None and (
                    entry.index > last
                    or (entry.index > compacted and node.log.entry(entry.index) is not entry)
                    or (entry.index == compacted and node.log.snapshot_term != entry.term)
                ):
                    self._fail(f"leader append-only: {nid} lost or changed {entry} in its log")
            tip_entry = node.log.entry(last) if last > node.log.snapshot_index else None
            self._leader_tip[nid] = (node.term, tip_entry)
            known = self.leaders.setdefault(node.term, nid)
            if known != nid:
                self._fail(f"election safety: {known} and {nid} both lead term {node.term}")
            if (nid, node.term) not in self._leader_checked:
                self._leader_checked.add((nid, node.term))
                compacted = node.log.snapshot_index  # before it: in a checked snapshot
                for i, e in self.committed.items():
                    if (
                        self._commit_term[i] < node.term
                        and i >= compacted
                        and (
                            node.log.term_at(i) != e.term
                            or (i > compacted and node.log.entry(i) != e)
                        )
                    ):
                        self._fail(
                            f"leader completeness: {nid} leads term {node.term} "
                            f"without committed {e}"
                        )

    def _read_done(self, nid: str, ctx: int, index: int | None) -> None:
        rec = self.reads.get((nid, ctx))
        if rec is None:
            self._fail(f"{nid}: answers read {ctx} that was never asked")
            return
        if rec.done:
            self._fail(f"{nid}: answers read {ctx} twice")
        if index is None:
            rec.failed = True
            return
        rec.index = index
        if index < rec.floor and self.check_reads:
            self._fail(
                f"stale read: {nid} read {ctx} at index {index}, but {rec.floor} was "
                f"committed before it was requested"
            )
        if index > max(self.committed, default=0) and self.check_reads:
            self._fail(f"{nid}: read {ctx} at index {index} that is not committed anywhere")

    def check_logs(self) -> None:
        """Full pairwise check of the stored logs (slow; end of a test)."""
        stores = self.storage
        for a, b in itertools.combinations(sorted(stores), 2):
            sa, sb = stores[a], stores[b]
            lo, hi = max(sa.base, sb.base) + 1, min(sa.last_index(), sb.last_index())
            same = [i for i in range(lo, hi + 1) if sa.term_at(i) == sb.term_at(i)]
            if same and any(sa.entry(i) != sb.entry(i) for i in range(lo, same[-1] + 1)):
                self._fail(f"log matching: {a} and {b} differ before index {same[-1]}")
        for i, e in self.committed.items():
            for nid, st in stores.items():
                if st.base < i <= self._durable_commit[nid] and st.entry(i) != e:
                    self._fail(f"{nid} lost committed entry {e}")

    def converged(self, nids: Iterable[str] | None = None) -> bool:
        """All (live) nodes have applied the same entries."""
        ids = sorted(self.alive if nids is None else nids)
        first = ids[0]
        if any(self.nodes[i].applied != self.nodes[first].applied for i in ids):
            return False
        # Where snapshots cut the lists short, applying checked them against each other.
        return all(
            self.applied[i] == self.applied[first]
            for i in ids
            if self.applied_from[i] == self.applied_from[first]
        )

    def _check_snapshot(self, nid: str, snap: MemorySnapshot) -> None:
        """State machine safety for snapshots: every snapshot of an index holds
        the same state, and its term is that of the entry committed there."""
        meta = snap.meta
        known = self.committed.get(meta.index)
        if known is not None and known.term != meta.term:
            self._fail(f"{nid}: snapshot at {meta.index} of term {meta.term}, committed {known}")
        digest = snap.data
        seen = self._snapshot_digest.setdefault(meta.index, digest)
        if seen != digest:
            self._fail(f"state machine safety: {nid}'s snapshot at {meta.index} differs")

    def check_stores(self) -> None:
        """Live nodes that applied the same prefix hold the same kv state."""
        by_index: dict[int, tuple[str, Any]] = {}
        for nid in sorted(self.alive):
            kv = self.servers[nid].kv
            seen = by_index.setdefault(kv.applied_index, (nid, kv))
            if seen[1] != kv:
                self._fail(
                    f"state machine safety: {seen[0]} and {nid} applied up to "
                    f"{kv.applied_index} but hold different kv states"
                )
