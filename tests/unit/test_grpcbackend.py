"""Backend choice and one-time handler wrapping (etcdpy.api.grpcbackend), without servers."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest

from etcdpy.api.grpcbackend import BackendError, ServiceRegistry, resolve_backend


class _FakeServer:
    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.registered[service] = handlers


async def _echo(request: Any, context: Any) -> Any:
    return request


def test_flag_beats_environment_beats_default() -> None:
    assert resolve_backend("grpcio", {"ETCDPY_GRPC_SERVER": "native"}) == "grpcio"
    assert resolve_backend(None, {"ETCDPY_GRPC_SERVER": "Native"}) == "native"
    assert resolve_backend(None, {}) == "native"
    with pytest.raises(BackendError, match="must be one of grpcio, native"):
        resolve_backend(None, {"ETCDPY_GRPC_SERVER": "fast"})


def test_registered_methods_are_wrapped_once_and_added_in_both_forms() -> None:
    wrapped: list[str] = []

    def wrap(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        wrapped.append(method)
        return handler._replace(unary_unary=_echo)

    registry = ServiceRegistry(wrap)
    handlers = {"Put": grpc.unary_unary_rpc_method_handler(lambda r, c: r)}
    # as generated code does: the generic form first, then the registered one
    registry.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("pkg.KV", handlers),))
    registry.add_registered_method_handlers("pkg.KV", handlers)
    other = grpc.method_handlers_generic_handler("pkg.Other", handlers)
    registry.add_generic_rpc_handlers((other,))
    assert registry.methods == ["/pkg.KV/Put"]
    a, b = _FakeServer(), _FakeServer()
    registry.add_to(a)
    registry.add_to(b)
    assert wrapped == ["/pkg.KV/Put"]  # once, however many servers
    assert a.registered["pkg.KV"]["Put"].unary_unary is _echo
    assert b.registered["pkg.KV"]["Put"] is a.registered["pkg.KV"]["Put"]
    # the wrapped service replaces its own generic handler; an unregistered one passes unchanged
    assert other in a.generic and len(a.generic) == 2


def test_server_turns_grpc_fork_handlers_off_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """A member must not depend on the test harness for this (see `etcdpy.cli._no_grpc_fork_handlers`)."""
    from etcdpy.cli import _no_grpc_fork_handlers

    monkeypatch.delenv("GRPC_ENABLE_FORK_SUPPORT", raising=False)
    _no_grpc_fork_handlers()
    assert os.environ["GRPC_ENABLE_FORK_SUPPORT"] == "false"
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "true")
    _no_grpc_fork_handlers()
    assert os.environ["GRPC_ENABLE_FORK_SUPPORT"] == "true"


def _unary_and_chat(on_message: Any) -> dict[str, grpc.RpcMethodHandler]:
    """A unary echo and a bidirectional echo (calling `on_message` per message), raw bytes."""

    async def unary(request: bytes, context: Any) -> bytes:
        return b"u:" + request

    async def chat(requests: Any, context: Any) -> Any:
        async for req in requests:
            on_message()
            yield b"s:" + req

    return {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
    }


async def _unary_then_chat(server: Any, handlers: dict[str, grpc.RpcMethodHandler], messages: list[bytes]) -> None:
    """Register `handlers` (both forms, as the registry does), start `server`, make a unary call,
    then on the same connection a bidirectional one echoing `messages`; stop the server."""
    import asyncio

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    server.add_registered_method_handlers("t.S", handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            assert await ch.unary_unary("/t.S/Unary")(b"a", timeout=10) == b"u:a"
            call = ch.stream_stream("/t.S/Chat")()
            for msg in messages:
                await call.write(msg)
                assert await asyncio.wait_for(call.read(), 10) == b"s:" + msg
            await call.done_writing()
    finally:
        await server.stop(1)


def test_native_servers_stream_fallback_is_our_h2_server() -> None:
    """A stream on a connection pygrpc-native serves is relayed to the H2GrpcServer, not to grpc.aio.

    The unary call goes first, so the connection is the native server's (the usual client:
    one connection for everything); the bidirectional call on it must then reach our
    fallback, which has one connection open (pygrpc-native's relay) while it answers.
    """
    import asyncio

    from etcdpy.api.grpcbackend import native_server
    from etcdpy.api.h2grpc import H2GrpcServer

    seen: list[int] = []
    handlers = _unary_and_chat(lambda: seen.append(len(streams.connections)))
    streams = H2GrpcServer({f"/t.S/{k}": h for k, h in handlers.items()}, 1 << 20)

    asyncio.run(_unary_then_chat(native_server([], streams), handlers, [b"0", b"1", b"2"]))
    assert seen and all(n >= 1 for n in seen), seen
    assert not streams.connections  # stopped with the native server


def test_native_server_without_our_stream_server_is_pygrpc_natives_own() -> None:
    """``ETCDPY_STREAM_SERVER=grpcio``: pygrpc-native's aio server, streams on its grpc.aio fallback.

    Not otherwise run in CI: a unary and a bidirectional call must both work on it.
    """
    import asyncio

    import pygrpc_native.aio

    from etcdpy.api.grpcbackend import native_server
    from etcdpy.api.nativeserver import NativeServer

    handlers = _unary_and_chat(lambda: None)

    server = native_server([], None)
    assert isinstance(server, pygrpc_native.aio.Server) and not isinstance(server, NativeServer)
    asyncio.run(_unary_then_chat(server, handlers, [b"x"]))
