"""The client-port front (cmux), the HTTP/1.1 protocol and the metrics histogram, in one process.

No etcd server here: a fake gRPC upstream (an echo server on an abstract unix socket)
and a fake HTTP route show that the front routes by the first bytes, relays both
ways with back-pressure, and that the HTTP protocol keeps connections alive.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from etcdpy.api.cmux import HTTP2_PREFACE, BindError, ClientFront, InternalAddress, bind_listeners
from etcdpy.api.http import HttpProtocol, Request, Response, _parse_head, encode_response
from etcdpy.metrics import Histogram, exponential_buckets


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


async def _router(req: Request) -> Response:
    return Response(200, f"{req.method} {req.path} {req.query}".encode())


async def _front() -> tuple[ClientFront, asyncio.base_events.Server, int]:
    upstream = InternalAddress("test")
    echo = await asyncio.get_running_loop().create_unix_server(_Echo, path=upstream.path)
    socks = bind_listeners("127.0.0.1", 0)
    port = socks[0].getsockname()[1]
    front = ClientFront(socks, upstream.path, lambda: HttpProtocol(_router))
    await front.start()
    return front, echo, port


def test_front_routes_grpc_preface_to_upstream_and_relays_both_ways() -> None:
    async def main() -> None:
        front, echo, port = await _front()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # The preface split over two writes: the front must wait for enough bytes.
            writer.write(HTTP2_PREFACE[:5])
            await writer.drain()
            await asyncio.sleep(0.05)
            big = bytes(range(256)) * 8192  # 2 MiB: exercises pause/resume on both sides
            writer.write(HTTP2_PREFACE[5:] + big)
            await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(len(HTTP2_PREFACE) + len(big)), 20)
            assert got == HTTP2_PREFACE + big
            writer.close()
        finally:
            await front.close()
            echo.close()

    asyncio.run(main())


def test_front_serves_http_keep_alive_and_pipelining() -> None:
    async def main() -> None:
        front, echo, port = await _front()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /health?serializable=true HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /version HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                         b"GET /last HTTP/1.1\r\nConnection: close\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 10)  # until the server closes
            text = data.decode()
            assert text.count("HTTP/1.1 200 OK") == 3
            i1 = text.index("GET /health {'serializable': ['true']}")
            i2 = text.index("POST /version {}")
            i3 = text.index("GET /last {}")
            assert i1 < i2 < i3
            assert "Connection: close" in text[i2:]
            writer.close()
        finally:
            await front.close()
            echo.close()

    asyncio.run(main())


def test_front_answers_garbage_with_400() -> None:
    async def main() -> None:
        front, echo, port = await _front()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"HELLO\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 10)
            assert data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            writer.close()
        finally:
            await front.close()
            echo.close()

    asyncio.run(main())


def test_bind_listeners_reports_port_in_use_in_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BindError) as ei:
            bind_listeners("127.0.0.1", port)
        assert str(ei.value) == f"listen tcp 127.0.0.1:{port}: bind: address already in use"


def test_parse_head_and_encode() -> None:
    req, body = _parse_head(b"GET /readyz?verbose&exclude=a HTTP/1.1\r\nHost: h\r\nContent-Length: 2")
    assert (req.method, req.path, req.query, body) == ("GET", "/readyz", {"verbose": [""], "exclude": ["a"]}, 2)
    assert req.keep_alive
    with pytest.raises(ValueError):
        _parse_head(b"GET / SPDY/3\r\n")
    out = encode_response(Response(503, b"x\n"), keep_alive=False)
    assert out.startswith(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n")
    assert out.endswith(b"Content-Length: 2\r\nConnection: close\r\n\r\nx\n")


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    h = Histogram(exponential_buckets(0.001, 2, 3))  # 0.001, 0.002, 0.004
    for v in (0.0005, 0.001, 0.003, 10.0):
        h.observe(v)
    assert h.cumulative() == [("0.001", 2), ("0.002", 2), ("0.004", 3), ("+Inf", 4)]
    assert h.count == 4
    assert h.sum == pytest.approx(10.0045)
