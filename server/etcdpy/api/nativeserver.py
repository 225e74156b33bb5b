"""The client port's native gRPC server: pygrpc-native's Rust front, driven from here.

Why not `pygrpc_native.aio.server()`: it is a general grpc.aio look-alike, and per call it
runs a layer of Python that etcdpy does not need (a call object and a context object,
`inspect` checks of the handler, interceptor hooks, three coroutine frames between the task
and the handler, each one stepped through on every resumption). Under the range load that
layer and its task were about a fifth of the event loop thread in py-spy. This server uses
pygrpc-native's documented low-level API (`NativeGrpcFront`: calls arrive as events in
batches, answered by id with `respond`/`fail`). Each call is decoded and started in the loop
pass its batch arrived in; a write whose handler hands back a `Proposal` is answered from a
callback when the proposal resolves (no task at all), any other call by one task that awaits
the handler's answer and sends it.

What is served where:

- Unary methods whose handlers are coroutines are served natively, on the front's one port.
- Everything else (Watch, LeaseKeepAlive, the server stream of Snapshot, anything not a
  coroutine) is relayed by the front, in Rust, over HTTP/2 to a unix socket served by
  etcdpy's own stream server (`etcdpy.api.h2grpc`), which has every method.

Behaviour follows grpc.aio (and pygrpc-native's aio server, which the compatibility suite
also ran on): the receive limit is checked before decoding, with grpc-core's message; a
request that does not decode is INTERNAL "Exception deserializing request!"; `abort()`
ends the call with its code and details; an unexpected exception is UNKNOWN
"Unexpected <type>: <exc>" (etcd's own errors raised under `rpc` map to their status, as
`rpc`'s wrapper maps them); a client cancel or a passed deadline (the front answers the client
itself) cancels the handler's task or withdraws its proposal; trailing metadata goes out
with the answer.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import shutil
import tempfile
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple

import grpc
from pygrpc_native import EVENT_CANCEL, NativeGrpcFront

from etcdpy.api.grpcmetrics import CountedCall, counted_call
from etcdpy.api.h2grpc import BaseServicerContext, H2GrpcServer
from etcdpy.api.status import status_of
from etcdpy.cpulimit import usable_cpus
from etcdpy.server.etcdserver import Proposal

log = logging.getLogger("etcdpy.api")

EVENT_BATCH = 128
"""Calls handed to the event loop per wake-up at most (one `call_soon_threadsafe` each batch)."""
DEFAULT_RECEIVE_LIMIT = 4 * 1024 * 1024
"""grpc-core's receive limit when no option sets one."""


def _code(code: grpc.StatusCode) -> int:
    return int(code.value[0])


_INTERNAL = _code(grpc.StatusCode.INTERNAL)
_UNKNOWN = _code(grpc.StatusCode.UNKNOWN)
_CANCELLED = _code(grpc.StatusCode.CANCELLED)
_UNAVAILABLE = _code(grpc.StatusCode.UNAVAILABLE)
_RESOURCE_EXHAUSTED = _code(grpc.StatusCode.RESOURCE_EXHAUSTED)


def front_settings(options: Iterable[tuple[str, Any]]) -> tuple[int | None, int | None, dict[str, Any]]:
    """The receive and send limits and the `NativeGrpcFront` arguments for grpc server options.

    Only options a client can notice are mapped; like grpc-core, a value that is not an
    integer is ignored, and so is any option the front has no counterpart for (the
    client-ping limits: pings are accepted, not policed, as on pygrpc-native's own server).
    """
    receive: int | None = DEFAULT_RECEIVE_LIMIT
    send: int | None = None
    front: dict[str, Any] = {"keepalive_permit_without_calls": False}  # grpc-core's default
    for key, value in options:
        if not isinstance(value, int):
            continue
        if key == "grpc.max_receive_message_length":
            receive = None if value < 0 else value
        elif key == "grpc.max_send_message_length":
            send = None if value < 0 else value
        elif key == "grpc.max_concurrent_streams" and value >= 0:
            front["max_concurrent_streams"] = min(value, 2**32 - 1)
        elif key == "grpc.keepalive_permit_without_calls":
            front["keepalive_permit_without_calls"] = bool(value)
        elif key in ("grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms"):
            front[key.removeprefix("grpc.")] = max(1, value)
        elif key == "grpc.so_reuseport":
            front["reuse_port"] = bool(value)
    return receive, send, front


