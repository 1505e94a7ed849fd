"""Spurious elections under full load, for each election-timeout setting (issue #6).

    python bench/spurious.py                                    # 3 and 5 nodes, 5 minutes each
    python bench/spurious.py --seconds 10 --nodes 3 --settings 12-24/2,500-1000/100
    python bench/spurious.py --settings 500-1000/100 --fail-on-default   # a CI gate

Why: a follower starts an election when it has not heard from the leader for
an election timeout. Under full load the leader's event loop is busy, and a GC
pause or the OS scheduler (2 cores here, shared with the load generator) can
hold a heartbeat back; the lower the timeout, the more such a delay looks like
a dead leader. An election that nothing but load caused is spurious: no node
failed, yet the leader is deposed and writes stall until a new one is in place.
This counts them per minute of full load, and the default timeouts should have
none.

For each cluster size (`--nodes`) and setting (`--settings`, election timeout
LO-HI ms / heartbeat ms) it starts a `Cluster`, waits until every node follows
one leader, then runs full load for `--seconds`: 64 closed-loop clients of
`kvcluster.experiments.loadgen`, spread over all nodes, half linearizable reads
and half writes. The campaigns started while the load ran are read from the
nodes' event files (`campaign` events of `kvcluster.raft.core`):

- role `pre-candidate`: a pre-vote. It changes no term and deposes nobody; it
  *failed* when the node's next campaign is not a `candidate` one for the same
  term (the other nodes had heard from the leader recently and said no).
- role `candidate`: a real election. It bumps the term, and the leader steps
  down as soon as it sees the higher term. Candidates for the same term (a
  split vote) count as one election; `candidates` counts them all.

It prints one table and writes a CSV (`--csv`, with a `.json` sidecar of the
machine and the parameters) with, per run, the ops and ops/s (over the
measured part of the load, after `--warmup`), errors, real elections and
elections per minute (over all of the load), failed pre-votes, leader changes,
check-quorum step-downs, the highest term before and after the load, the CPU
of the load generator, of the nodes and of the whole machine (in cores), and
the 1-minute load average before and after.

Exit status 0 when it ran. With `--fail-on-default`, 1 if a run with the
default timeouts of `Cluster` (500-1000/100) had a real election during the
load, or could not be run at all.
"""

from __future__ import annotations

import argparse
import inspect
import math
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd

from kvcluster.cluster import Cluster
from kvcluster.experiments import results
from kvcluster.experiments.events import EventTail, frame
from kvcluster.experiments.loadgen import LoadResult, Workload
from kvcluster.experiments.progress import progress_bar
from kvcluster.experiments.runner import loadavg, run_on, summarize

CLIENTS = 64
READ_FRACTION = 0.5  # 50:50 reads and writes
ELECTION_EVENTS = frozenset({"campaign", "role", "leader", "step_down"})
DEFAULT_SETTINGS = "12-24/2,50-100/10,100-200/10,150-300/30,500-1000/100"


@dataclass(frozen=True, slots=True)
class Setting:
    """Election timeout range and heartbeat interval, in milliseconds."""

    lo_ms: float
    hi_ms: float
    heartbeat_ms: float

    @classmethod
    def parse(cls, text: str) -> Setting:
        """`"150-300/30"`: election timeout 150-300 ms, heartbeat 30 ms."""
        try:
            timeout, heartbeat = text.split("/")
            lo, hi = timeout.split("-")
            setting = cls(float(lo), float(hi), float(heartbeat))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not LO-HI/HEARTBEAT in ms") from None
        if not 0 < setting.lo_ms <= setting.hi_ms or setting.heartbeat_ms <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LO <= HI and HEARTBEAT > 0")
        return setting

    @property
    def label(self) -> str:
        return f"{self.lo_ms:g}-{self.hi_ms:g}/{self.heartbeat_ms:g}"

    def cluster_options(self) -> dict[str, Any]:
        return {
            "election_timeout": (self.lo_ms / 1000, self.hi_ms / 1000),
            "heartbeat_interval": self.heartbeat_ms / 1000,
        }


def default_setting() -> Setting:
    """The timeouts a `Cluster` gets when none are given (read from its signature)."""
    params = inspect.signature(Cluster).parameters
    lo, hi = params["election_timeout"].default
    hb = params["heartbeat_interval"].default
    return Setting(lo * 1000, hi * 1000, hb * 1000)


def _settings(text: str) -> list[Setting]:
    return [Setting.parse(x.strip()) for x in text.split(",") if x.strip()]


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of cluster sizes") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("cluster sizes must be >= 1")
    return sizes


# ----------------------------------------------------------------------------- counting


