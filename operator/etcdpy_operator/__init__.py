"""The etcdpy operator: runs EtcdCluster resources as etcdpy members on Kubernetes (see operator/README.md)."""

from importlib import resources

GROUP = "etcd.etcdpy.io"
VERSION = "v1alpha1"
PLURAL = "etcdclusters"
KIND = "EtcdCluster"


def crd_path(name: str = "etcdclusters.yaml") -> str:
    """Path of a bundled CRD file (package data), so the chart, tests and manifests share one copy."""
    return str(resources.files(__name__).joinpath("crds", name))
