"""Deterministic simulation of a kvcluster: Raft cores, kv state machines, a
simulated network and clients, all in one process and driven by one seed.

    from kvcluster.sim import run_seed, SimConfig
    res = run_seed(137, SimConfig(time=5.0))
    if not res.ok:
        print(res.report())      # replay: kvcluster sim --seed 137 --time 5

`RaftNet` (net.py) is the engine: it drives the production node layer
(`kvcluster.node`) and Raft core of every node, as the node process does, and
checks Raft's safety properties after every step (checks.py); `SimClient`
(clients.py) adds the clients and their history, `Nemesis` (faults.py) the
faults, `Simulation` (run.py) one seed's run and verdicts, `scenarios` the
Raft labs' workloads, `cli` the command.
"""

from ..storage.stream import MemorySnapshot
from .clients import ClientOptions, SimClient
from .faults import FAULT_KINDS, Nemesis, NetworkFaults
from .net import InvariantViolation, RaftNet, Storage, make_log
from .run import (
    READ_MODES,
    SeedResult,
    SimConfig,
    Simulation,
    Summary,
    run_many,
    run_seed,
    run_seeds,
)

__all__ = [
    "FAULT_KINDS",
    "READ_MODES",
    "ClientOptions",
    "InvariantViolation",
    "MemorySnapshot",
    "Nemesis",
    "NetworkFaults",
    "RaftNet",
    "SeedResult",
    "SimClient",
    "SimConfig",
    "Simulation",
    "Storage",
    "Summary",
    "make_log",
    "run_many",
    "run_seed",
    "run_seeds",
]