def count_elections(events: pd.DataFrame, t0: float, t1: float) -> dict[str, Any]:
    """What the nodes' election events say happened between `t0` and `t1` (monotonic).

    `events` should hold every election event since the cluster started, so
    that a pre-vote is judged by the node's next campaign even across `t0`.
    """
    ev = events.sort_values("t", kind="stable")
    inside = (ev["t"] >= t0) & (ev["t"] <= t1)
    campaigns = ev[ev["event"] == "campaign"]
    following = campaigns.groupby("node", sort=False)[["role", "for_term"]].shift(-1)
    pre = campaigns["role"] == "pre-candidate"
    promoted = (
        pre & (following["role"] == "candidate") & (following["for_term"] == campaigns["for_term"])
    )
    window = inside.loc[campaigns.index]
    real = campaigns[window & (campaigns["role"] == "candidate")]
    leaders = ev[inside & (ev["event"] == "role") & (ev["role"] == "leader")]
    return {
        "real_elections": int(real["for_term"].nunique()),
        "candidates": len(real),
        "pre_votes": int((window & pre).sum()),
        "pre_votes_failed": int((window & pre & ~promoted).sum()),
        "leader_changes": len(leaders),
        "step_downs": int((inside & (ev["event"] == "step_down")).sum()),
        "events_term_max": int(ev["term"].max()) if ev["term"].notna().any() else 0,
    }


def _terms(cluster: Cluster) -> list[int]:
    return [
        int(s["term"])
        for h in cluster.nodes
        if (s := cluster.node_status(h.index)) is not None and "term" in s
    ]


def wait_for_stable_leader(cluster: Cluster, timeout: float = 30.0) -> tuple[int, int]:
    """Wait until every node follows one leader in one term; (leader index, term).

    `Cluster.wait_for_leader` is satisfied by a majority; a node that has not
    yet heard of the leader could still time out on its own, which would be
    counted as an election the load caused.
    """
    leader = cluster.wait_for_leader(timeout)

    def agreed() -> tuple[int, int] | None:
        status = [cluster.node_status(h.index) for h in cluster.nodes]
        if any(s is None for s in status):
            return None
        terms = {s["term"] for s in status if s is not None}
        names = {s["leader"] for s in status if s is not None}
        leader_name = cluster.nodes[leader].name
        if len(terms) != 1 or names != {leader_name}:
            return None
        return leader, int(terms.pop())

    return cluster.wait_until(agreed, timeout, "the nodes did not agree on one leader")


# ----------------------------------------------------------------------------- running


def _load_in_background(
    cluster: Cluster, seconds: float, warmup: float, seed: int
) -> tuple[threading.Thread, list[LoadResult | BaseException]]:
    box: list[LoadResult | BaseException] = []
    workload = Workload(read_fraction=READ_FRACTION)
    every_node = list(range(len(cluster.nodes)))

    def main() -> None:
        try:
            box.append(run_on(cluster, every_node, CLIENTS, workload, seconds, warmup, seed))
        except BaseException as exc:  # handed to the main thread
            box.append(exc)

    thread = threading.Thread(target=main, name="spurious-load", daemon=True)
    thread.start()
    return thread, box


def run_one(
    n: int, setting: Setting, args: argparse.Namespace, bar: Any, seed: int
) -> dict[str, Any]:
    """Start a cluster with `setting`, load it for `args.seconds`, count its elections."""
    row: dict[str, Any] = {
        "n": n,
        "setting": setting.label,
        "timeout_lo_ms": setting.lo_ms,
        "timeout_hi_ms": setting.hi_ms,
        "heartbeat_ms": setting.heartbeat_ms,
        "default": setting == default_setting(),
    }
    budget = math.ceil(args.warmup + args.seconds)
    shown = 0
    with Cluster(n, **setting.cluster_options()) as cluster:
        tail = EventTail(cluster.work_dir)
        kept: list[dict[str, Any]] = []

        def collect() -> pd.DataFrame:
            kept.extend(r for r in tail.read() if r.get("event") in ELECTION_EVENTS)
            return frame(kept)

        leader, term_before = wait_for_stable_leader(cluster)
        row["leader"] = leader
        row["loadavg_before"] = loadavg()
        bar.set_postfix_str(f"n={n} {setting.label}: leader n{leader}, under load")
        t0 = time.monotonic()
        thread, box = _load_in_background(cluster, args.seconds, args.warmup, seed)
        next_look = t0 + 5.0
        while thread.is_alive():
            thread.join(timeout=0.5)
            now = time.monotonic()
            step = min(budget, int(now - t0)) - shown
            if step > 0:
                bar.update(step)
                shown += step
            if now >= next_look:  # a live count, cheap: only new lines are parsed
                so_far = count_elections(collect(), t0, now)
                bar.set_postfix_str(
                    f"n={n} {setting.label}: {so_far['real_elections']} elections,"
                    f" {so_far['pre_votes_failed']} failed pre-votes"
                )
                next_look = now + 5.0
        t1 = time.monotonic()
        bar.update(budget - shown)
        result = box[0]
        if isinstance(result, BaseException):
            raise result
        terms_after = _terms(cluster)
        time.sleep(0.2)  # the nodes flush their event buffers on their next loop turn
        counts = count_elections(collect(), t0, t1)
    summary = summarize(result)
    minutes = (t1 - t0) / 60
    row.update(
        {
            "seconds": t1 - t0,
            "measured_s": summary["duration_s"],
            "ops": summary["ops"],
            "ops_s": summary["throughput_ops_s"],
            "errors": summary["errors"],
            "real_elections": counts["real_elections"],
            "elections_per_min": counts["real_elections"] / minutes,
            "candidates": counts["candidates"],
            "pre_votes": counts["pre_votes"],
            "pre_votes_failed": counts["pre_votes_failed"],
            "leader_changes": counts["leader_changes"],
            "step_downs": counts["step_downs"],
            "term_before": term_before,
            "term_after": max(terms_after, default=counts["events_term_max"]),
            "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"],
            "max_ms": summary["max_ms"],
            "loadgen_cpu": summary["loadgen_cpu"],
            "nodes_cpu": summary["nodes_cpu"],
            "machine_cpu": summary["machine_cpu"],
            "loadavg_after": loadavg(),
            "first_error": summary["first_error"],
            "failed": "",
        }
    )
    return row


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    todo = [(n, s) for n in args.nodes for s in args.settings]
    total = len(todo) * math.ceil(args.warmup + args.seconds)
    with progress_bar(total, "full load (s)", not args.quiet) as bar:
        for k, (n, setting) in enumerate(todo):
            bar.set_postfix_str(f"n={n} {setting.label}: starting")
            try:
                row = run_one(n, setting, args, bar, args.seed + k)
            except Exception as exc:  # one setting that cannot run should not end the rest
                bar.write(f"n={n} {setting.label} failed: {type(exc).__name__}: {exc}")
                row = {
                    "n": n,
                    "setting": setting.label,
                    "default": setting == default_setting(),
                    "failed": f"{type(exc).__name__}: {exc}",
                }
            else:
                bar.write(
                    f"n={n} {setting.label}: {row['ops_s']:.0f} ops/s,"
                    f" {row['real_elections']} real elections,"
                    f" {row['pre_votes_failed']} failed pre-votes,"
                    f" term {row['term_before']} -> {row['term_after']}"
                )
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- output

