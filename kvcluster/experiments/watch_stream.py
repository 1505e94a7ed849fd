"""Reading an etcd watch stream (POST /v3/watch) message by message, as it arrives.

A watch's answer never ends, so it is read with the internal HTTP client's
`read_stream` (kvcluster.server.http.client: the one client the nodes and load
generators use), which hands each piece of the body over the moment it
arrives, stamped with `time.monotonic()` taken when the bytes came off the
socket, before any parsing. That stamp is what the watch-latency experiment
measures against, in the same process and on the same event loop as the puts
it times.

Both kvcluster and etcd's gateway send one JSON message per line (each
ending in a newline); the chunks of the HTTP body may split or join lines, so
messages are cut here at newlines, not at chunk boundaries, and one message
is bounded (MAX_MESSAGE). The client bounds the head and a refusal's body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from ..server.http.client import ConnectionFailed, Response, ResponseStream, read_stream

MAX_MESSAGE: Final = 4 << 20  # one JSON line: a response with many events in one revision

OnMessage = Callable[[bytes, float], None]


class WatchStreamError(Exception):
    """The watch could not be opened, or its stream broke or was malformed."""


class WatchStream:
    """An open POST /v3/watch: cuts its body into lines, each given to
    `on_message` with the arrival time of the piece that completed it.
    `ended` is done, with the reason, once it is over; `close()` ends it (and
    the server's watches with it)."""

    def __init__(self, on_message: OnMessage) -> None:
        self.on_message = on_message
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._line = bytearray()
        self._response: ResponseStream | None = None

    def feed(self, piece: bytes, arrival: float) -> None:
        """The sink of the response's body."""
        if self.ended.done():
            return
        start = 0
        while (end := piece.find(b"\n", start)) >= 0:
            if self._line:
                self._line += piece[start:end]
                message = bytes(self._line)
                self._line.clear()
            else:
                message = piece[start:end]
            if message.strip():
                self.on_message(message, arrival)
            start = end + 1
        self._line += piece[start:]
        if len(self._line) > MAX_MESSAGE:
            self._line.clear()
            self._end(f"a watch message is over {MAX_MESSAGE} bytes")

    def attach(self, response: ResponseStream) -> None:
        self._response = response
        response.ended.add_done_callback(self._response_ended)
        if self.ended.done():  # ended while the head was on its way
            response.close()

    def close(self) -> None:
        self._end("closed by the client")

    def _response_ended(self, future: asyncio.Future[Response | None]) -> None:
        if future.cancelled() or future.result() is None:
            self._end("connection lost: closed by the server")
        else:
            self._end("the server ended the watch stream")

    def _end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)
        if self._response is not None:
            self._response.close()


async def open_watch(
    base_url: str, body: bytes, on_message: OnMessage, timeout: float = 10.0
) -> WatchStream:
    """POST `body` (create requests, JSON) to `base_url`/v3/watch; every line of the
    answer goes to `on_message(line, arrival time)`. Returns once the head of a
    200 answer arrived, WatchStreamError otherwise (a refusal, with its body)."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    stream = WatchStream(on_message)
    headers = {"Content-Type": "application/json"}
    try:
        response = await read_stream(
            host, port, "POST", "/v3/watch", body, stream.feed, headers, timeout
        )
    except ConnectionFailed as exc:
        raise WatchStreamError(f"cannot watch at {base_url}: {exc}") from exc
    if response.status != 200:
        try:
            async with asyncio.timeout(timeout):
                answer = await response.ended
        except TimeoutError:
            answer = None
        response.close()
        text = answer.body.decode("utf-8", "replace") if answer is not None else ""
        raise WatchStreamError(f"the watch was refused: {response.status} {text}")
    stream.attach(response)
    return stream
