"""Maintenance operations on one member: snapshot save (and etcdpy's offline restore), alarms and the
space quota, defragmentation, hashes, auto-compaction, move-leader.

Why these matter: this is what operators (and etcd operators such as etcd-druid) run
when a cluster fills up or must be backed up; etcdctl must get etcd's exact answers.
Everything here passes against etcd 3.5.1 except the restore into a new member, which
starts etcdpy on the data dir `etcdpy snapshot restore` built (skipped on the etcd
target; tests/compat/test_snapshot_format.py crosses snapshots between etcd and etcdpy).

Facts checked against etcd 3.4.23 and 3.5.1 and encoded below:

* NOSPACE refuses Put, LeaseGrant and a Txn with a top-level Put in either branch
  (RESOURCE_EXHAUSTED "etcdserver: mvcc: database space exceeded"); Range, DeleteRange,
  a Txn of deletes, a Txn whose only put is nested, Compact and LeaseRevoke still work;
  the refusal lasts until the alarm is disarmed, even once space is free again.
* CORRUPT refuses Put, DeleteRange, a writing Txn, Compact and LeaseGrant with DATA_LOSS
  "etcdserver: corrupt cluster"; Range and read-only Txn still work.
* Status.errors holds "memberID:<decimal id> alarm:NOSPACE " (trailing space).
* Deactivating an alarm that is not raised answers an empty list.
* etcdctl 3.5's `endpoint health` also reports active alarms.
* Auto-compaction in periodic mode with retention R compacts every R, first after R.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from harness import (
    SERVER_SRC,
    Cluster,
    EtcdctlError,
    GrpcClient,
    Member,
    assert_grpc_error,
    b64,
    current_revision,
    kv_json,
    reserve_port,
    strip_header,
    target,
    wait_until,
)

NOSPACE_MSG = "etcdserver: mvcc: database space exceeded"
CORRUPT_MSG = "etcdserver: corrupt cluster"
NOSPACE, CORRUPT = 1, 2
GET, ACTIVATE, DEACTIVATE = 0, 1, 2

etcdpy_only = pytest.mark.skipif(
    target() != "etcdpy", reason="starts the target on a data dir built by etcdpy's restore (etcdpy's layout)"
)


def _member_id(client: GrpcClient) -> int:
    return int(client.maintenance.Status(client.pb.StatusRequest()).header.member_id)


def _alarm(client: GrpcClient, action: int, member_id: int = 0, alarm: int = 0) -> list[tuple[int, int]]:
    resp = client.maintenance.Alarm(client.pb.AlarmRequest(action=action, memberID=member_id, alarm=alarm))
    return [(a.memberID, a.alarm) for a in resp.alarms]


def _status_errors(m: Member) -> list[str]:
    return list(m.etcdctl("endpoint", "status")[0]["Status"].get("errors", []))


def _put_op(pb: object, key: bytes, value: bytes = b"v") -> object:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))  # type: ignore[attr-defined]


def _etcdpy(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVER_SRC), env.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-m", "etcdpy", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120
    )


# ---------------------------------------------------------------------------- alarms


def test_no_alarms_on_a_fresh_member(fresh_member: Member, fresh_client: GrpcClient) -> None:
    assert fresh_member.etcdctl("alarm", "list").get("alarms") is None
    assert fresh_member.etcdctl("alarm", "list", json=False) == ""
    assert _alarm(fresh_client, GET) == []
    assert _status_errors(fresh_member) == []


def test_nospace_alarm_refuses_only_growing_requests(fresh_member: Member, fresh_client: GrpcClient) -> None:
    c, pb = fresh_client, fresh_client.pb
    c.kv.Put(pb.PutRequest(key=b"a", value=b"1"))
    c.kv.Put(pb.PutRequest(key=b"b", value=b"1"))
    lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=600)).ID
    mid = _member_id(c)

    assert _alarm(c, ACTIVATE, mid, NOSPACE) == [(mid, NOSPACE)]
    assert _alarm(c, ACTIVATE, mid, NOSPACE) == [(mid, NOSPACE)]  # raising it again changes nothing
    assert _alarm(c, GET) == [(mid, NOSPACE)]
    assert _alarm(c, GET, alarm=NOSPACE) == [(mid, NOSPACE)]
    assert _alarm(c, GET, alarm=CORRUPT) == []
    assert fresh_member.etcdctl("alarm", "list")["alarms"] == [{"memberID": mid, "alarm": NOSPACE}]
    assert fresh_member.etcdctl("alarm", "list", json=False) == f"memberID:{mid} alarm:NOSPACE \n"
    assert _status_errors(fresh_member) == [f"memberID:{mid} alarm:NOSPACE "]
    assert list(c.maintenance.Status(pb.StatusRequest()).errors) == [f"memberID:{mid} alarm:NOSPACE "]
    # etcdctl 3.5's `endpoint health` reads the alarm list too: an active alarm is unhealthy.
    health = fresh_member.etcdctl("endpoint", "health", json=False, check=False)
    assert health.returncode != 0, health
    assert "Active Alarm(s): NOSPACE" in health.stdout + health.stderr, health

    refused: list[tuple[str, Callable[[], object]]] = [
        ("put", lambda: c.kv.Put(pb.PutRequest(key=b"a", value=b"2"))),
        ("txn put", lambda: c.kv.Txn(pb.TxnRequest(success=[_put_op(pb, b"x")]))),
        ("txn put in failure branch", lambda: c.kv.Txn(pb.TxnRequest(failure=[_put_op(pb, b"x")]))),
        ("lease grant", lambda: c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60))),
    ]
    for _name, call in refused:
        with assert_grpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_MSG):
            call()
    with pytest.raises(EtcdctlError) as exc:
        fresh_member.etcdctl("put", "a", "3")
    assert exc.value.message == NOSPACE_MSG

    rev = current_revision(fresh_member)
    assert c.kv.Range(pb.RangeRequest(key=b"a")).kvs[0].value == b"1"
    assert c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"b")).deleted == 1
    c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"zz"))]))
    # etcd charges only top-level puts: a put inside a nested txn goes through
    nested = pb.TxnRequest(success=[_put_op(pb, b"nested")])
    assert c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_txn=nested)])).succeeded
    c.kv.Compact(pb.CompactionRequest(revision=rev))
    c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=lease))

    assert _alarm(c, DEACTIVATE, mid, NOSPACE) == [(mid, NOSPACE)]
    assert _alarm(c, DEACTIVATE, mid, NOSPACE) == []  # not raised any more: nothing to clear
    assert _alarm(c, GET) == []
    assert _status_errors(fresh_member) == []
    assert c.kv.Put(pb.PutRequest(key=b"a", value=b"4")).header.revision == rev + 3


def test_corrupt_alarm_refuses_writes_not_reads(fresh_member: Member, fresh_client: GrpcClient) -> None:
    c, pb = fresh_client, fresh_client.pb
    c.kv.Put(pb.PutRequest(key=b"a", value=b"1"))
    mid = _member_id(c)
    assert _alarm(c, ACTIVATE, mid, CORRUPT) == [(mid, CORRUPT)]
    assert _status_errors(fresh_member) == [f"memberID:{mid} alarm:CORRUPT "]
    refused: list[Callable[[], object]] = [
        lambda: c.kv.Put(pb.PutRequest(key=b"a", value=b"2")),
        lambda: c.kv.DeleteRange(pb.DeleteRangeRequest(key=b"a")),
        lambda: c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=b"a"))])),
        lambda: c.kv.Compact(pb.CompactionRequest(revision=1)),
        lambda: c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=60)),
    ]
    for call in refused:
        with assert_grpc_error(grpc.StatusCode.DATA_LOSS, CORRUPT_MSG):
            call()
    assert c.kv.Range(pb.RangeRequest(key=b"a")).kvs[0].value == b"1"
    assert c.kv.Txn(pb.TxnRequest(success=[pb.RequestOp(request_range=pb.RangeRequest(key=b"a"))])).succeeded
    assert _alarm(c, DEACTIVATE, mid, CORRUPT) == [(mid, CORRUPT)]
    c.kv.Put(pb.PutRequest(key=b"a", value=b"3"))


def test_alarm_of_another_member_id_is_listed_and_disarmed(fresh_member: Member, fresh_client: GrpcClient) -> None:
    """Alarms carry any member id; `etcdctl alarm disarm` clears every listed alarm."""
    c = fresh_client
    assert _alarm(c, ACTIVATE, 12345, NOSPACE) == [(12345, NOSPACE)]
    assert _status_errors(fresh_member) == ["memberID:12345 alarm:NOSPACE "]
    out = fresh_member.etcdctl("alarm", "disarm")
    assert out["alarms"] == [{"memberID": 12345, "alarm": NOSPACE}]
    assert fresh_member.etcdctl("alarm", "list").get("alarms") is None
    fresh_member.etcdctl("put", "k", "v")


def test_alarm_survives_restart(fresh_member: Member, fresh_client: GrpcClient) -> None:
    """Alarms are stored in the backend: a restarted member still refuses writes."""
    mid = _member_id(fresh_client)
    _alarm(fresh_client, ACTIVATE, mid, NOSPACE)
    fresh_member.restart()
    c = fresh_member.grpc()
    assert _alarm(c, GET) == [(mid, NOSPACE)]
    with assert_grpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_MSG):
        c.kv.Put(c.pb.PutRequest(key=b"k", value=b"v"))
    fresh_member.etcdctl("alarm", "disarm")
    c.kv.Put(c.pb.PutRequest(key=b"k", value=b"v"))


# ---------------------------------------------------------------------------- quota


QUOTA = 600_000
VALUE = b"x" * 40_000


def test_quota_raises_nospace_until_compact_defrag_disarm(make_cluster: Callable[..., Cluster]) -> None:
    """The operator's recovery: compact, defragment, disarm; then writes are accepted again."""
    m = make_cluster(1, [f"--quota-backend-bytes={QUOTA}"]).members[0]
    c, pb = m.grpc(), m.grpc().pb
    mid = _member_id(c)
    for i in range(200):
        try:
            c.kv.Put(pb.PutRequest(key=b"big", value=VALUE))
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert err.details() == NOSPACE_MSG
            break
    else:
        pytest.fail("the quota was never reached")
    assert i >= 3  # the first writes fit
    assert _alarm(c, GET) == [(mid, NOSPACE)]
    assert _status_errors(m) == [f"memberID:{mid} alarm:NOSPACE "]
    rev = current_revision(m)
    # reads and deletes keep working
    assert m.etcdctl("get", "big", "--keys-only")["kvs"] == [kv_json("big", None, 2, rev, rev - 1)]
    full = m.etcdctl("endpoint", "status")[0]["Status"]["dbSize"]

    assert m.etcdctl("compaction", str(rev), json=False).strip() == f"compacted revision {rev}"
    out = m.etcdctl("defrag", json=False)
    assert out.strip() == f"Finished defragmenting etcd member[{m.endpoint}]"
    after = m.etcdctl("endpoint", "status")[0]["Status"]
    assert after["dbSize"] < full
    assert after["dbSize"] < QUOTA
    # space is free again, but the alarm still stands until an operator disarms it
    with assert_grpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, NOSPACE_MSG):
        c.kv.Put(pb.PutRequest(key=b"small", value=b"v"))
    disarmed = m.etcdctl("alarm", "disarm")
    assert disarmed["alarms"] == [{"memberID": mid, "alarm": NOSPACE}]
    assert _status_errors(m) == []
    assert m.etcdctl("put", "small", "v")["header"]["revision"] == rev + 1
    assert m.etcdctl("get", "big", "--print-value-only", json=False) == VALUE.decode() + "\n"


