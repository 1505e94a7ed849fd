"""The Client's etcd v3 calls (txn/cas, leases, watch) on real processes.

The calls that mean the same thing everywhere run twice: against a 3-node
kvcluster and against a real etcd 3.4 (the same code, the same assertions).
The faults are kvcluster's only: a CAS whose answer is lost (its node paused
while it is in flight) raises OutcomeUnknown and is not sent again; a watch
whose node is killed goes on at another node with no gap and no duplicate.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from etcd_helpers import DEADLINE, b64
from served import free_port
from test_etcd3gw_suite import PortRace, etcd_server

from kvcluster import Cluster
from kvcluster.client import Client, Compare, Delete, Get, Put, Txn
from kvcluster.errors import Compacted, KvClusterError, OutcomeUnknown, RequestError, Unavailable

pytestmark = pytest.mark.integration

Connect = Callable[..., Client]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        c.wait_for_leader(DEADLINE)
        yield c


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A one-member etcd 3.4 (test_etcd3gw_suite's), as a base URL."""
    tmp = tmp_path_factory.mktemp("etcd")
    for attempt in range(5):
        try:
            with etcd_server(tmp / f"data-{attempt}") as port:
                yield f"http://127.0.0.1:{port}"
            return
        except PortRace:
            continue
    raise AssertionError("five free ports in a row were taken before etcd could bind them")


