"""The HTTP/2 pieces of the authority router (etcdpy.api.h2route), without servers."""

from __future__ import annotations

import hpack

from etcdpy.api.h2route import (
    FLAG_PADDED,
    FLAG_PRIORITY,
    LOCAL,
    authority_is_plain,
    choose_upstream,
    first_authority,
    header_block_fragment,
)


def test_plain_authorities_and_the_ones_h2_refuses() -> None:
    assert authority_is_plain("127.0.0.1:2379")
    assert authority_is_plain("[::1]:2379")
    assert authority_is_plain("etcd-0.etcd:2379")
    assert not authority_is_plain("http://127.0.0.1:2379")  # etcdctl 3.4 --cluster
    assert not authority_is_plain("")


def test_first_authority_decodes_a_huffman_coded_first_block() -> None:
    block = hpack.Encoder().encode(
        [(":method", "POST"), (":scheme", "http"), (":path", "/etcdserverpb.KV/Range"),
         (":authority", "http://127.0.0.1:2379"), ("te", "trailers")],
        huffman=True,
    )
    assert first_authority(block) == "http://127.0.0.1:2379"
    assert first_authority(b"\xff\xff\xff\xff") is None  # not HPACK: cannot tell (goes native)


def test_header_block_fragment_strips_padding_and_priority() -> None:
    block = b"\x82\x86"
    padded = bytes([3]) + bytes(5) + block + b"\0\0\0"
    assert header_block_fragment(FLAG_PADDED | FLAG_PRIORITY, padded) == block
    assert header_block_fragment(0, block) == block


def test_streams_first_and_odd_authorities_go_to_grpcio() -> None:
    def block(path: str, authority: str = "127.0.0.1:2379") -> bytes:
        return hpack.Encoder().encode([(":method", "POST"), (":path", path), (":authority", authority)])

    assert choose_upstream(block("/etcdserverpb.KV/Put"), "n", "g") == "n"
    assert choose_upstream(block("/etcdserverpb.Watch/Watch"), "n", "g") == "g"
    assert choose_upstream(block("/etcdserverpb.Lease/LeaseKeepAlive"), "n", "g") == "g"
    assert choose_upstream(block("/etcdserverpb.KV/Put", "http://127.0.0.1:2379"), "n", "g") == "g"
    assert choose_upstream(b"\xff\xff", "n", "g") == "n"
    # with the in-process stream server: stream-first connections stay here, the rest as before
    assert choose_upstream(block("/etcdserverpb.Watch/Watch"), "n", "g", local=True) == LOCAL
    assert choose_upstream(block("/etcdserverpb.Lease/LeaseKeepAlive"), "n", "g", local=True) == LOCAL
    assert choose_upstream(block("/etcdserverpb.KV/Put"), "n", "g", local=True) == "n"
    assert choose_upstream(block("/etcdserverpb.Watch/Watch", "http://127.0.0.1:2379"), "n", "g", local=True) == "g"
