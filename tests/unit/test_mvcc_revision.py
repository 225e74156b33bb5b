"""Revision encoding: the key bucket's byte order must equal revision order."""

from __future__ import annotations

import pytest

from etcdpy.mvcc.revision import (
    MARKED_REV_BYTES_LEN,
    REV_BYTES_LEN,
    Revision,
    bytes_to_rev,
    is_tombstone,
    rev_to_bytes,
)


def test_encoding_is_etcds_17_bytes() -> None:
    b = rev_to_bytes(0x0102, 0x03)
    assert len(b) == REV_BYTES_LEN
    assert b == bytes([0, 0, 0, 0, 0, 0, 1, 2]) + b"_" + bytes([0, 0, 0, 0, 0, 0, 0, 3])


def test_tombstone_mark() -> None:
    b = Revision(5, 1).to_bytes(tombstone=True)
    assert len(b) == MARKED_REV_BYTES_LEN and b.endswith(b"t")
    assert is_tombstone(b)
    assert not is_tombstone(Revision(5, 1).to_bytes())
    assert Revision.from_bytes(b) == Revision(5, 1)


def test_roundtrip_and_order() -> None:
    revs = [Revision(m, s) for m in (0, 1, 2, 255, 256, 2**40, 2**63 - 1) for s in (0, 1, 300)]
    for r in revs:
        assert bytes_to_rev(r.to_bytes()) == r
    assert sorted(revs) == sorted(revs, key=lambda r: r.to_bytes())
    # A tombstone sorts right after the live revision with the same (main, sub).
    assert Revision(3, 0).to_bytes() < Revision(3, 0).to_bytes(True) < Revision(3, 1).to_bytes()


def test_bad_bytes() -> None:
    with pytest.raises(ValueError):
        bytes_to_rev(b"short")
    with pytest.raises(ValueError):
        bytes_to_rev(b"\x00" * 8 + b"x" + b"\x00" * 8)
