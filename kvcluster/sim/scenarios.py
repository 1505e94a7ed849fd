"""Raft-level workloads from the classic Raft labs (MIT 6.824, lab 2C), as seeded runs.

Each drives a `RaftNet` (so every safety invariant is checked after every
step), then heals everything and demands progress: a leader, and one more
entry committed on every node. They raise `InvariantViolation` on a safety
violation and `AssertionError` on a liveness failure.

`figure8` recreates the conditions of the Raft paper's Figure 8 at random:
leaders that die moments after being elected or handed entries, so logs
diverge across many terms and new leaders must finish their predecessors'
replication. That is the schedule that punishes committing an earlier term's
entry by counting replicas, which the mixed nemesis of `kvcluster.sim.run`
rarely builds.
"""

from __future__ import annotations

import random

from ..raft import RaftOptions
from .net import RaftNet

LAB_OPTIONS = RaftOptions(election_timeout=(0.3, 0.6), heartbeat_interval=0.06)


class Connectivity:
    """Which nodes are cut off from all others (the labs' connect/disconnect)."""

    def __init__(self, net: RaftNet) -> None:
        self.net = net
        self.cut: set[str] = set()

    def disconnect(self, nid: str) -> None:
        self.cut.add(nid)
        self._apply()

    def connect(self, nid: str) -> None:
        self.cut.discard(nid)
        self._apply()

    def _apply(self) -> None:
        ids = self.net.nodes
        self.net.blocked = {
            (a, b) for a in ids for b in ids if a != b and (a in self.cut or b in self.cut)
        }


def heal_and_agree(net: RaftNet, value: object, *, bound: float = 10.0) -> None:
    """Everything back up and connected, a reliable network; then a leader must
    commit `value` on every node within `bound` simulated seconds."""
    for nid in sorted(net.nodes):
        if nid not in net.alive:
            net.restart(nid)
    net.heal()
    net.drop_rate = net.dup_rate = net.delay_rate = 0.0
    deadline = net.now + bound
    proposed_in: set[int] = set()
    while not all(value in net.applied_data(i) for i in net.nodes):
        assert net.now < deadline, f"seed {net.seed}: no agreement {bound:g}s after healing"
        lid = net.stable_leader()
        if lid is not None and net.nodes[lid].term not in proposed_in:
            # Propose once per leader: a deposed leader's copy may be lost.
            proposed_in.add(net.nodes[lid].term)
            net.propose(lid, value)
        net.advance(0.05)


def figure8(
    seed: int,
    *,
    unreliable: bool = False,
    iterations: int = 1000,
    options: RaftOptions | None = None,
) -> RaftNet:
    """TestFigure8(Unreliable)2C: five nodes; every round, each node that
    believes it leads is handed an entry; after a short pause (now and then a
    long one) the leader crashes (unreliable: is disconnected, half the time),
    and nodes come back only when fewer than three are up. The unreliable
    network loses 10% of messages and, after 200 rounds, delays some by up to
    a second (so they arrive out of order)."""
    rng = random.Random(seed)
    opts = options or RaftOptions(
        election_timeout=LAB_OPTIONS.election_timeout,
        heartbeat_interval=LAB_OPTIONS.heartbeat_interval,
        pre_vote=rng.random() < 0.5,
        check_quorum=rng.random() < 0.5,
        max_append_entries=rng.choice([1, 64]),
    )
    net = RaftNet(
        5,
        seed=seed,
        options=opts,
        latency=(0.001, 0.01),
        drop_rate=0.1 if unreliable else 0.0,
        reorder=unreliable,
        record=False,
    )
    links = Connectivity(net)
    ids = sorted(net.nodes)
    lo = opts.election_timeout[0]
    for it in range(iterations):
        if unreliable and it == 200:
            net.delay_rate, net.max_delay = 0.1, 1.0  # "long reordering"
        leader = None
        for nid in sorted(net.alive):
            if net.nodes[nid].is_leader:
                net.propose(nid, rng.randrange(10_000))
                if nid not in links.cut:
                    leader = nid
        net.advance(rng.uniform(0, lo / 2) if rng.random() < 0.1 else rng.uniform(0, 0.013))
        if leader is not None and leader in net.alive:
            if not unreliable:
                net.crash(leader)
            elif rng.random() < 0.5:
                links.disconnect(leader)
        up = [i for i in ids if i in net.alive and i not in links.cut]
        if len(up) < 3:
            nid = rng.choice(ids)
            if nid not in net.alive:
                net.restart(nid)
            links.connect(nid)
    heal_and_agree(net, f"figure8-{seed}-final")
    return net


def churn(
    seed: int,
    *,
    unreliable: bool = False,
    rounds: int = 20,
    options: RaftOptions | None = None,
) -> RaftNet:
    """TestReliableChurn2C / TestUnreliableChurn2C: while entries keep being
    proposed at whoever leads, every 0.7 election timeouts a random node may be
    disconnected, reconnected (restarted if down) or crashed. Every entry that
    was committed must end up applied on every node."""
    rng = random.Random(seed)
    opts = options or LAB_OPTIONS
    net = RaftNet(
        5,
        seed=seed,
        options=opts,
        latency=(0.001, 0.01),
        drop_rate=0.1 if unreliable else 0.0,
        reorder=unreliable,
        delay_rate=0.05 if unreliable else 0.0,
        max_delay=0.2,
        record=False,
    )
    links = Connectivity(net)
    ids = sorted(net.nodes)
    counter = 0
    step = 0.7 * opts.election_timeout[1]
    for _ in range(rounds):
        if rng.random() < 0.2:
            links.disconnect(rng.choice(ids))
        if rng.random() < 0.5:
            nid = rng.choice(ids)
            if nid not in net.alive:
                net.restart(nid)
            links.connect(nid)
        if rng.random() < 0.2:
            net.crash(rng.choice(ids))
        end = net.now + step
        while net.now < end:  # three clients' worth of proposals
            for nid in sorted(net.alive):
                if net.nodes[nid].is_leader:
                    counter += 1
                    net.propose(nid, f"churn-{seed}-{counter}")
            net.advance(rng.uniform(0.005, 0.03))
    heal_and_agree(net, f"churn-{seed}-final")
    committed = {e.data for e in net.committed.values()}
    for nid in ids:
        missing = committed - set(net.applied_data(nid)) - {None}
        assert not missing, f"seed {seed}: {nid} lacks committed entries {sorted(missing)[:5]}"
    return net
