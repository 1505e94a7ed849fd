"""One PySyncObj node replicating a dict, behind a tornado front end speaking kvcluster's JSON.

Started by `bench/peers.py` (one process per node)::

    python bench/peers_pysyncobj.py --raft 127.0.0.1:7001 --partners 127.0.0.1:7002,...
        --http 8001 --election-timeout 1.0 --heartbeat 0.1

Routes: `PUT /v1/kv/{key}` (a replicated `set`), `GET /v1/kv/{key}` (linearizable: a
replicated `get` that goes through the log, as PySyncObj has no ReadIndex), with
`?consistency=serializable` a local read of this node's dict, and `GET /v1/status`.
The raft thread hands results to tornado's loop with `add_callback` (thread safe).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import signal
from typing import Any
from urllib.parse import unquote

import tornado.ioloop
import tornado.web
from pysyncobj import SyncObj, SyncObjConf, replicated  # type: ignore[import-untyped]


class KV(SyncObj):
    def __init__(self, me: str, partners: list[str], conf: Any) -> None:
        super().__init__(me, partners, conf)
        self.data: dict[str, str] = {}
        self.revision = 0

    @replicated
    def set(self, key: str, value: str) -> int:
        self.revision += 1
        self.data[key] = value
        return self.revision

    @replicated
    def get(self, key: str) -> tuple[str | None, int]:
        return self.data.get(key), self.revision


class KeyHandler(tornado.web.RequestHandler):
    def initialize(self, kv: KV) -> None:
        self.kv = kv

    async def _call(self, method: Any, *args: Any) -> tuple[Any, Any]:
        loop = tornado.ioloop.IOLoop.current()
        fut = loop.asyncio_loop.create_future()  # type: ignore[attr-defined]

        def done(result: Any, err: Any) -> None:
            loop.add_callback(lambda: fut.done() or fut.set_result((result, err)))

        method(*args, callback=done, timeout=5.0)
        result: tuple[Any, Any] = await fut
        return result

    async def put(self, key: str) -> None:
        key = unquote(key)
        value = json.loads(self.request.body)["value"]
        rev, err = await self._call(self.kv.set, key, value)
        if err != 0:  # FAIL_REASON.SUCCESS == 0
            self.set_status(503)
            self.finish({"error": "unavailable", "message": str(err)})
            return
        self.finish({"key": key, "revision": rev})

    async def get(self, key: str) -> None:
        key = unquote(key)
        if self.get_query_argument("consistency", "") == "serializable":
            value, rev = self.kv.data.get(key), self.kv.revision
        else:
            answer, err = await self._call(self.kv.get, key)
            if err != 0:
                self.set_status(503)
                self.finish({"error": "unavailable", "message": str(err)})
                return
            value, rev = answer
        if value is None:
            self.set_status(404)
            self.finish({"error": "not_found", "revision": rev})
            return
        self.finish({"key": key, "value": value, "revision": rev})


class StatusHandler(tornado.web.RequestHandler):
    def initialize(self, kv: KV) -> None:
        self.kv = kv

    def get(self) -> None:
        s = self.kv.getStatus()
        leader = s.get("leader")
        self.finish(
            {
                "role": {0: "follower", 1: "candidate", 2: "leader"}.get(s["state"], "?"),
                "leader": str(leader) if leader is not None else None,
                "self": str(s["self"]),
                "term": s["raft_term"],
                "commit_index": s["commit_idx"],
            }
        )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--raft", required=True)
    p.add_argument("--partners", required=True)
    p.add_argument("--http", type=int, required=True)
    p.add_argument("--election-timeout", type=float, default=1.0, help="T: drawn from (T, 2T)")
    p.add_argument("--heartbeat", type=float, default=0.1)
    p.add_argument(
        "--batch",
        action="store_true",
        help="PySyncObj's default appendEntriesUseBatch: new entries wait for the next"
        " heartbeat (a heartbeat of latency per write); without it they go out at once",
    )
    args = p.parse_args()
    # Die with the parent (bench/peers.py), whatever happens to it.
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    t = args.election_timeout
    conf = SyncObjConf(
        raftMinTimeout=t,
        raftMaxTimeout=2 * t,
        appendEntriesPeriod=args.heartbeat,
        connectionTimeout=max(3.5, 2 * t + 0.1),
        autoTickPeriod=min(0.05, args.heartbeat / 2),
        commandsWaitLeader=True,
        appendEntriesUseBatch=args.batch,
        dynamicMembershipChange=False,
    )
    kv = KV(args.raft, [x for x in args.partners.split(",") if x], conf)
    app = tornado.web.Application(
        [
            (r"/v1/kv/(.+)", KeyHandler, {"kv": kv}),
            (r"/v1/status", StatusHandler, {"kv": kv}),
        ]
    )
    app.listen(args.http, address="127.0.0.1")
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
