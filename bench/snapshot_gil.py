"""Does a 1,000,000-key snapshot stall the event loop? (issue 11, item 5)

    python bench/snapshot_gil.py [--keys 1000000] [--dir DIR] [--fsync always]

Builds a KVStore of `--keys` keys with 64-byte values (and 10,000 client
sessions) through `apply`, then runs each step of a snapshot's life the way
the node is meant to, while an asyncio loop (uvloop if installed, as in the
node) runs a 10 ms periodic timer and records the gap between its firings:

  freeze          KVStore.freeze() on the loop thread (timed alone, 5 times)
  write           FrozenKV.lines() + DiskStorage.write_snapshot() in a worker thread
  adopt           DiskStorage.adopt_snapshot() on the loop thread
  send/receive    source.read(offset, 256 KiB) -> receiver.write(), one chunk per
                  loop iteration, leader and follower on this one loop (the worst
                  case: in a cluster they are two processes)
  finish          receiver.finish() (fsync + verification) in a worker thread
  from_lines      KVStore.from_lines(source.payload()) in a worker thread
  recover         DiskStorage() reopening the directory (verifies the file's CRC)

For each: wall time, CPU of the thread doing it (time.thread_time), the
longest gap between two timer firings and how many gaps exceeded 20 ms (twice
the period). A baseline of the timer alone is printed first. Run it on the disk
the nodes use; tmpfs has free fsyncs.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from kvcluster.kv import KVStore
from kvcluster.raft import Entry, EntryKind, HardState
from kvcluster.storage import DiskStorage, SnapshotMeta

T = TypeVar("T")
PERIOD = 0.010
CHUNK = 256 << 10


def build(keys: int) -> KVStore:
    store = KVStore()
    value = "v" * 64
    sessions = min(10_000, keys)
    index = 0
    for i in range(1, keys + 1):
        cmd: dict[str, Any] = {"op": "put", "key": f"key/{i:09d}", "value": value}
        if i > keys - sessions:  # the last writes each in a session of its own
            index += 1
            opened = store.apply(index, {"op": "open_session", "now": index})
            cmd |= {"client_id": opened["client_id"], "seq": 1}
        index += 1
        store.apply(index, cmd)
    return store


class GcWatch:
    """Cyclic GC collections (any thread) and their longest pause, per phase:
    a full collection holds the GIL throughout, so it shows up as a gap."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._start = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((info["generation"], time.perf_counter() - self._start))

    def take(self) -> str:
        pauses, self.pauses = self.pauses, []
        full = sum(g == 2 for g, _ in pauses)
        worst = max((p for _, p in pauses), default=0.0)
        return f"gc: {len(pauses)} ({full} full), longest {worst * 1e3:.1f} ms"