# ---------------------------------------------------------------------------- defrag and hashes


def test_defrag_keeps_data(fresh_member: Member, fresh_client: GrpcClient) -> None:
    for i in range(50):
        fresh_client.kv.Put(fresh_client.pb.PutRequest(key=f"k{i % 5}".encode(), value=f"v{i}".encode()))
    rev = current_revision(fresh_member)
    before = fresh_member.etcdctl("endpoint", "hashkv")[0]["HashKV"]
    fresh_member.etcdctl("compaction", str(rev - 5), json=False)
    resp = fresh_client.maintenance.Defragment(fresh_client.pb.DefragmentRequest())
    assert not resp.HasField("header")  # etcd answers an empty DefragmentResponse
    out = fresh_member.etcdctl("get", "k", "--prefix")
    assert [kv["value"] for kv in out["kvs"]] == [b64(f"v{i}") for i in range(45, 50)]
    assert out["header"]["revision"] == rev
    after = fresh_member.etcdctl("endpoint", "hashkv", f"--rev={rev}")[0]["HashKV"]
    assert after["compact_revision"] == rev - 5
    assert before["compact_revision"] == -1
    assert fresh_member.etcdctl("put", "k0", "again")["header"]["revision"] == rev + 1


def test_hashkv_is_a_function_of_the_history(make_cluster: Callable[..., Cluster]) -> None:
    """Two members given the same writes hash alike at every revision: what a corruption check compares."""
    a, b = make_cluster(1).members[0], make_cluster(1).members[0]
    for m in (a, b):
        for i in range(10):
            m.grpc().kv.Put(m.grpc().pb.PutRequest(key=f"k{i % 3}".encode(), value=f"v{i}".encode()))
        m.grpc().kv.DeleteRange(m.grpc().pb.DeleteRangeRequest(key=b"k1"))

    def hashkv(m: Member, rev: int = 0) -> tuple[int, int, int]:
        r = m.grpc().maintenance.HashKV(m.grpc().pb.HashKVRequest(revision=rev))
        return r.hash, r.compact_revision, r.header.revision

    assert hashkv(a) == hashkv(b)
    assert hashkv(a, 5) == hashkv(b, 5) != hashkv(a)
    assert hashkv(a, 5)[2] == 12  # the header carries the current revision, not the hashed one
    b.grpc().kv.Put(b.grpc().pb.PutRequest(key=b"extra", value=b"1"))
    assert hashkv(a)[0] != hashkv(b)[0]
    assert hashkv(a, 12)[0] == hashkv(b, 12)[0]  # later writes do not change an earlier revision's hash
    for m in (a, b):
        m.etcdctl("compaction", "6", json=False)
    assert hashkv(a, 12)[:2] == hashkv(b, 12)[:2]
    assert hashkv(a, 12)[1] == 6
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"):
        hashkv(a, 3)
    with assert_grpc_error(grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision"):
        hashkv(a, 100)
    ha = a.grpc().maintenance.Hash(a.grpc().pb.HashRequest())
    assert ha.hash != 0 and ha.header.revision == 12


# ---------------------------------------------------------------------------- snapshot


def test_snapshot_stream_over_grpc(fresh_member: Member, fresh_client: GrpcClient) -> None:
    c, pb = fresh_client, fresh_client.pb
    for i in range(20):
        c.kv.Put(pb.PutRequest(key=f"k{i}".encode(), value=os.urandom(5000)))
    msgs = list(c.maintenance.Snapshot(pb.SnapshotRequest()))
    data, last = msgs[:-1], msgs[-1]
    total = sum(len(m.blob) for m in data)
    assert total > 100_000 and total % 512 == 0
    assert all(0 < len(m.blob) <= 32 * 1024 for m in data)
    sent = 0
    for m in data:
        sent += len(m.blob)
        assert m.remaining_bytes == total - sent
    assert last.remaining_bytes == 0
    assert last.blob == hashlib.sha256(b"".join(m.blob for m in data)).digest()


def test_snapshot_save_with_etcdctl(fresh_member: Member, tmp_path: Path) -> None:
    for i in range(10):
        fresh_member.etcdctl("put", f"k{i}", f"v{i}")
    path = tmp_path / "snap.db"
    out = fresh_member.etcdctl("snapshot", "save", str(path), json=False)
    assert out.strip() == f"Snapshot saved at {path}"
    assert path.stat().st_size % 512 == 32  # data + etcdctl's sha256 trailer
    assert not (tmp_path / "snap.db.part").exists()


@etcdpy_only
def test_snapshot_restore_into_a_new_member(fresh_member: Member, tmp_path: Path) -> None:
    src = fresh_member
    revs = [src.etcdctl("put", f"k{i}", f"v{i}")["header"]["revision"] for i in range(10)]
    src.etcdctl("del", "k3")
    src.etcdctl("put", "k5", "v5b")
    lease = src.etcdctl("lease", "grant", "3600")["ID"]
    src.etcdctl("put", "leased", "x", f"--lease={lease:x}")
    rev = current_revision(src)
    expected = src.etcdctl("get", "", "--from-key")
    path = tmp_path / "snap.db"
    src.etcdctl("snapshot", "save", str(path), json=False)

    status = _etcdpy("snapshot", "status", str(path), "-w", "json")
    assert status.returncode == 0, status.stderr
    st = json.loads(status.stdout)
    assert st["revision"] == rev and st["totalKey"] > len(revs) and st["totalSize"] == path.stat().st_size - 32

    client, peer = reserve_port(), reserve_port()
    token = "restored-token"
    new = Member(name="restored", base_dir=tmp_path / "restored", client=client, peer=peer,
                 initial_cluster_token=token)
    new.initial_cluster = f"restored={new.peer_url}"
    res = _etcdpy(
        "snapshot", "restore", str(path), "--name=restored", f"--data-dir={new.data_dir}",
        f"--initial-cluster={new.initial_cluster}", f"--initial-advertise-peer-urls={new.peer_url}",
        f"--initial-cluster-token={token}",
    )
    assert res.returncode == 0, res.stderr
    try:
        new.start()
        got = new.etcdctl("get", "", "--from-key")
        assert strip_header(got) == strip_header(expected)
        assert got["header"]["revision"] == rev
        assert got["header"]["cluster_id"] != expected["header"]["cluster_id"]  # a NEW cluster
        members = new.etcdctl("member", "list")["members"]
        assert [(m["name"], m["peerURLs"]) for m in members] == [("restored", [new.peer_url])]
        assert new.etcdctl("lease", "timetolive", f"{lease:x}", "--keys")["keys"] == [b64("leased")]
        assert new.etcdctl("put", "after", "restore")["header"]["revision"] == rev + 1
        hashes = {m.name: m.etcdctl("endpoint", "hashkv", f"--rev={rev}")[0]["HashKV"]["hash"] for m in (src, new)}
        assert hashes["restored"] == hashes[src.name]
    finally:
        new.release()

    again = _etcdpy(
        "snapshot", "restore", str(path), "--name=restored", f"--data-dir={new.data_dir}",
        f"--initial-cluster={new.initial_cluster}", f"--initial-advertise-peer-urls={new.peer_url}",
    )
    assert again.returncode == 1 and again.stderr.startswith("Error: ") and "not empty" in again.stderr


def test_restore_refuses_a_truncated_snapshot(fresh_member: Member, tmp_path: Path) -> None:
    fresh_member.etcdctl("put", "k", "v")
    path = tmp_path / "snap.db"
    fresh_member.etcdctl("snapshot", "save", str(path), json=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    res = _etcdpy("snapshot", "restore", str(path), f"--data-dir={tmp_path / 'out'}")
    assert res.returncode == 1
    assert res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1 and "truncated" in res.stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- auto-compaction


def _compact_revision(m: Member) -> int:
    return int(m.etcdctl("endpoint", "hashkv")[0]["HashKV"]["compact_revision"])


def test_periodic_auto_compaction(make_cluster: Callable[..., Cluster]) -> None:
    """Retention 2s: the first compaction comes after 2 s, then one every 2 s at the revision of 2 s before."""
    m = make_cluster(1, ["--auto-compaction-mode=periodic", "--auto-compaction-retention=2s"]).members[0]
    c, pb = m.grpc(), m.grpc().pb

    def compacted_past_three() -> bool:
        c.kv.Put(pb.PutRequest(key=b"k", value=b"v"))
        time.sleep(0.1)
        return _compact_revision(m) >= 3

    wait_until(compacted_past_three, 40, "the periodic compactor to compact past revision 3")
    with pytest.raises(EtcdctlError) as exc:
        m.etcdctl("get", "k", "--rev=2")
    assert exc.value.message == "etcdserver: mvcc: required revision has been compacted"
    # the retention is kept: the current revision and the recent past stay readable
    assert m.etcdctl("get", "k")["kvs"][0]["value"] == b64("v")


@pytest.mark.soak
@pytest.mark.timeout(480)
def test_revision_auto_compaction(make_cluster: Callable[..., Cluster]) -> None:
    """Revision mode checks every 5 minutes (etcd's revInterval) and keeps the last `retention` revisions."""
    m = make_cluster(1, ["--auto-compaction-mode=revision", "--auto-compaction-retention=3"]).members[0]
    for i in range(10):
        m.etcdctl("put", "k", f"v{i}")
    rev = current_revision(m)
    wait_until(lambda: _compact_revision(m) == rev - 3, 400, "the revision compactor", interval=2.0)


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--auto-compaction-mode=bogus", "--auto-compaction-retention=1"], "auto-compaction-mode"),
        (["--auto-compaction-retention=abc"], "abc"),
    ],
)
def test_bad_auto_compaction_flags_stop_the_server(tmp_path: Path, flags: list[str], needle: str) -> None:
    m = Member(name="bad", base_dir=tmp_path, client=reserve_port(), peer=reserve_port(), extra_args=flags)
    try:
        proc = subprocess.run(m.argv(), capture_output=True, text=True, env=m.env(), timeout=30)
    finally:
        m.release()
    assert proc.returncode != 0
    assert needle in proc.stderr + proc.stdout


# ---------------------------------------------------------------------------- move-leader


def test_move_leader_on_one_member(fresh_member: Member, fresh_client: GrpcClient) -> None:
    mid = _member_id(fresh_client)
    out = fresh_member.etcdctl("move-leader", f"{mid:x}", json=False)
    assert out.strip() == f"Leadership transferred from {mid:x} to {mid:x}"
    with pytest.raises(EtcdctlError) as exc:
        fresh_member.etcdctl("move-leader", "deadbeef", json=False)
    assert exc.value.message == "etcdserver: bad leader transferee"
    with assert_grpc_error(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: bad leader transferee"):
        fresh_client.maintenance.MoveLeader(fresh_client.pb.MoveLeaderRequest(targetID=0))
    resp = fresh_client.maintenance.MoveLeader(fresh_client.pb.MoveLeaderRequest(targetID=mid))
    assert not resp.HasField("header")
