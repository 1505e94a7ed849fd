"""The node process: bind, (optionally) shake hands with a Cluster, serve until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import resource
import signal
import socket
import sys
from typing import Any

import orjson

from ..netns import enter_namespace
from ..tls import issuer_check
from .config import NodeConfig
from .driver import NodeDriver
from .forkserver import detach_node
from .http import ConnectionFailed, HttpConnection, HttpServer, Limits, use_tls_by_default
from .join import join
from .routes import Routes

# Seconds a removed node lingers before it exits: answers already written
# reach their clients, and whoever asks meanwhile is told it was removed
# (/v1/status says "removed"; client requests are refused with that reason).
REMOVED_LINGER = 1.0

# Descriptors kept for the node's own use whatever its clients do: WAL segments,
# snapshot files being written and received, peer links out, logs, the loop.
RESERVED_FDS = 256


class BindError(SystemExit):
    """The node cannot listen where it was told to: it exits rather than listen
    anywhere else (its peers would send the cluster token to whoever holds that
    address)."""


def bind(config: NodeConfig) -> list[socket.socket]:
    """Bind exactly the configured address (port 0: the OS picks a free one)."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((config.host, config.port))
        sock.listen(1024)
    except (OSError, OverflowError) as exc:
        sock.close()
        where = f"{config.host}:{config.port}"
        raise BindError(
            f"cannot listen on {where}: {str(exc).rstrip('.')}. Free that port, or choose another "
            f"with --listen HOST:PORT (the other members must know the new address)."
        ) from exc
    sock.setblocking(False)
    return [sock]


def limits_for_descriptors() -> Limits:
    """Connection limits that leave the node its own descriptors: the soft
    RLIMIT_NOFILE is raised to the hard one, and client connections get what
    is left after RESERVED_FDS (a flood of clients then meets a quick 503,
    never an EMFILE in the middle of writing a snapshot)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 16 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    peer_reserve = 64
    clients = max(16, min(10_000, soft - RESERVED_FDS - peer_reserve))
    return Limits(max_connections=clients, peer_reserve=peer_reserve)


def run_node(config: NodeConfig, handshake: Any = None, log_path: str | None = None) -> None:
    """Entry point of a node process started by `Cluster` (with a handshake pipe)
    or by `kvcluster serve` (without)."""
    if handshake is not None:
        _die_with_parent()
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if config.network_namespace is not None:
        enter_namespace(config.network_namespace)  # before anything binds or connects
    try:
        sockets = bind(config)
    except BindError as exc:
        if handshake is not None:
            handshake.send(("bind_failed", str(exc)))
        raise
    config.port = sockets[0].getsockname()[1]
    if handshake is not None:
        handshake.send(("bound", config.port))
        kind, members = handshake.recv()
        if kind != "start":
            return
        if members is not None:
            config.initial_members = members
    _choose_event_loop(config.event_loop)
    asyncio.run(serve(config, sockets, handshake))


def _choose_event_loop(name: str) -> None:
    if name != "uvloop":
        return
    try:
        import uvloop
    except ImportError:
        logging.getLogger(__name__).warning(
            "uvloop is not installed; using asyncio's event loop (pip install uvloop)"
        )
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def serve(config: NodeConfig, sockets: list[socket.socket], handshake: Any = None) -> None:
    """Serve until SIGTERM or SIGINT, or until the node learns that it was
    removed from the cluster (its log says why); either way the process then
    ends normally, with exit status 0 (a storage failure exits with 3)."""
    # With TLS every member is https: each call this node makes (peer links,
    # relays, joining) shows its peer certificate and checks the other's.
    use_tls_by_default(config.peer_tls())
    has_disk_state = bool(config.data_dir and os.path.isdir(config.data_dir)) and bool(
        os.listdir(config.data_dir or ".")
    )
    if handshake is None and not has_disk_state:
        if not config.initial_members and not config.join:
            where = f"{config.data_dir} holds no state" if config.data_dir else "no --data-dir"
            raise SystemExit(
                f"{where} to restart {config.name} from: start a new cluster with "
                f"--initial-cluster NAME=URL,..., or join one with --join URL"
            )
        await _refuse_unsafe_bootstrap(config)
    driver = NodeDriver(config)
    if not driver.node.raft.membership.members and not config.join:
        driver.stop()
        raise SystemExit(
            f"{config.data_dir} holds no membership yet (the node never received the "
            f"log's first entry, or an older kvcluster wrote the directory): start "
            f"{config.name} with --join URL, or with the same --initial-cluster as before"
        )
    server = HttpServer(
        Routes(driver),
        token=config.token,
        limits=limits_for_descriptors(),
        tls=config.server_tls(),
        peer_certificate=issuer_check(config.peer_trusted_ca_file or "") if config.tls else None,
    )
    driver.metrics.http = server  # open connections, for /metrics
    await server.listen(sockets)
    stop = asyncio.Event()
    driver.on_removed = stop.set  # a removed member shuts down, as etcd's does
    driver.start()
    join_task = _start_joining(driver)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if handshake is not None:
        handshake.send(("serving", config.port))
        handshake.close()
    else:
        print(f"kvcluster node {config.name} serving at {driver.address}", file=sys.stderr)
    await stop.wait()
    if join_task is not None:
        join_task.cancel()
    if driver.node.removed:
        await asyncio.sleep(REMOVED_LINGER)
    server.close()
    driver.stop()


def _start_joining(driver: NodeDriver) -> asyncio.Task[None] | None:
    """A new node (or one back on a new address) asks to be added."""
    config = driver.config
    known = driver.node.raft.membership.address(config.name)
    if not config.join or (driver.recovered and known == driver.address):
        return None

    def joined(via: str) -> None:
        driver.events.emit("joined", via=via)

    return asyncio.ensure_future(
        join(
            config.join,
            config.name,
            driver.address,
            driver.incarnation,
            config.token,
            joined=joined,
        )
    )


async def _refuse_unsafe_bootstrap(config: NodeConfig) -> None:
    """A node that lost its state must not bootstrap again as its old self.

    It would vote with a forgotten term and log, which can elect two leaders
    in one term or drop a committed entry. If any peer already has a term,
    the cluster exists, and the node must come back through --join.
    """
    from urllib.parse import urlsplit

    for name, url in config.initial_members.items():
        if name == config.name:
            continue
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            continue
        conn = HttpConnection(parts.hostname, parts.port)
        try:
            resp = await conn.request("GET", "/v1/status", timeout=1.0)
            term = int(orjson.loads(resp.body).get("term", 0))
        except (ConnectionFailed, ValueError, AttributeError, TypeError):
            continue
        finally:
            conn.close()
        if term > 0:
            raise SystemExit(
                f"{name} at {url} already runs a cluster (term {term}), and this node has "
                f"no state. Rejoin instead: kvcluster serve --name {config.name} "
                f"--listen {config.host}:{config.port} --join {url}"
            )


def _die_with_parent() -> None:
    """A node started by a Cluster must not outlive it, even if it is SIGKILLed.

    Its parent is the forkserver, which exits once the Cluster's process is gone
    (and then kills its nodes: see forkserver.py), provided no node holds the
    forkserver's alive pipe open; PR_SET_PDEATHSIG kills the node if the
    forkserver dies in any other way. A parent that died before prctl took
    effect is caught by comparing the parent pid with the forkserver's."""
    forkserver_pid = detach_node()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    parent = os.getppid()
    if parent == 1 or (forkserver_pid is not None and parent != forkserver_pid):
        os._exit(1)
