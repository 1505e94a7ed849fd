"""Leases: a handle on one, and the background thread that keeps it alive."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from ..errors import KvClusterError, RequestError

if TYPE_CHECKING:
    from ..client import Client


@dataclass(frozen=True)
class LeaseStatus:
    """A lease's time to live: `ttl` seconds left, `granted_ttl` as granted (or
    last renewed with), `keys` attached (when asked for)."""

    id: int
    ttl: int
    granted_ttl: int
    keys: tuple[str, ...] = ()


class Lease:
    """A granted lease. Attach keys with `client.put(key, value, lease=lease.id)`;
    they are deleted with it when it expires (no keep-alive for `ttl` seconds)
    or is revoked. As a context manager it stops its keep-alives and revokes
    itself on exit. Its methods use the Client it came from (same thread)."""

    def __init__(self, client: Client, lease_id: int, ttl: int) -> None:
        self.id = lease_id
        self.ttl = ttl  # as granted
        self._client = client
        self._keep_alives: list[KeepAlive] = []

    def revoke(self) -> None:
        """Revoke it now: its keys are deleted (at one revision)."""
        self._client.lease_revoke(self.id)

    def time_to_live(self, keys: bool = False) -> LeaseStatus | None:
        """Seconds left, and the attached keys if `keys`; None once it is gone."""
        return self._client.lease_time_to_live(self.id, keys=keys)

    def keep_alive(self) -> int:
        """Renew it once; return its TTL. Raises RequestError (lease_not_found) if it is gone."""
        return self._client.lease_keep_alive(self.id)

    def keep_alive_forever(self) -> KeepAlive:
        """Renew it every ttl/3 seconds in a background thread until the
        KeepAlive is closed (or this Lease's `with` block ends)."""
        keeper = KeepAlive(self._client._clone(), self.id, self.ttl)
        self._keep_alives.append(keeper)
        return keeper

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for keeper in self._keep_alives:
            keeper.close()
        self._keep_alives.clear()
        try:
            self.revoke()
        except RequestError as exc:
            if exc.error != "lease_not_found":
                raise  # else it expired already: gone, as leaving the block asks

    def __repr__(self) -> str:
        return f"Lease(id={self.id}, ttl={self.ttl})"


class KeepAlive:
    """A lease's keep-alives, sent every ttl/3 seconds by a daemon thread with a
    Client of its own, until `close()`.

    A keep-alive that fails (no leader for a while) is tried again every
    second until the lease would have expired since the last renewal; then,
    or when the cluster says the lease is gone, the thread stops and `error`
    says why (`alive` turns False): the keys attached to it are gone or about
    to be, and whoever relied on them should know.
    """

    def __init__(self, client: Client, lease_id: int, ttl: int) -> None:
        self.lease_id = lease_id
        self.ttl = max(1, ttl)
        self.renewals = 0
        self.error: KvClusterError | None = None
        self._client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"kvcluster-keepalive-{lease_id}", daemon=True
        )
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def _run(self) -> None:
        try:
            expires = time.monotonic() + self.ttl
            wait = 0.0  # the first renewal at once: the lease may have been granted long ago
            while not self._stop.wait(wait):
                sent = time.monotonic()
                try:
                    ttl = self._client.lease_keep_alive(self.lease_id)
                except RequestError as exc:
                    self.error = exc  # the lease is gone (or the request is wrong): stop
                    return
                except KvClusterError as exc:
                    if time.monotonic() >= expires:
                        self.error = exc
                        return
                    wait = min(1.0, self.ttl / 3)
                    continue
                self.ttl = max(1, ttl)
                self.renewals += 1
                expires = sent + self.ttl
                wait = self.ttl / 3
        finally:
            self._client.close()

    def close(self) -> None:
        """Stop sending keep-alives (the lease then expires after its TTL)."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()

    def __enter__(self) -> KeepAlive:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
