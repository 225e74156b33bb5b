"""Randomized cluster simulations with faults; safety is checked after every step (see raft_sim.py).

Each run alternates chaos periods (message loss, duplication, delay and
reordering, partitions, crashes/restarts, optionally membership changes) with
a heal, after which a proposal must commit (liveness). The default run keeps
to a few seconds; `-m soak` runs many more seeds and steps.
"""

from __future__ import annotations

import random

import pytest

from etcdpy.raft import ConfChange, ConfChangeType, StateType
from raft_sim import Network, SimConfig


def random_partition(net: Network, rand: random.Random) -> None:
    ids = [i for i, sn in net.nodes.items() if not sn.removed]
    rand.shuffle(ids)
    cut = rand.randint(1, max(1, len(ids) - 1))
    net.partition(set(ids[:cut]), set(ids[cut:]))


def chaos_step(net: Network, rand: random.Random, membership: bool) -> None:
    r = rand.random()
    if r < 0.006:
        live = [sn for sn in net.live()]
        if live:
            net.crash(rand.choice(live).id)
    elif r < 0.02:
        dead = [sn.id for sn in net.nodes.values() if sn.node is None and not sn.removed]
        if dead:
            net.restart(rand.choice(dead))
    elif r < 0.027:
        random_partition(net, rand)
    elif r < 0.035:
        net.faults.blocked = set()
    elif r < 0.04:
        ld = net.leader()
        if ld is not None:  # isolate the leader
            others = {i for i in net.nodes if i != ld.id}
            net.partition({ld.id}, others)
    elif r < 0.042:
        net.random_transfer_leader()
    elif membership and r < 0.052:
        net.random_membership_change()
    net.step()


def run_chaos(seed: int, n: int, rounds: int, chaos_steps: int, membership: bool = False, **cfg) -> Network:
    rand = random.Random(seed * 7919 + n)
    net = Network(seed, SimConfig(n=n, **cfg))
    net.run(30)
    for _ in range(rounds):
        net.faults.loss = rand.choice([0.0, 0.02, 0.1, 0.3])
        net.faults.dup = rand.choice([0.0, 0.05, 0.2])
        net.faults.crash_mid_ready = rand.choice([0.0, 0.0, 0.002])
        for _ in range(chaos_steps):
            chaos_step(net, rand, membership)
        net.heal()
        net.wait_commit(max_steps=60 * net.cfg.election_tick)
    net.wait_converged(max_steps=60 * net.cfg.election_tick)
    assert net.max_applied > 0
    return net


def run_churn(seed: int, n: int, steps: int, **cfg) -> Network:
    """Leader crashes and partitions at a high rate with one entry per MsgApp.

    Small messages let a new leader's older-term entries reach a majority
    without its own-term entry: the Figure 8 situation where committing by
    counting replicas of an old-term entry would be unsafe.
    """
    rand = random.Random(seed)
    cfg.setdefault("max_size_per_msg", 1)
    cfg.setdefault("max_inflight", 2)
    cfg.setdefault("snapshot_every", 0)
    cfg.setdefault("max_delay", 6)
    cfg.setdefault("election_tick", 6)
    net = Network(seed, SimConfig(n=n, **cfg))
    net.run(30)
    net.faults.loss = 0.2
    for _ in range(steps):
        r = rand.random()
        if r < 0.03:
            ld = net.leader()
            if ld is not None:
                net.crash(ld.id)
        elif r < 0.10:
            dead = [sn.id for sn in net.nodes.values() if sn.node is None]
            if dead:
                net.restart(rand.choice(dead))
        elif r < 0.13:
            random_partition(net, rand)
        elif r < 0.15:
            net.faults.blocked = set()
        net.step()
    net.heal()
    # With one entry per MsgApp and two in flight, a follower that is a few
    # hundred entries behind needs a few hundred round trips: allow for that.
    net.wait_commit(max_steps=500 * net.cfg.election_tick)
    return net


# Default run: about 3,000-4,000 steps per seed; see the soak tests for more.
@pytest.mark.parametrize("seed", range(16))
def test_sim_3_nodes(seed):
    net = run_chaos(seed, 3, rounds=8, chaos_steps=400)
    assert net.elections >= 1


@pytest.mark.parametrize("seed", range(10))
def test_sim_5_nodes(seed):
    run_chaos(seed, 5, rounds=8, chaos_steps=400)


@pytest.mark.parametrize("seed", range(12))
def test_sim_membership_changes_under_faults(seed):
    net = run_chaos(seed, 3, rounds=8, chaos_steps=400, membership=True)
    assert net.conf_changes_applied > 3  # more than the bootstrap entries


@pytest.mark.parametrize("seed", range(16))
@pytest.mark.parametrize("n", [3, 5])
def test_sim_leader_churn_figure8(seed, n):
    run_churn(seed, n, 1500)


