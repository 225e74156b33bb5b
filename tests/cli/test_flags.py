"""etcd 3.5's command line on real processes: Go-style flags, flags without effect here,
--config-file (and its rule that it replaces flags and ETCD_*), --wal-dir / ETCD_WAL_DIR,
--log-outputs, the ETCD_* warnings and errors, -version and --help.

Each case runs against real etcd 3.5.1 too (ETCDPY_TEST_TARGET=etcd) where etcd's
behaviour is comparable, so the flags and messages asserted are etcd's own.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Member, PortReservation, reserve_port, target
from test_cli import _env, _run, _server_cmd

ETCDPY_ONLY = "etcdpy's own output"


@pytest.fixture
def ports() -> Iterator[tuple[PortReservation, PortReservation]]:
    client, peer = reserve_port(), reserve_port()
    yield client, peer
    client.release()
    peer.release()


def _start(
    args: list[str], tmp_path: Path, ports: tuple[PortReservation, PortReservation], name: str,
    env: dict[str, str] | None = None,
) -> tuple[Member, subprocess.Popen[bytes]]:
    """Run the server with exactly `args` and wait until it serves (a Member wraps the process)."""
    client, peer = ports
    proc = subprocess.Popen(_server_cmd() + args, cwd=tmp_path, env=_env(env), stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "stderr.log", "wb"))  # noqa: SIM115 - closed with the process
    m = Member(name=name, base_dir=tmp_path / "m", client=client, peer=peer)
    m.proc = proc  # type: ignore[assignment]
    m.wait_ready()
    return m, proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _urls(ports: tuple[PortReservation, PortReservation]) -> tuple[str, str]:
    return f"http://127.0.0.1:{ports[0].port}", f"http://127.0.0.1:{ports[1].port}"


def test_go_style_single_dash_flags(tmp_path: Path, ports: tuple[PortReservation, PortReservation]) -> None:
    curl, purl = _urls(ports)
    args = ["-name", "go", f"-data-dir={tmp_path / 'd'}", "-listen-client-urls", curl, f"-advertise-client-urls={curl}",
            "-listen-peer-urls", purl, "-initial-advertise-peer-urls", purl, f"-initial-cluster=go={purl}"]
    m, proc = _start(args, tmp_path, ports, "go")
    try:
        assert [x["name"] for x in m.etcdctl("member", "list")["members"]] == ["go"]
    finally:
        _stop(proc)


# What kubeadm, Helm charts and systemd units pass, beyond what etcdpy acts on.
COMPAT_FLAGS = [
    "--max-wals=10", "--max-snapshots=3", "--enable-v2=false", "--strict-reconfig-check=true", "--pre-vote",
    "--logger=zap", "--log-outputs=stderr", "--grpc-keepalive-min-time=5s", "--grpc-keepalive-interval=2h",
    "--socket-reuse-address=false", "--backend-bbolt-freelist-type=map", "--metrics=basic",
    "--experimental-initial-corrupt-check=true", "--experimental-watch-progress-notify-interval=5s",
    "--experimental-enable-lease-checkpoint=false", "--initial-election-tick-advance=true", "--cors=*",
    "--unsafe-no-fsync=false", "--experimental-compaction-batch-limit=1000",
]


def test_etcd_flags_without_effect_start_the_member(
    tmp_path: Path, ports: tuple[PortReservation, PortReservation]
) -> None:
    curl, purl = _urls(ports)
    args = ["--name=c", f"--data-dir={tmp_path / 'd'}", f"--listen-client-urls={curl}", f"--advertise-client-urls={curl}",
            f"--listen-peer-urls={purl}", f"--initial-advertise-peer-urls={purl}", f"--initial-cluster=c={purl}",
            *COMPAT_FLAGS]
    m, proc = _start(args, tmp_path, ports, "c")
    try:
        m.etcdctl("put", "k", "v")
    finally:
        _stop(proc)
    if target() == "etcdpy":
        notes = [json.loads(line) for line in (tmp_path / "stderr.log").read_text().splitlines()
                 if line.startswith("{") and "has no effect in etcdpy" in line]
        noted = sorted(n["flag"] for n in notes)
        # etcdpy already behaves as pre-vote, strict-reconfig-check, enable-v2=false... say: no note for those.
        assert noted == sorted(["backend-bbolt-freelist-type", "cors", "experimental-compaction-batch-limit",
                                "experimental-enable-lease-checkpoint", "grpc-keepalive-interval",
                                "grpc-keepalive-min-time", "max-snapshots", "max-wals", "metrics",
                                "socket-reuse-address", "unsafe-no-fsync"]), noted
        assert all(n["level"] == "warn" for n in notes)


def _config_yaml(path: Path, name: str, data: Path, curl: str, purl: str, extra: str = "") -> Path:
    path.write_text(
        f"name: {name}\n"
        f"data-dir: {data}\n"
        f"listen-client-urls: {curl}\n"
        f"advertise-client-urls: {curl}\n"
        f"listen-peer-urls: {purl}\n"
        f"initial-advertise-peer-urls: {purl}\n"
        f"initial-cluster: {name}={purl}\n"
        "initial-cluster-state: new\n"
        "initial-cluster-token: from-file\n"
        "heartbeat-interval: 100\n"
        "election-timeout: 1000\n"
        "snapshot-count: 10000\n"
        "enable-v2: false\n"
        "log-level: info\n"
        "log-outputs: [stderr]\n"
        "experimental-watch-progress-notify-interval: 5000000000\n"
        "client-transport-security:\n"
        "  client-cert-auth: false\n"
        + extra
    )
    return path


def test_config_file_replaces_flags_and_environment(
    tmp_path: Path, ports: tuple[PortReservation, PortReservation]
) -> None:
    """etcd's rule: with --config-file every other flag and ETCD_* variable is ignored."""
    curl, purl = _urls(ports)
    cfg = _config_yaml(tmp_path / "etcd.yaml", "fromfile", tmp_path / "filedata", curl, purl)
    args = [f"--config-file={cfg}", "--name=fromflag", f"--data-dir={tmp_path / 'flagdata'}"]
    m, proc = _start(args, tmp_path, ports, "fromfile", env={"ETCD_SNAPSHOT_COUNT": "not-a-number"})
    try:
        assert [x["name"] for x in m.etcdctl("member", "list")["members"]] == ["fromfile"]
        assert (tmp_path / "filedata" / "member").is_dir()
        assert not (tmp_path / "flagdata").exists()
    finally:
        _stop(proc)


