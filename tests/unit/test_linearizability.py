"""The linearizability checker itself (tests/linearizability.py), on hand-made histories.

Why: the cluster tests trust this checker to say "no anomaly"; a checker that
accepts everything would make them worthless. So every anomaly the cluster tests
are meant to catch is written down here as a history it must reject, and the
legitimate concurrency it must tolerate as histories it must accept.
"""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from linearizability import (  # noqa: E402
    CAS,
    DELETE,
    GET,
    PUT,
    CheckBudgetExceeded,
    History,
    Op,
    check_history,
    check_key,
)

INF = math.inf


def put(key: str, value: str, call: float, ret: float, client: int = 0) -> Op:
    return Op(client, PUT, key, value=value, call=call, ret=ret, ambiguous=math.isinf(ret))


def get(key: str, output: str | None, call: float, ret: float, client: int = 1) -> Op:
    return Op(client, GET, key, output=output, call=call, ret=ret)


def delete(key: str, output: int | None, call: float, ret: float, client: int = 2) -> Op:
    return Op(client, DELETE, key, output=output, call=call, ret=ret, ambiguous=math.isinf(ret))


def cas(key: str, expected: str | None, value: str, output: bool | None, call: float, ret: float, client: int = 3) -> Op:
    return Op(client, CAS, key, value=value, expected=expected, output=output, call=call, ret=ret, ambiguous=math.isinf(ret))


def ok(*ops: Op) -> bool:
    return check_history(list(ops)).ok


# --------------------------------------------------------------------------- sequential


def test_empty_history_is_linearizable() -> None:
    assert ok()


def test_sequential_put_then_read() -> None:
    assert ok(put("k", "a", 0, 1), get("k", "a", 2, 3))


def test_read_of_absent_key() -> None:
    assert ok(get("k", None, 0, 1))
    assert not ok(get("k", "a", 0, 1)), "a value nobody wrote"


def test_stale_read_after_acknowledged_write_is_rejected() -> None:
    """The classic split-brain symptom: a deposed leader serves the old value."""
    history = [put("k", "a", 0, 1), put("k", "b", 2, 3), get("k", "a", 4, 5)]
    result = check_history(history)
    assert not result.ok
    text = result.explain()
    assert "NOT linearizable" in text and "get('k')" in text


def test_lost_acknowledged_write_is_rejected() -> None:
    """An acknowledged put that a later read does not see was lost."""
    assert not ok(put("k", "a", 0, 1), get("k", None, 2, 3))
    assert not ok(put("k", "a", 0, 1), put("k", "b", 2, 3), get("k", "b", 4, 5), get("k", "a", 6, 7))


def test_read_going_back_in_time_is_rejected() -> None:
    """Two sequential reads may not observe writes in opposite orders."""
    history = [
        put("k", "a", 0, 10, client=0),
        put("k", "b", 0, 10, client=1),
        get("k", "a", 1, 2, client=2),
        get("k", "b", 3, 4, client=2),
        get("k", "a", 5, 6, client=2),
    ]
    assert not ok(*history)


# --------------------------------------------------------------------------- concurrency


def test_concurrent_overlapping_ops_in_either_order() -> None:
    """A read overlapping a write may see it or not; two overlapping writes may land in either order."""
    assert ok(put("k", "a", 0, 10), get("k", "a", 1, 2))
    assert ok(put("k", "a", 0, 10), get("k", None, 1, 2))
    w1, w2 = put("k", "x", 0, 5, client=0), put("k", "y", 1, 6, client=1)
    assert ok(w1, w2, get("k", "x", 7, 8))
    assert ok(w1, w2, get("k", "y", 7, 8))


def test_concurrent_reads_must_agree_with_one_order() -> None:
    """Overlapping writes x, y: reads after both finish must all see the same last write."""
    w1, w2 = put("k", "x", 0, 5, client=0), put("k", "y", 1, 6, client=1)
    assert not ok(w1, w2, get("k", "x", 7, 8, client=2), get("k", "y", 9, 10, client=3))


def test_touching_intervals_count_as_concurrent() -> None:
    """A return and a call at the same instant: either order is acceptable."""
    assert ok(put("k", "a", 0, 5), get("k", None, 5, 6))


