"""Deterministic simulation of a kvcluster: Raft cores, kv state machines, a
simulated network and clients, all in one process and driven by one seed.

    from kvcluster.sim import run_seed, SimConfig
    res = run_seed(137, SimConfig(time=5.0))
    if not res.ok:
        print(res.report())      # replay: kvcluster sim --seed 137 --time 5

`RaftNet` (net.py) is the engine and the Raft safety checker; `SimCluster`
(cluster.py) adds kv servers, `SimClient` (clients.py) the clients and their
history, `Nemesis` (faults.py) the faults, `Simulation` (run.py) one seed's
run and verdicts, `scenarios` the Raft labs' workloads, `cli` the command.
"""

from .clients import ClientOptions, SimClient
from .cluster import READ_MODES, SimCluster
from .faults import FAULT_KINDS, Nemesis, NetworkFaults
from .net import InvariantViolation, RaftNet, Snapshot, Storage, make_log
from .run import SeedResult, SimConfig, Simulation, Summary, run_many, run_seed, run_seeds

__all__ = [
    "FAULT_KINDS",
    "READ_MODES",
    "ClientOptions",
    "InvariantViolation",
    "Nemesis",
    "NetworkFaults",
    "RaftNet",
    "SeedResult",
    "SimClient",
    "SimCluster",
    "SimConfig",
    "Simulation",
    "Snapshot",
    "Storage",
    "Summary",
    "make_log",
    "run_many",
    "run_seed",
    "run_seeds",
]
