"""Membership changes through the log: learners, promotion, removal, one change
at a time, and amnesiac nodes rejoining under a new incarnation."""

from __future__ import annotations

import pytest
from raft_harness import RaftNet

from kvcluster.raft import (
    ConfigChangeError,
    Member,
    MessageType,
    RaftOptions,
    Role,
    bootstrap_entry,
)

MT = MessageType


def voters(net: RaftNet, nid: str) -> list[str]:
    return sorted(net.nodes[nid].membership.voters)


def test_learner_catches_up_then_is_promoted() -> None:
    net = RaftNet(3, seed=1)
    n1 = net.elect("n1")
    for i in range(50):
        net.propose("n1", i)
    net.deliver_all()
    n4 = net.add_node("n4", incarnation="n4-a")
    promoted_at: list[tuple[int, int]] = []  # (n4's match, n1's last index) at promotion

    def watch(net: RaftNet, nid: str) -> None:
        if nid == "n1" and not promoted_at and "n4" in n1.membership.voters:
            promoted_at.append((n1.progress["n4"].match, n1.log.last_index()))

    net.observers.append(watch)
    net.block("n1", "n4")  # not reachable yet
    learner = n1.membership.with_member("n4", Member("n4", voter=False, incarnation="n4-a"))
    index, _ = net.propose_membership("n1", learner)
    net.advance(2.0)
    # The change committed without n4 (learners do not count) ...
    assert n1.commit >= index
    assert sorted(n1.membership.learners) == ["n4"]
    # ... and an unreachable learner is not promoted.
    assert not promoted_at

    net.unblock("n1", "n4")
    assert net.run_until(lambda: all("n4" in net.nodes[i].membership.voters for i in net.nodes))
    match, _ = promoted_at[0]
    assert match >= index  # it had received everything up to its own addition
    assert n4.is_voter() and n4.membership.quorum() == 3
    assert net.run_until(lambda: net.applied_data("n4") == list(range(50)), 1.0)
    assert net.run_until(net.converged, 1.0)

    # It counts now: with n2 and n3 down, n1 and n4 are only 2 of 4.
    net.crash("n2")
    net.crash("n3")
    i, _ = net.propose("n1", "needs-n4")
    net.advance(0.1)
    assert n1.commit < i


def test_learner_does_not_vote_or_count() -> None:
    net = RaftNet(
        ["n1", "n2", "n3"],
        learners=["n3"],
        options=RaftOptions(pre_vote=False, auto_promote=False),
    )
    net.elect("n1")
    net.crash("n2")
    i, _ = net.propose("n1", "x")
    net.advance(0.5)
    assert net.nodes["n1"].commit < i  # n3 has it, but n3 is a learner
    assert net.nodes["n3"].log.last_index() >= i
    net.crash("n1")
    net.restart("n2")
    net.campaign("n2")
    net.deliver_all()
    assert net.nodes["n2"].role is not Role.LEADER
    assert all(m.reject for m in net.sent if m.type is MT.VOTE_RESP and m.src == "n3")
    assert net.events_of("campaign", "n3") == []


def test_remove_a_voter() -> None:
    net = RaftNet(3, seed=2)
    n1 = net.elect("n1")
    term = n1.term
    index, _ = net.propose_membership("n1", n1.membership.without("n3"))
    net.deliver_all()
    assert n1.commit >= index
    assert voters(net, "n1") == voters(net, "n2") == ["n1", "n2"]
    assert n1.membership.quorum() == 2
    assert "n3" not in n1.progress
    # The configuration takes effect when appended (thesis 4.1), so the
    # leader stopped replicating to n3 before n3 got the entry: n3 still
    # believes it is a voter and, hearing nothing, campaigns -- but pre-vote
    # and the leader lease keep it from disturbing anyone.
    net.advance(5.0)
    assert net.live_leaders() == ["n1"] and list(net.leaders) == [term]
    assert net.nodes["n3"].term == term
    assert {e["role"] for _, _, e in net.events_of("campaign", "n3")} <= {"pre-candidate"}
    # Quorum is 2 of {n1, n2}: n3 does not count any more.
    i, _ = net.propose("n1", "x")
    net.deliver_all()
    assert n1.commit >= i
    net.crash("n2")
    i, _ = net.propose("n1", "y")
    net.advance(0.3)
    assert n1.commit < i


