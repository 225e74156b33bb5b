"""Request checks the gRPC layer runs before anything is proposed (etcd's api/v3rpc/key.go).

Why here and not in the applier: a request that can never succeed must not cost
a raft round trip or a log entry, and the answer must not depend on the store's
state. Everything in this module looks at the request alone; checks that need
the store (missing key for ignore_value, unknown lease, compacted revision) run
at apply time in `etcdpy.server.apply`.

The order of the checks is etcd's, because a request breaking several rules must
fail with the same error etcd reports (verified against etcd 3.4.23):

* Range: empty key, then sort order, then sort target.
* Put: empty key, then ignore_value with a value, then ignore_lease with a lease.
* Txn: op count of the top level (max of compares, success ops, failure ops),
  then every compare key, then the success ops, then the failure ops (nested
  txns recursively, with a shrinking op budget), and only when all of that
  passes, the duplicate-key rules on success, then on failure.

One deliberate difference: etcd 3.4 does not validate sort order/target and
either ignores an unknown order or panics on an unknown target; etcdpy rejects
both up front with etcd 3.5's `ErrInvalidSortOption`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from etcdpy import errors
from etcdpy.pb import rpc_pb2

DEFAULT_MAX_TXN_OPS = 128
"""etcd's --max-txn-ops default: the most ops in one branch (or compares) of a txn."""

_SORT_ORDERS = frozenset(rpc_pb2.RangeRequest.SortOrder.values())
_SORT_TARGETS = frozenset(rpc_pb2.RangeRequest.SortTarget.values())


def check_range_request(r: rpc_pb2.RangeRequest) -> None:
    """checkRangeRequest: a key is required and the sort options must be known values.

    An empty range (range_end <= key) is valid and simply matches nothing, as in etcd.
    """
    if not r.key:
        raise errors.ErrEmptyKey()
    if r.sort_order not in _SORT_ORDERS or r.sort_target not in _SORT_TARGETS:
        raise errors.ErrInvalidSortOption()


def check_put_request(r: rpc_pb2.PutRequest) -> None:
    """checkPutRequest: ignore_value/ignore_lease mean "keep the old one", so a new one is a contradiction."""
    if not r.key:
        raise errors.ErrEmptyKey()
    if r.ignore_value and r.value:
        raise errors.ErrValueProvided()
    if r.ignore_lease and r.lease != 0:
        raise errors.ErrLeaseProvided()


def check_delete_request(r: rpc_pb2.DeleteRangeRequest) -> None:
    """checkDeleteRequest: a key is required (an empty key would otherwise mean "nothing" or "all")."""
    if not r.key:
        raise errors.ErrEmptyKey()


