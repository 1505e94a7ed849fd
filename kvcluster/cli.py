"""`kvcluster`: run a node, a local cluster, the demo, or talk to a cluster.

Exit status: 0 when the command did what was asked; 1 when it could not (no
node reachable, the cluster refused or gave up, `status` could not reach an
endpoint, `get` of a key that does not exist, a lease that does not exist, a
`watch` from a compacted revision); 2 for a usage error, which names the flag
and what it accepts; 3 when `txn`'s compare failed (nothing was changed);
130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .errors import KvClusterError
from .raft import ConfigError
from .server.config import EVENT_LOOPS, FSYNC_POLICIES, READ_MODES

if TYPE_CHECKING:
    from .client import Client
    from .cluster import Cluster

T = TypeVar("T")

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"
TOKEN_ENV = "KVCLUSTER_TOKEN"
ENDPOINTS_ENV = "KVCLUSTER_ENDPOINTS"
CACERT_ENV = "KVCLUSTER_CACERT"
CERT_ENV = "KVCLUSTER_CERT"
KEY_ENV = "KVCLUSTER_KEY"
# A client command gives up this soon when no endpoint accepts a connection at all.
UNREACHABLE_TIMEOUT = 1.0

# Subcommands with parsers of their own: `kvcluster check --help` shows theirs.
DELEGATED = {
    "check": "check a recorded history (JSON lines) for linearizability",
    "nemesis": "random faults against a real cluster; the history is checked",
    "sim": "many seeds of the deterministic simulator (Raft safety + linearizability)",
    "bench": "measure a local cluster: election | commit | reads | timeline | watch",
}

# The flag that sets each configuration setting, to name it in a usage error.
FLAGS = {
    "name": "--name",
    "token": "--token-file",
    "host": "--listen",
    "port": "--listen",
    "listen": "--listen",
    "advertise_url": "--advertise",
    "initial_members": "--initial-cluster",
    "join": "--join",
    "election_timeout": "--election-timeout",
    "heartbeat_interval": "--heartbeat",
    "read_mode": "--read-mode",
    "data_dir": "--data-dir",
    "fsync": "--fsync",
    "snapshot_every": "--snapshot-every",
    "session_ttl": "--session-ttl",
    "history_keep": "--history-keep",
    "quota_bytes": "--quota-bytes",
    "event_loop": "--event-loop",
    "cert_file": "--cert-file",
    "key_file": "--key-file",
    "trusted_ca_file": "--trusted-ca-file",
    "client_cert_auth": "--client-cert-auth",
    "peer_cert_file": "--peer-cert-file",
    "peer_key_file": "--peer-key-file",
    "peer_trusted_ca_file": "--peer-trusted-ca-file",
    "n": "-n",
    "first_port": "--port",
}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        if default is None or default is False or default == argparse.SUPPRESS:
            return action.help
        if "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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


# ---------------------------------------------------------------------- argument types


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a config parser: its ConfigError becomes a usage error."""

    def check(text: str) -> T:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None

    check.__name__ = parse.__name__
    return check


def _timeout_range(text: str) -> tuple[float, float]:
    """'LO,HI' (or one number for both) in seconds; RaftOptions checks the range."""
    lo, _, hi = text.partition(",")
    try:
        return float(lo), float(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected LO,HI in seconds, e.g. 0.5,1.0, got {text!r}"
        ) from None


def _positive(kind: Callable[[str], T]) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf"):  # type: ignore[operator]
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _dashboard_port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535 (0: any), got {text!r}")
    return port


def _lease_id(text: str) -> int:
    """A lease id: decimal, or hexadecimal with 0x (as etcdctl prints them)."""
    try:
        value = int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        value = 0
    if not 0 < value < 1 << 63:
        raise argparse.ArgumentTypeError(
            f"expected a lease id (from `kvcluster lease grant`), got {text!r}"
        )
    return value


