"""Test-only network faults: make this member drop all traffic to and from chosen peers.

Cluster and fault tests need partitions without root (no iptables) and without restarting
members. Every member reads the file named by the environment variable `ETCDPY_FAULT_FILE`
(or the `fault_file` argument of `Transport`) every 100 ms; when it does not exist, nothing
is blocked. Its content is JSON:

    {"blocked": ["8e9e05c52164694d", 1234567, "http://127.0.0.1:2380"]}

Each item names a peer: a member id (an integer, or a string of hex digits as etcd prints
member ids) or one of its peer URLs. While a peer is blocked this member

- drops every raft message it would send there (reporting the peer unreachable to raft,
  as a broken connection would) and closes its stream and snapshot transfers to it;
- refuses the peer's streams and snapshots and drops whatever arrives on an open stream
  from it (so the other side sees its stream break even when only one member is told);
- refuses forwarded lease requests from it and fails its own peer RPCs to it.

A partition between A and B needs the block on one side only, though listing it on both
sides is closer to a real network split. Write the file atomically (write a temporary file
and rename it): a half-written file fails to parse and is ignored until the next poll (the
previous setting stays). Removing the file or writing `{"blocked": []}` heals the partition.
`Transport.set_blocked` does the same in-process and is combined with the file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterable

ENV_FAULT_FILE = "ETCDPY_FAULT_FILE"


def parse_blocked(items: Iterable[object]) -> tuple[frozenset[int], frozenset[str]]:
    """Split the `blocked` list into member ids and peer URLs (see the module docstring)."""
    ids: set[int] = set()
    urls: set[str] = set()
    for item in items:
        if isinstance(item, bool):
            raise ValueError(f"invalid blocked peer {item!r}")
        if isinstance(item, int):
            ids.add(item)
        elif isinstance(item, str) and "://" in item:
            urls.add(normalize_url(item))
        elif isinstance(item, str):
            ids.add(int(item, 16))
        else:
            raise ValueError(f"invalid blocked peer {item!r}")
    return frozenset(ids), frozenset(urls)


def normalize_url(url: str) -> str:
    """URLs compare without a trailing slash and case-insensitively in scheme and host."""
    return url.strip().rstrip("/").lower()


class FaultInjector:
    """The set of blocked peers, from a polled JSON file and/or set programmatically."""

    def __init__(
        self,
        path: str | None,
        *,
        poll_interval: float = 0.1,
        logger: logging.Logger | None = None,
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.log = logger or logging.getLogger("etcdpy.rafthttp")
        self._file_ids: frozenset[int] = frozenset()
        self._file_urls: frozenset[str] = frozenset()
        self._manual_ids: frozenset[int] = frozenset()
        self._manual_urls: frozenset[str] = frozenset()
        self._stamp: tuple[int, int] | None = None
        self.active = False

    def set_blocked(self, ids: Iterable[int] = (), urls: Iterable[str] = ()) -> None:
        self._manual_ids = frozenset(ids)
        self._manual_urls = frozenset(normalize_url(u) for u in urls)
        self._update_active()

    def _update_active(self) -> None:
        self.active = bool(self._file_ids or self._file_urls or self._manual_ids or self._manual_urls)

    def is_blocked(self, peer_id: int, urls: Iterable[str] = ()) -> bool:
        """Whether traffic with `peer_id` (known under `urls`) must be dropped."""
        if not self.active:
            return False
        if peer_id in self._file_ids or peer_id in self._manual_ids:
            return True
        if self._file_urls or self._manual_urls:
            return any(normalize_url(u) in self._file_urls or normalize_url(u) in self._manual_urls for u in urls)
        return False

    def poll(self) -> bool:
        """Re-read the file if it changed; True when the blocked set changed."""
        if not self.path:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._set_file(frozenset(), frozenset(), None)
        except OSError as e:
            self.log.warning("cannot stat fault file", extra={"fields": {"path": self.path, "error": str(e)}})
            return False
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        try:
            with open(self.path, encoding="utf-8") as f:
                doc = json.load(f)
            ids, urls = parse_blocked(doc.get("blocked", []) if isinstance(doc, dict) else [])
        except (OSError, ValueError, AttributeError) as e:
            self.log.warning("ignoring unreadable fault file", extra={"fields": {"path": self.path, "error": str(e)}})
            return False
        return self._set_file(ids, urls, stamp)

    def _set_file(self, ids: frozenset[int], urls: frozenset[str], stamp: tuple[int, int] | None) -> bool:
        self._stamp = stamp
        changed = ids != self._file_ids or urls != self._file_urls
        if changed:
            self._file_ids, self._file_urls = ids, urls
            self._update_active()
            self.log.warning(
                "fault injection: blocked peers changed",
                extra={"fields": {"ids": sorted(f"{i:x}" for i in ids), "urls": sorted(urls)}},
            )
        return changed

    async def run(self, on_change: Callable[[], None]) -> None:
        """Poll until cancelled, calling `on_change` whenever the blocked set changes."""
        if not self.path:
            return
        while True:
            if self.poll():
                on_change()
            await asyncio.sleep(self.poll_interval)
