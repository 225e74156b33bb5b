"""Tests for etcdpy.api.validate: the checks before proposing.

Every expectation below was observed on etcd 3.4.23 (through its gRPC gateway)
unless marked otherwise; the comment names the case as it was run.
"""

from __future__ import annotations

import pytest

from etcdpy import errors
from etcdpy.api import validate
from etcdpy.pb import rpc_pb2

RR = rpc_pb2.RangeRequest


# ---------------------------------------------------------------------- builders


def rng(key: bytes = b"k", end: bytes = b"", **kw: object) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_range=RR(key=key, range_end=end, **kw))


def put(key: bytes, value: bytes = b"", **kw: object) -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=key, value=value, **kw))


def dele(key: bytes, end: bytes = b"") -> rpc_pb2.RequestOp:
    return rpc_pb2.RequestOp(request_delete_range=rpc_pb2.DeleteRangeRequest(key=key, range_end=end))


def txn_op(compare=(), success=(), failure=()) -> rpc_pb2.RequestOp:  # type: ignore[no-untyped-def]
    return rpc_pb2.RequestOp(request_txn=txn(compare, success, failure))


def txn(compare=(), success=(), failure=()) -> rpc_pb2.TxnRequest:  # type: ignore[no-untyped-def]
    return rpc_pb2.TxnRequest(compare=list(compare), success=list(success), failure=list(failure))


def cmp(key: bytes = b"c") -> rpc_pb2.Compare:
    return rpc_pb2.Compare(key=key, target=rpc_pb2.Compare.VERSION, result=rpc_pb2.Compare.EQUAL, version=0)


def check_txn(t: rpc_pb2.TxnRequest, max_ops: int = validate.DEFAULT_MAX_TXN_OPS) -> None:
    validate.check_txn_request(t, max_ops)


# ---------------------------------------------------------------------- Range / Put / DeleteRange


def test_range_empty_key() -> None:
    with pytest.raises(errors.ErrEmptyKey) as ei:
        validate.check_range_request(RR(key=b""))
    assert ei.value.code == "INVALID_ARGUMENT"
    assert ei.value.message == "etcdserver: key is not provided"


def test_range_empty_key_beats_range_end() -> None:
    with pytest.raises(errors.ErrEmptyKey):
        validate.check_range_request(RR(key=b"", range_end=b"z"))


@pytest.mark.parametrize("order,target", [(3, 0), (7, 0), (-1, 0), (0, 5), (1, 9), (2, -1)])
def test_range_invalid_sort_option(order: int, target: int) -> None:
    # etcd 3.4.23 ignores an unknown order and panics (SIGSEGV in sort.Sort) on an unknown
    # target; etcd 3.5+ refuses both with this error, which etcdpy follows.
    with pytest.raises(errors.ErrInvalidSortOption) as ei:
        validate.check_range_request(RR(key=b"k", sort_order=order, sort_target=target))
    assert ei.value.code == "INVALID_ARGUMENT"
    assert ei.value.message == "etcdserver: invalid sort option"


def test_range_empty_key_before_sort_option() -> None:
    with pytest.raises(errors.ErrEmptyKey):
        validate.check_range_request(RR(key=b"", sort_order=9))


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("target", [0, 1, 2, 3, 4])
def test_range_valid_sort_options(order: int, target: int) -> None:
    validate.check_range_request(RR(key=b"k", sort_order=order, sort_target=target))


def test_range_end_before_key_is_valid() -> None:
    # etcd: key k3, range_end k1 -> empty result, no error.
    validate.check_range_request(RR(key=b"k3", range_end=b"k1"))
    validate.check_range_request(RR(key=b"k3", range_end=b"k3"))


def test_range_negative_limit_and_revision_are_valid() -> None:
    # etcd: limit -1 means no limit; revision -3 means latest.
    validate.check_range_request(RR(key=b"k", limit=-1, revision=-3))


def test_put_empty_key() -> None:
    with pytest.raises(errors.ErrEmptyKey):
        validate.check_put_request(rpc_pb2.PutRequest(key=b"", value=b"v"))


def test_put_ignore_value_with_value() -> None:
    with pytest.raises(errors.ErrValueProvided) as ei:
        validate.check_put_request(rpc_pb2.PutRequest(key=b"k", value=b"v", ignore_value=True))
    assert ei.value.message == "etcdserver: value is provided"
    assert ei.value.code == "INVALID_ARGUMENT"


