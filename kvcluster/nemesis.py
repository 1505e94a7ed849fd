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

The clients write through both APIs on the same keys: /v1 puts and deletes,
and compare-and-swaps through etcd's /v3/kv/txn. Meanwhile a few watchers
watch the keys from revision 1, each from another node, moving to another
when theirs dies or goes silent. Once healed, every live member's copy of the
history is read back (they must agree), and each watcher's events must be
exactly its slice of it; every acknowledged write must be in it
(kvcluster.check.watch).
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import requests
from tqdm import tqdm

from .check import HistoryRecorder, Operation, check, save
from .check.linearizability import Result
from .check.watch import (
    Change,
    WatcherLog,
    WatchRecord,
    WatchResult,
    check_watches,
    prefix_end,
    save_record,
)
from .client import Client, Put, Watch
from .client_etcd import WatchEvent
from .cluster import Cluster, ClusterError
from .errors import Compacted, KvClusterError, Unavailable

FAULTS = ("kill", "pause", "partition", "cut", "drop", "delay", "member")
MEMBER_WAIT = 5.0  # seconds a membership change waits for a leader or a promotion
PREFIX = "k"  # the clients' keys are k0, k1, ...: watchers watch this prefix
WATCH_WAIT = 60.0  # seconds after healing for watchers and members to reach the final revision

T = TypeVar("T")


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
    watchers: int = 4  # clients watching the keys, each on another node (see _Watcher)
    watch_idle: float = 2.0  # seconds of silence before a watcher checks its node answers
    # Revisions of history the cluster keeps (0: all): the watchers and the
    # committed history read after healing start at revision 1, so a run that
    # compacts gets a watch verdict of undecided (the watchers say Compacted).
    history_keep: int = 0
    tls: bool = False  # TLS on clients and peers (Cluster(tls=True))
    netns: bool = False  # each node on a network stack of its own (Cluster(netns=True))


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
    # Compare-and-swaps by outcome: swapped, compare failed, failed, unknown.
    cas: dict[str, int] = field(default_factory=dict)
    # The watch check (None: no watchers), what it judged, and the final revision.
    watch: WatchResult | None = None
    watchers: list[WatcherLog] = field(default_factory=list)
    committed: dict[str, list[Change]] = field(default_factory=dict)
    final_revision: int = 0
    operations: list[Operation] = field(default_factory=list)  # the history checked

    @property
    def clean(self) -> bool:
        """Linearizable, watchers right, live after healing, removed members gone."""
        return (
            self.ok is True
            and self.live_after_heal
            and all(self.removed_exited.values())
            and (not self.watchers or (self.watch is not None and self.watch.ok is True))
        )

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
        cas = self.cas
        total = sum(cas.values())
        if total:
            swapped = cas.get("swapped", 0)
            lines.append(
                f"cas through /v3/kv/txn: {total} ({swapped} swapped = {swapped / total:.0%}, "
                f"{cas.get('compare failed', 0)} compare failed, {cas.get('failed', 0)} failed, "
                f"{cas.get('unknown', 0)} indeterminate)"
            )
        if self.watch is not None:
            lines.append(self.watch.summary())
        if self.removed_exited:
            stuck = sorted(n for n, ok in self.removed_exited.items() if not ok)
            lines.append(
                f"removed members: {', '.join(sorted(self.removed_exited))}; "
                + (f"NOT EXITED BY THEMSELVES: {', '.join(stuck)}" if stuck else "all exited")
            )
        if self.ok is False:
            lines.append(self.check.explain())
        if self.watch is not None and self.watch.ok is not True:
            lines.extend(self.watch.explain().splitlines()[1:])
        lines.extend(self.notes)
        if self.work_dir is not None:
            lines.append(
                f"kept: {self.work_dir} (history.jsonl, watches.json, *.events.jsonl, *.log;"
                " kvcluster check history.jsonl --watches watches.json checks them again)"
            )
        return "\n".join(lines)


