"""etcdpy's driver of pygrpc-native's front (etcdpy.api.nativeserver), against a real grpcio client.

Each case is a status a client can see, as grpc.aio would give it: the handler's answer with
its trailing metadata, abort() with code and details, a handler bug, an undecodable or
oversized request, a deadline that passes while the handler waits (the handler's task is
cancelled), metadata and the deadline as the handler sees them, and the methods the front
does not serve (streams) reaching the stream server behind it. Then the calls of `rpc`
handlers that hand back a `Proposal` (every KV write): answered from a callback, with etcd's
errors, and withdrawn when the client goes or the server stops.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from etcdpy.api.grpcmetrics import counted_handler
from etcdpy.api.h2grpc import H2GrpcServer
from etcdpy.api.nativeserver import NativeServer, _method, default_io_threads, front_settings
from etcdpy.api.status import rpc
from etcdpy.errors import EtcdError, ErrEmptyKey, ErrLeaseNotFound, ErrNoLeader, ErrTimeout
from etcdpy.metrics import GrpcCounters
from etcdpy.pb import kv_pb2, rpc_pb2
from etcdpy.server.apply import ApplyResult
from etcdpy.server.etcdserver import Proposal

SERVICE = "t.S"


class _Handlers:
    """The test service; records what its handlers saw."""

    def __init__(self) -> None:
        self.seen_metadata: list[dict[str, Any]] = []
        self.remaining: list[float | None] = []
        self.cancelled = asyncio.Event()
        self.done_codes: list[Any] = []

    async def echo(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        self.seen_metadata.append(dict(context.invocation_metadata()))
        self.remaining.append(context.time_remaining())
        context.set_trailing_metadata((("answered-by", "native"),))
        context.add_done_callback(lambda ctx: self.done_codes.append(ctx.code()))
        return rpc_pb2.RangeResponse(count=len(request.key))

    async def abort(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: " + request.key.decode())
        raise AssertionError("abort returned")

    async def bug(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        raise KeyError("missing")

    async def set_code(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        context.set_code(grpc.StatusCode.NOT_FOUND)
        context.set_details("nothing here")
        return rpc_pb2.RangeResponse()

    async def slow(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return rpc_pb2.RangeResponse()

    async def big(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        return rpc_pb2.RangeResponse(kvs=[kv_pb2.KeyValue(key=b"k", value=b"v" * 5000)])

    async def chat(self, requests: Any, context: Any) -> AsyncIterator[rpc_pb2.RangeResponse]:
        async for req in requests:
            yield rpc_pb2.RangeResponse(count=len(req.key) + 1000)


def _unary(fn: Callable[..., Awaitable[Any]]) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        fn,
        request_deserializer=rpc_pb2.RangeRequest.FromString,
        response_serializer=rpc_pb2.RangeResponse.SerializeToString,
    )


def _run(
    check: Callable[[grpc.aio.Channel, _Handlers, H2GrpcServer], Awaitable[None]],
    options: Any = (),
    counters: GrpcCounters | None = None,
) -> _Handlers:
    """Serve the test service natively on a loopback port, run `check` with a client channel.

    With `counters`, every handler is wrapped by grpcmetrics' `counted_handler` first, as the
    member's listeners do.
    """
    h = _Handlers()
    handlers = {
        "Echo": _unary(h.echo),
        "Abort": _unary(h.abort),
        "Bug": _unary(h.bug),
        "SetCode": _unary(h.set_code),
        "Slow": _unary(h.slow),
        "Big": _unary(h.big),
        "Chat": grpc.stream_stream_rpc_method_handler(
            h.chat,
            request_deserializer=rpc_pb2.RangeRequest.FromString,
            response_serializer=rpc_pb2.RangeResponse.SerializeToString,
        ),
    }
    if counters is not None:
        handlers = {k: counted_handler(counters, f"/{SERVICE}/{k}", v) for k, v in handlers.items()}
    streams = H2GrpcServer({f"/{SERVICE}/{k}": v for k, v in handlers.items()}, 1 << 20)
    _serve(handlers, streams, lambda ch, _: check(ch, h, streams), options)
    return h


def _serve(
    handlers: dict[str, grpc.RpcMethodHandler],
    streams: H2GrpcServer,
    body: Callable[[grpc.aio.Channel, NativeServer], Awaitable[None]],
    options: Any = (),
) -> None:
    """Serve `handlers` natively on a loopback port (`streams` behind) and run `body` with a channel to it."""

    async def main() -> None:
        server = NativeServer(list(options), streams)
        server.add_registered_method_handlers(SERVICE, handlers)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                await body(ch, server)
        finally:
            await server.stop(1)
            streams.close()

    asyncio.run(main())


def _call(ch: grpc.aio.Channel, method: str) -> Any:
    return ch.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=rpc_pb2.RangeRequest.SerializeToString,
        response_deserializer=rpc_pb2.RangeResponse.FromString,
    )


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def test_answer_with_trailing_metadata_metadata_deadline_and_done_callback() -> None:
    async def check(ch: grpc.aio.Channel, h: _Handlers, _: H2GrpcServer) -> None:
        call = _call(ch, "Echo")(rpc_pb2.RangeRequest(key=b"abc"), metadata=(("token", "t1"),), timeout=20)
        assert (await call).count == 3
        assert ("answered-by", "native") in tuple(await call.trailing_metadata())
        assert (await _call(ch, "Echo")(rpc_pb2.RangeRequest(key=b"x"))).count == 1  # no deadline

    h = _run(check)
    assert h.seen_metadata[0].get("token") == "t1" and "token" not in h.seen_metadata[1]
    assert h.remaining[0] is not None and 0 < h.remaining[0] <= 20.5  # grpc-timeout is rounded up on the wire
    assert h.remaining[1] is None
    assert h.done_codes == [None, None]


def test_abort_set_code_and_a_handler_bug() -> None:
    async def check(ch: grpc.aio.Channel, h: _Handlers, _: H2GrpcServer) -> None:
        assert await _status(_call(ch, "Abort")(rpc_pb2.RangeRequest(key=b"too late"))) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "etcdserver: too late",
        )
        assert await _status(_call(ch, "SetCode")(rpc_pb2.RangeRequest())) == (grpc.StatusCode.NOT_FOUND, "nothing here")
        code, details = await _status(_call(ch, "Bug")(rpc_pb2.RangeRequest()))
        assert code == grpc.StatusCode.UNKNOWN and details == "Unexpected <class 'KeyError'>: 'missing'"

    _run(check)


def test_counted_handlers_are_counted_by_outcome_without_their_wrapper() -> None:
    """The native server unwraps grpcmetrics' counting coroutine and counts around the handler
    itself: the same started/handled counts, by the code each call ended with."""
    counters = GrpcCounters()

    async def check(ch: grpc.aio.Channel, h: _Handlers, _: H2GrpcServer) -> None:
        for _ in range(2):
            await _call(ch, "Echo")(rpc_pb2.RangeRequest(key=b"a"))
        for method in ("Abort", "SetCode", "Bug"):
            await _status(_call(ch, method)(rpc_pb2.RangeRequest()))
        await _status(_call(ch, "Slow")(rpc_pb2.RangeRequest(), timeout=0.3))
        await asyncio.wait_for(h.cancelled.wait(), 10)
        for _ in range(100):  # the cancelled handler's task finishes just after the event is set
            if counters.handled.get(("unary", SERVICE, "Slow", "Canceled")):
                break
            await asyncio.sleep(0.01)

    _run(check, counters=counters)
    assert {k[2]: v for k, v in counters.started.items() if v} == {
        "Echo": 2, "Abort": 1, "SetCode": 1, "Bug": 1, "Slow": 1
    }
    assert {(k[2], k[3]): v for k, v in counters.handled.items()} == {
        ("Echo", "OK"): 2,
        ("Abort", "FailedPrecondition"): 1,
        ("SetCode", "NotFound"): 1,
        ("Bug", "Unknown"): 1,
        ("Slow", "Canceled"): 1,
    }
    wrapped = counted_handler(counters, f"/{SERVICE}/Echo", _unary(_Handlers().echo))
    assert _method(wrapped)[0] is not wrapped.unary_unary  # the wrapper coroutine is not run per call


def test_undecodable_and_oversized_requests_and_answers() -> None:
    async def check(ch: grpc.aio.Channel, h: _Handlers, _: H2GrpcServer) -> None:
        raw = ch.unary_unary(f"/{SERVICE}/Echo")  # bytes in, bytes out
        assert await _status(raw(b"\xff\xff\xff")) == (grpc.StatusCode.INTERNAL, "Exception deserializing request!")
        code, details = await _status(_call(ch, "Echo")(rpc_pb2.RangeRequest(key=b"k" * 3000)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.startswith("SERVER: Received message larger than max (300"), details
        code, details = await _status(_call(ch, "Big")(rpc_pb2.RangeRequest()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.startswith("SERVER: Sent message larger than max (50"), details

    _run(check, options=[("grpc.max_receive_message_length", 2048), ("grpc.max_send_message_length", 4096)])


def test_a_passed_deadline_cancels_the_handler() -> None:
    async def check(ch: grpc.aio.Channel, h: _Handlers, _: H2GrpcServer) -> None:
        code, _details = await _status(_call(ch, "Slow")(rpc_pb2.RangeRequest(), timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(h.cancelled.wait(), 10)

    _run(check)


def test_streams_go_to_the_stream_server_and_unknown_methods_are_unimplemented() -> None:
    async def check(ch: grpc.aio.Channel, h: _Handlers, streams: H2GrpcServer) -> None:
        assert (await _call(ch, "Echo")(rpc_pb2.RangeRequest(key=b"a"))).count == 1  # the native front's connection
        chat = ch.stream_stream(
            f"/{SERVICE}/Chat",
            request_serializer=rpc_pb2.RangeRequest.SerializeToString,
            response_deserializer=rpc_pb2.RangeResponse.FromString,
        )()
        await chat.write(rpc_pb2.RangeRequest(key=b"ab"))
        assert (await asyncio.wait_for(chat.read(), 10)).count == 1002
        assert streams.connections  # it came through the front's relay
        await chat.done_writing()
        code, _details = await _status(_call(ch, "Nope")(rpc_pb2.RangeRequest()))
        assert code == grpc.StatusCode.UNIMPLEMENTED

    _run(check)


def test_one_io_thread_on_two_cpus_or_fewer() -> None:
    assert [default_io_threads(n) for n in (1, 2, 3, 64)] == [1, 1, 2, 2]
    server = NativeServer([], H2GrpcServer({}, 1 << 20))
    assert server._io_threads == default_io_threads()  # what the member's listeners get
    assert NativeServer([], H2GrpcServer({}, 1 << 20), io_threads=3)._io_threads == 3


def test_front_settings_map_the_options_a_client_can_notice() -> None:
    receive, send, front = front_settings(
        [
            ("grpc.max_receive_message_length", 10),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_concurrent_streams", 2**40),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", "soon"),  # not an integer: ignored, as grpc-core does
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
        ]
    )
    assert (receive, send) == (10, None)
    assert front == {"keepalive_permit_without_calls": True, "max_concurrent_streams": 2**32 - 1, "reuse_port": False}
    assert front_settings([])[0] == 4 * 1024 * 1024


# --------------------------------------------------------------------------- proposals


class _Member:
    """What a Proposal asks of its server (the wait registry's part), recorded."""

    def __init__(self) -> None:
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.abandoned: list[tuple[int, bool]] = []
        self.stepped_down = False

    def propose(self) -> Proposal:
        req_id = len(self.pending) + 1
        fut = asyncio.get_running_loop().create_future()
        self.pending[req_id] = fut
        return Proposal(self, req_id, fut, time.monotonic(), True)  # type: ignore[arg-type]

    def _abandon(self, req_id: int, failed: bool = True) -> None:
        self.abandoned.append((req_id, failed))
        fut = self.pending[req_id]
        if not fut.done():
            fut.set_result(None)  # as Wait.trigger(req_id, None)

    def _refused(self) -> EtcdError:
        return ErrNoLeader()

    def _timeout_error(self, start: float) -> EtcdError:
        return ErrTimeout()

    def fill_header(self, header: Any) -> None:
        header.revision = 42

    def is_learner(self) -> bool:
        return False

    def has_leader(self) -> bool:
        return not self.stepped_down


class _Writes:
    """A service shaped like KVService: `rpc` handlers that are plain functions returning a Proposal."""

    def __init__(self) -> None:
        self.server = _Member()
        self.in_task: list[bool] = []

    @rpc
    def Put(self, request: rpc_pb2.PutRequest, context: Any) -> Awaitable[rpc_pb2.PutResponse]:
        self.in_task.append(asyncio.current_task() is not None)
        if not request.key:
            raise ErrEmptyKey()
        if request.key == b"bug":
            raise KeyError("missing")
        proposal: Awaitable[rpc_pb2.PutResponse] = self.server.propose()
        return proposal


def _run_writes(
    check: Callable[[Any, _Writes, NativeServer], Awaitable[None]], counters: GrpcCounters | None = None
) -> _Writes:
    """Serve `_Writes.Put` natively (counted with `counters`) and run `check` with a Put stub."""
    service = _Writes()
    handler = grpc.unary_unary_rpc_method_handler(
        service.Put,
        request_deserializer=rpc_pb2.PutRequest.FromString,
        response_serializer=rpc_pb2.PutResponse.SerializeToString,
    )
    if counters is not None:
        handler = counted_handler(counters, f"/{SERVICE}/Put", handler)

    async def body(ch: grpc.aio.Channel, server: NativeServer) -> None:
        put = ch.unary_unary(
            f"/{SERVICE}/Put",
            request_serializer=rpc_pb2.PutRequest.SerializeToString,
            response_deserializer=rpc_pb2.PutResponse.FromString,
        )
        await check(put, service, server)

    _serve({"Put": handler}, H2GrpcServer({f"/{SERVICE}/Put": handler}, 1 << 20), body)
    return service


async def _proposed(service: _Writes, n: int) -> asyncio.Future[Any]:
    """The future of the n-th proposal, once the call has reached the handler."""
    for _ in range(1000):
        if n in service.server.pending:
            return service.server.pending[n]
        await asyncio.sleep(0.01)
    raise AssertionError(f"proposal {n} never came")


def test_a_proposal_is_answered_from_its_callback_with_etcds_errors(caplog: pytest.LogCaptureFixture) -> None:
    """The handler runs outside any task; the answer is the outcome's (header filled), and an
    apply error, a registry timeout, a refusal raised by the handler itself and the leader
    check end the call with etcd's code and message, counted by that code; a bug in the
    handler is etcd's Unknown with the error's text, and logged."""
    counters = GrpcCounters()

    async def check(put: Any, service: _Writes, server: NativeServer) -> None:
        call = asyncio.ensure_future(put(rpc_pb2.PutRequest(key=b"a")))
        (await _proposed(service, 1)).set_result(ApplyResult(resp=rpc_pb2.PutResponse(), err=None, events=[]))
        assert (await call).header.revision == 42

        call = asyncio.ensure_future(put(rpc_pb2.PutRequest(key=b"b")))
        (await _proposed(service, 2)).set_result(ApplyResult(resp=None, err=ErrLeaseNotFound(), events=[]))
        assert await _status(call) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")

        call = asyncio.ensure_future(put(rpc_pb2.PutRequest(key=b"c")))
        (await _proposed(service, 3)).set_exception(TimeoutError())
        assert await _status(call) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
        assert service.server.abandoned == [(3, True)]  # a timed-out proposal counts as failed

        assert await _status(put(rpc_pb2.PutRequest(key=b""))) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "etcdserver: key is not provided",
        )
        assert await _status(put(rpc_pb2.PutRequest(key=b"bug"))) == (grpc.StatusCode.UNKNOWN, "'missing'")
        service.server.stepped_down = True
        assert await _status(put(rpc_pb2.PutRequest(key=b"d"), metadata=(("hasleader", "true"),))) == (
            grpc.StatusCode.UNAVAILABLE,
            "etcdserver: no leader",
        )

    service = _run_writes(check, counters)
    assert service.in_task == [False] * 5  # (the hasleader refusal comes before the handler)
    assert {k[3]: v for k, v in counters.handled.items()} == {
        "OK": 1,
        "NotFound": 1,
        "Unavailable": 2,
        "InvalidArgument": 1,
        "Unknown": 1,
    }
    bug = [r for r in caplog.records if r.getMessage() == "unexpected error in Put"]
    assert bug and bug[0].exc_info is not None and isinstance(bug[0].exc_info[1], KeyError)


def test_a_client_that_goes_away_withdraws_its_proposal_and_stop_withdraws_the_rest() -> None:
    counters = GrpcCounters()

    async def check(put: Any, service: _Writes, server: NativeServer) -> None:
        code, _details = await _status(put(rpc_pb2.PutRequest(key=b"a"), timeout=0.3))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        for _ in range(1000):
            if service.server.abandoned:
                break
            await asyncio.sleep(0.01)
        assert service.server.abandoned == [(1, False)]  # withdrawn, not counted as a failed proposal

        call = asyncio.ensure_future(put(rpc_pb2.PutRequest(key=b"b")))
        await _proposed(service, 2)
        await server.stop(0.1)  # the grace passes with the proposal unanswered
        assert service.server.abandoned == [(1, False), (2, False)]
        call.cancel()

    _run_writes(check, counters)
    assert {k[3]: v for k, v in counters.handled.items()} == {"Canceled": 2}
