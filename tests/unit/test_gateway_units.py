"""Pieces of the JSON gateway and the https front that need no server: JSON mapping, Go-worded
body errors, and reading ALPN from a real ClientHello (made by Python's own TLS client in memory)."""

from __future__ import annotations

import json
import ssl

import pytest
from etcdpy.api.cmux import client_hello_alpn, tls_wants_http
from etcdpy.api.gateway import (
    BodyError,
    go_json,
    message_json,
    parse_stream,
    parse_unary,
)
from etcdpy.pb import kv_pb2, rpc_pb2


def client_hello(alpn: list[str] | None) -> bytes:
    """The first flight of a TLS client, as bytes."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname="etcd.example")
    with pytest.raises(ssl.SSLWantReadError):
        conn.do_handshake()
    return outgoing.read()


def test_alpn_from_client_hello() -> None:
    hello = client_hello(["h2", "http/1.1"])
    assert client_hello_alpn(hello) == [b"h2", b"http/1.1"]
    assert client_hello_alpn(client_hello(["h2"])) == [b"h2"]
    assert client_hello_alpn(client_hello(None)) == []
    for cut in (0, 1, 4, 5, 60, len(hello) - 1):
        assert client_hello_alpn(hello[:cut]) is None  # wait for the whole first record
    with pytest.raises(ValueError):
        client_hello_alpn(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    with pytest.raises(ValueError):
        client_hello_alpn(b"POST /v3/kv/range HTTP/1.1\r\n")


def test_routing_rule() -> None:
    assert tls_wants_http([b"h2", b"http/1.1"]) and tls_wants_http([b"http/1.1"]) and tls_wants_http([])
    assert not tls_wants_http([b"h2"]) and not tls_wants_http([b"grpc-exp", b"h2"])


def test_message_json_is_etcds_mapping() -> None:
    resp = rpc_pb2.RangeResponse(kvs=[kv_pb2.KeyValue(key=b"foo", value=b"bar", create_revision=2, mod_revision=2,
                                                      version=1)], count=1)
    resp.header.revision = 2
    assert message_json(resp) == (b'{"header":{"revision":"2"},"kvs":[{"key":"Zm9v","create_revision":"2",'
                                  b'"mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}')
    ev = kv_pb2.Event(type=kv_pb2.Event.DELETE, kv=kv_pb2.KeyValue(key=b"k", mod_revision=3))
    assert json.loads(message_json(ev)) == {"type": "DELETE", "kv": {"key": "aw==", "mod_revision": "3"}}
    assert go_json({"m": "<a&b>"}) == b'{"m":"\\u003ca\\u0026b\\u003e"}'


def test_request_parsing() -> None:
    req = parse_unary(b'{"key":"Zm9v","rangeEnd":"Zm9w","limit":"2","sort_order":"DESCEND","extra":1}',
                      rpc_pb2.RangeRequest)
    assert (req.key, req.range_end, req.limit, req.sort_order) == (b"foo", b"fop", 2, rpc_pb2.RangeRequest.DESCEND)
    assert parse_unary(b"", rpc_pb2.RangeRequest) == rpc_pb2.RangeRequest()
    assert parse_unary(b'{"key":"Zm9v"} trailing', rpc_pb2.RangeRequest).key == b"foo"
    msgs = parse_stream(b'{"ID":"1"}\n{"ID":2} {bad', rpc_pb2.LeaseKeepAliveRequest)
    assert [m.ID for m in msgs] == [1, 2]


@pytest.mark.parametrize(("body", "message"), [
    (b"{bad", "invalid character 'b' looking for beginning of object key string"),
    (b"xx", "invalid character 'x' looking for beginning of value"),
    (b'{"key":"Zm9v"', "unexpected EOF"),
    (b'{"key" "x"}', "invalid character '\"' after object key"),
    (b"[1]", "json: cannot unmarshal array into Go value of type map[string]json.RawMessage"),
    (b"7", "json: cannot unmarshal number into Go value of type map[string]json.RawMessage"),
])
def test_body_errors_in_go_words(body: bytes, message: str) -> None:
    with pytest.raises(BodyError) as ei:
        parse_unary(body, rpc_pb2.RangeRequest)
    assert str(ei.value) == message
