"""The store's quota on a real node: over it, writes that add data get a clear
refusal on both APIs (/v1: 409 no_space; /v3: etcd's "database space
exceeded"), and deleting keys and compacting the history make room again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from etcd_helpers import b64

from kvcluster import Client, Cluster
from kvcluster.errors import KvClusterError

pytestmark = pytest.mark.integration

DEADLINE = 60.0
QUOTA = 1 << 16


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    with Cluster(1, quota_bytes=QUOTA, history_keep=0) as c:
        c.wait_for_leader(DEADLINE)
        yield c.endpoints[0]


def test_a_full_store_refuses_writes_and_takes_them_again_once_emptied(node: str) -> None:
    client = Client([node], timeout=DEADLINE)
    big = "v" * 4096
    written = 0
    with pytest.raises(KvClusterError, match="over its quota") as refused:
        for i in range(2 * QUOTA // 4096):
            client.put(f"q/{i}", big)
            written += 1
    assert "--quota-bytes" in str(refused.value)
    assert 0 < written < 2 * QUOTA // 4096
    resp = requests.put(f"{node}/v1/kv/another", json={"value": "x"}, timeout=DEADLINE)
    assert resp.status_code == 409 and resp.json()["error"] == "no_space"
    v3 = requests.post(
        f"{node}/v3/kv/put", json={"key": b64("another"), "value": b64("x")}, timeout=DEADLINE
    )
    assert v3.status_code == 429
    assert v3.json()["message"] == "etcdserver: mvcc: database space exceeded"
    with pytest.raises(KvClusterError, match="database space exceeded") as by_cas:
        client.cas("another", None, "x")  # through /v3/kv/txn: refused, not retried
    assert by_cas.value.known_outcome
    # Deleting frees the rows, compacting the history: then writes go through again.
    gone = requests.post(
        f"{node}/v3/kv/deleterange",
        json={"key": b64("q/"), "range_end": b64("q0")},
        timeout=DEADLINE,
    ).json()
    assert int(gone["deleted"]) == written
    revision = int(gone["header"]["revision"])
    compacted = requests.post(
        f"{node}/v3/kv/compaction", json={"revision": revision}, timeout=DEADLINE
    )
    assert compacted.status_code == 200, compacted.text
    assert client.put("another", "x") > revision
