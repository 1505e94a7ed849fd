"""Elections: who leads, when terms move, and what keeps a cluster stable."""

from __future__ import annotations

import pytest
from raft_harness import RaftNet

from kvcluster.raft import EntryKind, MessageType, RaftOptions, Role

MT = MessageType
NO_PRE_VOTE = RaftOptions(pre_vote=False)


@pytest.mark.parametrize("n", [3, 5])
def test_initial_election(n: int) -> None:
    net = RaftNet(n, seed=n)
    assert net.run_until(lambda: net.stable_leader() is not None, 5.0)
    lid = net.leader()
    assert lid is not None
    leader = net.nodes[lid]
    term = leader.term
    assert net.live_leaders() == [lid]
    assert term >= 1
    # The new leader's no-op is committed (and applied everywhere).
    noop = leader.log.entry(leader.commit)
    assert noop.kind is EntryKind.NOOP and noop.term == term
    assert net.run_until(lambda: all(net.applied[i][-1:] == [noop] for i in net.nodes), 1.0)
    for node in net.nodes.values():
        assert (node.term, node.leader_id) == (term, lid)
        assert node.role is (Role.LEADER if node.id == lid else Role.FOLLOWER)
    # ... and it stays that way while nothing fails.
    net.advance(5.0)
    assert net.live_leaders() == [lid]
    assert {node.term for node in net.nodes.values()} == {term}
    assert list(net.leaders) == [term]


@pytest.mark.parametrize("how", ["crash", "isolate"])
def test_reelection_after_leader_loss(how: str) -> None:
    net = RaftNet(3, seed=7, options=RaftOptions(check_quorum=False))
    old = net.elect("n1")
    for i in range(3):
        net.propose("n1", f"a{i}")
    net.deliver_all()
    old_term = old.term

    if how == "crash":
        net.crash("n1")
    else:
        net.isolate("n1")
        # Still leader (no check-quorum): its proposals cannot commit.
        net.propose("n1", "lost-1")
        net.propose("n1", "lost-2")
    assert net.run_until(lambda: net.stable_leader() not in (None, "n1"), 5.0)
    new_id = net.leader()
    assert new_id is not None
    new = net.nodes[new_id]
    assert new.term > old_term
    net.propose(new_id, "b")
    net.advance(0.5)

    if how == "crash":
        old = net.restart("n1")
    else:
        assert old.role is Role.LEADER and old.term == old_term  # a stale leader
        net.heal()
    assert net.run_until(
        lambda: old.role is Role.FOLLOWER and old.leader_id == new_id and net.converged(), 3.0
    )
    assert old.term == new.term
    assert net.applied_data("n1") == ["a0", "a1", "a2", "b"]
    assert old.log.last_index() == new.log.last_index()
    net.check_logs()


def test_split_vote_resolves() -> None:
    # Four voters, two candidates in the same instant, votes split 2-2.
    net = RaftNet(4, seed=3, options=NO_PRE_VOTE)
    net.campaign("n1")
    net.campaign("n2")
    assert net.nodes["n1"].role is net.nodes["n2"].role is Role.CANDIDATE
    net.deliver_one(lambda m: m.type is MT.VOTE and (m.src, m.dst) == ("n1", "n3"))
    net.deliver_one(lambda m: m.type is MT.VOTE and (m.src, m.dst) == ("n2", "n4"))
    net.deliver_all()
    assert net.live_leaders() == []
    assert net.nodes["n3"].vote == "n1" and net.nodes["n4"].vote == "n2"
    assert all(node.term == 1 for node in net.nodes.values())

    assert net.run_until(lambda: net.stable_leader() is not None, 10.0)
    assert len(net.live_leaders()) == 1
    assert 1 not in net.leaders  # nobody led the split term
    assert min(net.leaders) >= 2


