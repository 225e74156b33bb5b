"""The server command: flags, ETCD_* twins, failure modes and shutdown, on real processes.

Failure modes must end with one clear line and a non-zero exit before the data
dir is touched; a SIGTERM must stop the member cleanly with its data intact.
Where etcd behaves the same (non-zero exit), the test runs against both targets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import SERVER_SRC, Member, etcd_binary, reserve_port, target

ETCDPY_ONLY = pytest.mark.skipif(target() != "etcdpy", reason="etcdpy's own messages and flags")


def _server_cmd() -> list[str]:
    if target() == "etcd":
        return [etcd_binary()]
    return [sys.executable, "-m", "etcdpy"]


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["PYTHONPATH"] = str(SERVER_SRC)
    env.update(extra or {})
    return env


def _run(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _server_cmd() + args, cwd=tmp_path, env=_env(env), capture_output=True, text=True, timeout=60
    )


def _flags(tmp_path: Path, client_port: int, peer_port: int) -> list[str]:
    return [
        f"--data-dir={tmp_path / 'data'}",
        f"--listen-client-urls=http://127.0.0.1:{client_port}",
        f"--advertise-client-urls=http://127.0.0.1:{client_port}",
        f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
        f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
    ]


def test_unknown_flag_fails(tmp_path: Path) -> None:
    proc = _run(["--no-such-flag"], tmp_path)
    assert proc.returncode != 0
    assert "no-such-flag" in proc.stderr


@ETCDPY_ONLY
@pytest.mark.parametrize(
    "args,needle",
    [
        (["--snapshot-count=abc"], "--snapshot-count"),
        (["--listen-client-urls=ftp://127.0.0.1:1"], "scheme"),
        (["--initial-cluster-state=maybe"], "--initial-cluster-state"),
        (["--log-level=loud"], "--log-level"),
        (["--initial-cluster=nourl"], "--initial-cluster"),
    ],
)
def test_bad_flag_value_is_one_line_and_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    proc = _run(args, tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not (tmp_path / "default.etcd").exists()


@ETCDPY_ONLY
def test_bad_env_value_names_the_variable(tmp_path: Path) -> None:
    proc = _run([], tmp_path, {"ETCD_MAX_REQUEST_BYTES": "lots"})
    assert proc.returncode == 2
    assert "ETCD_MAX_REQUEST_BYTES" in proc.stderr


def test_client_port_in_use_fails(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    peer = reserve_port()
    try:
        proc = _run(_flags(tmp_path, port, peer.port), tmp_path)
    finally:
        busy.close()
        peer.release()
    assert proc.returncode != 0
    assert "address already in use" in proc.stderr
    if target() == "etcdpy":
        assert proc.stderr.strip().count("\n") == 0 or "address already in use" in proc.stderr.strip().splitlines()[-1]


def test_data_dir_that_is_a_file_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    client, peer = reserve_port(), reserve_port()
    try:
        proc = _run(_flags(tmp_path, client.port, peer.port), tmp_path)
    finally:
        client.release()
        peer.release()
    assert proc.returncode != 0
    assert blocker.read_text() == "not a directory"
    if target() == "etcdpy":
        assert "data directory" in proc.stderr.strip().splitlines()[-1]


def test_environment_twins_configure_the_member(tmp_path: Path) -> None:
    """ETCD_NAME / ETCD_DATA_DIR / ETCD_LISTEN_CLIENT_URLS ... work like their flags."""
    client, peer = reserve_port(), reserve_port()
    curl, purl = f"http://127.0.0.1:{client.port}", f"http://127.0.0.1:{peer.port}"
    env = _env(
        {
            "ETCD_NAME": "envname",
            "ETCD_DATA_DIR": str(tmp_path / "envdata"),
            "ETCD_LISTEN_CLIENT_URLS": curl,
            "ETCD_ADVERTISE_CLIENT_URLS": curl,
            "ETCD_LISTEN_PEER_URLS": purl,
            "ETCD_INITIAL_ADVERTISE_PEER_URLS": purl,
            "ETCD_INITIAL_CLUSTER": f"envname={purl}",
        }
    )
    proc = subprocess.Popen(_server_cmd(), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    m = Member(name="envname", base_dir=tmp_path / "m", client=client, peer=peer)
    m.proc = proc  # type: ignore[assignment]
    try:
        m.wait_ready()
        members = m.etcdctl("member", "list")["members"]
        assert [x["name"] for x in members] == ["envname"]
        assert members[0]["clientURLs"] == [curl]
        assert (tmp_path / "envdata" / "member" / "wal").is_dir()
    finally:
        proc.kill()
        proc.wait()
        client.release()
        peer.release()


def test_sigterm_stops_cleanly_and_keeps_data(fresh_member: Member) -> None:
    fresh_member.etcdctl("put", "survivor", "yes")
    assert fresh_member.proc is not None
    fresh_member.proc.send_signal(signal.SIGTERM)
    rc = fresh_member.proc.wait(30)
    # etcd re-raises the signal once it has shut down cleanly; etcdpy exits 0.
    assert rc == (0 if target() == "etcdpy" else -signal.SIGTERM)
    fresh_member.start()
    assert fresh_member.etcdctl("get", "survivor")["kvs"][0]["value"] == "eWVz"  # base64 "yes"


@ETCDPY_ONLY
def test_version_flag(tmp_path: Path) -> None:
    proc = _run(["--version"], tmp_path)
    assert proc.returncode == 0
    assert "3.5." in proc.stdout
