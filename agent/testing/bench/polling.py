"""The reference the benchmark compares against: per-incident polling.

Existing integrations mirror by polling every linked incident every cycle: a GET of the Sentinel
incident, a GET of its comments and a GET of the ServiceNow record, whether anything changed or
not, plus one listing to discover new incidents. :class:`PollingSync` does exactly that over the
agent's own clients, shadow, planner and writers (so the writes are the same as ours and only
the way changes are found differs):

* every cycle: list Sentinel incidents created since the last poll (to create tickets for new
  ones), then for each **open** linked pair the three GETs (closed pairs are not polled, which
  only flatters the reference);
* a pair whose Sentinel etag or ServiceNow ``sys_mod_count`` moved is planned with the agent's
  own planner and written the same way (one PATCH, one full-object PUT, then the shadow);
* comments: a Sentinel comment it has not seen becomes a work note (one PATCH); a record whose
  ``sys_mod_count`` moved has its new journal entries read (one GET) and each becomes a Sentinel
  comment (one PUT). What it wrote itself is remembered and never copied back.

The first cycle only learns which comments and journal times exist (it copies nothing).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from agent.connectors.sentinel.models import SentinelComment, SentinelIncident
from agent.connectors.sentinel.source import SentinelSource, incident_of
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.sink import ServiceNowSink
from agent.core.records import Link
from agent.errors import NotFound
from agent.store import Store
from agent.sync import apply, clock
from agent.sync.actions import field_plan
from agent.sync.context import CycleContext, CycleOptions, CycleStats, Settings
from agent.sync.cycle import WorkspaceSync
from agent.sync.failures import guard
from agent.sync.pairing import Pair
from agent.sync.writes import closure_of
from agent.tasks import limited

COMMENT_NAMESPACE = uuid.UUID("6c1f7a52-3d0e-4b8e-9a55-0f3e5b1c2d4a")


@dataclass
class Polled:
    """What one poll read for one linked pair."""

    link: Link
    incident: SentinelIncident | None
    comments: list[SentinelComment]
    record: SnowRecord | None


class PollingSync(WorkspaceSync):
    """Per-incident polling over the agent's clients (see the module docstring)."""

    def __init__(
        self, settings: Settings, source: SentinelSource, sink: ServiceNowSink, store: Store
    ) -> None:
        super().__init__(settings, source, sink, store)
        self.sentinel, self.snow, self.wsink = source.client, sink.client, sink
        self.labels = source.workspace.incident_filter
        self._comments_seen: dict[str, set[str]] = {}  # incident -> comment names seen
        self._journal_after: dict[str, datetime] = {}  # sys_id -> sys_updated_on at the last poll
        self._written: set[str] = set()  # comment names and journal sys_ids it wrote itself
        self._created_after: datetime | None = None

    async def poll_cycle(self) -> CycleStats:
        """One polling cycle of this workspace; returns what it did."""
        ctx = CycleContext(CycleOptions(), clock.utcnow())
        await self._discover(ctx)
        links = [link async for link in self.store.iter_links(self.instance, self.workspace, open_only=True)]
        polled = await limited([self._read(link) for link in links], self.sem)
        changed = [
            p
            for p in polled
            if p.incident is not None
            and p.record is not None
            and (p.incident.etag != p.link.sentinel_etag or p.record.mod_count != p.link.snow_mod_count)
        ]
        pairs = [
            Pair(incident_of(p.incident), self.wsink.ticket(p.record), p.link)
            for p in changed
            if p.incident and p.record
        ]
        await ctx.owners.resolve(
            self.sink, [p.incident for p in pairs if p.incident], [p.ticket for p in pairs if p.ticket]
        )
        async with asyncio.TaskGroup() as tg:
            for pair in pairs:
                assert pair.incident is not None
                tg.create_task(guard(self, ctx, pair.incident.id, self._write(ctx, pair)))
        await self._copy_comments(polled, ctx.stats)
        return ctx.stats

    async def _write(self, ctx: CycleContext, pair: Pair) -> None:
        """The planned field writes of one changed pair, then its shadow row."""
        assert pair.incident is not None and pair.ticket is not None and pair.link is not None
        inc, ticket = pair.incident, pair.ticket
        plan = field_plan(self, ctx, pair, pair.link.fields)
        if plan.to_snow:
            close = (self.maps.close_code(inc.classification), inc.close_notes)
            ticket = await self.sink.write(ticket.id, self.sink.render(plan.to_snow, ticket, close))
            ctx.stats.updated_snow += 1
        if plan.to_sentinel:
            closure = closure_of(self, ticket) if "status" in plan.to_sentinel else None
            inc = await self.source.write(inc, self.source.render(plan.to_sentinel, closure))
            ctx.stats.updated_sentinel += 1
        link = replace(
            pair.link, fields=dict(plan.base), sentinel_etag=inc.version, snow_mod_count=ticket.version
        )
        await self.store.save_link(link)

    async def _discover(self, ctx: CycleContext) -> None:
        now = clock.utcnow()
        since = self._created_after or now
        self._created_after = now
        new = [inc async for inc in self.sentinel.list_incidents(created_since=since, labels=self.labels)]
        ctx.stats.listed_sentinel = len(new)
        links = await self.store.get_links(self.instance, self.workspace, [i.name for i in new])
        for inc in new:
            if inc.name not in links and inc.status != "Closed":
                await guard(self, ctx, inc.name, apply.create(self, ctx, incident_of(inc)))

    async def _read(self, link: Link) -> Polled:
        incident: SentinelIncident | None
        try:
            incident = await self.sentinel.get_incident(link.incident)
            comments = await self.sentinel.list_comments(link.incident)
        except NotFound:
            incident, comments = None, []
        try:
            record: SnowRecord | None = await self.snow.get(link.sys_id, self.wsink.fields)
        except NotFound:
            record = None
        return Polled(link, incident, comments, record)

    async def _copy_comments(self, polled: list[Polled], stats: CycleStats) -> None:
        for p in polled:
            if p.incident is None or p.record is None:
                continue
            seen = self._comments_seen.get(p.link.incident)
            names = {c.name for c in p.comments}
            self._comments_seen[p.link.incident] = names
            after = self._journal_after.get(p.link.sys_id)
            self._journal_after[p.link.sys_id] = p.record.updated_on
            if seen is None:
                continue  # the first poll only learns what exists
            for comment in p.comments:
                if comment.name not in seen and comment.name not in self._written:
                    await self.snow.patch(p.link.sys_id, {"work_notes": comment.message}, self.wsink.fields)
                    stats.updated_snow += 1
            if after is not None and p.record.mod_count != p.link.snow_mod_count:
                for entry in await self.snow.journal([p.link.sys_id], since=after):
                    if entry.sys_id in self._written or entry.created_by == self._api_user():
                        continue
                    self._written.add(entry.sys_id)
                    name = str(uuid.uuid5(COMMENT_NAMESPACE, entry.sys_id))
                    self._written.add(name)
                    await self.sentinel.put_comment(p.link.incident, name, entry.value)
                    stats.updated_sentinel += 1

    def _api_user(self) -> str:
        return self.wsink.inst.username or ""
