"""The cluster's faults, by name, for experiments.

`Cluster.kill`, `pause`, ... record each fault in the event timeline themselves
(see `Cluster.mark`), so these only give experiments and notebooks one place
to import them from. Each returns the `time.monotonic()` at which the fault
struck.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..cluster import Cluster


def kill(cluster: Cluster, i: int) -> float:
    """SIGKILL node i."""
    return cluster.kill(i)


def pause(cluster: Cluster, i: int) -> float:
    """SIGSTOP node i."""
    return cluster.pause(i)


def resume(cluster: Cluster, i: int) -> float:
    """SIGCONT a paused node i."""
    return cluster.resume(i)


def restart(cluster: Cluster, i: int) -> float:
    """Start node i again (it rejoins as a new incarnation)."""
    return cluster.restart(i)


def partition(cluster: Cluster, *groups: Sequence[int]) -> float:
    """Cut the network into `groups` (see `Cluster.partition`)."""
    return cluster.partition(*groups)


def isolate(cluster: Cluster, i: int) -> float:
    """Cut node i off from every other node."""
    return cluster.isolate(i)


def heal(cluster: Cluster) -> float:
    """Undo every partition."""
    return cluster.heal()
