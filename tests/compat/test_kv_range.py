"""Range reads: prefixes, explicit ends, from-key, limits, history, sorting, filters.

Why so many small cases: kube-apiserver and etcdctl lean on exact Range semantics
(``count`` is the full total even with a limit, ``more`` only when truncated, header
revision is the *current* revision even on a historical read, default sort rules).
"""

from __future__ import annotations

import pytest
from harness import GrpcClient, Member, assert_header, current_revision, kv_json, strip_header, unb64

# ---------------------------------------------------------------- helpers


def _put_all(member: Member, items: list[tuple[str, str]]) -> dict[str, int]:
    """Put keys in order; return key -> revision of its put."""
    return {k: member.etcdctl("put", k, v)["header"]["revision"] for k, v in items}


def _keys(out: dict) -> list[str]:
    return [unb64(kv["key"]).decode() for kv in out.get("kvs", [])]


@pytest.fixture
def abc(member: Member, prefix: str) -> dict[str, int]:
    """prefix+{a, b, c, d} with values v+{a, b, c, d}; returns key -> revision."""
    return _put_all(member, [(prefix + k, "v" + k) for k in ("a", "b", "c", "d")])


# ---------------------------------------------------------------- etcdctl


def test_prefix_returns_all_keys_in_order(member: Member, prefix: str, abc: dict[str, int]) -> None:
    member.etcdctl("put", prefix[:-1] + "0", "outside")  # sorts just after the prefix
    out = member.etcdctl("get", prefix, "--prefix")
    assert_header(out["header"], current_revision(member))
    assert strip_header(out) == {
        "kvs": [kv_json(k, "v" + k[-1], r, r, 1) for k, r in abc.items()],
        "count": 4,
    }


def test_explicit_range_end_is_exclusive(member: Member, prefix: str, abc: dict[str, int]) -> None:
    out = member.etcdctl("get", prefix + "b", prefix + "d")
    assert _keys(out) == [prefix + "b", prefix + "c"]
    assert out["count"] == 2


def test_limit_sets_more_and_uncapped_count(member: Member, prefix: str, abc: dict[str, int]) -> None:
    out = member.etcdctl("get", prefix, "--prefix", "--limit=2")
    assert _keys(out) == [prefix + "a", prefix + "b"]
    assert out["more"] is True
    assert out["count"] == 4


def test_limit_equal_to_total_has_no_more(member: Member, prefix: str, abc: dict[str, int]) -> None:
    out = member.etcdctl("get", prefix, "--prefix", "--limit=4")
    assert len(out["kvs"]) == 4
    assert "more" not in out
    assert out["count"] == 4


def test_keys_only_omits_values(member: Member, prefix: str, abc: dict[str, int]) -> None:
    out = member.etcdctl("get", prefix, "--prefix", "--keys-only")
    assert strip_header(out) == {
        "kvs": [kv_json(k, None, r, r, 1) for k, r in abc.items()],
        "count": 4,
    }


def test_empty_prefix_range(member: Member, prefix: str) -> None:
    rev = current_revision(member)
    out = member.etcdctl("get", prefix + "nothing/", "--prefix")
    assert_header(out["header"], rev)
    assert strip_header(out) == {}


def test_range_end_before_key_is_empty_not_an_error(member: Member, prefix: str, abc: dict[str, int]) -> None:
    """etcd treats range_end < key as an empty interval (no validation error)."""
    out = member.etcdctl("get", prefix + "c", prefix + "a")
    assert strip_header(out) == {}


