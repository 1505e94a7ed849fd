"""A brute-force model of etcd's MVCC semantics, to check KVStore against.

It keeps a full copy of the key space for every revision and the list of every
change ever made, and answers everything by looking at those: obviously right
(for small stores) and sharing no code with the store except the txn
validation of kvcluster/kv/ops.py (operation counts and etcd's duplicate-key
rule, tested on their own against etcd in test_mvcc_txn.py).
"""

from __future__ import annotations

from typing import Any

from kvcluster.kv.ops import InvalidCommand, parse_txn

# A key's state: (value, create_revision, mod_revision, version, lease)
KV = tuple[str, int, int, int, int]

COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE = "etcdserver: mvcc: required revision is a future revision"
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
KEY_NOT_FOUND = "etcdserver: key not found"


def kv_dict(key: str, state: KV | None, mod: int = 0, keys_only: bool = False) -> dict[str, Any]:
    if state is None:  # a deleted key, as a DELETE event shows it
        return {
            "key": key,
            "value": "",
            "create_revision": 0,
            "mod_revision": mod,
            "version": 0,
            "lease": 0,
        }
    value, create, mod_rev, version, lease = state
    return {
        "key": key,
        "value": "" if keys_only else value,
        "create_revision": create,
        "mod_revision": mod_rev,
        "version": version,
        "lease": lease,
    }


def selected(keys: Any, key: str, end: str | None) -> list[str]:
    if not end:
        return [key] if key in keys else []
    if end == "\x00":
        return sorted(k for k in keys if k >= key)
    return sorted(k for k in keys if key <= k < end)


