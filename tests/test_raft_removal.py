"""A removed member learns of its removal and stops (as etcd shuts one down).

Two ways: a node that applies the committed configuration leaving it out stops
(a removed leader does), and a member whose committed log shows a node removed
answers that node's messages with REMOVED. Never before the removal commits,
never for a node the log does not show as removed, never for another life of
the node. The simulator stops a removed node as the node process exits.
"""

from __future__ import annotations

from raft_harness import RaftNet

from kvcluster.node import ADD_MEMBER, GET, PUT, Answer, Request
from kvcluster.raft import Member, Message, MessageType, RaftOptions, Role

MT = MessageType


def removed_messages(net: RaftNet, dst: str | None = None) -> list[Message]:
    return [m for m in net.sent if m.type is MT.REMOVED and (dst is None or m.dst == dst)]


def test_a_removed_follower_is_told_once_it_campaigns_and_stops() -> None:
    net = RaftNet(3, seed=2)
    n1 = net.elect("n1")
    index, _ = net.propose_membership("n1", n1.membership.without("n3"))
    net.deliver_all()
    assert n1.commit >= index
    n3 = net.nodes["n3"]
    assert not n3.removed  # the leader stopped replicating to it at once: it knows nothing
    # It times out, asks for pre-votes, and a member answers: you are removed.
    assert net.run_until(lambda: "n3" in net.removed, 5.0)
    assert n3.removed and n3.removed_at == index and n3.removed_by in ("n1", "n2")
    assert "n3" not in net.alive
    told = removed_messages(net, "n3")
    assert told and all(m.index == index and m.snapshot["incarnation"] == "" for m in told)
    assert net.events_of("removed", "n3")[-1][2]["index"] == index
    assert n3.status()["role"] == "removed" and n3.status()["removed"]
    # It disturbed nobody, and the cluster goes on without it.
    assert net.live_leaders() == ["n1"]
    i, _ = net.propose("n1", "after")
    net.deliver_all()
    assert n1.commit >= i
    net.check_logs()


def test_a_removed_leader_applies_its_removal_and_stops() -> None:
    net = RaftNet(3, seed=3)
    n1 = net.elect("n1")
    index, _ = net.propose_membership("n1", n1.membership.without("n1"))
    net.deliver_all()
    assert n1.removed and n1.removed_at == index and n1.removed_by is None
    assert n1.role is Role.FOLLOWER
    assert net.removed == {"n1"}
    assert net.events_of("step_down", "n1")[-1][2]["reason"] == "removed"
    assert net.run_until(lambda: net.stable_leader() in ("n2", "n3"), 5.0)
    lid = net.leader()
    assert lid is not None
    i, _ = net.propose(lid, "after")
    assert net.run_until(lambda: net.nodes[lid].commit >= i, 1.0)


def test_a_node_that_holds_its_removal_without_its_commit_asks_and_stops() -> None:
    # The leader removes itself; its appends reach the others but their answers
    # do not come back, and it is cut off. Another leader commits the removal.
    # No one writes to n1 any more (it is out), so it would never hear of the
    # commit: left out of its own latest configuration, it asks.
    net = RaftNet(3, seed=7)
    n1 = net.elect("n1")
    index, _ = net.propose_membership("n1", n1.membership.without("n1"))
    net.deliver_all(lambda m: m.src == "n1")
    net.isolate("n1")
    net.drop()
    assert net.run_until(
        lambda: (lid := net.stable_leader()) in ("n2", "n3") and net.nodes[lid].commit >= index,
        10.0,
    )
    assert not n1.removed and n1.commit < index and n1.log.last_index() >= index
    net.heal()
    assert net.run_until(lambda: "n1" in net.removed, 10.0)
    assert n1.removed_at == index and n1.removed_by in ("n2", "n3")


def test_no_one_is_told_before_the_removal_commits() -> None:
    # (Without check-quorum n1 keeps leading meanwhile, so n3 cannot win and
    # replace the uncommitted change.)
    net = RaftNet(3, seed=4, options=RaftOptions(check_quorum=False))
    n1 = net.elect("n1")
    net.isolate("n2")  # the change needs n2 ({n1, n2}) to commit
    index, _ = net.propose_membership("n1", n1.membership.without("n3"))
    net.advance(3.0)  # n3 hears no leader and campaigns meanwhile
    assert n1.commit < index and n1.role is Role.LEADER
    assert net.events_of("campaign", "n3")
    assert removed_messages(net) == [] and net.removed == set()
    net.heal()
    assert net.run_until(lambda: n1.commit >= index, 2.0)
    assert net.run_until(lambda: "n3" in net.removed, 5.0)


def test_a_node_the_log_never_named_is_not_told_it_was_removed() -> None:
    # A new node, or one whose addition this leader never saw: its messages are
    # handled as ever (here: a read index served), not answered with REMOVED.
    net = RaftNet(3, seed=5)
    n1 = net.elect("n1")
    net.add_node("n9", incarnation="n9-a")
    net.inject(Message(MT.READ_INDEX, n1.term, "n9", "n1", ctx=7, incarnation="n9-a"))
    net.advance(0.5)
    assert removed_messages(net) == []
    assert [m.type for m in net.sent if m.dst == "n9"] == [MT.READ_INDEX_RESP]
    assert net.removed == set()


