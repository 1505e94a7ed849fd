"""The store against a real etcd 3.4: random command sequences (puts, delete ranges,
nested txns, compactions, leases, range reads at past revisions) give the answers
etcd gave, recorded by tests/mvcc_etcd_capture.py in tests/mvcc_etcd_fixtures.json
(etcd's revisions there are already shifted to ours: etcd's - 1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mvcc_helpers import Store

FIXTURES = json.loads((Path(__file__).parent / "mvcc_etcd_fixtures.json").read_text())
SUB = {
    "response_range": "range",
    "response_put": "put",
    "response_delete_range": "delete_range",
    "response_txn": "nested",
}


def canonical(kind: str, result: dict[str, Any]) -> dict[str, Any]:
    """What etcd's gateway shows of a result: the fields below (the /v1 extras and the
    error details dropped), in the capture's form."""
    if "error" in result:
        return {"error": result["error"]}
    if kind == "range":
        return {k: result[k] for k in ("revision", "kvs", "count", "more")}
    if kind == "put":
        return {k: result[k] for k in ("revision", "prev_kv") if k in result}
    if kind == "delete_range":
        out = {"revision": result["revision"], "deleted": result["deleted"]}
        if result.get("prev_kvs"):
            out["prev_kvs"] = result["prev_kvs"]
        return out
    if kind in ("txn", "nested"):
        responses = [
            {name: canonical(SUB[name], body) for name, body in r.items()}
            for r in result["responses"]
        ]
        out = {"succeeded": result["succeeded"], "responses": responses}
        if kind == "txn":
            out["revision"] = result["revision"]
        return out
    if kind == "compact" or kind == "lease_revoke":
        return {"revision": result["revision"]}
    assert kind == "lease_grant", kind
    return {k: result[k] for k in ("id", "ttl", "revision")}


@pytest.mark.parametrize("seed", sorted(FIXTURES))
def test_the_store_answers_as_etcd_did(seed: str) -> None:
    s = Store()
    steps = FIXTURES[seed]
    assert len(steps) > 300
    for n, step in enumerate(steps):
        if "apply" in step:
            cmd = step["apply"]
            got = canonical(cmd["op"], s(cmd))
        else:
            read = dict(step["range"])
            key, end = read.pop("key"), read.pop("range_end", None)
            got = canonical("range", s.kv.range(key, end, **read))
        assert got == step["etcd"], (n, step)
