"""A virtual LAN of Linux network namespaces, so that nodes can run on separate network stacks.

On loopback every node shares one address and no packet is ever lost to a dead
link. A `Network` gives each host its own network namespace, with one veth whose
other end is a port of a bridge in the root namespace; the bridge holds the
subnet's first address (.1), so the process that made the network (the harness)
reaches every host. A partition moves hosts' ports to bridges of their own and
a dead link is a port set down: the kernel loses the packets, not the node.

Several test runs may make networks on one machine at the same time (a CI run in
a fresh clone, a developer's run). Each network takes a /24 from
10.200.0.0-10.254.255.0 that no address or route of the root namespace
overlaps, chosen under an exclusive flock, and names everything after that
subnet: the subnet 10.A.X.0/24 is network "aaxx" (A and X in hex), its bridge
`kvbaaxx`, its veths `kvvaaxxh<n>` and its namespaces `kvcluster-aaxx-<host>`
(interface names are at most 15 characters). A state file
/run/kvcluster-netns/<id>.json records the owner's pid; whatever belongs to an
owner that is gone (a SIGKILLed run) is removed when the next network is made.
A network is also removed when its owner exits normally.

Root only (CAP_NET_ADMIN and CAP_SYS_ADMIN); `available()` says why not. Every
change is made with iproute2's `ip`, batched (`ip -batch -`) to stay fast.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["Network", "NetworkError", "available", "bridge_filtering", "enter_namespace"]

LOCK_PATH = Path("/run/kvcluster-netns.lock")
STATE_DIR = Path("/run/kvcluster-netns")
NETNS_DIR = Path("/run/netns")  # where `ip netns add` pins a namespace
ETC_NETNS = Path("/etc/netns")  # `ip netns exec` bind-mounts /etc/netns/<ns>/* over /etc/*
FIRST_HOST = 11  # hosts get .11, .12, ...; .1 is the harness, the rest is left for people
LAST_HOST = 254
CLONE_NEWNET = 0x40000000
HOST_IFNAME = "eth0"  # each namespace has its own names, so every host's link is eth0

_IDENT = r"[0-9a-f]{4}"
_BRIDGE = re.compile(rf"^kvb({_IDENT})(?:p\d+)?$")
_VETH = re.compile(rf"^kvv({_IDENT})h\d+$")
_NETNS = re.compile(rf"^kvcluster-({_IDENT})-.+$")
_STATE = re.compile(rf"^({_IDENT})\.json$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$")
_HOSTS_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")


class NetworkError(RuntimeError):
    """A virtual network could not be made or changed; the message says what to do."""


# --------------------------------------------------------------------------- ip


@functools.cache
def _ip_binary() -> str:
    found = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise NetworkError("`ip` (iproute2) is not installed: apt-get install iproute2")
    return found


def _hint(stderr: str) -> str:
    if "Operation not permitted" in stderr or "Permission denied" in stderr:
        return " (network namespaces need root: CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    if "Unknown device type" in stderr or "not supported" in stderr.lower():
        return " (the kernel lacks veth or bridge support: modprobe veth bridge)"
    return ""


def _ip(*args: str, batch: Sequence[str] = (), force: bool = False) -> str:
    """Run `ip args`, or `ip args -batch -` with these lines; NetworkError if it fails.

    With force, every line of the batch is tried and failures are ignored: for
    removing things that may already be gone.
    """
    argv = [_ip_binary(), *args]
    if batch:
        argv += ["-force", "-batch", "-"] if force else ["-batch", "-"]
    stdin = "".join(f"{line}\n" for line in batch) if batch else None
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0 and not force:
        what = " ".join(argv[1:])
        if batch:
            what += " <<" + "; ".join(batch)
        err = done.stderr.strip()
        raise NetworkError(f"`ip {what}` failed (exit {done.returncode}): {err}{_hint(err)}")
    return done.stdout


def _links() -> list[str]:
    """The names of the root namespace's interfaces."""
    return [link["ifname"] for link in json.loads(_ip("-j", "link", "show") or "[]")]


def _netns_names() -> list[str]:
    try:
        return os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []


