"""The client against scripted fake nodes (no real cluster needed).

A FakeNode is a tiny threaded HTTP server speaking the node API with a dict
store and sessions deduplicated by (client_id, seq), like the real state
machine. It opens sessions without recording the request or consuming its
script (they are not what these tests script), and refuses writes in the
sessions listed in `expired`, as the real store does once a session is gone.
Its `script` is a queue of behaviours consumed one per request: answer an
error, redirect, drop the connection, or hold the answer forever (after
applying the write) to provoke a client timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

from kvcluster.client import Client, KeyValue
from kvcluster.errors import KvClusterError, OutcomeUnknown, RequestError, Unavailable

# Every wait in these tests is bounded by a client deadline; keep them generous for a
# busy 2-core CI machine. A request "times out" only where a fake holds it on purpose.
SHORT = 0.5  # request_timeout where a test provokes a timeout
DEADLINE = 10.0  # overall timeout where a test expects success


@dataclass
class Seen:
    method: str
    path: str  # raw, still percent-encoded
    query: dict[str, list[str]]
    body: dict[str, Any] | None
    headers: dict[str, str]
    client_port: int  # tells connections apart


_SESSION_IDS = itertools.count(1)  # unique across fake nodes, as log indexes are


@dataclass
class FakeNode:
    """One fake node; `url` is its base URL. Not a Raft node: it just serves its dict."""

    leader_header: str | None = None  # sent as X-Kvcluster-Leader when set
    script: deque[Any] = field(default_factory=deque)
    seen: list[Seen] = field(default_factory=list)
    applied: list[tuple[str | None, int | None, str]] = field(default_factory=list)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    revision: int = 0
    sessions: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    members: dict[str, Any] = field(default_factory=lambda: {"n1": {"address": "x"}})
    expired: set[str] = field(default_factory=set)
    opened: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.release = threading.Event()  # lets held requests go at teardown
        self.connections: set[socket.socket] = set()
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes

            def setup(self) -> None:
                super().setup()
                with node.lock:
                    node.connections.add(self.connection)

            def finish(self) -> None:
                with node.lock:
                    node.connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                node.handle(self)

            do_PUT = do_DELETE = do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self._stopped = False

    def stop(self, *, cut: bool = True) -> None:
        """Stop listening: from now on, connections are refused.

        With `cut`, also release held requests and cut every open connection.
        """
        with self.lock:
            stopped, self._stopped = self._stopped, True
        if not stopped:
            self.server.shutdown()
            self.server.server_close()
        if not cut:
            return
        self.release.set()
        with self.lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # -- request handling (in the server's threads)

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        path, _, query = h.path.partition("?")
        body = json.loads(raw) if raw else None
        if h.command == "POST" and path == "/v1/sessions":
            with self.lock:
                self.opened.append(f"s{next(_SESSION_IDS)}")
                opened = self.opened[-1]
            self.reply(h, 200, {"client_id": opened, "revision": self.revision, "evicted": 0})
            return
        with self.lock:
            self.seen.append(
                Seen(
                    h.command,
                    path,
                    parse_qs(query),
                    body,
                    dict(h.headers.items()),
                    h.client_address[1],
                )
            )
            action = self.script.popleft() if self.script else None
        if callable(action):
            action = action()
        if action == "drop":  # read the request, answer nothing, close
            h.close_connection = True
            return
        if action in ("apply_then_drop", "apply_then_hold"):
            self.route(h.command, path, query, body)
            if action == "apply_then_hold":
                self.release.wait(timeout=60)
            h.close_connection = True
            return
        if isinstance(action, tuple) and action[0] == "redirect":
            self.reply(h, 307, {"leader": action[1]}, location=action[1] + h.path)
            return
        if isinstance(action, tuple) and action[0] == "status":
            _, status, code = action
            self.reply(h, status, {"error": code, "message": f"scripted {code}"})
            return
        status, payload = self.route(h.command, path, query, body)
        self.reply(h, status, payload)

    def reply(
        self,
        h: BaseHTTPRequestHandler,
        status: int,
        payload: dict[str, Any],
        location: str | None = None,
    ) -> None:
        out = json.dumps(payload).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(out)))
        if self.leader_header:
            h.send_header("X-Kvcluster-Leader", self.leader_header)
        if location:
            h.send_header("Location", location)
        h.end_headers()
        h.wfile.write(out)

    def route(
        self, method: str, path: str, query: str, body: dict[str, Any] | None
    ) -> tuple[int, dict[str, Any]]:
        args = {k: v[-1] for k, v in parse_qs(query).items()}
        with self.lock:
            if path.startswith("/v1/kv/"):
                key = unquote(path[len("/v1/kv/") :])
                if method == "GET":
                    kv = self.data.get(key)
                    if kv is None:
                        return 404, {"error": "not_found", "message": "", "revision": self.revision}
                    return 200, {**kv, "revision": self.revision}
                if method in ("PUT", "DELETE") and (body or {}).get("client_id") in self.expired:
                    return 409, {"error": "session_expired", "message": "no such session"}
                if method == "PUT":
                    assert body is not None
                    if not isinstance(body.get("value"), str):
                        return 400, {"error": "bad_request", "message": '"value" must be a string'}
                    return 200, self.write(body, "put", key)
                if method == "DELETE":
                    return 200, self.write(body or {}, "delete", key)
            if path == "/v1/kv" and method == "GET":
                prefix = args.get("prefix", "")
                kvs = [self.data[k] for k in sorted(self.data) if k.startswith(prefix)]
                if "limit" in args:
                    kvs = kvs[: int(args["limit"])]
                return 200, {"kvs": kvs, "count": len(kvs), "revision": self.revision}
            if path == "/v1/status" and method == "GET":
                return 200, {"id": "n1", "role": "leader", "leader": "n1", "members": self.members}
            if path.startswith("/v1/members/") and method == "DELETE":
                node_id = unquote(path[len("/v1/members/") :])
                if node_id not in self.members:
                    return 404, {"error": "not_found", "message": f"{node_id!r} is not a member"}
                del self.members[node_id]
                return 200, {"members": self.members}
        return 404, {"error": "not_found", "message": f"no route {path}"}

    def write(self, body: dict[str, Any], op: str, key: str) -> dict[str, Any]:
        """Apply a put/delete once per (client_id, seq), like the real state machine."""
        client_id, seq = body.get("client_id"), body.get("seq")
        if client_id is not None and client_id in self.sessions:
            last_seq, last_result = self.sessions[client_id]
            if seq == last_seq:
                return last_result
        self.applied.append((client_id, seq, op))
        prev = self.data.get(key)
        if op == "put":
            self.revision += 1
            rev = self.revision
            self.data[key] = {
                "key": key,
                "value": body["value"],
                "create_revision": prev["create_revision"] if prev else rev,
                "mod_revision": rev,
                "version": prev["version"] + 1 if prev else 1,
            }
            result: dict[str, Any] = {
                "key": key,
                "revision": rev,
                "created": prev is None,
                "prev_value": prev["value"] if prev else None,
            }
        else:
            if prev is not None:
                self.revision += 1
                del self.data[key]
            result = {
                "key": key,
                "deleted": int(prev is not None),
                "revision": self.revision,
                "prev_value": prev["value"] if prev else None,
            }
        if client_id is not None:
            assert isinstance(seq, int)
            self.sessions[client_id] = (seq, result)
        return result

    def writes(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method in ("PUT", "DELETE")]


@pytest.fixture
def make_node() -> Iterator[Callable[..., FakeNode]]:
    nodes: list[FakeNode] = []

    def make(**kwargs: Any) -> FakeNode:
        node = FakeNode(**kwargs)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


@pytest.fixture
def node(make_node: Callable[..., FakeNode]) -> FakeNode:
    return make_node()


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A URL where connections are refused: a bound socket that never listens."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def dead_url2() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


# ---------------------------------------------------------------------- the happy path


def test_put_get_delete_list(node: FakeNode) -> None:
    with Client(node.url, timeout=DEADLINE) as c:
        assert c.get("missing") is None
        assert c.get_kv("missing") is None
        assert c.put("a", "1") == 1
        assert c.put("b/x", "2") == 2
        assert c.put("a", "3") == 3
        assert c.get("a") == "3"
        assert c.get_kv("a") == KeyValue("a", "3", 1, 3, 2, 3)
        assert c.get("a", consistency="serializable") == "3"
        assert list(c.list().items()) == [("a", "3"), ("b/x", "2")]
        assert c.list("b/") == {"b/x": "2"}
        assert c.list(limit=1) == {"a": "3"}
        assert c.delete("a") is True
        assert c.delete("a") is False
        assert c.get("a") is None
        assert c.status()["id"] == "n1"
        assert c.status(node.url)["role"] == "leader"
    reads = [s for s in node.seen if s.method == "GET" and s.path.startswith("/v1/kv/")]
    assert reads[0].query == {"consistency": ["linearizable"]}
    lists = [s for s in node.seen if s.path == "/v1/kv"]
    assert lists[1].query == {"prefix": ["b/"], "consistency": ["linearizable"]}
    assert lists[2].query["limit"] == ["1"]


def test_writes_carry_client_id_and_increasing_seq(node: FakeNode) -> None:
    with Client([node.url], client_id="me") as c:
        c.put("k", "v")
        c.delete("k")
        c.put("k", "w")
        assert c.seq == 3
    assert [(s.body or {}).get("seq") for s in node.writes()] == [1, 2, 3]
    assert {(s.body or {}).get("client_id") for s in node.writes()} == {"me"}
    assert node.opened == []  # a session given to the client is used as it is


def test_a_client_opens_its_session_at_its_first_write_only(node: FakeNode) -> None:
    with Client(node.url) as one, Client(node.url) as two:
        assert one.client_id is None and one.get("k") is None
        assert node.opened == []  # reads need no session
        one.put("k", "1")
        one.put("k", "2")
        two.delete("k")
        assert node.opened == [one.client_id, two.client_id] and one.client_id != two.client_id
    assert [(s.body or {}).get("seq") for s in node.writes()] == [1, 2, 1]


def test_an_expired_session_on_first_delivery_is_reopened_and_the_write_applied_once(
    node: FakeNode,
) -> None:
    with Client(node.url, timeout=DEADLINE) as c:
        c.put("k", "1")
        old = c.client_id
        assert old is not None
        node.expired.add(old)
        assert c.put("k", "2") == 2
        assert c.client_id not in (None, old) and c.seq == 1
    assert [(cid, seq) for cid, seq, _ in node.applied] == [(old, 1), (c.client_id, 1)]


def test_an_expired_session_after_an_unknown_attempt_is_outcome_unknown(node: FakeNode) -> None:
    """The retry of a write that may have applied must not be sent again in a new
    session: the client cannot know, and says so."""
    with Client(node.url, timeout=DEADLINE, request_timeout=SHORT) as c:
        c.put("k", "1")
        old = c.client_id
        assert old is not None

        def expire() -> str:
            seen = node.seen[-1]
            node.route(seen.method, seen.path, "", seen.body)  # applied...
            node.expired.add(old)  # ...the session expires...
            return "drop"  # ...and the answer is lost

        node.script.append(expire)
        with pytest.raises(OutcomeUnknown, match="expired session"):
            c.put("k", "2")
        assert c.client_id is None  # the next write opens a new session
        c.put("k", "3")
    assert [v for _, _, v in node.applied] == ["put", "put", "put"]
    assert node.data["k"]["value"] == "3"


@pytest.mark.parametrize(
    "key",
    ["a/b/c", "with space", "ünïcødé/日本語", "..", ".", "%2F", "?q=1&x#frag", "+plus", "/lead"],
)
def test_keys_round_trip_through_the_url(node: FakeNode, key: str) -> None:
    with Client(node.url) as c:
        c.put(key, f"value of {key}")
        assert c.get(key) == f"value of {key}"
        assert c.list(key) == {key: f"value of {key}"}
        assert c.delete(key) is True
    assert list(node.data) == []
    assert all(s.path.startswith("/v1/kv") for s in node.seen)


def test_token_is_sent_and_remove_member(node: FakeNode) -> None:
    with Client(node.url, token="s3cret") as c:
        assert c.remove_member("n1") == {"members": {}}
        with pytest.raises(RequestError) as info:
            c.remove_member("n1")
    assert info.value.status == 404 and info.value.known_outcome
    assert all(s.headers.get("Authorization") == "Bearer s3cret" for s in node.seen)
    with Client(node.url) as c:
        c.status()
    assert "Authorization" not in node.seen[-1].headers


def test_one_keep_alive_connection_is_reused(node: FakeNode) -> None:
    with Client(node.url) as c:
        for i in range(20):
            c.put(f"k{i}", "v")
            c.get(f"k{i}")
    assert len({s.client_port for s in node.seen}) == 1


def test_endpoints_are_normalized() -> None:
    c = Client("127.0.0.1:7001/, http://127.0.0.1:7002,127.0.0.1:7001")
    assert c.endpoints == ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]
    c.close()
    with pytest.raises(ValueError):
        Client([])
    with pytest.raises(ValueError):
        Client("ftp://x")


def test_bad_arguments_are_rejected_before_sending(node: FakeNode) -> None:
    with Client(node.url) as c:
        with pytest.raises(ValueError):
            c.get("k", consistency="eventual")
        with pytest.raises(ValueError):
            c.list(limit=0)
        with pytest.raises(TypeError):
            c.put("k", 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            c.get("")
    assert node.seen == []


# ---------------------------------------------------------------------- leader discovery


def test_remembers_the_leader_from_the_header(make_node: Callable[..., FakeNode]) -> None:
    leader = make_node()
    leader.leader_header = leader.url
    follower = make_node(leader_header=leader.url)
    with Client([follower.url], timeout=DEADLINE, client_id="me") as c:
        assert c.leader is None
        c.put("k", "v")  # the follower serves it (a real one would forward it)
        assert c.leader == leader.url
        c.put("k2", "v2")
        assert c.get("k2") == "v2"  # served by the leader
    assert len(follower.seen) == 1
    assert [s.method for s in leader.seen] == ["PUT", "GET"]


def test_serializable_reads_stay_on_the_endpoint(make_node: Callable[..., FakeNode]) -> None:
    leader = make_node()
    follower = make_node(leader_header=leader.url)
    with Client([follower.url], client_id="me") as c:
        c.put("k", "local")  # the fake follower applies it itself
        assert c.leader == leader.url
        assert c.get("k", consistency="serializable") == "local"
        assert c.list(consistency="serializable") == {"k": "local"}
        assert c.get("k") is None  # linearizable: the leader's state
    assert [s.method for s in follower.seen] == ["PUT", "GET", "GET"]
    assert [s.method for s in leader.seen] == ["GET"]


def test_prefer_leader_false_sticks_to_the_endpoint(make_node: Callable[..., FakeNode]) -> None:
    leader = make_node()
    follower = make_node(leader_header=leader.url)
    with Client([follower.url], prefer_leader=False) as c:
        c.put("k", "v")
        assert c.get("k") == "v"
        assert c.leader == leader.url  # remembered, but not used
    assert len(follower.seen) == 2 and leader.seen == []


def test_follows_307_to_the_leader(make_node: Callable[..., FakeNode]) -> None:
    leader = make_node()
    follower = make_node()
    follower.script.append(("redirect", leader.url))
    with Client([follower.url], timeout=DEADLINE) as c:
        assert c.put("a b/ü", "v") == 1
        assert c.leader == leader.url
        assert c.get("a b/ü") == "v"
    assert [s.method for s in follower.seen] == ["PUT"]
    assert [s.method for s in leader.seen] == ["PUT", "GET"]
    assert leader.seen[0].body == follower.seen[0].body  # same method, same body
    assert leader.seen[0].path == follower.seen[0].path


def test_redirect_loops_are_bounded(make_node: Callable[..., FakeNode]) -> None:
    a, b = make_node(), make_node()
    a.script.extend([("redirect", b.url)] * 3)
    b.script.extend([("redirect", a.url)] * 3)
    with Client([a.url], timeout=DEADLINE) as c:
        assert c.put("k", "v") == 1  # 5 hops, give up on that attempt, retry: served
    assert len(a.applied) + len(b.applied) == 1


# ---------------------------------------------------------------------- retries


@pytest.mark.parametrize(
    "failure",
    [
        ("status", 503, "no_leader"),
        ("status", 503, "not_leader"),
        ("status", 504, "timeout"),
        ("status", 502, "bad_gateway"),
        "drop",
        "apply_then_drop",
        "apply_then_hold",  # applied, but the answer never comes: the client times out
    ],
)
def test_a_failed_write_is_retried_with_the_same_seq_and_applied_once(
    node: FakeNode, failure: Any
) -> None:
    with Client(node.url, timeout=DEADLINE, request_timeout=SHORT, client_id="c1") as c:
        c.put("warmup", "x")  # seq 1: a keep-alive connection is in the pool
        node.script.append(failure)
        assert c.put("k", "v") == 2
        assert c.get("k") == "v"
    writes = [s.body for s in node.writes()]
    second = {"value": "v", "client_id": "c1", "seq": 2}
    assert all(w == second for w in writes if w and w["seq"] == 2)  # same body every time,
    assert writes.count(second) >= 2  # retried after the failure,
    assert node.applied == [("c1", 1, "put"), ("c1", 2, "put")]  # and applied once


def test_a_failed_delete_is_retried_with_the_same_seq(node: FakeNode) -> None:
    with Client(node.url, timeout=DEADLINE, request_timeout=SHORT) as c:
        c.put("k", "v")
        node.script.append("apply_then_drop")
        assert c.delete("k") is True  # the retry gets the first attempt's answer
    deletes = [s for s in node.seen if s.method == "DELETE"]
    assert len(deletes) >= 2 and all(d.body == deletes[0].body for d in deletes)
    assert [a[2] for a in node.applied] == ["put", "delete"]


@pytest.mark.parametrize("failure", [("status", 503, "unavailable"), "drop"])
def test_reads_are_retried(node: FakeNode, failure: Any) -> None:
    with Client(node.url, timeout=DEADLINE) as c:
        c.put("k", "v")
        node.script.append(failure)
        assert c.get("k") == "v"
        node.script.append(failure)
        assert c.list() == {"k": "v"}


def test_fails_over_to_the_next_endpoint(make_node: Callable[..., FakeNode], dead_url: str) -> None:
    a, b = make_node(), make_node()
    a.script.append(("status", 503, "shutting_down"))
    with Client([dead_url, a.url, b.url], timeout=DEADLINE) as c:
        assert c.put("k", "v") == 1
    assert len(a.seen) == 1 and len(b.seen) == 1 and b.applied


def test_a_dead_leader_is_forgotten(make_node: Callable[..., FakeNode], dead_url: str) -> None:
    follower = make_node(leader_header=dead_url)
    with Client([follower.url], timeout=DEADLINE) as c:
        c.put("k", "v")
        assert c.leader == dead_url
        follower.leader_header = None
        assert c.get("k") == "v"  # the dead leader refuses; the follower serves
        assert c.leader is None


def test_a_stale_leader_hint_does_not_stop_the_round_robin(
    make_node: Callable[..., FakeNode], dead_url: str
) -> None:
    stale = make_node(leader_header=dead_url)
    stale.script.extend([("status", 503, "not_leader")] * 1000)
    live = make_node()
    with Client([stale.url, live.url], timeout=DEADLINE) as c:
        assert c.put("k", "v") == 1
    assert live.applied and not stale.applied


def test_a_4xx_is_not_retried(node: FakeNode) -> None:
    node.script.append(("status", 400, "bad_request"))
    with Client(node.url, timeout=DEADLINE) as c, pytest.raises(RequestError) as info:
        c.put("k", "v")
    err = info.value
    assert (err.status, err.error, err.server_message) == (
        400,
        "bad_request",
        "scripted bad_request",
    )
    assert err.known_outcome and err.endpoint == node.url
    assert "rejected" in str(err) and "bad_request" in str(err)
    assert len(node.seen) == 1


@pytest.mark.parametrize("write", [True, False])
def test_a_500_is_a_bug_and_is_not_retried(node: FakeNode, write: bool) -> None:
    node.script.append(("status", 500, "internal_server_error"))
    with Client(node.url, timeout=DEADLINE) as c, pytest.raises(KvClusterError) as info:
        c.put("k", "v") if write else c.get("k")
    assert type(info.value) is (OutcomeUnknown if write else Unavailable)
    assert "bug" in str(info.value) and len(node.seen) == 1


def test_a_404_route_is_not_a_missing_key(node: FakeNode) -> None:
    node.script.append(("status", 404, "not_found"))  # no "revision": not the key's absence
    with Client(node.url) as c, pytest.raises(RequestError):
        c.get("k")


# ---------------------------------------------------------------------- giving up


def test_all_endpoints_down_raises_unavailable_quickly(dead_url: str, dead_url2: str) -> None:
    start = time.monotonic()
    with Client([dead_url, dead_url2], timeout=0.5) as c, pytest.raises(Unavailable) as info:
        c.put("k", "v")
    assert time.monotonic() - start < 5  # bounded by the 0.5 s deadline, not a hang
    err = info.value
    assert err.known_outcome is True and isinstance(err, KvClusterError)
    assert "is the cluster running?" in str(err) and dead_url in str(err)
    assert err.failures == {dead_url: "connection refused", dead_url2: "connection refused"}
    assert err.attempts >= 2


def test_no_leader_anywhere_raises_unavailable(make_node: Callable[..., FakeNode]) -> None:
    a, b = make_node(), make_node()
    for n in (a, b):
        n.script.extend([("status", 503, "no_leader")] * 1000)
    # A retry starts only with >= request_timeout / 4 left, so each fast 503 has 0.5 s to
    # arrive: no attempt is cut short by the deadline (which would make the outcome unknown).
    with (
        Client([a.url, b.url], timeout=1.5, request_timeout=2.0) as c,
        pytest.raises(Unavailable) as info,
    ):
        c.put("k", "v")
    assert "no_leader" in str(info.value) and "safe to retry" in str(info.value)
    assert set(info.value.failures) == {a.url, b.url} and info.value.attempts > 2
    assert not a.applied and not b.applied


def test_504_everywhere_raises_outcome_unknown(node: FakeNode) -> None:
    node.script.extend([("status", 504, "timeout")] * 1000)
    with Client(node.url, timeout=0.5) as c, pytest.raises(OutcomeUnknown) as info:
        c.put("k", "v")
    assert info.value.known_outcome is False
    assert "MAY HAVE TAKEN EFFECT" in str(info.value)


def test_timeout_then_everything_down_raises_outcome_unknown(node: FakeNode, dead_url: str) -> None:
    def hold_and_go_down() -> str:
        node.stop(cut=False)  # refuse new connections, but keep this one waiting
        return "apply_then_hold"

    node.script.append(hold_and_go_down)
    with (
        Client([node.url, dead_url], timeout=2 * SHORT + 0.5, request_timeout=SHORT) as c,
        pytest.raises(OutcomeUnknown) as info,
    ):
        c.put("k", "v")
    assert info.value.known_outcome is False
    assert "connection refused" in info.value.failures[dead_url]
    assert node.applied == [(c.client_id, 1, "put")]


def test_a_read_that_gives_up_is_unavailable_not_unknown(node: FakeNode) -> None:
    node.script.extend(["drop"] * 1000)
    with Client(node.url, timeout=0.5) as c, pytest.raises(Unavailable):
        c.get("k")


def test_remove_member_404_after_a_timeout_has_unknown_outcome(node: FakeNode) -> None:
    node.script.append("apply_then_hold")
    with (
        Client(node.url, timeout=DEADLINE, request_timeout=SHORT) as c,
        pytest.raises(RequestError) as info,
    ):
        c.remove_member("n1")
    assert info.value.status == 404 and info.value.known_outcome is False


def test_status_of_one_endpoint_does_not_retry(dead_url: str, node: FakeNode) -> None:
    with Client([node.url], timeout=DEADLINE) as c, pytest.raises(Unavailable) as info:
        c.status(dead_url)
    assert "is that node running?" in str(info.value)
