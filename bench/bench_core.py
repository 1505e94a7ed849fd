"""Throughput of the sans-IO Raft core alone: no sockets, no processes, no clock.

Three `RaftNode`s exchange messages through an in-memory queue, as the
simulator does; what is measured is the core's own cost per committed entry,
an upper bound on what any node process built on it could do.

    python -m pytest bench/bench_core.py
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import pytest

from kvcluster.raft import Member, Membership, RaftNode, RaftOptions


class Pump:
    """N cores wired together; `run()` delivers messages until all are quiet."""

    def __init__(self, n: int = 3) -> None:
        names = [f"n{i}" for i in range(n)]
        membership = Membership({m: Member(f"http://{m}") for m in names})
        options = RaftOptions(election_timeout=(1.0, 2.0), heartbeat_interval=0.1)
        self.nodes = {
            m: RaftNode(m, options=options, rng=random.Random(i), membership=membership)
            for i, m in enumerate(names)
        }
        self.committed = dict.fromkeys(names, 0)
        self.now = 0.0
        self.nodes[names[0]].tick(5.0)  # only n0's election timer has passed
        self.run()
        assert self.nodes[names[0]].is_leader
        self.leader = self.nodes[names[0]]

    def run(self) -> None:
        queue: deque[Any] = deque()
        while True:
            for node in self.nodes.values():
                rd = node.ready()
                if rd.committed:
                    self.committed[node.id] = rd.committed[-1].index
                queue.extend(rd.messages)
            if not queue:
                return
            while queue:
                m = queue.popleft()
                self.nodes[m.dst].step(m)


@pytest.mark.parametrize("batch", [1, 100])
def test_core_commit(benchmark: Any, batch: int) -> None:
    """Propose `batch` entries on the leader and deliver until all three nodes committed them."""
    pump = Pump(3)
    command = {"op": "put", "key": "k", "value": "x" * 100}

    def commit_batch() -> None:
        for _ in range(batch):
            index, _term = pump.leader.propose(command)
        pump.run()
        assert pump.committed[pump.leader.id] == index

    benchmark(commit_batch)
    benchmark.extra_info["entries_per_round"] = batch
