"""Entries framed around a request's own bytes decode to the message built field by field."""

from __future__ import annotations

import random

import pytest

from etcdpy.pb import raft_internal_pb2, rpc_pb2
from etcdpy.pb.wire import uvarint
from etcdpy.server import rawrequest
from etcdpy.server.idutil import IdGenerator

IRR = raft_internal_pb2.InternalRaftRequest


def _txn(value_size: int) -> rpc_pb2.TxnRequest:
    return rpc_pb2.TxnRequest(
        compare=[rpc_pb2.Compare(key=b"k", target=rpc_pb2.Compare.MOD, mod_revision=7)],
        success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"k", value=b"v" * value_size))],
        failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest(key=b"k"))],
    )


@pytest.mark.parametrize("value_size", [0, 50, 200, 20_000, 3_000_000])
@pytest.mark.parametrize(
    ("field", "tag", "make"),
    [
        ("put", rawrequest.PUT, lambda n: rpc_pb2.PutRequest(key=b"key", value=b"x" * n, lease=5)),
        ("delete_range", rawrequest.DELETE_RANGE, lambda n: rpc_pb2.DeleteRangeRequest(key=b"a" * (n + 1))),
        ("txn", rawrequest.TXN, _txn),
    ],
)
def test_frame_decodes_as_the_built_message(field: str, tag: bytes, make, value_size: int) -> None:
    """Every length size (one, two, three and four varint bytes) and each of the three kinds."""
    request = make(value_size)
    wire = request.SerializeToString()
    req_id = 0x4D2C_0000_1234_5678
    data = rawrequest.frame(tag, wire, rawrequest.HeaderEncoder().encode(req_id))
    built = IRR(**{field: request})
    built.header.ID = req_id
    assert IRR.FromString(data) == built
    assert len(data) == built.ByteSize()  # --max-request-bytes sees the size etcd would


def test_header_with_caller_decodes_with_its_user() -> None:
    data = rawrequest.frame(rawrequest.PUT, b"", rawrequest.header_with_caller(9, "u" * 200, 4))
    got = IRR.FromString(data)
    assert (got.header.ID, got.header.username, got.header.auth_revision) == (9, "u" * 200, 4)
    assert got.HasField("put")


def test_header_encoder_follows_consecutive_ids_across_its_cache() -> None:
    """Ids of a real generator, across many 128-id steps, and small ids (one varint byte)."""
    seed = random.randrange(1 << 32)
    print("seed", seed)
    rng = random.Random(seed)
    gen = IdGenerator(rng.getrandbits(64))
    enc = rawrequest.HeaderEncoder()
    ids = [gen.next() for _ in range(1000)] + [0, 1, 127, 128, 129, 16383, 16384, 1 << 63, (1 << 64) - 1]
    for req_id in ids:
        assert raft_internal_pb2.RequestHeader.FromString(enc.encode(req_id)).ID == req_id
        assert enc.encode(req_id) == raft_internal_pb2.RequestHeader(ID=req_id).SerializeToString()


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 1 << 21, 1 << 40])
def test_varint(n: int) -> None:
    """The varint the frame's lengths and the header use (`etcdpy.pb.wire.uvarint`)."""
    header = raft_internal_pb2.RequestHeader(auth_revision=n).SerializeToString()
    assert header == (b"\x18" + uvarint(n) if n else b"")
