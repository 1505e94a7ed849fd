"""A short scripted life of a cluster, for timelines: crash, rejoin, partition, pause.

Every step waits for its outcome (a new leader, a voter again) rather than
sleeping a fixed time, except where the point is to let time pass (a partition
held for `hold` seconds), so the script works on slow machines too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd

from ..cluster import Cluster
from . import faults
from .events import mark


def _voter(cluster: Cluster, i: int) -> Callable[[], bool]:
    def check() -> bool:
        st = cluster.node_status(i)
        return st is not None and bool(st["voter"])

    return check


def run_scenario(
    n: int = 5,
    *,
    election_timeout: tuple[float, float] = (0.15, 0.3),
    heartbeat_interval: float = 0.05,
    hold: float = 1.0,
    say: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Kill the leader, restart it, isolate the next leader, heal, pause a follower;
    returns `Cluster.events()` (with the harness's marks)."""
    log = say or (lambda _text: None)
    with Cluster(
        n, election_timeout=election_timeout, heartbeat_interval=heartbeat_interval
    ) as cluster:
        leader = cluster.wait_for_leader()
        with cluster.client(timeout=30) as client:
            for k in range(20):
                client.put(f"k{k}", str(k))
            log(f"node {leader} leads; killing it")
            faults.kill(cluster, leader)
            second = cluster.wait_for_leader(exclude=leader)
            client.put("after-kill", "1")
            log(f"node {second} leads; restarting node {leader}")
            faults.restart(cluster, leader)
            cluster.wait_until(_voter(cluster, leader), 30, "the restarted node never voted")
            time.sleep(hold / 2)
            log(f"isolating node {second} for {hold:g} s")
            faults.isolate(cluster, second)
            third = cluster.wait_for_leader(exclude=second)
            time.sleep(hold)
            faults.heal(cluster)
            client.put("after-heal", "1")
            follower = next(i for i in range(n) if i not in (third, second))
            log(f"node {third} leads; pausing follower {follower} for {hold:g} s")
            faults.pause(cluster, follower)
            time.sleep(hold)
            faults.resume(cluster, follower)
            cluster.wait_until(
                lambda: (cluster.node_status(follower) or {}).get("role") == "follower", 30
            )
            time.sleep(hold / 2)
        mark(cluster, "end")
        return cluster.events()
