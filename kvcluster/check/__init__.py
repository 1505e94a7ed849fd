"""History recording and linearizability checking for kvcluster (and any key/value store).

Record what concurrent clients did with a `HistoryRecorder` (or write the JSONL
yourself), then `check(operations)`; `kvcluster check history.jsonl` does the same
from the command line.
"""

from __future__ import annotations

from .generate import random_history
from .history import HistoryError, HistoryRecorder, Operation, OpKind, Status, load, save
from .linearizability import CounterExample, KeyResult, Result, check

__all__ = [
    "CounterExample",
    "HistoryError",
    "HistoryRecorder",
    "KeyResult",
    "OpKind",
    "Operation",
    "Result",
    "Status",
    "check",
    "load",
    "random_history",
    "save",
]