class _Worker(threading.Thread):
    """One client issuing random puts, compare-and-swaps, gets and deletes on a few keys.

    Puts, gets and deletes go through /v1; compare-and-swaps, and a few puts
    of two keys at once, through etcd's /v3/kv/txn: both write the same
    store, so the checker sees them mixed on the same keys. A cas expects the
    value this client last saw or wrote for the key (half the time it reads
    the key first), so that many swap.
    """

    def __init__(
        self,
        name: str,
        members: Callable[[], list[str]],
        history: HistoryRecorder,
        keys: int,
        seed: int,
        connect: Connect,
    ) -> None:
        super().__init__(daemon=True, name=f"nemesis-{name}")
        self.client_name = name
        # Each client starts at a different node and stays there while it
        # answers, so reads are spread over followers as well as the leader.
        # `members` gives the members' endpoints now: they change as the
        # nemesis removes and adds nodes.
        self.members = members
        self.start_at = seed
        self.client = connect(
            self._endpoints(), timeout=3.0, request_timeout=1.0, prefer_leader=False
        )
        self.history = history
        self.keys = keys
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.seq = 0
        self.known: dict[str, str | None] = {}  # the value last seen or written, per key
        # For the watch checker's cross-check of acknowledged writes:
        self.revisions: dict[int, int] = {}  # ok put's operation id -> the revision it named
        self.deleted: set[int] = set()  # ok deletes that said they deleted something
        self.cas: Counter[str] = Counter()  # swapped, compare failed, failed, unknown

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
        key = f"{PREFIX}{self.rng.randrange(self.keys)}"
        roll = self.rng.random()
        if roll < 0.05:
            self._put_two(key)
        elif roll < 0.3:
            value = self._value()
            token = self.history.invoke(self.client_name, "put", key, value)
            ok, revision = self._write(token, lambda: self.client.put(key, value))
            if ok and revision is not None:
                self.revisions[token] = revision
                self.known[key] = value
        elif roll < 0.5:
            self._cas(key)
        elif roll < 0.9:
            self._get(key)
        else:
            token = self.history.invoke(self.client_name, "delete", key)
            ok, deleted = self._write(token, lambda: self.client.delete(key))
            if ok:
                self.known[key] = None
                if deleted:
                    self.deleted.add(token)

    def _put_two(self, key: str) -> None:
        """Two keys put by one txn, so at one revision: a revision of two events
        for the watchers. Each is recorded as a put of its own key (the checker
        judges keys one by one; the watch check sees them together)."""
        other = f"{PREFIX}{(int(key[len(PREFIX) :]) + 1) % self.keys}"
        if other == key:
            return
        puts = [(k, self._value()) for k in (key, other)]
        tokens = [self.history.invoke(self.client_name, "put", k, v) for k, v in puts]
        try:
            result = self.client.txn(success=[Put(k, v) for k, v in puts])
        except KvClusterError as exc:
            for token in tokens:
                self.history.complete(token, "fail" if exc.known_outcome else "unknown")
            return
        for token, (k, v) in zip(tokens, puts, strict=True):
            self.history.complete(token, "ok")
            self.revisions[token] = result.revision
            self.known[k] = v

    def _value(self) -> str:
        self.seq += 1
        return f"{self.client_name}-{self.seq}"  # unique, as the checker wants

    def _get(self, key: str) -> bool:
        token = self.history.invoke(self.client_name, "get", key)
        try:
            observed = self.client.get(key)
        except KvClusterError:
            self.history.complete(token, "fail")  # a read that failed changed nothing
            return False
        self.history.complete(token, "ok", observed)
        self.known[key] = observed
        return True

    def _cas(self, key: str) -> None:
        if (key not in self.known or self.rng.random() < 0.5) and not self._get(key):
            return
        expected, value = self.known.get(key), self._value()
        h = self.history
        token = h.invoke(self.client_name, "cas", key, value, expected=expected)
        try:
            swapped = self.client.cas(key, expected, value)
        except KvClusterError as exc:
            # Through /v3 nothing is retried once it may have been applied, so
            # "known not applied" is exact: anything else may have swapped.
            h.complete(token, "fail" if exc.known_outcome else "unknown")
            self.cas["failed" if exc.known_outcome else "unknown"] += 1
            return
        # A compare that failed is recorded as a failed cas: sound (see Operation).
        h.complete(token, "ok" if swapped else "fail")
        self.cas["swapped" if swapped else "compare failed"] += 1
        if swapped:
            self.known[key] = value
        else:
            self.known.pop(key, None)  # someone else wrote it: read it next time

    def _write(self, token: int, call: Callable[[], T]) -> tuple[bool, T | None]:
        """Run a /v1 write and record its outcome; (True, its answer) if ok."""
        try:
            answer = call()
        except KvClusterError as exc:
            # Known not applied (or refused) is a failed write; anything else may be applied.
            self.history.complete(token, "fail" if exc.known_outcome else "unknown")
            return False, None
        self.history.complete(token, "ok")
        return True, answer


