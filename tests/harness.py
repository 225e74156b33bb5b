"""Test harness: real server processes (etcdpy or etcd) driven by real clients.

Why this exists: the compatibility suite must prove that etcdpy behaves like etcd,
so every test talks to a *real process* over the network, through the same clients
users have (the real ``etcdctl`` binary, a gRPC client on the generated stubs), and
the very same tests run against real etcd (``ETCDPY_TEST_TARGET=etcd``). A test that
passes against etcd asserts etcd's actual behaviour; running it against etcdpy then
checks compatibility.

Main pieces:

- `target()`: ``"etcdpy"`` (default) or ``"etcd"``.
- `Member`: one server process with its own data dir, ports and log files;
  `start`, `wait_ready`, `stop` (SIGTERM), `kill(sig)`, `restart`, `etcdctl`, `grpc`.
- `Cluster`: N members sharing one ``--initial-cluster``; N=1 today, built for 3 and 5.
- `Etcdctl` / `EtcdctlError`: run ``etcdctl`` with ``ETCDCTL_API=3`` and parse ``-w json``.
- `GrpcClient`: stubs of ``etcdpy.pb.rpc_pb2_grpc`` on one channel.
- `assert_grpc_error`, `kv_json`, `assert_header`, `b64`: assertion helpers shared by tests.

Ports are allocated below the kernel's ephemeral range and reserved with an
advisory ``flock`` on a per-port file in the system temp dir, so concurrent test
runs (other engineers on the same machine) never pick the same port; the lock is
held for the member's lifetime, across restarts.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import errno
import fcntl
import json as jsonlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_SRC = REPO_ROOT / "server"

TARGETS = ("etcdpy", "etcd")

# How long a member may take to become ready. etcdpy starts a Python interpreter and
# imports grpc/protobuf/rocksdict on a loaded 2-core machine, so be generous; a
# process that exits early fails immediately instead of waiting this out.
READY_TIMEOUT = float(os.environ.get("ETCDPY_TEST_READY_TIMEOUT", "60"))
STOP_TIMEOUT = 15.0

# Port window: below the Linux ephemeral range (32768-60999) so outgoing connections
# cannot occupy our listening ports, and above the well-known/registered services and
# etcd's own defaults (2379/2380) that ad-hoc servers might use.
PORT_LOW, PORT_HIGH = 20000, 32000
PORT_LOCK_DIR = Path(tempfile.gettempdir()) / "etcdpy-test-ports"


def target() -> str:
    """Which server the suite runs against: ``ETCDPY_TEST_TARGET`` (default ``etcdpy``)."""
    value = os.environ.get("ETCDPY_TEST_TARGET", "etcdpy").strip().lower() or "etcdpy"
    if value not in TARGETS:
        raise ValueError(f"ETCDPY_TEST_TARGET must be one of {TARGETS}, got {value!r}")
    return value


def etcd_binary() -> str:
    """Path of real etcd (``ETCDPY_ETCD_BIN`` overrides the PATH lookup)."""
    return os.environ.get("ETCDPY_ETCD_BIN") or shutil.which("etcd") or "/usr/bin/etcd"


def etcdctl_binary() -> str:
    """Path of real etcdctl (``ETCDPY_ETCDCTL_BIN`` overrides the PATH lookup)."""
    return os.environ.get("ETCDPY_ETCDCTL_BIN") or shutil.which("etcdctl") or "/usr/bin/etcdctl"


def b64(data: str | bytes) -> str:
    """Base64 as etcdctl's JSON output prints byte fields (Go encodes []byte as base64)."""
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    """Inverse of `b64`."""
    return base64.b64decode(text)


# --------------------------------------------------------------------------- ports


class PortReservation:
    """A TCP port reserved for this process by an exclusive flock on a lock file.

    Why flock: it is released by the kernel when the holder dies, so a crashed test
    run never leaks reservations, and it coordinates unrelated pytest processes.
    """

    def __init__(self, port: int, fd: int) -> None:
        self.port = port
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock; the port may be handed to another run afterwards."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.release()


