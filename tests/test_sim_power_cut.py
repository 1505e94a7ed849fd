"""The simulator's storage model of the fsync policies, and a power cut under it.

Under `batch` and `never` a power cut loses the entries saved since the last
sync but never a saved term or vote (DiskStorage fsyncs those before `save`
returns, whatever the policy). With that model, a follower that voted and then
lost power keeps its vote; with the model the code had before issue 12 (the
hard state deferred with the entries) the simulator finds two leaders in one
term, which is how a node voting twice shows.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_sim import FAST

from kvcluster.raft import Entry, EntryKind, HardState, RaftOptions
from kvcluster.sim.net import InvariantViolation, RaftNet
from kvcluster.sim.storage import Storage
from kvcluster.storage.base import SnapshotMeta
from kvcluster.storage.stream import MemorySnapshot


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, EntryKind.NORMAL, f"e{i}") for i in range(lo, hi + 1)]


def indexes(st: Storage) -> list[int]:
    return [e.index for e in st.entries]


# ---------------------------------------------------------------- the model


@pytest.mark.parametrize("policy", ["batch", "never"])
def test_a_power_cut_loses_unsynced_entries_but_no_hard_state(policy: Any) -> None:
    st = Storage(fsync=policy)
    st.save(HardState(1, "a"), entries(1, 3))  # a new vote: synced, entries and all
    st.save(None, entries(4, 6))  # deferred
    st.save(HardState(1, "a"), entries(7, 7))  # the same hard state: still deferred
    st.power_cut()
    assert st.hard_state == HardState(1, "a") and indexes(st) == [1, 2, 3]
    st.save(None, entries(4, 5))
    st.save(HardState(2, "b"), [])  # syncs the entries written before it too
    st.save(None, entries(6, 8, term=2))
    st.power_cut()
    assert st.hard_state == HardState(2, "b") and indexes(st) == [1, 2, 3, 4, 5]


def test_under_always_a_power_cut_loses_nothing() -> None:
    st = Storage()
    st.save(HardState(1, "a"), entries(1, 3))
    st.save(None, entries(4, 6))
    st.power_cut()
    assert st.hard_state == HardState(1, "a") and indexes(st) == list(range(1, 7))


def test_a_cut_suffix_comes_back_after_a_power_cut() -> None:
    """A new leader's entries replaced a synced suffix, unsynced: the cut brings
    the old suffix back, as replaying the log file would."""
    st = Storage(fsync="batch")
    st.save(HardState(2, "a"), entries(1, 4))
    old = list(st.entries)
    st.save(None, entries(3, 5, term=2))
    assert [e.term for e in st.entries] == [1, 1, 2, 2, 2]
    st.power_cut()
    assert st.entries == old


def test_a_snapshot_survives_a_power_cut() -> None:
    st = Storage(fsync="batch")
    st.save(HardState(1, "a"), entries(1, 3))
    st.save(None, entries(4, 6))  # deferred
    snap = MemorySnapshot.encode(SnapshotMeta(4, 1, {}), [b"x"], None)
    assert st.save_snapshot(snap)
    assert indexes(st) == [5, 6]
    st.power_cut()
    assert st.snapshot is snap and st.base == 4
    assert indexes(st) == []  # the synced log ended at 3, before the snapshot


def test_synced_entries_after_the_snapshot_stay_if_the_log_agreed_with_it() -> None:
    st = Storage(fsync="never")
    st.save(HardState(1, "a"), entries(1, 6))
    st.save(None, entries(7, 8))  # deferred
    st.save_snapshot(MemorySnapshot.encode(SnapshotMeta(4, 1, {}), [b"x"], None))
    st.power_cut()
    assert indexes(st) == [5, 6]
    st.save(None, entries(7, 7))
    st.save_snapshot(MemorySnapshot.encode(SnapshotMeta(6, 9, {}), [b"x"], None))  # disagrees
    st.power_cut()
    assert indexes(st) == []  # recovery drops a log that disagreed with the snapshot


# ---------------------------------------------------------------- in the simulator


def vote_then_power_cut(seed: int) -> RaftNet:
    """n1 wins term 1 with n2's vote while n3 is cut off. n2 then persists an
    entry that never commits (its answer is lost), and loses power; n1 is gone.
    n2 comes back and must not vote again in term 1."""
    net = RaftNet(3, seed=seed, options=RaftOptions(**FAST))  # messages arrive at once
    for st in net.storage.values():
        st.fsync = "batch"
    net.isolate("n3")
    leader = net.elect("n1")
    assert leader.term == 1 and net.storage["n2"].hard_state == HardState(1, "n1")
    net.storage["n2"].sync()  # its sync timer fired: the committed no-op is durable
    net.block("n2", "n1", both=False)
    net.propose("n1", "x")
    net.deliver_all()
    n2 = net.storage["n2"]
    assert n2.last_index() == 2 and leader.commit == 1  # x is on n2's disk, uncommitted
    net.crash("n1")
    net.crash("n2", power_cut=True)
    assert n2.last_index() == 1  # x was never synced: the cut took it
    net.heal()
    net.restart("n2")
    net.run_until(lambda: net.leader() is not None, 10.0)
    return net


def test_a_follower_that_lost_power_keeps_its_vote() -> None:
    for seed in range(5):
        net = vote_then_power_cut(seed)
        assert net.leaders[1] == "n1"
        assert net.leader() == "n2" and net.nodes["n2"].term == 2, seed  # not term 1 again


def test_a_model_that_loses_the_vote_shows_two_leaders_in_one_term(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check that the model matters: forget the hard state in a power cut,
    as `batch` used to, and n2 votes for itself in term 1, where it voted for n1.
    It leads term 1 too and writes its own entry 2 of term 1 where n1 wrote x:
    the log matching check sees two leaders' entries at one (index, term)."""
    cut = Storage.power_cut

    def forgetful(self: Storage) -> None:
        cut(self)
        self.hard_state = HardState()  # BUG: the hard state deferred with the entries

    monkeypatch.setattr(Storage, "power_cut", forgetful)
    two_leaders = r"n2 has Entry\(index=2, term=1, .*another log has Entry\(index=2, term=1, "
    with pytest.raises(InvariantViolation, match=two_leaders):
        vote_then_power_cut(0)
