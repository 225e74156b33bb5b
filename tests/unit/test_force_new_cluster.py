"""The log a `--force-new-cluster` restart starts from (`etcdpy.server.force_new_cluster`)."""

from __future__ import annotations

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
from etcdpy.server.force_new_cluster import force_new_cluster, membership_ids


def _cc(index: int, kind: ConfChangeType, node: int, term: int = 2) -> Entry:
    return Entry(term=term, index=index, type=EntryType.CONF_CHANGE,
                 data=marshal_conf_change(ConfChange(type=kind, node_id=node)))


def _normal(index: int, term: int = 2) -> Entry:
    return Entry(term=term, index=index, data=b"x")


def test_uncommitted_entries_go_and_every_other_member_is_removed() -> None:
    snap = ConfState(voters=[1, 2, 3], learners=[9])
    ents = [_normal(11), _cc(12, ConfChangeType.ADD_LEARNER_NODE, 4), _cc(13, ConfChangeType.REMOVE_NODE, 9),
            _normal(14), _normal(15), _cc(16, ConfChangeType.REMOVE_NODE, 2)]  # 15, 16 uncommitted
    forced = force_new_cluster(1, b"{}", 10, snap, HardState(term=3, vote=1, commit=14), ents)
    assert [e.index for e in forced.entries] == [11, 12, 13, 14, 15, 16, 17]
    assert forced.removed == [2, 3, 4]
    changes = [unmarshal_conf_change(e.data) for e in forced.appended]
    assert [(c.type, c.node_id) for c in changes] == [(ConfChangeType.REMOVE_NODE, n) for n in (2, 3, 4)]
    assert all(e.term == 3 for e in forced.appended)  # the current term
    assert forced.hard_state == HardState(term=3, vote=1, commit=17)


def test_a_member_missing_from_the_membership_adds_itself() -> None:
    forced = force_new_cluster(5, b'{"id":5}', 0, None, HardState(term=1, commit=2),
                               [_cc(1, ConfChangeType.ADD_NODE, 1), _cc(2, ConfChangeType.ADD_NODE, 2)])
    kinds = [(c.type, c.node_id, c.context) for c in map(unmarshal_conf_change, (e.data for e in forced.appended))]
    assert kinds == [(ConfChangeType.REMOVE_NODE, 1, b""), (ConfChangeType.REMOVE_NODE, 2, b""),
                     (ConfChangeType.ADD_NODE, 5, b'{"id":5}')]
    assert forced.hard_state.commit == 5


def test_a_lone_member_gets_nothing_appended() -> None:
    forced = force_new_cluster(1, b"", 7, ConfState(voters=[1]), HardState(term=2, commit=7), [])
    assert forced.appended == [] and forced.hard_state.commit == 7
    assert membership_ids(ConfState(voters=[1]), []) == {1}
