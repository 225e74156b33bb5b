"""The bbolt writer and reader (`etcdpy.mvcc.bbolt`): round trips, the B+tree shapes, damage, and etcd's tools.

The writer's files must be what bbolt itself accepts: the reader's own check is
one judge, etcd's `snapshot status` the other (etcdctl 3.4 from Debian, and
etcdutl 3.5.1, which also runs bbolt's tx.Check() over every page). Data is
random with a printed seed.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import struct
import subprocess
from pathlib import Path

import etcd35
import pytest
from etcdpy.etcdutl.snapshot_file import inspect
from etcdpy.mvcc.bbolt import (
    DEFAULT_PAGE_SIZE,
    BoltError,
    BoltReader,
    BoltWriter,
    fnv64a,
)
from etcdpy.pb.kv_pb2 import KeyValue

SEED = int(os.environ.get("ETCDPY_TEST_SEED", "0")) or random.SystemRandom().randrange(1 << 30)


def _rng() -> random.Random:
    print(f"seed {SEED}")
    return random.Random(SEED)


def _rev_key(main: int, sub: int = 0, tombstone: bool = False) -> bytes:
    return struct.pack(">QBQ", main, 0x5F, sub) + (b"t" if tombstone else b"")


def _key_bucket(n: int, rng: random.Random, big_every: int = 0) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        size = 20_000 if big_every and i % big_every == 7 else rng.randrange(0, 300)
        kv = KeyValue(key=b"k%07d" % i, value=rng.randbytes(size), create_revision=i + 2, mod_revision=i + 2, version=1)
        out.append((_rev_key(i + 2), kv.SerializeToString()))
    return out


def _write(path: Path, buckets: dict[bytes, list[tuple[bytes, bytes]]], page_size: int = DEFAULT_PAGE_SIZE) -> int:
    with open(path, "wb") as f:
        w = BoltWriter(f, page_size)
        for name, items in buckets.items():
            w.add_bucket(name, items)
        return w.finish()


def _read_all(path: Path) -> dict[bytes, list[tuple[bytes, bytes | None]]]:
    with BoltReader(str(path)) as r:
        r.check()
        return {b: list(r.items(b)) for b in r.buckets()}


def test_fnv64a_matches_go() -> None:
    # Go: fnv.New64a() over "" and "a"
    assert fnv64a(b"") == 0xCBF29CE484222325
    assert fnv64a(b"a") == 0xAF63DC4C8601EC8C


@pytest.mark.parametrize("page_size", [4096, 1024])
def test_round_trip_with_inline_empty_overflow_and_deep_buckets(tmp_path: Path, page_size: int) -> None:
    rng = _rng()
    buckets = {
        b"key": _key_bucket(6000, rng, big_every=500),  # several branch levels, overflow pages
        b"meta": [(b"consistent_index", struct.pack(">Q", 42)), (b"term", struct.pack(">Q", 3))],  # inline
        b"lease": [],  # empty (inline, no page)
        b"auth": [(b"a" * 300, b"b" * 300), (b"c" * 300, b"d" * 300)],  # just over a quarter page: not inline
        b"one-huge": [(b"x", rng.randbytes(100_000))],
    }
    size = _write(tmp_path / "db", buckets, page_size)
    assert size == (tmp_path / "db").stat().st_size and size % page_size == 0
    got = _read_all(tmp_path / "db")
    assert got == {k: list(v) for k, v in sorted(buckets.items())}


def test_reader_sees_the_tree_shape(tmp_path: Path) -> None:
    rng = _rng()
    _write(tmp_path / "db", {b"key": _key_bucket(20_000, rng)})
    with BoltReader(str(tmp_path / "db")) as r:
        assert r.meta.pgid * r.page_size == r.size == (tmp_path / "db").stat().st_size
        assert r.meta.freelist == 2
        assert sum(1 for _ in r.items(b"key")) == 20_000
        assert list(r.items(b"missing")) == []


def test_writer_refuses_unsorted_or_empty_keys(tmp_path: Path) -> None:
    for items in ([(b"b", b""), (b"a", b"")], [(b"", b"x")], [(b"a", b""), (b"a", b"")]):
        with pytest.raises(ValueError):
            BoltWriter(io.BytesIO()).add_bucket(b"x", items)


def test_the_newer_valid_meta_page_wins_and_a_broken_one_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _write(path, {b"b": [(b"k", b"v")]})
    data = bytearray(path.read_bytes())
    data[16 + 60] ^= 0xFF  # meta 0 (txid 2) checksum broken -> meta 1 (txid 1) is used
    path.write_bytes(bytes(data))
    with BoltReader(str(path)) as r:
        assert r.meta.txid == 1
        assert list(r.items(b"b")) == [(b"k", b"v")]
    data[4096 + 16] ^= 0xFF  # and meta 1's magic: nothing valid is left
    path.write_bytes(bytes(data))
    with pytest.raises(BoltError, match="no valid meta page"):
        BoltReader(str(path))


@pytest.mark.parametrize("damage", ["page id", "page type", "element pos", "truncated", "branch child"])
def test_damage_is_found(tmp_path: Path, damage: str) -> None:
    rng = _rng()
    path = tmp_path / "db"
    _write(path, {b"key": _key_bucket(3000, rng)})
    data = bytearray(path.read_bytes())
    with BoltReader(str(path)) as r:
        root = _bucket_root(r, b"key")
    ps = DEFAULT_PAGE_SIZE
    if damage == "page id":
        data[5 * ps] ^= 0x01
    elif damage == "page type":
        data[5 * ps + 8] = 0x20
    elif damage == "element pos":
        struct.pack_into("<I", data, 5 * ps + 16 + 4, 60_000)
    elif damage == "branch child":
        struct.pack_into("<Q", data, root * ps + 16 + 8, 1)  # first child -> a meta page
    else:
        del data[len(data) - ps :]
    path.write_bytes(bytes(data))
    with pytest.raises(BoltError), BoltReader(str(path)) as r:
        r.check()
        list(r.items(b"key"))


def _bucket_root(r: BoltReader, name: bytes) -> int:
    for flags, k, v in r._walk(r.meta.root):
        if k == name:
            return int(struct.unpack_from("<Q", v)[0])
    raise AssertionError("no bucket")


# ------------------------------------------------------------------------ etcd's own tools


def _etcd_buckets(rng: random.Random, n: int) -> dict[bytes, list[tuple[bytes, bytes]]]:
    keys = _key_bucket(n, rng, big_every=997)
    keys.append((_rev_key(n + 2, 0, tombstone=True), KeyValue(key=b"k0000001").SerializeToString()))
    return {
        b"key": keys,
        b"meta": [(b"consistent_index", struct.pack(">Q", n + 10)), (b"term", struct.pack(">Q", 2))],
        **{name: [] for name in (b"lease", b"alarm", b"auth", b"authUsers", b"authRoles", b"cluster", b"members",
                                 b"members_removed")},
    }


def _status(argv: list[str], path: Path) -> dict[str, int]:
    env = {**os.environ, "ETCDCTL_API": "3"}
    r = subprocess.run([*argv, "snapshot", "status", str(path), "-w", "json"], capture_output=True, text=True,
                       env=env, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def _ours(path: Path) -> dict[str, int]:
    info = inspect(str(path))
    return {"hash": info.hash, "revision": info.revision, "totalKey": info.total_keys, "totalSize": info.total_size}


def test_etcdctl_34_reads_our_file_with_the_same_status(tmp_path: Path) -> None:
    etcdctl = shutil.which("etcdctl") or "/usr/bin/etcdctl"
    if not os.path.exists(etcdctl):
        pytest.skip("Debian's etcdctl 3.4 is not installed")
    path = tmp_path / "db"
    _write(path, _etcd_buckets(_rng(), 5000))
    assert _status([etcdctl], path) == _ours(path)


def test_etcdutl_35_checks_every_page_and_agrees(tmp_path: Path) -> None:
    d, why = etcd35.ensure()
    if d is None:
        pytest.skip(why)
    path = tmp_path / "db"
    _write(path, _etcd_buckets(_rng(), 5000))
    assert _status([str(d / "etcdutl")], path) == _ours(path)  # etcdutl runs bbolt's tx.Check() first


def test_random_damage_raises_bolt_error_or_reads_cleanly(tmp_path: Path) -> None:
    """Whatever bytes are hit, the reader answers data or BoltError, never another exception."""
    rng = _rng()
    path = tmp_path / "db"
    _write(path, {b"key": _key_bucket(800, rng, big_every=300), b"meta": [(b"term", b"\x00" * 8)]})
    clean = path.read_bytes()
    for _ in range(300):
        data = bytearray(clean)
        for _ in range(rng.randrange(1, 4)):  # mostly page headers and element tables, where structure is
            page = rng.randrange(len(data) // DEFAULT_PAGE_SIZE)
            pos = page * DEFAULT_PAGE_SIZE + (rng.randrange(96) if rng.random() < 0.8 else rng.randrange(4096))
            data[pos] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            with BoltReader(str(path)) as r:
                r.check()
                for b in r.buckets():
                    list(r.items(b))
        except BoltError:
            pass