def default_io_threads(cpus: int | None = None) -> int:
    """pygrpc-native's Rust I/O threads for a machine with `cpus` usable CPUs (this process's
    affinity, capped by a cgroup CPU quota such as a pod's CPU limit, by default): one on two
    CPUs or fewer, else two.

    Why one on a small machine: the I/O threads only move bytes and hand calls over, a few
    microseconds per call, and a second thread mostly adds wake-ups and context switches on
    cores the event loop thread and the clients need. Measured on the 2-core development
    machine with both choices loaded at once (one bench client each), one thread took less
    server CPU per request: txn 0.95-0.98x (and 0.96-0.99x with the sides swapped), range
    0.96x, put 0.95-0.98x, lease keep-alive 0.93-0.94x; alone on the machine, throughput moved
    within the noise (txn 1.01x on average over five alternating pairs, range +3-5 %).
    """
    if cpus is None:
        cpus = usable_cpus()
    return 1 if cpus <= 2 else 2


class NativeContext(BaseServicerContext):
    """The ServicerContext of one natively served call; it is also the call's record."""

    __slots__ = ("call_id", "metadata", "peer_name", "deadline", "task", "proposal", "withdrawn", "client_gone", "finished")

    def __init__(self, call_id: int, metadata: tuple[tuple[str, str | bytes], ...], peer: str, remaining: Any) -> None:
        super().__init__()
        self.call_id = call_id
        self.metadata = metadata
        self.peer_name = peer
        self.deadline = None if remaining is None else time.monotonic() + remaining
        self.task: asyncio.Task[None] | None = None
        self.proposal: Proposal | None = None  # a write answered from a callback (no task)
        self.withdrawn = False  # the proposal's caller went away (client cancel or stop)
        self.client_gone = False
        self.finished = False

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.metadata

    def time_remaining(self) -> float | None:
        deadline = self.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def peer(self) -> str:
        return self.peer_name

    def cancelled(self) -> bool:
        return self.client_gone

    def done(self) -> bool:
        return self.finished

    async def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        raise NotImplementedError("etcdpy's unary handlers send no initial metadata")


class Method(NamedTuple):
    """A natively served method, as `_begin` runs it."""

    handler: Callable[..., Awaitable[Any]]
    decode: Callable[[bytes], Any] | None
    encode: Callable[[Any], bytes] | None
    counted: CountedCall | None
    """How the call is counted (the metrics wrapper's parts), if it is."""
    direct: Callable[[Any, Any], Awaitable[Any]] | None
    """The handler's synchronous part (`etcdpy.api.status.rpc`), bound like the handler: its
    errors are etcd's, mapped here with `status_of`."""
    name: str


