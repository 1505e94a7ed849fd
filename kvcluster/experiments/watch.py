"""Watch latency: a put sent to the leader -> its event at a watcher on a follower.

A watcher learns of a write only after the write is committed (the leader has
it from a majority), after the watcher's node has heard of the commit and
applied the entry, and after the node has written the event to the watch
stream. So watch latency = commit latency + the follower's apply lag + delivery.
Each run records both halves for every put: `commit_ms`, from sending the put
to its answer (the leader answers once the entry is applied), and `watch_ms`,
from sending it to its event arriving at the watcher; `delivery_ms` is their
difference, what a watcher waits beyond the writer. On one node the watcher
and the writer are served by the same process, and the event may beat the
answer (`delivery_ms` < 0).

Everything speaks etcd's JSON gateway only (`/v3/kv/put`, `/v3/watch`, base64
keys), so `measure` drives a real etcd the same way (`bench/peers.py` does).
One process, one event loop and one clock (`time.monotonic()`) time both the
put and the event: the put on the node's own keep-alive HTTP client
(`HttpConnection`, timed from just before it is written to when the awaiting
coroutine resumes with the answer), the event with `watch_stream` (stamped when
its bytes arrive, before parsing). The puts are sequential: the next is sent
once the last one's answer and event have both arrived, after a random pause
(`interval` on average), so no put waits behind another and the puts fall at
random points of the heartbeat cycle. Each put writes a value of its own,
which is how its event is found; the event's revision must equal the one the
put's answer carried. Optionally, `load_clients` closed-loop writers keep the
leader busy with puts to keys outside the watched prefix, on the same loop.
"""

from __future__ import annotations

import asyncio
import base64
import random
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import orjson
import pandas as pd

from ..cluster import Cluster
from ..server.http.client import ConnectionFailed, HttpConnection
from .progress import progress_bar
from .runner import loadavg
from .watch_stream import WatchStreamError, open_watch

PREFIX = "watchlat/"  # the watched keys; the background load writes elsewhere
_JSON = {"Content-Type": "application/json"}
T = TypeVar("T")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@dataclass
class WatchRun:
    """One row per measured put (times are `time.monotonic()`, NaN if it never came)."""

    sent: np.ndarray  # when the put was written
    acked: np.ndarray  # when its answer came back
    seen: np.ndarray  # when its event reached the watcher
    status: np.ndarray  # the put's HTTP status, 0 if no answer
    revision: np.ndarray  # the revision in the put's answer, 0 if none
    event_revision: np.ndarray  # the revision of its event, 0 if none
    unexpected_events: int  # events for no put of this run (a repeat would count here)
    load_puts: int  # background puts answered 200 while the puts were measured
    load_errors: int
    window: tuple[float, float]  # first measured put sent .. last one done
    loadgen_cpu_s: float  # this thread's CPU over the window
    errors: list[str] = field(default_factory=list)

    @property
    def commit_ms(self) -> np.ndarray:
        return np.asarray((self.acked - self.sent) * 1000)

    @property
    def watch_ms(self) -> np.ndarray:
        return np.asarray((self.seen - self.sent) * 1000)

    @property
    def delivery_ms(self) -> np.ndarray:
        """What the watcher waited beyond the writer."""
        return np.asarray((self.seen - self.acked) * 1000)

    def complete(self) -> np.ndarray:
        """Puts answered 200 whose event arrived with the revision the answer named."""
        return np.asarray(
            (self.status == 200)
            & np.isfinite(self.seen)
            & (self.revision > 0)
            & (self.revision == self.event_revision)
        )


