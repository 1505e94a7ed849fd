"""The quick-start experiment: a 5-node cluster loses its leader and recovers.

It writes through a follower, reads through another, SIGKILLs the leader and
measures two things from the outside and from the nodes' own event logs: how
long the re-election took, and how long until the first write was
acknowledged again. Then it checks that no acknowledged write was lost.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from .client import Client
from .cluster import Cluster
from .errors import KvClusterError


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(
    n: int = 5,
    *,
    heartbeat_interval: float = 0.1,
    election_timeout: tuple[float, float] = (0.5, 1.0),
    writes: int = 200,
    say: Callable[[str], None] = _say,
) -> dict[str, float]:
    """Run the demo; returns the measured figures (seconds)."""
    say(
        f"Starting a {n}-node cluster (heartbeat {heartbeat_interval * 1000:.0f} ms, "
        f"election timeout {election_timeout[0] * 1000:.0f}-{election_timeout[1] * 1000:.0f} ms)"
    )
    with Cluster(
        n, heartbeat_interval=heartbeat_interval, election_timeout=election_timeout
    ) as cluster:
        for i, url in enumerate(cluster.endpoints):
            say(f"  node {i}: {url}")
        leader = cluster.wait_for_leader()
        followers = [i for i in range(n) if i != leader]
        say(f"Node {leader} is the leader.")
        figures: dict[str, float] = {}

        acknowledged: dict[str, str] = {}
        writer = followers[0] if followers else leader
        reader = followers[-1] if followers else leader
        with Client([cluster.endpoints[writer]], timeout=30) as via_follower:
            via_follower.put("greeting", "hello, raft")
            acknowledged["greeting"] = "hello, raft"
            say(f"Wrote greeting='hello, raft' through node {writer}.")
        with Client([cluster.endpoints[reader]], timeout=30) as other:
            say(f"Read it back through node {reader}: {other.get('greeting')!r}")

        with cluster.client(timeout=30) as client:
            latencies = []
            for k in range(writes):
                start = time.perf_counter()
                client.put(f"demo/{k:05d}", str(k))
                latencies.append(time.perf_counter() - start)
                acknowledged[f"demo/{k:05d}"] = str(k)
            figures["write_p50"] = statistics.median(latencies)
            say(
                f"{writes} sequential writes: median commit latency "
                f"{figures['write_p50'] * 1000:.2f} ms"
            )

            if n == 1:
                say("A single node has nobody to take over; skipping the failover.")
                return figures
            say(f"Killing the leader (node {leader}) with SIGKILL...")
            killed_at = time.monotonic()
            cluster.kill(leader)
            first_write = None
            attempt = 0
            while first_write is None:
                attempt += 1
                try:
                    client.put("after-failover", f"attempt {attempt}")
                    first_write = time.monotonic()
                    acknowledged["after-failover"] = f"attempt {attempt}"
                except KvClusterError:
                    continue
            new_leader = cluster.wait_for_leader(exclude=leader)
            events = cluster.events()
            elected = events[
                (events["event"] == "role")
                & (events["role"] == "leader")
                & (events["t"] > killed_at)
            ]
            if not elected.empty:
                figures["reelection"] = float(elected["t"].iloc[0]) - killed_at
                say(
                    f"Node {new_leader} was elected leader "
                    f"{figures['reelection'] * 1000:.0f} ms after the kill "
                    f"(term {int(elected['term'].iloc[0])})."
                )
            figures["unavailable"] = first_write - killed_at
            say(
                f"The first write after the kill was acknowledged after "
                f"{figures['unavailable'] * 1000:.0f} ms."
            )

            lost = {k: v for k, v in acknowledged.items() if client.get(k) != v}
            if lost:
                raise AssertionError(f"acknowledged writes were lost: {sorted(lost)[:10]}")
            say(f"All {len(acknowledged)} acknowledged writes are still there.")
        say("Stopping the cluster.")
    say("Done: every node process has exited.")
    return figures
