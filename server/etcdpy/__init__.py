"""etcdpy: an etcd-compatible distributed key-value server written in Python."""

__version__ = "0.1.0"

ETCD_VERSION = "3.5.13"
"""The etcd release whose client-visible behaviour etcdpy implements; reported by Maintenance.Status."""

ETCD_CLUSTER_VERSION = "3.5.0"
"""Cluster version reported alongside, as etcd reports major.minor.0."""