def check_txn_request(r: rpc_pb2.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> bool:
    """Everything etcd's kvServer.Txn checks before proposing a txn; returns whether it only reads.

    First the per-op rules for the whole tree (cheap), then the duplicate-key
    rules per branch, which etcd runs last "to avoid quadratic blowup". The answer is
    etcd's isTxnReadonly (only ranges in both branches; a nested txn counts as a write),
    which the checks find out on the way: the server needs it next, and asking it
    again would look at every op a second time.
    """
    (success, nested_success), (failure, nested_failure), reads_only = _check_txn_ops(r, max_txn_ops)
    # One op alone cannot collide with anything: skip the interval bookkeeping for it.
    if len(success) > 1 or nested_success:
        check_intervals(success)
    if len(failure) > 1 or nested_failure:
        check_intervals(failure)
    return reads_only


def check_txn_ops(r: rpc_pb2.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """checkTxnRequest: op budget and per-op checks, recursively.

    A nested txn's budget is what its parent left over: max_txn_ops minus the
    parent's largest of (compares, success ops, failure ops). This bounds the
    total work of a deeply nested txn the way etcd does.
    """
    _check_txn_ops(r, max_txn_ops)


_Branch = tuple[list[rpc_pb2.RequestOp], bool]


def _check_txn_ops(r: rpc_pb2.TxnRequest, max_txn_ops: int) -> tuple[_Branch, _Branch, bool]:
    """`check_txn_ops`, returning each branch (success, failure) as a list and whether it nests
    a txn, and whether every op of both branches is a range.

    The repeated fields are sliced into lists first: iterating a protobuf (upb) repeated
    field costs about a microsecond per loop even for one element, slicing it almost nothing.
    """
    compare, success, failure = r.compare[:], r.success[:], r.failure[:]
    opc = max(len(compare), len(success), len(failure))
    if opc > max_txn_ops:
        raise errors.ErrTooManyOps()
    for c in compare:
        if not c.key:
            raise errors.ErrEmptyKey()
    budget = max_txn_ops - opc
    nested_success = nested_failure = False
    reads_only = True
    for op in success:
        kind = check_request_op(op, budget)
        if kind != "request_range":
            reads_only = False
            nested_success = nested_success or kind == "request_txn"
    for op in failure:
        kind = check_request_op(op, budget)
        if kind != "request_range":
            reads_only = False
            nested_failure = nested_failure or kind == "request_txn"
    return (success, nested_success), (failure, nested_failure), reads_only


def check_request_op(op: rpc_pb2.RequestOp, max_txn_ops: int) -> str:
    """checkRequestOp: dispatch on the op type; an op with no request set is "key not found" in etcd.

    Returns the op's kind (the name of the `request` field set).
    """
    kind = op.WhichOneof("request")
    if kind == "request_put":
        check_put_request(op.request_put)
    elif kind == "request_range":
        check_range_request(op.request_range)
    elif kind == "request_delete_range":
        check_delete_request(op.request_delete_range)
    elif kind == "request_txn":
        check_txn_ops(op.request_txn, max_txn_ops)
    else:
        raise errors.ErrKeyNotFound()
    return kind


class DeleteIntervals:
    """The key intervals deleted by a txn branch (etcd's adt.IntervalTree of deletes).

    A delete of one key is the point [key, key+"\\0"); a range delete is
    [key, range_end). A put of key k collides with a delete iff start <= k < end.
    An interval whose end is not above its start contains nothing. That includes
    range_end "\\0" (delete everything from key): etcd builds the interval
    literally and so never reports a put colliding with a from-key delete; etcdpy
    keeps that behaviour so the same txns are accepted.
    """

    def __init__(self) -> None:
        self._ivs: list[tuple[bytes, bytes]] = []

    def add_delete(self, req: rpc_pb2.DeleteRangeRequest) -> None:
        end = req.range_end if req.range_end else req.key + b"\x00"
        self._ivs.append((req.key, end))

    def union(self, other: DeleteIntervals) -> None:
        self._ivs.extend(other._ivs)

    def contains(self, key: bytes) -> bool:
        return any(start <= key < end for start, end in self._ivs)


def check_intervals(ops: Sequence[rpc_pb2.RequestOp]) -> tuple[set[bytes], DeleteIntervals]:
    """checkIntervals: no key may be written twice (put/put or put/delete) in one branch.

    Returns the keys put and the intervals deleted by `ops`, nested txns
    included, for the parent's check. Rules, as etcd applies them:

    * deletes of this level are collected first, so a put anywhere below a
      delete that covers it is a duplicate, regardless of op order;
    * a nested txn's then/else branches are mutually exclusive, so the same
      key put in both is fine; but each must not collide with what this level
      (or an earlier nested txn) puts or deletes;
    * a nested txn's deletes are added after its puts were checked, so an
      earlier nested txn's put followed by a later nested txn's delete of the
      same key is accepted (the reverse order is refused) — etcd's asymmetry,
      kept so that etcdpy accepts exactly the txns etcd accepts;
    * overlapping deletes are fine; a range op never conflicts.
    """
    dels = DeleteIntervals()
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            dels.add_delete(op.request_delete_range)

    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = check_intervals(op.request_txn.success)
        puts_else, dels_else = check_intervals(op.request_txn.failure)
        _add_puts(puts, dels, puts_then, safe=frozenset())
        _add_puts(puts, dels, puts_else, safe=frozenset(puts_then))
        dels.union(dels_then)
        dels.union(dels_else)

    _add_puts(puts, dels, (op.request_put.key for op in ops if op.WhichOneof("request") == "request_put"), frozenset())
    return puts, dels


def _add_puts(puts: set[bytes], dels: DeleteIntervals, keys: Iterable[bytes], safe: frozenset[bytes]) -> None:
    """Add `keys` to `puts`, refusing a key put twice (unless in `safe`) or deleted."""
    for k in keys:
        if k in puts and k not in safe:
            raise errors.ErrDuplicateKey()
        if dels.contains(k):
            raise errors.ErrDuplicateKey()
        puts.add(k)