def _bindable(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port right now (plain bind, no SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def reserve_port(rng: random.Random | None = None) -> PortReservation:
    """Reserve a free loopback port in [PORT_LOW, PORT_HIGH)."""
    rng = rng or random.SystemRandom()
    PORT_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for _ in range(2000):
        port = rng.randrange(PORT_LOW, PORT_HIGH)
        path = PORT_LOCK_DIR / f"{port}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        if not _bindable(port):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            continue
        return PortReservation(port, fd)
    raise RuntimeError("could not reserve a free loopback port")


# --------------------------------------------------------------------------- etcdctl


class EtcdctlError(Exception):
    """etcdctl exited non-zero; carries the server's message as etcdctl printed it."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"etcdctl {' '.join(argv)} exited {returncode}\nstdout: {stdout.strip()}\nstderr: {stderr.strip()}"
        )

    @property
    def message(self) -> str:
        """The text after ``Error: `` on etcdctl's last error line (the gRPC status message)."""
        for line in reversed(self.stderr.splitlines()):
            if line.startswith("Error: "):
                return line[len("Error: ") :].strip()
        return self.stderr.strip()


@dataclass
class Etcdctl:
    """Runs the real etcdctl against fixed endpoints.

    Why a clean environment: ETCDCTL_* variables in a developer's shell (endpoints,
    credentials) would silently redirect or alter the commands under test.
    """

    endpoints: list[str]
    timeout: float = 30.0

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCDCTL_", "ETCD_"))}
        env["ETCDCTL_API"] = "3"
        return env

    def run(
        self,
        *args: str,
        json: bool = True,
        stdin: str | None = None,
        endpoints: Sequence[str] | None = None,
        check: bool = True,
    ) -> Any:
        """Run ``etcdctl --endpoints=... args`` and return parsed JSON (json=True) or stdout.

        Raises `EtcdctlError` on a non-zero exit when ``check`` (default); with
        ``check=False`` returns the CompletedProcess so a test can inspect both streams.
        """
        eps = ",".join(endpoints or self.endpoints)
        argv = [etcdctl_binary(), f"--endpoints={eps}", *args]
        if json:
            argv += ["-w", "json"]
        proc = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=self.timeout,
        )
        if not check:
            return proc
        if proc.returncode != 0:
            raise EtcdctlError(argv[1:], proc.returncode, proc.stdout, proc.stderr)
        if not json:
            return proc.stdout
        out = proc.stdout.strip()
        if not out:
            return None
        return jsonlib.loads(out)

    def __call__(self, *args: str, **kwargs: Any) -> Any:
        return self.run(*args, **kwargs)


# --------------------------------------------------------------------------- gRPC


def pb_available() -> bool:
    """True once the generated stubs (``etcdpy.pb.rpc_pb2_grpc``) exist in the tree."""
    return (SERVER_SRC / "etcdpy" / "pb" / "rpc_pb2_grpc.py").exists()


class GrpcClient:
    """One insecure channel to a member plus lazily created stubs.

    Attributes ``kv``, ``watch``, ``lease``, ``cluster``, ``maintenance``, ``auth`` are
    stubs from ``etcdpy.pb.rpc_pb2_grpc``; ``pb`` is ``etcdpy.pb.rpc_pb2`` (request and
    response messages) and ``mvccpb`` is ``etcdpy.pb.kv_pb2``. Imports happen on first
    use so that harness users who only need etcdctl do not depend on generated code.
    """

    def __init__(self, endpoint: str, max_message_bytes: int = 64 * 1024 * 1024) -> None:
        self.endpoint = endpoint
        self.channel = grpc.insecure_channel(
            endpoint,
            options=[
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
            ],
        )
        self._stubs: dict[str, Any] = {}

    @property
    def pb(self) -> Any:
        from etcdpy.pb import rpc_pb2

        return rpc_pb2

    @property
    def mvccpb(self) -> Any:
        from etcdpy.pb import kv_pb2

        return kv_pb2

    def _stub(self, name: str) -> Any:
        if name not in self._stubs:
            from etcdpy.pb import rpc_pb2_grpc

            self._stubs[name] = getattr(rpc_pb2_grpc, f"{name}Stub")(self.channel)
        return self._stubs[name]

    @property
    def kv(self) -> Any:
        return self._stub("KV")

    @property
    def watch(self) -> Any:
        return self._stub("Watch")

    @property
    def lease(self) -> Any:
        return self._stub("Lease")

    @property
    def cluster(self) -> Any:
        return self._stub("Cluster")

    @property
    def maintenance(self) -> Any:
        return self._stub("Maintenance")

    @property
    def auth(self) -> Any:
        return self._stub("Auth")

    def close(self) -> None:
        self.channel.close()


def _raw_range(channel: grpc.Channel, key: bytes, timeout: float) -> bytes:
    """Linearizable Range of one key, hand-encoded so readiness needs no generated stubs.

    RangeRequest field 1 (key, bytes) = tag 0x0a, length, key.
    """
    call = channel.unary_unary("/etcdserverpb.KV/Range")
    request = b"\x0a" + bytes([len(key)]) + key
    return call(request, timeout=timeout)


@contextlib.contextmanager
def assert_grpc_error(code: grpc.StatusCode, message: str | None = None) -> Iterator[list[grpc.RpcError]]:
    """Expect the block to raise a gRPC error with exactly this status code and message.

    Yields a list that receives the caught error, for extra assertions.
    """
    caught: list[grpc.RpcError] = []
    try:
        yield caught
    except grpc.RpcError as err:
        caught.append(err)
        assert err.code() == code, f"expected {code}, got {err.code()}: {err.details()!r}"
        if message is not None:
            assert err.details() == message, f"expected message {message!r}, got {err.details()!r}"
        return
    raise AssertionError(f"expected gRPC error {code} {message!r}, but the call succeeded")


# --------------------------------------------------------------------------- JSON helpers


def kv_json(
    key: str | bytes,
    value: str | bytes | None,
    create_revision: int,
    mod_revision: int,
    version: int,
    lease: int = 0,
) -> dict[str, Any]:
    """The mvccpb.KeyValue dict exactly as etcdctl -w json prints it.

    etcdctl marshals the protobuf structs with Go's encoding/json and ``omitempty``:
    zero numbers and empty byte strings are left out, so we build the same shape.
    ``value=None`` models keys_only output.
    """
    out: dict[str, Any] = {"key": b64(key)}
    for name, num in (("create_revision", create_revision), ("mod_revision", mod_revision), ("version", version)):
        if num:
            out[name] = num
    if value:
        out["value"] = b64(value)
    if lease:
        out["lease"] = lease
    return out


def assert_header(header: dict[str, Any], revision: int | None) -> None:
    """A top-level etcdctl JSON response header.

    cluster_id, member_id and raft_term differ between implementations (and runs), so
    only their presence and non-zero value is asserted; the revision must match exactly
    (``revision=None`` asserts it is absent, as on Cluster RPCs).
    """
    assert set(header) <= {"cluster_id", "member_id", "revision", "raft_term"}, header
    for name in ("cluster_id", "member_id", "raft_term"):
        assert isinstance(header.get(name), int) and header[name] > 0, (name, header)
    if revision is None:
        assert "revision" not in header, header
    else:
        assert header.get("revision") == revision, header


def strip_header(doc: dict[str, Any]) -> dict[str, Any]:
    """The response without its header, for exact comparison of everything else."""
    return {k: v for k, v in doc.items() if k != "header"}


def assert_pb_header(header: Any, revision: int) -> None:
    """gRPC ResponseHeader: ids and term present and non-zero, revision exact."""
    assert header.cluster_id != 0, header
    assert header.member_id != 0, header
    assert header.raft_term != 0, header
    assert header.revision == revision, header


def txn_stdin(compares: Sequence[str], success: Sequence[str], failure: Sequence[str]) -> str:
    """etcdctl txn's interactive input: three blank-line-terminated sections.

    etcdctl reads compares, then success ops, then failure ops, each section ended by
    an empty line; a missing terminator makes it fail with "Error: EOF".
    """
    return "".join(f"{line}\n" for section in (compares, success, failure) for line in (*section, ""))


def current_revision(member: "Member") -> int:
    """The store's current revision, read through etcdctl (a Range on an unused key)."""
    return int(member.etcdctl("get", "/__etcdpy_test_revision_probe__")["header"]["revision"])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until truthy or the deadline passes (the only sanctioned 'sleep')."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - polling: remember and retry
            last_exc = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}; last error: {last_exc!r}")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes

