"""Capture what a real etcd 3.4 gateway answers, as fixtures for tests/test_etcd_wire.py.

Run by hand when the fixtures need to grow (it needs an `etcd` 3.4 binary on PATH):

    .venv/bin/python tests/etcd_wire_capture.py > /tmp/fixtures.json

It starts one etcd on free ports in a temporary directory, sends a fixed script
of requests to its v3 JSON gateway (unary routes with urllib, /v3/watch over a
raw socket so that each streamed chunk is kept as etcd wrote it), prints every
request with etcd's status and exact body as JSON, and stops etcd. The script
is fixed so that revisions come out the same each run; lease IDs that etcd
picks and the cluster and member IDs differ, and the tests read them from the
fixtures rather than assuming them.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

DEADLINE = 60.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def etcd() -> Iterator[int]:
    """One etcd member on free ports; yields its client port; always stopped."""
    client, peer = free_port(), free_port()
    data = tempfile.mkdtemp(prefix="etcd-capture-")
    peer_url, client_url = f"http://127.0.0.1:{peer}", f"http://127.0.0.1:{client}"
    args = [
        "etcd",
        f"--data-dir={data}/member",
        f"--listen-client-urls={client_url}",
        f"--advertise-client-urls={client_url}",
        f"--listen-peer-urls={peer_url}",
        f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=default={peer_url}",
    ]
    log = open(f"{data}/etcd.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:  # until it serves and has decided its cluster version
            try:
                with urllib.request.urlopen(f"{client_url}/version", timeout=5) as r:
                    if json.loads(r.read())["etcdcluster"] != "not_decided":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start: see {data}/etcd.log")
            time.sleep(0.1)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(data, ignore_errors=True)


class Capture:
    def __init__(self, port: int) -> None:
        self.port = port
        self.unary: dict[str, dict[str, Any]] = {}
        self.watch: dict[str, dict[str, Any]] = {}

    def call(self, path: str, body: str, method: str = "POST") -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.port}{path}"
        data = body.encode() if method == "POST" else None
        req = urllib.request.Request(url, data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def unary_case(self, name: str, path: str, body: Any, method: str = "POST") -> str:
        """Send one request; keep it under `name` (a str body is sent as it is)."""
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        status, answer = self.call(path, text, method)
        assert name not in self.unary, name
        self.unary[name] = {
            "method": method,
            "path": path,
            "request": text,
            "status": status,
            "response": answer,
        }
        return answer

    def watch_case(
        self,
        name: str,
        requests: list[Any],
        actions: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """POST /v3/watch with `requests` as one body, then run `actions` (unary
        requests) one by one, keeping the chunks etcd streamed after each."""
        body = b"".join(json.dumps(r, separators=(",", ":")).encode() for r in requests)
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        head = (
            f"POST /v3/watch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
            "Content-Type: application/json\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        reader = _ChunkReader(sock)
        steps: list[dict[str, Any]] = [{"chunks": reader.chunks(settle=1.0)}]
        for path, action in actions:
            text = json.dumps(action, separators=(",", ":"))
            _, answer = self.call(path, text)
            steps.append(
                {"action": path, "request": text, "response": answer, "chunks": reader.chunks(1.0)}
            )
        sock.close()
        self.watch[name] = {
            "requests": [json.dumps(r, separators=(",", ":")) for r in requests],
            "status": reader.status,
            "steps": steps,
        }


class _ChunkReader:
    """Reads an HTTP/1.1 chunked response as it streams, chunk by chunk."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf, self.status = sock, b"", 0
        self.headers_done = False
        self.closed = False  # etcd ended the response
        self.plain = False  # not chunked

    def _fill(self, until: float) -> None:
        self.sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        self.closed = not data
        self.buf += data

    def chunks(self, settle: float) -> list[str]:
        """Every chunk that arrives before `settle` seconds pass without one."""
        out: list[str] = []
        until = time.monotonic() + settle
        while True:
            if not self.headers_done and b"\r\n\r\n" in self.buf:
                head, self.buf = self.buf.split(b"\r\n\r\n", 1)
                self.status = int(head.split(b" ")[1])
                self.headers_done = True
                self.plain = b"transfer-encoding: chunked" not in head.lower()
            if self.plain:  # an error answer, not a stream: its whole body
                if self.closed or time.monotonic() >= until:
                    if self.buf:
                        out.append(self.buf.decode())
                        self.buf = b""
                    return out
                self._fill(until)
                continue
            if self.headers_done and b"\r\n" in self.buf:
                size_line, rest = self.buf.split(b"\r\n", 1)
                size = int(size_line, 16)
                if len(rest) >= size + 2:
                    if size:
                        out.append(rest[:size].decode())
                    self.buf = rest[size + 2 :]
                    until = time.monotonic() + settle
                    continue
            if time.monotonic() >= until or self.closed:
                return out
            self._fill(until)


