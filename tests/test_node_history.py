"""The leader compacts the store's history through the log (history_keep)."""

from __future__ import annotations

from kvcluster.node import COMMAND, Answer, NodeOptions, Request
from kvcluster.raft import RaftOptions
from kvcluster.sim.net import RaftNet

OPTIONS = RaftOptions(election_timeout=(0.5, 1.0), heartbeat_interval=0.1)


def test_history_is_compacted_to_the_last_history_keep_revisions_on_every_node() -> None:
    net = RaftNet(3, options=OPTIONS, node_options=NodeOptions(snapshot_every=0, history_keep=5))
    answers: dict[int, Answer] = {}
    net.reply_to = lambda wire, answer: answers.__setitem__(wire, answer)
    net.elect("n1")
    for i in range(1, 31):
        put = {"op": "put", "key": f"k{i % 3}", "value": str(i)}
        net.submit("n1", Request(0, COMMAND, payload=put, wire=i))
        assert net.run_until(lambda i=i: i in answers, 5.0)
        assert answers[i].status == 200
    net.advance(1.0)
    kvs = [net.servers[n].kv for n in ("n1", "n2", "n3")]
    assert all(kv.revision == 30 for kv in kvs)
    # Compacted at most twice the window behind, never closer than the window.
    assert all(20 <= kv.compacted <= 25 for kv in kvs), [kv.compacted for kv in kvs]
    assert len({kv.compacted for kv in kvs}) == 1  # the same, through the log
    assert all(kv.history_size <= 10 for kv in kvs)
    applied = [e.data for e in net.applied["n2"] if isinstance(e.data, dict)]
    compactions = [c["revision"] for c in applied if c.get("op") == "compact"]
    assert compactions == sorted(set(compactions)) and len(compactions) >= 4  # one at a time


def test_history_keep_0_never_compacts() -> None:
    net = RaftNet(3, options=OPTIONS, node_options=NodeOptions(snapshot_every=0, history_keep=0))
    net.elect("n1")
    for i in range(1, 31):
        net.submit("n1", Request(0, COMMAND, payload={"op": "put", "key": "k", "value": str(i)}))
    net.advance(2.0)
    assert net.servers["n1"].kv.revision == 30 and net.servers["n1"].kv.compacted == 0


def _run(net: RaftNet, answers: dict[int, Answer], wire: int, payload: dict[str, object]) -> Answer:
    net.submit("n1", Request(0, COMMAND, payload=payload, wire=wire))
    assert net.run_until(lambda: wire in answers, 5.0)
    return answers.pop(wire)


def test_over_its_quota_the_leader_refuses_writes_that_add_data_but_not_deletes() -> None:
    quota = 1 << 16
    opts = NodeOptions(snapshot_every=0, history_keep=0, quota_bytes=quota)
    net = RaftNet(3, options=OPTIONS, node_options=opts)
    answers: dict[int, Answer] = {}
    net.reply_to = lambda wire, answer: answers.__setitem__(wire, answer)
    net.elect("n1")
    big = "v" * 4096
    wire = 0
    while net.servers["n1"].kv.bytes_used < quota:
        wire += 1
        assert (
            _run(net, answers, wire, {"op": "put", "key": f"k{wire}", "value": big}).status == 200
        )
    used = net.servers["n1"].kv.bytes_used
    refused = _run(net, answers, wire + 1, {"op": "put", "key": "one-more", "value": "x"})
    assert refused.status == 409 and refused.body is not None
    assert refused.body["error"] == "no_space" and "--quota-bytes" in refused.body["message"]
    put_in_txn = {"op": "txn", "success": [{"request_put": {"key": "t", "value": "x"}}]}
    assert _run(net, answers, wire + 2, put_in_txn).status == 409
    # Deletes, a txn that only deletes, and compaction go through: a full store can be emptied.
    assert (
        _run(net, answers, wire + 3, {"op": "delete_range", "key": "k", "range_end": "l"}).status
        == 200
    )
    revision = net.servers["n1"].kv.revision
    assert _run(net, answers, wire + 4, {"op": "compact", "revision": revision}).status == 200
    kv = net.servers["n1"].kv
    assert kv.bytes_used < used and kv.revision == revision and kv.get("one-more") is None
    assert (
        _run(net, answers, wire + 5, {"op": "put", "key": "one-more", "value": "x"}).status == 200
    )
    net.advance(1.0)
    assert len({(s.kv.revision, s.kv.bytes_used) for s in net.servers.values()}) == 1


def test_large_values_are_compacted_by_bytes_before_history_keep_revisions() -> None:
    """history_keep 10,000 revisions of 4 KiB values would be 40 MiB; with a
    256 KiB quota the leader compacts once the history holds half of it, down
    to a quarter, and writes never stop."""
    quota = 1 << 18
    opts = NodeOptions(snapshot_every=0, history_keep=10_000, quota_bytes=quota)
    net = RaftNet(3, options=OPTIONS, node_options=opts)
    answers: dict[int, Answer] = {}
    net.reply_to = lambda wire, answer: answers.__setitem__(wire, answer)
    net.elect("n1")
    for wire in range(1, 301):  # 300 x 4 KiB over the same few keys: 1.2 MiB written
        put = {"op": "put", "key": f"k{wire % 4}", "value": str(wire % 10) * 4096}
        assert _run(net, answers, wire, put).status == 200
        assert net.servers["n1"].kv.history_bytes <= quota // 2 + 4 * 4100
    net.advance(1.0)
    kvs = [s.kv for s in net.servers.values()]
    assert all(kv.compacted > 0 for kv in kvs) and len({kv.compacted for kv in kvs}) == 1
    assert all(kv.bytes_used < quota for kv in kvs)
