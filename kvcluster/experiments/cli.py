"""`kvcluster bench election|commit|reads|timeline|watch`: run an experiment, save CSV + metadata.

    kvcluster bench election -n 5 --timeouts 150-300 --trials 100
    kvcluster bench election -n 5 --timeouts paper --trials 50 --fault kill,pause
    kvcluster bench commit -n 1,3,5 --clients 1,4,16,64,256
    kvcluster bench reads -n 3 --modes proxy,read_index,lease,serializable
    kvcluster bench timeline -n 5
    kvcluster bench watch -n 1,3,5 --load 0,16

Results go to --out (default ./results): `<experiment>.csv` with a `.json`
sidecar (machine, versions, parameters), and a summary is printed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from ..raft import ConfigError, RaftOptions
from ..server.config import READ_MODES
from .election import PAPER_RANGES_MS, SHORT_RANGES_MS
from .reads import MIXES
from .results import save
from .runner import TARGETS

T = TypeVar("T")


def _list(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
    def parse(text: str) -> list[T]:
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse


def _ranges(text: str) -> list[tuple[float, float]]:
    """'paper', 'short', or 'LO-HI,LO-HI' in milliseconds."""
    out: list[tuple[float, float]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "paper":
            out += [(float(lo), float(hi)) for lo, hi in PAPER_RANGES_MS]
        elif part == "short":
            out += [(float(lo), float(hi)) for lo, hi in SHORT_RANGES_MS]
        else:
            lo, sep, hi = part.partition("-")
            try:
                pair = (float(lo), float(hi if sep else lo))
            except ValueError as exc:
                raise argparse.ArgumentTypeError(f"expected LO-HI in ms, got {part!r}") from exc
            if not 0 < pair[0] <= pair[1]:
                raise argparse.ArgumentTypeError(f"need 0 < LO <= HI, got {part!r}")
            out.append(pair)
    return list(dict.fromkeys(out))


def _bools(text: str) -> list[bool]:
    choices = {"on": [True], "off": [False], "both": [True, False]}
    if text not in choices:
        raise argparse.ArgumentTypeError("expected on, off or both")
    return choices[text]


def _mix(text: str) -> float:
    """'95:5' or '0.95' -> 0.95 (the fraction of reads)."""
    if ":" in text:
        r, w = (float(x) for x in text.split(":", 1))
        return r / (r + w)
    return float(text)


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [p.strip() for p in text.split(",") if p.strip()]
        bad = [p for p in items if p not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return items

    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def _add_common(p: argparse.ArgumentParser, *, top: bool) -> None:
    """--out and --quiet, before or after the experiment's name: the top-level
    parser holds the defaults, an experiment's copy only overrides them."""
    p.add_argument(
        "--out",
        type=Path,
        default=Path("results") if top else argparse.SUPPRESS,
        help="results directory" + ("" if top else " (default: results)"),
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="no progress bar",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvcluster bench",
        description="Measure a local cluster; results as CSV + JSON.",
        formatter_class=HelpFormatter,
    )
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="experiment", required=True)

    def experiment(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        _add_common(p, top=False)
        return p

    # String defaults: argparse parses them like typed values, and --help shows
    # them as one would type them.
    e = experiment("election", "failover: time to a new leader and to the next write")
    e.add_argument("-n", "--sizes", type=_list(int), default="5", help="cluster sizes, e.g. 3,5")
    e.add_argument(
        "--timeouts",
        type=_ranges,
        default="150-300",
        help="election timeout ranges in ms: LO-HI,... or 'paper' or 'short'",
    )
    e.add_argument("--pre-vote", type=_bools, default="on", help="on, off or both")
    e.add_argument(
        "--fault", type=_choices(("kill", "pause")), default="kill", help="kill, pause or both"
    )
    e.add_argument("--trials", type=int, default=100, help="failovers per setting")
    e.add_argument("--heartbeat-ms", type=float, help="default: half the shortest timeout")
    e.add_argument("--max-wait", type=float, default=30.0, help="give up on a failover (s)")
    e.add_argument("--seed", type=int, help="for reproducible runs")

    c = experiment("commit", "write latency and throughput against concurrency")
    c.add_argument("-n", "--sizes", type=_list(int), default="1,3,5", help="cluster sizes")
    c.add_argument("--value-sizes", type=_list(int), default="100", help="bytes")
    c.add_argument("--clients", type=_list(int), default="1,4,16,64,256", help="concurrent clients")
    c.add_argument(
        "--targets", type=_choices(TARGETS), default="leader,followers", help="where writes go"
    )
    c.add_argument("--duration", type=float, default=3.0, help="seconds measured per run")
    c.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")

    r = experiment("reads", "read throughput, latency and staleness per read mode")
    r.add_argument("-n", "--sizes", type=_list(int), default="3", help="cluster sizes")
    r.add_argument(
        "--modes", type=_choices(READ_MODES), default=",".join(READ_MODES), help="read modes"
    )
    r.add_argument("--targets", type=_choices(TARGETS), default="leader,all", help="where reads go")
    r.add_argument(
        "--mixes",
        type=_list(_mix),
        default=",".join(f"{m:g}" for m in MIXES),
        help="read fractions, e.g. 100:0,99:1,95:5 or 0.95",
    )
    r.add_argument("--clients", type=_list(int), default="16", help="concurrent clients")
    r.add_argument("--value-size", type=int, default=100, help="bytes")
    r.add_argument("--keys", type=int, default=100, help="distinct keys read and written")
    r.add_argument("--duration", type=float, default=2.0, help="seconds measured per run")
    r.add_argument("--warmup", type=float, default=0.5, help="seconds before measuring")

    t = experiment("timeline", "a scripted crash/partition/pause, plotted per node")
    t.add_argument("-n", type=int, default=5, help="cluster size")
    t.add_argument("--timeout", type=_ranges, default="150-300", help="LO-HI in ms")
    t.add_argument("--heartbeat-ms", type=float, default=50.0, help="heartbeat interval")
    t.add_argument("--hold", type=float, default=1.0, help="seconds a partition or pause lasts")

    w = experiment("watch", "a put to the leader -> its event at a watcher on a follower")
    w.add_argument("-n", "--sizes", type=_list(int), default="1,3,5", help="cluster sizes")
    w.add_argument("--puts", type=int, default=200, help="measured puts per run, one at a time")
    w.add_argument("--interval-ms", type=float, default=5.0, help="mean pause between puts")
    w.add_argument(
        "--load", type=_list(int), default="0", help="background writers to the leader, e.g. 0,16"
    )
    w.add_argument("--value-size", type=int, default=100, help="bytes")
    for p in (c, r, w):
        _add_network(p)
    return parser


def _add_network(p: argparse.ArgumentParser) -> None:
    """How the measured clusters' nodes are connected (see Cluster)."""
    p.add_argument("--tls", action="store_true", help="TLS on clients and peers")
    p.add_argument(
        "--netns",
        action="store_true",
        help="each node in a network namespace of its own (root, Linux)",
    )


def _network(args: argparse.Namespace) -> dict[str, bool]:
    return {"tls": args.tls, "netns": args.netns}


def _show(df: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(df.round(1).to_string(index=False))


def _election(args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from .election import run_election, summary

    params = {
        "sizes": args.sizes,
        "timeouts_ms": args.timeouts,
        "pre_vote": args.pre_vote,
        "fault": args.fault,
        "trials": args.trials,
        "heartbeat_ms": args.heartbeat_ms,
        "max_wait": args.max_wait,
        "seed": args.seed,
    }
    df = run_election(progress=progress, **params)
    path = save(df, args.out / "election.csv", experiment="election", parameters=params)
    _show(summary(df))
    return {"election": path}


def _commit(args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from .commit import commit_latency, commit_throughput

    common = {
        "value_sizes": args.value_sizes,
        "warmup": args.warmup,
        "progress": progress,
        **_network(args),
    }
    lat_params = {"sizes": args.sizes, "targets": args.targets, "duration": args.duration}
    lat = commit_latency(**lat_params, **common)
    paths = {
        "commit_latency": save(
            lat,
            args.out / "commit_latency.csv",
            experiment="commit_latency",
            parameters={**lat_params, **common},
        )
    }
    q = lat.groupby(["n", "value_size", "target"])["latency_ms"]
    described = q.describe(percentiles=[0.5, 0.9, 0.99]).reset_index()
    _show(described.astype({"count": "int64"}))  # a count, not a measurement
    thr_params = {
        "sizes": args.sizes,
        "clients": args.clients,
        "targets": args.targets,
        "duration": args.duration,
    }
    thr = commit_throughput(**thr_params, **common)
    paths["commit_throughput"] = save(
        thr,
        args.out / "commit_throughput.csv",
        experiment="commit_throughput",
        parameters={**thr_params, **common},
    )
    cols = ["n", "value_size", "target", "clients", "throughput_ops_s", "p50_ms", "p99_ms"]
    _show(thr[[*cols, "errors", "loadgen_cpu", "nodes_cpu", "machine_cpu"]])
    return paths


def _reads(args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from .reads import run_reads

    params = {
        "sizes": args.sizes,
        "modes": args.modes,
        "targets": args.targets,
        "read_fractions": args.mixes,
        "clients": args.clients,
        "value_size": args.value_size,
        "keys": args.keys,
        "duration": args.duration,
        "warmup": args.warmup,
        **_network(args),
    }
    df = run_reads(progress=progress, **params)
    path = save(df, args.out / "reads.csv", experiment="reads", parameters=params)
    cols = ["n", "read_mode", "target", "mix", "clients", "throughput_ops_s", "read_ops_s"]
    _show(df[[*cols, "p50_ms", "p99_ms", "stale_reads", "errors", "loadgen_cpu", "nodes_cpu"]])
    return {"reads": path}


def _timeline(args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from .scenario import run_scenario
    from .timeline import plot_timeline, role_intervals

    lo, hi = args.timeout[0]
    params = {
        "n": args.n,
        "election_timeout": (lo / 1000, hi / 1000),
        "heartbeat_interval": args.heartbeat_ms / 1000,
        "hold": args.hold,
    }
    events = run_scenario(say=print if progress else None, **params)
    bands = role_intervals(events)
    path = save(bands, args.out / "timeline.csv", experiment="timeline", parameters=params)
    ax = plot_timeline(events)
    ax.set_title(f"{args.n} nodes, election timeout {lo:g}-{hi:g} ms")
    png = args.out / "timeline.png"
    ax.figure.savefig(png, dpi=120, bbox_inches="tight")
    return {"timeline": path, "plot": png}


def _watch(args: argparse.Namespace, progress: bool) -> dict[str, Any]:
    from .watch import summary, watch_latency

    params = {
        "sizes": args.sizes,
        "puts": args.puts,
        "interval": args.interval_ms / 1000,
        "load_clients": args.load,
        "value_size": args.value_size,
        **_network(args),
    }
    df = watch_latency(progress=progress, **params)
    path = save(df, args.out / "watch.csv", experiment="watch", parameters=params)
    _show(summary(df))
    return {"watch": path}


def _check_timing(args: argparse.Namespace) -> None:
    """Every timing setting of the run, checked before the first cluster starts."""
    ranges = args.timeouts if args.experiment == "election" else args.timeout
    for lo, hi in ranges:
        hb = lo / 2 if args.heartbeat_ms is None else args.heartbeat_ms
        RaftOptions(election_timeout=(lo / 1000, hi / 1000), heartbeat_interval=hb / 1000)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `kvcluster bench` (argv: what follows `bench`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.experiment in ("election", "timeline"):
        try:
            _check_timing(args)
        except ConfigError as exc:
            flags = {"election_timeout": "--timeouts", "heartbeat_interval": "--heartbeat-ms"}
            if args.experiment == "timeline":
                flags["election_timeout"] = "--timeout"
            flag = flags.get(exc.setting, exc.setting)
            parser.error(f"argument {flag}: {exc} (in seconds; the flag takes milliseconds)")
    run = {
        "election": _election,
        "commit": _commit,
        "reads": _reads,
        "timeline": _timeline,
        "watch": _watch,
    }[args.experiment]
    try:
        paths = run(args, not args.quiet)
    except KeyboardInterrupt:
        return 130
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
