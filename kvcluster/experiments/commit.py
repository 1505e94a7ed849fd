"""Write-commit latency and throughput on real clusters.

`commit_latency`: one client writes back to back; one row per write, for
latency distributions (p50/p90/p99/max) across cluster sizes and value sizes.
`commit_throughput`: 1 to 256 concurrent clients; one row per run, with the
throughput, latency percentiles and the CPU used by the nodes and by the load
generator (on 2 cores the two compete; `loadgen_cpu` says how much it took).

Writes go to the leader or are spread over the followers, which forward them
(one more hop). Clusters use the default timeouts (500-1000 ms): under full
load on 2 cores, shorter ones cause elections that have nothing to do with
commit latency.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..cluster import Cluster
from .loadgen import Workload
from .progress import progress_bar
from .runner import loadavg, run_on, summarize, target_nodes


def commit_latency(
    sizes: Sequence[int] = (1, 3, 5),
    value_sizes: Sequence[int] = (100,),
    *,
    targets: Sequence[str] = ("leader",),
    duration: float = 3.0,
    warmup: float = 0.5,
    progress: bool = True,
    **cluster_options: Any,
) -> pd.DataFrame:
    """One client writing back to back; one row per acknowledged write."""
    frames = []
    todo = list(itertools.product(value_sizes, targets))
    with progress_bar(len(sizes) * len(todo), "commit latency", progress) as bar:
        for n in sizes:
            with Cluster(n, **cluster_options) as cluster:
                leader = cluster.wait_for_leader()
                for value_size, target in todo:
                    bar.set_postfix_str(f"n={n} value={value_size}B to {target}")
                    nodes = target_nodes(cluster, leader, target)
                    r = run_on(cluster, nodes, 1, Workload(0.0, value_size), duration, warmup)
                    ok = r.measured() & (r.status == 200)
                    frames.append(
                        pd.DataFrame(
                            {
                                "n": n,
                                "value_size": value_size,
                                "target": target,
                                "clients": 1,
                                "write": range(int(ok.sum())),
                                "t_s": r.start[ok] - r.window[0],
                                "latency_ms": r.latency[ok] * 1000,
                            }
                        )
                    )
                    bar.update()
    return pd.concat(frames, ignore_index=True)


def commit_throughput(
    sizes: Sequence[int] = (3,),
    value_sizes: Sequence[int] = (100,),
    *,
    clients: Sequence[int] = (1, 4, 16, 64, 256),
    targets: Sequence[str] = ("leader", "followers"),
    duration: float = 2.0,
    warmup: float = 0.5,
    progress: bool = True,
    **cluster_options: Any,
) -> pd.DataFrame:
    """Closed-loop writers at each concurrency; one row per run."""
    rows = []
    todo = list(itertools.product(value_sizes, targets, clients))
    with progress_bar(len(sizes) * len(todo), "commit throughput", progress) as bar:
        for n in sizes:
            with Cluster(n, **cluster_options) as cluster:
                leader = cluster.wait_for_leader()
                for value_size, target, c in todo:
                    bar.set_postfix_str(f"n={n} value={value_size}B to {target}, {c} clients")
                    nodes = target_nodes(cluster, leader, target)
                    before = loadavg()
                    r = run_on(cluster, nodes, c, Workload(0.0, value_size), duration, warmup)
                    rows.append(
                        {
                            "n": n,
                            "value_size": value_size,
                            "target": target,
                            "clients": c,
                            **summarize(r),
                            "loadavg": before,
                        }
                    )
                    bar.update()
    return pd.DataFrame(rows)
