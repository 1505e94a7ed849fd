"""`kvcluster check history.jsonl`: is a recorded history linearizable?"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from .history import HistoryError, load
from .linearizability import check
from .watch import load_record

EXIT_OK, EXIT_VIOLATION, EXIT_UNDECIDED = 0, 1, 2


def build_parser(prog: str = "kvcluster check") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check a JSONL history of key/value operations for linearizability. "
        "Exit status: 0 linearizable, 1 violation, 2 undecided or usage error.",
    )
    parser.add_argument("history", help="JSONL file, one operation object per line")
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="give up (undecided) after this many seconds (default 60; 0 = no limit)",
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="give up after this many search steps"
    )
    parser.add_argument(
        "--watches",
        metavar="FILE",
        help="also check a nemesis run's watchers against its committed history "
        "(its watches.json), and the history's acknowledged writes against it",
    )
    parser.add_argument(
        "--no-shrink",
        action="store_true",
        help="report a failing key's whole history instead of a small failing subset",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the check; return the exit status instead of exiting, so callers can embed it."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on usage errors (2)
        return exc.code if isinstance(exc.code, int) else EXIT_UNDECIDED
    try:
        ops = load(args.history)
    except (OSError, HistoryError) as exc:
        print(f"kvcluster check: {exc}", file=sys.stderr)
        return EXIT_UNDECIDED

    result = check(
        ops,
        timeout=args.timeout or None,
        max_steps=args.max_steps,
        shrink_steps=0 if args.no_shrink else 2_000_000,
    )
    statuses = Counter(op.status for op in ops)
    print(f"history:    {args.history}")
    print(
        f"operations: {len(ops)} on {len({op.key for op in ops})} keys"
        f" ({statuses['ok']} ok, {statuses['fail']} fail, {statuses['unknown']} unknown)"
    )
    verdict = {True: "linearizable", False: "NOT linearizable", None: "undecided"}[result.ok]
    print(f"result:     {verdict}" + (f" ({result.reason})" if result.ok is None else ""))
    print(f"time:       {result.elapsed:.3f} s ({result.steps} search steps)")
    if result.ok is not True:
        print()
        print(result.explain())
    ok = result.ok
    if args.watches:
        try:
            record = load_record(args.watches)
            watched = record.check(ops)
        except (OSError, ValueError) as exc:
            print(f"kvcluster check: {exc}", file=sys.stderr)
            return EXIT_UNDECIDED
        print()
        print(watched.explain())
        if watched.ok is False or ok is False:
            ok = False
        elif watched.ok is None:
            ok = None
    if ok is None:
        return EXIT_UNDECIDED
    return EXIT_OK if ok else EXIT_VIOLATION