# --------------------------------------------------------------------------- ambiguous outcomes


def test_ambiguous_write_may_or_may_not_apply() -> None:
    assert ok(put("k", "a", 0, INF), get("k", "a", 5, 6))
    assert ok(put("k", "a", 0, INF), get("k", None, 5, 6))
    # ... and may apply late, after reads that did not see it
    assert ok(put("k", "a", 0, INF), get("k", None, 5, 6), get("k", "a", 7, 8))


def test_ambiguous_write_cannot_unapply() -> None:
    """Once a read saw it, a later read cannot see the old state again."""
    assert not ok(put("k", "a", 0, INF), get("k", "a", 5, 6), get("k", None, 7, 8))


def test_ambiguous_write_cannot_apply_before_its_invocation() -> None:
    assert not ok(get("k", "a", 0, 1), put("k", "a", 2, INF))


def test_ambiguous_read_is_ignored() -> None:
    history = History()
    op = history.invoke(0, GET, "k")
    history.info(op)
    assert history.check().ok
    assert history.check().keys == {}


def test_ambiguous_delete_and_cas() -> None:
    assert ok(put("k", "a", 0, 1), delete("k", None, 2, INF), get("k", None, 5, 6))
    assert ok(put("k", "a", 0, 1), delete("k", None, 2, INF), get("k", "a", 5, 6))
    assert ok(put("k", "a", 0, 1), cas("k", "a", "b", None, 2, INF), get("k", "b", 5, 6))
    assert not ok(put("k", "a", 0, 1), cas("k", "z", "b", None, 2, INF), get("k", "b", 5, 6)), (
        "an ambiguous CAS whose comparison cannot hold must not apply"
    )


# --------------------------------------------------------------------------- delete and CAS


def test_delete_outputs() -> None:
    assert ok(put("k", "a", 0, 1), delete("k", 1, 2, 3), get("k", None, 4, 5))
    assert not ok(delete("k", 1, 0, 1)), "deleted a key that never existed"
    assert not ok(put("k", "a", 0, 1), delete("k", 0, 2, 3)), "missed an existing key"


def test_cas_both_creating_the_same_key_is_rejected() -> None:
    """Two sequential create-if-absent CASes cannot both succeed (a lost-update anomaly)."""
    assert not ok(cas("k", None, "a", True, 0, 1, client=0), cas("k", None, "b", True, 2, 3, client=1))
    assert ok(cas("k", None, "a", True, 0, 1, client=0), cas("k", None, "b", False, 2, 3, client=1))


def test_concurrent_cas_exactly_one_wins() -> None:
    both = [cas("k", None, "a", True, 0, 10, client=0), cas("k", None, "b", True, 1, 11, client=1)]
    assert not ok(*both)
    one = [cas("k", None, "a", False, 0, 10, client=0), cas("k", None, "b", True, 1, 11, client=1), get("k", "b", 12, 13)]
    assert ok(*one)


# --------------------------------------------------------------------------- per key, diagnostics, recorder


def test_keys_are_checked_independently() -> None:
    history = [put("a", "1", 0, 1), put("b", "1", 0, 1), get("a", "1", 2, 3), get("b", None, 2, 3)]
    result = check_history(history)
    assert not result.ok
    assert [r.key for r in result.failures] == ["b"]
    assert result.keys["a"].ok


def test_initial_state() -> None:
    assert check_history([get("k", "old", 0, 1)], initial={"k": "old"}).ok


def test_explanation_names_the_blocking_operation() -> None:
    result = check_key([put("k", "a", 0, 1), put("k", "b", 2, 3), get("k", "a", 4, 5)], key="k")
    assert not result.ok
    assert result.blocking is not None and result.blocking.kind == GET
    assert [op.value for op in result.linearized] == ["a", "b"]


def test_budget_is_enforced() -> None:
    # Many mutually concurrent writes and an impossible read: the search explores a lot.
    ops = [put("k", f"v{i}", 0, 100, client=i) for i in range(14)] + [get("k", "nobody", 200, 201)]
    with pytest.raises(CheckBudgetExceeded):
        check_key(ops, max_steps=1000, key="k")