def test_another_life_of_the_node_ignores_a_removal_of_its_old_life() -> None:
    # n3 loses its state and is re-added under a new incarnation: in the log,
    # its old life is out. A late message from the old life draws a REMOVED
    # addressed to "n3", which reaches the new life: it must not stop.
    net = RaftNet(3, seed=6)
    n1 = net.elect("n1")
    n3 = net.restart("n3", amnesia=True, incarnation="n3-b")
    rejoin = n1.membership.with_member("n3", Member("n3", voter=False, incarnation="n3-b"))
    net.propose_membership("n1", rejoin)
    assert net.run_until(lambda: n3.is_voter(), 2.0)
    old_life = Message(MT.HEARTBEAT_RESP, n1.term, "n3", "n1", incarnation="")
    net.inject(old_life)
    net.deliver_all()
    told = removed_messages(net, "n3")
    assert told and told[-1].snapshot["incarnation"] == ""
    assert not n3.removed and "n3" in net.alive
    net.propose("n1", "after")
    assert net.run_until(lambda: "after" in net.applied_data("n3"), 1.0)


def test_a_removal_message_is_ignored_when_the_log_has_the_node_back() -> None:
    net = RaftNet(3, seed=7, options=RaftOptions(auto_promote=False))
    n1 = net.elect("n1")
    without, _ = net.propose_membership("n1", n1.membership.without("n3"))
    net.deliver_all()
    back = n1.membership.with_member("n3", Member("n3", voter=False))
    readded, _ = net.propose_membership("n1", back)
    n3 = net.nodes["n3"]
    assert net.run_until(lambda: n3.log.last_index() >= readded, 2.0)
    assert [i for i, _ in n3._config_entries] == [without, readded]
    payload = {"membership": {}, "incarnation": ""}
    net.inject(Message(MT.REMOVED, n1.term, "n2", "n3", index=without, snapshot=payload))
    assert not n3.removed
    # The same message about the latest change would be believed.
    net.inject(Message(MT.REMOVED, n1.term, "n2", "n3", index=readded, snapshot=payload))
    assert n3.removed and net.removed == {"n3"}


def test_a_removed_node_answers_what_it_holds_and_refuses_new_requests() -> None:
    net = RaftNet(3, seed=8)
    n1 = net.elect("n1")
    answers: dict[str, Answer] = {}
    net.reply_to = lambda wire, answer: answers.__setitem__(wire, answer)
    net.isolate("n3")
    net.propose_membership("n1", n1.membership.without("n3"))
    net.deliver_all()
    # n3 relays a write to the leader it knew (the relay is lost in the
    # partition, but n3 cannot know that) and waits to confirm a read.
    net.submit("n3", Request(0, PUT, "k", "v", wire="put"))
    net.submit("n3", Request(0, GET, "k", wire="get"))
    net.advance(0.01)
    assert net.servers["n3"].pending_requests() == 2
    net.heal()
    assert net.run_until(lambda: "n3" in net.removed, 5.0)
    net.advance(0.1)
    # The write may have reached a log: its outcome is unknown. The read
    # changed nothing: it is refused, and a client may ask another node.
    put, get = answers["put"], answers["get"]
    assert put.status == 504 and put.body is not None and put.body["removed"] is True
    assert get.status == 503 and get.body is not None
    assert get.body["error"] == "shutting_down" and get.body["removed"] is True
    assert "removed from the cluster" in get.body["message"]
    # Whatever comes after gets the same clear refusal.
    server = net.servers["n3"]
    late = server.submit(Request(99, GET, "k", serializable=True), server.now)
    assert late is not None and late.status == 503 and late.body == get.body
    assert server.status()["role"] == "removed" and server.status()["removed"] is True


def test_a_removed_life_of_a_node_is_not_added_back() -> None:
    """Taken back under the same incarnation, a node could apply its old removal
    while catching up and stop itself as a member: the leader refuses, and the
    node must come back as a new life (an empty data directory)."""
    net = RaftNet(3, seed=9)
    n1 = net.elect("n1")
    answers: dict[str, Answer] = {}
    net.reply_to = lambda wire, answer: answers.__setitem__(wire, answer)
    old = n1.membership.members["n3"]
    net.propose_membership("n1", n1.membership.without("n3"))
    net.deliver_all()
    back = Member(old.address, voter=False, incarnation=old.incarnation)
    net.submit("n1", Request(0, ADD_MEMBER, "n3", member=back, wire="same life"))
    net.advance(0.1)
    refused = answers["same life"]
    assert refused.status == 409 and refused.body is not None
    assert refused.body["error"] == "member_removed" and "--join" in refused.body["message"]
    assert "n3" not in n1.membership.members
    anew = Member(old.address, voter=False, incarnation="n3-new")
    net.submit("n1", Request(0, ADD_MEMBER, "n3", member=anew, wire="new life"))
    assert net.run_until(lambda: "new life" in answers, 2.0)
    assert answers["new life"].status == 200
