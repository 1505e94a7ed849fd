"""`kvcluster serve` as a real process, for tests whose behaviour is about one.

Tests of the command line, of what a node finds in its data directory and of
process limits start `kvcluster serve` themselves rather than through Cluster;
this starts, watches and stops those processes one way for all of them.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import requests

DEADLINE = 60.0  # generous for a busy 2-core machine; we wait for conditions


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any KVCLUSTER_ setting of the user's, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVCLUSTER_")}
    env.update(extra)
    return env


def free_port() -> int:
    """A port free a moment ago: another process may take it before a node binds
    it, so a caller retries on "cannot listen" (see serving_alone)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServedNode:
    """`kvcluster serve --name NAME --listen 127.0.0.1:PORT ARGS...`, started as
    often as a test likes; each start's stderr goes to a file of its own in
    log_dir, so what a test reads is only what that process said. As a context
    manager, it is stopped on the way out."""

    def __init__(
        self,
        name: str,
        port: int,
        log_dir: Path,
        *,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> None:
        self.name, self.port, self.log_dir = name, port, log_dir
        self.url = f"http://127.0.0.1:{port}"
        self.args = list(args)
        self.env = env if env is not None else clean_env()
        self.cwd, self.preexec_fn = cwd, preexec_fn
        self._proc: subprocess.Popen[bytes] | None = None
        self.stderr_path: Path | None = None

    def start(self, *extra: str) -> None:
        """Start the process with the constructor's args, then `extra`."""
        prefix = f"{self.name}-{self.port}-"
        fd, path = tempfile.mkstemp(prefix=prefix, suffix=".err", dir=self.log_dir)
        self.stderr_path = Path(path)
        cmd = [sys.executable, "-m", "kvcluster", "serve", "--name", self.name]
        cmd += ["--listen", f"127.0.0.1:{self.port}", *self.args, *extra]
        with os.fdopen(fd, "wb") as err:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self.cwd,
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                preexec_fn=self.preexec_fn,
            )

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        """The process of the latest start."""
        assert self._proc is not None, "the node was never started"
        return self._proc

    def stderr(self) -> str:
        """What the latest start wrote to stderr so far."""
        assert self.stderr_path is not None, "the node was never started"
        return self.stderr_path.read_text(errors="replace")

    def status(self) -> dict[str, Any] | None:
        """GET /v1/status, or None while the node does not answer it."""
        with contextlib.suppress(requests.RequestException, ValueError):
            r = requests.get(f"{self.url}/v1/status", timeout=1)
            if r.status_code == 200:
                return dict(r.json())
        return None

    def wait_exit_or_lead(self) -> int | None:
        """The exit status if the process exits, None once it leads (and serves)."""
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                return code
            status = self.status()
            if status is not None and status.get("role") == "leader":
                return None
            time.sleep(0.05)
        raise AssertionError(f"the node neither served nor exited:\n{self.stderr()[-2000:]}")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within DEADLINE. The exit
        status (-SIGKILL: it ignored SIGTERM); None if it was never started."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def __enter__(self) -> ServedNode:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def serving_alone(
    log_dir: Path,
    *args: str,
    name: str = "a",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    preexec_fn: Callable[[], Any] | None = None,
) -> Iterator[ServedNode]:
    """A one-node cluster (`--initial-cluster` of itself, then `args`) on a free
    port, once it leads; stopped after. A port taken between choosing and
    binding it is chosen again; any other failure to start fails the test."""
    for _ in range(5):
        node = ServedNode(name, free_port(), log_dir, env=env, cwd=cwd, preexec_fn=preexec_fn)
        with node:
            node.start("--initial-cluster", f"{name}={node.url}", *args)
            code = node.wait_exit_or_lead()
            if code is None:
                yield node
                return
        if "cannot listen" not in node.stderr():
            raise AssertionError(f"the node did not start (exit {code}):\n{node.stderr()[-2000:]}")
    raise AssertionError("no free port")
