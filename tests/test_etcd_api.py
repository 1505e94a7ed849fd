"""etcd's v3 JSON gateway API served by real nodes: any node, the /v1 store.

The wire format itself is checked against captured etcd answers in
test_etcd_wire.py; these tests check the path through the node layer: a
follower relays writes to the leader, reads are linearizable unless asked
otherwise, the store's refusals come back as etcd's errors.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from etcd_helpers import b64, follower, post, text

from kvcluster import Cluster

pytestmark = pytest.mark.integration

DEADLINE = 60.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def test_put_range_txn_delete_through_a_follower(cluster: Cluster) -> None:
    base = follower(cluster)
    assert requests.get(f"{base}/version", timeout=DEADLINE).json()["etcdserver"] >= "3.4"
    put = post(f"{base}/v3/kv/put", {"key": b64("api/a"), "value": b64("1")})
    assert put.status_code == 200, put.text
    revision = int(put.json()["header"]["revision"])
    got = post(f"{base}/v3/kv/range", {"key": b64("api/a")}).json()
    assert [text(kv["value"]) for kv in got["kvs"]] == ["1"] and got["count"] == "1"
    cas = {
        "compare": [{"key": b64("api/a"), "target": "VALUE", "value": b64("1")}],
        "success": [{"request_put": {"key": b64("api/a"), "value": b64("2")}}],
        "failure": [{"request_range": {"key": b64("api/a")}}],
    }
    assert post(f"{base}/v3/kv/txn", cas).json()["succeeded"] is True
    assert post(f"{base}/v3/kv/txn", cas).json().get("succeeded", False) is False  # 2 != 1
    # The same key through /v1: one store.
    assert requests.get(f"{base}/v1/kv/api/a", timeout=DEADLINE).json()["value"] == "2"
    prefix = post(f"{base}/v3/kv/range", {"key": b64("api/"), "range_end": b64("api0")}).json()
    assert [text(kv["key"]) for kv in prefix["kvs"]] == ["api/a"]
    old = post(f"{base}/v3/kv/range", {"key": b64("api/a"), "revision": revision}).json()
    assert [text(kv["value"]) for kv in old["kvs"]] == ["1"]  # history: as of that revision
    gone = post(f"{base}/v3/kv/deleterange", {"key": b64("api/a"), "prev_kv": True}).json()
    assert gone["deleted"] == "1" and text(gone["prev_kvs"][0]["value"]) == "2"


def test_refusals_are_etcds_errors(cluster: Cluster) -> None:
    base = follower(cluster)
    bad = requests.post(f"{base}/v3/kv/put", data=b"[1, 2]", timeout=DEADLINE)
    assert bad.status_code == 400 and bad.json()["code"] == 3
    post(f"{base}/v3/kv/put", {"key": b64("api/c"), "value": b64("x")})
    rev = int(
        post(f"{base}/v3/kv/put", {"key": b64("api/c"), "value": b64("y")}).json()["header"][
            "revision"
        ]
    )
    assert post(f"{base}/v3/kv/compaction", {"revision": rev}).status_code == 200
    old = post(f"{base}/v3/kv/range", {"key": b64("api/c"), "revision": rev - 1})
    assert old.status_code == 400 and old.json()["code"] == 11, old.text
    future = post(f"{base}/v3/kv/range", {"key": b64("api/c"), "revision": rev + 1000})
    assert future.json()["code"] == 11 and "future" in future.json()["message"]


def test_cluster_routes_name_every_member(cluster: Cluster) -> None:
    base = follower(cluster)
    members = post(f"{base}/v3/cluster/member/list", {}).json()["members"]
    assert sorted(m["name"] for m in members) == ["n0", "n1", "n2"]
    assert {m["clientURLs"][0] for m in members} == set(cluster.endpoints)
    status = post(f"{base}/v3/maintenance/status", {}).json()
    assert status["leader"] and status["version"] and status["header"]["cluster_id"]
