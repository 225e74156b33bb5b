"""etcd's HTTP endpoints (/health, /livez, /readyz, /version, /metrics) on a tiny HTTP/1.1 server.

Why a hand-written protocol instead of a framework: the endpoints are few, GET-only
and tiny, and they share the event loop with the server, so the server here is an
`asyncio.Protocol` that parses a request head, runs one handler and answers with
one coalesced write. It keeps connections alive (HTTP/1.1 default), answers
pipelined requests in order, and pauses reading while a handler runs so a client
cannot queue unbounded work.

The semantics and bodies are etcd 3.5's (server/etcdserver/api/etcdhttp):

- /health: alarms (``?exclude=NOSPACE``), then a leader unless ``?serializable=true``,
  then a keys-only Range with limit 1 (linearizable unless serializable); 200 with
  ``{"health":"true","reason":""}``, else 503 with ``{"health":"false","reason":...}``.
- /livez (serializable_read) and /readyz (data_corruption, serializable_read,
  linearizable_read), each also at /livez/<check>; ``?exclude=<check>``; ``?verbose``
  lists ``[+]name ok`` lines before ``ok``; a failure is 503 listing every check.
- /version: ``{"etcdserver":"3.5.13","etcdcluster":"3.5.0"}`` (client URLs only, as etcd).
- /metrics: Prometheus text format from the server's private registry.
- /v3/...: etcd's gRPC-gateway JSON API (`etcdpy.api.gateway`), client URLs only; its
  streams are chunked responses, written as the service produces them.

On the client URLs every answer carries etcd's default CORS headers (``--cors '*'``) and
``OPTIONS`` is answered 200 with an empty body, as etcd 3.5's client handler does.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from etcdpy import errors

log = logging.getLogger("etcdpy.http")

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 1024 * 1024
TEXT_PLAIN = "text/plain; charset=utf-8"
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes = b""
    peer_cn: str | None = None
    """The common name of the verified TLS client certificate (https with client-cert auth), else None."""
    path: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self.path = parts.path or "/"
        self.query = parse_qs(parts.query, keep_blank_values=True)

    @property
    def keep_alive(self) -> bool:
        conn = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return conn == "keep-alive"
        return conn != "close"


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = TEXT_PLAIN
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: AsyncIterator[bytes] | None = None
    """A chunked body: each item is one chunk. The status line goes out with the first chunk,
    so the producer may still change `status` and `headers` until it yields."""


Handler = Callable[[Request], Awaitable[Response]]


def text_error(status: int, message: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """Go's http.Error: plain text, nosniff, the message plus a newline."""
    return Response(status, (message + "\n").encode(), TEXT_PLAIN,
                    [("X-Content-Type-Options", "nosniff"), *(headers or [])])


def not_found() -> Response:
    return text_error(404, "404 page not found")


def method_not_allowed(allow: str = "GET") -> Response:
    return text_error(405, "Method Not Allowed", [("Allow", allow)])


def encode_response(resp: Response, keep_alive: bool, head_only: bool = False) -> bytes:
    """Status line, headers and body as one buffer: one write, one segment for small answers."""
    head = encode_head(resp, keep_alive, [f"Content-Length: {len(resp.body)}"])
    return head if head_only else head + resp.body


