"""The live view's back end over a real WebSocket, on real node processes (no browser).

A page is played by `Page`: a tornado WebSocket client on its own thread that
keeps every frame it receives and the answers to its controls. Each test waits
for what it expects to show up in a frame (generous deadlines), never sleeps
and assumes. tests/test_dashboard_browser.py drives the real page.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from served import clean_env
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection, websocket_connect

from kvcluster.cluster import Cluster
from kvcluster.dashboard import Dashboard
from kvcluster.raft import ConfigError, Member, Membership, RaftNode, RaftOptions

pytestmark = pytest.mark.integration

DEADLINE = 60.0  # generous for a busy 2-core machine; we wait for conditions
Frame = dict[str, Any]

FRAME_FIELDS = {
    "type",
    "t",
    "nodes",
    "links",
    "messages",
    "events",
    "faults",
    "load",
    "preset",
    "heartbeat_interval",
    "election_timeout",
}
NODE_FIELDS = {
    "index",
    "name",
    "url",
    "process",
    "answering",
    "isolated",
    "role",
    "term",
    "vote",
    "leader",
    "last_index",
    "commit_index",
    "applied_index",
    "election_elapsed",
    "election_timeout",
    "progress",
}


def ws_url(dashboard: Dashboard, token: str | None = None) -> str:
    token = dashboard.token if token is None else token
    return f"ws://127.0.0.1:{dashboard.port}/ws?token={token}"


async def connect(url: str) -> WebSocketClientConnection:
    return await websocket_connect(url)


class Page:
    """A connected page: the frames it got (the last 500), every fault they
    listed, and the answers to its controls."""

    def __init__(self, url: str) -> None:
        self.frames: deque[Frame] = deque(maxlen=500)
        self.received = 0  # frames so far
        self.faults: list[str] = []  # every fault shown, history included
        self.results: dict[Any, Frame] = {}
        self.closed = threading.Event()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._conn: WebSocketClientConnection = self._run(connect(url))
        asyncio.run_coroutine_threadsafe(self._read(), self._loop)

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(DEADLINE)

    async def _read(self) -> None:
        while True:
            text = await self._conn.read_message()
            if text is None:
                self.closed.set()
                with self._cond:
                    self._cond.notify_all()
                return
            message = json.loads(text)
            with self._cond:
                if message["type"] == "result":
                    self.results[message["id"]] = message
                else:
                    self.frames.append(message)
                    self.received += 1
                    history = message.get("history", {}).get("faults", [])
                    self.faults.extend(f["what"] for f in [*history, *message["faults"]])
                self._cond.notify_all()

    def send(self, message: Any) -> None:
        text = message if isinstance(message, str) else json.dumps(message)

        async def write() -> None:
            await self._conn.write_message(text)

        self._run(write())

    def control(self, action: str, **fields: Any) -> Frame:
        """Send a control and wait for its answer."""
        rid = next(self._ids)
        self.send({"id": rid, "action": action, **fields})
        return self.answer(rid)

    def answer(self, rid: Any) -> Frame:
        with self._cond:
            ok = self._cond.wait_for(lambda: rid in self.results, DEADLINE)
            assert ok, f"no answer to control {rid} within {DEADLINE} s"
            return self.results.pop(rid)

    def wait_for(self, condition: Callable[[Frame], Any], what: str) -> Frame:
        """The first frame from now on for which `condition` holds."""
        with self._cond:
            seen = self.received
        deadline = time.monotonic() + DEADLINE
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda n=seen: self.received > n or self.closed.is_set(),
                    max(0.0, deadline - time.monotonic()),
                )
                fresh = min(self.received - seen, len(self.frames))
                new = list(self.frames)[len(self.frames) - fresh :]
                seen = self.received
            for frame in new:
                if condition(frame):
                    return frame
            assert not self.closed.is_set(), f"the connection closed while waiting for {what}"
            assert time.monotonic() < deadline, f"no frame showed {what} within {DEADLINE} s"

    def wait_fault(self, what: str, count: int = 1) -> None:
        """Wait until the frames have listed the fault `what` `count` times."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.faults.count(what) >= count, DEADLINE)
            assert ok, f"the fault {what!r} was not shown within {DEADLINE} s: {self.faults}"

    def first_frame(self) -> Frame:
        with self._cond:
            assert self._cond.wait_for(lambda: self.received, DEADLINE), "no frame at all"
            assert self.received <= len(self.frames)
            return self.frames[0]

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._conn.close)
        self.closed.wait(DEADLINE)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(DEADLINE)
        self._loop.close()


