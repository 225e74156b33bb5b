"""etcd's gRPC-gateway: the v3 API as JSON over HTTP/1.1 on the client port (``POST /v3/kv/range`` ...).

etcd 3.5 serves every unary RPC at ``POST /v3/<service>/<method>`` through
grpc-gateway v1, which calls etcd's own gRPC server over a loopback connection.
Here the gateway calls the same service objects in-process instead: the request
is parsed from JSON into the protobuf message, handed to the service method with a
`GatewayContext` standing in for the gRPC call context, and the answer is written
back as JSON. No second network hop, no second serialization.

What a client sees, as checked against etcd 3.5.1 (tests/compat/test_gateway.py):

- JSON is protobuf's mapping with the ``.proto`` field names (``cluster_id``,
  ``create_revision``, ``peerURLs``): bytes as standard base64, 64-bit integers as
  strings, enums by name, fields at their zero value left out.
- A unary success is ``200`` with the response object and the header
  ``Grpc-Metadata-Content-Type: application/grpc``; an error is
  ``{"error": msg, "code": N, "message": msg}`` with grpc-gateway v1's HTTP status for
  the gRPC code (InvalidArgument, FailedPrecondition, OutOfRange: 400; NotFound: 404;
  Unauthenticated: 401; PermissionDenied: 403; Unavailable: 503; ...).
- Streams (``/v3/watch``, ``/v3/lease/keepalive``, ``/v3/maintenance/snapshot``) are
  chunked responses of ``{"result": ...}`` lines, one chunk per message. The request
  body of a bidirectional stream is a sequence of JSON objects, sent as requests in
  order; the end of the body is the client's half-close (a watch keeps streaming
  until the client disconnects, a keep-alive ends after its last answer). An error
  after the stream started is one ``{"error": {"grpc_code", "http_code", "message",
  "http_status"}}`` chunk.
- The auth token comes from the ``Authorization`` header; ``Grpc-Metadata-<key>``
  headers become call metadata (``Grpc-Metadata-hasleader: true``).
- A bad JSON body is 400 with Go's encoding/json wording for syntax errors
  ("invalid character 'x' looking for beginning of value", "unexpected EOF");
  type errors inside a valid JSON object are answered 400 with protobuf's own
  wording, which differs from Go's.

On ``https://`` URLs the same API is served over TLS (see `api.cmux`). As in etcd, a
client certificate's CN is not a user here: with --client-cert-auth and auth enabled, a
call presenting a CN certificate is refused with 400 (`api.http`).

Not served: etcd's websocket upgrade of the streams, ``/v3/maintenance/downgrade``
(etcdpy has no Downgrade RPC), and chunked request bodies (`api.http` needs a
Content-Length), so a stream's requests arrive all at once rather than as typed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from etcdpy.api.auth import (
    CLUSTER_ADMIN_METHODS,
    MAINTENANCE_ADMIN_METHODS,
    check_admin_call,
)
from etcdpy.pb import rpc_pb2

log = logging.getLogger("etcdpy.gateway")

PREFIXES = ("/v3/", "/v3beta/")
"""etcd 3.5 still answers the pre-3.4 ``/v3beta`` paths (``/v3alpha`` is gone)."""

JSON_CT = "application/json"
GRPC_CONTENT_TYPE_HEADER = ("Grpc-Metadata-Content-Type", "application/grpc")
STREAM_QUEUE = 64
"""Messages a stream may run ahead of the HTTP connection before the service waits."""
THREAD_ENCODE_BYTES = 256 * 1024
"""Responses larger than this are converted to JSON on a worker thread, not on the event loop."""

HTTP_STATUS_BY_CODE = {
    "OK": 200,
    "CANCELLED": 408,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
}
"""grpc-gateway v1's HTTPStatusFromCode (FailedPrecondition is deliberately 400, not 412)."""


@dataclass(frozen=True)
class Method:
    """One gateway route: which service method, its request type, and how it streams."""

    service: str
    name: str
    request: type[Message]
    kind: str = "unary"  # "unary", "server_stream" or "bidi"

    @property
    def full_name(self) -> str:
        return f"/etcdserverpb.{self.service}/{self.name}"

    @property
    def metric_key(self) -> tuple[str, str, str]:
        """(grpc_type, grpc_service, grpc_method) as grpc_server_started_total labels them."""
        kind = {"unary": "unary", "server_stream": "server_stream", "bidi": "bidi_stream"}[self.kind]
        return kind, f"etcdserverpb.{self.service}", self.name


