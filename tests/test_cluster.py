"""Integration tests: real node processes started through `Cluster`.

Every 3-node scenario runs twice: on plain HTTP and with TLS on clients and
peers (`Cluster(tls=True)`, ids ending in "tls"): TLS must change nothing a
client or a fault can see."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import requests

from kvcluster.client import Client
from kvcluster.cluster import Cluster
from kvcluster.errors import KvClusterError

pytestmark = pytest.mark.integration

# Generous for a busy 2-core CI machine; tests wait for conditions, never sleep.
DEADLINE = 60.0


# The 3-node cluster again, with TLS on clients and peers.
TLS3 = pytest.param((3, True), id="3-tls")


@pytest.fixture
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    n, tls = request.param if isinstance(request.param, tuple) else (request.param, False)
    with Cluster(n, tls=tls) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def only(c: Cluster, i: int, timeout: float = DEADLINE) -> Client:
    """A client that talks to node i and nowhere else (it ignores leader hints)."""
    return Client(
        [c.endpoints[i]],
        timeout=timeout,
        prefer_leader=False,
        ca=c.ca_file,
        cert=c.cert_file,
        key=c.key_file,
    )


def https(c: Cluster) -> dict[str, object]:
    """What `requests` needs to call the cluster's nodes (nothing without TLS)."""
    return {"verify": c.ca_file} if c.tls else {}


def wait_for_value(c: Cluster, i: int, key: str, value: str | None) -> None:
    """Wait until node i's local (serializable) state shows key=value."""
    with only(c, i) as client:
        c.wait_until(
            lambda: client.get(key, consistency="serializable") == value,
            DEADLINE,
            f"node {i} never showed {key}={value!r}",
        )