@pytest.mark.parametrize("log_of_n2", [[1], [1, 1]], ids=["equal-logs", "n2-longer"])
def test_two_pre_candidates_do_not_split_the_vote(log_of_n2: list[int]) -> None:
    """The leader (n3) is gone and n1, n2 time out in the same instant. Each
    asks the other for a pre-vote: only the one with the better log (equal
    logs: the larger id, n2 both times) gets it, so one election, won at once."""
    net = RaftNet(3, seed=5, initial={"n1": (1, [1]), "n2": (1, log_of_n2), "n3": (1, [1])})
    net.crash("n3")
    net.campaign("n1")
    net.campaign("n2")
    assert net.nodes["n1"].role is net.nodes["n2"].role is Role.PRE_CANDIDATE
    net.deliver_all()
    answers = {(m.src, m.reject) for m in net.sent if m.type is MT.PRE_VOTE_RESP}
    assert answers == {("n1", False), ("n2", True)}
    assert net.nodes["n2"].role is Role.LEADER and net.nodes["n2"].term == 2
    assert net.nodes["n1"].role is Role.FOLLOWER and net.nodes["n1"].leader_id == "n2"


def test_a_pre_candidate_backs_a_better_one_and_stands_down() -> None:
    """Five nodes, the leader (n5) gone, n1 and n2 time out together. n3 and n4
    grant both pre-votes; n1 grants n2's and stands down, so only n2 runs."""
    net = RaftNet(5, seed=9, initial={f"n{i}": (1, [1]) for i in range(1, 6)})
    net.crash("n5")
    net.campaign("n1")
    net.campaign("n2")
    net.deliver_all()
    assert {m.src for m in net.sent if m.type is MT.VOTE} == {"n2"}
    assert net.nodes["n2"].role is Role.LEADER and net.nodes["n2"].term == 2
    assert all(net.nodes[i].leader_id == "n2" for i in ("n1", "n3", "n4"))


@pytest.mark.parametrize(
    "stale, current",
    [
        ([1, 1, 1, 1], [1, 2]),  # longer log, older last term
        ([1, 2], [1, 2, 2]),  # same last term, shorter log
    ],
    ids=["older-term", "shorter"],
)
def test_election_restriction(stale: list[int], current: list[int]) -> None:
    # n1 has the highest term and nobody has voted in it: without the
    # restriction its vote requests would all be granted.
    net = RaftNet(
        3,
        options=NO_PRE_VOTE,
        initial={"n1": (5, stale), "n2": (3, current), "n3": (3, current)},
    )
    net.campaign("n1")
    net.deliver_all()
    n1 = net.nodes["n1"]
    assert n1.role is not Role.LEADER
    answers = [m for m in net.sent if m.type is MT.VOTE_RESP and m.dst == "n1"]
    assert len(answers) == 2 and all(m.reject for m in answers)
    for i in ("n2", "n3"):
        # They moved to the candidate's term but kept their vote.
        assert net.nodes[i].term == 6 and net.nodes[i].vote is None

    # A candidate with an up-to-date log wins, and n1's extra entries go.
    net.elect("n2")
    assert net.run_until(net.converged, 2.0)
    assert net.log_terms("n1") == net.log_terms("n2") == [*current, 7]


def test_election_restriction_with_pre_vote_keeps_terms() -> None:
    net = RaftNet(3, initial={"n1": (5, [1]), "n2": (3, [1, 2]), "n3": (3, [1, 2])})
    net.campaign("n1")
    net.deliver_all()
    assert net.nodes["n1"].role is Role.PRE_CANDIDATE  # never got past the pre-vote
    assert [node.term for node in net.nodes.values()] == [5, 3, 3]
    assert net.count_sent(MT.VOTE) == 0  # the pre-vote already failed


@pytest.mark.parametrize("hears", ["heartbeat", "response"])
def test_stale_leader_steps_down_on_higher_term(hears: str) -> None:
    net = RaftNet(3, seed=11, options=RaftOptions(check_quorum=False))
    net.elect("n1")
    net.isolate("n1")
    assert net.run_until(lambda: net.stable_leader() not in (None, "n1"), 5.0)
    new = net.leader()
    assert new is not None
    other = "n3" if new == "n2" else "n2"
    n1, leader = net.nodes["n1"], net.nodes[new]
    assert n1.role is Role.LEADER and leader.role is Role.LEADER and leader.term > n1.term

    # Repair one direction only: n1 either receives the new leader's
    # heartbeats, or its own heartbeats reach a follower and come back
    # rejected with the newer term.
    if hears == "heartbeat":
        net.unblock(new, "n1", both=False)
    else:
        net.unblock("n1", other)
    assert net.run_until(lambda: n1.role is Role.FOLLOWER, 0.5)
    assert n1.term == leader.term
    assert net.live_leaders() == [new]