# --------------------------------------------------------------------------- owners


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: a pid alone may be reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(state: Path) -> bool:
    try:
        owner = json.loads(state.read_text())
        pid, start = int(owner["pid"]), str(owner["start"])
    except (OSError, ValueError, KeyError, TypeError):
        return False  # torn or foreign: nothing can be waiting on it
    return _start_time(pid) == start


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Exclusive across every process on this machine that makes or removes networks."""
    with open(LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove(ident: str) -> None:
    """Remove every namespace, interface and file of network `ident` (held: the lock).

    Found by name rather than from memory, so that it serves for an abandoned
    network too. Veths go first: deleting one end deletes its pair even if a
    process still lives in the namespace, which then no longer pins anything.
    """
    links, spaces = _belongings(ident)
    lines = [f"link del {n}" for n in sorted(links, key=lambda n: not n.startswith("kvv"))]
    lines += [f"netns del {n}" for n in spaces]
    if lines:
        _ip(batch=lines, force=True)
    if ETC_NETNS.is_dir():
        for d in ETC_NETNS.iterdir():
            if (m := _NETNS.match(d.name)) and m[1] == ident:
                shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            ETC_NETNS.rmdir()  # only if empty: made by us, or by someone who left it so
    (STATE_DIR / f"{ident}.json").unlink(missing_ok=True)
    left = [n for names in _belongings(ident) for n in names]
    if left:
        raise NetworkError(
            f"could not remove {left}: remove them with `ip link del` / `ip netns del`"
        )


def _belongings(ident: str) -> tuple[list[str], list[str]]:
    """The interfaces (root namespace) and namespaces of network `ident`."""
    links = [n for n in _links() if (m := _VETH.match(n) or _BRIDGE.match(n)) and m[1] == ident]
    spaces = [n for n in _netns_names() if (m := _NETNS.match(n)) and m[1] == ident]
    return links, spaces


def _remove_abandoned() -> None:
    """Remove the networks whose owner is gone (held: the lock)."""
    live = {m[1] for p in _state_files() if (m := _STATE.match(p.name)) and _owner_alive(p)}
    seen = {m[1] for p in _state_files() if (m := _STATE.match(p.name))}
    seen |= {m[1] for n in _links() if (m := _VETH.match(n) or _BRIDGE.match(n))}
    seen |= {m[1] for n in _netns_names() if (m := _NETNS.match(n))}
    if ETC_NETNS.is_dir():
        seen |= {m[1] for d in ETC_NETNS.iterdir() if (m := _NETNS.match(d.name))}
    for ident in sorted(seen - live):
        _remove(ident)


def _state_files() -> list[Path]:
    try:
        return list(STATE_DIR.iterdir())
    except FileNotFoundError:
        return []


def _taken_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the root namespace has an address in or a route to."""
    taken: list[ipaddress.IPv4Network] = []
    for link in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for a in link.get("addr_info", []):
            taken.append(ipaddress.IPv4Network(f"{a['local']}/{a['prefixlen']}", strict=False))
    for route in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        with contextlib.suppress(ValueError):
            net = ipaddress.IPv4Network(route.get("dst", ""), strict=False)
            if net.prefixlen > 0:  # a default route does not claim a subnet
                taken.append(net)
    return taken


def _free_subnet() -> ipaddress.IPv4Network:
    taken = _taken_networks()
    for a in range(200, 255):
        for x in range(256):
            candidate = ipaddress.IPv4Network(f"10.{a}.{x}.0/24")
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
    raise NetworkError("no free /24 in 10.200.0.0-10.254.255.0: close some Networks")


def _ident(subnet: ipaddress.IPv4Network) -> str:
    a, x = subnet.network_address.packed[1:3]
    return f"{a:02x}{x:02x}"


# --------------------------------------------------------------------------- checks


