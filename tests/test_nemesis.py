"""Nemesis runs in CI: real processes, random faults, histories checked."""

from __future__ import annotations

import shutil

import pytest

from kvcluster.nemesis import NemesisConfig, run

pytestmark = pytest.mark.integration


def test_a_five_node_cluster_stays_linearizable_under_random_faults() -> None:
    # About a minute in CI; `make torture` runs longer ones.
    # The faults include membership changes (as in Jepsen's etcd test): a
    # member removed and a new node added while kills, pauses and partitions
    # go on; each removed member must find out and exit by itself.
    result = run(NemesisConfig(nodes=5, duration=45.0, seed=2026), progress=False)
    print(result.summary())
    assert len(result.faults) >= 10
    changes = [what for _, what in result.faults]
    assert any(what.startswith("remove n") for what in changes), changes
    assert any(what.startswith("add n") for what in changes), changes
    assert result.removed_exited and all(result.removed_exited.values()), result.summary()
    assert result.counts.get("ok", 0) > 500
    assert result.ok is True, result.summary()
    assert result.live_after_heal


def test_the_nemesis_catches_stale_reads() -> None:
    # Serializable reads from partitioned nodes are stale by design: the same
    # pipeline must reject the history, or a clean run above proves nothing.
    config = NemesisConfig(
        nodes=3,
        duration=12.0,
        read_mode="serializable",
        faults=["partition"],
        fault_interval=(1.0, 2.0),
        seed=3,
    )
    result = run(config, progress=False)
    try:
        assert result.ok is False, result.summary()
        assert "cannot be ordered" in result.check.explain()
    finally:
        if result.work_dir is not None:
            shutil.rmtree(result.work_dir, ignore_errors=True)
