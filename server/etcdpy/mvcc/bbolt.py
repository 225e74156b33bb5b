"""Reading and writing bbolt database files (the file format of etcd's backend), in pure Python.

etcd stores everything in one bbolt file and its snapshots *are* that file, so
etcdpy needs the format to hand its data to etcd's tools and to take etcd's data
in. The layout, as etcd-io/bbolt lays it out (all integers little-endian):

* The file is a sequence of pages of `page_size` bytes (etcd: the OS page size,
  4096). Every page starts with a 16-byte header: id u64, flags u16, count u16,
  overflow u32. A page whose content does not fit spans `overflow` more pages.
  Flags: branch 0x01, leaf 0x02, meta 0x04, freelist 0x10.
* Pages 0 and 1 are meta pages. After the header: magic u32 (0xED0CDAED),
  version u32 (2), page size u32, flags u32, root bucket (root pgid u64,
  sequence u64), freelist pgid u64, pgid u64 (the high-water mark: number of
  pages in use), txid u64, checksum u64 = FNV-1a 64 of the 56 bytes before it.
  The meta page of transaction t is page t % 2; the valid one with the highest
  txid wins.
* The freelist page lists free page ids (u64 each); count 0xFFFF means the real
  count is the first u64.
* A B+tree node is a branch page (elements: pos u32, ksize u32, child pgid u64)
  or a leaf page (elements: flags u32, pos u32, ksize u32, vsize u32). `pos` is
  the offset of the element's key (value follows it) from the element itself.
  A branch element's key is the first key of its child.
* A bucket is a leaf value with flag 0x01: a 16-byte header (root pgid u64,
  sequence u64). Root 0 means an *inline* bucket: a page image (header and leaf
  elements) follows the header inside the value. The database's top-level
  buckets are the elements of the root bucket named in the meta page.

`BoltWriter` produces a compact, fully consistent file (every page reachable,
free list empty, bbolt's `tx.Check()` finds nothing) in one pass: leaves are
written as items arrive, branches and the root bucket after, meta pages last.
`BoltReader` reads any file bbolt writes (free pages, nested and inline
buckets, overflow pages) and checks every page it touches, so a damaged file
raises `BoltError` with one line rather than returning wrong data.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

MAGIC = 0xED0CDAED
VERSION = 2
DEFAULT_PAGE_SIZE = 4096
PGID_NO_FREELIST = 0xFFFFFFFFFFFFFFFF

BRANCH_PAGE = 0x01
LEAF_PAGE = 0x02
META_PAGE = 0x04
FREELIST_PAGE = 0x10
BUCKET_LEAF_FLAG = 0x01

_PAGE_HEADER = struct.Struct("<QHHI")
_META = struct.Struct("<IIII QQ QQQ")  # magic, version, page size, flags, root, sequence, freelist, pgid, txid
_U64 = struct.Struct("<Q")
_BUCKET = struct.Struct("<QQ")
_LEAF_ELEM = struct.Struct("<IIII")
_BRANCH_ELEM = struct.Struct("<IIQ")
PAGE_HEADER_SIZE = _PAGE_HEADER.size  # 16
ELEM_SIZE = 16  # leaf and branch elements are both 16 bytes
BUCKET_HEADER_SIZE = _BUCKET.size  # 16
_META_OFFSET = PAGE_HEADER_SIZE
_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1
_MAX_DEPTH = 64


class BoltError(Exception):
    """A file that is not a usable bbolt database; the message is one line."""


def fnv64a(data: bytes) -> int:
    """Go's hash/fnv New64a, which bbolt uses for the meta page checksum."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & _MASK64
    return h


@dataclass(frozen=True)
class Meta:
    """A decoded meta page."""

    page_size: int
    flags: int
    root: int
    sequence: int
    freelist: int
    pgid: int
    txid: int

    def encode(self) -> bytes:
        """The 64 meta bytes with their checksum."""
        body = _META.pack(MAGIC, VERSION, self.page_size, self.flags, self.root, self.sequence,
                          self.freelist, self.pgid, self.txid)
        return body + _U64.pack(fnv64a(body))


def _decode_meta(buf: bytes | mmap.mmap, off: int) -> Meta | None:
    """The meta at `off` if its magic, version and checksum are right, else None."""
    end = off + _META_OFFSET + _META.size + 8
    if end > len(buf):
        return None
    body = bytes(buf[off + _META_OFFSET : off + _META_OFFSET + _META.size])
    magic, version, psize, flags, root, seq, freelist, pgid, txid = _META.unpack(body)
    (checksum,) = _U64.unpack_from(buf, off + _META_OFFSET + _META.size)
    if magic != MAGIC or version != VERSION or checksum != fnv64a(body):
        return None
    return Meta(psize, flags, root, seq, freelist, pgid, txid)