@pytest.mark.parametrize("cluster", [1, 3, 5, TLS3], indirect=True)
def test_a_leader_is_elected_and_everyone_agrees(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    status = cluster.status()
    assert (status["role"] == "leader").sum() == 1
    assert status.loc[leader, "role"] == "leader"
    assert set(status["leader"]) == {cluster.nodes[leader].name}
    assert status["term"].nunique() == 1


@pytest.mark.parametrize("cluster", [1, 3, 5, TLS3], indirect=True)
def test_a_write_through_any_node_is_readable_through_every_node(cluster: Cluster) -> None:
    n = len(cluster.nodes)
    for i in range(n):
        with only(cluster, i) as c:
            c.put(f"from/{i}", f"written via node {i} ✓")
    for j in range(n):
        with only(cluster, j) as c:
            got = c.list("from/")
        assert got == {f"from/{i}": f"written via node {i} ✓" for i in range(n)}
    with only(cluster, n - 1) as c:
        assert c.delete("from/0") is True
        assert c.get("from/0") is None
        assert c.delete("from/0") is False


class Writer(threading.Thread):
    """Writes sequential keys and remembers exactly which were acknowledged."""

    def __init__(self, cluster: Cluster, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client = cluster.client(timeout=5.0)
        self.prefix = prefix
        self.acknowledged: dict[str, str] = {}
        self.failures = 0
        self.stop = threading.Event()
        self.progress = threading.Condition()

    def run(self) -> None:
        k = 0
        while not self.stop.is_set():
            key, value = f"{self.prefix}/{k:06d}", f"v{k}"
            try:
                self.client.put(key, value)
                with self.progress:
                    self.acknowledged[key] = value
                    self.progress.notify_all()
            except KvClusterError:
                self.failures += 1
            k += 1
        self.client.close()

    def wait_for(self, count: int) -> None:
        with self.progress:
            ok = self.progress.wait_for(lambda: len(self.acknowledged) >= count, DEADLINE)
        assert ok, f"only {len(self.acknowledged)} writes were acknowledged"

    def finish(self) -> dict[str, str]:
        self.stop.set()
        self.join(DEADLINE)
        return dict(self.acknowledged)


def assert_all_present(c: Cluster, acknowledged: dict[str, str], prefix: str) -> None:
    with c.client(timeout=DEADLINE) as client:
        stored = client.list(prefix + "/")
    missing = {k: v for k, v in acknowledged.items() if stored.get(k) != v}
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"


@pytest.mark.parametrize("cluster", [3, 5, TLS3], indirect=True)
def test_killing_the_leader_elects_a_new_one_and_loses_no_acknowledged_write(
    cluster: Cluster,
) -> None:
    old = cluster.wait_for_leader(DEADLINE)
    old_term = cluster.status().loc[old, "term"]
    writer = Writer(cluster, "kill")
    writer.start()
    writer.wait_for(20)
    cluster.kill(old)
    before_kill = len(writer.acknowledged)
    new = cluster.wait_for_leader(DEADLINE, exclude=old)
    writer.wait_for(before_kill + 20)  # writes flow again through the new leader
    acknowledged = writer.finish()
    assert new != old
    assert cluster.status().loc[new, "term"] > old_term
    assert_all_present(cluster, acknowledged, "kill")


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_follower_holds_a_write_for_the_next_leader_when_the_old_one_dies(tls: bool) -> None:
    """Sent to a follower just after the leader dies, a write waits for the
    election rather than failing: no 503 for the client to retry, no 504 from
    a pooled connection to the dead leader that looked alive."""
    with Cluster(3, election_timeout=(0.5, 1.0), tls=tls) as c:
        old = c.wait_for_leader(DEADLINE)
        follower = next(i for i in range(3) if i != old)
        url = f"{c.endpoints[follower]}/v1/kv/held"
        # A forwarded write leaves the follower with an idle connection to the leader.
        assert (
            requests.put(url, json={"value": "before"}, timeout=DEADLINE, **https(c)).status_code
            == 200
        )
        c.kill(old)
        resp = requests.put(url, json={"value": "after"}, timeout=DEADLINE, **https(c))
        assert resp.status_code == 200, resp.text
        new = c.wait_for_leader(DEADLINE, exclude=old)
        assert resp.headers["X-Kvcluster-Leader"] == c.endpoints[new]
        wait_for_value(c, new, "held", "after")


@pytest.mark.parametrize("cluster", [3, TLS3], indirect=True)
def test_a_paused_leader_is_replaced_then_steps_down_and_catches_up(cluster: Cluster) -> None:
    old = cluster.wait_for_leader(DEADLINE)
    cluster.pause(old)
    new = cluster.wait_for_leader(DEADLINE, exclude=old)
    with cluster.client(timeout=DEADLINE) as c:
        c.put("after-pause", "new leader")
    cluster.resume(old)
    new_name = cluster.nodes[new].name

    def stepped_down() -> bool:
        s = cluster.node_status(old)
        return s is not None and s["role"] == "follower" and s["leader"] == new_name

    cluster.wait_until(stepped_down, DEADLINE, "the resumed leader did not step down")
    wait_for_value(cluster, old, "after-pause", "new leader")


@pytest.mark.parametrize("cluster", [3, TLS3], indirect=True)
def test_a_follower_that_was_down_catches_up(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    follower = (leader + 1) % 3
    killed_at = cluster.kill(follower)
    assert cluster.kill(follower) >= killed_at  # already dead: nothing to kill, no mark
    with cluster.client(timeout=DEADLINE) as c:
        for k in range(50):
            c.put(f"missed/{k}", str(k))
    restarted_at = cluster.restart(follower)
    # The node cannot log its own crash: the cluster marks it in the timeline.
    marks = cluster.events().query("event == 'inject'")
    assert list(marks["action"]) == ["kill", "restart"]
    assert list(marks["node"]) == [cluster.nodes[follower].name] * 2
    assert list(marks["t"]) == [killed_at, restarted_at]
    wait_for_value(cluster, follower, "missed/49", "49")
    cluster.wait_until(
        lambda: (cluster.node_status(follower) or {}).get("voter") is True,
        DEADLINE,
        "the restarted follower was never promoted back to voter",
    )
    with only(cluster, follower) as c:
        assert c.list("missed/", consistency="serializable") == {
            f"missed/{k}": str(k) for k in range(50)
        }


@pytest.mark.parametrize("cluster", [3, TLS3], indirect=True)
def test_a_new_node_joins_through_a_follower(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    follower = (leader + 1) % 3
    with cluster.client(timeout=DEADLINE) as c:
        c.put("before-join", "yes")
    new = cluster.add_node(via=follower)
    cluster.wait_until(
        lambda: (cluster.node_status(new) or {}).get("voter") is True,
        DEADLINE,
        "the new node never became a voter",
    )
    wait_for_value(cluster, new, "before-join", "yes")
    joined = cluster.events().query("event == 'joined' and node == @cluster.nodes[@new].name")
    # It asked a follower, which redirected it (307) to the leader.
    assert list(joined["via"]) == [cluster.endpoints[leader]]
    members = cluster.node_status(leader)["members"]  # type: ignore[index]
    assert len(members) == 4 and all(m["voter"] for m in members.values())
    with only(cluster, new) as c:
        c.put("via-new-node", "works")
        assert c.get("via-new-node") == "works"


def removal_logged(cluster: Cluster, i: int) -> bool:
    log = (cluster.work_dir / f"{cluster.nodes[i].name}.log").read_text()
    return f"node {cluster.nodes[i].name} was removed from the cluster" in log


@pytest.mark.parametrize("cluster", [3, TLS3], indirect=True)
def test_members_are_removed_including_the_leader(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    follower = (leader + 1) % 3
    # Each exits by itself: the follower once told, the leader once it has
    # applied its own removal.
    assert cluster.remove_node(follower, exit_timeout=DEADLINE)
    assert removal_logged(cluster, follower)
    status = cluster.node_status(leader)
    assert status is not None and cluster.nodes[follower].name not in status["members"]
    with cluster.client(timeout=DEADLINE) as c:
        c.put("after-removal", "2 nodes")
    assert cluster.remove_node(leader, exit_timeout=DEADLINE)
    assert removal_logged(cluster, leader)
    last = 3 - leader - follower
    assert cluster.wait_for_leader(DEADLINE) == last
    with only(cluster, last) as c:
        c.put("alone", "1 node")
        assert c.get("after-removal") == "2 nodes"


@pytest.mark.parametrize("cluster", [4], indirect=True)
def test_a_removed_member_cut_off_learns_of_its_removal_and_exits(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    gone = (leader + 1) % 4
    cluster.isolate(gone)  # it cannot hear of the change while it is made
    assert not cluster.remove_node(gone, exit_timeout=None)
    handle = cluster.nodes[gone]
    status = cluster.node_status(gone)
    assert status is not None and status["role"] != "removed"
    with cluster.client(timeout=DEADLINE) as c:
        c.put("without", "it")
    cluster.heal()
    # Back in touch, it asks for votes; a member answers that it was removed.
    handle.process.join(DEADLINE)
    assert handle.process.exitcode == 0
    assert removal_logged(cluster, gone)
    exits = cluster.events().query("event == 'exit' and node == @handle.name")
    assert list(exits["reason"]) == ["removed"]
    # The other three go on, and the cluster still takes writes.
    rest = [i for i in range(4) if i != gone]
    assert cluster.wait_for_leader(DEADLINE) in rest
    with cluster.client(timeout=DEADLINE) as c:
        c.put("after", "exit")
        assert c.get("without") == "it"
    members = cluster.node_status(rest[0])["members"]  # type: ignore[index]
    assert sorted(members) == sorted(cluster.nodes[i].name for i in rest)


@pytest.mark.parametrize("cluster", [3, 5, TLS3], indirect=True)
def test_a_minority_cannot_commit_and_does_not_serve_stale_reads(cluster: Cluster) -> None:
    old = cluster.wait_for_leader(DEADLINE)
    with cluster.client(timeout=DEADLINE) as c:
        c.put("x", "before partition")
    wait_for_value(cluster, old, "x", "before partition")
    cluster.isolate(old)
    new = cluster.wait_for_leader(DEADLINE, exclude=old)
    with only(cluster, new) as c:
        c.put("x", "after partition")
    with only(cluster, old, timeout=3.0) as c:
        with pytest.raises(KvClusterError):
            c.put("minority-write", "must not commit")
        with pytest.raises(KvClusterError):
            c.get("x")  # linearizable: no leader can confirm it, so no answer
        # Only when asked for a possibly stale read does the minority answer.
        assert c.get("x", consistency="serializable") == "before partition"
    cluster.heal()
    wait_for_value(cluster, old, "x", "after partition")
    with cluster.client(timeout=DEADLINE) as c:
        assert c.get("minority-write") is None
        assert c.get("x") == "after partition"


@pytest.mark.parametrize("cluster", [3, TLS3], indirect=True)
def test_a_follower_catches_up_on_many_large_values(cluster: Cluster) -> None:
    # More than one peer request can carry: batches must be split by size.
    leader = cluster.wait_for_leader(DEADLINE)
    follower = (leader + 1) % 3
    cluster.kill(follower)
    big = {f"big/{k}": chr(0x41 + k) * 900_000 + "\u00e9" * 1000 for k in range(12)}
    with cluster.client(timeout=DEADLINE) as c:
        for key, value in big.items():
            c.put(key, value)
    cluster.restart(follower)
    wait_for_value(cluster, follower, "big/11", big["big/11"])
    with only(cluster, follower) as c:
        assert c.list("big/", consistency="serializable") == big


@pytest.mark.parametrize("cluster", [3, TLS3], indirect=True)
def test_a_one_way_cut_does_not_depose_the_leader(cluster: Cluster) -> None:
    # The follower stops hearing the leader, times out, and asks for pre-votes;
    # the others still hear the leader and refuse, so nothing changes.
    leader = cluster.wait_for_leader(DEADLINE)
    follower = (leader + 1) % 3
    term = cluster.status().loc[leader, "term"]
    cluster.cut(leader, follower)
    name = cluster.nodes[follower].name

    def campaigned() -> bool:
        events = cluster.events()
        return bool(((events["node"] == name) & (events["event"] == "campaign")).any())

    cluster.wait_until(campaigned, DEADLINE, "the cut-off follower never campaigned")
    with cluster.client(timeout=DEADLINE) as c:
        c.put("during-cut", "yes")
    assert cluster.leader() == leader
    assert cluster.status().loc[leader, "term"] == term
    cluster.heal()
    wait_for_value(cluster, follower, "during-cut", "yes")


@pytest.mark.parametrize("cluster", [3, TLS3], indirect=True)
def test_writes_commit_over_lossy_slow_links(cluster: Cluster) -> None:
    for i in range(3):
        for j in range(3):
            if i != j:
                cluster.drop(i, j, 0.2)
                cluster.delay(i, j, 0.01)
    with cluster.client(timeout=DEADLINE) as c:
        for k in range(30):
            c.put(f"lossy/{k}", str(k))
        assert c.list("lossy/") == {f"lossy/{k}": str(k) for k in range(30)}
    cluster.heal()
    for i in range(3):
        wait_for_value(cluster, i, "lossy/29", "29")


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_retry_of_a_write_still_on_its_way_waits_for_it_instead_of_appending_it_again(
    tls: bool,
) -> None:
    # Long timeouts: the isolated leader keeps leading (check-quorum gives it 3 s)
    # and the others do not elect another one before the partition heals.
    with Cluster(3, election_timeout=(3.0, 6.0), heartbeat_interval=0.1, tls=tls) as c:
        leader = c.wait_for_leader(DEADLINE)
        url = f"{c.endpoints[leader]}/v1/kv/retried"
        opened = requests.post(f"{c.endpoints[leader]}/v1/sessions", timeout=DEADLINE, **https(c))
        body = {"value": "once", "client_id": opened.json()["client_id"], "seq": 1}
        c.isolate(leader)  # it can append but not commit
        before = c.node_status(leader)["last_index"]
        for _attempt in range(3):  # a client that gives up before the commit, and retries
            with pytest.raises(requests.Timeout):
                requests.put(url, json=body, timeout=0.3, **https(c))
        assert c.node_status(leader)["last_index"] == before + 1
        c.heal()
        answer = requests.put(url, json=body, timeout=DEADLINE, **https(c))
        assert answer.status_code == 200, answer.text
        with c.client(timeout=DEADLINE) as client:
            assert client.get("retried") == "once"
