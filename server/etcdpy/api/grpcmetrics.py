"""grpc_server_started_total / grpc_server_handled_total, counted by wrapping each method handler once.

Why at registration rather than in the `rpc` decorator: every method of every service
is wrapped, streaming ones included, without each service opting in. Why not a server
interceptor: an interceptor is a Python call per RPC before the handler is even found
(and pygrpc-native runs interceptors in Python per call too); a wrapper built once per
method (labels as tuples built once) costs one extra coroutine frame and two dict
increments on the loop thread; see `ServerMetrics` for why no lock is needed. The native
server counts around the handler itself (`counted_call`), without that frame.
`MetricsInterceptor` stays for servers built elsewhere (and as the reference behaviour).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import grpc

from etcdpy.metrics import GrpcCounters

CODE_NAMES: dict[grpc.StatusCode, str] = {
    c: ("OK" if c is grpc.StatusCode.OK else "Canceled" if c is grpc.StatusCode.CANCELLED
        else "".join(w.capitalize() for w in c.name.split("_")))
    for c in grpc.StatusCode
}
"""Go's codes.Code.String() names (InvalidArgument, Canceled, ...), the grpc_code label values."""


def rpc_type(handler: grpc.RpcMethodHandler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _code_after(context: grpc.aio.ServicerContext, exc: BaseException | None) -> str:
    """The status the call ended with: what the handler set, else what the exception implies."""
    code = context.code()
    if code is not None:
        return CODE_NAMES.get(code, "Unknown") if isinstance(code, grpc.StatusCode) else "Unknown"
    if exc is None:
        return "OK"
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        return "Canceled"
    return "Unknown"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts started and handled RPCs into `counters`; must not change any call's behaviour."""

    def __init__(self, counters: GrpcCounters) -> None:
        self.counters = counters
        self._cache: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = counted_handler(self.counters, method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped


def counted_handler(counters: GrpcCounters, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """`handler` with its calls counted into `counters` (same kind, same behaviour otherwise).

    `etcdpy.api.grpcbackend` applies it once per method when the services are registered,
    which counts exactly what the interceptor counted without a Python interceptor call per
    RPC (the native gRPC server would also have to run interceptors in Python per call).
    """
    service, _, method = full_method.lstrip("/").partition("/")
    typ = rpc_type(handler)
    key = (typ, service, method)
    started, handled = counters.started, counters.handled

    def done(context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
        hkey = (typ, service, method, _code_after(context, exc))
        handled[hkey] = handled.get(hkey, 0) + 1

    behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)
    # grpc.aio runs a handler according to its kind, so the wrapper must be of the same kind;
    # anything else (a sync handler run on a thread) is left alone, uncounted.
    new: Callable[..., Any]
    if inspect.isasyncgenfunction(behavior):
        new = _wrap_generator(behavior, key, started, done)
    elif inspect.iscoroutinefunction(behavior):
        new = _wrap_coroutine(behavior, key, started, done)
    else:
        return handler
    started.setdefault(key, 0)
    return handler._replace(**{_behavior_field(handler): new})


def _behavior_field(handler: grpc.RpcMethodHandler) -> str:
    for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        if getattr(handler, name) is not None:
            return name
    raise ValueError("handler without behaviour")


def _wrap_coroutine(
    behavior: Callable[..., Awaitable[Any]],
    key: tuple[str, str, str],
    started: dict[tuple[str, str, str], int],
    done: Callable[[grpc.aio.ServicerContext, BaseException | None], None],
) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started[key] += 1
        try:
            result = await behavior(request, context)
        except BaseException as e:
            done(context, e)
            raise
        done(context, None)
        return result

    # A server that runs the handler itself (etcdpy.api.nativeserver) counts the same way
    # without this coroutine layer per call.
    call.counted = CountedCall(behavior, key, started, done)  # type: ignore[attr-defined]
    return call


class CountedCall(NamedTuple):
    """What a counted unary handler wraps, for a server that counts around the call itself.

    Such a server does `started[key] += 1` before awaiting `behavior`, then `done(context, exc)`
    with the exception the handler raised (None when it returned), exactly as the wrapper does.
    """

    behavior: Callable[..., Awaitable[Any]]
    key: tuple[str, str, str]
    started: dict[tuple[str, str, str], int]
    done: Callable[[grpc.aio.ServicerContext, BaseException | None], None]


def counted_call(behavior: Callable[..., Any]) -> CountedCall | None:
    """The counting parts of a unary handler made by `counted_handler`, None if it is not one."""
    counted = getattr(behavior, "counted", None)
    return counted if isinstance(counted, CountedCall) else None


def _wrap_generator(
    behavior: Callable[..., AsyncIterator[Any]],
    key: tuple[str, str, str],
    started: dict[tuple[str, str, str], int],
    done: Callable[[grpc.aio.ServicerContext, BaseException | None], None],
) -> Callable[..., AsyncIterator[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started[key] += 1
        try:
            async for item in behavior(request, context):
                yield item
        except BaseException as e:
            done(context, e)
            raise
        done(context, None)

    return call