def test_config_file_from_environment(tmp_path: Path, ports: tuple[PortReservation, PortReservation]) -> None:
    curl, purl = _urls(ports)
    cfg = _config_yaml(tmp_path / "etcd.yaml", "envfile", tmp_path / "envdata", curl, purl)
    m, proc = _start([], tmp_path, ports, "envfile", env={"ETCD_CONFIG_FILE": str(cfg)})
    try:
        assert [x["name"] for x in m.etcdctl("member", "list")["members"]] == ["envfile"]
    finally:
        _stop(proc)


@pytest.mark.parametrize(
    "content,needle",
    [
        ("name: [unclosed\n", "cannot parse config file"),
        ("- just\n- a list\n", "mapping"),
        ("heartbeat-interval: often\n", "heartbeat-interval"),
        (None, "cannot read config file"),
    ],
)
def test_bad_config_file_is_one_line(tmp_path: Path, content: str | None, needle: str) -> None:
    path = tmp_path / "etcd.yaml"
    if content is not None:
        path.write_text(content)
    proc = _run([f"--config-file={path}"], tmp_path)
    assert proc.returncode != 0
    assert not (tmp_path / "default.etcd").exists()
    if target() == "etcdpy":
        plain = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
        assert len(plain) == 1 and needle in plain[0], proc.stderr
        assert "Traceback" not in proc.stderr


def test_wal_dir_from_environment(tmp_path: Path, ports: tuple[PortReservation, PortReservation]) -> None:
    """ETCD_WAL_DIR puts the WAL there and nowhere in the data dir (etcd's --wal-dir)."""
    curl, purl = _urls(ports)
    wal = tmp_path / "wal"
    args = ["--name=w", f"--data-dir={tmp_path / 'd'}", f"--listen-client-urls={curl}", f"--advertise-client-urls={curl}",
            f"--listen-peer-urls={purl}", f"--initial-advertise-peer-urls={purl}", f"--initial-cluster=w={purl}"]
    m, proc = _start(args, tmp_path, ports, "w", env={"ETCD_WAL_DIR": str(wal)})
    try:
        m.etcdctl("put", "k", "v")
    finally:
        _stop(proc)
    assert any(p.suffix == ".wal" for p in wal.iterdir())
    assert not (tmp_path / "d" / "member" / "wal").exists()
    m2, proc2 = _start(args + [f"--wal-dir={wal}"], tmp_path, ports, "w")  # the flag, and a restart from it
    try:
        assert m2.etcdctl("get", "k")["kvs"][0]["value"] == "dg=="
    finally:
        _stop(proc2)


