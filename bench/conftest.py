"""Benchmarks that start node processes must leave none behind (as in tests/)."""

from __future__ import annotations

from collections.abc import Iterator

import multiprocess
import pytest


@pytest.fixture(autouse=True, scope="module")
def no_leaked_nodes() -> Iterator[None]:
    yield
    leaked = [p for p in multiprocess.active_children() if p.name.startswith("kvcluster-")]
    for p in leaked:
        p.kill()
        p.join(5)
    assert not leaked, f"node processes left running: {[p.name for p in leaked]}"
