"""`etcdpy snapshot restore|status` on files produced exactly as `etcdctl snapshot save` stores them.

Why in-process: the source file comes from a real EtcdServer's Maintenance.Snapshot
stream (every message concatenated, as etcdctl writes them), and a restored data dir
is proven usable by starting a real EtcdServer on it — the same `_restart` path a
process would take — without paying for processes. Damaged files must be refused
with one line and leave nothing behind, whatever byte is hit.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from etcdpy.config import ServerConfig
from etcdpy.etcdutl import main as snapshot_main
from etcdpy.etcdutl.restore import RestoreConfig, RestoreError, restore
from etcdpy.etcdutl.snapshot_file import SnapshotFileError, human_bytes, inspect
from etcdpy.mvcc import KVStore
from etcdpy.pb import rpc_pb2
from etcdpy.server.etcdserver import EtcdServer
from etcdpy.server.maintenance import SNAPSHOT_SEND_BUFFER
from etcdpy.server.membership import RaftCluster, compute_cluster_id, compute_member_id
from etcdpy.snap import Snapshotter
from etcdpy.wal import WAL, valid_snapshot_entries

SOURCE_URL = "http://127.0.0.1:1"


def _cfg(data_dir: Path, name: str, url: str, token: str, initial: dict[str, list[str]] | None = None) -> ServerConfig:
    return ServerConfig(
        name=name,
        data_dir=str(data_dir),
        initial_cluster=initial or {name: [url]},
        initial_advertise_peer_urls=[url],
        listen_peer_urls=[url],
        initial_cluster_token=token,
    )


async def _started(cfg: ServerConfig) -> EtcdServer:
    s = EtcdServer(cfg)
    await s.start()
    async with asyncio.timeout(20):
        await s.ready.wait()
    return s


async def _all_kvs(s: EtcdServer) -> list[tuple[bytes, bytes, int, int, int, int]]:
    resp = await s.range(rpc_pb2.RangeRequest(key=b"\x00", range_end=b"\x00", serializable=True))
    return [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for kv in resp.kvs]


class Source:
    """A snapshot taken through the Snapshot RPC's code path, and what the store held."""

    def __init__(self, path: Path, messages: list[rpc_pb2.SnapshotResponse], kvs: list, rev: int, lease: int) -> None:
        self.path = path
        self.messages = messages
        self.kvs = kvs
        self.rev = rev
        self.lease = lease


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    base = tmp_path_factory.mktemp("source")

    async def run() -> Source:
        s = await _started(_cfg(base / "src.etcd", "src", SOURCE_URL, "old-token"))
        try:
            for i in range(20):
                await s.put(rpc_pb2.PutRequest(key=f"k{i:02d}".encode(), value=os.urandom(100 * i)))
            await s.put(rpc_pb2.PutRequest(key=b"k05", value=b"second version"))
            await s.delete_range(rpc_pb2.DeleteRangeRequest(key=b"k07"))
            big = os.urandom(70_000)  # spans several 32 KiB messages
            await s.put(rpc_pb2.PutRequest(key=b"big", value=big))
            grant = await s.lease_grant(rpc_pb2.LeaseGrantRequest(TTL=3600))
            await s.put(rpc_pb2.PutRequest(key=b"leased", value=b"v", lease=grant.ID))
            assert s.maintenance is not None
            sender = await s.maintenance.snapshot()
            try:
                messages = [m async for m in sender.responses()]
            finally:
                sender.close()
            kvs = await _all_kvs(s)
            assert s.kv is not None
            rev = s.kv.current_rev
        finally:
            await s.stop()
        path = base / "snap.db"
        path.write_bytes(b"".join(m.blob for m in messages))  # what etcdctl snapshot save writes
        return Source(path, messages, kvs, rev, grant.ID)

    return asyncio.run(run())