def measure(
    put_url: str,
    watch_url: str,
    *,
    puts: int = 200,
    warmup: int = 10,
    interval: float = 0.005,
    value_size: int = 64,
    load_clients: int = 0,
    load_url: str | None = None,
    timeout: float = 10.0,
    seed: int = 0,
) -> WatchRun:
    """Watch `PREFIX` at `watch_url`, put `warmup` + `puts` values under it at
    `put_url` one at a time (the first `warmup` are not recorded), and time each.

    `load_clients` writers put to other keys at `load_url` (default `put_url`)
    while the measured puts run. Runs in a fresh thread with its own event loop
    (so it also works inside a Jupyter kernel's loop)."""
    if puts < 1 or warmup < 0 or interval < 0 or load_clients < 0 or value_size < 12:
        raise ValueError(
            "need puts >= 1, warmup >= 0, interval >= 0, load_clients >= 0 and "
            "value_size >= 12 (each value carries its put's number)"
        )
    return _in_thread(
        lambda: _measure(
            put_url,
            watch_url,
            puts,
            warmup,
            interval,
            value_size,
            load_clients,
            load_url or put_url,
            timeout,
            seed,
        )
    )


def _in_thread(make: Callable[[], Awaitable[T]]) -> T:
    box: list[Any] = []

    def main() -> None:
        async def run() -> T:
            return await make()

        try:
            box.append(asyncio.run(run()))
        except BaseException as exc:  # handed to the caller's thread
            box.append(exc)

    thread = threading.Thread(target=main, name="kvcluster-watch-latency", daemon=True)
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    result: T = box[0]
    return result


