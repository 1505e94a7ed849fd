"""What TLS costs a 3-node cluster: sequential put latency and puts/s at 64 clients.

Method: `rounds` rounds; in each, a fresh `Cluster(3)` with plain HTTP and one
with `tls=True` (TLS on clients and peers, ECDSA P-256 certificates), in an
order that alternates between rounds. On each: a leader, 0.5 s of warm-up,
then one closed-loop client writing back to back to the leader for `seconds`
(its p50 latency), then 64 closed-loop clients on the leader for `seconds`
(puts/s, and the nodes' and the load generator's CPU per put). The load
generator is the experiments' own (one asyncio loop, the nodes' HTTP client,
keep-alive connections: the handshake is paid once per connection, as by any
pooled client). Printed: each
round, the medians, and the paired TLS/plain ratios' range.

    .venv/bin/python bench/tls_cost.py --rounds 6 --seconds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kvcluster import Cluster
from kvcluster.experiments.loadgen import Workload, run_load


def measure(tls: bool, seconds: float) -> dict[str, float]:
    with Cluster(3, tls=tls) as c:
        leader = c.wait_for_leader(60)
        endpoint = [c.endpoints[leader]]
        pids = [h.process.pid for h in c.nodes]
        writes = Workload(read_fraction=0.0, value_size=100, keys=1000)
        one = run_load(endpoint, 1, writes, duration=seconds, warmup=0.5, node_pids=pids)
        many = run_load(endpoint, 64, writes, duration=seconds, warmup=0.5, node_pids=pids, seed=1)
    ok_one = one.latency[one.status == 200]
    ok_many = many.status == 200
    span = many.window[1] - many.window[0]
    return {
        "p50_ms": float(np.median(ok_one)) * 1e3,
        "puts_per_s": float(ok_many.sum()) / span,
        "cpu_us_per_put": many.nodes_cpu_s / max(1, int(ok_many.sum())) * 1e6,
        "loadgen_us_per_put": many.loadgen_cpu_s / max(1, int(ok_many.sum())) * 1e6,
        "errors": float((~ok_many).sum() + (one.status != 200).sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    rows: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: {args.rounds} rounds")
    for r in range(args.rounds):
        for tls in (False, True) if r % 2 == 0 else (True, False):
            row = measure(tls, args.seconds)
            rows[tls].append(row)
            name = "tls  " if tls else "plain"
            print(
                f"round {r} {name} p50 {row['p50_ms']:.3f} ms  {row['puts_per_s']:.0f} puts/s "
                f"at 64  {row['cpu_us_per_put']:.0f} us node CPU/put  "
                f"{row['loadgen_us_per_put']:.0f} us load-generator CPU/put  "
                f"errors {row['errors']:.0f}",
                flush=True,
            )
    for key in ("p50_ms", "puts_per_s", "cpu_us_per_put", "loadgen_us_per_put"):
        plain = [row[key] for row in rows[False]]
        tls_ = [row[key] for row in rows[True]]
        ratios = [t / p for t, p in zip(tls_, plain, strict=True)]
        print(
            f"{key}: plain median {statistics.median(plain):.3f}, tls median "
            f"{statistics.median(tls_):.3f}; paired tls/plain {min(ratios):.2f}-{max(ratios):.2f} "
            f"(median {statistics.median(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
