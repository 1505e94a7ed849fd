"""Watches: one POST /v3/watch stream at a time, resumed at another node by
revision when it breaks."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httptools
import requests

from ..errors import Compacted, KvClusterError, RequestError, Unavailable
from ..tls import client_context
from .wire import KeyValue, decode, etcd_error, header_revision, key_value, malformed, number

MAX_WATCH_MESSAGE = 64 << 20  # bytes in one watch message (one revision's events, base64)
MAX_RESPONSE_HEAD = 64 << 10
IDLE_PROBE = 10.0  # seconds of silence after which a watch checks that its node still answers
_RECV = 64 << 10
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 0.5


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One change: `type` "PUT" or "DELETE"; `revision` is the change's (its
    mod_revision); a DELETE has value "" and version 0; `prev` is the value it
    replaced (only when the watch asked for prev_kv and there was one)."""

    type: str
    key: str
    value: str
    revision: int
    create_revision: int
    version: int
    lease: int
    prev: KeyValue | None = None


@dataclass(frozen=True)
class StreamConfig:
    """What a Watch copies from its Client (so it shares nothing mutable with it)."""

    endpoints: tuple[str, ...]
    timeout: float
    request_timeout: float
    unreachable_timeout: float | None
    headers: dict[str, str]
    tls: tuple[str | None, str | None, str | None] = (None, None, None)  # ca, cert, key files


