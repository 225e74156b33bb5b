"""grpc_server_started_total / grpc_server_handled_total, counted by a light server interceptor.

Why an interceptor rather than the `rpc` decorator: it sees every method of every
service, streaming ones included, without each service opting in. Why it is
cheap: the wrapped handler is built once per method and reused (the labels are
tuples built once too), so a call costs the continuation lookup plus two dict
increments on the loop thread; see `ServerMetrics` for why no lock is needed.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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
        wrapped = self._wrap(method, handler)
        self._cache[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        service, _, method = full_method.lstrip("/").partition("/")
        typ = rpc_type(handler)
        key = (typ, service, method)
        started, handled = self.counters.started, self.counters.handled

        def done(context: grpc.aio.ServicerContext, exc: BaseException | None) -> None:
            hkey = (typ, service, method, _code_after(context, exc))
            handled[hkey] = handled.get(hkey, 0) + 1

        behavior = (handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream)
        # grpc.aio runs a handler according to its kind, so the wrapper must be of the same kind;
        # anything else (a sync handler run on a thread) is left alone, uncounted.
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

    return call


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
