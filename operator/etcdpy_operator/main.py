"""`etcdpy-operator`: parse the flags, build the runtime, run kopf."""

from __future__ import annotations

import argparse
import logging
import os
import sys

OPERATOR_DESCRIPTION = "Runs EtcdCluster resources (etcd.etcdpy.io/v1alpha1) as etcdpy members."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etcdpy-operator", description=OPERATOR_DESCRIPTION)
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="namespace to watch (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    p.add_argument("--health-port", type=int, default=8080, help="GET /healthz port (0: off)")
    p.add_argument("--metrics-port", type=int, default=9090, help="GET /metrics port (0: off)")
    p.add_argument("--peering", default=None, help="kopf peering name (several replicas); default standalone")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--interval", type=float, default=5.0, help="seconds between idle reconciles")
    p.add_argument("--etcd-timeout", type=float, default=2.0, help="deadline of each etcd call, seconds")
    p.add_argument("--kubeconfig", default=None, help="kubeconfig outside a cluster (default $KUBECONFIG)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # gRPC's own resolver ignores /etc/hosts-based pod names in some set-ups; the system resolver does not.
    os.environ.setdefault("GRPC_DNS_RESOLVER", "native")

    import kopf
    from etcdpy import __version__ as etcdpy_version
    from prometheus_client import start_http_server

    from etcdpy_operator import handlers
    from etcdpy_operator.executor import CrashPoints
    from etcdpy_operator.kube import Kube, load_api_client
    from etcdpy_operator.metrics import Metrics
    from etcdpy_operator.observe import Settings
    from etcdpy_operator.reconcile import Runtime

    kopf.configure(
        verbose=args.log_level == "debug", quiet=args.log_level in ("warning", "error"), log_format=kopf.LogFormat.JSON
    )
    logging.getLogger().setLevel(args.log_level.upper())
    try:
        api = load_api_client(args.kubeconfig)
    except Exception as e:
        sys.stderr.write(f"etcdpy-operator: cannot load Kubernetes credentials: {e}\n")
        raise SystemExit(2) from e
    metrics = Metrics()
    runtime = Runtime(
        kube=Kube(api),
        settings=Settings(
            default_version=etcdpy_version,
            image_repository=os.environ.get("ETCDPY_IMAGE_REPOSITORY", "etcdpy"),
            etcd_timeout=args.etcd_timeout,
        ),
        metrics=metrics,
        crash=CrashPoints.from_env(),
        interval=args.interval,
    )
    registry = kopf.OperatorRegistry()

    handlers.register(registry, runtime)
    if args.metrics_port:
        try:
            start_http_server(args.metrics_port, registry=metrics.registry)
        except OSError as e:
            sys.stderr.write(f"etcdpy-operator: cannot serve metrics on port {args.metrics_port}: {e}\n")
            raise SystemExit(2) from e
    kopf.run(
        registry=registry,
        standalone=args.peering is None,
        peering_name=args.peering,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
    )


if __name__ == "__main__":
    main()