def _routes() -> dict[str, Method]:
    """Paths under the prefix, as etcd's rpc.proto binds them (aliases included)."""
    pb = rpc_pb2
    lease_ttl = Method("Lease", "LeaseTimeToLive", pb.LeaseTimeToLiveRequest)
    lease_revoke = Method("Lease", "LeaseRevoke", pb.LeaseRevokeRequest)
    lease_leases = Method("Lease", "LeaseLeases", pb.LeaseLeasesRequest)
    return {
        "kv/range": Method("KV", "Range", pb.RangeRequest),
        "kv/put": Method("KV", "Put", pb.PutRequest),
        "kv/deleterange": Method("KV", "DeleteRange", pb.DeleteRangeRequest),
        "kv/txn": Method("KV", "Txn", pb.TxnRequest),
        "kv/compaction": Method("KV", "Compact", pb.CompactionRequest),
        "watch": Method("Watch", "Watch", pb.WatchRequest, "bidi"),
        "lease/grant": Method("Lease", "LeaseGrant", pb.LeaseGrantRequest),
        "lease/revoke": lease_revoke,
        "kv/lease/revoke": lease_revoke,
        "lease/keepalive": Method("Lease", "LeaseKeepAlive", pb.LeaseKeepAliveRequest, "bidi"),
        "lease/timetolive": lease_ttl,
        "kv/lease/timetolive": lease_ttl,
        "lease/leases": lease_leases,
        "kv/lease/leases": lease_leases,
        "cluster/member/add": Method("Cluster", "MemberAdd", pb.MemberAddRequest),
        "cluster/member/remove": Method("Cluster", "MemberRemove", pb.MemberRemoveRequest),
        "cluster/member/update": Method("Cluster", "MemberUpdate", pb.MemberUpdateRequest),
        "cluster/member/list": Method("Cluster", "MemberList", pb.MemberListRequest),
        "cluster/member/promote": Method("Cluster", "MemberPromote", pb.MemberPromoteRequest),
        "maintenance/alarm": Method("Maintenance", "Alarm", pb.AlarmRequest),
        "maintenance/status": Method("Maintenance", "Status", pb.StatusRequest),
        "maintenance/defragment": Method("Maintenance", "Defragment", pb.DefragmentRequest),
        # Hash and HashKV share this path in rpc.proto; etcd's gateway answers with Hash.
        "maintenance/hash": Method("Maintenance", "Hash", pb.HashRequest),
        "maintenance/snapshot": Method("Maintenance", "Snapshot", pb.SnapshotRequest, "server_stream"),
        "maintenance/transfer-leadership": Method("Maintenance", "MoveLeader", pb.MoveLeaderRequest),
        "auth/enable": Method("Auth", "AuthEnable", pb.AuthEnableRequest),
        "auth/disable": Method("Auth", "AuthDisable", pb.AuthDisableRequest),
        "auth/status": Method("Auth", "AuthStatus", pb.AuthStatusRequest),
        "auth/authenticate": Method("Auth", "Authenticate", pb.AuthenticateRequest),
        "auth/user/add": Method("Auth", "UserAdd", pb.AuthUserAddRequest),
        "auth/user/get": Method("Auth", "UserGet", pb.AuthUserGetRequest),
        "auth/user/list": Method("Auth", "UserList", pb.AuthUserListRequest),
        "auth/user/delete": Method("Auth", "UserDelete", pb.AuthUserDeleteRequest),
        "auth/user/changepw": Method("Auth", "UserChangePassword", pb.AuthUserChangePasswordRequest),
        "auth/user/grant": Method("Auth", "UserGrantRole", pb.AuthUserGrantRoleRequest),
        "auth/user/revoke": Method("Auth", "UserRevokeRole", pb.AuthUserRevokeRoleRequest),
        "auth/role/add": Method("Auth", "RoleAdd", pb.AuthRoleAddRequest),
        "auth/role/get": Method("Auth", "RoleGet", pb.AuthRoleGetRequest),
        "auth/role/list": Method("Auth", "RoleList", pb.AuthRoleListRequest),
        "auth/role/delete": Method("Auth", "RoleDelete", pb.AuthRoleDeleteRequest),
        "auth/role/grant": Method("Auth", "RoleGrantPermission", pb.AuthRoleGrantPermissionRequest),
        "auth/role/revoke": Method("Auth", "RoleRevokePermission", pb.AuthRoleRevokePermissionRequest),
    }


ROUTES = _routes()


# --------------------------------------------------------------------------- the call context


