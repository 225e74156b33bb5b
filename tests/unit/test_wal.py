"""Tests of etcdpy.wal: round trips, segment cuts, overwrite, torn tails, corruption, locks."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdpy.raft.types import Entry, EntryType, HardState
from etcdpy.wal import (
    WAL,
    SnapshotMismatchError,
    SnapshotNotFoundError,
    WalCorruptError,
    WalEntryGapError,
    WalExistsError,
    WalLockedError,
    WalNotFoundError,
    WalSnapshot,
    WalStateError,
    valid_snapshot_entries,
)
from etcdpy.wal import record as rec

META = b"member=1;cluster=2"
SMALL = 4096  # segment size that forces frequent cuts


def ents(first: int, last: int, term: int = 1, size: int = 40, seed: int = 0) -> list[Entry]:
    """Entries first..last with non-zero random data (zero bytes could look like torn sectors)."""
    return [Entry(term=term, index=i, data=_payload(i, term, size, seed)) for i in range(first, last + 1)]


def _payload(index: int, term: int, size: int, seed: int) -> bytes:
    """Deterministic per (index, term), so ents(1, 20) == ents(1, 10) + ents(11, 20)."""
    rnd = random.Random(f"{index}/{term}/{size}/{seed}")
    return bytes(rnd.randrange(1, 256) for _ in range(size))


def segments(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.endswith(".wal"))


def reopen(d: Path, snap: WalSnapshot | None = None, **kw: object) -> tuple[WAL, bytes, HardState, list[Entry]]:
    w = WAL.open(str(d), snap, **kw)  # type: ignore[arg-type]
    try:
        meta, state, entries = w.read_all()
    except BaseException:
        w.close()
        raise
    return w, meta, state, entries


def read_back(d: Path, snap: WalSnapshot | None = None, **kw: object) -> tuple[bytes, HardState, list[Entry]]:
    w, meta, state, entries = reopen(d, snap, **kw)
    w.close()
    return meta, state, entries


@pytest.fixture
def wal_dir(tmp_path: Path) -> Path:
    return tmp_path / "member" / "wal"


# ---------------------------------------------------------------------------- basics


def test_round_trip(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META)
    batch = ents(1, 3) + [
        Entry(term=1, index=4, type=EntryType.CONF_CHANGE, data=b"\x01cc"),
        Entry(term=2, index=5, data=b""),
        Entry(term=2, index=6, data=os.urandom(200_000)),
    ]
    w.save(HardState(term=2, vote=1, commit=3), batch)
    w.close()
    meta, state, entries = read_back(wal_dir)
    assert meta == META
    assert state == HardState(term=2, vote=1, commit=3)
    assert entries == batch
    assert entries[3].type is EntryType.CONF_CHANGE


def test_create_refuses_existing_and_accepts_empty_dir(wal_dir: Path) -> None:
    wal_dir.mkdir(parents=True)
    assert not WAL.exists(str(wal_dir))
    WAL.create(str(wal_dir), META).close()
    assert WAL.exists(str(wal_dir))
    assert not (wal_dir.parent / "wal.tmp").exists()
    with pytest.raises(WalExistsError):
        WAL.create(str(wal_dir), META)


def test_create_with_initial_entries_and_state(wal_dir: Path) -> None:
    """A new member's bootstrap entries are in the WAL from its creation (they share its rename)."""
    boot = [Entry(term=1, index=i, type=EntryType.CONF_CHANGE, data=b"cc%d" % i) for i in (1, 2, 3)]
    WAL.create(str(wal_dir), META, initial=(HardState(term=1, commit=3), boot)).close()
    assert read_back(wal_dir) == (META, HardState(term=1, commit=3), boot)
    # Later saves continue after them.
    w, _, _, _ = reopen(wal_dir)
    w.save(HardState(term=2, vote=1, commit=4), [Entry(term=2, index=4, data=b"x")])
    w.close()
    assert read_back(wal_dir) == (META, HardState(term=2, vote=1, commit=4), [*boot, Entry(term=2, index=4, data=b"x")])


def test_open_without_segments(tmp_path: Path) -> None:
    with pytest.raises(WalNotFoundError):
        WAL.open(str(tmp_path / "nothing"))