def _run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = snapshot_main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _restore_args(snapshot: Path, data_dir: Path, name: str = "r1", url: str = "http://127.0.0.1:2") -> list[str]:
    return [
        "restore", str(snapshot), f"--name={name}", f"--data-dir={data_dir}",
        f"--initial-cluster={name}={url}", f"--initial-advertise-peer-urls={url}", "--initial-cluster-token=new-token",
    ]


# ---------------------------------------------------------------------------- the stream


def test_stream_is_what_etcdctl_expects(source: Source) -> None:
    msgs = source.messages
    data, last = msgs[:-1], msgs[-1]
    assert len(data) >= 3
    assert all(0 < len(m.blob) <= SNAPSHOT_SEND_BUFFER for m in data)
    total = sum(len(m.blob) for m in data)
    sent = 0
    for m in data:
        sent += len(m.blob)
        assert m.remaining_bytes == total - sent
    assert last.remaining_bytes == 0
    assert last.blob == hashlib.sha256(b"".join(m.blob for m in data)).digest()
    assert total % 512 == 0  # so etcdctl 3.4 finds its checksum: file size % 512 == 32
    assert source.path.stat().st_size % 512 == 32


# ---------------------------------------------------------------------------- restore


def test_restore_builds_a_member_that_serves_all_data(source: Source, tmp_path: Path) -> None:
    url = "http://127.0.0.1:2"
    code, out, err = _run_cli(*_restore_args(source.path, tmp_path / "r1.etcd", "r1", url))
    assert (code, err) == (0, "")
    member_id = compute_member_id([url], "new-token")
    assert f"member {member_id:x}" in out

    async def run() -> None:
        s = await _started(_cfg(tmp_path / "r1.etcd", "r1", url, "new-token"))
        try:
            assert s.member_id == member_id
            assert s.cluster.cluster_id == compute_cluster_id([member_id])
            assert [(m.id, m.name, m.peer_urls) for m in s.cluster.members.values()] == [(member_id, "r1", [url])]
            assert await _all_kvs(s) == source.kvs  # same keys, values, revisions, versions, leases
            assert s.kv is not None and s.kv.current_rev == source.rev
            assert s.lessor is not None and s.lessor.lookup(source.lease) is not None
            resp = await s.put(rpc_pb2.PutRequest(key=b"after", value=b"restore"))
            assert resp.header.revision == source.rev + 1
        finally:
            await s.stop()

    asyncio.run(run())


def test_restore_layout_for_a_three_member_cluster(source: Source, tmp_path: Path) -> None:
    """Each member restores the same file with its own name; ids and cluster agree everywhere."""
    initial = {f"m{i}": [f"http://127.0.0.1:{10 + i}"] for i in range(3)}
    ids = sorted(compute_member_id(urls, "tok") for urls in initial.values())
    cluster_id = compute_cluster_id(ids)
    for name, urls in initial.items():
        data_dir = tmp_path / f"{name}.etcd"
        res = restore(RestoreConfig(str(source.path), name, str(data_dir), initial, "tok", urls))
        assert (res.member_id, res.cluster_id) == (compute_member_id(urls, "tok"), cluster_id)
        wal_dir = str(data_dir / "member" / "wal")
        marks = valid_snapshot_entries(wal_dir)
        assert [(m.index, m.term) for m in marks if m.index] == [(3, 1)]
        snap = Snapshotter(str(data_dir / "member" / "snap")).load_newest_available(marks)
        assert snap is not None and (snap.metadata.index, snap.metadata.term) == (3, 1)
        assert sorted(snap.metadata.conf_state.voters) == ids
        cluster = RaftCluster.from_json(snap.data)
        assert cluster.cluster_id == cluster_id and sorted(cluster.members) == ids
        wal = WAL.open(wal_dir, marks[-1])
        try:
            metadata, hs, ents = wal.read_all()
        finally:
            wal.close()
        assert json.loads(metadata) == {"member_id": res.member_id, "cluster_id": cluster_id}
        assert (hs.term, hs.vote, hs.commit, ents) == (1, ids[0], 3, [])
        kv = KVStore(str(data_dir / "member" / "snap" / "db"))
        try:
            assert (kv.consistent_index, kv.consistent_term, kv.current_rev) == (3, 1, source.rev)
        finally:
            kv.close()


