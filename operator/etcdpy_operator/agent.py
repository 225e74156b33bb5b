"""`python -m etcdpy_operator.agent backup ...`: what a backup Pod runs, next to the backup volume.

Why a Pod and not the operator: only a Pod can mount the backup PVC. The Pod saves one member's snapshot
(`etcdpy snapshot save`'s code: sha256 verified, every page read, written atomically), names it
`<cluster>-<UTC time>-r<revision>.db`, writes a small metadata file next to it (its presence is what makes a
backup count), prunes older scheduled backups by retention (only now that a newer one is verified), and prints
one result line the operator reads from the Pod's log. Exit 0 only when the backup counts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import Any

from etcdpy.etcdutl.save import _fsync_dir

from etcdpy_operator.backup import (
    StoredBackup,
    backup_file_name,
    parse_backup_file_name,
    parse_duration,
    prune_victims,
)

RESULT_PREFIX = "ETCDPY-BACKUP-RESULT "


def write_atomically(path: str, data: bytes) -> None:
    """Write `path` so that a reader sees the old file or the whole new one, never a part."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def read_stored(directory: str, cluster: str) -> list[StoredBackup]:
    """This cluster's verified backups on the volume (a .db without its metadata file does not count)."""
    out = []
    for name in sorted(os.listdir(directory)):
        parsed = parse_backup_file_name(cluster, name)
        if parsed is None:
            continue
        try:
            with open(os.path.join(directory, name + ".json"), "rb") as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue
        out.append(StoredBackup(name, parsed[0], scheduled=meta.get("trigger", "Scheduled") == "Scheduled"))
    return out


def backup(ns: argparse.Namespace) -> dict[str, Any]:
    """Take, verify, name, describe and prune; returns the result (raises SystemExit on failure)."""
    from etcdpy.etcdutl.save import SaveConfig, SaveError, save
    from etcdpy.etcdutl.snapshot_file import SnapshotFileError, inspect

    os.makedirs(ns.dir, exist_ok=True)
    for stale in os.listdir(ns.dir):  # a previous backup Pod killed mid-way (one backup at a time per cluster)
        if stale.startswith(f".inprogress-{ns.cluster}-"):
            os.remove(os.path.join(ns.dir, stale))
    tmp = os.path.join(ns.dir, f".inprogress-{ns.cluster}-{os.getpid()}.db")
    cfg = SaveConfig(path=tmp, endpoint=ns.endpoint, cacert=ns.cacert, cert=ns.cert, key=ns.key, command_timeout=0)
    try:
        saved = save(cfg)
        info = inspect(tmp, verify_checksum=True, require_checksum=True)  # the status read before it counts
    except (SaveError, SnapshotFileError) as e:
        raise SystemExit(_fail(str(e))) from None
    taken = dt.datetime.now(dt.UTC)
    name = backup_file_name(ns.cluster, taken, info.revision)
    final = os.path.join(ns.dir, name)
    os.replace(tmp, final)
    _fsync_dir(ns.dir)
    meta = {
        "cluster": ns.cluster,
        "name": name,
        "time": taken.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "revision": info.revision,
        "size": info.file_size,
        "sha256": saved.sha256,
        "totalKeys": info.total_keys,
        "hash": info.hash,
        "member": ns.member,
        "endpoint": ns.endpoint,
        "trigger": ns.trigger,
        "request": ns.request,
        "seconds": round(saved.seconds, 3),
    }
    write_atomically(final + ".json", json.dumps(meta, indent=1).encode())
    max_age = parse_duration(ns.max_age) if ns.max_age else None
    victims = prune_victims(read_stored(ns.dir, ns.cluster), name, taken, ns.max_count, max_age)
    for victim in victims:
        for path in (os.path.join(ns.dir, victim + ".json"), os.path.join(ns.dir, victim)):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    if victims:
        _fsync_dir(ns.dir)
    meta["pruned"] = victims
    meta["claim"] = ns.claim
    return meta


def _fail(message: str) -> int:
    print(RESULT_PREFIX + json.dumps({"error": message}), flush=True)
    sys.stderr.write(f"backup failed: {message}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m etcdpy_operator.agent")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backup", help="save, verify and store one snapshot on the backup volume")
    b.add_argument("--endpoint", required=True, help="client URL of the member to take the snapshot from")
    b.add_argument("--dir", required=True, help="directory on the backup volume")
    b.add_argument("--cluster", required=True)
    b.add_argument("--member", default="")
    b.add_argument("--claim", default="")
    b.add_argument("--trigger", default="Scheduled", choices=("Scheduled", "OnDemand"))
    b.add_argument("--request", default="", help="the EtcdBackup served (on demand)")
    b.add_argument("--max-count", type=int, default=0)
    b.add_argument("--max-age", default="")
    b.add_argument("--cacert", default="")
    b.add_argument("--cert", default="")
    b.add_argument("--key", default="")
    ns = p.parse_args(argv)
    result = backup(ns)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
