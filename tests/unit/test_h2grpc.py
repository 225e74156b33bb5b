"""The in-process HTTP/2 gRPC server (etcdpy.api.h2grpc), served on a real socket to real grpcio clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from etcdpy.api.h2grpc import H2GrpcServer, decode_metadata, frame_message, parse_timeout, stream_server_mode

MAX_RECEIVE = 64 * 1024


class _Service:
    """Handlers of raw-bytes methods under /t.S/, recording what the server side saw."""

    def __init__(self) -> None:
        self.metadata: tuple[Any, ...] = ()
        self.cancelled = asyncio.Event()
        self.remaining: float | None = None

    async def echo(self, request: bytes, context: Any) -> bytes:
        self.metadata = context.invocation_metadata()
        self.remaining = context.time_remaining()
        context.set_trailing_metadata((("x-trail", "t"), ("x-trail-bin", b"\x00\x01")))
        return request

    async def refuse(self, request: bytes, context: Any) -> bytes:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: 100% refused\nsecond line")
        raise AssertionError("abort returned")

    async def broken(self, request: bytes, context: Any) -> bytes:
        raise KeyError("boom")

    async def sleep(self, request: bytes, context: Any) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b""

    async def chat(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for req in requests:
            yield b"re:" + req

    async def flood(self, requests: AsyncIterator[bytes], context: Any) -> None:
        """Writes `n` numbered 10 KB messages per request through `context.write` (the Watch style)."""
        try:
            async for req in requests:
                n = int(req)
                for i in range(n):
                    await context.write(i.to_bytes(4, "big") + b"x" * 10_000)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def total(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        n = 0
        async for r in requests:
            n += len(r)
        return str(n).encode()

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        return {
            "/t.S/Echo": grpc.unary_unary_rpc_method_handler(self.echo),
            "/t.S/Refuse": grpc.unary_unary_rpc_method_handler(self.refuse),
            "/t.S/Broken": grpc.unary_unary_rpc_method_handler(self.broken),
            "/t.S/Sleep": grpc.unary_unary_rpc_method_handler(self.sleep),
            "/t.S/Chat": grpc.stream_stream_rpc_method_handler(self.chat),
            "/t.S/Flood": grpc.stream_stream_rpc_method_handler(self.flood),
            "/t.S/Total": grpc.stream_unary_rpc_method_handler(self.total),
        }


Body = Callable[[grpc.aio.Channel, _Service], Awaitable[None]]


def _serve(body: Body) -> None:
    async def main() -> None:
        svc = _Service()
        server = H2GrpcServer(svc.handlers(), MAX_RECEIVE)
        loop = asyncio.get_running_loop()
        listener = await loop.create_server(server.protocol, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                await asyncio.wait_for(body(channel, svc), 60)
        finally:
            server.close()
            listener.close()

    asyncio.run(main())


def test_unary_call_with_metadata_deadline_and_trailers() -> None:
    async def body(ch: grpc.aio.Channel, svc: _Service) -> None:
        call = ch.unary_unary("/t.S/Echo")(b"hello", metadata=(("token", "abc"), ("k-bin", b"\xff\x00")), timeout=5)
        assert await call == b"hello"
        assert await call.code() == grpc.StatusCode.OK
        trailers = dict(await call.trailing_metadata())
        assert trailers["x-trail"] == "t" and trailers["x-trail-bin"] == b"\x00\x01"
        md = dict(svc.metadata)
        assert md["token"] == "abc" and md["k-bin"] == b"\xff\x00"
        assert svc.remaining is not None and 0 < svc.remaining <= 5.5  # grpc-timeout is rounded up on the wire

    _serve(body)


def test_abort_keeps_code_and_message_unknown_method_and_handler_bug() -> None:
    async def body(ch: grpc.aio.Channel, svc: _Service) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary("/t.S/Refuse")(b"")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.details() == "etcdserver: 100% refused\nsecond line"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary("/t.S/Nope")(b"")
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary("/t.S/Broken")(b"")
        assert e.value.code() == grpc.StatusCode.UNKNOWN and "boom" in (e.value.details() or "")
        assert await ch.unary_unary("/t.S/Echo")(b"still up") == b"still up"

    _serve(body)


def test_deadline_and_client_cancel_stop_the_handler() -> None:
    async def body(ch: grpc.aio.Channel, svc: _Service) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary("/t.S/Sleep")(b"", timeout=0.3)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(svc.cancelled.wait(), 5)
        svc.cancelled.clear()
        call = ch.unary_unary("/t.S/Sleep")(b"")
        await asyncio.sleep(0.2)
        call.cancel()
        await asyncio.wait_for(svc.cancelled.wait(), 5)

    _serve(body)


def test_bidirectional_and_client_streams() -> None:
    async def body(ch: grpc.aio.Channel, svc: _Service) -> None:
        call = ch.stream_stream("/t.S/Chat")()
        for i in range(200):
            await call.write(str(i).encode())
            assert await call.read() == b"re:" + str(i).encode()
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK

        async def many() -> AsyncIterator[bytes]:
            for _ in range(1000):
                yield b"y" * 1000

        assert await ch.stream_unary("/t.S/Total")(many()) == b"1000000"

    _serve(body)


def test_flow_control_with_a_slow_reader_delivers_everything_in_order() -> None:
    """20 MB of writes against 4 MB windows and a reader that pauses: nothing lost, nothing reordered."""

    async def body(ch: grpc.aio.Channel, svc: _Service) -> None:
        call = ch.stream_stream("/t.S/Flood")()
        await call.write(b"2000")
        for i in range(2000):
            msg = await call.read()
            assert int.from_bytes(msg[:4], "big") == i and len(msg) == 10_004
            if i % 500 == 0:
                await asyncio.sleep(0.3)  # the server's buffer fills and its writer must wait
        call.cancel()
        await asyncio.wait_for(svc.cancelled.wait(), 5)

    _serve(body)


def test_a_message_over_the_limit_is_refused_like_grpc_go() -> None:
    async def body(ch: grpc.aio.Channel, svc: _Service) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await ch.unary_unary("/t.S/Echo")(b"z" * (MAX_RECEIVE + 1))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert e.value.details() == f"grpc: received message larger than max ({MAX_RECEIVE + 1} vs. {MAX_RECEIVE})"
        assert await ch.unary_unary("/t.S/Echo")(b"ok") == b"ok"

    _serve(body)


def test_wire_helpers() -> None:
    assert frame_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert parse_timeout(b"250m") == pytest.approx(0.25)
    assert parse_timeout(b"3S") == 3.0
    assert parse_timeout(b"123456789S") is None and parse_timeout(b"5x") is None and parse_timeout(b"") is None
    md = decode_metadata([(b":path", b"/a"), (b"te", b"trailers"), (b"token", b"t"), (b"a-bin", b"AAE")])
    assert md == (("token", "t"), ("a-bin", b"\x00\x01"))
    assert stream_server_mode({}) == "h2"
    assert stream_server_mode({"ETCDPY_STREAM_SERVER": "GRPCIO"}) == "grpcio"
    with pytest.raises(ValueError, match="must be one of h2, grpcio"):
        stream_server_mode({"ETCDPY_STREAM_SERVER": "x"})
