"""Leases (etcd's server/lease): the lessor, its storage format and its expiry loop.

`Lessor` holds the leases and is changed by the apply step; `ExpiredLeaseRevoker`
is the leader-only task that revokes expired leases through the raft log;
`renew_on_primary` is what a keep-alive waits on.
"""

from etcdpy.lease.expiry import ExpiredLeaseRevoker, renew_on_primary
from etcdpy.lease.lessor import (
    BUCKET_LEASE,
    FOREVER_SECONDS,
    MAX_LEASE_TTL,
    Lease,
    LeaseExpired,
    Lessor,
    NotPrimary,
    min_lease_ttl,
)

__all__ = [
    "BUCKET_LEASE",
    "ExpiredLeaseRevoker",
    "FOREVER_SECONDS",
    "Lease",
    "LeaseExpired",
    "Lessor",
    "MAX_LEASE_TTL",
    "NotPrimary",
    "min_lease_ttl",
    "renew_on_primary",
]