def _endpoints(text: str) -> list[str]:
    """URL,URL,...: each http(s)://HOST:PORT (or HOST:PORT)."""
    urls: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        url = part if "://" in part else "http://" + part
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            port = None
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname or not port:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not an endpoint like http://127.0.0.1:2379 (scheme, host and port)"
            )
        urls.append(url.rstrip("/"))
    if not urls:
        raise argparse.ArgumentTypeError("give at least one URL, like http://127.0.0.1:2379")
    return urls


# ---------------------------------------------------------------------- the parser


def _add_raft_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heartbeat", type=float, default=0.1, help="heartbeat interval, seconds")
    p.add_argument(
        "--election-timeout",
        type=_timeout_range,
        default="0.5,1.0",
        metavar="LO,HI",
        help="randomized election timeout range, seconds",
    )
    p.add_argument(
        "--read-mode",
        default="read_index",
        choices=READ_MODES,
        help="how linearizable reads are served",
    )
    p.add_argument("--no-pre-vote", action="store_true", help="turn pre-vote off")
    p.add_argument("--no-check-quorum", action="store_true", help="turn check-quorum off")
    p.add_argument(
        "--history-keep",
        type=int,
        default=10_000,
        help="revisions of history (reads at a past revision, watches) kept when the "
        "leader compacts automatically (0: never)",
    )
    p.add_argument(
        "--quota-bytes",
        type=int,
        default=1 << 30,
        help="bytes of keys, values and history a store may hold; beyond it the leader "
        "refuses writes that add data until deletes or compaction free some",
    )
    p.add_argument(
        "--session-ttl",
        type=float,
        default=300.0,
        help="seconds a client session may stay idle before the leader expires it",
    )


def _add_token_options(p: argparse.ArgumentParser, what: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"read the cluster token ({what}) from FILE; else ${TOKEN_ENV} is used",
    )
    group.add_argument(
        "--token",
        help="the token itself: visible to every local user in the process list; "
        "prefer --token-file or $" + TOKEN_ENV,
    )


def _add_client_options(p: argparse.ArgumentParser, *, top: bool) -> None:
    """The flags every client command takes, before or after its name: the
    top-level parser holds the defaults, a subcommand's copy only overrides them."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--endpoints",
        type=_endpoints,
        default=default(None),  # None: from the environment, see _endpoints_of
        help=f"comma-separated node URLs (default: ${ENDPOINTS_ENV} or {DEFAULT_ENDPOINTS})",
    )
    p.add_argument(
        "--timeout",
        type=_positive(float),
        default=default(10.0),
        help="seconds a command may retry while the cluster answers but cannot serve it "
        f"(no node accepting connections fails after about {UNREACHABLE_TIMEOUT:g} s) "
        "(default: 10)",
    )
    # TLS, with etcdctl's flag names; each also from the environment.
    for flag, dest, env, what in (
        ("--cacert", "tls_ca", CACERT_ENV, "the CA file the nodes' certificates come from"),
        ("--cert", "tls_cert", CERT_ENV, "this client's certificate, for clusters that ask"),
        ("--key", "tls_key", KEY_ENV, "the key file of --cert"),
    ):
        p.add_argument(
            flag,
            dest=dest,  # not "key": that is a command's KEY
            default=default(None),
            metavar="FILE",
            help=f"{what} (default: ${env})",
        )


class Parsers:
    """The top-level parser and each subcommand's, to report a usage error
    against the subcommand it belongs to."""

    def __init__(self) -> None:
        self.top = argparse.ArgumentParser(
            prog="kvcluster",
            description="A Raft-replicated key/value store for experiments.",
            epilog="Exit status: 0 done; 1 not done (unreachable, refused, not found); 2 usage; "
            "3 txn compare failed.",
            formatter_class=HelpFormatter,
        )
        _add_client_options(self.top, top=True)
        self.sub = self.top.add_subparsers(dest="command", required=True, metavar="COMMAND")
        self.by_name: dict[str, argparse.ArgumentParser] = {}

    def add(self, name: str, help_text: str, **kwargs: Any) -> argparse.ArgumentParser:
        p = self.sub.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter, **kwargs
        )
        self.by_name[name] = p
        return p

    def usage_error(self, command: str | None, exc: ConfigError) -> None:
        """Exit 2 with argparse's usage message for `command`, naming the flag."""
        parser = self.by_name.get(command or "", self.top)
        flag = FLAGS.get(exc.setting)
        parser.error(f"argument {flag}: {exc.reason}" if flag else str(exc))


