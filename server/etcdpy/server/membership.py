"""Cluster membership (etcd's `membership.RaftCluster`) and the deterministic ids etcd derives.

Every member must compute the same member and cluster ids from the same
`--initial-cluster`, so the ids are hashes of the configuration, exactly as
etcd computes them: a member id is the first 8 bytes (big-endian) of
sha1(sorted peer URLs joined + cluster token [+ unix time for a runtime add]),
and the cluster id is the first 8 bytes of sha1 over the sorted member ids.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field

from etcdpy import errors
from etcdpy.raft.types import ConfChangeType

MAX_LEARNERS = 1
"""etcd allows one learner at a time."""


def compute_member_id(peer_urls: list[str], token: str, now_unix: int | None = None) -> int:
    data = "".join(sorted(peer_urls)) + token
    if now_unix is not None:
        data += str(now_unix)
    return struct.unpack(">Q", hashlib.sha1(data.encode()).digest()[:8])[0]


def compute_cluster_id(member_ids: list[int]) -> int:
    packed = b"".join(struct.pack(">Q", mid) for mid in sorted(member_ids))
    return struct.unpack(">Q", hashlib.sha1(packed).digest()[:8])[0]


@dataclass
class Member:
    id: int
    name: str = ""
    peer_urls: list[str] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def to_json(self, promote: bool = False) -> bytes:
        """The ConfChange context encoding (etcd puts the member record there as JSON).

        `promote` marks an AddNode that turns an existing learner into a voter (etcd's IsPromote).
        """
        d: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "peerURLs": self.peer_urls,
            "clientURLs": self.client_urls,
            "isLearner": self.is_learner,
        }
        if promote:
            d["isPromote"] = True
        return json.dumps(d, sort_keys=True).encode()

    def is_started(self) -> bool:
        """etcd counts a member as started once it has published its name."""
        return bool(self.name)

    @classmethod
    def from_json(cls, data: bytes) -> "Member":
        d = json.loads(data)
        return cls(
            id=int(d["id"]),
            name=d.get("name", ""),
            peer_urls=list(d.get("peerURLs") or []),
            client_urls=list(d.get("clientURLs") or []),
            is_learner=bool(d.get("isLearner", False)),
        )


def parse_initial_cluster(spec: str) -> dict[str, list[str]]:
    """`name1=url1,name1=url2,name2=url3` → {name: [urls]} (a name may repeat for several URLs)."""
    out: dict[str, list[str]] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise ValueError(f"invalid initial cluster entry {part!r} (want name=url)")
        name, url = part.split("=", 1)
        out.setdefault(name, []).append(url)
    return out


def members_from_initial_cluster(initial: dict[str, list[str]], token: str) -> list[Member]:
    return [Member(id=compute_member_id(urls, token), name=name, peer_urls=list(urls)) for name, urls in initial.items()]


class RaftCluster:
    """The membership as applied from the log; the single source of truth for member records."""

    def __init__(self, cluster_id: int = 0, members: list[Member] | None = None) -> None:
        self.cluster_id = cluster_id
        self.members: dict[int, Member] = {m.id: m for m in members or []}
        self.removed: set[int] = set()

    def member_ids(self) -> list[int]:
        return sorted(self.members)

    def voting_members(self) -> list[Member]:
        return [m for _, m in sorted(self.members.items()) if not m.is_learner]

    def learners(self) -> list[Member]:
        return [m for _, m in sorted(self.members.items()) if m.is_learner]

    def peer_url_owner(self, url: str) -> int | None:
        for m in self.members.values():
            if url in m.peer_urls:
                return m.id
        return None

    # -- etcd's quorum protection for reconfiguration (strict reconfig check) ------------------

    def is_ready_to_add_voting_member(self) -> bool:
        nmembers, nstarted = 1, 0
        for m in self.voting_members():
            nstarted += m.is_started()
            nmembers += 1
        if nstarted == 1 and nmembers == 2:
            return True  # growing a one-member cluster (e.g. after a restore) must stay possible
        return nstarted >= nmembers // 2 + 1

    def is_ready_to_remove_voting_member(self, member_id: int) -> bool:
        others = [m for m in self.voting_members() if m.id != member_id]
        return sum(m.is_started() for m in others) >= len(others) // 2 + 1

    def is_ready_to_promote_member(self) -> bool:
        voters = self.voting_members()
        nmembers, nstarted = len(voters) + 1, 1 + sum(m.is_started() for m in voters)
        return nstarted >= nmembers // 2 + 1

    def validate_conf_change(self, cc_type: ConfChangeType, node_id: int, context: bytes) -> None:
        """Refuse a committed change that does not fit the membership (etcd's ValidateConfigurationChange).

        Runs at apply time on every member, so all of them refuse the same changes.
        """
        if node_id in self.removed:
            raise errors.ErrMemberNotFound()
        if cc_type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
            d = json.loads(context) if context else {}
            if d.get("isPromote"):
                m = self.members.get(node_id)
                if m is None:
                    raise errors.ErrMemberNotFound()
                if not m.is_learner:
                    raise errors.ErrMemberNotLearner()
                return
            if node_id in self.members:
                raise errors.ErrMemberExist()
            for url in d.get("peerURLs") or []:
                if self.peer_url_owner(url) is not None:
                    raise errors.ErrPeerURLExist()
            if cc_type == ConfChangeType.ADD_LEARNER_NODE and len(self.learners()) + 1 > MAX_LEARNERS:
                raise errors.ErrTooManyLearners()
        elif cc_type == ConfChangeType.REMOVE_NODE:
            if node_id not in self.members:
                raise errors.ErrMemberNotFound()
        elif cc_type == ConfChangeType.UPDATE_NODE:
            if node_id not in self.members:
                raise errors.ErrMemberNotFound()
            d = json.loads(context) if context else {}
            for url in d.get("peerURLs") or []:
                owner = self.peer_url_owner(url)
                if owner is not None and owner != node_id:
                    raise errors.ErrPeerURLExist()

    def get(self, member_id: int) -> Member | None:
        return self.members.get(member_id)

    def add(self, m: Member) -> None:
        self.members[m.id] = m

    def remove(self, member_id: int) -> None:
        self.members.pop(member_id, None)
        self.removed.add(member_id)

    def update_attributes(self, member_id: int, name: str, client_urls: list[str]) -> None:
        m = self.members.get(member_id)
        if m is not None:
            m.name = name
            m.client_urls = list(client_urls)

    def update_peer_urls(self, member_id: int, peer_urls: list[str]) -> None:
        m = self.members.get(member_id)
        if m is None:
            raise errors.ErrMemberNotFound()
        m.peer_urls = list(peer_urls)

    def promote(self, member_id: int) -> None:
        m = self.members.get(member_id)
        if m is None:
            raise errors.ErrMemberNotFound()
        m.is_learner = False

    def to_json(self) -> bytes:
        """Serialized into raft snapshots, so a restart after log compaction still knows the members."""
        return json.dumps(
            {
                "cluster_id": self.cluster_id,
                "members": [json.loads(m.to_json()) for m in self.members.values()],
                "removed": sorted(self.removed),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "RaftCluster":
        d = json.loads(data)
        c = cls(int(d["cluster_id"]), [Member.from_json(json.dumps(m).encode()) for m in d["members"]])
        c.removed = set(int(x) for x in d.get("removed", []))
        return c
