"""Bad input on every route, against real node processes.

The standard: bad input gets a clear 4xx error with a JSON body saying what is
wrong; the node keeps serving and no data is lost. Internal errors are bugs.

Each case sends one bad request to the leader and to a follower (a follower
checks what it can itself, and forwards the rest), asserts the status code and
the JSON error body, then checks that the same node still serves a write (which
a follower forwards) and a read.
The last tests check that the data written before all this is intact on every
node, that the membership is unchanged, and that no node logged an internal
error.

One cluster serves the whole module: starting node processes is the slow part.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
import requests

from kvcluster import Client
from kvcluster.cluster import Cluster
from kvcluster.raft import Message, MessageType
from kvcluster.server.codec import message_to_wire

pytestmark = pytest.mark.integration

# Generous for a busy 2-core CI machine; tests wait for conditions, never sleep.
DEADLINE = 60.0
MAX_KEY_BYTES = 4096  # NodeConfig defaults, which Cluster keeps
MAX_VALUE_BYTES = 1 << 20
TOKEN = "<the cluster token>"  # replaced by the real one when a case is sent

SEED = {
    "seed/plain": "before the bad requests",
    "seed/a/b/c": "slashes in the key",
    "seed/ünï cødé ☃": "ünïcødé välüé ☃",
    "seed/100%?&=#+": "reserved characters in the key",
    "seed/empty-value": "",
}


def kv_path(key: str) -> str:
    return "/v1/kv/" + quote(key, safe="")


def js(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@dataclass(frozen=True)
class Bad:
    """One bad request and the error it must get."""

    name: str
    method: str
    path: str  # percent-encoded as sent, query included
    status: int
    error: str  # the "error" code in the body
    says: str = ""  # a word the human "message" must contain (case-insensitive)
    body: bytes | None = None
    auth: str | None = None  # the Authorization header; TOKEN for the right one

    def param(self) -> Any:
        return pytest.param(self, id=self.name)


# ---------------------------------------------------------------- the cases

LONG_KEY = "k" * (MAX_KEY_BYTES + 1)
LONG_KEY_MULTIBYTE = "é" * (MAX_KEY_BYTES // 2) + "x"  # 4097 bytes in 2049 characters
DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE_INT = b"9" * 5000  # json.loads refuses ints this long (ValueError, not JSONDecodeError)

KV_PUT = [
    Bad("put-malformed-json", "PUT", "/v1/kv/x", 400, "bad_request", "JSON", b'{"value": '),
    Bad("put-trailing-garbage", "PUT", "/v1/kv/x", 400, "bad_request", "JSON", b'{"value":"v"} x'),
    Bad("put-empty-body", "PUT", "/v1/kv/x", 400, "bad_request", "body", b""),
    Bad("put-json-string", "PUT", "/v1/kv/x", 400, "bad_request", "object", js("v")),
    Bad("put-json-array", "PUT", "/v1/kv/x", 400, "bad_request", "object", js(["v"])),
    Bad("put-json-number", "PUT", "/v1/kv/x", 400, "bad_request", "object", js(1)),
    Bad("put-json-null", "PUT", "/v1/kv/x", 400, "bad_request", "object", b"null"),
    Bad("put-not-utf8", "PUT", "/v1/kv/x", 400, "bad_request", "UTF-8", b'{"value": "\xff"}'),
    Bad(
        "put-utf8-bom", "PUT", "/v1/kv/x", 400, "bad_request", "JSON", b'\xef\xbb\xbf{"value":"v"}'
    ),
    Bad("put-deeply-nested", "PUT", "/v1/kv/x", 400, "bad_request", "nested", DEEP),
    Bad(
        "put-deep-value",
        "PUT",
        "/v1/kv/x",
        400,
        "bad_request",
        "nested",
        b'{"value":' + DEEP + b"}",
    ),
    Bad("put-no-value", "PUT", "/v1/kv/x", 400, "bad_request", "value", js({})),
    Bad("put-misspelt-value", "PUT", "/v1/kv/x", 400, "bad_request", "value", js({"val": "v"})),
    Bad("put-value-null", "PUT", "/v1/kv/x", 400, "bad_request", "value", js({"value": None})),
    Bad("put-value-number", "PUT", "/v1/kv/x", 400, "bad_request", "string", js({"value": 1})),
    Bad("put-value-bool", "PUT", "/v1/kv/x", 400, "bad_request", "string", js({"value": True})),
    Bad("put-value-list", "PUT", "/v1/kv/x", 400, "bad_request", "string", js({"value": ["v"]})),
    Bad("put-value-object", "PUT", "/v1/kv/x", 400, "bad_request", "string", js({"value": {}})),
    Bad(
        "put-value-lone-surrogate",
        "PUT",
        "/v1/kv/x",
        400,
        "bad_request",
        "surrogate",
        b'{"value": "a\\ud800b"}',
    ),
    Bad(
        "put-client-id-without-seq",
        "PUT",
        "/v1/kv/x",
        400,
        "bad_request",
        "seq",
        js({"value": "v", "client_id": "c"}),
    ),
    Bad(
        "put-seq-without-client-id",
        "PUT",
        "/v1/kv/x",
        400,
        "bad_request",
        "client_id",
        js({"value": "v", "seq": 1}),
    ),
    *(
        Bad(
            f"put-seq-{label}",
            "PUT",
            "/v1/kv/x",
            400,
            "bad_request",
            "seq",
            b'{"value": "v", "client_id": "c", "seq": ' + seq + b"}",
        )
        for label, seq in [
            ("negative", b"-1"),
            ("bool", b"true"),
            ("string", b'"1"'),
            ("float", b"1.5"),
            ("list", b"[1]"),
            # Valid JSON, but more than the 64 bits a log entry carries between nodes.
            ("2-to-the-63", str(2**63).encode()),
            ("2-to-the-80", str(2**80).encode()),
        ]
    ),
    *(
        # Not JSON at all (JSON has no NaN, and 1e400 is no finite number).
        Bad(f"put-seq-{label}", "PUT", "/v1/kv/x", 400, "bad_request", "JSON", body)
        for label, body in [
            ("nan", b'{"value": "v", "client_id": "c", "seq": NaN}'),
            ("infinity", b'{"value": "v", "client_id": "c", "seq": 1e400}'),
        ]
    ),
    Bad(
        "put-seq-too-many-digits",
        "PUT",
        "/v1/kv/x",
        400,
        "bad_request",
        "JSON",
        b'{"value": "v", "client_id": "c", "seq": ' + HUGE_INT + b"}",
    ),
    *(
        Bad(
            f"put-client-id-{label}",
            "PUT",
            "/v1/kv/x",
            400,
            "bad_request",
            "client_id",
            js({"value": "v", "client_id": client_id, "seq": 1}),
        )
        for label, client_id in [("empty", ""), ("number", 7), ("too-long", "c" * 129)]
    ),
    Bad("put-empty-key", "PUT", "/v1/kv/", 400, "bad_request", "key", js({"value": "v"})),
    Bad(
        "put-key-too-long",
        "PUT",
        kv_path(LONG_KEY),
        414,
        "key_too_long",
        "4096",
        js({"value": "v"}),
    ),
    Bad(
        "put-key-too-long-multibyte",
        "PUT",
        kv_path(LONG_KEY_MULTIBYTE),
        414,
        "key_too_long",
        "4097 bytes",
        js({"value": "v"}),
    ),
    Bad("put-key-not-utf8", "PUT", "/v1/kv/%ff", 400, "bad_request", "unicode", js({"value": "v"})),
    Bad(
        "put-key-encoded-surrogate",
        "PUT",
        "/v1/kv/%ed%a0%80",
        400,
        "bad_request",
        "unicode",
        js({"value": "v"}),
    ),
    Bad(
        "put-value-too-large",
        "PUT",
        "/v1/kv/x",
        413,
        "value_too_large",
        "limit",
        js({"value": "v" * (MAX_VALUE_BYTES + 1)}),
    ),
    Bad(
        "put-value-too-large-multibyte",
        "PUT",
        "/v1/kv/x",
        413,
        "value_too_large",
        "limit",
        js({"value": "é" * (MAX_VALUE_BYTES // 2) + "x"}),  # 1 byte over in half the chars
    ),
    # Bigger than the route's whole-body limit: refused from its Content-Length,
    # before the body is read (and the connection closed).
    Bad(
        "put-value-far-too-large",
        "PUT",
        "/v1/kv/x",
        413,
        "payload_too_large",
        "bytes",
        js({"value": "v" * (10 * MAX_VALUE_BYTES)}),
    ),
]

KV_DELETE = [
    Bad("delete-empty-key", "DELETE", "/v1/kv/", 400, "bad_request", "key"),
    Bad("delete-key-too-long", "DELETE", kv_path(LONG_KEY), 414, "key_too_long", "limit"),
    Bad("delete-key-not-utf8", "DELETE", "/v1/kv/%ff", 400, "bad_request", "unicode"),
    Bad("delete-malformed-json", "DELETE", "/v1/kv/x", 400, "bad_request", "JSON", b"{"),
    Bad("delete-json-array", "DELETE", "/v1/kv/x", 400, "bad_request", "object", js([])),
    Bad("delete-not-utf8", "DELETE", "/v1/kv/x", 400, "bad_request", "UTF-8", b'{"a":"\xfe"}'),
    Bad(
        "delete-client-id-without-seq",
        "DELETE",
        "/v1/kv/x",
        400,
        "bad_request",
        "seq",
        js({"client_id": "c"}),
    ),
    Bad(
        "delete-seq-negative",
        "DELETE",
        "/v1/kv/x",
        400,
        "bad_request",
        "seq",
        js({"client_id": "c", "seq": -5}),
    ),
]

KV_GET = [
    Bad("get-empty-key", "GET", "/v1/kv/", 400, "bad_request", "key"),
    Bad("get-key-too-long", "GET", kv_path(LONG_KEY), 414, "key_too_long", "limit"),
    Bad("get-key-too-long-multibyte", "GET", kv_path(LONG_KEY_MULTIBYTE), 414, "key_too_long"),
    Bad("get-key-not-utf8", "GET", "/v1/kv/%ff", 400, "bad_request", "unicode"),
    *(
        Bad(f"get-consistency-{label}", "GET", f"/v1/kv/x?{query}", 400, "bad_request", "consist")
        for label, query in [
            ("strong", "consistency=strong"),
            ("empty", "consistency="),
            ("upper-case", "consistency=LINEARIZABLE"),
            ("not-utf8", "consistency=%ff"),
        ]
    ),
]

KV_LIST = [
    *(
        Bad(f"list-limit-{label}", "GET", f"/v1/kv?limit={limit}", 400, "bad_request", "limit")
        for label, limit in [
            ("zero", "0"),
            ("negative", "-1"),
            ("word", "abc"),
            ("empty", ""),
            ("fraction", "1.5"),
            ("leading-space", "%201"),
            ("superscript-digit", quote("²")),  # str.isdigit() says yes, int() says no
            ("not-utf8", "%ff"),
        ]
    ),
    Bad("list-consistency", "GET", "/v1/kv?consistency=eventual", 400, "bad_request", "consist"),
    Bad("list-prefix-not-utf8", "GET", "/v1/kv?prefix=%ff", 400, "bad_request", "prefix"),
]

METHODS = [
    Bad(f"{method.lower()}-{label}", method, path, 405, "method_not_allowed", method)
    for method, label, path in [
        ("POST", "kv-key", "/v1/kv/x"),
        ("PATCH", "kv-key", "/v1/kv/x"),
        ("PUT", "kv-list", "/v1/kv"),
        ("DELETE", "kv-list", "/v1/kv"),
        ("PATCH", "status", "/v1/status"),
        ("POST", "status", "/v1/status"),
        ("DELETE", "status", "/v1/status"),
        ("POST", "members", "/v1/members"),
        ("GET", "member", "/v1/members/n0"),
        ("GET", "register", "/register"),
        ("GET", "raft", "/raft/messages"),
        ("OPTIONS", "kv-key", "/v1/kv/x"),
    ]
]
# Not an HTTP method at all: the parser refuses the request line.
METHODS.append(Bad("brew-status", "BREW", "/v1/status", 400, "bad_request", "method"))

ROUTES = [
    Bad(f"no-route-{label}", method, path, 404, "not_found", "route")
    for method, label, path in [
        ("GET", "root", "/"),
        ("GET", "v1", "/v1"),
        ("GET", "typo", "/v1/kvs"),
        ("GET", "status-child", "/v1/status/x"),
        ("GET", "v2", "/v2/kv/x"),
        ("DELETE", "member-no-id", "/v1/members/"),
        ("DELETE", "member-nested", "/v1/members/a/b"),
        ("POST", "unknown-post", "/v1/nothing-here"),
        ("PATCH", "unknown-patch", "/nothing/here"),
    ]
]

# A well-formed message as the codec writes it today, addressed to no node: the
# RAFT cases break it one way each, and should one of them decode after all,
# no node steps a message that is not addressed to it.
RAFT_MESSAGE = message_to_wire(Message(MessageType.HEARTBEAT_RESP, 1, "nobody", "nowhere"))
WRONG = "Bearer not-the-token"

AUTH = [
    *(
        Bad(f"{route}-{label}", method, path, 401, "unauthorized", "token", body, auth)
        for route, method, path, body in [
            ("raft", "POST", "/raft/messages", js([RAFT_MESSAGE])),
            ("register", "POST", "/register", js({"id": "x", "address": "http://127.0.0.1:9"})),
            ("remove-member", "DELETE", "/v1/members/n1", None),
            ("remove-non-member", "DELETE", "/v1/members/nobody", None),
        ]
        for label, auth in [
            ("no-token", None),
            ("wrong-token", WRONG),
            ("bare-token", "<bare>"),  # the token without "Bearer "
            ("empty-bearer", "Bearer "),
            ("non-ascii-token", "Bearer tökén"),
        ]
    ),
]


def raft(name: str, body: bytes, says: str = "batch") -> Bad:
    return Bad(f"raft-{name}", "POST", "/raft/messages", 400, "bad_request", says, body, TOKEN)


def message(**changes: Any) -> list[Any]:
    """RAFT_MESSAGE with some of its leading fields (whose places are stable) changed."""
    place = {"type": 0, "term": 1, "src": 2, "dst": 3, "entries": 6}
    m = list(RAFT_MESSAGE)
    for name, value in changes.items():
        m[place[name]] = value
    return m


def raw_term(text: bytes) -> bytes:
    """A batch of one message whose term is `text`, verbatim (not valid JSON for json.dumps)."""
    return js([message(term="TERM")]).replace(b'"TERM"', text, 1)


RAFT = [
    raft("empty-body", b""),
    raft("not-json", b"garbage"),
    raft("not-utf8", b"[\xff\xfe]"),
    raft("object", js({"messages": []})),
    raft("number", js(7)),
    raft("array-of-numbers", js([1, 2, 3])),
    raft("short-message", js([RAFT_MESSAGE[:-1]])),
    raft("long-message", js([[*RAFT_MESSAGE, "extra"]])),
    raft("unknown-type", js([message(type=99)])),
    raft("term-not-a-number", js([message(term="one")])),
    raft("term-null", js([message(term=None)])),
    raft("term-infinite", js([message(term=1e400)])),
    raft("term-nan", raw_term(b"NaN")),
    raft("term-too-many-digits", raw_term(HUGE_INT)),
    raft("entries-not-a-list", js([message(entries=5)])),
    raft("entry-malformed", js([message(entries=[[1]])])),
    raft("entry-bad-kind", js([message(entries=[[1, 1, 42, None]])])),
    raft("deeply-nested", DEEP),
]


def register(name: str, body: dict[str, Any] | bytes | None, says: str) -> Bad:
    raw = body if isinstance(body, bytes | None) else js(body)
    return Bad(f"register-{name}", "POST", "/register", 400, "bad_request", says, raw, TOKEN)


GOOD_ADDRESS = "http://127.0.0.1:9"
REGISTER = [
    register("no-body", None, "body"),
    register("malformed-json", b'{"id": ', "JSON"),
    register("json-array", js(["x", GOOD_ADDRESS]), "object"),
    register("not-utf8", b'{"id": "\xff", "address": "http://127.0.0.1:9"}', "UTF-8"),
    register("no-id", {"address": GOOD_ADDRESS}, "id"),
    register("id-empty", {"id": "", "address": GOOD_ADDRESS}, "id"),
    register("id-number", {"id": 5, "address": GOOD_ADDRESS}, "id"),
    register("id-too-long", {"id": "x" * 65, "address": GOOD_ADDRESS}, "id"),
    register("id-lone-surrogate", b'{"id": "\\udc00", "address": "http://127.0.0.1:9"}', "surro"),
    register("no-address", {"id": "x"}, "address"),
    register("address-number", {"id": "x", "address": 9}, "address"),
    register("address-not-http", {"id": "x", "address": "ftp://127.0.0.1:9"}, "address"),
    # A plain node's cluster calls its members over plain HTTP: https is refused.
    register("address-other-scheme", {"id": "x", "address": "https://127.0.0.1:9"}, "http://"),
    register("address-no-scheme", {"id": "x", "address": "127.0.0.1:9"}, "address"),
    register("address-scheme-only", {"id": "x", "address": "http://"}, "address"),
    register("address-no-port", {"id": "x", "address": "http://127.0.0.1"}, "address"),
    register("address-port-word", {"id": "x", "address": "http://127.0.0.1:http"}, "address"),
    register("address-port-zero", {"id": "x", "address": "http://127.0.0.1:0"}, "address"),
    register("address-port-too-big", {"id": "x", "address": "http://127.0.0.1:99999"}, "address"),
    register("address-with-path", {"id": "x", "address": "http://127.0.0.1:9/x?y"}, "address"),
    register("address-newline", {"id": "x", "address": "http://127.0.0.1:9\r\nX: y"}, "address"),
    register("address-space", {"id": "x", "address": "http://127.0.0.1 :9"}, "address"),
    register(
        "incarnation-number",
        {"id": "x", "address": GOOD_ADDRESS, "incarnation": 3},
        "incarnation",
    ),
]

MEMBERS = [
    Bad(
        "remove-non-member", "DELETE", "/v1/members/nobody", 404, "not_found", "member", None, TOKEN
    ),
    Bad(
        "remove-non-member-unicode",
        "DELETE",
        "/v1/members/" + quote("nöbödy ☃"),
        404,
        "not_found",
        "member",
        None,
        TOKEN,
    ),
    Bad(
        "remove-id-not-utf8",
        "DELETE",
        "/v1/members/%ff",
        400,
        "bad_request",
        "unicode",
        None,
        TOKEN,
    ),
]

# Cluster starts nodes with fault injection on. A bad request here must never
# partition anything: the last tests would see it.
FAULT = [
    *(
        Bad(
            f"fault-{method.lower()}-{label}",
            method,
            "/admin/fault",
            401,
            "unauthorized",
            "token",
            body,
            auth,
        )
        for method, body in [("GET", None), ("POST", js({"block": ["n1"]}))]
        for label, auth in [("no-token", None), ("wrong-token", WRONG)]
    ),
    *(
        Bad(f"fault-{name}", "POST", "/admin/fault", 400, "bad_request", says, body, TOKEN)
        for name, says, body in [
            ("no-body", "body", None),
            ("malformed-json", "JSON", b'{"block": ['),
            ("json-array", "object", js(["n1"])),
            ("no-block", "block", js({"blocks": ["n1"]})),
            ("block-string", "block", js({"block": "n1"})),
            ("block-numbers", "block", js({"block": ["n1", 2]})),
            ("block-null", "block", js({"block": None})),
        ]
    ),
    Bad("fault-put", "PUT", "/admin/fault", 405, "method_not_allowed", "PUT", js({}), TOKEN),
]

CASES = (
    KV_PUT
    + KV_DELETE
    + KV_GET
    + KV_LIST
    + METHODS
    + ROUTES
    + AUTH
    + RAFT
    + REGISTER
    + MEMBERS
    + FAULT
)


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(3) as c:
        leader = c.endpoints[c.wait_for_leader(DEADLINE)]
        for key, value in SEED.items():
            resp = send("PUT", leader + kv_path(key), js({"value": value}), retry=(503, 504))
            assert resp.status_code == 200, resp.text
        yield c


def send(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    retry: tuple[int, ...] = (503,),
) -> requests.Response:
    """Send one request on a fresh connection, exactly as written (no re-quoting).

    While the cluster is between leaders the request is repeated until
    DEADLINE: on 503 (certainly not applied) and, for good writes that are
    safe to repeat, on 504. A fresh connection per request means that a
    dropped connection is this request's doing.
    """
    deadline = time.monotonic() + DEADLINE
    delay = 0.01
    while True:
        with requests.Session() as session:
            request = requests.Request(method, url, data=body, headers=headers or {})
            prepared = session.prepare_request(request)
            prepared.url = url
            resp = session.send(prepared, timeout=DEADLINE, allow_redirects=False)
        if resp.status_code not in retry or time.monotonic() >= deadline:
            return resp
        time.sleep(delay)  # polling for a new leader, as Cluster.wait_until does
        delay = min(delay * 1.5, 0.1)


def token(c: Cluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {c.token}"}


def endpoint(c: Cluster, target: str) -> str:
    """The leader's or a follower's base URL, as of now."""
    leader = c.wait_for_leader(DEADLINE)
    return c.endpoints[leader if target == "leader" else (leader + 1) % len(c.nodes)]


def error_body(resp: requests.Response, what: str) -> dict[str, Any]:
    """Assert that resp carries a JSON error body and return it."""
    assert resp.headers.get("Content-Type", "").startswith("application/json"), (
        f"{what}: Content-Type {resp.headers.get('Content-Type')!r}, body {resp.text[:300]!r}"
    )
    try:
        body = resp.json()
    except ValueError:
        pytest.fail(f"{what}: the body is not JSON: {resp.text[:300]!r}")
    assert isinstance(body, dict), f"{what}: {body!r}"
    assert isinstance(body.get("error"), str) and body["error"], f"{what}: {body!r}"
    assert isinstance(body.get("message"), str) and body["message"].strip(), f"{what}: {body!r}"
    return body


def assert_serves(base: str, tag: str) -> None:
    """The node at `base` still takes a write (a follower forwards it) and a read."""
    key = f"after/{tag}/{uuid.uuid4().hex}"
    value = f"still serving after {tag} ✓"
    resp = send("PUT", base + kv_path(key), js({"value": value}), retry=(503, 504))
    assert resp.status_code == 200, f"PUT after {tag}: {resp.status_code} {resp.text[:300]}"
    assert resp.json()["key"] == key
    resp = send("GET", base + kv_path(key))
    assert resp.status_code == 200, f"GET after {tag}: {resp.status_code} {resp.text[:300]}"
    assert resp.json()["value"] == value


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("target", ["leader", "follower"])
@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_bad_request_gets_a_json_4xx_and_the_node_keeps_serving(
    cluster: Cluster, case: Bad, target: str
) -> None:
    base = endpoint(cluster, target)
    headers: dict[str, str] = {}
    if case.auth == TOKEN:
        headers = token(cluster)
    elif case.auth == "<bare>":
        headers["Authorization"] = cluster.token
    elif case.auth is not None:
        headers["Authorization"] = case.auth
    what = f"{case.method} {case.path[:80]} on the {target}"
    try:
        resp = send(case.method, base + case.path, case.body, headers)
    except requests.ConnectionError as exc:
        pytest.fail(f"{what}: the node dropped the connection: {exc}")
    assert resp.status_code == case.status, (
        f"{what}: expected {case.status}, got {resp.status_code} {resp.text[:300]!r}"
    )
    body = error_body(resp, what)
    assert body["error"] == case.error, f"{what}: {body!r}"
    assert case.says.lower() in body["message"].lower(), f"{what}: {body!r}"
    assert_serves(base, case.name)


@pytest.mark.parametrize("target", ["leader", "follower"])
def test_the_raft_message_the_bad_ones_are_made_from_is_good(cluster: Cluster, target: str) -> None:
    """So each RAFT case is refused for what it breaks, not for a stale wire format."""
    base = endpoint(cluster, target)
    resp = send("POST", base + "/raft/messages", js([RAFT_MESSAGE]), token(cluster))
    assert resp.status_code == 204, resp.text[:300]
    assert_serves(base, "a message to nobody")


@pytest.mark.parametrize("target", ["leader", "follower"])
@pytest.mark.parametrize(
    "key",
    [
        pytest.param("k" * MAX_KEY_BYTES, id="ascii"),
        pytest.param("é" * (MAX_KEY_BYTES // 2), id="multibyte"),
    ],
)
def test_a_key_of_exactly_the_limit_is_accepted(cluster: Cluster, key: str, target: str) -> None:
    base = endpoint(cluster, target)
    resp = send("PUT", base + kv_path(key), js({"value": target}), retry=(503, 504))
    assert resp.status_code == 200, resp.text[:300]
    resp = send("GET", base + kv_path(key))
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["value"] == target


@pytest.mark.parametrize("target", ["leader", "follower"])
def test_a_value_of_exactly_the_limit_is_accepted(cluster: Cluster, target: str) -> None:
    base = endpoint(cluster, target)
    # MAX_VALUE_BYTES bytes of UTF-8 in fewer characters (about 2 MiB of escaped JSON
    # on the wire between nodes, so the AppendEntries carrying it stays small).
    value = "☃" * (MAX_VALUE_BYTES // 3) + "v" * (MAX_VALUE_BYTES % 3)
    assert len(value.encode()) == MAX_VALUE_BYTES
    key = f"big/{target}"
    resp = send("PUT", base + kv_path(key), js({"value": value}), retry=(503, 504))
    assert resp.status_code == 200, resp.text[:300]
    resp = send("GET", base + kv_path(key))
    assert resp.status_code == 200, resp.text[:300]
    assert resp.json()["value"] == value


def test_the_largest_seq_is_accepted_and_reaches_every_node(cluster: Cluster) -> None:
    opened = send("POST", endpoint(cluster, "follower") + "/v1/sessions", b"", retry=(503, 504))
    assert opened.status_code == 200, opened.text[:300]
    body = js({"value": "top", "client_id": opened.json()["client_id"], "seq": 2**63 - 1})
    resp = send("PUT", endpoint(cluster, "follower") + kv_path("seq/top"), body, retry=(503, 504))
    assert resp.status_code == 200, resp.text[:300]
    for base in cluster.endpoints:
        resp = send("GET", base + kv_path("seq/top"))
        assert resp.status_code == 200, resp.text[:300]
        assert resp.json()["value"] == "top"


@pytest.mark.parametrize("target", ["leader", "follower"])
def test_a_huge_list_limit_means_a_page(cluster: Cluster, target: str) -> None:
    base = endpoint(cluster, target)
    resp = send("GET", f"{base}/v1/kv?prefix=seed/&limit={'9' * 5000}")
    assert resp.status_code == 200, resp.text[:300]
    assert {kv["key"] for kv in resp.json()["kvs"]} == set(SEED)
    assert resp.json()["more"] is False


def test_a_list_of_large_values_comes_in_pages_and_the_client_reads_them_all(
    cluster: Cluster,
) -> None:
    """12 values of 512 KiB are 6 MiB: over a page's 4 MiB, so one answer holds
    part of them and says `more`; `after` the last key gives the rest, and
    Client.list reads every page."""
    big = {f"page/{i:02d}": chr(ord("a") + i) * (512 << 10) for i in range(12)}
    for key, value in big.items():
        body = json.dumps({"value": value}).encode()
        assert send("PUT", endpoint(cluster, "leader") + kv_path(key), body).status_code == 200
    base = endpoint(cluster, "follower")
    first = send("GET", f"{base}/v1/kv?prefix=page/").json()
    assert first["more"] is True and 1 <= first["count"] < 12
    last = first["kvs"][-1]["key"]
    rest = send("GET", f"{base}/v1/kv?prefix=page/&after={quote(last)}").json()
    assert rest["more"] is False
    assert [kv["key"] for kv in first["kvs"] + rest["kvs"]] == sorted(big)
    client = Client(cluster.endpoints, timeout=DEADLINE)
    assert client.list("page/") == big
    assert list(client.list("page/", limit=3)) == sorted(big)[:3]
    assert list(client.list("page/", limit=11)) == sorted(big)[:11]
    client.close()


def test_a_key_too_long_even_for_the_request_line_gets_a_json_414(cluster: Cluster) -> None:
    base = endpoint(cluster, "leader")
    resp = send("GET", base + kv_path("k" * (70 * 1024)))
    assert resp.status_code == 414
    # Over the 64 KiB a request head may take: the HTTP stack refuses the URL itself.
    assert error_body(resp, "GET of a 70 KiB key")["error"] == "uri_too_long"


def test_data_written_before_the_bad_requests_is_intact_on_every_node(cluster: Cluster) -> None:
    for i, base in enumerate(cluster.endpoints):
        for key, value in SEED.items():
            resp = send("GET", base + kv_path(key))
            assert resp.status_code == 200, f"node {i} {key!r}: {resp.text[:300]}"
            assert resp.json()["value"] == value, f"node {i} {key!r}"
        resp = send("GET", f"{base}/v1/kv?prefix=seed/")
        assert resp.status_code == 200, resp.text[:300]
        assert {kv["key"]: kv["value"] for kv in resp.json()["kvs"]} == SEED, f"node {i}"
        # No bad request added or removed a member, or cut a node off.
        resp = send("GET", f"{base}/v1/members")
        assert resp.status_code == 200, resp.text[:300]
        members = resp.json()["members"]
        assert sorted(members) == ["n0", "n1", "n2"], f"node {i}: {members}"
        assert all(m["voter"] for m in members.values()), f"node {i}: {members}"
        resp = send("GET", f"{base}/admin/fault", headers=token(cluster))
        assert resp.status_code == 200, resp.text[:300]
        assert resp.json() == {"block_in": [], "block_out": [], "drop": {}, "delay": {}}, i


def test_no_node_logged_an_internal_error(cluster: Cluster) -> None:
    for h in cluster.nodes:
        assert h.alive, f"{h.name} died"
        log = (cluster.work_dir / f"{h.name}.log").read_text(errors="replace")
        assert "Traceback" not in log, f"{h.name} logged an internal error:\n{log[-5000:]}"
