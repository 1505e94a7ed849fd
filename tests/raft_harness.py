"""The deterministic Raft test network now lives in `kvcluster.sim.net`; the
unit tests of the core import it from here."""

from kvcluster.sim.net import (
    InvariantViolation,
    MessagePredicate,
    RaftNet,
    ReadRecord,
    Storage,
    make_log,
)

__all__ = ["InvariantViolation", "MessagePredicate", "RaftNet", "ReadRecord", "Storage", "make_log"]
