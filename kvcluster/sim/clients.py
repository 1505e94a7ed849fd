"""Simulated clients: they behave like `kvcluster.client.Client` and record a history.

Each client runs one operation at a time. Like the real client, it opens a
session before its first write and again after the cluster expired it. An
operation is retried, with the same (client_id, seq) for a write, until it
succeeds or its deadline passes;
each attempt goes to the leader the client last heard of (or, for clients that
pin no leader, to any node, which forwards). The history records what the
client can know: `ok` with what a get saw; `fail` when no attempt can have
taken effect; `unknown` when one may have (it timed out, or was still on its
way when the client gave up, or its session expired while it was retried).

Serializable reads may be stale by design: they are kept out of the history
the linearizability checker judges, in `stale_reads`, and only checked to have
seen some value that was written.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import orjson

from ..check import HistoryRecorder
from ..node import OPEN_SESSION, Answer, Request
from .net import RaftNet

OpName = Literal["put", "get", "delete"]


@dataclass(frozen=True, slots=True)
class ClientOptions:
    keys: int = 3
    op_timeout: float = 2.0  # one operation, retries included
    attempt_timeout: float = 0.5  # one attempt
    retry_backoff: float = 0.05  # after an answer that promises nothing happened
    think_time: tuple[float, float] = (0.0, 0.2)
    put_ratio: float = 0.4
    delete_ratio: float = 0.1  # the rest are gets
    serializable_ratio: float = 0.0  # of gets


@dataclass(slots=True)
class StaleRead:
    """A serializable read: allowed to be stale, so not in the checked history."""

    client: str
    key: str
    value: str | None
    call: float
    ret: float


@dataclass(slots=True)
class _Op:
    token: int  # the recorder's
    kind: OpName
    key: str
    value: str | None
    call: float
    deadline: float
    serializable: bool
    scripted: bool = False  # a probe (see SimClient.probe)
    maybe_applied: bool = False  # some attempt may have taken effect
    in_flight: bool = False  # an attempt is out, not answered or timed out
    seq: int = 0  # a write's number in `session`; 0 until it has one
    session: str | None = None
    opening: bool = False  # the attempt out is opening a session for this write


class SimClient:
    """One simulated client (see the module docstring)."""

    def __init__(
        self,
        name: str,
        cluster: RaftNet,
        recorder: HistoryRecorder,
        rng: random.Random,
        options: ClientOptions,
        *,
        sticky: bool = True,
        log: Callable[[str], None] | None = None,
        verbose: bool = False,
    ) -> None:
        self.name = name
        self.cluster = cluster
        self.recorder = recorder
        self.rng = rng
        self.options = options
        self.sticky = sticky  # remember the leader, like Client(prefer_leader=True)
        self.log = log
        self.verbose = verbose and log is not None  # log every attempt and answer
        self.running = False
        self.op: _Op | None = None
        self.attempt = 0
        self.session: str | None = None  # the session id the cluster gave us
        self.seq = 0  # the last write number used in it
        self.leader: str | None = None
        self.target: str | None = None
        self.writes = 0
        self.stale_reads: list[StaleRead] = []
        self.completed = 0
        self._script: list[tuple[OpName, str]] = []  # probe operations still to run
        self._script_timeout = 0.0
        self.probe_results: list[str] = []  # "put ok", "get ok", "put unknown", ...

    # ------------------------------------------------------------------ driving

    def start(self, at: float) -> None:
        self.running = True
        self.cluster.schedule(at, self._next_op)

    def stop(self) -> None:
        """Issue no new operation once the current one is done."""
        self.running = False

    def probe(self, timeout: float) -> None:
        """Once faults have stopped and the client is idle: a put, then a get of
        the same key, each allowed `timeout` (retries included). Both must
        succeed: that the cluster serves again is the liveness verdict."""
        key = f"k{self.rng.randrange(self.options.keys)}"
        self._script = [("put", key), ("get", key)]
        self._script_timeout = timeout
        self.probe_results = []
        self.cluster.schedule(self.cluster.now, self._next_op)

    @property
    def idle(self) -> bool:
        return self.op is None and not self._script

    def _next_op(self) -> None:
        if self.op is not None:
            return
        o, rng, now = self.options, self.rng, self.cluster.now
        kind: OpName
        value: str | None = None
        serializable = False
        timeout, scripted = o.op_timeout, False
        if self._script:
            kind, key = self._script.pop(0)
            timeout, scripted = self._script_timeout, True
        elif not self.running:
            return
        else:
            key = f"k{rng.randrange(o.keys)}"
            r = rng.random()
            if r < o.put_ratio:
                kind = "put"
            elif r < o.put_ratio + o.delete_ratio:
                kind = "delete"
            else:
                kind = "get"
                serializable = rng.random() < o.serializable_ratio
        if kind == "put":
            self.writes += 1
            value = f"{self.name}.{self.writes}"
        token = -1 if serializable else self.recorder.invoke(self.name, kind, key, value)
        self.op = _Op(token, kind, key, value, now, now + timeout, serializable, scripted)
        if self.log:
            what = (
                f"{kind} {key}" + (f" {value}" if value else "") + (" (s)" if serializable else "")
            )
            self.log(f"{self.name}: {what}")
        self.target = self.leader if self.sticky and self.leader else None
        self._send()

    def _pick_node(self) -> str:
        if self.target is not None and self.target in self.cluster.nodes:
            return self.target
        return self.rng.choice(sorted(self.cluster.nodes))

    def _send(self) -> None:
        op = self.op
        assert op is not None
        now = self.cluster.now
        if now >= op.deadline:
            self._give_up()
            return
        self.attempt += 1
        attempt = self.attempt
        node = self._pick_node()
        write = op.kind != "get"
        if write and op.seq == 0 and self.session is not None:
            self.seq += 1
            op.session, op.seq = self.session, self.seq
        op.opening = write and op.seq == 0
        if op.opening:
            nonce = f"{self.name}/{op.token}"  # the same for every retry of this open
            req = Request(0, OPEN_SESSION, client_id=nonce, seq=0, wire=(self.name, attempt))
        else:
            req = Request(
                0,
                op.kind,
                op.key,
                op.value,
                client_id=op.session if write else None,
                seq=op.seq if write else None,
                serializable=op.serializable,
                wire=(self.name, attempt),
            )
        op.in_flight = True
        if self.verbose and self.log:
            self.log(f"{self.name}: attempt {attempt} -> {node}")
        self.cluster.submit(node, req)
        timeout = min(self.options.attempt_timeout, op.deadline - now)
        self.cluster.schedule(now + timeout, lambda: self._timed_out(attempt))

    def _timed_out(self, attempt: int) -> None:
        op = self.op
        if op is None or attempt != self.attempt:
            return
        op.in_flight = False
        if op.kind != "get" and not op.opening:
            op.maybe_applied = True
        if self.verbose and self.log:
            self.log(f"{self.name}: attempt {attempt} timed out")
        self.target = None  # try another node
        self._send()

    def on_answer(self, attempt: int, answer: Answer) -> None:
        """A node answered attempt `attempt`, as `kvcluster.client.Client` reads
        answers: 200 (and 404 for a get) done; 503 certainly not applied; 504
        and anything else may have been."""
        op = self.op
        if op is None or attempt != self.attempt:
            return  # an answer to an attempt given up on
        op.in_flight = False
        body = (answer.body if answer.raw is None else orjson.loads(answer.raw)) or {}
        status = answer.status
        if self.verbose and self.log:
            what = "ok" if status == 200 else f"{status} {body.get('error')}"
            self.log(f"{self.name}: attempt {attempt} <- {what} (leader {answer.leader})")
        if answer.leader is not None:
            self.leader = answer.leader
        if op.opening:
            if status == 200:
                self.session, self.seq = str(body["client_id"]), 0
                self._send()
                return
        elif status == 200 or (status == 404 and op.kind == "get"):
            self._finish("ok", body.get("value") if status == 200 else None)
            return
        elif status == 409 and body.get("error") == "session_expired":
            if self.session == op.session:
                self.session = None  # the next write opens a new one
            if op.maybe_applied:
                self._finish("unknown", None)  # an earlier attempt may have applied
                return
            op.seq, op.session = 0, None  # certainly not applied: again, in a new session
        elif status not in (503, 409) and op.kind != "get":
            op.maybe_applied = True
        self.attempt += 1  # no answer is pending any more
        self.target = answer.leader
        retry_at = self.cluster.now + self.options.retry_backoff * (0.5 + self.rng.random())
        if retry_at >= op.deadline:
            self._give_up()
        else:
            pending = self.attempt
            self.cluster.schedule(retry_at, lambda: self._retry(pending))

    def _retry(self, attempt: int) -> None:
        if self.op is not None and attempt == self.attempt:
            self._send()

    def _give_up(self) -> None:
        op = self.op
        assert op is not None
        if op.kind != "get" and (op.maybe_applied or (op.in_flight and not op.opening)):
            self._finish("unknown", None)
        else:
            self._finish("fail", None)

    def _finish(self, status: Literal["ok", "fail", "unknown"], value: str | None) -> None:
        op = self.op
        assert op is not None
        now = self.cluster.now
        self.attempt += 1  # late answers are for an attempt given up on
        if op.serializable:
            if status == "ok":
                self.stale_reads.append(StaleRead(self.name, op.key, value, op.call, now))
        else:
            self.recorder.complete(op.token, status, value)
        if self.log:
            shown = f" -> {value}" if op.kind == "get" and status == "ok" else ""
            self.log(f"{self.name}: {op.kind} {op.key} {status}{shown}")
        self.op = None
        self.completed += 1
        if op.scripted:
            self.probe_results.append(f"{op.kind} {status}")
        if self._script:
            self.cluster.schedule(now, self._next_op)
        elif self.running:
            lo, hi = self.options.think_time
            self.cluster.schedule(now + self.rng.uniform(lo, hi), self._next_op)
