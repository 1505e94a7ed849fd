"""The simulator drives the production node layer: bugs injected there are found.

Each test patches one rule of `kvcluster.node.Node` (or of the driver's
fail-stop) the way test_sim.py patches the core, runs seeds until the
simulator reports a violation, and checks that the unpatched code passes the
same seeds. The node layer is the code the node process runs, so what these
find is what would have reached users.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from test_sim import BUG_SEED_LIMIT, FAST, assert_correct_core_passes, first_failure

from kvcluster.kv.sessions import SessionTable
from kvcluster.node import PUT, Node, NodeOptions, Request
from kvcluster.node.node import NOT_APPLIED, PROPOSED
from kvcluster.node.proposals import Proposal, Proposals
from kvcluster.raft import RaftOptions, Role
from kvcluster.sim.clients import ClientOptions
from kvcluster.sim.net import RaftNet
from kvcluster.sim.run import SeedResult, SimConfig, run_seed
from kvcluster.sim.storage import DiskFull


@contextmanager
def patched(cls: type, name: str, fn: Callable[..., Any]) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setattr(cls, name, fn)
    try:
        yield
    finally:
        mp.undo()


# ---------------------------------------------------------------------- retries

# Overload by retries: one entry per AppendEntries, one in flight, and clients
# that give up on an attempt long before a busy leader commits it. Without the
# de-duplication every retry appends another copy, the log grows faster than
# it drains, and no write completes any more: a livelock, which the probe at
# the end of the run reports as a liveness failure.
RETRY_STORM = SimConfig(
    nodes=3,
    options=RaftOptions(**FAST, max_append_entries=1, max_inflight=1),
    faults=frozenset({"loss"}),
    time=3.0,
    clients=8,
    keys=2,
    client_options=ClientOptions(
        keys=2,
        op_timeout=2.0,
        attempt_timeout=0.03,
        retry_backoff=0.005,
        put_ratio=0.9,
        delete_ratio=0.1,
        think_time=(0.0, 0.01),
    ),
    node_options=NodeOptions(request_timeout=3.0, snapshot_every=0),
    liveness_bound=5.0,
)


def never_pending(self: Proposals, session: Any, term: int) -> Proposal | None:
    """Proposals.pending with one rule changed: a retry never finds its entry."""
    return None  # BUG: was the pending proposal of this (client_id, seq) in this term


def test_bug_retried_writes_are_appended_again_and_livelock() -> None:
    def run(seed: int) -> SeedResult:
        return run_seed(seed, RETRY_STORM)

    with patched(Proposals, "pending", never_pending):
        res = first_failure(run, limit=20)
    assert res.kind == "liveness", res.report()
    assert_correct_core_passes(run, range(res.seed + 1))


# ---------------------------------------------------------------------- sessions

# Sessions that expire within a few retries: a write whose answer is lost in a
# partition is retried after its session has gone. Refused, the client reports
# the outcome unknown; taken for a new session, as an LRU table once did for an
# evicted client, the retry applies a second time, after other writes.
SESSION_EXPIRY = SimConfig(
    nodes=3,
    options=RaftOptions(**FAST),
    faults=frozenset({"partition", "loss", "crash"}),
    time=4.0,
    clients=4,
    keys=1,
    client_options=ClientOptions(
        keys=1, op_timeout=3.0, attempt_timeout=0.4, put_ratio=0.6, delete_ratio=0.1
    ),
    node_options=NodeOptions(request_timeout=1.0, snapshot_every=10, session_ttl=0.3),
)

_original_replay = SessionTable.replay


def replay_forgetting_expiry(self: SessionTable, session_id: str, seq: int) -> Any:
    """SessionTable.replay with one rule changed: a session it does not hold is
    started afresh instead of refused."""
    if session_id not in self.table:
        self.open(session_id, self.clock)  # BUG: was raise Expired(session_id)
    return _original_replay(self, session_id, seq)


def test_bug_an_expired_session_taken_for_a_new_one_applies_a_retry_twice() -> None:
    def run(seed: int) -> SeedResult:
        return run_seed(seed, SESSION_EXPIRY)

    with patched(SessionTable, "replay", replay_forgetting_expiry):
        res = first_failure(run)
    assert res.kind == "linearizability", res.report()
    assert_correct_core_passes(run, range(res.seed + 1))


# ---------------------------------------------------------------------- leader changes

# Leaders come and go (crashes, partitions, links cut one way, so that a leader
# is heard but not answered and steps down with entries a majority holds)
# while clients write one key and read it.
LEADER_CHANGES = SimConfig(
    options=RaftOptions(**FAST),
    faults=frozenset({"one_way", "partition", "crash"}),
    nemesis_interval=(0.05, 0.3),
    time=4.0,
    clients=3,
    keys=1,
    serializable_reads=False,
)
# The same, with clients that give up soon after a failure they are told of (a
# 503 says "not applied": nothing to wait for). A write wrongly reported as
# failed then shows up in a later read, which no linearization allows.
QUICK_TO_GIVE_UP = dataclasses.replace(
    LEADER_CHANGES,
    faults=frozenset({"one_way", "crash"}),
    client_options=ClientOptions(
        keys=1,
        op_timeout=0.5,
        attempt_timeout=0.3,
        retry_backoff=0.4,
        put_ratio=0.5,
        delete_ratio=0.0,
    ),
)

_original_redispatch = Node._redispatch


def redispatch_without_session(self: Node, p: Any) -> None:
    """Node._redispatch with one rule changed: a request held until a leader is
    known goes on without its (client_id, seq)."""
    p.req = dataclasses.replace(p.req, client_id=None, seq=None)  # BUG: the session is lost
    _original_redispatch(self, p)


def test_bug_a_held_write_loses_its_session_and_applies_twice() -> None:
    # A client's first attempt reached the old leader and a majority; its retry,
    # held by a follower during the election, is appended again by the new
    # leader without its session: the write applies twice, around another.
    def run(seed: int) -> SeedResult:
        return run_seed(seed, LEADER_CHANGES)

    with patched(Node, "_redispatch", redispatch_without_session):
        res = first_failure(run, limit=2 * BUG_SEED_LIMIT)  # about 1 seed in 130 shows it
    assert res.kind == "linearizability", res.report()
    assert_correct_core_passes(run, range(res.seed + 1))


_original_after_input = Node._after_input


def give_up_on_deposition(self: Node) -> None:
    """Node._after_input with one rule changed: a leader that loses its office
    tells the clients waiting on its entries that their writes failed."""
    if self.raft.role is not Role.LEADER:
        for p in list(self._pending.values()):
            if p.state == PROPOSED:
                self._fail(p, NOT_APPLIED)  # BUG: they may still commit under the next leader
    _original_after_input(self)


def test_bug_a_deposed_leader_answers_its_pending_writes_as_failed() -> None:
    def run(seed: int) -> SeedResult:
        return run_seed(seed, QUICK_TO_GIVE_UP)

    with patched(Node, "_after_input", give_up_on_deposition):
        res = first_failure(run)
    assert res.kind == "linearizability", res.report()
    assert_correct_core_passes(run, range(res.seed + 1))


# ---------------------------------------------------------------------- full disks

DISKS = SimConfig(
    options=RaftOptions(**FAST),
    faults=frozenset({"disk", "crash", "partition"}),
    nemesis_interval=(0.05, 0.3),
    time=3.0,
    clients=4,
    keys=2,
)


def test_full_disks_stop_the_node_and_lose_nothing_acknowledged() -> None:
    failures = 0
    for seed in range(60):
        res = run_seed(seed, DISKS)
        assert res.ok, res.report()
        failures += res.faults.get("storage_failed", 0)
    assert failures >= 30  # the disks did fill up, many times, leaders' among them


def test_a_leader_whose_disk_fills_stops_and_a_restart_recovers_it() -> None:
    net = RaftNet(3, seed=3, options=RaftOptions(**FAST), latency=0.001)
    leader = net.elect("n1")
    net.fail_storage("n1", after=0)
    net.propose("n1", "x")  # its write fails: the node stops there
    assert "n1" not in net.alive
    assert leader.commit < leader.log.last_index()  # it counted nothing it lost
    assert net.run_until(lambda: net.stable_leader() in ("n2", "n3"), 3.0)
    net.restart("n1")
    net.propose(net.stable_leader() or "n2", "y")
    assert net.run_until(lambda: net.converged(), 3.0)
    assert "x" not in net.applied_data("n2") and "y" in net.applied_data("n1")
    net.check_logs()
    net.check_stores()


_original_persist = RaftNet._persist


def persist_and_carry_on(self: RaftNet, nid: str, rd: Any) -> None:
    """RaftNet._persist as the node process once behaved: a failed write is
    logged (by tornado's callback runner) and the node goes on as if it had
    persisted the batch."""
    with contextlib.suppress(DiskFull):  # BUG: fail-stop was "log it and go on"
        _original_persist(self, nid, rd)


def test_bug_a_node_that_keeps_serving_after_a_failed_write_is_caught() -> None:
    def run(seed: int) -> SeedResult:
        return run_seed(seed, DISKS)

    with patched(RaftNet, "_persist", persist_and_carry_on):
        res = first_failure(run, limit=BUG_SEED_LIMIT)
    assert res.kind in ("safety", "linearizability"), res.report()


def test_pending_requests_are_bounded_by_their_deadlines() -> None:
    # Every request the node layer holds has a deadline: none outlives it.
    net = RaftNet(3, seed=5, options=RaftOptions(**FAST), latency=0.001)
    net.elect("n1")
    net.isolate("n1")
    server = net.servers["n1"]
    for i in range(50):
        server.submit(Request(i + 1, PUT, "k", "v"), server.now)
    net.flush("n1")
    assert server.pending_requests() == 50
    net.advance(net.node_options.request_timeout + 0.01)
    assert server.pending_requests() == 0
