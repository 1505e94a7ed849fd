"""A bootstrap node restarted from its data directory needs nothing else.

`kvcluster serve --initial-cluster ...` writes the initial members into the
log (its first entry), so `kvcluster serve --name a --data-dir D --listen ...`
brings the node back as a member of the same cluster, as etcd does. Real
processes: the behaviour is about what a process finds on disk.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests

from kvcluster.client import Client

pytestmark = pytest.mark.integration

DEADLINE = 60.0  # generous for a busy 2-core machine; tests wait for conditions
TOKEN = "restart-test-token"
NAMES = ("a", "b", "c")


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KVCLUSTER_")}
    return {**clean, "KVCLUSTER_TOKEN": TOKEN}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    def __init__(self, name: str, port: int, data_dir: Path, log_dir: Path) -> None:
        self.name, self.port, self.data_dir = name, port, data_dir
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[str] | None = None
        self.lives = 0

    def start(self, *extra: str) -> None:
        self.lives += 1
        self.stderr = self.log_dir / f"{self.name}-{self.lives}.err"
        args = ["serve", "--name", self.name, "--data-dir", str(self.data_dir)]
        args += ["--listen", f"127.0.0.1:{self.port}", *extra]
        with open(self.stderr, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kvcluster", *args],
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
                text=True,
            )

    def says(self) -> str:
        return self.stderr.read_text()

    def status(self) -> dict[str, Any] | None:
        with contextlib.suppress(requests.RequestException, ValueError):
            r = requests.get(f"{self.url}/v1/status", timeout=1)
            if r.status_code == 200:
                return dict(r.json())
        return None

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def agreed_leader(nodes: list[Node]) -> str | None:
    statuses = [n.status() for n in nodes]
    if any(s is None for s in statuses):
        return None
    leaders = {s["leader"] for s in statuses if s is not None}
    return leaders.pop() if len(leaders) == 1 and None not in leaders else None


@contextlib.contextmanager
def three_nodes(tmp_path: Path) -> Iterator[list[Node]]:
    nodes: list[Node] = []
    try:
        for _ in range(5):  # a port can be taken between choosing and binding it
            nodes = [Node(n, free_port(), tmp_path / n, tmp_path) for n in NAMES]
            members = ",".join(f"{n.name}={n.url}" for n in nodes)
            for n in nodes:
                n.start("--initial-cluster", members)
            if wait_for(partial(_leader_or_exit, nodes), "a leader") is True:
                if any("cannot listen" in n.says() for n in nodes):
                    for n in nodes:
                        n.stop()
                    continue
                raise AssertionError("; ".join(n.says() for n in nodes))
            break
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _leader_or_exit(nodes: list[Node]) -> str | bool | None:
    return agreed_leader(nodes) or _exited(nodes)


def _exited(nodes: list[Node]) -> bool:
    return any(n.proc is not None and n.proc.poll() is not None for n in nodes)


def test_bootstrap_nodes_restart_from_their_data_directory_alone(tmp_path: Path) -> None:
    with three_nodes(tmp_path) as nodes:
        urls = [n.url for n in nodes]
        with Client(urls, token=TOKEN, timeout=DEADLINE) as c:
            c.put("before", "restart")
        before = nodes[0].status()
        assert before is not None
        members = before["members"]
        assert sorted(members) == list(NAMES)

        for n in nodes:
            n.stop()
            assert n.proc is not None and n.proc.returncode == 0, n.says()
        for n in nodes:
            n.start()  # no --initial-cluster, no --join: the data directory only
        wait_for(lambda: agreed_leader(nodes), "a leader after the restart")
        for n in nodes:
            status = n.status()
            assert status is not None and status["members"] == members, n.says()
        with Client(urls, token=TOKEN, timeout=DEADLINE) as c:
            assert c.get("before") == "restart"
            c.put("after", "restart")
            assert c.get("after") == "restart"


def test_serve_without_members_and_without_state_is_refused(tmp_path: Path) -> None:
    node = Node("a", free_port(), tmp_path / "empty", tmp_path)
    node.start()
    assert node.proc is not None
    node.proc.wait(DEADLINE)
    assert node.proc.returncode not in (0, None)
    says = node.says()
    assert "Traceback" not in says
    assert "holds no state to restart a from" in says
    assert "--initial-cluster" in says and "--join" in says
