"""Tests of etcdpy.snap: atomic snapshot files, newest-valid loading, WAL-marker matching, purge."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdpy.raft.types import ConfState, Entry, HardState, Snapshot, SnapshotMetadata
from etcdpy.snap import SnapCorruptError, Snapshotter, decode_snapshot, encode_snapshot, snap_name
from etcdpy.wal import WAL, WalSnapshot, valid_snapshot_entries


def make_snap(index: int, term: int, data: bytes = b'{"members":[1]}', voters=(1, 2, 3), learners=(4,)) -> Snapshot:
    meta = SnapshotMetadata(conf_state=ConfState(voters=list(voters), learners=list(learners)), index=index, term=term)
    return Snapshot(data=data, metadata=meta)


def snap_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".snap"))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    s = Snapshotter(str(tmp_path))
    snap = make_snap(index=42, term=3, data=os.urandom(10_000))
    s.save_snap(snap)
    assert snap_files(tmp_path) == [snap_name(3, 42)] == ["0000000000000003-000000000000002a.snap"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert Snapshotter(str(tmp_path)).load() == snap


def test_load_empty_dir_and_missing_dir(tmp_path: Path) -> None:
    assert Snapshotter(str(tmp_path)).load() is None
    s = Snapshotter(str(tmp_path / "member" / "snap"))  # created on demand
    assert s.load() is None


def test_empty_snapshot_is_not_written(tmp_path: Path) -> None:
    s = Snapshotter(str(tmp_path))
    s.save_snap(Snapshot())
    assert snap_files(tmp_path) == []


def test_load_returns_newest(tmp_path: Path) -> None:
    s = Snapshotter(str(tmp_path))
    for term, index in [(1, 10), (1, 20), (2, 15), (2, 5)]:
        s.save_snap(make_snap(index, term))
    newest = s.load()
    assert newest is not None and (newest.metadata.term, newest.metadata.index) == (2, 15)


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "rename"])
def test_corrupt_newest_is_skipped_and_marked_broken(tmp_path: Path, damage: str) -> None:
    s = Snapshotter(str(tmp_path))
    s.save_snap(make_snap(10, 1))
    s.save_snap(make_snap(20, 1))
    newest = tmp_path / snap_name(1, 20)
    raw = newest.read_bytes()
    if damage == "flip":
        newest.write_bytes(raw[:30] + bytes([raw[30] ^ 0x10]) + raw[31:])
    elif damage == "truncate":
        newest.write_bytes(raw[:-3])
    elif damage == "empty":
        newest.write_bytes(b"")
    else:  # a valid file under a name that claims another index
        newest.unlink()
        (tmp_path / snap_name(1, 30)).write_bytes(raw)
        newest = tmp_path / snap_name(1, 30)
    loaded = s.load()
    assert loaded is not None and loaded.metadata.index == 10
    assert snap_files(tmp_path) == [snap_name(1, 10)]
    assert (tmp_path / (newest.name + ".broken")).exists()


def test_all_corrupt_gives_none(tmp_path: Path) -> None:
    (tmp_path / snap_name(1, 1)).write_bytes(b"garbage")
    assert Snapshotter(str(tmp_path)).load() is None


def test_stale_temp_files_are_removed_and_never_loaded(tmp_path: Path) -> None:
    (tmp_path / (snap_name(9, 99) + ".tmp")).write_bytes(encode_snapshot(make_snap(99, 9)))
    (tmp_path / "db").mkdir()  # the RocksDB directory lives next to the snap files
    s = Snapshotter(str(tmp_path))
    assert s.load() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_load_newest_available_needs_a_wal_marker(tmp_path: Path) -> None:
    s = Snapshotter(str(tmp_path))
    for index in (10, 20, 30):
        s.save_snap(make_snap(index, 2))
    got = s.load_newest_available([WalSnapshot(0, 0), WalSnapshot(10, 2), WalSnapshot(20, 2)])
    assert got is not None and got.metadata.index == 20
    # Same index, other term: not a match.
    got = s.load_newest_available([WalSnapshot(30, 1), WalSnapshot(10, 2)])
    assert got is not None and got.metadata.index == 10
    assert s.load_newest_available([WalSnapshot(0, 0)]) is None
    assert s.load_newest_available([]) is None


def test_load_newest_available_skips_broken_matching_file(tmp_path: Path) -> None:
    s = Snapshotter(str(tmp_path))
    s.save_snap(make_snap(10, 1))
    s.save_snap(make_snap(20, 1))
    (tmp_path / snap_name(1, 20)).write_bytes(b"\0" * 64)
    got = s.load_newest_available([WalSnapshot(10, 1), WalSnapshot(20, 1)])
    assert got is not None and got.metadata.index == 10


def test_with_wal_markers_end_to_end(tmp_path: Path) -> None:
    """The server's restart path: snapshot file first, then WAL marker; pick the newest with both."""
    wal_dir, snap_dir = tmp_path / "wal", tmp_path / "snap"
    w = WAL.create(str(wal_dir), b"meta")
    s = Snapshotter(str(snap_dir))
    w.save(HardState(1, 1, 50), [Entry(term=1, index=i) for i in range(1, 61)])
    for index in (20, 40):
        s.save_snap(make_snap(index, 1))
        w.save_snapshot(WalSnapshot(index, 1))
    s.save_snap(make_snap(60, 1))  # crash before its WAL marker was written
    w.close()
    snap = s.load_newest_available(valid_snapshot_entries(str(wal_dir)))
    assert snap is not None and snap.metadata.index == 40
    w = WAL.open(str(wal_dir), WalSnapshot(snap.metadata.index, snap.metadata.term))
    _, state, entries = w.read_all()
    w.close()
    assert state.commit == 50 and [e.index for e in entries] == list(range(41, 61))


def test_purge_keeps_newest(tmp_path: Path) -> None:
    s = Snapshotter(str(tmp_path))
    for index in range(1, 9):
        s.save_snap(make_snap(index * 10, 1))
    removed = s.purge(keep=3)
    assert removed == [snap_name(1, i * 10) for i in range(5, 0, -1)]
    assert snap_files(tmp_path) == [snap_name(1, i * 10) for i in (6, 7, 8)]
    assert s.purge() == []
    with pytest.raises(ValueError):
        s.purge(keep=0)


def test_resave_same_snapshot_overwrites(tmp_path: Path) -> None:
    s = Snapshotter(str(tmp_path))
    s.save_snap(make_snap(5, 1, data=b"old"))
    s.save_snap(make_snap(5, 1, data=b"new"))
    loaded = s.load()
    assert loaded is not None and loaded.data == b"new"


snapshots = st.builds(
    make_snap,
    index=st.integers(1, 2**64 - 1),
    term=st.integers(0, 2**64 - 1),
    data=st.binary(max_size=2000),
    voters=st.lists(st.integers(0, 2**64 - 1), max_size=7),
    learners=st.lists(st.integers(0, 2**64 - 1), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(snap=snapshots)
def test_encode_decode_round_trip(snap: Snapshot) -> None:
    assert decode_snapshot(encode_snapshot(snap), "mem") == snap


@settings(max_examples=200, deadline=None)
@given(snap=snapshots, data=st.data())
def test_any_byte_damage_is_detected(snap: Snapshot, data: st.DataObject) -> None:
    raw = bytearray(encode_snapshot(snap))
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(SnapCorruptError):
        decode_snapshot(bytes(raw), "mem")
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(SnapCorruptError):
        decode_snapshot(encode_snapshot(snap)[:cut], "mem")