def test_removed_leader_steps_down_once_the_change_commits() -> None:
    net = RaftNet(3, seed=3)
    n1 = net.elect("n1")
    campaigns = len(net.events_of("campaign", "n1"))
    net.propose_membership("n1", n1.membership.without("n1"))
    assert n1.role is Role.LEADER  # still leads until the change commits
    net.deliver_all()
    assert n1.role is Role.FOLLOWER
    assert net.events_of("step_down", "n1")[-1][2]["reason"] == "removed"
    assert net.run_until(lambda: net.stable_leader() in ("n2", "n3"), 5.0)
    lid = net.leader()
    assert lid is not None
    assert voters(net, lid) == ["n2", "n3"]
    net.propose(lid, "after")
    net.advance(3.0)
    assert not n1.is_voter() and n1.role is Role.FOLLOWER
    assert len(net.events_of("campaign", "n1")) == campaigns


def test_one_membership_change_at_a_time() -> None:
    net = RaftNet(3, seed=4, options=RaftOptions(auto_promote=False))
    n1 = net.elect("n1")
    base = n1.membership
    with pytest.raises(ConfigChangeError):  # two voters at once
        two = base.with_member("a", Member("a")).with_member("b", Member("b"))
        net.propose_membership("n1", two)
    add_a = base.with_member("a", Member("a", voter=False))
    net.propose_membership("n1", add_a)
    with pytest.raises(ConfigChangeError):  # the first is not committed yet
        net.propose_membership("n1", add_a.with_member("b", Member("b", voter=False)))
    net.deliver_all()
    net.propose_membership("n1", add_a.with_member("b", Member("b", voter=False)))
    net.deliver_all()
    assert sorted(n1.membership.learners) == ["a", "b"]


def test_new_leader_changes_membership_only_after_committing_in_its_term() -> None:
    """The single-server-change bug (Ongaro, raft-dev 2015): s1 adds s5 but only
    s5 gets the entry; s2 takes over and at once removes s1, committing that
    with s3 under the new configuration; s1 comes back and wins with s4 and s5
    under *its* configuration, erasing the committed change. A leader must
    commit an entry of its own term before it changes the membership."""
    net = RaftNet(
        ["s1", "s2", "s3", "s4"],
        options=RaftOptions(pre_vote=False, check_quorum=False, auto_promote=False),
    )
    s1 = net.elect("s1")
    net.add_node("s5")
    for i in ("s2", "s3", "s4"):
        net.block("s1", i)
    net.propose_membership("s1", s1.membership.with_member("s5", Member("s5")))
    net.deliver_all()
    assert sorted(net.nodes["s5"].membership.voters) == ["s1", "s2", "s3", "s4", "s5"]
    net.crash("s1")
    net.heal()

    net.campaign("s2")
    net.deliver_all(lambda m: m.type in (MT.VOTE, MT.VOTE_RESP))
    s2 = net.nodes["s2"]
    assert s2.role is Role.LEADER
    net.block("s2", "s4")
    without_s1 = s2.membership.without("s1")
    with pytest.raises(ConfigChangeError):
        net.propose_membership("s2", without_s1)
    net.deliver_all()  # s3 gets s2's no-op; not committed (s2, s3 of four)
    with pytest.raises(ConfigChangeError):
        net.propose_membership("s2", without_s1)

    # s1 can indeed win now, with s4 and s5 -- harmless, as nothing of term 2
    # committed.
    net.crash("s2")
    net.restart("s1")
    net.campaign("s1")  # term 2: s4 already voted for s2
    net.deliver_all()
    net.campaign("s1")
    net.deliver_all()
    assert s1 is not net.nodes["s1"]
    s1 = net.nodes["s1"]
    assert s1.role is Role.LEADER and s1.term == 3
    net.restart("s2")
    assert net.run_until(net.converged, 2.0)
    net.check_logs()


def test_new_leader_can_change_membership_after_its_first_commit() -> None:
    net = RaftNet(3, seed=5, options=RaftOptions(auto_promote=False))
    n1 = net.nodes["n1"]
    net.campaign("n1")
    net.deliver_all(lambda m: m.type not in (MT.APPEND, MT.APPEND_RESP))
    assert n1.role is Role.LEADER and n1.commit == 0
    add = n1.membership.with_member("n4", Member("n4", voter=False))
    with pytest.raises(ConfigChangeError):
        net.propose_membership("n1", add)
    net.deliver_all()
    net.propose_membership("n1", add)


