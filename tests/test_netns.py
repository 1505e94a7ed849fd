"""kvcluster.netns: hosts on separate network stacks, links that really go down.

Every host runs an agent (started with `exec_argv`, so inside its namespace):
it answers any TCP connection on AGENT_PORT with its host's name, and on its
stdin takes "connect to this address" orders and says on stdout what came of
them. Orders go by pipe, not by network, so a host cut off from the harness can
still be asked what it can reach. Each namespace has its own ports, so every
agent listens on the same one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvcluster.netns import ETC_NETNS, STATE_DIR, Network, NetworkError, available

pytestmark = pytest.mark.integration

DEADLINE = 30.0
PROBE_TIMEOUT = 0.5  # a connect that has not succeeded by then counts as cut off
AGENT_PORT = 7000

AGENT = textwrap.dedent(
    """
    import socket, sys, threading
    name, port = sys.argv[1], int(sys.argv[2])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))  # every address the host has, now or after readdress
    server.listen(64)

    def serve():
        while True:
            conn, _ = server.accept()
            with conn:
                conn.sendall(name.encode())

    threading.Thread(target=serve, daemon=True).start()
    print("ready", flush=True)
    for line in sys.stdin:
        address, timeout = line.split()
        try:
            with socket.create_connection((address, port), timeout=float(timeout)) as s:
                s.settimeout(float(timeout))
                print("ok", s.recv(100).decode(), flush=True)
        except OSError as e:
            print("fail", type(e).__name__, flush=True)
    """
)


def eventually(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE}s: {what}")
        time.sleep(0.05)


def reaches(probe: Callable[[], str | None], name: str) -> None:
    """Wait until probe answers with name (one slow connect on a busy machine proves nothing)."""
    eventually(lambda: probe() == name, f"{name} answers")


def reach(address: str, port: int = AGENT_PORT) -> str | None:
    """The name the host at address answers with, from the harness; None if unreachable."""
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT) as s:
            s.settimeout(PROBE_TIMEOUT)
            return s.recv(100).decode()
    except OSError:
        return None


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], DEADLINE)
    assert ready, "the agent did not answer"
    return proc.stdout.readline().strip()


class Agents:
    """One agent process per host, killed when the test module ends."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def start(self, name: str) -> None:
        argv = self.net.exec_argv(name, [sys.executable, "-c", AGENT, name, str(AGENT_PORT)])
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.procs[name] = proc
        assert read_line(proc) == "ready"

    def reach(self, src: str, dst: str) -> str | None:
        """The name that answers host src's connection to dst's address; None if cut off."""
        proc = self.procs[src]
        assert proc.stdin is not None
        proc.stdin.write(f"{self.net.address(dst)} {PROBE_TIMEOUT}\n")
        proc.stdin.flush()
        answer = read_line(proc).split()
        return answer[1] if answer[0] == "ok" else None

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(DEADLINE)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


@pytest.fixture(scope="module")
def lan() -> Iterator[tuple[Network, Agents]]:
    assert available() is None, available()
    with Network() as net:
        agents = Agents(net)
        try:
            for name in ("a", "b", "c"):
                net.add_host(name)
                agents.start(name)
            yield net, agents
        finally:
            agents.stop()


@pytest.fixture
def net(lan: tuple[Network, Agents]) -> Iterator[Network]:
    yield lan[0]
    lan[0].heal()


@pytest.fixture
def agents(lan: tuple[Network, Agents]) -> Agents:
    return lan[1]


def leftovers(ident: str) -> list[str]:
    """Whatever of network ident is still on this machine."""
    links = json.loads(subprocess.run(["ip", "-j", "link", "show"], capture_output=True).stdout)
    found = [
        link["ifname"]
        for link in links
        if link["ifname"].startswith((f"kvb{ident}", f"kvv{ident}"))
    ]
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [line for line in netns.splitlines() if f"kvcluster-{ident}-" in line]
    if ETC_NETNS.is_dir():
        found += [d.name for d in ETC_NETNS.iterdir() if d.name.startswith(f"kvcluster-{ident}-")]
    if (STATE_DIR / f"{ident}.json").exists():
        found.append(f"{ident}.json")
    return found


