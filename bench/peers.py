"""kvcluster side by side with etcd and PySyncObj: same load generator, same workloads, one run.

    python bench/peers.py --nodes 3,5 --seconds 3 --systems kvcluster,etcd,pysyncobj
    python bench/peers.py --nodes 3 --quick
    python bench/peers.py --nodes 1,3,5 --rounds 0 --trials 0 --watch-rounds 5   # watch only

For each cluster size it starts each system in turn (rotating the order every
round, so machine drift hits all alike), measures

- sequential put p50 (one client, to the leader),
- puts/s with 64 concurrent clients (to the leader),
- linearizable gets/s with 32 clients to one follower,
- serializable gets/s with 32 clients to one follower,
- kill -9 leader -> next acknowledged write (median over trials), at election
  100 ms / heartbeat 10 ms and at 1000 / 100 ms,
- watch latency (systems that speak etcd's gateway: kvcluster and etcd): a
  put to the leader -> its event at a watcher on a follower (the only node
  when n = 1), p50 and p99, with the same puts' own latency and the
  difference (what the watcher waits beyond the writer),

and prints one table with the ratio kvcluster/peer for each metric, plus the CPU
the load generator used (in cores: 1.0 is one core busy all the time), and writes
a CSV (`--csv`). 16-byte keys, 64-byte values.

Election timeouts: etcd draws its timeout from [T, 2T); kvcluster gets (T, 2T);
PySyncObj gets raftMinTimeout=T, raftMaxTimeout=2T.

The load is the one of `kvcluster.experiments.loadgen` (one asyncio loop,
keep-alive connections of the node's own HTTP client, `HttpConnection`, CPU
measured over the window); its worker only speaks kvcluster's routes, so
`_worker` below is that worker with the requests supplied per system (etcd
speaks `/v3/kv/put` and `/v3/kv/range` with base64 JSON). PySyncObj nodes
(`bench/peers_pysyncobj.py`) speak kvcluster's JSON. A system that is not
installed is skipped with a message.

The watch metric is `kvcluster.experiments.watch.measure` for both systems,
through etcd's gateway only (`/v3/kv/put`, `/v3/watch`): sequential puts (10
warm-up puts, then `--watch-puts`, each sent once the last one's answer and
event are in, after a random pause of 0.5-1.5 x `--watch-interval-ms`), the
put and its event timed on one event loop. Each round starts fresh clusters, systems in turn
(the order rotating every round). Its rows are percentiles over every put of
every round, with a 95% interval from a two-level bootstrap (rounds resampled,
then the puts within each), so that the differences between clusters count
and not only those between puts.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import csv
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import numpy as np

from kvcluster.cluster import Cluster
from kvcluster.experiments.loadgen import (
    LoadResult,
    _Recorder,
    exchange,
    machine_busy,
    process_cpu,
)
from kvcluster.experiments.watch import measure as measure_watch
from kvcluster.server.http import HttpConnection

KEY_SIZE = 16
VALUE_SIZE = 64
KEYS = 256
VALUE = "v" * VALUE_SIZE
HERE = Path(__file__).resolve().parent

# ----------------------------------------------------------------------------- processes

_children: list[subprocess.Popen[bytes]] = []


def _kill_children() -> None:
    for p in _children:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)


atexit.register(_kill_children)


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the benchmark dies (PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        p = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: killpg reaches it all
            preexec_fn=_die_with_parent,
        )
    _children.append(p)
    return p


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(5)


def free_ports(k: int) -> list[int]:
    socks = []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _http(
    url: str, method: str, path: str, body: bytes = b"", timeout: float = 1.0
) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"}
        conn.request(method, path, body=body or None, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _key(i: int) -> str:
    return f"k{i:0{KEY_SIZE - 1}d}"


# ----------------------------------------------------------------------------- systems

Request = tuple[str, str, bytes]  # method, path, body


class System(Protocol):
    name: str

    @property
    def endpoints(self) -> list[str]: ...
    @property
    def pids(self) -> list[int]: ...
    def wait_for_leader(self, timeout: float = 30.0, exclude: int | None = None) -> int: ...
    def kill(self, i: int) -> None: ...
    def put(self, key: str, value: str) -> Request: ...
    def get(self, key: str, serializable: bool) -> Request: ...
    def __enter__(self) -> System: ...
    def __exit__(self, *exc: object) -> None: ...


def _poll(cond: Callable[[], int | None], timeout: float, what: str) -> int:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v is not None:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


class KvJson:
    """kvcluster's routes, also spoken by the PySyncObj front end."""

    def put(self, key: str, value: str) -> Request:
        return "PUT", f"/v1/kv/{quote(key, safe='')}", json.dumps({"value": value}).encode()

    def get(self, key: str, serializable: bool) -> Request:
        q = "?consistency=serializable" if serializable else ""
        return "GET", f"/v1/kv/{quote(key, safe='')}{q}", b""


