"""Nothing outlives the process that owns a Cluster: not its nodes, not the forkserver
or multiprocess's resource tracker, not a directory under the temp directory,
whether the owner exits normally or is SIGKILLed (a Jupyter kernel restart).

Each test runs the owner in a subprocess with a private TMPDIR, so that "nothing
left in /tmp" is checked exactly and without racing other tests.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.integration  # Linux: processes are read from /proc

# Generous for a busy 2-core CI machine; tests wait for conditions, never sleep.
DEADLINE = 60.0

# ------------------------------------------------------------------ processes, from /proc


def stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from the field after "(comm)": state, ppid, ...; None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()


def identity(pid: int) -> tuple[int, str] | None:
    """A process as (pid, start time): a pid reused by a new process is not it."""
    fields = stat_fields(pid)
    return None if fields is None else (pid, fields[19])


def running(process: tuple[int, str]) -> bool:
    """Still there and not a zombie (a zombie runs nothing and only waits to be reaped)."""
    fields = stat_fields(process[0])
    return fields is not None and fields[19] == process[1] and fields[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = stat_fields(int(name))
            if fields is not None and fields[1] == str(pid):
                found.append(int(name))
    return sorted(found)


def wait_until_gone(processes: list[tuple[int, str]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while alive := [p for p in processes if running(p)]:
        assert time.monotonic() < deadline, f"{what} still running: {alive}"
        time.sleep(0.05)


def wait_until_empty(tmp: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while left := sorted(p.name for p in tmp.iterdir()):
        assert time.monotonic() < deadline, f"left in the temp directory: {left}"
        time.sleep(0.05)


# ------------------------------------------------------------------ the owner process


class Owner:
    """A process that owns Clusters, its stdout read line by line with a deadline."""

    def __init__(self, args: list[str], tmp: Path, log: Path) -> None:
        env = dict(os.environ, TMPDIR=str(tmp), PYTHONUNBUFFERED="1")
        env.pop("KVCLUSTER_KEEP_WORKDIR", None)
        self.log = log
        with log.open("wb") as stderr:
            self.proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=env,
                cwd=log.parent,
                start_new_session=True,  # a group of its own, for signals to the group
            )
        self._buffer = b""
        self._seen: set[tuple[int, str]] = set()  # for close(): orphans have no parent to find
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.proc.stdout, selectors.EVENT_READ)  # type: ignore[arg-type]

    def read_line(self, starting: str) -> str:
        """The rest of the next line that starts with `starting` (others are skipped).
        Read from the descriptor, so that no line waits in a buffer select cannot see."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + DEADLINE
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode()
                if line.startswith(starting):
                    return line[len(starting) :]
            left = deadline - time.monotonic()
            assert left > 0, f"no {starting!r} line in time; stderr: {self.stderr()}"
            if self._selector.select(left):
                data = os.read(fd, 65536)
                assert data, f"the owner exited before {starting!r}; stderr: {self.stderr()}"
                self._buffer += data

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def descendants(self) -> list[tuple[int, str]]:
        """Every process the owner started and theirs, as identities."""
        found: list[tuple[int, str]] = []
        todo = children(self.proc.pid)
        while todo:
            pid = todo.pop()
            if (ident := identity(pid)) is not None:
                found.append(ident)
                todo.extend(children(pid))
        self._seen.update(found)
        return found

    def grandchildren(self) -> list[int]:
        """The processes started by the owner's children: the nodes, whose parent is
        the forkserver."""
        mine = set(children(self.proc.pid))
        return [pid for pid, _ in self.descendants() if pid not in mine]

    def kill(self, group: bool = False) -> None:
        """SIGKILL the owner, or its whole process group (as Jupyter's forced
        restart of a kernel does)."""
        if group:
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        """Kill the owner and whatever it left running: a failed test leaves nothing."""
        self.descendants()
        if self.proc.poll() is None:
            self.kill()
        for p in self._seen:
            if running(p):
                os.kill(p[0], signal.SIGKILL)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._selector.close()


@pytest.fixture
def private_tmp(tmp_path: Path) -> Path:
    """The owner's TMPDIR: empty, and seen by no other test."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    return tmp


@pytest.fixture
def start_owner(tmp_path: Path, private_tmp: Path) -> Iterator[Callable[[list[str]], Owner]]:
    started: list[Owner] = []

    def start(args: list[str]) -> Owner:
        owner = Owner(args, private_tmp, tmp_path / f"owner{len(started)}.stderr")
        started.append(owner)
        return owner

    yield start
    for owner in started:
        owner.close()


def python_script(tmp_path: Path, script: str) -> list[str]:
    path = tmp_path / "owner.py"
    path.write_text(textwrap.dedent(script))
    return [sys.executable, str(path)]


def temp_entries(tmp: Path) -> list[str]:
    """What is in the temp directory, by kind: ["kvcluster", "pymp"] while a Cluster runs."""
    return sorted(p.name.partition("-")[0] for p in tmp.iterdir())


def answering(endpoints: list[str]) -> list[str]:
    up = []
    for e in endpoints:
        try:
            requests.get(f"{e}/v1/status", timeout=1)
            up.append(e)
        except requests.RequestException:
            pass
    return up


# ------------------------------------------------------------------ tests


# Holds a Cluster with one node paused (SIGSTOP: it can act on nothing but
# SIGKILL) until it is killed.
HOLD_A_CLUSTER = """
    import json, sys
    from kvcluster.cluster import Cluster

    c = Cluster(n=3)
    c.wait_for_leader(60)
    c.pause(2)
    print("nodes", json.dumps([h.process.pid for h in c.nodes]), flush=True)
    print("endpoints", json.dumps(c.endpoints), flush=True)
    sys.stdin.readline()
