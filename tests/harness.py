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
import shlex
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

# gRPC's C core must not act on fork in this process: the harness forks (subprocess with a
# preexec_fn, so CPython forks instead of using vfork) while client channels are live, and
# grpcio's fork handler restarts a poller in the child between fork and exec; when the child
# then closes its fds, that poller's epoll_wait fails with EBADF and grpc-core aborts the
# child: the "member" dies with "epoll_wait error: Bad file descriptor" before etcdpy runs.
# Verified: 17 of 1330 such forks aborted with fork support on, 0 of 1851 with it off
# (grpcio 1.85.3, four busy channels); with real member starts (bench/start_stress.py,
# seed 20261203, native): variable unset 2 of 402 members died so, this setting 0 of 402.
# Members get the variable only if the user set it (etcdpy turns it off itself).
_FORK_SUPPORT_IS_OURS = "GRPC_ENABLE_FORK_SUPPORT" not in os.environ
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402 - after the fork-support setting it must see

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


def _reference_tool(name: str, env_var: str) -> str:
    """``env_var`` if set, else the tool from the private etcd 3.5.1 (`etcd35`, installed there on
    first use), else PATH: `reference_versions` shows in pytest's header what was found."""
    override = os.environ.get(env_var)
    if override:
        return override
    import etcd35

    bin_dir, _why = etcd35.ensure()
    if bin_dir is not None and (bin_dir / name).is_file():
        return str(bin_dir / name)
    return shutil.which(name) or f"/usr/bin/{name}"


def etcd_binary() -> str:
    """Path of the reference etcd (``ETCDPY_ETCD_BIN`` overrides)."""
    return _reference_tool("etcd", "ETCDPY_ETCD_BIN")


def etcdctl_binary() -> str:
    """Path of the real etcdctl the suites drive both targets with (``ETCDPY_ETCDCTL_BIN`` overrides)."""
    return _reference_tool("etcdctl", "ETCDPY_ETCDCTL_BIN")


def etcdutl_binary() -> str:
    """Path of the real etcdutl (``ETCDPY_ETCDUTL_BIN`` overrides)."""
    return _reference_tool("etcdutl", "ETCDPY_ETCDUTL_BIN")


