"""`kvcluster txn`, `watch` and `lease` (etcd's v3 API) through real processes,
and the README's examples of them run as printed against `kvcluster up`."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from served import clean_env
from test_cli import (
    DEADLINE,
    RUN_LIMIT,
    kvcluster_on_path,
    on_ports,
    readme_blocks,
    readme_up,
    run_block,
    usage_error,
    wait_until_closed,
)

from kvcluster import Cluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def run(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    """`kvcluster ARGS --endpoints <every node>`."""
    return subprocess.run(
        [sys.executable, "-m", "kvcluster", *args, "--endpoints", ",".join(c.endpoints)],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=RUN_LIMIT,
        check=False,
    )


def ok(c: Cluster, *args: str) -> list[Any]:
    done = run(c, *args)
    assert done.returncode == 0, (args, done.returncode, done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_txn_swaps_only_when_the_compare_holds(cluster: Cluster) -> None:
    assert ok(cluster, "txn", "t/a", "--if-absent", "--set", "one")[0]["succeeded"] is True
    again = run(cluster, "txn", "t/a", "--if-absent", "--set", "two")
    assert again.returncode == 3, again.stderr
    answer = json.loads(again.stdout)
    assert answer["key"] == "t/a" and answer["succeeded"] is False and answer["revision"] > 0
    assert run(cluster, "txn", "t/a", "--if-value", "two", "--delete").returncode == 3
    assert ok(cluster, "txn", "t/a", "--if-value", "one", "--set", "")[0]["succeeded"] is True
    assert ok(cluster, "txn", "t/a", "--if-value", "", "--delete")[0]["succeeded"] is True
    assert run(cluster, "get", "t/a").returncode == 1  # deleted


def test_txn_needs_a_condition_and_an_action(cluster: Cluster) -> None:
    for args in (["t/b", "--set", "x"], ["t/b", "--if-absent"]):
        done = run(cluster, "txn", *args)
        assert done.returncode == 2 and "usage: kvcluster txn" in done.stderr, done.stderr
        assert "is required" in done.stderr and "Traceback" not in done.stderr


def test_lease_commands(cluster: Cluster) -> None:
    [granted] = ok(cluster, "lease", "grant", "60")
    lease = str(granted["id"])
    assert granted["ttl"] == 60
    ok(cluster, "put", "l/a", "v", "--lease", lease)
    [ttl] = ok(cluster, "lease", "ttl", lease, "--keys")
    assert ttl["keys"] == ["l/a"] and 0 < int(str(ttl["ttl"])) <= 60
    assert int(lease) in ok(cluster, "lease", "list")
    assert ok(cluster, "lease", "keep-alive", lease, "--once") == [{"id": int(lease), "ttl": 60}]
    assert ok(cluster, "lease", "revoke", lease) == [{"id": int(lease), "revoked": True}]
    assert run(cluster, "get", "l/a").returncode == 1  # went with its lease
    for action in ("ttl", "revoke", "keep-alive"):
        gone = run(cluster, "lease", action, lease)
        assert gone.returncode == 1, (action, gone.stderr)
        assert "Traceback" not in gone.stderr and "not" in gone.stderr, gone.stderr
    usage_error(run(cluster, "lease", "ttl", "x"), "id", "expected a lease id")
    usage_error(run(cluster, "put", "k", "v", "--lease", "-1"), "--lease", "expected a lease id")


def test_watch_prints_history_then_stops_at_count_or_duration(cluster: Cluster) -> None:
    [first] = ok(cluster, "put", "w/a", "1")
    ok(cluster, "put", "w/b", "2")
    ok(cluster, "delete", "w/a")
    rev = str(first["revision"])
    events = ok(cluster, "watch", "w/", "--prefix", "--rev", rev, "--count", "3", "--prev-kv")
    assert [(e["type"], e["key"], e["value"], e["prev_value"]) for e in events] == [
        ("PUT", "w/a", "1", None),
        ("PUT", "w/b", "2", None),
        ("DELETE", "w/a", "", "1"),
    ]
    assert events[0]["revision"] == first["revision"]
    assert ok(cluster, "watch", "w/a", "--duration", "0.5") == []  # nothing new: stops, exit 0


def test_watch_ends_with_130_on_ctrl_c(cluster: Cluster) -> None:
    [put] = ok(cluster, "put", "w/c", "1")
    args = ["watch", "w/c", "--rev", str(put["revision"]), "--endpoints", cluster.endpoints[0]]
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvcluster", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the watch is up: it printed the past change
        assert json.loads(line)["value"] == "1"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(DEADLINE) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_watch_from_a_compacted_revision_says_where_to_start(cluster: Cluster) -> None:
    [first] = ok(cluster, "put", "w/d", "1")
    [second] = ok(cluster, "put", "w/d", "2")
    resp = requests.post(
        f"{cluster.endpoints[0]}/v3/kv/compaction",
        json={"revision": second["revision"]},
        timeout=DEADLINE,
    )
    assert resp.status_code == 200, resp.text
    done = run(cluster, "watch", "w/d", "--rev", str(first["revision"]))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"Watch from revision {second['revision']} or later" in done.stderr, done.stderr


def test_the_readme_etcd_command_line_and_client_examples_run_as_printed(tmp_path: Path) -> None:
    env = kvcluster_on_path(tmp_path)
    sh = readme_blocks("Command line")[2]
    assert "kvcluster txn" in sh
    python = readme_blocks("etcd's API", "python")[1]
    assert "from kvcluster import Client" in python
    with readme_up(tmp_path, env) as up:
        # The python block first, on the new cluster: its revisions start at 1.
        done = subprocess.run(
            [sys.executable, "-c", on_ports(python, up.first)],
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_LIMIT,
        )
        env["KVCLUSTER_ENDPOINTS"] = f"http://127.0.0.1:{up.first}"
        out = run_block(on_ports(sh, up.first), tmp_path, env)
    wait_until_closed(range(up.first, up.first + 3))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["None", "PUT app/colour blue 1", "PUT app/colour green 2"]
    created = json.loads(out[0])
    assert created["succeeded"] is True and created["key"] == "config/mode"
    assert json.loads(out[1])["succeeded"] is False and out[2] == "exit 3"
    swapped = json.loads(out[3])
    assert swapped["succeeded"] is True and swapped["revision"] == created["revision"] + 1
    assert json.loads(out[4]) == {"id": 42, "ttl": 60}
    assert json.loads(out[5])["key"] == "service/a"
    assert json.loads(out[6])["keys"] == ["service/a"]
    assert json.loads(out[7]) == {"id": 42, "ttl": 60}
    assert out[8] == "42"
    assert json.loads(out[9]) == {"id": 42, "revoked": True}
    watched = [json.loads(line) for line in out[10:]]
    assert [(e["value"], e["revision"], e["prev_value"]) for e in watched] == [
        ("blue", created["revision"], None),
        ("green", swapped["revision"], "blue"),
    ]
