"""GET, PUT and DELETE /v1/kv/<key>: the hot routes, served by `fasthttp`.

A read that needs no barrier (serializable, or a lease still valid) is answered
without a task or a coroutine; the rest are coroutines that `fasthttp` awaits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from .fasthttp import FastRoute, Request, Response
from .node import NodeServer
from .operations import (
    CONSISTENCY,
    FORWARDED_HEADER,
    LEADER_HEADER,
    ApiError,
    BecameLeader,
    body_limit,
    check_key,
    check_value,
    dump,
    error_body,
    forward,
    json_object,
    read_barrier,
    read_locally,
    replicate,
    with_session,
)

PREFIX = "/v1/kv/"
# How much more than the body limit a key route reads (and discards) in order
# to answer a JSON 413, rather than closing the connection on the client.
DRAIN_FACTOR = 8


class KeyRoutes:
    """The router `fasthttp.HttpServer` asks first: a route for the key paths."""

    def __init__(self, node: NodeServer) -> None:
        self.node = node
        limit = body_limit(node)
        too_large = self._too_large
        drain = DRAIN_FACTOR * limit
        self._routes = {
            "GET": FastRoute(self.get, limit, drain, too_large),  # a body is read and ignored
            "PUT": FastRoute(self.put, limit, drain, too_large),
            "DELETE": FastRoute(self.delete, limit, drain, too_large),
        }

    def __call__(self, method: str, path: str) -> FastRoute | None:
        if path.startswith(PREFIX):
            return self._routes.get(method)  # other methods: tornado answers 405
        return None

    # ------------------------------------------------------------------ routes

    def get(self, request: Request) -> Response | Awaitable[Response]:
        node = self.node
        try:
            key = self._key(request)
            consistency = _query_arg(request, "consistency", CONSISTENCY)
        except ApiError as exc:
            return self._error(exc)
        if read_locally(node, consistency):
            return self._read(key)
        return self._get_after_barrier(request, key, consistency)

    async def _get_after_barrier(
        self, request: Request, key: str, consistency: str | None
    ) -> Response:
        try:
            while not await read_barrier(self.node, consistency):
                with contextlib.suppress(BecameLeader):  # then the barrier is ours to run
                    return await self._forward(request)
        except ApiError as exc:
            return self._error(exc)
        return self._read(key)

    def _read(self, key: str) -> Response:
        kv = self.node.kv
        item = kv.get(key)
        if item is None:
            return self._error(ApiError(404, "not_found", f"no key {key!r}"), kv.revision)
        return self._ok({**item.to_dict(), "revision": kv.revision})

    async def put(self, request: Request) -> Response:
        node = self.node
        try:
            key = self._key(request)
            body = json_object(request.body, required=True)
            command = {"op": "put", "key": key, "value": check_value(node, body)}
            return await self._write(request, with_session(body, command))
        except ApiError as exc:
            return self._error(exc)

    async def delete(self, request: Request) -> Response:
        try:
            key = self._key(request)
            body = json_object(request.body, required=False)
            return await self._write(request, with_session(body, {"op": "delete", "key": key}))
        except ApiError as exc:
            return self._error(exc)

    async def _write(self, request: Request, command: dict[str, Any]) -> Response:
        if not self.node.core.is_leader:
            with contextlib.suppress(BecameLeader):
                return await self._forward(request)
        return self._ok(await replicate(self.node, command) or {})

    async def _forward(self, request: Request) -> Response:
        status, body, address = await forward(
            self.node,
            request.method,
            request.target,
            request.body,
            auth=request.headers.get("authorization"),
            forwarded=bool(request.headers.get(FORWARDED_HEADER.lower())),
        )
        return Response(status, body, [(LEADER_HEADER, address)])

    # ------------------------------------------------------------------ helpers

    def _key(self, request: Request) -> str:
        raw = request.path[len(PREFIX) :]  # the head was read as latin-1: one char per byte
        if raw.isascii() and "%" not in raw:
            return check_key(self.node, raw)
        try:
            key = unquote_to_bytes(raw.encode("latin-1")).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ApiError(400, "bad_request", f"invalid unicode in the key: {raw[:40]!r}") from exc
        return check_key(self.node, key)

    def _too_large(self, size: int) -> Response:
        message = (
            f"the request body is {size} bytes, more than any value within the limit "
            f"of {self.node.config.max_value_bytes} bytes can take"
        )
        return self._error(ApiError(413, "value_too_large", message))

    def _headers(self) -> list[tuple[str, str]]:
        leader = self.node.leader_address()
        return [(LEADER_HEADER, leader)] if leader else []

    def _ok(self, body: dict[str, Any]) -> Response:
        return Response(200, dump(body), self._headers())

    def _error(self, exc: ApiError, revision: int | None = None) -> Response:
        extra = {"revision": revision} if revision is not None else {}
        return Response(exc.status, error_body(exc.code, exc.message, **extra), self._headers())


def _query_arg(request: Request, name: str, choices: tuple[str, ...]) -> str | None:
    """The last value of a query argument, as tornado's get_argument would find it."""
    if not request.query:
        return None
    pairs = parse_qsl(request.query, keep_blank_values=True, encoding="latin-1")
    values = [v for k, v in pairs if k == name]
    if not values:
        return None
    try:
        value = values[-1].encode("latin-1").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_request", f"query argument {name!r} is not UTF-8") from exc
    if value not in choices:
        raise ApiError(400, "bad_request", f"{name} must be one of {list(choices)}")
    return value
