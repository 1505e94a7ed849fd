"""A node listens exactly where it was told, or exits saying why.

A node that fell back to another port when its own was taken would leave its
peers sending the cluster token (and every Raft message) to whoever holds
the configured address. These tests squat a port with a plain socket and
watch `kvcluster serve`, and a `Cluster`, refuse to start there.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kvcluster import Cluster
from kvcluster.cluster import PortTaken

pytestmark = pytest.mark.integration

DEADLINE = 60.0


@pytest.fixture
def squatter() -> Iterator[socket.socket]:
    """A listening socket on a port the OS picked: someone else's server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield sock
    sock.close()


def serve(port: int) -> subprocess.CompletedProcess[str]:
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCLUSTER_")}
    env["KVCLUSTER_TOKEN"] = "bind-test-token"
    listen = ["--listen", f"127.0.0.1:{port}", "--initial-cluster", f"a={url}"]
    return subprocess.run(
        [sys.executable, "-m", "kvcluster", "serve", "--name", "a", *listen],
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def test_serve_on_a_taken_port_exits_and_never_serves_elsewhere(squatter: socket.socket) -> None:
    port = squatter.getsockname()[1]
    done = serve(port)
    assert done.returncode == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "serving at" not in done.stderr  # no other address was taken instead
    assert "Traceback" not in done.stderr
    # Nothing came to the squatter either: the node never talked to "itself" there.
    readable, _, _ = select.select([squatter], [], [], 0)
    assert readable == []


def test_a_cluster_whose_first_port_is_taken_says_so(squatter: socket.socket) -> None:
    port = squatter.getsockname()[1]
    with pytest.raises(PortTaken, match=str(port)), Cluster(1, first_port=port):
        pass