@pytest.mark.parametrize(
    ("sort_by", "order", "expected"),
    [
        ("KEY", "DESCEND", ["d", "c", "b", "a"]),
        ("KEY", "ASCEND", ["a", "b", "c", "d"]),
        ("VALUE", "ASCEND", ["c", "a", "d", "b"]),
        ("VALUE", "DESCEND", ["b", "d", "a", "c"]),
        ("CREATE", "ASCEND", ["b", "d", "a", "c"]),
        ("CREATE", "DESCEND", ["c", "a", "d", "b"]),
        ("MODIFY", "ASCEND", ["d", "c", "b", "a"]),
        ("MODIFY", "DESCEND", ["a", "b", "c", "d"]),
        ("VERSION", "DESCEND", ["a", "b", "c", "d"]),
        ("VERSION", "ASCEND", ["d", "c", "b", "a"]),
    ],
)
def test_sort_by_and_order(member: Member, prefix: str, sort_by: str, order: str, expected: list[str]) -> None:
    # Create order b, d, a, c; values sort c < a < d < b. Then re-put c once, b twice
    # and a three times (same values): mod order becomes d < c < b < a and versions
    # a=4, b=3, c=2, d=1.
    value = {"b": "4", "d": "3", "a": "2", "c": "1"}
    _put_all(member, [(prefix + k, v) for k, v in value.items()])
    for key, times in (("c", 1), ("b", 2), ("a", 3)):
        for _ in range(times):
            member.etcdctl("put", prefix + key, value[key])
    out = member.etcdctl("get", prefix, "--prefix", f"--sort-by={sort_by}", f"--order={order}")
    assert _keys(out) == [prefix + k for k in expected]
    assert out["count"] == 4


def test_sort_with_limit_sorts_before_truncating(member: Member, prefix: str) -> None:
    """With a sort, etcd sorts the whole range, then applies the limit."""
    _put_all(member, [(prefix + "a", "3"), (prefix + "b", "1"), (prefix + "c", "2")])
    out = member.etcdctl("get", prefix, "--prefix", "--sort-by=VALUE", "--order=ASCEND", "--limit=2")
    assert _keys(out) == [prefix + "b", prefix + "c"]
    assert out["more"] is True
    assert out["count"] == 3


def test_history_reads_with_rev(member: Member, prefix: str) -> None:
    key = prefix + "h"
    r1 = member.etcdctl("put", key, "one")["header"]["revision"]
    r2 = member.etcdctl("put", key, "two")["header"]["revision"]
    r3 = member.etcdctl("del", key)["header"]["revision"]
    r4 = member.etcdctl("put", key, "three")["header"]["revision"]
    head = current_revision(member)

    out = member.etcdctl("get", key, f"--rev={r1}")
    assert_header(out["header"], head)  # header carries the current revision, not --rev
    assert strip_header(out) == {"kvs": [kv_json(key, "one", r1, r1, 1)], "count": 1}
    assert member.etcdctl("get", key, f"--rev={r2}")["kvs"] == [kv_json(key, "two", r1, r2, 2)]
    assert strip_header(member.etcdctl("get", key, f"--rev={r3}")) == {}
    assert member.etcdctl("get", key, f"--rev={r4}")["kvs"] == [kv_json(key, "three", r4, r4, 1)]
    assert strip_header(member.etcdctl("get", key, f"--rev={r1 - 1}")) == {}


def test_prefix_history_read(member: Member, prefix: str, abc: dict[str, int]) -> None:
    at = abc[prefix + "b"]
    member.etcdctl("del", prefix + "a")
    out = member.etcdctl("get", prefix, "--prefix", f"--rev={at}")
    assert _keys(out) == [prefix + "a", prefix + "b"]
    assert out["count"] == 2


def test_serializable_prefix_read(member: Member, prefix: str, abc: dict[str, int]) -> None:
    lin = member.etcdctl("get", prefix, "--prefix")
    ser = member.etcdctl("get", prefix, "--prefix", "--consistency=s")
    assert strip_header(ser) == strip_header(lin)
    assert ser["count"] == 4


def test_from_key(fresh_member: Member) -> None:
    """--from-key reads every key >= the given key (needs a keyspace of our own)."""
    revs = _put_all(fresh_member, [(k, k.upper()) for k in ("a", "b", "c", "d")])
    out = fresh_member.etcdctl("get", "b", "--from-key")
    assert_header(out["header"], revs["d"])
    assert strip_header(out) == {"kvs": [kv_json(k, k.upper(), revs[k], revs[k], 1) for k in "bcd"], "count": 3}
    limited = fresh_member.etcdctl("get", "b", "--from-key", "--limit=1", "--keys-only")
    assert strip_header(limited) == {"kvs": [kv_json("b", None, revs["b"], revs["b"], 1)], "more": True, "count": 3}


