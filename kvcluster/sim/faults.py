"""The nemesis: random faults, drawn from the seed, within Raft's assumptions.

Message loss, duplication, long delays and reordering are network settings
chosen per seed (`NetworkFaults`); partitions (symmetric and one-way), crashes
and restarts, clock steps and full disks are actions the `Nemesis` takes at
random times.

Clocks stay within the timing assumptions the lease (and check-quorum) rest on:
a node's clock drifts by at most `CLOCK_DRIFT` and steps forward by at most
`CLOCK_STEP` of the shortest election timeout, at most once per such timeout.
With the default lease ratio of 0.9, a leader's lease then ends before any
node that acknowledged it can help elect another leader:
  0.9 / (1 - drift) <= 1 / (1 + drift) - 2 * step   (in election timeouts).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .net import RaftNet

FAULT_KINDS: tuple[str, ...] = (
    "loss",
    "delay",
    "duplicate",
    "reorder",
    "partition",
    "one_way",
    "crash",
    "clock",
    "disk",
)
CLOCK_DRIFT = 0.01  # a clock's rate is within 1 +- this
CLOCK_STEP = 0.03  # the largest forward step, in shortest election timeouts


@dataclass(frozen=True, slots=True)
class NetworkFaults:
    """The network's misbehaviour for one run."""

    latency: tuple[float, float] = (0.001, 0.005)
    drop_rate: float = 0.0
    dup_rate: float = 0.0
    reorder: bool = False
    delay_rate: float = 0.0
    max_delay: float = 0.0

    @classmethod
    def draw(cls, rng: random.Random, kinds: frozenset[str]) -> NetworkFaults:
        return cls(
            latency=(0.001, rng.choice([0.005, 0.02])),
            drop_rate=rng.choice([0.01, 0.05, 0.1]) if "loss" in kinds else 0.0,
            dup_rate=rng.choice([0.01, 0.05]) if "duplicate" in kinds else 0.0,
            reorder="reorder" in kinds and rng.random() < 0.5,
            delay_rate=rng.choice([0.01, 0.05]) if "delay" in kinds else 0.0,
            max_delay=rng.choice([0.2, 1.0]) if "delay" in kinds else 0.0,
        )

    def apply(self, net: RaftNet) -> None:
        net.latency = self.latency
        net.drop_rate, net.dup_rate, net.reorder = self.drop_rate, self.dup_rate, self.reorder
        net.delay_rate, net.max_delay = self.delay_rate, self.max_delay

    def describe(self) -> str:
        parts = [f"latency {self.latency[0] * 1000:g}-{self.latency[1] * 1000:g}ms"]
        if self.drop_rate:
            parts.append(f"loss {self.drop_rate:.0%}")
        if self.dup_rate:
            parts.append(f"dup {self.dup_rate:.0%}")
        if self.delay_rate:
            parts.append(f"delay {self.delay_rate:.0%} up to {self.max_delay:g}s")
        if self.reorder:
            parts.append("reorder")
        return ", ".join(parts)


