"""The watch-latency experiment on real clusters (and on a real etcd, by the same code),
and its stream reader on a real socket. Speed is measured in bench/, never asserted here."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from kvcluster import Cluster
from kvcluster.experiments.cli import main
from kvcluster.experiments.watch import (
    WatchRun,
    measure,
    plot_percentiles,
    plot_watch,
    summary,
    watch_latency,
)
from kvcluster.experiments.watch_stream import MAX_MESSAGE, WatchStreamError, open_watch

matplotlib.use("Agg")

DEADLINE = 60.0


def assert_every_put_seen_once(run: WatchRun, puts: int) -> None:
    assert run.errors == [] and run.unexpected_events == 0  # no event missing or repeated
    assert len(run.sent) == puts and run.complete().all()
    assert (run.status == 200).all()
    assert (run.event_revision == run.revision).all()
    assert (np.diff(run.revision) > 0).all()  # sequential puts: one new revision each
    # Causality: neither the answer nor the event can come before the put was sent.
    assert (run.acked > run.sent).all() and (run.seen > run.sent).all()
    assert (run.commit_ms > 0).all() and (run.watch_ms > 0).all()
    assert np.allclose(run.delivery_ms, run.watch_ms - run.commit_ms)


@pytest.mark.integration
def test_a_follower_s_watcher_gets_every_put_under_background_load() -> None:
    with Cluster(3) as c:
        leader = c.wait_for_leader(DEADLINE)
        follower = (leader + 1) % 3
        run = measure(
            c.endpoints[leader],
            c.endpoints[follower],
            puts=40,
            warmup=3,
            interval=0.001,
            load_clients=2,
            timeout=DEADLINE,
        )
    assert_every_put_seen_once(run, 40)
    assert run.load_puts > 0 and run.load_errors == 0  # the load ran, outside the watched keys
    assert run.window[1] > run.window[0] and run.loadgen_cpu_s > 0


@pytest.mark.integration
def test_watch_latency_across_sizes_as_a_frame_with_plots() -> None:
    df = watch_latency((1, 3), puts=15, warmup=2, interval=0.001, progress=False)
    assert len(df) == 30 and list(df.groupby("n").size()) == [15, 15]
    assert set(df[df.n == 1].watcher) == {"leader"} and set(df[df.n == 3].watcher) == {"follower"}
    assert df.complete.all() and (df.first_error == "").all()
    assert (df.commit_ms > 0).all() and (df.watch_ms > 0).all()
    s = summary(df)
    assert list(s.n) == [1, 3] and (s.puts == 15).all() and (s.missing == 0).all()
    assert (s.watch_p50_ms <= s.watch_p99_ms).all() and (s.commit_p50_ms <= s.commit_p99_ms).all()
    ax = plot_watch(df)
    assert len(ax.lines) == 4  # watch and commit for each size
    ax = plot_percentiles(df)
    assert len(ax.patches) == 3 * 2  # commit, watch and delivery p50 for each size


@pytest.mark.integration
def test_the_same_code_measures_a_real_etcd(tmp_path: Path) -> None:
    # etcd 3.4 (`make test` installs it), started as etcd3gw's suite test starts it.
    from test_etcd3gw_suite import PortRace, etcd_server

    for attempt in range(5):
        try:
            with etcd_server(tmp_path / f"etcd-{attempt}") as port:
                url = f"http://127.0.0.1:{port}"
                run = measure(url, url, puts=20, warmup=2, interval=0.001, timeout=DEADLINE)
            break
        except PortRace:
            continue
    else:
        raise AssertionError("five free ports in a row were taken before etcd could bind them")
    assert_every_put_seen_once(run, 20)


@pytest.mark.integration
def test_cli_saves_the_puts_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    code = main(["--out", str(out), "--quiet", "watch", "-n", "1", "--puts", "5"])
    assert code == 0
    meta = json.loads((out / "watch.json").read_text())
    assert meta["parameters"]["puts"] == 5 and meta["rows"] == 5
    assert "watch_p50_ms" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the stream reader


@contextlib.asynccontextmanager
async def serve(answer: Callable[[asyncio.StreamWriter], Awaitable[None]]) -> AsyncIterator[str]:
    """A local HTTP server on a free port that reads a request's head and runs `answer`."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):  # the client may go first
            await reader.readuntil(b"\r\n\r\n")
            await answer(writer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


def test_messages_are_cut_at_newlines_not_at_chunks() -> None:
    async def answer(w: asyncio.StreamWriter) -> None:
        w.write(CHUNKED + chunk(b'{"a":1}\n{"b"'))  # one and a half messages
        await w.drain()
        await asyncio.sleep(0.05)  # a separate read on the client's side
        w.write(chunk(b":2}") + chunk(b"\n") + chunk(b'{"c":3}\n') + b"0\r\n\r\n")

    async def run() -> tuple[list[bytes], list[float], str]:
        got: list[bytes] = []
        stamps: list[float] = []
        async with serve(answer) as url:
            stream = await open_watch(url, b"{}", lambda m, t: (got.append(m), stamps.append(t)))
            async with asyncio.timeout(DEADLINE):
                reason = await stream.ended
        return got, stamps, reason

    got, stamps, reason = asyncio.run(run())
    assert got == [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    assert stamps == sorted(stamps) and stamps[0] < stamps[1]  # two reads, two stamps
    assert reason == "the server ended the watch stream"


def test_a_refusal_and_an_endless_line_are_errors() -> None:
    async def refuse(w: asyncio.StreamWriter) -> None:
        body = b'{"error":"bad","code":3}'
        w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))

    async def endless(w: asyncio.StreamWriter) -> None:
        w.write(CHUNKED)
        piece = chunk(b"x" * (1 << 20))
        for _ in range(MAX_MESSAGE // (1 << 20) + 2):
            w.write(piece)
            await w.drain()

    async def refused() -> None:
        async with serve(refuse) as url:
            await open_watch(url, b"{}", lambda m, t: None)

    with pytest.raises(WatchStreamError, match=r"refused: 400 .*bad"):
        asyncio.run(refused())

    async def too_long() -> str:
        got: list[bytes] = []
        async with serve(endless) as url:
            stream = await open_watch(url, b"{}", lambda m, t: got.append(m))
            async with asyncio.timeout(DEADLINE):
                reason = await stream.ended
        assert got == []
        return reason

    assert "over" in asyncio.run(too_long())
