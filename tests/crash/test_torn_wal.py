"""A crash in the middle of a WAL write leaves a torn last record; the member must repair it.

The torn record is forged at the end of valid data in the last segment (a header
promising more payload than was written, the rest of the preallocated segment
still zeros), which is what a crash between write() and fdatasync leaves
behind. etcdpy's WAL format is its own, so this runs against etcdpy only.
"""

from __future__ import annotations

import os
import signal

import pytest

from harness import Member, target
from etcdpy.raft.types import Entry
from etcdpy.wal import WAL
from etcdpy.wal import record as rec

pytestmark = pytest.mark.skipif(target() != "etcdpy", reason="forges a record in etcdpy's own WAL format")


def _forge_torn_record(wal_dir: str) -> str:
    """Write the start of a genuine next record (valid header, chained CRC) and stop mid-payload."""
    w = WAL.open(wal_dir, preallocate=False)
    try:
        _, _, ents = w.read_all()
        path, offset, crc = w.segment_paths()[-1], w.tail_offset, w._crc
    finally:
        w.close()
    last = ents[-1]
    parts: list[bytes] = []
    rec.append_entry(parts, Entry(term=last.term, index=last.index + 1, data=os.urandom(4096)), crc)
    record = b"".join(parts)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(record[:600])  # header and part of the payload; the rest of the sector run stays zero
        f.flush()
        os.fsync(f.fileno())
    return path


def test_torn_last_record_is_repaired_and_nothing_acknowledged_is_lost(fresh_member: Member) -> None:
    client = fresh_member.grpc()
    pb = client.pb
    acked = {}
    for i in range(200):
        key = f"torn/{i:04d}".encode()
        acked[key] = client.kv.Put(pb.PutRequest(key=key, value=b"v%d" % i)).header.revision
    fresh_member.kill(signal.SIGKILL)
    _forge_torn_record(str(fresh_member.data_dir / "member" / "wal"))

    fresh_member.start()
    client = fresh_member.grpc()
    resp = client.kv.Range(pb.RangeRequest(key=b"torn/", range_end=b"torn0"))
    assert {kv.key: kv.mod_revision for kv in resp.kvs} == acked
    # The repaired log accepts appends, and they survive another restart.
    rev = client.kv.Put(pb.PutRequest(key=b"torn/after", value=b"x")).header.revision
    assert rev == max(acked.values()) + 1
    fresh_member.kill(signal.SIGKILL)
    fresh_member.start()
    got = fresh_member.grpc().kv.Range(pb.RangeRequest(key=b"torn/after"))
    assert got.kvs[0].mod_revision == rev
