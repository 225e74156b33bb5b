"""Linearizability checking of recorded key-value histories (WGL search, per key).

Why: a multi-member cluster under faults (leader crash, partition) can be wrong in
ways no single assertion catches — a stale read served by a deposed leader, an
acknowledged write that vanished, a write applied twice. Recording what clients
saw and asking "is there *any* order of these operations, consistent with their
real-time order, in which a single key-value register gives exactly these
results?" catches all of them without guessing which failure to look for.

Model and recording
-------------------

Each operation touches one key and is one of:

- ``put(key, value)`` — output ignored;
- ``get(key)`` — output: the value, or None when the key is absent;
- ``delete(key)`` — output: number of keys deleted (0 or 1);
- ``cas(key, expected, value)`` — a Txn "if value(key) == expected (None: key
  absent) then put(key, value)"; output: whether it succeeded.

`History` records invoke and return times (``time.monotonic``). An operation that
failed *definitely* (the server refused it before proposing, the connection was
never made) is dropped with `History.fail`. One that failed *ambiguously*
(timeout, unavailable, connection lost mid-call) may or may not have taken
effect, possibly long after the client gave up: `History.info` keeps it with
return time = infinity and unknown output, so the search may place it anywhere
after its invocation (placing it last is the same as "never happened"). An
ambiguous read has no effect and constrains nothing, so it is dropped.

Search
------

Wing & Gong's algorithm with Lowe's memoisation, as in Porcupine/Knossos: walk a
doubly linked list of call and return events in time order; at a call, try to
linearize that operation now (the model must accept its output); on success,
remember ``(set of linearized ops, model state)`` — if seen before, that
configuration already failed — lift the op's call and return out of the list and
start over from the head; reaching a return event whose op is not linearized
means backtracking. The history is linearizable iff the list empties.

A key-value store is linearizable iff each key's sub-history is (P-compositionality:
linearizability is local), so `check_history` splits by key and searches each
separately: exponential blow-ups stay within one key's concurrency.

Writes must use values unique per key (the workload writes ``client-seq``);
otherwise a read cannot tell which write it observed and the check loses power.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

PUT, GET, DELETE, CAS = "put", "get", "delete", "cas"
KINDS = (PUT, GET, DELETE, CAS)

_UNKNOWN = object()


@dataclass
class Op:
    """One client operation as the client saw it.

    ``ret`` is ``math.inf`` and ``ambiguous`` True when the outcome is unknown.
    ``output`` is meaningful only when not ambiguous (see module docstring).
    """

    client: int
    kind: str
    key: str
    value: str | None = None  # put / cas: the value written
    expected: str | None = None  # cas: required current value (None = absent)
    output: Any = None
    call: float = 0.0
    ret: float = math.inf
    ambiguous: bool = False
    meta: dict[str, Any] = field(default_factory=dict)  # free-form (endpoint, revision, error)

    def describe(self) -> str:
        """Human-readable one-liner for failure reports."""
        if self.kind == PUT:
            what = f"put({self.key!r}, {self.value!r})"
        elif self.kind == GET:
            what = f"get({self.key!r})"
        elif self.kind == DELETE:
            what = f"delete({self.key!r})"
        else:
            what = f"cas({self.key!r}, {self.expected!r} -> {self.value!r})"
        out = "?" if self.ambiguous else repr(self.output)
        ret = "inf" if math.isinf(self.ret) else f"{self.ret:.6f}"
        extra = f" {self.meta}" if self.meta else ""
        return f"[client {self.client}] {what} -> {out}  @[{self.call:.6f}, {ret}]{extra}"


def step(state: str | None, op: Op) -> tuple[bool, str | None]:
    """The register model: is ``op`` (with its output) legal in ``state``, and the next state.

    An ambiguous op is always legal; its effect is what it would do if applied now.
    """
    if op.kind == PUT:
        return True, op.value
    if op.kind == GET:
        return (op.ambiguous or op.output == state), state
    if op.kind == DELETE:
        if op.ambiguous:
            return True, None
        return op.output == (0 if state is None else 1), None
    if op.kind == CAS:
        success = state == op.expected
        if not op.ambiguous and op.output != success:
            return False, state
        return True, (op.value if success else state)
    raise ValueError(f"unknown operation kind {op.kind!r}")


class CheckBudgetExceeded(RuntimeError):
    """The search hit its step budget: the result is unknown (neither pass nor fail)."""


@dataclass
class KeyResult:
    """Outcome of checking one key's sub-history."""

    key: str
    ok: bool
    ops: int
    steps: int
    # On failure: the longest linearized prefix found and the operation that could
    # not be placed after it (its return came first), to point a human at the bug.
    linearized: list[Op] = field(default_factory=list)
    blocking: Op | None = None
    final_state: Any = _UNKNOWN

    def explain(self, context: int = 12) -> str:
        """Why this key is not linearizable, in words."""
        if self.ok:
            return f"key {self.key!r}: linearizable ({self.ops} ops)"
        lines = [f"key {self.key!r}: NOT linearizable ({self.ops} ops, {self.steps} search steps)"]
        lines.append(f"  longest linearization found ({len(self.linearized)} ops), last {context}:")
        state: str | None = None
        for op in self.linearized:
            _, state = step(state, op)
        for op in self.linearized[-context:]:
            lines.append(f"    {op.describe()}")
        lines.append(f"  state after it: {state!r}")
        if self.blocking is not None:
            lines.append(f"  cannot be linearized next (returned before any legal placement): {self.blocking.describe()}")
        return "\n".join(lines)


