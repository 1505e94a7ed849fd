"""Leases through etcd's v3 JSON gateway, on real node processes.

What matters here is processes and time: a lease's keys stay while keep-alives
come, vanish (at one revision, on every node) once they stop, and survive a
leader kill while they go on. The node layer's rules (whose clock, the promote)
are checked step by step in the simulator (test_node_leases.py); the wire
format against etcd's captured answers (test_etcd_wire.py). No wall-clock
limit is asserted: every wait is for a condition, with a generous deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from etcd3gw.client import Etcd3Client
from etcd_helpers import b64, follower, post, text

from kvcluster import Cluster

pytestmark = pytest.mark.integration

DEADLINE = 60.0
TTL = 4  # seconds: above the shortest lease (1.5 election timeouts, 2 s here)
BEAT = 0.5  # seconds between keep-alives


def ok(url: str, body: Any) -> dict[str, Any]:
    resp = post(url, body)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def local_range(base: str, key: str, **extra: Any) -> dict[str, Any]:
    """What node `base` itself holds (a serializable read: no leader involved)."""
    return ok(f"{base}/v3/kv/range", {"key": b64(key), "serializable": True, **extra})


def local_prefix(base: str, prefix: str, **extra: Any) -> list[str]:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    got = local_range(base, prefix, range_end=b64(end), **extra)
    return [text(kv["key"]) for kv in got.get("kvs", [])]


def revision_of(answer: dict[str, Any]) -> int:
    return int(answer["header"].get("revision", 0))


def grant(base: str, ttl: int) -> int:
    answer = ok(f"{base}/v3/lease/grant", {"TTL": ttl})
    assert answer["TTL"] == str(ttl)
    return int(answer["ID"])


def attach(base: str, lease: int, keys: list[str]) -> int:
    """Put each key with the lease; the revision of the last put."""
    revision = 0
    for key in keys:
        answer = ok(f"{base}/v3/kv/put", {"key": b64(key), "value": b64("v"), "lease": lease})
        revision = revision_of(answer)
    return revision


def assert_vanished_at_one_revision(
    endpoints: list[str], prefix: str, keys: list[str], rev: int
) -> None:
    """On every node: the keys, all there at `rev` (their last put), are gone
    together: at the revision where the first of them went, none is left, and
    that revision is the same on every node (deleted through the log)."""
    gone_at = set()
    for base in endpoints:
        wait_for(f"{prefix} to vanish on {base}", lambda b=base: not local_prefix(b, prefix))
        assert local_prefix(base, prefix, revision=rev) == sorted(keys)
        now = revision_of(local_range(base, prefix))
        r = next(
            r
            for r in range(rev + 1, now + 1)
            if local_prefix(base, prefix, revision=r) != sorted(keys)
        )
        assert local_prefix(base, prefix, revision=r) == [], f"{prefix} went over several revisions"
        gone_at.add(r)
    assert len(gone_at) == 1, f"the nodes deleted {prefix} at different revisions: {gone_at}"


class KeepAlive:
    """Keep-alives every BEAT from a thread, to whichever node answers (as a
    client that fails over would), until stopped."""

    def __init__(self, endpoints: list[str], lease: int) -> None:
        self.endpoints, self.lease = endpoints, lease
        self.sent = 0
        self.last_ttl: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> KeepAlive:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            base = self.endpoints[i % len(self.endpoints)]
            try:
                resp = requests.post(
                    f"{base}/v3/lease/keepalive", json={"ID": self.lease}, timeout=5
                )
            except requests.RequestException:
                i += 1  # a dead node: try the next one at once
                continue
            if resp.status_code == 200:
                self.sent += 1
                self.last_ttl = int(resp.json()["result"].get("TTL", 0))
                self._stop.wait(BEAT)
            else:
                i += 1
                self._stop.wait(0.05)

    def wait_sent(self, count: int) -> None:
        target = self.sent + count
        wait_for(f"{count} keep-alives", lambda: self.sent >= target)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def test_grant_attach_time_to_live_list_keepalive_revoke(cluster: Cluster) -> None:
    base = follower(cluster)
    lease = grant(base, 300)
    other = grant(base, 30)
    rev = attach(base, lease, ["rv/b", "rv/a"])
    ttl = ok(f"{base}/v3/lease/timetolive", {"ID": lease, "keys": True})
    assert ttl["ID"] == str(lease) and ttl["grantedTTL"] == "300"
    assert 0 < int(ttl["TTL"]) <= 300
    assert [text(k) for k in ttl["keys"]] == ["rv/a", "rv/b"]
    no_keys = ok(f"{base}/v3/kv/lease/timetolive", {"ID": lease})  # etcd 3.4's older path
    assert "keys" not in no_keys and no_keys["grantedTTL"] == "300"
    for path in ("/v3/lease/leases", "/v3/kv/lease/leases"):
        listed = [int(item["ID"]) for item in ok(base + path, {})["leases"]]
        assert listed.index(other) < listed.index(lease)  # soonest expiry first
    alive = post(f"{base}/v3/lease/keepalive", {"ID": lease})
    assert alive.status_code == 200 and alive.text.endswith("\n")  # one streamed message
    assert alive.json()["result"]["TTL"] == "300"
    revoked = ok(f"{base}/v3/kv/lease/revoke", {"ID": lease})
    assert revision_of(revoked) == rev + 1
    assert_vanished_at_one_revision(cluster.endpoints, "rv/", ["rv/a", "rv/b"], rev)
    # A lease that is gone: revoke is NOT_FOUND; keep-alive and time-to-live say so in a 200.
    again = post(f"{base}/v3/lease/revoke", {"ID": lease})
    assert again.status_code == 404 and again.json()["code"] == 5, again.text
    gone = post(f"{base}/v3/lease/keepalive", {"ID": lease})
    assert gone.status_code == 200 and "TTL" not in gone.json()["result"]
    assert ok(f"{base}/v3/lease/timetolive", {"ID": lease})["TTL"] == "-1"
    put = post(f"{base}/v3/kv/put", {"key": b64("rv/c"), "value": b64("v"), "lease": lease})
    assert put.status_code == 404 and put.json()["code"] == 5  # no attaching to a gone lease
    ok(f"{base}/v3/lease/revoke", {"ID": other})


def test_a_short_ttl_is_raised_and_bad_requests_are_refused(cluster: Cluster) -> None:
    base = follower(cluster)
    short = ok(f"{base}/v3/lease/grant", {"TTL": 1})
    assert short["TTL"] == "2"  # 1.5 election timeouts (1 s), rounded up, as etcd does
    ok(f"{base}/v3/lease/revoke", {"ID": short["ID"]})
    chosen = ok(f"{base}/v3/lease/grant", {"TTL": 60, "ID": "77"})
    assert chosen["ID"] == "77"
    taken = post(f"{base}/v3/lease/grant", {"TTL": 60, "ID": 77})
    assert taken.json()["code"] == 9 and "exists" in taken.json()["message"]  # FAILED_PRECONDITION
    ok(f"{base}/v3/lease/revoke", {"ID": 77})
    bad = post(f"{base}/v3/lease/keepalive", {"ID": "seven"})
    assert bad.status_code == 400 and bad.json()["code"] == 3


def test_keys_stay_while_kept_alive_and_vanish_when_keepalives_stop(cluster: Cluster) -> None:
    base = follower(cluster)
    lease = grant(base, TTL)
    keys = ["ka/1", "ka/2", "ka/3"]
    rev = attach(base, lease, keys)
    with KeepAlive(cluster.endpoints, lease) as beats:
        beats.wait_sent(int(3 * TTL / BEAT))  # three TTLs' worth
        assert beats.last_ttl == TTL
        for node in cluster.endpoints:
            assert local_prefix(node, "ka/") == keys
    assert_vanished_at_one_revision(cluster.endpoints, "ka/", keys, rev)
    assert ok(f"{base}/v3/lease/timetolive", {"ID": lease})["TTL"] == "-1"


class Etcd3gwRefresher:
    """etcd3gw's `lease.refresh()` every BEAT from a thread, as an application
    keeping its lease would; an error (the node waiting for a new leader) is
    retried at once, as such an application would."""

    def __init__(self, lease: Any) -> None:
        self.lease = lease
        self.refreshed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Etcd3gwRefresher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ttl = self.lease.refresh()
            except Exception:  # etcd3gw raises its own and requests' errors
                self._stop.wait(0.05)
                continue
            assert ttl == TTL, f"refresh answered TTL {ttl}: the lease expired"
            self.refreshed += 1
            self._stop.wait(BEAT)

    def wait_refreshed(self, count: int) -> None:
        target = self.refreshed + count
        wait_for(f"{count} etcd3gw refreshes", lambda: self.refreshed >= target)


def test_a_lease_kept_alive_survives_a_leader_kill() -> None:
    """Two leases, one kept by raw keep-alives that fail over between nodes, one
    by etcd3gw on a follower that outlives the leader: both keep their keys
    across the kill, and both lose them at one revision once keep-alives stop."""
    with Cluster(3) as c:
        old = c.wait_for_leader(DEADLINE)
        base = c.endpoints[(old + 1) % 3]
        lease = grant(base, TTL)
        keys = ["fo/a", "fo/b"]
        rev = attach(base, lease, keys)
        parts = urlsplit(base)
        etcd = Etcd3Client(host=parts.hostname, port=parts.port, timeout=DEADLINE)
        gw_lease = etcd.lease(ttl=TTL)
        gw_keys = ["gw/a", "gw/b"]
        for key in gw_keys:
            assert etcd.put(key, "v", lease=gw_lease) is True
        gw_rev = revision_of(local_range(base, "gw/a"))
        with KeepAlive(c.endpoints, lease) as beats, Etcd3gwRefresher(gw_lease) as refresher:
            beats.wait_sent(2)
            refresher.wait_refreshed(2)
            c.kill(old)
            c.wait_for_leader(DEADLINE, exclude=old)
            # The new leader extended the leases; keep-alives reach it: over
            # two TTLs after the failover, the keys are still everywhere.
            beats.wait_sent(int(2 * TTL / BEAT))
            refresher.wait_refreshed(int(2 * TTL / BEAT))
            live = [e for i, e in enumerate(c.endpoints) if i != old]
            for node in live:
                assert local_prefix(node, "fo/") == keys
                assert local_prefix(node, "gw/") == gw_keys
            assert int(ok(f"{base}/v3/lease/timetolive", {"ID": lease})["TTL"]) > 0
            assert sorted(gw_lease.keys()) == [k.encode() for k in gw_keys]
        assert_vanished_at_one_revision(live, "fo/", keys, rev)
        assert_vanished_at_one_revision(live, "gw/", gw_keys, gw_rev)
        assert gw_lease.ttl() == -1


def test_etcd3gw_lease_refresh_and_expiry(cluster: Cluster) -> None:
    parts = urlsplit(follower(cluster))
    etcd = Etcd3Client(host=parts.hostname, port=parts.port, timeout=DEADLINE)
    lease = etcd.lease(ttl=TTL)
    assert etcd.put("gw/a", "1", lease=lease) is True
    assert etcd.put("gw/b", "2", lease=lease) is True
    assert sorted(lease.keys()) == [b"gw/a", b"gw/b"]
    deadline = time.monotonic() + 2 * TTL
    while time.monotonic() < deadline:  # two TTLs of refreshes
        assert lease.refresh() == TTL
        time.sleep(BEAT)
    assert etcd.get("gw/a") == [b"1"] and 0 <= lease.ttl() <= TTL
    wait_for("the lease's keys to expire", lambda: etcd.get_prefix("gw/") == [])
    assert lease.ttl() == -1 and lease.refresh() == -1
    other = etcd.lease(ttl=60)
    etcd.put("gw/c", "3", lease=other)
    assert other.revoke() is True
    assert etcd.get("gw/c") == []
