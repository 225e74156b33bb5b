"""`python -m etcdpy` runs the server, like the `etcdpy` command."""

from etcdpy.cli import main

raise SystemExit(main())
