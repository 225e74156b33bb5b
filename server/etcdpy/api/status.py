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

from etcdpy.errors import EtcdError

log = logging.getLogger("etcdpy.api")

T = TypeVar("T")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[T]]


def status_code(err: EtcdError) -> grpc.StatusCode:
    return grpc.StatusCode[err.code]


def rpc(fn: Handler[T]) -> Handler[T]:
    """Map EtcdError to its gRPC status for a unary handler."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except EtcdError as e:
            await context.abort(status_code(e), e.message)
        except grpc.aio.AbortError:
            raise
        except Exception as e:  # noqa: BLE001 - last line of defence, the server keeps serving
            log.exception("unexpected error in %s", fn.__name__)
            await context.abort(grpc.StatusCode.UNKNOWN, str(e))
        raise AssertionError("unreachable")

    return wrapper
