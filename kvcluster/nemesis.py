"""Nemesis runs: concurrent clients against real node processes while faults rain down.

Every operation is recorded (invocation, completion, and whether its outcome
is known), the nemesis kills, pauses, partitions, cuts and slows nodes on a
schedule, and at the end the history is checked for linearizability. A failed
run keeps the history and the nodes' event logs for a post-mortem.

It also changes the membership, as Jepsen's etcd test does: it removes a
member and later adds a new node, while the fault of the moment (a kill, a
pause, a partition) goes on. The cluster stays at n or n - 1 members: a member
is removed only when all n are voters, a new one added only when one is
missing, and the one removed is the node the current fault has cut off, if
any, so that the others still make a quorum of the new configuration. A
removed node must find out and exit by itself (with status 0); the run
checks that too, once the faults are healed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from .check import HistoryRecorder, check, save
from .check.linearizability import Result
from .client import Client
from .cluster import Cluster, ClusterError
from .errors import KvClusterError, OutcomeUnknown

FAULTS = ("kill", "pause", "partition", "cut", "drop", "delay", "member")
MEMBER_WAIT = 5.0  # seconds a membership change waits for a leader or a promotion


@dataclass
class NemesisConfig:
    nodes: int = 5
    duration: float = 60.0  # seconds of faults and load
    clients: int = 5
    keys: int = 5
    seed: int | None = None
    faults: Sequence[str] = FAULTS
    fault_interval: tuple[float, float] = (1.0, 3.0)  # seconds between faults
    heartbeat_interval: float = 0.1
    election_timeout: tuple[float, float] = (0.5, 1.0)
    read_mode: str = "read_index"
    storage: str = "memory"
    keep: bool = False  # keep the work directory even if the run is clean


@dataclass
class NemesisResult:
    ok: bool | None
    ops: int
    counts: dict[str, int]
    faults: list[tuple[float, str]]
    check: Result
    live_after_heal: bool
    work_dir: Path | None
    seed: int
    elapsed: float = 0.0
    notes: list[str] = field(default_factory=list)
    # Members removed while running, and whether each then exited by itself
    # with status 0 (a node removed while killed is not among them).
    removed_exited: dict[str, bool] = field(default_factory=dict)

    def summary(self) -> str:
        c = self.counts
        verdict = {True: "linearizable", False: "NOT LINEARIZABLE", None: "undecided"}[self.ok]
        lines = [
            f"seed {self.seed}: {self.ops} operations ({c.get('ok', 0)} ok, "
            f"{c.get('fail', 0)} failed, {c.get('unknown', 0)} indeterminate), "
            f"{len(self.faults)} faults in {self.elapsed:.0f} s",
            f"history: {verdict}; a write after healing "
            f"{'succeeded' if self.live_after_heal else 'FAILED'}",
        ]
        if self.removed_exited:
            stuck = sorted(n for n, ok in self.removed_exited.items() if not ok)
            lines.append(
                f"removed members: {', '.join(sorted(self.removed_exited))}; "
                + (f"NOT EXITED BY THEMSELVES: {', '.join(stuck)}" if stuck else "all exited")
            )
        if self.ok is False:
            lines.append(self.check.explain())
        if self.work_dir is not None:
            lines.append(f"kept: {self.work_dir} (history.jsonl, *.events.jsonl, *.log)")
        return "\n".join(lines)


class _Worker(threading.Thread):
    """One client issuing random puts, gets and deletes on a few keys."""

    def __init__(
        self,
        name: str,
        members: Callable[[], list[str]],
        history: HistoryRecorder,
        keys: int,
        seed: int,
    ) -> None:
        super().__init__(daemon=True, name=f"nemesis-{name}")
        self.client_name = name
        # Each client starts at a different node and stays there while it
        # answers, so reads are spread over followers as well as the leader.
        # `members` gives the members' endpoints now: they change as the
        # nemesis removes and adds nodes.
        self.members = members
        self.start_at = seed
        self.client = Client(
            self._endpoints(), timeout=3.0, request_timeout=1.0, prefer_leader=False
        )
        self.history = history
        self.keys = keys
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.seq = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.one()
        self.client.close()

    def _endpoints(self) -> list[str]:
        endpoints = self.members()
        start = self.start_at % len(endpoints)
        return endpoints[start:] + endpoints[:start]

    def one(self) -> None:
        endpoints = self._endpoints()
        if endpoints != self.client.endpoints:
            self.client.endpoints = endpoints  # between two operations, in this thread
        key = f"k{self.rng.randrange(self.keys)}"
        roll = self.rng.random()
        h, name = self.history, self.client_name
        if roll < 0.45:
            self.seq += 1
            value = f"{name}-{self.seq}"  # unique, as the checker wants
            token = h.invoke(name, "put", key, value)
            self._finish(token, lambda: self.client.put(key, value))
        elif roll < 0.9:
            token = h.invoke(name, "get", key)
            try:
                observed = self.client.get(key)
            except KvClusterError:
                h.complete(token, "fail")  # a read that failed changed nothing
                return
            h.complete(token, "ok", observed)
        else:
            token = h.invoke(name, "delete", key)
            self._finish(token, lambda: self.client.delete(key))

    def _finish(self, token: int, call: Callable[[], object]) -> None:
        try:
            call()
        except OutcomeUnknown:
            self.history.complete(token, "unknown")
            return
        except KvClusterError:
            self.history.complete(token, "fail")  # known not applied (or refused)
            return
        self.history.complete(token, "ok")


class _Nemesis:
    """Applies one random fault at a time and heals it before the next; a
    membership change instead happens while the fault of the moment goes on."""

    def __init__(self, cluster: Cluster, config: NemesisConfig, rng: random.Random) -> None:
        self.cluster = cluster
        self.config = config
        self.rng = rng
        self.member_rng = random.Random(rng.random())  # (see step)
        self.log: list[tuple[float, str]] = []
        self._undo: Callable[[], object] | None = None
        self._cut_off: list[int] = []  # nodes the current fault isolates, stops or kills
        self._killed: int | None = None
        self.removed: dict[int, bool] = {}  # removed node -> was it running then
        self.all_voters = True  # as far as we know: every member is a voter
        self.seen: set[str] = {h.name for h in cluster.nodes}  # ever known as members
        self.endpoints = self._member_endpoints()
        self.t0 = time.monotonic()

    # ------------------------------------------------------------------ faults

    def active(self) -> list[int]:
        """The nodes that are members (or joining): faults strike only these."""
        return [h.index for h in self.cluster.nodes if not h.removed]

    def _member_endpoints(self) -> list[str]:
        c = self.cluster
        return [c.endpoints[i] for i in self.active()]

    def step(self) -> None:
        # Two draws per step whatever happens, so that a seed's sequence of
        # fault kinds never depends on how the cluster fared; the step's own
        # choices come from a generator of its own.
        kind = self.rng.choice(list(self.config.faults))
        rng = random.Random(self.rng.random())
        if kind == "member":
            self._note(self._change_membership())
            return
        self.heal()
        c = self.cluster
        nodes = self.active()
        n = len(nodes)
        victim = rng.choice(nodes)
        self._cut_off = [victim]
        if kind == "kill":
            c.kill(victim)
            self._killed = victim
            self._undo = lambda: self._restart(victim)
            what = f"kill n{victim}"
        elif kind == "pause":
            c.pause(victim)
            self._undo = lambda: c.resume(victim)
            what = f"pause n{victim}"
        elif kind == "partition":
            minority = rng.sample(nodes, rng.randint(1, max(1, self._minority_max(n))))
            majority = [i for i in nodes if i not in minority]
            _retry(lambda: c.partition(majority, minority))
            self._cut_off = minority
            self._undo = c.heal
            what = f"partition {sorted(majority)} | {sorted(minority)}"
        elif kind == "cut":
            dst = rng.choice([i for i in nodes if i != victim])
            _retry(partial(c.cut, victim, dst))
            self._undo = c.heal
            what = f"cut n{victim} -> n{dst}"
        elif kind == "drop":
            self._cut_off = []
            for i in nodes:
                for j in nodes:
                    if i != j:
                        _retry(partial(c.drop, i, j, 0.2))
            self._undo = c.heal
            what = "drop 20% of all messages"
        else:
            self._cut_off = []
            for i in nodes:
                for j in nodes:
                    if i != j:
                        delay = rng.uniform(0.0, 0.05)
                        _retry(partial(c.delay, i, j, delay))
            self._undo = c.heal
            what = "delay links by 0-50 ms"
        self._note(what)

    def _minority_max(self, n: int) -> int:
        """The largest minority a partition of n nodes may cut off: one fewer
        while a voter is missing (a member removed, or its successor not yet
        promoted), so that the rest still make a quorum of the voters."""
        return (n - 1) // 2 if self.all_voters else (n - 2) // 2

    def _restart(self, i: int) -> None:
        self._killed = None
        if not self.cluster.nodes[i].removed:  # a removed member stays down
            _retry(lambda: self.cluster.restart(i))

    def heal(self) -> None:
        self._cut_off = []
        if self._undo is not None:
            undo, self._undo = self._undo, None
            _retry(undo)

    def _note(self, what: str) -> None:
        self.log.append((time.monotonic() - self.t0, what))

    # ------------------------------------------------------------------ membership

    def _change_membership(self) -> str:
        """Remove a member if all n are voters, add a node if one is missing.

        It waits a little (MEMBER_WAIT) for a leader to ask, and for a new
        member's promotion: an election or a catch-up in progress is no reason
        to skip the change."""
        deadline = time.monotonic() + MEMBER_WAIT
        while True:
            members = self._members()
            if members is not None:
                self._reconcile(set(members))
                if len(members) < self.config.nodes:
                    return self._add()
                if all(m["voter"] for m in members.values()):
                    self.all_voters = True
                    return self._remove(list(members))
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)  # polling the cluster's state, as Cluster.wait_until does
        if members is None:
            return "member change skipped: no leader to ask"
        return "member change skipped: a new member is not a voter yet"

    def _members(self) -> dict[str, dict[str, Any]] | None:
        c = self.cluster
        leader = c.leader()
        status = c.node_status(leader) if leader is not None else None
        # Committed only: a removal still in the leader's log may yet be cut from it,
        # and a node taken for removed would never be restarted or expected back.
        return None if status is None else dict(status["members_committed"])

    def _reconcile(self, members: set[str]) -> None:
        """A removal whose answer was lost may have happened all the same."""
        self.seen |= members
        for h in self.cluster.nodes:
            if not h.removed and h.name in self.seen and h.name not in members:
                h.removed = True
                self.removed[h.index] = h.alive
                self.all_voters = False
                self.endpoints = self._member_endpoints()

    def _remove(self, names: list[str]) -> str:
        c = self.cluster
        by_name = {h.name: h.index for h in c.nodes if not h.removed}
        candidates = [i for i in self._cut_off if c.nodes[i].name in names]
        if not candidates:  # nothing cut off: any member, the leader included
            candidates = sorted(by_name[n] for n in names if n in by_name)
        if not candidates:
            return "member change skipped: no member to remove"
        victim = self.member_rng.choice(candidates)
        running = c.nodes[victim].alive and self._killed != victim
        try:
            c.remove_node(victim, timeout=10.0, exit_timeout=None)
        except KvClusterError as exc:
            return f"remove n{victim} failed ({exc.__class__.__name__}); the next change checks"
        self.removed[victim] = running
        self.all_voters = False
        self.endpoints = self._member_endpoints()
        return f"remove n{victim}" + ("" if running else " (down)")

    def _add(self) -> str:
        try:
            i = self.cluster.add_node()
        except ClusterError as exc:
            return f"add a node failed: {exc}"
        self.endpoints = self._member_endpoints()
        return f"add n{i}"

    def removed_exited(self, timeout: float) -> dict[str, bool]:
        """Once faults are healed: did every node removed while running exit by
        itself, with status 0? (It learns of its removal from a member.)"""
        deadline = time.monotonic() + timeout
        out: dict[str, bool] = {}
        for i, running in sorted(self.removed.items()):
            if not running:
                continue
            h = self.cluster.nodes[i]
            if h.process is not None:
                h.process.join(max(0.0, deadline - time.monotonic()))
            out[h.name] = h.process is not None and h.process.exitcode == 0
        return out


def _retry(action: Callable[[], object], attempts: int = 3) -> None:
    """Fault injection posts to every node; one that exits meanwhile (a removed
    member does) fails the post: do it again, it then skips that node."""
    for attempt in range(attempts):
        try:
            action()
            return
        except requests.RequestException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)


def run(config: NemesisConfig | None = None, *, progress: bool = True) -> NemesisResult:
    config = config or NemesisConfig()
    seed = config.seed if config.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work_dir = Path(tempfile.mkdtemp(prefix="kvcluster-nemesis-"))
    history = HistoryRecorder()
    started = time.monotonic()
    with Cluster(
        config.nodes,
        heartbeat_interval=config.heartbeat_interval,
        election_timeout=config.election_timeout,
        read_mode=config.read_mode,
        storage=config.storage,
        work_dir=work_dir,
        seed=seed,
    ) as cluster:
        cluster.wait_for_leader()
        seeds = [rng.randrange(1 << 30) for _ in range(config.clients)]
        nemesis = _Nemesis(cluster, config, rng)
        workers = [
            _Worker(f"c{w}", lambda: nemesis.endpoints, history, config.keys, seed)
            for w, seed in enumerate(seeds)
        ]
        for w in workers:
            w.start()
        end = time.monotonic() + config.duration
        total = round(config.duration)
        with tqdm(total=total, unit="s", disable=not progress) as bar:
            while (now := time.monotonic()) < end:
                nemesis.step()
                pause = min(rng.uniform(*config.fault_interval), end - now)
                time.sleep(max(pause, 0.0))  # the schedule itself, not a wait for a condition
                bar.n = min(round(time.monotonic() - started), total)
                bar.set_postfix(ops=len(history), faults=len(nemesis.log))
        nemesis.heal()
        _retry(cluster.heal)
        for w in workers:
            w.stop.set()
        for w in workers:
            w.join(30)
        live = _write_after_heal(nemesis.endpoints, history)
        # Healed, a removed member hears from the others and exits.
        removed_exited = nemesis.removed_exited(timeout=30.0)
    operations = history.operations()
    result = check(operations, timeout=120.0)
    counts: dict[str, int] = {}
    for op in operations:
        counts[op.status] = counts.get(op.status, 0) + 1
    clean = result.ok is True and live and all(removed_exited.values())
    save(operations, work_dir / "history.jsonl")
    (work_dir / "faults.json").write_text(json.dumps(nemesis.log, indent=1))
    kept: Path | None = work_dir
    if clean and not config.keep:
        shutil.rmtree(work_dir, ignore_errors=True)
        kept = None
    return NemesisResult(
        ok=result.ok,
        ops=len(operations),
        counts=counts,
        faults=nemesis.log,
        check=result,
        live_after_heal=live,
        work_dir=kept,
        seed=seed,
        elapsed=time.monotonic() - started,
        removed_exited=removed_exited,
    )


def _write_after_heal(endpoints: list[str], history: HistoryRecorder) -> bool:
    """Liveness: once every fault is gone, a write must succeed again."""
    with Client(endpoints, timeout=30.0) as client:
        token = history.invoke("final", "put", "k0", "final-1")
        try:
            client.put("k0", "final-1")
        except KvClusterError:
            history.complete(token, "unknown")
            return False
        history.complete(token, "ok")
        return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="kvcluster nemesis",
        description="Concurrent clients against a real cluster under random faults; "
        "the history is checked for linearizability.",
    )
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--seed", type=int)
    p.add_argument("--faults", default=",".join(FAULTS), help=f"any of {','.join(FAULTS)}")
    p.add_argument("--storage", default="memory", choices=["memory", "disk"])
    p.add_argument("--read-mode", default="read_index", choices=["proxy", "read_index", "lease"])
    p.add_argument("--keep", action="store_true", help="keep the work directory even if clean")
    args = p.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    unknown = set(faults) - set(FAULTS)
    if unknown:
        p.error(f"unknown faults: {sorted(unknown)}")
    config = NemesisConfig(
        nodes=args.nodes,
        duration=args.duration,
        clients=args.clients,
        keys=args.keys,
        seed=args.seed,
        faults=faults,
        storage=args.storage,
        read_mode=args.read_mode,
        keep=args.keep,
    )
    result = run(config)
    print(result.summary())
    clean = result.ok is True and result.live_after_heal and all(result.removed_exited.values())
    return 0 if clean else 1
