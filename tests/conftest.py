"""Shared test fixtures: every test that starts node processes must leave none behind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import multiprocess
import pytest
from loops import LOOP
from storage_backends import Backend


@pytest.fixture(autouse=True, scope="module")
def no_leaked_nodes() -> Iterator[None]:
    yield
    leaked = [p for p in multiprocess.active_children() if p.name.startswith("kvcluster-")]
    for p in leaked:
        p.kill()
        p.join(5)
    assert not leaked, f"node processes left running: {[p.name for p in leaked]}"


@pytest.fixture(params=["asyncio", "uvloop"])
def each_loop(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run an HTTP stack test on each event loop (see loops.both_loops)."""
    saved = LOOP["name"]
    LOOP["name"] = request.param
    yield request.param
    LOOP["name"] = saved


@pytest.fixture(params=["memory", "disk"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each storage, small WAL segments so that tests cross segment boundaries."""
    return Backend(request.param, tmp_path / "node", segment_size=512)
