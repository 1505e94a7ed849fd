"""POST /v3/watch on real node processes: any node serves watches from what it applied.

The messages are read as etcd3gw reads them (requests, stream=True, one HTTP
chunk at a time), and each chunk must be exactly one JSON message ending in a
newline. The guarantees of kvcluster/node/watches.py are checked here end to
end: revision order with prev_kv and filters, history from a past revision,
the compacted error, and a client that loses its node (a killed leader) and
goes on at another one from the last revision it saw + 1, with no gap and no
duplicate. The last test uses etcd3gw's own watch and watch_prefix.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from etcd3gw.client import Etcd3Client
from etcd_helpers import b64, text

from kvcluster import Cluster
from kvcluster.node.watches import SCAN_BUDGET

pytestmark = pytest.mark.integration

DEADLINE = 60.0


def prefix(p: str) -> dict[str, str]:
    """A create_request's key and range_end for every key under `p`."""
    return {"key": b64(p), "range_end": b64(p[:-1] + chr(ord(p[-1]) + 1))}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def leader_and_follower(c: Cluster) -> tuple[str, str]:
    leader = c.wait_for_leader(DEADLINE)
    return c.endpoints[leader], c.endpoints[(leader + 1) % len(c.nodes)]


def post(bases: list[str], path: str, body: Any) -> dict[str, Any]:
    """POST to the first node that answers, retrying while the cluster has no leader
    (a 503 or a refused connection: certainly not applied)."""
    last = ""
    for _ in range(300):
        for base in bases:
            try:
                resp = requests.post(f"{base}{path}", json=body, timeout=DEADLINE)
            except requests.ConnectionError as exc:
                last = str(exc)
                continue
            if resp.status_code == 503:
                last = resp.text
                continue
            assert resp.status_code == 200, resp.text
            result: dict[str, Any] = resp.json()
            return result
        threading.Event().wait(0.05)  # between elections: try again shortly
    raise AssertionError(f"no node took {path}: {last}")


def put(bases: list[str], key: str, value: str) -> int:
    """Put; the revision it made."""
    answer = post(bases, "/v3/kv/put", {"key": b64(key), "value": b64(value)})
    return int(answer["header"]["revision"])


class Watch:
    """One watch stream, read chunk by chunk as etcd3gw reads it."""

    def __init__(self, base: str, *requests_: dict[str, Any]) -> None:
        body = "".join(json.dumps(r) for r in requests_)
        self.resp = requests.post(
            f"{base}/v3/watch", data=body, stream=True, timeout=(DEADLINE, DEADLINE)
        )
        assert self.resp.status_code == 200, self.resp.text
        assert self.resp.headers["transfer-encoding"] == "chunked"
        self.chunks = self.resp.iter_content(chunk_size=None)

    def next(self) -> dict[str, Any]:
        chunk = next(self.chunks)
        assert chunk.endswith(b"\n") and chunk.count(b"\n") == 1, chunk[:300]  # one per chunk
        result: dict[str, Any] = json.loads(chunk)["result"]
        return result

    def events_through(self, revision: int) -> list[tuple[dict[str, Any], int]]:
        """Events (each with its message's number) until one at `revision` or later."""
        out: list[tuple[dict[str, Any], int]] = []
        n = 0
        while not out or int(out[-1][0]["kv"]["mod_revision"]) < revision:
            message = self.next()
            assert "created" not in message and "canceled" not in message, message
            n += 1
            out += [(e, n) for e in message.get("events", [])]
        return out

    def close(self) -> None:
        self.resp.close()


def show(event: dict[str, Any]) -> tuple[str, str, str, int]:
    kv = event["kv"]
    return (
        event.get("type", "PUT"),
        text(kv["key"]),
        text(kv.get("value", "")),
        int(kv["mod_revision"]),
    )


def with_prev(event: dict[str, Any]) -> tuple[str, str, str, int, str | None]:
    prev = event.get("prev_kv")
    return (*show(event), text(prev.get("value", "")) if prev else None)


def test_a_watch_on_a_follower_sees_the_leader_s_writes_in_order(cluster: Cluster) -> None:
    leader, follower = leader_and_follower(cluster)
    w = Watch(follower, {"create_request": {**prefix("f/"), "prev_kv": True}})
    try:
        created = w.next()
        assert created["created"] is True and "watch_id" not in created  # the first id is 0
        r1 = put([leader], "f/a", "1")
        r2 = put([leader], "f/a", "2")
        put([leader], "other", "x")  # outside the range
        gone = post([leader], "/v3/kv/deleterange", {"key": b64("f/a")})
        r3 = int(gone["header"]["revision"])
        both = {
            "success": [
                {"request_put": {"key": b64("f/b"), "value": b64("3")}},
                {"request_put": {"key": b64("f/c"), "value": b64("4")}},
            ]
        }
        r4 = int(post([leader], "/v3/kv/txn", both)["header"]["revision"])
        got = w.events_through(r4)
        assert [show(e) for e, _ in got] == [
            ("PUT", "f/a", "1", r1),
            ("PUT", "f/a", "2", r2),
            ("DELETE", "f/a", "", r3),
            ("PUT", "f/b", "3", r4),
            ("PUT", "f/c", "4", r4),
        ]
        assert "prev_kv" not in got[0][0]  # created: nothing before it
        assert text(got[1][0]["prev_kv"]["value"]) == "1"
        assert text(got[2][0]["prev_kv"]["value"]) == "2"
        assert got[3][1] == got[4][1]  # one revision, one message
    finally:
        w.close()