# ---------------------------------------------------------------------------------------- writer


class BoltWriter:
    """Writes a new bbolt file of top-level buckets to a seekable binary file.

    Call `add_bucket` once per bucket (any order; each bucket's items in strictly
    increasing key order, no empty keys), then `finish`. Pages are packed full:
    the file is written once and read or copied, like a compacted database.
    """

    def __init__(self, f: BinaryIO, page_size: int = DEFAULT_PAGE_SIZE) -> None:
        if page_size < 1024 or page_size & (page_size - 1):
            raise ValueError("page size must be a power of two >= 1024")
        self._f = f
        self._base = f.tell()
        self.page_size = page_size
        self._next_pgid = 3  # 0, 1: meta; 2: freelist
        self._buckets: dict[bytes, bytes] = {}

    def add_bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Write one bucket's leaves (and branches) now; its header joins the root bucket at `finish`."""
        if not name:
            raise ValueError("bucket name must not be empty")
        if name in self._buckets:
            raise ValueError(f"bucket {name!r} added twice")
        limit = self.page_size // 4  # bbolt inlines a bucket that fits in a quarter page
        head: list[tuple[bytes, bytes]] = []
        size = PAGE_HEADER_SIZE
        it = iter(items)
        for k, v in it:
            head.append((k, v))
            size += ELEM_SIZE + len(k) + len(v)
            if size > limit:
                root = self._write_tree(_chain(head, it))
                self._buckets[name] = _BUCKET.pack(root, 0)
                return
        _check_sorted(head)
        self._buckets[name] = _BUCKET.pack(0, 0) + _leaf_page_image(0, head, [0] * len(head))

    def finish(self, txid: int = 2) -> int:
        """Write the root bucket, the empty freelist and both meta pages; return the file size."""
        names = sorted(self._buckets)
        root = self._write_tree(((n, self._buckets[n]) for n in names), bucket_values=True)
        self._write_page(2, _PAGE_HEADER.pack(2, FREELIST_PAGE, 0, 0))
        pgid = self._next_pgid
        txid -= txid % 2  # the even txid goes to page 0
        for page, tx in ((0, txid), (1, txid - 1 if txid else 1)):
            meta = Meta(self.page_size, 0, root, 0, 2, pgid, tx)
            self._write_page(page, _PAGE_HEADER.pack(page, META_PAGE, 0, 0) + meta.encode())
        self._f.seek(self._base + pgid * self.page_size)
        return pgid * self.page_size

    # -- internals --------------------------------------------------------------------------

    def _write_tree(self, items: Iterable[tuple[bytes, bytes]], bucket_values: bool = False) -> int:
        """Write leaves for sorted items, then branch levels above them; return the root pgid."""
        level = self._write_leaves(items, bucket_values)
        while len(level) > 1:
            level = self._write_branches(level)
        return level[0][1]

    def _write_leaves(self, items: Iterable[tuple[bytes, bytes]], bucket_values: bool) -> list[tuple[bytes, int]]:
        """Pack leaf pages full; a page holding one big element grows overflow pages."""
        out: list[tuple[bytes, int]] = []
        page: list[tuple[bytes, bytes]] = []
        used = PAGE_HEADER_SIZE
        prev: bytes | None = None
        flag = BUCKET_LEAF_FLAG if bucket_values else 0
        for k, v in items:
            if not k:
                raise ValueError("bbolt keys must not be empty")
            if prev is not None and k <= prev:
                raise ValueError("bucket items must be in strictly increasing key order")
            prev = k
            cost = ELEM_SIZE + len(k) + len(v)
            if page and used + cost > self.page_size:
                out.append((page[0][0], self._emit_leaf(page, flag)))
                page, used = [], PAGE_HEADER_SIZE
            page.append((k, v))
            used += cost
        if page or not out:
            out.append((page[0][0] if page else b"", self._emit_leaf(page, flag)))
        return out

    def _emit_leaf(self, page: list[tuple[bytes, bytes]], flag: int) -> int:
        pgid, overflow = self._alloc(PAGE_HEADER_SIZE + sum(ELEM_SIZE + len(k) + len(v) for k, v in page))
        self._write_page(pgid, _leaf_page_image(pgid, page, [flag] * len(page), overflow))
        return pgid

    def _write_branches(self, children: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """One level of branch pages over `children` (first key, pgid); each page gets two or more."""
        groups: list[list[tuple[bytes, int]]] = [[]]
        used = PAGE_HEADER_SIZE
        for k, child in children:
            cost = ELEM_SIZE + len(k)
            if len(groups[-1]) >= 2 and used + cost > self.page_size:
                groups.append([])
                used = PAGE_HEADER_SIZE
            groups[-1].append((k, child))
            used += cost
        if len(groups) > 1 and len(groups[-1]) == 1:  # a lone child joins the previous page (it may overflow)
            groups[-2].extend(groups.pop())
        return [(g[0][0], self._emit_branch(g)) for g in groups]

    def _emit_branch(self, page: list[tuple[bytes, int]]) -> int:
        pgid, overflow = self._alloc(PAGE_HEADER_SIZE + sum(ELEM_SIZE + len(k) for k, _ in page))
        elems = bytearray()
        data = bytearray()
        n = len(page)
        for i, (k, child) in enumerate(page):
            elems += _BRANCH_ELEM.pack((n - i) * ELEM_SIZE + len(data), len(k), child)
            data += k
        self._write_page(pgid, _PAGE_HEADER.pack(pgid, BRANCH_PAGE, n, overflow) + bytes(elems) + bytes(data))
        return pgid

    def _alloc(self, size: int) -> tuple[int, int]:
        """The next free page id for `size` bytes and its overflow count (pages beyond the first)."""
        pgid = self._next_pgid
        npages = -(-size // self.page_size)
        self._next_pgid += npages
        return pgid, npages - 1

    def _write_page(self, pgid: int, image: bytes) -> None:
        """Write a page image at its place, zero-padded to whole pages."""
        pad = -len(image) % self.page_size
        self._f.seek(self._base + pgid * self.page_size)
        self._f.write(image)
        if pad:
            self._f.write(b"\x00" * pad)


def _chain(head: list[tuple[bytes, bytes]], rest: Iterator[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    yield from head
    yield from rest


def _check_sorted(items: list[tuple[bytes, bytes]]) -> None:
    for i, (k, _) in enumerate(items):
        if not k:
            raise ValueError("bbolt keys must not be empty")
        if i and k <= items[i - 1][0]:
            raise ValueError("bucket items must be in strictly increasing key order")


def _leaf_page_image(pgid: int, items: list[tuple[bytes, bytes]], flags: list[int], overflow: int = 0) -> bytes:
    """A leaf page as bbolt writes it: all element headers, then each key followed by its value."""
    n = len(items)
    elems = bytearray()
    data = bytearray()
    for i, ((k, v), fl) in enumerate(zip(items, flags)):
        pos = (n - i) * ELEM_SIZE + len(data)
        elems += _LEAF_ELEM.pack(fl, pos, len(k), len(v))
        data += k
        data += v
    return _PAGE_HEADER.pack(pgid, LEAF_PAGE, n, overflow) + bytes(elems) + bytes(data)


# ---------------------------------------------------------------------------------------- reader


class BoltReader:
    """Read-only access to a bbolt file (memory-mapped), checking every page it reads.

    `length` limits the database to the first bytes of the file (a snapshot file
    carries a sha256 after the database).
    """

    def __init__(self, path: str, length: int | None = None) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - kept open for the mmap, closed by close()
        try:
            size = os.fstat(self._file.fileno()).st_size if length is None else length
            if size < 2 * 1024:
                raise BoltError("file too small to be a bbolt database")
            self._buf: mmap.mmap | bytes = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._len = size
            self.meta = self._pick_meta()
            self.page_size = self.meta.page_size
            if self.meta.pgid * self.page_size > self._len:
                raise BoltError(
                    f"database is truncated: {self.meta.pgid} pages of {self.page_size} bytes "
                    f"need {self.meta.pgid * self.page_size} bytes, the file has {self._len}"
                )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        buf = getattr(self, "_buf", None)
        if isinstance(buf, mmap.mmap):
            buf.close()
        self._buf = b""
        self._file.close()

    def __enter__(self) -> BoltReader:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size(self) -> int:
        """bbolt's tx.Size(): the bytes in use (high-water mark × page size)."""
        return self.meta.pgid * self.page_size

    def _pick_meta(self) -> Meta:
        """bbolt's rule: the valid meta with the higher txid; the page size comes from meta 0 if valid."""
        m0 = _decode_meta(self._buf, 0)
        candidates = [m0] if m0 else []
        sizes = [m0.page_size] if m0 else [DEFAULT_PAGE_SIZE, 1024, 2048, 8192, 16384, 32768, 65536]
        for ps in sizes:
            if ps <= 0 or ps & (ps - 1):
                continue
            m1 = _decode_meta(self._buf, ps)
            if m1 is not None and m1.page_size == ps:
                candidates.append(m1)
                break
        if not candidates:
            raise BoltError("invalid database: no valid meta page (not a bbolt file, or damaged)")
        best = max(candidates, key=lambda m: m.txid)
        if best.page_size < 512 or best.page_size & (best.page_size - 1):
            raise BoltError(f"invalid database: bad page size {best.page_size}")
        return best

    # -- pages --------------------------------------------------------------------------------

    def _page(self, pgid: int, want: int) -> tuple[int, int, int]:
        """(offset, count, span in bytes) of page `pgid`, checking its header."""
        if pgid < 2 or pgid >= self.meta.pgid:
            raise BoltError(f"invalid database: page {pgid} outside 2..{self.meta.pgid - 1}")
        off = pgid * self.page_size
        pid, flags, count, overflow = _PAGE_HEADER.unpack_from(self._buf, off)
        if pid != pgid:
            raise BoltError(f"invalid database: page {pgid} identifies as {pid}")
        if flags != want and not (want == BRANCH_PAGE | LEAF_PAGE and flags in (BRANCH_PAGE, LEAF_PAGE)):
            raise BoltError(f"invalid database: page {pgid} has type {flags:#x}")
        if pgid + overflow >= self.meta.pgid:
            raise BoltError(f"invalid database: page {pgid} overflows past the end")
        return off, count, (overflow + 1) * self.page_size

    def _page_flags(self, pgid: int) -> int:
        return int(_PAGE_HEADER.unpack_from(self._buf, pgid * self.page_size)[1])

    def _leaf_elements(self, off: int, count: int, span: int) -> Iterator[tuple[int, bytes, bytes]]:
        """(flags, key, value) of a leaf page image at `off` spanning `span` bytes."""
        buf = self._buf
        end = off + span
        if PAGE_HEADER_SIZE + count * ELEM_SIZE > span:
            raise BoltError("invalid database: leaf page elements overflow the page")
        for i in range(count):
            eoff = off + PAGE_HEADER_SIZE + i * ELEM_SIZE
            flags, pos, ksize, vsize = _LEAF_ELEM.unpack_from(buf, eoff)
            k0 = eoff + pos
            if k0 + ksize + vsize > end:
                raise BoltError("invalid database: leaf element outside its page")
            yield flags, bytes(buf[k0 : k0 + ksize]), bytes(buf[k0 + ksize : k0 + ksize + vsize])

    def _branch_children(self, off: int, count: int, span: int) -> list[tuple[bytes, int]]:
        buf = self._buf
        end = off + span
        if PAGE_HEADER_SIZE + count * ELEM_SIZE > span:
            raise BoltError("invalid database: branch page elements overflow the page")
        out = []
        for i in range(count):
            eoff = off + PAGE_HEADER_SIZE + i * ELEM_SIZE
            pos, ksize, child = _BRANCH_ELEM.unpack_from(buf, eoff)
            if eoff + pos + ksize > end:
                raise BoltError("invalid database: branch element outside its page")
            out.append((bytes(buf[eoff + pos : eoff + pos + ksize]), child))
        return out

    def _walk(self, pgid: int, depth: int = 0, seen: set[int] | None = None) -> Iterator[tuple[int, bytes, bytes]]:
        """Every (flags, key, value) of the tree rooted at `pgid`, in key order."""
        if depth > _MAX_DEPTH:
            raise BoltError("invalid database: tree too deep (a page cycle?)")
        if seen is not None:
            if pgid in seen:
                raise BoltError(f"invalid database: page {pgid} referenced twice")
            seen.add(pgid)
        off, count, span = self._page(pgid, BRANCH_PAGE | LEAF_PAGE)
        if self._page_flags(pgid) == LEAF_PAGE:
            yield from self._leaf_elements(off, count, span)
            return
        for _key, child in self._branch_children(off, count, span):
            yield from self._walk(child, depth + 1, seen)

    def _bucket_entries(self, value: bytes, depth: int = 0, seen: set[int] | None = None) -> Iterator[tuple[int, bytes, bytes]]:
        """Entries of a bucket given its leaf value (header, plus the page image if inline)."""
        if len(value) < BUCKET_HEADER_SIZE:
            raise BoltError("invalid database: bucket header too short")
        root, _seq = _BUCKET.unpack_from(value, 0)
        if root != 0:
            yield from self._walk(root, depth, seen)
            return
        image = value[BUCKET_HEADER_SIZE:]
        if len(image) < PAGE_HEADER_SIZE:
            raise BoltError("invalid database: inline bucket page too short")
        _pid, flags, count, _ovf = _PAGE_HEADER.unpack_from(image, 0)
        if flags != LEAF_PAGE:
            raise BoltError("invalid database: inline bucket page is not a leaf")
        saved, self._buf = self._buf, image
        try:
            items = list(self._leaf_elements(0, count, len(image)))
        finally:
            self._buf = saved
        yield from items

    # -- public -------------------------------------------------------------------------------

    def buckets(self) -> list[bytes]:
        """Names of the top-level buckets, in key order."""
        return [k for flags, k, _v in self._walk(self.meta.root) if flags & BUCKET_LEAF_FLAG]

    def _bucket_value(self, name: bytes) -> bytes | None:
        for flags, k, v in self._walk(self.meta.root):
            if k == name:
                if not flags & BUCKET_LEAF_FLAG:
                    raise BoltError(f"invalid database: {name!r} is a key, not a bucket")
                return v
        return None

    def items(self, name: bytes) -> Iterator[tuple[bytes, bytes | None]]:
        """(key, value) of a top-level bucket in key order; a nested bucket's value is None
        (as bbolt's ForEach). A missing bucket yields nothing."""
        value = self._bucket_value(name)
        if value is None:
            return
        for flags, k, v in self._bucket_entries(value):
            yield k, (None if flags & BUCKET_LEAF_FLAG else v)

    def nested(self, path: list[bytes]) -> Iterator[tuple[bytes, bytes | None]]:
        """Like `items` for a bucket inside buckets (path of names)."""
        value = self._bucket_value(path[0])
        for name in path[1:]:
            if value is None:
                return
            value = next((v for fl, k, v in self._bucket_entries(value) if k == name and fl & BUCKET_LEAF_FLAG), None)
        if value is None:
            return
        for flags, k, v in self._bucket_entries(value):
            yield k, (None if flags & BUCKET_LEAF_FLAG else v)

    def check(self) -> None:
        """A structural check in the spirit of bbolt's tx.Check(): every page in bounds, of the
        right type, referenced once, keys in order, and (with a synced free list) every page
        either reachable or free. Raises BoltError with the first problem."""
        seen: set[int] = set()
        self._check_tree(self.meta.root, seen, 0)
        free = self._free_pages()
        both = seen & free
        if both:
            raise BoltError(f"invalid database: page {min(both)} is both in use and free")
        spans = {p: self._span_pages(p) for p in seen}
        used: set[int] = {0, 1}
        for p, n in spans.items():
            used.update(range(p, p + n))
        if self.meta.freelist != PGID_NO_FREELIST:
            used.update(range(self.meta.freelist, self.meta.freelist + self._span_pages(self.meta.freelist)))
            missing = set(range(self.meta.pgid)) - used - free
            if missing:
                raise BoltError(f"invalid database: page {min(missing)} is neither reachable nor free")

    def _span_pages(self, pgid: int) -> int:
        return int(_PAGE_HEADER.unpack_from(self._buf, pgid * self.page_size)[3]) + 1

    def _free_pages(self) -> set[int]:
        fl = self.meta.freelist
        if fl == PGID_NO_FREELIST:
            return set()
        off, count, span = self._page(fl, FREELIST_PAGE)
        start = off + PAGE_HEADER_SIZE
        if count == 0xFFFF:
            (count,) = _U64.unpack_from(self._buf, start)
            start += 8
        if start + count * 8 > off + span:
            raise BoltError("invalid database: free list overflows its page")
        ids = set(struct.unpack_from(f"<{count}Q", self._buf, start)) if count else set()
        bad = [p for p in ids if p < 2 or p >= self.meta.pgid]
        if bad:
            raise BoltError(f"invalid database: free page {bad[0]} out of range")
        return ids

    def _check_tree(self, pgid: int, seen: set[int], depth: int) -> None:
        """Walk a bucket tree, descending into every nested bucket, checking key order."""
        prev: bytes | None = None
        for flags, k, v in self._walk(pgid, depth, seen):
            if prev is not None and k <= prev:
                raise BoltError(f"invalid database: keys out of order near page {pgid}")
            prev = k
            if flags & BUCKET_LEAF_FLAG:
                if len(v) < BUCKET_HEADER_SIZE:
                    raise BoltError("invalid database: bucket header too short")
                (root,) = _U64.unpack_from(v, 0)
                if root:
                    self._check_tree(root, seen, depth + 1)
                else:
                    for fl, _k, v2 in self._bucket_entries(v):
                        if fl & BUCKET_LEAF_FLAG:
                            raise BoltError("invalid database: an inline bucket holds a bucket")