@pytest.mark.parametrize(
    "pre_vote, check_quorum", [(True, True), (True, False), (False, True), (False, False)]
)
def test_partitioned_node_and_pre_vote(pre_vote: bool, check_quorum: bool) -> None:
    net = RaftNet(3, seed=5, options=RaftOptions(pre_vote=pre_vote, check_quorum=check_quorum))
    net.elect("n1")
    term = net.nodes["n1"].term
    n3 = net.nodes["n3"]
    net.isolate("n3")
    net.advance(5.0)
    campaigns = net.events_of("campaign", "n3")
    assert len(campaigns) >= 3
    if pre_vote:
        assert n3.term == term
        assert {e["role"] for _, _, e in campaigns} == {"pre-candidate"}
    else:
        assert n3.term >= term + 3

    # Healed, n3 campaigns before any heartbeat reaches it. Its log is as
    # up to date as anyone's, so only "I have a leader" can stop it.
    net.heal()
    net.campaign("n3")
    net.advance(3.0)
    terms = {node.term for node in net.nodes.values()}
    if pre_vote:
        # The rejoining node did not disturb the leader.
        assert net.live_leaders() == ["n1"]
        assert terms == {term}
        assert list(net.leaders) == [term]
    else:
        # Its inflated term deposed the leader, for nothing.
        assert min(terms) > term
    assert net.run_until(lambda: n3.leader_id is not None and net.converged(), 3.0)


@pytest.mark.parametrize("pre_vote", [True, False])
def test_one_way_link_failure_does_not_depose_the_leader(pre_vote: bool) -> None:
    # n3 stops hearing n1 but can still reach it; n2 hears n1 fine. With
    # check-quorum, n1 and n2 ignore n3's vote requests while n1's lease holds.
    net = RaftNet(3, seed=8, options=RaftOptions(pre_vote=pre_vote))
    n1 = net.elect("n1")
    term = n1.term
    net.block("n1", "n3", both=False)
    net.advance(5.0)
    assert net.events_of("campaign", "n3")  # n3 does try
    assert net.live_leaders() == ["n1"] and n1.term == term
    net.propose("n1", "x")
    assert net.run_until(lambda: "x" in net.applied_data("n2"), 1.0)


@pytest.mark.parametrize("check_quorum", [True, False])
def test_check_quorum(check_quorum: bool) -> None:
    opts = RaftOptions(check_quorum=check_quorum)
    net = RaftNet(3, seed=2, options=opts)
    n1 = net.elect("n1")
    term = n1.term
    net.advance(0.3)
    net.isolate("n1")
    cut_at = net.now
    stepped_down = net.run_until(lambda: n1.role is not Role.LEADER, 3.0)
    if check_quorum:
        assert stepped_down
        # A check every election_timeout[0]; the first one may still count
        # traffic from before the cut.
        assert net.now - cut_at <= 2 * opts.election_timeout[0] + 1e-9
        assert net.events_of("step_down", "n1")[-1][2]["reason"] == "check_quorum"
    else:
        assert not stepped_down
        assert n1.role is Role.LEADER
    # Either way the majority side elects a leader of its own.
    assert net.run_until(lambda: net.leader() in ("n2", "n3"), 3.0)
    other = net.leader()
    assert other in ("n2", "n3") and net.nodes[other].term > term


def test_single_node_cluster_leads_commits_and_reads_alone() -> None:
    net = RaftNet(1)
    assert net.run_until(lambda: net.stable_leader() == "n1", 2.0)
    net.propose("n1", "x")
    assert net.applied_data("n1") == ["x"]
    net.read_index("n1", 1)
    net.read_index("n1", 2, lease=True)
    assert net.reads[("n1", 1)].index == net.reads[("n1", 2)].index == 2
    net.restart("n1")  # comes back, re-elects itself, re-applies its log
    assert net.run_until(lambda: net.applied_data("n1") == ["x"], 2.0)
    assert sum(net.sent_counts.values()) == 0