def test_amnesiac_node_does_not_vote_until_re_added() -> None:
    net = RaftNet(3, seed=6, options=RaftOptions(pre_vote=False, check_quorum=False))
    net.elect("n1")
    net.isolate("n2")
    for i in range(5):
        net.propose("n1", i)  # committed by n1 and n3 only
    net.deliver_all()
    assert net.applied_data("n3") == list(range(5))

    # n3 loses its disk; n1 goes down. n2 lacks the committed entries: if
    # n3 voted with its empty log, n2 would win and lose them.
    n3 = net.restart("n3", amnesia=True, incarnation="n3-b")
    sent_before = len(net.sent)
    assert n3.log.last_index() == 0 and n3.term == 0 and not n3.is_voter()
    net.crash("n1")
    net.heal()
    net.advance(5.0)
    assert net.live_leaders() == []
    votes = [m for m in net.sent[sent_before:] if m.type is MT.VOTE_RESP and m.src == "n3"]
    assert votes and all(m.reject for m in votes)
    assert net.events_of("campaign", "n3") == []

    # n1 returns and leads; it re-adds n3 under its new incarnation, as a
    # learner first.
    net.restart("n1")
    assert net.run_until(lambda: net.stable_leader() == "n1", 5.0)
    n1 = net.nodes["n1"]
    rejoin = n1.membership.with_member("n3", Member("n3", voter=False, incarnation="n3-b"))
    net.propose_membership("n1", rejoin)
    assert net.run_until(lambda: n3.is_voter(), 2.0)
    assert n3.membership.members["n3"].incarnation == "n3-b"
    assert net.run_until(lambda: net.applied_data("n3") == list(range(5)), 1.0)

    # A voter again: with n1 gone, n2 and n3 elect a leader and commit.
    net.crash("n1")
    assert net.run_until(lambda: net.stable_leader() in ("n2", "n3"), 10.0)
    lid = net.leader()
    assert lid is not None
    net.propose(lid, "after")
    assert net.run_until(lambda: "after" in net.applied_data("n3"), 1.0)
    net.check_logs()


def stale_leader_and_amnesiac(n: int) -> tuple[RaftNet, str, str]:
    """n1 leads term 1 but is cut off; another node leads a later term and
    commits; then a follower (the amnesiac) loses its disk and comes back
    empty, at term 0, under a new incarnation."""
    net = RaftNet(n, seed=1)
    net.elect("n1")
    net.isolate("n1")
    assert net.run_until(lambda: net.stable_leader() not in (None, "n1"), 5.0)
    new = net.leader()
    assert new is not None
    net.propose(new, "x")
    net.propose(new, "y")
    net.deliver_all()
    amnesiac = next(i for i in sorted(net.nodes) if i not in ("n1", new))
    net.restart(amnesiac, amnesia=True, incarnation="new-life")
    assert net.nodes["n1"].role is Role.LEADER  # still believes it leads term 1
    return net, new, amnesiac


def test_amnesiac_does_not_commit_a_stale_leaders_entries_from_heartbeats() -> None:
    # Five nodes: n1 and the amnesiac are not a majority, so n1 commits
    # nothing; but the amnesiac takes n1's (uncommitted, term-1) entries, and
    # the real leader's heartbeats then carry a commit index based on what
    # the amnesiac had acknowledged in its previous life.
    net, new, amnesiac = stale_leader_and_amnesiac(5)
    net.block(new, amnesiac)
    net.unblock("n1", amnesiac)
    for k in range(3):
        net.propose("n1", f"stale{k}")
    net.deliver_all()
    # n1 ignores answers from the amnesiac's new life, so it may not even
    # repair its log; either way nothing of n1's may be applied there.
    net.block("n1", amnesiac)
    net.unblock(new, amnesiac)
    net.advance(0.3)  # heartbeats must not make it apply the stale entries
    assert net.nodes[amnesiac].leader_id == new
    assert "stale0" not in net.applied_data(amnesiac)


