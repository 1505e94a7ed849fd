"""What the page may ask the harness to do, checked before anything is done.

A control arrives as one JSON object over the WebSocket. `parse` turns it into
a `Control` (a description and a blocking call on the Cluster) or raises
`BadControl` with a message the page shows as it is: everything the page sends
is bounded (node indexes in range, probabilities in [0, 1], delays up to the
nodes' own limit, keys as long as the store takes). The calls block (a restart
waits for the node to serve), so the server runs them in a worker thread, one
at a time, never on its event loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import KvClusterError
from .load import MAX_CLIENTS

if TYPE_CHECKING:
    from ..client import Client
    from ..cluster import Cluster

MAX_KEY_BYTES = 4096  # the nodes' default max_key_bytes
MAX_DELAY = 60.0  # seconds: what /admin/fault accepts
MAX_ID_CHARS = 64
NODE_ACTIONS = ("kill", "restart", "pause", "resume")
LINK_ACTIONS = ("cut", "drop", "delay")
LOAD_ACTIONS = ("load_start", "load_stop")
KV_ACTIONS = ("put", "get")
ACTIONS = (*NODE_ACTIONS, "partition", "heal", *LINK_ACTIONS, *LOAD_ACTIONS, *KV_ACTIONS)


class BadControl(ValueError):
    """The control is malformed or out of range; nothing was done."""


@dataclass(frozen=True, slots=True)
class Control:
    """A checked request. `run` blocks and returns (message, value) or raises."""

    id: int | str | None
    action: str
    describe: str
    run: Callable[[], tuple[str, Any]] | None = None  # None: the server handles it (load)
    clients: int = 0  # load_start


def request_id(message: Any) -> int | str | None:
    """The page's id for its request, echoed in the answer (None if unusable)."""
    if not isinstance(message, dict):
        return None
    value = message.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) < 2**53:
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    return None


def parse(message: Any, cluster: Cluster, client: Callable[[], Client]) -> Control:
    """Check `message` (a decoded JSON value) and bind it to the cluster.

    `client` gives the Client that puts and gets go through (made in the
    worker thread that uses it)."""
    if not isinstance(message, dict):
        raise BadControl('a control must be a JSON object like {"id": 1, "action": "heal"}')
    rid = request_id(message)
    action = message.get("action")
    if action not in ACTIONS:
        raise BadControl(f"unknown action {str(action)[:40]!r}; one of: {', '.join(ACTIONS)}")
    nodes = len(cluster.nodes)
    if action in NODE_ACTIONS:
        i = _node(message, "node", nodes)
        call = getattr(cluster, action)
        name = cluster.nodes[i].name
        return Control(
            rid, action, f"{action} {name}", lambda: (_done(call(i), action, name), None)
        )
    if action == "partition":
        groups = _groups(message.get("groups"), nodes)
        names = " | ".join(" ".join(cluster.nodes[i].name for i in g) for g in groups)
        return Control(
            rid, action, f"partition {names}", lambda: (_ok(cluster.partition(*groups)), None)
        )
    if action == "heal":
        return Control(rid, action, "heal", lambda: (_ok(cluster.heal()), None))
    if action in LINK_ACTIONS:
        return _link(rid, action, message, cluster)
    if action == "load_start":
        clients = _int(message.get("clients", 4), "clients", 1, MAX_CLIENTS)
        return Control(rid, action, f"load {clients} clients", clients=clients)
    if action == "load_stop":
        return Control(rid, action, "load stop")
    key = _key(message.get("key"))
    if action == "put":
        value = message.get("value")
        if not isinstance(value, str):
            raise BadControl('"value" must be a string')

        def put() -> tuple[str, Any]:
            revision = client().put(key, value)
            return f"put {key!r}: revision {revision}", revision

        return Control(rid, action, f"put {key!r}", put)

    def get() -> tuple[str, Any]:
        value = client().get(key)
        return (f"{key!r} is not set" if value is None else f"{key!r} = {value!r}"), value

    return Control(rid, action, f"get {key!r}", get)


def run(control: Control) -> dict[str, Any]:
    """Run a control's call (in a worker thread): its answer to the page."""
    assert control.run is not None
    try:
        message, value = control.run()
    except KvClusterError as exc:
        return result(control.id, False, f"{control.describe}: {exc.message}")
    except Exception as exc:  # the Cluster's errors say what went wrong; the page shows them
        return result(control.id, False, f"{control.describe} failed: {exc}")
    return result(control.id, True, message, value)


def result(rid: int | str | None, ok: bool, message: str, value: Any = None) -> dict[str, Any]:
    return {"type": "result", "id": rid, "ok": ok, "message": message, "value": value}


def _ok(_t: float) -> str:
    return "done"


def _done(_t: float, action: str, name: str) -> str:
    past = {"kill": "killed", "restart": "restarted", "pause": "paused", "resume": "resumed"}
    return f"{name} {past[action]}"


def _link(rid: int | str | None, action: str, message: dict[str, Any], cluster: Cluster) -> Control:
    nodes = len(cluster.nodes)
    src, dst = _node(message, "src", nodes), _node(message, "dst", nodes)
    if src == dst:
        raise BadControl('"src" and "dst" must be two different nodes')
    a, b = cluster.nodes[src].name, cluster.nodes[dst].name
    if action == "cut":
        return Control(rid, action, f"cut {a} -> {b}", lambda: (_ok(cluster.cut(src, dst)), None))
    if action == "drop":
        p = _number(message.get("p"), "p", 0.0, 1.0)
        return Control(
            rid,
            action,
            f"drop {p:.0%} {a} -> {b}",
            lambda: (_ok(cluster.drop(src, dst, p)), None),
        )
    seconds = _number(message.get("seconds"), "seconds", 0.0, MAX_DELAY)
    return Control(
        rid,
        action,
        f"delay {a} -> {b} by {seconds:g} s",
        lambda: (_ok(cluster.delay(src, dst, seconds)), None),
    )


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadControl(f'"{field}" must be an integer from {lo} to {hi}, got {value!r:.40}')
    return value


def _node(message: dict[str, Any], field: str, nodes: int) -> int:
    if field not in message:
        raise BadControl(f'"{field}" is missing: give a node index from 0 to {nodes - 1}')
    return _int(message[field], field, 0, nodes - 1)


def _number(value: Any, field: str, lo: float, hi: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not lo <= value <= hi
    ):
        raise BadControl(f'"{field}" must be a number from {lo:g} to {hi:g}, got {value!r:.40}')
    return float(value)


def _groups(value: Any, nodes: int) -> list[list[int]]:
    usage = '"groups" must be lists of node indexes, like [[0, 1], [2]]'
    if not isinstance(value, list) or not 1 <= len(value) <= nodes:
        raise BadControl(f"{usage}: from 1 to {nodes} groups")
    groups: list[list[int]] = []
    seen: set[int] = set()
    for g in value:
        if not isinstance(g, list) or not g or len(g) > nodes:
            raise BadControl(f"{usage}; each group holds 1 to {nodes} nodes")
        group = [_int(i, "groups", 0, nodes - 1) for i in g]
        if seen & set(group):
            raise BadControl(f"{usage}; a node may be in one group only")
        seen.update(group)
        groups.append(group)
    return groups


def _key(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise BadControl('"key" must be a non-empty string')
    if len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise BadControl(f'"key" must be at most {MAX_KEY_BYTES} bytes of UTF-8')
    return value
