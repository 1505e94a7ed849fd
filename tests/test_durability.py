"""Durability with real processes: disk storage, SIGKILL of every node, snapshots."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvcluster.client import Client
from kvcluster.cluster import Cluster
from kvcluster.errors import KvClusterError

pytestmark = pytest.mark.integration

DEADLINE = 60.0


class Writers:
    """Concurrent clients, each writing its own keys in sequence, so that per key
    the order of writes is known: the stored value may be newer than the last
    acknowledged one (a write in flight at a crash may commit), never older."""

    def __init__(self, cluster: Cluster, count: int, first_seq: int) -> None:
        self.cluster = cluster
        self.sent: dict[str, set[int]] = {}  # key -> every seq sent
        self.acknowledged: dict[str, int] = {}  # key -> highest seq acknowledged
        self.next_seq = first_seq
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(count)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, w: int) -> None:
        rng = random.Random(w)
        client = self.cluster.client(timeout=2.0)
        while not self.stop.is_set():
            key = f"crash/w{w}/{rng.randrange(15):02d}"
            with self.lock:
                seq = self.next_seq
                self.next_seq += 1
                self.sent.setdefault(key, set()).add(seq)
            try:
                client.put(key, str(seq))
            except KvClusterError:
                continue
            with self.lock:
                self.acknowledged[key] = seq
        client.close()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(DEADLINE)


@pytest.fixture
def disk_cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(3, storage="disk", data_dir=tmp_path, snapshot_every=300) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def test_every_acknowledged_write_survives_killing_every_node(disk_cluster: Cluster) -> None:
    c = disk_cluster
    rng = random.Random(7)
    acknowledged: dict[str, int] = {}
    sent: dict[str, set[int]] = {}
    seq = 0
    for _ in range(3):
        writers = Writers(c, 3, first_seq=seq)
        writers.start()
        # Let writes flow, then kill every node, one after another, mid-stream.
        target = 10 + rng.randrange(30)
        c.wait_until(lambda w=writers, n=target: len(w.acknowledged) >= n, DEADLINE)
        for i in rng.sample(range(3), 3):
            c.kill(i)
        writers.finish()
        seq = writers.next_seq
        acknowledged |= writers.acknowledged
        for key, seqs in writers.sent.items():
            sent.setdefault(key, set()).update(seqs)
        for i in range(3):
            c.restart(i)
        c.wait_for_leader(DEADLINE)
        with c.client(timeout=DEADLINE) as client:
            stored = {k: int(v) for k, v in client.list("crash/").items()}
        never_sent = {k: v for k, v in stored.items() if v not in sent.get(k, ())}
        assert not never_sent, f"values that were never sent: {never_sent}"
        lost = {k: v for k, v in acknowledged.items() if stored.get(k, -1) < v}
        assert not lost, f"acknowledged writes lost (key: last acknowledged seq): {lost}"


def test_acknowledged_values_survive_a_whole_cluster_restart(disk_cluster: Cluster) -> None:
    c = disk_cluster
    with c.client(timeout=DEADLINE) as client:
        expected = {f"keep/{k:04d}": f"value {k}" for k in range(700)}
        for key, value in expected.items():
            client.put(key, value)
    for i in range(3):
        c.kill(i)
    for i in range(3):
        c.restart(i)
    with c.client(timeout=DEADLINE) as client:
        assert client.list("keep/") == expected
    segments = [len(list((c.data_dir / h.name / "wal").iterdir())) for h in c.nodes]
    assert max(segments) <= 4, f"compaction did not bound the log: {segments}"


def test_a_follower_behind_the_compacted_log_gets_a_snapshot() -> None:
    # Memory storage: the restarted follower comes back empty, and the leader
    # has compacted its log long past where the follower would need to start.
    with Cluster(3, snapshot_every=100, snapshot_keep=10) as c:
        leader = c.wait_for_leader(DEADLINE)
        follower = (leader + 1) % 3
        c.kill(follower)
        with c.client(timeout=DEADLINE) as client:
            for k in range(400):
                client.put(f"snap/{k:03d}", str(k))
        c.restart(follower)
        with Client([c.endpoints[follower]], timeout=DEADLINE, prefer_leader=False) as one:
            c.wait_until(
                lambda: one.get("snap/399", consistency="serializable") == "399",
                DEADLINE,
                "the follower never caught up",
            )
            assert one.list("snap/", consistency="serializable") == {
                f"snap/{k:03d}": str(k) for k in range(400)
            }
        installed = c.events().query("event == 'snapshot' and node == @c.nodes[@follower].name")
        assert len(installed) >= 1
