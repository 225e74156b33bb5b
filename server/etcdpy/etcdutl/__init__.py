"""Offline tools for a member's data (etcd's etcdutl): `etcdpy snapshot restore|status`.

`snapshot_file` reads and verifies snapshot files, `restore` builds a new data
directory from one, `cli` is the command line.
"""

from etcdpy.etcdutl.cli import main

__all__ = ["main"]
