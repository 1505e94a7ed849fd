"""Log replication: repair of diverging logs, the commit rule, batching and
pipelining."""

from __future__ import annotations

import random

import pytest
from raft_harness import RaftNet, make_log

from kvcluster.raft import (
    EntryKind,
    HardState,
    Message,
    MessageType,
    RaftNode,
    RaftOptions,
    Role,
)

MT = MessageType


def appends(net: RaftNet, src: str, dst: str) -> list[Message]:
    return [m for m in net.sent if m.type is MT.APPEND and (m.src, m.dst) == (src, dst)]


def rejections(net: RaftNet, src: str) -> list[Message]:
    return [m for m in net.sent if m.type is MT.APPEND_RESP and m.src == src and m.reject]


@pytest.mark.parametrize(
    "follower, leader",
    [
        ([1] + [2] * 50, [1, 3]),  # follower's conflicting suffix is longer
        ([1] + [2] * 50, [1] + [3] * 60),  # leader's is longer
        ([1] + [2] * 20 + [4] * 30, [1] + [3] * 5 + [5] * 5),  # several terms each
    ],
    ids=["follower-longer", "leader-longer", "many-terms"],
)
def test_conflicting_entries_are_overwritten_in_few_probes(
    follower: list[int], leader: list[int]
) -> None:
    # n1 once led and appended entries nobody else got; the others moved on.
    top = max(leader)
    net = RaftNet(
        3,
        initial={"n1": (max(follower), follower), "n2": (top, leader), "n3": (top, leader)},
    )
    n2 = net.elect("n2")
    n1 = net.nodes["n1"]
    assert net.log_terms("n1") == net.log_terms("n2") == [*leader, n2.term]
    # Backtracking skips a whole term per round trip, not one entry.
    assert len(rejections(net, "n1")) <= 3
    assert len(appends(net, "n2", "n1")) <= 5
    # n1's own entries were never committed, so nobody applied them.
    assert net.run_until(lambda: n1.commit == n2.commit, 1.0)
    assert all(e.term != 2 or e.index == 0 for e in net.committed.values())
    assert net.applied["n1"] == net.applied["n2"]
    net.check_logs()


def test_follower_missing_entries_is_caught_up() -> None:
    net = RaftNet(3, seed=1)
    net.elect("n1")
    net.crash("n3")
    for i in range(300):
        net.propose("n1", i)
    net.deliver_all()
    net.restart("n3")
    assert net.run_until(lambda: net.applied_data("n3") == list(range(300)), 2.0)


def figure8(max_append: int = 1) -> RaftNet:
    """The Raft paper's Figure 8, state (c): s1 leads term 4 and has just
    replicated its term-2 entry at index 2 to s2 and s3, so it knows a
    majority holds it; s5 (term 3 at index 2) and s4 are cut off."""
    net = RaftNet(
        ["s1", "s2", "s3", "s4", "s5"],
        options=RaftOptions(pre_vote=False, check_quorum=False, max_append_entries=max_append),
        initial={
            "s1": (3, [1, 2]),
            "s2": (3, [1]),
            "s3": (3, [1]),
            "s4": (3, [1]),
            "s5": (4, [1, 3]),
        },
    )
    net.isolate("s4")
    net.isolate("s5")
    net.campaign("s1")
    # Let s3 receive index 2, but nobody the leader's term-4 entry at index 3
    # (appends that would be rejected anyway may pass).
    net.drop_filter = lambda m: (
        m.type is MT.APPEND
        and any(e.index >= 3 for e in m.entries)
        and net.nodes[m.dst].log.last_index() >= 2
    )
    net.deliver_all()
    s1 = net.nodes["s1"]
    assert s1.role is Role.LEADER and s1.term == 4
    for i in ("s1", "s2", "s3"):
        assert net.log_terms(i)[:2] == [1, 2]
    assert net.nodes["s3"].log.last_index() == 2
    return net


def test_figure8_old_term_entry_on_majority_is_not_committed() -> None:
    net = figure8()
    s1 = net.nodes["s1"]
    # Index 2 is on s1, s2 and s3 -- a majority of five -- but is of term 2:
    # counting replicas does not commit it.
    assert s1.progress["s2"].match == s1.progress["s3"].match == 2
    assert s1.commit < 2
    assert 2 not in net.committed

    # Rightly so: s1 crashes, and s5 can win (s2, s3, s4 see its last term 3
    # as newer) and overwrite index 2 everywhere. (The harness would flag the
    # overwrite of a committed entry.)
    net.crash("s1")
    net.heal()
    net.drop_filter = None
    s5 = net.elect("s5")
    assert s5.term == 5
    assert net.run_until(lambda: all(net.log_terms(i)[:2] == [1, 3] for i in net.alive), 1.0)
    assert net.committed[2].term == 3