def test_log_outputs_to_a_file(tmp_path: Path, ports: tuple[PortReservation, PortReservation]) -> None:
    curl, purl = _urls(ports)
    log = tmp_path / "member.log"
    args = ["--name=l", f"--data-dir={tmp_path / 'd'}", f"--listen-client-urls={curl}", f"--advertise-client-urls={curl}",
            f"--listen-peer-urls={purl}", f"--initial-advertise-peer-urls={purl}", f"--initial-cluster=l={purl}",
            f"--log-outputs={log}"]
    _m, proc = _start(args, tmp_path, ports, "l")
    _stop(proc)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines and all({"level", "ts", "msg"} <= set(x) for x in lines)


def test_unknown_etcd_variable_is_warned(tmp_path: Path, ports: tuple[PortReservation, PortReservation]) -> None:
    curl, purl = _urls(ports)
    args = ["--name=u", f"--data-dir={tmp_path / 'd'}", f"--listen-client-urls={curl}", f"--advertise-client-urls={curl}",
            f"--listen-peer-urls={purl}", f"--initial-advertise-peer-urls={purl}", f"--initial-cluster=u={purl}"]
    _m, proc = _start(args, tmp_path, ports, "u", env={"ETCD_NO_SUCH_SETTING": "x"})
    _stop(proc)
    warnings = [json.loads(line) for line in (tmp_path / "stderr.log").read_text().splitlines()
                if "unrecognized environment variable" in line]
    assert [w["environment-variable"] for w in warnings] == ["ETCD_NO_SUCH_SETTING=x"]


def test_variable_shadowed_by_flag_is_refused(tmp_path: Path) -> None:
    proc = _run(["--name=flag"], tmp_path, {"ETCD_NAME": "env"})
    assert proc.returncode != 0
    assert "conflicting environment variable" in proc.stderr and "ETCD_NAME" in proc.stderr
    assert not (tmp_path / "flag.etcd").exists() and not (tmp_path / "env.etcd").exists()


def test_capnslog_logger_is_refused_as_in_etcd_35(tmp_path: Path) -> None:
    proc = _run(["--logger=capnslog"], tmp_path)
    assert proc.returncode != 0
    assert "--logger=capnslog is removed in v3.5" in proc.stderr


@pytest.mark.parametrize("flag", ["-version", "--version"])
def test_version_single_or_double_dash(tmp_path: Path, flag: str) -> None:
    proc = _run([flag], tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.startswith(("etcd Version: 3.5.", "etcdpy Version: ")), proc.stdout


@pytest.mark.skipif(target() != "etcdpy", reason=ETCDPY_ONLY)
def test_help_shows_defaults_subcommands_and_flags_without_effect(tmp_path: Path) -> None:
    proc = _run(["-h"], tmp_path)
    assert proc.returncode == 0
    out = proc.stdout
    for needle in ("etcdpy snapshot save|status|restore", "etcdpy bench", "--config-file",
                   "(default: 'http://localhost:2379')", "(default: '100000')", "[$ETCD_WAL_DIR]",
                   "--max-wals", "no effect in etcdpy"):
        assert needle in out, needle


@pytest.mark.skipif(target() != "etcdpy", reason="etcd bootstraps through the discovery service; etcdpy cannot")
def test_discovery_is_refused_not_ignored(tmp_path: Path) -> None:
    proc = _run(["--discovery=https://discovery.etcd.io/abc"], tmp_path)
    assert proc.returncode != 0
    plain = [line for line in proc.stderr.splitlines() if not line.startswith("{")]
    assert len(plain) == 1 and "--discovery" in plain[0] and "not supported" in plain[0], proc.stderr
