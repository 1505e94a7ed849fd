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