def test_empty_wal_reads_back_empty(wal_dir: Path) -> None:
    WAL.create(str(wal_dir), META).close()
    assert read_back(wal_dir) == (META, HardState(), [])
    assert read_back(wal_dir, WalSnapshot(0, 0)) == (META, HardState(), [])


def test_api_misuse_is_typed(wal_dir: Path) -> None:
    WAL.create(str(wal_dir), META).close()
    w = WAL.open(str(wal_dir))
    with pytest.raises(WalStateError):
        w.save(None, ents(1, 1))
    w.read_all()
    with pytest.raises(WalStateError):
        w.read_all()
    w.close()
    w.close()  # idempotent
    with pytest.raises(WalStateError):
        w.save(None, ents(1, 1))


def test_nothing_to_write_does_not_sync(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META)
    syncs: list[float] = []
    w.on_fsync = syncs.append
    w.save(None, [])
    w.save(HardState(), [])
    w.save(HardState(1, 1, 0), [])
    w.save(HardState(1, 1, 0), [])  # unchanged: not rewritten
    w.save(HardState(1, 1, 2), ents(1, 2))
    assert len(syncs) == 2 and all(s >= 0 for s in syncs)
    w.close()
    assert read_back(wal_dir)[1:] == (HardState(1, 1, 2), ents(1, 2))


def test_reopen_and_append(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META)
    w.save(HardState(1, 1, 5), ents(1, 5))
    w.close()
    for round_ in range(3):
        w, _, state, entries = reopen(wal_dir)
        last = entries[-1].index
        w.save(HardState(1, 1, last), ents(last + 1, last + 5))
        w.close()
    _, state, entries = read_back(wal_dir)
    assert [e.index for e in entries] == list(range(1, 21))
    assert entries == ents(1, 5) + ents(6, 10) + ents(11, 15) + ents(16, 20)
    assert state.commit == 15


@pytest.mark.parametrize("preallocate", [False, True])
def test_many_entries_across_segment_cuts(wal_dir: Path, preallocate: bool) -> None:
    w = WAL.create(str(wal_dir), META, segment_size=SMALL, preallocate=preallocate)
    rnd = random.Random(7)
    expected: list[Entry] = []
    index = 0
    for _ in range(150):
        batch = []
        for _ in range(rnd.randrange(1, 8)):
            index += 1
            batch.append(Entry(term=3, index=index, data=os.urandom(rnd.randrange(0, 600))))
        w.save(HardState(3, 1, max(0, index - 2)), batch)
        expected.extend(batch)
    w.close()
    segs = segments(wal_dir)
    assert len(segs) > 20
    seqs = [int(p.name.split("-")[0], 16) for p in segs]
    assert seqs == list(range(len(segs)))
    # The name's index is the first entry the segment was cut for.
    for p in segs[1:]:
        first_index = int(p.name.split("-")[1].split(".")[0], 16)
        assert 1 < first_index <= index + 1
    if not preallocate:
        assert all(p.stat().st_size < SMALL + 8 * 700 for p in segs)
    _, state, entries = read_back(wal_dir, segment_size=SMALL, preallocate=preallocate)
    assert entries == expected
    assert state == HardState(3, 1, index - 2)


def test_preallocated_tail_is_a_clean_end(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META, segment_size=1 << 20)
    w.save(HardState(1, 1, 1), ents(1, 3))
    w.close()
    (seg,) = segments(wal_dir)
    assert seg.stat().st_size == 1 << 20
    for i in range(3):
        w, _, _, entries = reopen(wal_dir, segment_size=1 << 20)
        w.save(None, ents(4 + i, 4 + i))
        w.close()
    assert [e.index for e in read_back(wal_dir, segment_size=1 << 20)[2]] == [1, 2, 3, 4, 5, 6]
    assert seg.stat().st_size == 1 << 20


# ---------------------------------------------------------------------------- overwrite


def test_overwrite_of_conflicting_suffix(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META)
    w.save(HardState(1, 1, 3), ents(1, 10, term=1))
    w.save(HardState(2, 2, 5), ents(6, 8, term=2))  # a new leader replaced 6..10
    w.close()
    _, state, entries = read_back(wal_dir)
    assert entries == ents(1, 5, term=1) + ents(6, 8, term=2)
    assert state == HardState(2, 2, 5)