def test_stale_leader_cannot_commit_with_an_amnesiac_members_ack() -> None:
    # Three nodes: n1 (stale, term 1) plus the amnesiac (back at term 0, so
    # it accepts term 1) make a majority of n1's configuration, which still
    # names the amnesiac's previous life as a voter. n1 commits its term-1
    # entry at an index the real leader already committed.
    net, new, amnesiac = stale_leader_and_amnesiac(3)
    net.block(new, amnesiac)
    net.unblock("n1", amnesiac)
    net.propose("n1", "stale")
    net.advance(0.5)
    assert "stale" not in net.applied_data("n1")


def test_node_left_out_of_its_latest_configuration_still_votes() -> None:
    """Raft servers vote whatever their latest configuration says (thesis
    4.1): one that an uncommitted change left out may be needed by another
    server's configuration. Found by a randomized seed: three nodes, three
    different configurations, and no node could ever win."""
    opts = RaftOptions(pre_vote=False, check_quorum=False, auto_promote=False)
    net = RaftNet(3, seed=9, options=opts)
    net.elect("n1")
    net.elect("n2")  # term 2; everyone has both no-ops
    net.isolate("n2")
    net.propose_membership("n2", net.nodes["n2"].membership.without("n2"))  # only n2 has it
    net.crash("n2")
    net.heal()
    n1 = net.elect("n1")  # term 3, with n3
    net.isolate("n1")
    net.propose_membership("n1", n1.membership.without("n3"))  # only n1 has it
    net.restart("n1")
    net.restart("n2")
    net.heal()
    # n1 needs n2 ({n1, n2}); n2's own latest configuration leaves it out
    # ({n1, n3}); n3 ({n1, n2, n3}) is less up to date than n1.
    assert sorted(net.nodes["n1"].membership.voters) == ["n1", "n2"]
    assert sorted(net.nodes["n2"].membership.voters) == ["n1", "n3"]
    assert sorted(net.nodes["n3"].membership.voters) == ["n1", "n2", "n3"]
    assert net.run_until(lambda: net.stable_leader() is not None, 10.0)


def test_the_initial_members_are_the_first_entry_of_every_log() -> None:
    net = RaftNet(3, seed=10, bootstrap_in_log=True)
    first = bootstrap_entry(net.bootstrap)
    for nid, node in net.nodes.items():
        # Written by each node itself, committed by definition (term 0 is no
        # leader's), in effect before any election.
        assert node.log.entry(1) == first and node.commit == 1
        assert node.membership == net.bootstrap
        net.tick(nid)
        assert net.storage[nid].entries == [first]
    n1 = net.elect("n1")
    assert n1.term == 1
    index, _ = net.propose("n1", "x")
    net.deliver_all()
    assert index == 3  # 1: the members, 2: n1's no-op, 3: the first command
    assert net.nodes["n2"].commit >= index

    # Every node restarts from its storage alone: the members come from the log.
    for nid in sorted(net.nodes):
        net.crash(nid)
    for nid in sorted(net.nodes):
        assert net.restart(nid).membership == net.bootstrap
    assert net.run_until(lambda: net.stable_leader() is not None, 5.0)
    lid = net.leader()
    assert lid is not None
    net.propose(lid, "y")
    assert net.run_until(lambda: all("y" in net.applied_data(i) for i in net.nodes), 2.0)

    # A node that joins later receives the entry like any other.
    n4 = net.add_node("n4", incarnation="n4-a")
    leader = net.nodes[lid]
    learner = leader.membership.with_member("n4", Member("n4", voter=False, incarnation="n4-a"))
    net.propose_membership(lid, learner)
    assert net.run_until(lambda: n4.is_voter(), 3.0)
    assert n4.log.entry(1) == first
    assert net.run_until(net.converged, 2.0)
    net.check_logs()


def test_a_node_that_lost_its_disk_does_not_bootstrap_again() -> None:
    # An amnesiac node comes back with no members, as a node joining: it is
    # given the log, bootstrap entry included, once it is added again.
    net = RaftNet(3, seed=11, bootstrap_in_log=True)
    net.elect("n1")
    n3 = net.restart("n3", amnesia=True, incarnation="n3-b")
    assert n3.log.last_index() == 0 and not n3.membership.members and n3.commit == 0
    n1 = net.nodes["n1"]
    net.propose_membership("n1", n1.membership.with_member("n3", Member("n3", False, "n3-b")))
    assert net.run_until(lambda: n3.is_voter(), 3.0)
    assert n3.log.entry(1) == bootstrap_entry(net.bootstrap)
