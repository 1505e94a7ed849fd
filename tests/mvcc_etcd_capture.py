"""Capture what a real etcd 3.4 answers to random kv command sequences, as fixtures for
tests/test_mvcc_etcd.py (the store must give the same answers).

Run by hand when the generator changes (it needs an `etcd` 3.4 binary on PATH):

    .venv/bin/python tests/mvcc_etcd_capture.py > tests/mvcc_etcd_fixtures.json

For each seed it starts a fresh etcd on free ports in a temporary directory,
sends the sequence that tests/test_mvcc_random.py's generator makes (the parts
etcd can be compared on: puts, deletes, delete ranges, nested txns, compactions,
leases granted with an id and a TTL far beyond the run, revokes) plus a random
range read after each command, and records each request in the store's own
terms with etcd's answer translated into the canonical form of `canonical()`.

etcd's revisions start at 1 and ours at 0: revisions in requests are sent as
ours + 1, and those in answers are written as etcd's - 1.
"""

from __future__ import annotations

import base64
import json
import random
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from etcd_wire_capture import etcd
from test_mvcc_random import Gen

SEEDS = (1, 2, 3)
COMMANDS = 250
ERRORS = {
    "etcdserver: mvcc: required revision has been compacted": "compacted",
    "etcdserver: mvcc: required revision is a future revision": "future_revision",
    "etcdserver: requested lease not found": "lease_not_found",
    "etcdserver: key not found": "key_not_found",
    "etcdserver: duplicate key given in txn request": "duplicate_key",
    "etcdserver: too many operations in txn request": "too_many_ops",
    "etcdserver: lease already exists": "lease_exists",
}
TEXT = ("key", "value", "range_end")
REVISIONS = ("revision", "create_revision", "mod_revision", "compact_revision")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def to_etcd(body: Any) -> Any:
    """Our request body as etcd's gateway takes it: text in base64, revisions + 1."""
    if isinstance(body, list):
        return [to_etcd(x) for x in body]
    if not isinstance(body, dict):
        return body
    out: dict[str, Any] = {}
    for name, value in body.items():
        if name == "op":
            continue
        if name in TEXT and isinstance(value, str):
            out[name] = b64(value)
        elif name in ("revision", "create_revision", "mod_revision") and value > 0:
            out[name] = value + 1
        else:
            out[name] = to_etcd(value)
    return out


def _kv(kv: dict[str, Any]) -> dict[str, Any]:
    def rev(name: str) -> int:
        value = int(kv.get(name, 0))
        return value - 1 if value else 0

    return {
        "key": base64.b64decode(kv["key"]).decode(),
        "value": base64.b64decode(kv.get("value", "")).decode(),
        "create_revision": rev("create_revision"),
        "mod_revision": rev("mod_revision"),
        "version": int(kv.get("version", 0)),
        "lease": int(kv.get("lease", 0)),
    }


def _revision(answer: dict[str, Any]) -> int:
    return int(answer["header"]["revision"]) - 1


def from_etcd(kind: str, answer: dict[str, Any]) -> dict[str, Any]:
    """etcd's answer in the canonical form (see test_mvcc_etcd.canonical)."""
    if "error" in answer:
        return {"error": ERRORS[answer["message"]]}
    if kind == "range":
        return {
            "revision": _revision(answer),
            "kvs": [_kv(kv) for kv in answer.get("kvs", [])],
            "count": int(answer.get("count", 0)),
            "more": answer.get("more", False),
        }
    if kind == "put":
        out = {"revision": _revision(answer)}
        if "prev_kv" in answer:
            out["prev_kv"] = _kv(answer["prev_kv"])
        return out
    if kind == "delete_range":
        out = {"revision": _revision(answer), "deleted": int(answer.get("deleted", 0))}
        if answer.get("prev_kvs"):
            out["prev_kvs"] = [_kv(kv) for kv in answer["prev_kvs"]]
        return out
    if kind in ("txn", "nested"):
        responses = []
        for r in answer.get("responses", []):
            ((name, body),) = r.items()
            sub = {"response_range": "range", "response_put": "put"}.get(name)
            sub = sub or {"response_delete_range": "delete_range"}.get(name, "nested")
            responses.append({name: from_etcd(sub, body)})
        out = {"succeeded": answer.get("succeeded", False), "responses": responses}
        if kind == "txn":
            out["revision"] = _revision(answer)
        return out
    if kind == "compact":
        return {"revision": _revision(answer)}
    if kind == "lease_grant":
        return {"id": int(answer["ID"]), "ttl": int(answer["TTL"]), "revision": _revision(answer)}
    assert kind == "lease_revoke", kind
    return {"revision": _revision(answer)}


PATHS = {
    "put": "/v3/kv/put",
    "delete": "/v3/kv/deleterange",
    "delete_range": "/v3/kv/deleterange",
    "txn": "/v3/kv/txn",
    "compact": "/v3/kv/compaction",
    "lease_grant": "/v3/lease/grant",
    "lease_revoke": "/v3/lease/revoke",
    "range": "/v3/kv/range",
}


def call(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as e:
        return dict(json.loads(e.read()))


def comparable(gen: Gen) -> dict[str, Any]:
    """The generator's next command that etcd can be compared on (see the docstring)."""
    while True:
        cmd = gen.command()
        op = cmd["op"]
        if op in ("lease_expire", "lease_promote", "lease_keepalive"):
            continue  # decided by clocks: etcd's own is not ours
        if op == "lease_grant":
            if not cmd["id"]:
                continue  # etcd picks a random id
            return {"op": op, "id": cmd["id"], "ttl": 100_000, "now": 0}
        if op == "delete":  # /v1's delete is a delete_range of one key in etcd terms
            return {"op": "delete_range", "key": cmd["key"]}
        if op == "compact" and cmd["revision"] == 0:
            continue  # etcd's first compact at its revision 1 has no twin here (see README)
        return cmd


def run(port: int, seed: int) -> list[dict[str, Any]]:
    gen = Gen(seed)
    rng = random.Random(seed)
    steps: list[dict[str, Any]] = []
    for _ in range(COMMANDS):
        cmd = comparable(gen)
        op = cmd["op"]
        body = to_etcd(cmd)
        if op == "lease_grant":
            body = {"ID": cmd["id"], "TTL": cmd["ttl"]}
        elif op == "lease_revoke":
            body = {"ID": cmd["id"]}
        answer = call(port, PATHS[op], body)
        steps.append({"apply": cmd, "etcd": from_etcd(op, answer)})
        if "error" not in answer:
            gen.rev = int(answer["header"]["revision"]) - 1
        if rng.random() < 0.5:
            read = gen.range_body()
            answer = call(port, PATHS["range"], to_etcd(read))
            steps.append({"range": read, "etcd": from_etcd("range", answer)})
    return steps


def main() -> None:
    """Print the fixtures (JSON) on stdout."""
    fixtures = {}
    for seed in SEEDS:
        with etcd() as port:
            fixtures[str(seed)] = run(port, seed)
    # One step a line, so that a change to the generator shows as a readable diff.
    out = sys.stdout
    out.write("{\n")
    for n, (seed, steps) in enumerate(fixtures.items()):
        out.write(f"{json.dumps(seed)}: [\n")
        lines = (json.dumps(step, ensure_ascii=False, sort_keys=True) for step in steps)
        out.write(",\n".join(lines))
        out.write("\n]" + (",\n" if n < len(fixtures) - 1 else "\n"))
    out.write("}\n")


if __name__ == "__main__":
    main()