class GatewayAbort(grpc.aio.AbortError):
    """A service aborted the call: carries the gRPC code and message for the JSON error body.

    It subclasses gRPC's AbortError so the services' own error handling (`api.status.rpc`,
    the watch stream's task bookkeeping) treats it exactly as a real gRPC abort.
    """

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class GatewayContext:
    """What the services use of grpc.aio.ServicerContext, for a call that arrived as JSON."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)
        self.writer: Callable[[Any], Awaitable[None]] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> NoReturn:
        raise GatewayAbort(code, details)

    async def write(self, message: Any) -> None:
        assert self.writer is not None, "write() outside a stream"
        await self.writer(message)

    def auth_context(self) -> dict[str, list[bytes]]:
        """No certificate identity: etcd's gateway does not pass the HTTP client's CN on (see api.http)."""
        return {}

    def peer(self) -> str:
        return "gateway"


def metadata_from_headers(headers: dict[str, str]) -> list[tuple[str, str]]:
    """grpc-gateway's header mapping: Authorization as ``authorization``, ``Grpc-Metadata-*`` stripped."""
    md: list[tuple[str, str]] = []
    for name, value in headers.items():
        if name == "authorization":
            md.append(("authorization", value))
        elif name.startswith("grpc-metadata-"):
            md.append((name[len("grpc-metadata-"):], value))
    return md


# --------------------------------------------------------------------------- JSON mapping


def message_json(msg: Message) -> bytes:
    """A message as etcd's gateway writes it: proto field names, compact, HTML characters escaped as Go does."""
    doc = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return go_json(doc)


def go_json(doc: Any) -> bytes:
    """Compact JSON with Go's encoding/json escaping of <, >, & and the line separators."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    if any(c in text for c in "<>&\u2028\u2029"):
        for c, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                       ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
            text = text.replace(c, esc)
    return text.encode()


async def encode_message(msg: Message) -> bytes:
    """`message_json`, on a worker thread when the message is large (a big Range, a snapshot chunk batch)."""
    if msg.ByteSize() > THREAD_ENCODE_BYTES:
        return await asyncio.to_thread(message_json, msg)
    return message_json(msg)


class BodyError(Exception):
    """The request body is not the JSON of the request message; the text is what the client is told."""


_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "bool"}


def _go_char(c: str) -> str:
    """A character quoted as Go's encoding/json quotes it in syntax errors."""
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return "'" + json.dumps(c, ensure_ascii=False)[1:-1] + "'"


def _syntax_error(err: json.JSONDecodeError) -> str:
    """Python's decoder error in Go's wording (the common cases: bad start of value or key, truncation)."""
    text, pos = err.doc, err.pos
    if pos >= len(text) or err.msg.startswith("Unterminated string"):
        return "unexpected EOF"
    c = _go_char(text[pos])
    if err.msg.startswith("Expecting value"):
        return f"invalid character {c} looking for beginning of value"
    if err.msg.startswith("Expecting property name"):
        return f"invalid character {c} looking for beginning of object key string"
    if err.msg.startswith("Expecting ':'"):
        return f"invalid character {c} after object key"
    if err.msg.startswith("Expecting ','"):
        return f"invalid character {c} after object key:value pair"
    if err.msg.startswith("Invalid control character"):
        return f"invalid character {c} in string literal"
    if err.msg.startswith("Extra data"):
        return f"invalid character {c} after top-level value"
    return f"invalid character {c} looking for beginning of value"


