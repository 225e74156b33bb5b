"""etcdpy.bench: a load generator that measures etcdpy against real etcd in one run.

Like etcd's `tools/benchmark`, but both targets are started (or reached) by the same
tool, driven by the same client code on the same machine at the same time of day, so
the only number worth quoting is the ratio etcdpy / etcd. Absolute numbers move with
whatever else the machine is doing; the report records the load average for that reason.
"""

from etcdpy.bench.cli import main

__all__ = ["main"]