def node(frame: Frame, i: int) -> Frame:
    return frame["nodes"][i]


def leaders(frame: Frame) -> list[Frame]:
    return [n for n in frame["nodes"] if n["answering"] and n["role"] == "leader"]


def settled(frame: Frame) -> bool:
    """Every running node answers, exactly one leads, and all follow it in its term."""
    running = [n for n in frame["nodes"] if n["process"] == "alive"]
    if not running or not all(n["answering"] for n in running):
        return False
    lead = leaders(frame)
    return len(lead) == 1 and all(
        n["leader"] == lead[0]["name"] and n["term"] == lead[0]["term"] for n in running
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        c.wait_for_leader(DEADLINE)
        yield c


@pytest.fixture(scope="module")
def dashboard(cluster: Cluster) -> Dashboard:
    return cluster.dashboard()


@pytest.fixture
def page(dashboard: Dashboard, cluster: Cluster) -> Iterator[Page]:
    p = Page(ws_url(dashboard))
    yield p
    p.close()
    cluster.heal()  # leave the module's cluster whole for the next test


def test_the_core_reports_its_election_timer_and_a_leaders_progress() -> None:
    """Sans-IO: the timer's age on the caller's clock, the timeout drawn, progress."""
    membership = Membership({i: Member(i) for i in ("a", "b", "c")})
    options = RaftOptions(election_timeout=(0.5, 1.0), heartbeat_interval=0.1)
    nodes = {
        i: RaftNode(i, rng=random.Random(k), membership=membership, options=options, now=10.0)
        for k, i in enumerate("abc")
    }
    before = nodes["b"].status(now=10.25)
    assert before["election_elapsed"] == pytest.approx(0.25)
    assert 0.5 <= before["election_timeout"] <= 1.0 and before["progress"] is None
    assert nodes["b"].status()["election_elapsed"] == 0.0  # the core's own clock: no time passed
    nodes["a"].campaign()
    for _ in range(10):
        for n in nodes.values():
            rd = n.ready()
            n.advance(rd)
            for m in rd.messages:
                nodes[m.dst].step(m)
    lead = nodes["a"].status(now=11.0)
    assert lead["role"] == "leader" and lead["election_elapsed"] is None
    assert lead["election_timeout"] is None
    last = nodes["a"].log.last_index()
    assert lead["progress"] == {
        p: {"match": last, "next": last + 1, "state": "replicate"} for p in ("b", "c")
    }
    follower = nodes["b"].status(now=10.0 + 0.125)
    assert follower["role"] == "follower" and follower["leader"] == "a"
    assert follower["election_elapsed"] == pytest.approx(0.125)  # reset by the leader's append
    assert 0.5 <= follower["election_timeout"] <= 1.0


def test_status_shows_the_election_timer_progress_and_messages_sent(cluster: Cluster) -> None:
    leader = cluster.wait_for_leader(DEADLINE)
    names = {h.name for h in cluster.nodes} - {cluster.nodes[leader].name}

    def leader_status() -> dict[str, Any] | None:
        s = cluster.node_status(leader)
        sent = (s or {}).get("messages_sent", {})
        beats = all(sent.get(peer, {}).get("heartbeat", 0) > 0 for peer in names)
        return s if beats else None

    s = cluster.wait_until(leader_status, DEADLINE, "the leader never counted its heartbeats")
    assert s["election_elapsed"] is None and s["election_timeout"] is None
    assert set(s["progress"]) == names
    for p in s["progress"].values():
        assert p["state"] in ("probe", "replicate", "snapshot")
        assert 0 <= p["match"] < p["next"]
    follower = next(i for i in range(3) if i != leader)
    f = cluster.node_status(follower)
    assert f is not None and f["role"] == "follower" and f["progress"] is None
    lo, hi = cluster.raft_options.election_timeout
    assert lo <= f["election_timeout"] <= hi
    assert f["election_elapsed"] >= 0
    assert f["messages_sent"][cluster.nodes[leader].name].get("heartbeat_resp", 0) > 0


def test_frames_carry_the_contract_and_the_first_one_the_history(
    page: Page, cluster: Cluster
) -> None:
    first = page.first_frame()
    assert set(first) >= FRAME_FIELDS and first["type"] == "state"
    assert set(first["history"]) == {"events", "faults"}
    # The history tells the story from the start: every node's first role.
    assert {e["node"] for e in first["history"]["events"]} >= {h.name for h in cluster.nodes}
    assert first["preset"] == "default" and first["heartbeat_interval"] == 0.1
    assert first["election_timeout"] == [0.5, 1.0]
    frame = page.wait_for(settled, "a settled cluster")
    assert "history" not in frame
    assert [n["name"] for n in frame["nodes"]] == ["n0", "n1", "n2"]
    for n in frame["nodes"]:
        assert set(n) >= NODE_FIELDS
        assert n["process"] == "alive" and not n["isolated"]
        assert n["url"] == cluster.endpoints[n["index"]]
    (lead,) = leaders(frame)
    assert lead["progress"] is not None and lead["election_elapsed"] is None
    assert set(lead["progress"]) == {n["name"] for n in frame["nodes"]} - {lead["name"]}

    def agrees_with_the_cluster(f: Frame) -> bool:
        leader = cluster.leader()  # asked of the nodes now, as cluster.status() does
        return settled(f) and leader is not None and leaders(f)[0]["index"] == leader

    page.wait_for(agrees_with_the_cluster, "the leader the cluster reports")
    assert frame["links"] == [] and not frame["load"]["running"]
    beat = page.wait_for(
        lambda f: any(m["type"] == "heartbeat" and m["src"] == lead["name"] for m in f["messages"]),
        "the leader's heartbeats",
    )
    for m in beat["messages"]:
        assert m["count"] > 0 and m["src"] != m["dst"]


def test_the_token_is_required(dashboard: Dashboard) -> None:
    base = f"http://127.0.0.1:{dashboard.port}/"
    assert requests.get(base, timeout=DEADLINE).status_code == 403
    wrong = requests.get(base, params={"token": "nope"}, timeout=DEADLINE)
    assert wrong.status_code == 403 and "token" in wrong.text
    page = requests.get(dashboard.url, timeout=DEADLINE)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    for token in ("", "nope"):
        with pytest.raises(HTTPClientError) as refused:
            asyncio.run(connect(ws_url(dashboard, token)))
        assert refused.value.code == 403


def test_bad_controls_are_answered_and_the_server_keeps_serving(page: Page) -> None:
    bad: list[tuple[Any, str]] = [
        ({"id": 1, "action": "explode"}, "unknown action"),
        ({"id": 2, "action": "kill"}, '"node" is missing'),
        ({"id": 3, "action": "kill", "node": 3}, "from 0 to 2"),
        ({"id": 4, "action": "kill", "node": True}, "integer"),
        ({"id": 5, "action": "drop", "src": 0, "dst": 1, "p": 1.5}, "from 0 to 1"),
        ({"id": 6, "action": "delay", "src": 0, "dst": 0, "seconds": 1}, "different"),
        ({"id": 7, "action": "partition", "groups": [[0, 1], [1, 2]]}, "one group"),
        ({"id": 8, "action": "load_start", "clients": 1000}, "clients"),
        ({"id": 9, "action": "put", "key": "", "value": "v"}, "key"),
        ({"id": 10, "action": "put", "key": "k" * 5000, "value": "v"}, "bytes"),
        ({"id": 11, "action": "get"}, "key"),
        ([1, 2, 3], "JSON object"),
    ]
    for message, says in bad:
        page.send(message)
        rid = message["id"] if isinstance(message, dict) else None
        answer = page.answer(rid)
        assert answer["ok"] is False and says in answer["message"], (message, answer)
    page.send("{not json")
    assert "JSON" in page.answer(None)["message"]
    page.send({"id": 12, "action": "put", "key": "big", "value": "x" * (100 << 10)})
    assert "at most 64 KiB" in page.answer(None)["message"]
    assert page.control("heal")["ok"] is True
    page.wait_for(settled, "frames still coming")


def test_put_and_get(page: Page) -> None:
    put = page.control("put", key="dashboard/greeting", value="héllo")
    assert put["ok"] is True and put["value"] >= 1, put
    got = page.control("get", key="dashboard/greeting")
    assert got["ok"] is True and got["value"] == "héllo"
    missing = page.control("get", key="dashboard/nothing")
    assert missing["ok"] is True and missing["value"] is None


def test_a_load_shows_throughput_and_appends(page: Page) -> None:
    answer = page.control("load_start", clients=2)
    assert answer["ok"] is True
    frame = page.wait_for(
        lambda f: f["load"]["running"] and f["load"]["ops_per_s"] > 0, "the load's throughput"
    )
    assert frame["load"]["clients"] == 2
    assert frame["load"]["p50_ms"] > 0 and frame["load"]["p99_ms"] >= frame["load"]["p50_ms"]
    page.wait_for(lambda f: any(m["type"] == "append" for m in f["messages"]), "appends")
    page.wait_fault("load 2 clients")
    assert page.control("load_stop")["ok"] is True
    stopped = page.wait_for(lambda f: not f["load"]["running"], "the load stopped")
    assert stopped["load"]["clients"] == 0


def test_links_show_cuts_drops_and_delays_until_healed(page: Page) -> None:
    assert page.control("cut", src=0, dst=1)["ok"]
    assert page.control("drop", src=1, dst=2, p=0.25)["ok"]
    assert page.control("delay", src=2, dst=0, seconds=0.05)["ok"]
    expected = [
        {"src": "n0", "dst": "n1", "cut": True, "drop": 0.0, "delay": 0.0},
        {"src": "n1", "dst": "n2", "cut": False, "drop": 0.25, "delay": 0.0},
        {"src": "n2", "dst": "n0", "cut": False, "drop": 0.0, "delay": 0.05},
    ]
    frame = page.wait_for(lambda f: f["links"] == expected, "the three faulted links")
    assert not any(n["isolated"] for n in frame["nodes"])
    assert page.control("heal")["ok"]
    page.wait_for(lambda f: f["links"] == [], "the links healed")
    for what in ("cut n0 -> n1", "drop 25% n1 -> n2", "delay n2 -> n0 by 0.05 s", "heal"):
        page.wait_fault(what)


def test_a_partition_isolates_the_leader_until_healed(page: Page, cluster: Cluster) -> None:
    before = page.wait_for(settled, "a settled cluster")
    (old,) = leaders(before)
    others = [n["index"] for n in before["nodes"] if n["index"] != old["index"]]
    answer = page.control("partition", groups=[[old["index"]], others])
    assert answer["ok"] is True, answer

    def majority_elected(f: Frame) -> bool:
        ns = [node(f, i) for i in others]
        return (
            node(f, old["index"])["isolated"]
            and all(n["answering"] and n["role"] in ("leader", "follower") for n in ns)
            and sum(n["role"] == "leader" for n in ns) == 1
            and all(n["term"] > old["term"] for n in ns)
        )

    cut = page.wait_for(majority_elected, "a new leader on the majority side")
    assert not any(node(cut, i)["isolated"] for i in others)
    assert len(cut["links"]) == 4 and all(link["cut"] for link in cut["links"])
    assert page.control("heal")["ok"] is True
    healed = page.wait_for(lambda f: settled(f) and f["links"] == [], "the healed cluster")
    assert not any(n["isolated"] for n in healed["nodes"])
    assert leaders(healed)[0]["term"] > old["term"]


def test_pause_and_resume_show_in_the_frames(page: Page) -> None:
    frame = page.wait_for(settled, "a settled cluster")
    follower = next(n["index"] for n in frame["nodes"] if n["role"] == "follower")
    assert page.control("pause", node=follower)["ok"] is True
    paused = page.wait_for(lambda f: node(f, follower)["process"] == "paused", "the pause")
    assert node(paused, follower)["answering"] is False and node(paused, follower)["role"] is None
    assert page.control("resume", node=follower)["ok"] is True
    page.wait_for(lambda f: settled(f) and node(f, follower)["process"] == "alive", "the resume")


def test_killing_the_leader_shows_a_new_leader_with_a_higher_term(
    page: Page, cluster: Cluster
) -> None:
    before = page.wait_for(settled, "a settled cluster")
    (old,) = leaders(before)
    answer = page.control("kill", node=old["index"])
    assert answer["ok"] is True and answer["message"] == f"{old['name']} killed"

    def re_elected(f: Frame) -> bool:
        dead = node(f, old["index"])
        lead = leaders(f)
        return (
            dead["process"] == "killed"
            and not dead["answering"]
            and len(lead) == 1
            and lead[0]["term"] > old["term"]
        )

    after = page.wait_for(re_elected, "the kill and a new leader")
    assert leaders(after)[0]["name"] != old["name"]
    page.wait_fault(f"kill {old['name']}")
    assert page.control("restart", node=old["index"])["ok"] is True
    back = page.wait_for(
        lambda f: settled(f) and node(f, old["index"])["process"] == "alive", "the restart"
    )
    assert node(back, old["index"])["role"] == "follower"


def test_a_page_opened_late_gets_the_whole_story(dashboard: Dashboard, cluster: Cluster) -> None:
    early = Page(ws_url(dashboard))
    try:
        cluster.mark("something happened", 0)
        early.wait_fault("something happened n0")  # the feed has read it
    finally:
        early.close()
    late = Page(ws_url(dashboard))
    try:
        first = late.first_frame()
        history = first["history"]
        assert "something happened n0" in [x["what"] for x in history["faults"]]
        # The history is what came before the frame's own new events: none twice.
        assert not [e for e in first["events"] if e in history["events"]]
        assert not [f for f in first["faults"] if f in history["faults"]]
        late.wait_for(lambda f: "history" not in f, "a second frame")  # then deltas only
    finally:
        late.close()


def test_the_view_shows_inline_in_jupyter(dashboard: Dashboard, cluster: Cluster) -> None:
    shown = dashboard._repr_html_()
    assert "<iframe" in shown and dashboard.url.replace("&", "&amp;") in shown
    assert cluster.dashboard() is dashboard  # one view per cluster


def test_the_slow_preset_is_checked_and_shown() -> None:
    slow = Cluster(1, preset="slow", start=False)
    with slow, slow.dashboard() as view:
        assert slow.raft_options.heartbeat_interval == 1.0
        assert slow.raft_options.election_timeout == (4.0, 8.0)
        page = Page(ws_url(view))
        try:
            frame = page.first_frame()
            assert frame["preset"] == "slow" and frame["heartbeat_interval"] == 1.0
            assert frame["election_timeout"] == [4.0, 8.0]
            assert node(frame, 0)["process"] == "killed"  # not started
        finally:
            page.close()
    own = Cluster(1, preset="slow", heartbeat_interval=0.5, start=False)
    assert own.raft_options.heartbeat_interval == 0.5
    assert own.raft_options.election_timeout == (4.0, 8.0)
    with pytest.raises(ConfigError, match="preset"):
        Cluster(1, preset="fast", start=False)
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        Cluster(1, preset="slow", heartbeat_interval=5.0, start=False)


def test_closing_the_cluster_closes_the_view_and_frees_its_port() -> None:
    with Cluster(1) as c:
        view = c.dashboard()
        page = Page(ws_url(view))
        page.first_frame()
    assert page.closed.wait(DEADLINE), "the page's connection stayed open"
    page.close()
    assert not view.running
    with socket.socket() as s:  # free again: nothing listens (as servers do, TIME_WAIT is fine)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", view.port))
        s.listen()
    with pytest.raises(requests.ConnectionError):
        requests.get(view.url, timeout=DEADLINE)


def test_kvcluster_up_prints_the_view_and_runs_slow() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvcluster", "up", "-n", "1", "--slow", "--dashboard"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        url = None
        for line in proc.stdout:
            if line.startswith("Live view"):
                url = line.split()[-1]
            if line.strip() == "Ctrl-C stops the cluster.":
                break
        assert url is not None, proc.stderr.read() if proc.stderr else "no output"
        assert requests.get(url, timeout=DEADLINE).status_code == 200
        port, token = url.split(":")[2].split("/")[0], url.split("token=")[1]
        page = Page(f"ws://127.0.0.1:{port}/ws?token={token}")
        try:
            frame = page.wait_for(settled, "the one node leading")
            assert frame["preset"] == "slow" and frame["election_timeout"] == [4.0, 8.0]
        finally:
            page.close()
    finally:
        proc.send_signal(2)  # Ctrl-C
        try:
            proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