"""


@pytest.mark.parametrize("group", [False, True], ids=["owner", "group"])
def test_a_sigkilled_script_leaves_no_node_no_forkserver_and_no_files(
    group: bool, tmp_path: Path, private_tmp: Path, start_owner: Callable[[list[str]], Owner]
) -> None:
    owner = start_owner(python_script(tmp_path, HOLD_A_CLUSTER))
    nodes = json.loads(owner.read_line("nodes "))
    endpoints = json.loads(owner.read_line("endpoints "))
    processes = owner.descendants()
    assert sorted(owner.grandchildren()) == sorted(nodes)
    assert len(processes) == len(nodes) + 2, processes  # + the forkserver, + resource tracker
    assert temp_entries(private_tmp) == ["kvcluster", "pymp"]

    owner.kill(group)

    wait_until_gone(processes, "processes of the killed script")
    wait_until_empty(private_tmp)
    assert answering(endpoints) == []


def test_a_sigkilled_kvcluster_up_leaves_nothing(
    private_tmp: Path, start_owner: Callable[[list[str]], Owner]
) -> None:
    owner = start_owner([sys.executable, "-m", "kvcluster", "up", "-n", "3"])
    endpoints = owner.read_line("export KVCLUSTER_ENDPOINTS=").split(",")
    owner.read_line("Ctrl-C stops the cluster.")
    assert len(answering(endpoints)) == 3
    processes = owner.descendants()
    assert len(owner.grandchildren()) == 3
    assert temp_entries(private_tmp) == ["kvcluster", "pymp"]

    owner.kill()

    wait_until_gone(processes, "processes of the killed `kvcluster up`")
    wait_until_empty(private_tmp)
    assert answering(endpoints) == []


def test_an_owner_that_exits_normally_leaves_nothing_and_clusters_share_the_forkserver(
    tmp_path: Path, private_tmp: Path, start_owner: Callable[[list[str]], Owner]
) -> None:
    """stop(), the context manager and a Cluster left to interpreter exit; making
    and stopping Clusters in turn must not stop the shared forkserver."""
    script = """
        import json, sys
        from kvcluster.cluster import Cluster

        def parent(pid):
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rpartition(")")[2].split()[1])

        forkservers = set()
        for _ in range(3):
            with Cluster(n=2) as c:
                forkservers |= {parent(h.process.pid) for h in c.nodes}
            assert not any(h.alive for h in c.nodes)
        c = Cluster(n=1)
        forkservers |= {parent(h.process.pid) for h in c.nodes}
        c.stop()
        del c
        left = Cluster(n=3)  # stopped by the exit hooks
        forkservers |= {parent(h.process.pid) for h in left.nodes}
        print("forkservers", json.dumps(sorted(forkservers)), flush=True)
        sys.stdin.readline()
    """
    owner = start_owner(python_script(tmp_path, script))
    forkservers = json.loads(owner.read_line("forkservers "))
    assert len(forkservers) == 1, "every Cluster of a process uses the same forkserver"
    processes = owner.descendants()
    assert len(owner.grandchildren()) == 3  # the last Cluster's nodes, no others
    assert forkservers[0] in {pid for pid, _ in processes}

    assert owner.proc.stdin is not None
    owner.proc.stdin.write(b"exit\n")
    owner.proc.stdin.flush()
    assert owner.proc.wait(DEADLINE) == 0, owner.stderr()

    wait_until_gone(processes, "processes of an owner that exited")
    wait_until_empty(private_tmp)


def test_an_interrupt_to_the_owners_group_does_not_stop_the_nodes(
    tmp_path: Path, private_tmp: Path, start_owner: Callable[[list[str]], Owner]
) -> None:
    """Jupyter interrupts a kernel with SIGINT to its whole process group, and a
    terminal sends Ctrl-C to its foreground group: the running cell stops, the
    cluster must not."""
    script = """
        import json, time
        from kvcluster.cluster import Cluster

        c = Cluster(n=3)
        c.wait_for_leader(60)
        print("ready", flush=True)
        try:
            time.sleep(3600)  # the cell the user interrupts
        except KeyboardInterrupt:
            pass
        c.wait_for_leader(60)
        print("answering", json.dumps([c.node_status(i) is not None for i in range(3)]), flush=True)
        c.stop()
    """
    owner = start_owner(python_script(tmp_path, script))
    owner.read_line("ready")
    processes = owner.descendants()

    os.killpg(owner.proc.pid, signal.SIGINT)

    assert json.loads(owner.read_line("answering ")) == [True, True, True]
    assert owner.proc.wait(DEADLINE) == 0, owner.stderr()
    wait_until_gone(processes, "processes of an owner that exited")
    wait_until_empty(private_tmp)
