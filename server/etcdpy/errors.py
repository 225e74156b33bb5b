"""Typed errors that clients can observe, each carrying etcd's exact wording.

Every error a client may see is a subclass of `EtcdError` naming its gRPC
status code (by `grpc.StatusCode` member name, so this module does not depend
on grpc) and etcd's message, word for word. The API layer turns them into a
gRPC status in one place (`etcdpy.api.status`); inner layers only raise them.
"""

from __future__ import annotations


class EtcdError(Exception):
    """Base of all client-visible errors; `code` names a grpc.StatusCode member."""

    code: str = "UNKNOWN"
    message: str = "etcdserver: unknown error"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


def _error(name: str, code: str, message: str) -> type[EtcdError]:
    return type(name, (EtcdError,), {"code": code, "message": message, "__doc__": message})


# InvalidArgument
ErrEmptyKey = _error("ErrEmptyKey", "INVALID_ARGUMENT", "etcdserver: key is not provided")
ErrKeyNotFound = _error("ErrKeyNotFound", "INVALID_ARGUMENT", "etcdserver: key not found")
ErrValueProvided = _error("ErrValueProvided", "INVALID_ARGUMENT", "etcdserver: value is provided")
ErrLeaseProvided = _error("ErrLeaseProvided", "INVALID_ARGUMENT", "etcdserver: lease is provided")
ErrTooManyOps = _error("ErrTooManyOps", "INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
ErrDuplicateKey = _error("ErrDuplicateKey", "INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")
ErrRequestTooLarge = _error("ErrRequestTooLarge", "INVALID_ARGUMENT", "etcdserver: request is too large")
ErrGRPCNoSpace = _error("ErrGRPCNoSpace", "RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")
ErrTooManyRequests = _error("ErrTooManyRequests", "RESOURCE_EXHAUSTED", "etcdserver: too many requests")
ErrLeaseTTLZero = _error("ErrLeaseTTLZero", "INVALID_ARGUMENT", "etcdserver: ttl is 0")
ErrMemberBadURLs = _error("ErrMemberBadURLs", "INVALID_ARGUMENT", "etcdserver: given member URLs are invalid")
ErrUserEmpty = _error("ErrUserEmpty", "INVALID_ARGUMENT", "etcdserver: user name is empty")
ErrRoleEmpty = _error("ErrRoleEmpty", "INVALID_ARGUMENT", "etcdserver: role name is empty")
ErrAuthFailed = _error(
    "ErrAuthFailed", "INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password"
)
ErrInvalidAuthMgmt = _error("ErrInvalidAuthMgmt", "INVALID_ARGUMENT", "etcdserver: invalid auth management")
ErrInvalidSortOption = _error("ErrInvalidSortOption", "INVALID_ARGUMENT", "etcdserver: invalid sort option")
ErrPermissionNotGiven = _error("ErrPermissionNotGiven", "INVALID_ARGUMENT", "etcdserver: permission not given")
ErrAuthOldRevision = _error("ErrAuthOldRevision", "INVALID_ARGUMENT", "etcdserver: revision of auth store is old")

# OutOfRange
ErrCompacted = _error("ErrCompacted", "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
ErrFutureRev = _error("ErrFutureRev", "OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")
ErrLeaseTTLTooLarge = _error("ErrLeaseTTLTooLarge", "OUT_OF_RANGE", "etcdserver: too large lease TTL")

# NotFound
ErrLeaseNotFound = _error("ErrLeaseNotFound", "NOT_FOUND", "etcdserver: requested lease not found")
ErrMemberNotFound = _error("ErrMemberNotFound", "NOT_FOUND", "etcdserver: member not found")

# FailedPrecondition
ErrLeaseExist = _error("ErrLeaseExist", "FAILED_PRECONDITION", "etcdserver: lease already exists")
ErrMemberExist = _error("ErrMemberExist", "FAILED_PRECONDITION", "etcdserver: member ID already exist")
ErrPeerURLExist = _error("ErrPeerURLExist", "FAILED_PRECONDITION", "etcdserver: Peer URLs already exists")
ErrMemberNotEnoughStarted = _error(
    "ErrMemberNotEnoughStarted",
    "FAILED_PRECONDITION",
    "etcdserver: re-configuration failed due to not enough started members",
)
ErrMemberNotLearner = _error(
    "ErrMemberNotLearner", "FAILED_PRECONDITION", "etcdserver: can only promote a learner member"
)
ErrLearnerNotReady = _error(
    "ErrLearnerNotReady",
    "FAILED_PRECONDITION",
    "etcdserver: can only promote a learner member which is in sync with leader",
)
ErrTooManyLearners = _error(
    "ErrTooManyLearners", "FAILED_PRECONDITION", "etcdserver: too many learner members in cluster"
)
ErrRootUserNotExist = _error("ErrRootUserNotExist", "FAILED_PRECONDITION", "etcdserver: root user does not exist")
ErrRootRoleNotExist = _error(
    "ErrRootRoleNotExist", "FAILED_PRECONDITION", "etcdserver: root user does not have root role"
)
ErrUserAlreadyExist = _error("ErrUserAlreadyExist", "FAILED_PRECONDITION", "etcdserver: user name already exists")
ErrUserNotFound = _error("ErrUserNotFound", "FAILED_PRECONDITION", "etcdserver: user name not found")
ErrRoleAlreadyExist = _error("ErrRoleAlreadyExist", "FAILED_PRECONDITION", "etcdserver: role name already exists")
ErrRoleNotFound = _error("ErrRoleNotFound", "FAILED_PRECONDITION", "etcdserver: role name not found")
ErrRoleNotGranted = _error("ErrRoleNotGranted", "FAILED_PRECONDITION", "etcdserver: role is not granted to the user")
ErrPermissionNotGranted = _error(
    "ErrPermissionNotGranted", "FAILED_PRECONDITION", "etcdserver: permission is not granted to the role"
)
ErrAuthNotEnabled = _error("ErrAuthNotEnabled", "FAILED_PRECONDITION", "etcdserver: authentication is not enabled")
ErrNotLeader = _error("ErrNotLeader", "FAILED_PRECONDITION", "etcdserver: not leader")
ErrBadLeaderTransferee = _error("ErrBadLeaderTransferee", "FAILED_PRECONDITION", "etcdserver: bad leader transferee")

# PermissionDenied / Unauthenticated / DataLoss
ErrPermissionDenied = _error("ErrPermissionDenied", "PERMISSION_DENIED", "etcdserver: permission denied")
ErrInvalidAuthToken = _error("ErrInvalidAuthToken", "UNAUTHENTICATED", "etcdserver: invalid auth token")
ErrCorrupt = _error("ErrCorrupt", "DATA_LOSS", "etcdserver: corrupt cluster")

# Unavailable
ErrNoLeader = _error("ErrNoLeader", "UNAVAILABLE", "etcdserver: no leader")
ErrLeaderChanged = _error("ErrLeaderChanged", "UNAVAILABLE", "etcdserver: leader changed")
ErrNotCapable = _error("ErrNotCapable", "UNAVAILABLE", "etcdserver: not capable")
ErrStopped = _error("ErrStopped", "UNAVAILABLE", "etcdserver: server stopped")
ErrTimeout = _error("ErrTimeout", "UNAVAILABLE", "etcdserver: request timed out")
ErrTimeoutDueToLeaderFail = _error(
    "ErrTimeoutDueToLeaderFail", "UNAVAILABLE", "etcdserver: request timed out, possibly due to previous leader failure"
)
ErrTimeoutDueToConnectionLost = _error(
    "ErrTimeoutDueToConnectionLost", "UNAVAILABLE", "etcdserver: request timed out, possibly due to connection lost"
)
ErrTimeoutLeaderTransfer = _error(
    "ErrTimeoutLeaderTransfer", "UNAVAILABLE", "etcdserver: request timed out, leader transfer took too long"
)
ErrUnhealthy = _error("ErrUnhealthy", "UNAVAILABLE", "etcdserver: unhealthy cluster")
ErrNotSupportedForLearner = _error(
    "ErrNotSupportedForLearner", "UNAVAILABLE", "etcdserver: rpc not supported for learner"
)

# Auth errors that etcd 3.5 does not map to a gRPC status: clients see code Unknown
# and the auth package's own wording (checked against etcd 3.4.23).
ErrNoPasswordUser = _error(
    "ErrNoPasswordUser", "UNKNOWN", "auth: authentication failed, password was given for no password user"
)

_AUTH_PACKAGE_MESSAGES: dict[type[EtcdError], str] = {
    ErrUserEmpty: "auth: user name is empty",
    ErrUserNotFound: "auth: user not found",
    ErrPermissionDenied: "auth: permission denied",
    ErrInvalidAuthToken: "auth: invalid auth token",
    ErrAuthOldRevision: "auth: revision in header is old",
}


def unmapped_auth_error(err: EtcdError) -> EtcdError:
    """`err` as etcd's Maintenance service returns it: unmapped, so Unknown with the auth package's text.

    etcd 3.4/3.5 hand the auth store's error straight back from the admin check of
    Defragment, Snapshot, Hash, HashKV and MoveLeader, without translating it.
    """
    message = _AUTH_PACKAGE_MESSAGES.get(type(err))
    return err if message is None else EtcdError(message)