def test_history_filters_progress_and_cancel_in_one_body(cluster: Cluster) -> None:
    leader, follower = leader_and_follower(cluster)
    first = put([leader], "h/k", "a")
    put([leader], "h/k", "b")
    post([leader], "/v3/kv/deleterange", {"key": b64("h/k")})
    last = put([leader], "h/k", "c")
    w = Watch(
        follower,
        {"create_request": {**prefix("h/"), "start_revision": first}},
        {"create_request": {**prefix("h/"), "start_revision": first, "filters": ["NOPUT"]}},
        {"create_request": {"key": b64("h/k"), "watch_id": 7}},
        {"cancel_request": {"watch_id": 7}},
        {"progress_request": {}},
    )
    try:
        answers = [w.next() for _ in range(5)]
        assert [a.get("watch_id", "0") for a in answers] == ["0", "1", "7", "7", "-1"]
        assert [a.get("created", False) for a in answers] == [True, True, True, False, False]
        assert answers[3]["canceled"] is True
        # The follower may not have applied the last put yet: then it waits for it.
        by_watch: dict[str, list[tuple[str, str, str, int]]] = {"0": [], "1": []}
        while len(by_watch["0"]) < 4 or len(by_watch["1"]) < 1:
            message = w.next()
            by_watch[message.get("watch_id", "0")] += [show(e) for e in message["events"]]
        assert [e[2] for e in by_watch["0"]] == ["a", "b", "", "c"]
        assert by_watch["0"][-1][3] == last
        assert [e[0] for e in by_watch["1"]] == ["DELETE"]  # NOPUT: the delete only
    finally:
        w.close()


def test_a_compacted_start_revision_is_etcd_s_compacted_answer(cluster: Cluster) -> None:
    leader, follower = leader_and_follower(cluster)
    old = put([leader], "c/k", "1")
    now = put([leader], "c/k", "2")
    post([leader], "/v3/kv/compaction", {"revision": now})
    # The follower applies the compaction a moment after the leader: wait for it
    # (a serializable read is answered from what the node itself applied).
    old_read = {"key": b64("c/k"), "revision": old, "serializable": True}
    for _ in range(1000):
        resp = requests.post(f"{follower}/v3/kv/range", json=old_read, timeout=DEADLINE)
        if resp.status_code == 400 and resp.json()["code"] == 11:
            break
        threading.Event().wait(0.01)
    else:
        raise AssertionError(f"the follower did not apply the compaction: {resp.text}")
    for base in (leader, follower):
        w = Watch(base, {"create_request": {"key": b64("c/k"), "start_revision": old}})
        try:
            assert w.next()["created"] is True
            compacted = w.next()
            assert compacted["canceled"] is True
            assert int(compacted["compact_revision"]) == now
            assert "revision" not in compacted["header"]  # as etcd leaves it out
        finally:
            w.close()


def test_a_watch_from_far_back_reads_a_long_history_in_steps(cluster: Cluster) -> None:
    """More history events than one scan step reads (SCAN_BUDGET): a watch on a
    key written before and after them, from that first write, gets both events
    (the steps in between find nothing for it and go on by themselves), and a
    watch on the bulk prefix gets every event once, in order."""
    leader, follower = leader_and_follower(cluster)
    first = put([leader], "far/key", "before")
    txns = 2 * SCAN_BUDGET // 128 + 2  # a step in the middle with nothing for `lone`
    for i in range(txns):
        ops = [{"request_put": {"key": b64(f"bulk/{k}"), "value": b64(str(i))}} for k in range(128)]
        post([leader], "/v3/kv/txn", {"success": ops})
    last = put([leader], "far/key", "after")
    lone = Watch(follower, {"create_request": {"key": b64("far/key"), "start_revision": first}})
    bulk = Watch(follower, {"create_request": {**prefix("bulk/"), "start_revision": first}})
    try:
        assert lone.next()["created"] and bulk.next()["created"]
        got = [show(e) for e, _ in lone.events_through(last)]
        assert got == [("PUT", "far/key", "before", first), ("PUT", "far/key", "after", last)]
        events = [show(e) for e, _ in bulk.events_through(last - 1)]
        assert len(events) == txns * 128
        assert [rev for *_, rev in events] == sorted(rev for *_, rev in events)
        assert {rev for *_, rev in events} == set(range(first + 1, last))
    finally:
        lone.close()
        bulk.close()


def test_a_bad_watch_body_is_a_400(cluster: Cluster) -> None:
    _, follower = leader_and_follower(cluster)
    resp = requests.post(f"{follower}/v3/watch", data=b"[1]", timeout=DEADLINE)
    assert resp.status_code == 400 and resp.json()["code"] == 3
    assert "transfer-encoding" not in resp.headers