def reference_etcd_version() -> tuple[int, int, int] | None:
    """(major, minor, patch) of the reference etcd binary, None if it cannot tell."""
    try:
        out = subprocess.run([etcd_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            parts = line.split(":", 1)[1].strip().split("-", 1)[0].split(".")
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                return int(parts[0]), int(parts[1]), int(parts[2])
    return None


def reference_versions() -> str:
    """One line naming the etcd and etcdctl in use, for pytest's report header."""
    parts = []
    for label, path in (("etcd", etcd_binary()), ("etcdctl", etcdctl_binary())):
        try:
            out = subprocess.run([path, "version" if label == "etcdctl" else "--version"],
                                 capture_output=True, text=True, timeout=10).stdout
            version = out.split("\n", 1)[0].split()[-1] if out.strip() else "?"
        except (OSError, subprocess.SubprocessError):
            version = "missing"
        parts.append(f"{label} {version} ({path})")
    return "reference: " + ", ".join(parts)


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


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on host:port right now (plain bind, no SO_REUSEADDR).

    Checking 127.0.0.1 also catches wildcard (0.0.0.0) listeners, which would block
    the port on every loopback address.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def reserve_port(rng: random.Random | None = None, host: str = "127.0.0.1") -> PortReservation:
    """Reserve a free loopback port in [PORT_LOW, PORT_HIGH).

    The flock is per port number, not per address, so a port is never shared by two
    members even when they listen on different loopback addresses: partition rules
    rely on a peer port identifying exactly one member.
    """
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
        if not _bindable(port) or (host != "127.0.0.1" and not _bindable(port, host)):
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


def _raw_range(channel: grpc.Channel, key: bytes, timeout: float, serializable: bool = False) -> bytes:
    """Range of one key, hand-encoded so readiness needs no generated stubs.

    RangeRequest field 1 (key, bytes) = tag 0x0a, length, key; field 7
    (serializable, bool) = tag 0x38, 1. Linearizable by default; a learner only
    serves serializable reads ("etcdserver: rpc not supported for learner").
    """
    call = channel.unary_unary("/etcdserverpb.KV/Range")
    request = b"\x0a" + bytes([len(key)]) + key
    if serializable:
        request += b"\x38\x01"
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


def _preexec_with_cgroup(procs_path: str) -> Callable[[], None]:
    """preexec_fn that also moves the child into a cgroup before exec.

    Why before exec (not from the parent after Popen): a socket is tagged with its
    creator's cgroup at creation, so the member must be in its cgroup before it opens
    its first peer connection. Only raw os calls run in the forked child.
    """
    path = os.fsencode(procs_path)

    def preexec() -> None:
        _die_with_parent()
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)

    return preexec


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
    # "https": the member serves its client URL with TLS (its flags come through extra_args);
    # `grpc_credentials` are then what readiness probes present (CA, client cert).
    scheme: str = "http"
    grpc_credentials: grpc.ChannelCredentials | None = None
    # "https": the peer URL uses TLS (the --peer-* flags come through extra_args).
    peer_scheme: str = "http"
    # Loopback address for both URLs; multi-member clusters give each member its own
    # (127.0.0.10+i) so logs, URLs and partition rules read like distinct hosts.
    host: str = "127.0.0.1"
    # A learner serves only serializable reads, so readiness must probe with one.
    learner: bool = False
    # Set by `NetworkFaults.enroll`: the process joins this cgroup before exec so that
    # iptables can tell its connections apart from other members' (see NetworkFaults).
    net: "NetTag | None" = None

    # -- addresses

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.client.port}"

    @property
    def peer_url(self) -> str:
        return f"{self.peer_scheme}://{self.host}:{self.peer.port}"

    @property
    def endpoint(self) -> str:
        """host:port form used by etcdctl --endpoints and gRPC channels."""
        return f"{self.host}:{self.client.port}"

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
            return [etcd_binary(), *flags]
        return [sys.executable, "-m", "etcdpy", *flags]

    def env(self) -> dict[str, str]:
        """Child environment without ETCD_*/ETCDCTL_* (both servers read ETCD_* as flags)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
        if _FORK_SUPPORT_IS_OURS:
            env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
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
        preexec = _die_with_parent if self.net is None else _preexec_with_cgroup(self.net.procs_path)
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=self.env(),
                cwd=self.base_dir,
                start_new_session=True,
                preexec_fn=preexec,
            )
        _LIVE.add(self)

    def start(self, timeout: float = READY_TIMEOUT) -> None:
        """Spawn and wait until the member serves a linearizable read."""
        self.spawn()
        self.wait_ready(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client_channel(self) -> grpc.Channel:
        """A new channel to the client URL: TLS with `grpc_credentials` for an https member."""
        if self.grpc_credentials is not None:
            return grpc.secure_channel(self.endpoint, self.grpc_credentials)
        return grpc.insecure_channel(self.endpoint)

    def wait_ready(self, timeout: float = READY_TIMEOUT, serializable: bool | None = None) -> None:
        """Poll a linearizable gRPC Range until it succeeds (leader known, applied up to date).

        Fails fast, with the log tail, if the process exits meanwhile. A learner
        (``self.learner``, or ``serializable=True``) is probed with a serializable
        Range instead: it refuses linearizable ones by design.
        """
        if serializable is None:
            serializable = self.learner
        deadline = time.monotonic() + timeout
        channel = self.client_channel()
        last: BaseException | None = None
        try:
            while True:
                if not self.running():
                    raise MemberStartError(
                        f"member {self.name} exited with {self.proc.returncode if self.proc else None} "
                        f"before becoming ready\n{self.log_tail()}"
                    )
                try:
                    _raw_range(
                        channel,
                        b"health",
                        timeout=min(2.0, max(0.1, deadline - time.monotonic())),
                        serializable=serializable,
                    )
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


def member_host(index: int) -> str:
    """Loopback address of member ``index`` in a multi-member cluster: 127.0.0.(10+index).

    Linux routes all of 127.0.0.0/8 to ``lo``, so no setup is needed; distinct
    addresses make URLs, logs and partition rules read like distinct hosts.
    """
    if not 0 <= index < 240:
        raise ValueError(f"member index {index} out of range for 127.0.0.10-249")
    return f"127.0.0.{10 + index}"


class Cluster:
    """N members started together with one ``--initial-cluster``.

    Every process is spawned first, then readiness is awaited (a lone member of a
    3-member cluster cannot elect a leader, so waiting one by one would deadlock).

    Multi-member clusters put member i on 127.0.0.(10+i) (``distinct_hosts``, default
    on for size > 1). With ``net`` (a `NetworkFaults`), each member runs in its own
    cgroup so `partition` can cut peer traffic between chosen members with iptables.
    Membership changes: `add_member` (``etcdctl member add`` then a start with
    ``--initial-cluster-state existing``), `remove_member`, `member_id`.
    """

    def __init__(
        self,
        base_dir: Path,
        size: int = 1,
        extra_args: Sequence[str] = (),
        token: str | None = None,
        target_name: str | None = None,
        distinct_hosts: bool | None = None,
        net: "NetworkFaults | None" = None,
        peer_scheme: str = "http",
        member_args: Callable[[str, str], Sequence[str]] | None = None,
    ) -> None:
        """``peer_scheme="https"`` gives members https peer URLs; ``member_args(name, host)``
        returns per-member flags appended after ``extra_args`` (e.g. each member's certificate)."""
        self.base_dir = Path(base_dir)
        self.peer_scheme = peer_scheme
        self.member_args = member_args
        self.size = size
        self.extra_args = list(extra_args)
        self.token = token or f"etcdpy-test-{os.getpid()}-{random.SystemRandom().randrange(1 << 30)}"
        self.target = target_name or target()
        self.distinct_hosts = size > 1 or net is not None if distinct_hosts is None else distinct_hosts
        self.net = net
        self.members: list[Member] = []
        # Members taken out by `remove_member`: no longer part of the cluster, but
        # still ours to kill and release at teardown.
        self.removed: list[Member] = []
        self._next_index = 0

    def _new_member(self, name: str, state: str = "new", learner: bool = False) -> Member:
        """A Member on the next loopback host with fresh ports (not started)."""
        index = self._next_index
        self._next_index += 1
        host = member_host(index) if self.distinct_hosts else "127.0.0.1"
        m = Member(
            name=name,
            base_dir=self.base_dir / name,
            client=reserve_port(host=host),
            peer=reserve_port(host=host),
            initial_cluster_state=state,
            initial_cluster_token=self.token,
            extra_args=[*self.extra_args, *(self.member_args(name, host) if self.member_args else ())],
            target=self.target,
            host=host,
            learner=learner,
            peer_scheme=self.peer_scheme,
        )
        if self.net is not None:
            self.net.enroll(m)
        return m

    def _make_members(self) -> None:
        self.members = []
        self._next_index = 0
        for i in range(self.size):
            self.members.append(self._new_member(f"m{i}"))
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
        """Kill everything, free the ports and (with `net`) drop the members' cgroups and rules."""
        for m in [*self.members, *self.removed]:
            m.release()
            if self.net is not None:
                self.net.unenroll(m)

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def running(self) -> list[Member]:
        """Members whose process is alive (a killed or stopped member is left out)."""
        return [m for m in self.members if m.running()]

    def etcdctl(self, *args: str, **kwargs: Any) -> Any:
        """etcdctl with all endpoints (the client picks one)."""
        return Etcdctl(self.endpoints)(*args, **kwargs)

    def status(self, m: Member, timeout: float = 3.0) -> dict[str, Any] | None:
        """``etcdctl endpoint status`` of one member (its ``Status`` dict), or None when it does not answer.

        Why per member with short timeouts: while polling for an election, one dead
        or isolated member must not make the whole probe fail or stall.
        """
        if not m.running():
            return None
        ctl = Etcdctl([m.endpoint], timeout=timeout + 5)
        try:
            out = ctl("endpoint", "status", "--dial-timeout=1s", f"--command-timeout={timeout}s")
        except (EtcdctlError, subprocess.TimeoutExpired, ValueError):
            return None
        if not out:
            return None
        return out[0]["Status"]

    def leader(self, timeout: float = 10.0, among: Sequence[Member] | None = None) -> Member:
        """The member that every running member (or every one of ``among``) agrees is leader."""

        def find() -> Member | None:
            group = [m for m in (among if among is not None else self.members) if m.running()]
            statuses = [self.status(m) for m in group]
            if not group or any(s is None for s in statuses):
                return None
            leaders = {s["leader"] for s in statuses if s is not None}
            if len(leaders) != 1 or 0 in leaders:
                return None
            leader_id = leaders.pop()
            for m, s in zip(group, statuses):
                if s is not None and s["header"]["member_id"] == leader_id:
                    return m
            return None

        return wait_until(find, timeout, "a leader agreed by all members")

    # -- membership

    def reconfigure(self, *args: str, via: Sequence[Member] | None = None, timeout: float = 20.0) -> Any:
        """Run a membership etcdctl command, retrying while etcd calls the cluster unhealthy.

        Why retry: with strict reconfig checks (the default) etcd refuses member add
        and remove with "etcdserver: unhealthy cluster" until the leader has been
        connected to every voting member for 5 s (HealthInterval) — right after a
        start, a restart or a healed partition. Any other error is raised at once.
        """
        ctl = Etcdctl([x.endpoint for x in (via or self.running())])
        deadline = time.monotonic() + timeout
        while True:
            try:
                return ctl(*args)
            except EtcdctlError as exc:
                if "unhealthy cluster" not in exc.message or time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)

    def member_list(self, via: Sequence[Member] | None = None) -> list[dict[str, Any]]:
        """``etcdctl member list`` members (ID, name, peerURLs, clientURLs, isLearner)."""
        eps = [m.endpoint for m in (via or self.running())]
        return Etcdctl(eps)("member", "list").get("members", [])

    def member_id(self, m: Member) -> int:
        """The raft member id of ``m``, found by its peer URL in the member list."""
        for entry in self.member_list(via=[x for x in self.running() if x is not m] or None):
            if m.peer_url in entry.get("peerURLs", []):
                return int(entry["ID"])
        raise KeyError(f"member {m.name} ({m.peer_url}) is not in the member list")

    def add_member(
        self,
        name: str | None = None,
        learner: bool = False,
        start: bool = True,
        timeout: float = READY_TIMEOUT,
    ) -> Member:
        """``etcdctl member add`` a new member, then (``start``) start it with state ``existing``.

        Its ``--initial-cluster`` lists the membership that member add returned (every
        current member plus the new one), which is what etcd validates a joining
        member against. With ``start=False`` the caller starts it (``m.start()``) —
        for instance to observe a learner that is not caught up.
        """
        m = self._new_member(name or f"m{self._next_index}", state="existing", learner=learner)
        args = ["member", "add", m.name, f"--peer-urls={m.peer_url}"]
        if learner:
            args.append("--learner")
        try:
            out = self.reconfigure(*args)
        except BaseException:
            m.release()
            if self.net is not None:
                self.net.unenroll(m)
            raise
        names = {x.peer_url: x.name for x in [*self.members, m]}
        pairs = []
        for entry in out["members"]:
            for url in entry.get("peerURLs", []):
                pairs.append(f"{entry.get('name') or names.get(url, 'unknown')}={url}")
        m.initial_cluster = ",".join(pairs)
        self.members.append(m)
        if start:
            shutil.rmtree(m.base_dir, ignore_errors=True)
            m.start(timeout)
        return m

    def remove_member(self, m: Member) -> int:
        """``etcdctl member remove`` ``m`` (asked of the other members); returns its id.

        The process is left alone: etcd stops a removed member by itself, and tests
        assert that. ``m`` moves from `members` to `removed`.
        """
        member_id = self.member_id(m)
        self.reconfigure("member", "remove", f"{member_id:x}", via=[x for x in self.running() if x is not m])
        self.members.remove(m)
        self.removed.append(m)
        return member_id

    # -- network faults

    def partition(self, side: Sequence[Member], other: Sequence[Member] | None = None) -> "Partition":
        """A context manager cutting peer traffic between ``side`` and ``other`` (default: everyone else).

        Client traffic is untouched, so a test can still talk to both sides.
        Raises `NetworkFaultsUnavailable` when the cluster was made without ``net``.
        """
        if self.net is None:
            raise NetworkFaultsUnavailable("cluster was created without network fault support (net=None)")
        if other is None:
            other = [m for m in self.members if m not in side]
        return Partition(self.net, list(side), list(other))

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- network faults

