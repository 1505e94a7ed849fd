"""A Cluster whose nodes each have a network stack of their own (`netns=True`).

On loopback every node shares 127.0.0.1 and a partition is the nodes agreeing
to drop messages. Here each node is in a network namespace with its own
address on a virtual bridge: a partition moves links onto bridges of their
own, an isolated node's link is down, and the kernel loses the packets. The
same scenarios run with TLS on clients and peers. The test sends only to the
cluster's own namespace addresses.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from test_cluster import only
from tornado.websocket import websocket_connect

from kvcluster.cluster import Cluster

pytestmark = pytest.mark.integration

DEADLINE = 60.0  # seconds, for a busy 2-core machine


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "tls"])
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    with Cluster(3, netns=True, tls=request.param) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def local_value(c: Cluster, i: int, key: str) -> str | None:
    with only(c, i) as client:
        return client.get(key, consistency="serializable")


def wait_everywhere(c: Cluster, key: str, value: str) -> None:
    for i in range(len(c.nodes)):
        c.wait_until(
            lambda i=i: local_value(c, i, key) == value,  # type: ignore[misc]
            DEADLINE,
            f"node {i} never showed {key}={value!r}",
        )


def members(c: Cluster, i: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"verify": c.ca_file} if c.tls else {}
    r = requests.get(f"{c.endpoints[i]}/v1/members", timeout=DEADLINE, **kwargs)
    r.raise_for_status()
    return dict(r.json()["members"])


def test_each_node_has_its_own_address_and_they_elect_one_leader(cluster: Cluster) -> None:
    hosts = [h.host for h in cluster.nodes]
    assert len(set(hosts)) == 3 and "127.0.0.1" not in hosts, hosts
    scheme = "https" if cluster.tls else "http"
    assert all(url.startswith(f"{scheme}://10.") for url in cluster.endpoints), cluster.endpoints
    leader = cluster.wait_for_leader(DEADLINE)
    status = cluster.status()
    assert list(status.index[status["role"] == "leader"]) == [leader]
    assert status["term"].nunique() == 1


def test_a_write_through_any_node_reaches_every_node(cluster: Cluster) -> None:
    for i in range(3):
        with only(cluster, i) as client:
            client.put(f"through/{i}", f"v{i}")
    for i in range(3):
        wait_everywhere(cluster, f"through/{i}", f"v{i}")


def test_a_partitioned_leader_is_replaced_and_follows_after_heal(cluster: Cluster) -> None:
    old = cluster.wait_for_leader(DEADLINE)
    term = cluster.node_status(old)["term"]  # type: ignore[index]
    others = [i for i in range(3) if i != old]
    cluster.partition(others, [old])
    # The harness is on the majority's side: the old leader is out of its reach too.
    assert cluster.node_status(old) is None
    new = cluster.wait_for_leader(DEADLINE, exclude=old)
    assert new in others
    with cluster.client(timeout=DEADLINE) as client:
        client.put("split", "majority")
    cluster.heal()

    def follows() -> bool:
        status = cluster.node_status(old)
        return status is not None and status["role"] == "follower" and status["term"] > term

    cluster.wait_until(follows, DEADLINE, "the old leader never followed the new one")
    wait_everywhere(cluster, "split", "majority")


def test_a_follower_whose_link_is_down_catches_up_when_it_is_back(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    follower = (leader + 1) % 3
    cluster.isolate(follower)  # its cable pulled
    with cluster.client(timeout=DEADLINE) as client:
        for k in range(20):
            client.put(f"while-down/{k}", str(k))
    assert cluster.node_status(follower) is None
    cluster.heal()
    wait_everywhere(cluster, "while-down/19", "19")


def test_a_node_restarted_on_a_new_address_rejoins_there(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    moved = (leader + 2) % 3
    h = cluster.nodes[moved]
    before = cluster.endpoints[moved]
    with cluster.client(timeout=DEADLINE) as client:
        client.put("before-move", before)
    wait_everywhere(cluster, "before-move", before)
    cluster.restart(moved, new_address=True)
    after = cluster.endpoints[moved]
    assert after != before and h.host not in before, (before, after)
    # The cluster records the new address, and replicates to it there.
    cluster.wait_until(
        lambda: all(members(cluster, i).get(h.name, {}).get("address") == after for i in range(3)),
        DEADLINE,
        f"the members never recorded {h.name} at {after}",
    )
    with cluster.client(timeout=DEADLINE) as client:
        client.put("moved", after)
    wait_everywhere(cluster, "moved", after)
    wait_everywhere(cluster, "before-move", before)  # and what it had before it moved


def test_the_live_view_polls_each_node_at_its_own_address(cluster: Cluster) -> None:
    """The dashboard asks every node for its status where that node lives."""
    view = cluster.dashboard()
    base, _, query = view.url.partition("?")
    url = base.replace("http://", "ws://").rstrip("/") + "/ws?" + query

    async def roles_seen() -> list[str | None]:
        socket = await websocket_connect(url)
        try:
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline:
                message = await socket.read_message()
                assert isinstance(message, str), "the view closed its socket"
                roles = [n.get("role") for n in json.loads(message).get("nodes") or []]
                if len(roles) == 3 and roles.count("leader") == 1:
                    return roles
            raise AssertionError("the view never showed three nodes and one leader")
        finally:
            socket.close()

    try:
        roles = asyncio.run(roles_seen())
    finally:
        view.close()
    assert sorted(r or "" for r in roles) == ["follower", "follower", "leader"]