def test_restore_accepts_a_raw_backend_snapshot(tmp_path: Path) -> None:
    """Backend.snapshot_to files (no padding, no etcdctl checksum) restore too."""
    kv = KVStore(str(tmp_path / "db"))
    try:
        with kv.write() as txn:
            txn.put(b"a", b"1")
            txn.end(1, 1)
        kv.snapshot_to(str(tmp_path / "raw.db"))
    finally:
        kv.close()
    info = inspect(str(tmp_path / "raw.db"))
    assert (info.has_checksum, info.revision, info.total_size) == (False, 2, info.file_size)
    code, _, err = _run_cli(*_restore_args(tmp_path / "raw.db", tmp_path / "out"))
    assert (code, err) == (0, "")


# ---------------------------------------------------------------------------- refusals


def _assert_refused(snapshot: Path, tmp_path: Path, expect: str) -> None:
    target = tmp_path / "target.etcd"
    before = sorted(os.listdir(tmp_path))
    code, out, err = _run_cli(*_restore_args(snapshot, target))
    assert code == 1 and out == ""
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    assert expect in err, err
    assert not target.exists()
    assert sorted(os.listdir(tmp_path)) == before  # no temp dir left either


@pytest.mark.parametrize("keep", [0, 10, 16, 500, -33, -32, -1])
def test_truncated_file_is_refused(source: Source, tmp_path: Path, keep: int) -> None:
    data = source.path.read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    _assert_refused(cut, tmp_path, "truncated")


def _flip_positions(size: int) -> dict[str, int]:
    return {
        "meta magic": 16,
        "meta checksum": 16 + 56,
        "second meta page": 4096 + 40,
        "freelist page": 2 * 4096 + 2,
        "first data page": 3 * 4096 + 20,
        "middle": size // 2,
        "last page": size - 33 - 20,
        "etcdctl sha": size - 5,
    }


@pytest.mark.parametrize("where", list(_flip_positions(10**6)))
def test_bit_flipped_file_is_refused(source: Source, tmp_path: Path, where: str) -> None:
    data = bytearray(source.path.read_bytes())
    pos = _flip_positions(len(data))[where]
    data[pos] ^= 0x10
    bad = tmp_path / "flipped.db"
    bad.write_bytes(bytes(data))
    _assert_refused(bad, tmp_path, "")


def test_a_file_that_is_not_bbolt_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    junk = os.urandom(4096 * 4)
    bad = tmp_path / "junk.db"
    bad.write_bytes(junk + hashlib.sha256(junk).digest())  # a valid checksum over garbage
    _assert_refused(bad, tmp_path, "invalid database")


def test_missing_file_is_refused(tmp_path: Path) -> None:
    _assert_refused(tmp_path / "nope.db", tmp_path, "cannot open snapshot")


def test_non_empty_data_dir_is_refused(source: Source, tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "something").write_text("x")
    code, _, err = _run_cli(*_restore_args(source.path, target))
    assert code == 1 and "not empty" in err
    assert os.listdir(target) == ["something"]


def test_empty_data_dir_is_used(source: Source, tmp_path: Path) -> None:
    target = tmp_path / "empty"
    target.mkdir()
    code, _, err = _run_cli(*_restore_args(source.path, target))
    assert (code, err) == (0, "")
    assert sorted(os.listdir(target / "member")) == ["snap", "wal"]


def test_name_must_be_in_initial_cluster(source: Source, tmp_path: Path) -> None:
    with pytest.raises(RestoreError, match="couldn't find local name"):
        restore(RestoreConfig(str(source.path), "x", str(tmp_path / "x"), {"y": ["http://a:1"]}, "t", ["http://a:1"]))
    with pytest.raises(RestoreError, match="initial-advertise-peer-urls"):
        restore(RestoreConfig(str(source.path), "y", str(tmp_path / "y"), {"y": ["http://a:1"]}, "t", ["http://b:1"]))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- status


