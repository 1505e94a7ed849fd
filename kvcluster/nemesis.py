"""Nemesis runs: concurrent clients against real node processes while faults rain down.

Every operation is recorded (invocation, completion, and whether its outcome
is known), the nemesis kills, pauses, partitions, cuts and slows nodes on a
schedule, and at the end the history is checked for linearizability. A failed
run keeps the history and the nodes' event logs for a post-mortem.
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
from pathlib import Path

from tqdm import tqdm

from .check import HistoryRecorder, check, save
from .check.linearizability import Result
from .client import Client
from .cluster import Cluster
from .errors import KvClusterError, OutcomeUnknown

FAULTS = ("kill", "pause", "partition", "cut", "drop", "delay")


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
        if self.ok is False:
            lines.append(self.check.explain())
        if self.work_dir is not None:
            lines.append(f"kept: {self.work_dir} (history.jsonl, *.events.jsonl, *.log)")
        return "\n".join(lines)


class _Worker(threading.Thread):
    """One client issuing random puts, gets and deletes on a few keys."""

    def __init__(
        self, name: str, cluster: Cluster, history: HistoryRecorder, keys: int, seed: int
    ) -> None:
        super().__init__(daemon=True, name=f"nemesis-{name}")
        self.client_name = name
        # Each client starts at a different node and stays there while it
        # answers, so reads are spread over followers as well as the leader.
        endpoints = cluster.endpoints
        start = seed % len(endpoints)
        self.client = Client(
            endpoints[start:] + endpoints[:start],
            timeout=3.0,
            request_timeout=1.0,
            prefer_leader=False,
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

    def one(self) -> None:
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
    """Applies one random fault at a time and heals it before the next."""

    def __init__(self, cluster: Cluster, config: NemesisConfig, rng: random.Random) -> None:
        self.cluster = cluster
        self.config = config
        self.rng = rng
        self.log: list[tuple[float, str]] = []
        self._undo: Callable[[], object] | None = None
        self.t0 = time.monotonic()

    def step(self) -> None:
        self.heal()
        kind = self.rng.choice(list(self.config.faults))
        c, n, rng = self.cluster, len(self.cluster.nodes), self.rng
        victim = rng.randrange(n)
        if kind == "kill":
            c.kill(victim)
            self._undo = lambda: c.restart(victim)
            what = f"kill n{victim}"
        elif kind == "pause":
            c.pause(victim)
            self._undo = lambda: c.resume(victim)
            what = f"pause n{victim}"
        elif kind == "partition":
            minority = rng.sample(range(n), rng.randint(1, (n - 1) // 2))
            majority = [i for i in range(n) if i not in minority]
            c.partition(majority, minority)
            self._undo = c.heal
            what = f"partition {sorted(majority)} | {sorted(minority)}"
        elif kind == "cut":
            dst = rng.choice([i for i in range(n) if i != victim])
            c.cut(victim, dst)
            self._undo = c.heal
            what = f"cut n{victim} -> n{dst}"
        elif kind == "drop":
            for i in range(n):
                for j in range(n):
                    if i != j:
                        c.drop(i, j, 0.2)
            self._undo = c.heal
            what = "drop 20% of all messages"
        else:
            for i in range(n):
                for j in range(n):
                    if i != j:
                        c.delay(i, j, rng.uniform(0.0, 0.05))
            self._undo = c.heal
            what = "delay links by 0-50 ms"
        self.log.append((time.monotonic() - self.t0, what))

    def heal(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()


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
        workers = [
            _Worker(f"c{w}", cluster, history, config.keys, rng.randrange(1 << 30))
            for w in range(config.clients)
        ]
        for w in workers:
            w.start()
        nemesis = _Nemesis(cluster, config, rng)
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
        cluster.heal()
        for w in workers:
            w.stop.set()
        for w in workers:
            w.join(30)
        live = _write_after_heal(cluster, history)
    operations = history.operations()
    result = check(operations, timeout=120.0)
    counts: dict[str, int] = {}
    for op in operations:
        counts[op.status] = counts.get(op.status, 0) + 1
    clean = result.ok is True and live
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
    )


def _write_after_heal(cluster: Cluster, history: HistoryRecorder) -> bool:
    """Liveness: once every fault is gone, a write must succeed again."""
    with Client(cluster.endpoints, timeout=30.0) as client:
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
    return 0 if result.ok is True and result.live_after_heal else 1
