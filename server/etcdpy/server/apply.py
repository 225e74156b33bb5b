"""The applier: etcd's KV semantics on top of the MVCC store (etcd's applierV3backend).

Every member applies the same committed entries in the same order, so
everything here must be a pure function of (store state, request): no clock,
no randomness, no iteration over unordered containers. Two members that apply
the same log end with the same store and give the same answers.

What etcd does, and therefore what this module does (each point checked
against etcd 3.4.23 and encoded in tests/unit/test_apply.py):

* Range: a limit asks the store for limit+1 keys so that `more` is known; when
  sorting (any order other than NONE) or filtering by min/max mod/create
  revision, everything is fetched, then filtered, then sorted, then cut to the
  limit. `count` is always the store's count of the whole range at that
  revision: the filters and the limit do not change it, while `more` is
  computed after filtering. A non-KEY sort target with order NONE sorts
  ASCEND; since that case does not fetch everything, it sorts only the first
  limit+1 keys. keys_only drops values after sorting (VALUE sort still works).
  header.revision is the store's current revision, not the requested one.
* Put: an unknown lease fails first, then ignore_value/ignore_lease on a
  missing key fails with ErrKeyNotFound; prev_kv is the value before the put.
* DeleteRange: prev_kvs are read before deleting; deleting nothing leaves the
  revision alone.
* Txn: every compare (nested ones too) is evaluated against the state before
  the txn, which fixes the path through the txn tree; then, for the ops on
  that path only, puts are checked (ignore_* on missing key, unknown lease —
  in that order per put) and then ranges (future/compacted revision); only
  then are the ops executed, seeing their own writes. A compare with
  range_end must hold for every key in the range; an empty range, like a
  missing key, compares against a zero KeyValue — except a VALUE compare,
  which then fails. The whole txn gets one revision, bumped only if something
  changed; ops report the revision as of their point in the txn; a nested
  txn's response carries an empty header.
* Compaction: the store's errors pass through; the response revision is the
  current one (compaction does not create a revision).
* Leases (with a full lessor attached): a grant stores the lease row in the
  apply's write batch (no revision); a revoke deletes every attached key in
  that one write (one revision, whose DELETE events are the result's events)
  and removes the row; a checkpoint only updates the lessor. After the write
  commits, its events attach put keys to their lease and detach deleted or
  re-leased keys, so an aborted write never touches the lessor.

Every applied entry ends with a store write carrying (index, term), even when
the request fails, so the consistent index always moves with the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from etcdpy import errors
from etcdpy.pb import kv_pb2, raft_internal_pb2, rpc_pb2
from etcdpy.pb.wire import uvarint

if TYPE_CHECKING:  # the store is only needed for type checking; keeps this module importable alone
    from etcdpy.mvcc import Batch, KVStore, RangeResult, TxnWrite
    from etcdpy.server.alarm import AlarmApplier
    from etcdpy.server.apply_auth import AuthApplier

_RR = rpc_pb2.RangeRequest
_EXTEND_SLICE = 1000


@dataclass
class _LoadedRange:
    """What a planned Range loaded (the shape of mvcc's RangeResult)."""

    kvs: list[kv_pb2.KeyValue]
    count: int
    rev: int

_CMP = rpc_pb2.Compare
_INDEX_TARGETS = {
    _CMP.MOD: ("mod_revision", 0),
    _CMP.CREATE: ("create_revision", 1),
    _CMP.VERSION: ("version", 2),
}
"""Compare targets the key index answers without the stored value: the operand's field in
target_union, and the position in `key_meta`'s (mod_revision, create_revision, version)."""


@dataclass
class ApplyResult:
    """What applying one entry produced; handed to the proposer through the wait registry.

    `physc` is the compaction hook: when it is not None the server must wait
    for it (await it if awaitable, else call it) before answering a
    CompactionRequest with physical=true, as etcd waits on its physc channel.
    None means the compaction's physical work is already done.
    """

    resp: Any | None
    err: errors.EtcdError | None
    events: list[kv_pb2.Event] = field(default_factory=list)
    physc: Any | None = None


class LeaseLookup(Protocol):
    """The part of the lessor the applier needs (issue "Lease" provides it)."""

    def lookup(self, lease_id: int) -> object | None:
        """The lease with this id, or None when it does not exist."""
        ...


class GrantedLease(Protocol):
    id: int
    ttl: int


@runtime_checkable
class LessorApply(LeaseLookup, Protocol):
    """The whole lessor, as etcdpy.lease.Lessor provides it: needed to apply lease requests.

    A lookup-only hook is enough for KV requests; lease requests need this one.
    """

    def grant(self, lease_id: int, ttl: int, batch: Batch) -> GrantedLease: ...

    def revoke(self, lease_id: int, txn: TxnWrite) -> None: ...

    def checkpoint(self, lease_id: int, remaining_ttl: int) -> None: ...

    def on_kv_changes(self, events: list[kv_pb2.Event]) -> None: ...


def fill_header(header: rpc_pb2.ResponseHeader, cluster_id: int, member_id: int, raft_term: int) -> None:
    """etcd's header.fill for the top-level response: the applier leaves these three fields to the server.

    Only the outermost response gets them; responses nested in a TxnResponse keep
    just their revision, as in etcd. The revision set by the applier is kept.
    """
    header.cluster_id = cluster_id
    header.member_id = member_id
    header.raft_term = raft_term


class _View:
    """What one request runs against: the store (reads) or a write txn (reads see own writes).

    `begin` is the store revision when the request started; `rev` is the
    revision a response reports at this point: begin, or begin+1 once the write
    txn has changed something (etcd's storeTxnWrite.Rev() / Range revision).
    `key_meta` and `range` are the underlying store's or txn's own functions, bound once
    here: every compare and range of a txn calls them, and a forwarding method would
    cost a call layer each time.
    """

    __slots__ = ("begin", "write", "_store", "key_meta", "range")

    def __init__(self, store: KVStore, write: TxnWrite | None) -> None:
        self.begin = store.current_rev
        self.write = write
        self._store = store
        self.key_meta: Callable[[bytes], tuple[int, int, int] | None]
        self.range: Callable[..., RangeResult]
        if write is not None:
            self.key_meta = write.key_meta
            self.range = write.range
        else:
            self.key_meta = self._store_key_meta
            self.range = store.range

    def _store_key_meta(self, key: bytes) -> tuple[int, int, int] | None:
        """(mod_revision, create_revision, version) of `key` here, None if absent; from the index alone."""
        got = self._store.index.get(key, self.begin)
        return None if got is None else (got[0].main, got[1].main, got[2])

    @property
    def rev(self) -> int:
        write = self.write
        return self.begin + 1 if write is not None and write.changes else self.begin

    def writer(self) -> TxnWrite:
        if self.write is None:
            raise RuntimeError("write op on a read-only view")
        return self.write


class Applier:
    """etcd's applierV3backend for the KV and lease requests; auth plugs in later."""

    def __init__(self, store: KVStore, lessor: LeaseLookup | None = None) -> None:
        self.store = store
        # Without a lessor every lease id is unknown, so any put with a nonzero lease fails
        # with ErrLeaseNotFound; lease requests need a full lessor (LessorApply).
        self.lessor = lessor
        # etcd's alarm appliers (NOSPACE/CORRUPT gates, quota), asked before anything else.
        self.alarm: AlarmApplier | None = None
        # etcd's authApplierV3 in front of this applier: auth requests and permission checks.
        self.auth: AuthApplier | None = None

    @property
    def lessor(self) -> LeaseLookup | None:
        return self._lessor

    @lessor.setter
    def lessor(self, lessor: LeaseLookup | None) -> None:
        # The protocol check is slow-ish; do it once here rather than on every apply.
        self._lessor = lessor
        self._full_lessor = lessor if isinstance(lessor, LessorApply) else None

    # ------------------------------------------------------------------ reads without the log

    def range(self, req: rpc_pb2.RangeRequest) -> rpc_pb2.RangeResponse:
        """A Range served from the local store (serializable, or after a ReadIndex)."""
        resp = rpc_pb2.RangeResponse()
        self._range(_View(self.store, None), req, resp)
        return resp

    async def range_async(
        self,
        req: rpc_pb2.RangeRequest,
        run_in_worker: Callable[[Callable[[], Any]], Any],
        finalize: Callable[[rpc_pb2.RangeResponse], Any] | None = None,
    ) -> Any:
        """`range` that reads and builds a big answer on a worker thread (an unpaginated Range).

        The index lookup happens now, on the loop; loading, decoding, sorting and building
        the response of many values is left to `run_in_worker` (a worker thread: the server
        passes `Backend.in_thread` inside `Backend.hold`), over a RocksDB view pinned now, so
        the answer is the store as of this call. `finalize` (e.g. fill the header and
        serialize) runs on the built response in the same place, and its result is returned.
        """
        if req.count_only:
            return self.range(req)
        load, count, rev, small = self.store.range_plan(
            req.key, req.range_end or None, rev=req.revision, limit=_fetch_limit(req)
        )

        def finish() -> Any:
            resp = rpc_pb2.RangeResponse()
            self._range_answer(_LoadedRange(load(), count, rev), rev, req, resp)
            return finalize(resp) if finalize is not None else resp

        if small:
            return finish()
        return await run_in_worker(finish)

    def range_wire_plan(self, req: rpc_pb2.RangeRequest, header: rpc_pb2.ResponseHeader) -> bytes | Callable[[], bytes]:
        """`range_async` answering the encoded RangeResponse, the stored KeyValues passed on undecoded.

        Only for requests `range_passes_values_through` accepts. The stored bytes of a KeyValue
        are what encoding its decoded copy would give, so skipping the decode, the copy into
        the response and the encode changes nothing on the wire. `header` gets the revision
        and is encoded with the answer. A small range is answered here (bytes); a big one
        comes back as the function that loads and encodes it, for the caller to run on a
        worker thread (with the DB held open). Not a coroutine: one frame less on every Range.
        """
        load, count, rev, small = self.store.range_plan(
            req.key, req.range_end or None, rev=req.revision, limit=_fetch_limit(req), raw=True
        )

        def finish() -> bytes:
            values: list[bytes] = load()
            if req.sort_order == _RR.DESCEND:
                values = values[::-1]  # keys are unique, so this is exactly the descending key order
            more = False
            if req.limit > 0 and len(values) > req.limit:
                values = values[: req.limit]
                more = True
            header.revision = rev
            return encode_range_response(header.SerializeToString(), values, more, count)

        return finish() if small else finish

    def txn_read_only(self, req: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """A txn of ranges only, served from the local store like a Range (etcd does not log it)."""
        if not is_txn_read_only(req):
            raise ValueError("txn_read_only called with a txn that writes")
        return self._txn(_View(self.store, None), req)

    # ------------------------------------------------------------------ the apply step

    def apply(self, req: raft_internal_pb2.InternalRaftRequest, index: int, term: int) -> ApplyResult:
        """Apply one committed entry and record (index, term) as the store's consistent index.

        A request error is a result, not an exception: the store write is rolled
        back and an empty write records the consistent index. Any other exception
        is a bug that could make members diverge, so it propagates (etcd panics).
        """
        alarm, auth = self.alarm, self.auth
        op = None
        if (alarm is None or alarm.passes_kv_writes()) and (auth is None or auth.passes_kv_requests()):
            op = self._kv_write(req)  # the usual entry: neither gate has anything to say about it
        if op is None:
            if alarm is not None:
                handled = alarm.apply(req, index, term)
                if handled is not None:
                    return handled
            if auth is not None:
                handled = auth.apply(req, index, term)
                if handled is not None:
                    return handled
            if req.HasField("compaction"):
                return self._apply_compaction(req.compaction, index, term)
            op = self._dispatch(req)
        view = _View(self.store, self.store.write())
        write = view.writer()
        try:
            resp = op(view)
        except errors.EtcdError as e:
            write.abort()
            self._save_consistent_index(index, term)
            return ApplyResult(resp=None, err=e, events=[])
        except BaseException:
            write.abort()
            raise
        events = write.changes  # the txn is over after `end`: its list is handed on as it is
        write.end(index, term)
        if events and self._full_lessor is not None:
            self._full_lessor.on_kv_changes(events)
        return ApplyResult(resp=resp, err=None, events=events)

    def _kv_write(self, req: raft_internal_pb2.InternalRaftRequest) -> Callable[[_View], Any] | None:
        """The handler of a Put, Txn or DeleteRange entry, None for any other request."""
        if req.HasField("txn"):
            return lambda view: self._txn(view, req.txn)
        if req.HasField("put"):
            return lambda view: self._put(view, req.put, rpc_pb2.PutResponse(), in_txn=False)
        if req.HasField("delete_range"):
            return lambda view: self._delete_range(view, req.delete_range, rpc_pb2.DeleteRangeResponse())
        return None

    def _dispatch(self, req: raft_internal_pb2.InternalRaftRequest) -> Callable[[_View], Any]:
        """Pick the handler for the one request set in `req` (an entry carries exactly one)."""
        if req.HasField("range"):
            return lambda view: self._range(view, req.range, rpc_pb2.RangeResponse())
        op = self._kv_write(req)
        if op is not None:
            return op
        lessor = self._full_lessor
        if lessor is not None:
            if req.HasField("lease_grant"):
                return lambda view: _lease_grant(view, lessor, req.lease_grant)
            if req.HasField("lease_revoke"):
                return lambda view: _lease_revoke(view, lessor, req.lease_revoke)
            if req.HasField("lease_checkpoint"):
                return lambda view: _lease_checkpoint(view, lessor, req.lease_checkpoint)
        raise NotImplementedError(f"apply: no KV or lease request in {req.ListFields()[:1]!r}")

    def _save_consistent_index(self, index: int, term: int) -> None:
        """An empty write whose only effect is storing (index, term): keeps replay exact after a failed request."""
        self.store.write().end(index, term)

    def _apply_compaction(self, req: rpc_pb2.CompactionRequest, index: int, term: int) -> ApplyResult:
        """Compact, then record the consistent index.

        The two steps are not one atomic write: a crash between them replays the
        entry, and the replay fails with ErrCompacted, which changes nothing and
        is seen by nobody (no one waits for a replayed entry).
        """
        try:
            # The index is compacted now; the disk work is a job the server runs in batches.
            physc = self.store.schedule_compaction(req.revision)
        except errors.EtcdError as e:
            self._save_consistent_index(index, term)
            return ApplyResult(resp=None, err=e, events=[])
        resp = rpc_pb2.CompactionResponse()
        resp.header.revision = self.store.current_rev
        self._save_consistent_index(index, term)
        return ApplyResult(resp=resp, err=None, events=[], physc=physc)

    # ------------------------------------------------------------------ Range

    def _range(self, view: _View, r: rpc_pb2.RangeRequest, resp: rpc_pb2.RangeResponse) -> rpc_pb2.RangeResponse:
        """applierV3backend.Range: fetch, filter, sort, cut, in that order (see module docstring)."""
        rr = view.range(r.key, r.range_end or None, rev=r.revision, limit=_fetch_limit(r), count_only=r.count_only)
        return self._range_answer(rr, view.rev, r, resp)

    def _range_answer(
        self, rr: RangeResult | _LoadedRange, rev: int, r: rpc_pb2.RangeRequest, resp: rpc_pb2.RangeResponse
    ) -> rpc_pb2.RangeResponse:
        """Filter, sort and cut what the store returned (pure: safe on a worker thread)."""
        kvs = _prune(list(rr.kvs), r)
        order = r.sort_order
        if r.sort_target != _RR.KEY and order == _RR.NONE:
            order = _RR.ASCEND  # the store returns key order; another target means "sort by it"
        if order != _RR.NONE:
            kvs = sort_kvs(kvs, r.sort_target, order)
        if r.limit > 0 and len(kvs) > r.limit:
            kvs = kvs[: r.limit]
            resp.more = True
        resp.header.revision = rev
        resp.count = rr.count
        for i in range(0, len(kvs), _EXTEND_SLICE):  # slices: a worker thread hands the GIL back in between
            resp.kvs.extend(kvs[i : i + _EXTEND_SLICE])  # copies: the store's objects are never modified
        if r.keys_only:
            for kv in resp.kvs:
                kv.ClearField("value")
        return resp

    # ------------------------------------------------------------------ Put / DeleteRange

    def _put(self, view: _View, p: rpc_pb2.PutRequest, resp: rpc_pb2.PutResponse, in_txn: bool) -> rpc_pb2.PutResponse:
        """applierV3backend.Put. Inside a txn the lease and ignore_* checks already ran on the pre-txn state."""
        lease = p.lease
        if not in_txn and lease != 0 and not self._lease_exists(lease):
            raise errors.ErrLeaseNotFound()
        prev: kv_pb2.KeyValue | None = None
        if p.ignore_value or p.ignore_lease or p.prev_kv:
            kvs = view.range(p.key, None).kvs
            prev = kvs[0] if kvs else None
        value = p.value
        if p.ignore_value or p.ignore_lease:
            if prev is None:
                # Inside a txn this can only happen when an earlier op of the same txn deleted
                # the key through a from-key delete (range_end "\0"), which the duplicate-key check
                # does not see. etcd panics; etcdpy fails the whole txn deterministically.
                raise errors.ErrKeyNotFound()
            if p.ignore_value:
                value = prev.value
            if p.ignore_lease:
                lease = prev.lease
        if p.prev_kv and prev is not None:
            resp.prev_kv.CopyFrom(prev)
        view.writer().put(p.key, value, lease)
        resp.header.revision = view.rev
        return resp

    def _delete_range(
        self, view: _View, dr: rpc_pb2.DeleteRangeRequest, resp: rpc_pb2.DeleteRangeResponse
    ) -> rpc_pb2.DeleteRangeResponse:
        """applierV3backend.DeleteRange: prev_kvs are the keys as they were in this write just before deleting."""
        deleted, prev_kvs = view.writer().delete_range(dr.key, dr.range_end or None)
        resp.deleted = deleted
        if dr.prev_kv:
            resp.prev_kvs.extend(prev_kvs)
        resp.header.revision = view.rev
        return resp

    # ------------------------------------------------------------------ Txn

    def _txn(self, view: _View, rt: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        """applierV3backend.Txn: compares, then checks, then ops — all on the path the compares chose.

        The usual txn (kube-apiserver's every write) nests no txn in the branch it takes; it is
        run from one list of its ops, each op's kind read once. A nested one takes
        `_nested_txn`, which follows the path of compare outcomes through the tree.
        """
        ok = self._compares_hold(view, rt.compare[:])
        ops = (rt.success if ok else rt.failure)[:]
        kinds = [op.WhichOneof("request") for op in ops]
        if "request_txn" in kinds:
            return self._nested_txn(view, rt, ok)
        # The checks, all of them before any op runs and on the pre-txn state, as in etcd. Only
        # a put with a lease or an ignore_* flag, or a range at a revision, has anything to check.
        for kind, op in zip(kinds, ops):
            if kind == "request_put":
                p = op.request_put
                if p.lease or p.ignore_value or p.ignore_lease:
                    self._check_put(view, p)
        for kind, op in zip(kinds, ops):
            if kind == "request_range" and op.request_range.revision:
                self._check_range(view, op.request_range)
        resp = rpc_pb2.TxnResponse(succeeded=ok)
        add = resp.responses.add
        for kind, op in zip(kinds, ops):
            out = add()
            if kind == "request_put":
                p = op.request_put
                if p.prev_kv or p.ignore_value or p.ignore_lease:
                    self._put(view, p, out.response_put, in_txn=True)
                else:  # `_put` with nothing to read first: the plain put of kube-apiserver's writes
                    view.writer().put(p.key, p.value, p.lease)
                    out.response_put.header.revision = view.begin + 1
            elif kind == "request_range":
                self._range(view, op.request_range, out.response_range)
            elif kind == "request_delete_range":
                self._delete_range(view, op.request_delete_range, out.response_delete_range)
        resp.header.revision = view.rev
        return resp

    def _nested_txn(self, view: _View, rt: rpc_pb2.TxnRequest, ok: bool) -> rpc_pb2.TxnResponse:
        """`_txn` for a txn whose branch taken nests txns: the outcome of every compare on the
        way is decided first (on the pre-txn state), then every op on that path is checked,
        then run."""
        path = self._compare_to_path(view, rt, ok)
        ops = list(_ops_on_path(rt, iter(path)))
        for kind, op in ops:
            if kind == "request_put":
                self._check_put(view, op.request_put)
        for kind, op in ops:
            if kind == "request_range":
                self._check_range(view, op.request_range)
        resp = self._exec_txn(view, rt, iter(path))
        resp.header.revision = view.rev
        return resp

    def _compares_hold(self, view: _View, compares: list[rpc_pb2.Compare]) -> bool:
        """Whether every compare of a txn holds (the first that fails decides)."""
        for c in compares:
            if not self._apply_compare(view, c):
                return False
        return True

    def _compare_to_path(self, view: _View, rt: rpc_pb2.TxnRequest, ok: bool | None = None) -> list[bool]:
        """compareToPath: each txn's outcome, pre-order over the branches taken, all on the pre-txn state.

        `ok` is this txn's own outcome when the caller already evaluated its compares.
        """
        if ok is None:
            ok = self._compares_hold(view, rt.compare[:])  # lists: iterating a repeated field costs ~1 us a loop
        path = [ok]
        for op in (rt.success if ok else rt.failure)[:]:
            if op.WhichOneof("request") == "request_txn":
                path.extend(self._compare_to_path(view, op.request_txn))
        return path

    def _apply_compare(self, view: _View, c: rpc_pb2.Compare) -> bool:
        """applyCompare: every key in [key, range_end) must satisfy it; none present = a zero KeyValue.

        A single-key compare of a revision or the version (kube-apiserver's every write) needs
        only the index, so the value is not loaded from RocksDB and decoded for it.
        """
        target = c.target
        if not c.range_end and target in _INDEX_TARGETS:
            meta = view.key_meta(c.key)
            field, position = _INDEX_TARGETS[target]
            actual = 0 if meta is None else meta[position]  # a missing key compares as a zero KeyValue
            # An operand set in another field of target_union reads as 0 here (proto3 oneof), the
            # zero etcd compares with when the operand does not match the target.
            expected = getattr(c, field)
            return _result_holds(c.result, (actual > expected) - (actual < expected))
        try:
            kvs = view.range(c.key, c.range_end or None).kvs
        except errors.EtcdError:
            return False
        if not kvs:
            if c.target == _CMP.VALUE:
                return False  # a missing value cannot equal anything, not even b""
            return compare_kv(c, kv_pb2.KeyValue())
        return all(compare_kv(c, kv) for kv in kvs)

    def _check_put(self, view: _View, p: rpc_pb2.PutRequest) -> None:
        """checkRequestPut: ignore_* need an existing key, then the lease must exist."""
        if p.ignore_value or p.ignore_lease:
            if not view.range(p.key, None).kvs:
                raise errors.ErrKeyNotFound()
        if p.lease != 0 and not self._lease_exists(p.lease):
            raise errors.ErrLeaseNotFound()

    def _check_range(self, view: _View, r: rpc_pb2.RangeRequest) -> None:
        """checkRequestRange: refuse the whole txn up front rather than fail half-way."""
        if r.revision == 0:
            return
        if r.revision > view.begin:
            raise errors.ErrFutureRev()
        if r.revision < self._first_rev():
            raise errors.ErrCompacted()

    def _first_rev(self) -> int:
        """etcd's ReadView.FirstRev: the compaction revision, -1 before any compaction.

        So a txn range at revision -1 passes until the first compaction and -2 never does, as in etcd.
        """
        return self.store.compact_rev

    def _exec_txn(self, view: _View, rt: rpc_pb2.TxnRequest, path: Iterator[bool]) -> rpc_pb2.TxnResponse:
        """applyTxn: run the ops of the branch taken; nested txns consume the path in the same pre-order."""
        resp = rpc_pb2.TxnResponse(succeeded=next(path))
        resp.header.SetInParent()  # nested txns answer with an empty header, as etcd does
        add = resp.responses.add
        for op in (rt.success if resp.succeeded else rt.failure)[:]:
            out = add()
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self._range(view, op.request_range, out.response_range)
            elif kind == "request_put":
                self._put(view, op.request_put, out.response_put, in_txn=True)
            elif kind == "request_delete_range":
                self._delete_range(view, op.request_delete_range, out.response_delete_range)
            elif kind == "request_txn":
                out.response_txn.CopyFrom(self._exec_txn(view, op.request_txn, path))
        return resp

    def _lease_exists(self, lease_id: int) -> bool:
        return self.lessor is not None and self.lessor.lookup(lease_id) is not None


# ---------------------------------------------------------------------- leases


def _lease_grant(view: _View, lessor: LessorApply, r: rpc_pb2.LeaseGrantRequest) -> rpc_pb2.LeaseGrantResponse:
    """applierV3backend.LeaseGrant: the TTL answered is the lessor's (raised to the minimum)."""
    lease = lessor.grant(r.ID, r.TTL, view.writer().batch)
    resp = rpc_pb2.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)
    resp.header.revision = view.rev
    return resp


def _lease_revoke(view: _View, lessor: LessorApply, r: rpc_pb2.LeaseRevokeRequest) -> rpc_pb2.LeaseRevokeResponse:
    """applierV3backend.LeaseRevoke: the header has the revision of the key deletions, if any."""
    lessor.revoke(r.ID, view.writer())
    resp = rpc_pb2.LeaseRevokeResponse()
    resp.header.revision = view.rev
    return resp


def _lease_checkpoint(
    view: _View, lessor: LessorApply, r: rpc_pb2.LeaseCheckpointRequest
) -> rpc_pb2.LeaseCheckpointResponse:
    """applierV3backend.LeaseCheckpoint: remaining TTLs for the next leader; unknown ids are skipped."""
    for cp in r.checkpoints:
        lessor.checkpoint(cp.ID, cp.remaining_TTL)
    resp = rpc_pb2.LeaseCheckpointResponse()
    resp.header.revision = view.rev
    return resp


# ---------------------------------------------------------------------- pure helpers


def is_txn_read_only(rt: rpc_pb2.TxnRequest) -> bool:
    """isTxnReadonly: only ranges in both branches (a nested txn counts as a write).

    Stops at the first other op: this runs for every Txn, and writing ones usually say so first.
    """
    for ops in (rt.success[:], rt.failure[:]):  # lists: iterating repeated fields themselves is slow
        for op in ops:
            if op.WhichOneof("request") != "request_range":
                return False
    return True


def _ops_on_path(rt: rpc_pb2.TxnRequest, path: Iterator[bool]) -> Iterator[tuple[str | None, rpc_pb2.RequestOp]]:
    """(kind, op) of the non-txn ops that will run, in execution order, following `path` into nested txns."""
    for op in (rt.success if next(path) else rt.failure)[:]:
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            yield from _ops_on_path(op.request_txn, path)
        else:
            yield kind, op


def compare_kv(c: rpc_pb2.Compare, kv: kv_pb2.KeyValue) -> bool:
    """compareKV: compare one field of `kv` with the compare's operand.

    The operand is read from target_union only if it matches the target;
    otherwise it is zero (or b""), like etcd. An unknown target compares equal
    and an unknown result passes, again like etcd.
    """
    target = c.target
    given = c.WhichOneof("target_union")
    result = 0
    if target == _CMP.VALUE:
        result = _cmp(kv.value, c.value if given == "value" else b"")
    elif target == _CMP.CREATE:
        result = _cmp(kv.create_revision, c.create_revision if given == "create_revision" else 0)
    elif target == _CMP.MOD:
        result = _cmp(kv.mod_revision, c.mod_revision if given == "mod_revision" else 0)
    elif target == _CMP.VERSION:
        result = _cmp(kv.version, c.version if given == "version" else 0)
    elif target == _CMP.LEASE:
        result = _cmp(kv.lease, c.lease if given == "lease" else 0)
    return _result_holds(c.result, result)


def _result_holds(wanted: int, result: int) -> bool:
    """Whether a comparison's outcome (-1, 0, 1) is the Compare's `result`; an unknown one passes (etcd)."""
    if wanted == _CMP.EQUAL:
        return result == 0
    if wanted == _CMP.NOT_EQUAL:
        return result != 0
    if wanted == _CMP.GREATER:
        return result > 0
    if wanted == _CMP.LESS:
        return result < 0
    return True


def _cmp(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _fetch_limit(r: rpc_pb2.RangeRequest) -> int:
    """How many keys to ask the store for: all when sorting or filtering, else limit+1 to learn `more`."""
    if (
        r.sort_order != _RR.NONE
        or r.min_mod_revision
        or r.max_mod_revision
        or r.min_create_revision
        or r.max_create_revision
    ):
        return 0
    return r.limit + 1 if r.limit > 0 else 0


def range_passes_values_through(r: rpc_pb2.RangeRequest) -> bool:
    """True if a Range's answer is the stored KeyValues as they are, in key order or its reverse.

    Not so for keys_only (values are cleared), count_only (no KeyValues), the revision filters
    (each KeyValue is looked at) and sorting by anything but the key.
    """
    return not (
        r.keys_only
        or r.count_only
        or r.min_mod_revision
        or r.max_mod_revision
        or r.min_create_revision
        or r.max_create_revision
        or r.sort_target != _RR.KEY
    )


def encode_range_response(header: bytes, kvs: Sequence[bytes], more: bool, count: int) -> bytes:
    """A RangeResponse's wire bytes from its encoded header and KeyValues, as protobuf writes them.

    Fields in number order (header 1, kvs 2, more 3, count 4), each length-delimited one
    with its tag and length; `more` and `count` left out when false or zero (proto3).
    """
    parts = [b"\x0a", uvarint(len(header)), header]
    for kv in kvs:
        parts.append(b"\x12")
        parts.append(uvarint(len(kv)))
        parts.append(kv)
    if more:
        parts.append(b"\x18\x01")
    if count:
        parts.append(b"\x20")
        parts.append(uvarint(count))
    return b"".join(parts)


def _prune(kvs: list[kv_pb2.KeyValue], r: rpc_pb2.RangeRequest) -> list[kv_pb2.KeyValue]:
    """The min/max mod/create revision filters; 0 means "no bound" for each."""
    if r.max_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision <= r.max_mod_revision]
    if r.min_mod_revision:
        kvs = [kv for kv in kvs if kv.mod_revision >= r.min_mod_revision]
    if r.max_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision <= r.max_create_revision]
    if r.min_create_revision:
        kvs = [kv for kv in kvs if kv.create_revision >= r.min_create_revision]
    return kvs


_SORT_FIELDS: dict[int, Callable[[kv_pb2.KeyValue], Any]] = {
    _RR.KEY: lambda kv: kv.key,
    _RR.VERSION: lambda kv: kv.version,
    _RR.CREATE: lambda kv: kv.create_revision,
    _RR.MOD: lambda kv: kv.mod_revision,
    _RR.VALUE: lambda kv: kv.value,
}


def sort_kvs(kvs: Sequence[kv_pb2.KeyValue], target: int, order: int) -> list[kv_pb2.KeyValue]:
    """Order `kvs` exactly as etcd's sort.Sort does, including the order of ties.

    Go's sort.Sort is not stable, so for equal sort fields etcd's order is that of
    Go's pdqsort. When the fields are all distinct there is only one answer, and
    with 12 or fewer items Go uses insertion sort, which is stable; both cases use
    Python's sort. Otherwise the port of Go's algorithm reproduces etcd's order.
    Unknown targets/orders leave the input order (validation refuses them).
    """
    key_of = _SORT_FIELDS.get(target)
    if key_of is None or order not in (_RR.ASCEND, _RR.DESCEND):
        return list(kvs)
    keys = [key_of(kv) for kv in kvs]
    descending = order == _RR.DESCEND
    if len(keys) <= _GO_MAX_INSERTION or len(set(keys)) == len(keys):
        idx = sorted(range(len(keys)), key=keys.__getitem__, reverse=descending)
        return [kvs[i] for i in idx]
    items = list(kvs)
    _GoSort(keys, items, descending).sort()
    return items


# ---------------------------------------------------------------------- Go's sort.Sort

_GO_MAX_INSERTION = 12
_U64 = (1 << 64) - 1
_UNKNOWN_HINT, _INCREASING_HINT, _DECREASING_HINT = 0, 1, 2


class _GoSort:
    """A line-by-line port of Go's sort.Sort (pattern-defeating quicksort, Go >= 1.19).

    Only the order of equal elements depends on it, but that order is visible to
    clients (sort by VERSION, VALUE, ... over more than 12 keys), so etcdpy
    reproduces it. `keys` and `items` are permuted together; DESCEND is Go's
    sort.Reverse, i.e. Less(i, j) = Less(j, i).
    """

    def __init__(self, keys: list[Any], items: list[Any], descending: bool) -> None:
        self.keys = keys
        self.items = items
        self.descending = descending

    def less(self, i: int, j: int) -> bool:
        if self.descending:
            return self.keys[j] < self.keys[i]
        return self.keys[i] < self.keys[j]

    def swap(self, i: int, j: int) -> None:
        k, it = self.keys, self.items
        k[i], k[j] = k[j], k[i]
        it[i], it[j] = it[j], it[i]

    def sort(self) -> None:
        n = len(self.keys)
        if n > 1:
            self.pdqsort(0, n, n.bit_length())

    def insertion_sort(self, a: int, b: int) -> None:
        for i in range(a + 1, b):
            j = i
            while j > a and self.less(j, j - 1):
                self.swap(j, j - 1)
                j -= 1

    def sift_down(self, lo: int, hi: int, first: int) -> None:
        root = lo
        while True:
            child = 2 * root + 1
            if child >= hi:
                return
            if child + 1 < hi and self.less(first + child, first + child + 1):
                child += 1
            if not self.less(first + root, first + child):
                return
            self.swap(first + root, first + child)
            root = child

    def heap_sort(self, a: int, b: int) -> None:
        first, lo, hi = a, 0, b - a
        for i in range((hi - 1) // 2, -1, -1):
            self.sift_down(i, hi, first)
        for i in range(hi - 1, -1, -1):
            self.swap(first, first + i)
            self.sift_down(lo, i, first)

    def pdqsort(self, a: int, b: int, limit: int) -> None:
        was_balanced = True
        was_partitioned = True
        while True:
            length = b - a
            if length <= _GO_MAX_INSERTION:
                self.insertion_sort(a, b)
                return
            if limit == 0:
                self.heap_sort(a, b)
                return
            if not was_balanced:
                self.break_patterns(a, b)
                limit -= 1
            pivot, hint = self.choose_pivot(a, b)
            if hint == _DECREASING_HINT:
                self.reverse_range(a, b)
                pivot = (b - 1) - (pivot - a)
                hint = _INCREASING_HINT
            if was_balanced and was_partitioned and hint == _INCREASING_HINT:
                if self.partial_insertion_sort(a, b):
                    return
            if a > 0 and not self.less(a - 1, pivot):
                a = self.partition_equal(a, b, pivot)
                continue
            mid, already = self.partition(a, b, pivot)
            was_partitioned = already
            left_len, right_len = mid - a, b - mid
            balance_threshold = length // 8
            if left_len < right_len:
                was_balanced = left_len >= balance_threshold
                self.pdqsort(a, mid, limit)
                a = mid + 1
            else:
                was_balanced = right_len >= balance_threshold
                self.pdqsort(mid + 1, b, limit)
                b = mid

    def partition(self, a: int, b: int, pivot: int) -> tuple[int, bool]:
        self.swap(a, pivot)
        i, j = a + 1, b - 1
        while i <= j and self.less(i, a):
            i += 1
        while i <= j and not self.less(j, a):
            j -= 1
        if i > j:
            self.swap(j, a)
            return j, True
        self.swap(i, j)
        i += 1
        j -= 1
        while True:
            while i <= j and self.less(i, a):
                i += 1
            while i <= j and not self.less(j, a):
                j -= 1
            if i > j:
                break
            self.swap(i, j)
            i += 1
            j -= 1
        self.swap(j, a)
        return j, False

    def partition_equal(self, a: int, b: int, pivot: int) -> int:
        self.swap(a, pivot)
        i, j = a + 1, b - 1
        while True:
            while i <= j and not self.less(a, i):
                i += 1
            while i <= j and self.less(a, j):
                j -= 1
            if i > j:
                break
            self.swap(i, j)
            i += 1
            j -= 1
        return i

    def partial_insertion_sort(self, a: int, b: int) -> bool:
        max_steps, shortest_shifting = 5, 50
        i = a + 1
        for _ in range(max_steps):
            while i < b and not self.less(i, i - 1):
                i += 1
            if i == b:
                return True
            if b - a < shortest_shifting:
                return False
            self.swap(i, i - 1)
            if i - a >= 2:  # shift the smaller one to the left (Go's loop bound is 1, not a)
                j = i - 1
                while j >= 1:
                    if not self.less(j, j - 1):
                        break
                    self.swap(j, j - 1)
                    j -= 1
            if b - i >= 2:  # shift the greater one to the right
                j = i + 1
                while j < b:
                    if not self.less(j, j - 1):
                        break
                    self.swap(j, j - 1)
                    j += 1
        return False

    def break_patterns(self, a: int, b: int) -> None:
        length = b - a
        if length >= 8:
            state = length  # xorshift seeded with the length: deterministic
            modulus = 1 << length.bit_length()
            idx = a + (length // 4) * 2 - 1
            while idx <= a + (length // 4) * 2 + 1:
                state ^= (state << 13) & _U64
                state ^= state >> 17
                state ^= (state << 5) & _U64
                other = state & (modulus - 1)
                if other >= length:
                    other -= length
                self.swap(idx, a + other)
                idx += 1

    def choose_pivot(self, a: int, b: int) -> tuple[int, int]:
        shortest_ninther, max_swaps = 50, 4 * 3
        n = b - a
        swaps = [0]
        i = a + n // 4 * 1
        j = a + n // 4 * 2
        k = a + n // 4 * 3
        if n >= 8:
            if n >= shortest_ninther:
                i = self.median(i - 1, i, i + 1, swaps)
                j = self.median(j - 1, j, j + 1, swaps)
                k = self.median(k - 1, k, k + 1, swaps)
            j = self.median(i, j, k, swaps)
        if swaps[0] == 0:
            return j, _INCREASING_HINT
        if swaps[0] == max_swaps:
            return j, _DECREASING_HINT
        return j, _UNKNOWN_HINT

    def order2(self, a: int, b: int, swaps: list[int]) -> tuple[int, int]:
        if self.less(b, a):
            swaps[0] += 1
            return b, a
        return a, b

    def median(self, a: int, b: int, c: int, swaps: list[int]) -> int:
        a, b = self.order2(a, b, swaps)
        b, c = self.order2(b, c, swaps)
        a, b = self.order2(a, b, swaps)
        return b

    def reverse_range(self, a: int, b: int) -> None:
        i, j = a, b - 1
        while i < j:
            self.swap(i, j)
            i += 1
            j -= 1
