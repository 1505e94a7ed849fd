"""Speed of the linearizability checker on a 10-client, 20,000-operation history.

    python -m pytest bench/bench_check.py        # pytest-benchmark
    python bench/bench_check.py                  # prints ops/s for a few workloads

The history comes from a simulated atomic store (kvcluster.check.random_history):
50 keys with Zipf-like popularity, random latencies with a slow tail, 1% failed
and 1% unknown operations.
"""

from __future__ import annotations

import time
from typing import Any

from kvcluster.check import Operation, check, random_history

N_OPS, CLIENTS, KEYS = 20_000, 10, 50


def history(seed: int = 0, **kw: Any) -> list[Operation]:
    return random_history(N_OPS, clients=CLIENTS, keys=KEYS, seed=seed, **kw)


def test_check_speed(benchmark: Any) -> None:
    ops = history()
    result = benchmark(check, ops)
    assert result.ok is True
    benchmark.extra_info["ops"] = len(ops)


def _concurrency(ops: list[Operation]) -> float:
    """Mean number of same-key operations in flight (until the client had its answer or
    gave up) when an operation is called."""
    events = []
    for op in ops:
        if op.status != "fail":
            end = op.ret if op.ret is not None else float("inf")
            events += [(op.call, 1, op.key), (end, -1, op.key)]
    events.sort(key=lambda e: (e[0], e[1]))
    inflight: dict[str, int] = {}
    total = calls = 0
    for _, delta, key in events:
        if delta > 0:
            total += inflight.get(key, 0)
            calls += 1
        inflight[key] = inflight.get(key, 0) + delta
    return total / max(calls, 1)


def main() -> None:
    workloads: dict[str, dict[str, Any]] = {
        "50 zipf keys, 1% unknown (default)": {},
        "50 uniform keys": {"skew": 0.0},
        "50 zipf keys, 5% unknown": {"unknown_rate": 0.05},
        "1 key": {"keys": 1},
        "1 key, 40 clients": {"keys": 1, "clients": 40},
    }
    print(f"{N_OPS} operations")
    for name, kw in workloads.items():
        ops = random_history(N_OPS, **{"clients": CLIENTS, "keys": KEYS, "seed": 0, **kw})
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            result = check(ops)
            best = min(best, time.perf_counter() - t0)
        assert result.ok is True, result.explain()
        print(
            f"  {name:<36} {best:6.3f} s  {len(ops) / best:>9,.0f} ops/s"
            f"  ({result.steps} steps, {_concurrency(ops):.2f} same-key ops in flight per call)"
        )


if __name__ == "__main__":
    main()
