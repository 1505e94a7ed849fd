"""A small client load the page starts and stops, so people can watch appends flow.

It is the experiments' load generator's way of sending (`loadgen.exchange` and
`open_session`: one keep-alive connection per worker on the node's own HTTP
client, a session so that writes apply once), run for as long as the page
wants instead of for a fixed duration, on the dashboard's event loop. Only a
few seconds of results are kept: enough for the rate and percentiles shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Callable
from urllib.parse import quote, urlsplit

import numpy as np

from ..experiments.loadgen import exchange, open_session
from ..server.http.client import HttpConnection

MAX_CLIENTS = 64
WINDOW = 2.0  # seconds of completed requests behind the rate and percentiles
REQUEST_TIMEOUT = 5.0
KEYS = 100
VALUE = b"x" * 100
_JSON = {"Content-Type": "application/json"}


class ClientLoad:
    """`clients` workers writing back to back to the nodes `endpoints()` returns.

    A worker whose node fails it (no answer, or 503 while there is no leader)
    moves on to the next node, so the load carries on across a kill.
    """

    def __init__(self, endpoints: Callable[[], list[str]]) -> None:
        self._endpoints = endpoints
        self._tasks: list[asyncio.Task[None]] = []
        self._done: deque[tuple[float, float, bool]] = deque(maxlen=500_000)  # (end, latency, ok)

    @property
    def clients(self) -> int:
        return len(self._tasks)

    def start(self, clients: int) -> None:
        """Run `clients` workers (call on the event loop); a running load is resized."""
        if not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients must be from 1 to {MAX_CLIENTS}, got {clients}")
        while len(self._tasks) > clients:
            self._tasks.pop().cancel()
        while len(self._tasks) < clients:
            w = len(self._tasks)
            self._tasks.append(asyncio.ensure_future(self._worker(w)))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def stats(self, now: float | None = None) -> dict[str, object]:
        """Completed writes per second over the last WINDOW seconds, and their latency."""
        now = time.monotonic() if now is None else now
        done = self._done
        while done and done[0][0] < now - WINDOW:
            done.popleft()
        ok = [latency for _end, latency, good in done if good]
        errors = len(done) - len(ok)
        p50 = p99 = None
        if ok:
            p50, p99 = (float(x) * 1000 for x in np.percentile(ok, [50, 99]))
        return {
            "running": bool(self._tasks),
            "clients": len(self._tasks),
            "ops_per_s": len(ok) / WINDOW,
            "errors_per_s": errors / WINDOW,
            "p50_ms": p50,
            "p99_ms": p99,
        }

    async def _worker(self, w: int) -> None:
        rnd = random.Random(w)
        target = w
        conn: HttpConnection | None = None
        client_id, seq = b"", 0
        errors: list[str] = []  # loadgen keeps the first 20 reasons; nobody reads them here
        try:
            while True:
                urls = self._endpoints()
                if not urls:
                    await asyncio.sleep(0.1)
                    continue
                parts = urlsplit(urls[target % len(urls)])
                host, port = parts.hostname or "127.0.0.1", parts.port or 80
                if conn is None or (conn.host, conn.port) != (host, port):
                    if conn is not None:
                        conn.close()
                    conn = HttpConnection(host, port)
                if not client_id:
                    client_id, seq = await open_session(conn, REQUEST_TIMEOUT, errors), 0
                    if not client_id:
                        target += 1
                        await asyncio.sleep(0.05)
                        continue
                seq += 1
                key = quote(f"k{rnd.randrange(KEYS)}", safe="")
                body = b'{"value":"%s","client_id":"%s","seq":%d}' % (VALUE, client_id, seq)
                t0 = time.monotonic()
                status, _revision = await exchange(
                    conn, "PUT", f"/v1/kv/{key}", body, _JSON, REQUEST_TIMEOUT, errors
                )
                t1 = time.monotonic()
                self._done.append((t1, t1 - t0, status == 200))
                del errors[:]
                if status == 409:
                    client_id = b""  # the session expired: open a new one
                elif status != 200:
                    target += 1  # try another node, without spinning on a dead one
                    await asyncio.sleep(0.05)
        finally:
            if conn is not None:
                conn.close()