def test_whole_keyspace_from_zero_byte(fresh_member: Member) -> None:
    """An empty key with --from-key is sent as "\\0": the idiom for 'all keys'."""
    _put_all(fresh_member, [("x", "1"), ("\x01", "2"), ("a", "3")])
    out = fresh_member.etcdctl("get", "", "--from-key", "--keys-only")
    assert _keys(out) == ["\x01", "a", "x"]


# ---------------------------------------------------------------- gRPC


@pytest.fixture
def grpc_keys(client: GrpcClient, prefix: str) -> tuple[bytes, dict[bytes, int]]:
    """prefix+{a,b,c,d} written through gRPC; returns (prefix, key -> revision)."""
    pb = client.pb
    p = prefix.encode()
    revs = {}
    for k in (b"a", b"b", b"c", b"d"):
        revs[p + k] = client.kv.Put(pb.PutRequest(key=p + k, value=b"v" + k)).header.revision
    return p, revs


def _prefix_end(p: bytes) -> bytes:
    return p[:-1] + bytes([p[-1] + 1])


def test_grpc_count_only(client: GrpcClient, grpc_keys: tuple[bytes, dict[bytes, int]]) -> None:
    p, revs = grpc_keys
    resp = client.kv.Range(client.pb.RangeRequest(key=p, range_end=_prefix_end(p), count_only=True))
    assert resp.count == 4
    assert len(resp.kvs) == 0
    assert not resp.more


def test_grpc_count_only_with_limit(client: GrpcClient, grpc_keys: tuple[bytes, dict[bytes, int]]) -> None:
    p, _ = grpc_keys
    resp = client.kv.Range(client.pb.RangeRequest(key=p, range_end=_prefix_end(p), count_only=True, limit=1))
    assert resp.count == 4
    assert len(resp.kvs) == 0


def test_grpc_keys_only(client: GrpcClient, grpc_keys: tuple[bytes, dict[bytes, int]]) -> None:
    p, revs = grpc_keys
    resp = client.kv.Range(client.pb.RangeRequest(key=p, range_end=_prefix_end(p), keys_only=True))
    assert [kv.key for kv in resp.kvs] == list(revs)
    assert all(kv.value == b"" and kv.version == 1 for kv in resp.kvs)
    assert [kv.mod_revision for kv in resp.kvs] == list(revs.values())


def test_grpc_limit_and_more(client: GrpcClient, grpc_keys: tuple[bytes, dict[bytes, int]]) -> None:
    p, revs = grpc_keys
    resp = client.kv.Range(client.pb.RangeRequest(key=p, range_end=_prefix_end(p), limit=3))
    assert [kv.key for kv in resp.kvs] == list(revs)[:3]
    assert resp.more and resp.count == 4


def test_grpc_min_max_mod_revision(client: GrpcClient, grpc_keys: tuple[bytes, dict[bytes, int]]) -> None:
    p, revs = grpc_keys
    pb = client.pb
    rb, rc = revs[p + b"b"], revs[p + b"c"]
    resp = client.kv.Range(pb.RangeRequest(key=p, range_end=_prefix_end(p), min_mod_revision=rb, max_mod_revision=rc))
    assert [kv.key for kv in resp.kvs] == [p + b"b", p + b"c"]
    # count is the number of keys in the range before the revision filters
    assert resp.count == 4
    resp = client.kv.Range(pb.RangeRequest(key=p, range_end=_prefix_end(p), min_mod_revision=rc))
    assert [kv.key for kv in resp.kvs] == [p + b"c", p + b"d"]
    resp = client.kv.Range(pb.RangeRequest(key=p, range_end=_prefix_end(p), max_mod_revision=rb))
    assert [kv.key for kv in resp.kvs] == [p + b"a", p + b"b"]


