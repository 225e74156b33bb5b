"""`etcdpy snapshot save|restore|status`.

`save FILE --endpoints URL [-w simple|json]` takes a snapshot from a running member
(etcdctl's `snapshot save`, plus verification); `restore` and `status [-w
simple|table|json]` are offline (etcdutl's). Flags, defaults and output shapes
follow etcdctl 3.4 / etcdutl 3.5; `-w json` is for scripts and operators. Any
failure is one line on stderr ("Error: ...") and exit status 1; bad usage exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import NoReturn

from etcdpy.etcdutl.restore import RestoreConfig, RestoreError, restore
from etcdpy.etcdutl.save import SaveConfig, SaveError, save
from etcdpy.etcdutl.snapshot_file import SnapshotFileError, SnapshotInfo, human_bytes, inspect


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"Error: {message}\n")
        raise SystemExit(2)


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="etcdpy snapshot", description="Offline snapshot tools (etcdutl snapshot).", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("restore", help="restore a snapshot into a new member data directory", allow_abbrev=False)
    r.add_argument("snapshot", help="snapshot file (`etcdctl/etcdpy snapshot save`, from etcd or etcdpy)")
    r.add_argument("--name", default="default", help="human-readable name for this member")
    r.add_argument("--data-dir", default="", help="path to the data directory (default: ${name}.etcd)")
    r.add_argument("--initial-cluster", default=None, help="initial cluster configuration (name=url,...)")
    r.add_argument("--initial-cluster-token", default="etcd-cluster", help="initial cluster token of the new cluster")
    r.add_argument("--initial-advertise-peer-urls", default="http://localhost:2380", help="this member's peer URLs")
    r.add_argument(
        "--skip-hash-check", action="store_true",
        help="accept a file whose sha256 checksum is missing (a bare db file) or does not match",
    )
    r.add_argument("-w", "--write-out", choices=("simple", "json"), default="simple", help="output format")

    v = sub.add_parser("save", help="save a running member's snapshot to FILE (verified, written atomically)",
                       allow_abbrev=False)
    v.add_argument("file")
    v.add_argument("--endpoints", default="127.0.0.1:2379", help="the one member to take the snapshot from")
    v.add_argument("--cacert", default="", help="CA bundle to verify a TLS member")
    v.add_argument("--cert", default="", help="client certificate for TLS")
    v.add_argument("--key", default="", help="client key for TLS")
    v.add_argument("--user", default="", help="username:password when auth is enabled")
    v.add_argument("--dial-timeout", type=_duration, default=2.0, help="connection timeout (e.g. 2s)")
    v.add_argument("--command-timeout", type=_duration, default=0.0, help="whole transfer timeout (0 = none)")
    v.add_argument("-w", "--write-out", choices=("simple", "json"), default="simple", help="output format")

    s = sub.add_parser("status", help="print a snapshot file's hash, revision, key count and size", allow_abbrev=False)
    s.add_argument("snapshot")
    s.add_argument("-w", "--write-out", choices=("simple", "table", "json"), default="simple", help="output format")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = _build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if ns.command == "restore":
            return _restore(ns)
        if ns.command == "save":
            return _save(ns)
        return _status(ns)
    except (RestoreError, SnapshotFileError, SaveError) as e:
        sys.stderr.write(f"Error: {e}\n")
        return 1


def _restore(ns: argparse.Namespace) -> int:
    from etcdpy.server.membership import parse_initial_cluster

    peer_urls = [u.strip() for u in ns.initial_advertise_peer_urls.split(",") if u.strip()]
    spec = ns.initial_cluster or f"{ns.name}={','.join(peer_urls)}"  # etcd's default: just this member
    try:
        initial = parse_initial_cluster(spec)
    except ValueError as e:
        raise RestoreError(f"invalid --initial-cluster: {e}") from None
    cfg = RestoreConfig(
        snapshot_path=ns.snapshot,
        name=ns.name,
        data_dir=ns.data_dir,
        initial_cluster=initial,
        initial_cluster_token=ns.initial_cluster_token,
        initial_advertise_peer_urls=peer_urls,
        skip_hash_check=ns.skip_hash_check,
    )
    res = restore(cfg)
    if ns.write_out == "json":
        print(json.dumps({
            "snapshot": ns.snapshot, "dataDir": res.data_dir, "revision": res.snapshot.revision,
            "memberId": f"{res.member_id:x}", "clusterId": f"{res.cluster_id:x}",
        }, separators=(",", ":")))
        return 0
    print(
        f"restored snapshot {ns.snapshot} (revision {res.snapshot.revision}) into {res.data_dir}: "
        f"member {res.member_id:x} of new cluster {res.cluster_id:x}"
    )
    return 0


def _duration(text: str) -> float:
    """etcdctl's durations: "2s", "500ms", "1m", or bare seconds."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * scale
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}") from None


def _save(ns: argparse.Namespace) -> int:
    endpoints = [e for e in ns.endpoints.split(",") if e]
    if len(endpoints) != 1:
        raise SaveError(f"snapshot must be requested to one selected node, not multiple {endpoints}")
    res = save(SaveConfig(
        path=ns.file, endpoint=endpoints[0], cacert=ns.cacert, cert=ns.cert, key=ns.key, user=ns.user,
        dial_timeout=ns.dial_timeout, command_timeout=ns.command_timeout,
    ))
    if ns.write_out == "json":
        i = res.info
        print(json.dumps({
            "path": ns.file, "hash": i.hash, "revision": i.revision, "totalKey": i.total_keys,
            "totalSize": i.total_size, "fileSize": i.file_size, "sha256": res.sha256,
            "seconds": round(res.seconds, 3),
        }, separators=(",", ":")))
    else:
        print(f"Snapshot saved at {ns.file}")
    return 0


def _status(ns: argparse.Namespace) -> int:
    info = inspect(ns.snapshot)
    print(format_status(info, ns.write_out))
    return 0


def format_status(info: SnapshotInfo, fmt: str) -> str:
    """etcdctl's three shapes: "hash, rev, keys, size", a table, or {"hash":..,"revision":..,...}."""
    if fmt == "json":
        return json.dumps(
            {"hash": info.hash, "revision": info.revision, "totalKey": info.total_keys, "totalSize": info.total_size},
            separators=(",", ":"),
        )
    row = [f"{info.hash:x}", str(info.revision), str(info.total_keys), human_bytes(info.total_size)]
    if fmt == "simple":
        return ", ".join(row)
    return _table(["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"], row)


def _table(header: list[str], row: list[str]) -> str:
    """tablewriter as etcdctl configures it: centred headers, right-aligned cells."""
    widths = [max(len(h), len(v)) for h, v in zip(header, row)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def centre(text: str, w: int) -> str:
        left = (w - len(text)) // 2
        return " " * left + text + " " * (w - len(text) - left)

    head = "|" + "|".join(f" {centre(h, w)} " for h, w in zip(header, widths)) + "|"
    body = "|" + "|".join(f" {v.rjust(w)} " for v, w in zip(row, widths)) + "|"
    return "\n".join([rule, head, rule, body, rule])