class KvclusterSystem(KvJson):
    name = "kvcluster"

    def __init__(self, n: int, election: float, heartbeat: float) -> None:
        self.cluster = Cluster(
            n, election_timeout=(election, 2 * election), heartbeat_interval=heartbeat
        )

    @property
    def endpoints(self) -> list[str]:
        return self.cluster.endpoints

    @property
    def pids(self) -> list[int]:
        return [h.process.pid for h in self.cluster.nodes if h.alive]

    def wait_for_leader(self, timeout: float = 30.0, exclude: int | None = None) -> int:
        return self.cluster.wait_for_leader(timeout, exclude=() if exclude is None else exclude)

    def kill(self, i: int) -> None:
        self.cluster.kill(i)

    def __enter__(self) -> KvclusterSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cluster.stop()


class EtcdSystem:
    name = "etcd"

    def __init__(self, n: int, election: float, heartbeat: float) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="peers-etcd-", dir="/dev/shm"))
        ports = free_ports(2 * n)
        self.client_ports, peer_ports = ports[:n], ports[n:]
        initial = ",".join(f"e{i}=http://127.0.0.1:{peer_ports[i]}" for i in range(n))
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for i in range(n):
                c, p = (
                    f"http://127.0.0.1:{self.client_ports[i]}",
                    f"http://127.0.0.1:{peer_ports[i]}",
                )
                argv = [
                    "etcd",
                    f"--name=e{i}",
                    f"--data-dir={self.dir / f'e{i}'}",
                    f"--listen-client-urls={c}",
                    f"--advertise-client-urls={c}",
                    f"--listen-peer-urls={p}",
                    f"--initial-advertise-peer-urls={p}",
                    f"--initial-cluster={initial}",
                    "--initial-cluster-state=new",
                    f"--initial-cluster-token=peers-{os.getpid()}",
                    f"--heartbeat-interval={round(heartbeat * 1000)}",
                    f"--election-timeout={round(election * 1000)}",
                    "--logger=zap",
                    "--log-level=error",
                ]
                self.procs.append(_spawn(argv, self.dir / f"e{i}.log"))
        except BaseException:
            self.__exit__()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.client_ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def _status(self, i: int) -> tuple[str, str] | None:
        if self.procs[i].poll() is not None:
            return None
        try:
            code, body = _http(self.endpoints[i], "POST", "/v3/maintenance/status", b"{}", 0.5)
            if code != 200:
                return None
            s = json.loads(body)
            return str(s["header"]["member_id"]), str(s.get("leader", "0"))
        except (OSError, ValueError, KeyError):
            return None

    def wait_for_leader(self, timeout: float = 30.0, exclude: int | None = None) -> int:
        def agreed() -> int | None:
            st = {i: s for i in range(len(self.procs)) if (s := self._status(i)) is not None}
            ids = {s[0]: i for i, s in st.items()}
            leaders = {s[1] for s in st.values()}
            if len(leaders) != 1:
                return None
            idx = ids.get(leaders.pop())
            return None if idx is None or idx == exclude else idx

        return _poll(agreed, timeout, "etcd elected no leader")

    def kill(self, i: int) -> None:
        _stop(self.procs[i])

    def put(self, key: str, value: str) -> Request:
        b64 = base64.b64encode
        body = b'{"key":"%s","value":"%s"}' % (b64(key.encode()), b64(value.encode()))
        return "POST", "/v3/kv/put", body

    def get(self, key: str, serializable: bool) -> Request:
        k = base64.b64encode(key.encode())
        body = b'{"key":"%s"%s}' % (k, b',"serializable":true' if serializable else b"")
        return "POST", "/v3/kv/range", body

    def __enter__(self) -> EtcdSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            _stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)