def build_parsers() -> Parsers:
    from .server.config import parse_listen, parse_members, parse_peer_url, parse_peer_urls

    ps = Parsers()
    serve = ps.add("serve", "run one node in the foreground")
    serve.add_argument("--name", required=True, help="this node's unique name (A-Z a-z 0-9 . _ -)")
    serve.add_argument(
        "--listen",
        type=_checked(parse_listen),
        default="127.0.0.1:2379",
        metavar="HOST:PORT",
        help="the address to bind, exactly",
    )
    serve.add_argument(
        "--advertise",
        type=_checked(lambda text: parse_peer_url(text, "advertise_url")),
        metavar="URL",
        help="the URL peers use to reach this node (default: http://LISTEN)",
    )
    # Neither is needed to restart a node from its --data-dir: its log has the members.
    group = serve.add_mutually_exclusive_group()
    group.add_argument(
        "--initial-cluster",
        type=_checked(parse_members),
        metavar="NAME=URL,...",
        help="bootstrap a new cluster with these members (this node included); "
        "not needed to restart from --data-dir",
    )
    group.add_argument(
        "--join",
        type=_checked(lambda text: parse_peer_urls(text, "join")),
        metavar="URL,...",
        help="join an existing cluster through any of these members",
    )
    _add_token_options(serve, "for peer and admin routes")
    serve.add_argument("--data-dir", help="keep the log and snapshots here (default: memory only)")
    serve.add_argument(
        "--fsync",
        default="always",
        choices=FSYNC_POLICIES,
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
        choices=EVENT_LOOPS,
        help="uvloop (faster; falls back to asyncio where it is not installed) or asyncio",
    )
    serve.add_argument(
        "--enable-fault-injection",
        action="store_true",
        help="enable the token-protected /admin/fault endpoints",
    )
    tls = serve.add_argument_group(
        "TLS (etcd's flags; all off: plain HTTP)",
        "With --cert-file the port speaks only https, to clients and peers, and every member "
        "URL is https://. A peer (and the admin routes) must show a certificate issued by "
        "--peer-trusted-ca-file besides the token. Make a CA and certificates with "
        "`kvcluster certs`.",
    )
    tls.add_argument("--cert-file", metavar="FILE", help="this node's certificate (PEM)")
    tls.add_argument("--key-file", metavar="FILE", help="its key (PEM, unencrypted)")
    tls.add_argument(
        "--peer-trusted-ca-file", metavar="FILE", help="the CA of the peers' certificates"
    )
    tls.add_argument(
        "--peer-cert-file",
        metavar="FILE",
        help="the certificate shown when calling peers (default: --cert-file)",
    )
    tls.add_argument("--peer-key-file", metavar="FILE", help="its key (default: --key-file)")
    tls.add_argument(
        "--client-cert-auth",
        action="store_true",
        help="clients must show a certificate from --trusted-ca-file",
    )
    tls.add_argument(
        "--trusted-ca-file", metavar="FILE", help="the CA of the clients' certificates"
    )
    _add_raft_options(serve)

    certs = ps.add(
        "certs",
        "make a CA and node certificates (for TLS: `serve --cert-file`; keys are written 0600)",
    )
    certs_sub = certs.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    ca = certs_sub.add_parser(
        "ca", help="a new CA: DIR/ca.pem and DIR/ca.key", formatter_class=HelpFormatter
    )
    ca.add_argument("--dir", default=".", help="where to write the files")
    ca.add_argument("--days", type=int, default=365, help="how long it is valid")
    issue = certs_sub.add_parser(
        "issue",
        help="a certificate from DIR's CA: DIR/NAME.pem and DIR/NAME.key",
        formatter_class=HelpFormatter,
    )
    issue.add_argument("name", help="a name for the certificate (its file names too)")
    issue.add_argument(
        "--host",
        action="append",
        required=True,
        help="a host name or IP address it is reached at (repeat for each)",
    )
    issue.add_argument("--dir", default=".", help="the CA's directory, and where to write")
    issue.add_argument("--days", type=int, default=365, help="how long it is valid")

    up = ps.add("up", "run a local cluster in the foreground; Ctrl-C stops it")
    up.add_argument("-n", type=int, default=5, help="number of nodes")
    up.add_argument(
        "--port",
        type=int,
        default=0,
        help="the first node's port; node i listens on PORT + i (0: ports the OS picks)",
    )
    up.add_argument(
        "--token-file",
        metavar="FILE",
        help="use the token in FILE; if FILE does not exist, write a new one there "
        "(readable only by you). Default: a file in the cluster's work directory",
    )
    _add_raft_options(up)
    # the live view (issue 14)
    up.add_argument(
        "--dashboard",
        nargs="?",
        const=0,
        type=_dashboard_port,
        metavar="PORT",
        help="serve the live view on 127.0.0.1 (on PORT, or a free port) and print its URL",
    )
    up.add_argument(
        "--tls",
        action="store_true",
        help="TLS on clients and peers, with a throwaway CA in the work directory "
        f"(its path is printed as ${CACERT_ENV})",
    )
    up.add_argument(
        "--slow",
        action="store_true",
        help="heartbeat 1 s and election timeout 4-8 s, to follow an election by eye "
        "(--heartbeat and --election-timeout still apply when given)",
    )

    demo = ps.add("demo", "the quick-start experiment on a local cluster")
    demo.add_argument("-n", type=int, default=5, help="number of nodes")

    for name, help_text in DELEGATED.items():
        p = ps.add(name, help_text, add_help=False)
        p.add_argument("args", nargs=argparse.REMAINDER)

    def client_cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        p = ps.add(name, help_text)
        _add_client_options(p, top=False)
        return p

    p = client_cmd("put", "set a key; prints its revision")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument(
        "--lease",
        type=_lease_id,
        metavar="ID",
        help="attach the key to lease ID (from `lease grant`): it is deleted when the lease ends",
    )
    p = client_cmd("get", "print a key's value (exit status 1 if there is no such key)")
    p.add_argument("key")
    p.add_argument("--serializable", action="store_true", help="local, possibly stale read")
    p = client_cmd("delete", "delete a key; prints deleted 1, or 0 if there was no such key")
    p.add_argument("key")
    p = client_cmd("list", "list keys and values by prefix")
    p.add_argument("prefix", nargs="?", default="", help="key prefix (default: every key)")
    p.add_argument("--limit", type=_positive(int), help="at most this many keys")
    client_cmd("status", "show every endpoint's status (exit status 1 if one cannot be reached)")
    p = client_cmd("remove-member", "remove a node from the cluster (needs the token)")
    p.add_argument("name")
    _add_token_options(p, "needed to change the membership")
    _add_etcd_commands(ps, client_cmd)
    return ps


