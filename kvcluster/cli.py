"""`kvcluster`: run a node, a local cluster, the demo, or talk to a cluster."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from .errors import KvClusterError

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"

# Subcommands with parsers of their own: `kvcluster check --help` shows theirs.
DELEGATED = {
    "check": "check a recorded history (JSON lines) for linearizability",
    "nemesis": "random faults against a real cluster; the history is checked",
    "sim": "many seeds of the deterministic simulator (Raft safety + linearizability)",
    "bench": "measure a local cluster: election | commit | reads | timeline",
}


def _delegate(name: str, argv: list[str]) -> int:
    if name == "check":
        from .check.cli import main as check_main

        return check_main(argv)
    if name == "nemesis":
        from .nemesis import main as nemesis_main

        return nemesis_main(argv)
    if name == "sim":
        from .sim.cli import main as sim_main

        return sim_main(argv)
    if name == "bench":
        from .experiments.cli import main as bench_main

        return bench_main(argv)
    raise AssertionError(name)


def _timeout_range(text: str) -> tuple[float, float]:
    try:
        lo, _, hi = text.partition(",")
        pair = (float(lo), float(hi or lo))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LO,HI in seconds, e.g. 0.5,1.0: {exc}") from exc
    if not 0 < pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError("need 0 < LO <= HI")
    return pair


def _members(text: str) -> dict[str, str]:
    members = {}
    for part in filter(None, text.split(",")):
        name, sep, url = part.partition("=")
        if not sep or not url.startswith("http://"):
            raise argparse.ArgumentTypeError(f"expected NAME=http://HOST:PORT, got {part!r}")
        members[name] = url.rstrip("/")
    return members


def _add_raft_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat", type=float, default=0.1, help="heartbeat interval, seconds")
    p.add_argument(
        "--election-timeout",
        type=_timeout_range,
        default=(0.5, 1.0),
        metavar="LO,HI",
        help="randomized election timeout range, seconds",
    )
    p.add_argument(
        "--read-mode",
        default="read_index",
        choices=["proxy", "read_index", "lease", "serializable"],
    )
    p.add_argument("--no-pre-vote", action="store_true", help="turn pre-vote off")
    p.add_argument("--no-check-quorum", action="store_true", help="turn check-quorum off")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvcluster", description="A Raft-replicated key/value store for experiments."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run one node in the foreground")
    serve.add_argument("--name", required=True, help="this node's unique name")
    serve.add_argument("--listen", default="127.0.0.1:2379", help="HOST:PORT to bind")
    serve.add_argument("--advertise", help="URL peers use to reach us (default: http://LISTEN)")
    group = serve.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--initial-cluster",
        type=_members,
        metavar="NAME=URL,...",
        help="bootstrap a new cluster with these members (this node included)",
    )
    group.add_argument("--join", help="join an existing cluster through any member (URL,...)")
    serve.add_argument(
        "--token",
        default=os.environ.get("KVCLUSTER_TOKEN"),
        help="cluster token for peer and admin routes (or $KVCLUSTER_TOKEN)",
    )
    serve.add_argument("--data-dir", help="keep the log and snapshots here (default: memory only)")
    serve.add_argument(
        "--fsync",
        default="always",
        choices=["always", "batch", "never"],
        help="with --data-dir: when the log is fsynced",
    )
    serve.add_argument(
        "--snapshot-every",
        type=int,
        default=10_000,
        help="entries applied between snapshots (0: never)",
    )
    serve.add_argument("--events", help="append structured events (JSON lines) to this file")
    serve.add_argument(
        "--event-loop",
        default="uvloop",
        choices=["uvloop", "asyncio"],
        help="uvloop (faster; falls back to asyncio where it is not installed) or asyncio",
    )
    serve.add_argument(
        "--enable-fault-injection",
        action="store_true",
        help="enable the token-protected /admin/fault endpoints",
    )
    _add_raft_options(serve)

    up = sub.add_parser("up", help="run a local cluster in the foreground; Ctrl-C stops it")
    up.add_argument("-n", type=int, default=5, help="number of nodes")
    _add_raft_options(up)

    demo = sub.add_parser("demo", help="the quick-start experiment on a local 5-node cluster")
    demo.add_argument("-n", type=int, default=5)

    for name, help_text in DELEGATED.items():
        p = sub.add_parser(name, help=help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)

    def client_cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--endpoints",
            default=os.environ.get("KVCLUSTER_ENDPOINTS", DEFAULT_ENDPOINTS),
            help="comma-separated node URLs (or $KVCLUSTER_ENDPOINTS)",
        )
        p.add_argument("--timeout", type=float, default=10.0)
        return p

    p = client_cmd("put", "set a key")
    p.add_argument("key")
    p.add_argument("value")
    p = client_cmd("get", "read a key")
    p.add_argument("key")
    p.add_argument("--serializable", action="store_true", help="local, possibly stale read")
    p = client_cmd("delete", "delete a key")
    p.add_argument("key")
    p = client_cmd("list", "list keys by prefix")
    p.add_argument("prefix", nargs="?", default="")
    p.add_argument("--limit", type=int)
    client_cmd("status", "show every node's status")
    p = client_cmd("remove-member", "remove a node from the cluster")
    p.add_argument("name")
    p.add_argument("--token", default=os.environ.get("KVCLUSTER_TOKEN"))
    return parser


def _raft_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "heartbeat_interval": args.heartbeat,
        "election_timeout": args.election_timeout,
        "pre_vote": not args.no_pre_vote,
        "check_quorum": not args.no_check_quorum,
    }


def _serve(args: argparse.Namespace) -> int:
    from .raft import RaftOptions
    from .server.config import NodeConfig
    from .server.main import run_node

    host, _, port = args.listen.rpartition(":")
    token = args.token
    if not token:
        token = secrets.token_hex(16)
        print(
            f"No --token given; generated one. Start the other nodes with --token {token}",
            file=sys.stderr,
        )
    config = NodeConfig(
        name=args.name,
        token=token,
        host=host.strip("[]") or "127.0.0.1",
        port=int(port),
        advertise_url=args.advertise,
        initial_members=args.initial_cluster or {},
        join=[u.rstrip("/") for u in (args.join or "").split(",") if u],
        raft=RaftOptions(**_raft_options(args)),
        read_mode=args.read_mode,
        events_path=args.events,
        fault_injection=args.enable_fault_injection,
        storage="disk" if args.data_dir else "memory",
        data_dir=args.data_dir,
        fsync=args.fsync,
        snapshot_every=args.snapshot_every,
        event_loop=args.event_loop,
    )
    run_node(config)
    return 0


def _up(args: argparse.Namespace) -> int:
    from .cluster import Cluster

    with Cluster(args.n, read_mode=args.read_mode, **_raft_options(args)) as cluster:
        leader = cluster.wait_for_leader()
        print(f"{args.n} nodes up; node {leader} leads. Work directory: {cluster.work_dir}")
        print(f"export KVCLUSTER_ENDPOINTS={','.join(cluster.endpoints)}")
        print(f"export KVCLUSTER_TOKEN={cluster.token}")
        print("Ctrl-C stops the cluster.", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping...")
    return 0


def _client_command(args: argparse.Namespace) -> int:
    from .client import Client

    endpoints = [e.rstrip("/") for e in args.endpoints.split(",") if e]
    with Client(endpoints, timeout=args.timeout, token=getattr(args, "token", None)) as c:
        if args.command == "put":
            print(json.dumps({"key": args.key, "revision": c.put(args.key, args.value)}))
        elif args.command == "get":
            kv = c.get_kv(
                args.key, consistency="serializable" if args.serializable else "linearizable"
            )
            if kv is None:
                print(f"{args.key}: not found", file=sys.stderr)
                return 1
            print(kv.value)
        elif args.command == "delete":
            print(json.dumps({"key": args.key, "deleted": c.delete(args.key)}))
        elif args.command == "list":
            for key, value in c.list(args.prefix, limit=args.limit).items():
                print(f"{key}\t{value}")
        elif args.command == "status":
            for e in endpoints:
                try:
                    print(json.dumps(c.status(e)))
                except KvClusterError as exc:
                    print(json.dumps({"address": e, "error": str(exc)}))
        elif args.command == "remove-member":
            print(json.dumps(c.remove_member(args.name)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "up":
            return _up(args)
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.n)
            return 0
        return _client_command(args)
    except KvClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
