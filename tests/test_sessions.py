"""Client sessions against real nodes: at-most-once survives a full session table.

The table holds at most 10,000 sessions. Before sessions were opened through
the log, the 10,001st client evicted the oldest silently, and a late retry of
that client's write was applied a second time. Now the retry is refused with
`session_expired`, and the key keeps the one write.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from kvcluster import Cluster
from kvcluster.kv.sessions import MAX_SESSIONS
from kvcluster.server.http import HttpConnection

pytestmark = pytest.mark.integration

DEADLINE = 60.0
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        c.wait_for_leader(DEADLINE)
        yield c


def open_sessions(base: str, count: int, connections: int = 16) -> list[str]:
    """Open `count` sessions through `base`, on a few keep-alive connections of
    the nodes' own HTTP client (10,000 through `requests` took ~15 s of a 2-core
    machine; this, a few)."""
    parts = urlsplit(base)
    assert parts.hostname and parts.port

    async def work(n: int, opened: list[str], errors: list[str]) -> None:
        conn = HttpConnection(parts.hostname or "", parts.port or 0)
        try:
            for _ in range(n):
                for _attempt in range(100):  # 503 while between leaders: certainly not applied
                    resp = await conn.request("POST", "/v1/sessions", b"{}", JSON, DEADLINE)
                    if resp.status != 503:
                        break
                if resp.status != 200:
                    errors.append(resp.body[:200].decode(errors="replace"))
                    return
                opened.append(json.loads(resp.body)["client_id"])
        finally:
            conn.close()

    async def main() -> tuple[list[str], list[str]]:
        opened: list[str] = []
        errors: list[str] = []
        share = [count // connections + (i < count % connections) for i in range(connections)]
        await asyncio.gather(*(work(n, opened, errors) for n in share))
        return opened, errors

    opened, errors = asyncio.run(main())
    assert not errors, errors[:3]
    return opened


def test_a_retry_from_an_evicted_session_is_refused_not_applied_again(cluster: Cluster) -> None:
    leader = cluster.endpoints[cluster.wait_for_leader(DEADLINE)]
    http = requests.Session()
    http.trust_env = False
    first = http.post(f"{leader}/v1/sessions", timeout=DEADLINE).json()["client_id"]
    write = {"value": "once", "client_id": first, "seq": 1}
    assert http.put(f"{leader}/v1/kv/evicted", json=write, timeout=DEADLINE).status_code == 200
    before = http.get(f"{leader}/v1/kv/evicted", timeout=DEADLINE).json()
    assert before["version"] == 1

    others = open_sessions(leader, MAX_SESSIONS)  # 10,001 sessions in all: the first goes
    assert len(set(others)) == MAX_SESSIONS and first not in others

    retry = http.put(f"{leader}/v1/kv/evicted", json=write, timeout=DEADLINE)
    assert retry.status_code == 409, retry.text
    assert retry.json()["error"] == "session_expired"
    assert "Open a new session" in retry.json()["message"]
    after = http.get(f"{leader}/v1/kv/evicted", timeout=DEADLINE).json()
    assert (after["version"], after["mod_revision"]) == (1, before["mod_revision"])

    # Memory stays bounded on every node, and a newer session still works.
    for i in range(3):
        status = cluster.node_status(i)
        assert status is not None and status["sessions"] <= MAX_SESSIONS
    latest = {"value": "twice", "client_id": others[-1], "seq": 1}
    assert http.put(f"{leader}/v1/kv/evicted", json=latest, timeout=DEADLINE).status_code == 200
    http.close()


def test_the_client_opens_a_new_session_when_its_own_was_evicted(cluster: Cluster) -> None:
    with cluster.client(timeout=DEADLINE) as client:
        client.put("reopen", "1")
        old = client.client_id
        open_sessions(cluster.endpoints[0], MAX_SESSIONS)  # evicts the client's session
        assert client.put("reopen", "2") > 0  # refused at first delivery: sent again, anew
        assert client.client_id not in (None, old)
        kv = client.get_kv("reopen")
        assert kv is not None and (kv.value, kv.version) == ("2", 2)


def test_idle_sessions_expire_on_every_node_through_the_log() -> None:
    """The leader commits its clock; every replica expires the same sessions,
    and a late retry of an expired session's write is refused, not re-applied."""
    with Cluster(3, session_ttl=1.0) as c:
        leader = c.endpoints[c.wait_for_leader(DEADLINE)]
        with c.client(timeout=DEADLINE) as client:
            client.put("idle", "1")
            write = {"value": "1", "client_id": client.client_id, "seq": 1}

            def expired_everywhere() -> bool:
                statuses = [c.node_status(i) for i in range(3)]
                return all(s is not None and s["sessions"] == 0 for s in statuses)

            c.wait_until(expired_everywhere, timeout=DEADLINE)
            retry = requests.put(f"{leader}/v1/kv/idle", json=write, timeout=DEADLINE)
            assert retry.status_code == 409 and retry.json()["error"] == "session_expired"
            kv = client.get_kv("idle")
            assert kv is not None and kv.version == 1
            client.put("idle", "2")  # refused at first delivery, then sent in a new session
            kv = client.get_kv("idle")
            assert kv is not None and (kv.value, kv.version) == ("2", 2)
