"""Cluster membership as stored in CONFIG entries.

Each member carries an *incarnation*: a node that lost its state (memory
storage, restarted) comes back with a new one and must not vote until the log
names it a voter under that new incarnation. That is what stops an amnesiac
node from voting twice in a term or forgetting entries it helped commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any


@dataclass(frozen=True, slots=True)
class Member:
    address: str
    voter: bool = True
    incarnation: str = ""


@dataclass(frozen=True)
class Membership:
    members: dict[str, Member] = field(default_factory=dict)

    @cached_property
    def voters(self) -> frozenset[str]:
        return frozenset(i for i, m in self.members.items() if m.voter)

    @cached_property
    def learners(self) -> frozenset[str]:
        return frozenset(i for i, m in self.members.items() if not m.voter)

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def is_voter(self, node_id: str, incarnation: str) -> bool:
        m = self.members.get(node_id)
        return m is not None and m.voter and m.incarnation == incarnation

    def names(self, node_id: str, incarnation: str) -> bool:
        """Whether this life of the node (voter or learner) is a member."""
        m = self.members.get(node_id)
        return m is not None and m.incarnation == incarnation

    def address(self, node_id: str) -> str | None:
        m = self.members.get(node_id)
        return m.address if m else None

    def with_member(self, node_id: str, member: Member) -> Membership:
        return Membership({**self.members, node_id: member})

    def without(self, node_id: str) -> Membership:
        return Membership({i: m for i, m in self.members.items() if i != node_id})

    def promoted(self, node_id: str) -> Membership:
        return self.with_member(node_id, replace(self.members[node_id], voter=True))

    def to_dict(self) -> dict[str, Any]:
        return {
            i: {"address": m.address, "voter": m.voter, "incarnation": m.incarnation}
            for i, m in sorted(self.members.items())
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Membership:
        return cls(
            {
                i: Member(str(m["address"]), bool(m["voter"]), str(m.get("incarnation", "")))
                for i, m in data.items()
            }
        )


def is_single_server_change(old: Membership, new: Membership) -> bool:
    """At most one voter added or removed: any majority of old and new overlap."""
    return len(old.voters ^ new.voters) <= 1
