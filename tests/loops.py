"""Which event loop a test of the HTTP stack runs on.

asyncio's by default; uvloop (which the node runs on) for tests marked
`both_loops` (they run on each) and for every test with
KVCLUSTER_TEST_LOOP=uvloop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any

import pytest

LOOP = {"name": os.environ.get("KVCLUSTER_TEST_LOOP", "asyncio")}

both_loops = pytest.mark.usefixtures("each_loop")  # the fixture is in conftest.py


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run on the loop LOOP names."""
    if LOOP["name"] == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)
    else:
        asyncio.run(main)
