"""Start-up failures end with one line on stderr and a non-zero exit, never a traceback.

What "one line" means for etcdpy: its structured log lines (JSON) may come first, then
exactly one plain line, `etcdpy: <why>`, and nothing from Python or gRPC's C core
(a traceback, or a glog-style `E1203 09:53:49.19 ... add_port.cc` line). Where real
etcd fails the same way (a port in use), the test also runs against it; where it does
not (etcd runs on its own data dir, and waits for a locked one), the case is
etcdpy-only and says so.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Member, etcd_binary, reserve_port, target
from test_cli import _flags, _run

GRPC_CORE_LINE = re.compile(r"^[EWIF]\d{4} \d\d:\d\d:\d\d")


def plain_lines(stderr: str) -> list[str]:
    """stderr without etcdpy's JSON log lines: what a person sees as the error."""
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                json.loads(line)
                continue
            except ValueError:
                pass
        if line.strip():
            out.append(line)
    return out


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Non-zero exit and exactly one plain `etcdpy: ...` line holding every needle."""
    assert proc.returncode != 0, proc.stderr
    lines = plain_lines(proc.stderr)
    assert not any(GRPC_CORE_LINE.match(line) for line in lines), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("etcdpy: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@contextlib.contextmanager
def _busy_port() -> Iterator[int]:
    """A loopback port some other program listens on, for the test's duration."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield busy.getsockname()[1]


@pytest.mark.parametrize("which", ["peer", "client"])
def test_port_in_use(tmp_path: Path, which: str) -> None:
    """Both servers refuse before creating the data dir; etcdpy prints one line and no gRPC core line."""
    other = reserve_port()
    try:
        with _busy_port() as port:
            client, peer = (other.port, port) if which == "peer" else (port, other.port)
            proc = _run(_flags(tmp_path, client, peer), tmp_path)
    finally:
        other.release()
    assert proc.returncode != 0
    assert f"listen tcp 127.0.0.1:{port}: bind: address already in use" in proc.stderr
    assert not (tmp_path / "data").exists()
    if target() == "etcdpy":
        assert_one_line(proc, f"listen tcp 127.0.0.1:{port}: bind: address already in use")


def _etcd_data_dir(tmp_path: Path) -> Path:
    """A data dir written by the reference etcd 3.5.1: started once, stopped gracefully."""
    if not Path(etcd_binary()).exists():
        pytest.skip(f"no reference etcd at {etcd_binary()}")
    m = Member(name="default", base_dir=tmp_path / "etcd", client=reserve_port(), peer=reserve_port(), target="etcd")
    try:
        m.start()
        m.etcdctl("put", "k", "v")
        m.stop()
    finally:
        m.release()
    assert (m.data_dir / "member" / "snap" / "db").is_file()
    return m.data_dir


@pytest.mark.skipif(target() != "etcdpy", reason="real etcd runs on its own data dir; the refusal is etcdpy's")
def test_data_dir_written_by_etcd(tmp_path: Path) -> None:
    data = _etcd_data_dir(tmp_path)
    before = sorted(p.name for p in (data / "member").rglob("*"))
    client, peer = reserve_port(), reserve_port()
    try:
        proc = _run([*_flags(tmp_path, client.port, peer.port)[1:], f"--data-dir={data}"], tmp_path)
    finally:
        client.release()
        peer.release()
    assert_one_line(proc, "written by etcd", "bbolt")
    assert sorted(p.name for p in (data / "member").rglob("*")) == before  # nothing touched


@pytest.mark.skipif(target() != "etcdpy", reason="real etcd reads its own WAL; the refusal is etcdpy's")
def test_wal_written_by_etcd(tmp_path: Path) -> None:
    """etcd's WAL without its backend (so the bbolt check cannot catch it): the WAL's CRC says no."""
    data = _etcd_data_dir(tmp_path)
    (data / "member" / "snap" / "db").unlink()
    client, peer = reserve_port(), reserve_port()
    try:
        proc = _run([*_flags(tmp_path, client.port, peer.port)[1:], f"--data-dir={data}"], tmp_path)
    finally:
        client.release()
        peer.release()
    assert_one_line(proc, "cannot read the WAL", "CRC")


@pytest.mark.skipif(
    target() != "etcdpy",
    reason="etcd 3.5.1 waits for the flock of a data dir in use ('db file is flocked by another process') "
    "instead of failing; etcdpy refuses at once",
)
def test_data_dir_in_use_by_another_etcdpy(fresh_member: Member, tmp_path: Path) -> None:
    client, peer = reserve_port(), reserve_port()
    try:
        proc = _run([*_flags(tmp_path, client.port, peer.port)[1:], f"--data-dir={fresh_member.data_dir}"], tmp_path)
    finally:
        client.release()
        peer.release()
    assert_one_line(proc, "in use by another process")
    assert fresh_member.running()
    fresh_member.etcdctl("put", "still", "serving")


def test_stale_lock_of_a_dead_process_is_no_obstacle(tmp_path: Path) -> None:
    """A SIGKILLed member leaves RocksDB's LOCK file behind; the flock died with it, so a restart works."""
    m = Member(name="default", base_dir=tmp_path / "m", client=reserve_port(), peer=reserve_port())
    try:
        m.start()
        m.etcdctl("put", "k", "v")
        m.kill()
        m.start()
        assert m.etcdctl("get", "k")["kvs"][0]["value"] == "dg=="  # base64 "v"
    finally:
        m.stop()
        m.release()
        shutil.rmtree(m.base_dir, ignore_errors=True)


@pytest.mark.skipif(target() != "etcdpy", reason="etcdpy's own environment settings")
@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"ETCDPY_SWITCH_INTERVAL": "fast"}, "ETCDPY_SWITCH_INTERVAL must be a number of seconds in (0, 1]"),
        ({"ETCDPY_CLIENT_FRONT": "bogus"}, "ETCDPY_CLIENT_FRONT must be one of inproc, process, off, got 'bogus'"),
        ({"ETCDPY_STREAM_SERVER": "x"}, "ETCDPY_STREAM_SERVER must be one of h2, grpcio, got 'x'"),
        ({"ETCDPY_GRPC_SERVER": "fast"}, "--experimental-grpc-server must be one of grpcio, native, got 'fast'"),
        ({"ETCDPY_GC": "off"}, "ETCDPY_GC must be one of tuned, default, got 'off'"),
        ({"ETCDPY_EVENT_LOOP": "trio"}, "ETCDPY_EVENT_LOOP must be one of uvloop, asyncio, got 'trio'"),
    ],
)
def test_a_bad_environment_setting(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    """A typo in an ETCDPY_ variable stops the member before it touches anything, in one line."""
    client, peer = reserve_port(), reserve_port()
    try:
        proc = _run(_flags(tmp_path, client.port, peer.port), tmp_path, env=env)
    finally:
        client.release()
        peer.release()
    assert_one_line(proc, needle)
    assert not (tmp_path / "data").exists()
