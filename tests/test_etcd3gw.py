"""kvcluster through etcd3gw, an etcd client that speaks the v3 JSON gateway, used
as an application would use it against etcd (put/get/delete, prefixes, CAS, its
lock; leases and watches are in test_etcd_leases.py and test_etcd_watch.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from etcd3gw.client import Etcd3Client

from kvcluster import Cluster

pytestmark = pytest.mark.integration

DEADLINE = 60.0
LOCK_TTL = 3  # seconds: above the shortest lease (1.5 election timeouts)


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


def test_etcd3gw_lock_excludes_clients_on_different_nodes(cluster: Cluster) -> None:
    """Three clients, one per node, each add one to a counter five times with a
    plain read-modify-write under etcd3gw's lock: no update is lost and no two
    clients are ever inside at once."""
    rounds, inside, most_inside = 5, [0], [0]
    guard = threading.Lock()
    errors: list[BaseException] = []

    def worker(node: int) -> None:
        parts = urlsplit(cluster.endpoints[node])
        etcd = Etcd3Client(host=parts.hostname, port=parts.port, timeout=DEADLINE)
        try:
            for _ in range(rounds):
                lock = etcd.lock("counter", ttl=30)
                deadline = time.monotonic() + DEADLINE
                while not lock.acquire():
                    assert lock.lease is not None
                    lock.lease.revoke()  # a polite loser frees the lease it made
                    assert time.monotonic() < deadline, "never got the lock"
                    time.sleep(0.01)
                with guard:
                    inside[0] += 1
                    most_inside[0] = max(most_inside[0], inside[0])
                assert lock.is_acquired()
                count = int(etcd.get("lock/count")[0]) if etcd.get("lock/count") else 0
                etcd.put("lock/count", str(count + 1))
                with guard:
                    inside[0] -= 1
                assert lock.release() is True
                assert lock.lease is not None
                lock.lease.revoke()
        except BaseException as exc:  # reported by the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5 * DEADLINE)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert most_inside[0] == 1
    assert client_of(cluster, leader=True).get("lock/count") == [b"15"]


def test_etcd3gw_lock_frees_itself_when_its_holder_goes_silent(cluster: Cluster) -> None:
    """A holder that neither refreshes nor releases loses the lock when its
    lease expires, and only then can another client take it."""
    holder = client_of(cluster, leader=False).lock("silent", ttl=LOCK_TTL)
    taken_at = time.monotonic()  # before the grant: its TTL counts from later
    assert holder.acquire() is True
    other = client_of(cluster, leader=True)
    deadline = taken_at + DEADLINE
    while True:
        lock = other.lock("silent", ttl=LOCK_TTL)
        if lock.acquire():
            break
        assert lock.lease is not None
        lock.lease.revoke()
        assert time.monotonic() < deadline, "the silent holder's lock never freed"
        time.sleep(0.05)
    # Not before the holder's lease ran out.
    assert time.monotonic() - taken_at >= LOCK_TTL
    assert lock.is_acquired() and not holder.is_acquired()
    assert holder.release() is False  # its value is gone: nothing to release
    assert lock.release() is True
