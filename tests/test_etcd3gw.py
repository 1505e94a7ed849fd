"""kvcluster through etcd3gw, an etcd client that speaks the v3 JSON gateway, used
as an application would use it against etcd."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from etcd3gw.client import Etcd3Client

from kvcluster import Cluster

pytestmark = pytest.mark.integration

DEADLINE = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def client_of(cluster: Cluster, *, leader: bool) -> Etcd3Client:
    chosen = cluster.wait_for_leader(DEADLINE)
    if not leader:
        chosen = (chosen + 1) % len(cluster.nodes)
    parts = urlsplit(cluster.endpoints[chosen])
    return Etcd3Client(host=parts.hostname, port=parts.port, timeout=DEADLINE)


@pytest.mark.parametrize("leader", [True, False], ids=["leader", "follower"])
def test_put_get_delete_and_prefix(cluster: Cluster, leader: bool) -> None:
    etcd = client_of(cluster, leader=leader)
    where = "leader" if leader else "follower"
    assert etcd.put(f"{where}/a", "1") is True
    assert etcd.put(f"{where}/b", "2") is True
    assert etcd.get(f"{where}/a") == [b"1"]
    assert etcd.get(f"{where}/missing") == []
    got = sorted((meta["key"], value) for value, meta in etcd.get_prefix(f"{where}/"))
    assert got == [(f"{where}/a".encode(), b"1"), (f"{where}/b".encode(), b"2")]
    assert etcd.delete(f"{where}/a") is True
    assert etcd.delete(f"{where}/a") is False
    assert etcd.get(f"{where}/a") == []
    assert etcd.delete_prefix(f"{where}/") is True
    assert etcd.get_prefix(f"{where}/") == []


def test_compare_and_swap(cluster: Cluster) -> None:
    etcd = client_of(cluster, leader=False)
    assert etcd.create("cas/k", "first") is True
    assert etcd.create("cas/k", "second") is False  # exists already
    assert etcd.replace("cas/k", "first", "third") is True
    assert etcd.replace("cas/k", "first", "fourth") is False  # the value moved on
    assert etcd.get("cas/k") == [b"third"]


def test_status_and_members(cluster: Cluster) -> None:
    etcd = client_of(cluster, leader=False)
    assert etcd.status()["version"].startswith("3.")
    names = sorted(m["name"] for m in etcd.members())
    assert names == ["n0", "n1", "n2"]
