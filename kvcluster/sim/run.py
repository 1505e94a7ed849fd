"""One simulated run per seed: faults and client load, then healing, then verdicts.

`run_seed(seed)` builds a cluster whose every choice (size, Raft options, read
mode, network faults, nemesis actions, client operations) comes from the seed,
so a failing seed replays identically. A run:
  1. `time` simulated seconds of client load under faults; Raft's safety
     properties are checked after every step (see `kvcluster.sim.net`);
  2. faults stop: a leader must be elected within `liveness_bound`; clients
     keep working for `settle_time`, then finish what they were doing; then
     each client's probe (a put and a get, each allowed `liveness_bound`) must
     succeed, and every node must apply the same log;
  3. the clients' history must be linearizable (serializable reads aside).
"""

from __future__ import annotations

import random
import time
import traceback
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from ..check import HistoryRecorder, Operation, check
from ..node import NodeOptions
from ..raft import RaftOptions
from .clients import ClientOptions, SimClient
from .faults import FAULT_KINDS, Nemesis, NetworkFaults
from .net import InvariantViolation, RaftNet

ReadMode = Literal["proxy", "read_index", "lease"]
READ_MODES: tuple[ReadMode, ...] = ("proxy", "read_index", "lease")

ViolationKind = Literal["safety", "linearizability", "liveness", "error"]


@dataclass(frozen=True)
class SimConfig:
    """What every run of a batch shares; the rest is drawn from each seed."""

    nodes: int | None = None  # None: 3 or 5, drawn from the seed
    time: float = 3.0  # simulated seconds of faults and client load
    clients: int = 3
    keys: int = 3
    faults: frozenset[str] = frozenset(FAULT_KINDS)
    read_modes: tuple[ReadMode, ...] = READ_MODES
    options: RaftOptions | None = None  # None: drawn from the seed
    nemesis_interval: tuple[float, float] | None = None  # between fault actions; None: drawn
    serializable_reads: bool = True
    # Nodes snapshot their kv store and compact their log every so many applied
    # entries; None: 0 (never), 3, 10 or 30, drawn per seed.
    snapshot_every: int | None = None
    liveness_bound: float = 10.0  # simulated seconds to elect a leader once faults stop
    settle_time: float = 1.0  # load after that, all of which must succeed
    checker_steps: int = 200_000  # linearizability search budget (deterministic)
    client_options: ClientOptions | None = None  # None: the defaults, with `keys`
    node_options: NodeOptions | None = None  # None: drawn from the seed
    trace_lines: int = 40  # of a failing run's trace, in the report

    def __post_init__(self) -> None:
        unknown = self.faults - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        if self.nodes is not None and self.nodes < 1:
            raise ValueError("nodes must be at least 1")
        if not self.read_modes or set(self.read_modes) - set(READ_MODES):
            raise ValueError(f"read_modes must be some of {READ_MODES}")


@dataclass
class SeedResult:
    """The verdict on one seed. `checker` is "ok", "budget" (the linearizability
    search ran out of steps: undecided, counted but not a failure) or "skipped"
    (a violation was found before the check)."""

    seed: int
    violation: str | None = None
    kind: ViolationKind | None = None
    checker: Literal["ok", "budget", "skipped"] = "skipped"
    sim_time: float = 0.0
    operations: int = 0
    messages: int = 0
    setup: str = ""
    faults: dict[str, int] = field(default_factory=dict)  # fault events by kind
    snapshots: tuple[int, int] = (0, 0)  # taken, installed from a leader
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.violation is None

    def report(self) -> str:
        """What a failing seed prints: the violation, the setup and the trace's tail."""
        lines = [f"seed {self.seed}: {self.kind} violation", f"  setup: {self.setup}"]
        lines += ["  " + line for line in (self.violation or "").splitlines()]
        if self.trace:
            lines.append(f"  last {len(self.trace)} trace lines:")
            lines += ["    " + t for t in self.trace]
        return "\n".join(lines)


def draw_options(rng: random.Random, read_mode: ReadMode) -> RaftOptions:
    return RaftOptions(
        election_timeout=(0.3, 0.6),
        heartbeat_interval=0.06,
        pre_vote=rng.random() < 0.7,
        # A lease needs check-quorum; without it lease reads fall back to ReadIndex.
        check_quorum=read_mode == "lease" or rng.random() < 0.7,
        max_inflight=rng.choice([1, 2, 4]),
        max_append_entries=rng.choice([1, 3, 64]),
    )


