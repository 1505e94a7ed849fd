"""Deterministic simulation of a kvcluster: Raft cores, kv state machines, a
simulated network and clients, all in one process and driven by one seed."""

from .net import InvariantViolation, RaftNet, Snapshot, Storage, make_log

__all__ = ["InvariantViolation", "RaftNet", "Snapshot", "Storage", "make_log"]
