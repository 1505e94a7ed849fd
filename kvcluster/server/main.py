"""The node process: bind, (optionally) shake hands with a Cluster, serve until told to stop."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
import urllib.request
from typing import Any

from tornado.netutil import bind_sockets

from .api import make_app
from .config import NodeConfig
from .fasthttp import HttpServer
from .key_routes import KeyRoutes
from .node import NodeServer
from .operations import body_limit


def bind(config: NodeConfig) -> list[socket.socket]:
    """Bind the client/peer port; 0 lets the OS choose a free one."""
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    try:
        return bind_sockets(config.port, config.host, family=family)
    except OSError:
        if config.port == 0:
            raise
        return bind_sockets(0, config.host, family=family)  # the old port is taken


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
    has_disk_state = bool(config.data_dir and os.path.isdir(config.data_dir)) and bool(
        os.listdir(config.data_dir or ".")
    )
    if handshake is None and not has_disk_state:
        _refuse_unsafe_bootstrap(config)
    sockets = bind(config)
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
    node = NodeServer(config)
    server = HttpServer(KeyRoutes(node), make_app(node), max_body=body_limit(node))
    await server.listen(sockets)
    node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if handshake is not None:
        handshake.send(("serving", config.port))
        handshake.close()
    else:
        print(f"kvcluster node {config.name} serving at {node.address}", file=sys.stderr)
    await stop.wait()
    server.stop()
    node.stop()


def _refuse_unsafe_bootstrap(config: NodeConfig) -> None:
    """A node that lost its state must not bootstrap again as its old self.

    It would vote with a forgotten term and log, which can elect two leaders
    in one term or drop a committed entry. If any peer already has a term,
    the cluster exists, and the node must come back through --join.
    """
    for name, url in config.initial_members.items():
        if name == config.name:
            continue
        try:
            with urllib.request.urlopen(f"{url}/v1/status", timeout=1.0) as r:
                term = int(json.load(r).get("term", 0))
        except (OSError, ValueError):
            continue
        if term > 0:
            raise SystemExit(
                f"{name} at {url} already runs a cluster (term {term}), and this node has "
                f"no state. Rejoin instead: kvcluster serve --name {config.name} "
                f"--listen {config.host}:{config.port} --join {url}"
            )


def _die_with_parent() -> None:
    """A node started by a Cluster must not outlive it, even if it is SIGKILLed."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(1)


# Quiet tornado's per-request access log: it would dominate the node's CPU.
logging.getLogger("tornado.access").setLevel(logging.ERROR)