class Simulation:
    """One seed's run (see the module docstring); `run()` returns its verdict."""

    def __init__(self, seed: int, config: SimConfig | None = None, *, verbose: bool = False):
        self.seed = seed
        self.config = cfg = config or SimConfig()
        rng = random.Random(seed)
        self.n = cfg.nodes if cfg.nodes is not None else rng.choice([3, 3, 5])
        self.read_mode: ReadMode = rng.choice(cfg.read_modes)
        self.options = cfg.options or draw_options(rng, self.read_mode)
        self.network = NetworkFaults.draw(rng, cfg.faults)
        interval = cfg.nemesis_interval or rng.choice([(0.02, 0.2), (0.05, 0.4), (0.1, 1.0)])
        self._trace: deque[tuple[float, str]] = deque(maxlen=None if verbose else 400)
        every = rng.choice([0, 3, 10, 30])
        self.snapshot_every = every if cfg.snapshot_every is None else cfg.snapshot_every
        self.node_options = cfg.node_options or NodeOptions(
            read_mode=self.read_mode,
            request_timeout=rng.choice([0.3, 1.0, 3.0]),
            snapshot_every=self.snapshot_every,
            snapshot_keep=rng.choice([0, 2]),
            # Tiny chunks: a simulated store is a few hundred bytes, and every
            # transfer should take several chunks, some lost or reordered.
            snapshot_chunk=rng.choice([16, 64, 4096]),
            snapshot_window=rng.choice([1, 2, 4]),
            # Short enough that sessions expire under the clients, now and then in
            # the middle of a write's retries (drawn apart: the other draws stay).
            session_ttl=random.Random(f"{seed}/sessions").choice([0.5, 1.5, 4.0, 300.0]),
        )
        self.cluster = RaftNet(
            self.n,
            seed=seed,
            options=self.options,
            node_options=self.node_options,
            latency=self.network.latency,
            background=rng.choice([(0.0, 0.0), (0.0, 0.05), (0.01, 0.3)]),
            record=False,
        )
        self.network.apply(self.cluster)
        self.nemesis = Nemesis(
            self.cluster,
            random.Random(f"{seed}/nemesis"),
            cfg.faults,
            interval=interval,
            log=self.log,
        )
        self.recorder = HistoryRecorder(clock=lambda: self.cluster.now)
        serializable = 0.2 if cfg.serializable_reads else 0.0
        self.client_options = copts = cfg.client_options or ClientOptions(
            keys=cfg.keys, serializable_ratio=serializable
        )
        self.clients = [
            SimClient(
                f"c{i}",
                self.cluster,
                self.recorder,
                random.Random(f"{seed}/client/{i}"),
                copts,
                sticky=rng.random() < 0.5,
                log=self.log,
                verbose=verbose,
            )
            for i in range(1, cfg.clients + 1)
        ]
        by_name = {c.name: c for c in self.clients}
        self.cluster.reply_to = lambda wire, answer: by_name[wire[0]].on_answer(wire[1], answer)
        self.setup = (
            f"{self.n} nodes, read mode {self.read_mode}, pre-vote {self.options.pre_vote}, "
            f"check-quorum {self.options.check_quorum}, max_inflight {self.options.max_inflight}, "
            f"max_append_entries {self.options.max_append_entries}, "
            f"snapshot every {self.snapshot_every or 'never'} "
            f"(chunk {self.node_options.snapshot_chunk} B), "
            f"request timeout {self.node_options.request_timeout:g}s, "
            f"session ttl {self.node_options.session_ttl:g}s; "
            f"{self.network.describe()}; "
            f"faults: {', '.join(sorted(cfg.faults)) or 'none'}, "
            f"every {interval[0]:g}-{interval[1]:g}s"
        )

    def log(self, text: str) -> None:
        self._trace.append((self.cluster.now, text))

    def trace(self, limit: int | None = None) -> list[str]:
        """The run's trace (nemesis, clients, Raft role changes), oldest first."""
        raft = [
            (t, f"{nid}: {_describe_event(ev)}")
            for t, nid, ev in self.cluster.events
            if ev["event"] in ("role", "step_down")
        ]
        merged = sorted([*self._trace, *raft], key=lambda x: x[0])
        if limit is not None:
            merged = merged[-limit:]
        return [f"{t:9.4f}  {text}" for t, text in merged]

    def operations(self) -> list[Operation]:
        return self.recorder.operations()

    def run(self) -> SeedResult:
        res = SeedResult(self.seed, setup=self.setup)
        try:
            self._run(res)
        except InvariantViolation as exc:
            res.violation, res.kind = str(exc), "safety"
        except Exception as exc:  # a crash of the core or of the simulator is a finding too
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-4)
            res.violation, res.kind = "".join(tb).rstrip(), "error"
        res.sim_time = self.cluster.now
        res.operations = len(self.recorder)
        res.messages = sum(self.cluster.sent_counts.values())
        res.faults = dict(self.cluster.faults)
        res.snapshots = (self.cluster.snapshots_taken, self.cluster.snapshots_installed)
        if res.violation is not None:
            res.trace = self.trace(self.config.trace_lines)
        return res

    def _run(self, res: SeedResult) -> None:
        cfg, net = self.config, self.cluster
        for c in self.clients:
            c.start(net.rng.uniform(0.0, 0.1))
        self.nemesis.start(net.rng.uniform(0.0, 0.3))
        net.advance(cfg.time)

        self.nemesis.heal_all()
        healed = net.now
        if not net.run_until(lambda: net.stable_leader() is not None, cfg.liveness_bound):
            res.kind = "liveness"
            res.violation = f"no leader {cfg.liveness_bound:g}s after the faults stopped"
            return
        self.log(f"liveness: {net.leader()} leads, {net.now - healed:.3f}s after healing")
        net.advance(cfg.settle_time)
        for c in self.clients:
            c.stop()
        bound = self.client_options.op_timeout + 1.0
        if not net.run_until(lambda: all(c.idle for c in self.clients), bound):
            res.kind = "liveness"
            res.violation = "client operations still pending long after a leader was elected"
            return
        for c in self.clients:
            c.probe(cfg.liveness_bound)
        net.run_until(lambda: all(c.idle for c in self.clients), 2 * cfg.liveness_bound + 1)
        for c in self.clients:
            if c.probe_results != ["put ok", "get ok"]:
                res.kind = "liveness"
                res.violation = (
                    f"once faults stopped, {c.name}'s probe (a put, then a get) gave "
                    f"{c.probe_results or 'nothing'} within {cfg.liveness_bound:g}s each"
                )
                return
        if not net.run_until(net.converged, cfg.liveness_bound):
            res.kind = "liveness"
            res.violation = "the nodes did not all apply the same log once faults stopped"
            return
        net.check_logs()
        net.check_stores()

        stale = self._check_stale_reads()
        if stale:
            res.kind, res.violation = "linearizability", stale
            return
        result = check(self.operations(), timeout=None, max_steps=cfg.checker_steps)
        if result.ok is False:
            res.kind, res.violation = "linearizability", result.explain()
        res.checker = "budget" if result.ok is None else "ok"

    def _check_stale_reads(self) -> str | None:
        """A serializable read may be stale, but must see a value some put wrote."""
        written = {(op.key, op.value) for op in self.operations() if op.op == "put"}
        for c in self.clients:
            for r in c.stale_reads:
                if r.value is not None and (r.key, r.value) not in written:
                    return f"serializable read of {r.key} saw {r.value!r}, which nobody wrote"
        return None