@pytest.fixture(params=["kvcluster", "etcd"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """Clients of a 3-node kvcluster, or of etcd 3.4: the same calls must work on both."""
    if request.param == "kvcluster":
        c: Cluster = request.getfixturevalue("cluster")
        c.wait_for_leader(DEADLINE)
        endpoints = c.endpoints
    else:
        endpoints = [request.getfixturevalue("etcd")]
    made: list[Client] = []

    def make(**kwargs: object) -> Client:
        kwargs.setdefault("timeout", DEADLINE)
        client = Client(endpoints, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def unique(name: str) -> str:
    """A key no other test (or earlier run against the same etcd) uses."""
    return f"{name}/{time.monotonic_ns()}"


# /v1's get, put and delete are kvcluster's own: through /v3 they work on etcd too.
def put(c: Client, key: str, value: str) -> int:
    return c.txn([], [Put(key, value)]).revision


def get(c: Client, key: str) -> str | None:
    kvs = c.txn([], [Get(key)]).responses[0].kvs
    return kvs[0].value if kvs else None


def delete(c: Client, key: str) -> int:
    return c.txn([], [Delete(key)]).revision


def compact(base: str, revision: int) -> None:
    resp = requests.post(f"{base}/v3/kv/compaction", json={"revision": revision}, timeout=DEADLINE)
    assert resp.status_code == 200, resp.text


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)  # polling a condition, not assuming one


# ---------------------------------------------------------------------- txn and cas


def test_cas_swaps_only_what_it_expects(connect: Connect) -> None:
    c = connect()
    key = unique("cas")
    assert c.cas(key, None, "one") is True  # absent, as expected: created
    assert c.cas(key, None, "two") is False  # it exists now
    assert c.cas(key, "nope", "two") is False  # holds something else
    assert get(c, key) == "one"
    assert c.cas(key, "one", "two") is True
    result = c.txn([Compare(key, "value", "==", "two")], [], [Get(key)])
    assert result.succeeded and result.responses == ()
    missing = unique("cas-missing")
    assert c.cas(missing, "", "x") is False  # a value compare on a missing key fails, as in etcd


def test_txn_branches_and_responses(connect: Connect) -> None:
    c = connect()
    key, other = unique("txn"), unique("txn-other")
    c.cas(key, None, "a")
    result = c.txn(
        [Compare(key, "version", "==", 1), Compare(key, "mod", ">", 0)],
        [Put(key, "b", prev_kv=True), Put(other, "x"), Get(key)],
        [Get(key)],
    )
    assert result.succeeded
    put, _, read = result.responses
    assert (put.kind, [kv.value for kv in put.kvs]) == ("put", ["a"])
    assert read.kind == "range" and [(kv.key, kv.value) for kv in read.kvs] == [(key, "b")]
    assert read.kvs[0].mod_revision == result.revision
    failed = c.txn([Compare(key, "value", "==", "a")], [Put(key, "c")], [Get(key)])
    assert not failed.succeeded
    assert [kv.value for kv in failed.responses[0].kvs] == ["b"]
    nested = c.txn(
        [],
        [Txn([Compare(other, "value", "==", "x")], [Delete(other, prev_kv=True)])],
    )
    inner = nested.responses[0].txn
    assert inner is not None and inner.succeeded
    assert inner.responses[0].count == 1 and inner.responses[0].kvs[0].value == "x"
    prefix = c.txn([], [Get(key.rsplit("/", 1)[0] + "/", prefix=True)])
    assert key in {kv.key for kv in prefix.responses[0].kvs}


def test_a_cas_that_cannot_have_been_sent_is_retried_elsewhere(cluster: Cluster) -> None:
    cluster.wait_for_leader(DEADLINE)
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens: refused, so never sent
    with Client([refused, *cluster.endpoints], timeout=DEADLINE) as c:
        key = unique("cas-refused")
        assert c.cas(key, None, "v") is True
        assert c.get(key) == "v"


def test_a_cas_whose_answer_is_lost_raises_outcome_unknown_and_is_not_sent_again(
    cluster: Cluster,
) -> None:
    key = unique("cas-lost")
    leader = cluster.wait_for_leader(DEADLINE)
    with cluster.client(timeout=DEADLINE, request_timeout=1.0) as c:
        c.put(key, "before")
        assert c.leader == cluster.endpoints[leader]  # the next request goes there first
        cluster.pause(leader)  # its kernel still takes the request; no answer can come
        try:
            with pytest.raises(OutcomeUnknown) as caught:
                c.cas(key, "before", "after")
            assert caught.value.attempts == 1, caught.value
            assert list(caught.value.failures) == [cluster.endpoints[leader]]
            assert "MAY HAVE TAKEN EFFECT" in str(caught.value)
            # A read-only txn has nothing to apply twice: retried until a new leader serves it.
            read = c.txn([], [Get(key)])
            assert len(read.responses[0].kvs) == 1
        finally:
            cluster.resume(leader)
        cluster.wait_for_leader(DEADLINE)
        eventually(lambda: c.get(key) in ("before", "after"), "the key is readable again")


# ---------------------------------------------------------------------- leases


def test_lease_keep_alive_holds_keys_until_it_stops(connect: Connect) -> None:
    c = connect()
    key = unique("lease")
    lease = c.lease_grant(3)  # short, with room for a slow keep-alive on a busy machine
    assert lease.id > 0 and lease.ttl >= 3
    c.put(key, "here", lease=lease.id)
    status = lease.time_to_live(keys=True)
    assert status is not None and status.keys == (key,) and 0 < status.ttl <= lease.ttl
    assert lease.id in c.leases()
    with lease.keep_alive_forever() as keeper:
        until = time.monotonic() + 2 * lease.ttl + 1  # two TTLs: it would have expired twice
        while time.monotonic() < until:
            assert get(c, key) == "here"
            time.sleep(0.2)  # sampling the key while time passes
        assert keeper.alive and keeper.renewals >= 2, keeper.error
    eventually(lambda: get(c, key) is None, "the key vanishes once keep-alives stop")
    assert lease.time_to_live() is None
    with pytest.raises(RequestError) as caught:
        lease.keep_alive()
    assert caught.value.error == "lease_not_found"


def test_a_lease_revoked_on_exit_takes_its_keys(connect: Connect) -> None:
    c = connect()
    key = unique("lease-revoke")
    with c.lease_grant(60) as lease:
        c.put(key, "v", lease=lease.id)
        assert c.lease(lease.id).ttl == lease.ttl
        assert lease.keep_alive() >= 60
    assert get(c, key) is None
    assert lease.id not in c.leases()
    with pytest.raises(RequestError) as caught:
        c.lease_revoke(lease.id)
    assert caught.value.error == "lease_not_found" and caught.value.known_outcome


# ---------------------------------------------------------------------- watch


def test_watch_from_a_revision_in_order_with_prev_kv(connect: Connect) -> None:
    c = connect()
    key = unique("watch")
    first = put(c, key, "1")
    put(c, key, "2")
    delete(c, key)
    with c.watch(key, start_revision=first, prev_kv=True) as w:
        got = [w.get(DEADLINE) for _ in range(3)]
        last = put(c, key, "3")
        got.append(w.get(DEADLINE))
        assert w.revision == last
        assert w.get(0.2) is None  # nothing more
    assert [(e.type, e.value) for e in got if e] == [
        ("PUT", "1"),
        ("PUT", "2"),
        ("DELETE", ""),
        ("PUT", "3"),
    ]
    revisions = [e.revision for e in got if e]
    assert revisions == sorted(revisions) and revisions[0] == first
    assert [e.prev.value if e and e.prev else None for e in got] == [None, "1", "2", None]
    assert w.get(0) is None  # closed


def test_watch_a_prefix_with_filters_from_now(connect: Connect) -> None:
    c = connect()
    base = unique("prefix")
    with (
        c.watch(base + "/", prefix=True) as everything,
        c.watch(base + "/", prefix=True, no_delete=True) as puts,
    ):
        put(c, base + "/a", "1")
        put(c, base + "x", "outside")  # not under base + "/"
        put(c, base + "/b", "2")
        delete(c, base + "/a")
        seen = [everything.get(DEADLINE) for _ in range(3)]
        assert [(e.type, e.key) for e in seen if e] == [
            ("PUT", base + "/a"),
            ("PUT", base + "/b"),
            ("DELETE", base + "/a"),
        ]
        assert [e.key for e in (puts.get(DEADLINE), puts.get(DEADLINE)) if e] == [
            base + "/a",
            base + "/b",
        ]
        assert puts.get(0.2) is None


def test_a_watch_from_a_compacted_revision_raises_compacted(connect: Connect) -> None:
    c = connect()
    key = unique("compacted")
    first = put(c, key, "1")
    last = put(c, key, "2")
    compact(c.endpoints[0], last)
    with c.watch(key, start_revision=first) as w, pytest.raises(Compacted) as caught:
        w.get(DEADLINE)
    assert caught.value.compact_revision == last and caught.value.revision == first
    assert f"from revision {last} or later" in str(caught.value)
    with c.watch(key, start_revision=last) as w:  # the oldest revision kept
        event = w.get(DEADLINE)
        assert event is not None and event.value == "2"


def test_watch_can_be_closed_from_another_thread(connect: Connect) -> None:
    c = connect()
    w = c.watch(unique("closed"))
    results: list[object] = []
    reader = threading.Thread(target=lambda: results.extend(w))
    reader.start()
    time.sleep(0.2)  # let the reader block (it must be woken, whenever it blocked)
    w.close()
    reader.join(DEADLINE)
    assert not reader.is_alive() and results == []


def test_a_watch_resumes_on_another_node_after_a_leader_kill(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    others = [e for i, e in enumerate(cluster.endpoints) if i != leader]
    key = unique("resume")
    writer = cluster.client(timeout=DEADLINE)
    watcher = Client([cluster.endpoints[leader], *others], timeout=DEADLINE)
    try:
        written = [(writer.put(key, "0"), "0")]
        with watcher.watch(key, start_revision=written[0][0]) as w:
            assert w.endpoint == cluster.endpoints[leader]
            first = w.get(DEADLINE)
            assert first is not None and first.value == "0"
            written += [(writer.put(key, str(i)), str(i)) for i in range(1, 4)]
            got = [w.get(DEADLINE) for _ in range(2)]  # two read before the kill, two queued
            cluster.kill(leader)
            written += [(writer.put(key, str(i)), str(i)) for i in range(4, 8)]
            while len(got) < len(written) - 1:
                event = w.get(DEADLINE)
                assert event is not None, f"no event after {got[-1]}"
                got.append(event)
            assert w.endpoint in others
            assert w.get(0.5) is None  # and nothing twice
        assert [(e.revision, e.value) for e in [first, *got] if e] == written
    finally:
        writer.close()
        watcher.close()
        cluster.restart(leader)
        cluster.wait_for_leader(DEADLINE)


def test_a_watch_with_no_node_left_says_where_to_resume(cluster: Cluster) -> None:
    """A single-endpoint watch whose node dies: Unavailable, naming the revision to resume from."""
    cluster.wait_for_leader(DEADLINE)
    key = unique("no-node")
    with Client(cluster.endpoints, timeout=DEADLINE) as c:
        revision = c.put(key, "v")
    victim = next(i for i in range(3) if i != cluster.wait_for_leader(DEADLINE))
    with Client([cluster.endpoints[victim]], timeout=2.0) as c:
        w = c.watch(key, start_revision=revision)
        event = w.get(DEADLINE)
        assert event is not None and event.revision == revision
        cluster.kill(victim)
        try:
            with pytest.raises(Unavailable) as caught:
                w.get(DEADLINE)
            assert f"start_revision={revision + 1}" in str(caught.value)
        finally:
            w.close()
            with contextlib.suppress(Exception):
                cluster.restart(victim)
    cluster.wait_for_leader(DEADLINE)


# ---------------------------------------------------------------------- scripted nodes
# Where the rule is about what a client does with a message no real node can
# be made to send on cue (a progress notification after 10 minutes, a message
# over the limit, a node that accepts connections and never answers), a
# scripted node sends it.


class ScriptedNode:
    """Answers each POST /v3/watch with the next script: lines sent as HTTP
    chunks, then the connection closed ("close") or held open ("hold").
    GET /version answers 200 unless `silent`. Records each watch request."""

    def __init__(self, scripts: list[tuple[list[bytes], str]], *, silent: bool = False) -> None:
        self.scripts = scripts
        self.silent = silent
        self.requests: list[dict[str, object]] = []
        self.release = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += conn.recv(65536)
            if head.startswith(b"GET /version"):
                if self.silent:
                    self.release.wait(DEADLINE)
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                return
            self.requests.append(json.loads(body)["create_request"])
            lines, end = self.scripts.pop(0) if self.scripts else ([], "hold")
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for line in lines:
                conn.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            if end == "hold":
                self.release.wait(DEADLINE)

    def close(self) -> None:
        self.release.set()
        self.server.close()
        for t in self.threads:
            t.join(DEADLINE)


def message(revision: int, **result: object) -> bytes:
    body = {"result": {"header": {"revision": str(revision)}, **result}}
    return json.dumps(body).encode() + b"\n"


def put_event(key: str, value: str, revision: int) -> dict[str, object]:
    kv = {"key": b64(key), "value": b64(value), "mod_revision": str(revision)}
    return {"kv": {**kv, "create_revision": str(revision), "version": "1"}}


@contextlib.contextmanager
def scripted(*nodes: ScriptedNode) -> Iterator[list[ScriptedNode]]:
    try:
        yield list(nodes)
    finally:
        for node in nodes:
            node.close()


def test_a_watch_that_saw_only_progress_resumes_after_the_progress_revision() -> None:
    first = ScriptedNode([([message(5, created=True), message(9)], "close")])
    second = ScriptedNode(
        [([message(12, created=True), message(12, events=[put_event("k", "v", 10)])], "hold")]
    )
    with scripted(first, second), Client([first.url, second.url], timeout=DEADLINE) as c:
        w = c.watch("k", idle_timeout=None)
        assert w.revision == 5
        event = w.get(DEADLINE)
        assert event is not None and event.revision == 10 and w.revision == 10
        assert "start_revision" not in first.requests[0]  # from now
        assert second.requests[0]["start_revision"] == 10  # the progress said: all up to 9
        w.close()


def test_a_watch_resumes_after_its_last_event_not_the_header_revision() -> None:
    """etcd's header revision can run ahead of the events still to come: only
    the events say what was received."""
    events = [put_event("k", "a", 4), put_event("k", "b", 5)]
    first = ScriptedNode([([message(3, created=True), message(20, events=events)], "close")])
    second = ScriptedNode([([message(20, created=True)], "hold")])
    with scripted(first, second), Client([first.url, second.url], timeout=DEADLINE) as c:
        w = c.watch("k", start_revision=4, idle_timeout=None)
        assert [e.value for e in (w.get(DEADLINE), w.get(DEADLINE)) if e] == ["a", "b"]
        assert w.get(0.5) is None and second.requests[0]["start_revision"] == 6
        w.close()


def test_a_watch_message_over_the_limit_ends_the_watch_saying_what_to_raise() -> None:
    huge = message(2, events=[put_event("k", "x" * 5000, 2)])
    node = ScriptedNode([([message(1, created=True), huge], "hold")])
    with scripted(node), Client([node.url], timeout=DEADLINE) as c:
        w = c.watch("k", max_message_bytes=1000)
        with pytest.raises(KvClusterError) as caught:
            w.get(DEADLINE)
        assert "max_message_bytes" in str(caught.value)
        assert w.get(0) is None  # it ended


def test_a_silent_node_that_fails_its_probe_is_left_for_the_next() -> None:
    """A stopped node keeps its socket open: the watch asks it for /version
    after idle_timeout and, with no answer, goes on elsewhere."""
    stuck = ScriptedNode([([message(7, created=True)], "hold")], silent=True)
    alive = ScriptedNode(
        [([message(9, created=True), message(9, events=[put_event("k", "v", 8)])], "hold")]
    )
    with (
        scripted(stuck, alive),
        Client([stuck.url, alive.url], timeout=DEADLINE, request_timeout=0.5) as c,
    ):
        w = c.watch("k", idle_timeout=0.5)
        event = w.get(DEADLINE)
        assert event is not None and event.revision == 8 and w.endpoint == alive.url
        assert alive.requests[0]["start_revision"] == 8
        w.close()
