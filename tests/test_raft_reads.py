"""Linearizable reads: ReadIndex (a heartbeat round confirms leadership) and
leases (no round while the check-quorum lease holds)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from raft_harness import RaftNet

from kvcluster.raft import Message, MessageType, RaftOptions, Role

MT = MessageType


def is_type(*kinds: MessageType) -> Callable[[Message], bool]:
    return lambda m: m.type in kinds


def leader_with_writes(n: int = 3, options: RaftOptions | None = None) -> RaftNet:
    net = RaftNet(n, seed=n, options=options)
    net.elect("n1")
    for i in range(3):
        net.propose("n1", i)
    net.deliver_all()
    return net


def test_leader_read_waits_for_a_majority_of_heartbeat_acks() -> None:
    net = leader_with_writes(5)
    n1 = net.nodes["n1"]
    commit = n1.commit
    net.read_index("n1", 1)
    read = net.reads[("n1", 1)]
    beats = net.pending(is_type(MT.HEARTBEAT))
    assert sorted(m.dst for m in beats) == ["n2", "n3", "n4", "n5"]
    assert not read.done

    net.deliver_all(is_type(MT.HEARTBEAT))  # delivered, answers held back
    assert len(net.pending(is_type(MT.HEARTBEAT_RESP))) == 4
    assert not read.done
    net.deliver_one(is_type(MT.HEARTBEAT_RESP))
    assert not read.done  # n1 and one follower: 2 of 5
    net.deliver_one(is_type(MT.HEARTBEAT_RESP))
    assert read.index == commit  # 3 of 5


def test_follower_read_goes_through_the_leader() -> None:
    net = leader_with_writes(3)
    net.read_index("n2", 7)
    read = net.reads[("n2", 7)]
    asked = net.pending()
    assert [(m.type, m.dst) for m in asked] == [(MT.READ_INDEX, "n1")]
    net.deliver_all()
    assert read.index == net.nodes["n1"].commit
    assert net.count_sent(MT.READ_INDEX_RESP, src="n1", dst="n2") == 1
    assert net.count_sent(MT.HEARTBEAT, src="n1") >= 2  # the leader confirmed first


def test_read_without_known_leader_fails_at_once() -> None:
    net = RaftNet(3)
    net.read_index("n2", 1)
    assert net.reads[("n2", 1)].failed


@pytest.mark.parametrize("check_quorum", [True, False])
def test_partitioned_leader_never_serves_a_read(check_quorum: bool) -> None:
    net = leader_with_writes(3, RaftOptions(check_quorum=check_quorum))
    n1 = net.nodes["n1"]
    net.isolate("n1")
    net.read_index("n1", 1)
    read = net.reads[("n1", 1)]
    # Meanwhile the majority moves on, so a read served by n1 would be stale.
    assert net.run_until(lambda: net.stable_leader() in ("n2", "n3"), 5.0)
    lid = net.leader()
    assert lid is not None
    net.propose(lid, "new")
    net.advance(2.0)
    assert read.index is None
    if check_quorum:
        assert read.failed and n1.role is not Role.LEADER  # failed when it stepped down
    else:
        assert not read.done and n1.role is Role.LEADER  # waits forever
        net.heal()
        assert net.run_until(lambda: read.done, 1.0)
        assert read.failed


def test_reads_wait_for_the_new_leaders_first_commit() -> None:
    net = leader_with_writes(3, RaftOptions(pre_vote=False, check_quorum=False))
    net.crash("n1")
    net.campaign("n2")
    net.deliver_all(is_type(MT.VOTE, MT.VOTE_RESP))
    n2 = net.nodes["n2"]
    assert n2.role is Role.LEADER
    net.read_index("n2", 1)
    read = net.reads[("n2", 1)]
    # Leadership is confirmed, but n2 does not know yet what was committed
    # before it: its no-op is not committed.
    net.deliver_all(is_type(MT.HEARTBEAT, MT.HEARTBEAT_RESP))
    assert net.nodes["n2"].progress["n3"].acked_round >= 1
    assert not read.done
    net.deliver_all()
    assert n2.log.term_at(n2.commit) == n2.term
    assert read.index == n2.commit


def test_concurrent_reads_share_one_heartbeat_round() -> None:
    net = leader_with_writes(5)
    beats = net.sent_counts[MT.HEARTBEAT]
    for ctx in range(10):
        net.read_index("n1", ctx, flush=False)
    net.flush("n1")
    assert net.sent_counts[MT.HEARTBEAT] - beats == 4  # one round for ten reads
    net.deliver_all()
    commit = net.nodes["n1"].commit
    assert [net.reads[("n1", c)].index for c in range(10)] == [commit] * 10


def test_lease_read_is_served_at_once_while_the_lease_holds() -> None:
    opts = RaftOptions(election_timeout=(0.5, 1.0), heartbeat_interval=0.1)
    net = leader_with_writes(3, opts)
    n1 = net.nodes["n1"]
    net.advance(0.15)  # a heartbeat round was acknowledged: lease until ~0.1 + 0.45
    beats = net.sent_counts[MT.HEARTBEAT]
    net.isolate("n1")
    cut_at = net.now
    net.read_index("n1", 1, lease=True)
    assert net.reads[("n1", 1)].index == n1.commit
    assert net.sent_counts[MT.HEARTBEAT] == beats  # no round trip

    # Out of contact for longer than the lease: no more local reads, even
    # while n1 still believes it leads.
    lease = opts.election_timeout[0] * opts.lease_ratio
    net.advance(lease + 0.01 - (net.now - cut_at))
    net.tick("n1")
    assert n1.role is Role.LEADER and not n1.lease_valid()
    net.read_index("n1", 2, lease=True)
    read = net.reads[("n1", 2)]
    assert not read.done
    net.advance(2.0)
    assert read.failed


def test_no_lease_without_check_quorum() -> None:
    net = leader_with_writes(3, RaftOptions(check_quorum=False))
    net.advance(0.15)
    net.tick("n1")
    assert not net.nodes["n1"].lease_valid()
    net.read_index("n1", 1, lease=True)
    assert not net.reads[("n1", 1)].done  # falls back to a heartbeat round
    net.deliver_all()
    assert net.reads[("n1", 1)].index == net.nodes["n1"].commit


def test_lease_holds_across_a_follower_restart() -> None:
    # n1's lease rests on n3's acks alone (n2 cannot hear n1). n3 restarts
    # and forgets that it heard n1 an instant ago, so it votes for n2 at once,
    # and n2 commits a write while n1's lease still runs.
    net = leader_with_writes(3)
    net.isolate("n2")
    net.advance(0.7)
    net.tick("n1")
    assert net.nodes["n1"].lease_valid()
    net.heal()
    net.isolate("n1")
    net.restart("n3")
    net.campaign("n2")  # it has not heard from a leader for 0.7 s
    # The restarted n3 honours the lease it may have granted: no vote yet.
    assert not net.run_until(lambda: net.stable_leader() == "n2", 0.1)
    net.read_index("n1", 1, lease=True)  # still safe: nobody else leads
    net.deliver_all()
    assert net.reads[("n1", 1)].done
    # Once the shortest election timeout has passed, the majority elects again.
    assert net.run_until(lambda: net.stable_leader() in ("n2", "n3"), 5.0)
