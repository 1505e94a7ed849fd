"""GET /metrics (Prometheus' text format, etcd's names) and GET /health, on real nodes.

One 3-node cluster on disk storage (so the WAL really fsyncs) serves every
test of the module; a test that kills or isolates a node brings it back
before it returns.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kvcluster.cluster import Cluster

pytestmark = pytest.mark.integration

DEADLINE = 60.0  # generous for a busy 2-core machine; the tests wait for conditions
SAVES = "etcd_debugging_snap_save_total_duration_seconds_count"
SNAPSHOT_EVERY = 25  # entries: the puts below make every node save snapshots
NO_LEADER = {"health": "false", "reason": "RAFT NO LEADER"}  # etcd's words


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3, storage="disk", snapshot_every=SNAPSHOT_EVERY) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def scrape(c: Cluster, i: int) -> dict[str, float]:
    """Node i's /metrics, parsed by prometheus_client's own parser: {sample: value},
    a sample named with its labels as Prometheus shows it (name{a="b"})."""
    r = requests.get(f"{c.endpoints[i]}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def health(c: Cluster, i: int) -> tuple[int, dict[str, str]]:
    r = requests.get(f"{c.endpoints[i]}/health", timeout=10)
    return r.status_code, r.json()


def test_metrics_parse_and_carry_etcds_names(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    with cluster.client() as client:
        client.put("metrics/a", "1")
        assert client.get("metrics/a") == "1"
    for i in range(3):
        m = scrape(cluster, i)
        assert m["etcd_server_has_leader"] == 1
        assert m["etcd_server_is_leader"] == (1 if i == leader else 0)
        assert m[f'etcd_server_id{{server_id="{cluster.nodes[i].name}"}}'] == 1
        assert m["etcd_server_leader_changes_seen_total"] >= 1
        assert m["kvcluster_raft_term"] >= 1
        assert m["etcd_server_proposals_committed_total"] == m["kvcluster_raft_commit_index"]
        assert m["etcd_server_proposals_applied_total"] >= 1
        assert m["etcd_disk_wal_fsync_duration_seconds_count"] >= 1
        # Heartbeats go from the leader to each follower, and their answers back.
        if i == leader:
            others = [h.name for h in cluster.nodes if h.index != i]
        else:
            others = [cluster.nodes[leader].name]
        for name in others:
            assert m[f'etcd_network_peer_sent_bytes_total{{To="{name}"}}'] > 0
            assert m[f'etcd_network_peer_received_bytes_total{{From="{name}"}}'] > 0
        assert m['kvcluster_http_connections{kind="peer"}'] >= 1
    m = scrape(cluster, leader)
    assert m['kvcluster_http_requests_total{method="GET",route="/metrics",status="200"}'] >= 1
    # The leader times its heartbeats' round trips to each follower.
    for h in cluster.nodes:
        if h.index != leader:
            rtt = f'etcd_network_peer_round_trip_time_seconds_count{{To="{h.name}"}}'
            cluster.wait_until(lambda rtt=rtt: scrape(cluster, leader).get(rtt, 0) > 0, DEADLINE)


def test_puts_move_proposals_committed_fsyncs_and_snapshot_saves(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    before_all = [scrape(cluster, i) for i in range(3)]
    before = before_all[leader]
    with cluster.client() as client:
        for n in range(2 * SNAPSHOT_EVERY):
            client.put(f"metrics/p{n}", str(n))
    after = scrape(cluster, leader)
    committed = "etcd_server_proposals_committed_total"
    assert after[committed] >= before[committed] + 2 * SNAPSHOT_EVERY
    fsyncs = "etcd_disk_wal_fsync_duration_seconds_count"
    assert after[fsyncs] > before[fsyncs]
    assert after["etcd_disk_wal_fsync_duration_seconds_sum"] > 0
    put = 'kvcluster_http_requests_total{method="PUT",route="/v1/kv/{key}",status="200"}'
    assert after.get(put, 0) >= before.get(put, 0)  # puts may go to any node
    total = sum(scrape(cluster, i).get(put, 0) for i in range(3))
    assert total >= 2 * SNAPSHOT_EVERY
    # Every node applies what is committed (followers learn the commit index later).
    for i in range(3):
        cluster.wait_until(
            lambda i=i: (
                scrape(cluster, i)["etcd_server_proposals_applied_total"] >= after[committed]
            ),
            DEADLINE,
            f"node {i} never applied index {after[committed]}",
        )
        # ...and saves a snapshot every SNAPSHOT_EVERY entries (in a worker thread).
        cluster.wait_until(
            lambda i=i: scrape(cluster, i)[SAVES] > before_all[i][SAVES],
            DEADLINE,
            f"node {i} saved no snapshot",
        )


def test_reads_are_counted_by_mode(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    url = f"{cluster.endpoints[leader]}/v1/kv/metrics/r"
    before = scrape(cluster, leader)
    for query in ("", "?consistency=serializable"):
        requests.get(url + query, timeout=10)
    after = scrape(cluster, leader)
    for mode in (cluster.read_mode, "serializable"):
        name = f'kvcluster_reads_total{{mode="{mode}"}}'
        assert after[name] >= before.get(name, 0) + 1


def test_killing_the_leader_counts_a_leader_change_on_the_survivors(cluster: Cluster) -> None:
    old = cluster.wait_for_leader(DEADLINE)
    survivors = [i for i in range(3) if i != old]
    seen = {i: scrape(cluster, i)["etcd_server_leader_changes_seen_total"] for i in survivors}
    cluster.kill(old)
    try:
        cluster.wait_for_leader(DEADLINE, exclude=old)
        for i in survivors:
            cluster.wait_until(
                lambda i=i: scrape(cluster, i)["etcd_server_leader_changes_seen_total"] > seen[i],
                DEADLINE,
                f"node {i} never counted the new leader",
            )
    finally:
        cluster.restart(old)
    cluster.wait_until(lambda: cluster.node_status(old) is not None, DEADLINE, "no restart")
    cluster.wait_for_leader(DEADLINE)


def test_health_is_ok_with_a_leader_and_not_on_a_node_cut_off(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    for i in range(3):
        cluster.wait_until(lambda i=i: health(cluster, i)[0] == 200, DEADLINE, f"node {i}")
        assert health(cluster, i)[1]["health"] == "true"
    follower = next(i for i in range(3) if i != leader)
    cluster.isolate(follower)
    try:
        # At first its reads go unconfirmed (503, a read error); after an
        # election timeout it campaigns and knows no leader.
        _, body = cluster.wait_until(
            lambda: (h := health(cluster, follower))[0] == 503 and h,
            DEADLINE,
            "the cut-off node kept saying it is healthy",
        )
        assert body["health"] == "false" and body["reason"]
        cluster.wait_until(
            lambda: health(cluster, follower) == (503, NO_LEADER),
            DEADLINE,
            "the cut-off node never said it has no leader",
        )
        for i in range(3):
            if i != follower:  # the majority still has its leader and commits
                assert health(cluster, i)[0] == 200
        # A write there cannot be committed: a failed proposal.
        failed = scrape(cluster, follower)["etcd_server_proposals_failed_total"]
        r = requests.put(
            f"{cluster.endpoints[follower]}/v1/kv/metrics/lost", json={"value": "x"}, timeout=60
        )
        assert r.status_code >= 500
        assert scrape(cluster, follower)["etcd_server_proposals_failed_total"] == failed + 1
    finally:
        cluster.heal()
    cluster.wait_until(lambda: health(cluster, follower)[0] == 200, DEADLINE, "not healed")


def test_metrics_and_health_take_no_client_input(cluster: Cluster) -> None:
    url = cluster.endpoints[0]
    assert requests.post(f"{url}/metrics", timeout=10).status_code == 405
    assert requests.put(f"{url}/health", timeout=10).status_code == 405
    r = requests.get(f"{url}/metrics", data=b"x" * 100, timeout=10)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    # A query string is not read: the same page as without one.
    r = requests.get(f"{url}/metrics?name[]=etcd_server_has_leader", timeout=10)
    assert r.status_code == 200 and "kvcluster_raft_term" in r.text