class Model:
    def __init__(self) -> None:
        self.rev = 0
        self.compacted = 0
        self.state: dict[str, KV] = {}
        self.states: dict[int, dict[str, KV]] = {0: {}}
        self.events: list[tuple[int, str, KV | None, KV | None]] = []  # rev, key, new, prev
        self.leases: dict[int, list[int]] = {}  # id -> [ttl, deadline]
        self.index = 0

    # ---- reads

    def range(self, body: dict[str, Any], current: int | None = None) -> dict[str, Any]:
        at = body.get("revision", 0)
        state = self.state if at <= 0 else self.states[at]
        keys = selected(state, body["key"], body.get("range_end"))
        limit = body.get("limit", 0)
        shown = keys if limit <= 0 else keys[:limit]
        if body.get("count_only"):
            shown = []
        return {
            "revision": self.rev if current is None else current,
            "kvs": [kv_dict(k, state[k], keys_only=body.get("keys_only", False)) for k in shown],
            "count": len(keys),
            "more": 0 < limit < len(keys) and not body.get("count_only"),
        }

    def range_error(self, body: dict[str, Any]) -> dict[str, Any] | None:
        at = body.get("revision", 0)
        if at > self.rev:
            return {"error": "future_revision", "message": FUTURE, "revision": self.rev}
        if 0 < at < self.compacted:
            return {
                "error": "compacted",
                "message": COMPACTED,
                "compact_revision": self.compacted,
                "revision": self.rev,
            }
        return None

    def changes(self, since: int) -> list[dict[str, Any]]:
        out = []
        for rev, key, new, prev in self.events:
            if rev >= since:
                out.append(
                    {
                        "type": "PUT" if new is not None else "DELETE",
                        "kv": kv_dict(key, new, rev),
                        "prev_kv": None if prev is None else kv_dict(key, prev),
                    }
                )
        return out

    # ---- writes, on a working copy `st` at revision `rev`

    def _put(self, st: dict[str, KV], rev: int, body: dict[str, Any]) -> dict[str, Any]:
        key = body["key"]
        prev = st.get(key)
        value, lease = body.get("value", ""), body.get("lease", 0)
        if body.get("ignore_value"):
            assert prev is not None
            value = prev[0]
        if body.get("ignore_lease"):
            assert prev is not None
            lease = prev[4]
        new = (
            value,
            rev if prev is None else prev[1],
            rev,
            1 if prev is None else prev[3] + 1,
            lease,
        )
        st[key] = new
        self.events.append((rev, key, new, prev))
        result = {
            "key": key,
            "revision": rev,
            "created": prev is None,
            "prev_value": None if prev is None else prev[0],
        }
        if body.get("prev_kv") and prev is not None:
            result["prev_kv"] = kv_dict(key, prev)
        return result

    def _delete(self, st: dict[str, KV], rev: int, key: str, end: str | None) -> list[str]:
        keys = selected(st, key, end)
        for k in keys:
            self.events.append((rev, k, None, st.pop(k)))
        return keys

    def _commit(self, st: dict[str, KV], changed: bool) -> None:
        if changed:
            self.rev += 1
            self.state = st
            self.states[self.rev] = dict(st)

    def _put_error(self, st: dict[str, KV], body: dict[str, Any]) -> dict[str, Any] | None:
        if (body.get("ignore_value") or body.get("ignore_lease")) and body["key"] not in st:
            return {"error": "key_not_found", "message": KEY_NOT_FOUND}
        if body.get("lease") and body["lease"] not in self.leases:
            return {"error": "lease_not_found", "message": LEASE_NOT_FOUND}
        return None

    # ---- txn

    def _holds(self, c: dict[str, Any]) -> bool:
        target, result = c.get("target", "VERSION"), c.get("result", "EQUAL")
        keys = selected(self.state, c["key"], c.get("range_end"))
        field = {"VERSION": 3, "CREATE": 1, "MOD": 2, "LEASE": 4, "VALUE": 0}[target]
        operand_name = {
            "VALUE": "value",
            "VERSION": "version",
            "CREATE": "create_revision",
            "MOD": "mod_revision",
            "LEASE": "lease",
        }[target]
        b = c.get(operand_name, "" if target == "VALUE" else 0)
        if not keys:
            if target == "VALUE":
                return False
            rows: list[Any] = [0]
        else:
            rows = [self.state[k][field] for k in keys]
        ops = {
            "EQUAL": lambda a: a == b,
            "NOT_EQUAL": lambda a: a != b,
            "GREATER": lambda a: a > b,
            "LESS": lambda a: a < b,
        }
        return all(ops[result](a) for a in rows)

    def _path(self, body: dict[str, Any]) -> tuple[bool, list[Any]]:
        ok = all(self._holds(c) for c in body.get("compare", []))
        ops = body.get("success" if ok else "failure", [])
        return ok, [
            (op, self._path(op["request_txn"]) if "request_txn" in op else None) for op in ops
        ]

    def _errors(self, plan: list[Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        put_error = range_error = None
        for op, sub in plan:
            if sub is not None:
                p, r = self._errors(sub[1])
                put_error, range_error = put_error or p, range_error or r
            elif "request_put" in op:
                put_error = put_error or self._put_error(self.state, op["request_put"])
            elif "request_range" in op:
                range_error = range_error or self.range_error(op["request_range"])
        return put_error, range_error

    def _run(self, st: dict[str, KV], plan: list[Any], flag: list[bool]) -> list[Any]:
        rev = self.rev + 1
        out: list[Any] = []
        for op, sub in plan:
            if sub is not None:
                responses = self._run(st, sub[1], flag)
                out.append({"response_txn": {"succeeded": sub[0], "responses": responses}})
            elif "request_put" in op:
                flag[0] = True
                out.append({"response_put": self._put(st, rev, op["request_put"])})
            elif "request_delete_range" in op:
                d = op["request_delete_range"]
                prevs = {k: st[k] for k in selected(st, d["key"], d.get("range_end"))}
                deleted = self._delete(st, rev, d["key"], d.get("range_end"))
                flag[0] = flag[0] or bool(deleted)
                result: dict[str, Any] = {
                    "revision": rev if flag[0] else self.rev,
                    "deleted": len(deleted),
                }
                if d.get("prev_kv"):
                    result["prev_kvs"] = [kv_dict(k, prevs[k]) for k in deleted]
                out.append({"response_delete_range": result})
            else:
                r = op["request_range"]
                current = rev if flag[0] else self.rev
                if r.get("revision", 0) > 0:
                    out.append({"response_range": self.range(r, current)})
                else:
                    saved = self.state
                    self.state = st
                    out.append({"response_range": self.range(r, current)})
                    self.state = saved
        return out

    def txn(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            parse_txn(body)
        except InvalidCommand as e:
            return {"error": e.code, "message": str(e)}
        ok, plan = self._path(body)
        put_error, range_error = self._errors(plan)
        if put_error or range_error:
            return put_error or range_error  # type: ignore[return-value]
        st = dict(self.state)
        flag = [False]
        responses = self._run(st, plan, flag)
        self._commit(st, flag[0])
        return {"revision": self.rev, "succeeded": ok, "responses": responses}

    # ---- leases

    def _revoke(self, lease_id: int) -> int:
        del self.leases[lease_id]
        keys = sorted(k for k, v in self.state.items() if v[4] == lease_id)
        st = dict(self.state)
        for k in keys:
            self._delete(st, self.rev + 1, k, None)
        self._commit(st, bool(keys))
        return len(keys)

    # ---- commands

    def apply(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The result for one of the commands tests/test_mvcc_random.py generates."""
        self.index += 1
        op = cmd["op"]
        if op == "put":
            error = self._put_error(self.state, cmd)
            if error:
                return error
            st = dict(self.state)
            result = self._put(st, self.rev + 1, cmd)
            self._commit(st, True)
            return result
        if op == "delete":
            st = dict(self.state)
            prev = st.get(cmd["key"])
            self._delete(st, self.rev + 1, cmd["key"], None)
            self._commit(st, prev is not None)
            return {
                "key": cmd["key"],
                "deleted": int(prev is not None),
                "revision": self.rev,
                "prev_value": None if prev is None else prev[0],
            }
        if op == "delete_range":
            st = dict(self.state)
            prevs = dict(st)
            deleted = self._delete(st, self.rev + 1, cmd["key"], cmd.get("range_end"))
            self._commit(st, bool(deleted))
            result: dict[str, Any] = {"revision": self.rev, "deleted": len(deleted)}
            if cmd.get("prev_kv"):
                result["prev_kvs"] = [kv_dict(k, prevs[k]) for k in deleted]
            return result
        if op == "txn":
            return self.txn(cmd)
        if op == "compact":
            r = cmd["revision"]
            if r > self.rev:
                return {"error": "future_revision", "message": FUTURE, "revision": self.rev}
            if r < self.compacted or 0 < r == self.compacted:
                return {
                    "error": "compacted",
                    "message": COMPACTED,
                    "compact_revision": self.compacted,
                }
            self.compacted = r
            self.events = [e for e in self.events if e[0] >= r]
            return {"revision": self.rev}
        if op == "lease_grant":
            lease_id = cmd.get("id", 0)
            if lease_id and lease_id in self.leases:
                return {"error": "lease_exists", "message": "etcdserver: lease already exists"}
            if not lease_id:
                lease_id = self.index
                while lease_id in self.leases:
                    lease_id += 1
            self.leases[lease_id] = [cmd["ttl"], cmd["now"] + cmd["ttl"] * 1000]
            return {"id": lease_id, "ttl": cmd["ttl"], "revision": self.rev}
        if op == "lease_revoke":
            if cmd["id"] not in self.leases:
                return {"error": "lease_not_found", "message": LEASE_NOT_FOUND}
            deleted = self._revoke(cmd["id"])
            return {"revision": self.rev, "deleted": deleted}
        if op == "lease_keepalive":
            lease = self.leases.get(cmd["id"])
            if lease is None:
                return {"error": "lease_not_found", "message": LEASE_NOT_FOUND}
            lease[1] = cmd["now"] + lease[0] * 1000
            return {"id": cmd["id"], "ttl": lease[0], "revision": self.rev}
        if op == "lease_expire":
            due = sorted((d, i) for i, (_, d) in self.leases.items() if d <= cmd["now"])
            for _, lease_id in due:
                self._revoke(lease_id)
            return {"expired": [i for _, i in due], "revision": self.rev}
        assert op == "lease_promote"
        for lease in self.leases.values():
            lease[1] = cmd["now"] + lease[0] * 1000 + cmd["extend"]
        return {"leases": len(self.leases), "revision": self.rev}