def test_history_recorder_times_and_outcomes() -> None:
    clock = iter(range(100)).__next__
    history = History(clock=clock)
    w = history.invoke(0, PUT, "k", value="a")
    r = history.invoke(1, GET, "k")
    history.ok(w)
    history.ok(r, "a")
    lost = history.invoke(2, PUT, "k", value="b")
    history.fail(lost)  # definitely not applied: not recorded
    amb = history.invoke(3, PUT, "k", value="c")
    history.info(amb, error="DEADLINE_EXCEEDED")
    ops = history.ops()
    assert [(o.kind, o.call, o.ret) for o in ops] == [("put", 0, 2), ("get", 1, 3), ("put", 5, INF)]
    assert ops[2].ambiguous and ops[2].meta == {"error": "DEADLINE_EXCEEDED"}
    assert history.check().ok
    with pytest.raises(ValueError):
        history.invoke(0, "append", "k")


# --------------------------------------------------------------------------- randomised


def _simulate(seed: int, clients: int = 5, ops_per_client: int = 60, keys: int = 3) -> list[Op]:
    """A random concurrent history that IS linearizable by construction.

    Each op takes effect atomically at a random instant inside its [call, ret]
    interval on a real register; outputs come from that execution. Some writes
    are made ambiguous (their effect still happened, or not at all).
    """
    rng = random.Random(seed)
    planned = []
    for c in range(clients):
        t = rng.random()
        for s in range(ops_per_client):
            call = t
            point = call + rng.random() * 3
            ret = point + rng.random() * 3
            t = ret + rng.random()
            kind = rng.choice([PUT, PUT, GET, GET, GET, DELETE, CAS])
            planned.append((point, call, ret, c, s, kind, f"k{rng.randrange(keys)}", rng))
    planned.sort(key=lambda p: p[0])
    store: dict[str, str | None] = {}
    ops = []
    for point, call, ret, c, s, kind, key, r in planned:
        value = f"{c}-{s}"
        cur = store.get(key)
        ambiguous = kind != GET and r.random() < 0.05
        apply = not ambiguous or r.random() < 0.5
        if kind == PUT:
            output = None
            if apply:
                store[key] = value
        elif kind == GET:
            output = cur
        elif kind == DELETE:
            output = 0 if cur is None else 1
            if apply:
                store[key] = None
        else:
            expected = cur if r.random() < 0.6 else f"x{s}"
            output = cur == expected
            if apply and output:
                store[key] = value
            ops.append(Op(c, CAS, key, value=value, expected=expected, output=None if ambiguous else output,
                          call=call, ret=INF if ambiguous else ret, ambiguous=ambiguous))
            continue
        ops.append(Op(c, kind, key, value=value if kind == PUT else None, output=None if ambiguous else output,
                      call=call, ret=INF if ambiguous else ret, ambiguous=ambiguous))
    return ops


@pytest.mark.parametrize("seed", range(20))
def test_random_linearizable_histories_are_accepted(seed: int) -> None:
    result = check_history(_simulate(seed))
    assert result.ok, result.explain()


@pytest.mark.parametrize("seed", range(20))
def test_random_histories_with_an_injected_stale_read_are_rejected(seed: int) -> None:
    """Make one read return a value overwritten by a write that finished before the read began."""
    ops = _simulate(seed, clients=3, keys=2)
    rng = random.Random(seed)
    done_puts = [o for o in ops if o.kind == PUT and not o.ambiguous]
    rng.shuffle(done_puts)
    for old in done_puts:
        newer = [o for o in done_puts if o.key == old.key and o.call > old.ret]
        if not newer:
            continue
        new = min(newer, key=lambda o: o.ret)
        # a read strictly after `new` returned; nothing may write `old.value` again (values are unique)
        ops.append(Op(9, GET, old.key, output=old.value, call=new.ret + 0.5, ret=new.ret + 0.6))
        assert not check_history(ops).ok
        return
    pytest.skip("no suitable pair of writes in this random history")


def test_large_history_is_fast() -> None:
    """Thousands of ops with real concurrency: the per-key split keeps it quick."""
    ops = _simulate(1234, clients=8, ops_per_client=600, keys=16)
    start = time.monotonic()
    result = check_history(ops)
    assert result.ok, result.explain()
    assert time.monotonic() - start < 20