def _add_etcd_commands(
    ps: Parsers, client_cmd: Callable[[str, str], argparse.ArgumentParser]
) -> None:
    """txn, watch and lease: etcd's v3 API (they work against etcd 3.4 too)."""
    p = client_cmd(
        "txn",
        "compare-and-swap one key: set (or delete) it only if it holds OLD (or does not "
        "exist); prints whether it did (exit status 3 if it did not)",
    )
    p.add_argument("key")
    condition = p.add_mutually_exclusive_group(required=True)
    condition.add_argument("--if-value", metavar="OLD", help="only if KEY holds OLD")
    condition.add_argument("--if-absent", action="store_true", help="only if KEY does not exist")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--set", metavar="NEW", help="then set KEY to NEW")
    action.add_argument("--delete", action="store_true", help="then delete KEY")

    p = client_cmd("watch", "print each change to a key (or prefix) as a JSON line, until Ctrl-C")
    p.add_argument("key")
    p.add_argument("--prefix", action="store_true", help="every key that starts with KEY")
    p.add_argument(
        "--rev",
        type=_positive(int),
        metavar="N",
        help="start at revision N (past changes from the history); default: from now",
    )
    p.add_argument("--prev-kv", action="store_true", help="show each change's previous value")
    p.add_argument("--count", type=_positive(int), metavar="N", help="stop after N changes")
    p.add_argument(
        "--duration", type=_positive(float), metavar="SECONDS", help="stop after SECONDS"
    )

    lease = client_cmd("lease", "grant, revoke, inspect, list or keep alive leases")
    actions = lease.add_subparsers(dest="lease_command", required=True, metavar="ACTION")

    def action_cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        q = actions.add_parser(
            name, help=help_text, description=help_text, formatter_class=HelpFormatter
        )
        _add_client_options(q, top=False)
        ps.by_name[f"lease {name}"] = q
        return q

    q = action_cmd("grant", "grant a lease of TTL seconds; prints its id")
    q.add_argument("ttl", type=_positive(int), metavar="TTL")
    q.add_argument("--id", type=_lease_id, help="this id (default: the cluster picks one)")
    q = action_cmd("revoke", "revoke a lease: the keys attached to it are deleted")
    q.add_argument("id", type=_lease_id)
    q = action_cmd("ttl", "print a lease's seconds left (exit status 1 if there is no such lease)")
    q.add_argument("id", type=_lease_id)
    q.add_argument("--keys", action="store_true", help="list the keys attached to it")
    action_cmd("list", "print the id of every lease, one per line")
    q = action_cmd(
        "keep-alive", "renew a lease every TTL/3 seconds until Ctrl-C; prints each renewal"
    )
    q.add_argument("id", type=_lease_id)
    q.add_argument("--once", action="store_true", help="renew it once, then exit")