def test_figure8_old_term_entry_committed_with_current_term_entry() -> None:
    net = figure8()
    s1 = net.nodes["s1"]
    # Once an entry of s1's own term (index 3) is on a majority, it commits,
    # and index 2 with it.
    net.drop_filter = None
    net.advance(0.2)  # heartbeats reveal the lost appends; they are resent
    assert s1.commit == 3
    assert [e.term for e in net.applied["s1"]] == [1, 2, 4]
    # Now s5 cannot be elected: s1, s2 and s3 all have a newer log.
    net.crash("s1")
    net.heal()
    net.campaign("s5")
    net.deliver_all()
    assert net.nodes["s5"].role is not Role.LEADER
    assert net.run_until(lambda: net.stable_leader() is not None, 5.0)
    assert net.leader() in ("s2", "s3")
    net.check_logs()


def test_proposals_between_readies_go_in_one_append_per_follower() -> None:
    net = RaftNet(5, seed=4)
    net.elect("n1")
    sent_before = len(net.sent)
    for i in range(20):
        net.propose("n1", i, flush=False)
    net.flush("n1")
    new = [m for m in net.sent[sent_before:] if m.type is MT.APPEND]
    assert sorted(m.dst for m in new) == ["n2", "n3", "n4", "n5"]
    assert all([e.data for e in m.entries] == list(range(20)) for m in new)
    net.deliver_all()
    assert all(net.applied_data(i) == list(range(20)) for i in net.nodes)


def test_pipeline_does_not_wait_for_acks_and_respects_max_inflight() -> None:
    net = RaftNet(3, seed=4, options=RaftOptions(max_inflight=3))
    net.elect("n1")
    for batch in range(5):
        net.propose("n1", batch)  # each flushed on its own: one APPEND each
    to_n2 = net.pending(lambda m: m.type is MT.APPEND and m.dst == "n2")
    assert [[e.data for e in m.entries] for m in to_n2] == [[0], [1], [2]]
    net.deliver_all()
    assert all(net.applied_data(i) == [0, 1, 2, 3, 4] for i in net.nodes)


@pytest.mark.parametrize("lost", [0, 2, 4], ids=["first", "middle", "last"])
def test_lost_append_in_pipeline_is_recovered(lost: int) -> None:
    net = RaftNet(3, seed=4, options=RaftOptions(max_inflight=8))
    net.elect("n1")
    for batch in range(5):
        net.propose("n1", batch)
    to_n2 = net.pending(lambda m: m.type is MT.APPEND and m.dst == "n2")
    assert len(to_n2) == 5
    victim = to_n2[lost]
    assert net.drop(lambda m: m is victim) == [victim]
    net.deliver_all()
    assert net.applied_data("n3") == [0, 1, 2, 3, 4]
    # The next append after the hole is rejected, and n1 goes back to probing.
    assert net.run_until(lambda: net.applied_data("n2") == [0, 1, 2, 3, 4], 1.0)
    assert net.log_terms("n2") == net.log_terms("n1")
    net.check_logs()


def test_commit_needs_a_majority() -> None:
    net = RaftNet(5, seed=9)
    net.elect("n1")
    net.crash("n4")
    net.crash("n5")
    net.block("n1", "n3")
    index, _ = net.propose("n1", "x")
    net.advance(1.0)
    assert net.nodes["n1"].commit < index  # only n1 and n2 have it
    net.unblock("n1", "n3")
    assert net.run_until(lambda: net.nodes["n1"].commit >= index, 1.0)
    assert net.nodes["n1"].log.entry(index).kind is EntryKind.NORMAL


def test_lost_append_detected_by_heartbeat() -> None:
    # n3 is down, so nothing commits and no later append reveals the loss:
    # the heartbeat answered after it (links are FIFO) does.
    opts = RaftOptions(max_inflight=8)
    net = RaftNet(3, seed=4, options=opts)
    n1 = net.elect("n1")
    net.crash("n3")
    index, _ = net.propose("n1", "x")
    assert len(net.drop(lambda m: m.type is MT.APPEND and m.dst == "n2")) == 1
    net.deliver_all()
    assert n1.commit < index
    assert net.run_until(lambda: n1.commit == index, 3 * opts.heartbeat_interval)
    assert net.applied_data("n2") == ["x"]