IPTABLES_CHAIN = "ETCDPY-TEST"
_RULE_COMMENT = "etcdpy-test"
_CGROUP_TOP = "etcdpy-test"


class NetworkFaultsUnavailable(RuntimeError):
    """iptables/cgroup partitions cannot be made here (not root, missing tools, no cgroup2...)."""


@dataclass(frozen=True)
class NetTag:
    """How iptables recognises one member's connections.

    ``cgroup`` is the member's cgroup (path relative to the cgroup2 root, as
    ``-m cgroup --path`` wants it) and ``procs_path`` its ``cgroup.procs``; every
    connection the member opens is stamped with connmark ``mark`` (its peer port,
    unique thanks to the port locks).
    """

    cgroup: str
    procs_path: str
    mark: int


def _cgroup2_root() -> Path | None:
    """Mount point of the cgroup2 hierarchy, if it is mounted at its root."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split()[:1] == ["cgroup2"] and len(fields) >= 5 and fields[3] == "/":
            return Path(fields[4])
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class NetworkFaults:
    """Network partitions between members of a loopback cluster, with iptables.

    The obvious rule — drop packets between member A's and member B's addresses —
    does not work on loopback: a member dialing 127.0.0.12 gets source address
    127.0.0.1 (the kernel picks the route's preferred source; etcd does not bind
    its dialer), so a packet's source address does not say which member sent it.
    What does identify the sender is the process, so:

    1. each member runs in its own cgroup v2 (`enroll`, joined before exec);
    2. a rule in the dedicated chain ``ETCDPY-TEST`` (jumped to from OUTPUT: every
       loopback packet traverses OUTPUT exactly once, and only there is the sending
       socket's cgroup known) stamps each connection a member *opens* with a
       conntrack mark = that member's peer port;
    3. a partition between A and B adds, for each direction, one DROP rule matching
       "connection opened by A (connmark) to B's peer address and port (conntrack
       original destination)". Matching on conntrack state drops *both* directions
       of those connections, including ones established before the partition, and
       matching B's peer port leaves all client traffic (tests → members) alone.

    Every rule carries the comment ``etcdpy-test pid=<our pid>``: `cleanup_leftovers`
    deletes rules and cgroups left by dead pytest processes, `close` deletes ours and
    removes the chain once no other live run uses it. Chain edits are serialised
    with an flock so concurrent test runs do not race on creating or removing it.
    """

    def __init__(self, iptables: str | None = None) -> None:
        self.iptables = iptables or shutil.which("iptables") or "/usr/sbin/iptables"
        self.pid = os.getpid()
        self._reason: str | None = None
        self._probed = False
        self._root = _cgroup2_root()
        self._rules: list[list[str]] = []
        self._tags: dict[int, NetTag] = {}  # id(member) -> tag
        self._seq = 0
        PORT_LOCK_DIR.mkdir(parents=True, exist_ok=True)
        self._lock_path = PORT_LOCK_DIR / "iptables.lock"

    # -- low level

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _ipt(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([self.iptables, "-w", "10", *args], capture_output=True, text=True, timeout=30)
        if check and proc.returncode != 0:
            raise NetworkFaultsUnavailable(f"iptables {' '.join(args)} failed: {proc.stderr.strip() or proc.returncode}")
        return proc

    def _comment(self, what: str) -> list[str]:
        return ["-m", "comment", "--comment", f"{_RULE_COMMENT} pid={self.pid} {what}"]

    def _ensure_chain(self) -> None:
        """Create the chain and its jump from OUTPUT if missing (call with the lock held)."""
        if self._ipt("-S", IPTABLES_CHAIN, check=False).returncode != 0:
            self._ipt("-N", IPTABLES_CHAIN)
        if self._ipt("-C", "OUTPUT", "-j", IPTABLES_CHAIN, check=False).returncode != 0:
            self._ipt("-I", "OUTPUT", "1", "-j", IPTABLES_CHAIN)

    def _drop_chain_if_unused(self) -> None:
        """Remove the jump and the chain when no rule is left in it (call with the lock held)."""
        out = self._ipt("-S", IPTABLES_CHAIN, check=False)
        if out.returncode == 0 and not [x for x in out.stdout.splitlines() if x.startswith("-A ")]:
            while self._ipt("-D", "OUTPUT", "-j", IPTABLES_CHAIN, check=False).returncode == 0:
                pass
            self._ipt("-X", IPTABLES_CHAIN, check=False)

    def _add_rule(self, spec: list[str], first: bool = False) -> list[str]:
        """Add a rule (creating the chain if needed) under the lock, so that another run's
        cleanup cannot delete the chain between its creation and our first rule."""
        with self._locked():
            self._ensure_chain()
            if first:
                self._ipt("-I", IPTABLES_CHAIN, "1", *spec)
            else:
                self._ipt("-A", IPTABLES_CHAIN, *spec)
        self._rules.append(spec)
        return spec

    def _delete_rule(self, spec: list[str]) -> None:
        self._ipt("-D", IPTABLES_CHAIN, *spec, check=False)
        with contextlib.suppress(ValueError):
            self._rules.remove(spec)

    def _new_cgroup(self, label: str) -> tuple[str, Path]:
        assert self._root is not None
        self._seq += 1
        rel = f"{_CGROUP_TOP}/{self.pid}/{self._seq}-{label}"
        path = self._root / rel
        path.mkdir(parents=True, exist_ok=True)
        return rel, path

    # -- availability

    def unavailable_reason(self) -> str | None:
        """None when partitions work here; otherwise why not. Probed once, end to end."""
        if not self._probed:
            self._probed = True
            try:
                self._reason = self._probe()
            except (NetworkFaultsUnavailable, OSError, subprocess.SubprocessError) as exc:
                self._reason = str(exc)
        return self._reason

    def available(self) -> bool:
        return self.unavailable_reason() is None

    def require(self) -> None:
        """Raise `NetworkFaultsUnavailable` with the reason unless partitions work."""
        reason = self.unavailable_reason()
        if reason is not None:
            raise NetworkFaultsUnavailable(reason)

    def _probe(self) -> str | None:
        """Check every ingredient, then prove a DROP works on a real connection.

        Why end to end: iptables may exist but lack the cgroup/connmark matches (or
        run against a backend the kernel lacks); only a real blocked connect shows
        the rules are effective, and a second unblocked connect shows they are
        selective.
        """
        if os.geteuid() != 0:
            return "network partitions need root (iptables and cgroups)"
        if not Path(self.iptables).exists():
            return f"iptables not found ({self.iptables}); apt-get install iptables"
        if self._root is None:
            return "no cgroup2 hierarchy mounted at its root (needed to tell members' connections apart)"
        self.cleanup_leftovers()
        listener_port = reserve_port(host="127.0.0.2")
        with socket.socket() as listener:
            listener.bind(("127.0.0.2", listener_port.port))
            listener.listen(8)
            rel, path = self._new_cgroup("probe")
            tag = NetTag(rel, str(path / "cgroup.procs"), listener_port.port)
            mark_rule = self._mark_rule(tag)
            drop_rule = self._drop_rule(tag, "127.0.0.2", listener_port.port)
            try:
                self._add_rule(mark_rule, first=True)
                self._add_rule(drop_rule)
                code = (
                    "import socket,sys\n"
                    "s=socket.socket(); s.settimeout(0.5)\n"
                    "try:\n s.connect(('127.0.0.2', int(sys.argv[1])))\nexcept OSError:\n sys.exit(3)\n"
                    "sys.exit(0)\n"
                )
                blocked = subprocess.run(
                    [sys.executable, "-c", code, str(listener_port.port)],
                    preexec_fn=_preexec_with_cgroup(tag.procs_path),
                    timeout=30,
                ).returncode
                with socket.create_connection(("127.0.0.2", listener_port.port), timeout=2):
                    pass
            finally:
                self._delete_rule(drop_rule)
                self._delete_rule(mark_rule)
                with contextlib.suppress(OSError):
                    path.rmdir()
                listener_port.release()
        if blocked != 3:
            return f"iptables rules installed but a probe connection was not dropped (exit {blocked})"
        return None

    # -- rules

    def _mark_rule(self, tag: NetTag) -> list[str]:
        return [
            "-m", "cgroup", "--path", tag.cgroup,
            "-m", "conntrack", "--ctstate", "NEW",
            *self._comment(f"mark {tag.mark}"),
            "-j", "CONNMARK", "--set-xmark", f"{tag.mark:#x}/0xffff",
        ]  # fmt: skip

    def _drop_rule(self, opener: NetTag, host: str, port: int) -> list[str]:
        return [
            "-p", "tcp",
            "-m", "connmark", "--mark", f"{opener.mark:#x}/0xffff",
            "-m", "conntrack", "--ctorigdst", host, "--ctorigdstport", str(port),
            *self._comment(f"drop {opener.mark}->{host}:{port}"),
            "-j", "DROP",
        ]  # fmt: skip

    # -- members

    def enroll(self, m: Member) -> None:
        """Give ``m`` its own cgroup and connection mark (before its first start)."""
        self.require()
        rel, path = self._new_cgroup(m.name)
        tag = NetTag(rel, str(path / "cgroup.procs"), m.peer.port)
        self._add_rule(self._mark_rule(tag), first=True)
        self._tags[id(m)] = tag
        m.net = tag

    def unenroll(self, m: Member) -> None:
        """Remove ``m``'s mark rule and cgroup (after its process is gone)."""
        tag = self._tags.pop(id(m), None)
        if tag is None:
            return
        self._delete_rule(self._mark_rule(tag))
        with contextlib.suppress(OSError):
            Path(tag.procs_path).parent.rmdir()
        m.net = None

    def block(self, a: Member, b: Member) -> list[list[str]]:
        """Drop all peer traffic between ``a`` and ``b`` (both directions); returns the rules."""
        rules = []
        for opener, dest in ((a, b), (b, a)):
            if opener.net is None:
                raise NetworkFaultsUnavailable(f"member {opener.name} is not enrolled for network faults")
            rules.append(self._add_rule(self._drop_rule(opener.net, dest.host, dest.peer.port)))
        return rules

    def unblock(self, rules: Sequence[list[str]]) -> None:
        for spec in rules:
            self._delete_rule(spec)

    # -- housekeeping

    def cleanup_leftovers(self) -> int:
        """Delete rules and cgroups left behind by pytest processes that no longer exist."""
        removed = 0
        with self._locked():
            out = self._ipt("-S", IPTABLES_CHAIN, check=False)
            for line in out.stdout.splitlines():
                if not line.startswith(f"-A {IPTABLES_CHAIN} ") or f"{_RULE_COMMENT} pid=" not in line:
                    continue
                pid_text = line.split(f"{_RULE_COMMENT} pid=", 1)[1].split()[0].strip('"')
                if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                    self._ipt("-D", *shlex.split(line)[1:], check=False)
                    removed += 1
            self._drop_chain_if_unused()
        if self._root is not None and (self._root / _CGROUP_TOP).is_dir():
            for run_dir in (self._root / _CGROUP_TOP).iterdir():
                if run_dir.name.isdigit() and not _pid_alive(int(run_dir.name)):
                    for sub in run_dir.iterdir():
                        if sub.is_dir():
                            with contextlib.suppress(OSError):
                                sub.rmdir()
                    with contextlib.suppress(OSError):
                        run_dir.rmdir()
        return removed

    def close(self) -> None:
        """Delete every rule and cgroup of this run; drop the chain if no one else uses it."""
        for spec in list(self._rules):
            self._delete_rule(spec)
        if self._root is not None:
            run_dir = self._root / _CGROUP_TOP / str(self.pid)
            if run_dir.is_dir():
                for sub in run_dir.iterdir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
                with contextlib.suppress(OSError):
                    run_dir.rmdir()
            with contextlib.suppress(OSError):
                (self._root / _CGROUP_TOP).rmdir()
        if not Path(self.iptables).exists() or os.geteuid() != 0:
            return
        with self._locked():
            self._drop_chain_if_unused()


class Partition:
    """Context manager: no peer traffic between two groups of members while inside.

    Installs the DROP rules on enter and always removes them on exit (also on
    exceptions); `heal` ends the partition early. ``started``/``healed`` are the
    monotonic times the rules went in and out, for checks on what happened
    "during" the partition.
    """

    def __init__(self, net: NetworkFaults, side: Sequence[Member], other: Sequence[Member]) -> None:
        overlap = {m.name for m in side} & {m.name for m in other}
        if overlap:
            raise ValueError(f"members on both sides of a partition: {sorted(overlap)}")
        self.net = net
        self.side = list(side)
        self.other = list(other)
        self.rules: list[list[str]] = []
        self.started: float | None = None
        self.healed: float | None = None

    def __enter__(self) -> "Partition":
        self.net.require()
        try:
            for a in self.side:
                for b in self.other:
                    self.rules.extend(self.net.block(a, b))
        except BaseException:
            self.heal()
            raise
        self.started = time.monotonic()
        return self

    def heal(self) -> None:
        """Remove the rules (idempotent)."""
        if self.rules:
            self.net.unblock(self.rules)
            self.rules = []
        if self.started is not None and self.healed is None:
            self.healed = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.heal()