class _Watcher(threading.Thread):
    """One client watching the clients' keys (the prefix) from revision 1,
    recording every event, from `delay` seconds into the run until told to
    stop (at the final revision). Its watch moves to another node, from the
    last revision seen + 1, when its node dies or goes silent; if no node
    answers for a while it watches again from there, as a user would."""

    def __init__(
        self,
        name: str,
        endpoints: list[str],
        delay: float,
        *,
        idle_timeout: float,
        connect: Connect,
    ) -> None:
        super().__init__(daemon=True, name=f"nemesis-{name}")
        self.endpoints = endpoints
        self.connect = connect
        self.delay = delay
        self.idle_timeout = idle_timeout
        self.log = WatcherLog(name, PREFIX, prefix_end(PREFIX), 1, 0)
        self.target: int | None = None  # once set: stop when everything up to it is seen
        self.stop = threading.Event()  # stop now, wherever it got to
        self.done = threading.Event()  # the watcher is done (target reached, stopped or failed)

    def run(self) -> None:
        try:
            if not self.stop.wait(self.delay):
                self._watch()
        except Exception as exc:  # recorded and reported: the check cannot pass without it
            self.log.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()

    def _watch(self) -> None:
        log = self.log
        with self.connect(self.endpoints, timeout=10.0, request_timeout=1.0) as client:
            while not self._finished():
                try:
                    watch = client.watch(
                        PREFIX,
                        prefix=True,
                        start_revision=log.end_revision + 1,
                        idle_timeout=self.idle_timeout,
                    )
                except Unavailable:
                    if self.stop.wait(0.5):  # no node answers now: try again shortly
                        return
                    continue
                with watch:
                    if log.served_by:
                        log.reconnects += 1  # watching again after no node answered
                    self._read(watch)

    def _read(self, watch: Watch) -> None:
        log = self.log
        at = watch.endpoint
        log.served_by.append(str(at))
        while not self._finished():
            try:
                event = watch.get(timeout=0.2)
            except Unavailable:
                return  # watched again from where it got to
            if watch.endpoint is not None and watch.endpoint != at:
                at = watch.endpoint
                log.reconnects += 1  # it moved on to another node by itself
                log.served_by.append(at)
            if event is not None:
                log.changes.append(_change(event))
            log.end_revision = watch.revision

    def _finished(self) -> bool:
        target = self.target
        return self.stop.is_set() or (target is not None and self.log.end_revision >= target)


def _change(event: WatchEvent) -> Change:
    if event.type == "PUT":
        return Change(event.revision, "PUT", event.key, event.value)
    return Change(event.revision, "DELETE", event.key)


def _read_history(
    endpoint: str, last: int, timeout: float, connect: Connect
) -> tuple[list[Change], str]:
    """The committed history of the clients' keys up to revision `last`, as
    one node holds it: a watch from revision 1 on that node alone. ('' or why
    it is incomplete; raises Compacted if part of it is gone.)"""
    changes: list[Change] = []
    deadline = time.monotonic() + timeout
    try:
        with (
            connect([endpoint], timeout=timeout, request_timeout=1.0) as client,
            client.watch(PREFIX, prefix=True, start_revision=1) as watch,
        ):
            while watch.revision < last:
                left = deadline - time.monotonic()
                if left <= 0:
                    return changes, f"{endpoint} served revisions up to {watch.revision} only"
                event = watch.get(timeout=left)
                if event is not None and event.revision <= last:
                    changes.append(_change(event))
    except Compacted:
        raise
    except KvClusterError as exc:
        return changes, f"{endpoint}: {exc}"
    return changes, ""


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


