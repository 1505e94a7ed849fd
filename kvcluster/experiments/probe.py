"""A write probe that measures how long a cluster cannot accept writes.

An ordinary `Client` is a poor stopwatch for a failover: it backs off between
rounds of retries (up to half a second) and a follower it asks may hold the
request while it forwards it to a leader that is gone. The probe instead asks
each surviving node directly (`X-Kvcluster-Forwarded` makes a follower answer
503 at once instead of forwarding), follows the leader hint a node gives,
and tries one node every `interval` seconds. What it measures is then the
cluster's unavailability, to within about `interval`, not a retry policy's.
Every attempt carries the same session (client_id, seq): however many reach
a leader, the write applies once. The session is opened at the first write
(`open_session`, before a fault, so as not to time the opening).

It speaks HTTP through one `requests.Session` that keeps one keep-alive
connection per node, never retries by itself (each attempt is one request,
`attempt_timeout` for connecting and again for the answer), follows no
redirect and ignores proxy settings from the environment (the nodes are on
loopback). An attempt goes straight to the session's adapter with a request
built by hand, as `kvcluster.Client` does: `Session.put` would add a few
hundred microseconds of preparation to every attempt of a stopwatch.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

FORWARDED_HEADER = "X-Kvcluster-Forwarded"
LEADER_HEADER = "X-Kvcluster-Leader"


@dataclass(frozen=True, slots=True)
class Ack:
    """An acknowledged write: when (time.monotonic()) and by which node."""

    t: float
    endpoint: str
    attempts: int
    revision: int


_HEADERS = {"Content-Type": "application/json", FORWARDED_HEADER: "1"}


class WriteProbe:
    """Keeps one keep-alive connection per node; not thread-safe."""

    def __init__(
        self, endpoints: list[str], *, interval: float = 0.003, attempt_timeout: float = 2.0
    ) -> None:
        self.endpoints = list(endpoints)
        self.interval = interval
        self.attempt_timeout = attempt_timeout
        self.client_id: str | None = None
        self.seq = 0
        self._session = requests.Session()
        self._session.trust_env = False  # never route loopback traffic through a proxy
        # One connection kept per node, for more nodes than a cluster has; no
        # retries: a failed attempt counts as one, and the next goes elsewhere.
        self._adapter = HTTPAdapter(pool_connections=64, pool_maxsize=1, max_retries=0)
        self._session.mount("http://", self._adapter)

    def _url(self, endpoint: str, path: str) -> str:
        return endpoint.rstrip("/") + path

    def open_session(self, targets: list[str], deadline: float) -> bool:
        """Open the session the writes go in; False if none opened before `deadline`."""
        nonce = json.dumps({"nonce": uuid.uuid4().hex}).encode()
        order = list(targets)
        target = order[0]
        while time.monotonic() < deadline:
            status, hint, data = self._attempt(target, nonce, "POST", "/v1/sessions")
            client_id = data.get("client_id")
            if status == 200 and isinstance(client_id, str):
                self.client_id, self.seq = client_id, 0
                return True
            hint = hint.rstrip("/") if hint else None
            target = (
                hint
                if hint in order and hint != target
                else order[(order.index(target) + 1) % len(order)]
            )
            time.sleep(self.interval)
        return False

    def _attempt(
        self, endpoint: str, body: bytes, method: str = "PUT", path: str = "/v1/kv/probe"
    ) -> tuple[int, str | None, dict[str, object]]:
        """(status, leader hint, answer body); status 0 if no answer came."""
        prepared = requests.PreparedRequest()
        prepared.method = method
        prepared.url = self._url(endpoint, path)
        prepared.headers = CaseInsensitiveDict(_HEADERS)
        prepared.headers["Content-Length"] = str(len(body))
        prepared.body = body
        try:
            resp = self._adapter.send(prepared, timeout=self.attempt_timeout)
            data = resp.content
        except (requests.RequestException, OSError):
            return 0, None, {}  # the broken connection is dropped; the next attempt reconnects
        try:
            answer = json.loads(data)
        except ValueError:
            answer = None
        return (
            resp.status_code,
            resp.headers.get(LEADER_HEADER),
            answer if isinstance(answer, dict) else {},
        )

    def warm(self, endpoints: list[str]) -> None:
        """Open the connections now (a status read resets no Raft timer)."""
        for endpoint in endpoints:
            with contextlib.suppress(requests.RequestException, OSError):
                url = self._url(endpoint, "/v1/status")  # read whole: the connection stays
                self._session.get(url, timeout=self.attempt_timeout, allow_redirects=False)

    def write(self, targets: list[str], deadline: float, first: str | None = None) -> Ack | None:
        """Write once, trying `targets` until one acknowledges; None if `deadline` passes."""
        if self.client_id is None and not self.open_session(targets, deadline):
            return None
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
            status, hint, answer = self._attempt(target, body)
            if status == 200:
                revision = answer.get("revision")
                revision = revision if isinstance(revision, int) else 0
                return Ack(time.monotonic(), target, attempts, revision)
            if status == 409 and answer.get("error") == "session_expired":
                self.client_id = None  # the next write opens a new session
                return None
            hint = hint.rstrip("/") if hint else None
            if hint in order and hint != target and not followed:
                target, followed = hint, True  # a node names the leader: go there at once
                continue
            followed = False
            target = order[(order.index(target) + 1) % len(order)]
            time.sleep(self.interval)
        return None

    def close(self) -> None:
        self._session.close()