class Nemesis:
    """Takes a random fault action every `interval` until `stop()`.

    How much each kind of action weighs is drawn per run too (1, 2 or 4), so
    some runs are mostly partitions, others mostly crashes: more varied
    schedules find more bugs than one fixed mix.
    """

    def __init__(
        self,
        net: RaftNet,
        rng: random.Random,
        kinds: frozenset[str],
        *,
        interval: tuple[float, float] = (0.05, 0.4),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.net = net
        self.rng = rng
        self.kinds = kinds
        self.interval = interval
        self.log = log or (lambda text: None)
        self.down: set[str] = set()
        self.running = False
        self.actions = 0
        self._last_step: dict[str, float] = {}
        groups: list[tuple[str, list[Callable[[], None]]]] = [
            ("partition", [self._partition, self._isolate, self._heal]),
            ("one_way", [self._one_way, self._heal]),
            ("crash", [self._crash, self._crash_leader, self._restart, self._restart]),
            ("clock", [self._clock]),
            ("disk", [self._fill_disk]),
        ]
        self._choices: list[Callable[[], None]] = []
        self._weights: list[float] = []
        for kind, actions in groups:
            if kind in kinds:
                weight = rng.choice([1, 2, 4])
                self._choices += actions
                self._weights += [weight / len(actions)] * len(actions)

    def start(self, at: float) -> None:
        self.running = bool(self._choices)
        if self.running:
            self.net.schedule(at, self._act)

    def stop(self) -> None:
        self.running = False

    def _act(self) -> None:
        if not self.running:
            return
        self.rng.choices(self._choices, self._weights)[0]()
        self.actions += 1
        self.net.schedule(self.net.now + self.rng.uniform(*self.interval), self._act)

    def heal_all(self) -> None:
        """Faults stop: links heal, crashed nodes restart, the network behaves."""
        self.stop()
        net = self.net
        net.heal()
        for st in net.storage.values():
            st.fail_after = None  # disks that were about to fill up get their space
        for nid in self._down():  # crashed, or stopped by a full disk
            net.restart(nid)
        self.down.clear()
        net.drop_rate = net.dup_rate = net.delay_rate = 0.0
        net.reorder = False
        self.log("nemesis: faults stop; heal, restart all, network reliable")

    # ------------------------------------------------------------------ actions

    def _ids(self) -> list[str]:
        return sorted(self.net.nodes)

    def _down(self) -> list[str]:
        """Nodes to restart: crashed ones, not those that stopped because they
        were removed from the cluster (no operator brings those back)."""
        net = self.net
        return sorted(set(net.nodes) - net.alive - net.removed)

    def _partition(self) -> None:
        if len(self.net.nodes) < 2:
            return
        ids = self.rng.sample(self._ids(), len(self.net.nodes))
        cut = self.rng.randint(1, len(ids) - 1)
        groups = [sorted(ids[:cut]), sorted(ids[cut:])]
        self.net.partition(*groups)
        self.net.faults["partition"] += 1
        self.log(f"nemesis: partition {groups[0]} | {groups[1]}")

    def _isolate(self) -> None:
        nid = self.rng.choice(self._ids())
        self.net.isolate(nid)
        self.net.faults["partition"] += 1
        self.log(f"nemesis: isolate {nid}")

    def _one_way(self) -> None:
        if len(self.net.nodes) < 2:
            return
        a, b = self.rng.sample(self._ids(), 2)
        self.net.block(a, b, both=False)
        self.net.faults["one_way"] += 1
        self.log(f"nemesis: cut link {a} -> {b} (one way)")

    def _heal(self) -> None:
        self.net.heal()
        self.log("nemesis: heal the network")

    def _crash(self) -> None:
        up = sorted(self.net.alive)
        if up:
            nid = self.rng.choice(up)
            self.net.crash(nid)
            self.down.add(nid)
            self.net.faults["crash"] += 1
            self.log(f"nemesis: crash {nid}")

    def _crash_leader(self) -> None:
        """Leaders are where the interesting bugs are (Figure 8 needs several to fall)."""
        leaders = [i for i in sorted(self.net.alive) if self.net.nodes[i].is_leader]
        if leaders:
            nid = self.rng.choice(leaders)
            self.net.crash(nid)
            self.down.add(nid)
            self.net.faults["crash"] += 1
            self.log(f"nemesis: crash {nid} (a leader)")

    def _restart(self) -> None:
        down = self._down()
        if down:
            nid = self.rng.choice(down)
            self.down.discard(nid)
            self.net.restart(nid)
            self.net.faults["restart"] += 1
            self.log(f"nemesis: restart {nid}")

    def _fill_disk(self) -> None:
        """A node's disk fills up a few writes from now (a leader's, half the
        time): the node must stop at the failed write, and lose nothing it
        acknowledged. A restart (with space again) brings it back."""
        net = self.net
        leaders = [i for i in sorted(net.alive) if net.nodes[i].is_leader]
        up = leaders if leaders and self.rng.random() < 0.5 else sorted(net.alive)
        if up:
            nid = self.rng.choice(up)
            after = self.rng.randrange(4)
            net.fail_storage(nid, after=after)
            net.faults["disk"] += 1
            self.log(f"nemesis: {nid}'s disk fills up after {after} more writes")

    def _clock(self) -> None:
        net, rng = self.net, self.rng
        nid = rng.choice(self._ids())
        lo = net.options.election_timeout[0]
        if rng.random() < 0.5:
            if net.now - self._last_step.get(nid, -1e9) < lo:
                return
            self._last_step[nid] = net.now
            dt = rng.uniform(0.0, CLOCK_STEP * lo)
            net.step_clock(nid, dt)
            net.faults["clock"] += 1
            self.log(f"nemesis: {nid}'s clock steps {dt * 1000:.1f}ms forward")
        else:
            rate = rng.uniform(1 - CLOCK_DRIFT, 1 + CLOCK_DRIFT)
            net.set_clock_rate(nid, rate)
            net.faults["clock"] += 1
            self.log(f"nemesis: {nid}'s clock runs at {rate:.4f}")
