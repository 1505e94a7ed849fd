"""Leases in the node layer, in the simulator: whose clock decides, and when.

The node process runs this same `Node`; here each node has a clock of its own
(the simulator can step one forward), so what these tests show is that a
lease's life is measured only by the leader's clock, and only through the log:
grants and keep-alives carry it, the leader proposes the expiry, and a new
leader first extends every lease (etcd's promote), whatever its clock says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

from kvcluster.kv import KVStore
from kvcluster.node import COMMAND, LEASE_READ, Answer, NodeOptions, Request
from kvcluster.node.leases import LeaseUpkeep, min_ttl
from kvcluster.raft import RaftNode, RaftOptions
from kvcluster.sim.net import RaftNet

OPTIONS = RaftOptions(election_timeout=(0.5, 1.0), heartbeat_interval=0.1)
EXTEND_MS = 1_000  # the election timeout's upper end, what a promote adds
TTL = 5  # seconds


class Sim:
    """Three simulated nodes with n1 leading, and a client that waits for answers."""

    def __init__(self) -> None:
        self.net = RaftNet(3, options=OPTIONS, node_options=NodeOptions(snapshot_every=0))
        self.answers: dict[int, Answer] = {}
        self.net.reply_to = lambda wire, answer: self.answers.__setitem__(wire, answer)
        self._wires = iter(range(1, 1 << 30))
        self.net.elect("n1")

    def ask(self, nid: str, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        wire = next(self._wires)
        self.net.submit(nid, Request(0, op, payload=payload, wire=wire))
        assert self.net.run_until(lambda: wire in self.answers, 10.0), f"no answer to {payload}"
        answer = self.answers.pop(wire)
        assert answer.status == 200, (answer.status, answer.body, answer.raw)
        if answer.raw is not None:  # relayed by a follower: the leader's body, as it was sent
            return dict(orjson.loads(answer.raw))
        return answer.body or {}

    def command(self, nid: str, command: dict[str, Any]) -> dict[str, Any]:
        return self.ask(nid, COMMAND, command)

    def kv(self, nid: str) -> KVStore:
        return self.net.servers[nid].kv

    def lease_entries(self, nid: str, term: int | None = None) -> list[dict[str, Any]]:
        """The lease commands `nid` applied (of leaders of `term`), in log order."""
        return [
            e.data
            for e in self.net.applied[nid]
            if isinstance(e.data, dict)
            and str(e.data.get("op", "")).startswith("lease_")
            and (term is None or e.term == term)
        ]

    def settle(self) -> None:
        """Let every node apply what is committed."""
        self.net.advance(3 * OPTIONS.heartbeat_interval)


def grant_with_keys(sim: Sim, via: str, keys: list[str]) -> int:
    lease = sim.command(via, {"op": "lease_grant", "ttl": TTL})["id"]
    for key in keys:
        sim.command(via, {"op": "put", "key": key, "value": "v", "lease": lease})
    return int(lease)


def test_grant_and_keepalive_carry_the_leaders_clock_even_through_a_follower() -> None:
    sim = Sim()
    sim.net.step_clock("n2", 500.0)  # a follower's clock far ahead: it must not matter
    lease = grant_with_keys(sim, "n2", ["a"])
    sim.net.advance(2.0)
    sim.command("n3", {"op": "lease_keepalive", "id": lease})
    sim.settle()
    leader_ms = int(sim.net.local_time("n1") * 1000)
    grant, keepalive = _grant_keepalive(sim)
    assert grant["ttl"] == TTL and 0 <= grant["now"] <= leader_ms < 100_000
    assert grant["now"] < keepalive["now"] <= leader_ms  # n1's clock, not n2's (500 s ahead)
    # Every replica holds the same deadline: the keep-alive's now plus the TTL.
    due = keepalive["now"] + TTL * 1000
    assert {sim.kv(n).next_lease_deadline() for n in ("n1", "n2", "n3")} == {due}


def _grant_keepalive(sim: Sim) -> tuple[dict[str, Any], dict[str, Any]]:
    ops = {d["op"]: d for d in sim.lease_entries("n1")}
    return ops["lease_grant"], ops["lease_keepalive"]


def test_a_short_ttl_is_raised_to_one_and_a_half_election_timeouts() -> None:
    sim = Sim()
    assert min_ttl(OPTIONS.election_timeout[1]) == 2
    assert sim.command("n2", {"op": "lease_grant", "ttl": 1})["ttl"] == 2
    assert sim.command("n2", {"op": "lease_grant", "ttl": 0})["ttl"] == 2


def test_the_leader_expires_a_lease_once_through_the_log_and_keys_go_at_one_revision() -> None:
    sim = Sim()
    lease = grant_with_keys(sim, "n1", ["k1", "k2", "k3"])
    sim.command("n1", {"op": "put", "key": "other", "value": "x"})
    before = sim.kv("n1").revision
    # Followers' clocks run ahead: had they any say, they would expire it first.
    sim.net.step_clock("n2", 60.0)
    sim.net.step_clock("n3", 60.0)
    sim.net.advance(1.0)
    assert all(lease in sim.kv(n).leases for n in ("n1", "n2", "n3"))
    assert sim.net.run_until(lambda: lease not in sim.kv("n1").leases, TTL + 5.0)
    sim.settle()
    for n in ("n1", "n2", "n3"):
        kv = sim.kv(n)
        assert lease not in kv.leases
        assert kv.get("k1") is None and kv.get("other") is not None
        assert kv.revision == before + 1  # three keys deleted at one revision
    expires = [d for d in sim.lease_entries("n1") if d["op"] == "lease_expire"]
    assert len(expires) == 1  # one entry, not one per tick
    assert expires[0]["now"] >= sim.lease_entries("n1")[0]["now"] + TTL * 1000


def test_keepalives_keep_a_lease_and_reads_answer_time_to_live_and_the_list() -> None:
    sim = Sim()
    lease = grant_with_keys(sim, "n1", ["b", "a"])
    other = sim.command("n1", {"op": "lease_grant", "ttl": 60})["id"]
    for _ in range(4 * TTL):  # 2 TTLs of keep-alives, every half second, via followers
        sim.net.advance(0.5)
        sim.command("n3", {"op": "lease_keepalive", "id": lease})
    assert sim.kv("n2").get("a") is not None
    ttl = sim.ask("n2", LEASE_READ, {"kind": "timetolive", "id": lease, "keys": True})
    assert ttl["granted_ttl"] == TTL and 0 < ttl["ttl"] <= TTL and ttl["keys"] == ["a", "b"]
    missing = sim.ask("n3", LEASE_READ, {"kind": "timetolive", "id": 424242})
    assert missing["ttl"] == -1
    assert sim.ask("n3", LEASE_READ, {"kind": "leases"})["ids"] == [lease, other]  # soonest first


@contextmanager
def patched_step(fn: Callable[..., None]) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setattr(LeaseUpkeep, "step", fn)
    try:
        yield
    finally:
        mp.undo()


def failover_with_a_fast_clock(sim: Sim) -> tuple[int, str]:
    """A lease kept alive at n1; the others' clocks are far ahead; n1 dies and
    one of them leads."""
    lease = grant_with_keys(sim, "n1", ["held"])
    sim.net.advance(1.0)
    sim.command("n1", {"op": "lease_keepalive", "id": lease})
    sim.settle()
    for n in ("n2", "n3"):
        sim.net.step_clock(n, 3_600.0)  # an hour ahead of every deadline n1 set
    sim.net.crash("n1")
    assert sim.net.run_until(lambda: sim.net.stable_leader() is not None, 10.0)
    leader = sim.net.stable_leader()
    assert leader is not None
    return lease, leader


def test_a_new_leader_extends_every_lease_before_it_may_expire_any() -> None:
    sim = Sim()
    lease, leader = failover_with_a_fast_clock(sim)
    sim.net.advance(1.0)
    other = "n3" if leader == "n2" else "n2"
    assert lease in sim.kv(leader).leases and sim.kv(other).get("held") is not None
    ours = sim.lease_entries(other, term=sim.net.nodes[leader].term)
    promote = ours[0]  # the new leader's first lease entry, before any expire
    assert promote["op"] == "lease_promote" and promote["extend"] == EXTEND_MS
    # Without keep-alives it goes after TTL + the extension, on the new leader's clock.
    deadline = promote["now"] + TTL * 1000 + EXTEND_MS
    assert sim.kv(leader).next_lease_deadline() == deadline
    assert sim.net.run_until(lambda: lease not in sim.kv(other).leases, TTL + 5.0)
    expire = [d for d in sim.lease_entries(other) if d["op"] == "lease_expire"][-1]
    assert expire["now"] >= deadline and sim.kv(other).get("held") is None


def test_bug_a_new_leader_that_skips_the_promote_expires_a_live_lease() -> None:
    """The test above fails if the promote rule is gone: the leader expires at
    once, by a clock no grant or keep-alive was ever measured against."""

    step = LeaseUpkeep.step

    def no_promote(self: LeaseUpkeep, core: RaftNode, kv: KVStore, now_ms: int) -> None:
        self.promote = self.promote or max(1, kv.applied_index)  # BUG: as if promoted
        step(self, core, kv, now_ms)

    sim = Sim()
    with patched_step(no_promote):
        lease, leader = failover_with_a_fast_clock(sim)
        sim.net.advance(1.0)
    assert lease not in sim.kv(leader).leases  # gone within a second of the failover
