"""The one place where typed errors become gRPC statuses.

Services are written as plain coroutines that raise `etcdpy.errors.EtcdError`;
`rpc` wraps each one so the client sees etcd's status code and message, word
for word. Anything else escaping a handler is a bug: it is logged and the
client sees etcd's generic Unknown status rather than a crashed server.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from etcdpy.errors import EtcdError, ErrNoLeader, ErrNotSupportedForLearner
from etcdpy.pb import rpc_pb2

log = logging.getLogger("etcdpy.api")

T = TypeVar("T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]


def status_code(err: EtcdError) -> grpc.StatusCode:
    return grpc.StatusCode[err.code]


def supported_for_learner(request: object) -> bool:
    """A learner serves only Status and serializable reads; its log may lag (etcd 3.4+)."""
    if isinstance(request, rpc_pb2.StatusRequest):
        return True
    return isinstance(request, rpc_pb2.RangeRequest) and request.serializable


async def refuse_stream_on_learner(server: Any, context: grpc.aio.ServicerContext) -> None:
    """etcd refuses every stream (Watch, LeaseKeepAlive, Snapshot) on a learner."""
    if server.is_learner():
        err = ErrNotSupportedForLearner()
        await context.abort(status_code(err), err.message)


def requires_leader(context: grpc.aio.ServicerContext) -> bool:
    """etcd's `hasleader=true` metadata: the client wants an error rather than a leaderless member."""
    md = context.invocation_metadata()
    if not md:
        return False
    return any(k == "hasleader" and v == "true" for k, v in md)


def status_of(e: Exception, handler: str) -> tuple[grpc.StatusCode, str]:
    """The status a unary call ends with when its handler raised `e`; an unexpected error is
    logged with its traceback (a bug: the client sees etcd's generic Unknown status)."""
    if isinstance(e, EtcdError):
        return status_code(e), e.message
    log.error("unexpected error in %s", handler, exc_info=e)
    return grpc.StatusCode.UNKNOWN, str(e)


def rpc(fn: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]) -> Handler[T]:
    """Map EtcdError to its gRPC status for a unary handler.

    The wrapper also carries `direct`: the handler's synchronous part (the learner and
    leader checks, then `fn` itself, which may be a plain function returning an awaitable),
    giving back what the wrapper would await and raising what it would map. A server that
    runs handlers without a task per call (`etcdpy.api.nativeserver`) calls it and maps
    errors with `status_of` itself; both ways end a call with the same status.
    """

    def direct(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Awaitable[T]:
        if self.server.is_learner() and not supported_for_learner(request):
            raise ErrNotSupportedForLearner()
        if not self.server.has_leader() and requires_leader(context):
            raise ErrNoLeader()  # (the metadata is looked at only when it can matter)
        return fn(self, request, context)

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await direct(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # noqa: BLE001 - an unexpected one is the last line of defence
            code, message = status_of(e, fn.__name__)
            await context.abort(code, message)
        raise AssertionError("unreachable")

    wrapper.direct = direct  # type: ignore[attr-defined]
    return wrapper