def test_follower_commits_no_further_than_the_entries_it_was_sent() -> None:
    # Raft's AppendEntries rule: commit = min(leaderCommit, last new entry).
    # The follower's log goes on past the message's entries with entries of a
    # deposed leader; the leader's commit index must not reach them.
    f = RaftNode(
        "f",
        rng=random.Random(0),
        hard_state=HardState(3, None),
        entries=make_log([1, 1, 2, 2]),
    )
    leader_entry = make_log([1, 1])[1]
    f.step(Message(MT.APPEND, 3, "l", "f", index=1, log_term=1, entries=[leader_entry], commit=4))
    assert f.commit == 2
    assert [(m.type, m.index, m.reject) for m in f.ready().messages] == [(MT.APPEND_RESP, 2, False)]


def test_late_rejection_does_not_reset_a_replicating_follower() -> None:
    # A rejection that arrives after the follower was repaired (duplicated or
    # reordered by the network) says nothing new: the leader keeps streaming.
    net = RaftNet(3, seed=4, options=RaftOptions(max_inflight=8))
    net.elect("n1")
    n1 = net.nodes["n1"]
    for i in range(5):
        net.propose("n1", i)
    net.deliver_all()
    pr = n1.progress["n2"]
    assert pr.state.value == "replicate" and pr.match == n1.log.last_index()
    stale = Message(MT.APPEND_RESP, n1.term, "n2", "n1", index=1, reject=True, hint=1)
    net.inject(stale)
    assert pr.state.value == "replicate" and pr.next == n1.log.last_index() + 1
    assert net.pending(lambda m: m.type is MT.APPEND and m.dst == "n2") == []


def _three_nodes_with_a_leader() -> tuple[RaftNode, RaftNode, RaftNode]:
    """A leader of term 1 with two followers, stepped by hand (no harness), so
    the test decides when each ready batch counts as persisted."""
    from kvcluster.raft import Member, Membership

    membership = Membership({i: Member(i) for i in ("a", "b", "c")})
    nodes = [
        RaftNode(i, rng=random.Random(k), membership=membership, options=RaftOptions())
        for k, i in enumerate(("a", "b", "c"))
    ]
    a, b, c = nodes
    a.campaign()  # pre-vote, then the vote itself
    for _ in range(10):
        for n in nodes:
            rd = n.ready()
            n.advance(rd)
            for m in rd.messages:
                {"a": a, "b": b, "c": c}[m.dst].step(m)
    assert a.is_leader and a.commit == a.log.last_index()
    return a, b, c


def test_a_leader_counts_itself_only_for_entries_the_caller_persisted() -> None:
    leader, b, _c = _three_nodes_with_a_leader()
    index, _ = leader.propose("x")
    rd = leader.ready()  # handed to storage, not yet persisted
    assert [e.index for e in rd.entries] == [index]
    for m in rd.messages:
        if m.dst == "b":
            b.step(m)
    follower_rd = b.ready()
    b.advance(follower_rd)
    for m in follower_rd.messages:
        leader.step(m)  # b acknowledges: one of the two copies a commit needs
    assert leader.commit < index, "committed with only one copy on disk"
    leader.advance(rd)  # now the leader's own copy is durable too
    assert leader.commit == index
    assert [e.index for e in leader.ready().committed] == [index]


def test_a_single_node_commits_only_after_its_own_write_is_persisted() -> None:
    from kvcluster.raft import Member, Membership

    n = RaftNode("a", rng=random.Random(1), membership=Membership({"a": Member("a")}))
    n.campaign()
    n.advance(n.ready())
    assert n.is_leader
    n.advance(n.ready())  # the no-op
    index, _ = n.propose("x")
    rd = n.ready()
    assert n.commit < index and not rd.committed
    n.advance(rd)
    assert n.commit == index


def test_a_forged_huge_term_is_dropped_and_the_cluster_keeps_its_term() -> None:
    from kvcluster.raft.core import MAX_TERM_STEP

    leader, b, _c = _three_nodes_with_a_leader()
    for term in ((1 << 64) - 1, (1 << 63) - 1, leader.term + MAX_TERM_STEP + 1):
        forged = Message(MT.APPEND, term, "c", "b", index=0, log_term=0, commit=0)
        b.step(forged)
        assert b.term == leader.term and b.leader_id == leader.id
    # A big but possible jump is still a newer term: Raft must follow it.
    b.step(Message(MT.HEARTBEAT, leader.term + 5, "c", "b"))
    assert b.term == leader.term + 5