def script(c: Capture) -> None:
    """The fixed story: each request's answer depends on the ones before it."""
    u: Callable[..., str] = c.unary_case
    k = b64
    u("version", "/version", "", method="GET")
    u("put_first", "/v3/kv/put", {"key": k("foo"), "value": k("bar")})
    u("put_prev_kv_none", "/v3/kv/put", {"key": k("a1"), "value": k("v1"), "prev_kv": True})
    u("put_prev_kv", "/v3/kv/put", {"key": k("a2"), "value": k("v2")})
    u("put_prev_kv_old", "/v3/kv/put", {"key": k("a2"), "value": k("v2b"), "prev_kv": True})
    u("put_ignore_value", "/v3/kv/put", {"key": k("a2"), "prevKv": True, "ignore_value": True})
    u("put_ignore_value_missing", "/v3/kv/put", {"key": k("a9"), "ignore_value": True})
    u("put_value_provided", "/v3/kv/put", {"key": k("a2"), "value": k("x"), "ignore_value": True})
    u("put_lease_provided", "/v3/kv/put", {"key": k("a2"), "lease": "5", "ignore_lease": True})
    u("put_no_key", "/v3/kv/put", {"value": k("v")})
    u("put_no_value", "/v3/kv/put", {"key": k("a3")})
    u("put_lease_missing", "/v3/kv/put", {"key": k("a9"), "value": k("v"), "lease": 12345})
    u("put_utf8", "/v3/kv/put", {"key": k("ключ"), "value": k("значение ✓")})

    u("range_one", "/v3/kv/range", {"key": k("foo")})
    u("range_missing", "/v3/kv/range", {"key": k("nope")})
    u("range_utf8", "/v3/kv/range", {"key": k("ключ")})
    u("range_camel_end", "/v3/kv/range", {"key": k("a"), "rangeEnd": k("a2")})
    u("range_both_ends", "/v3/kv/range", {"key": k("a1"), "range_end": k("a2"), "rangeEnd": k("b")})
    u(
        "range_all_keys_only",
        "/v3/kv/range",
        {"key": "AA==", "range_end": "AA==", "keys_only": True},
    )
    u("range_from_key", "/v3/kv/range", {"key": k("b"), "range_end": "AA=="})
    u("range_count_only", "/v3/kv/range", {"key": k("a"), "range_end": k("b"), "count_only": True})
    u("range_limit", "/v3/kv/range", {"key": k("a"), "range_end": k("b"), "limit": 1})
    u("range_limit_string", "/v3/kv/range", {"key": k("a"), "range_end": k("b"), "limit": "2"})
    u(
        "range_limit_count_only",
        "/v3/kv/range",
        {"key": k("a"), "range_end": k("b"), "limit": 1, "count_only": True},
    )
    u(
        "range_sort_desc",
        "/v3/kv/range",
        {"key": k("a"), "range_end": k("b"), "sort_order": "DESCEND"},
    )
    u(
        "range_sort_value_desc_keys_only",
        "/v3/kv/range",
        {
            "key": k("a"),
            "range_end": k("b"),
            "sort_order": "DESCEND",
            "sort_target": "VALUE",
            "keys_only": True,
        },
    )
    u(
        "range_sort_mod_default_order",
        "/v3/kv/range",
        {"key": k("a"), "range_end": k("b"), "sort_target": "MOD"},
    )
    u(
        "range_sort_numbers",
        "/v3/kv/range",
        {"key": k("a"), "range_end": k("b"), "sort_order": 2, "sort_target": 2, "limit": 2},
    )
    u(
        "range_etcd3gw_defaults",
        "/v3/kv/range",
        {"key": k("a1"), "sort_order": 0, "sort_target": 0},
    )
    u("range_min_mod", "/v3/kv/range", {"key": k("a"), "range_end": k("b"), "min_mod_revision": 5})
    u(
        "range_max_create",
        "/v3/kv/range",
        {"key": k("a"), "range_end": k("b"), "maxCreateRevision": "3", "limit": 1},
    )
    u("range_at_revision", "/v3/kv/range", {"key": k("a"), "range_end": k("b"), "revision": 4})
    u("range_future", "/v3/kv/range", {"key": k("a"), "revision": 100})
    u("range_end_before_key", "/v3/kv/range", {"key": k("a2"), "range_end": k("a1")})
    u("range_empty_end", "/v3/kv/range", {"key": k("a2"), "range_end": ""})
    u("range_no_key", "/v3/kv/range", {"key": "", "range_end": "AA=="})
    u("range_empty_body", "/v3/kv/range", "")
    u("range_nulls", "/v3/kv/range", {"key": k("a1"), "range_end": None, "limit": None})
    u("range_unknown_field", "/v3/kv/range", {"key": k("a1"), "bogus": [1]})
    u("range_base64_newline", "/v3/kv/range", {"key": k("a1") + "\n"})
    u("range_serializable", "/v3/kv/range", {"key": k("a1"), "serializable": True})
    u("range_array_body", "/v3/kv/range", "[]")
    u("range_number_body", "/v3/kv/range", "5")
    u("range_not_json", "/v3/kv/range", "nope")
    u("range_key_number", "/v3/kv/range", {"key": 5})
    u("range_bad_base64", "/v3/kv/range", {"key": "!!!"})
    u("range_base64_unpadded", "/v3/kv/range", {"key": "YTE"})
    u("range_base64_urlsafe", "/v3/kv/range", {"key": "YT-_"})
    u("range_limit_float", "/v3/kv/range", {"key": k("a1"), "limit": 1.5})
    u("range_limit_huge", "/v3/kv/range", '{"key":"YTE=","limit":99999999999999999999}')
    u("range_limit_over_int64", "/v3/kv/range", {"key": k("a1"), "limit": "9223372036854775808"})
    u("range_limit_word", "/v3/kv/range", {"key": k("a1"), "limit": "x"})
    u("range_limit_bool", "/v3/kv/range", {"key": k("a1"), "limit": True})
    u("range_bool_number", "/v3/kv/range", {"key": k("a1"), "keys_only": 1})
    u("range_sort_lowercase", "/v3/kv/range", {"key": k("a1"), "sort_order": "descend"})
    u("range_negative_limit", "/v3/kv/range", {"key": k("a1"), "limit": -1})
    u("range_negative_revision", "/v3/kv/range", {"key": k("a1"), "revision": -1})
    u("range_unknown_enum_number", "/v3/kv/range", {"key": k("a1"), "sort_order": 7})

    u("delete_missing", "/v3/kv/deleterange", {"key": k("nokey")})
    u("delete_no_key", "/v3/kv/deleterange", {})
    u("put_d1", "/v3/kv/put", {"key": k("d1"), "value": k("x")})
    u("put_d2", "/v3/kv/put", {"key": k("d2"), "value": k("y")})
    u(
        "delete_range_prev_kv",
        "/v3/kv/deleterange",
        {"key": k("d"), "range_end": k("e"), "prev_kv": True},
    )
    u("put_d3", "/v3/kv/put", {"key": k("d3"), "value": k("z")})
    u("delete_one", "/v3/kv/deleterange", {"key": k("d3")})

    cas = {
        "compare": [{"key": k("a1"), "result": "EQUAL", "target": "VALUE", "value": k("v1")}],
        "success": [
            {"request_put": {"key": k("a1"), "value": k("v1x"), "prev_kv": True}},
            {"request_range": {"key": k("a1")}},
        ],
        "failure": [{"request_range": {"key": k("a1")}}],
    }
    u("txn_cas_success", "/v3/kv/txn", cas)
    u("txn_cas_failure", "/v3/kv/txn", cas)
    u("txn_default_target", "/v3/kv/txn", {"compare": [{"key": k("a1"), "version": 2}]})
    u(
        "txn_create_zero",
        "/v3/kv/txn",
        {
            "compare": [
                {"key": k("new"), "result": "EQUAL", "target": "CREATE", "create_revision": 0}
            ],
            "success": [{"request_put": {"key": k("new"), "value": k("n")}}],
            "failure": [],
        },
    )
    u(
        "txn_nested",
        "/v3/kv/txn",
        {
            "compare": [
                {"key": k("a1"), "target": "MOD", "result": "GREATER", "mod_revision": "1"}
            ],
            "success": [
                {"request_put": {"key": k("t1"), "value": k("1")}},
                {"request_delete_range": {"key": k("foo"), "prev_kv": True}},
                {
                    "request_txn": {
                        "compare": [{"key": k("t1"), "target": "VERSION", "version": 1}],
                        "success": [{"requestRange": {"key": k("t"), "range_end": k("u")}}],
                    }
                },
            ],
        },
    )
    u("txn_empty", "/v3/kv/txn", {})
    u("txn_empty_body", "/v3/kv/txn", "")
    u(
        "txn_failure_delete_nothing",
        "/v3/kv/txn",
        {
            "compare": [{"key": k("a1"), "target": "LEASE", "result": "NOT_EQUAL", "lease": 0}],
            "failure": [{"request_delete_range": {"key": k("zz")}}],
        },
    )
    u(
        "txn_range_around_put",
        "/v3/kv/txn",
        {
            "success": [
                {"request_range": {"key": k("t2")}},
                {"request_put": {"key": k("t2"), "value": k("2")}},
                {"request_range": {"key": k("t2")}},
            ]
        },
    )
    u(
        "txn_two_deletes",
        "/v3/kv/txn",
        {
            "success": [
                {"request_delete_range": {"key": k("t2")}},
                {"request_delete_range": {"key": k("t2")}},
            ]
        },
    )
    u(
        "txn_compare_range_end",
        "/v3/kv/txn",
        {
            "compare": [
                {
                    "key": k("a"),
                    "range_end": k("b"),
                    "target": "VERSION",
                    "result": "GREATER",
                    "version": 0,
                }
            ]
        },
    )
    u(
        "txn_compare_less",
        "/v3/kv/txn",
        {"compare": [{"key": k("a1"), "target": "CREATE", "result": "LESS", "createRevision": 3}]},
    )
    u(
        "txn_value_missing_key",
        "/v3/kv/txn",
        {
            "compare": [
                {"key": k("nokey"), "target": "VALUE", "result": "NOT_EQUAL", "value": "eA=="}
            ]
        },
    )
    put_a1 = {"request_put": {"key": k("a1"), "value": k("v")}}
    u("txn_duplicate_put", "/v3/kv/txn", {"success": [put_a1, put_a1]})
    u(
        "txn_put_in_delete",
        "/v3/kv/txn",
        {
            "success": [
                put_a1,
                {"request_delete_range": {"key": k("a"), "range_end": k("b")}},
            ]
        },
    )
    u(
        "txn_nested_duplicate",
        "/v3/kv/txn",
        {"success": [put_a1, {"request_txn": {"success": [put_a1]}}]},
    )
    u(
        "txn_nested_branches",
        "/v3/kv/txn",
        {"success": [{"request_txn": {"success": [put_a1], "failure": [put_a1]}}]},
    )
    u("txn_empty_op", "/v3/kv/txn", {"failure": [{}]})
    u("txn_compare_no_key", "/v3/kv/txn", {"compare": [{"target": "VERSION", "version": 0}]})
    u("txn_put_no_key", "/v3/kv/txn", {"success": [{"request_put": {"value": k("v")}}]})
    u("txn_target_lowercase", "/v3/kv/txn", {"compare": [{"key": k("a1"), "target": "version"}]})
    u("txn_compare_object", "/v3/kv/txn", {"compare": {}})
    u(
        "txn_too_many_ops",
        "/v3/kv/txn",
        {"success": [{"request_put": {"key": k(f"m{i}"), "value": k("v")}} for i in range(129)]},
    )

    u("lease_grant_server_id", "/v3/lease/grant", {"TTL": 60, "ID": 0})
    u("lease_grant_strings", "/v3/lease/grant", {"TTL": "30", "ID": "1000"})
    u("lease_grant_exists", "/v3/lease/grant", {"TTL": 30, "ID": 1000})
    u("lease_grant_too_large", "/v3/lease/grant", {"TTL": 9000000001, "ID": 2000})
    u("lease_grant_zero_ttl", "/v3/lease/grant", {"TTL": 0, "ID": 3000})
    u("lease_grant_word_id", "/v3/lease/grant", {"TTL": 60, "ID": "abc"})
    u("put_with_lease", "/v3/kv/put", {"key": k("l1"), "value": k("x"), "lease": 1000})
    u("put_with_lease_string", "/v3/kv/put", {"key": k("l2"), "value": k("y"), "lease": "1000"})
    u("range_leased", "/v3/kv/range", {"key": k("l1")})
    u("lease_ttl", "/v3/lease/timetolive", {"ID": 1000})
    u("lease_ttl_keys", "/v3/kv/lease/timetolive", {"ID": 1000, "keys": True})
    u("lease_ttl_missing", "/v3/lease/timetolive", {"ID": 424242, "keys": True})
    u("lease_keepalive", "/v3/lease/keepalive", {"ID": 1000})
    u("lease_keepalive_missing", "/v3/lease/keepalive", {"ID": 424242})
    u("lease_leases", "/v3/lease/leases", {})
    u("lease_leases_alias", "/v3/kv/lease/leases", "")
    u("lease_revoke", "/v3/kv/lease/revoke", {"ID": 3000})
    u("lease_revoke_missing", "/v3/lease/revoke", {"ID": 3000})
    u("lease_grant_alias_absent", "/v3/kv/lease/grant", {"TTL": 60})
    u("lease_keepalive_alias_absent", "/v3/kv/lease/keepalive", {"ID": 1000})

    u("compaction", "/v3/kv/compaction", {"revision": 5})
    u("compaction_again", "/v3/kv/compaction", {"revision": 5})
    u("compaction_future", "/v3/kv/compaction", {"revision": 1000})
    u("compaction_physical", "/v3/kv/compaction", {"revision": "6", "physical": True})
    u("compaction_zero", "/v3/kv/compaction", {})
    u("range_compacted", "/v3/kv/range", {"key": k("a1"), "revision": 4})

    # Last of the kv requests: kvcluster cannot hold this key, so no range above sees it.
    u("put_not_utf8", "/v3/kv/put", {"key": "/w==", "value": k("v")})
    u("status", "/v3/maintenance/status", {})
    u("member_list", "/v3/cluster/member/list", {})
    u("v3beta_range", "/v3beta/kv/range", {"key": k("a1")})
    u("v3alpha_range", "/v3alpha/kv/range", {"key": k("a1")})
    u("range_get", "/v3/kv/range", "", method="GET")
    u("unknown_route", "/v3/kv/nothing", {})

    header = json.loads(u("range_before_watches", "/v3/kv/range", {"key": k("w1")}))["header"]
    first_watch_revision = int(header["revision"]) + 1
    w = c.watch_case
    put, delete, txn = "/v3/kv/put", "/v3/kv/deleterange", "/v3/kv/txn"
    w(
        "watch_key",
        [{"create_request": {"key": k("w1")}}],
        [(put, {"key": k("w1"), "value": k("x1")}), (delete, {"key": k("w1")})],
    )
    w(
        "watch_prefix_prev_kv_nodelete",
        [
            {
                "create_request": {
                    "key": k("w"),
                    "range_end": k("x"),
                    "prev_kv": True,
                    "filters": ["NODELETE"],
                }
            }
        ],
        [
            (
                txn,
                {
                    "success": [
                        {"request_put": {"key": k("w1"), "value": k("y")}},
                        {"request_put": {"key": k("w2"), "value": k("z")}},
                    ]
                },
            ),
            (put, {"key": k("w1"), "value": k("y2")}),
            (delete, {"key": k("w"), "range_end": k("x")}),
        ],
    )
    w(
        "watch_noput_prev_kv",
        [{"createRequest": {"key": k("w1"), "prevKv": True, "filters": [0]}}],
        [(put, {"key": k("w1"), "value": k("y3")}), (delete, {"key": k("w1")})],
    )
    w(
        "watch_ids_progress_cancel",
        [
            {"create_request": {"key": k("w1")}},
            {"create_request": {"key": k("w1"), "watch_id": 7}},
            {"create_request": {"key": k("w1"), "watch_id": "7"}},
            {"progress_request": {}},
            {"cancel_request": {"watch_id": 7}},
            {"cancel_request": {"watch_id": 77}},
        ],
        [(put, {"key": k("w1"), "value": k("q")})],
    )
    w("watch_cancel_zero", [{"create_request": {"key": k("w1")}}, {"cancel_request": {}}])
    w(
        "watch_history",
        [{"create_request": {"key": k("w1"), "start_revision": first_watch_revision}}],
    )
    w("watch_compacted", [{"create_request": {"key": k("w1"), "start_revision": 2}}])
    w(
        "watch_empty_create",
        [{}, {"create_request": {"filters": ["NOPUT", "NODELETE"]}}],
        [(put, {"key": k("zz"), "value": k("q3")})],
    )
    w(
        "watch_from_key",
        [{"create_request": {"key": k("w"), "range_end": "AA=="}}],
        [(put, {"key": k("zz"), "value": k("q4")})],
    )
    w("watch_bad_base64", [{"create_request": {"key": "!!"}}])
    w("watch_not_object", [[1]])


def main() -> None:
    if shutil.which("etcd") is None:
        sys.exit("no etcd binary on PATH")
    with etcd() as port:
        c = Capture(port)
        script(c)
    json.dump({"unary": c.unary, "watch": c.watch}, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