class _Watcher:
    """Finds each measured put's event in the stream (by its value)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.created: asyncio.Future[None] = loop.create_future()
        self.pending: dict[bytes, asyncio.Future[tuple[float, int]]] = {}
        self.unexpected = 0
        self.errors: list[str] = []

    def expect(self, value: bytes) -> asyncio.Future[tuple[float, int]]:
        future: asyncio.Future[tuple[float, int]] = asyncio.get_running_loop().create_future()
        self.pending[value] = future
        return future

    def on_message(self, line: bytes, t: float) -> None:
        try:
            message = orjson.loads(line)
            result = message.get("result", message)  # etcd's gateway wraps each in "result"
            if "error" in message:
                raise ValueError(message["error"])
            if result.get("canceled"):
                raise ValueError(f"the watch was canceled: {result}")
            if result.get("created") and not self.created.done():
                self.created.set_result(None)
            for event in result.get("events", ()):
                kv = event["kv"]
                value = base64.b64decode(kv.get("value", ""))
                future = self.pending.pop(value, None)
                if future is None or future.done():
                    self.unexpected += 1
                else:
                    future.set_result((t, int(kv["mod_revision"])))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._fail(f"watch stream: {type(exc).__name__}: {exc}"[:500])

    def _fail(self, text: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(text)
        if not self.created.done():
            self.created.set_exception(WatchStreamError(text))


def _conn(url: str) -> HttpConnection:
    parts = urlsplit(url)
    return HttpConnection(parts.hostname or "127.0.0.1", parts.port or 80)


def _put_body(key: str, value: bytes) -> bytes:
    return b'{"key":"%s","value":"%s"}' % (_b64(key).encode(), base64.b64encode(value))


def _revision(body: bytes) -> int:
    try:
        return int(orjson.loads(body)["header"]["revision"])
    except (ValueError, KeyError, TypeError):
        return 0


async def _load(url: str, w: int, value: bytes, stop: asyncio.Event, count: list[int]) -> None:
    """One background writer: puts back to back to keys outside PREFIX until `stop`."""
    conn = _conn(url)
    i = 0
    try:
        while not stop.is_set():
            body = _put_body(f"watchload/{w}/{i % 100}", value)
            i += 1
            try:
                response = await conn.request("POST", "/v3/kv/put", body, _JSON, 10.0)
                count[0 if response.status == 200 else 1] += 1
            except (ConnectionFailed, OSError):
                count[1] += 1
                await asyncio.sleep(0.01)  # do not spin on a dead node
    finally:
        conn.close()


async def _measure(
    put_url: str,
    watch_url: str,
    puts: int,
    warmup: int,
    interval: float,
    value_size: int,
    load_clients: int,
    load_url: str,
    timeout: float,
    seed: int,
) -> WatchRun:
    rnd = random.Random(seed)
    watcher = _Watcher()
    prefix_end = PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1)
    create = {"create_request": {"key": _b64(PREFIX), "range_end": _b64(prefix_end)}}
    stream = await open_watch(watch_url, orjson.dumps(create), watcher.on_message, timeout)
    conn = _conn(put_url)
    stop = asyncio.Event()
    load_count = [0, 0]
    loaders: list[asyncio.Task[None]] = []
    total = warmup + puts
    sent, acked, seen = (np.full(total, np.nan) for _ in range(3))
    status, revision, event_revision = (np.zeros(total, dtype=np.int64) for _ in range(3))
    errors: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            await watcher.created
        load_value = b"l" * value_size
        loaders = [
            asyncio.create_task(_load(load_url, w, load_value, stop, load_count))
            for w in range(load_clients)
        ]
        cpu0 = time.thread_time()
        load0 = [0, 0]
        for i in range(total):
            if i == warmup:
                cpu0, load0 = time.thread_time(), list(load_count)
            value = b"%08d:" % i + b"w" * (value_size - 9)
            event = watcher.expect(value)
            body = _put_body(PREFIX + "k", value)
            t0 = time.monotonic()
            try:
                response = await conn.request("POST", "/v3/kv/put", body, _JSON, timeout)
                acked[i] = time.monotonic()
                status[i], revision[i] = response.status, _revision(response.body)
                if response.status != 200 and len(errors) < 20:
                    errors.append(f"put {i}: {response.status} {response.body[:200]!r}")
            except ConnectionFailed as exc:
                if len(errors) < 20:
                    errors.append(f"put {i}: {exc}")
            sent[i] = t0
            if status[i] == 200:
                try:
                    async with asyncio.timeout(timeout):
                        seen[i], event_revision[i] = await event
                except TimeoutError:
                    if len(errors) < 20:
                        errors.append(f"put {i} (revision {revision[i]}): no event in {timeout} s")
            if stream.ended.done():
                raise WatchStreamError(f"the watch stream ended: {stream.ended.result()}")
            if interval:
                await asyncio.sleep(rnd.uniform(0.5, 1.5) * interval)
        cpu1, load1 = time.thread_time(), list(load_count)
    finally:
        stop.set()
        for task in loaders:
            task.cancel()
        await asyncio.gather(*loaders, return_exceptions=True)
        conn.close()
        stream.close()
    m = slice(warmup, total)
    done = np.fmax(acked[m], seen[m])
    return WatchRun(
        sent=sent[m],
        acked=acked[m],
        seen=seen[m],
        status=status[m],
        revision=revision[m],
        event_revision=event_revision[m],
        unexpected_events=watcher.unexpected,
        load_puts=load1[0] - load0[0],
        load_errors=load1[1] - load0[1],
        window=(float(sent[warmup]), float(np.nanmax(done)) if np.isfinite(done).any() else 0.0),
        loadgen_cpu_s=cpu1 - cpu0,
        errors=(watcher.errors + errors)[:20],
    )


def frame(run: WatchRun, **columns: Any) -> pd.DataFrame:
    """One row per measured put, `columns` (the run's parameters) first."""
    duration = run.window[1] - run.window[0]
    return pd.DataFrame(
        {
            **columns,
            "put": np.arange(len(run.sent)),
            "t_s": run.sent - run.window[0],
            "status": run.status,
            "revision": run.revision,
            "complete": run.complete(),
            "commit_ms": run.commit_ms,
            "watch_ms": run.watch_ms,
            "delivery_ms": run.delivery_ms,
            "load_puts_s": run.load_puts / duration if duration > 0 else np.nan,
            "loadgen_cpu": run.loadgen_cpu_s / duration if duration > 0 else np.nan,
            "unexpected_events": run.unexpected_events,
            "first_error": run.errors[0] if run.errors else "",
        }
    )


def watch_latency(
    sizes: Sequence[int] = (1, 3, 5),
    *,
    puts: int = 200,
    warmup: int = 10,
    interval: float = 0.005,
    load_clients: Sequence[int] = (0,),
    value_size: int = 100,
    progress: bool = True,
    seed: int = 0,
    **cluster_options: Any,
) -> pd.DataFrame:
    """Per cluster size and background load: one row per measured put.

    The watcher is on a follower (on the only node when n = 1); the puts and the
    background load go to the leader."""
    frames = []
    with progress_bar(len(sizes) * len(load_clients), "watch latency", progress) as bar:
        for n in sizes:
            with Cluster(n, **cluster_options) as cluster:
                leader = cluster.wait_for_leader()
                watcher = (leader + 1) % n
                for load in load_clients:
                    bar.set_postfix_str(f"n={n}, {load} background writers")
                    before = loadavg()
                    run = measure(
                        cluster.endpoints[leader],
                        cluster.endpoints[watcher],
                        puts=puts,
                        warmup=warmup,
                        interval=interval,
                        value_size=value_size,
                        load_clients=load,
                        seed=seed,
                    )
                    where = "follower" if watcher != leader else "leader"
                    frames.append(
                        frame(
                            run,
                            n=n,
                            load_clients=load,
                            watcher=where,
                            value_size=value_size,
                            loadavg=before,
                        )
                    )
                    bar.update()
    return pd.concat(frames, ignore_index=True)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per cluster size and load: puts, missing events, and p50/p99 of each latency."""
    rows = []
    for (n, load), g in df.groupby(["n", "load_clients"]):
        ok = g[g.complete]
        row: dict[str, Any] = {"n": n, "load_clients": load, "puts": len(g)}
        row["missing"] = int((~g.complete).sum())
        for col in ("commit_ms", "watch_ms", "delivery_ms"):
            name = col.removesuffix("_ms")
            values = ok[col].to_numpy()
            p50, p99 = np.percentile(values, [50, 99]) if values.size else (np.nan, np.nan)
            row[f"{name}_p50_ms"], row[f"{name}_p99_ms"] = p50, p99
        row["load_puts_s"] = g.load_puts_s.iloc[0]
        rows.append(row)
    return pd.DataFrame(rows)


_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


def plot_watch(df: pd.DataFrame, load_clients: int | None = None, ax: Any = None) -> Any:
    """CDFs of watch latency (solid) and commit latency (dashed) per cluster size
    (the watcher is on a follower, or on the only node when n = 1)."""
    import matplotlib.pyplot as plt

    load = df.load_clients.min() if load_clients is None else load_clients
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    sel = df[(df.load_clients == load) & df.complete]
    for n, g in sel.groupby("n"):
        y = np.arange(1, len(g) + 1) / len(g) * 100
        (line,) = ax.plot(
            np.sort(g.watch_ms.to_numpy()), y, label=f"{n} node{'' if n == 1 else 's'}: watch"
        )
        ax.plot(
            np.sort(g.commit_ms.to_numpy()),
            y,
            linestyle="--",
            color=line.get_color(),
            label="commit (the put's answer)",
        )
    ax.set_xscale("log")
    low, high = sel[["commit_ms", "watch_ms"]].min().min(), sel.watch_ms.max()
    ax.set_xticks([t for t in _TICKS if low / 1.5 <= t <= high * 1.5])
    ax.xaxis.set_major_formatter("{x:g}")
    ax.xaxis.set_minor_formatter("")
    ax.set_xlabel("ms from sending the put")
    ax.set_ylabel("cumulative percent of puts")
    ax.set_title(f"Put to the leader -> event at a follower, {load} background writers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_percentiles(df: pd.DataFrame, ax: Any = None) -> Any:
    """p50 (bars) and p99 (ticks) of commit, watch and delivery per cluster size and load."""
    import matplotlib.pyplot as plt

    s = summary(df)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    kinds = ("commit", "watch", "delivery")
    width = 0.8 / len(kinds)
    x = np.arange(len(s))
    for k, kind in enumerate(kinds):
        at = x + (k - (len(kinds) - 1) / 2) * width
        ax.bar(at, s[f"{kind}_p50_ms"], width, label=f"{kind} p50")
        ax.scatter(
            at,
            s[f"{kind}_p99_ms"],
            marker="_",
            s=300,
            color="black",
            zorder=3,
            label="p99" if k == 0 else None,
        )
    ax.set_xticks(x, [f"n={r.n}\n{r.load_clients} writers" for r in s.itertuples()])
    ax.set_ylabel("ms")
    ax.set_title("Commit (the put's answer), watch (its event), and the difference")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return ax