Connect = Callable[..., Client]  # Client(endpoints, **options), as this cluster needs


def _connect_to(cluster: Cluster) -> Connect:
    """Clients of this cluster: with its CA and certificate when it runs TLS."""
    return functools.partial(
        Client, ca=cluster.ca_file, cert=cluster.cert_file, key=cluster.key_file
    )


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
        history_keep=config.history_keep,
        work_dir=work_dir,
        seed=seed,
        tls=config.tls,
        netns=config.netns,
    ) as cluster:
        cluster.wait_for_leader()
        connect = _connect_to(cluster)
        seeds = [rng.randrange(1 << 30) for _ in range(config.clients)]
        nemesis = _Nemesis(cluster, config, rng)
        workers = [
            _Worker(f"c{w}", lambda: nemesis.endpoints, history, config.keys, seed, connect)
            for w, seed in enumerate(seeds)
        ]
        watchers = _watchers(config, cluster.endpoints, connect)
        for t in [*watchers, *workers]:
            t.start()
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
        final = _write_after_heal(nemesis.endpoints, history, connect)
        notes: list[str] = []
        committed: dict[str, list[Change]] = {}
        if watchers:
            _stop_watchers(watchers, final, timeout=WATCH_WAIT)
            names = {url: h.name for url, h in zip(cluster.endpoints, cluster.nodes, strict=True)}
            for watcher in watchers:
                log = watcher.log
                log.served_by = [names.get(url, url) for url in log.served_by]
            if final:
                committed = _read_committed(cluster, nemesis.active(), final, notes)
        # Healed, a removed member hears from the others and exits.
        removed_exited = nemesis.removed_exited(timeout=30.0)
    operations = history.operations()
    result = check(operations, timeout=120.0)
    logs = [w.log for w in watchers]
    revisions: dict[int, int] = {}
    deleted: set[int] = set()
    for w in workers:
        revisions.update(w.revisions)
        deleted |= w.deleted
    watch: WatchResult | None = None
    if watchers and committed:
        watch = check_watches(
            committed, final, logs, operations, revisions=revisions, deleted=deleted
        )
    elif watchers and not notes:
        notes.append("watch: NOT CHECKED: no committed history to check against")
    counts: dict[str, int] = {}
    for op in operations:
        counts[op.status] = counts.get(op.status, 0) + 1
    save(operations, work_dir / "history.jsonl")
    (work_dir / "faults.json").write_text(json.dumps(nemesis.log, indent=1))
    if watchers:
        record = WatchRecord(committed, final, logs, revisions, deleted)
        save_record(record, work_dir / "watches.json")
    outcome = NemesisResult(
        ok=result.ok,
        ops=len(operations),
        counts=counts,
        faults=nemesis.log,
        check=result,
        live_after_heal=final > 0,
        work_dir=work_dir,
        seed=seed,
        elapsed=time.monotonic() - started,
        notes=notes,
        removed_exited=removed_exited,
        cas=dict(sum((w.cas for w in workers), Counter())),
        watch=watch,
        watchers=logs,
        committed=committed,
        final_revision=final,
        operations=operations,
    )
    if outcome.clean and not config.keep:
        shutil.rmtree(work_dir, ignore_errors=True)
        outcome.work_dir = None
    return outcome


def _watchers(config: NemesisConfig, endpoints: list[str], connect: Connect) -> list[_Watcher]:
    """The watchers: each starts at another node, and later than the one
    before (the later ones replay more history when they start)."""
    out = []
    n = len(endpoints)
    for i in range(config.watchers):
        start = (2 * i + 1) % n  # not where the first clients start
        delay = config.duration * i / (2 * config.watchers)
        out.append(
            _Watcher(
                f"w{i}",
                endpoints[start:] + endpoints[:start],
                delay,
                idle_timeout=config.watch_idle,
                connect=connect,
            )
        )
    return out


