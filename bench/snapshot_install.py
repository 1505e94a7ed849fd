"""A snapshot of a 1,000,000-key store, taken and installed on a lagging follower.

Issue 11 asks that taking, serializing and fsyncing a snapshot does not stall
the event loop, and that InstallSnapshot travels in bounded chunks: on a store
of 1,000,000 keys (about 100 MB), no heartbeat gap above twice the interval
and no election while a snapshot is taken or installed on a lagging follower.
This script does exactly that and reports what the nodes saw:

1. a 3-node cluster (default timeouts: heartbeat 100 ms, election 500-1000 ms)
   with one follower paused (SIGSTOP): it will lag;
2. `--keys` puts of `--value-bytes` values through the leader, 64 at a time;
   the leader and the running follower snapshot every `--snapshot-every`
   entries and compact their logs, so the paused follower's entries are gone;
3. the follower is resumed: the leader sends it the snapshot in 1 MiB chunks,
   it verifies and decodes it in its worker thread, installs it, catches up;
4. from the nodes' events: every heartbeat that came more than two intervals
   after the previous one (`leader_silent`), every event-loop stall longer
   than an interval (`loop_stall`), every garbage collection over 20 ms
   (`gc_pause`), every election, and the snapshot timings; each split into
   those that overlap a snapshot being taken (on any node) or installed, and
   the rest (the load itself: a store growing to a million keys makes
   Python's full collections longer as it grows).

    python bench/snapshot_install.py                 # 1,000,000 keys, disk storage
    python bench/snapshot_install.py --keys 100000   # a quicker look

Exit status 1 if there was an election, or a heartbeat gap above twice the
interval while a snapshot was taken or installed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import orjson
from tqdm import tqdm

from kvcluster.cluster import Cluster
from kvcluster.server.http import ConnectionPool


async def load(base: str, keys: int, value_bytes: int, clients: int = 64) -> float:
    """Put `keys` keys through `base`, `clients` at a time; returns keys/s."""
    pool = ConnectionPool(base, max_idle=clients)
    value = "v" * value_bytes
    next_key = iter(range(keys))
    bar = tqdm(total=keys, unit="put", desc="loading", mininterval=1.0)
    started = time.perf_counter()

    async def worker() -> None:
        for k in next_key:
            body = orjson.dumps({"value": value})
            for _attempt in range(20):
                resp = await pool.request("PUT", f"/v1/kv/k{k:08d}", body, timeout=30.0)
                if resp.status == 200:
                    break
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError(f"put k{k:08d}: {resp.status} {resp.body[:200]!r}")
            bar.update(1)

    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    bar.close()
    pool.close()
    return keys / elapsed


def status(c: Cluster, i: int) -> dict[str, Any]:
    s = c.node_status(i, timeout=10.0)
    if s is None:
        raise RuntimeError(f"node {i} does not answer")
    return s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--value-bytes", type=int, default=64)
    p.add_argument("--snapshot-every", type=int, default=0, help="default: keys / 4")
    p.add_argument("--storage", choices=["disk", "memory"], default="disk")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    every = args.snapshot_every or max(1000, args.keys // 4)
    with Cluster(n=3, storage=args.storage, snapshot_every=every, snapshot_keep=1000) as c:
        leader = c.wait_for_leader(60)
        lagging = (leader + 1) % 3
        running = 3 - leader - lagging
        hb = c.raft_options.heartbeat_interval
        term0 = status(c, leader)["term"]
        c.pause(lagging)
        rate = asyncio.run(load(c.endpoints[leader], args.keys, args.value_bytes))
        loaded = time.monotonic()
        target = status(c, leader)["commit_index"]
        c.wait_until(lambda: status(c, leader)["snapshot_index"] >= target - every, 300)
        resumed = c.resume(lagging)
        c.wait_until(lambda: status(c, lagging)["applied_index"] >= target, 600)
        caught_up = time.monotonic()
        term1 = max(status(c, i)["term"] for i in range(3))
        time.sleep(0.3)  # the nodes flush their event files every 50 ms
        events = c.events()

    names = {i: f"n{i}" for i in range(3)}
    records = [] if events.empty else events.to_dict("records")

    def rows(kind: str) -> list[dict[str, Any]]:
        return [r for r in records if r.get("event") == kind]

    def lasting(r: dict[str, Any], field: str) -> tuple[float, float]:
        return (r["t"] - r[field], r["t"])

    # Windows in which a snapshot was being taken (any node) or installed.
    taking = [lasting(r, "seconds") for r in rows("snapshot_saved")]
    installing = [(resumed, caught_up)]

    def overlaps(span: tuple[float, float], windows: list[tuple[float, float]]) -> bool:
        return any(span[0] < hi and lo < span[1] for lo, hi in windows)

    def after_resume(r: dict[str, Any], field: str) -> bool:
        # The paused follower's first heartbeat (and loop tick) after SIGCONT
        # ends the pause itself: that is not a gap the snapshot made.
        return not (r["node"] == names[lagging] and r["t"] - r[field] < resumed)

    gaps = [g for g in rows("leader_silent") if after_resume(g, "gap")]
    stalls = [s for s in rows("loop_stall") if after_resume(s, "seconds")]
    gc_pauses = rows("gc_pause")
    t0 = records[0]["t"] if records else 0.0

    def described(items: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
        return [{"node": r["node"], "s": r[field], "at": round(r["t"] - t0, 2)} for r in items]

    def split(items: list[dict[str, Any]], field: str) -> dict[str, Any]:
        snap = [r for r in items if overlaps(lasting(r, field), taking + installing)]
        rest = [r for r in items if r not in snap]
        return {
            "during_snapshots": described(snap, field),
            "elsewhere_max_s": max((r[field] for r in rest), default=0.0),
            "elsewhere_count": len(rest),
            "elsewhere_worst": sorted(described(rest, field), key=lambda r: -r["s"])[:5],
        }

    elections = [
        r for r in rows("campaign") if r.get("role") == "candidate" and r["for_term"] > term0
    ]
    saved = [r for r in rows("snapshot_saved") if r["node"] == names[leader]]
    received = [r for r in rows("snapshot_received") if r["node"] == names[lagging]]
    figures = {
        "keys": args.keys,
        "value_bytes": args.value_bytes,
        "storage": args.storage,
        "snapshot_every": every,
        "heartbeat_s": hb,
        "load_puts_per_s": round(rate),
        "snapshot_bytes": saved[-1]["bytes"] if saved else None,
        "leader_snapshot_seconds": [r["seconds"] for r in saved],
        "install_verify_and_decode_s": received[-1]["seconds"] if received else None,
        "resume_to_caught_up_s": round(caught_up - resumed, 2),
        "terms": [term0, term1],
        "elections": len(elections),
        "heartbeat_gaps_over_2x": split([g for g in gaps if g["gap"] > 2 * hb], "gap"),
        "loop_stalls_over_1x": split(stalls, "seconds"),
        "gc_pauses_over_20ms": split(gc_pauses, "seconds"),
        "slow_persists_over_50ms": split(rows("slow_persist"), "seconds"),
        "load_ended_at": round(loaded - t0, 2),
        "snapshots_taken_at": [
            {"node": r["node"], "from": round(r["t"] - r["seconds"] - t0, 2), "s": r["seconds"]}
            for r in rows("snapshot_saved")
        ],
        "roles": {"leader": names[leader], "lagging": names[lagging], "other": names[running]},
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(figures, f, indent=2)
    gaps_in_snapshots = figures["heartbeat_gaps_over_2x"]["during_snapshots"]
    bad = figures["elections"] or gaps_in_snapshots or term1 != term0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