@dataclass
class CheckResult:
    """Outcome of a whole history: ok iff every key is linearizable."""

    ok: bool
    keys: dict[str, KeyResult]

    @property
    def failures(self) -> list[KeyResult]:
        return [r for r in self.keys.values() if not r.ok]

    def explain(self) -> str:
        if self.ok:
            total = sum(r.ops for r in self.keys.values())
            return f"linearizable: {len(self.keys)} keys, {total} ops"
        return "\n".join(r.explain() for r in self.failures)


def check_key(ops: Sequence[Op], initial: str | None = None, max_steps: int = 5_000_000, key: str = "") -> KeyResult:
    """WGL search over one key's operations (see module docstring).

    Raises `CheckBudgetExceeded` after ``max_steps`` list visits, so a pathological
    history makes a test fail loudly instead of hanging.
    """
    n = len(ops)
    if n == 0:
        return KeyResult(key, True, 0, 0)
    # Events: (time, 0=call/1=return, op index). Calls sort before returns at equal
    # times, which treats touching intervals as concurrent (the permissive choice).
    events = sorted(
        [(op.call, 0, i) for i, op in enumerate(ops)] + [(op.ret, 1, i) for i, op in enumerate(ops)],
        key=lambda e: (e[0], e[1], e[2]),
    )
    size = len(events)
    # Doubly linked list over nodes 1..size; node 0 is the head sentinel, size+1 the tail.
    nxt = list(range(1, size + 2)) + [size + 1]
    prv = [0] + list(range(0, size + 1))
    node_op = [0] * (size + 2)
    node_ret = [False] * (size + 2)
    ret_node = [0] * n
    for pos, (_, is_ret, i) in enumerate(events, start=1):
        node_op[pos] = i
        node_ret[pos] = bool(is_ret)
        if is_ret:
            ret_node[i] = pos
    tail = size + 1

    def lift(node: int) -> None:
        nxt[prv[node]] = nxt[node]
        prv[nxt[node]] = prv[node]
        r = ret_node[node_op[node]]
        nxt[prv[r]] = nxt[r]
        prv[nxt[r]] = prv[r]

    def unlift(node: int) -> None:
        r = ret_node[node_op[node]]
        nxt[prv[r]] = r
        prv[nxt[r]] = r
        nxt[prv[node]] = node
        prv[nxt[node]] = node

    state: str | None = initial
    linearized = 0
    cache: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = []
    best: list[int] = []
    best_block: int | None = None
    steps = 0
    entry = nxt[0]
    while nxt[0] != tail:
        steps += 1
        if steps > max_steps:
            raise CheckBudgetExceeded(f"key {key!r}: gave up after {max_steps} steps ({n} ops)")
        if not node_ret[entry]:
            i = node_op[entry]
            legal, new_state = step(state, ops[i])
            if legal:
                new_lin = linearized | (1 << i)
                if (new_lin, new_state) not in cache:
                    cache.add((new_lin, new_state))
                    stack.append((entry, state))
                    state, linearized = new_state, new_lin
                    lift(entry)
                    entry = nxt[0]
                    continue
            entry = nxt[entry]
        else:
            if len(stack) > len(best) or (not best and best_block is None):
                best = [node_op[e] for e, _ in stack]
                best_block = node_op[entry]
            if not stack:
                return _failure(key, ops, steps, best, best_block)
            node, state = stack.pop()
            linearized &= ~(1 << node_op[node])
            unlift(node)
            entry = nxt[node]
    return KeyResult(key, True, n, steps, final_state=state)


