"""Entries this node appended as leader, and the requests waiting for them to apply.

A retried write (same `client_id` and `seq`) that finds its first attempt
still on its way in this term waits for that entry instead of appending the
command again. The session table in the store would answer a second copy
correctly, but under overload every retry would add an entry, and clients
that give up before the commit would make the overload worse, for good (the
simulator finds that livelock when this is switched off).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Proposal:
    term: int
    session: tuple[str, int] | None  # the command's (client_id, seq), if it has one
    waiters: list[int] = field(default_factory=list)  # request ids


class Proposals:
    def __init__(self) -> None:
        self._by_index: dict[int, Proposal] = {}
        self._by_session: dict[tuple[str, int], int] = {}  # -> index

    def __len__(self) -> int:
        return len(self._by_index)

    def pending(self, session: tuple[str, int] | None, term: int) -> Proposal | None:
        """Our entry for this session appended in `term`, if it has not applied yet."""
        if session is None:
            return None
        proposal = self._by_index.get(self._by_session.get(session, 0))
        if proposal is None or proposal.session != session or proposal.term != term:
            return None
        return proposal

    def add(self, index: int, term: int, session: tuple[str, int] | None, waiter: int) -> list[int]:
        """Record our new entry at `index`; returns the waiters of an earlier
        proposal at the same index, whose entry is gone from our log (a leader
        appends each index once per term): it was never committed."""
        replaced = self._by_index.get(index)
        if replaced is not None:
            self._forget_session(replaced, index)
        self._by_index[index] = Proposal(term, session, [waiter])
        if session is not None:
            self._by_session[session] = index
        return replaced.waiters if replaced is not None else []

    def pop(self, index: int) -> Proposal | None:
        """The proposal at `index`, which is being applied now."""
        proposal = self._by_index.pop(index, None)
        if proposal is not None:
            self._forget_session(proposal, index)
        return proposal

    def drop_upto(self, index: int) -> list[int]:
        """Forget proposals at or before `index` (a snapshot replaced them);
        returns their waiters."""
        waiters: list[int] = []
        for i in [i for i in self._by_index if i <= index]:
            proposal = self.pop(i)
            if proposal is not None:
                waiters.extend(proposal.waiters)
        return waiters

    def _forget_session(self, proposal: Proposal, index: int) -> None:
        if proposal.session is not None and self._by_session.get(proposal.session) == index:
            del self._by_session[proposal.session]
