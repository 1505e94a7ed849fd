"""Log compaction and InstallSnapshot in the core, driven by a minimal network.

The test plays the node's part: it keeps a "state machine" (the list of
applied commands), saves snapshots of it, fills the payload of the SNAPSHOT
messages the core asks for, and installs the snapshots a follower receives.
"""

from __future__ import annotations

import random
from typing import Any

from kvcluster.raft import (
    EntryKind,
    Member,
    Membership,
    Message,
    MessageType,
    RaftNode,
    RaftOptions,
)

IDS = ["a", "b", "c"]


class Net:
    def __init__(self) -> None:
        membership = Membership({i: Member(i) for i in IDS})
        self.now = 0.0
        self.nodes = {
            i: RaftNode(i, rng=random.Random(k), membership=membership, options=RaftOptions())
            for k, i in enumerate(IDS)
        }
        self.applied: dict[str, list[Any]] = {i: [] for i in IDS}
        self.snapshots: dict[str, tuple[int, int, dict[str, Any]]] = {}
        self.down: set[str] = set()
        self.sent: list[Message] = []

    def pump(self) -> None:
        for _ in range(1000):
            out: list[Message] = []
            for i, n in self.nodes.items():
                if i in self.down:
                    continue
                rd = n.ready()
                n.advance(rd)  # "persisted": this test keeps no storage
                if rd.snapshot is not None:
                    payload = rd.snapshot.snapshot
                    self.applied[i] = list(payload["data"])
                    self.snapshots[i] = (rd.snapshot.index, rd.snapshot.log_term, payload)
                for e in rd.committed:
                    if e.kind is EntryKind.NORMAL:
                        self.applied[i].append(e.data)
                for m in rd.messages:
                    if m.type is MessageType.SNAPSHOT:
                        index, term, payload = self.snapshots[i]
                        m.index, m.log_term, m.snapshot = index, term, payload
                    out.append(m)
            if not out:
                return
            self.sent += out
            for m in out:
                if m.dst not in self.down:
                    self.nodes[m.dst].step(m)
        raise AssertionError("the network never went quiet")

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self.now < end:
            self.now += 0.01
            for i, n in self.nodes.items():
                if i not in self.down:
                    n.tick(self.now)
            self.pump()

    def leader(self) -> RaftNode:
        leaders = [n for i, n in self.nodes.items() if n.is_leader and i not in self.down]
        assert len(leaders) == 1
        return leaders[0]

    def snapshot(self, i: str) -> None:
        """What the node does every N entries: capture, save, compact."""
        n = self.nodes[i]
        membership = n.membership_at(n.applied).to_dict()
        payload = {"membership": membership, "data": list(self.applied[i])}
        self.snapshots[i] = (n.applied, n.log.term_at(n.applied) or 0, payload)
        n.compact(n.applied)


def test_a_follower_behind_the_compacted_log_catches_up_through_a_snapshot() -> None:
    net = Net()
    net.advance(2.0)
    leader = net.leader()
    follower = next(i for i in IDS if i != leader.id)
    net.down.add(follower)
    for k in range(50):
        leader.propose(f"cmd{k}")
        net.pump()
    net.snapshot(leader.id)
    assert leader.log.first_index() > 2  # the early entries are gone
    for k in range(50, 60):
        leader.propose(f"cmd{k}")
        net.pump()
    net.down.discard(follower)
    net.advance(1.0)
    sent = [m for m in net.sent if m.type is MessageType.SNAPSHOT and m.dst == follower]
    assert len(sent) == 1
    f = net.nodes[follower]
    assert f.log.snapshot_index == sent[0].index
    assert f.commit == leader.commit
    assert net.applied[follower] == [f"cmd{k}" for k in range(60)]
    assert net.applied[follower] == net.applied[leader.id]
    # and it keeps replicating normally afterwards
    leader.propose("after")
    net.pump()
    net.advance(0.3)
    assert net.applied[follower][-1] == "after"


def test_membership_survives_compaction() -> None:
    net = Net()
    net.advance(2.0)
    leader = net.leader()
    smaller = leader.membership.without(next(i for i in IDS if i != leader.id))
    leader.propose_membership(smaller)
    net.pump()
    net.advance(0.3)
    net.snapshot(leader.id)
    assert leader.membership == smaller
    assert leader.membership_at(leader.commit) == smaller
