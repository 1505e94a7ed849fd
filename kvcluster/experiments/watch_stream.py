"""Reading an etcd watch stream (POST /v3/watch) message by message, as it arrives.

The node's internal client (`kvcluster.server.http.client`) hands back a
response only once its body is complete, and a watch's body never completes:
so this module reads it with the same parser (llhttp, through httptools) on a
small asyncio.Protocol of its own, and gives each message to a callback the
moment its bytes arrive, stamped with `time.monotonic()` taken once per read
from the socket, before any parsing. That stamp is what the watch-latency
experiment measures against, in the same process and on the same event loop
as the puts it times.

Both kvcluster and etcd's gateway send one JSON message per line (each
ending in a newline); the chunks of the HTTP body may split or join lines, so
messages are cut at newlines, not at chunk boundaries. Everything is bounded:
the response head, one message, and an error body.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

import httptools

MAX_HEAD: Final = 64 << 10
MAX_MESSAGE: Final = 4 << 20  # one JSON line: a response with many events in one revision
MAX_ERROR_BODY: Final = 64 << 10

OnMessage = Callable[[bytes, float], None]


class WatchStreamError(Exception):
    """The watch could not be opened, or its stream broke or was malformed."""


class _StreamProtocol(asyncio.Protocol):
    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.head_bytes = 0
        self.in_head = True
        self.line = bytearray()
        self.error_body = bytearray()
        self.stamp = 0.0
        self.failure = ""  # why a callback stopped the parser (it reports only that one did)
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._parser = httptools.HttpResponseParser(self)

    # -- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.stamp = time.monotonic()  # before any parsing: when the bytes reached us
        if self.in_head:
            self.head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._end("the server switched protocols")
            return
        except httptools.HttpParserError as exc:
            self._end(self.failure or f"malformed response: {exc}")
            return
        if self.in_head and self.head_bytes > MAX_HEAD:
            self._end(f"the response head is over {MAX_HEAD} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"connection lost: {exc or 'closed by the server'}")

    # -- parser callbacks

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.status = self._parser.get_status_code()
        if self.status == 200 and not self.opened.done():
            self.opened.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            room = MAX_ERROR_BODY - len(self.error_body)
            self.error_body += body[: max(room, 0)]
            return
        start = 0
        while True:
            end = body.find(b"\n", start)
            if end < 0:
                break
            if self.line:
                self.line += body[start:end]
                message = bytes(self.line)
                self.line.clear()
            else:
                message = body[start:end]
            if message.strip():
                self.on_message(message, self.stamp)
            start = end + 1
        self.line += body[start:]
        if len(self.line) > MAX_MESSAGE:
            self.failure = f"a watch message is over {MAX_MESSAGE} bytes"
            raise WatchStreamError(self.failure)

    def on_message_complete(self) -> None:
        if self.status != 200:
            text = self.error_body.decode("utf-8", "replace")
            self._end(f"the watch was refused: {self.status} {text}")
        else:
            self._end("the server ended the watch stream")

    # -- ours

    def _end(self, reason: str) -> None:
        if not self.opened.done():
            self.opened.set_exception(WatchStreamError(reason))
        if not self.ended.done():
            self.ended.set_result(reason)
        if self.transport is not None:
            self.transport.abort()


class WatchStream:
    """An open POST /v3/watch; `close()` ends it (and the server's watches with it)."""

    def __init__(self, protocol: _StreamProtocol) -> None:
        self._protocol = protocol

    @property
    def ended(self) -> asyncio.Future[str]:
        """Done, with the reason, once the stream is over."""
        return self._protocol.ended

    def close(self) -> None:
        self._protocol._end("closed by the client")


async def open_watch(
    base_url: str, body: bytes, on_message: OnMessage, timeout: float = 10.0
) -> WatchStream:
    """POST `body` (create requests, JSON) to `base_url`/v3/watch; every line of the
    answer goes to `on_message(line, arrival time)`. Returns once the head of a
    200 answer arrived, WatchStreamError otherwise (a refusal, with its body)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    loop = asyncio.get_running_loop()
    head = (
        f"POST /v3/watch HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    try:
        async with asyncio.timeout(timeout):
            # asyncio sets TCP_NODELAY on its TCP connections.
            _, protocol = await loop.create_connection(
                lambda: _StreamProtocol(on_message), host, port
            )
            assert protocol.transport is not None
            protocol.transport.write(head + body)
            await protocol.opened
    except TimeoutError as exc:
        raise WatchStreamError(f"no answer from {base_url}/v3/watch in {timeout:g} s") from exc
    except OSError as exc:
        raise WatchStreamError(f"cannot connect to {base_url}: {exc}") from exc
    return WatchStream(protocol)
