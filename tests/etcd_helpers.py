"""What the etcd API tests share: base64 as the gateway speaks it, a follower's
address, and a POST that tries again while the cluster is between leaders."""

from __future__ import annotations

import base64
import time
from typing import Any

import requests

from kvcluster import Cluster

DEADLINE = 60.0  # generous for a busy 2-core machine; tests wait for conditions


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def text(b: str) -> str:
    return base64.b64decode(b).decode()


def follower(c: Cluster) -> str:
    leader = c.wait_for_leader(DEADLINE)
    return c.endpoints[(leader + 1) % len(c.nodes)]


def post(url: str, body: Any, *, timeout: float = DEADLINE) -> requests.Response:
    """POST, again while the answer is 503 (between leaders: certainly not applied)."""
    deadline = time.monotonic() + DEADLINE
    while True:
        resp = requests.post(url, json=body, timeout=timeout)
        if resp.status_code != 503 or time.monotonic() > deadline:
            return resp
        time.sleep(0.05)  # polling the cluster until it has a leader again
