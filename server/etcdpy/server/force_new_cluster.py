"""`--force-new-cluster`: restart one member's data as a one-member cluster (etcd's restartAsStandaloneNode).

The disaster-recovery move when a majority is lost for good: the member keeps
its data, its member id and the cluster id, and every other member is removed
from the membership, so it can elect itself and serve; others are then added
back one at a time. What etcd does, and so what this computes from the WAL:

1. entries after the hard state's commit index are dropped: nobody acknowledged
   them, and the removed members can no longer confirm them;
2. the member ids of the membership are collected: the snapshot's ConfState,
   then every committed ConfChange (adds add, removes remove);
3. one RemoveNode ConfChange per other member, and an AddNode of this member if
   it is somehow missing, are appended after the last committed entry at the
   current term, and the commit index is moved over them: they are committed by
   fiat and applied like any conf change when the server starts.

(etcd collects only the snapshot's voters in step 2; a learner is removed here too.)
"""

from __future__ import annotations

from dataclasses import dataclass

from etcdpy.raft.types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    marshal_conf_change,
    unmarshal_conf_change,
)


@dataclass(frozen=True)
class ForcedLog:
    hard_state: HardState
    entries: list[Entry]  # the committed entries followed by the appended ones (what raft starts with)
    appended: list[Entry]  # to be written to the WAL
    removed: list[int]


def membership_ids(conf_state: ConfState | None, committed: list[Entry]) -> set[int]:
    """Member ids after the snapshot and the committed conf changes."""
    ids = set(conf_state.voters) | set(conf_state.learners) if conf_state is not None else set()
    for e in committed:
        if e.type != EntryType.CONF_CHANGE:
            continue
        cc = unmarshal_conf_change(e.data)
        if cc.type in (ConfChangeType.ADD_NODE, ConfChangeType.ADD_LEARNER_NODE):
            ids.add(cc.node_id)
        elif cc.type == ConfChangeType.REMOVE_NODE:
            ids.discard(cc.node_id)
    ids.discard(0)
    return ids


def force_new_cluster(
    member_id: int, self_context: bytes, snap_index: int, conf_state: ConfState | None, hs: HardState,
    entries: list[Entry],
) -> ForcedLog:
    """The log a forced one-member restart starts from (see the module docstring)."""
    committed = [e for e in entries if e.index <= hs.commit]
    ids = membership_ids(conf_state, committed)
    index = committed[-1].index if committed else snap_index
    appended: list[Entry] = []
    removed = sorted(i for i in ids if i != member_id)
    changes = [ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=i) for i in removed]
    if member_id not in ids:
        changes.append(ConfChange(type=ConfChangeType.ADD_NODE, node_id=member_id, context=self_context))
    for cc in changes:
        index += 1
        appended.append(Entry(term=hs.term, index=index, type=EntryType.CONF_CHANGE, data=marshal_conf_change(cc)))
    commit = index if appended else hs.commit
    new_hs = HardState(term=hs.term, vote=hs.vote, commit=commit)
    return ForcedLog(new_hs, committed + appended, appended, removed)