def test_status_formats(source: Source) -> None:
    info = inspect(str(source.path))
    assert info.revision == source.rev
    assert info.has_checksum and info.total_size == source.path.stat().st_size - 32
    code, out, _ = _run_cli("status", str(source.path), "-w", "json")
    assert code == 0
    assert json.loads(out) == {
        "hash": info.hash, "revision": source.rev, "totalKey": info.total_keys, "totalSize": info.total_size
    }
    # every stored revision of the key space plus meta, lease, cluster... entries
    assert info.total_keys > len(source.kvs)
    code, out, _ = _run_cli("status", str(source.path))
    assert out == f"{info.hash:x}, {source.rev}, {info.total_keys}, {human_bytes(info.total_size)}\n"
    code, out, _ = _run_cli("status", str(source.path), "-w", "table")
    lines = out.splitlines()
    assert len(lines) == 5 and lines[0] == lines[2] == lines[4] and lines[0].startswith("+-")
    assert [c.strip() for c in lines[1].strip("|").split("|")] == ["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == [
        f"{info.hash:x}", str(source.rev), str(info.total_keys), human_bytes(info.total_size)
    ]


def test_status_refuses_damaged_file(source: Source, tmp_path: Path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_bytes(source.path.read_bytes()[:-1])
    code, out, err = _run_cli("status", str(bad))
    assert code == 1 and out == "" and err.startswith("Error: ")
    with pytest.raises(SnapshotFileError):
        inspect(str(bad))


@pytest.mark.parametrize(
    "n,text", [(0, "0 B"), (9, "9 B"), (999, "999 B"), (1000, "1.0 kB"), (61440, "61 kB"), (281088, "281 kB"),
               (2_500_000, "2.5 MB"), (2 * 1024**3, "2.1 GB")]
)
def test_human_bytes_matches_go_humanize(n: int, text: str) -> None:
    assert human_bytes(n) == text


# ---------------------------------------------------------------------------- snapshot save (the receiving side)


@pytest.mark.parametrize("damage", ["none", "cut", "bad sha", "no sha"])
def test_save_receive_checks_the_stream(source: Source, tmp_path: Path, damage: str) -> None:
    from etcdpy.etcdutl.save import SaveError, _receive

    msgs = list(source.messages)
    if damage == "cut":
        msgs = msgs[: len(msgs) // 2]
    elif damage == "bad sha":
        msgs[-1] = rpc_pb2.SnapshotResponse(remaining_bytes=0, blob=bytes(32))
    elif damage == "no sha":
        msgs = msgs[:-1]
    part = tmp_path / "f.part"
    if damage == "none":
        assert _receive(iter(msgs), str(part)) == msgs[-1].blob.hex()
        assert part.read_bytes() == source.path.read_bytes()
    else:
        with pytest.raises(SaveError):
            _receive(iter(msgs), str(part))


def test_restore_json_output_for_scripts(source: Source, tmp_path: Path) -> None:
    code, out, err = _run_cli(*_restore_args(source.path, tmp_path / "j.etcd"), "-w", "json")
    assert (code, err) == (0, "")
    got = json.loads(out)
    assert got["dataDir"] == str(tmp_path / "j.etcd") and got["revision"] == source.rev
    assert int(got["memberId"], 16) == compute_member_id(["http://127.0.0.1:2"], "new-token")


def test_conversion_child_failure_is_one_etcd_error(tmp_path: Path) -> None:
    from etcdpy.errors import EtcdError
    from etcdpy.server.maintenance import _convert_in_child

    with pytest.raises(EtcdError, match="snapshot conversion failed"):
        _convert_in_child(str(tmp_path / "no-such-checkpoint"), str(tmp_path / "out.db"), None)