@pytest.mark.parametrize("seed", range(4))
def test_sim_without_pre_vote_and_check_quorum(seed):
    run_chaos(seed, 3, rounds=6, chaos_steps=400, pre_vote=False, check_quorum=False)


def test_sim_no_faults_makes_steady_progress():
    net = Network(42, SimConfig(n=3, max_delay=0))
    net.run(1000)
    assert net.elections == 1
    assert len(net.applied_data) > 500
    assert net.reads_served > 10


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(100, 160))
@pytest.mark.parametrize("n", [3, 5])
def test_sim_soak(seed, n):
    run_chaos(seed, n, rounds=20, chaos_steps=500, membership=seed % 2 == 0)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(100, 300))
@pytest.mark.parametrize("n", [3, 5])
def test_sim_soak_churn(seed, n):
    run_churn(seed, n, 5000)


# -- directed scenarios on the simulated cluster ------------------------------------------------


def settled(seed: int = 7, n: int = 3, **cfg) -> Network:
    net = Network(seed, SimConfig(n=n, max_delay=1, **cfg))
    net.run(60)
    assert net.leader() is not None
    return net


def test_sim_isolated_leader_steps_down_and_majority_elects():
    net = settled()
    old = net.leader()
    assert old is not None
    others = {i for i in net.nodes if i != old.id}
    net.partition({old.id}, others)
    net.run(2 * net.cfg.election_tick)
    # CheckQuorum: the isolated leader stepped down within two election timeouts ...
    assert old.node is not None and old.node.raft.state != StateType.LEADER
    # ... and the majority elects a new one (split votes may take a few rounds).
    for _ in range(10 * net.cfg.election_tick):
        new = net.leader()
        if new is not None:
            break
        net.step()
    assert new is not None and new.id != old.id
    before = len(net.applied_data)
    net.run(50)
    assert len(net.applied_data) > before
    net.heal()
    net.wait_converged(20 * net.cfg.election_tick)
    assert old.node.raft.lead == new.id


def test_sim_minority_cannot_commit():
    net = settled(n=5)
    ld = net.leader()
    assert ld is not None
    minority = {ld.id, next(i for i in net.nodes if i != ld.id)}
    net.partition(minority, set(net.nodes) - minority)
    net.run(3 * net.cfg.election_tick)
    applied_in_minority = {net.nodes[i].sm_index for i in minority}
    # Proposals made in the minority never commit there.
    for _ in range(50):
        for i in minority:
            net.propose(net.nodes[i])
        net.step(workload=False)
    assert {net.nodes[i].sm_index for i in minority} == applied_in_minority
    net.heal()
    net.wait_commit(30 * net.cfg.election_tick)


def test_sim_whole_cluster_restart_keeps_committed_data():
    net = settled()
    net.run(200)
    applied = net.max_applied
    for i in list(net.nodes):
        net.crash(i)
    for i in list(net.nodes):
        net.restart(i)
    net.wait_commit(30 * net.cfg.election_tick)
    net.wait_converged(30 * net.cfg.election_tick)
    assert net.max_applied > applied


def test_sim_new_member_catches_up_via_snapshot_and_is_promoted():
    net = settled(snapshot_every=20, keep_entries=0)
    net.run(200)  # the log is compacted well past index 1
    ld = net.leader()
    assert ld is not None and ld.node is not None and ld.node.raft.raft_log.first_index() > 10
    new_id = net.next_id
    assert net.propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER_NODE, node_id=new_id))
    net.add_node()
    sent = net.snapshots_sent
    for _ in range(40 * net.cfg.election_tick):
        net.step()
        if net.nodes[new_id].sm_index >= net.max_applied - 5:
            break
    assert net.snapshots_sent > sent
    assert net.nodes[new_id].node is not None and net.nodes[new_id].node.raft.is_learner
    assert net.propose_conf_change(ConfChange(type=ConfChangeType.ADD_NODE, node_id=new_id))
    net.run(30)
    ld = net.leader()
    assert ld is not None and new_id in ld.node.raft.prs.voters  # type: ignore[union-attr]
    assert not net.nodes[new_id].node.raft.is_learner  # type: ignore[union-attr]


def test_sim_remove_leader_hands_over():
    net = settled(n=5)
    ld = net.leader()
    assert ld is not None
    assert net.propose_conf_change(ConfChange(type=ConfChangeType.REMOVE_NODE, node_id=ld.id))
    net.run(2 * net.cfg.election_tick)
    new = net.leader()
    assert new is not None and new.id != ld.id
    assert ld.id not in new.node.raft.prs.voters  # type: ignore[union-attr]
    net.wait_commit(20 * net.cfg.election_tick)


def test_sim_leader_transfer():
    net = settled(n=3)
    ld = net.leader()
    assert ld is not None and ld.node is not None
    target = next(i for i in net.nodes if i != ld.id)
    ld.node.transfer_leader(target)
    net.run(2 * net.cfg.election_tick)
    new = net.leader()
    assert new is not None and new.id == target
