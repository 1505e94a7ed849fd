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


def start_suite(port: int, cwd: Path) -> subprocess.Popen[str]:
    """Start the suite against `port` in the background: its runs mostly wait
    (for leases to expire, for watches), so the three run side by side."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVCLUSTER_", "ETCD"))}
    env["TOOZ_TEST_HTTP_URL"] = f"http://localhost:{port}"
    env["TOOZ_TEST_ETCD_PORT"] = str(port)
    suite = ["--pyargs", "etcd3gw.tests", "-rs", "-q", "-p", "no:cacheprovider"]
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", *suite],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def suite_result(proc: subprocess.Popen[str]) -> str:
    """Wait for a suite started by start_suite; its summary line, if it passed
    with no failure and no skip."""
    try:
        out, _ = proc.communicate(timeout=SUITE_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(
            f"etcd3gw's suite did not finish in {SUITE_TIMEOUT:g} s: {out[-4000:]}"
        ) from None
    assert proc.returncode == 0, out[-4000:]
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert "skipped" not in summary and "failed" not in summary and "error" not in summary
    return summary


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


@contextlib.contextmanager
def etcd_on_free_ports(data: Path) -> Iterator[int]:
    """etcd_server, tried again if a free port was taken before etcd bound it."""
    data.mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        try:
            with etcd_server(data / f"etcd-{attempt}") as port:
                yield port
            return
        except PortRace:
            continue
    raise AssertionError("five free ports in a row were taken before etcd could bind them")


@pytest.fixture(scope="module")
def suites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """The three runs, side by side: through a follower of one 3-node cluster,
    through the leader of another, and against a one-member etcd. Each test
    then waits for its own run."""
    root = tmp_path_factory.mktemp("etcd3gw")
    with Cluster(3) as a, Cluster(3) as b, etcd_on_free_ports(root / "etcd") as etcd_port:
        follower = (a.wait_for_leader(DEADLINE) + 1) % 3
        leader = b.wait_for_leader(DEADLINE)
        ports = {
            "follower": int(a.endpoints[follower].rsplit(":", 1)[1]),
            "leader": int(b.endpoints[leader].rsplit(":", 1)[1]),
            "etcd": etcd_port,
        }
        runs = {where: start_suite(port, root / where) for where, port in ports.items()}
        try:
            yield runs
        finally:
            for proc in runs.values():
                if proc.poll() is None:
                    proc.kill()
                proc.communicate()


@pytest.mark.parametrize("where", ["follower", "leader"])
def test_etcd3gw_suite_passes_against_kvcluster(
    where: str, suites: dict[str, subprocess.Popen[str]]
) -> None:
    suite_result(suites[where])


def test_etcd3gw_suite_passes_against_etcd_itself(
    suites: dict[str, subprocess.Popen[str]],
) -> None:
    suite_result(suites["etcd"])