def test_put_ignore_lease_with_lease() -> None:
    with pytest.raises(errors.ErrLeaseProvided) as ei:
        validate.check_put_request(rpc_pb2.PutRequest(key=b"k", lease=5, ignore_lease=True))
    assert ei.value.message == "etcdserver: lease is provided"


def test_put_error_order() -> None:
    # etcd: empty key + ignore_value + value -> key is not provided;
    #       ignore_value + value + ignore_lease + lease -> value is provided.
    with pytest.raises(errors.ErrEmptyKey):
        validate.check_put_request(rpc_pb2.PutRequest(key=b"", value=b"v", ignore_value=True))
    with pytest.raises(errors.ErrValueProvided):
        validate.check_put_request(
            rpc_pb2.PutRequest(key=b"k", value=b"v", ignore_value=True, lease=5, ignore_lease=True)
        )


def test_put_valid_variants() -> None:
    validate.check_put_request(rpc_pb2.PutRequest(key=b"k", ignore_value=True))
    validate.check_put_request(rpc_pb2.PutRequest(key=b"k", value=b"v", ignore_lease=True))
    validate.check_put_request(rpc_pb2.PutRequest(key=b"k", lease=12345))  # existence is checked at apply
    validate.check_put_request(rpc_pb2.PutRequest(key=b"k", value=b""))


def test_delete_empty_key() -> None:
    with pytest.raises(errors.ErrEmptyKey):
        validate.check_delete_request(rpc_pb2.DeleteRangeRequest(key=b"", range_end=b"\x00"))
    validate.check_delete_request(rpc_pb2.DeleteRangeRequest(key=b"k3", range_end=b"k1"))


# ---------------------------------------------------------------------- Txn: per-op checks


def test_txn_empty_is_valid() -> None:
    check_txn(txn())


def test_txn_compare_empty_key() -> None:
    with pytest.raises(errors.ErrEmptyKey):
        check_txn(txn(compare=[cmp(b"")]))


@pytest.mark.parametrize("branch", ["success", "failure"])
def test_txn_op_empty_key_in_either_branch(branch: str) -> None:
    # etcd: put with empty key in success, and in failure (never executed) -> key is not provided.
    for op in (put(b""), rng(b""), dele(b"")):
        with pytest.raises(errors.ErrEmptyKey):
            check_txn(txn(**{branch: [op]}))


def test_txn_op_put_rules_apply_inside_txn() -> None:
    with pytest.raises(errors.ErrValueProvided):
        check_txn(txn(success=[put(b"k1", b"v", ignore_value=True)]))
    with pytest.raises(errors.ErrLeaseProvided):
        check_txn(txn(failure=[put(b"k1", lease=3, ignore_lease=True)]))


def test_txn_op_invalid_sort_option() -> None:
    with pytest.raises(errors.ErrInvalidSortOption):
        check_txn(txn(success=[rng(b"k", sort_order=5)]))


def test_txn_empty_request_op_is_key_not_found() -> None:
    # etcd: a RequestOp with nothing set -> "etcdserver: key not found" (InvalidArgument).
    with pytest.raises(errors.ErrKeyNotFound) as ei:
        check_txn(txn(success=[rpc_pb2.RequestOp()]))
    assert ei.value.code == "INVALID_ARGUMENT"
    with pytest.raises(errors.ErrKeyNotFound):
        check_txn(txn(success=[txn_op(success=[rpc_pb2.RequestOp()])]))


def test_txn_check_order_compare_then_success_then_failure() -> None:
    # etcd: empty compare key + empty op -> key is not provided (compares first);
    #       empty op before empty-key put -> key not found (ops in order).
    with pytest.raises(errors.ErrEmptyKey):
        check_txn(txn(compare=[cmp(b"")], success=[rpc_pb2.RequestOp()]))
    with pytest.raises(errors.ErrKeyNotFound):
        check_txn(txn(success=[rpc_pb2.RequestOp(), put(b"")]))
    with pytest.raises(errors.ErrKeyNotFound):
        check_txn(txn(success=[rpc_pb2.RequestOp()], failure=[put(b"")]))


def test_txn_nested_compare_empty_key() -> None:
    with pytest.raises(errors.ErrEmptyKey):
        check_txn(txn(success=[txn_op(compare=[cmp(b"")])]))


def test_txn_nested_empty_txn_is_valid() -> None:
    check_txn(txn(success=[txn_op()]))