class Ticker:
    """A 10 ms periodic timer on the loop, recording the gaps between firings."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.gaps: list[float] = []
        self._last = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()
        self._handle = self.loop.call_later(PERIOD, self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now
        self._handle = self.loop.call_later(PERIOD, self._tick)

    def stop(self) -> list[float]:
        if self._handle is not None:
            self._handle.cancel()
        self._tick_final()
        return list(self.gaps)

    def _tick_final(self) -> None:
        self.gaps.append(time.perf_counter() - self._last)


class Bench:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pool = ThreadPoolExecutor(1)
        self.ticker = Ticker(loop)
        self.gc = GcWatch()
        self.rows: list[tuple[str, float, float, float, int, int]] = []

    async def in_worker(self, name: str, fn: Callable[[], T]) -> T:
        def timed() -> tuple[T, float]:
            cpu = time.thread_time()
            out = fn()
            return out, time.thread_time() - cpu

        self.ticker.start()
        self.gc.take()
        start = time.perf_counter()
        out, cpu = await self.loop.run_in_executor(self.pool, timed)
        self.record(name, time.perf_counter() - start, cpu)
        return out

    async def on_loop(self, name: str, fn: Callable[[], T]) -> T:
        self.ticker.start()
        await asyncio.sleep(PERIOD * 2)  # a firing or two before
        self.gc.take()
        start, cpu = time.perf_counter(), time.thread_time()
        out = fn()
        wall, cpu = time.perf_counter() - start, time.thread_time() - cpu
        await asyncio.sleep(PERIOD * 2)
        self.record(name, wall, cpu)
        return out

    def record(self, name: str, wall: float, cpu: float) -> None:
        gaps = self.ticker.stop()
        late = sum(g > 2 * PERIOD for g in gaps)
        self.rows.append((name, wall, cpu, max(gaps), late, len(gaps)))
        print(
            f"{name:<14} wall {wall * 1e3:9.1f} ms  cpu {cpu * 1e3:9.1f} ms  "
            f"max gap {max(gaps) * 1e3:7.1f} ms  gaps > {2 * PERIOD * 1e3:.0f} ms: "
            f"{late}/{len(gaps)}; {self.gc.take()}",
            flush=True,
        )


async def run(keys: int, directory: Path, fsync: str) -> None:
    loop = asyncio.get_running_loop()
    b = Bench(loop)
    t0 = time.perf_counter()
    store = build(keys)
    gc.collect()
    print(f"built {len(store):,} keys in {time.perf_counter() - t0:.1f} s", flush=True)

    b.ticker.start()
    await asyncio.sleep(1.0)
    gaps = b.ticker.stop()
    print(
        f"timer alone: {len(gaps)} firings, max gap {max(gaps) * 1e3:.1f} ms, "
        f"median {statistics.median(gaps) * 1e3:.1f} ms",
        flush=True,
    )

    times = []
    b.gc.take()
    for _ in range(5):
        start = time.perf_counter()
        frozen = store.freeze()
        times.append(time.perf_counter() - start)
        if len(times) < 5:
            del frozen
    print("freeze ms: " + ", ".join(f"{t * 1e3:.1f}" for t in times) + f"; {b.gc.take()}")

    leader = DiskStorage(directory / "leader", name="leader", fsync=fsync)  # type: ignore[arg-type]
    follower = DiskStorage(directory / "follower", name="follower", fsync=fsync)  # type: ignore[arg-type]
    hs = HardState(1, "leader")
    leader.save(hs, [Entry(i, 1, EntryKind.NOOP) for i in range(1, 11)])
    meta = SnapshotMeta(store.applied_index, 1, {"leader": {"voter": True}})
    src = await b.in_worker("write", lambda: leader.write_snapshot(meta, frozen.lines()))
    await b.on_loop("adopt", lambda: leader.adopt_snapshot(src))
    size = src.size
    print(f"snapshot file: {size:,} bytes ({size / 1e6:.1f} MB)", flush=True)

    rx = follower.open_receiver(meta, size)
    b.ticker.start()
    b.gc.take()
    start, cpu = time.perf_counter(), time.thread_time()
    slowest = 0.0
    while rx.received < size:
        t = time.perf_counter()
        rx.write(src.read(rx.received, CHUNK))
        slowest = max(slowest, time.perf_counter() - t)
        await asyncio.sleep(0)  # one chunk per loop iteration
    b.record("send/receive", time.perf_counter() - start, time.thread_time() - cpu)
    print(f"  ({size // CHUNK + 1} chunks of {CHUNK >> 10} KiB, slowest {slowest * 1e3:.2f} ms)")
    received = await b.in_worker("finish", rx.finish)
    follower.adopt_snapshot(received)
    rebuilt = await b.in_worker("from_lines", lambda: KVStore.from_lines(received.payload()))
    assert rebuilt == store, "the rebuilt store differs"
    del rebuilt
    leader.close()
    follower.close()
    start, cpu = time.perf_counter(), time.process_time()
    DiskStorage(directory / "follower", name="follower", fsync=fsync).close()  # type: ignore[arg-type]
    print(
        f"recover        wall {(time.perf_counter() - start) * 1e3:9.1f} ms  "
        f"cpu {(time.process_time() - cpu) * 1e3:9.1f} ms (reopen, CRC of the snapshot)"
    )
    b.pool.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--keys", type=int, default=1_000_000)
    p.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--fsync", default="always", choices=["always", "batch", "never"])
    p.add_argument("--asyncio", action="store_true", help="plain asyncio instead of uvloop")
    args = p.parse_args()
    print(f"python {sys.version.split()[0]}, switch interval {sys.getswitchinterval() * 1e3} ms")
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if not args.asyncio:
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    print(f"loop: {'uvloop' if factory else 'asyncio'}")
    with tempfile.TemporaryDirectory(dir=args.dir) as d, asyncio.Runner(loop_factory=factory) as r:
        r.run(run(args.keys, Path(d), args.fsync))


if __name__ == "__main__":
    main()
