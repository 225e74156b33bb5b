"""`python -m etcdpy.bench`: the guard matters because workers are spawned, and a
spawned child re-imports the parent's main module."""

from etcdpy.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
