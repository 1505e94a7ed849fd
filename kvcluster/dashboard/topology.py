"""What the harness did to the nodes, read from the Cluster's own bookkeeping.

A node cannot report that it was killed, paused or cut off, so the view takes
these from the Cluster that did it: its node handles and its link faults
(`Cluster._faults`, what it last pushed to the nodes). All of this is read from
the dashboard's thread while the Cluster may be changing it in another, so it
is only ever copied (a dict or set copy is atomic in CPython), never iterated in
place, and the Cluster's process objects are not polled: `Process.is_alive()`
reaps the child, and two threads reaping the same child race.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..cluster import Cluster, NodeHandle


def process_state(handle: NodeHandle) -> str:
    """ "alive", "paused", "killed" or "removed", as the harness knows it."""
    if handle.removed:
        return "removed"
    process = handle.process
    if process is None:
        return "killed"  # never started, or not yet
    popen = getattr(process, "_popen", None)
    if popen is not None and getattr(popen, "returncode", None) is not None:
        return "killed"  # the Cluster already collected its exit
    state = _proc_state(process.pid)
    if state is None:
        return "killed"
    if handle.paused or state in "Tt":
        return "paused"
    return "alive"


def _proc_state(pid: int | None) -> str | None:
    """The kernel's one-letter state of `pid` ("R", "S", "T"...); None if it is gone.

    Without /proc (not Linux) every existing process counts as running."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0].decode("ascii", "replace")
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        return "R"
    return None if state in ("Z", "X", "x") else state


@dataclass(frozen=True, slots=True)
class Link:
    src: str
    dst: str
    cut: bool
    drop: float
    delay: float

    def to_json(self) -> dict[str, Any]:
        return {
            "src": self.src,
            "dst": self.dst,
            "cut": self.cut,
            "drop": self.drop,
            "delay": self.delay,
        }


def faulted_links(cluster: Cluster) -> tuple[list[Link], set[str]]:
    """The links with a fault on them, and the names of the nodes cut off from
    every other node (a partition of one, or `isolate()`).

    The Cluster blocks a partition on both ends ("block": to and from those
    peers), a one-way cut at the sender ("block_out"), and drops and delays at
    the sender; a link src -> dst is cut if either end drops what crosses it.
    """
    faults = dict(cluster._faults)  # the Cluster's bookkeeping is the truth
    nodes = [h for h in list(cluster.nodes) if not h.removed]
    empty: dict[str, Any] = {}
    blocked_out: dict[int, set[str]] = {}
    blocked_in: dict[int, set[str]] = {}
    drops: dict[int, dict[str, float]] = {}
    delays: dict[int, dict[str, float]] = {}
    for h in nodes:
        f = faults.get(h.index, empty)
        both = set(f.get("block", ()))
        blocked_out[h.index] = both | set(f.get("block_out", ()))
        blocked_in[h.index] = both
        drops[h.index] = dict(f.get("drop", empty))
        delays[h.index] = dict(f.get("delay", empty))
    links: list[Link] = []
    cut: set[tuple[str, str]] = set()
    for a in nodes:
        for b in nodes:
            if a is b:
                continue
            is_cut = b.name in blocked_out[a.index] or a.name in blocked_in[b.index]
            drop = float(drops[a.index].get(b.name, 0.0))
            delay = float(delays[a.index].get(b.name, 0.0))
            if is_cut:
                cut.add((a.name, b.name))
            if is_cut or drop or delay:
                links.append(Link(a.name, b.name, is_cut, drop, delay))
    isolated = {
        a.name
        for a in nodes
        if len(nodes) > 1
        and all((a.name, b.name) in cut and (b.name, a.name) in cut for b in nodes if b is not a)
    }
    return links, isolated
