"""The classic Raft lab scenarios (MIT 6.824 lab 2), run in the simulator.

Every step is checked for Raft's safety properties by `kvcluster.sim.net`;
these tests add the labs' observable expectations on top. Scenarios already
covered by test_raft_election/replication (the initial election, re-election
after a leader crash, the deterministic Figure 8 states, catching up a
follower) are not repeated here.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable

import pytest
from raft_harness import RaftNet

from kvcluster.raft import EntryKind, MessageType, RaftOptions, Role
from kvcluster.sim import scenarios
from kvcluster.sim.scenarios import LAB_OPTIONS, Connectivity

MT = MessageType


def lab_net(n: int, seed: int, *, record: bool = False) -> tuple[RaftNet, Connectivity]:
    net = RaftNet(n, seed=seed, options=LAB_OPTIONS, latency=(0.001, 0.005), record=record)
    return net, Connectivity(net)


def connected_leader(net: RaftNet, links: Connectivity) -> str | None:
    """The leader the connected majority follows (the labs' checkOneLeader)."""
    leaders = [
        i for i in sorted(net.alive) if i not in links.cut and net.nodes[i].role is Role.LEADER
    ]
    if len(leaders) != 1:
        return None
    lid = leaders[0]
    return lid if net.has_committed_in_term(lid) else None


def wait_leader(net: RaftNet, links: Connectivity, bound: float = 5.0) -> str:
    assert net.run_until(lambda: connected_leader(net, links) is not None, bound), "no leader"
    lid = connected_leader(net, links)
    assert lid is not None
    return lid


def committed_on(net: RaftNet, value: object) -> list[str]:
    return [i for i in sorted(net.alive) if value in net.applied_data(i)]


def one(
    net: RaftNet, links: Connectivity, value: object, expected: int, bound: float = 10.0
) -> int:
    """The labs' cfg.one(): hand `value` to the leader (again if it is lost)
    until `expected` nodes have applied it; return its index."""
    deadline = net.now + bound
    proposed_in: set[tuple[str, int]] = set()
    while len(committed_on(net, value)) < expected:
        assert net.now < deadline, f"{value!r} not committed on {expected} nodes in {bound}s"
        lid = connected_leader(net, links)
        if lid is not None and (lid, net.nodes[lid].term) not in proposed_in:
            proposed_in.add((lid, net.nodes[lid].term))
            net.propose(lid, value)
        net.advance(0.02)
    nid = committed_on(net, value)[0]
    return next(e.index for e in net.applied[nid] if e.data == value)


# ---------------------------------------------------------------------- 2A: elections


def test_no_leader_without_a_majority_then_one_comes_back() -> None:
    # TestReElection2A, after the leader's crash (see test_raft_election).
    net, links = lab_net(3, seed=21)
    l1 = wait_leader(net, links)
    links.disconnect(l1)
    l2 = wait_leader(net, links)
    assert l2 != l1
    term = net.nodes[l2].term
    # The old leader rejoins: it must not disturb the new one.
    links.connect(l1)
    net.advance(2.0)
    assert connected_leader(net, links) == l2 and net.nodes[l2].term == term
    # Two of three gone: no leader may be elected.
    rest = sorted(set(net.nodes) - {l2})
    links.disconnect(l2)
    links.disconnect(rest[0])
    net.advance(2.0)
    assert net.nodes[rest[1]].role is not Role.LEADER
    # One comes back: a majority again, so a leader.
    links.connect(rest[0])
    wait_leader(net, links)
    links.connect(l2)
    wait_leader(net, links)


def test_many_elections() -> None:
    # TestManyElections2A: seven nodes, three random ones cut off each round.
    net, links = lab_net(7, seed=22)
    rng = random.Random(22)
    wait_leader(net, links)
    ids = sorted(net.nodes)
    for _ in range(10):
        for nid in rng.sample(ids, 3):
            links.disconnect(nid)
        # Either the old leader is still connected or the four elect another.
        wait_leader(net, links)
        for nid in ids:
            links.connect(nid)
    wait_leader(net, links)
    assert len(net.leaders) >= 3  # leadership did move; one leader per term throughout


# ---------------------------------------------------------------------- 2B: agreement


def test_basic_agreement() -> None:
    net, links = lab_net(3, seed=23)
    wait_leader(net, links)
    first = max(len(net.applied[i]) for i in net.nodes)  # the leader's no-op
    for k in range(1, 4):
        assert committed_on(net, 100 + k) == []  # nothing committed before it is proposed
        assert one(net, links, 100 + k, 3) == first + k


def test_agreement_despite_a_disconnected_follower() -> None:
    # TestFailAgree2B
    net, links = lab_net(3, seed=24)
    one(net, links, 101, 3)
    leader = wait_leader(net, links)
    follower = next(i for i in sorted(net.nodes) if i != leader)
    links.disconnect(follower)
    for v in (102, 103, 104, 105):
        one(net, links, v, 2)
    links.connect(follower)
    one(net, links, 106, 3)
    one(net, links, 107, 3)
    assert net.applied_data(follower) == [101, 102, 103, 104, 105, 106, 107]


def test_no_agreement_without_a_majority_then_agreement_again() -> None:
    # TestFailNoAgree2B
    net, links = lab_net(5, seed=25)
    one(net, links, 10, 5)
    leader = wait_leader(net, links)
    followers = [i for i in sorted(net.nodes) if i != leader]
    for nid in followers[:3]:
        links.disconnect(nid)
    index, _ = net.propose(leader, 20)
    assert index == 3  # the no-op, 10, then 20
    net.advance(2 * LAB_OPTIONS.election_timeout[1])
    assert committed_on(net, 20) == []
    assert net.nodes[leader].commit < index
    for nid in followers[:3]:
        links.connect(nid)
    # The old leader may have lost its place; either way agreement resumes and
    # the uncommitted 20 is committed or overwritten, never half-applied.
    index30 = one(net, links, 30, 5)
    assert 3 <= index30 <= 5
    one(net, links, 1000, 5)
    applied = [net.applied_data(i) for i in sorted(net.nodes)]
    assert all(a == applied[0] for a in applied)


def test_concurrent_proposals_land_in_one_term() -> None:
    # TestConcurrentStarts2B: five proposals at the same instant.
    net, links = lab_net(3, seed=26)
    leader = wait_leader(net, links)
    term = net.nodes[leader].term
    placed = [net.propose(leader, 200 + k, flush=False) for k in range(5)]
    net.flush(leader)
    assert [t for _, t in placed] == [term] * 5
    indices = [i for i, _ in placed]
    assert indices == list(range(indices[0], indices[0] + 5))
    assert net.run_until(lambda: all(len(committed_on(net, 200 + k)) == 3 for k in range(5)), 2)
    assert net.nodes[leader].term == term


def test_partitioned_leader_rejoins() -> None:
    # TestRejoin2B: a leader cut off with uncommitted entries comes back after
    # another leader committed; its entries are replaced, agreement continues.
    net, links = lab_net(3, seed=27)
    one(net, links, 101, 3)
    leader1 = wait_leader(net, links)
    links.disconnect(leader1)
    for v in (102, 103, 104):
        net.propose(leader1, v)
    one(net, links, 103, 2)
    leader2 = wait_leader(net, links)
    links.disconnect(leader2)
    links.connect(leader1)
    one(net, links, 104, 2)
    links.connect(leader2)
    one(net, links, 105, 3)
    for nid in net.nodes:
        data = net.applied_data(nid)
        assert data[:2] == [101, 103] and data[-1] == 105
        assert 102 not in data  # proposed only to the cut-off leader


def test_fast_backup_of_a_far_behind_follower() -> None:
    # TestBackup2B: followers whose logs diverge by 50-entry runs of several
    # terms are repaired with a number of round trips that grows with the
    # terms involved, not with the entries (the conflict hint skips a term).
    net, links = lab_net(5, seed=28, record=True)
    rng = random.Random(28)
    one(net, links, rng.random(), 5)
    leader1 = wait_leader(net, links)
    others = [i for i in sorted(net.nodes) if i != leader1]
    # leader1 and one follower alone: 50 proposals that cannot commit.
    for nid in others[1:]:
        links.disconnect(nid)
    for _ in range(50):
        net.propose(leader1, rng.random())
    net.advance(0.5)
    # The other three elect a leader and commit 50 entries.
    links.disconnect(leader1)
    links.disconnect(others[0])
    for nid in others[1:]:
        links.connect(nid)
    for _ in range(50):
        one(net, links, rng.random(), 3)
    # One of those three drops out; 50 more proposals that cannot commit.
    leader2 = wait_leader(net, links)
    other = next(i for i in others[1:] if i != leader2)
    links.disconnect(other)
    for _ in range(50):
        net.propose(leader2, rng.random())
    net.advance(0.5)
    # The first pair and the one that dropped out agree on 50 more.
    for nid in net.nodes:
        links.disconnect(nid)
    for nid in (leader1, others[0], other):
        links.connect(nid)
    for _ in range(50):
        one(net, links, rng.random(), 3)
    # Everyone back: all logs converge.
    before = len(net.sent)
    for nid in net.nodes:
        links.connect(nid)
    one(net, links, rng.random(), 5)
    assert net.run_until(lambda: net.converged(), 2.0)
    net.check_logs()
    # Twice two nodes held 50 entries nobody else had, of a stale term: each
    # was repaired with a couple of rejections (one per term to skip), not 50.
    rejections = [m for m in net.sent if m.type is MT.APPEND_RESP and m.reject]
    assert len(rejections) <= 3 * 4, [(m.src, m.index, m.hint) for m in rejections]
    # The last two got their 50-odd missing entries in one append each.
    repair = [m for m in net.sent[before:] if m.type is MT.APPEND and len(m.entries) >= 50]
    assert len(repair) == 2


def test_rpc_counts_stay_sane() -> None:
    # TestCount2B, counting messages (an RPC is a request and its answer).
    net = RaftNet(3, seed=29, options=RaftOptions(), record=True)  # 100ms heartbeats
    links = Connectivity(net)
    wait_leader(net, links)
    election = len(net.sent)
    assert election <= 30  # a pre-vote round, a vote round, the no-op: not a storm
    # Ten agreements, one after another. Each costs, per follower, one append
    # with the entry and one that carries the new commit index at once (rather
    # than waiting for the next heartbeat), each answered.
    before, start = len(net.sent), net.now
    for k in range(10):
        one(net, links, 300 + k, 3)
    counts = Counter(m.type for m in net.sent[before:])
    assert set(counts) <= {MT.APPEND, MT.APPEND_RESP, MT.HEARTBEAT, MT.HEARTBEAT_RESP}
    assert counts[MT.APPEND] <= 2 * 2 * 10
    assert counts[MT.APPEND_RESP] == counts[MT.APPEND]
    rounds = (net.now - start) / net.options.heartbeat_interval + 1
    assert counts[MT.HEARTBEAT] <= 2 * rounds
    # Idle: heartbeats only (two followers, 10 rounds a second, each answered).
    before = len(net.sent)
    net.advance(1.0)
    idle = net.sent[before:]
    assert {m.type for m in idle} <= {MT.HEARTBEAT, MT.HEARTBEAT_RESP}
    assert 20 <= len(idle) <= 3 * 20


# ---------------------------------------------------------------------- 2C: persistence


def crash_and_restart(net: RaftNet, nids: Iterable[str]) -> None:
    for nid in nids:
        net.crash(nid)
    for nid in nids:
        net.restart(nid)


def test_persistence_across_crashes() -> None:
    # TestPersist12C: whole-cluster and single-node restarts keep the log.
    net, links = lab_net(3, seed=30)
    one(net, links, 11, 3)
    crash_and_restart(net, sorted(net.nodes))
    one(net, links, 12, 3)
    leader = wait_leader(net, links)
    crash_and_restart(net, [leader])
    one(net, links, 13, 3)
    leader = wait_leader(net, links)
    net.crash(leader)
    one(net, links, 14, 2)
    net.restart(leader)
    follower = next(i for i in sorted(net.nodes) if i != wait_leader(net, links))
    assert net.run_until(lambda: 14 in net.applied_data(leader), 5.0)
    net.crash(follower)
    one(net, links, 15, 2)
    net.restart(follower)
    one(net, links, 16, 3)
    for nid in net.nodes:
        assert net.applied_data(nid) == [11, 12, 13, 14, 15, 16]


def test_persistence_under_repeated_crashes() -> None:
    # TestPersist22C: five nodes; crash a leader's followers and the leader in
    # turns, keep agreeing with whoever is left.
    net, links = lab_net(5, seed=31)
    value = 0
    for _ in range(5):
        value += 1
        one(net, links, value, 5)
        leader1 = wait_leader(net, links)
        net.crash((a := sorted(set(net.nodes) - {leader1}))[0])
        net.crash(a[1])
        value += 1
        one(net, links, value, 3)
        net.crash(leader1)
        net.restart(a[0])
        net.restart(a[1])
        value += 1
        one(net, links, value, 3)
        net.restart(leader1)
        value += 1
        one(net, links, value, 5)
    one(net, links, 1000, 5)
    for nid in net.nodes:
        assert net.applied_data(nid) == [*range(1, value + 1), 1000]


def test_persistence_of_a_partitioned_follower_and_crashed_majority() -> None:
    # TestPersist32C: a follower is cut off while the others commit; then the
    # two that hold the commit crash, and only one of them comes back (with
    # the cut-off follower) before the third does.
    net, links = lab_net(3, seed=32)
    one(net, links, 101, 3)
    leader = wait_leader(net, links)
    f1, f2 = sorted(set(net.nodes) - {leader})
    links.disconnect(f2)
    one(net, links, 102, 2)
    net.crash(leader)
    net.crash(f1)
    links.connect(f2)
    net.restart(leader)
    one(net, links, 103, 2)
    net.restart(f1)
    one(net, links, 104, 3)
    for nid in net.nodes:
        assert net.applied_data(nid) == [101, 102, 103, 104]


@pytest.mark.parametrize("seed", range(10))
def test_figure8(seed: int) -> None:
    # TestFigure82C: leaders crash right after taking over, over and over.
    net = scenarios.figure8(seed)
    assert len(net.leaders) >= 10  # many leaders came and went
    net.check_logs()


@pytest.mark.parametrize("seed", range(4))
def test_figure8_unreliable(seed: int) -> None:
    # TestFigure8Unreliable2C: the same, with loss, reordering and long delays.
    net = scenarios.figure8(seed, unreliable=True)
    assert net.faults["loss"] > 0 and net.faults["reorder"] > 0
    net.check_logs()


@pytest.mark.parametrize("unreliable", [False, True], ids=["reliable", "unreliable"])
@pytest.mark.parametrize("seed", range(3))
def test_churn(seed: int, unreliable: bool) -> None:
    # Test(Un)reliableChurn2C: nodes disconnect, crash and come back while
    # entries keep being proposed; every committed entry survives everywhere.
    net = scenarios.churn(seed, unreliable=unreliable)
    assert sum(1 for e in net.committed.values() if e.kind is EntryKind.NORMAL) >= 20
    net.check_logs()
