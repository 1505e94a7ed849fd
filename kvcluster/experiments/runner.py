"""What the commit and read experiments share: picking targets, running a load, summing up."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..cluster import Cluster
from .loadgen import LoadResult, Workload, run_load

TARGETS = ("leader", "followers", "all")


def target_nodes(cluster: Cluster, leader: int, target: str) -> list[int]:
    """The nodes a load goes to: the leader, the followers (leader if none), or all."""
    n = len(cluster.nodes)
    if target == "leader":
        return [leader]
    if target == "followers":
        return [i for i in range(n) if i != leader] or [leader]
    if target == "all":
        return list(range(n))
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def loadavg() -> float:
    """The 1-minute load average, recorded with each run: this machine may be shared."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def run_on(
    cluster: Cluster,
    nodes: list[int],
    clients: int,
    workload: Workload,
    duration: float,
    warmup: float,
    seed: int = 0,
) -> LoadResult:
    """Run a load against `nodes` of `cluster`, metering the CPU of all its nodes."""
    pids = [h.process.pid for h in cluster.nodes if h.alive]
    endpoints = [cluster.endpoints[i] for i in nodes]
    return run_load(
        endpoints, clients, workload, duration=duration, warmup=warmup, node_pids=pids, seed=seed
    )


def populate(cluster: Cluster, leader: int, keys: int, value_size: int) -> None:
    """Write every key once, so that reads find something (and return its size)."""
    from ..client import Client

    value = "x" * value_size
    with Client(
        [cluster.endpoints[leader]],
        timeout=30,
        ca=cluster.ca_file,
        cert=cluster.cert_file,
        key=cluster.key_file,
    ) as c:
        for k in range(keys):
            c.put(f"k{k}", value)


def summarize(r: LoadResult) -> dict[str, Any]:
    """Throughput, latency percentiles, errors and CPU of one run."""
    window = r.window[1] - r.window[0]
    m = r.measured()
    ok = m & ((r.status == 200) | ((r.status == 404) & ~r.write))
    lat = r.latency[ok] * 1000
    pct = np.percentile(lat, [50, 90, 99]) if lat.size else [np.nan] * 3
    return {
        "duration_s": window,
        "ops": int(ok.sum()),
        "errors": int((m & ~ok).sum()),
        "throughput_ops_s": ok.sum() / window,
        "write_ops_s": (ok & r.write).sum() / window,
        "read_ops_s": (ok & ~r.write).sum() / window,
        "mean_ms": float(lat.mean()) if lat.size else np.nan,
        "p50_ms": float(pct[0]),
        "p90_ms": float(pct[1]),
        "p99_ms": float(pct[2]),
        "max_ms": float(lat.max()) if lat.size else np.nan,
        "loadgen_cpu": r.loadgen_cpu_s / window,  # cores
        "nodes_cpu": r.nodes_cpu_s / window,  # cores, all nodes together
        "machine_cpu": r.machine_cpu_s / window,  # cores busy on the machine, anyone's
        "first_error": r.errors[0] if r.errors else "",
    }


def stale_reads(r: LoadResult) -> dict[str, Any]:
    """Reads that missed a write acknowledged before they were sent.

    A linearizable read must reflect every write acknowledged before it began,
    so its answer's store revision must be at least the highest revision of
    those writes. Serializable reads may fall short: those are counted.
    """
    ok = (r.status == 200) | (r.status == 404)
    writes = ok & r.write & (r.revision > 0)
    reads = ok & ~r.write & r.measured()
    acked = r.start[writes] + r.latency[writes]
    order = np.argsort(acked)
    acked = acked[order]
    best = np.maximum.accumulate(r.revision[writes][order]) if acked.size else acked
    read_start = r.start[reads]
    before = np.searchsorted(acked, read_start, side="left")
    required = np.where(before > 0, best[np.maximum(before - 1, 0)] if acked.size else 0, 0)
    lag = required - r.revision[reads]
    stale = lag > 0
    return {
        "reads_checked": int(reads.sum()),
        "stale_reads": int(stale.sum()),
        "stale_fraction": float(stale.mean()) if stale.size else 0.0,
        "max_stale_revisions": int(lag.max()) if stale.any() else 0,
    }
