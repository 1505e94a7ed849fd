"""Read throughput, latency and staleness for each read mode.

For every cluster size and read mode (`proxy`, `read_index`, `lease`,
`serializable`; a cluster setting, so one cluster per mode) closed-loop
clients send a mix of reads and writes to the leader or spread over all nodes.
Each run's row has the throughput and latency percentiles, and the number of
stale reads: reads whose answer's store revision is lower than that of a write
acknowledged before the read was sent. Only `serializable` may have any; a
stale read in another mode would be a linearizability bug.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pandas as pd

from ..cluster import Cluster
from ..server.config import READ_MODES
from .loadgen import Workload
from .progress import progress_bar
from .runner import loadavg, populate, run_on, stale_reads, summarize, target_nodes

MIXES = (1.0, 0.99, 0.95, 0.5)  # read fraction: 100:0, 99:1, 95:5, 50:50


def run_reads(
    sizes: Sequence[int] = (3,),
    modes: Sequence[str] = READ_MODES,
    *,
    targets: Sequence[str] = ("leader", "all"),
    read_fractions: Sequence[float] = MIXES,
    clients: Sequence[int] = (16,),
    value_size: int = 100,
    keys: int = 100,
    duration: float = 2.0,
    warmup: float = 0.5,
    progress: bool = True,
    **cluster_options: Any,
) -> pd.DataFrame:
    """One row per run (size, mode, target, mix, clients)."""
    rows = []
    todo = list(itertools.product(targets, read_fractions, clients))
    total = len(sizes) * len(modes) * len(todo)
    with progress_bar(total, "reads", progress) as bar:
        for n, mode in itertools.product(sizes, modes):
            with Cluster(n, read_mode=mode, **cluster_options) as cluster:
                leader = cluster.wait_for_leader()
                populate(cluster, leader, keys, value_size)
                for target, fraction, c in todo:
                    bar.set_postfix_str(f"n={n} {mode} to {target}, {fraction:.0%} reads, {c}")
                    nodes = target_nodes(cluster, leader, target)
                    workload = Workload(fraction, value_size, keys)
                    before = loadavg()
                    r = run_on(cluster, nodes, c, workload, duration, warmup)
                    rows.append(
                        {
                            "n": n,
                            "read_mode": mode,
                            "target": target,
                            "read_fraction": fraction,
                            "mix": f"{fraction * 100:g}:{(1 - fraction) * 100:g}",
                            "clients": c,
                            "value_size": value_size,
                            **summarize(r),
                            **stale_reads(r),
                            "loadavg": before,
                        }
                    )
                    bar.update()
    return pd.DataFrame(rows)
