"""Does watching a cluster slow it down? The live view on a 9-node cluster under full load.

    python bench/dashboard_overhead.py                  # 9 nodes, 32 writers, 3 x 5 s each way
    python bench/dashboard_overhead.py --nodes 5 --rounds 5 --seconds 10

Why: the live view (issue 14) asks every node for GET /v1/status ten times a
second while a page is connected, and each node counts every Raft message it
sends. Neither may cost the nodes anything a user could notice. This runs the
experiments' closed-loop load generator (writes only, spread over every node,
so every message type the page draws flows) with and without a page
connected, interleaved round by round so that a machine getting busier or
quieter hurts both the same, and prints per run:

- ops/s, and the nodes' CPU per operation (from /proc): what the page costs
  the nodes;
- the frames the page got per second, their median size, and the longest gap
  between two frames: whether the view keeps up;
- the CPU of the dashboard's thread in the harness (cores).

Medians over the rounds at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import threading
import time
from typing import Any

from tornado.websocket import websocket_connect

from kvcluster.cluster import Cluster
from kvcluster.experiments.loadgen import Workload, run_load

_TICKS = 100.0


def thread_cpu(native_id: int | None) -> float:
    """CPU seconds of one thread of this process (from /proc)."""
    try:
        with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return float("nan")


class Watcher:
    """A page that only reads: when each frame came and how big it was."""

    def __init__(self, url: str) -> None:
        self.arrivals: list[tuple[float, int]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._task = asyncio.run_coroutine_threadsafe(self._read(url), self._loop)

    async def _read(self, url: str) -> None:
        conn = await websocket_connect(url, max_message_size=64 << 20)
        try:
            while (text := await conn.read_message()) is not None:
                self.arrivals.append((time.monotonic(), len(text)))
        finally:
            conn.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def run(cluster: Cluster, watched: bool, args: argparse.Namespace) -> dict[str, Any]:
    view = cluster.dashboard()
    watcher = Watcher(f"ws://127.0.0.1:{view.port}/ws?token={view.token}") if watched else None
    feed_thread = view._thread.native_id
    try:
        cpu0 = thread_cpu(feed_thread)
        result = run_load(
            cluster.endpoints,
            args.clients,
            Workload(read_fraction=0.0),
            duration=args.seconds,
            warmup=1.0,
            node_pids=[h.process.pid for h in cluster.nodes],
        )
        cpu1 = thread_cpu(feed_thread)
    finally:
        if watcher is not None:
            watcher.close()
    ok = result.measured() & (result.status == 200)
    ops = int(ok.sum())
    lo, hi = result.window
    row: dict[str, Any] = {
        "page": "on" if watched else "off",
        "ops_s": ops / (hi - lo),
        "node_cpu_us_per_op": result.nodes_cpu_s / max(ops, 1) * 1e6,
        "view_cores": (cpu1 - cpu0) / (hi - lo + 1.0),
    }
    if watcher is not None:
        inside = [(t, n) for t, n in watcher.arrivals if lo <= t <= hi]
        times = [t for t, _ in inside]
        row["frames_s"] = len(inside) / (hi - lo)
        row["frame_kib"] = statistics.median(n for _, n in inside) / 1024 if inside else 0.0
        gaps = [b - a for a, b in itertools.pairwise(times)]
        row["max_gap_ms"] = max(gaps) * 1000 if gaps else float("nan")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=9)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with Cluster(args.nodes) as cluster:
        cluster.wait_for_leader(60)
        for r in range(args.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for watched in order:
                row = run(cluster, watched, args)
                rows.append(row)
                print(
                    "  ".join(
                        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in row.items()
                    ),
                    flush=True,
                )
    print(f"medians over {args.rounds} rounds ({args.nodes} nodes, {args.clients} writers):")
    for page in ("off", "on"):
        mine = [r for r in rows if r["page"] == page]
        keys = [k for k in mine[0] if k != "page"]
        medians = {k: statistics.median(r[k] for r in mine) for k in keys}
        print(f"  page {page}: " + "  ".join(f"{k}={v:.3g}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