# ---------------------------------------------------------------------- Txn: op budget


def test_txn_max_ops_per_list() -> None:
    # etcd: 128 puts ok; 129 puts, 129 compares, 129 failure ranges -> too many operations.
    check_txn(txn(success=[put(b"m%03d" % i) for i in range(128)]))
    for t in (
        txn(success=[put(b"m%03d" % i) for i in range(129)]),
        txn(compare=[cmp()] * 129),
        txn(failure=[rng()] * 129),
    ):
        with pytest.raises(errors.ErrTooManyOps) as ei:
            check_txn(t)
        assert ei.value.message == "etcdserver: too many operations in txn request"


def test_txn_max_ops_is_max_not_sum() -> None:
    check_txn(txn(compare=[cmp()] * 128, success=[rng()] * 128, failure=[rng()] * 128))


def test_txn_nested_budget_is_what_the_parent_left() -> None:
    # etcd: 100 ranges + 1 nested txn = 101 at the top, so the nested txn may have 27 ops, not 28.
    check_txn(txn(success=[rng()] * 100 + [txn_op(success=[rng()] * 27)]))
    with pytest.raises(errors.ErrTooManyOps):
        check_txn(txn(success=[rng()] * 100 + [txn_op(success=[rng()] * 28)]))
    with pytest.raises(errors.ErrTooManyOps):
        check_txn(txn(compare=[cmp()] * 100, failure=[txn_op(success=[rng()] * 29)]))


def test_txn_nested_budget_two_levels() -> None:
    # etcd: 101 at the top, 21 in the nested txn (budget 27), so the inner one may have 6, not 7.
    inner = lambda n: txn_op(success=[rng()] * 20 + [txn_op(success=[rng(b"z")] * n)])  # noqa: E731
    check_txn(txn(success=[rng()] * 100 + [inner(6)]))
    with pytest.raises(errors.ErrTooManyOps):
        check_txn(txn(success=[rng()] * 100 + [inner(7)]))


def test_txn_nested_compares_count_against_budget() -> None:
    # etcd: one nested txn at the top leaves 127: 127 nested compares ok, 128 too many.
    check_txn(txn(success=[txn_op(compare=[cmp()] * 127)]))
    with pytest.raises(errors.ErrTooManyOps):
        check_txn(txn(success=[txn_op(compare=[cmp()] * 128)]))


def test_txn_custom_max_ops() -> None:
    check_txn(txn(success=[rng()] * 3), max_ops=3)
    with pytest.raises(errors.ErrTooManyOps):
        check_txn(txn(success=[rng()] * 4), max_ops=3)


def test_txn_too_many_ops_before_duplicate_key() -> None:
    # etcd: dup put + 127 ranges (129 ops) -> too many operations (count first).
    with pytest.raises(errors.ErrTooManyOps):
        check_txn(txn(success=[put(b"d"), put(b"d")] + [rng()] * 127))


def test_txn_per_op_errors_before_duplicate_key() -> None:
    # etcd: duplicate puts in success + empty-key put in failure -> key is not provided.
    with pytest.raises(errors.ErrEmptyKey):
        check_txn(txn(success=[put(b"x1"), put(b"x1")], failure=[put(b"")]))


# ---------------------------------------------------------------------- Txn: duplicate keys


def dup(t: rpc_pb2.TxnRequest) -> None:
    with pytest.raises(errors.ErrDuplicateKey) as ei:
        check_txn(t)
    assert ei.value.message == "etcdserver: duplicate key given in txn request"
    assert ei.value.code == "INVALID_ARGUMENT"


def test_dup_two_puts() -> None:
    dup(txn(success=[put(b"a"), put(b"a")]))


def test_dup_put_and_delete_same_key_either_order() -> None:
    dup(txn(success=[put(b"a"), dele(b"a")]))
    dup(txn(success=[dele(b"a"), put(b"a")]))


def test_dup_delete_range_covers_put() -> None:
    dup(txn(success=[dele(b"a", b"c"), put(b"b")]))
    dup(txn(success=[put(b"a"), dele(b"a", b"c")]))


def test_delete_range_end_is_exclusive() -> None:
    # etcd: delete [a, c) + put c -> accepted.
    check_txn(txn(success=[dele(b"a", b"c"), put(b"c")]))
    check_txn(txn(success=[dele(b"b", b"c"), put(b"a")]))