_LIVE: "weakref.WeakSet[Member]" = weakref.WeakSet()


def _kill_leftovers() -> None:
    """At interpreter exit, never leave server processes behind."""
    for member in list(_LIVE):
        with contextlib.suppress(Exception):
            member.kill(signal.SIGKILL)


atexit.register(_kill_leftovers)


try:
    # Loaded in the parent: the preexec_fn below runs between fork and exec, where
    # dlopen (or anything taking a lock another thread may hold) could deadlock.
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - non-glibc systems
    _LIBC = None


def _die_with_parent() -> None:
    """preexec_fn: PR_SET_PDEATHSIG so a SIGKILLed pytest does not orphan servers.

    Caveat (Linux semantics): the signal fires when the *thread* that spawned the
    member exits, so spawn members from a thread that outlives them (pytest's main
    thread), not from short-lived worker threads.
    """
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1


class MemberStartError(RuntimeError):
    """The member process exited or did not become ready in time."""


@dataclass(eq=False)
class Member:
    """One server process (etcdpy or etcd) and everything needed to (re)start it.

    Ports are reserved for the member's lifetime so `restart` reuses them, which a
    member must do: its peer URL is recorded in the cluster membership on disk.
    """

    name: str
    base_dir: Path
    client: PortReservation
    peer: PortReservation
    initial_cluster: str = ""
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "etcdpy-test"
    extra_args: list[str] = field(default_factory=list)
    target: str = field(default_factory=target)
    log_level: str = "info"
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    _grpc: GrpcClient | None = None

    # -- addresses

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client.port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer.port}"

    @property
    def endpoint(self) -> str:
        """host:port form used by etcdctl --endpoints and gRPC channels."""
        return f"127.0.0.1:{self.client.port}"

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def stdout_path(self) -> Path:
        return self.base_dir / f"stdout.{self.starts}.log"

    @property
    def stderr_path(self) -> Path:
        return self.base_dir / f"stderr.{self.starts}.log"

    # -- command line

    def argv(self) -> list[str]:
        """The server command line; identical flags for both targets (etcdpy mirrors etcd)."""
        flags = [
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={self.peer_url}'}",
            f"--initial-cluster-state={self.initial_cluster_state}",
            f"--initial-cluster-token={self.initial_cluster_token}",
            f"--log-level={self.log_level}",
            *self.extra_args,
        ]
        if self.target == "etcd":
            # etcd 3.4 only honours --log-level with the zap logger.
            return [etcd_binary(), "--logger=zap", *flags]
        return [sys.executable, "-m", "etcdpy", *flags]

    def env(self) -> dict[str, str]:
        """Child environment without ETCD_*/ETCDCTL_* (both servers read ETCD_* as flags)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
        if self.target == "etcdpy":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVER_SRC), env.get("PYTHONPATH", "")]))
            env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    # -- lifecycle

    def spawn(self) -> None:
        """Start the process without waiting for readiness (clusters start all, then wait)."""
        if self.running():
            raise RuntimeError(f"member {self.name} is already running")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=self.base_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        _LIVE.add(self)

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Spawn and wait until the member serves a linearizable read."""
        self.spawn()
        self.wait_ready(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Poll a linearizable gRPC Range until it succeeds (leader known, applied up to date).

        Fails fast, with the log tail, if the process exits meanwhile.
        """
        deadline = time.monotonic() + timeout
        channel = grpc.insecure_channel(self.endpoint)
        last: BaseException | None = None
        try:
            while True:
                if not self.running():
                    raise MemberStartError(
                        f"member {self.name} exited with {self.proc.returncode if self.proc else None} "
                        f"before becoming ready\n{self.log_tail()}"
                    )
                try:
                    _raw_range(channel, b"health", timeout=min(2.0, max(0.1, deadline - time.monotonic())))
                    return
                except grpc.RpcError as exc:
                    last = exc
                if time.monotonic() >= deadline:
                    raise MemberStartError(
                        f"member {self.name} not ready after {timeout}s (last error: {last!r})\n{self.log_tail()}"
                    )
                time.sleep(0.05)
        finally:
            channel.close()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Graceful stop: SIGTERM, wait; SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self._close_grpc()
        _LIVE.discard(self)
        return self.proc.returncode

    def kill(self, sig: int = signal.SIGKILL, wait: bool | None = None) -> None:
        """Send ``sig``; for terminating signals wait for the exit (SIGSTOP/SIGCONT do not)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        if wait is None:
            wait = sig not in (signal.SIGSTOP, signal.SIGCONT, signal.SIGTSTP)
        if wait:
            self.proc.wait(STOP_TIMEOUT)
            self._close_grpc()
            _LIVE.discard(self)

    def restart(self, timeout: float = READY_TIMEOUT) -> None:
        """Stop gracefully (if running) and start again on the same data dir and ports."""
        self.stop()
        self.start(timeout)

    def release(self) -> None:
        """Kill the process if needed and give the ports back."""
        self.kill(signal.SIGKILL)
        self._close_grpc()
        self.client.release()
        self.peer.release()

    # -- clients

    def etcdctl(self, *args: str, **kwargs: Any) -> Any:
        """Run etcdctl against this member only (see `Etcdctl.run`)."""
        return Etcdctl([self.endpoint])(*args, **kwargs)

    def grpc(self) -> GrpcClient:
        """A cached gRPC client for this member (recreated after a restart)."""
        if self._grpc is None:
            self._grpc = GrpcClient(self.endpoint)
        return self._grpc

    def _close_grpc(self) -> None:
        if self._grpc is not None:
            self._grpc.close()
            self._grpc = None

    # -- diagnostics

    def log_tail(self, lines: int = 60) -> str:
        """Last lines of this start's stdout and stderr, for failure messages."""
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            try:
                text = path.read_text(errors="replace").splitlines()
            except FileNotFoundError:
                continue
            parts.append(f"--- {path} (last {lines} lines) ---\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)

    def address_in_use(self) -> bool:
        """Did the last start fail because a port was taken (a race with a foreign process)?"""
        try:
            text = self.stderr_path.read_text(errors="replace") + self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return False
        return "address already in use" in text.lower() or os.strerror(errno.EADDRINUSE).lower() in text.lower()


class Cluster:
    """N members started together with one ``--initial-cluster``.

    N=1 is what the compat suite uses today; the same code builds 3- and 5-member
    clusters: every process is spawned first, then readiness is awaited (a lone
    member of a 3-member cluster cannot elect a leader, so waiting one by one would
    deadlock).
    """

    def __init__(
        self,
        base_dir: Path,
        size: int = 1,
        extra_args: Sequence[str] = (),
        token: str | None = None,
        target_name: str | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        self.size = size
        self.extra_args = list(extra_args)
        self.token = token or f"etcdpy-test-{os.getpid()}-{random.SystemRandom().randrange(1 << 30)}"
        self.target = target_name or target()
        self.members: list[Member] = []

    def _make_members(self) -> None:
        self.members = []
        for i in range(self.size):
            self.members.append(
                Member(
                    name=f"m{i}",
                    base_dir=self.base_dir / f"m{i}",
                    client=reserve_port(),
                    peer=reserve_port(),
                    initial_cluster_token=self.token,
                    extra_args=list(self.extra_args),
                    target=self.target,
                )
            )
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    def start(self, timeout: float = READY_TIMEOUT, attempts: int = 3) -> "Cluster":
        """Start every member and wait until all serve; retry on a lost port race."""
        for attempt in range(attempts):
            self._make_members()
            for m in self.members:
                shutil.rmtree(m.base_dir, ignore_errors=True)
                m.spawn()
            deadline = time.monotonic() + timeout
            try:
                for m in self.members:
                    m.wait_ready(max(1.0, deadline - time.monotonic()))
                return self
            except MemberStartError:
                in_use = any(m.address_in_use() for m in self.members)
                self.release()
                if not in_use or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop every member gracefully (ports stay reserved; `start_member` can revive)."""
        for m in self.members:
            m.stop()

    def release(self) -> None:
        """Kill everything and free the ports."""
        for m in self.members:
            m.release()

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def etcdctl(self, *args: str, **kwargs: Any) -> Any:
        """etcdctl with all endpoints (the client picks one)."""
        return Etcdctl(self.endpoints)(*args, **kwargs)

    def leader(self, timeout: float = 10.0) -> Member:
        """The member that every running member agrees is leader (via endpoint status)."""

        def find() -> Member | None:
            running = [m for m in self.members if m.running()]
            statuses = Etcdctl([m.endpoint for m in running])("endpoint", "status")
            leaders = {s["Status"]["leader"] for s in statuses}
            if len(leaders) != 1:
                return None
            leader_id = leaders.pop()
            for m, s in zip(running, statuses):
                if s["Status"]["header"]["member_id"] == leader_id:
                    return m
            return None

        return wait_until(find, timeout, "a leader agreed by all members")

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.release()
