"""A minimal keep-alive HTTP/1.1 client for talking to our own nodes.

Tornado's simple_httpclient opens a connection per request; peer traffic is
many small POSTs, so reconnecting each time would dominate the cost. This
client speaks only what our tornado servers answer (Content-Length bodies).
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tornado.iostream import IOStream, StreamClosedError
from tornado.netutil import DefaultLoopResolver, Resolver, is_valid_ip
from tornado.tcpclient import TCPClient


class ConnectionFailed(Exception):
    """The request may not have reached the server (connect failed or closed early)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent  # True if the request was written: its outcome is unknown


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _LiteralFirstResolver(Resolver):
    """Answer IP literals at once. Tornado's default resolver sends every name,
    127.0.0.1 included, through a thread pool: a millisecond or more on a busy
    2-core machine, paid on the first message between two followers during an
    election and on the first write forwarded to a new leader."""

    def __init__(self) -> None:
        self._names = DefaultLoopResolver()

    async def resolve(
        self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[tuple[int, Any]]:
        if is_valid_ip(host):
            literal = socket.AF_INET6 if ":" in host else socket.AF_INET
            return [(literal, (host, port))]
        return await self._names.resolve(host, port, family)


def tcp_client() -> TCPClient:
    return TCPClient(resolver=_LiteralFirstResolver())


_tcp = tcp_client()


class KeepAliveConnection:
    """One connection, one request at a time; reconnects when needed."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"expected http://host:port, got {base_url!r}")
        self.host, self.port = parts.hostname, parts.port
        self._stream: IOStream | None = None

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Response:
        try:
            async with asyncio.timeout(timeout):  # unlike wait_for, no task per request
                return await self._request(method, path, body, headers)
        except TimeoutError as exc:
            self.close()
            message = f"{method} {path}: no answer in {timeout:.1f}s"
            raise ConnectionFailed(message, sent=True) from exc

    async def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None
    ) -> Response:
        if self._stream is not None and _peer_closed(self._stream):
            self.close()  # an idle connection the server closed: a request on it would be lost
        if self._stream is None:
            try:
                self._stream = await _tcp.connect(self.host, self.port)
                self._stream.set_nodelay(True)
            except (OSError, StreamClosedError) as exc:
                raise ConnectionFailed(f"cannot connect: {exc}", sent=False) from exc
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        stream = self._stream
        try:
            await stream.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            head = await stream.read_until(b"\r\n\r\n", max_bytes=65536)
            status, resp_headers = _parse_head(head)
            length = int(resp_headers.get("content-length", "0"))
            data = await stream.read_bytes(length) if length else b""
        except (StreamClosedError, OSError, ValueError) as exc:
            self.close()
            raise ConnectionFailed(f"connection lost: {exc}", sent=True) from exc
        if resp_headers.get("connection", "").lower() == "close":
            self.close()
        return Response(status, resp_headers, data)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _peer_closed(stream: IOStream) -> bool:
    """Whether the server has closed an idle connection (EOF or reset waiting)."""
    sock = stream.socket
    if sock is None or stream.closed():
        return True
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False  # open, nothing to read: as an idle connection should be
    except OSError:
        return True


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    text = head.decode("latin-1").split("\r\n")
    version, status, *_ = text[0].split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1 response: {text[0]!r}")
    headers: dict[str, str] = {}
    for line in text[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", ""):
        raise ValueError("chunked responses are not supported")
    return int(status), headers


class ConnectionPool:
    """Keep-alive connections to one node, for concurrent forwarded requests."""

    def __init__(self, base_url: str, max_idle: int = 64) -> None:
        self.base_url = base_url
        self._idle: deque[KeepAliveConnection] = deque()
        self._max_idle = max_idle

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Response:
        conn = self._idle.pop() if self._idle else KeepAliveConnection(self.base_url)
        try:
            resp = await conn.request(method, path, body, headers, timeout)
        except ConnectionFailed:
            conn.close()
            raise
        if conn._stream is not None and len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return resp

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()
