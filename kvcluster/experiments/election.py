"""Leader failover: how long until a new leader, and until writes are accepted again.

Each trial crashes (SIGKILL) or pauses (SIGSTOP) the leader of a quiet, stable
cluster at a uniformly random point of its heartbeat interval, as in section
9.3 of the Raft paper, and then measures:

- `election_ms`: from the fault to the first `role=leader` event of another
  node, read from the nodes' own event files (one clock for all processes);
- `detect_ms`: from the fault to the first campaign (a follower timed out);
- `unavailable_ms`: from the fault to the first write acknowledged, by a
  `WriteProbe` that starts writing at the instant of the fault;
- `rounds`, `candidates`, `split_vote`, `terms_used`: how the election went.

One cluster serves every trial of a setting: a killed leader is restarted (it
rejoins as a new incarnation) and the next trial waits until it is a voter
again and the cluster has been quiet for a while. Starting clusters is slow.

The heartbeat interval defaults to half the shortest election timeout, the
paper's setting; for 12-24 ms that is 6 ms.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ..cluster import Cluster, ClusterError
from . import faults
from .events import EventTail
from .probe import WriteProbe
from .progress import progress_bar

# The Raft paper's Figure 16 ranges (top) and its "shorter timeouts" ranges (bottom).
PAPER_RANGES_MS: tuple[tuple[int, int], ...] = (
    (150, 150),
    (150, 151),
    (150, 155),
    (150, 175),
    (150, 200),
    (150, 300),
)
SHORT_RANGES_MS: tuple[tuple[int, int], ...] = (
    (12, 24),
    (25, 50),
    (50, 100),
    (100, 200),
    (150, 300),
)
FAULTS = ("kill", "pause")
ELECTION_EVENTS = frozenset({"campaign", "role", "step_down"})


@dataclass(frozen=True, slots=True)
class Setting:
    """One cluster configuration; every trial of it runs on the same cluster."""

    n: int
    timeout_ms: tuple[float, float]
    heartbeat_ms: float
    pre_vote: bool
    fault: str

    def columns(self) -> dict[str, Any]:
        lo, hi = self.timeout_ms
        return {
            "n": self.n,
            "timeout": f"{lo:g}-{hi:g}",
            "timeout_lo_ms": lo,
            "timeout_hi_ms": hi,
            "heartbeat_ms": self.heartbeat_ms,
            "pre_vote": self.pre_vote,
            "fault": self.fault,
        }


def settings(
    sizes: Iterable[int],
    timeouts_ms: Iterable[tuple[float, float]],
    pre_vote: Iterable[bool],
    fault: Iterable[str],
    heartbeat_ms: float | None,
) -> list[Setting]:
    out = []
    for n, (lo, hi), pv, f in itertools.product(sizes, timeouts_ms, pre_vote, fault):
        if f not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {f!r}")
        if n < 2:
            warnings.warn("a 1-node cluster has nobody to fail over to: skipped", stacklevel=3)
            continue
        hb = lo / 2 if heartbeat_ms is None else heartbeat_ms
        if not 0 < hb < lo:
            raise ValueError(f"the heartbeat ({hb} ms) must be shorter than {lo} ms")
        out.append(Setting(n, (float(lo), float(hi)), float(hb), bool(pv), f))
    return out


def run_election(
    sizes: Sequence[int] = (5,),
    timeouts_ms: Sequence[tuple[float, float]] = ((150, 300),),
    *,
    pre_vote: Sequence[bool] = (True,),
    fault: Sequence[str] = ("kill",),
    trials: int = 20,
    heartbeat_ms: float | None = None,
    max_wait: float = 30.0,
    probe_interval: float = 0.003,
    seed: int | None = None,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> pd.DataFrame:
    """Run `trials` failovers for every combination of the parameters; one row per trial.

    `max_wait` (s) bounds one failover; a trial without a new leader by then has
    `elected` False. `heartbeat_ms` None means half the shortest timeout.
    """
    rng = random.Random(seed)
    todo = settings(sizes, timeouts_ms, pre_vote, fault, heartbeat_ms)
    rows: list[dict[str, Any]] = []
    with progress_bar(len(todo) * trials, "election", progress) as bar:
        for s in todo:
            bar.set_postfix_str(
                f"n={s.n} {s.timeout_ms[0]:g}-{s.timeout_ms[1]:g}ms "
                f"{'pre-vote' if s.pre_vote else 'no pre-vote'} {s.fault}"
            )
            for row in _run_setting(s, trials, max_wait, probe_interval, rng):
                rows.append(row)
                if on_row is not None:
                    on_row(row)
                bar.update()
    return pd.DataFrame(rows)


def _run_setting(
    s: Setting, trials: int, max_wait: float, probe_interval: float, rng: random.Random
) -> Iterable[dict[str, Any]]:
    lo, hi = s.timeout_ms[0] / 1000, s.timeout_ms[1] / 1000
    hb = s.heartbeat_ms / 1000
    with Cluster(
        s.n,
        heartbeat_interval=hb,
        election_timeout=(lo, hi),
        pre_vote=s.pre_vote,
        request_timeout=max(5.0, 4 * hi),
    ) as cluster:
        tail = EventTail(cluster.work_dir)
        probe = WriteProbe(cluster.endpoints, interval=probe_interval)
        quiet = max(3 * hi, 5 * hb, 0.05)
        try:
            for trial in range(trials):
                yield {
                    **s.columns(),
                    "trial": trial,
                    **_trial(cluster, s, tail, probe, quiet, max_wait, rng),
                }
        finally:
            probe.close()


def settle(
    cluster: Cluster, tail: EventTail, quiet: float, timeout: float = 60.0
) -> tuple[int, int, bool]:
    """Wait until every node is a voter that follows one leader and no election
    happened for `quiet` seconds; (leader, term, settled). `settled` is False if
    the cluster never stayed quiet that long within `timeout`."""
    deadline = time.monotonic() + timeout
    n = len(cluster.nodes)
    leader, term = -1, -1
    while time.monotonic() < deadline:
        leader = cluster.wait_for_leader(max(1.0, deadline - time.monotonic()))
        statuses = [cluster.node_status(i) for i in range(n)]
        if not all(st is not None and st["voter"] for st in statuses):
            time.sleep(0.01)
            continue
        terms = {st["term"] for st in statuses if st is not None}
        leaders = {st["leader"] for st in statuses if st is not None}
        if len(terms) != 1 or leaders != {cluster.nodes[leader].name}:
            time.sleep(0.01)
            continue
        term = terms.pop()
        tail.skip()
        time.sleep(quiet)
        if any(r.get("event") in ELECTION_EVENTS for r in tail.read()):
            continue
        st = cluster.node_status(leader)
        if st is not None and st["role"] == "leader" and st["term"] == term:
            return leader, term, True
    return leader, term, False


def _trial(
    cluster: Cluster,
    s: Setting,
    tail: EventTail,
    probe: WriteProbe,
    quiet: float,
    max_wait: float,
    rng: random.Random,
) -> dict[str, Any]:
    leader, term, settled = settle(cluster, tail, quiet)
    others = [cluster.endpoints[i] for i in range(len(cluster.nodes)) if i != leader]
    old_name = cluster.nodes[leader].name
    # Warm the probe's connections so that the first attempts after the fault
    # do not pay for a TCP handshake (a status read does not reset any timer).
    probe.warm(others)
    if probe.client_id is None:  # opened once, before any fault: the stopwatch times writes
        probe.open_session(cluster.endpoints, time.monotonic() + max_wait)
    time.sleep(rng.uniform(0, s.heartbeat_ms / 1000))  # a random phase of the heartbeat
    t0 = faults.kill(cluster, leader) if s.fault == "kill" else faults.pause(cluster, leader)
    ack = probe.write(others, t0 + max_wait)
    new = None
    with contextlib.suppress(TimeoutError):
        new = cluster.wait_for_leader(max(1.0, t0 + max_wait - time.monotonic()), exclude=leader)
    records = [r for r in tail.read() if r.get("t", 0.0) > t0]
    row = analyse(records, t0, old_name, term)
    row.update(
        {
            "settled": settled,
            "unavailable_ms": (ack.t - t0) * 1000 if ack else float("nan"),
            "probe_attempts": ack.attempts if ack else None,
            "old_leader": old_name,
            "new_leader": cluster.nodes[new].name if new is not None else None,
        }
    )
    if s.fault == "kill":
        _restart(cluster, leader)
    else:
        faults.resume(cluster, leader)
    return row


def _restart(cluster: Cluster, i: int, attempts: int = 3) -> None:
    """Restart node i; a start that fails (a port race, a busy machine) is retried."""
    for attempt in range(attempts):
        try:
            faults.restart(cluster, i)
            return
        except ClusterError as exc:
            if attempt == attempts - 1:
                raise
            warnings.warn(f"restarting node {i} failed ({exc}); retrying", stacklevel=2)


def analyse(
    records: list[dict[str, Any]], t0: float, old_leader: str, old_term: int
) -> dict[str, Any]:
    """What the nodes' events say about the election after a fault at `t0`."""
    elected = next(
        (
            r
            for r in records
            if r.get("event") == "role" and r.get("role") == "leader" and r["node"] != old_leader
        ),
        None,
    )
    t_end = elected["t"] if elected else float("inf")
    window = [r for r in records if r["t"] <= t_end and r.get("event") == "campaign"]
    candidates = [r for r in window if r.get("role") == "candidate"]
    per_term: dict[int, int] = {}
    for r in candidates:
        per_term[r["for_term"]] = per_term.get(r["for_term"], 0) + 1
    rounds = len(per_term)
    new_term = int(elected["term"]) if elected else None
    return {
        "elected": elected is not None,
        "detect_ms": (window[0]["t"] - t0) * 1000 if window else float("nan"),
        "election_ms": (t_end - t0) * 1000 if elected else float("nan"),
        "old_term": old_term,
        "new_term": new_term,
        "terms_used": new_term - old_term if new_term is not None else None,
        "pre_campaigns": sum(1 for r in window if r.get("role") == "pre-candidate"),
        "candidates": len(candidates),
        "rounds": rounds,
        "split_vote": rounds > 1 or any(c > 1 for c in per_term.values()),
    }


SETTING_COLUMNS = ["n", "timeout_lo_ms", "timeout_hi_ms", "timeout", "heartbeat_ms", "pre_vote"]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting: trials, time to a new leader (median, p90, p99, max), unavailability,
    how often votes split and how many terms an election used."""
    keys = [c for c in [*SETTING_COLUMNS, "fault"] if c in df.columns]

    def stats(g: pd.DataFrame) -> dict[str, Any]:
        # A dict, not a Series: a Series of counts and means is all floats (trials 5.0).
        e, u = g["election_ms"].dropna(), g["unavailable_ms"].dropna()
        return {
            "trials": len(g),
            "elected": int(g["elected"].sum()),
            "election_median_ms": e.median(),
            "election_mean_ms": e.mean(),
            "election_p90_ms": e.quantile(0.9),
            "election_p99_ms": e.quantile(0.99),
            "election_max_ms": e.max(),
            "unavailable_median_ms": u.median(),
            "unavailable_p99_ms": u.quantile(0.99),
            "split_votes": g["split_vote"].mean(),
            "terms_used_mean": g["terms_used"].mean(),
        }

    rows = [{**dict(zip(keys, k, strict=True)), **stats(g)} for k, g in df.groupby(keys)]
    return pd.DataFrame(rows)