def test_a_client_moving_to_another_node_after_a_leader_kill_sees_no_gap() -> None:
    """A watch on the leader; writes go on through whichever node answers while
    the leader is killed; the client reads its stream until it breaks, then
    watches at another node from the last revision it saw + 1. What it saw in
    all equals one watch over the whole history: no gap, no duplicate."""
    with Cluster(3) as c:
        leader = c.wait_for_leader(DEADLINE)
        others = [c.endpoints[i] for i in range(3) if i != leader]
        start = put(c.endpoints, "kill/0", "0")
        writes_done = threading.Event()
        failures: queue.Queue[BaseException] = queue.Queue()

        def writer() -> None:
            try:
                for i in range(1, 61):
                    put(others, f"kill/{i % 5}", str(i))
            except BaseException as exc:  # reported by the test
                failures.put(exc)
            finally:
                writes_done.set()

        w = Watch(c.endpoints[leader], {"create_request": {**prefix("kill/"), "prev_kv": True}})
        seen: list[tuple[str, str, str, int, str | None]] = []
        try:
            assert w.next()["created"] is True
            thread = threading.Thread(target=writer, daemon=True)
            thread.start()
            while len(seen) < 10:
                seen += [with_prev(e) for e in w.next().get("events", [])]
            c.kill(leader)
            with pytest.raises((requests.RequestException, StopIteration)):
                while True:  # what was on its way still counts: then the stream breaks
                    seen += [with_prev(e) for e in w.next().get("events", [])]
        finally:
            w.close()
        assert seen and seen[0][3] > start
        before_kill = len(seen)
        resume = {**prefix("kill/"), "prev_kv": True, "start_revision": seen[-1][3] + 1}
        w2 = Watch(others[1], {"create_request": resume})
        try:
            assert w2.next()["created"] is True
            assert writes_done.wait(DEADLINE * 2)
            thread.join(DEADLINE)
            assert failures.empty(), failures.get()
            final = put(others, "kill/end", "end")
            seen += [with_prev(e) for e, _ in w2.events_through(final)]
        finally:
            w2.close()
        everything = {**prefix("kill/"), "prev_kv": True, "start_revision": start + 1}
        whole = Watch(others[0], {"create_request": everything})
        try:
            assert whole.next()["created"] is True
            expected = [with_prev(e) for e, _ in whole.events_through(final)]
        finally:
            whole.close()
        revisions = [e[3] for e in seen]
        assert revisions == sorted(set(revisions))  # in order, none twice
        assert seen == expected  # and none missing
        assert {e[2] for e in seen} >= {str(i) for i in range(1, 61)}  # every write is in it
        assert before_kill < len(seen)  # and the second node sent some of it


def feed(events: Iterable[Any], into: queue.Queue[Any]) -> None:
    for event in events:  # until the watch is canceled
        into.put(event)


def test_etcd3gw_watch_and_watch_prefix_across_a_leader_kill() -> None:
    with Cluster(3) as c:
        leader = c.wait_for_leader(DEADLINE)
        follower = (leader + 1) % 3
        parts = urlsplit(c.endpoints[follower])
        assert parts.hostname and parts.port
        etcd = Etcd3Client(host=parts.hostname, port=parts.port, timeout=DEADLINE)
        events, cancel = etcd.watch_prefix("gw/")
        key_events, cancel_key = etcd.watch("gw/one", prev_kv=True)
        try:
            got: queue.Queue[Any] = queue.Queue()
            keyed: queue.Queue[Any] = queue.Queue()
            threading.Thread(target=feed, args=(events, got), daemon=True).start()
            threading.Thread(target=feed, args=(key_events, keyed), daemon=True).start()
            assert etcd.put("gw/one", "1") is True
            assert etcd.put("gw/two", "2") is True
            c.kill(leader)  # the follower's watches stay; writes go to the next leader
            c.wait_for_leader(DEADLINE, exclude=leader)
            put([c.endpoints[follower]], "gw/one", "3")  # (retried while there is no leader)
            post([c.endpoints[follower]], "/v3/kv/deleterange", {"key": b64("gw/two")})
            seen = [got.get(timeout=DEADLINE) for _ in range(4)]
            assert [(e["kv"]["key"], e["kv"].get("value")) for e in seen] == [
                (b"gw/one", b"1"),
                (b"gw/two", b"2"),
                (b"gw/one", b"3"),
                (b"gw/two", None),  # a delete: etcd shows the key alone
            ]
            assert seen[-1]["type"] == "DELETE"
            one = [keyed.get(timeout=DEADLINE) for _ in range(2)]
            assert [e["kv"]["value"] for e in one] == [b"1", b"3"]
            assert base64.b64decode(one[1]["prev_kv"]["value"]) == b"1"  # etcd3gw leaves it
            first = etcd.watch_once("gw/one", timeout=DEADLINE, start_revision=1)
            assert (first["kv"]["key"], first["kv"]["value"]) == (b"gw/one", b"1")
        finally:
            cancel()
            cancel_key()
