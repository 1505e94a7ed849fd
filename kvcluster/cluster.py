"""A local cluster of node processes that a notebook or a test can start, hurt and watch.

Nodes are forked from a `forkserver`: a clean single-threaded process, so
forking stays safe even from a Jupyter kernel full of threads, and each node
starts with the node process's modules already imported. The forkserver is
shared by every Cluster of a process and lives as long as that process.

Nothing outlives the process that owns the Cluster. The Cluster stops its nodes
on exit, on exceptions and at interpreter shutdown. If the owner dies without
any of these (SIGKILL, a restarted Jupyter kernel), the forkserver sees it go,
kills the nodes and removes the owner's directories under the temp directory
before it exits itself (server/forkserver.py), and a node dies with its
forkserver whatever ends it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import numbers
import os
import secrets
import shutil
import signal
import ssl
import sys
import tempfile
import time
import types
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import multiprocess
import pandas as pd
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .netns import Network
from .netns import available as netns_available
from .raft import ConfigError, RaftOptions
from .server.config import NodeConfig, check_cluster
from .server.forkserver import OWNER_FILE, WORK_DIR_PREFIX
from .server.http import use_tls
from .server.main import run_node
from .tls import CertificateAuthority, client_context, write_key_pair

if TYPE_CHECKING:
    from .client import Client
    from .dashboard import Dashboard

_ctx = multiprocess.get_context("forkserver")
# forkserver first: importing it in the forkserver arms the clean-up after a dead owner.
_ctx.set_forkserver_preload(["kvcluster.server.forkserver", "kvcluster.server.main"])

T = TypeVar("T")

HARNESS_EVENTS = "harness.events.jsonl"  # what the harness did to the nodes (Cluster.mark)

# Timer settings by name. "slow" is for watching Raft by eye in the live view
# (cluster.dashboard()): a heartbeat a second and elections that take seconds,
# so each vote and each message of an election can be followed as it happens.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"heartbeat_interval": 0.1, "election_timeout": (0.5, 1.0)},
    "slow": {"heartbeat_interval": 1.0, "election_timeout": (4.0, 8.0)},
}


def remove_abandoned_work_dirs(tmp: Path) -> None:
    """Delete the work directories of Clusters whose process has died.

    A Cluster removes its directory when it is garbage-collected or at exit,
    but a Jupyter kernel that is shut down or restarted does neither (no atexit
    runs), so every notebook run would leave one behind. Directories without
    an owner file (kept on purpose, or made elsewhere) are left alone.
    """
    for d in tmp.glob(WORK_DIR_PREFIX + "*"):
        try:
            pid = int((d / OWNER_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if pid > 0 and pid != os.getpid() and not _process_exists(pid):
            shutil.rmtree(d, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


@dataclass
class NodeHandle:
    index: int
    name: str
    port: int = 0
    host: str = "127.0.0.1"  # the address it binds (its own, in a network namespace)
    process: Any = None
    incarnation: str = ""
    paused: bool = False
    removed: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class ClusterError(RuntimeError):
    pass


class PortTaken(ClusterError):
    """A node could not bind the port it was given (and exited, as it must)."""


class Cluster:
    """`with Cluster(n=5) as c:` starts five nodes on 127.0.0.1 and stops them after.

    Nodes are addressed by index 0..n-1 (`add_node()` appends). Times are seconds.
    They listen on ports the OS picks, or on first_port, first_port + 1, ... A
    setting no node could work with raises ConfigError (a ValueError) naming it.
    `preset` ("default" or "slow", see PRESETS) gives the heartbeat and election
    timeout that are not given explicitly.

    `tls=True` makes a throwaway CA in the work directory and a certificate for
    every node: clients and peers speak https, peers prove themselves with
    their certificates, and `ca_file`, `cert_file` and `key_file` are what a
    client outside the Cluster needs (`client()` passes them itself). With
    `client_cert_auth` every client must show a certificate from that CA.

    `netns=True` (root only, Linux) runs each node in a network namespace of
    its own, with its own address on a virtual bridge (kvcluster.netns), in
    place of 127.0.0.1: `partition` and `isolate` then take links down or
    move them to bridges of their own, so the kernel loses the packets (and
    this process cannot reach the cut-off nodes either, until `heal`); `cut`,
    `drop` and `delay` stay the nodes' own fault injection.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        heartbeat_interval: float | None = None,
        election_timeout: tuple[float, float] | None = None,
        preset: str = "default",
        read_mode: str = "read_index",
        pre_vote: bool = True,
        check_quorum: bool = True,
        request_timeout: float = 5.0,
        host: str = "127.0.0.1",
        first_port: int = 0,
        work_dir: str | os.PathLike[str] | None = None,
        token: str | None = None,
        seed: int | None = None,
        storage: str = "memory",
        data_dir: str | os.PathLike[str] | None = None,
        fsync: str = "always",
        snapshot_every: int = 10_000,
        snapshot_keep: int = 1_000,
        session_ttl: float = 300.0,
        history_keep: int = 10_000,
        quota_bytes: int = 1 << 30,
        event_loop: str = "uvloop",
        tls: bool = False,
        client_cert_auth: bool = False,
        netns: bool = False,
        start: bool = True,
        start_timeout: float = 30.0,
    ) -> None:
        if preset not in PRESETS:
            raise ConfigError("preset", f"must be one of {sorted(PRESETS)}, got {preset!r}")
        self.preset = preset
        if heartbeat_interval is None:
            heartbeat_interval = PRESETS[preset]["heartbeat_interval"]
        if election_timeout is None:
            election_timeout = PRESETS[preset]["election_timeout"]
        self.raft_options = RaftOptions(
            election_timeout=_seconds_pair(election_timeout),
            heartbeat_interval=_seconds(heartbeat_interval),
            pre_vote=pre_vote,
            check_quorum=check_quorum,
        )
        self.token = token or secrets.token_hex(16)
        # The one check `kvcluster serve` and `kvcluster up` make too (a
        # ConfigError naming the setting), before any directory or process exists.
        check_cluster(
            n,
            first_port,
            token=self.token,
            host=host,
            raft=self.raft_options,
            read_mode=read_mode,
            request_timeout=request_timeout,
            storage=storage,
            data_dir=os.fspath(data_dir) if data_dir is not None else "data",
            fsync=fsync,
            snapshot_every=snapshot_every,
            snapshot_keep=snapshot_keep,
            session_ttl=session_ttl,
            history_keep=history_keep,
            quota_bytes=quota_bytes,
            event_loop=event_loop,
            seed=seed,
        )
        self.first_port = first_port  # node i listens on first_port + i (0: any free port)
        self.read_mode = read_mode
        self.request_timeout = request_timeout
        self.host = host
        self.seed = seed
        self.start_timeout = start_timeout
        self._own_dir = work_dir is None
        if self._own_dir:
            remove_abandoned_work_dirs(Path(tempfile.gettempdir()))
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix=WORK_DIR_PREFIX))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if self._own_dir and os.environ.get("KVCLUSTER_KEEP_WORKDIR") is None:
            (self.work_dir / OWNER_FILE).write_text(str(os.getpid()), encoding="utf-8")
        self.storage = storage
        self.fsync = fsync
        self.snapshot_every = snapshot_every
        self.snapshot_keep = snapshot_keep
        self.session_ttl = session_ttl
        self.history_keep = history_keep
        self.quota_bytes = quota_bytes
        self.event_loop = event_loop
        # Disk data lives in data_dir (or the work directory) and survives restarts.
        self.data_dir = Path(data_dir) if data_dir is not None else self.work_dir / "data"
        self.tls = bool(tls)
        self.client_cert_auth = bool(client_cert_auth)
        if client_cert_auth and not tls:
            raise ConfigError("client_cert_auth", "needs tls=True")
        self._network: Network | None = None
        if netns:  # last of the checks: it is the first thing made outside this process
            why = netns_available()
            if why is not None:
                raise ConfigError("netns", f"needs network namespaces, and here: {why}")
            self._network = Network()
        self._ca: CertificateAuthority | None = None
        self._issued_for: dict[str, str] = {}  # node name -> the host its certificate names
        self._harness_tls: ssl.SSLContext | None = None
        self._bootstrap: dict[str, str] = {}
        self._faults: defaultdict[int, dict[str, Any]] = defaultdict(
            lambda: {"block": set(), "block_out": set(), "drop": {}, "delay": {}}
        )
        self.nodes = [NodeHandle(i, f"n{i}", host=host) for i in range(n)]
        for h in self.nodes:
            self._give_address(h)
        self._session = _harness_session()
        if self.tls:
            self._make_certificates()
        self._dashboard: Dashboard | None = None
        self._started = False
        self._finalizer = weakref.finalize(self, _stop_processes, self.nodes, self._network)
        atexit.register(self._finalizer)
        if start:
            self.start()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Cluster:
        if self._started:
            return self
        self._started = True
        try:
            pipes = [self._spawn(h, port=self._first_port_of(h)) for h in self.nodes]
            ports = [
                self._recv(h, pipe, "bound") for h, pipe in zip(self.nodes, pipes, strict=True)
            ]
            for h, port in zip(self.nodes, ports, strict=True):
                self._bound(h, port)
            members = {h.name: self._url(h) for h in self.nodes}
            self._bootstrap = members
            for pipe in pipes:
                pipe.send(("start", members))
            for h, pipe in zip(self.nodes, pipes, strict=True):
                self._recv(h, pipe, "serving")
                pipe.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL for stragglers). Idempotent."""
        self._close_dashboard()
        _stop_processes(self.nodes, self._network)
        for h in self.nodes:
            use_tls(h.host, h.port, None)
        self._session.close()
        if self._own_dir and os.environ.get("KVCLUSTER_KEEP_WORKDIR") is None:
            # The events files are still needed by events() after stop, so keep
            # the directory until the Cluster object itself goes away.
            weakref.finalize(self, shutil.rmtree, str(self.work_dir), True)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ live view

    def dashboard(self, port: int = 0) -> Dashboard:
        """Serve the live view of this cluster on 127.0.0.1 and return it.

        Its `url` (with a token) opens the page in a browser; in JupyterLab the
        returned object shows the page inline. It runs on a thread of this
        process until `close()` or until the Cluster stops. Called again, it
        returns the same view (unless another port is asked for).
        """
        from .dashboard import Dashboard

        current = self._dashboard
        if current is not None and current.running and port in (0, current.port):
            return current
        self._close_dashboard()
        self._dashboard = Dashboard(self, port)
        return self._dashboard

    def _close_dashboard(self) -> None:
        dashboard, self._dashboard = getattr(self, "_dashboard", None), None
        if dashboard is not None:
            dashboard.close()

    # ------------------------------------------------------------------ TLS

    @property
    def ca_file(self) -> str | None:
        """The CA every node's certificate comes from (None without TLS)."""
        return str(self._tls_dir / "ca.pem") if self.tls else None

    @property
    def cert_file(self) -> str | None:
        """A certificate from that CA for clients and tools (None without TLS)."""
        return str(self._tls_dir / "client.pem") if self.tls else None

    @property
    def key_file(self) -> str | None:
        return str(self._tls_dir / "client.key") if self.tls else None

    @property
    def _tls_dir(self) -> Path:
        return self.work_dir / "tls"

    def _make_certificates(self) -> None:
        """A CA of this Cluster's own, and the harness's certificate (a peer
        CA certificate: the harness calls admin routes)."""
        self._tls_dir.mkdir(exist_ok=True)
        self._ca = CertificateAuthority.create(f"kvcluster Cluster CA ({self.work_dir.name})")
        self._ca.certificate_file(self._tls_dir / "ca.pem")
        certificate, key = self._ca.issue("harness", [self.host, "localhost"])
        assert self.cert_file is not None and self.key_file is not None
        write_key_pair(certificate, key, self.cert_file, self.key_file)
        self._harness_tls = client_context(self.ca_file, self.cert_file, self.key_file)
        self._session.verify = self.ca_file
        self._session.cert = (self.cert_file, self.key_file)

    def _node_certificate(self, h: NodeHandle) -> tuple[str, str]:
        """Node h's certificate for the address it has now (issued again when it moves)."""
        assert self._ca is not None
        cert_file, key_file = self._tls_dir / f"{h.name}.pem", self._tls_dir / f"{h.name}.key"
        # Remembered here, not on disk: a work directory reused by a later
        # Cluster holds certificates from that Cluster's CA, not this one's.
        if self._issued_for.get(h.name) != h.host:
            certificate, key = self._ca.issue(h.name, [h.host, "localhost"])
            write_key_pair(certificate, key, cert_file, key_file)
            self._issued_for[h.name] = h.host
        return str(cert_file), str(key_file)

    # ------------------------------------------------------------------ network namespaces

    def _give_address(self, h: NodeHandle, *, new: bool = False) -> None:
        """With netns: node h's host in the virtual network (a new address if `new`)."""
        network = self._network
        if network is None:
            return
        if h.name not in network.hosts:
            h.host = network.add_host(h.name)
        elif new:
            use_tls(h.host, h.port, None)
            h.host = network.readdress(h.name)

    def _reachable(self, h: NodeHandle) -> bool:
        """Whether this process can reach node h (always, without netns)."""
        return self._network is None or self._network.reachable(h.name)

    def _bound(self, h: NodeHandle, port: int) -> None:
        """Node h listens on `port`: calls from this process to it use TLS if the cluster does."""
        if h.port:
            use_tls(h.host, h.port, None)
        h.port = port
        use_tls(h.host, port, self._harness_tls)

    def _first_port_of(self, h: NodeHandle) -> int:
        """Where node h listens when the cluster starts: first_port + its index, or
        0 (any free port) if no first port was given."""
        return self.first_port + h.index if self.first_port else 0

    def _url(self, h: NodeHandle) -> str:
        host = f"[{h.host}]" if ":" in h.host else h.host
        return f"{'https' if self.tls else 'http'}://{host}:{h.port}"

    def _config(self, h: NodeHandle, port: int, join: list[str]) -> NodeConfig:
        return NodeConfig(
            name=h.name,
            token=self.token,
            host=h.host,
            network_namespace=None if self._network is None else self._network.namespace(h.name),
            port=port,
            join=join,
            incarnation=h.incarnation,
            raft=self.raft_options,
            read_mode=self.read_mode,
            request_timeout=self.request_timeout,
            events_path=str(self.work_dir / f"{h.name}.events.jsonl"),
            fault_injection=True,
            storage=self.storage,
            data_dir=str(self.data_dir / h.name) if self.storage == "disk" else None,
            fsync=self.fsync,  # type: ignore[arg-type]
            snapshot_every=self.snapshot_every,
            snapshot_keep=self.snapshot_keep,
            session_ttl=self.session_ttl,
            history_keep=self.history_keep,
            quota_bytes=self.quota_bytes,
            event_loop=self.event_loop,
            seed=None if self.seed is None else self.seed * 1000 + h.index,
            **self._tls_settings(h),
        )

    def _tls_settings(self, h: NodeHandle) -> dict[str, Any]:
        if not self.tls:
            return {}
        cert_file, key_file = self._node_certificate(h)
        return {
            "cert_file": cert_file,
            "key_file": key_file,
            "peer_trusted_ca_file": self.ca_file,
            "trusted_ca_file": self.ca_file if self.client_cert_auth else None,
            "client_cert_auth": self.client_cert_auth,
        }

    def _spawn(self, h: NodeHandle, port: int, join: Sequence[str] = ()) -> Any:
        parent, child = _ctx.Pipe()
        config = self._config(h, port, list(join))
        log_path = str(self.work_dir / f"{h.name}.log")
        h.process = _ctx.Process(
            target=run_node, args=(config, child, log_path), name=f"kvcluster-{h.name}", daemon=True
        )
        with _main_module_hidden():
            h.process.start()
        h.paused = False
        child.close()
        return parent

    def _recv(self, h: NodeHandle, pipe: Any, expected: str) -> int:
        if not pipe.poll(self.start_timeout):
            raise ClusterError(f"node {h.name} did not start in time{self._log_tail(h)}")
        try:
            kind, value = pipe.recv()
        except EOFError as exc:
            raise ClusterError(f"node {h.name} exited while starting{self._log_tail(h)}") from exc
        if kind == "bind_failed":
            h.process.join(5)
            raise PortTaken(f"node {h.name}: {value}")
        assert kind == expected, (kind, expected)
        return int(value)

    def _log_tail(self, h: NodeHandle, lines: int = 20) -> str:
        """The end of a node's log, for errors: the work directory may be gone later."""
        path = self.work_dir / f"{h.name}.log"
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f" (no log at {path})"
        return f"; the end of {path}:\n" + "\n".join(tail) if tail else f" ({path} is empty)"

    # ------------------------------------------------------------------ addressing

    @property
    def endpoints(self) -> list[str]:
        """One base URL per node, by index (a removed node keeps its slot)."""
        return [self._url(h) for h in self.nodes]

    def _live_endpoints(self) -> list[str]:
        return [self._url(h) for h in self.nodes if h.alive and not h.removed]

    def client(self, **kwargs: Any) -> Client:
        """A client that knows every node; it finds the leader by itself."""
        from .client import Client

        kwargs.setdefault("token", self.token)
        if self.tls:
            kwargs.setdefault("ca", self.ca_file)
            kwargs.setdefault("cert", self.cert_file)
            kwargs.setdefault("key", self.key_file)
        return Client(self._live_endpoints() or self.endpoints, **kwargs)

    def node_status(self, i: int, timeout: float = 1.0) -> dict[str, Any] | None:
        h = self.nodes[i]
        if not h.alive or h.paused or not self._reachable(h):
            return None
        try:
            r = self._session.get(f"{self._url(h)}/v1/status", timeout=timeout)
            return dict(r.json()) if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def leader(self) -> int | None:
        """Index of the node that leads in the highest term any node reports, or None."""
        best: tuple[int, int] | None = None
        for h in self.nodes:
            s = self.node_status(h.index)
            if s and s["role"] == "leader" and (best is None or s["term"] > best[0]):
                best = (s["term"], h.index)
        return best[1] if best else None

    def wait_for_leader(self, timeout: float = 30.0, *, exclude: int | Sequence[int] = ()) -> int:
        """Wait until the live nodes agree on a leader (not in `exclude`); its index."""
        excluded = {exclude} if isinstance(exclude, int) else set(exclude)

        def agreed() -> int | None:
            live = {
                h.index: s
                for h in self.nodes
                if not h.removed and (s := self.node_status(h.index)) is not None
            }
            leaders = [(s["term"], i) for i, s in live.items() if s["role"] == "leader"]
            if not leaders:
                return None
            term, index = max(leaders)
            if index in excluded:
                return None
            name = self.nodes[index].name
            supporters = sum(1 for s in live.values() if s["term"] == term and s["leader"] == name)
            voters = sum(1 for m in live[index]["members"].values() if m["voter"])
            return index if supporters >= voters // 2 + 1 else None

        return self.wait_until(agreed, timeout, f"no leader was elected within {timeout}s")

    def wait_until(
        self, condition: Callable[[], T | None], timeout: float = 30.0, message: str = ""
    ) -> T:
        """Poll `condition` until it returns something other than None or False."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            value = condition()
            if value is not None and value is not False:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(message or f"condition not met within {timeout}s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    # ------------------------------------------------------------------ faults
    #
    # A node cannot log its own SIGKILL or SIGSTOP, so each fault is also written
    # to harness.events.jsonl (event "inject", field "action") on the nodes'
    # monotonic clock: events() and the timeline plots show it. Each returns the
    # time.monotonic() at which it struck.

    def mark(
        self, action: str, node: int | None = None, *, t: float | None = None, **fields: Any
    ) -> float:
        """Record in events() that `action` happened (to node `node`) at `t` (default now)."""
        t = time.monotonic() if t is None else t
        record: dict[str, Any] = {"t": t, "node": None, "event": "inject", "action": action}
        record.update(fields)
        if node is not None:
            record["node"] = self.nodes[node].name
        with open(self.work_dir / HARNESS_EVENTS, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, separators=(",", ":")) + "\n")
        return t

    def kill(self, i: int) -> float:
        """SIGKILL node i: no goodbye, like a crash or a power cut."""
        t = time.monotonic()
        if self._kill(i):
            self.mark("kill", i, t=t)
        return t

    def _kill(self, i: int) -> bool:
        h = self.nodes[i]
        h.paused = False
        if h.process is not None and h.process.is_alive():
            os.kill(h.process.pid, signal.SIGKILL)
            h.process.join(10)
            return True
        return False

    def restart(self, i: int, *, new_address: bool = False) -> float:
        """Start node i again after a kill (or kill it first).

        `new_address`: it comes back elsewhere, as a machine that moved: a new
        address in its network namespace (netns=True), else a new port. It
        then asks the cluster to record its new address, as a joining node does.

        With disk storage it recovers its snapshot and log and is itself again.
        With memory storage it remembers nothing, so it rejoins as a new
        incarnation: it asks the leader to re-add it as a learner, catches up,
        and only votes again once the log makes it a voter under that new
        incarnation. That needs a live majority of the other members.
        """
        h = self.nodes[i]
        self.kill(i)
        t = self.mark("restart", i)
        if self.storage == "memory":
            h.incarnation = secrets.token_hex(6)
        port = h.port
        if new_address:
            if self._network is not None:
                self._give_address(h, new=True)
            else:
                port = 0
        others = [self._url(o) for o in self.nodes if o is not h and not o.removed]
        # With disk storage the node recovers its log and comes back as itself
        # (it asks to join only if it had never joined, or its address changed).
        bootstrap = self._bootstrap if h.name in self._bootstrap else None
        self._start_joining(h, port, others, bootstrap)
        self._push_faults()  # a partition it was in still holds
        return t

    def add_node(self, via: int | None = None) -> int:
        """Start a new node that joins through `/register` on node `via` (or on
        any member); returns its index. It joins as a learner and becomes a
        voter once it has caught up."""
        h = NodeHandle(
            len(self.nodes), f"n{len(self.nodes)}", host=self.host, incarnation=secrets.token_hex(6)
        )
        if via is not None:
            others = [self._url(self.nodes[via])]
        else:
            others = [self._url(o) for o in self.nodes if not o.removed]
        self.nodes.append(h)
        self._give_address(h)
        self._start_joining(h, 0, others)
        return h.index

    def _start_joining(
        self, h: NodeHandle, port: int, join: list[str], bootstrap: dict[str, str] | None = None
    ) -> None:
        pipe = self._spawn(h, port=port, join=join)
        try:
            try:
                self._bound(h, self._recv(h, pipe, "bound"))
            except PortTaken:
                # Someone took its port while it was down. A node binds exactly
                # its address or exits, so it comes back on a new port, and asks
                # to be re-added there (its old address is void).
                pipe.close()
                pipe = self._spawn(h, port=0, join=join)
                self._bound(h, self._recv(h, pipe, "bound"))
            pipe.send(("start", bootstrap if self.storage == "disk" else None))
            self._recv(h, pipe, "serving")
        finally:
            pipe.close()

    def remove_node(
        self, i: int, timeout: float = 30.0, *, exit_timeout: float | None = 30.0
    ) -> bool:
        """Remove node i from the membership through the log; True if it then
        exited by itself.

        A removed node learns of its removal (a member answers it so, or it
        applies the change itself: a removed leader does) and exits with status
        0, saying why in its log. Wait up to `exit_timeout` seconds for that,
        then stop it anyway: one cut off by a partition, paused or killed cannot
        learn it. `exit_timeout=None` waits for nothing and leaves the node to
        find out by itself (`stop()` stops it if it never does)."""
        h = self.nodes[i]
        with self.client(timeout=timeout) as c:
            c.remove_member(h.name)
        h.removed = True
        self.mark("remove", i)
        if exit_timeout is None:
            return False
        if h.alive and not h.paused:
            h.process.join(exit_timeout)
        if self._kill(i):
            return False  # still running: it never learned of its removal
        return h.process is not None and h.process.exitcode == 0

    def pause(self, i: int) -> float:
        """SIGSTOP node i: it stops mid-flight, like a long GC pause or a VM freeze."""
        t = time.monotonic()
        h = self.nodes[i]
        if h.alive and not h.paused:
            os.kill(h.process.pid, signal.SIGSTOP)
            h.paused = True
            self.mark("pause", i, t=t)
        return t

    def resume(self, i: int) -> float:
        """SIGCONT a paused node i."""
        t = time.monotonic()
        h = self.nodes[i]
        if h.alive and h.paused:
            os.kill(h.process.pid, signal.SIGCONT)
            h.paused = False
            self.mark("resume", i, t=t)
            self._push_faults()
        return t

    def partition(self, *groups: Sequence[int]) -> float:
        """Cut the network so that nodes talk only within their group.

        Nodes not named in any group end up alone. `heal()` undoes it.
        """
        names = [[self.nodes[i].name for i in g] for g in groups]
        t = self.mark("partition", groups=names)
        self._partition(groups)
        return t

    def _partition(self, groups: Sequence[Sequence[int]]) -> None:
        if self._network is not None:
            named = {i for g in groups for i in g}
            alone = [[h.name] for h in self.nodes if h.index not in named]
            self._network.partition(*[[self.nodes[i].name for i in g] for g in groups], *alone)
            return
        group_of = {i: g for g, members in enumerate(groups) for i in members}
        for h in self.nodes:
            mine = group_of.get(h.index, -1 - h.index)
            others = {o.name for o in self.nodes if group_of.get(o.index, -1 - o.index) != mine}
            self._faults[h.index]["block"] = others
        self._push_faults()

    def isolate(self, i: int) -> float:
        """Cut node i off from every other node."""
        t = self.mark("isolate", i)
        if self._network is not None:
            self._network.link_down(self.nodes[i].name)  # a pulled cable
        else:
            self._partition([[j for j in range(len(self.nodes)) if j != i], [i]])
        return t

    def cut(self, src: int, dst: int) -> float:
        """A one-way partition: messages from node src to node dst are lost."""
        t = self.mark("cut", src, to=self.nodes[dst].name)
        self._faults[src]["block_out"].add(self.nodes[dst].name)
        self._push_faults()
        return t

    def drop(self, src: int, dst: int, probability: float) -> float:
        """Lose this fraction of the messages from node src to node dst."""
        t = self.mark("drop", src, to=self.nodes[dst].name, probability=probability)
        self._faults[src]["drop"][self.nodes[dst].name] = probability
        self._push_faults()
        return t

    def delay(self, src: int, dst: int, seconds: float) -> float:
        """Deliver the messages from node src to node dst this much later."""
        t = self.mark("delay", src, to=self.nodes[dst].name, seconds=seconds)
        self._faults[src]["delay"][self.nodes[dst].name] = seconds
        self._push_faults()
        return t

    def break_disk(self, i: int, *, after: int = 1, kind: str = "save") -> float:
        """Node i's disk fails at its `after`-th write from now ("save": ENOSPC,
        as a full disk; "fsync": EIO from an fsync). The node must stop there
        and lose nothing it acknowledged; `restart(i)` brings it back."""
        t = self.mark("break_disk", i, kind=kind, after=after)
        self._post_faults(self.nodes[i], {"disk": {"fail": kind, "after": after}})
        return t

    def heal(self) -> float:
        """Undo every partition, cut, drop and delay."""
        t = self.mark("heal")
        if self._network is not None:
            self._network.heal()
        self._faults.clear()
        self._push_faults()
        return t

    def _push_faults(self) -> None:
        for h in self.nodes:
            if h.alive and not h.paused and self._reachable(h):
                self._post_faults(h)

    def _post_faults(self, h: NodeHandle, extra: dict[str, Any] | None = None) -> None:
        """Give node h its link faults (they replace what it had), plus `extra`."""
        f = self._faults[h.index]
        body = {
            "block": sorted(f["block"]),
            "block_out": sorted(f["block_out"]),
            "drop": f["drop"],
            "delay": f["delay"],
            **(extra or {}),
        }
        r = self._session.post(
            f"{self._url(h)}/admin/fault",
            json=body,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=5,
        )
        r.raise_for_status()

    # ------------------------------------------------------------------ observation

    def status(self) -> pd.DataFrame:
        """One row per node: process state and what the node says about itself."""
        rows = []
        for h in self.nodes:
            s = self.node_status(h.index) or {}
            rows.append(
                {
                    "index": h.index,
                    "name": h.name,
                    "endpoint": self._url(h),
                    "alive": h.alive,
                    "paused": h.paused,
                    "removed": h.removed,
                    "role": s.get("role"),
                    "term": s.get("term"),
                    "leader": s.get("leader"),
                    "commit_index": s.get("commit_index"),
                    "applied_index": s.get("applied_index"),
                    "last_index": s.get("last_index"),
                    "voter": s.get("voter"),
                }
            )
        return pd.DataFrame(rows).set_index("index")

    def events(self) -> pd.DataFrame:
        """Every node's events merged into one timeline, `t` in seconds from the first."""
        records: list[dict[str, Any]] = []
        for path in sorted(self.work_dir.glob("*.events.jsonl")):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    with contextlib.suppress(ValueError):
                        records.append(json.loads(line))
        df = pd.DataFrame.from_records(records)
        if df.empty:
            return df
        df = df.sort_values("t", kind="stable").reset_index(drop=True)
        df["time"] = df["t"] - df["t"].iloc[0]
        if "term" in df.columns:  # an integer; <NA>, not NaN, where an event has none
            df["term"] = df["term"].astype("Int64")
        return df


