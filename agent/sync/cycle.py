"""The sync cycle: one coroutine per workspace, all workspaces concurrently.

One cycle of one workspace (:meth:`WorkspaceSync.cycle`), as steps:

1. **List** the incidents modified since the source watermark minus the overlap, and the tickets
   of this workspace modified since the ticket watermark minus the overlap. An idle cycle is
   exactly these two listings and no write. A sweep lists both in full; an open check adds the
   open incidents (:mod:`agent.sync.sweep`).
2. **Pair** them through the shadow's links and fetch the other half of a pair only when one
   side changed (:mod:`agent.sync.pairing`).
3. **Plan**: decide per pair (:mod:`agent.core.decide`) and per field (:mod:`agent.core.merge`)
   after resolving the owners, giving a list of actions (:mod:`agent.sync.actions`); a unique-key
   look-up for incidents without a link means a lost shadow or a crash after a create never
   duplicates a ticket. The safety valves (:mod:`agent.core.valves`) run over the whole plan
   **before any write**.
4. **Act**: apply the actions with bounded concurrency (:mod:`agent.sync.apply`), or describe
   them in a dry run (:mod:`agent.sync.dryrun`); failures are per incident
   (:mod:`agent.sync.failures`). Then the follow-ups (:mod:`agent.sync.followups`).
5. Advance each **watermark** to the newest modification time the server reported among the
   items listed. An item that failed goes to the failures table (retried with backoff by
   explicit fetch), so it never holds the watermark back and never blocks other incidents.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from agent.core import valves
from agent.core.records import Incident, Ticket, Watermark
from agent.errors import AgentError, InstancePaused, PermanentError, SafetyValveTripped, TransientError
from agent.log import bind, counting_retries, log
from agent.ports import IncidentSource, Store, TicketSink
from agent.progress import Progress
from agent.sync import apply, clock, dryrun, followups, sweep
from agent.sync.actions import Action, Create, FollowUp, Skip, Update, plan
from agent.sync.context import CycleContext, CycleOptions, CycleStats, Settings, Setup
from agent.sync.failures import guard, safe_error
from agent.sync.hooks import Hook
from agent.sync.pairing import pair

__all__ = ["CycleOptions", "CycleStats", "Settings", "WorkspaceSync", "run_workspaces"]

Act = Callable[[Setup, CycleContext, Action], Coroutine[Any, Any, None]]
"""How an action is carried out: applied, or described (a dry run)."""
Ready = Callable[[datetime, bool], Coroutine[Any, Any, bool]]
"""Work the runtime does before a source's cycle (``now``, ``dry_run``): False skips the cycle
this time (a workspace's links still moving to a Defender source: nothing is listed, created or
written until they have)."""


class WorkspaceSync(Setup):
    """Runs cycles for one workspace against its ticket-system instance."""

    def __init__(
        self,
        settings: Settings,
        source: IncidentSource,
        sink: TicketSink,
        store: Store,
        *,
        hook: Hook | None = None,
        calls: Callable[[], int] | None = None,
        ready: Ready | None = None,
    ) -> None:
        super().__init__(settings, source, sink, store, hook=hook)
        self._calls = calls or (lambda: 0)
        self._ready = ready

    async def prepare(self) -> None:
        """Cheap per-cycle checks before the cycle (the ticket side's configured fields)."""
        await self.sink.prepare(clock.utcnow())

    async def cycle(self, options: CycleOptions | None = None) -> CycleStats:
        """One full cycle; returns its statistics. Raises ``SafetyValveTripped`` before writing."""
        options = options or CycleOptions()
        ctx = CycleContext(options, clock.utcnow())
        t0, calls0 = time.monotonic(), self._calls()
        with bind(workspace=self.workspace, instance=self.instance), counting_retries() as retried:
            ok = False
            stopped: SafetyValveTripped | InstancePaused | None = None
            try:
                self.sink.check_paused()
                await self._run(ctx)
                ok = True
            except (SafetyValveTripped, InstancePaused) as exc:
                stopped = exc
                raise
            finally:
                await self.sink.save_pause()
                summary = ctx.stats.as_dict() | {
                    "calls": self._calls() - calls0,
                    "http_retries": retried.retried,
                    "duration_ms": round((time.monotonic() - t0) * 1000, 1),
                    "ok": ok,
                    "dry_run": options.dry_run,
                }
                if isinstance(stopped, SafetyValveTripped):  # kept in the cycle history for `status`
                    summary["safety_valve"] = {"check": stopped.check, "message": str(stopped)}
                if isinstance(stopped, InstancePaused):
                    summary["paused_until"] = stopped.until_text
                log.info("cycle_summary", **summary)
                if not options.dry_run:
                    await self.store.record_cycle(
                        self.instance,
                        self.workspace,
                        started=ctx.now,
                        finished=clock.utcnow(),
                        ok=ok,
                        summary=summary,
                    )
        return ctx.stats

    async def _run(self, ctx: CycleContext) -> None:
        inst, wsname, now = self.instance, self.workspace, ctx.now
        if self._ready is not None and not await self._ready(now, ctx.options.dry_run):
            log.info("cycle_waiting", reason="links still moving to this source; the next cycle retries")
            return
        overlap = timedelta(seconds=self.settings.overlap)
        wm_s = await self.store.get_watermark(inst, wsname, "sentinel")
        wm_n = await self.store.get_watermark(inst, wsname, "servicenow")
        max_age = now - timedelta(days=self.settings.max_age_days)
        # The source's creation watermark is a floor an operator sets: no ticket for an incident
        # created before it (on top of max_age_days); a backfill's ``since`` goes below both.
        floor = max(max_age, wm_s.created) if wm_s.created is not None else max_age
        since = (wm_s.modified - overlap) if wm_s.modified else floor
        if ctx.options.since is not None:
            since = min(since, ctx.options.since)
        await self._when(ctx, first_run=wm_s.modified is None)
        # 1. list both sides (the only calls an idle cycle makes)
        incidents, newest = await self._incidents(ctx, since)
        tickets = await self._tickets(ctx, wm_s, wm_n, overlap)
        # 2. pair through the shadow; 3. plan, and run the safety valves before any write
        pairs = await pair(self, ctx, incidents, tickets)
        actions = await plan(self, ctx, pairs, floor, wm_s.modified)
        self._close_valve(ctx, actions)
        # 4. act
        if ctx.options.dry_run:
            await self._execute(ctx, actions, dryrun.describe)
        else:
            for skip in (a for a in actions if isinstance(a, Skip)):
                await apply.forget(self, skip)
            await self._begin_talk(ctx, actions)
            started, calls = time.monotonic(), self._calls()
            await self._execute(ctx, actions, apply.run)
            ctx.stats.apply_ms = round((time.monotonic() - started) * 1000, 1)
            ctx.stats.apply_calls = self._calls() - calls
            await self._after(ctx, actions, incidents)
        # 5. watermarks: the newest server time seen; failures are retried from their table.
        # Work deferred by a shutdown keeps both watermarks where they were, and a backfill
        # (``since``) never moves them: the regular cycles carry on from where they were.
        if not ctx.options.dry_run and not ctx.stats.deferred and ctx.options.since is None:
            await self._advance(wm_s, wm_n, newest, tickets, since, now)

    async def _when(self, ctx: CycleContext, *, first_run: bool) -> None:
        """Whether this cycle sweeps (compares every open pair) or runs an open check.

        A workspace's first cycle with nothing linked yet needs no open check: its listing goes
        back to the floor, so it holds every incident a ticket may be made for, and there is no
        link whose version could differ. That listing counts as the check (see :meth:`_after`)."""
        inst, wsname, agent = self.instance, self.workspace, self.settings
        ctx.sweeping = ctx.options.sweep or await sweep.due(
            self.store, inst, wsname, agent.sweep_interval, ctx.now, record=not ctx.options.dry_run
        )
        total, ctx.open_links = await self.store.count_links(inst, wsname)
        ctx.listed_all_open = first_run and total == 0 and ctx.options.since is None
        ctx.checking = (
            not ctx.sweeping
            and not ctx.listed_all_open
            and await sweep.open_check_due(self.store, inst, wsname, agent.open_check_interval, ctx.now)
        )
        ctx.stats.sweep, ctx.stats.open_check = ctx.sweeping, ctx.checking

    async def _incidents(
        self, ctx: CycleContext, since: datetime
    ) -> tuple[dict[str, Incident], datetime | None]:
        """The source's listing (in full on a sweep), and the newest modification time in it."""
        incidents = {i.id: i async for i in self.source.changed(None if ctx.sweeping else since)}
        # The watermark follows this listing only: the open check is no complete listing.
        newest = max((i.modified for i in incidents.values()), default=None)
        if ctx.checking:
            # A new comment changes the incident's version; whether it also moves its modification
            # time is not verified (REFERENCE E.2), so the open incidents are listed in full now and
            # then, and pairing keeps those whose version differs from the shadow's.
            async for inc in self.source.open_incidents():
                incidents[inc.id] = inc  # listed after the incremental listing: the fresher copy
        ctx.stats.listed_sentinel = len(incidents)
        return incidents, newest

    async def _tickets(
        self, ctx: CycleContext, wm_s: Watermark, wm_n: Watermark, overlap: timedelta
    ) -> dict[str, Ticket]:
        """The ticket side's listing (none on a workspace's first run), and the valves over both."""
        first_run = wm_s.modified is None
        tickets: dict[str, Ticket] = {}
        if not first_run or wm_n.modified is not None:
            since = wm_n.modified - overlap if wm_n.modified is not None else None
            tickets = {t.id: t async for t in self.sink.changed(since)}
        if ctx.sweeping:
            await self._sweep_tickets(ctx, tickets)
        ctx.stats.listed_snow = len(tickets)
        sentinel_full = first_run or ctx.sweeping
        # The ticket side is listed in full only once the source was (see step 1).
        for side, listed, full in (
            ("sentinel", ctx.stats.listed_sentinel, sentinel_full),
            ("servicenow", ctx.stats.listed_snow, wm_n.modified is None and not sentinel_full),
        ):
            valves.check_listing(
                self.workspace, side, listed, ctx.open_links, full=full, force=ctx.options.force
            )
        return tickets

    async def _sweep_tickets(self, ctx: CycleContext, tickets: dict[str, Ticket]) -> None:
        """A sweep's ticket half: the ticket of every open link."""
        links = [link async for link in self.store.iter_links(self.instance, self.workspace, open_only=True)]
        tickets.update(await self.sink.fetch([link.sys_id for link in links if link.sys_id not in tickets]))
        found = sum(1 for link in links if link.sys_id in tickets)
        valves.check_listing(
            self.workspace, "servicenow", found, len(links), full=True, force=ctx.options.force
        )

    def _close_valve(self, ctx: CycleContext, actions: Sequence[Action]) -> None:
        """The close-ratio valve over the whole plan, before any write."""
        planned = [a for a in actions if isinstance(a, Update | FollowUp)]
        closing = sum(
            1
            for a in planned
            if a.pair.link is not None
            and a.pair.link.open
            and valves.closes(
                a.plan.to_sentinel, a.plan.to_snow, self.sink.finished, self.source.closed_status
            )
        )
        open_links = sum(1 for a in planned if a.pair.link is not None and a.pair.link.open)
        valves.check_close_ratio(
            self.workspace,
            closing,
            max(open_links, ctx.open_links),
            self.settings.max_close_ratio,
            force=ctx.options.force,
        )

    async def _begin_talk(self, ctx: CycleContext, actions: Sequence[Action]) -> None:
        """One batched journal read for every pair whose ticket side changed."""
        needs = [
            (a.pair.incident.id, a.pair.ticket.id, a.pair.link)
            for a in actions
            if isinstance(a, Update | FollowUp)
            and a.pair.incident is not None
            and a.pair.ticket is not None
            and a.pair.ticket_changed
        ]
        await self.talk.begin(needs, ctx.now)

    async def _execute(self, ctx: CycleContext, actions: Sequence[Action], act: Act) -> None:
        """Every action under the concurrency bound; a failure is that incident's only."""
        work = [a for a in actions if isinstance(a, Create | Update | FollowUp)]
        progress = Progress(self.workspace, "apply", len(work))
        async with asyncio.TaskGroup() as tg:
            spawn = progress.counting(tg.create_task)
            for action in work:
                spawn(guard(self, ctx, action.name, act(self, ctx, action)))
        progress.finish()

    async def _after(
        self, ctx: CycleContext, actions: Sequence[Action], incidents: Mapping[str, Incident]
    ) -> None:
        """Confirm the conversation, follow routing and merges, and note a sweep or open check."""
        await self.talk.finish(ctx.now)
        counts = self.talk.counts
        ctx.stats.comments_to_snow = counts.comments_to_snow
        ctx.stats.comments_to_sentinel = counts.comments_to_sentinel
        ctx.stats.notes_to_snow = counts.notes_to_snow
        processed = [
            a.pair.incident
            for a in actions
            if isinstance(a, Update | FollowUp) and a.pair.incident is not None and a.pair.link is not None
        ]
        await followups.follow(self, processed, incidents)
        if ctx.sweeping:
            await sweep.done(self.store, self.instance, self.workspace, ctx.now)
        if ctx.sweeping or ctx.checking or ctx.listed_all_open:  # a sweep lists the open ones too
            await sweep.open_check_done(self.store, self.instance, self.workspace, ctx.now)

    async def _advance(
        self,
        wm_s: Watermark,
        wm_n: Watermark,
        newest_s: datetime | None,
        tickets: Mapping[str, Ticket],
        start: datetime,
        now: datetime,
    ) -> None:
        """Move each modification watermark to the newest server time this cycle saw.

        A first run starts both sides where the source listing started (nothing of ours is
        older on the ticket side). A watermark an operator moved while the cycle ran
        (``watermark set --force``) is left where they put it.
        """
        newest_n = max((t.modified for t in tickets.values()), default=None)
        for side, read, newest in (("sentinel", wm_s, newest_s), ("servicenow", wm_n, newest_n)):
            if newest is None and read.modified is None:
                newest = start
            if newest is None or (read.modified is not None and newest <= read.modified):
                continue
            current = await self.store.get_watermark(self.instance, self.workspace, side)
            if (current.modified, current.modified_moved_at) != (read.modified, read.modified_moved_at):
                log.info("watermark_kept", side=side, reason="moved by an operator during the cycle")
                continue
            await self.store.set_watermark(self.instance, self.workspace, side, modified=newest, moved_at=now)


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; ``[exc]`` for a plain one."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


async def run_workspaces(
    syncs: Sequence[WorkspaceSync], options: CycleOptions
) -> dict[str, BaseException | CycleStats]:
    """One cycle of every workspace concurrently; one failing workspace never stops the others."""

    async def one(s: WorkspaceSync) -> CycleStats:
        await s.prepare()
        try:
            return await s.cycle(options)
        except ExceptionGroup as group:
            # An auth failure in every task of the cycle is one failure of the cycle, no bug.
            leaves = _leaves(group)
            if not all(isinstance(e, AgentError) for e in leaves):
                raise
            raise leaves[0] from None

    results = await asyncio.gather(*(one(s) for s in syncs), return_exceptions=True)
    out: dict[str, BaseException | CycleStats] = {}
    for s, r in zip(syncs, results, strict=True):
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r  # CancelledError, KeyboardInterrupt: never swallowed
        out[s.workspace] = r
        _report(s, r)
    return out


def _report(s: WorkspaceSync, r: BaseException | CycleStats) -> None:
    if isinstance(r, SafetyValveTripped):
        log.error("safety_valve", workspace=s.workspace, check=r.check, message=str(r))
    elif isinstance(r, InstancePaused):  # announced once when the pause began
        log.info("cycle_paused", workspace=s.workspace, until=r.until_text, message=str(r.detail))
    elif isinstance(r, PermanentError | TransientError | AgentError):
        log.error("cycle_failed", workspace=s.workspace, error=safe_error(r))
    elif isinstance(r, Exception):
        bug = next((e for e in _leaves(r) if not isinstance(e, AgentError)), r)
        log.error(
            "cycle_crashed",
            workspace=s.workspace,
            error=f"{type(bug).__name__}: {safe_error(bug)}",
            traceback="".join(traceback.format_exception(r)),
        )