class _Broken(Exception):
    """The stream (or the attempt to open one) failed; another node may do."""

    def __init__(self, description: str, refused: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.refused = refused


class _Stream:
    """One POST /v3/watch on a socket of its own: the request out, then the
    answer's lines in. llhttp (httptools) does the HTTP framing; this bounds
    the head and each line, and never loses bytes on a read timeout."""

    def __init__(
        self,
        base: str,
        body: bytes,
        headers: dict[str, str],
        timeout: float,
        max_line: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.base = base
        self.max_line = max_line
        self.status = 0
        self.lines: deque[bytes] = deque()
        self.ended = False
        self.error_body = b""
        self._buffer = bytearray()
        self._head = 0
        self._in_head = True
        self._problem = ""
        parts = urlsplit(base)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except ConnectionRefusedError:
            raise _Broken("connection refused", refused=True) from None
        except socket.gaierror:
            raise _Broken("host name not found", refused=True) from None
        except OSError as exc:
            raise _Broken(f"cannot connect: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if parts.scheme == "https":
                sock = (tls or ssl.create_default_context()).wrap_socket(sock, server_hostname=host)
            lines = ["POST /v3/watch HTTP/1.1", f"Host: {parts.netloc}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            lines += ["Content-Type: application/json", f"Content-Length: {len(body)}", "", ""]
            sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        except OSError as exc:
            sock.close()
            raise _Broken(f"cannot send the watch request: {exc}") from None
        self.sock = sock
        self._parser = httptools.HttpResponseParser(self)

    # llhttp's callbacks
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._in_head = False

    def on_body(self, data: bytes) -> None:
        if self.status != 200:
            if len(self.error_body) < 4096:
                self.error_body += data[: 4096 - len(self.error_body)]
            return
        if self._problem:
            return  # the rest of an oversized message: dropped with the stream
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            if end > self.max_line:
                break
            line = bytes(self._buffer[:end]).strip()
            del self._buffer[: end + 1]
            if line:
                self.lines.append(line)
        if len(self._buffer) > self.max_line:
            self._problem = "too big"
            self._buffer.clear()

    def on_message_complete(self) -> None:
        self.ended = True

    def next_line(self, until: float | None) -> bytes | None:
        """The next line of the answer; None if none came by `until` (monotonic).
        Raises _Broken when the stream ends or fails, RequestError on a 4xx."""
        while not self.lines:
            if self.ended or self._problem:
                self._finish()
            timeout = None if until is None else until - time.monotonic()
            if timeout is not None and timeout <= 0:
                return None
            try:
                self.sock.settimeout(timeout)
                data = self.sock.recv(_RECV)
            except TimeoutError:
                return None
            except OSError as exc:
                raise _Broken(f"the stream broke: {exc}") from None
            if not data:
                self.ended = True
                continue
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                raise _Broken(f"malformed answer: {exc}") from None
            except httptools.HttpParserUpgrade:
                raise _Broken("the node switched protocols") from None
            if self._in_head:
                self._head += len(data)
                if self._head > MAX_RESPONSE_HEAD:
                    raise _Broken(f"the answer's head is over {MAX_RESPONSE_HEAD} bytes")
        return self.lines.popleft()

    def _finish(self) -> None:
        if self._problem:
            raise KvClusterError(
                f"a watch message from {self.base} is over {self.max_line} bytes; watch with a "
                "larger max_message_bytes (one message holds every event of a revision)",
                known_outcome=True,
            )
        if self.status and self.status != 200:
            try:
                data = json.loads(self.error_body)
                if not isinstance(data, dict):
                    raise ValueError
            except ValueError:
                data = {"message": self.error_body[:200].decode("utf-8", "replace")}
            status, error = etcd_error(self.status, data)
            description = f"HTTP {self.status} {error['error']} ({error['message']})"
            if 400 <= status < 500 and status not in (408, 429):
                raise RequestError(
                    f"watch was rejected by {self.base}: {description}",
                    status=status,
                    error=error["error"],
                    server_message=error["message"],
                    endpoint=self.base,
                )
            raise _Broken(description)
        tail = bytes(self._buffer).strip()
        self._buffer.clear()
        if tail:  # grpc-gateway ends a failed stream with an error object and no newline
            self.lines.append(tail)
            return
        raise _Broken("the node ended the stream")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
        self.sock.close()


class Watch:
    """Every change to a key, a prefix or a range, in revision order; from
    `Client.watch`. Iterate it (blocks until the next event) or call
    `get(timeout)`; `close()` (or the end of a `with` block) ends it, also
    from another thread.

    `revision` is the last revision the caller has seen: the last event's, or
    a progress notification's. The watch reads from one node; when that
    stream breaks (the node died, or stayed silent and then failed a probe)
    it opens a new one at the next endpoint from the last revision received
    + 1, so no event is lost or repeated. If no node answers within the
    Client's timeout it raises Unavailable, and watching again from
    `revision + 1` picks up where it stopped. A start revision that
    compaction removed raises `Compacted` (at the first read). One thread
    reads a Watch at a time.
    """

    def __init__(
        self,
        config: StreamConfig,
        create: dict[str, Any],
        start_revision: int,
        *,
        idle_timeout: float | None = IDLE_PROBE,
        max_message_bytes: int = MAX_WATCH_MESSAGE,
    ) -> None:
        if start_revision < 0:
            raise ValueError(
                f"start_revision must be positive (or None: from now), got {start_revision}"
            )
        self.key = decode(create.get("key"))
        self.revision = max(0, start_revision - 1)
        self._received = self.revision  # resume from here + 1 (events may still be queued)
        self._config = config
        self._create = create
        self._idle = idle_timeout
        self._max = max_message_bytes
        self._at = 0  # index of the endpoint in use
        self._queue: deque[WatchEvent | int] = deque()  # an int: a progress revision
        self._stream: _Stream | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._probe_session = requests.Session()
        self._probe_session.trust_env = False
        ca, cert, key = config.tls
        self._tls: ssl.SSLContext | None = None
        if any(url.startswith("https://") for url in config.endpoints):
            self._tls = client_context(ca, cert, key) if ca or cert else None
            self._probe_session.verify = ca if ca is not None else True
            if cert is not None:
                self._probe_session.cert = (cert, key) if key is not None else cert
        self._heard = time.monotonic()
        self._connect(start_revision, None)

    @property
    def endpoint(self) -> str | None:
        """The node the watch reads from now."""
        stream = self._stream
        return None if stream is None else stream.base

    # ------------------------------------------------------------------ reading

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        event = self.get()
        if event is None:
            raise StopIteration
        return event

    def get(self, timeout: float | None = None) -> WatchEvent | None:
        """The next event; None if none came within `timeout` seconds, or the
        watch is closed."""
        until = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, int):
                    self.revision = max(self.revision, item)
                    continue
                self.revision = item.revision
                return item
            stream = self._stream
            if self._closed or stream is None:
                return None
            wake = until
            if self._idle is not None:
                idle_at = self._heard + self._idle
                wake = idle_at if wake is None else min(wake, idle_at)
            try:
                line = stream.next_line(wake)
            except _Broken as exc:
                self._resume(stream, exc.description)
                continue
            except KvClusterError:
                self.close()
                raise
            now = time.monotonic()
            if line is None:
                if until is not None and now >= until:
                    return None
                if self._closed:
                    return None
                if self._probe(stream.base):
                    self._heard = now
                else:
                    self._resume(stream, f"silent for {self._idle:g} s and not answering")
                continue
            self._heard = now
            try:
                self._take(line, stream.base)
            except _Broken as exc:
                self._resume(stream, exc.description)
            except KvClusterError:
                self.close()
                raise

    def _take(self, line: bytes, base: str) -> None:
        """One message of the stream: queue its events (or its progress)."""
        try:
            message = json.loads(line)
        except ValueError:
            raise malformed(f"watch message {line[:200]!r} is not JSON") from None
        if not isinstance(message, dict):
            raise malformed(f"watch message {line[:200]!r} is not an object")
        if "error" in message:
            error = message["error"]
            raise _Broken(f"the node ended the stream with an error: {error}")
        result = message.get("result")
        if not isinstance(result, dict):
            raise malformed(f"watch message {line[:200]!r} has no result")
        revision = header_revision(result)
        if result.get("canceled"):
            self._canceled(result, base)
        if result.get("created"):
            return
        events = result.get("events") or ()
        if not events:  # a progress notification: everything up to `revision` was sent
            if revision > self._received:
                self._received = revision
                self._queue.append(revision)
            return
        for raw in events:
            self._queue.append(self._event(raw, revision))
        last = self._queue[-1]
        assert isinstance(last, WatchEvent)
        self._received = last.revision

    @staticmethod
    def _event(raw: Any, revision: int) -> WatchEvent:
        if not isinstance(raw, dict):
            raise malformed(f"a watch event is an object, got {raw!r}")
        kind = str(raw.get("type") or "PUT").upper()
        if kind not in ("PUT", "DELETE"):
            raise malformed(f"unknown watch event type {kind!r}")
        kv = key_value(raw.get("kv") or {}, revision)
        prev = raw.get("prev_kv")
        return WatchEvent(
            type=kind,
            key=kv.key,
            value=kv.value,
            revision=kv.mod_revision,
            create_revision=kv.create_revision,
            version=kv.version,
            lease=kv.lease,
            prev=key_value(prev, revision) if prev else None,
        )

    def _canceled(self, result: dict[str, Any], base: str) -> None:
        compact = number(result.get("compact_revision"))
        wanted = self._received + 1
        if compact:
            self.close()
            raise Compacted(
                f"cannot watch {self.key!r} from revision {wanted}: compaction removed the "
                f"history before revision {compact}. Watch from revision {compact} or later (or "
                "from now), after reading the current values if you need them.",
                compact_revision=compact,
                revision=wanted,
            )
        reason = str(result.get("cancel_reason") or "")
        if reason:
            self.close()
            raise RequestError(
                f"{base} refused the watch on {self.key!r}: {reason}",
                status=400,
                error="watch_canceled",
                server_message=reason,
                endpoint=base,
            )
        raise _Broken("the node canceled the watch")

    # ------------------------------------------------------------------ connecting

    def _probe(self, base: str) -> bool:
        """Does the node still answer? (A stopped node keeps its socket open.)"""
        try:
            resp = self._probe_session.get(base + "/version", timeout=self._config.request_timeout)
        except requests.RequestException:
            return False
        return resp.status_code == 200

    def _resume(self, broken: _Stream, why: str) -> None:
        """Go on at the next endpoint from what was received + 1."""
        with self._lock:
            if self._stream is broken:
                self._stream = None
        broken.close()
        if self._closed:
            return
        self._at += 1
        self._connect(self._received + 1, f"{broken.base}: {why}")

    def _connect(self, start: int, why: str | None) -> None:
        """Open a stream at the first endpoint that answers "created", trying
        each in turn (with a short backoff between rounds) for the timeout."""
        config = self._config
        n = len(config.endpoints)
        began = time.monotonic()
        deadline = began + config.timeout
        failures: dict[str, str] = {}
        if why:
            base, _, said = why.partition(": ")
            failures[base] = said
        attempts, refused_only, backoff = 0, True, BACKOFF_FIRST
        while True:
            base = config.endpoints[self._at % n]
            attempts += 1
            try:
                stream, revision = self._open(base, start, deadline)
            except _Broken as exc:
                failures.pop(base, None)
                failures[base] = exc.description
                refused_only = refused_only and exc.refused
            except KvClusterError:  # refused as wrong (or compacted): no node would take it
                self.close()
                raise
            else:
                with self._lock:
                    closed = self._closed
                    if not closed:
                        self._stream = stream
                if closed:
                    stream.close()
                    return
                if not start:
                    self.revision = self._received = revision
                self._heard = time.monotonic()
                return
            self._at += 1
            now = time.monotonic()
            if attempts % n == 0:
                time.sleep(min(backoff, max(0.0, deadline - now)))
                backoff = min(backoff * 2, BACKOFF_MAX)
                now = time.monotonic()
            unreachable = (
                refused_only
                and attempts >= n
                and config.unreachable_timeout is not None
                and now - began >= config.unreachable_timeout
            )
            if now >= deadline or unreachable or self._closed:
                break
        self.close()
        answers = "; ".join(f"{url}: {what}" for url, what in failures.items())
        if why is None and refused_only:
            message = (
                f"watch {self.key!r} failed: no node answered at {list(config.endpoints)}: "
                "is the cluster running?"
            )
        elif why is None:
            message = (
                f"watch {self.key!r} failed: no node started it within {config.timeout:g}s "
                "(each node's last answer follows)"
            )
        else:
            message = (
                f"watch {self.key!r} lost its stream and no node took it up within "
                f"{config.timeout:g}s; every event up to revision {self._received} was "
                f"received: watch again with start_revision={self._received + 1} "
                f"(kvcluster watch --rev {self._received + 1})"
            )
        raise Unavailable(
            f"{message} ({answers})", op="watch", attempts=attempts, failures=failures
        )

    def _open(self, base: str, start: int, deadline: float) -> tuple[_Stream, int]:
        """One attempt: the stream and the revision its "created" answer holds."""
        create = dict(self._create)
        if start:
            create["start_revision"] = start
        body = json.dumps({"create_request": create}, separators=(",", ":")).encode()
        wait = max(0.05, min(self._config.request_timeout, deadline - time.monotonic()))
        stream = _Stream(base, body, self._config.headers, wait, self._max, self._tls)
        try:
            line = stream.next_line(time.monotonic() + wait)
            if line is None:
                raise _Broken("no answer in time")
            try:
                message = json.loads(line)
            except ValueError:
                raise _Broken(f"the answer is not JSON: {line[:100]!r}") from None
            result = message.get("result") if isinstance(message, dict) else None
            if not isinstance(result, dict):
                raise _Broken(f"unexpected answer: {line[:200]!r}")
            if result.get("canceled"):
                self._canceled(result, base)
            if not result.get("created"):
                raise _Broken(f"the answer is not a created watch: {line[:200]!r}")
        except BaseException:
            stream.close()
            raise
        return stream, header_revision(result)

    # ------------------------------------------------------------------ ending

    def close(self) -> None:
        """End the watch (from any thread): a blocked read returns None."""
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.close()
        self._probe_session.close()

    cancel = close

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Watch(key={self.key!r}, revision={self.revision}, endpoint={self.endpoint!r})"
