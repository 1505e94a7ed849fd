"""The node's own await-with-timeout, which replaced asyncio.wait_for on the hot path."""

from __future__ import annotations

import asyncio

import pytest

from kvcluster.server.node import _settled_within


def test_returns_the_result_and_leaves_no_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        loop.call_soon(fut.set_result, 7)
        assert await _settled_within(fut, 60.0) == 7
        # the 60 s timer was cancelled: the loop has nothing scheduled left
        assert not [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]

    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:  # has _scheduled
        runner.run(main())


def test_raises_timeout_and_a_late_settler_sees_done() -> None:
    async def main() -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        with pytest.raises(TimeoutError):
            await _settled_within(fut, 0.01)
        assert fut.done()  # the node's settlers check done() before set_result

    asyncio.run(main())


def test_passes_the_futures_exception() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        loop.call_soon(fut.set_exception, LookupError("replaced"))
        with pytest.raises(LookupError, match="replaced"):
            await _settled_within(fut, 60.0)

    asyncio.run(main())


def test_cancelling_the_waiter_cancels_the_future() -> None:
    async def main() -> None:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(_settled_within(fut, 60.0))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fut.cancelled()

    asyncio.run(main())
