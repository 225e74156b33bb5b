"""The wait registry's deadlines (one timer for the oldest pending request, not one per request)."""

from __future__ import annotations

import asyncio

import pytest

from etcdpy.server.wait import Wait


def test_registration_times_out_and_leaves_the_registry() -> None:
    async def main() -> None:
        w = Wait()
        slow = w.register(1, timeout=0.05)
        fast = w.register(2, timeout=0.05)
        w.trigger(2, "done")
        assert await fast == "done"
        with pytest.raises(TimeoutError):
            await slow
        assert not w.is_registered(1) and len(w) == 0

    asyncio.run(main())


def test_answered_requests_never_time_out_and_later_ones_still_do() -> None:
    async def main() -> None:
        w = Wait()
        futs = [w.register(i, timeout=0.05) for i in range(100)]
        for i in range(100):
            w.trigger(i, i)
        assert [await f for f in futs] == list(range(100))
        late = w.register(1000, timeout=0.05)
        untimed = w.register(1001)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(late, 5)
        assert not untimed.done() and w.is_registered(1001)
        w.fail_all(RuntimeError("stopping"))
        with pytest.raises(RuntimeError):
            await untimed

    asyncio.run(main())
