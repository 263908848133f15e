"""Who may write: the single-host lock of a SQLite state, or the leader lease of a shared one.

* SQLite (the default): the ``flock`` beside the file (:mod:`agent.store.sqlite.lock`); a second agent on
  the same file is refused, as it always was.
* PostgreSQL: every ``run`` agent sharing the database elects one leader through the lease
  (:mod:`agent.store.lease`). The others wait as **standby**: they talk to neither Sentinel nor
  ServiceNow, answer ``/readyz`` with 200 "standby", and take over when the leader's lease
  expires (at most ``failover_timeout`` after it died or lost the database). While leading,
  the store is fenced with the lease's epoch and every remote write first checks the lease
  (:meth:`Leadership.bind`); when a renewal fails until the lease's own deadline, the running
  cycle is cancelled at once (no grace: another agent may already lead) and the agent goes
  back to standby.
* One-shot commands that write (``once``, ``resync``, ``unlink``, ``watermark set``) take the
  lease too through :func:`exclusive`, and are refused while another agent leads.

Log events: ``lease_acquired`` (epoch, and the previous holder), ``lease_lost`` (why),
``lease_released``, ``standby`` (who leads).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from agent.app.runtime import Runtime
from agent.config import Config
from agent.errors import LockHeld, StoreUnavailable
from agent.log import log
from agent.store.lease import Lease, timings
from agent.store.postgres.store import PostgresStore
from agent.store.sqlite.lock import StateLock


def shared(config: Config) -> bool:
    """True when the state is shared by several agents (PostgreSQL) and a lease decides."""
    return config.agent.state.kind == "postgresql"


def new_lease(config: Config) -> Lease:
    target = config.agent.state
    return Lease(target.value, target.password, timings(config.agent.failover_timeout))


class Leadership:
    """The ``run`` loop's view: wait to lead, and know when leading ended."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lease = new_lease(config) if shared(config) else None
        self.file_lock: StateLock | None = None
        self.lost = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Leadership:
        if self.lease is None:
            self.file_lock = StateLock(
                self.config.agent.state_db, ttl=max(600.0, 3 * self.config.agent.poll_interval)
            )
            self.file_lock.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_keeper()
        if self.file_lock is not None:
            self.file_lock.release()
        if self.lease is not None:
            with contextlib.suppress(StoreUnavailable):
                epoch = self.lease.epoch
                if epoch is not None:
                    await self.lease.release()
                    log.info("lease_released", epoch=epoch)
                await self.lease.withdraw()
            await self.lease.close()

    @property
    def leading(self) -> bool:
        if self.lease is None:
            return self.file_lock is not None
        return self.lease.held and not self.lost.is_set()

    def renew_file_lock(self) -> None:
        if self.file_lock is not None:
            self.file_lock.renew()

    async def wait_to_lead(self, stop: asyncio.Event) -> bool:
        """Return True once this agent leads, False when ``stop`` is set first."""
        if self.lease is None:
            return not stop.is_set()
        lease = self.lease
        announced = False
        while not stop.is_set():
            try:
                if await lease.try_acquire():
                    break
                holder = await lease.holder()
                if not announced:
                    log.info("standby", leader_host=holder.host if holder else None,
                             leader_pid=holder.pid if holder else None)  # fmt: skip
                    announced = True
                await lease.announce("standby")
                wait = min(lease.timing.poll_every, max(0.05, await lease.seconds_to_expiry()))
            except StoreUnavailable as exc:
                log.warning("lease_unavailable", error=str(exc))
                wait = lease.timing.poll_every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=wait)
        if stop.is_set():
            return False
        self.lost.clear()
        log.info("lease_acquired", epoch=lease.epoch, failover_timeout=self.config.agent.failover_timeout)
        with contextlib.suppress(StoreUnavailable):
            await lease.announce("leader")
        self._keeper = asyncio.create_task(self._keep(lease))
        return True

    def bind(self, rt: Runtime) -> None:
        """Fence the store with the lease's epoch and gate every remote write on the lease."""
        if self.lease is None:
            return
        if rt.shadow is not None:
            self.fence(rt.shadow)
        for http in [*rt.arm.values(), *rt.graph.values(), *rt.snow_http.values()]:
            http.write_gate = self.lease.check

    def fence(self, store: object) -> None:
        """Make ``store`` refuse commits once another agent took a newer lease epoch."""
        if self.lease is not None and isinstance(store, PostgresStore):
            store.fence(self.lease.epoch, stall_limit=self.lease.timing.ttl / 2)

    async def interrupted(self, stop: asyncio.Event) -> str:
        """Wait for a stop signal (``"stop"``) or the end of leadership (``"lost"``)."""
        waits = {asyncio.create_task(stop.wait()): "stop", asyncio.create_task(self.lost.wait()): "lost"}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        return waits[done.pop()]

    async def step_down(self) -> None:
        """After losing the lease: stop renewing; the caller goes back to :meth:`wait_to_lead`."""
        await self._stop_keeper()

    @property
    def transitions(self) -> int:
        return self.lease.transitions if self.lease is not None else 0

    async def _keep(self, lease: Lease) -> None:
        """Renew every ``renew_every``. At the lease's own deadline without a renewal, give up at
        once, even while a renewal still hangs on an unreachable database."""
        timing = lease.timing
        hung: asyncio.Task[bool] | None = None
        while True:
            await asyncio.sleep(min(timing.renew_every, lease.seconds_left()))
            if not lease.held:
                reason = "no renewal before the lease's deadline"
                break
            renewal = asyncio.create_task(lease.renew())
            try:
                done, _ = await asyncio.wait({renewal}, timeout=max(0.0, lease.seconds_left()))
            except asyncio.CancelledError:
                renewal.cancel()  # stopping: the renewal must not outlive the keeper
                raise
            if not done:
                reason, hung = "no renewal before the lease's deadline", renewal
                break
            try:
                if not renewal.result():
                    reason = "another agent took the lease"
                    break
            except StoreUnavailable as exc:
                left = round(lease.seconds_left(), 2)
                log.warning("lease_renewal_failed", error=str(exc), seconds_left=left)
        lease.lost()
        log.warning("lease_lost", reason=reason)
        self.lost.set()
        if hung is not None:
            hung.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await hung

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper


@contextlib.asynccontextmanager
async def exclusive(config: Config) -> AsyncIterator[Leadership]:
    """Hold the state for a one-shot command: the file lock, or the lease (never waiting).

    Raises :class:`LockHeld` naming the holder when a running agent has it. The caller binds
    what it opens (:meth:`Leadership.bind`, :meth:`Leadership.fence`).
    """
    leadership = Leadership(config)
    if not shared(config):
        async with leadership:
            yield leadership
        return
    lease = leadership.lease
    assert lease is not None
    try:
        if not await lease.try_acquire():
            holder = await lease.holder()
            who = f"PID {holder.pid} on {holder.host}" if holder else "another agent"
            raise LockHeld(f"state database {config.agent.state.location} is in use by {who} (the leader)")
        leadership._keeper = asyncio.create_task(leadership._keep(lease))
        yield leadership
    finally:
        await leadership.__aexit__()