COLUMNS = (
    ("n", "n", "{}"),
    ("setting", "setting", "{}"),
    ("seconds", "seconds", "{:.0f}"),
    ("ops", "ops", "{}"),
    ("ops_s", "ops/s", "{:.0f}"),
    ("errors", "errors", "{}"),
    ("real_elections", "elections", "{}"),
    ("elections_per_min", "per min", "{:.2f}"),
    ("pre_votes_failed", "failed pre-votes", "{}"),
    ("term_before", "term before", "{}"),
    ("term_after", "term after", "{}"),
)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = [label for _, label, _ in COLUMNS]
    table = []
    for r in rows:
        if r.get("failed"):
            table.append([str(r["n"]), r["setting"], f"failed: {r['failed']}"])
            continue
        table.append([fmt.format(r[key]) for key, _, fmt in COLUMNS])
    widths = [
        max([len(h)] + [len(cells[i]) for cells in table if len(cells) == len(header)])
        for i, h in enumerate(header)
    ]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for cells in table:
        print("  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=False)))
    print(
        "\nelections: real elections (a term bumped) that started during the load;"
        " failed pre-votes changed no term.\nops/s over the measured part of the load;"
        f" {CLIENTS} clients spread over all nodes, {READ_FRACTION:.0%} reads."
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", type=_sizes, default=[3, 5], help="cluster sizes (default: 3,5)")
    p.add_argument(
        "--settings",
        type=_settings,
        default=_settings(DEFAULT_SETTINGS),
        help=f"election LO-HI ms / heartbeat ms, comma-separated\n(default: {DEFAULT_SETTINGS})",
    )
    p.add_argument("--seconds", type=float, default=300.0, help="seconds of load per run")
    p.add_argument("--warmup", type=float, default=0.5, help="first seconds left out of ops/s")
    p.add_argument("--seed", type=int, default=0, help="of the load's keys and read/write mix")
    p.add_argument("--csv", default="spurious-results.csv")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--fail-on-default",
        action="store_true",
        help=f"exit 1 if the default setting ({default_setting().label}) had a real election"
        " during the load, or could not run",
    )
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0:
        p.error("--seconds must be > 0 and --warmup >= 0")
    rows = run(args)
    print_table(rows)
    parameters = {**vars(args), "settings": [s.label for s in args.settings], "clients": CLIENTS}
    path = results.save(pd.DataFrame(rows), args.csv, experiment="spurious", parameters=parameters)
    print(f"wrote {path} and {results.sidecar(path)}")
    if args.fail_on_default:
        default = [r for r in rows if r["default"]]
        bad = [r for r in default if r.get("failed") or r.get("real_elections", 0) > 0]
        if bad:
            print(
                f"default setting {default_setting().label}: a real election under load"
                " (or the run failed)",
                file=sys.stderr,
            )
            return 1
        if not default:
            print(f"note: the default setting {default_setting().label} was not run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