def build_parser() -> argparse.ArgumentParser:
    return build_parsers().top


def _endpoints_of(args: argparse.Namespace, ps: Parsers) -> list[str]:
    """--endpoints, else $KVCLUSTER_ENDPOINTS, else the default (a bad
    environment value is a usage error that names the variable)."""
    if args.endpoints is not None:
        return list(args.endpoints)
    try:
        return _endpoints(os.environ.get(ENDPOINTS_ENV) or DEFAULT_ENDPOINTS)
    except argparse.ArgumentTypeError as exc:
        ps.by_name[args.command].error(f"${ENDPOINTS_ENV}: {exc}")
        raise AssertionError("unreachable") from exc


# ---------------------------------------------------------------------- tokens


def _token(args: argparse.Namespace, ps: Parsers) -> str | None:
    """The token from --token-file, --token (with a warning) or $KVCLUSTER_TOKEN."""
    if args.token_file:
        try:
            text = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            ps.by_name[args.command].error(f"argument --token-file: cannot read it: {exc}")
        if not text:
            ps.by_name[args.command].error(f"argument --token-file: {args.token_file} is empty")
        _warn_if_readable_by_others(Path(args.token_file))
        return text
    if args.token:
        print(
            "warning: --token is visible to every user of this machine in the process list "
            f"(ps, /proc/PID/cmdline); use --token-file FILE or ${TOKEN_ENV} instead",
            file=sys.stderr,
        )
        return str(args.token)
    return os.environ.get(TOKEN_ENV) or None


