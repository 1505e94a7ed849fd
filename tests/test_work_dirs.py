"""Work directories left by a Cluster whose process died (a Jupyter kernel runs no atexit)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kvcluster.cluster import OWNER_FILE, Cluster, remove_abandoned_work_dirs


def a_dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def work_dir(tmp: Path, name: str, owner: str | None) -> Path:
    d = tmp / name
    d.mkdir()
    (d / "n0.events.jsonl").write_text("{}\n")
    if owner is not None:
        (d / OWNER_FILE).write_text(owner)
    return d


def test_only_the_directories_of_dead_owners_are_removed(tmp_path: Path) -> None:
    dead = work_dir(tmp_path, "kvcluster-dead", str(a_dead_pid()))
    mine = work_dir(tmp_path, "kvcluster-mine", str(os.getpid()))
    parent = work_dir(tmp_path, "kvcluster-parent", str(os.getppid()))
    kept = work_dir(tmp_path, "kvcluster-kept", None)  # KVCLUSTER_KEEP_WORKDIR, or made elsewhere
    garbled = work_dir(tmp_path, "kvcluster-garbled", "not a pid")
    group = work_dir(tmp_path, "kvcluster-group", "0")  # os.kill(0, ...) means our process group
    other = work_dir(tmp_path, "something-else", str(a_dead_pid()))

    remove_abandoned_work_dirs(tmp_path)

    assert not dead.exists()
    for d in (mine, parent, kept, garbled, group, other):
        assert d.exists(), d


def test_a_cluster_names_its_owner_and_clears_up_after_dead_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # so that TMPDIR is read again
    dead = work_dir(tmp_path, "kvcluster-abandoned", str(a_dead_pid()))
    with Cluster(1) as c:
        assert c.work_dir.parent == tmp_path
        assert (c.work_dir / OWNER_FILE).read_text() == str(os.getpid())
        assert not dead.exists()
