"""End-to-end latency of single operations on a real 3-node cluster on this host.

One `Client` (requests, keep-alive) sends one operation at a time, pinned to
one node (`prefer_leader=False`), so a follower's forwarding hop is measured
when that is the point. A cluster is started once per read mode for the
whole module; `kvcluster bench` has the throughput and concurrency sweeps.

    python -m pytest bench/bench_cluster.py
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kvcluster.client import Client
from kvcluster.cluster import Cluster
from kvcluster.server.config import READ_MODES

VALUE = "x" * 100
N = 3


@pytest.fixture(scope="module", params=READ_MODES)
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with Cluster(N, read_mode=request.param) as c:
        c.wait_for_leader(60)
        yield c


def _pinned(cluster: Cluster, where: str) -> Client:
    leader = cluster.wait_for_leader(60)
    i = leader if where == "leader" else (leader + 1) % N
    return Client([cluster.endpoints[i]], timeout=30, prefer_leader=False)


@pytest.mark.parametrize("where", ["leader", "follower"])
def test_put(benchmark: Any, cluster: Cluster, where: str) -> None:
    if cluster.read_mode != "read_index":
        pytest.skip("a write does not depend on the read mode: measured once")
    with _pinned(cluster, where) as client:
        client.put("bench/put", VALUE)
        benchmark(client.put, "bench/put", VALUE)
    benchmark.extra_info.update(nodes=N, value_bytes=len(VALUE), via=where)


@pytest.mark.parametrize("where", ["leader", "follower"])
def test_get(benchmark: Any, cluster: Cluster, where: str) -> None:
    with _pinned(cluster, "leader") as writer:
        writer.put("bench/get", VALUE)
    with _pinned(cluster, where) as client:
        cluster.wait_until(lambda: client.get("bench/get") == VALUE, 30)
        result = benchmark(client.get, "bench/get")
    assert result == VALUE
    benchmark.extra_info.update(nodes=N, read_mode=cluster.read_mode, via=where)