def _seconds(value: Any) -> Any:
    """A real number as a float (numpy's included); anything else as it is, for
    RaftOptions to refuse by name."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def _seconds_pair(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        return (_seconds(value[0]), _seconds(value[1]))
    return value


def _harness_session() -> requests.Session:
    """The harness's own HTTP session (status, fault injection).

    A node closes keep-alive connections that stay idle (60 s), and one paused
    with SIGSTOP closes them the moment it resumes, while the harness may be
    sending on one: what the harness sends (GET /v1/status, POST /admin/fault,
    which replaces a node's faults) is safe to send twice, so a request lost on
    a connection the node just closed is sent again on a new one."""
    session = requests.Session()
    session.trust_env = False  # never route the nodes' loopback traffic through a proxy
    retry = Retry(total=2, connect=2, read=2, status=0, allowed_methods=None, backoff_factor=0)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


@contextlib.contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Start a node without re-running the user's script in it.

    Like spawn, forkserver re-imports the parent's `__main__` in the child so
    that functions defined there can be unpickled. A node runs only kvcluster
    code, so a script without an `if __name__ == "__main__":` guard would start
    a cluster inside every node. Show the child an empty main module instead.
    """
    real = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = real


def _stop_processes(nodes: list[NodeHandle], network: Network | None = None) -> None:
    procs = [h.process for h in nodes if h.process is not None and h.process.is_alive()]
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)  # a paused node cannot handle SIGTERM
            p.terminate()
    deadline = time.monotonic() + 3.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.join(5)
    if network is not None:
        network.close()  # after the nodes: none is left inside
