"""`kvcluster sim`: run many seeds of the simulator, or replay one verbosely.

    kvcluster sim --seeds 10000            # seeds 0..9999, summary at the end
    kvcluster sim --seed 137               # replay seed 137 and print its trace

Exit status 1 if any seed violates a property; each failing seed is printed
with its trace's tail and the command that replays it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import TextIO, cast

from .faults import FAULT_KINDS
from .run import READ_MODES, ReadMode, SeedResult, SimConfig, Simulation, Summary, run_seed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kvcluster sim",
        description="Deterministic simulation of a kvcluster: Raft safety checked at every "
        "step, client histories checked for linearizability, liveness once faults stop.",
    )
    p.add_argument("--seeds", type=int, default=1000, help="how many seeds to run (1000)")
    p.add_argument("--start", type=int, default=0, help="the first seed (0)")
    p.add_argument("--seed", type=int, help="replay this one seed and print its whole trace")
    p.add_argument("--nodes", type=int, help="cluster size (default: 3 or 5, per seed)")
    p.add_argument("--time", type=float, default=3.0, help="simulated seconds of faults (3)")
    p.add_argument(
        "--settle",
        type=float,
        default=SimConfig.settle_time,
        help="simulated seconds of load once a leader is back, all of which must succeed (1)",
    )
    p.add_argument("--clients", type=int, default=3, help="concurrent clients (3)")
    p.add_argument("--keys", type=int, default=3, help="keys the clients share (3)")
    p.add_argument(
        "--faults",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated fault kinds, or 'none' (default: all of {','.join(FAULT_KINDS)})",
    )
    p.add_argument(
        "--read-modes",
        default=",".join(READ_MODES),
        help="comma-separated read modes to draw from (default: all)",
    )
    p.add_argument(
        "--checker-steps",
        type=int,
        default=SimConfig.checker_steps,
        help="linearizability search budget per run",
    )
    p.add_argument("--jobs", "-j", type=int, default=1, help="worker processes (1)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    return p


def _config(args: argparse.Namespace) -> SimConfig:
    faults = (
        frozenset() if args.faults == "none" else frozenset(filter(None, args.faults.split(",")))
    )
    modes: list[ReadMode] = []
    for m in filter(None, args.read_modes.split(",")):
        if m not in READ_MODES:
            raise ValueError(f"unknown read mode {m!r}; known: {', '.join(READ_MODES)}")
        modes.append(cast(ReadMode, m))
    return SimConfig(
        nodes=args.nodes,
        time=args.time,
        settle_time=args.settle,
        clients=args.clients,
        keys=args.keys,
        faults=faults,
        read_modes=tuple(modes),
        checker_steps=args.checker_steps,
    )


def _replay_command(seed: int, argv: list[str]) -> str:
    """The command that replays `seed` with the same settings."""
    keep: list[str] = []
    skip_next = False
    for i, a in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--seeds", "--start", "--seed", "--jobs", "-j"):
            skip_next = "=" not in a and i + 1 < len(argv)
            continue
        if name in ("--quiet", "-q"):
            continue
        keep.append(a)
    return " ".join(["kvcluster sim", f"--seed {seed}", *keep])


def _results(seeds: range, config: SimConfig, jobs: int) -> Iterator[SeedResult]:
    if jobs <= 1:
        for seed in seeds:
            yield run_seed(seed, config)
        return
    # Named start method: fork is unsafe once threads exist (Python 3.12 warns;
    # 3.14 changed Linux's default). The workers import the simulator afresh.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        chunk = max(1, min(50, len(seeds) // (jobs * 8)))
        yield from pool.map(partial(run_seed, config=config), seeds, chunksize=chunk)


def replay(seed: int, config: SimConfig, out: TextIO) -> int:
    """Run one seed with a full trace (the same run as in a batch)."""
    t0 = time.perf_counter()
    sim = Simulation(seed, config, verbose=True)
    res = sim.run()
    elapsed = time.perf_counter() - t0
    print(f"seed {seed}: {sim.setup}", file=out)
    for line in sim.trace():
        print(line, file=out)
    print(file=out)
    ops = sim.operations()
    print(
        f"seed {seed}: {len(ops)} operations ({sum(o.status == 'ok' for o in ops)} ok), "
        f"{res.messages} Raft messages, {res.sim_time:.2f} simulated s in {elapsed:.3f} real s",
        file=out,
    )
    if res.ok:
        checked = "linearizable" if res.checker == "ok" else "linearizability undecided (budget)"
        print(f"seed {seed}: no violation; {checked}", file=out)
        return 0
    print(res.report(), file=out)
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args)
    except ValueError as exc:
        parser.error(str(exc))
    out = sys.stdout
    if args.seed is not None:
        return replay(args.seed, config, out)
    if args.seeds < 1 or args.jobs < 1:
        parser.error("--seeds and --jobs must be at least 1")

    seeds = range(args.start, args.start + args.seeds)
    summary = Summary()
    t0 = last = time.perf_counter()
    for res in _results(seeds, config, args.jobs):
        summary.add(res)
        if not res.ok:
            print(res.report(), file=out)
            print(f"  replay: {_replay_command(res.seed, argv)}\n", file=out, flush=True)
        now = time.perf_counter()
        if not args.quiet and (now - last >= 2.0 or summary.seeds == len(seeds)):
            last = now
            summary.real_time = now - t0
            print(
                f"[{summary.seeds}/{len(seeds)}] {len(summary.violations)} violations, "
                f"{summary.budget_exhausted} undecided, {summary.speed:.0f} simulated s/s",
                file=sys.stderr,
                flush=True,
            )
    summary.real_time = time.perf_counter() - t0
    print(summary.describe(), file=out)
    if summary.violations:
        failing = ", ".join(str(r.seed) for r in summary.violations[:20])
        more = "" if len(summary.violations) <= 20 else ", ..."
        print(f"FAILED seeds: {failing}{more}", file=out)
        return 1
    return 0