def _failure(key: str, ops: Sequence[Op], steps: int, best: list[int], block: int | None) -> KeyResult:
    return KeyResult(
        key,
        False,
        len(ops),
        steps,
        linearized=[ops[i] for i in best],
        blocking=ops[block] if block is not None else None,
    )


def check_history(
    ops: Iterable[Op],
    initial: dict[str, str | None] | None = None,
    max_steps_per_key: int = 5_000_000,
) -> CheckResult:
    """Check a whole history: each key independently (P-compositionality).

    ``initial`` gives known starting values (default: every key absent).
    """
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.kind not in KINDS:
            raise ValueError(f"unknown operation kind {op.kind!r}")
        if op.kind == GET and op.ambiguous:
            continue  # no effect, no information
        by_key[op.key].append(op)
    results = {
        key: check_key(key_ops, (initial or {}).get(key), max_steps_per_key, key=key)
        for key, key_ops in sorted(by_key.items())
    }
    return CheckResult(all(r.ok for r in results.values()), results)


class History:
    """Thread-safe recorder of client operations.

    Usage from a client thread::

        op = history.invoke(client_id, "put", key, value=v)
        try:
            resp = stub.Put(...)
        except grpc.RpcError as err:
            history.info(op, error=str(err.code()))   # or history.fail(op) if surely not applied
        else:
            history.ok(op)                            # output for get/delete/cas

    Times are taken inside the recorder, immediately around the caller's RPC.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._ops: list[Op] = []

    def invoke(
        self,
        client: int,
        kind: str,
        key: str,
        value: str | None = None,
        expected: str | None = None,
        **meta: Any,
    ) -> Op:
        """Record the invocation (time = now); complete it with `ok`, `fail` or `info`."""
        if kind not in KINDS:
            raise ValueError(f"unknown operation kind {kind!r}")
        return Op(client, kind, key, value=value, expected=expected, call=self._clock(), meta=dict(meta))

    def ok(self, op: Op, output: Any = None, **meta: Any) -> Op:
        """The operation completed with ``output`` (ignored for put)."""
        op.ret = self._clock()
        op.output = output
        op.meta.update(meta)
        with self._lock:
            self._ops.append(op)
        return op

    def fail(self, op: Op, **meta: Any) -> None:
        """The operation certainly did not take effect: it is left out of the history."""
        op.meta.update(meta)

    def info(self, op: Op, **meta: Any) -> Op:
        """Outcome unknown: it may take effect at any time after its invocation, or never."""
        op.ret = math.inf
        op.ambiguous = True
        op.meta.update(meta)
        with self._lock:
            self._ops.append(op)
        return op

    def ops(self) -> list[Op]:
        """A snapshot of the recorded operations."""
        with self._lock:
            return list(self._ops)

    def check(self, **kwargs: Any) -> CheckResult:
        return check_history(self.ops(), **kwargs)
