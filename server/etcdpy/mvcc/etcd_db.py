"""etcd's backend database file (a bbolt file with etcd's buckets) to and from etcdpy's backend.

etcdpy's RocksDB backend already keeps etcd's buckets with etcd's encodings
(`etcdpy.mvcc.backend`: key = bucket name + NUL + key): the `key` bucket holds
revision keys and marshalled `mvccpb.KeyValue`s, `meta` the consistent index,
term and compaction revisions, `lease` `leasepb.Lease` records, `alarm`
marshalled `AlarmMember`s, `auth*` etcd's auth records. So converting is a copy
of the buckets, plus what etcd keeps in its backend and etcdpy keeps elsewhere:

* `members`: key = member id in lower-case hex, value = the member as Go's
  json.Marshal writes etcd's Member: {"id":<number>,"peerURLs":[...],"name":..,
  "clientURLs":[...]} with "isLearner":true only for a learner and name and
  client URLs omitted while empty;
* `members_removed`: key = removed member id in hex, value "removed";
* `cluster`: `clusterVersion` = "3.5.0";
* `meta` `confState`: raft's ConfState as JSON ({"voters":[..],"auto_leave":false}).

etcd creates all ten buckets when it starts, so a file written here has all ten
even when some are empty.

The conversion is pure Python and CPU-bound, so a server runs it in a child
process (`python -m etcdpy.mvcc.etcd_db CHECKPOINT OUT`, the cluster state as
JSON on stdin): a worker thread of the server would hold the GIL for most of
it and slow every request while a big database is converted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from typing import BinaryIO

from etcdpy.mvcc.bbolt import BoltReader, BoltWriter

ETCD_BUCKETS = (
    "key", "meta", "lease", "alarm", "cluster", "members", "members_removed", "auth", "authUsers", "authRoles",
)
CLUSTER_VERSION = b"3.5.0"
"""What etcd 3.5 stores under cluster/clusterVersion (the cluster's minor version)."""

MEMBERSHIP_BUCKETS = ("members", "members_removed")


@dataclass
class MemberRecord:
    """One member as etcd stores it in the `members` bucket."""

    id: int
    name: str = ""
    peer_urls: list[str] = field(default_factory=list)
    client_urls: list[str] = field(default_factory=list)
    is_learner: bool = False

    def key(self) -> bytes:
        return f"{self.id:x}".encode()

    def to_json(self) -> bytes:
        """Go's encoding of etcd's Member (field order and omitempty as in its struct tags)."""
        d: dict[str, object] = {"id": self.id, "peerURLs": self.peer_urls}
        if self.is_learner:
            d["isLearner"] = True
        if self.name:
            d["name"] = self.name
        if self.client_urls:
            d["clientURLs"] = self.client_urls
        return json.dumps(d, separators=(",", ":")).encode()


@dataclass
class ClusterState:
    """What etcd keeps in its backend about the cluster, at the moment of a snapshot."""

    members: list[MemberRecord] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    voters: list[int] = field(default_factory=list)
    learners: list[int] = field(default_factory=list)

    def to_json(self) -> bytes:
        """For the conversion child process."""
        return json.dumps({
            "members": [[m.id, m.name, m.peer_urls, m.client_urls, m.is_learner] for m in self.members],
            "removed": self.removed, "voters": self.voters, "learners": self.learners,
        }).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ClusterState:
        d = json.loads(data)
        members = [MemberRecord(int(i), n, list(p), list(c), bool(lr)) for i, n, p, c, lr in d["members"]]
        return cls(members, [int(i) for i in d["removed"]], [int(i) for i in d["voters"]],
                   [int(i) for i in d["learners"]])

    def extra_entries(self) -> dict[str, dict[bytes, bytes]]:
        """The entries etcdpy does not keep in its own backend, by bucket."""
        conf: dict[str, object] = {"voters": sorted(self.voters)}
        if self.learners:
            conf["learners"] = sorted(self.learners)
        conf["auto_leave"] = False
        return {
            "members": {m.key(): m.to_json() for m in self.members},
            "members_removed": {f"{i:x}".encode(): b"removed" for i in self.removed},
            "cluster": {b"clusterVersion": CLUSTER_VERSION},
            "meta": {b"confState": json.dumps(conf, separators=(",", ":")).encode()},
        }


def write_etcd_db(raw_items: Iterable[tuple[bytes, bytes]], f: BinaryIO, state: ClusterState | None = None) -> int:
    """Write etcdpy backend entries (raw RocksDB keys, in key order) as etcd's bbolt file.

    Returns the file size (a multiple of the page size). Keys bbolt cannot hold
    (empty ones) are left out: etcd never writes them either.
    """
    extra = state.extra_entries() if state is not None else {}
    w = BoltWriter(f)
    done: set[str] = set()
    for name_b, group in groupby(raw_items, key=lambda kv: kv[0].partition(b"\x00")[0]):
        name = name_b.decode()
        items: Iterator[tuple[bytes, bytes]] = ((raw[len(name_b) + 1 :], v) for raw, v in group)
        items = (kv for kv in items if kv[0])
        if name in extra:
            merged = dict(items)
            merged.update(extra[name])
            items = iter(sorted(merged.items()))
        w.add_bucket(name_b, items)
        done.add(name)
    for name in ETCD_BUCKETS:
        if name not in done:
            w.add_bucket(name.encode(), sorted(extra.get(name, {}).items()))
    return w.finish()


def read_etcd_db(reader: BoltReader, skip: Iterable[str] = ()) -> Iterator[tuple[str, bytes, bytes]]:
    """(bucket, key, value) of every top-level entry of an etcd db, bucket by bucket in key order.

    Nested buckets (etcd never makes them) are skipped; so are the buckets in `skip`.
    """
    skipped = set(skip)
    for name_b in reader.buckets():
        name = name_b.decode("utf-8", "replace")
        if name in skipped or b"\x00" in name_b:
            continue
        for k, v in reader.items(name_b):
            if v is not None:
                yield name, k, v


def convert_checkpoint(checkpoint_dir: str, out_path: str, state: ClusterState | None) -> int:
    """Write the etcd db of a RocksDB checkpoint (read-only) to `out_path`; returns its size."""
    from etcdpy.mvcc.backend import SnapshotStream

    stream = SnapshotStream(checkpoint_dir)  # not closed here: the checkpoint belongs to the caller
    with open(out_path, "wb") as f:
        n = write_etcd_db(stream.items(), f, state)
        f.truncate(n)
    return n


def main(argv: list[str]) -> int:
    """`python -m etcdpy.mvcc.etcd_db CHECKPOINT OUT` (ClusterState JSON on stdin): prints the size."""
    if len(argv) != 2:
        sys.stderr.write("usage: python -m etcdpy.mvcc.etcd_db CHECKPOINT_DIR OUT_FILE < cluster-state.json\n")
        return 2
    raw = sys.stdin.buffer.read()
    try:
        n = convert_checkpoint(argv[0], argv[1], ClusterState.from_json(raw) if raw.strip() else None)
    except Exception as e:  # noqa: BLE001 - one line for the parent, whatever failed
        sys.stderr.write(f"{type(e).__name__}: {e}\n")
        return 1
    print(n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