def test_overwrite_across_segments_and_reopen(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META, segment_size=SMALL, preallocate=False)
    for i in range(1, 101, 10):
        w.save(HardState(1, 1, i), ents(i, i + 9, term=1, size=100))
    assert len(segments(wal_dir)) > 3
    w.save(HardState(2, 2, 30), ents(31, 40, term=2))
    w.close()
    w, _, _, entries = reopen(wal_dir, segment_size=SMALL, preallocate=False)
    assert entries == ents(1, 30, term=1, size=100) + ents(31, 40, term=2)
    w.save(None, ents(35, 36, term=3))
    w.close()
    entries = read_back(wal_dir)[2]
    assert entries == ents(1, 30, term=1, size=100) + ents(31, 34, term=2) + ents(35, 36, term=3)


# ---------------------------------------------------------------------------- torn tails


def _build_for_torn(d: Path, fresh_segment: bool) -> tuple[list[Entry], HardState, int]:
    """A WAL whose last record is one big entry; returns (kept entries, kept state, last record offset)."""
    w = WAL.create(str(d), META, segment_size=SMALL if fresh_segment else 1 << 20, preallocate=False)
    kept = ents(1, 30, size=100)
    state = HardState(1, 1, 25)
    w.save(state, kept)
    assert (len(segments(d)) > 1) == fresh_segment
    offset = segments(d)[-1].stat().st_size
    w.save(None, ents(31, 31, size=1300))  # spans several 512-byte sectors
    w.close()
    return kept, state, offset


def _assert_recovers(d: Path, kept: list[Entry], state: HardState) -> None:
    w, meta, got_state, entries = reopen(d, preallocate=False)
    assert meta == META and got_state == state and entries == kept
    w.save(HardState(1, 1, 31), [Entry(term=1, index=31, data=b"after-repair")])
    w.close()
    _, got_state, entries = read_back(d, preallocate=False)
    assert entries == kept + [Entry(term=1, index=31, data=b"after-repair")]
    assert got_state == HardState(1, 1, 31)


@pytest.mark.parametrize("fresh_segment", [False, True], ids=["same-segment", "after-cut"])
def test_torn_last_record_truncated_at_every_offset(tmp_path: Path, fresh_segment: bool) -> None:
    pristine = tmp_path / "pristine"
    kept, state, start = _build_for_torn(pristine, fresh_segment)
    end = segments(pristine)[-1].stat().st_size
    assert end - start > 1300
    for cut in range(start, end):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(pristine, work)
        with open(segments(work)[-1], "r+b") as f:
            f.truncate(cut)
        _assert_recovers(work, kept, state)
        shutil.rmtree(work)


