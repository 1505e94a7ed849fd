"""Commit latency and throughput of a 3-node cluster for each storage mode.

    python bench/storage_modes.py [--seconds 5] [--clients 16]

For memory, disk+never, disk+batch and disk+always it measures, on the same
machine in one run: the latency of sequential puts from one client (p50, p99)
and the puts per second of `--clients` concurrent clients (one thread each).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

from tqdm import tqdm

from kvcluster import Cluster

MODES = [("memory", "always"), ("disk", "never"), ("disk", "batch"), ("disk", "always")]


def measure(storage: str, fsync: str, seconds: float, clients: int) -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory() as data,
        Cluster(3, storage=storage, fsync=fsync, data_dir=data) as cluster,
    ):
        cluster.wait_for_leader()
        with cluster.client() as c:
            latencies = []
            deadline = time.monotonic() + seconds
            k = 0
            while time.monotonic() < deadline:
                t0 = time.perf_counter()
                c.put(f"seq/{k % 1000}", "x" * 64)
                latencies.append(time.perf_counter() - t0)
                k += 1
        counts = [0] * clients
        stop = threading.Event()

        def work(w: int) -> None:
            with cluster.client() as c:
                n = 0
                while not stop.is_set():
                    c.put(f"load/{w}/{n % 1000}", "x" * 64)
                    n += 1
                counts[w] = n

        threads = [threading.Thread(target=work, args=(w,)) for w in range(clients)]
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
    q = statistics.quantiles(latencies, n=100)
    return {
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "puts_per_s": sum(counts) / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for storage, fsync in tqdm(MODES, desc="storage modes"):
        name = storage if storage == "memory" else f"disk+{fsync}"
        rows.append((name, measure(storage, fsync, args.seconds, args.clients)))
    print(f"\n{'mode':<12} {'p50 ms':>8} {'p99 ms':>8} {'puts/s @' + str(args.clients):>12}")
    for name, r in rows:
        print(f"{name:<12} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['puts_per_s']:12.0f}")


if __name__ == "__main__":
    main()