def decode_values(body: bytes) -> tuple[list[Any], str | None]:
    """The JSON values at the start of `body`, in order, and the error that stopped the scan (None at a clean end)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return [], "invalid UTF-8 in request body"
    decoder = json.JSONDecoder()
    values: list[Any] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            return values, None
        try:
            value, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            return values, _syntax_error(e)
        values.append(value)


def to_message(value: Any, cls: type[Message]) -> Message:
    """One decoded JSON value as a request message (unknown fields ignored, as etcd's gateway does)."""
    msg = cls()
    if value is None:
        return msg
    if not isinstance(value, dict):
        kind = _JSON_KINDS.get(type(value), "value")
        raise BodyError(f"json: cannot unmarshal {kind} into Go value of type map[string]json.RawMessage")
    try:
        json_format.ParseDict(value, msg, ignore_unknown_fields=True)
    except json_format.ParseError as e:
        raise BodyError(str(e)) from None
    return msg


def parse_unary(body: bytes, cls: type[Message]) -> Message:
    """A unary request: the first JSON value of the body (an empty body is the empty request)."""
    values, err = decode_values(body)
    if values:
        return to_message(values[0], cls)
    if err is not None:
        raise BodyError(err)
    return cls()


def parse_stream(body: bytes, cls: type[Message]) -> list[Message]:
    """Requests of a bidirectional stream: every JSON value up to the first bad one.

    Only a bad first value fails the call (grpc-gateway v1 answers it with code 2);
    a later one ends the requests there, as the gateway's half-close does.
    """
    values, err = decode_values(body)
    out: list[Message] = []
    for value in values:
        try:
            out.append(to_message(value, cls))
        except BodyError as e:
            err = str(e)
            break
    if not out and err is not None:
        raise BodyError(err)
    if err is not None:
        log.warning("gateway stream request body ended by a decode error", extra={"fields": {"error": err}})
    return out


# --------------------------------------------------------------------------- responses


def error_doc(code: str, message: str) -> bytes:
    """grpc-gateway v1's error body for a failed unary call (or a stream that failed before starting)."""
    number = grpc.StatusCode[code].value[0]
    return go_json({"error": message, "code": number, "message": message})


def stream_error_doc(code: str, message: str) -> bytes:
    """grpc-gateway v1's in-stream error chunk."""
    number = grpc.StatusCode[code].value[0]
    status = HTTP_STATUS_BY_CODE.get(code, 500)
    return go_json({"error": {"grpc_code": number, "http_code": status, "message": message,
                              "http_status": HTTPStatus(status).phrase}})


class Gateway:
    """Routes ``POST /v3/...`` to the v3 services, in this process."""

    def __init__(self, server: Any) -> None:
        from etcdpy.api.auth import AuthService
        from etcdpy.api.cluster import ClusterService
        from etcdpy.api.grpcserver import GRPC_OVERHEAD_BYTES
        from etcdpy.api.kv import KVService
        from etcdpy.api.lease import LeaseService
        from etcdpy.api.maintenance import MaintenanceService
        from etcdpy.api.watch import WatchService

        self.server = server
        self.services: dict[str, Any] = {
            "KV": KVService(server),
            "Lease": LeaseService(server),
            "Cluster": ClusterService(server),
            "Maintenance": MaintenanceService(server),
            "Auth": AuthService(server),
            "Watch": WatchService(server, server.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES),
        }
        metrics = getattr(server, "metrics", None)
        self.counters = getattr(metrics, "grpc", None)
        self.max_message_bytes = server.cfg.max_request_bytes + GRPC_OVERHEAD_BYTES

    def _started(self, method: Method) -> None:
        """Count the call as gRPC's interceptor would: in etcd, gateway calls are gRPC calls over loopback."""
        if self.counters is not None:
            key = method.metric_key
            self.counters.started[key] = self.counters.started.get(key, 0) + 1

    def _handled(self, method: Method, code: grpc.StatusCode | None) -> None:
        from etcdpy.api.grpcmetrics import CODE_NAMES

        if self.counters is not None:
            key = (*method.metric_key, "OK" if code is None else CODE_NAMES.get(code, "Unknown"))
            self.counters.handled[key] = self.counters.handled.get(key, 0) + 1

    @staticmethod
    def owns(path: str) -> bool:
        return path.startswith(PREFIXES)

    async def __call__(self, req: Any) -> Any:
        """One HTTP request under a gateway prefix: etcd's 404/405 texts, else the call."""
        from etcdpy.api.http import text_error

        rest = req.path.split("/", 2)[2] if req.path.count("/") >= 2 else ""
        method = ROUTES.get(rest)
        if method is None:
            return text_error(404, "Not Found")
        if req.method != "POST":
            return text_error(405, "Method Not Allowed")
        ctx = GatewayContext(metadata_from_headers(req.headers))
        if method.kind == "unary":
            return await self._unary(method, req.body, ctx)
        return self._stream(method, req.body, ctx)

    def _handler(self, method: Method) -> Any:
        return getattr(self.services[method.service], method.name)

    async def _admin_check(self, method: Method, ctx: GatewayContext) -> None:
        """The root-only Maintenance and Cluster RPCs, as the gRPC server's AdminInterceptor guards them."""
        if method.full_name in MAINTENANCE_ADMIN_METHODS:
            await check_admin_call(self.server, ctx, raw_errors=True)
        elif method.full_name in CLUSTER_ADMIN_METHODS:
            await check_admin_call(self.server, ctx, raw_errors=False)

    async def _unary(self, method: Method, body: bytes, ctx: GatewayContext) -> Any:
        from etcdpy.api.http import Response

        try:
            request = parse_unary(body, method.request)
        except BodyError as e:
            return json_error("INVALID_ARGUMENT", str(e))
        size = request.ByteSize()
        if size > self.max_message_bytes:
            # etcd's gateway hands the message to its gRPC server, whose size limit answers first (grpc-go's words).
            return json_error("RESOURCE_EXHAUSTED",
                              f"grpc: received message larger than max ({size} vs. {self.max_message_bytes})")
        self._started(method)
        try:
            await self._admin_check(method, ctx)
            resp = await self._handler(method)(request, ctx)
        except GatewayAbort as e:
            self._handled(method, e.code)
            return json_error(e.code.name, e.details)
        except asyncio.CancelledError:
            self._handled(method, grpc.StatusCode.CANCELLED)
            raise
        self._handled(method, None)
        return Response(200, await encode_message(resp), JSON_CT, [GRPC_CONTENT_TYPE_HEADER])

    def _stream(self, method: Method, body: bytes, ctx: GatewayContext) -> Any:
        """A chunked response of ``{"result": ...}`` lines; the status is set before the first chunk goes out."""
        from etcdpy.api.http import Response

        try:
            if method.kind == "bidi":
                requests: list[Message] = parse_stream(body, method.request)
            else:
                requests = [parse_unary(body, method.request)]
        except BodyError as e:
            code = "UNKNOWN" if method.kind == "bidi" else "INVALID_ARGUMENT"
            return json_error(code, str(e))
        resp = Response(200, b"", JSON_CT, [GRPC_CONTENT_TYPE_HEADER])
        resp.stream = self._chunks(resp, method, self._messages(method, requests, ctx))
        return resp

    async def _messages(self, method: Method, requests: list[Message], ctx: GatewayContext) -> AsyncIterator[Message]:
        """The service's responses, whatever way the service produces them."""
        if method.kind == "server_stream":
            await self._admin_check(method, ctx)
            async for msg in self._handler(method)(requests[0], ctx):
                yield msg
            return
        if method.service == "Watch":
            async for msg in self._watch(requests, ctx):
                yield msg
            return
        async for msg in self._handler(method)(_iterate(requests), ctx):
            yield msg

    async def _watch(self, requests: list[Message], ctx: GatewayContext) -> AsyncIterator[Message]:
        """Run the Watch service, whose send loop writes through `ctx.write`, and yield what it writes."""
        queue: asyncio.Queue[Any] = asyncio.Queue(STREAM_QUEUE)
        ctx.writer = queue.put
        task = asyncio.create_task(self.services["Watch"].Watch(_iterate(requests), ctx), name="gateway-watch")
        try:
            while True:
                item = await _next_or_end(queue, task)
                if item is None:
                    break
                yield rpc_pb2.WatchResponse.FromString(item) if isinstance(item, bytes) else item
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _chunks(self, resp: Any, method: Method, messages: AsyncIterator[Message]) -> AsyncIterator[bytes]:
        """Each message as one ``{"result":...}\\n`` chunk; an abort as grpc-gateway's error chunk."""
        started = False
        self._started(method)
        try:
            async for msg in messages:
                started = True
                yield b'{"result":' + await encode_message(msg) + b"}\n"
        except GatewayAbort as e:
            self._handled(method, e.code)
            if not started:
                resp.status = HTTP_STATUS_BY_CODE.get(e.code.name, 500)
                resp.headers = [h for h in resp.headers if h != GRPC_CONTENT_TYPE_HEADER]
            yield stream_error_doc(e.code.name, e.details)
            return
        except (asyncio.CancelledError, GeneratorExit):
            self._handled(method, grpc.StatusCode.CANCELLED)
            raise
        except Exception as e:
            self._handled(method, grpc.StatusCode.UNKNOWN)
            log.exception("gateway stream failed")
            yield stream_error_doc("UNKNOWN", str(e))
            return
        self._handled(method, None)


async def _iterate(items: list[Message]) -> AsyncIterator[Message]:
    """The parsed requests as the async iterator a gRPC stream handler reads; its end is the half-close."""
    for item in items:
        yield item


async def _next_or_end(queue: asyncio.Queue[Any], task: asyncio.Task[None]) -> Any:
    """The next queued item, or None once `task` has ended and nothing is left."""
    if not queue.empty():
        return queue.get_nowait()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
    if getter.done():
        return getter.result()
    getter.cancel()
    return queue.get_nowait() if not queue.empty() else None


def json_error(code: str, message: str) -> Any:
    """A unary call's error response: grpc-gateway's body with the HTTP status for `code`."""
    from etcdpy.api.http import Response

    return Response(HTTP_STATUS_BY_CODE.get(code, 500), error_doc(code, message), JSON_CT)