@functools.cache
def available() -> str | None:
    """None if network namespaces, veths and bridges can be made here; else why not.

    Probes in a child that unshares a network namespace of its own, so that the
    probe leaves nothing behind even if it is killed.
    """
    if not sys.platform.startswith("linux"):
        return "network namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "network namespaces need root: run the tests as root (e.g. with sudo)"
    try:
        ip = _ip_binary()
    except NetworkError as e:
        return str(e)
    probe = (
        "import ctypes, os, subprocess, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"if libc.unshare({CLONE_NEWNET}) != 0:\n"
        "    sys.exit('unshare(CLONE_NEWNET): ' + os.strerror(ctypes.get_errno()))\n"
        "lines = 'link add p0 type veth peer name p1\\nlink add b0 type bridge\\n'\n"
        "lines += 'link set p0 master b0\\n'\n"
        "done = subprocess.run([sys.argv[1], '-batch', '-'], input=lines, text=True,\n"
        "                      capture_output=True)\n"
        "sys.exit(done.stderr.strip() or done.returncode)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe, ip], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not probe for network namespaces: {e}"
    if done.returncode != 0:
        err = done.stderr.strip()
        return f"cannot make a network namespace with a veth and a bridge: {err}{_hint(err)}"
    return None


def bridge_filtering() -> str | None:
    """A warning if the kernel hands bridged packets to iptables; else None.

    With br_netfilter's bridge-nf-call-iptables on, traffic between two hosts
    of a Network crosses the root namespace's FORWARD chain: a DROP policy
    there (Docker sets one) cuts hosts off from each other, though not from
    the harness.
    """
    try:
        on = Path("/proc/sys/net/bridge/bridge-nf-call-iptables").read_text().strip() == "1"
    except OSError:
        return None
    if not on:
        return None
    return (
        "net.bridge.bridge-nf-call-iptables = 1: packets between hosts pass the root "
        "namespace's iptables/nftables FORWARD chain; if hosts cannot reach each other, "
        "accept forwarding between kvb* bridges or set the sysctl to 0"
    )


def enter_namespace(namespace: str) -> None:
    """Move the calling thread into network namespace `namespace` (an `ip netns` name).

    For a child that did not inherit the Network (a forkserver's or spawned
    process): it needs only the name. Python 3.11 has no os.setns, hence libc.
    """
    path = NETNS_DIR / namespace
    libc = ctypes.CDLL(None, use_errno=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise NetworkError(f"no network namespace {namespace!r} ({e}): was it closed?") from None
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            why = os.strerror(ctypes.get_errno())
            raise NetworkError(f"setns into {path}: {why}{_hint(why)}")
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- network


@dataclass
class _Host:
    name: str
    namespace: str
    veth: str  # the root namespace's end, a port of a bridge
    address: str
    bridge: str


def _close_if_owner(ident: str, owner: int) -> None:
    """At exit: remove the network, unless this is a forked child that inherited it."""
    if os.getpid() != owner:
        return
    try:
        with _machine_lock():
            _remove(ident)
    except (NetworkError, OSError) as e:
        print(f"kvcluster.netns: could not remove network {ident}: {e}", file=sys.stderr)


class Network:
    """One virtual LAN: a bridge in the root namespace (the harness's side, with
    address .1 of the subnet) and hosts, each its own network namespace with one
    veth, `eth0`, whose other end is a port of the bridge.

    The harness reaches every host on its address; hosts reach each other and
    the harness (`gateway`), and nothing else: they have no default route.
    """

    def __init__(self) -> None:
        if os.geteuid() != 0:
            raise NetworkError("network namespaces need root: run as root (e.g. with sudo)")
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._down: set[str] = set()  # hosts whose link is down
        self._hosts: dict[str, _Host] = {}
        self._hosts_file: dict[str, str] = {}
        self._next_veth = 1
        self._next_address = FIRST_HOST
        self._ever_used: set[str] = set()
        self._side_bridges: list[str] = []
        self._closed = False
        with _machine_lock():
            _remove_abandoned()
            self.subnet = _free_subnet()
            self.ident = _ident(self.subnet)
            owner = os.getpid()
            state = {"pid": owner, "start": _start_time(owner), "subnet": str(self.subnet)}
            (STATE_DIR / f"{self.ident}.json").write_text(json.dumps(state))
            self._finalizer = weakref.finalize(self, _close_if_owner, self.ident, owner)
            self.gateway = str(self.subnet.network_address + 1)
            self.bridge = f"kvb{self.ident}"
            try:
                # A bridge takes the lowest MAC of its ports unless given one: the
                # gateway's MAC would change as partitions move ports, and hosts
                # would keep sending to the stale one.
                a, x = self.subnet.network_address.packed[1:3]
                _ip(
                    batch=[
                        *_bridge_lines(self.bridge),
                        f"link set {self.bridge} address 02:6b:76:{a:02x}:{x:02x}:01",
                        f"addr add {self.gateway}/24 dev {self.bridge}",
                    ]
                )
            except BaseException:
                _remove(self.ident)
                self._finalizer.detach()
                raise

    # -- hosts

    @property
    def hosts(self) -> list[str]:
        """The hosts' names, in the order they were added."""
        return list(self._hosts)

    def add_host(self, name: str) -> str:
        """Make host `name`: a namespace, its link up, the next free address (returned)."""
        if not _HOST_NAME.match(name):
            raise NetworkError(f"bad host name {name!r}: use 1-32 letters, digits, '_', '.' or '-'")
        with self._lock:
            self._check_open()
            if name in self._hosts:
                raise NetworkError(f"host {name!r} already exists on network {self.ident}")
            address = self._take_address()
            host = _Host(
                name=name,
                namespace=f"kvcluster-{self.ident}-{name}",
                veth=f"kvv{self.ident}h{self._next_veth}",
                address=address,
                bridge=self.bridge,
            )
            self._next_veth += 1
            try:
                with _machine_lock():
                    # Under the lock, the first `ip netns add` of a machine, which
                    # makes /run/netns a mount point, cannot race another one.
                    _ip(
                        batch=[
                            f"netns add {host.namespace}",
                            f"link add {host.veth} type veth peer name {HOST_IFNAME}"
                            f" netns {host.namespace}",
                            f"link set {host.veth} addrgenmode none master {self.bridge} up",
                        ]
                    )
                _ip(
                    "-n",
                    host.namespace,
                    batch=[
                        "link set lo up",
                        # No IPv6 link-local address: no duplicate address detection,
                        # no router solicitations; the network is IPv4 only.
                        f"link set {HOST_IFNAME} addrgenmode none",
                        f"addr add {address}/24 dev {HOST_IFNAME}",
                        f"link set {HOST_IFNAME} up",
                    ],
                )
            except BaseException:
                # Half a host would block the name: take back whatever was made.
                lines = [f"link del {host.veth}", f"netns del {host.namespace}"]
                with _machine_lock():
                    _ip(batch=lines, force=True)
                raise
            self._hosts[name] = host
            self._forget_neighbour(address)
            if self._hosts_file:
                self._write_hosts_file(host)
            return address

    def address(self, name: str) -> str:
        return self._host(name).address

    def namespace(self, name: str) -> str:
        """The host's name for `ip netns` (unique on this machine)."""
        return self._host(name).namespace

    def readdress(self, name: str) -> str:
        """Give the host a new free address in place of its old one; return it.

        The old address stops answering at once: as a machine that came back
        on another IP, not as a node told to ignore it.
        """
        with self._lock:
            self._check_open()
            host = self._host(name)
            old, new = host.address, self._take_address()
            _ip(
                "-n",
                host.namespace,
                batch=[
                    f"addr del {old}/24 dev {HOST_IFNAME}",
                    f"addr add {new}/24 dev {HOST_IFNAME}",
                ],
            )
            host.address = new
            self._forget_neighbour(new)
            if self._hosts_file:
                self._write_hosts_file(host)
            return new

    def _take_address(self) -> str:
        """The next address never used on this network, or a free one once all were used."""
        used = {h.address for h in self._hosts.values()}
        while self._next_address <= LAST_HOST:
            a = str(self.subnet.network_address + self._next_address)
            self._next_address += 1
            if a not in used:
                return a
        for n in range(FIRST_HOST, LAST_HOST + 1):
            a = str(self.subnet.network_address + n)
            if a not in used:
                return a
        raise NetworkError(f"network {self.ident} has no free address left: remove hosts")

    def _forget_neighbour(self, address: str) -> None:
        """Drop cached MACs of a reused address, so it answers from its new host at once."""
        if address in self._ever_used:
            _ip(batch=[f"neigh flush to {address}"], force=True)
            for h in self._hosts.values():
                _ip("-n", h.namespace, batch=[f"neigh flush to {address}"], force=True)
        self._ever_used.add(address)

    def _host(self, name: str) -> _Host:
        try:
            return self._hosts[name]
        except KeyError:
            raise NetworkError(
                f"no host {name!r} on network {self.ident} (hosts: {', '.join(self._hosts)})"
            ) from None

    def _check_open(self) -> None:
        if self._closed:
            raise NetworkError(f"network {self.ident} is closed: make a new Network")

    # -- running inside a host

    def enter(self, name: str) -> None:
        """Move the calling thread (the whole process if it has one thread) into the host's
        namespace: for a freshly forked child, before it binds. /etc/netns files do not apply."""
        enter_namespace(self._host(name).namespace)

    def exec_argv(self, name: str, argv: Sequence[str]) -> list[str]:
        """argv run inside the host, with its /etc/netns/<ns>/hosts if set_hosts_file set one."""
        return [_ip_binary(), "netns", "exec", self._host(name).namespace, *argv]

    def set_hosts_file(self, names: dict[str, str]) -> None:
        """Give every host (and those added later) an /etc/hosts of these name -> address
        lines plus localhost, seen by commands started with `exec_argv`."""
        for hostname, address in names.items():
            if not _HOSTS_FILE_NAME.match(hostname):
                raise NetworkError(f"bad host name {hostname!r} for a hosts file")
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise NetworkError(f"bad address {address!r} for {hostname!r}") from None
        with self._lock:
            self._check_open()
            self._hosts_file = dict(names)
            for host in self._hosts.values():
                self._write_hosts_file(host)

    def _write_hosts_file(self, host: _Host) -> None:
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
        lines += [f"{a}\t{n}" for n, a in self._hosts_file.items()]
        directory = ETC_NETNS / host.namespace
        with _machine_lock():  # another network's removal may rmdir an empty /etc/netns
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / ".hosts.tmp"
            tmp.write_text("\n".join(lines) + "\n")
            tmp.chmod(0o644)
            tmp.replace(directory / "hosts")  # a command starting now sees the old or the new

    # -- faults

    def link_down(self, name: str) -> None:
        """Cut the host's link, as a pulled cable: whatever it sends or is sent is lost
        (senders time out, or get "no route to host"). It keeps its address."""
        self._set_link(name, "down")

    def link_up(self, name: str) -> None:
        self._set_link(name, "up")

    def _set_link(self, name: str, state: str) -> None:
        with self._lock:
            self._check_open()
            _ip("link", "set", self._host(name).veth, state)
            if state == "down":
                self._down.add(name)
            else:
                self._down.discard(name)

    def reachable(self, name: str) -> bool:
        """Whether the harness reaches the host now: its link up, on the main bridge."""
        with self._lock:
            return name not in self._down and self._host(name).bridge == self.bridge

    def partition(self, *groups: Sequence[str]) -> None:
        """Split hosts into groups that talk only within their group.

        The largest group (the first of the largest) stays on the main bridge,
        with the harness; every other group gets a bridge of its own, without
        an address, so the harness cannot reach it either. Hosts named in no
        group are on the main bridge. A partition replaces the previous one;
        links set down stay down.
        """
        named = [n for g in groups for n in g]
        for n in named:
            self._host(n)
        if len(named) != len(set(named)):
            raise NetworkError(f"a host is in two groups: {[list(g) for g in groups]}")
        with self._lock:
            self._check_open()
            main = max(groups, key=len, default=())
            target = {h: self.bridge for h in self._hosts}
            wanted: list[str] = []
            for i, g in enumerate(groups):
                if i == groups.index(main) or not g:
                    continue
                bridge = f"kvb{self.ident}p{len(wanted) + 1}"
                wanted.append(bridge)
                target.update({n: bridge for n in g})
            self._arrange(target, wanted)

    def heal(self) -> None:
        """Every host back on the main bridge, every link up."""
        with self._lock:
            self._check_open()
            self._arrange({h: self.bridge for h in self._hosts}, [])
            if self._hosts:
                _ip(batch=[f"link set {h.veth} up" for h in self._hosts.values()])
            self._down.clear()

    def _arrange(self, target: dict[str, str], bridges: list[str]) -> None:
        lines = [line for b in bridges if b not in self._side_bridges for line in _bridge_lines(b)]
        for name, bridge in target.items():
            host = self._hosts[name]
            if host.bridge != bridge:
                lines.append(f"link set {host.veth} master {bridge}")
        lines += [f"link del {b}" for b in self._side_bridges if b not in bridges]
        if lines:
            _ip(batch=lines)
        for name, bridge in target.items():
            self._hosts[name].bridge = bridge
        self._side_bridges = list(bridges)

    # -- teardown

    def close(self) -> None:
        """Remove every namespace, veth, bridge and file of this network. Idempotent.

        Processes still inside a namespace are the owner's to kill; they do not
        stop the removal, and are left without a network.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._finalizer.detach()
            with _machine_lock():
                _remove(self.ident)

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._hosts)} hosts"
        return f"<Network {self.ident} {self.subnet} {state}>"

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Network belongs to the process that made it: give a child its namespace's name "
            "(Network.namespace) and call enter_namespace there"
        )


def _bridge_lines(bridge: str) -> list[str]:
    """ip lines that make a bridge which forwards at once (no STP, no forwarding delay)."""
    return [
        f"link add {bridge} type bridge stp_state 0 forward_delay 0",
        f"link set {bridge} addrgenmode none up",
    ]