def _stop_watchers(watchers: list[_Watcher], final: int, timeout: float) -> None:
    """Let every watcher see everything up to the final revision, then stop it
    (one that does not within `timeout` is stopped, and says so)."""
    deadline = time.monotonic() + timeout
    for w in watchers:
        if final:
            w.target = final
        else:
            w.stop.set()  # no final revision to wait for
    for w in watchers:
        if not w.done.wait(max(0.0, deadline - time.monotonic())):
            w.stop.set()
    for w in watchers:
        w.join(30)
        log = w.log
        if final and log.end_revision < final and log.error is None:
            log.error = (
                f"did not get to the final revision {final} within {timeout:g} s "
                f"after healing (got to {log.end_revision})"
            )
        # Only what the run wrote is judged: a write still in flight somewhere
        # may yet commit after the final one.
        log.changes = [c for c in log.changes if c.revision <= final]
        log.end_revision = min(log.end_revision, final)


def _read_committed(
    cluster: Cluster, members: list[int], final: int, notes: list[str]
) -> dict[str, list[Change]]:
    """Each live member's copy of the history up to `final` (they must agree;
    one that could not be read whole is kept as it is, and so disagrees).
    Nothing if compaction removed part of it: the watchers cannot be checked."""
    copies: dict[str, list[Change]] = {}
    for i in members:
        h = cluster.nodes[i]
        if not h.alive:
            continue
        try:
            changes, problem = _read_history(
                cluster.endpoints[i], final, WATCH_WAIT, _connect_to(cluster)
            )
        except Compacted as exc:
            notes.append(
                f"watch: NOT CHECKED: the history before revision {exc.compact_revision} "
                f"was compacted (run with history_keep 0 to keep it all)"
            )
            return {}
        copies[h.name] = changes
        if problem:
            notes.append(f"watch: the history read from {h.name} is incomplete: {problem}")
    return copies


def _write_after_heal(endpoints: list[str], history: HistoryRecorder, connect: Connect) -> int:
    """Liveness: once every fault is gone, a write must succeed again. Its
    revision (0 if it failed) is the last the watch check looks at."""
    with connect(endpoints, timeout=30.0) as client:
        token = history.invoke("final", "put", "k0", "final-1")
        try:
            revision = client.put("k0", "final-1")
        except KvClusterError:
            history.complete(token, "unknown")
            return 0
        history.complete(token, "ok")
        return revision


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="kvcluster nemesis",
        description="Concurrent clients against a real cluster under random faults; "
        "the history is checked for linearizability, and watchers' events against "
        "the committed history.",
    )
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults and load")
    p.add_argument("--clients", type=int, default=5)
    p.add_argument("--keys", type=int, default=5)
    p.add_argument("--seed", type=int)
    p.add_argument("--faults", default=",".join(FAULTS), help=f"any of {','.join(FAULTS)}")
    p.add_argument("--storage", default="memory", choices=["memory", "disk"])
    p.add_argument("--read-mode", default="read_index", choices=["proxy", "read_index", "lease"])
    p.add_argument(
        "--watchers", type=int, default=4, help="clients watching the keys (0: no watch check)"
    )
    p.add_argument(
        "--history-keep",
        type=int,
        default=0,
        help="revisions of history the cluster keeps (default 0: all, so watchers from "
        "revision 1 never meet a compaction)",
    )
    p.add_argument("--tls", action="store_true", help="TLS on clients and peers")
    p.add_argument(
        "--netns",
        action="store_true",
        help="each node in a network namespace of its own: partitions take links down (root)",
    )
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
        watchers=args.watchers,
        history_keep=args.history_keep,
        tls=args.tls,
        netns=args.netns,
    )
    result = run(config)
    print(result.summary())
    return 0 if result.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
