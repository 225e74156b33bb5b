"""The lessor's asynchronous side: revoking expired leases through the log, and waiting renewals.

etcd runs a lessor goroutine that every 500 ms hands the expired leases (at most
leaseRevokeRate/2 of them) to the server, which proposes a LeaseRevokeRequest for
each with at most 16 in flight. Here one asyncio task does the same on the loop
that owns the lessor. Revoking through the log instead of locally is what keeps
members identical: the keys disappear on every member at the same revision.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from etcdpy import errors
from etcdpy.lease.lessor import LeaseExpired, Lessor, NotPrimary

REVOKE_CHECK_INTERVAL = 0.5
"""How often the primary looks for expired leases (etcd's lessor runLoop period)."""

MAX_PENDING_REVOKES = 16
"""etcd's maxPendingRevokes: revoke proposals in flight at once."""


class ExpiredLeaseRevoker:
    """Leader-only background task: find expired leases, propose their revocation."""

    def __init__(
        self,
        lessor: Lessor,
        propose_revoke: Callable[[int], Awaitable[object]],
        logger: logging.Logger,
        interval: float = REVOKE_CHECK_INTERVAL,
        max_pending: int = MAX_PENDING_REVOKES,
    ) -> None:
        self._lessor = lessor
        self._propose_revoke = propose_revoke
        self._log = logger
        self._interval = interval
        self._slots = asyncio.Semaphore(max_pending)
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Loop until cancelled; the proposals in flight are cancelled with it."""
        try:
            while True:
                self.revoke_expired()
                await asyncio.sleep(self._interval)
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def revoke_expired(self) -> int:
        """One pass: start a revoke for each expired lease (rate-limited); returns how many."""
        expired = self._lessor.find_expired(max(1, self._lessor.revoke_rate // 2))
        for lease in expired:
            task = asyncio.create_task(self._revoke(lease.id), name=f"lease-revoke-{lease.id:x}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(expired)

    async def _revoke(self, lease_id: int) -> None:
        async with self._slots:
            if not self._lessor.is_primary or self._lessor.lookup(lease_id) is None:
                return  # demoted meanwhile, or a client revoked it first
            try:
                await self._propose_revoke(lease_id)
            except errors.ErrLeaseNotFound:
                pass
            except errors.EtcdError as e:
                # The lease stays expired; find_expired hands it out again after the retry interval.
                self._log.warning(
                    "failed to revoke expired lease",
                    extra={"fields": {"lease-id": f"{lease_id:016x}", "error": e.message}},
                )


async def renew_on_primary(
    lessor: Lessor, lease_id: int, check_leader: Callable[[], None], timeout: float
) -> int:
    """Renew on this member's primary lessor, waiting as etcd's LeaseRenew does.

    `check_leader` raises when this member is not the leader (the renewal belongs
    to the leader's lessor). A leader whose lessor is not promoted yet (its first
    entry of the term is not applied) waits for the promotion; a lease past its
    deadline waits for its revocation, after which it is "not found" — so a
    keep-alive never revives a lease whose keys are about to be deleted.
    """
    try:
        async with asyncio.timeout(timeout):
            while True:
                check_leader()
                try:
                    return lessor.renew(lease_id)
                except (NotPrimary, LeaseExpired):
                    await _next_change(lessor)
    except TimeoutError:
        raise errors.ErrTimeout() from None


def _next_change(lessor: Lessor) -> asyncio.Future[None]:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    lessor.add_waiter(wake)
    return fut
