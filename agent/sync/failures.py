"""Per-incident failures: one incident's remote or data error never stops the others.

:func:`guard` runs one incident's work under the cycle's concurrency bound. A remote or data
error fails that incident only: it is recorded with a backoff and retried (a transient failure
by the very next cycle, then after ``min(poll_interval, 60 s)``; a permanent one after a minute,
doubling). Anything else is a bug: it propagates and stops the cycle with a traceback. A rate-
limit pause of the ticket system defers the work whole; a shutdown starts no new work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from agent.errors import DataError, HookFailed, InstancePaused, RemoteError, TransientError
from agent.log import bind, log
from agent.sync import clock
from agent.sync.context import CycleContext, Setup

PERMANENT_BACKOFF = 60.0  # seconds before a pair that failed permanently is tried again (doubling)


def safe_error(exc: BaseException) -> str:
    return str(exc)[:500]


class Slot:
    """One of a workspace's ``max_concurrency`` places for an incident's remote work.

    An incident holds its slot from its first request to its last; :func:`release_slot` hands it
    to the next incident as soon as only the shadow's commit is left, so no slot sits idle
    waiting for the store while requests could be in flight."""

    def __init__(self, sem: asyncio.Semaphore) -> None:
        self._sem = sem
        self._held = False

    async def __aenter__(self) -> Slot:
        await self._sem.acquire()
        self._held = True
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._sem.release()


_slot: ContextVar[Slot | None] = ContextVar("slot", default=None)


def release_slot() -> None:
    """The running incident sends nothing more: its slot goes to the next one (a no-op outside
    :func:`guard`)."""
    slot = _slot.get()
    if slot is not None:
        slot.release()


async def guard(sync: Setup, ctx: CycleContext, incident: str, work: Coroutine[Any, Any, None]) -> None:
    """Run one incident's work (see the module docstring)."""
    async with Slot(sync.sem) as slot:
        if sync.stopping is not None and sync.stopping.is_set():
            work.close()  # shutting down: start no new work (the watermark stays put)
            ctx.stats.deferred += 1
            return
        token = _slot.set(slot)
        with bind(incident=incident):
            try:
                await work
                if incident in ctx.retrying:
                    await sync.store.clear_failure(sync.instance, sync.workspace, incident)
            except InstancePaused:
                # The instance's rate-limit window is used up (REFERENCE E.8): the work is
                # deferred whole, the watermarks stay, and it all runs after the pause.
                ctx.stats.deferred += 1
            except (RemoteError, DataError) as exc:
                ctx.stats.failures += 1
                await failed(sync, ctx, incident, exc)
            finally:
                _slot.reset(token)


async def failed(sync: Setup, ctx: CycleContext, incident: str, exc: RemoteError | DataError) -> None:
    """Record one incident's failure for a retry, and say so (a dry run only says).

    Only a failure that repeats is a warning: one the next cycle heals needs nobody."""
    error = safe_error(exc)
    if ctx.options.dry_run:
        log.warning("incident_failed", kind="dry_run", error=error)
        return
    now = clock.utcnow()
    transient = isinstance(exc, TransientError)
    nxt = await sync.store.record_failure(
        sync.instance,
        sync.workspace,
        incident,
        error,
        now=now,
        base_delay=min(PERMANENT_BACKOFF, sync.settings.poll_interval) if transient else PERMANENT_BACKOFF,
        grace=1 if transient else 0,
    )
    if isinstance(exc, HookFailed):
        log.error("incident_failed", kind="agent", error=error)
        return
    fields = {"kind": "transient" if transient else "permanent", "error": error}
    if not transient or nxt > now:
        log.warning("incident_failed", **fields, next_try=nxt.isoformat())
    else:
        log.info("incident_failed", **fields, next_try=nxt.isoformat())