# --------------------------------------------------------------------------- the LAN


def test_hosts_get_distinct_addresses_and_the_harness_reaches_each(net: Network) -> None:
    addresses = [net.address(h) for h in net.hosts]
    assert len(set(addresses)) == 3
    assert all(ipaddress.ip_address(a) in net.subnet for a in addresses)
    assert net.gateway not in addresses
    assert net.gateway == str(net.subnet.network_address + 1)
    assert len({net.namespace(h) for h in net.hosts}) == 3
    for h in net.hosts:
        # Its own stack: the name proves which host answered.
        reaches(lambda h=h: reach(net.address(h)), h)


def test_hosts_reach_each_other(net: Network, agents: Agents) -> None:
    for src in net.hosts:
        for dst in net.hosts:
            reaches(lambda s=src, d=dst: agents.reach(s, d), dst)


def test_a_forked_child_that_enters_a_host_serves_on_its_address(net: Network) -> None:
    """As a node process would: fork, enter, then bind the host's own address."""
    port = AGENT_PORT + 1
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        code = 1
        try:
            net.enter("b")
            with socket.create_server((net.address("b"), port)) as server:
                server.settimeout(DEADLINE)
                conn, _ = server.accept()
                with conn:
                    conn.sendall(b"entered b")
            code = 0
        finally:
            os._exit(code)
    status = None
    try:
        eventually(lambda: reach(net.address("b"), port) == "entered b", "the child serves")
        status = os.waitpid(child, 0)[1]
    finally:
        if status is None:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reach(net.address("b"), port) is None  # nothing of it is left on the harness side


def test_a_downed_link_cuts_the_host_off_until_it_is_up(net: Network, agents: Agents) -> None:
    net.link_down("b")
    eventually(lambda: reach(net.address("b")) is None, "the harness loses b")
    assert agents.reach("a", "b") is None
    assert agents.reach("b", "c") is None
    reaches(lambda: agents.reach("a", "c"), "c")  # only b's link is down
    net.link_up("b")
    eventually(lambda: reach(net.address("b")) == "b", "the harness reaches b again")
    eventually(lambda: agents.reach("a", "b") == "b", "a reaches b again")


def test_a_partition_splits_hosts_into_groups_and_heal_joins_them(
    net: Network, agents: Agents
) -> None:
    net.partition(["a", "b"], ["c"])
    reaches(lambda: agents.reach("a", "b"), "b")
    reaches(lambda: agents.reach("b", "a"), "a")
    assert agents.reach("a", "c") is None
    assert agents.reach("c", "a") is None
    reaches(lambda: reach(net.address("a")), "a")  # the larger side stays with the harness
    assert reach(net.address("c")) is None
    net.heal()
    eventually(lambda: reach(net.address("c")) == "c", "the harness reaches c after heal")
    eventually(lambda: agents.reach("a", "c") == "c", "a reaches c after heal")
    eventually(lambda: agents.reach("c", "b") == "b", "c reaches b after heal")


def test_heal_also_brings_downed_links_up(net: Network) -> None:
    net.partition(["b"], ["a", "c"])
    net.link_down("a")
    net.heal()
    eventually(lambda: reach(net.address("a")) == "a", "a is back after heal")
    eventually(lambda: reach(net.address("b")) == "b", "b is back after heal")


def test_readdress_moves_the_host_to_a_new_address(net: Network, agents: Agents) -> None:
    old = net.address("c")
    new = net.readdress("c")
    assert new != old and net.address("c") == new
    assert new not in {net.address("a"), net.address("b"), net.gateway}
    eventually(lambda: reach(new) == "c", "c answers on its new address")
    assert reach(old) is None
    reaches(lambda: agents.reach("a", "c"), "c")


