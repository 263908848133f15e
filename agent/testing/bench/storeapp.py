"""The second reference: the algorithm of Microsoft's ServiceNow store app.

The "Microsoft Sentinel Integration" app runs inside ServiceNow and, every minute, lists the
Sentinel incidents modified since its last run; for each modified incident it reads the comments
created since the last sync, and its alerts when the incident's alert count changed.
:class:`StoreAppSync` does that over the agent's own clients, shadow, planner and writers (as
:class:`~agent.testing.bench.polling.PollingSync` does), so only the way changes are found differs:

* every cycle: one listing of the incidents modified since the newest modification time of the
  previous listing (new ones get a ticket with the agent's own create); the first cycle starts
  from the present;
* for each listed incident already linked: one GET of its comments, and one POST of its alerts
  when ``alertsCount`` differs from the last one seen;
* the ticket side: one listing of the records updated since the last run (inside ServiceNow the
  app reads its own table without a REST call; here that listing is counted);
* a pair whose incident or record changed is planned with the agent's planner and written the same
  way; a comment it did not write becomes a work note, a journal entry it did not write a comment.

The first cycle only learns what exists (it copies nothing).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from agent.connectors.sentinel.models import SentinelIncident
from agent.connectors.sentinel.source import SentinelSource, incident_of
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.query import Q
from agent.connectors.servicenow.sink import ServiceNowSink
from agent.core.records import Link
from agent.store import Store
from agent.sync import apply, clock
from agent.sync.context import CycleContext, CycleOptions, CycleStats, Settings
from agent.sync.failures import guard
from agent.sync.pairing import Pair
from agent.testing.bench.polling import COMMENT_NAMESPACE, PollingSync


class StoreAppSync(PollingSync):
    """The store app's algorithm over the agent's clients (see the module docstring)."""

    def __init__(
        self, settings: Settings, source: SentinelSource, sink: ServiceNowSink, store: Store
    ) -> None:
        super().__init__(settings, source, sink, store)
        self._modified_after: datetime | None = None
        self._boundary: set[tuple[str, str]] = set()  # listed at the newest time already
        self._seen_records: set[tuple[str, int]] = set()  # the same for the ticket side
        self._updated_after: datetime | None = None
        self._alerts_seen: dict[str, int] = {}  # incident -> alertsCount at the last look
        self._comments_after: dict[str, datetime] = {}  # incident -> newest comment time seen

    async def poll_cycle(self) -> CycleStats:
        """One cycle of the store app's algorithm for this workspace."""
        ctx = CycleContext(CycleOptions(), clock.utcnow())
        first = self._modified_after is None
        since = self._modified_after or ctx.now
        listed = [
            inc
            async for inc in self.sentinel.list_incidents(modified_since=since, labels=self.labels)
            if (inc.name, inc.etag) not in self._boundary  # "after", not "at or after", the last run
        ]
        ctx.stats.listed_sentinel = len(listed)
        self._modified_after = max((i.modified for i in listed), default=since)
        if listed:
            self._boundary = {(i.name, i.etag) for i in listed if i.modified == self._modified_after}
        last_run = self._updated_after
        records = await self._records(last_run or ctx.now)
        if records:
            self._updated_after = max(r.updated_on for r in records.values())
            self._seen_records = {
                (r.sys_id, r.mod_count) for r in records.values() if r.updated_on == self._updated_after
            }
        else:
            self._updated_after = last_run or ctx.now
        links = await self.store.get_links(self.instance, self.workspace, [i.name for i in listed])
        for inc in listed:
            if inc.name not in links and inc.status != "Closed":
                await guard(self, ctx, inc.name, apply.create(self, ctx, incident_of(inc)))
        async with asyncio.TaskGroup() as tg:
            for inc in listed:
                if inc.name in links:
                    tg.create_task(self._look(inc, links[inc.name], first, ctx.stats))
        await self._pairs(ctx, listed, links, records, last_run)
        return ctx.stats

    async def _records(self, since: datetime) -> dict[str, SnowRecord]:
        # ServiceNow's times have whole seconds: "at or after", less what the last run saw at it.
        query = Q.ge("sys_updated_on", since)
        page = self.wsink.page_size
        return {
            r.sys_id: r
            async for r in self.snow.list_records(query, self.wsink.fields, page_size=page)
            if (r.sys_id, r.mod_count) not in self._seen_records
        }

    async def _look(self, inc: SentinelIncident, link: Link, first: bool, stats: CycleStats) -> None:
        """The comments created since the last sync, and the alerts when their count moved."""
        async with self.sem:
            comments = await self.sentinel.list_comments(inc.name)
            if self._alerts_seen.get(inc.name, inc.alerts_count) != inc.alerts_count:
                await self.sentinel.list_alerts(inc.name)
        self._alerts_seen[inc.name] = inc.alerts_count
        after = self._comments_after.get(inc.name)
        if comments:
            self._comments_after[inc.name] = max(c.created for c in comments)
        if first or after is None:
            return
        for comment in comments:
            if comment.created > after and comment.name not in self._written:
                await self.snow.patch(link.sys_id, {"work_notes": comment.message}, self.wsink.fields)
                stats.updated_snow += 1

    async def _pairs(
        self,
        ctx: CycleContext,
        listed: list[SentinelIncident],
        links: dict[str, Link],
        records: dict[str, SnowRecord],
        last_run: datetime | None,
    ) -> None:
        """Plan and write every linked pair whose incident or record changed; journal entries."""
        by_sys_id = {link.sys_id: link for link in links.values()}
        async for link in self.store.iter_links(self.instance, self.workspace, open_only=True):
            if link.sys_id in records:
                by_sys_id.setdefault(link.sys_id, link)
        incidents = {i.name: i for i in listed}
        pairs = []
        for sys_id, link in by_sys_id.items():
            inc = incidents.get(link.incident) or await self.sentinel.get_incident(link.incident)
            record = records.get(sys_id) or await self.snow.get(sys_id, self.wsink.fields)
            if inc.etag != link.sentinel_etag or record.mod_count != link.snow_mod_count:
                pairs.append(Pair(incident_of(inc), self.wsink.ticket(record), link))
        await ctx.owners.resolve(
            self.sink, [p.incident for p in pairs if p.incident], [p.ticket for p in pairs if p.ticket]
        )
        async with asyncio.TaskGroup() as tg:
            for pair in pairs:
                assert pair.incident is not None
                tg.create_task(guard(self, ctx, pair.incident.id, self._write(ctx, pair)))
        if last_run is None:
            return  # the first run only learns what exists
        for sys_id, record in records.items():
            known = by_sys_id.get(sys_id)
            if known is None or record.mod_count == known.snow_mod_count:
                continue
            for entry in await self.snow.journal([sys_id], since=last_run):
                if entry.sys_id in self._written or entry.created_by == self._api_user():
                    continue
                self._written.add(entry.sys_id)
                name = str(uuid.uuid5(COMMENT_NAMESPACE, entry.sys_id))
                self._written.add(name)
                await self.sentinel.put_comment(known.incident, name, entry.value)
                ctx.stats.updated_sentinel += 1
