"""DeleteRange: counts, prev_kvs, ranges, and when the revision does (not) move.

Why the revision checks matter: a delete that matches nothing must not create a
revision (watchers and kube-apiserver's resourceVersion arithmetic would see a
phantom change), and a multi-key delete is one revision for all keys.
"""

from __future__ import annotations

from harness import GrpcClient, Member, assert_header, current_revision, kv_json, strip_header, unb64


def _put_all(member: Member, keys: list[str]) -> dict[str, int]:
    return {k: member.etcdctl("put", k, "v-" + k)["header"]["revision"] for k in keys}


def test_delete_single_key(member: Member, prefix: str) -> None:
    key = prefix + "k"
    rev = member.etcdctl("put", key, "v")["header"]["revision"]
    out = member.etcdctl("del", key)
    assert_header(out["header"], rev + 1)
    assert strip_header(out) == {"deleted": 1}
    assert strip_header(member.etcdctl("get", key)) == {}


def test_delete_missing_key_does_not_bump_revision(member: Member, prefix: str) -> None:
    rev = current_revision(member)
    out = member.etcdctl("del", prefix + "missing")
    assert_header(out["header"], rev)
    assert strip_header(out) == {}  # deleted: 0 is omitted
    assert current_revision(member) == rev


def test_delete_prev_kv(member: Member, prefix: str) -> None:
    key = prefix + "k"
    r1 = member.etcdctl("put", key, "a")["header"]["revision"]
    r2 = member.etcdctl("put", key, "b")["header"]["revision"]
    out = member.etcdctl("del", key, "--prev-kv")
    assert_header(out["header"], r2 + 1)
    assert strip_header(out) == {"deleted": 1, "prev_kvs": [kv_json(key, "b", r1, r2, 2)]}


def test_delete_prefix_is_one_revision(member: Member, prefix: str) -> None:
    revs = _put_all(member, [prefix + k for k in ("a", "b", "c")])
    outside = prefix[:-1] + "0"
    member.etcdctl("put", outside, "stays")
    before = current_revision(member)
    out = member.etcdctl("del", prefix, "--prefix", "--prev-kv")
    assert_header(out["header"], before + 1)
    assert strip_header(out) == {
        "deleted": 3,
        "prev_kvs": [kv_json(k, "v-" + k, r, r, 1) for k, r in revs.items()],
    }
    assert strip_header(member.etcdctl("get", prefix, "--prefix")) == {}
    assert member.etcdctl("get", outside)["count"] == 1
    # History at the revision before the delete still has all three keys.
    assert member.etcdctl("get", prefix, "--prefix", f"--rev={before}")["count"] == 3


def test_delete_explicit_range(member: Member, prefix: str) -> None:
    _put_all(member, [prefix + k for k in ("a", "b", "c", "d")])
    out = member.etcdctl("del", prefix + "b", prefix + "d")
    assert out["deleted"] == 2
    left = member.etcdctl("get", prefix, "--prefix", "--keys-only")
    assert [unb64(kv["key"]).decode() for kv in left["kvs"]] == [prefix + "a", prefix + "d"]


def test_delete_range_end_before_key_deletes_nothing(member: Member, prefix: str) -> None:
    _put_all(member, [prefix + k for k in ("a", "b", "c")])
    rev = current_revision(member)
    out = member.etcdctl("del", prefix + "c", prefix + "a")
    assert strip_header(out) == {}
    assert current_revision(member) == rev
    assert member.etcdctl("get", prefix, "--prefix", "--keys-only")["count"] == 3


def test_delete_from_key(fresh_member: Member) -> None:
    revs = _put_all(fresh_member, ["a", "b", "c"])
    out = fresh_member.etcdctl("del", "b", "--from-key", "--prev-kv")
    assert_header(out["header"], revs["c"] + 1)
    assert strip_header(out) == {
        "deleted": 2,
        "prev_kvs": [kv_json(k, "v-" + k, revs[k], revs[k], 1) for k in ("b", "c")],
    }
    assert [unb64(kv["key"]).decode() for kv in fresh_member.etcdctl("get", "", "--from-key")["kvs"]] == ["a"]


def test_grpc_delete_range(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    p = prefix.encode()
    revs = [client.kv.Put(pb.PutRequest(key=p + k, value=k)).header.revision for k in (b"a", b"b", b"c")]
    resp = client.kv.DeleteRange(pb.DeleteRangeRequest(key=p + b"a", range_end=p + b"c", prev_kv=True))
    assert resp.header.revision == revs[-1] + 1
    assert resp.deleted == 2
    assert [(kv.key, kv.value, kv.mod_revision) for kv in resp.prev_kvs] == [
        (p + b"a", b"a", revs[0]),
        (p + b"b", b"b", revs[1]),
    ]
    # Without prev_kv, no prev_kvs come back.
    resp = client.kv.DeleteRange(pb.DeleteRangeRequest(key=p + b"c"))
    assert resp.deleted == 1 and len(resp.prev_kvs) == 0
    resp = client.kv.DeleteRange(pb.DeleteRangeRequest(key=p + b"c"))
    assert resp.deleted == 0 and resp.header.revision == revs[-1] + 2