def test_grpc_min_max_create_revision(client: GrpcClient, grpc_keys: tuple[bytes, dict[bytes, int]]) -> None:
    p, revs = grpc_keys
    pb = client.pb
    # Modify a: its mod revision moves past d but its create revision stays first.
    client.kv.Put(pb.PutRequest(key=p + b"a", value=b"again"))
    resp = client.kv.Range(pb.RangeRequest(key=p, range_end=_prefix_end(p), max_create_revision=revs[p + b"b"]))
    assert [kv.key for kv in resp.kvs] == [p + b"a", p + b"b"]
    resp = client.kv.Range(pb.RangeRequest(key=p, range_end=_prefix_end(p), min_create_revision=revs[p + b"c"]))
    assert [kv.key for kv in resp.kvs] == [p + b"c", p + b"d"]
    resp = client.kv.Range(pb.RangeRequest(key=p, range_end=_prefix_end(p), min_mod_revision=revs[p + b"d"]))
    assert [kv.key for kv in resp.kvs] == [p + b"a", p + b"d"]


def test_grpc_revision_filter_with_limit(client: GrpcClient, grpc_keys: tuple[bytes, dict[bytes, int]]) -> None:
    """Filters apply before the limit, so the limit counts filtered results."""
    p, revs = grpc_keys
    resp = client.kv.Range(
        client.pb.RangeRequest(key=p, range_end=_prefix_end(p), min_mod_revision=revs[p + b"b"], limit=2)
    )
    assert [kv.key for kv in resp.kvs] == [p + b"b", p + b"c"]
    assert resp.more


def test_grpc_sort_target_without_order_defaults_to_ascend(
    client: GrpcClient, prefix: str
) -> None:
    """sort_order NONE with a non-KEY target sorts ascending (etcd's default)."""
    pb = client.pb
    p = prefix.encode()
    for k, v in ((b"a", b"3"), (b"b", b"1"), (b"c", b"2")):
        client.kv.Put(pb.PutRequest(key=p + k, value=v))
    resp = client.kv.Range(pb.RangeRequest(key=p, range_end=_prefix_end(p), sort_target=pb.RangeRequest.VALUE))
    assert [kv.value for kv in resp.kvs] == [b"1", b"2", b"3"]
    resp = client.kv.Range(
        pb.RangeRequest(key=p, range_end=_prefix_end(p), sort_order=pb.RangeRequest.DESCEND)
    )
    assert [kv.key for kv in resp.kvs] == [p + b"c", p + b"b", p + b"a"]


def test_grpc_historical_range(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    key = (prefix + "h").encode()
    r1 = client.kv.Put(pb.PutRequest(key=key, value=b"1")).header.revision
    r2 = client.kv.Put(pb.PutRequest(key=key, value=b"2")).header.revision
    resp = client.kv.Range(pb.RangeRequest(key=key, revision=r1))
    assert resp.header.revision == r2
    assert [(kv.value, kv.version, kv.mod_revision) for kv in resp.kvs] == [(b"1", 1, r1)]


def test_grpc_serializable_range(client: GrpcClient, prefix: str) -> None:
    pb = client.pb
    key = (prefix + "s").encode()
    rev = client.kv.Put(pb.PutRequest(key=key, value=b"1")).header.revision
    resp = client.kv.Range(pb.RangeRequest(key=key, serializable=True))
    assert resp.header.revision == rev
    assert [kv.value for kv in resp.kvs] == [b"1"]


def test_grpc_all_keys_range(fresh_client: GrpcClient) -> None:
    """key = range_end = "\\0" means the whole keyspace."""
    pb = fresh_client.pb
    for k in (b"\x01", b"a", b"\xff\xff"):
        fresh_client.kv.Put(pb.PutRequest(key=k, value=b"v"))
    resp = fresh_client.kv.Range(pb.RangeRequest(key=b"\x00", range_end=b"\x00"))
    assert [kv.key for kv in resp.kvs] == [b"\x01", b"a", b"\xff\xff"]
    assert resp.count == 3
    resp = fresh_client.kv.Range(pb.RangeRequest(key=b"a", range_end=b"\x00"))
    assert [kv.key for kv in resp.kvs] == [b"a", b"\xff\xff"]
