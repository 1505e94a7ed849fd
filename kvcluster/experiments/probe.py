"""A write probe that measures how long a cluster cannot accept writes.

An ordinary `Client` is a poor stopwatch for a failover: it backs off between
rounds of retries (up to half a second) and a follower it asks may hold the
request while it forwards it to a leader that is gone. The probe instead asks
each surviving node directly (`X-Kvcluster-Forwarded` makes a follower answer
503 at once instead of forwarding), follows the leader hint a node gives,
and tries one node every `interval` seconds. What it measures is then the
cluster's unavailability, to within about `interval`, not a retry policy's.
Every attempt carries the same session (client_id, seq): however many reach
a leader, the write applies once.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

FORWARDED_HEADER = "X-Kvcluster-Forwarded"
LEADER_HEADER = "X-Kvcluster-Leader"


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledged write: when (time.monotonic()) and by which node."""

    t: float
    endpoint: str
    attempts: int
    revision: int


class WriteProbe:
    """Keeps one keep-alive connection per node; not thread-safe."""

    def __init__(
        self, endpoints: list[str], *, interval: float = 0.003, attempt_timeout: float = 2.0
    ) -> None:
        self.endpoints = list(endpoints)
        self.interval = interval
        self.attempt_timeout = attempt_timeout
        self.client_id = uuid.uuid4().hex
        self.seq = 0
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def _conn(self, endpoint: str) -> http.client.HTTPConnection:
        conn = self._conns.get(endpoint)
        if conn is None:
            parts = urlsplit(endpoint)
            conn = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1", parts.port, timeout=self.attempt_timeout
            )
            self._conns[endpoint] = conn
        return conn

    def _attempt(self, endpoint: str, body: bytes) -> tuple[int, str | None, int]:
        """(status, leader hint, revision); status 0 if no answer came."""
        conn = self._conn(endpoint)
        headers = {"Content-Type": "application/json", FORWARDED_HEADER: "1"}
        try:
            conn.request("PUT", "/v1/kv/probe", body, headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            return 0, None, 0
        revision = 0
        if resp.status == 200:
            try:
                revision = int(json.loads(data).get("revision", 0))
            except (ValueError, TypeError, AttributeError):
                revision = 0
        return resp.status, resp.getheader(LEADER_HEADER), revision

    def warm(self, endpoints: list[str]) -> None:
        """Open the connections now (a status read resets no Raft timer)."""
        for endpoint in endpoints:
            conn = self._conn(endpoint)
            try:
                conn.request("GET", "/v1/status")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()

    def write(self, targets: list[str], deadline: float, first: str | None = None) -> Ack | None:
        """Write once, trying `targets` until one acknowledges; None if `deadline` passes."""
        self.seq += 1
        body = json.dumps(
            {"value": str(self.seq), "client_id": self.client_id, "seq": self.seq}
        ).encode()
        order = list(targets)
        target = first if first in order else order[0]
        attempts = 0
        followed = False
        while time.monotonic() < deadline:
            attempts += 1
            status, hint, revision = self._attempt(target, body)
            if status == 200:
                return Ack(time.monotonic(), target, attempts, revision)
            hint = hint.rstrip("/") if hint else None
            if hint in order and hint != target and not followed:
                target, followed = hint, True  # a node names the leader: go there at once
                continue
            followed = False
            target = order[(order.index(target) + 1) % len(order)]
            time.sleep(self.interval)
        return None

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
