"""Authentication and role-based access control, as etcd's server/auth package does it."""

from etcdpy.auth.perms import READ, READWRITE, WRITE, UnifiedRangePermissions, is_valid_permission_range
from etcdpy.auth.simple_token import SimpleTokenProvider, gen_token_prefix, token_index
from etcdpy.auth.store import ROOT_ROLE, ROOT_USER, AuthInfo, AuthStore, AuthTx

__all__ = [
    "READ",
    "READWRITE",
    "ROOT_ROLE",
    "ROOT_USER",
    "WRITE",
    "AuthInfo",
    "AuthStore",
    "AuthTx",
    "SimpleTokenProvider",
    "UnifiedRangePermissions",
    "gen_token_prefix",
    "is_valid_permission_range",
    "token_index",
]
