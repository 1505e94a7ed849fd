"""etcd3gw's own test suite, run against a 3-node kvcluster (once through a
follower, once through the leader) and against etcd 3.4 itself, the same way:
whatever etcd3gw expects of etcd, kvcluster must do too.

The suite is run as its README says (`python -m pytest --pyargs etcd3gw.tests`
with TOOZ_TEST_HTTP_URL and TOOZ_TEST_ETCD_PORT), in a subprocess; it must
pass with no failure and no skip.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from kvcluster import Cluster

pytestmark = pytest.mark.integration

DEADLINE = 60.0
SUITE_TIMEOUT = 600.0


def run_suite(port: int, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVCLUSTER_", "ETCD"))}
    env["TOOZ_TEST_HTTP_URL"] = f"http://localhost:{port}"
    env["TOOZ_TEST_ETCD_PORT"] = str(port)
    suite = ["--pyargs", "etcd3gw.tests", "-rs", "-q", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", *suite],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert "skipped" not in summary and "failed" not in summary and "error" not in summary
    return summary


@pytest.mark.parametrize("where", ["follower", "leader"])
def test_etcd3gw_suite_passes_against_kvcluster(where: str, tmp_path: Path) -> None:
    with Cluster(3) as c:
        leader = c.wait_for_leader(DEADLINE)
        chosen = leader if where == "leader" else (leader + 1) % 3
        port = int(c.endpoints[chosen].rsplit(":", 1)[1])
        run_suite(port, tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def etcd_server(data: Path) -> Iterator[int]:
    """A one-member etcd on free ports (Debian's etcd-server: `make test` installs it)."""
    etcd = shutil.which("etcd")
    assert etcd, "etcd is not installed (on Debian: apt-get install etcd-server)"
    client, peer = free_port(), free_port()
    log = open(data.parent / "etcd.log", "wb")  # noqa: SIM115 (closed below)
    urls = {
        "--listen-client-urls": f"http://127.0.0.1:{client}",
        "--advertise-client-urls": f"http://127.0.0.1:{client}",
        "--listen-peer-urls": f"http://127.0.0.1:{peer}",
        "--initial-advertise-peer-urls": f"http://127.0.0.1:{peer}",
        "--initial-cluster": f"one=http://127.0.0.1:{peer}",
    }
    args = [etcd, "--name", "one", "--data-dir", str(data)]
    for flag, url in urls.items():
        args += [flag, url]
    proc = subprocess.Popen(
        args,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{client}/health", timeout=1).ok:
                    break
            if proc.poll() is not None:
                said = (data.parent / "etcd.log").read_text(errors="replace")
                if "address already in use" in said:  # a free port taken meanwhile
                    raise PortRace(said[-500:])
                raise AssertionError(said[-2000:])
            assert time.monotonic() < deadline, "etcd did not become healthy"
            time.sleep(0.1)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class PortRace(Exception):
    """Another process took a port between our finding it free and etcd binding it."""


def test_etcd3gw_suite_passes_against_etcd_itself(tmp_path: Path) -> None:
    for attempt in range(5):
        try:
            with etcd_server(tmp_path / f"etcd-{attempt}") as port:
                run_suite(port, tmp_path)
            return
        except PortRace:
            continue
    raise AssertionError("five free ports in a row were taken before etcd could bind them")
