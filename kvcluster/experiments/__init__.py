"""Experiments on real clusters: elections, commits, reads, watches, and timelines of roles.

Each experiment starts `Cluster`s, measures, and returns a tidy DataFrame (one
row per measurement, every parameter a column); `save` writes it as CSV with a
JSON sidecar naming the machine, versions and parameters. `kvcluster bench ...`
(`experiments.cli`) runs them from the shell with progress bars.
"""

from __future__ import annotations

from .commit import commit_latency, commit_throughput
from .election import PAPER_RANGES_MS, SHORT_RANGES_MS, run_election
from .reads import run_reads
from .results import load, machine_info, save
from .scenario import run_scenario
from .timeline import plot_timeline, role_intervals
from .watch import watch_latency

__all__ = [
    "PAPER_RANGES_MS",
    "SHORT_RANGES_MS",
    "commit_latency",
    "commit_throughput",
    "load",
    "machine_info",
    "plot_timeline",
    "role_intervals",
    "run_election",
    "run_reads",
    "run_scenario",
    "save",
    "watch_latency",
]
