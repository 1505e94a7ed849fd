"""A new node asks the cluster to add it: POST /register, following redirects.

Any member answers; a follower answers 307 with the leader's address (307
keeps the method and the body), and the leader adds the node as a learner
through the log. The node keeps asking, round the members it was given, until
one says yes; a refusal (a 4xx, e.g. a removed node back with its old data
directory) is logged, once per distinct answer, so the operator sees why.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import orjson

from .http import ConnectionFailed, HttpConnection

MAX_HOPS = 5

log = logging.getLogger(__name__)


async def join(
    members: list[str],
    node_id: str,
    address: str,
    incarnation: str,
    token: str,
    *,
    joined: Callable[[str], None],
) -> None:
    """Register with the cluster through `members`; call `joined(via)` once added."""
    body = orjson.dumps({"id": node_id, "address": address, "incarnation": incarnation})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    attempt = 0
    refusal = b""
    while True:
        target = members[attempt % len(members)]
        attempt += 1
        for _hop in range(MAX_HOPS):
            parts = urlsplit(target)
            if not parts.hostname or not parts.port:
                break
            conn = HttpConnection(parts.hostname, parts.port)
            try:
                resp = await conn.request("POST", "/register", body, headers, timeout=10.0)
            except ConnectionFailed:
                break
            finally:
                conn.close()
            if resp.status == 307 and "location" in resp.headers:
                target = resp.headers["location"]
                continue
            if resp.status == 200:
                joined(f"{parts.scheme}://{parts.netloc}")
                return
            if 400 <= resp.status < 500 and resp.body != refusal:
                refusal = resp.body
                why = resp.body[:500].decode("utf-8", "replace")
                log.warning("joining through %s was refused (%d): %s", target, resp.status, why)
            break
        await asyncio.sleep(min(0.05 * attempt, 1.0))