def test_the_hosts_file_names_hosts_for_commands_run_inside(net: Network) -> None:
    net.set_hosts_file({f"kv{i}": net.address(h) for i, h in enumerate(net.hosts, 1)})
    lookup = "import socket; print(socket.gethostbyname('kv2'), socket.gethostbyname('localhost'))"
    done = subprocess.run(
        net.exec_argv("a", [sys.executable, "-c", lookup]),
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [net.address("b"), "127.0.0.1"]


def test_bad_requests_say_what_is_wrong(net: Network) -> None:
    with pytest.raises(NetworkError, match="bad host name"):
        net.add_host("no spaces")
    with pytest.raises(NetworkError, match="already exists"):
        net.add_host("a")
    with pytest.raises(NetworkError, match="no host 'z'"):
        net.link_down("z")
    with pytest.raises(NetworkError, match="two groups"):
        net.partition(["a", "b"], ["b"])


# --------------------------------------------------------------------------- lifetime


def test_two_networks_at_once_get_different_subnets_and_close_leaves_nothing() -> None:
    with Network() as one, Network() as two:
        assert not one.subnet.overlaps(two.subnet)
        assert one.ident != two.ident
        one.add_host("x")
        two.add_host("x")  # the same host name on two networks
        one.set_hosts_file({"x": one.address("x")})
        # A process still inside a namespace must not stop (or hang) the removal.
        sleeper = subprocess.Popen(
            one.exec_argv("x", [sys.executable, "-c", "input()"]), stdin=subprocess.PIPE
        )
        try:
            assert leftovers(one.ident)
            one.close()
            assert leftovers(one.ident) == []
            assert leftovers(two.ident)  # closing one leaves the other alone
            one.close()  # idempotent
            with pytest.raises(NetworkError, match="closed"):
                one.add_host("y")
        finally:
            sleeper.kill()
            sleeper.wait(DEADLINE)
            assert sleeper.stdin is not None
            sleeper.stdin.close()
    assert leftovers(two.ident) == []


MAKE_AND_WAIT = textwrap.dedent(
    """
    import os, sys
    from kvcluster.netns import Network
    net = Network()
    net.add_host("h")
    net.set_hosts_file({"h": net.address("h")})
    if sys.argv[1] == "fork":  # a child that inherits the Network exits normally
        child = os.fork()
        if child == 0:
            sys.exit(0)
        os.waitpid(child, 0)
    print(net.ident, flush=True)
    if sys.argv[1] == "wait":
        sys.stdin.read()  # until the test closes stdin (or kills it)
    """
)


def run_owner(mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", MAKE_AND_WAIT, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )


def test_an_owner_that_exits_normally_leaves_nothing_even_after_a_child_exits() -> None:
    owner = run_owner("fork")
    ident = read_line(owner)
    assert owner.wait(DEADLINE) == 0
    assert owner.stdout is not None and owner.stdin is not None
    owner.stdout.close()
    owner.stdin.close()
    assert leftovers(ident) == []


def test_owners_at_the_same_time_get_different_subnets_and_clean_up_after_themselves() -> None:
    """As a CI run and a developer's run on one machine: separate processes, one lock."""
    owners = [run_owner("wait") for _ in range(3)]
    try:
        idents = [read_line(owner) for owner in owners]
        assert len(set(idents)) == 3
        for ident in idents:
            assert leftovers(ident)
    finally:
        for owner in owners:
            assert owner.stdin is not None and owner.stdout is not None
            owner.stdin.close()
            assert owner.wait(DEADLINE) == 0
            owner.stdout.close()
    for ident in idents:
        assert leftovers(ident) == []


def test_a_killed_owners_network_is_removed_by_the_next_one() -> None:
    owner = run_owner("wait")
    try:
        ident = read_line(owner)
        assert len(leftovers(ident)) >= 4  # bridge, veth, namespace, hosts dir, state file
    finally:
        owner.kill()
        owner.wait(DEADLINE)
        assert owner.stdout is not None and owner.stdin is not None
        owner.stdout.close()
        owner.stdin.close()
    assert leftovers(ident)  # SIGKILL: nothing ran to remove it
    with Network() as new:
        if new.ident == ident:  # its subnet was freed, and is the first free one
            assert leftovers(ident) == [f"kvb{ident}", f"{ident}.json"]
            assert json.loads((STATE_DIR / f"{ident}.json").read_text())["pid"] == os.getpid()
        else:
            assert leftovers(ident) == []
