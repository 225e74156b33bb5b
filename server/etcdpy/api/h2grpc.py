"""A small asyncio gRPC server on the `h2` library, for the client port's stream connections.

Why it exists: a watch fan-out writes one gRPC message per watcher per event. On
grpc.aio every message is one `context.write`, each a trip through grpc-core and its
poller thread back to the event loop, and only one write may be in flight per call;
pygrpc-native passes bidirectional streams to such a grpc.aio server anyway. With a
thousand watchers that is tens of thousands of round trips a second, all on the loop
thread (the fan-out profile put 50-60 % of the loop there, and the relay of the
connection's bytes another 12 %). Here a write only frames the message and appends it
to its stream's buffer; once per loop pass every stream's buffer goes out as DATA
frames (as many messages per frame as fit) in one socket write.

What is served: every method of the registered services, by the same (already wrapped)
handlers as on the other servers, with a `ServicerContext` that has what etcdpy's
handlers use (metadata, deadline, abort, codes, trailing metadata). It is reached two
ways, both only with the native backend: the client-port front hands it a whole
connection, in the same process and without a relay, when the connection's first request
is a Watch or LeaseKeepAlive stream (`etcdpy.api.h2route`; a later unary call on it is
answered here too); and pygrpc-native relays to it the streams of the connections it
serves itself (`etcdpy.api.grpcbackend.native_server`).

HTTP/2 itself (frames, HPACK, flow control, settings, pings) is the `h2` library's.
gRPC over it, as in the gRPC HTTP/2 protocol document: request headers (``:path``,
``grpc-timeout``, custom metadata, ``-bin`` values base64), length-prefixed messages,
a response HEADERS frame, then trailers with ``grpc-status`` and the percent-encoded
``grpc-message`` (or one trailers-only HEADERS frame when nothing was sent). Not
supported, as nothing of etcd's needs them: compressed messages (refused with
UNIMPLEMENTED), server-side keepalive pings and ping-rate enforcement.

Back-pressure: a write waits only while its stream holds more than `HIGH_WATER` bytes
the peer's flow-control window or the socket has not taken; the Watch send loop then
stops draining its channel and the store parks slow watchers, as with grpc.aio.
Received data is acknowledged (WINDOW_UPDATE) as messages are consumed, so a client
that streams requests faster than they are handled is slowed down, not buffered.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

log = logging.getLogger("etcdpy.api")

HIGH_WATER = 256 * 1024
"""Bytes a stream may hold unsent before its writer waits."""
MAX_QUEUED_REQUESTS = 64
"""Received but unconsumed request messages of a stream beyond which its window is not reopened."""
WINDOW_SIZE = 4 * 1024 * 1024
"""Our receive window per stream and (added) per connection: large requests need few round trips."""
MESSAGE_PREFIX = 5
_MAX_STREAMS = 2**31 - 1
_RESERVED_HEADERS = frozenset(
    {b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding", b"grpc-message-type"}
)
_TIMEOUT_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_RESPONSE_HEADERS = [(b":status", b"200"), (b"content-type", b"application/grpc")]

Handlers = Mapping[str, grpc.RpcMethodHandler]


def frame_message(payload: bytes) -> bytes:
    """gRPC's length-prefixed message: a zero (uncompressed) flag byte and the big-endian length."""
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` (at most 8 digits and a unit) in seconds; None if malformed."""
    digits, unit = value[:-1], value[-1:]
    if not digits.isdigit() or len(digits) > 8 or unit not in _TIMEOUT_UNITS:
        return None
    return int(digits) * _TIMEOUT_UNITS[unit]


def decode_metadata(headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str | bytes], ...]:
    """Custom metadata as grpc.aio gives it: str values, bytes (base64-decoded) for ``-bin`` keys."""
    out: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name.startswith(b":") or name in _RESERVED_HEADERS:
            continue
        key = name.decode("latin-1")
        if key.endswith("-bin"):
            out.append((key, base64.b64decode(value + b"=" * (-len(value) % 4))))
        else:
            out.append((key, value.decode("latin-1")))
    return tuple(out)


def encode_metadata(md: Sequence[tuple[str, str | bytes]] | None) -> list[tuple[bytes, bytes]]:
    """Metadata to header pairs (``-bin`` values base64 without padding, as gRPC sends them)."""
    out = []
    for key, value in md or ():
        if key.endswith("-bin"):
            raw = value if isinstance(value, bytes) else value.encode()
            out.append((key.lower().encode(), base64.b64encode(raw).rstrip(b"=")))
        else:
            out.append((key.lower().encode(), value.encode() if isinstance(value, str) else value))
    return out


def status_trailers(
    code: grpc.StatusCode, details: str, md: Sequence[tuple[str, str | bytes]] | None
) -> list[tuple[bytes, bytes]]:
    """``grpc-status``, the percent-encoded ``grpc-message`` and trailing metadata."""
    out = [(b"grpc-status", str(code.value[0]).encode())]
    if details:
        out.append((b"grpc-message", quote(details, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode()))
    return out + encode_metadata(md)


class _Abort(grpc.aio.AbortError):
    """Raised by `ServicerContext.abort` to end the handler; the status is already on the context."""


class BaseServicerContext:
    """The part of grpc.aio's ServicerContext that etcdpy's handlers (and grpc's wrappers) use,
    minus what depends on the transport: the status being built and the done callbacks."""

    __slots__ = ("_code", "_details", "_trailing", "_callbacks")

    def __init__(self) -> None:
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: Sequence[tuple[str, str | bytes]] = ()
        self._callbacks: list[Callable[[Any], None]] = []

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # plain connections only: nothing authenticated by the transport

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> Any:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs a non-OK status code")
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = trailing_metadata
        raise _Abort(details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._trailing = trailing_metadata

    def trailing_metadata(self) -> Sequence[tuple[str, str | bytes]]:
        return self._trailing

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self._callbacks.append(callback)


class ServicerContext(BaseServicerContext):
    """The context of a call on one of this server's connections."""

    __slots__ = ("_call",)

    def __init__(self, call: _Call) -> None:
        super().__init__()
        self._call = call

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._call.metadata

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline
        return None if deadline is None else max(0.0, deadline - time.monotonic())

    def peer(self) -> str:
        return self._call.conn.peer

    async def send_initial_metadata(self, initial_metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self._call.send_headers(encode_metadata(initial_metadata))

    async def write(self, message: Any) -> None:
        await self._call.write(message)

    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.finished


class _Requests:
    """The request stream of a call, as an async iterator of deserialized messages."""

    def __init__(self, call: _Call) -> None:
        self._call = call

    def __aiter__(self) -> _Requests:
        return self

    async def __anext__(self) -> Any:
        msg = await self._call.next_request()
        if msg is None:
            raise StopAsyncIteration
        return msg

    async def read(self) -> Any:
        """grpc.aio's `read()`: the next message, or EOF."""
        msg = await self._call.next_request()
        return grpc.aio.EOF if msg is None else msg


class _Call:
    """One RPC on a connection: its request messages in, its responses out, its handler task."""

    def __init__(
        self,
        conn: H2GrpcConnection,
        stream_id: int,
        handler: grpc.RpcMethodHandler | None,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.handler = handler
        self.metadata = decode_metadata(headers)
        self.deadline: float | None = None
        for name, value in headers:
            if name == b"grpc-timeout":
                seconds = parse_timeout(value)
                if seconds is not None:
                    self.deadline = time.monotonic() + seconds
        self.context = ServicerContext(self)
        self.inbuf = bytearray()
        self.requests: deque[Any] = deque()
        self.request_ended = False
        self.unacked = 0
        self.arrived = asyncio.Event()
        self.headers_sent = False
        self.out = bytearray()
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.drained = asyncio.Event()
        self.drained.set()
        self.cancelled = False
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- requests ------------------------------------------------------------------------

    def data_received(self, data: bytes, flow_len: int) -> None:
        """Split complete messages off the received bytes; reopen the window unless many wait."""
        self.unacked += flow_len
        if self.trailers is not None or self.finished:
            self.ack()  # the call is over: what still arrives is dropped
            return
        self.inbuf += data
        limit = self.conn.max_receive
        while len(self.inbuf) >= MESSAGE_PREFIX:
            length = int.from_bytes(self.inbuf[1:5], "big")
            if length > limit:
                self.fail_now(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"grpc: received message larger than max ({length} vs. {limit})"
                )
                return
            if self.inbuf[0] != 0:
                self.fail_now(
                    grpc.StatusCode.UNIMPLEMENTED, "grpc: compressed messages are not supported by this server"
                )
                return
            if len(self.inbuf) < MESSAGE_PREFIX + length:
                break
            self.requests.append(bytes(self.inbuf[MESSAGE_PREFIX : MESSAGE_PREFIX + length]))
            del self.inbuf[: MESSAGE_PREFIX + length]
        if len(self.requests) < MAX_QUEUED_REQUESTS:
            self.ack()
        self.arrived.set()

    def ack(self) -> None:
        if self.unacked:
            self.conn.ack(self.unacked, self.stream_id)
        self.unacked = 0

    def end_requests(self) -> None:
        self.request_ended = True
        self.arrived.set()

    async def next_request(self) -> Any:
        """The next deserialized request, or None once the client half-closed."""
        while not self.requests:
            if self.request_ended:
                return None
            self.arrived.clear()
            await self.arrived.wait()
        raw = self.requests.popleft()
        if len(self.requests) < MAX_QUEUED_REQUESTS:
            self.ack()
        assert self.handler is not None
        deserialize = self.handler.request_deserializer
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception as e:  # noqa: BLE001 - grpc answers any decoding failure this way
            self.context._code, self.context._details = grpc.StatusCode.INTERNAL, "Exception deserializing request!"
            raise _Abort("Exception deserializing request!") from e

    # -- responses -----------------------------------------------------------------------

    def send_headers(self, extra: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.headers_sent or self.finished:
            return
        self.headers_sent = True
        self.conn.send_headers(self.stream_id, _RESPONSE_HEADERS + (extra or []), end_stream=False)

    async def write(self, message: Any) -> None:
        """Frame and buffer one response; waits only while the stream holds too much unsent."""
        if self.finished or self.cancelled:
            raise asyncio.CancelledError()
        assert self.handler is not None
        serialize = self.handler.response_serializer
        payload = message if serialize is None else serialize(message)
        if not self.headers_sent:
            self.send_headers()
        out = self.out
        out += frame_message(payload)
        self.conn.want_flush(self)
        if len(out) > HIGH_WATER:
            self.drained.clear()
            await self.drained.wait()
            if self.cancelled:
                raise asyncio.CancelledError()

    def finish(self, code: grpc.StatusCode, details: str) -> None:
        """Queue the trailers; they go out after any buffered messages."""
        if self.finished or self.cancelled or self.trailers is not None:
            return
        trailers = status_trailers(code, details, self.context._trailing)
        if not self.headers_sent and not self.out:
            trailers = _RESPONSE_HEADERS + trailers  # trailers-only response
            self.headers_sent = True
        self.trailers = trailers
        self.conn.want_flush(self)

    def fail_now(self, code: grpc.StatusCode, details: str) -> None:
        """End the call from the transport side (bad request data, deadline): trailers, then stop the handler."""
        self.context._code, self.context._details = code, details
        self.finish(code, details)
        self.stop_handler()

    def stop_handler(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel(self) -> None:
        """The client reset the stream or the connection went away: nothing more is sent."""
        if self.cancelled:
            return
        self.cancelled = True
        self.out.clear()
        self.drained.set()
        self.arrived.set()
        self.stop_handler()
        self.conn.forget(self)

    def deadline_passed(self) -> None:
        self.timer = None
        if not self.finished and not self.cancelled:
            self.fail_now(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")


class H2GrpcConnection(asyncio.Protocol):
    """One client connection: the h2 state machine, its calls, and the once-per-pass flush."""

    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW_SIZE,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 1 << 20,
            },
        )
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.calls: dict[int, _Call] = {}
        self.dirty: dict[int, _Call] = {}
        self.flush_scheduled = False
        self.paused = False
        self.closed = False
        self.max_receive = server.max_receive
        self.loop = asyncio.get_running_loop()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"ipv6:[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"ipv4:{peer[0]}:{peer[1]}"
        self.server.connections.add(self)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW_SIZE)
        self._write_out()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.debug("h2 protocol error from %s: %s", self.peer, e)
            self._write_out()
            self._close_transport()
            return
        for ev in events:
            self._event(ev)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        for call in list(self.calls.values()):
            call.cancel()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._flush()

    def eof_received(self) -> bool:
        return False

    # -- events --------------------------------------------------------------------------

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.DataReceived):
            call = self.calls.get(ev.stream_id)
            if call is None:
                self.ack(ev.flow_controlled_length, ev.stream_id)
                return
            call.data_received(ev.data, ev.flow_controlled_length)
            if ev.stream_ended is not None:
                call.end_requests()
        elif isinstance(ev, h2.events.RequestReceived):
            self._start(ev.stream_id, ev.headers, ev.stream_ended is not None)
        elif isinstance(ev, h2.events.StreamEnded):
            call = self.calls.get(ev.stream_id)
            if call is not None:
                call.end_requests()
        elif isinstance(ev, h2.events.StreamReset):
            call = self.calls.get(ev.stream_id)
            if call is not None:
                call.cancel()
        elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            for call in self.calls.values():
                if call.out or call.trailers is not None:
                    self.dirty[call.stream_id] = call
        elif isinstance(ev, h2.events.ConnectionTerminated):
            for call in list(self.calls.values()):
                call.cancel()
            self._close_transport()

    def _start(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        path = next((v for k, v in headers if k == b":path"), b"").decode("latin-1")
        handler = self.server.handlers.get(path)
        call = _Call(self, stream_id, handler, headers)
        self.calls[stream_id] = call
        if ended:
            call.end_requests()
        if handler is None:
            call.finish(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        if call.deadline is not None:
            call.timer = self.loop.call_at(
                self.loop.time() + max(0.0, call.deadline - time.monotonic()), call.deadline_passed
            )
        call.task = self.loop.create_task(_run(call), name=f"h2grpc {path}")

    # -- output --------------------------------------------------------------------------

    def ack(self, n: int, stream_id: int) -> None:
        """Give `n` received bytes back to the client's windows (the stream's, if still open, and the connection's)."""
        if self.closed or not n:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
            self.h2.acknowledge_received_data(n, stream_id)
        self.want_write()

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        self.want_write()

    def want_flush(self, call: _Call) -> None:
        self.dirty[call.stream_id] = call
        self.want_write()

    def want_write(self) -> None:
        if not self.flush_scheduled and not self.closed:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def forget(self, call: _Call) -> None:
        self.calls.pop(call.stream_id, None)
        self.dirty.pop(call.stream_id, None)

    def _flush(self) -> None:
        """Move every stream's buffered messages (and due trailers) into DATA frames, then write once."""
        self.flush_scheduled = False
        if self.closed:
            return
        if not self.paused and self.dirty:
            dirty, self.dirty = self.dirty, {}
            for call in dirty.values():
                self._send_call(call)
        self._write_out()

    def _send_call(self, call: _Call) -> None:
        h = self.h2
        sid = call.stream_id
        try:
            out = call.out
            if out:
                window = h.local_flow_control_window(sid)
                frame = h.max_outbound_frame_size
                sent = 0
                while sent < len(out) and window > 0:
                    n = min(frame, window, len(out) - sent)
                    h.send_data(sid, bytes(out[sent : sent + n]))
                    sent += n
                    window -= n
                del out[:sent]
                # what is left waits for a WINDOW_UPDATE, which marks the call dirty again
            if len(out) <= HIGH_WATER // 2:
                call.drained.set()
            if not out and call.trailers is not None and not call.finished:
                call.finished = True
                h.send_headers(sid, call.trailers, end_stream=True)
                self.forget(call)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            call.cancel()

    def _write_out(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _close_transport(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def close(self) -> None:
        """Server shutdown: stop every call and close the socket, without a GOAWAY first.

        Why no GOAWAY: grpc-go clients of etcd 3.5's age report the streams of a connection
        closed after a GOAWAY with code Unknown, which clientv3 takes as final ("watch is
        canceled by the server"); a connection that just ends is Unavailable, and clientv3
        reconnects and resumes its watches, as it does when etcd itself stops.
        """
        for call in list(self.calls.values()):
            call.cancel()
        self._close_transport()
        self.closed = True


async def _run(call: _Call) -> None:
    """Run the handler by its kind and end the call with its status."""
    handler = call.handler
    ctx = call.context
    assert handler is not None
    try:
        if handler.unary_unary is not None or handler.unary_stream is not None:
            request = await call.next_request()
            if request is None:
                call.finish(grpc.StatusCode.INTERNAL, "Missing request message")
                return
            if handler.unary_unary is not None:
                response = await handler.unary_unary(request, ctx)
                await _reply(call, response)
            else:
                await _stream_out(call, handler.unary_stream(request, ctx))
        elif handler.stream_unary is not None:
            response = await handler.stream_unary(_Requests(call), ctx)
            await _reply(call, response)
        else:
            await _stream_out(call, handler.stream_stream(_Requests(call), ctx))
    except _Abort:
        pass
    except asyncio.CancelledError:
        if not call.cancelled and ctx._code is None:
            ctx._code, ctx._details = grpc.StatusCode.CANCELLED, "Cancelled"
        if call.cancelled:
            return
    except Exception as e:  # noqa: BLE001 - a handler bug becomes UNKNOWN, as grpc.aio does
        log.warning("h2grpc handler failed: %r", e)
        ctx._code, ctx._details = grpc.StatusCode.UNKNOWN, f"Unexpected {type(e)}: {e}"
    finally:
        for cb in ctx._callbacks:
            with contextlib.suppress(Exception):
                cb(ctx)
    if call.timer is not None:
        call.timer.cancel()
        call.timer = None
    call.finish(ctx._code or grpc.StatusCode.OK, ctx._details)


async def _reply(call: _Call, response: Any) -> None:
    if response is not None and call.context._code in (None, grpc.StatusCode.OK):
        await call.write(response)


async def _stream_out(call: _Call, result: Any) -> None:
    """A stream handler is an async generator (yields responses) or a coroutine that writes itself."""
    if hasattr(result, "__aiter__"):
        async for response in result:
            await call.write(response)
    else:
        await result


STREAM_SERVERS = ("h2", "grpcio")
ENV_STREAM_SERVER = "ETCDPY_STREAM_SERVER"
"""``h2`` (default): connections that open with a Watch or LeaseKeepAlive stream are served
here; ``grpcio``: they go to the grpcio server (as before this server existed)."""


def stream_server_mode(environ: Mapping[str, str]) -> str:
    """The configured stream server; a one-line ValueError for anything else."""
    value = environ.get(ENV_STREAM_SERVER, "").strip().lower() or STREAM_SERVERS[0]
    if value not in STREAM_SERVERS:
        raise ValueError(f"{ENV_STREAM_SERVER} must be one of {', '.join(STREAM_SERVERS)}, got {value!r}")
    return value


class H2GrpcServer:
    """The handlers and the open connections; `protocol` makes a connection for a taken-over socket."""

    def __init__(self, handlers: Handlers, max_receive: int) -> None:
        self.handlers = handlers
        self.max_receive = max_receive
        self.connections: set[H2GrpcConnection] = set()

    def protocol(self) -> H2GrpcConnection:
        return H2GrpcConnection(self)

    def close(self) -> None:
        for conn in list(self.connections):
            conn.close()
        self.connections.clear()


__all__ = ["BaseServicerContext", "H2GrpcConnection", "H2GrpcServer", "ServicerContext", "decode_metadata", "frame_message", "parse_timeout"]
