"""A bootstrap node restarted from its data directory needs nothing else.

`kvcluster serve --initial-cluster ...` writes the initial members into the
log (its first entry), so `kvcluster serve --name a --data-dir D --listen ...`
brings the node back as a member of the same cluster, as etcd does. Real
processes: the behaviour is about what a process finds on disk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from served import DEADLINE, ServedNode, clean_env, free_port

from kvcluster.client import Client

pytestmark = pytest.mark.integration

TOKEN = "restart-test-token"
NAMES = ("a", "b", "c")


def member(name: str, data_dir: Path, log_dir: Path) -> ServedNode:
    """A node whose every start serves `data_dir`."""
    env = clean_env(KVCLUSTER_TOKEN=TOKEN)
    return ServedNode(name, free_port(), log_dir, args=("--data-dir", str(data_dir)), env=env)


def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def agreed_leader(nodes: list[ServedNode]) -> str | None:
    statuses = [n.status() for n in nodes]
    if any(s is None for s in statuses):
        return None
    leaders = {s["leader"] for s in statuses if s is not None}
    return leaders.pop() if len(leaders) == 1 and None not in leaders else None


@contextlib.contextmanager
def three_nodes(tmp_path: Path) -> Iterator[list[ServedNode]]:
    nodes: list[ServedNode] = []
    try:
        for _ in range(5):  # a port can be taken between choosing and binding it
            nodes = [member(n, tmp_path / n, tmp_path) for n in NAMES]
            members = ",".join(f"{n.name}={n.url}" for n in nodes)
            for n in nodes:
                n.start("--initial-cluster", members)
            if wait_for(partial(_leader_or_exit, nodes), "a leader") is True:
                if any("cannot listen" in n.stderr() for n in nodes):
                    for n in nodes:
                        n.stop()
                    continue
                raise AssertionError("; ".join(n.stderr() for n in nodes))
            break
        yield nodes
    finally:
        for n in nodes:
            n.stop()


def _leader_or_exit(nodes: list[ServedNode]) -> str | bool | None:
    return agreed_leader(nodes) or _exited(nodes)


def _exited(nodes: list[ServedNode]) -> bool:
    return any(n.proc.poll() is not None for n in nodes)


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
            assert n.proc.returncode == 0, n.stderr()
        for n in nodes:
            n.start()  # no --initial-cluster, no --join: the data directory only
        wait_for(lambda: agreed_leader(nodes), "a leader after the restart")
        for n in nodes:
            status = n.status()
            assert status is not None and status["members"] == members, n.stderr()
        with Client(urls, token=TOKEN, timeout=DEADLINE) as c:
            assert c.get("before") == "restart"
            c.put("after", "restart")
            assert c.get("after") == "restart"


def test_serve_without_members_and_without_state_is_refused(tmp_path: Path) -> None:
    with member("a", tmp_path / "empty", tmp_path) as node:
        node.start()
        node.proc.wait(DEADLINE)
    assert node.proc.returncode not in (0, None)
    says = node.stderr()
    assert "Traceback" not in says
    assert "holds no state to restart a from" in says
    assert "--initial-cluster" in says and "--join" in says
