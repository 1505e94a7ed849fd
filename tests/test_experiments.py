"""The experiments layer: small, fast runs on real clusters, and the analysis on made-up events."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from kvcluster.experiments import load, run_election, save
from kvcluster.experiments.cli import main
from kvcluster.experiments.commit import commit_latency, commit_throughput
from kvcluster.experiments.election import analyse, summary
from kvcluster.experiments.reads import run_reads
from kvcluster.experiments.scenario import run_scenario
from kvcluster.experiments.timeline import plot_timeline, role_intervals

matplotlib.use("Agg")

# Generous bounds: CI runs on 2 busy cores. Speed is measured in bench/, not asserted here.
SLOW = 20_000.0  # ms


def test_save_writes_csv_and_a_metadata_sidecar(tmp_path: Path) -> None:
    df = pd.DataFrame({"n": [3, 5], "latency_ms": [1.5, 2.5]})
    path = save(df, tmp_path / "sub" / "x.csv", experiment="x", parameters={"sizes": (3, 5)})
    assert path.exists() and path.with_suffix(".json").exists()
    back, meta = load(path)
    pd.testing.assert_frame_equal(back, df)
    assert meta["experiment"] == "x" and meta["parameters"] == {"sizes": [3, 5]}
    assert meta["rows"] == 2
    for key in ("hostname", "cpu_count", "python", "kvcluster", "date"):
        assert key in meta["machine"]


def _campaign(t: float, node: str, role: str, term: int) -> dict[str, object]:
    return {"t": t, "node": node, "event": "campaign", "role": role, "term": term, "for_term": term}


def test_analyse_counts_rounds_and_split_votes() -> None:
    records = [
        _campaign(1.15, "n1", "candidate", 3),
        _campaign(1.16, "n2", "candidate", 3),  # two candidates in term 3: split
        _campaign(1.40, "n2", "candidate", 4),
        {"t": 1.41, "node": "n2", "event": "role", "role": "leader", "term": 4},
        _campaign(1.50, "n3", "candidate", 5),  # after the election: not counted
    ]
    row = analyse(records, t0=1.0, old_leader="n0", old_term=2)
    assert row["elected"] and row["new_term"] == 4 and row["terms_used"] == 2
    assert row["candidates"] == 3 and row["rounds"] == 2 and row["split_vote"]
    assert math.isclose(row["election_ms"], 410.0) and math.isclose(row["detect_ms"], 150.0)
    assert not analyse([], t0=1.0, old_leader="n0", old_term=2)["elected"]


def test_role_intervals_follow_campaigns_crashes_and_pauses() -> None:
    events = pd.DataFrame(
        [
            {"t": 0.0, "node": "n0", "event": "start", "incarnation": ""},
            {"t": 0.0, "node": "n1", "event": "start", "incarnation": ""},
            _campaign(0.2, "n0", "candidate", 1),
            {"t": 0.3, "node": "n0", "event": "role", "role": "leader", "term": 1},
            {"t": 1.0, "node": "n0", "event": "inject", "action": "kill"},
            {"t": 1.5, "node": "n1", "event": "inject", "action": "pause"},
            {"t": 2.0, "node": "n1", "event": "inject", "action": "resume"},
            {"t": 3.0, "node": None, "event": "inject", "action": "end"},
        ]
    )
    bands = role_intervals(events)
    n0 = bands[bands["node"] == "n0"]
    assert list(n0["role"]) == ["follower", "candidate", "leader"]
    assert n0["end"].iloc[-1] == 1.0  # killed: no band after the crash
    n1 = bands[bands["node"] == "n1"]
    assert list(n1["role"]) == ["follower", "paused", "follower"]
    assert n1["end"].iloc[-1] == 3.0
    ax = plot_timeline(events)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["n0", "n1"]


@pytest.mark.integration
def test_election_measures_failovers() -> None:
    df = run_election((3,), ((150, 300),), fault=("kill", "pause"), trials=2, progress=False)
    assert len(df) == 4 and set(df["fault"]) == {"kill", "pause"}
    assert df["elected"].all() and df["settled"].all()
    assert (df["election_ms"] > 0).all() and (df["election_ms"] < SLOW).all()
    # The first write can only be acknowledged once a new leader exists.
    assert (df["unavailable_ms"] >= df["election_ms"]).all()
    assert (df["new_leader"] != df["old_leader"]).all()
    assert (df["terms_used"] >= 1).all() and (df["rounds"] >= 1).all()
    s = summary(df)
    assert len(s) == 2 and (s["trials"] == 2).all()


def test_a_single_node_cluster_is_skipped_for_failover() -> None:
    with pytest.warns(UserWarning, match="nobody to fail over"):
        df = run_election((1,), trials=1, progress=False)
    assert df.empty


@pytest.mark.integration
def test_commit_latency_and_throughput() -> None:
    lat = commit_latency((1,), duration=0.5, warmup=0.1, progress=False)
    assert len(lat) > 10 and set(lat["n"]) == {1}
    assert (lat["latency_ms"] > 0).all() and (lat["latency_ms"] < SLOW).all()
    thr = commit_throughput(
        (3,), clients=(1, 8), targets=("leader", "followers"), duration=0.5, progress=False
    )
    assert len(thr) == 4
    assert (thr["throughput_ops_s"] > 0).all() and (thr["errors"] == 0).all()
    assert (thr["p50_ms"] <= thr["p99_ms"]).all() and (thr["p99_ms"] <= thr["max_ms"]).all()
    assert (thr["loadgen_cpu"] > 0).all() and (thr["nodes_cpu"] > 0).all()


@pytest.mark.integration
def test_reads_count_stale_reads_only_where_allowed() -> None:
    df = run_reads(
        (3,),
        ("read_index", "serializable"),
        targets=("all",),
        read_fractions=(0.5,),
        clients=(8,),
        keys=10,
        duration=0.7,
        warmup=0.2,
        progress=False,
    )
    assert len(df) == 2
    assert (df["read_ops_s"] > 0).all() and (df["write_ops_s"] > 0).all()
    assert (df["reads_checked"] > 0).all()
    linearizable = df[df["read_mode"] == "read_index"]
    assert (linearizable["stale_reads"] == 0).all()


@pytest.mark.integration
def test_reads_run_on_a_tls_cluster() -> None:
    """`kvcluster bench reads --tls`: the keys are written and read over TLS."""
    df = run_reads(
        (3,),
        ("read_index",),
        targets=("leader",),
        read_fractions=(0.9,),
        clients=(4,),
        keys=10,
        duration=0.5,
        warmup=0.2,
        progress=False,
        tls=True,
    )
    assert len(df) == 1 and (df["errors"] == 0).all() and (df["read_ops_s"] > 0).all()


@pytest.mark.integration
def test_scenario_timeline_shows_the_crash_and_the_new_leader() -> None:
    events = run_scenario(3, hold=0.3)
    bands = role_intervals(events)
    leaders = bands[bands["role"] == "leader"]
    assert leaders["node"].nunique() >= 2 and leaders["term"].nunique() >= 3
    actions = set(events.loc[events["event"] == "inject", "action"])
    assert {"kill", "restart", "isolate", "heal", "pause", "resume"} <= actions


@pytest.mark.integration
def test_cli_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = main(["--out", str(out), "--quiet", "election", "-n", "3", "--trials", "1"])
    assert code == 0
    meta = json.loads((out / "election.json").read_text())
    assert meta["parameters"]["trials"] == 1 and meta["rows"] == 1
    assert "election_median_ms" in capsys.readouterr().out