def _warn_if_readable_by_others(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        print(
            f"warning: {path} can be read by other users (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {path}",
            file=sys.stderr,
        )


def write_token_file(path: Path, token: str) -> None:
    """Create `path` holding `token`, readable and writable only by its owner
    (0600 from the start: never briefly readable by others; never overwritten)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")


def _new_token_file(name: str, token: str) -> Path:
    """A new 0600 file holding `token`: in the current directory, or in the
    temporary directory if that one cannot be written."""
    for where in (Path.cwd(), Path(tempfile.gettempdir())):
        try:
            fd, path = tempfile.mkstemp(prefix=f"kvcluster-{name}-", suffix=".token", dir=where)
        except OSError:
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:  # mkstemp makes it 0600
            f.write(token + "\n")
        return Path(path).resolve()
    raise SystemExit("error: cannot write a token file in the current or temporary directory")


# ---------------------------------------------------------------------- commands


def _raft_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "heartbeat_interval": args.heartbeat,
        "election_timeout": args.election_timeout,
        "pre_vote": not args.no_pre_vote,
        "check_quorum": not args.no_check_quorum,
    }


def _serve(args: argparse.Namespace, ps: Parsers) -> int:
    from .raft import RaftOptions
    from .server.config import NodeConfig
    from .server.main import run_node

    token = _token(args, ps)
    generated = token is None
    host, port = args.listen
    advertise = args.advertise
    if advertise is None and ":" in host:  # an IPv6 address goes in brackets in a URL
        advertise = f"{'https' if args.cert_file else 'http'}://[{host}]:{port}"
    config = NodeConfig(
        name=args.name,
        token=token or secrets.token_hex(16),
        host=host,
        port=port,
        advertise_url=advertise,
        initial_members=args.initial_cluster or {},
        join=args.join or [],
        raft=RaftOptions(**_raft_options(args)),
        read_mode=args.read_mode,
        events_path=args.events,
        fault_injection=args.enable_fault_injection,
        storage="disk" if args.data_dir else "memory",
        data_dir=args.data_dir,
        fsync=args.fsync,
        snapshot_every=args.snapshot_every,
        session_ttl=args.session_ttl,
        history_keep=args.history_keep,
        quota_bytes=args.quota_bytes,
        event_loop=args.event_loop,
        cert_file=args.cert_file,
        key_file=args.key_file,
        trusted_ca_file=args.trusted_ca_file,
        client_cert_auth=args.client_cert_auth,
        peer_cert_file=args.peer_cert_file,
        peer_key_file=args.peer_key_file,
        peer_trusted_ca_file=args.peer_trusted_ca_file,
    )
    path = None
    if generated:
        path = _new_token_file(config.name, config.token)
        print(
            f"No token given (--token-file FILE or ${TOKEN_ENV}): generated one and wrote it "
            f"to {path}, readable only by you. Every node of the cluster needs the same token: "
            f"copy that file to the others and start them with --token-file {path} "
            f"(or export {TOKEN_ENV}=$(cat {path})).",
            file=sys.stderr,
        )
    try:
        run_node(config)
    except SystemExit:
        if path is not None:  # the node never ran: its token is of no use to anyone
            path.unlink(missing_ok=True)
        raise
    return 0


def _up(args: argparse.Namespace, ps: Parsers) -> int:
    from .cluster import Cluster, PortTaken

    token_file = Path(args.token_file) if args.token_file else None
    token = None
    if token_file is not None and token_file.exists():
        token = _token(args, ps)
    # Checked (a ConfigError) before a token file is written or a node started.
    cluster = Cluster(
        args.n,
        first_port=args.port,
        token=token,
        read_mode=args.read_mode,
        session_ttl=args.session_ttl,
        history_keep=args.history_keep,
        quota_bytes=args.quota_bytes,
        tls=args.tls,
        start=False,
        **_up_timers(args, ps),
    )
    with cluster:
        if token_file is None:
            token_file = cluster.work_dir / "token"  # removed with the cluster
        if token is None:
            try:
                write_token_file(token_file, cluster.token)
            except OSError as exc:
                ps.by_name["up"].error(f"argument --token-file: cannot write it: {exc}")
        try:
            cluster.start()
        except PortTaken as exc:
            last = args.port + args.n - 1
            raise SystemExit(
                f"error: {exc}\nkvcluster up --port {args.port} needs ports {args.port}-{last} "
                f"free; choose another first port, or leave out --port."
            ) from None
        leader = cluster.wait_for_leader()
        ports = [h.port for h in cluster.nodes]
        print(
            f"{args.n} nodes up (ports {', '.join(map(str, ports))}); "
            f"{cluster.nodes[leader].name} leads. Work directory: {cluster.work_dir}"
        )
        print(f"export {ENDPOINTS_ENV}={','.join(cluster.endpoints)}")
        print(f"export {TOKEN_ENV}=$(cat {token_file})")
        if cluster.tls:
            print(f"export {CACERT_ENV}={cluster.ca_file}")
        if args.dashboard is not None:
            _start_dashboard(cluster, args.dashboard)
        print("Ctrl-C stops the cluster.", flush=True)
        for sig in (signal.SIGTERM, signal.SIGINT):  # SIGINT too when started in the background
            signal.signal(sig, signal.default_int_handler)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping...", flush=True)
    return 0


def _up_timers(args: argparse.Namespace, ps: Parsers) -> dict[str, Any]:
    """The Raft options of `up`; with --slow, the slow preset's timers for those
    not given on the command line."""
    options = _raft_options(args)
    if args.slow:
        options["preset"] = "slow"
        up = ps.by_name["up"]
        if args.heartbeat == up.get_default("heartbeat"):
            del options["heartbeat_interval"]
        if args.election_timeout == _timeout_range(up.get_default("election_timeout")):
            del options["election_timeout"]
    return options


def _start_dashboard(cluster: Cluster, port: int) -> None:
    try:
        dashboard = cluster.dashboard(port)
    except OSError as exc:
        raise SystemExit(
            f"error: the live view cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; "
            f"choose another port, or give --dashboard without one."
        ) from None
    print(f"Live view (open in a browser on this machine): {dashboard.url}")


def _certs(args: argparse.Namespace) -> int:
    from .tls import CertificateAuthority, TlsError, write_key_pair

    where = Path(args.dir)
    try:
        if args.certs_command == "ca":
            where.mkdir(parents=True, exist_ok=True)
            if (where / "ca.key").exists():
                raise TlsError(f"{where / 'ca.key'} exists: remove it first to make a new CA")
            CertificateAuthority.create(days=args.days).write(where / "ca.pem", where / "ca.key")
            print(
                f"wrote {where / 'ca.pem'} (give it to every node and client) and "
                f"{where / 'ca.key'} (keep it private)"
            )
        else:
            from .server.config import check_name

            name = check_name(args.name, "certificate name")
            ca = CertificateAuthority.load(where / "ca.pem", where / "ca.key")
            certificate, key = ca.issue(name, args.host, days=args.days)
            write_key_pair(certificate, key, where / f"{name}.pem", where / f"{name}.key")
            print(
                f"wrote {where / f'{name}.pem'} and {where / f'{name}.key'} "
                f"for {', '.join(args.host)}"
            )
    except TlsError as exc:
        raise SystemExit(f"error: {exc}") from None
    return 0


def _client_command(args: argparse.Namespace, ps: Parsers) -> int:
    from .client import Client

    token = _token(args, ps) if args.command == "remove-member" else None
    endpoints = _endpoints_of(args, ps)
    with Client(
        endpoints,
        timeout=args.timeout,
        token=token,
        unreachable_timeout=min(args.timeout, UNREACHABLE_TIMEOUT),
        ca=args.tls_ca or os.environ.get(CACERT_ENV) or None,
        cert=args.tls_cert or os.environ.get(CERT_ENV) or None,
        key=args.tls_key or os.environ.get(KEY_ENV) or None,
    ) as c:
        if args.command == "put":
            revision = c.put(args.key, args.value, lease=args.lease or 0)
            print(json.dumps({"key": args.key, "revision": revision}))
        elif args.command == "get":
            kv = c.get_kv(
                args.key, consistency="serializable" if args.serializable else "linearizable"
            )
            if kv is None:
                print(f"{args.key}: not found", file=sys.stderr)
                return 1
            print(kv.value)
        elif args.command == "delete":
            print(json.dumps({"key": args.key, "deleted": int(c.delete(args.key))}))
        elif args.command == "list":
            for key, value in c.list(args.prefix, limit=args.limit).items():
                print(f"{key}\t{value}")
        elif args.command == "status":
            failed = 0
            for e in endpoints:
                try:
                    print(json.dumps(c.status(e)))
                except KvClusterError as exc:
                    failed += 1
                    print(json.dumps({"address": e, "error": str(exc)}))
            if failed:
                print(f"error: {failed} of {len(endpoints)} endpoint(s) did not answer",
                      file=sys.stderr)  # fmt: skip
                return 1
        elif args.command == "remove-member":
            print(json.dumps(c.remove_member(args.name)))
        elif args.command == "txn":
            return _txn(c, args)
        elif args.command == "watch":
            return _watch(c, args)
        elif args.command == "lease":
            return _lease(c, args)
    return 0


def _txn(c: Client, args: argparse.Namespace) -> int:
    from .client import Compare, Delete, Put

    if args.if_absent:
        condition = Compare(args.key, "version", "==", 0)
    else:
        condition = Compare(args.key, "value", "==", args.if_value)
    action = Delete(args.key) if args.delete else Put(args.key, args.set)
    result = c.txn([condition], [action])
    print(json.dumps({"key": args.key, "succeeded": result.succeeded, "revision": result.revision}))
    return 0 if result.succeeded else 3


def _watch(c: Client, args: argparse.Namespace) -> int:
    until = None if args.duration is None else time.monotonic() + args.duration
    seen = 0
    with c.watch(args.key, prefix=args.prefix, start_revision=args.rev, prev_kv=args.prev_kv) as w:
        while args.count is None or seen < args.count:
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                break
            event = w.get(left)
            if event is None:
                break
            line: dict[str, Any] = {
                "type": event.type,
                "key": event.key,
                "value": event.value,
                "revision": event.revision,
                "version": event.version,
            }
            if event.lease:
                line["lease"] = event.lease
            if args.prev_kv:
                line["prev_value"] = None if event.prev is None else event.prev.value
            try:
                print(json.dumps(line), flush=True)
            except BrokenPipeError:  # `kvcluster watch ... | head -1`: the reader is done
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
            seen += 1
    return 0


def _lease(c: Client, args: argparse.Namespace) -> int:
    action = args.lease_command
    if action == "grant":
        lease = c.lease_grant(args.ttl, args.id or 0)
        print(json.dumps({"id": lease.id, "ttl": lease.ttl}))
    elif action == "revoke":
        c.lease_revoke(args.id)
        print(json.dumps({"id": args.id, "revoked": True}))
    elif action == "ttl":
        status = c.lease_time_to_live(args.id, keys=args.keys)
        if status is None:
            print(f"lease {args.id}: not found (expired or revoked)", file=sys.stderr)
            return 1
        out: dict[str, Any] = {
            "id": status.id,
            "ttl": status.ttl,
            "granted_ttl": status.granted_ttl,
        }
        if args.keys:
            out["keys"] = list(status.keys)
        print(json.dumps(out))
    elif action == "list":
        for lease_id in c.leases():
            print(lease_id)
    elif action == "keep-alive":
        while True:
            ttl = c.lease_keep_alive(args.id)
            print(json.dumps({"id": args.id, "ttl": ttl}), flush=True)
            if args.once:
                break
            time.sleep(max(0.5, ttl / 3))  # the renewal period, as etcdctl's
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        return _delegate(argv[0], argv[1:])
    ps = build_parsers()
    args = ps.top.parse_args(argv)
    if args.command in DELEGATED:  # after top-level flags, which they do not take
        return _delegate(args.command, args.args)
    try:
        if args.command == "serve":
            return _serve(args, ps)
        if args.command == "up":
            return _up(args, ps)
        if args.command == "certs":
            return _certs(args)
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.n)
            return 0
        try:
            return _client_command(args, ps)
        except (ValueError, TypeError) as exc:  # an argument the client refuses (an empty key)
            if isinstance(exc, ConfigError):
                raise
            ps.by_name[args.command].error(str(exc))
            return 2
    except ConfigError as exc:
        ps.usage_error(args.command, exc)
        return 2
    except KvClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
