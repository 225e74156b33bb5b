"""etcdctl end to end on a 3-member cluster: watch, lease and auth across members.

A single member cannot show what matters here: a watch on one member sees writes
made through another, a keep-alive or time-to-live sent to a follower is answered
by the leader's lessor, and an auth change made through one member is enforced by
all of them. Each test passes against real etcd (ETCDPY_TEST_TARGET=etcd).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from harness import Cluster, EtcdctlError, Member, b64, etcdctl_binary, wait_until


def _followers(cluster: Cluster) -> tuple[Member, list[Member]]:
    leader = cluster.leader()
    return leader, [m for m in cluster.members if m is not leader]


class _WatchProcess:
    """`etcdctl watch -w json` on one member, its responses collected by a reader thread."""

    def __init__(self, member: Member, *args: str) -> None:
        self.events: list[dict] = []
        self.proc = subprocess.Popen(
            [etcdctl_binary(), f"--endpoints={member.endpoint}", "watch", "-w", "json", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"},
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.events.extend(json.loads(line).get("Events") or [])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_watch_on_a_follower_sees_writes_made_through_the_leader(cluster3: Cluster) -> None:
    leader, followers = _followers(cluster3)
    start = int(leader.etcdctl("put", "/cw/start", "x")["header"]["revision"]) + 1
    w = _WatchProcess(followers[0], "--prefix", "/cw/k", f"--rev={start}", "--prev-kv")
    try:
        for i in range(20):
            leader.etcdctl("put", f"/cw/k{i:02d}", f"v{i}")
        followers[1].etcdctl("put", "/cw/k00", "again")
        followers[1].etcdctl("del", "/cw/k01")
        wait_until(lambda: len(w.events) >= 22, 20, "22 events on the follower's watch")
    finally:
        w.close()
    revs = [int(e["kv"]["mod_revision"]) for e in w.events]
    assert revs == list(range(start, start + 22)), "ordered, contiguous, no duplicate"
    # etcdctl's JSON carries protobuf enums as numbers: PUT is 0 (omitted), DELETE is 1.
    assert [e.get("type", 0) for e in w.events[:21]] == [0] * 21
    assert w.events[21]["type"] == 1
    assert w.events[20]["kv"]["value"] == b64("again") and w.events[20]["prev_kv"]["value"] == b64("v0")


def test_lease_through_followers_is_served_by_the_leaders_lessor(cluster3: Cluster) -> None:
    leader, (f1, f2) = _followers(cluster3)
    grant = f1.etcdctl("lease", "grant", "60")
    lid = f"{int(grant['ID']):x}"
    assert grant["TTL"] == 60
    f2.etcdctl("put", "/cl/a", "1", f"--lease={lid}")
    leader.etcdctl("put", "/cl/b", "2", f"--lease={lid}")
    ka = f2.etcdctl("lease", "keep-alive", "--once", lid, json=False)
    assert "keepalived with TTL(60)" in ka, ka
    ttl = f1.etcdctl("lease", "timetolive", lid, "--keys")
    assert 0 < ttl["ttl"] <= 60 and ttl["granted-ttl"] == 60
    assert sorted(ttl["keys"]) == [b64("/cl/a"), b64("/cl/b")]
    f2.etcdctl("lease", "revoke", lid, json=False)
    for m in cluster3.members:
        wait_until(
            lambda m=m: m.etcdctl("get", "/cl/", "--prefix", "--consistency=s").get("count", 0) == 0,
            10,
            f"revoked keys gone on {m.name}",
        )
    gone = f1.etcdctl("lease", "timetolive", lid)
    assert gone["ttl"] == -1


def test_auth_enabled_through_one_member_is_enforced_by_all(make_cluster: Callable[..., Cluster]) -> None:
    cluster = make_cluster(3)
    m0, m1, m2 = cluster.members
    m0.etcdctl("user", "add", "root:rootpw", json=False)
    m1.etcdctl("role", "add", "rw-app", json=False)
    m2.etcdctl("role", "grant-permission", "rw-app", "--prefix=true", "readwrite", "/app/", json=False)
    m0.etcdctl("user", "add", "alice:alicepw", json=False)
    m1.etcdctl("user", "grant-role", "alice", "rw-app", json=False)
    m2.etcdctl("auth", "enable", json=False)

    def as_user(m: Member, user: str, *args: str, json: bool = True) -> dict:
        return m.etcdctl(f"--user={user}", *args, json=json)

    for m in cluster.members:
        wait_until(
            lambda m=m: _denied(lambda: m.etcdctl("put", "/app/anon", "x")),
            10,
            f"{m.name} refuses anonymous writes once auth is enabled",
        )
        as_user(m, "alice:alicepw", "put", f"/app/{m.name}", "ok")
        with pytest.raises(EtcdctlError) as info:
            as_user(m, "alice:alicepw", "put", "/other/x", "no")
        assert info.value.message == "etcdserver: permission denied"
        with pytest.raises(EtcdctlError) as info:
            as_user(m, "alice:wrong", "get", "/app/")
        assert info.value.message == "etcdserver: authentication failed, invalid user ID or password"
    got = as_user(m1, "root:rootpw", "get", "/app/", "--prefix")
    assert sorted(kv["key"] for kv in got["kvs"]) == sorted(b64(f"/app/{m.name}") for m in cluster.members)
    as_user(m0, "root:rootpw", "auth", "disable", json=False)
    for m in cluster.members:
        wait_until(lambda m=m: not _denied(lambda: m.etcdctl("put", "/free", "x")), 10, f"{m.name} open again")


def _denied(call: Callable[[], object]) -> bool:
    try:
        call()
    except EtcdctlError as e:
        return "user name is empty" in e.message or "permission denied" in e.message or "invalid auth token" in e.message
    return False


def test_watch_survives_writes_while_members_restart(cluster3: Cluster) -> None:
    """A follower restarting does not disturb a watch held on another member."""
    leader, (f1, f2) = _followers(cluster3)
    start = int(leader.etcdctl("put", "/cr/start", "x")["header"]["revision"]) + 1
    w = _WatchProcess(f1, "--prefix", "/cr/k", f"--rev={start}")
    try:
        leader.etcdctl("put", "/cr/k0", "a")
        f2.restart()
        leader.etcdctl("put", "/cr/k1", "b")
        f2.etcdctl("put", "/cr/k2", "c")
        deadline = time.monotonic() + 20
        while len(w.events) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        w.close()
    assert [e["kv"]["key"] for e in w.events] == [b64("/cr/k0"), b64("/cr/k1"), b64("/cr/k2")]


def test_defrag_cluster_and_hashkv_cluster_agree(cluster3: Cluster) -> None:
    """`defrag --cluster` reaches every member; `endpoint hashkv --cluster` is equal on all of them."""
    leader, _ = _followers(cluster3)
    for i in range(30):
        leader.etcdctl("put", f"/hk/k{i}", f"v{i}")
    leader.etcdctl("del", "/hk/k1")
    out = leader.etcdctl("defrag", "--cluster", json=False)
    for m in cluster3.members:
        assert f"Finished defragmenting etcd member[{m.client_url}]" in out, out
    rev = int(leader.etcdctl("get", "/hk/k0")["header"]["revision"])

    def hashes() -> list[dict] | None:
        got = leader.etcdctl("endpoint", "hashkv", "--cluster", f"--rev={rev}")
        return got if len(got) == 3 else None

    got = wait_until(hashes, 10, "hashkv from every member")
    assert sorted(h["Endpoint"] for h in got) == sorted(m.client_url for m in cluster3.members)
    assert len({h["HashKV"]["hash"] for h in got}) == 1, got
