"""`python -m etcdpy_operator`: the same as the `etcdpy-operator` console script."""

from etcdpy_operator.main import main

main()