def _describe_event(ev: dict[str, Any]) -> str:
    if ev["event"] == "role":
        return f"{ev['role']} (term {ev['term']})"
    return f"steps down ({ev.get('reason')}, term {ev['term']})"


def run_seed(seed: int, config: SimConfig | None = None, *, verbose: bool = False) -> SeedResult:
    """Run one seed; the same seed and config always give the same run."""
    return Simulation(seed, config, verbose=verbose).run()


@dataclass
class Summary:
    """Totals over a batch of seeds."""

    seeds: int = 0
    violations: list[SeedResult] = field(default_factory=list)
    budget_exhausted: int = 0
    sim_time: float = 0.0
    real_time: float = 0.0
    operations: int = 0
    messages: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    snapshots_taken: int = 0
    snapshots_installed: int = 0

    def add(self, res: SeedResult) -> None:
        self.seeds += 1
        if not res.ok:
            self.violations.append(res)
        self.budget_exhausted += res.checker == "budget"
        self.sim_time += res.sim_time
        self.operations += res.operations
        self.messages += res.messages
        self.faults.update(res.faults)
        self.snapshots_taken += res.snapshots[0]
        self.snapshots_installed += res.snapshots[1]

    @property
    def speed(self) -> float:
        """Simulated seconds per real second."""
        return self.sim_time / self.real_time if self.real_time > 0 else 0.0

    def describe(self) -> str:
        return (
            f"{self.seeds} seeds, {len(self.violations)} violations, "
            f"{self.budget_exhausted} checker budget exhaustions; "
            f"{self.operations} client operations, {self.messages} Raft messages, "
            f"{self.snapshots_taken} snapshots taken, {self.snapshots_installed} installed; "
            f"{self.sim_time:.0f} simulated s in {self.real_time:.1f} real s "
            f"({self.speed:.0f} simulated s per real s)\n"
            f"faults: {', '.join(f'{k} {v}' for k, v in sorted(self.faults.items())) or 'none'}"
        )


def run_seeds(seeds: range, config: SimConfig | None = None) -> Iterator[SeedResult]:
    """Run each seed in turn (a generator, so a caller can report progress)."""
    for seed in seeds:
        yield run_seed(seed, config)


def run_many(
    seeds: range, config: SimConfig | None = None, *, stop_on_violation: bool = False
) -> Summary:
    summary = Summary()
    t0 = time.perf_counter()
    for res in run_seeds(seeds, config):
        summary.add(res)
        if stop_on_violation and not res.ok:
            break
    summary.real_time = time.perf_counter() - t0
    return summary
