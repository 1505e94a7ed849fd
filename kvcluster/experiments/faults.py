"""Cluster faults that leave a mark in the event timeline.

The same as `Cluster.kill`, `pause`, ... but each is also recorded (see
`events.mark`), so `plot_timeline` can show the crash that a node's own event
file cannot. Each returns the `time.monotonic()` at which the fault struck.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from ..cluster import Cluster
from .events import mark


def kill(cluster: Cluster, i: int) -> float:
    """SIGKILL node i."""
    t = time.monotonic()
    cluster.kill(i)
    return mark(cluster, "kill", i, t=t)


def pause(cluster: Cluster, i: int) -> float:
    """SIGSTOP node i."""
    t = time.monotonic()
    cluster.pause(i)
    return mark(cluster, "pause", i, t=t)


def resume(cluster: Cluster, i: int) -> float:
    """SIGCONT a paused node i."""
    t = time.monotonic()
    cluster.resume(i)
    return mark(cluster, "resume", i, t=t)


def restart(cluster: Cluster, i: int) -> float:
    """Start node i again (it rejoins as a new incarnation)."""
    t = time.monotonic()
    cluster.restart(i)
    return mark(cluster, "restart", i, t=t)


def partition(cluster: Cluster, *groups: Sequence[int]) -> float:
    """Cut the network into `groups` (see `Cluster.partition`)."""
    t = time.monotonic()
    cluster.partition(*groups)
    names = [[cluster.nodes[i].name for i in g] for g in groups]
    return mark(cluster, "partition", t=t, groups=names)


def isolate(cluster: Cluster, i: int) -> float:
    """Cut node i off from every other node."""
    t = time.monotonic()
    cluster.isolate(i)
    return mark(cluster, "isolate", i, t=t)


def heal(cluster: Cluster) -> float:
    """Undo every partition."""
    t = time.monotonic()
    cluster.heal()
    return mark(cluster, "heal", t=t)