def test_from_key_delete_does_not_collide_with_put() -> None:
    # etcd: delete [a, "\0") + put zz -> accepted (etcd's interval check treats "\0" literally,
    # so the range is empty for the check while the delete really removes everything >= a).
    check_txn(txn(success=[dele(b"a", b"\x00"), put(b"zz")]))
    check_txn(txn(success=[dele(b"a", b"\x00"), put(b"a")]))


def test_empty_delete_range_does_not_collide() -> None:
    check_txn(txn(success=[dele(b"c", b"a"), put(b"b")]))
    check_txn(txn(success=[dele(b"a", b"a"), put(b"a")]))


def test_overlapping_deletes_are_fine() -> None:
    check_txn(txn(success=[dele(b"a", b"c"), dele(b"b", b"d"), dele(b"b")]))


def test_range_and_put_same_key_are_fine() -> None:
    check_txn(txn(success=[rng(b"q1"), put(b"q1", b"1")]))


def test_dup_only_in_failure_branch() -> None:
    # etcd checks the branch that will not run too.
    dup(txn(success=[put(b"x1")], failure=[put(b"x2"), put(b"x2")]))


def test_same_key_in_success_and_failure_is_fine() -> None:
    check_txn(txn(success=[put(b"k")], failure=[put(b"k"), dele(b"j")]))


def test_dup_nested_put_and_outer_put() -> None:
    dup(txn(success=[put(b"n1"), txn_op(success=[put(b"n1")])]))
    dup(txn(success=[txn_op(success=[put(b"n1")]), put(b"n1")]))


def test_nested_then_else_same_key_is_fine() -> None:
    check_txn(txn(success=[txn_op(success=[put(b"n1")], failure=[put(b"n1")])]))


def test_dup_nested_else_with_outer_put() -> None:
    dup(txn(success=[put(b"n1"), txn_op(success=[put(b"n2")], failure=[put(b"n1")])]))


def test_dup_nested_delete_covers_outer_put() -> None:
    dup(txn(success=[txn_op(success=[dele(b"n", b"o")]), put(b"n5")]))


def test_dup_outer_delete_covers_nested_put() -> None:
    dup(txn(success=[dele(b"n", b"o"), txn_op(success=[put(b"n5")])]))


def test_dup_two_nested_txns_put_same_key() -> None:
    dup(txn(success=[txn_op(success=[put(b"n1")]), txn_op(failure=[put(b"n1")])]))


def test_nested_delete_then_nested_put_is_dup_but_not_the_reverse() -> None:
    # etcd: [T(del n1), T(put n1)] -> duplicate; [T(put n1), T(del n1)] -> accepted (and applied).
    dup(txn(success=[txn_op(success=[dele(b"n1")]), txn_op(failure=[put(b"n1")])]))
    check_txn(txn(success=[txn_op(success=[put(b"n1")]), txn_op(success=[dele(b"n1")])]))


def test_dup_deep_nesting() -> None:
    dup(txn(success=[dele(b"a", b"b"), txn_op(success=[txn_op(failure=[put(b"a1")])])]))
    check_txn(txn(success=[dele(b"a", b"b"), txn_op(success=[txn_op(failure=[put(b"b")])])]))


def test_check_intervals_returns_puts_and_deletes() -> None:
    puts, dels = validate.check_intervals([put(b"p"), dele(b"d", b"f"), txn_op(success=[put(b"q")])])
    assert puts == {b"p", b"q"}
    assert dels.contains(b"e") and dels.contains(b"d") and not dels.contains(b"f")


@pytest.mark.parametrize(
    "t,reads_only",
    [
        (txn(), True),
        (txn(compare=[cmp()], success=[rng()], failure=[rng(b"a"), rng(b"b")]), True),
        (txn(success=[rng(), put(b"p")]), False),
        (txn(failure=[dele(b"d")]), False),
        (txn(success=[rng()], failure=[rng(), put(b"p")]), False),
        (txn(success=[txn_op(success=[rng()])]), False),  # a nested txn counts as a write, as in etcd
    ],
)
def test_txn_check_answers_whether_it_only_reads(t: rpc_pb2.TxnRequest, reads_only: bool) -> None:
    # The server takes this answer instead of asking isTxnReadonly again: it must be the same.
    from etcdpy.server.apply import is_txn_read_only

    assert validate.check_txn_request(t) is reads_only
    assert is_txn_read_only(t) is reads_only
