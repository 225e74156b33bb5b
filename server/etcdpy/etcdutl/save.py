"""`etcdpy snapshot save FILE --endpoints URL`: a client-side backup, as `etcdctl snapshot save` takes it.

The member streams its database (Maintenance.Snapshot): data messages, then one
whose blob is the sha256 of all the data. Everything received is written, the
checksum included, so the file is exactly what etcdctl writes and what
`etcdutl/etcdpy snapshot restore` verify. Unlike etcdctl, the checksum and the
whole database are verified here before the file counts: the stream goes to
`FILE.part`, which is fsynced, checked (`inspect`: sha256, every bbolt page) and
only then renamed over FILE, and the directory fsynced. A failure leaves no
FILE and no `.part`, and is one line.

As with etcdctl, exactly one endpoint: a snapshot is one member's state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass

import grpc  # type: ignore[import-untyped]

from etcdpy.etcdutl.snapshot_file import (
    SHA_LEN,
    SnapshotFileError,
    SnapshotInfo,
    inspect,
)


class SaveError(Exception):
    """A snapshot that could not be saved; the message is one line."""


@dataclass
class SaveConfig:
    path: str
    endpoint: str
    cacert: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""  # "name:password" when auth is enabled (etcd requires root for a snapshot)
    dial_timeout: float = 2.0
    command_timeout: float = 0.0  # 0: no limit (a big database takes long)


@dataclass(frozen=True)
class SaveResult:
    info: SnapshotInfo
    seconds: float
    sha256: str


def _target(endpoint: str) -> tuple[str, bool]:
    """host:port and whether TLS is wanted, from an etcdctl-style endpoint."""
    for scheme, tls in (("https://", True), ("unixs://", True), ("http://", False), ("unix://", False)):
        if endpoint.startswith(scheme):
            rest = endpoint[len(scheme) :]
            return (f"unix:{rest}" if scheme.startswith("unix") else rest.rstrip("/")), tls
    return endpoint, False


def _channel(cfg: SaveConfig) -> grpc.Channel:
    target, tls = _target(cfg.endpoint)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    if tls or cfg.cacert or cfg.cert:

        def read(p: str) -> bytes | None:
            if not p:
                return None
            with open(p, "rb") as f:
                return f.read()

        creds = grpc.ssl_channel_credentials(read(cfg.cacert), read(cfg.key), read(cfg.cert))
        return grpc.secure_channel(target, creds, options)
    return grpc.insecure_channel(target, options)


def _metadata(channel: grpc.Channel, cfg: SaveConfig) -> list[tuple[str, str]]:
    """The auth token for --user, as etcdctl gets it (Authenticate)."""
    if not cfg.user:
        return []
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    name, _, password = cfg.user.partition(":")
    resp = rpc_pb2_grpc.AuthStub(channel).Authenticate(
        rpc_pb2.AuthenticateRequest(name=name, password=password), timeout=cfg.dial_timeout + 5
    )
    return [("token", resp.token)]


def save(cfg: SaveConfig) -> SaveResult:
    """Stream, verify and atomically store one member's snapshot; raise SaveError on any failure."""
    from etcdpy.pb import rpc_pb2, rpc_pb2_grpc

    part = cfg.path + ".part"
    start = time.monotonic()
    try:
        with _channel(cfg) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=cfg.dial_timeout)
            except grpc.FutureTimeoutError:
                raise SaveError(f"cannot connect to {cfg.endpoint} within {cfg.dial_timeout:g}s") from None
            md = _metadata(channel, cfg)
            stream = rpc_pb2_grpc.MaintenanceStub(channel).Snapshot(
                rpc_pb2.SnapshotRequest(), metadata=md, timeout=cfg.command_timeout or None
            )
            digest = _receive(stream, part)
        info = inspect(part, verify_checksum=True, require_checksum=True)
        os.replace(part, cfg.path)
        _fsync_dir(os.path.dirname(os.path.abspath(cfg.path)))
    except grpc.RpcError as e:
        _remove(part)
        raise SaveError(f"snapshot from {cfg.endpoint} failed: {e.details() or e.code().name}") from None
    except SnapshotFileError as e:
        _remove(part)
        raise SaveError(f"the received snapshot is not valid: {e}") from None
    except OSError as e:
        _remove(part)
        raise SaveError(f"cannot write {cfg.path}: {e.strerror or e}") from None
    except BaseException:
        _remove(part)
        raise
    info = SnapshotInfo(cfg.path, info.file_size, info.data_len, info.has_checksum, info.hash, info.revision,
                        info.total_keys, info.format, info.db_size)
    return SaveResult(info, time.monotonic() - start, digest)


def _receive(stream: object, part: str) -> str:
    """Write every blob to `part` (fsynced); check remaining_bytes and the final sha256. Returns it (hex)."""
    sha = hashlib.sha256()
    pending = b""  # the newest blob: it is the checksum if it turns out to be the last
    with open(part, "wb") as f:
        for msg in stream:  # type: ignore[attr-defined]
            if pending:
                sha.update(pending)
            f.write(msg.blob)
            pending = msg.blob
            last_remaining = msg.remaining_bytes
        if not pending:
            raise SaveError("the member sent an empty snapshot")
        if last_remaining != 0 or len(pending) != SHA_LEN or sha.digest() != pending:
            raise SaveError("snapshot stream ended without a matching sha256 (connection cut or data damaged)")
        f.flush()
        os.fsync(f.fileno())
    return pending.hex()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
