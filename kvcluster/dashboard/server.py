"""The live view's web server: a tornado app on its own thread, in the harness.

The harness (the notebook, `kvcluster up`, a script) owns the Cluster, so it
serves the view; the nodes never do, and never spend anything on it beyond
answering GET /v1/status. The server runs its own IOLoop on a daemon thread so
that it works the same beside a Jupyter kernel's loop, a blocking script or
the command line, and `close()` (or the Cluster closing) stops it and frees
its port.

It listens on 127.0.0.1 only. The URL carries a random token, as Jupyter's
does: the page, its WebSocket and so every control need it, and the WebSocket
also refuses other origins (tornado's check), so another local user or a web
page in the same browser cannot drive the cluster. To see it from another
machine, forward the port (`ssh -L PORT:127.0.0.1:PORT host`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import logging
import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import tornado.web
import tornado.websocket
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from . import controls
from .feed import Feed

if TYPE_CHECKING:
    from ..client import Client
    from ..cluster import Cluster

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
HOST = "127.0.0.1"
MAX_MESSAGE = 64 << 10  # a control is a few hundred bytes; a bigger one is refused...
MAX_FRAME = 1 << 20  # ... and one over this closes the connection (tornado's limit)
MAX_UNSENT_FRAMES = 50  # a page this far behind (5 s of frames) is dropped
MAX_PENDING = 16  # controls of one page waiting for their answer
START_TIMEOUT = 10.0


def _refused(handler: tornado.web.RequestHandler, token: str) -> bool:
    """Answer 403 (saying where the token is) unless the request carries `token`."""
    given = handler.get_query_argument("token", "")
    if hmac.compare_digest(given.encode(), token.encode()):
        return False
    handler.set_status(403)
    handler.set_header("Content-Type", "text/plain; charset=utf-8")
    handler.finish(
        "This dashboard needs its token: open the whole URL that cluster.dashboard() "
        "or `kvcluster up --dashboard` printed (it ends in ?token=...).\n"
    )
    return True


class PageHandler(tornado.web.RequestHandler):
    def initialize(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard

    def prepare(self) -> None:
        _refused(self, self.dashboard.token)

    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        try:
            page = (STATIC / "index.html").read_bytes()
        except OSError:
            self.set_status(404)
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self.finish(
                f"The dashboard's page is missing ({STATIC / 'index.html'}): this kvcluster "
                "was installed without its static files. Reinstall it (pip install .) from a "
                "complete checkout.\n"
            )
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(page)


class FeedSocket(tornado.websocket.WebSocketHandler):
    """One page: receives the frames, sends controls and gets their results."""

    def initialize(self, dashboard: Dashboard) -> None:
        self.dashboard = dashboard
        self.needs_history = True
        self._unsent = 0
        self._pending = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def prepare(self) -> None:
        _refused(self, self.dashboard.token)  # before the upgrade: a plain 403

    def open(self, *args: str, **kwargs: str) -> None:
        self.dashboard.feed.subscribe(self)

    def on_close(self) -> None:
        self.dashboard.feed.unsubscribe(self)

    def send_frame(self, text: str) -> None:
        """Send a frame; drop a page that stopped reading rather than buffer for it."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        if self._unsent >= MAX_UNSENT_FRAMES:
            self.close(1008, "too slow: reload the page")
            return
        self._unsent += 1
        try:
            future = self.write_message(text)
        except tornado.websocket.WebSocketClosedError:
            return
        future.add_done_callback(self._sent)

    def _sent(self, future: asyncio.Future[None]) -> None:
        self._unsent -= 1
        with contextlib.suppress(Exception):
            future.result()

    def on_message(self, message: str | bytes) -> None:
        """Answer each control when it is done, independently of the others (a
        get need not wait for a restart); at most MAX_PENDING at a time."""
        raw = message if isinstance(message, bytes) else message.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_MESSAGE:
            size = f"{len(raw) / 1024:.0f} KiB"
            self._answer(controls.result(None, False, f"a control is at most 64 KiB, got {size}"))
            return
        if self._pending >= MAX_PENDING:
            rid = controls.request_id(_loads(message))
            self._answer(controls.result(rid, False, "too many controls waiting; try again"))
            return
        self._pending += 1
        task = asyncio.ensure_future(self._handle(message))
        self._tasks.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, message: str | bytes) -> None:
        try:
            answer = await self.dashboard.control(message)
        except Exception as exc:  # a bug here must not leave the page waiting
            log.exception("a control failed")
            rid = controls.request_id(_loads(message))
            answer = controls.result(rid, False, f"the dashboard failed to run it: {exc}")
        finally:
            self._pending -= 1
        self._answer(answer)

    def _answer(self, answer: dict[str, Any]) -> None:
        if self.ws_connection is not None and not self.ws_connection.is_closing():
            with contextlib.suppress(tornado.websocket.WebSocketClosedError):
                self.write_message(orjson.dumps(answer).decode())