class PySyncObjSystem(KvJson):
    name = "pysyncobj"

    def __init__(self, n: int, election: float, heartbeat: float, batch: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="peers-pysyncobj-"))
        ports = free_ports(2 * n)
        self.http_ports, raft_ports = ports[:n], ports[n:]
        self.raft = [f"127.0.0.1:{p}" for p in raft_ports]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for i in range(n):
                argv = [
                    sys.executable,
                    str(HERE / "peers_pysyncobj.py"),
                    f"--raft={self.raft[i]}",
                    "--partners=" + ",".join(r for j, r in enumerate(self.raft) if j != i),
                    f"--http={self.http_ports[i]}",
                    f"--election-timeout={election}",
                    f"--heartbeat={heartbeat}",
                    *(["--batch"] if batch else []),
                ]
                self.procs.append(_spawn(argv, self.dir / f"p{i}.log"))
        except BaseException:
            self.__exit__()
            raise

    @property
    def endpoints(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.http_ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def _status(self, i: int) -> dict[str, Any] | None:
        if self.procs[i].poll() is not None:
            return None
        try:
            code, body = _http(self.endpoints[i], "GET", "/v1/status", b"", 0.5)
            return dict(json.loads(body)) if code == 200 else None
        except (OSError, ValueError):
            return None

    def wait_for_leader(self, timeout: float = 30.0, exclude: int | None = None) -> int:
        def agreed() -> int | None:
            st = [s for i in range(len(self.procs)) if (s := self._status(i)) is not None]
            leaders = {s["leader"] for s in st}
            if len(leaders) != 1 or len(st) < len(self.procs) // 2 + 1:
                return None
            leader = leaders.pop()
            if leader not in self.raft:
                return None
            idx = self.raft.index(leader)
            alive = self._status(idx)
            if idx == exclude or alive is None or alive["role"] != "leader":
                return None
            return idx

        return _poll(agreed, timeout, "pysyncobj elected no leader")

    def kill(self, i: int) -> None:
        _stop(self.procs[i])

    def __enter__(self) -> PySyncObjSystem:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            _stop(p)
        shutil.rmtree(self.dir, ignore_errors=True)


def available(name: str) -> str | None:
    """None if the system can run here, else why not."""
    if name == "etcd":
        if shutil.which("etcd") is None:
            return "no `etcd` binary on PATH (apt-get install etcd-server)"
        if not os.path.isdir("/dev/shm"):
            return "no /dev/shm for etcd's data directory"
    if name == "pysyncobj":
        try:
            import pysyncobj  # type: ignore[import-untyped]  # noqa: F401
            import tornado  # noqa: F401
        except ImportError as exc:
            return f"cannot import {exc.name} (pip install pysyncobj)"
    return None


FACTORIES: dict[str, Callable[[int, float, float], System]] = {
    "kvcluster": KvclusterSystem,
    "etcd": EtcdSystem,
    "pysyncobj": PySyncObjSystem,
}
WATCHING = ("kvcluster", "etcd")  # the systems that speak etcd's /v3/kv/put and /v3/watch

# ----------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Load:
    clients: int
    read: bool = False
    serializable: bool = False


def run_load(
    system: System, endpoints: list[str], load: Load, duration: float, warmup: float, seed: int
) -> LoadResult:
    """loadgen.run_load with the request bytes built by `system` (in a fresh thread)."""
    box: list[LoadResult | BaseException] = []

    def main() -> None:
        try:
            box.append(asyncio.run(_run(system, endpoints, load, duration, warmup, seed)))
        except BaseException as exc:
            box.append(exc)

    t = threading.Thread(target=main, name="peers-loadgen", daemon=True)
    t.start()
    t.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


async def _run(
    system: System, endpoints: list[str], load: Load, duration: float, warmup: float, seed: int
) -> LoadResult:
    rec = _Recorder()
    pids = system.pids
    t_warm = time.monotonic() + warmup
    t_end = t_warm + duration
    meter: dict[str, float] = {}

    async def measure() -> None:
        await asyncio.sleep(max(0.0, t_warm - time.monotonic()))
        meter["cpu0"], meter["machine0"] = time.thread_time(), machine_busy()
        meter["nodes0"] = sum(process_cpu(p) for p in pids)
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        meter["cpu1"], meter["machine1"] = time.thread_time(), machine_busy()
        meter["nodes1"] = sum(process_cpu(p) for p in pids)

    workers = [
        _worker(w, system, endpoints, load, t_end, rec, random.Random(seed * 100003 + w))
        for w in range(load.clients)
    ]
    await asyncio.gather(measure(), *workers)
    return rec.result((t_warm, t_end), meter)


async def _worker(
    w: int,
    system: System,
    endpoints: list[str],
    load: Load,
    t_end: float,
    rec: _Recorder,
    rnd: random.Random,
) -> None:
    target = w % len(endpoints)
    parts = urlsplit(endpoints[target])
    conn = HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    while time.monotonic() < t_end:
        key = _key(rnd.randrange(KEYS))
        if load.read:
            method, path, body = system.get(key, load.serializable)
        else:
            method, path, body = system.put(key, VALUE)
        t0 = time.monotonic()
        status, _ = await exchange(conn, method, path, body, _JSON, 5.0, rec.errors)
        t1 = time.monotonic()
        rec.start.append(t0)
        rec.latency.append(t1 - t0)
        rec.write.append(not load.read)
        rec.status.append(status)
        rec.revision.append(0)
        rec.target.append(target)
        if status == 0:
            await asyncio.sleep(0.01)
    conn.close()


_JSON = {"Content-Type": "application/json"}


# ----------------------------------------------------------------------------- metrics


@dataclass
class Sample:
    system: str
    nodes: int
    metric: str
    value: float
    client_cpu: float = float("nan")  # cores
    nodes_cpu: float = float("nan")  # cores
    machine_cpu: float = float("nan")  # cores, every process on the machine
    errors: list[str] = field(default_factory=list)


METRICS = {
    "seq_put_p50_ms": "sequential put p50 (ms, lower better)",
    "put_per_s_64": "puts/s, 64 clients",
    "lin_get_per_s_32": "linearizable gets/s, 32 clients, follower",
    "ser_get_per_s_32": "serializable gets/s, 32 clients",
    "failover_100ms_ms": "kill -9 leader -> ack, 100/10 ms (ms, lower better)",
    "failover_1000ms_ms": "kill -9 leader -> ack, 1000/100 ms (ms, lower better)",
    "watch_p50_ms": "put -> event at a follower's watcher, p50 (ms, lower better)",
    "watch_p99_ms": "put -> event at a follower's watcher, p99 (ms, lower better)",
    "watch_put_p50_ms": "the same puts' own latency (/v3), p50 (ms)",
    "watch_delivery_p50_ms": "event after the put's answer, p50 (ms, lower better)",
}
# Each watch metric: the per-put figure it is a percentile of, and which percentile.
WATCH = {
    "watch_p50_ms": ("watch_ms", 50.0),
    "watch_p99_ms": ("watch_ms", 99.0),
    "watch_put_p50_ms": ("commit_ms", 50.0),
    "watch_delivery_p50_ms": ("delivery_ms", 50.0),
}
DIFFERENCES = {"watch_delivery_p50_ms"}  # compared as kvcluster - peer, in ms


@dataclass
class WatchPuts:
    """One watch round's puts (those whose event arrived with the put's revision)."""

    system: str
    nodes: int
    round: int
    commit_ms: np.ndarray
    watch_ms: np.ndarray
    missing: int  # puts without a 200 answer or without their event

    @property
    def delivery_ms(self) -> np.ndarray:
        return self.watch_ms - self.commit_ms


def _ok(res: LoadResult, read: bool) -> np.ndarray:
    good = (res.status == 200) | ((res.status == 404) if read else False)
    return np.asarray(res.measured() & good)


def throughput_round(
    sys_: System, n: int, seconds: float, warmup: float, seed: int
) -> list[Sample]:
    leader = sys_.wait_for_leader()
    follower = (leader + 1) % n
    eps = sys_.endpoints
    out: list[Sample] = []

    def one(metric: str, endpoint: str, load: Load) -> LoadResult:
        res = run_load(sys_, [endpoint], load, seconds, warmup, seed)
        mask = _ok(res, load.read)
        dur = res.window[1] - res.window[0]
        if metric == "seq_put_p50_ms":
            value = float(np.median(res.latency[mask]) * 1000) if mask.any() else float("nan")
        else:
            value = float(mask.sum() / dur)
        out.append(
            Sample(
                sys_.name,
                n,
                metric,
                value,
                res.loadgen_cpu_s / dur,
                res.nodes_cpu_s / dur,
                res.machine_cpu_s / dur,
                res.errors[:3],
            )
        )
        return res

    one("seq_put_p50_ms", eps[leader], Load(1))
    one("put_per_s_64", eps[leader], Load(64))  # also writes every key the reads ask for
    one("lin_get_per_s_32", eps[follower], Load(32, read=True))
    one("ser_get_per_s_32", eps[follower], Load(32, read=True, serializable=True))
    return out


def watch_round(
    sys_: System, n: int, r: int, puts: int, load: int, interval: float
) -> tuple[list[Sample], WatchPuts]:
    """Puts to the leader, watched on a follower (the only node when n = 1)."""
    leader = sys_.wait_for_leader()
    eps, pids = sys_.endpoints, sys_.pids
    nodes0, machine0 = sum(process_cpu(p) for p in pids), machine_busy()
    run = measure_watch(
        eps[leader],
        eps[(leader + 1) % n],
        puts=puts,
        warmup=10,
        interval=interval,
        value_size=VALUE_SIZE,
        load_clients=load,
        seed=r,
    )
    nodes1, machine1 = sum(process_cpu(p) for p in pids), machine_busy()
    ok = run.complete()
    got = WatchPuts(sys_.name, n, r, run.commit_ms[ok], run.watch_ms[ok], int((~ok).sum()))
    if got.missing:
        print(f"  {sys_.name}: {got.missing} puts without their event: {run.errors[:1]}")
    dur = run.window[1] - run.window[0]
    cpu = (run.loadgen_cpu_s / dur, (nodes1 - nodes0) / dur, (machine1 - machine0) / dur)
    samples = [
        Sample(sys_.name, n, metric, _percentile(getattr(got, per_put), q), *cpu, run.errors[:3])
        for metric, (per_put, q) in WATCH.items()
    ]
    return samples, got


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if values.size else float("nan")


def failover_trial(sys_: System, election: float, heartbeat: float) -> float:
    """Seconds from SIGKILL of the leader to the first acknowledged write (any survivor)."""
    leader = sys_.wait_for_leader()
    eps = sys_.endpoints
    method, path, body = sys_.put(_key(0), VALUE)
    code, _ = _http(eps[leader], method, path, body, 5.0)
    if code != 200:
        raise RuntimeError(f"{sys_.name}: a write before the kill answered {code}")
    # A crash lands anywhere in the heartbeat cycle, and what the timeouts allow
    # counts on that (half a heartbeat of silence on average). Killing right
    # after the write would start every follower's clock at the kill instead.
    # All three systems send heartbeats on a fixed period, whatever the writes.
    time.sleep(random.uniform(heartbeat, 2 * heartbeat))
    if sys_.wait_for_leader() != leader:
        raise RuntimeError(f"{sys_.name}: the leader changed before the kill")
    survivors = [e for i, e in enumerate(eps) if i != leader]
    done = threading.Event()
    acked: list[float] = []
    lock = threading.Lock()
    # A client that retries with short timeouts would measure its own timeout: a
    # node that has lost its leader may sit on a write until its own request
    # timeout (etcd: 5 s + 2 x election). So a new attempt starts every `interval`
    # on the next survivor, each on its own connection, without waiting for the
    # ones still pending; the first acknowledgement counts.
    interval = 0.01 if election <= 0.2 else 0.025

    def attempt(ep: str, i: int) -> None:
        m, p, b = sys_.put(_key(i % KEYS), VALUE)
        try:
            code, _ = _http(ep, m, p, b, timeout=30.0)
        except OSError:
            return
        if code == 200:
            with lock:
                acked.append(time.monotonic() - t_kill)
            done.set()

    t_kill = time.monotonic()
    sys_.kill(leader)
    i = 0
    while not done.is_set() and time.monotonic() - t_kill < 30:
        i += 1
        ep = survivors[i % len(survivors)]
        threading.Thread(target=attempt, args=(ep, i), daemon=True).start()
        done.wait(interval)
    if not acked:
        raise RuntimeError(f"{sys_.name}: no write acknowledged within 30 s of the kill")
    return min(acked)


# ----------------------------------------------------------------------------- driver


def _rotated(xs: list[str], k: int) -> list[str]:
    if not xs:
        return xs
    k %= len(xs)
    return xs[k:] + xs[:k]


@contextlib.contextmanager
def started(
    name: str, n: int, election: float, heartbeat: float, args: argparse.Namespace
) -> Iterator[System]:
    if name == "pysyncobj":
        s: System = PySyncObjSystem(n, election, heartbeat, batch=args.pysyncobj_batch)
    else:
        s = FACTORIES[name](n, election, heartbeat)
    with s:
        yield s


def run(args: argparse.Namespace) -> tuple[list[Sample], list[WatchPuts]]:
    systems: list[str] = []
    for name in args.systems:
        why = available(name)
        if why:
            print(f"skipping {name}: {why}", flush=True)
        else:
            systems.append(name)
    samples: list[Sample] = []
    watched: list[WatchPuts] = []
    turn = -1
    for n in args.nodes:
        for r in range(args.rounds):
            turn += 1  # each round starts with the next system
            for name in _rotated(systems, turn):
                print(f"[{n} nodes] throughput round {r + 1}/{args.rounds}: {name}", flush=True)
                try:
                    with started(name, n, 1.0, 0.1, args) as s:
                        got = throughput_round(s, n, args.seconds, args.warmup, seed=r)
                except Exception as exc:  # one system failing must not stop the others
                    print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                samples += got
                for x in got:
                    print(
                        f"  {x.metric:18} {x.value:10.1f}   client {x.client_cpu:.2f} cores,"
                        f" nodes {x.nodes_cpu:.2f}, machine {x.machine_cpu:.2f}"
                        f" {x.errors[:1] or ''}",
                        flush=True,
                    )
        for election, heartbeat, metric in (
            (0.1, 0.01, "failover_100ms_ms"),
            (1.0, 0.1, "failover_1000ms_ms"),
        ):
            for t in range(args.trials):
                turn += 1
                for name in _rotated(systems, turn):
                    try:
                        with started(name, n, election, heartbeat, args) as s:
                            v = failover_trial(s, election, heartbeat) * 1000
                    except Exception as exc:
                        print(f"  {name} {metric} failed: {type(exc).__name__}: {exc}", flush=True)
                        continue
                    print(f"[{n} nodes] {metric} trial {t + 1}: {name} {v:.0f} ms", flush=True)
                    samples.append(Sample(name, n, metric, v))
        watchers = [name for name in systems if name in WATCHING]
        for r in range(args.watch_rounds):
            turn += 1
            for name in _rotated(watchers, turn):
                print(f"[{n} nodes] watch round {r + 1}/{args.watch_rounds}: {name}", flush=True)
                try:
                    with started(name, n, 1.0, 0.1, args) as s:
                        got, puts = watch_round(
                            s, n, r, args.watch_puts, args.watch_load, args.watch_interval_ms / 1000
                        )
                except Exception as exc:
                    print(f"  {name} watch failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                samples += got
                watched.append(puts)
                line = ", ".join(f"{x.metric} {x.value:.2f}" for x in got)
                print(f"  {line}; client {got[0].client_cpu:.2f} cores", flush=True)
    return samples, watched


def summarize(
    samples: list[Sample],
    systems: list[str],
    nodes: list[int],
    watched: list[WatchPuts] | None = None,
) -> list[dict[str, Any]]:
    """One row per cluster size and metric that was measured."""
    rows: list[dict[str, Any]] = []
    for n in nodes:
        for metric, label in METRICS.items():
            if not any((s.nodes, s.metric) == (n, metric) for s in samples):
                continue  # not run (--rounds 0, --trials 0, --watch-rounds 0)
            row: dict[str, Any] = {"nodes": n, "metric": metric, "label": label}
            cpu: list[float] = []
            for name in systems:
                vals = [
                    s.value for s in samples if (s.system, s.nodes, s.metric) == (name, n, metric)
                ]
                vals = [v for v in vals if v == v]
                row[name] = statistics.median(vals) if vals else float("nan")
                row[f"{name}_samples"] = len(vals)
                cpu += [
                    s.client_cpu
                    for s in samples
                    if (s.system, s.nodes, s.metric) == (name, n, metric)
                    and s.client_cpu == s.client_cpu
                ]
            for name in systems:
                if name != "kvcluster" and "kvcluster" in systems:
                    peer = row[name]
                    row[f"kvcluster/{name}"] = row["kvcluster"] / peer if peer else float("nan")
            row["client_cpu_max"] = max(cpu) if cpu else float("nan")
            if metric in FAILOVER:
                ours = [
                    s.value
                    for s in samples
                    if (s.system, s.nodes, s.metric) == ("kvcluster", n, metric)
                ]
                row["kvcluster_mean"] = statistics.fmean(ours) if ours else float("nan")
                row["allowed_ms"] = _allowed_ms(metric, n, samples)
                for name in systems:
                    theirs = [
                        s.value
                        for s in samples
                        if (s.system, s.nodes, s.metric) == (name, n, metric)
                    ]
                    if name != "kvcluster" and ours and theirs:
                        lo, hi = median_ratio_ci(ours, theirs)
                        row[f"kvcluster/{name} 95% low"], row[f"kvcluster/{name} 95% high"] = lo, hi
            if metric in WATCH:
                _watch_row(row, metric, n, systems, watched or [])
            rows.append(row)
    return rows


def _watch_row(
    row: dict[str, Any], metric: str, n: int, systems: list[str], watched: list[WatchPuts]
) -> None:
    """A watch metric over every put of every round, with two-level bootstrap intervals."""
    per_put, q = WATCH[metric]
    rounds = {
        name: [getattr(w, per_put) for w in watched if (w.system, w.nodes) == (name, n)]
        for name in systems
    }
    for name, rs in rounds.items():
        if not rs:
            continue
        row[name] = _percentile(np.concatenate(rs), q)
        row[f"{name}_puts"] = sum(r.size for r in rs)
        row[f"{name}_missing"] = sum(w.missing for w in watched if (w.system, w.nodes) == (name, n))
        row[f"{name} 95% low"], row[f"{name} 95% high"] = nested_ci(rs, None, q)
    if rounds.get("kvcluster"):
        for name in systems:
            if name == "kvcluster" or not rounds.get(name):
                continue
            if metric in DIFFERENCES:  # near zero, either sign: a ratio would mean nothing
                diff = f"kvcluster-{name}"
                row[f"kvcluster/{name}"] = float("nan")
                row[diff] = row["kvcluster"] - row[name]
                lo, hi = nested_ci(rounds["kvcluster"], rounds[name], q, compare="difference")
                row[f"{diff} 95% low"], row[f"{diff} 95% high"] = lo, hi
                continue
            peer = row[name]
            row[f"kvcluster/{name}"] = row["kvcluster"] / peer if peer else float("nan")
            lo, hi = nested_ci(rounds["kvcluster"], rounds[name], q)
            row[f"kvcluster/{name} 95% low"], row[f"kvcluster/{name} 95% high"] = lo, hi


def nested_ci(
    ours: list[np.ndarray],
    theirs: list[np.ndarray] | None,
    q: float,
    level: float = 0.95,
    draws: int = 2000,
    compare: str = "ratio",
) -> tuple[float, float]:
    """Bootstrap interval of the q-th percentile of `ours`, or of its ratio to (or
    difference from, `compare`) that of `theirs`.

    Each list holds one array per round (one cluster each). A draw picks as many
    rounds as there are, with replacement, then the puts within each, with
    replacement: clusters differ more than the puts of one cluster do, and
    resampling the puts alone would give too narrow an interval."""
    rng = np.random.default_rng(0)

    def draw(rounds: list[np.ndarray]) -> np.ndarray:
        out = np.empty(draws)
        for d in range(draws):
            picked = rng.integers(0, len(rounds), len(rounds))
            values = np.concatenate([rng.choice(rounds[i], rounds[i].size) for i in picked])
            out[d] = np.percentile(values, q)
        return out

    if theirs is None:
        stat = draw(ours)
    elif compare == "difference":
        stat = draw(ours) - draw(theirs)
    else:
        stat = draw(ours) / draw(theirs)
    lo, hi = np.quantile(stat, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def median_ratio_ci(
    ours: list[float], theirs: list[float], level: float = 0.95, draws: int = 4000
) -> tuple[float, float]:
    """Bootstrap interval of median(ours) / median(theirs).

    A failover is the first of several random timeouts: with 25 trials its
    median moves by 10-15% from run to run, so a ratio of medians means little
    without its interval."""
    rng = np.random.default_rng(0)
    a, b = np.asarray(ours), np.asarray(theirs)
    ma = np.median(rng.choice(a, (draws, a.size)), axis=1)
    mb = np.median(rng.choice(b, (draws, b.size)), axis=1)
    lo, hi = np.quantile(ma / mb, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


FAILOVER = {"failover_100ms_ms": (100.0, 10.0), "failover_1000ms_ms": (1000.0, 100.0)}


def _allowed_ms(metric: str, n: int, samples: list[Sample]) -> float:
    """What the timeouts allow (issue #6): the expected first timeout among the
    s = n - 1 survivors, lo + (hi - lo)/(s + 1), less half a heartbeat (the
    kill lands anywhere in one), plus a vote round, taken as kvcluster's
    sequential put p50 (one replication round trip, client included)."""
    t, heartbeat = FAILOVER[metric]
    rounds = [
        s.value
        for s in samples
        if (s.system, s.nodes, s.metric) == ("kvcluster", n, "seq_put_p50_ms")
    ]
    vote = statistics.median(rounds) if rounds else 1.0
    return t + t / n - heartbeat / 2 + vote


def print_table(rows: list[dict[str, Any]], systems: list[str]) -> None:
    peers = [s for s in systems if s != "kvcluster"] if "kvcluster" in systems else []
    cols = ["n", "metric", *systems, *[f"kv/{p}" for p in peers], "client cpu"]
    table = []
    for r in rows:
        cells = [str(r["nodes"]), r["label"]]
        cells += [f"{r[s]:.1f}" for s in systems]
        cells += [f"{r[f'kvcluster/{p}']:.2f}" for p in peers]
        c = r["client_cpu_max"]
        cells.append("" if c != c else f"{c:.2f}")
        table.append(cells)
    widths = [max(len(x) for x in col) for col in zip(cols, *table, strict=True)]
    print()
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for cells in table:
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    print(
        "\nvalues are medians over rounds/trials; kv/peer = kvcluster/peer; 'client cpu' is the"
        " busiest load-generator run for that row, in cores (of 2 here)"
    )
    for r in rows:
        if r["metric"] in FAILOVER and r.get("kvcluster_samples"):
            allowed, mean, median = r["allowed_ms"], r["kvcluster_mean"], r["kvcluster"]
            cis = "".join(
                f"; kv/{p} {r[f'kvcluster/{p}']:.2f}, 95% interval"
                f" {r[f'kvcluster/{p} 95% low']:.2f}-{r[f'kvcluster/{p} 95% high']:.2f}"
                for p in peers
                if f"kvcluster/{p} 95% low" in r
            )
            print(
                f"{r['nodes']} nodes, {r['label'].split(', ')[1].split(' (')[0]}:"
                f" {r['kvcluster_samples']} trials; the timeouts allow {allowed:.0f} ms"
                f" (lo + (hi-lo)/n - hb/2 + a vote round); kvcluster median {median:.0f} ms"
                f" = {median / allowed:.2f}x, mean {mean:.0f} ms = {mean / allowed:.2f}x{cis}"
            )
    for r in rows:
        if r["metric"] not in WATCH:
            continue
        here = [s for s in systems if f"{s} 95% low" in r]
        parts = [
            f"{s} {r[s]:.2f} ms ({r[f'{s} 95% low']:.2f} to {r[f'{s} 95% high']:.2f};"
            f" {r[f'{s}_samples']} rounds, {r[f'{s}_puts']} puts, {r[f'{s}_missing']} missing)"
            for s in here
        ]
        parts += [
            f"kv/{p} {r[f'kvcluster/{p}']:.2f} ({r[f'kvcluster/{p} 95% low']:.2f}"
            f" to {r[f'kvcluster/{p} 95% high']:.2f})"
            for p in peers
            if f"kvcluster/{p} 95% low" in r
        ]
        parts += [
            f"kv-{p} {r[f'kvcluster-{p}']:+.2f} ms ({r[f'kvcluster-{p} 95% low']:+.2f}"
            f" to {r[f'kvcluster-{p} 95% high']:+.2f})"
            for p in peers
            if f"kvcluster-{p} 95% low" in r
        ]
        if parts:
            print(f"{r['nodes']} nodes, {r['metric']}: " + "; ".join(parts))
    if any(r["metric"] in WATCH for r in rows):
        print(
            "watch rows: percentiles over every put of every round (95% intervals: rounds"
            " resampled, then the puts within each); the delivery row compares kvcluster"
            " - peer, in ms"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nodes", default="3,5", help="cluster sizes, comma-separated")
    p.add_argument("--systems", default="kvcluster,etcd,pysyncobj")
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per load point")
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--rounds", type=int, default=2, help="throughput rounds per system")
    p.add_argument("--trials", type=int, default=5, help="failover trials per system and timing")
    p.add_argument("--watch-rounds", type=int, default=2, help="watch-latency rounds per system")
    p.add_argument("--watch-puts", type=int, default=200, help="measured puts per watch round")
    p.add_argument(
        "--watch-load", type=int, default=0, help="background writers to the leader in watch rounds"
    )
    p.add_argument(
        "--watch-interval-ms",
        type=float,
        default=5.0,
        help="mean pause between watched puts (0: back to back, the processes never sleep)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 s points, 1 round, 3 failover trials, 1 watch round of 50 puts",
    )
    p.add_argument("--csv", default="peers-results.csv")
    p.add_argument(
        "--pysyncobj-batch",
        action="store_true",
        help="PySyncObj's default appendEntriesUseBatch=True (entries wait for the next"
        " heartbeat); by default they are sent at once, as kvcluster and etcd do",
    )
    args = p.parse_args(argv)
    args.nodes = [int(x) for x in args.nodes.split(",") if x]
    args.systems = [x.strip() for x in args.systems.split(",") if x.strip()]
    unknown = set(args.systems) - set(FACTORIES)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {sorted(FACTORIES)}")
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.trials = 1.0, 0.3, 1, 3
        args.watch_rounds, args.watch_puts = 1, 50
    try:
        samples, watched = run(args)
    finally:
        _kill_children()
    ran = [s for s in args.systems if any(x.system == s for x in samples)]
    rows = summarize(samples, ran, args.nodes, watched)
    if rows and ran:
        print_table(rows, ran)
        with open(args.csv, "w", newline="") as f:
            fields = list(dict.fromkeys(k for r in rows for k in r))  # failover rows add two
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        with open(Path(args.csv).with_suffix(".samples.csv"), "w", newline="") as f:
            w2 = csv.writer(f)
            w2.writerow(
                ["system", "nodes", "metric", "value", "client_cpu", "nodes_cpu", "machine_cpu"]
            )
            for s in samples:
                w2.writerow(
                    [s.system, s.nodes, s.metric, s.value, s.client_cpu, s.nodes_cpu, s.machine_cpu]
                )
        written = [args.csv, Path(args.csv).with_suffix(".samples.csv")]
        if watched:
            written.append(Path(args.csv).with_suffix(".watch.csv"))
            with open(written[-1], "w", newline="") as f:
                w3 = csv.writer(f)
                w3.writerow(["system", "nodes", "round", "put", "commit_ms", "watch_ms"])
                for wp in watched:
                    for i, (c, wm) in enumerate(zip(wp.commit_ms, wp.watch_ms, strict=True)):
                        w3.writerow([wp.system, wp.nodes, wp.round, i, f"{c:.4f}", f"{wm:.4f}"])
        print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
