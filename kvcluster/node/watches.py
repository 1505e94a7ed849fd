"""Watches: every change to a key, a prefix or a range, from a revision on, served
by any node from the state it has applied.

A watcher is one cursor, `next`: the first revision it has not been sent yet.
Whatever it is sent comes from the store's history (`KVStore.changes_since`)
from that cursor on, and the cursor moves past what was sent; nothing is
queued per watcher. So the guarantees hold by construction:

- events come in revision order, each revision once: the cursor only moves
  forward, over what was sent;
- all the events of one revision are in one message: a message ends only at
  a revision boundary (a large backlog is sent as several messages);
- nothing is missed between creation and cancel: a watcher behind (a slow
  client, a history replay) reads on from its cursor when it can, and one
  whose cursor compaction has passed is told so (the compact revision) and
  ends, never silently skips;
- a client that comes back, to any node, with start_revision = the last
  revision it saw + 1 gets exactly what follows: every node applies the same
  log, and a node that has not applied that far yet waits until it has.

This module is sans-IO like the rest of the node layer: the driver (or a
simulator) owns the connections and the clock. For each client stream it
opens a `WatchStream`, gives it the client's requests, and takes its
`WatchMessage`s whenever it may send (after applying entries, when the
client has read what it was sent, when a progress deadline passes); it
renders them in its API's format (etcd's JSON gateway: server/etcd_watch.py).
A stream holds no events of its own, so a client that reads slowly costs
nothing but its cursor. With no watchers, applying an entry costs the driver
one test of `WatchHub.streams`.

The cost with watchers: each time a stream is pumped, every watcher that is
behind the applied revision reads the history after its cursor, filtered by
its range (so W watchers on a busy store scan W times what was applied). An
index of ranges, as etcd keeps for its synced watchers, is for later.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

from ..kv import CompactedError, KVStore

# What a message says (`WatchMessage.kind`).
CREATED: Final = "created"  # the watch exists; events follow (header: current revision)
EVENTS: Final = "events"  # events of one or more whole revisions
CANCELED: Final = "canceled"  # canceled at the client's request
COMPACTED: Final = "compacted"  # its next revision was compacted away: it ends
PROGRESS: Final = "progress"  # an answer to a progress request: all is sent up to `revision`
NOTIFY: Final = "notify"  # a watcher's periodic progress notification (no events)
REFUSED: Final = "refused"  # a create that was not made (`reason` says why; watch_id -1)

DUPLICATE_ID: Final = "duplicate watch id"  # etcd has a message of its own for it

PROGRESS_INTERVAL: Final = 600.0  # seconds, etcd's default progress notification interval
MAX_WATCHERS_PER_STREAM: Final = 256
MAX_WATCHERS: Final = 10_000  # on one node, all streams
EVENTS_BUDGET: Final = 128 << 10  # about this many bytes of keys and values per message
# About this many history events looked at per message (whole revisions): a
# watcher far behind, or one whose filter matches little, reads the history in
# steps of ~0.3 ms (measured: 5,000 events filtered) rather than all at once on the event loop.
SCAN_BUDGET: Final = 5_000
_EVENT_OVERHEAD: Final = 64  # what an event costs beyond its keys and values (estimate)


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """A create request: etcd's WatchCreateRequest, without its wire format.

    `range_end` None watches `key` alone, "\\x00" every key from `key` on,
    else the keys in [key, range_end). `start_revision` 0 is "from now on".
    `watch_id` 0 lets the stream choose (the lowest id not in use from its
    counter on, as etcd does).
    """

    key: str
    range_end: str | None = None
    start_revision: int = 0
    prev_kv: bool = False
    no_put: bool = False
    no_delete: bool = False
    progress_notify: bool = False
    watch_id: int = 0


@dataclass(frozen=True, slots=True)
class WatchMessage:
    """One message for the client. `revision` is the header's: for EVENTS the
    last revision the message covers (everything up to it is sent), for the
    others the applied revision when it was made. `events` are etcd's watch
    events: {"type": "PUT"|"DELETE", "kv": KV, "prev_kv": KV | None}."""

    kind: str
    watch_id: int
    revision: int
    events: tuple[dict[str, Any], ...] = ()
    compact_revision: int = 0
    reason: str = ""


class _Watcher:
    __slots__ = (
        "id",
        "key",
        "next",
        "no_delete",
        "no_put",
        "notified_at",
        "prev_kv",
        "progress_notify",
        "range_end",
    )

    def __init__(self, watch_id: int, spec: WatchSpec, next_revision: int, now: float) -> None:
        self.id = watch_id
        self.key = spec.key
        self.range_end = spec.range_end or None
        self.next = next_revision  # the first revision not sent yet
        self.prev_kv = spec.prev_kv
        self.no_put = spec.no_put
        self.no_delete = spec.no_delete
        self.progress_notify = spec.progress_notify
        self.notified_at = now  # the last message it was sent (progress notifications)


class WatchStream:
    """One client's watches (etcd's watch stream): requests in, messages out."""

    def __init__(self, hub: WatchHub) -> None:
        self._hub = hub
        self._watchers: dict[int, _Watcher] = {}  # in the order they are served
        self._control: deque[WatchMessage] = deque()  # created, canceled, progress: in order
        self._next_id = 0
        self.closed = False

    def __len__(self) -> int:
        return len(self._watchers)

    def watch_ids(self) -> list[int]:
        return list(self._watchers)

    # ------------------------------------------------------------------ requests

    def create(self, spec: WatchSpec, kv: KVStore, now: float) -> int:
        """A create request; its answer (and events) come out of `next_message`.
        Returns the watch id, or -1 if the watch was refused."""
        if self.closed:
            return -1
        head = kv.revision
        watch_id = spec.watch_id
        refusal = ""
        if watch_id < 0:
            refusal = f"watch_id must not be negative, got {watch_id}"
        elif watch_id and watch_id in self._watchers:
            refusal = DUPLICATE_ID
        elif len(self._watchers) >= MAX_WATCHERS_PER_STREAM:
            refusal = (
                f"this watch stream has {MAX_WATCHERS_PER_STREAM} watchers already: "
                "open another stream"
            )
        elif self._hub.watchers >= MAX_WATCHERS:
            refusal = f"this node serves {MAX_WATCHERS} watchers already: watch another node"
        elif spec.start_revision < 0:
            refusal = f"start_revision must not be negative, got {spec.start_revision}"
        if refusal:
            self._control.append(WatchMessage(REFUSED, -1, head, reason=refusal))
            return -1
        if watch_id == 0:
            while self._next_id in self._watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        start = spec.start_revision or head + 1
        self._watchers[watch_id] = _Watcher(watch_id, spec, start, now)
        self._hub.watchers += 1
        self._control.append(WatchMessage(CREATED, watch_id, head))
        return watch_id

    def cancel(self, watch_id: int, kv: KVStore) -> bool:
        """A cancel request: nothing more is sent for it. An unknown id is
        ignored, as etcd does."""
        if self._watchers.pop(watch_id, None) is None:
            return False
        self._hub.watchers -= 1
        self._control.append(WatchMessage(CANCELED, watch_id, kv.revision))
        return True

    def progress(self, kv: KVStore) -> None:
        """A progress request: the revision up to which every watcher of the
        stream has been sent everything (the applied revision if it has none)."""
        revision = kv.revision
        for w in self._watchers.values():
            revision = min(revision, w.next - 1)
        self._control.append(WatchMessage(PROGRESS, -1, revision))

    # ------------------------------------------------------------------ output

    def next_message(self, kv: KVStore, now: float) -> WatchMessage | None:
        """The next message to send, or None while there is nothing to say.

        Call it whenever the client may be sent more (a message taken is
        considered sent). Answers to requests come first, in order; then each
        watcher behind the applied revision in turn; then due notifications.
        One call reads at most about the hub's scan_budget history events: None
        while `pending()` is still True means a scan step found nothing to send
        yet; call again after letting other work run.
        """
        if self._control:
            return self._control.popleft()
        if self.closed or not self._watchers:
            return None
        head = kv.revision
        for w in list(self._watchers.values()):
            if w.next > head:
                continue
            message = self._catch_up(w, kv)
            if message is not None:
                if message.kind == EVENTS:
                    # The next call serves the others first: one busy range cannot starve them.
                    self._watchers[w.id] = self._watchers.pop(w.id)
                    w.notified_at = now
                return message
            if w.next <= head:  # a scan step found nothing for it: this call's budget is spent
                self._watchers[w.id] = self._watchers.pop(w.id)
                return None
        interval = self._hub.progress_interval
        for w in self._watchers.values():
            if w.progress_notify and now - w.notified_at >= interval:
                w.notified_at = now
                return WatchMessage(NOTIFY, w.id, min(head, w.next - 1))
        return None

    def pending(self, kv: KVStore) -> bool:
        """Something to send now (short of progress notifications)?"""
        if self._control:
            return True
        head = kv.revision
        return any(w.next <= head for w in self._watchers.values())

    def next_deadline(self) -> float | None:
        """When a progress notification falls due (if no message goes first)."""
        interval = self._hub.progress_interval
        due = [w.notified_at + interval for w in self._watchers.values() if w.progress_notify]
        return min(due) if due else None

    def _catch_up(self, w: _Watcher, kv: KVStore) -> WatchMessage | None:
        """Events for `w` from its cursor on, whole revisions, about the hub's
        events_budget bytes and scan_budget history events at most (but never
        less than one revision); None if all of them are filtered out. The
        cursor moves past what the message covers (or the scan looked at)."""
        try:
            head = kv.scan_horizon(w.next, self._hub.scan_budget)
            changes = kv.changes_since(w.next, w.key, w.range_end, upto=head)
        except CompactedError as exc:
            compact = int(exc.args[0])
            del self._watchers[w.id]
            self._hub.watchers -= 1
            return WatchMessage(COMPACTED, w.id, kv.revision, compact_revision=compact)
        events: list[dict[str, Any]] = []
        size = 0
        covered = head
        current = 0  # the revision of the last event looked at
        for event in changes:
            kv_ = event["kv"]
            revision = kv_["mod_revision"]
            if revision != current:
                if size >= self._hub.events_budget:
                    covered = revision - 1  # this revision goes in the next message
                    break
                current = revision
            if event["type"] == "PUT":
                if w.no_put:
                    continue
            elif w.no_delete:
                continue
            prev = event["prev_kv"]
            if not w.prev_kv:
                event["prev_kv"] = None
            elif prev is not None:
                size += len(prev["key"]) + len(prev["value"])
            size += _EVENT_OVERHEAD + len(kv_["key"]) + len(kv_["value"])
            events.append(event)
        w.next = covered + 1
        if not events:
            return None
        return WatchMessage(EVENTS, w.id, covered, tuple(events))


class WatchHub:
    """Every watch stream of one node (see the module docstring)."""

    def __init__(
        self,
        progress_interval: float = PROGRESS_INTERVAL,
        events_budget: int = EVENTS_BUDGET,
        scan_budget: int = SCAN_BUDGET,
    ) -> None:
        if progress_interval <= 0:
            raise ValueError("progress_interval must be positive")
        if events_budget <= 0 or scan_budget <= 0:
            raise ValueError("events_budget and scan_budget must be positive")
        self.progress_interval = progress_interval
        self.events_budget = events_budget
        self.scan_budget = scan_budget
        self.streams: set[WatchStream] = set()  # empty: applying entries costs nothing here
        self.watchers = 0  # across all streams

    def open(self) -> WatchStream:
        stream = WatchStream(self)
        self.streams.add(stream)
        return stream

    def close(self, stream: WatchStream) -> None:
        """The client went away: its watchers end (nothing is told to anyone)."""
        if stream in self.streams:
            self.streams.discard(stream)
            self.watchers -= len(stream)
        stream.closed = True
        stream._watchers.clear()
        stream._control.clear()

    def next_deadline(self) -> float | None:
        """The earliest progress notification due, over all streams."""
        due = [d for s in self.streams if (d := s.next_deadline()) is not None]
        return min(due) if due else None