class NativeServer:
    """A grpc.aio-shaped server (what `etcdpy.api.listeners` calls) on `NativeGrpcFront`."""

    def __init__(
        self, options: Sequence[tuple[str, Any]], stream_server: H2GrpcServer, io_threads: int | None = None
    ) -> None:
        self._receive_limit, self._send_limit, self._front_args = front_settings(options)
        self._io_threads = default_io_threads() if io_threads is None else io_threads
        self._stream_server = stream_server
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._front: NativeGrpcFront | None = None
        self._methods: dict[int, Method] = {}
        self._calls: dict[int, NativeContext] = {}
        # Answers of this loop pass, sent together at its end (see `_send_answers`).
        self._answers: list[tuple[int, bytes, list[tuple[str, Any]] | None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fallback: asyncio.AbstractServer | None = None
        self._fallback_dir: str | None = None
        self._started = False
        self._stopping = False
        self._closed = False
        self._terminated = asyncio.Event()

    # -- what grpc.aio.Server has and Listeners uses ---------------------------------------

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        """Ignored: the stream server answers every method not registered here (and unknown ones)."""

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        for name, handler in handlers.items():
            self._handlers[f"/{service}/{name}"] = handler

    def add_insecure_port(self, address: str) -> int:
        if self._front is not None:
            raise RuntimeError("the native server takes one port")
        try:
            self._front = NativeGrpcFront(address, [], io_threads=self._io_threads, call_details=True, **self._front_args)
        except OSError as e:
            raise RuntimeError(f"Failed to bind to address {address}") from e
        return int(self._front.bound_port)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        raise RuntimeError("the native server has no TLS (https:// is served by grpcio)")

    async def start(self) -> None:
        """Register the unary methods, put the stream server behind the front, start the pump."""
        if self._started:
            raise RuntimeError("already started")
        front = self._front
        if front is None:
            raise RuntimeError("add_insecure_port() before start()")
        self._started = True
        self._loop = asyncio.get_running_loop()
        native = [(path, h) for path, h in self._handlers.items() if _served_natively(h)]
        ids = front.add_methods([(path, False) for path, _ in native])
        self._methods = {
            method_id: _method(h) for method_id, (_, h) in zip(ids, native, strict=True)
        }
        self._fallback_dir = tempfile.mkdtemp(prefix="etcdpy-streams-")
        path = os.path.join(self._fallback_dir, "fallback.sock")
        self._fallback = await self._loop.create_unix_server(self._stream_server.protocol, path=path)
        front.set_fallback(path)
        front.start()
        threading.Thread(target=self._pump, name="native-grpc-pump", daemon=True).start()

    async def stop(self, grace: float | None) -> None:
        """Refuse new calls, give running ones `grace` seconds, then cancel them and close."""
        if self._stopping:
            await self._terminated.wait()
            return
        self._stopping = True
        if self._fallback is not None:
            self._fallback.close()
        calls = list(self._calls.values())
        tasks = [c.task for c in calls if c.task is not None]
        pending = tasks + [c.proposal.future for c in calls if c.proposal is not None]
        if grace and pending:
            await asyncio.wait(pending, timeout=grace)
        for ctx in calls:
            self._cancel(ctx)
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0)  # the proposals' callbacks run (they answer nothing while stopping)
        self._send_answers()
        self._closed = True
        if self._front is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._front.close)
        if self._fallback_dir is not None:
            shutil.rmtree(self._fallback_dir, ignore_errors=True)
        self._terminated.set()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._terminated.wait(), timeout)
        except TimeoutError:
            return True
        return False

    # -- the calls ---------------------------------------------------------------------------

    def _pump(self) -> None:
        """The front's events to the loop, a batch per wake-up (a thread: `recv_batch` blocks, without the GIL)."""
        front, loop = self._front, self._loop
        assert front is not None and loop is not None
        while (events := front.recv_batch_details(EVENT_BATCH)) is not None:
            try:
                loop.call_soon_threadsafe(self._on_events, events)
            except RuntimeError:  # the loop closed without stop()
                front.close()
                return

    def _on_events(self, events: list[tuple[Any, ...]]) -> None:
        front, calls, methods = self._front, self._calls, self._methods
        assert front is not None
        for kind, call_id, method_id, payload, _, details in events:
            if kind == EVENT_CANCEL:
                ctx = calls.get(call_id)
                if ctx is not None:
                    ctx.client_gone = True
                    self._cancel(ctx)
                continue
            if self._stopping:
                front.fail(call_id, _UNAVAILABLE, "Server is shutting down")
                continue
            ctx = NativeContext(call_id, *details)
            calls[call_id] = ctx
            self._begin(ctx, methods[method_id], payload)

    def _begin(self, ctx: NativeContext, method: Method, payload: bytes) -> None:
        """Decode and start the handler, at once (in the loop pass the calls arrived in).

        A handler with a synchronous part (`Method.direct`) runs it here: a write comes back
        as an already proposed `Proposal`, answered from a callback when it resolves, so the
        call needs no task and no coroutine (the path every Put and Txn takes); any other
        awaitable, and every handler without a synchronous part, runs in a task of its own.
        """
        front, call_id = self._front, ctx.call_id
        assert front is not None
        limit = self._receive_limit
        if limit is not None and len(payload) > limit:
            front.fail(
                call_id,
                _RESOURCE_EXHAUSTED,
                f"SERVER: Received message larger than max ({len(payload)} vs. {limit})",
            )
            self._end(ctx)
            return
        decode = method.decode
        try:
            request = payload if decode is None else decode(payload)
        except Exception:  # noqa: BLE001 - grpc answers any decoding failure this way
            log.warning("Exception deserializing request!", exc_info=True)
            front.fail(call_id, _INTERNAL, "Exception deserializing request!")
            self._end(ctx)
            return
        counted = method.counted
        if counted is not None:  # grpcmetrics' wrapper, inline: one coroutine frame fewer per call
            counted.started[counted.key] += 1
        direct = method.direct
        if direct is None:
            answer = method.handler(request, ctx)
        else:
            try:
                answer = direct(request, ctx)
            except Exception as e:  # noqa: BLE001 - mapped as `rpc` maps it
                self._handler_failed(ctx, method, e)
                return
            if isinstance(answer, Proposal):
                ctx.proposal = answer
                answer.add_done_callback(functools.partial(self._proposal_done, ctx, method))
                return
        ctx.task = self._loop.create_task(self._serve(ctx, method, answer))  # type: ignore[union-attr]

    async def _serve(self, ctx: NativeContext, method: Method, answer: Awaitable[Any]) -> None:
        """Await the handler's answer and send it; whatever happens the call is answered once."""
        try:
            response = await answer
        except BaseException as e:  # noqa: BLE001 - each kind is answered as grpc.aio answers it
            self._handler_failed(ctx, method, e)
            return
        self._answered(ctx, method, response)

    def _proposal_done(self, ctx: NativeContext, method: Method, proposal: Proposal) -> None:
        """A write's proposal resolved: answer with its outcome (nothing to the caller that went away)."""
        if ctx.withdrawn:
            self._handler_failed(ctx, method, asyncio.CancelledError())
            return
        try:
            response = proposal.outcome()
        except Exception as e:  # noqa: BLE001 - etcd's errors, mapped as `rpc` maps them
            self._handler_failed(ctx, method, e)
            return
        self._answered(ctx, method, response)

    def _cancel(self, ctx: NativeContext) -> None:
        """Stop a call's handler: cancel its task, or withdraw its proposal (as a cancelled
        task awaiting one does)."""
        if ctx.task is not None:
            ctx.task.cancel()
        elif ctx.proposal is not None and not ctx.withdrawn:
            ctx.withdrawn = True
            ctx.proposal.abandon()

    def _answered(self, ctx: NativeContext, method: Method, response: Any) -> None:
        counted = method.counted
        try:
            if counted is not None:
                counted.done(ctx, None)
            if ctx._code is not None and ctx._code != grpc.StatusCode.OK:
                self._fail(ctx)
                return
            self._respond(ctx, response, method.encode)
        finally:
            self._end(ctx)

    def _handler_failed(self, ctx: NativeContext, method: Method, e: BaseException) -> None:
        """End a call whose handler raised `e`, with the status grpc.aio (or, under `rpc`, etcd) gives it."""
        front, call_id = self._front, ctx.call_id
        assert front is not None
        try:
            if method.direct is not None and isinstance(e, Exception) and not isinstance(e, grpc.aio.AbortError):
                ctx._code, ctx._details = status_of(e, method.name)  # what `rpc`'s abort would set
                e = grpc.aio.AbortError()
            if method.counted is not None:
                method.counted.done(ctx, e)
            if isinstance(e, grpc.aio.AbortError):
                self._fail(ctx)
            elif isinstance(e, asyncio.CancelledError):
                # A cancel from the client or its deadline needs no answer (the front gave it).
                if not ctx.client_gone and not self._stopping:
                    front.fail(call_id, _CANCELLED, "Cancelled")
            elif isinstance(e, Exception):  # a handler bug becomes UNKNOWN, as in grpc.aio
                log.error("unexpected error in RPC handler", exc_info=e)
                front.fail(call_id, _UNKNOWN, f"Unexpected {type(e)}: {e}")
            else:
                raise e  # KeyboardInterrupt, SystemExit: not the call's business
        finally:
            self._end(ctx)

    def _end(self, ctx: NativeContext) -> None:
        """The call is over: forget it and run its done callbacks."""
        ctx.finished = True
        self._calls.pop(ctx.call_id, None)
        for callback in ctx._callbacks:
            try:
                callback(ctx)
            except Exception:  # noqa: BLE001 - a done callback cannot fail the call
                log.exception("error in an RPC done callback")

    def _respond(self, ctx: NativeContext, response: Any, encode: Callable[[Any], bytes] | None) -> None:
        front = self._front
        assert front is not None
        try:
            data = response if encode is None else encode(response)
            if not isinstance(data, bytes):
                raise TypeError(f"expected bytes, got {type(data).__name__}")
        except Exception:  # noqa: BLE001 - grpc answers any encoding failure this way
            log.exception("Failed to serialize response!")
            front.fail(ctx.call_id, _INTERNAL, "Failed to serialize response!")
            return
        limit = self._send_limit
        if limit is not None and len(data) > limit:
            front.fail(
                ctx.call_id, _RESOURCE_EXHAUSTED, f"SERVER: Sent message larger than max ({len(data)} vs. {limit})"
            )
            return
        trailing = ctx._trailing
        answers = self._answers
        if not answers:
            self._loop.call_soon(self._send_answers)  # type: ignore[union-attr]
        answers.append((ctx.call_id, data, list(trailing) if trailing else None))

    def _send_answers(self) -> None:
        """Hand the front every answer queued since the last time, back to back.

        Why not one by one as each call finishes: `respond` wakes a sleeping tokio thread
        when there is none awake, and that wake-up is most of its cost (measured under the
        range bench: half the calls took ~1 us of loop CPU, the others 3-10 us, 4 us on
        average). Calls finish in bunches (one raft apply or one ReadIndex round wakes many),
        so answering a bunch together pays for about one wake-up; it runs at the end of the
        same loop pass, so no answer waits for anything but the calls finishing beside it.
        """
        answers, self._answers = self._answers, []
        front = self._front
        if front is None or self._closed:
            return
        respond = front.respond
        for call_id, data, trailing in answers:
            respond(call_id, data, None, trailing)

    def _fail(self, ctx: NativeContext) -> None:
        """End the call with the status the handler set (UNKNOWN if it set none, or OK)."""
        code = ctx._code
        if code is None or code == grpc.StatusCode.OK:
            code = grpc.StatusCode.UNKNOWN
        trailing = ctx._trailing
        self._front.fail(ctx.call_id, _code(code), ctx._details, list(trailing) if trailing else None)  # type: ignore[union-attr]


def _method(handler: grpc.RpcMethodHandler) -> Method:
    """How `_begin` runs a unary handler: a counted one is unwrapped and counted by the server
    itself, and one made by `rpc` is run by its synchronous part where it has one."""
    counted = counted_call(handler.unary_unary)
    behavior = handler.unary_unary if counted is None else counted.behavior
    direct = getattr(behavior, "direct", None)
    owner = getattr(behavior, "__self__", None)
    if direct is not None and owner is not None:
        direct = types.MethodType(direct, owner)  # the service's bound method carries the unbound form
    name = getattr(behavior, "__name__", "handler")
    return Method(behavior, handler.request_deserializer, handler.response_serializer, counted, direct, name)


def _served_natively(handler: grpc.RpcMethodHandler) -> bool:
    """Unary calls whose handler is a coroutine function; the rest go to the stream server."""
    return (
        not handler.request_streaming
        and not handler.response_streaming
        and inspect.iscoroutinefunction(handler.unary_unary)
    )
