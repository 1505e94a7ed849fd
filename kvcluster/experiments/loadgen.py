"""A closed-loop load generator that stays out of the way.

`clients` workers, each with one keep-alive connection, send requests back to
back for `duration` seconds (after `warmup` seconds that are not counted). All
workers share one asyncio loop in one thread and speak HTTP/1.1 through the
node's own internal client (`kvcluster.server.http.client.HttpConnection`,
llhttp on an asyncio.Protocol): a thread per client, or `requests`, would spend
more CPU than the nodes on a 2-core machine. The generator's own CPU time
(`loadgen_cpu_s`) and the nodes' (`nodes_cpu_s`, from /proc) over the measured
window come back with the results, so a run can show whether the load
generator was the bottleneck, and the whole machine's (`machine_cpu_s`) shows
how much other programs took.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

import numpy as np
import orjson

from ..server.http.client import ConnectionFailed, HttpConnection

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process `pid`; NaN if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return float("nan")


def machine_busy() -> float:
    """CPU seconds all cores of this machine have spent busy since boot; NaN if unknown.

    On a shared machine, what the nodes and the load generator did not use
    went partly to other programs: this is how to tell.
    """
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        guest = sum(fields[8:10])  # already counted in user and nice
        return (sum(fields) - idle - guest) / _CLOCK_TICKS
    except (OSError, ValueError, IndexError):
        return float("nan")


@dataclass(frozen=True, slots=True)
class Workload:
    """What the workers send. `read_fraction` 1.0 reads only, 0.0 writes only."""

    read_fraction: float = 0.0
    value_size: int = 100
    keys: int = 100
    consistency: str | None = None  # None: the node's read mode; or "serializable"
    timeout: float = 5.0  # per request


@dataclass
class LoadResult:
    """One row per completed request, plus what the run cost."""

    start: np.ndarray  # time.monotonic() when sent
    latency: np.ndarray  # seconds
    write: np.ndarray  # bool
    status: np.ndarray  # HTTP status, 0 if no answer
    revision: np.ndarray  # store revision in the answer, 0 if none
    target: np.ndarray  # index into the endpoints the request went to
    window: tuple[float, float]  # the measured interval (monotonic)
    loadgen_cpu_s: float
    nodes_cpu_s: float
    machine_cpu_s: float  # every process on the machine, ours included
    errors: list[str] = field(default_factory=list)

    def measured(self) -> np.ndarray:
        """Mask of the requests that completed inside the measured window."""
        lo, hi = self.window
        end = self.start + self.latency
        return (self.start >= lo) & (end <= hi)


def run_load(
    endpoints: list[str],
    clients: int,
    workload: Workload,
    *,
    duration: float = 2.0,
    warmup: float = 0.5,
    node_pids: list[int] | None = None,
    seed: int = 0,
) -> LoadResult:
    """Run the load in a fresh thread (so it also works inside a Jupyter kernel's loop).

    Worker `w` talks to `endpoints[w % len(endpoints)]`.
    """
    box: list[LoadResult | BaseException] = []

    def main() -> None:
        try:
            box.append(
                asyncio.run(
                    _run(endpoints, clients, workload, duration, warmup, node_pids or [], seed)
                )
            )
        except BaseException as exc:  # handed to the caller's thread
            box.append(exc)

    thread = threading.Thread(target=main, name="kvcluster-loadgen", daemon=True)
    thread.start()
    thread.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


class _Recorder:
    def __init__(self) -> None:
        self.start: list[float] = []
        self.latency: list[float] = []
        self.write: list[bool] = []
        self.status: list[int] = []
        self.revision: list[int] = []
        self.target: list[int] = []
        self.errors: list[str] = []

    def result(self, window: tuple[float, float], meter: dict[str, float]) -> LoadResult:
        """The requests as arrays, with the CPU `meter` read before and after."""
        return LoadResult(
            start=np.asarray(self.start, dtype=float),
            latency=np.asarray(self.latency, dtype=float),
            write=np.asarray(self.write, dtype=bool),
            status=np.asarray(self.status, dtype=int),
            revision=np.asarray(self.revision, dtype=np.int64),
            target=np.asarray(self.target, dtype=int),
            window=window,
            loadgen_cpu_s=meter["cpu1"] - meter["cpu0"],
            nodes_cpu_s=meter["nodes1"] - meter["nodes0"],
            machine_cpu_s=meter["machine1"] - meter["machine0"],
            errors=self.errors[:20],
        )


async def _run(
    endpoints: list[str],
    clients: int,
    workload: Workload,
    duration: float,
    warmup: float,
    node_pids: list[int],
    seed: int,
) -> LoadResult:
    rec = _Recorder()
    t_start = time.monotonic()
    t_warm = t_start + warmup
    t_end = t_warm + duration
    meter: dict[str, float] = {}

    async def measure() -> None:
        await asyncio.sleep(max(0.0, t_warm - time.monotonic()))
        meter["cpu0"] = time.thread_time()
        meter["nodes0"] = sum(process_cpu(p) for p in node_pids)
        meter["machine0"] = machine_busy()
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        meter["cpu1"] = time.thread_time()
        meter["nodes1"] = sum(process_cpu(p) for p in node_pids)
        meter["machine1"] = machine_busy()

    tasks = [
        _worker(w, endpoints, workload, t_end, rec, random.Random(seed * 100003 + w))
        for w in range(clients)
    ]
    await asyncio.gather(measure(), *tasks)
    return rec.result((t_warm, t_end), meter)


_REVISION = b'"revision":'


def _revision_of(body: bytes) -> int:
    i = body.find(_REVISION)
    if i < 0:
        return 0
    j = i + len(_REVISION)
    k = j
    while k < len(body) and 48 <= body[k] <= 57:
        k += 1
    return int(body[j:k]) if k > j else 0


_JSON = {"Content-Type": "application/json"}


async def _worker(
    w: int,
    endpoints: list[str],
    workload: Workload,
    t_end: float,
    rec: _Recorder,
    rnd: random.Random,
) -> None:
    target = w % len(endpoints)
    parts = urlsplit(endpoints[target])
    conn = HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80)
    client_id = b""  # a session for at-most-once writes, opened at the first write
    value = b"x" * workload.value_size
    query = f"?consistency={workload.consistency}" if workload.consistency else ""
    seq = 0
    while time.monotonic() < t_end:
        key = quote(f"k{rnd.randrange(workload.keys)}", safe="")
        is_write = rnd.random() >= workload.read_fraction
        t0 = time.monotonic()
        if is_write:
            if not client_id:
                client_id, seq = await open_session(conn, workload.timeout, rec.errors), 0
            seq += 1
            body = b'{"value":"%s","client_id":"%s","seq":%d}' % (value, client_id, seq)
            status, revision = await exchange(
                conn, "PUT", f"/v1/kv/{key}", body, _JSON, workload.timeout, rec.errors
            )
            if status == 409:
                client_id = b""  # the session expired (or none was opened): a new one
        else:
            status, revision = await exchange(
                conn, "GET", f"/v1/kv/{key}{query}", b"", None, workload.timeout, rec.errors
            )
        t1 = time.monotonic()
        rec.start.append(t0)
        rec.latency.append(t1 - t0)
        rec.write.append(is_write)
        rec.status.append(status)
        rec.revision.append(revision)
        rec.target.append(target)
        if status == 0:
            await asyncio.sleep(0.01)  # do not spin on a dead node
    conn.close()


async def open_session(conn: HttpConnection, timeout: float, errors: list[str]) -> bytes:
    """A new session id for a worker's writes, or b"" if none could be opened (the
    write then fails with 409 and counts as an error, and the next one tries again)."""
    body = b'{"nonce":"%s"}' % uuid.uuid4().hex.encode()
    try:
        response = await conn.request("POST", "/v1/sessions", body, _JSON, timeout)
        client_id = orjson.loads(response.body).get("client_id", "")
    except (ConnectionFailed, OSError, ValueError, AttributeError) as exc:
        if len(errors) < 20:
            errors.append(f"open session: {type(exc).__name__}: {exc}")
        return b""
    return client_id.encode() if isinstance(client_id, str) else b""


async def exchange(
    conn: HttpConnection,
    method: str,
    target: str,
    body: bytes,
    headers: Mapping[str, str] | None,
    timeout: float,
    errors: list[str],
) -> tuple[int, int]:
    """Send one request on `conn`, a keep-alive connection that reconnects when needed.

    Returns the status (0 if no answer came within `timeout`, connecting
    included) and the revision the answer carried (0 if none); a failure's
    reason goes to `errors` (the first 20). Shared by every worker loop, so
    that all systems measured are driven the same way.
    """
    try:
        response = await conn.request(method, target, body, headers, timeout)
    except (ConnectionFailed, OSError, ValueError) as exc:  # the connection is closed
        if len(errors) < 20:
            errors.append(f"{type(exc).__name__}: {exc}")
        return 0, 0
    return response.status, _revision_of(response.body)
