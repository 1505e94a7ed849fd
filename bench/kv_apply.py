"""Cost of KVStore.apply for puts, to compare two checkouts of kvcluster.

    python bench/kv_apply.py [--root DIR] [--puts 100000] [--keys 100000]

Imports kvcluster from --root (default: this checkout), applies `--puts` put
commands over `--keys` distinct keys (creates first, then overwrites) and prints
the median of five runs in microseconds per put. Run it alternately against an
old tree (`git archive <rev> kvcluster | tar -x -C /tmp/old`) and this one, so
both see the same machine load. Each run starts from an empty store and gets a
fresh process, so nothing carries over between the two trees.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=None, help="directory holding the kvcluster package")
    p.add_argument("--puts", type=int, default=100_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    if args.root:
        sys.path.insert(0, args.root)
    from kvcluster.kv import KVStore

    commands = [
        {"op": "put", "key": f"key/{i % args.keys:08d}", "value": "v" * 64}
        for i in range(args.puts)
    ]
    costs = []
    for _ in range(args.runs):
        store = KVStore()
        gc.collect()
        apply = store.apply
        start = time.perf_counter()
        for index, cmd in enumerate(commands, start=1):
            apply(index, cmd)
        costs.append((time.perf_counter() - start) / args.puts * 1e6)
        assert store.revision == args.puts
    print(f"{statistics.median(costs):.2f} us/put (runs: {', '.join(f'{c:.2f}' for c in costs)})")


if __name__ == "__main__":
    main()
