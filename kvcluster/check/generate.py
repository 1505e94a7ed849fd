"""Random histories of an atomic key/value store: linearizable by construction.

They exercise and benchmark the checker: concurrent clients with random
latencies, each operation taking effect at a random instant inside its call
interval, plus failed operations (no effect) and unknown ones (an effect at
some instant after the call, possibly after the client gave up, or none).
"""

from __future__ import annotations

import random
from dataclasses import replace
from itertools import accumulate

from .history import Operation, OpKind, Status

__all__ = ["random_history"]


def random_history(
    n_ops: int = 20_000,
    clients: int = 10,
    keys: int = 50,
    *,
    seed: int = 0,
    put_ratio: float = 0.4,
    delete_ratio: float = 0.05,
    unknown_rate: float = 0.01,
    fail_rate: float = 0.01,
    skew: float = 1.0,
    latency: float = 0.002,
) -> list[Operation]:
    """`n_ops` operations by `clients` sequential clients over `keys` keys.

    Key popularity is Zipf-like with exponent `skew` (0: uniform), so hot keys see
    many concurrent operations, as in real workloads. `latency` is the mean
    response time in seconds; one call in fifty is ten times slower, which makes
    long overlaps. Values are unique, so every read names the write it saw.
    """
    rng = random.Random(seed)
    key_names = [f"k{i}" for i in range(keys)]
    weights = list(accumulate(1.0 / (rank + 1) ** skew for rank in range(keys)))
    clock = [rng.uniform(0, latency) for _ in range(clients)]
    # (effect time, op index) of every operation that takes effect, replayed in order below.
    effects: list[tuple[float, int]] = []
    ops: list[Operation] = []
    for op_id in range(n_ops):
        c = op_id % clients
        call = clock[c]
        took = latency * rng.expovariate(1.0) * (10 if rng.random() < 0.02 else 1)
        ret = call + took
        clock[c] = ret + rng.expovariate(4.0 / latency)
        key = rng.choices(key_names, cum_weights=weights)[0]
        r = rng.random()
        kind: OpKind = (
            "put" if r < put_ratio else "delete" if r < put_ratio + delete_ratio else "get"
        )
        r = rng.random()
        status: Status = (
            "unknown" if r < unknown_rate else "fail" if r < unknown_rate + fail_rate else "ok"
        )
        if status == "ok":
            effects.append((rng.uniform(call, ret), op_id))
        elif status == "unknown" and kind != "get" and rng.random() < 0.5:
            # The effect may land after the client gave up (at ret) and moved on.
            effects.append((call + rng.uniform(0, 3 * took), op_id))
        value = f"v{op_id}" if kind == "put" else None
        ops.append(Operation(op_id, f"c{c}", kind, key, value, call, ret, status))

    store: dict[str, str | None] = {}
    for _, op_id in sorted(effects):
        op = ops[op_id]
        if op.op == "get":
            ops[op_id] = replace(op, value=store.get(op.key))
        else:
            store[op.key] = op.value
    return ops