class Dashboard:
    """The live view of one Cluster: `url` to open, `close()` to stop.

    In JupyterLab, showing the object shows the page inline (and its URL as a
    link). `Cluster.dashboard()` makes one and closes it with the Cluster.
    """

    def __init__(self, cluster: Cluster, port: int = 0) -> None:
        self.cluster = cluster
        self.token = secrets.token_urlsafe(24)
        self.t0 = time.monotonic()
        self.feed = Feed(cluster, self.t0)
        # Bound here, in the caller's thread, so that a taken port fails the call.
        self._sockets = bind_sockets(port, HOST, family=socket.AF_INET)
        self.port: int = self._sockets[0].getsockname()[1]
        self.url = f"http://{HOST}:{self.port}/?token={self.token}"
        self._actions = ThreadPoolExecutor(1, thread_name_prefix="kvcluster-dashboard-control")
        self._kv = ThreadPoolExecutor(1, thread_name_prefix="kvcluster-dashboard-kv")
        self._client: Client | None = None
        self._client_endpoints: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="kvcluster-dashboard", daemon=True)
        self._thread.start()
        if not self._started.wait(START_TIMEOUT) or self._error is not None:
            self.close()
            raise RuntimeError(f"the dashboard did not start: {self._error}")

    # ------------------------------------------------------------------ public

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def close(self) -> None:
        """Stop serving, close the pages' connections and free the port. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stop.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(10)
        for s in self._sockets:
            s.close()
        self._actions.shutdown(wait=False, cancel_futures=True)
        self._kv.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()

    def __enter__(self) -> Dashboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed"
        return f"<Dashboard {state} at {self.url}>"

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        if not self.running:
            return f"<p>The dashboard at {url} is closed.</p>"
        return (
            f'<iframe src="{url}" style="width:100%;height:760px;border:1px solid #ccc" '
            f'title="kvcluster live view"></iframe>'
            f'<p>Live view: <a href="{url}" target="_blank" rel="noopener">{url}</a> '
            f"(opens in a browser tab too)</p>"
        )

    # ------------------------------------------------------------------ the thread

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
            log.exception("the dashboard stopped")
        finally:
            self._started.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = tornado.web.Application(
            [
                (r"/", PageHandler, {"dashboard": self}),
                (r"/ws", FeedSocket, {"dashboard": self}),
                (r"/static/(.*)", tornado.web.StaticFileHandler, {"path": str(STATIC)}),
            ],
            websocket_max_message_size=MAX_FRAME,
            websocket_ping_interval=20,  # finds pages that went away without a goodbye
            websocket_ping_timeout=20,
            log_function=_log_request,
        )
        server = HTTPServer(app, max_body_size=MAX_MESSAGE, idle_connection_timeout=60)
        server.add_sockets(self._sockets)
        feed = asyncio.ensure_future(self.feed.run())
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            server.stop()
            for sub in list(self.feed.subscribers):
                if isinstance(sub, FeedSocket):
                    sub.close(1001, "the dashboard was closed")
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
            await server.close_all_connections()

    # ------------------------------------------------------------------ controls

    async def control(self, message: str | bytes) -> dict[str, Any]:
        """Check a control from a page and carry it out; the answer for the page."""
        decoded = _loads(message)
        if decoded is _INVALID:
            return controls.result(None, False, 'a control must be JSON, like {"action": "heal"}')
        rid = controls.request_id(decoded)
        try:
            control = controls.parse(decoded, self.cluster, self._kv_client)
        except controls.BadControl as exc:
            return controls.result(rid, False, str(exc))
        if control.action == "load_start":
            return controls.result(rid, True, await self.feed.start_load(control.clients))
        if control.action == "load_stop":
            return controls.result(rid, True, await self.feed.stop_load())
        pool = self._kv if control.action in controls.KV_ACTIONS else self._actions
        try:
            future = asyncio.get_running_loop().run_in_executor(pool, controls.run, control)
        except RuntimeError:  # shutting down
            return controls.result(rid, False, "the dashboard is closing")
        return await future

    def _kv_client(self) -> Client:
        """The Client puts and gets go through (used in the kv worker thread only)."""
        endpoints = self.cluster.endpoints
        if self._client is None or endpoints != self._client_endpoints:
            if self._client is not None:
                self._client.close()
            self._client = self.cluster.client(timeout=10.0)
            self._client_endpoints = endpoints
        return self._client


_INVALID = object()


def _log_request(handler: tornado.web.RequestHandler) -> None:
    """Requests at debug level: tornado's default warns of every 403 in the
    notebook's output."""
    status = handler.get_status()
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%d %s %.1f ms", status, handler.request.path, 1000 * handler.request.request_time()
        )


def _loads(message: str | bytes) -> Any:
    try:
        return orjson.loads(message)
    except orjson.JSONDecodeError:
        return _INVALID