def test_torn_last_record_with_unwritten_sectors(tmp_path: Path) -> None:
    """A crash can leave any sector of the last write as zeros (preallocated or extended file)."""
    pristine = tmp_path / "pristine"
    kept, state, start = _build_for_torn(pristine, False)
    end = segments(pristine)[-1].stat().st_size
    sectors = sorted({start} | set(range((start // 512 + 1) * 512, end, 512)))
    for i, lo in enumerate(sectors):
        hi = min(end, (lo // 512 + 1) * 512)
        work = tmp_path / f"zero{i}"
        shutil.copytree(pristine, work)
        with open(segments(work)[-1], "r+b") as f:
            f.seek(lo)
            f.write(bytes(hi - lo))
            f.write(b"\0" * 4096)  # and some preallocated zeros after it
        _assert_recovers(work, kept, state)
        shutil.rmtree(work)


def test_zero_header_followed_by_data_is_torn(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META, preallocate=False)
    w.save(HardState(1, 1, 2), ents(1, 2))
    start = segments(wal_dir)[-1].stat().st_size
    w.save(None, ents(3, 3, size=2000))
    w.close()
    with open(segments(wal_dir)[-1], "r+b") as f:
        f.seek(start)
        f.write(bytes(512 - start % 512))
    _, _, entries = read_back(wal_dir)
    assert entries == ents(1, 2)


# ---------------------------------------------------------------------------- corruption


def _record_spans(path: Path) -> list[tuple[int, int, int]]:
    """(record start, record end incl. padding, type) of every record in a segment."""
    buf = path.read_bytes()
    spans = []
    off = 0
    while off + rec.HEADER_SIZE <= len(buf) and buf[off : off + rec.HEADER_SIZE] != bytes(rec.HEADER_SIZE):
        length = int.from_bytes(buf[off : off + 4], "little")
        rtype, pad = buf[off + 4], buf[off + 5]
        end = off + rec.HEADER_SIZE + length + pad
        spans.append((off, end, rtype))
        off = end
    return spans


def _flip(path: Path, offset: int, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ (1 << bit)]))


def test_flipped_bit_in_middle_record_detected_at_every_byte(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    w = WAL.create(str(pristine), META, preallocate=False)
    w.save(HardState(1, 1, 1), ents(1, 3, size=60))
    w.save(HardState(1, 1, 3), ents(4, 6, size=60))
    w.close()
    seg = segments(pristine)[0]
    spans = _record_spans(seg)
    middle = [s for s in spans if s[2] == rec.RecordType.ENTRY][3]  # entry 4, records follow it
    for offset in range(middle[0], middle[1]):
        work = tmp_path / f"flip{offset}"
        shutil.copytree(pristine, work)
        _flip(segments(work)[0], offset, offset % 8)
        with pytest.raises(WalCorruptError):
            read_back(work)
        shutil.rmtree(work)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_flipped_bit_is_detected_or_torn(data: st.DataObject) -> None:
    """A flipped bit anywhere is an error, except a last record that looks torn (etcd's heuristic)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "wal"
        w = WAL.create(str(d), META, segment_size=1024, preallocate=False)
        for i in range(1, 25, 3):
            w.save(HardState(1, 1, i), ents(i, i + 2, size=50))
        w.save_snapshot(WalSnapshot(10, 1))
        w.close()
        segs = segments(d)
        seg_i = data.draw(st.integers(0, len(segs) - 1), label="segment")
        size = segs[seg_i].stat().st_size
        offset = data.draw(st.integers(0, size - 1), label="offset")
        bit = data.draw(st.integers(0, 7), label="bit")
        spans = _record_spans(segs[seg_i])
        _flip(segs[seg_i], offset, bit)
        is_last_record = seg_i == len(segs) - 1 and offset >= spans[-1][0]
        try:
            _, state, entries = read_back(d)
        except WalCorruptError:
            return
        # Only acceptable silent outcome: the last record of the last segment dropped as torn.
        assert is_last_record
        buf = segs[seg_i].read_bytes()
        start, end, _ = spans[-1]
        assert rec._has_zero_sector(buf, start + rec.HEADER_SIZE, end)


def test_foreign_segment_breaks_the_crc_chain(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for d, term in ((a, 1), (b, 2)):
        w = WAL.create(str(d), META, segment_size=SMALL, preallocate=False)
        for i in range(1, 200, 10):
            w.save(HardState(term, 1, i), ents(i, i + 9, term=term, size=100))
        w.close()
    segs_a, segs_b = segments(a), segments(b)
    assert [p.name for p in segs_a] == [p.name for p in segs_b]
    shutil.copy(segs_b[-1], segs_a[-1])
    with pytest.raises(WalCorruptError, match="CRC chain"):
        read_back(a)


def test_reordered_and_missing_segments_detected(tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    w = WAL.create(str(pristine), META, segment_size=SMALL, preallocate=False)
    for i in range(1, 200, 10):
        w.save(HardState(1, 1, i), ents(i, i + 9, size=100))
    w.close()
    names = [p.name for p in segments(pristine)]
    assert len(names) >= 4

    swapped = tmp_path / "swapped"
    shutil.copytree(pristine, swapped)
    x, y = swapped / names[1], swapped / names[2]
    data_x, data_y = x.read_bytes(), y.read_bytes()
    x.write_bytes(data_y)
    y.write_bytes(data_x)
    with pytest.raises(WalCorruptError):
        read_back(swapped)

    missing = tmp_path / "missing"
    shutil.copytree(pristine, missing)
    (missing / names[2]).unlink()
    with pytest.raises(WalCorruptError, match="missing WAL segment"):
        read_back(missing)


def test_truncated_middle_segment_is_corruption(tmp_path: Path) -> None:
    d = tmp_path / "wal"
    w = WAL.create(str(d), META, segment_size=SMALL, preallocate=False)
    for i in range(1, 200, 10):
        w.save(HardState(1, 1, i), ents(i, i + 9, size=100))
    w.close()
    mid = segments(d)[1]
    with open(mid, "r+b") as f:
        f.truncate(mid.stat().st_size - 50)
    with pytest.raises(WalCorruptError):
        read_back(d)


# ---------------------------------------------------------------------------- snapshots


def test_snapshot_marker_and_read_from_snapshot(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META)
    w.save(HardState(1, 1, 20), ents(1, 20))
    w.save_snapshot(WalSnapshot(index=10, term=1))
    w.save(HardState(2, 1, 25), ents(21, 30, term=2))
    w.close()
    _, state, entries = read_back(wal_dir, WalSnapshot(10, 1))
    assert entries == ents(11, 20) + ents(21, 30, term=2)
    assert state == HardState(2, 1, 25)
    assert read_back(wal_dir, WalSnapshot(0, 0))[2] == ents(1, 20) + ents(21, 30, term=2)
    with pytest.raises(SnapshotNotFoundError):
        read_back(wal_dir, WalSnapshot(15, 1))
    with pytest.raises(SnapshotMismatchError):
        read_back(wal_dir, WalSnapshot(10, 2))


def test_snapshot_beyond_last_entry_then_entries(wal_dir: Path) -> None:
    """A follower installs snapshot 100 while its log ends at 5; entries resume at 101."""
    w = WAL.create(str(wal_dir), META, segment_size=SMALL, preallocate=False)
    w.save(HardState(1, 1, 5), ents(1, 5))
    w.save_snapshot(WalSnapshot(100, 3))
    w.save(HardState(3, 0, 100), [])
    for i in range(101, 200, 10):
        w.save(HardState(3, 0, i), ents(i, i + 9, term=3, size=100))
    w.close()
    assert int(segments(wal_dir)[1].name.split("-")[1][:16], 16) > 100
    _, state, entries = read_back(wal_dir, WalSnapshot(100, 3))
    assert entries == [e for i in range(101, 200, 10) for e in ents(i, i + 9, term=3, size=100)]
    with pytest.raises(WalEntryGapError):
        read_back(wal_dir, WalSnapshot(0, 0))


def test_valid_snapshot_entries_filters_by_commit(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META, segment_size=SMALL, preallocate=False)
    w.save(HardState(1, 1, 12), ents(1, 30, size=100))
    w.save_snapshot(WalSnapshot(10, 1))
    w.save(HardState(1, 1, 40), ents(31, 60, size=100))
    w.save_snapshot(WalSnapshot(35, 1))
    w.save_snapshot(WalSnapshot(55, 1))  # the hard state committing 55 never made it
    assert valid_snapshot_entries(str(wal_dir)) == [WalSnapshot(0, 0), WalSnapshot(10, 1), WalSnapshot(35, 1)]
    w.close()


def test_release_to(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META, segment_size=SMALL, preallocate=False)
    w.save(HardState(1, 1, 0), [])
    for i in range(1, 301, 10):
        w.save(HardState(1, 1, i), ents(i, i + 9, size=100))
    names = [p.name for p in segments(wal_dir)]
    firsts = [int(n.split("-")[1][:16], 16) for n in names]
    assert len(names) > 6
    w.release_to(0)
    w.release_to(firsts[1])  # keeps the segment before the one starting at firsts[1]
    assert [p.name for p in segments(wal_dir)] == names
    target = firsts[4] + 2  # lies inside segment 4
    w.save_snapshot(WalSnapshot(target, 1))
    w.release_to(target)
    left = [p.name for p in segments(wal_dir)]
    assert left == names[4:]
    w.save(None, ents(301, 305))
    w.close()
    meta, state, entries = read_back(wal_dir, WalSnapshot(target, 1))
    assert meta == META
    assert state == HardState(1, 1, 291)  # hard state carried in every segment header
    assert [e.index for e in entries] == list(range(target + 1, 306))
    with pytest.raises(SnapshotNotFoundError):
        read_back(wal_dir, WalSnapshot(0, 0))
    # Without a snapshot every retained entry comes back, starting mid-log.
    assert read_back(wal_dir)[2][-1].index == 305


def test_release_to_also_removes_segments_opened_past(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META, segment_size=SMALL, preallocate=False)
    for i in range(1, 201, 10):
        w.save(HardState(1, 1, i), ents(i, i + 9, size=100))
    w.save_snapshot(WalSnapshot(150, 1))
    w.close()
    before = segments(wal_dir)
    w, _, _, entries = reopen(wal_dir, WalSnapshot(150, 1))
    assert [e.index for e in entries] == list(range(151, 201))
    w.release_to(150)
    after = segments(wal_dir)
    assert 1 <= len(after) < len(before) and after == before[-len(after) :]
    w.close()
    assert read_back(wal_dir, WalSnapshot(150, 1))[2] == entries


# ---------------------------------------------------------------------------- locking and threads


def test_two_opens_conflict_on_the_lock(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META)
    with pytest.raises(WalLockedError):
        WAL.open(str(wal_dir))
    w.close()
    w1 = WAL.open(str(wal_dir))
    with pytest.raises(WalLockedError):
        WAL.open(str(wal_dir))
    with pytest.raises(WalLockedError):
        WAL.open(str(wal_dir), WalSnapshot(0, 0))
    w1.close()
    WAL.open(str(wal_dir)).close()


def test_lock_conflicts_across_processes(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META, segment_size=SMALL, preallocate=False)
    for i in range(1, 100, 10):
        w.save(None, ents(i, i + 9, size=100))  # also holds locks on cut segments
    code = (
        "import sys\n"
        "from etcdpy.wal import WAL, WalLockedError\n"
        "try:\n"
        "    WAL.open(sys.argv[1])\n"
        "except WalLockedError:\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(wal_dir)], timeout=60)
    assert proc.returncode == 3
    w.close()
    assert subprocess.run([sys.executable, "-c", code, str(wal_dir)], timeout=60).returncode == 0


def test_save_from_worker_thread(wal_dir: Path) -> None:
    w = WAL.create(str(wal_dir), META, segment_size=SMALL)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(1, 101):
                w.save(HardState(1, 1, i - 1), ents(i, i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    t.join()
    w.close()
    assert not errors
    assert read_back(wal_dir)[2] == [e for i in range(1, 101) for e in ents(i, i)]


# ---------------------------------------------------------------------------- model-based


@st.composite
def operations(draw: st.DrawFn) -> list[tuple]:
    ops: list[tuple] = []
    last = 0
    term = 1
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["append", "append", "append", "overwrite", "reopen", "state"]))
        if kind == "overwrite" and last > 1:
            term += 1
            start = draw(st.integers(max(1, last - 5), last))
            n = draw(st.integers(1, 6))
            ops.append(("save", start, start + n - 1, term, draw(st.integers(0, 300))))
            last = start + n - 1
        elif kind == "reopen":
            ops.append(("reopen",))
        elif kind == "state":
            ops.append(("state", term, draw(st.integers(0, last))))
        else:
            n = draw(st.integers(0, 6))
            ops.append(("save", last + 1, last + n, term, draw(st.integers(0, 300))))
            last += n
    return ops


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations(), preallocate=st.booleans())
def test_model_against_list(ops: list[tuple], preallocate: bool) -> None:
    """Random appends, overwrites, hard states and reopen cycles match an in-memory model."""
    with tempfile.TemporaryDirectory() as tmp:
        d = str(Path(tmp) / "wal")
        kw = {"segment_size": 1024, "preallocate": preallocate}
        w = WAL.create(d, META, **kw)  # type: ignore[arg-type]
        model: list[Entry] = []
        state = HardState()
        try:
            for op in ops:
                if op[0] == "save":
                    _, first, last, term, size = op
                    batch = [
                        Entry(term=term, index=i, data=bytes([i % 255 + 1]) * size) for i in range(first, last + 1)
                    ]
                    w.save(None, batch)
                    if batch:
                        del model[first - 1 :]
                        model.extend(batch)
                elif op[0] == "state":
                    state = HardState(term=op[1], vote=1, commit=op[2])
                    w.save(state, [])
                else:
                    w.close()
                    w = WAL.open(d, **kw)  # type: ignore[arg-type]
                    meta, got_state, got = w.read_all()
                    assert (meta, got_state, got) == (META, state, model)
        finally:
            w.close()
        assert read_back(Path(d), **kw) == (META, state, model)