def encode_head(resp: Response, keep_alive: bool, framing: list[str]) -> bytes:
    """Status line and headers, sorted by name as Go's net/http writes them, then Date and the framing."""
    reason = HTTPStatus(resp.status).phrase if resp.status in HTTPStatus._value2member_map_ else ""
    headers = list(resp.headers)
    if resp.content_type:
        headers.append(("Content-Type", resp.content_type))
    headers.sort(key=lambda kv: kv[0])
    lines = [f"HTTP/1.1 {resp.status} {reason}"]
    lines.extend(f"{k}: {v}" for k, v in headers)
    lines.append(f"Date: {formatdate(usegmt=True)}")
    lines.extend(framing)
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection: parse, dispatch to `router`, answer in order."""

    def __init__(self, router: Callable[[Request], Awaitable[Response]], max_body: int = MAX_BODY_BYTES) -> None:
        self.router = router
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._eof = False
        self._closing = False
        self._streaming = False
        self._can_write = asyncio.Event()
        self._can_write.set()
        self._peer_cn: str | None = None
        self._continued = False  # "100 Continue" sent for the request being received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Duck-typed: uvloop's transports do not subclass asyncio.Transport.
        self.transport = transport  # type: ignore[assignment]
        self._peer_cn = certificate_common_name(transport.get_extra_info("peercert"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._streaming and len(self._buf) > MAX_HEAD_BYTES + self.max_body:
            self._stop_stream()  # a client pipelining without end behind an endless stream
        elif self._task is None:
            self._next()

    def eof_received(self) -> bool:
        self._eof = True
        if self._streaming:
            self._stop_stream()  # the client went away: end the watch (or other stream) now
            return False
        if self._task is None:
            self._next()
        return True  # keep the write side open until the pending answer is out

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._can_write.set()
        if self._task is not None:
            self._task.cancel()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def _stop_stream(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._close()

    def _next(self) -> None:
        """Start the next complete request in the buffer, or close on EOF/garbage."""
        assert self.transport is not None
        if self._closing:
            return
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > MAX_HEAD_BYTES:
                self._fail(431, "Request Header Fields Too Large")
            elif self._eof:
                self._close()
            return
        try:
            req, body_len = _parse_head(bytes(self._buf[:end]))
        except ValueError:
            self._fail(400, "Bad Request")
            return
        if body_len > self.max_body:
            self._fail(413, "Request Entity Too Large")
            return
        if len(self._buf) < end + 4 + body_len:
            if self._eof:
                self._close()
            elif not self._continued and req.headers.get("expect", "").lower() == "100-continue":
                # curl asks before sending a large body (and waits a second if nobody answers).
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self._continued = True
            return
        self._continued = False
        req.body = bytes(self._buf[end + 4 : end + 4 + body_len])
        req.peer_cn = self._peer_cn
        del self._buf[: end + 4 + body_len]
        self.transport.pause_reading()
        self._task = asyncio.ensure_future(self._serve(req))

    async def _serve(self, req: Request) -> None:
        try:
            resp = await self.router(req)
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("HTTP handler failed", extra={"fields": {"path": req.path}})
            resp = text_error(500, "Internal Server Error")
        assert self.transport is not None
        if self._closing:
            return
        keep = req.keep_alive and not self._eof
        if resp.stream is not None:
            try:
                keep = await self._write_stream(resp, keep) and keep
            except asyncio.CancelledError:
                return
            if self._closing:
                return
        else:
            self.transport.write(encode_response(resp, keep, head_only=req.method == "HEAD"))
        self._task = None
        if not keep:
            self._close()
            return
        self.transport.resume_reading()
        self._next()

    async def _write_stream(self, resp: Response, keep: bool) -> bool:
        """Send `resp.stream` chunked, each item as it comes; True if the connection can be reused.

        Reading resumes while streaming, only to notice the client leaving (a watch has no
        other end); requests pipelined behind the stream wait in the buffer.
        """
        assert self.transport is not None and resp.stream is not None
        stream = resp.stream
        self._streaming = True
        self.transport.resume_reading()
        head_sent = False
        try:
            async for chunk in stream:
                if not chunk:
                    continue
                data = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
                if not head_sent:
                    data = encode_head(resp, keep, ["Transfer-Encoding: chunked"]) + data
                    head_sent = True
                self.transport.write(data)
                await self._can_write.wait()
                if self._closing:
                    return False
        finally:
            self._streaming = False
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        if not self._closing:
            self.transport.pause_reading()
            head = b"" if head_sent else encode_head(resp, keep, ["Transfer-Encoding: chunked"])
            self.transport.write(head + b"0\r\n\r\n")
        return not self._eof

    def _fail(self, status: int, message: str) -> None:
        assert self.transport is not None
        self.transport.write(encode_response(text_error(status, message), keep_alive=False))
        self._close()

    def _close(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.close()


def certificate_common_name(cert: Any) -> str | None:
    """The subject CN of a certificate as `ssl.SSLSocket.getpeercert()` returns it (only verified ones are there)."""
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


def _parse_head(head: bytes) -> tuple[Request, int]:
    """Request line and headers; returns the request and the body length to skip."""
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("bad request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ValueError("bad header line")
        headers[name.lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        raise ValueError("chunked request bodies are not supported")
    try:
        body_len = int(headers.get("content-length", "0"))
    except ValueError:
        raise ValueError("bad content-length") from None
    if body_len < 0:
        raise ValueError("bad content-length")
    return Request(parts[0], parts[1], parts[2], headers), body_len


# --------------------------------------------------------------------------- etcd's endpoints


@dataclass
class Health:
    health: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.health == "true"


CORS_HEADERS = [
    ("Access-Control-Allow-Headers", "accept, content-type, authorization"),
    ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
    ("Access-Control-Allow-Origin", "*"),
]
"""What etcd's client handler adds to every answer with its default ``--cors '*'``."""

