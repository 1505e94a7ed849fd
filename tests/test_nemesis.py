"""Nemesis runs in CI: real processes, random faults, histories checked."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import replace

import pytest

from kvcluster.check import check
from kvcluster.check.watch import check_watches, check_writes
from kvcluster.nemesis import NemesisConfig, NemesisResult, run

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
    # Compare-and-swaps through /v3/kv/txn, mixed with /v1 writes on the same keys.
    cas = [op for op in result.operations if op.op == "cas"]
    assert result.cas.get("swapped", 0) > 50, result.summary()
    assert sum(op.status == "ok" for op in cas) == result.cas["swapped"]
    assert result.cas.get("compare failed", 0) > 0  # the compare is real
    # Every watcher got exactly its slice of the committed history, across
    # kills, pauses and removals of the node it watched on.
    watch = result.watch
    assert watch is not None and watch.ok is True, result.summary()
    assert len(watch.watchers) == 4 and len(watch.members) >= 3
    assert watch.checked > 1000 and watch.reconnects >= 1, result.summary()
    history = next(iter(result.committed.values()))
    assert all(c.revision <= result.final_revision for c in history)
    assert any(
        a.revision == b.revision for a, b in itertools.pairwise(history)
    )  # two keys put by one txn
    _corrupted_records_fail(result)


def _corrupted_records_fail(result: NemesisResult) -> None:
    """The run's own records, broken on purpose, must fail the checks: the
    clean verdicts above are then worth something."""
    log = max(result.watchers, key=lambda w: len(w.changes))
    assert len(log.changes) > 100
    middle = len(log.changes) // 2
    lost = log.changes[middle]
    changes = log.changes[:middle] + log.changes[middle + 1 :]
    gap = check_watches(result.committed, result.final_revision, [replace(log, changes=changes)])
    assert gap.ok is False and f"a gap: {lost} was never sent" in gap.explain()
    again = log.changes[: middle + 1] + log.changes[middle:]
    twice = check_watches(result.committed, result.final_revision, [replace(log, changes=again)])
    assert twice.ok is False and "a duplicate" in twice.explain()
    # An acknowledged write the history does not hold is a lost write.
    swap = next(op for op in reversed(result.operations) if op.op == "cas" and op.status == "ok")
    history = next(iter(result.committed.values()))
    committed = [c for c in history if c.value != swap.value]
    problems = check_writes(committed, result.operations)
    assert len(problems) == 1 and f"lost write: op #{swap.id}" in problems[0]
    # And a cas that swapped a value nobody wrote is not linearizable.
    ops = [replace(op, expected="never written") if op is swap else op for op in result.operations]
    verdict = check([op for op in ops if op.key == swap.key], timeout=60.0, shrink_steps=0)
    assert verdict.ok is False and "never written" in verdict.explain()


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
