"""The node's HTTP/1.1 server: llhttp framing (httptools) on asyncio.Protocol.

Why this shape: framing is not ours to hand-write (llhttp is the parser of
Node.js and uvicorn), and a Protocol costs no task and no coroutine per
request, which mattered at 15k requests/s on a leader (issue #6). The stack
knows nothing of keys or Raft: a router maps (method, path) to a `Route`
(see `request`), whose handler answers through a `Reply`.

Every input is bounded (see `Limits`): the head's size and time, the body's
size and time, the bytes all unfinished requests hold together, the number of
client connections, and the answers a client leaves unread. This module holds
what is per server: listening, admitting connections (clients, peers, and the
reserve kept for peers), the routing errors, and the one periodic sweep that
checks every connection's deadline (a timer per request costs measurable CPU
at 15k requests/s). One connection's work is in `connection`.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

from .connection import CLIENT, PEER, PENDING, REFUSED, ServerConnection
from .errors import INTERNAL_MESSAGE, code_for, error_body
from .limits import Limits
from .request import Reply, Request, Route, Router

log = logging.getLogger("kvcluster.server.http")

_DEFAULT_LIMITS: Final = Limits()


class HttpServer:
    """Serves `router`'s routes on the sockets given to `listen`.

    Introspection (tests, metrics): `clients`, `peers` and `pending`
    (connections accepted beyond max_connections, until their first request
    says whether they are a peer), `buffered` (bytes held for unfinished
    requests, all connections), `refused` (counts by error code, plus
    "connection_limit" for connections closed at accept, "idle" for idle
    connections closed and "unread" for clients that left their answers
    unread for idle_timeout), and `unsent()`.
    """

    def __init__(
        self,
        router: Router,
        *,
        token: str,
        limits: Limits = _DEFAULT_LIMITS,
        tls: ssl.SSLContext | None = None,
        peer_certificate: Callable[[bytes | None], bool] | None = None,
    ) -> None:
        """`tls`: serve TLS with this context (None: plain HTTP). `peer_certificate`
        says whether a client's certificate (DER, None if it showed none) makes
        it a peer; with TLS a token route needs both the token and that."""
        if not token:
            raise ValueError("a cluster token is required")
        if any(c in token for c in "\r\n"):
            raise ValueError("the token must not contain CR or LF")
        self.limits = limits
        self.tls = tls
        self._peer_certificate = peer_certificate
        self.clients = 0
        self.peers = 0
        self.pending = 0
        self.buffered = 0
        self.refused: Counter[str] = Counter()
        self.router = router  # read by the connections, per request
        self._bearer = f"Bearer {token}".encode("latin-1")
        self._connections: set[ServerConnection] = set()
        self._listeners: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def connections(self) -> int:
        """Open connections of every kind (refused ones still lingering included)."""
        return len(self._connections)

    def unsent(self) -> int:
        """Bytes of answers written but not yet taken by the clients' sockets."""
        total = 0
        for conn in self._connections:
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                total += transport.get_write_buffer_size()
        return total

    def stats(self) -> dict[str, object]:
        return {
            "clients": self.clients,
            "peers": self.peers,
            "pending": self.pending,
            "buffered": self.buffered,
            "unsent": self.unsent(),
            "refused": dict(self.refused),
        }

    async def listen(self, sockets: list[socket.socket]) -> None:
        """Serve on these bound sockets (the server closes them in `close`)."""
        if self._closed:
            raise RuntimeError("this HttpServer was closed")
        loop = asyncio.get_running_loop()
        for sock in sockets:
            sock.setblocking(False)
            listener = await loop.create_server(
                lambda: ServerConnection(self), sock=sock, backlog=1024
            )
            self._listeners.append(listener)
        if self._sweeper is None:
            self._sweeper = loop.call_later(self.limits.sweep_interval, self._sweep)

    def close(self) -> None:
        """Stop listening and close every connection now; later replies are no-ops."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        for conn in list(self._connections):
            conn.abort()

    def _sweep(self) -> None:
        # One timer per server: each connection's deadline is a timestamp,
        # checked here a few times per timeout.
        now = time.monotonic()
        for conn in list(self._connections):
            try:
                conn.check_deadlines(now)
            except Exception:
                log.exception("HTTP deadline check failed; closing the connection")
                conn.abort()
        self._sweeper = asyncio.get_running_loop().call_later(
            self.limits.sweep_interval, self._sweep
        )

    # ------------------------------------------------------------ for its connections

    def is_peer_certificate(self, certificate: bytes | None) -> bool:
        """Whether a TLS client's certificate (verified by the handshake) is a peer's."""
        if self._peer_certificate is None:
            return certificate is not None
        return self._peer_certificate(certificate)

    def token_matches(self, authorization: str) -> bool:
        """Whether an Authorization header is `Bearer <token>` (in constant time)."""
        return hmac.compare_digest(authorization.encode("latin-1"), self._bearer)

    def admit(self, conn: ServerConnection) -> str:
        """A new connection's kind: a client while under max_connections, then
        pending (kept only if its first request is a peer's), then refused."""
        limits = self.limits
        if len(self._connections) >= limits.max_connections + limits.peer_reserve:
            self.refused["connection_limit"] += 1
            return REFUSED
        self._connections.add(conn)
        if self.clients < limits.max_connections:
            self.clients += 1
            return CLIENT
        self.pending += 1
        return PENDING

    def promote(self, conn: ServerConnection) -> None:
        """The connection carried the token: it counts as a peer from now on."""
        if conn.kind == CLIENT:
            self.clients -= 1
        elif conn.kind == PENDING:
            self.pending -= 1
        else:
            return
        self.peers += 1
        conn.kind = PEER

    def forget(self, conn: ServerConnection) -> None:
        """The connection is gone (connection_lost)."""
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        if conn.kind == CLIENT:
            self.clients -= 1
        elif conn.kind == PEER:
            self.peers -= 1
        elif conn.kind == PENDING:
            self.pending -= 1

    def route_error(
        self, method: str, path: str, found: object
    ) -> tuple[Route, tuple[int, str, str] | None]:
        """What the router said, when it is not a Route: a route that answers the error."""
        if isinstance(found, Route):  # a subclass
            return found, None
        shown = path if len(path) <= 200 else path[:200] + "..."
        if found is None:
            miss = (404, "not_found", f"no route {shown}; see the README for the API")
        elif found == 405:
            miss = (405, "method_not_allowed", f"{method} is not allowed on {shown}")
        elif type(found) is int and 400 <= found <= 599 and found != 500:
            try:
                phrase = HTTPStatus(found).phrase
            except ValueError:
                phrase = f"status {found}"
            miss = (found, code_for(found), f"{method} {shown}: {phrase}")
        else:
            if found != 500:
                log.error("the router answered %r for %s %s", found, method, shown)
            miss = (500, "internal_error", INTERNAL_MESSAGE)
        return Route(functools.partial(_answer_error, *miss)), miss


def _answer_error(status: int, code: str, message: str, request: Request, reply: Reply) -> None:
    reply(status, error_body(code, message), ())