CN_REFUSED = "CommonName of client sending a request against gateway will be ignored and not used as expected"

GATEWAY_BODY_OVERHEAD = 1024 * 1024
"""Room for JSON and base64 around a request of --max-request-bytes (base64 adds a third)."""


class EtcdHttpApi:
    """Routes and handlers for one listener kind: "client" (with /version and the /v3 gateway)
    or "metrics" (neither, as etcd)."""

    def __init__(self, server: Any, registry: Any, *, kind: str = "client") -> None:
        from etcdpy import ETCD_CLUSTER_VERSION, ETCD_VERSION

        self.server = server
        self.registry = registry
        self.kind = kind
        self.gateway: Any = None
        self.max_body = MAX_BODY_BYTES
        if kind == "client":
            from etcdpy.api.gateway import Gateway

            self.gateway = Gateway(server)
            self.max_body = max(MAX_BODY_BYTES, 2 * server.cfg.max_request_bytes + GATEWAY_BODY_OVERHEAD)
        self.routes: dict[str, Handler] = {
            "/health": self.health,
            "/metrics": self.metrics,
        }
        self._version_body = json.dumps(
            {"etcdserver": ETCD_VERSION, "etcdcluster": ETCD_CLUSTER_VERSION}, separators=(",", ":")
        ).encode()
        if kind == "client":
            self.routes["/version"] = self.version
        self._checks: dict[str, dict[str, Callable[[], Awaitable[str | None]]]] = {
            "livez": {"serializable_read": self._serializable_read},
            "readyz": {
                "data_corruption": self._no_corrupt_alarm,
                "serializable_read": self._serializable_read,
                "linearizable_read": self._linearizable_read,
            },
        }
        for kind_name, checks in self._checks.items():
            self.routes[f"/{kind_name}"] = self._check_handler(kind_name, None)
            for name in checks:
                self.routes[f"/{kind_name}/{name}"] = self._check_handler(kind_name, name)

    async def __call__(self, req: Request) -> Response:
        if self.kind != "client":
            return await self._route(req)
        if req.method == "OPTIONS":
            resp = Response(200, b"", None)
        elif self._gateway_refuses_cn(req):
            resp = text_error(400, CN_REFUSED)
        else:
            resp = await self._route(req)
        resp.headers = CORS_HEADERS + resp.headers
        return resp

    def _gateway_refuses_cn(self, req: Request) -> bool:
        """etcd's access controller: under client-cert auth with auth enabled, a certificate CN on a
        gateway call is refused, because the gateway would not carry it to the server as the user."""
        if req.peer_cn is None or self.gateway is None or not self.gateway.owns(req.path):
            return False
        store = getattr(self.server, "auth_store", None)
        return bool(self.server.cfg.client_cert_auth and store is not None and store.enabled)

    async def _route(self, req: Request) -> Response:
        handler = self.routes.get(req.path)
        if handler is not None:
            return await handler(req)
        if self.gateway is not None and self.gateway.owns(req.path):
            resp: Response = await self.gateway(req)
            return resp
        return not_found()

    def protocol(self) -> HttpProtocol:
        """A protocol instance for one new connection (the listener's protocol factory)."""
        return HttpProtocol(self, self.max_body)

    # -- /version and /metrics

    async def version(self, req: Request) -> Response:
        if req.method != "GET":
            return method_not_allowed()
        return Response(200, self._version_body, "application/json")

    async def metrics(self, req: Request) -> Response:
        from prometheus_client.exposition import generate_latest

        return Response(200, generate_latest(self.registry), PROMETHEUS_TEXT)

    # -- /health

    async def health(self, req: Request) -> Response:
        if req.method != "GET":
            return method_not_allowed()
        excluded = {a for a in req.query.get("exclude", []) if a}
        serializable = req.query.get("serializable", [""])[0] == "true"
        h = await self.check_health(excluded, serializable)
        metrics = getattr(self.server, "metrics", None)
        if metrics is not None:
            if h.ok:
                metrics.health_success += 1
            else:
                metrics.health_failures += 1
        body = json.dumps({"health": h.health, "reason": h.reason}, separators=(",", ":"))
        if not h.ok:
            log.warning("/health error", extra={"fields": {"output": body, "status-code": 503}})
            return text_error(503, body)
        return Response(200, body.encode(), TEXT_PLAIN)

    async def check_health(self, excluded_alarms: set[str], serializable: bool) -> Health:
        for alarm in active_alarms(self.server):
            if alarm in excluded_alarms:
                continue
            reason = {"NOSPACE": "ALARM NOSPACE", "CORRUPT": "ALARM CORRUPT"}.get(alarm, "ALARM UNKNOWN")
            return Health("false", reason)
        if not serializable and not self.server.lead:
            return Health("false", "RAFT NO LEADER")
        err = await self._range(serializable)
        if err is not None:
            return Health("false", f"RANGE ERROR:{err}")
        return Health("true")

    async def _range(self, serializable: bool) -> str | None:
        """etcd's checkAPI: a keys-only, limit-1 Range within the request timeout; the error text or None."""
        from etcdpy.pb import rpc_pb2

        req = rpc_pb2.RangeRequest(keys_only=True, limit=1, serializable=serializable)
        try:
            async with asyncio.timeout(self.server.cfg.request_timeout):
                await self.server.range(req)
        except (errors.ErrUserEmpty, errors.ErrPermissionDenied):
            # etcd 3.5 reads as root here; 3.4 ignores exactly these: auth is not ill health.
            return None
        except errors.EtcdError as e:
            return e.message
        except TimeoutError:
            return "context deadline exceeded"
        return None

    # -- /livez and /readyz

    async def _serializable_read(self) -> str | None:
        return await self._range(True)

    async def _linearizable_read(self) -> str | None:
        return await self._range(False)

    async def _no_corrupt_alarm(self) -> str | None:
        return "alarm activated: CORRUPT" if "CORRUPT" in active_alarms(self.server) else None

    def _check_handler(self, kind: str, only: str | None) -> Handler:
        async def handle(req: Request) -> Response:
            if req.method != "GET":
                return method_not_allowed()
            checks = self._checks[kind]
            if only is not None:
                names = [only]
            else:
                excluded = {x for x in req.query.get("exclude", []) if x}
                names = [n for n in checks if n not in excluded]
            failed = False
            out: list[str] = []
            for name in names:
                err = await checks[name]()
                if err is None:
                    out.append(f"[+]{name} ok\n")
                else:
                    failed = True
                    out.append(f"[-]{name} failed: {err}\n")
            reason = "".join(out)
            if failed:
                log.error("Health check error", extra={"fields": {"path": req.path, "reason": reason}})
                return text_error(503, reason)
            body = (reason if "verbose" in req.query else "") + "ok\n"
            return Response(200, body.encode(), TEXT_PLAIN, [("X-Content-Type-Options", "nosniff")])

        return handle


def active_alarms(server: Any) -> list[str]:
    """Names of this member's active alarms (NOSPACE, CORRUPT), from `EtcdServer.alarms()`."""
    from etcdpy.pb import rpc_pb2

    return [rpc_pb2.AlarmType.Name(a.alarm) for a in server.alarms() if a.alarm != rpc_pb2.NONE]
