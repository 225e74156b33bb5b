"""Backend: buckets on one RocksDB, atomic cross-bucket batches, sizes, defrag, snapshot files."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from etcdpy.mvcc.backend import (
    BUCKET_AUTH,
    BUCKET_KEY,
    BUCKET_LEASE,
    BUCKET_META,
    META_CONSISTENT_INDEX,
    Backend,
    SnapshotError,
    bucket_prefix,
)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    b = Backend(str(tmp_path / "member" / "snap" / "db"))
    yield b
    b.close()


def fill(b: Backend) -> None:
    batch = b.batch()
    for i in range(20):
        batch.put(BUCKET_LEASE, b"%03d" % i, b"lease%d" % i)
        batch.put(BUCKET_AUTH, b"%03d" % i, b"auth%d" % i)
    batch.put("leases", b"x", b"a bucket whose name extends another")
    b.write(batch)


def test_buckets_are_isolated(backend: Backend) -> None:
    fill(backend)
    assert backend.get(BUCKET_LEASE, b"001") == b"lease1"
    assert backend.get(BUCKET_KEY, b"001") is None
    assert [k for k, _ in backend.iterate(BUCKET_LEASE)] == [b"%03d" % i for i in range(20)]
    assert list(backend.iterate("leases")) == [(b"x", b"a bucket whose name extends another")]
    assert backend.get_many(BUCKET_AUTH, [b"000", b"nope", b"019"]) == [b"auth0", None, b"auth19"]
    backend.delete(BUCKET_LEASE, b"001")
    assert backend.get(BUCKET_LEASE, b"001") is None
    with pytest.raises(ValueError):
        bucket_prefix("bad\x00name")


def test_iterate_bounds_and_reverse(backend: Backend) -> None:
    fill(backend)
    assert [k for k, _ in backend.iterate(BUCKET_AUTH, b"005", b"008")] == [b"005", b"006", b"007"]
    assert [k for k, _ in backend.iterate(BUCKET_AUTH, b"017")] == [b"017", b"018", b"019"]
    assert [k for k, _ in backend.iterate(BUCKET_AUTH, b"005", b"008", reverse=True)] == [b"007", b"006", b"005"]
    assert list(backend.iterate(BUCKET_AUTH, b"008", b"005")) == []
    assert backend.last(BUCKET_LEASE) == (b"019", b"lease19")
    assert backend.last(BUCKET_META) is None


def test_batch_is_atomic_and_single_use(backend: Backend) -> None:
    batch = backend.batch()
    assert batch.is_empty()
    batch.put(BUCKET_META, b"m", b"1")
    batch.put(BUCKET_LEASE, b"l", b"2")
    assert backend.get(BUCKET_META, b"m") is None  # nothing until written
    backend.write(batch)
    assert (backend.get(BUCKET_META, b"m"), backend.get(BUCKET_LEASE, b"l")) == (b"1", b"2")
    with pytest.raises(Exception, match="already consumed"):  # rocksdict raises a bare Exception
        backend.write(batch)


def test_reopen_keeps_data(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    b = Backend(path)
    fill(b)
    b.close()
    b = Backend(path)
    assert b.get(BUCKET_AUTH, b"019") == b"auth19"
    b.close()


def test_sizes_and_defrag(backend: Backend) -> None:
    batch = backend.batch()
    for i in range(2000):
        batch.put(BUCKET_KEY, b"%06d" % i, os.urandom(4096))
    backend.write(batch)
    backend.db.flush(True)
    assert backend.size() > 2000 * 4096
    assert backend.size_in_use() > 0
    batch = backend.batch()
    for i in range(2000):
        batch.delete(BUCKET_KEY, b"%06d" % i)
    backend.write(batch)
    backend.defrag()
    assert list(backend.iterate(BUCKET_KEY)) == []
    assert backend.size_in_use() < 2000 * 4096 // 10


def test_hash_ignores_consistent_index(backend: Backend) -> None:
    fill(backend)
    h = backend.hash()
    backend.put(BUCKET_META, META_CONSISTENT_INDEX, b"\x00" * 7 + b"\x09")
    assert backend.hash() == h
    backend.put(BUCKET_META, b"other", b"1")
    assert backend.hash() != h


def snapshot_bytes(b: Backend) -> bytes:
    buf = io.BytesIO()
    n = b.snapshot_to(buf)
    assert n == len(buf.getvalue())
    return buf.getvalue()


def test_snapshot_roundtrip_and_isolation(backend: Backend, tmp_path: Path) -> None:
    fill(backend)
    stream = backend.open_snapshot()
    backend.put(BUCKET_LEASE, b"late", b"not in the snapshot")
    data = b"".join(stream.chunks(100))
    stream.close()
    assert [p for p in os.listdir(tmp_path / "member" / "snap") if "checkpoint" in p] == []
    target = str(tmp_path / "restored")
    Backend.restore_from(io.BytesIO(data), target)
    r = Backend(target)
    assert list(r.iterate(BUCKET_AUTH)) == list(backend.iterate(BUCKET_AUTH))
    assert r.get(BUCKET_LEASE, b"late") is None
    r.close()
    # A file path works too, and restoring replaces what was there.
    path = str(tmp_path / "snap.db")
    backend.snapshot_to(path)
    Backend.restore_from(path, target)
    r = Backend(target)
    assert r.get(BUCKET_LEASE, b"late") == b"not in the snapshot"
    r.close()


def test_snapshot_accepts_etcdctl_trailer_and_rejects_damage(backend: Backend, tmp_path: Path) -> None:
    fill(backend)
    data = snapshot_bytes(backend)
    target = str(tmp_path / "restored")
    Backend.restore_from(io.BytesIO(data + hashlib.sha256(data).digest()), target)
    bad = [
        data[:-1],  # truncated
        data[:40] + bytes([data[40] ^ 1]) + data[41:],  # flipped bit
        data + b"garbage",  # unexpected trailing data
        b"NOTASNAP" + data[8:],
    ]
    for blob in bad:
        with pytest.raises(SnapshotError):
            Backend.restore_from(io.BytesIO(blob), target)
    r = Backend(target)  # the earlier good restore is untouched by the failures
    assert r.get(BUCKET_AUTH, b"000") == b"auth0"
    r.close()


def test_snapshot_stream_on_worker_thread_while_writing(backend: Backend, tmp_path: Path) -> None:
    fill(backend)
    with backend.open_snapshot() as stream:
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(lambda: b"".join(stream.chunks(64)))
            for i in range(200):
                backend.put(BUCKET_LEASE, b"new%03d" % i, b"v")
            data = fut.result(timeout=60)
    target = str(tmp_path / "restored")
    Backend.restore_from(io.BytesIO(data), target)
    r = Backend(target)
    assert len(list(r.iterate(BUCKET_LEASE))) == 20
    r.close()


def test_stale_checkpoints_of_other_processes_are_removed(tmp_path: Path) -> None:
    path = str(tmp_path / "db")
    Backend(path).close()
    stale = tmp_path / "db.checkpoint-999999999-1"
    stale.mkdir()
    b = Backend(path)
    assert not stale.exists()
    b.close()
