"""The sync cycle: one coroutine per workspace, all workspaces concurrently.

One cycle of one workspace (``Workspace.cycle``):

1. List Sentinel incidents modified since the Sentinel watermark minus the overlap
   (server-side ``$filter`` with the label), and ServiceNow records of this workspace modified
   since the ServiceNow watermark minus the overlap. An idle cycle is exactly these two list
   calls and no write.
2. Pair them through the shadow's links; fetch the other half of a pair only when one side
   changed (one batched ``sys_idIN`` query for ServiceNow, a GET per Sentinel incident);
   look up unique keys for creation candidates in one batched query (a lost shadow or a crash
   after a create never duplicates a ticket).
3. Resolve owners for the batch, ask the pure planner (:func:`agent.core.merge.plan`) what to
   write, run the safety valves over the whole plan **before any write**, then apply with
   bounded concurrency.
4. Per incident pair, write to the remote sides first and commit the shadow only after they
   succeeded (one short transaction). A crash between the two looks like "changed on both
   sides to equal values" next cycle and heals without a write.
5. Advance each watermark to the newest modification time the server reported among the
   items processed. An item that failed goes to the failures table (retried with backoff by
   explicit fetch), so it never holds the watermark back and never blocks other incidents.
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.config import Config, ServiceNowInstance, Workspace
from agent.connectors.retry import counting_retries
from agent.connectors.sentinel.client import SentinelClient
from agent.connectors.sentinel.merges import Merges
from agent.connectors.sentinel.models import SentinelIncident
from agent.connectors.servicenow import fields as snowfields
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.pause import iso as pause_iso
from agent.connectors.servicenow.query import Q
from agent.connectors.servicenow.routing import Routing
from agent.core import valves
from agent.core.merge import Plan, Policy, plan
from agent.core.records import Link, Watermark
from agent.errors import (
    AgentError,
    DataError,
    EditConflict,
    HookFailed,
    InstancePaused,
    NotFound,
    NotSent,
    PermanentError,
    RateLimited,
    RemoteError,
    SafetyValveTripped,
    TransientError,
)
from agent.log import bind, log
from agent.progress import Progress
from agent.store import Store
from agent.sync import hooks, mapping, sweep
from agent.sync.conversation import Conversation, PairWork, journal_seen

SNOW_FIELDS_BASE = (
    "sys_id",
    "number",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
    "assigned_to",
    "correlation_display",
    "short_description",
    "active",
)
MAX_CONFLICT_RETRIES = 3
ID_CHUNK = 100
CREATE_ATTEMPTS = 3  # POSTs of one ticket per cycle when each answer left its outcome open
PERMANENT_BACKOFF = 60.0  # seconds before a pair that failed permanently is tried again (doubling)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class CycleStats:
    """What one workspace cycle did; logged as the ``cycle_summary`` event."""

    listed_sentinel: int = 0
    listed_snow: int = 0
    created: int = 0
    adopted: int = 0
    updated_snow: int = 0
    updated_sentinel: int = 0
    conflicts: int = 0
    failures: int = 0
    skipped: int = 0
    backoff: int = 0
    unmapped: int = 0
    deferred: int = 0
    comments_to_snow: int = 0
    comments_to_sentinel: int = 0
    notes_to_snow: int = 0
    comments_deferred: int = 0
    sweep: bool = False
    open_check: bool = False
    planned: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "planned"}
        return d


@dataclass
class Pair:
    """What the cycle knows about one incident pair."""

    incident: SentinelIncident | None
    record: SnowRecord | None
    link: Link | None


@dataclass(frozen=True)
class CycleOptions:
    dry_run: bool = False
    force: bool = False
    since: datetime | None = None  # backfill: create incidents created since, beyond max_age_days
    sweep: bool = False  # compare every open linked pair in full (agent.sync.sweep)


class WorkspaceSync:
    """Runs cycles for one workspace against one ServiceNow instance."""

    def __init__(
        self,
        config: Config,
        workspace: Workspace,
        instance: ServiceNowInstance,
        sentinel: SentinelClient,
        snow: ServiceNowClient,
        shadow: Store,
        *,
        calls: Callable[[], int] | None = None,
    ) -> None:
        self.config = config
        self.ws = workspace
        self.inst = instance
        self.sentinel = sentinel
        self.snow = snow
        self.shadow = shadow
        self._calls = calls or (lambda: 0)
        m = config.mappings
        self.instance_maps = im = m.for_instance(instance.name)
        self.maps = mapping.Maps(
            severity_to_snow=im.severity_to_servicenow,
            severity_to_sentinel=im.severity_to_sentinel,
            status_to_snow=im.status_to_servicenow,
            status_to_sentinel=im.status_to_sentinel,
            closure_to_snow=im.closure_to_servicenow,
            closure_to_sentinel=im.closure_to_sentinel,
            severity_field=instance.severity_field,
            status_field=instance.status_field,
            profile=instance.profile,
        )
        self.owners = m.owners_for(workspace.name)  # user_name -> upn
        self.owners_rev = {upn.lower(): user for user, upn in self.owners.items()}
        profile = instance.profile
        self.snow_fields = tuple(
            dict.fromkeys(
                (
                    *SNOW_FIELDS_BASE,
                    instance.severity_field,
                    instance.status_field,
                    instance.unique_key,
                    profile.close_code_field,
                    profile.close_notes_field,
                )
            )
        )
        self.sem = asyncio.Semaphore(config.agent.max_concurrency)
        self.stopping: asyncio.Event | None = None
        self._caller_sys_id: str | None = None
        self.owner_to_snow: dict[str, str] = {}
        self.owner_to_sentinel: dict[str, str] = {}
        self.routing = Routing(config, workspace, snow)
        self.hook = hooks.load(config.agent.custom_mapping)
        self.snow_fields = tuple(dict.fromkeys((*self.snow_fields, *hooks.fields_of(self.hook))))
        # A create asks for every configured field back: its answer proves they exist.
        self._create_fields = tuple(
            dict.fromkeys((*self.snow_fields, *snowfields.configured_fields(config, instance)))
        )
        self._snow_keys = {
            "severity": instance.severity_field,
            "status": instance.status_field,
            "owner": "assigned_to",
        }
        self.talk = Conversation(
            instance=instance.name,
            workspace=workspace.name,
            sentinel=sentinel,
            snow=snow,
            shadow=shadow,
            fields=self.snow_fields,
            comment_field=config.agent.comment_field,
            comment_format=config.agent.comment_format,
            overlap=config.agent.overlap,
            snow_user=instance.username,
            read_only=lambda record: self.maps.is_read_only(record.get(self.maps.status_field)),
        )
        self._sweeping = False
        self._fallback_codes: set[str] = set()  # close codes already logged as value_unmapped

    # --- identity -------------------------------------------------------------------------

    @property
    def correlation_display(self) -> str:
        """Marks the ServiceNow records of this workspace (and scopes the listing to them)."""
        return f"Sentinel/{self.ws.workspace_name}"

    def _scope(self) -> Q:
        # Every record carrying a unique key, not only those whose correlation_display we set:
        # a record adopted by unique key (made by an earlier integration, or before a lost
        # shadow) must be listed too. The shadow's links decide which workspace owns it.
        q = Q.is_not_empty(self.inst.unique_key)
        if self.ws.sys_domain:
            q = q & Q.eq("sys_domain", self.ws.sys_domain)
        return q

    # --- the cycle ------------------------------------------------------------------------

    async def cycle(self, options: CycleOptions = CycleOptions()) -> CycleStats:
        """One full cycle; returns its statistics. Raises ``SafetyValveTripped`` before writing."""
        stats = CycleStats()
        started = utcnow()
        t0 = time.monotonic()
        calls0 = self._calls()
        with bind(workspace=self.ws.name, instance=self.inst.name), counting_retries() as retried:
            ok = False
            tripped: SafetyValveTripped | None = None
            paused: InstancePaused | None = None
            gate = self.snow.http.gate
            try:
                if gate is not None:
                    gate.check("CYCLE", self.inst.instance_url)  # REFERENCE E.8: wait out the window
                await self._cycle(stats, options, started)
                ok = True
            except SafetyValveTripped as exc:
                tripped = exc
                raise
            except InstancePaused as exc:
                paused = exc
                raise
            finally:
                if gate is not None:
                    await gate.save(self.shadow)
                summary = stats.as_dict() | {
                    "calls": self._calls() - calls0,
                    "http_retries": retried.retried,
                    "duration_ms": round((time.monotonic() - t0) * 1000, 1),
                    "ok": ok,
                    "dry_run": options.dry_run,
                }
                if tripped is not None:  # kept in the cycle history, so `status` can tell why
                    summary["safety_valve"] = {"check": tripped.check, "message": str(tripped)}
                if paused is not None:
                    summary["paused_until"] = pause_iso(paused.until)
                log.info("cycle_summary", **summary)
                if not options.dry_run:
                    await self.shadow.record_cycle(
                        self.inst.name,
                        self.ws.name,
                        started=started,
                        finished=utcnow(),
                        ok=ok,
                        summary=summary,
                    )
        return stats

    async def _cycle(self, stats: CycleStats, options: CycleOptions, now: datetime) -> None:
        inst, wsname = self.inst.name, self.ws.name
        self._dry = options.dry_run
        overlap = timedelta(seconds=self.config.agent.overlap)
        wm_s = await self.shadow.get_watermark(inst, wsname, "sentinel")
        wm_n = await self.shadow.get_watermark(inst, wsname, "servicenow")
        max_age = now - timedelta(days=self.ws.max_age_days)
        # The Sentinel creation watermark is a floor an operator sets: no ticket for an incident
        # created before it (on top of max_age_days); a backfill's ``since`` goes below both.
        floor = max(max_age, wm_s.created) if wm_s.created is not None else max_age
        first_run = wm_s.modified is None
        s_since = (wm_s.modified - overlap) if wm_s.modified else floor
        if options.since is not None:
            s_since = min(s_since, options.since)

        self._sweeping = sweeping = options.sweep or await sweep.due(
            self.shadow, inst, wsname, self.config.agent.sweep_interval, now, record=not options.dry_run
        )
        stats.sweep = sweeping
        checking = not sweeping and await sweep.open_check_due(
            self.shadow, inst, wsname, self.config.agent.open_check_interval, now
        )
        stats.open_check = checking

        # 1. list both sides (the only calls an idle cycle makes); a sweep lists Sentinel in full
        incidents: dict[str, SentinelIncident] = {}
        async for inc in self.sentinel.list_incidents(
            modified_since=None if sweeping else s_since,
            labels=self.ws.incident_filter,
            page_size=self.config.agent.page_size,
        ):
            incidents[inc.name] = inc
        # The watermark follows this listing only: the open check below is no complete listing.
        newest_s = max((i.modified for i in incidents.values()), default=None)
        if checking:
            await self._open_check(incidents)
        stats.listed_sentinel = len(incidents)
        records: dict[str, SnowRecord] = {}
        if not first_run or wm_n.modified is not None:
            q = self._scope()
            if wm_n.modified is not None:
                q = q & Q.ge("sys_updated_on", wm_n.modified - overlap)
            async for rec in self.snow.list_records(
                q, self.snow_fields, page_size=self.config.agent.page_size
            ):
                records[rec.sys_id] = rec
        if sweeping:
            await self._sweep_records(records, options)
        stats.listed_snow = len(records)
        await self._listing_valves(stats, options, first_run or sweeping, wm_n.modified is None)

        # 2. pair through the shadow; fetch missing halves
        pairs = await self._pair(incidents, records, now)
        blocked = await self.shadow.blocked(inst, wsname, now)
        stats.backoff = len(blocked)
        unlinked = await self.shadow.unlinked(inst, wsname, pairs)  # never re-created or re-adopted
        creates: list[SentinelIncident] = []
        strays: list[SentinelIncident] = []
        updates: list[Pair] = []
        for name, pair in pairs.items():
            if name in unlinked:
                continue
            if name in blocked:
                stats.skipped += 1
                continue
            if pair.link is None:
                if pair.incident is not None and self._wants_create(pair.incident, floor, options.since):
                    creates.append(pair.incident)
                elif pair.incident is not None and self._may_own_ticket(pair.incident, wm_s.modified):
                    strays.append(pair.incident)
            else:
                updates.append(pair)
        if creates or strays:
            existing = await self._lookup_unique(c.name for c in [*creates, *strays])
            for inc in [*creates, *strays]:
                found = existing.get(inc.name)
                if found is not None:
                    if inc in creates:
                        creates.remove(inc)
                    updates.append(Pair(inc, found, None))
        if options.since is not None:
            log.info(
                "backfill_listed",
                since=options.since.isoformat(),
                listed=len(incidents),
                to_create=len(creates),
                to_adopt=sum(1 for u in updates if u.link is None),
                changed=sum(1 for u in updates if u.link is not None),
            )

        # 3. plan everything, then run the safety valves before any write
        await self._resolve_owners([p for p in updates if p.incident and p.record], creates)
        for u in updates:
            if u.incident is None or u.record is None:
                stats.skipped += 1
                log.warning(
                    "pair_incomplete",
                    incident=u.link.incident if u.link else None,
                    snow_number=u.link.number if u.link else None,
                    missing="sentinel" if u.incident is None else "servicenow",
                )
                if u.link is not None and _due(u.link, now) and not options.dry_run:
                    # A side is gone: its conversation has nothing left to re-check.
                    await self.shadow.save_link(replace(u.link, enrich_after=None))
        planned = [(u, self._plan(u)) for u in updates if u.incident is not None and u.record is not None]
        self._safety_valves(planned, options, stats)
        if not options.dry_run:
            # One batched journal read for every pair whose ServiceNow side changed.
            needs = [
                (u.incident.name, u.record.sys_id, u.link)
                for u, _ in planned
                if u.incident and u.record and (u.link is None or u.link.snow_mod_count != u.record.mod_count)
            ]
            await self.talk.begin(needs, now)

        # 4. apply with bounded concurrency; failures are per incident
        progress = Progress(self.ws.name, "apply", len(creates) + len(planned))
        async with asyncio.TaskGroup() as tg:
            spawn = progress.counting(tg.create_task)
            for inc in creates:
                spawn(self._guard(inc.name, stats, self._create(inc, stats, options)))
            for pair, pl in planned:
                assert pair.incident is not None
                spawn(self._guard(pair.incident.name, stats, self._apply(pair, pl, stats, options)))
        progress.finish()
        if not options.dry_run:
            await self._talk_finish(stats, now)
            await self._follow(planned, incidents)
            if sweeping:
                await sweep.done(self.shadow, inst, wsname, now)
            if sweeping or checking:  # a sweep lists the open incidents too
                await sweep.open_check_done(self.shadow, inst, wsname, now)

        # 5. watermarks: the newest server time seen; failures are retried from their table.
        # Work deferred by a shutdown keeps both watermarks where they were, and a backfill
        # (``since``) never moves them: the regular cycles carry on from where they were.
        if not options.dry_run and not stats.deferred and options.since is None:
            await self._advance_watermarks(wm_s, wm_n, newest_s, records, s_since, now)

    async def _advance_watermarks(
        self,
        wm_s: Watermark,
        wm_n: Watermark,
        newest_s: datetime | None,
        records: Mapping[str, SnowRecord],
        start: datetime,
        now: datetime,
    ) -> None:
        """Move each modification watermark to the newest server time this cycle saw.

        A first run starts both sides where the Sentinel listing started (nothing of ours is
        older on the ServiceNow side). A watermark an operator moved while the cycle ran
        (``watermark set --force``) is left where they put it.
        """
        newest_n = max((r.updated_on for r in records.values()), default=None)
        for side, read, newest in (("sentinel", wm_s, newest_s), ("servicenow", wm_n, newest_n)):
            if newest is None and read.modified is None:
                newest = start
            if newest is None or (read.modified is not None and newest <= read.modified):
                continue
            current = await self.shadow.get_watermark(self.inst.name, self.ws.name, side)
            if (current.modified, current.modified_moved_at) != (read.modified, read.modified_moved_at):
                log.info("watermark_kept", side=side, reason="moved by an operator during the cycle")
                continue
            await self.shadow.set_watermark(self.inst.name, self.ws.name, side, modified=newest, moved_at=now)

    async def _open_check(self, incidents: dict[str, SentinelIncident]) -> None:
        """Add every open incident of the workspace to this cycle's listing (REFERENCE E.2).

        A new comment changes the incident's etag; whether it also moves
        ``lastModifiedTimeUtc`` is not verified, and when it does not, the modification-time
        listing never shows it. Every ``open_check_interval`` the open incidents are listed in
        full, and the pairing keeps those whose etag differs from the shadow's (a comment, or
        any change the listing missed); unchanged ones cost nothing but the listing.
        """
        async for inc in self.sentinel.list_incidents(
            labels=self.ws.incident_filter, open_only=True, page_size=self.config.agent.page_size
        ):
            incidents[inc.name] = inc  # listed after the incremental listing: the fresher copy

    # --- pairing --------------------------------------------------------------------------

    async def _pair(
        self, incidents: Mapping[str, SentinelIncident], records: Mapping[str, SnowRecord], now: datetime
    ) -> dict[str, Pair]:
        inst, wsname = self.inst.name, self.ws.name
        links = await self.shadow.get_links(inst, wsname, incidents.keys())
        by_sys = await self.shadow.get_links_by_sys_id(inst, records.keys())
        pairs: dict[str, Pair] = {}
        for name, inc in incidents.items():
            pairs[name] = Pair(inc, None, links.get(name))
        for sys_id, rec in records.items():
            link = by_sys.get(sys_id)
            if link is None or link.workspace != wsname:
                continue  # not ours (another workspace, or not linked: adoption is resync's job)
            pair = pairs.setdefault(link.incident, Pair(None, None, link))
            pair.record = rec
        # Unison's rule: a side whose etag / sys_mod_count equals the shadow's did not change.
        # Drop pairs where nothing changed (re-listed in the overlap window, or our own writes),
        # so an idle cycle never fetches the other half.
        for name, pair in list(pairs.items()):
            if pair.link is None:
                continue
            s_same = pair.incident is None or pair.incident.etag == pair.link.sentinel_etag
            n_same = pair.record is None or pair.record.mod_count == pair.link.snow_mod_count
            if s_same and n_same and not (self._sweeping and pair.link.open):
                del pairs[name]
        # due retries from the failures table: fetch explicitly
        self._retrying = set()
        for failure in await self.shadow.due_failures(inst, wsname, now):
            self._retrying.add(failure.incident)
            if failure.incident not in pairs:
                link = (await self.shadow.get_links(inst, wsname, [failure.incident])).get(failure.incident)
                pairs[failure.incident] = Pair(None, None, link)
        # due conversation re-checks (late enrichment, or comments deferred by an error)
        for link in await self.shadow.due_enrichment(inst, wsname, now):
            pairs.setdefault(link.incident, Pair(None, None, link))
        # the missing halves
        need_snow = [p.link.sys_id for p in pairs.values() if p.link is not None and p.record is None]
        fetched = await self._fetch_records(need_snow)
        for pair in pairs.values():
            if pair.link is not None and pair.record is None:
                pair.record = fetched.get(pair.link.sys_id)
        missing_inc = [name for name, p in pairs.items() if p.incident is None]
        results = await self._bounded(self._get_incident(name) for name in missing_inc)
        for name, inc in zip(missing_inc, results, strict=True):
            pairs[name].incident = inc
        return pairs

    async def _get_incident(self, name: str) -> SentinelIncident | None:
        try:
            return await self.sentinel.get_incident(name)
        except NotFound:
            log.warning("sentinel_incident_missing", incident=name)
            return None

    async def _fetch_records(self, sys_ids: Sequence[str]) -> dict[str, SnowRecord]:
        out: dict[str, SnowRecord] = {}
        for i in range(0, len(sys_ids), ID_CHUNK):
            chunk = sys_ids[i : i + ID_CHUNK]
            async for rec in self.snow.list_records(
                self.routing.scoped(Q.in_("sys_id", chunk)),
                self.snow_fields,
                page_size=self.config.agent.page_size,
            ):
                out[rec.sys_id] = rec
        for sys_id in sys_ids:
            if sys_id not in out:
                log.warning("snow_record_missing", sys_id=sys_id)
        return out

    async def _lookup_unique(
        self, names: Iterable[str], exclude: frozenset[str] = frozenset()
    ) -> dict[str, SnowRecord]:
        """Records that already carry these incidents' unique key (crash or lost shadow).

        An incident reopened after its ticket closed has a follow-up ticket with the same key
        (REFERENCE E.9): the open one wins, then the newest; ``exclude`` names sys_ids to ignore."""
        key = self.inst.unique_key
        found: dict[str, SnowRecord] = {}
        names = list(names)
        for i in range(0, len(names), ID_CHUNK):
            async for rec in self.snow.list_records(
                self.routing.scoped(Q.in_(key, names[i : i + ID_CHUNK])),
                self.snow_fields,
                page_size=self.config.agent.page_size,
            ):
                if rec.sys_id in exclude:
                    continue
                best = found.get(rec.get(key))
                if best is None or self._ticket_rank(rec) > self._ticket_rank(best):
                    found[rec.get(key)] = rec
        return found

    def _ticket_rank(self, rec: SnowRecord) -> tuple[bool, int, str]:
        """Which of several tickets of one incident is its current one: open first, then newest."""
        digits = "".join(c for c in rec.number if c.isdigit())
        return (not self.maps.is_finished(rec.get(self.maps.status_field)), int(digits or 0), rec.number)

    async def _bounded(self, coros: Iterable[Awaitable[Any]]) -> list[Any]:
        async def run(c: Awaitable[Any]) -> Any:
            async with self.sem:
                return await c

        return list(await asyncio.gather(*(run(c) for c in coros)))

    # --- owners ---------------------------------------------------------------------------

    async def _resolve_owners(self, pairs: Sequence[Pair], creates: Sequence[SentinelIncident]) -> None:
        """Resolve every owner seen in this batch, both directions (cached per cycle, and the
        client caches ``sys_user`` look-ups across cycles)."""
        self.owner_to_snow = {}
        self.owner_to_sentinel = {}
        await self._resolve(
            [p.incident for p in pairs if p.incident] + list(creates), [p.record for p in pairs if p.record]
        )

    async def _resolve(self, incidents: Sequence[SentinelIncident], records: Sequence[SnowRecord]) -> None:
        spelled = {i.owner.key: i.owner.upn or i.owner.email or "" for i in incidents}
        upns = set(spelled) - {""} - self.owner_to_snow.keys()
        sys_ids = {r.get("assigned_to") for r in records} - {""} - self.owner_to_sentinel.keys()
        for upn in sorted(upns):
            found = await self._snow_owner(upn, spelled[upn])
            if found is not None:
                self.owner_to_snow[upn] = found
            else:
                log.warning("owner_unknown_in_servicenow", upn=upn)
        for sys_id in sorted(sys_ids):
            snow_user = await self.snow.find_user(sys_id=sys_id)
            found_upn = ""
            if snow_user is not None:
                found_upn = self.owners.get(snow_user.user_name) or (snow_user.email or "").lower()
            if found_upn:
                self.owner_to_sentinel[sys_id] = found_upn.lower()
            else:
                log.warning("owner_unknown_in_sentinel", sys_id=sys_id)

    async def _snow_owner(self, key: str, spelled: str) -> str | None:
        """The sys_id of the ServiceNow user for a Sentinel owner (``key`` lower-cased,
        ``spelled`` as Sentinel sent it): by the [owners] user name, else by e-mail as spelled,
        then lower-cased, since ServiceNow compares query values case-sensitively (REFERENCE C.3).
        """
        lookups = [{"user_name": name} for name in (self.owners_rev.get(key),) if name]
        lookups += [{"email": email} for email in dict.fromkeys((spelled, key)) if email]
        for lookup in lookups:
            try:
                user = await self.snow.find_user(**lookup)
            except DataError:
                continue  # a value no query can carry (a line break): no user has it
            if user is not None:
                return user.sys_id
        return None

    # --- planning -------------------------------------------------------------------------

    def _plan(self, pair: Pair) -> Plan:
        assert pair.incident is not None and pair.record is not None
        pol = mapping.policy(
            self.maps, self.owner_to_snow, self.owner_to_sentinel, self.config.agent.conflict_policy
        )
        base = mapping.absorb_autoclose(pair.link.fields, pair.record, self.maps) if pair.link else None
        return plan(
            base, mapping.sentinel_side(pair.incident), mapping.snow_side(pair.record, self.maps), pol
        )

    async def _listing_valves(
        self, stats: CycleStats, options: CycleOptions, sentinel_full: bool, snow_full: bool
    ) -> None:
        """The empty-listing valve (:mod:`agent.core.valves`) over this cycle's two listings."""
        _total, self._open_links_hint = await self.shadow.count_links(self.inst.name, self.ws.name)
        # ServiceNow is listed in full only once Sentinel was (see step 1 of the cycle).
        for side, listed, full in (
            ("sentinel", stats.listed_sentinel, sentinel_full),
            ("servicenow", stats.listed_snow, snow_full and not sentinel_full),
        ):
            valves.check_listing(
                self.ws.name, side, listed, self._open_links_hint, full=full, force=options.force
            )

    def _safety_valves(
        self, planned: Sequence[tuple[Pair, Plan]], options: CycleOptions, stats: CycleStats
    ) -> None:
        """The close-ratio valve (:mod:`agent.core.valves`) over the whole plan, before any write."""
        closing = sum(
            1
            for pair, p in planned
            if pair.link is not None
            and pair.link.open
            and valves.closes(p.to_sentinel, p.to_snow, self.maps.profile.finished_states)
        )
        open_links = sum(1 for pair, _ in planned if pair.link is not None and pair.link.open)
        valves.check_close_ratio(
            self.ws.name,
            closing,
            max(open_links, self._open_links_hint),
            self.config.agent.max_close_ratio,
            force=options.force,
        )

    _open_links_hint = 0
    _dry = False
    _retrying: set[str] = set()  # noqa: RUF012 - replaced per cycle

    async def prepare(self) -> None:
        """Cheap per-cycle facts the safety valves need (open links in the shadow), and the proof
        that the configured fields exist on the table (:mod:`agent.connectors.servicenow.fields`, at
        most daily)."""
        gate = self.snow.http.gate
        if gate is None or not gate.active():  # a paused instance is not asked (the cycle says so)
            async with self.snow.proof_lock:
                await snowfields.ensure(self.config, self.inst, self.snow, self.shadow, utcnow())
        _total, open_ = await self.shadow.count_links(self.inst.name, self.ws.name)
        self._open_links_hint = open_

    # --- applying -------------------------------------------------------------------------

    async def _guard(self, incident: str, stats: CycleStats, work: Coroutine[Any, Any, None]) -> None:
        """Run one incident's work. A remote or data error fails that incident only (recorded and
        retried with backoff); anything else is a bug: it propagates and stops the cycle."""
        async with self.sem:
            if self.stopping is not None and self.stopping.is_set():
                work.close()  # shutting down: start no new work (the watermark stays put)
                stats.deferred += 1
                return
            with bind(incident=incident):
                try:
                    await work
                    if incident in self._retrying:
                        await self.shadow.clear_failure(self.inst.name, self.ws.name, incident)
                except InstancePaused:
                    # The instance's rate-limit window is used up (REFERENCE E.8): the work is
                    # deferred whole, the watermarks stay, and it all runs after the pause.
                    stats.deferred += 1
                except (RemoteError, DataError) as exc:
                    stats.failures += 1
                    await self._incident_failed(incident, exc)

    async def _incident_failed(self, incident: str, exc: RemoteError | DataError) -> None:
        """Record one incident's failure for a retry, and say so (a dry run only says).

        A transient failure is retried by the next cycle, then with a backoff starting at
        ``poll_interval`` (at most a minute); a permanent one waits a minute, doubling. Only a
        failure that repeats is a warning: one the next cycle heals needs nobody."""
        error = _safe_error(exc)
        if self._dry:
            log.warning("incident_failed", kind="dry_run", error=error)
            return
        now = utcnow()
        transient = isinstance(exc, TransientError)
        nxt = await self.shadow.record_failure(
            self.inst.name,
            self.ws.name,
            incident,
            error,
            now=now,
            base_delay=min(PERMANENT_BACKOFF, self.config.agent.poll_interval)
            if transient
            else PERMANENT_BACKOFF,
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

    def _may_own_ticket(self, inc: SentinelIncident, watermark: datetime | None) -> bool:
        """An unlinked incident we would not create now (closed, or too old) that may still own a
        ticket: one created by a run that died before saving the link, the incident changed since.

        Only incidents changed since the last complete cycle qualify, so the ones re-listed in the
        overlap window cost no look-up on an idle cycle.
        """
        if not self._selected(inc):
            return False
        return watermark is None or inc.modified > watermark

    def _selected(self, inc: SentinelIncident) -> bool:
        """Whether the incident carries one of the workspace's ``incident_filter`` labels."""
        wanted = self.ws.incident_filter
        return not wanted or any(label in inc.labels for label in wanted)

    def _wants_create(self, inc: SentinelIncident, max_age: datetime, since: datetime | None) -> bool:
        if not self._selected(inc):
            return False
        if inc.status == "Closed":
            return False
        oldest = min(max_age, since) if since is not None else max_age
        return inc.created >= oldest

    async def _create(self, inc: SentinelIncident, stats: CycleStats, options: CycleOptions) -> None:
        """Sentinel -> ServiceNow: create the ticket, link, then write the number back as a label."""
        m = self.maps
        values, owner = await self._ticket_values(inc, stats)
        if options.dry_run:
            stats.planned.append({"action": "create_snow", "incident": inc.name, "values": values})
            stats.created += 1
            return
        rec = await self._create_settled(inc.name, values)
        log.info("snow_created", snow_number=rec.number, sys_id=rec.sys_id, direction="to_snow")
        etag = inc.etag
        if self.config.agent.writeback_label and rec.number not in inc.labels:
            # Before the link is saved: after a crash in between, the incident is listed again
            # (the watermark has not moved) and adopting it writes the label.
            etag = await self._writeback_label(inc, rec.number) or etag
        fields = {
            "severity": (inc.severity, rec.get(m.severity_field)),
            "status": (inc.status, rec.get(m.status_field)),
            "owner": (inc.owner.key, rec.get("assigned_to")) if (owner or not inc.owner.key) else None,
        }
        link = Link(
            instance=self.inst.name,
            workspace=self.ws.name,
            incident=inc.name,
            sys_id=rec.sys_id,
            number=rec.number,
            fields={k: v for k, v in fields.items() if v is not None},
            sentinel_etag=etag,
            snow_mod_count=rec.mod_count,
            open=True,
            created_at=utcnow(),
            enrich_after=(
                utcnow() + timedelta(seconds=self.config.agent.enrichment_delay)
                if self.config.agent.enrichment_delay
                else None
            ),
            extra={**journal_seen(rec), **self.routing.link_extra(inc)},
        )
        # Comments, alerts and entities go before the link is saved: a crash in between leaves
        # no link, and adopting the ticket next cycle resolves what was written (no duplicate).
        link, _rec = await self._converse(link, None, inc, rec, stats, created=True)
        await self.shadow.save_link(link)
        stats.created += 1

    async def _ticket_values(self, inc: SentinelIncident, stats: CycleStats) -> tuple[dict[str, str], str]:
        """The fields of a new ticket for ``inc``, and the owner's sys_id written ("" for none)."""
        m = self.maps
        sev = m.severity_to_snow.get(inc.severity)
        state = m.status_to_snow.get(inc.status)
        owner = self.owner_to_snow.get(inc.owner.key, "") if inc.owner.key else ""
        values: dict[str, str] = {
            "short_description": inc.title[:160],
            "description": mapping.description_for_snow(
                inc, self.sentinel.portal_url(inc), self.sentinel.defender_url(inc)
            ),
            self.inst.unique_key: inc.name,
            "correlation_display": self.correlation_display,
        }
        if sev is not None:
            values[m.severity_field] = sev
        if state is not None:
            values[m.status_field] = state
        for f, value, mapped in (("severity", inc.severity, sev), ("status", inc.status, state)):
            if mapped is None:
                # Sentinel's enums are open (REFERENCE A.4): the ticket is made with ServiceNow's
                # default for this field, which stays until either side sets a mapped value.
                stats.unmapped += 1
                log.warning("value_unmapped", field=f, side="sentinel", value=value)
        if owner:
            values["assigned_to"] = owner
        caller = await self._caller()
        if caller:
            values[self.inst.profile.caller_field] = caller
        values.update(await self.routing.create_values(inc))  # group, company, domain
        values = hooks.call(self.hook, hooks.TO_SNOW, "create", inc, None, values)
        # The unique key is how a crash or a lost shadow finds the ticket again: never a hook's.
        values[self.inst.unique_key] = inc.name
        values.setdefault("correlation_display", self.correlation_display)
        return values, owner

    async def _create_settled(
        self, incident: str, values: Mapping[str, str], exclude: frozenset[str] = frozenset()
    ) -> SnowRecord:
        """POST the ticket; when the answer leaves open whether it was created (a 5xx, a timeout, a
        connection dropped after sending), settle that now by its unique key and POST again only
        when it is absent. A 429 or a request that never left (``NotSent``) created nothing: the
        HTTP layer retried it already and the next cycle tries again."""
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                created = await self.snow.create(values, self._create_fields)
                snowfields.require_unique_key(self.inst, created)
                if not self.snow.fields_proven:  # the table was empty at the start
                    async with self.snow.proof_lock:
                        await snowfields.ensure_from_created(
                            self.config, self.inst, self.snow, self.shadow, created, utcnow()
                        )
                return created
            except (NotSent, RateLimited):
                raise
            except TransientError as exc:
                found = (await self._lookup_unique([incident], exclude)).get(incident)
                if found is not None:
                    log.info("snow_create_settled", snow_number=found.number, outcome="created")
                    return found
                if attempt == CREATE_ATTEMPTS:
                    raise
                log.info("snow_create_settled", outcome="absent", error=_safe_error(exc))
        raise AssertionError("unreachable")

    async def _writeback_label(self, inc: SentinelIncident, number: str) -> str | None:
        """Add the ServiceNow number to the incident's labels.

        Returns the new etag when the PUT applied to ``inc`` as read; None when an analyst
        changed the incident first (the caller keeps the old etag, so the next cycle still sees
        that change) or the label could not be written.
        """
        current = inc
        for attempt in range(MAX_CONFLICT_RETRIES):
            try:
                updated = await self.sentinel.update_incident(current, {"labels": [*current.labels, number]})
            except EditConflict:
                current = await self.sentinel.get_incident(inc.name)
                if number in current.labels:
                    return None
                continue
            except PermanentError as exc:
                # The label is a convenience: a rejected PUT (e.g. a value the API refuses) must
                # not keep the pair from being linked and synced.
                log.warning("sentinel_label_failed", snow_number=number, error=_safe_error(exc))
                return None
            log.info("sentinel_label_added", snow_number=number, direction="to_sentinel")
            return updated.etag if attempt == 0 else None
        log.warning("sentinel_label_conflict", snow_number=number)
        return None

    async def _caller(self) -> str | None:
        if self._caller_sys_id is None:
            caller = self.ws.caller_id or self.inst.caller_id
            if not caller:
                self._caller_sys_id = ""
            elif len(caller) == 32 and all(c in "0123456789abcdef" for c in caller):
                self._caller_sys_id = caller
            else:
                user = await self.snow.find_user(user_name=caller)
                if user is None:
                    log.warning("caller_unknown", caller_id=caller)
                self._caller_sys_id = user.sys_id if user else ""
        return self._caller_sys_id or None

    async def _follow(
        self, planned: Sequence[tuple[Pair, Plan]], incidents: Mapping[str, SentinelIncident]
    ) -> None:
        """After the writes: re-route tickets a Sentinel change routes elsewhere
        (agent.connectors.servicenow.routing), and follow incidents merged in the Defender portal
        (agent.connectors.sentinel.merges)."""
        # A pair that failed this cycle keeps its failure row (a link save would clear it).
        failed = await self.shadow.blocked(self.inst.name, self.ws.name, utcnow())
        processed = [
            p.incident
            for p, _ in planned
            if p.incident is not None and p.link is not None and p.incident.name not in failed
        ]
        merges = Merges(
            self.inst.name,
            self.ws.name,
            self.sentinel,
            self.snow,
            self.shadow,
            self.maps,
            self.snow_fields,
            self._scope(),
            frozenset(failed),
        )
        steps: tuple[tuple[str, Callable[[], Awaitable[int]]], ...] = (
            ("routing", lambda: self.routing.follow(self.shadow, processed, self.snow_fields, self.sem)),
            ("merges", lambda: merges.follow(incidents)),
        )
        for what, step in steps:
            try:
                await step()
            except RemoteError as exc:  # retried next time the pair or the merge is seen
                log.warning("follow_failed", step=what, error=_safe_error(exc))

    async def _apply(self, pair: Pair, p: Plan, stats: CycleStats, options: CycleOptions) -> None:
        """Write one pair's plan: ServiceNow PATCH, Sentinel full-object PUT, then the shadow.

        A 409 on the PUT means an analyst changed the incident after we read it: re-read it and
        re-plan against the same last-agreed base (with the ServiceNow record as it is after our
        PATCH), so the analyst's change is copied, never overwritten; the pair then counts as
        changed in Sentinel, so a comment that caused the 409 is copied too.
        """
        assert pair.incident is not None and pair.record is not None
        inc, rec = pair.incident, pair.record
        s_changed = pair.link is None or pair.link.sentinel_etag != inc.etag
        n_changed = pair.link is None or pair.link.snow_mod_count != rec.mod_count
        if p.to_snow and pair.link is not None and self.maps.is_read_only(rec.get(self.maps.status_field)):
            # A closed ticket is read-only (REFERENCE E.9): no PATCH is sent, now or later.
            if mapping.reopens(p.to_snow, self.maps) and self.inst.reopen_closed == "follow_up":
                if options.dry_run:
                    stats.planned.append(
                        {"action": "follow_up_snow", "incident": inc.name, "closed": rec.number}
                    )
                    return
                await self._follow_up(pair, stats)
                return
            p = await self._give_up_closed(pair, p, dry_run=options.dry_run)
        if options.dry_run:
            self._record_dry_run(inc, rec, p, stats, s_changed, n_changed)
            return
        base_before = pair.link.fields if pair.link is not None else None
        read_only = self.maps.is_read_only(rec.get(self.maps.status_field))
        mod = rec.mod_count  # the newest ServiceNow version this cycle has fully seen
        base: Mapping[str, tuple[str, str]] = p.base
        wrote = False
        for attempt in range(MAX_CONFLICT_RETRIES + 1):
            self._log_plan_notes(p, stats)
            body, changes, base = self._writes(p, inc, rec, s_changed, n_changed)
            if body and read_only:
                body = {}  # nor what the custom mapping added: the ticket is closed (E.9)
            if body:
                before, rec = rec, await self.snow.patch(rec.sys_id, body, self.snow_fields)
                if mod == before.mod_count and rec.mod_count == before.mod_count + 1:
                    mod = rec.mod_count  # nobody else wrote in between: nothing left unseen
                wrote = True
                stats.updated_snow += 1
                log.info(
                    "snow_updated",
                    snow_number=rec.number,
                    direction="to_snow",
                    fields=sorted(p.to_snow or body),
                )
                state = body.get(self.maps.status_field)
                was_closed = self.maps.is_finished(before.get(self.maps.status_field))
                closes = None if state is None else self.maps.is_finished(state)
                self._log_closure(hooks.TO_SNOW, closes, was_closed, rec.number)
            if not changes:
                break
            was_closed = inc.status == "Closed"
            try:
                inc = await self.sentinel.update_incident(inc, changes)
            except EditConflict:
                if attempt == MAX_CONFLICT_RETRIES:
                    raise
                log.info("sentinel_conflict_replan", attempt=attempt + 1)
                inc = await self.sentinel.get_incident(inc.name)
                # The incident changed since it was listed: whatever changed it (a new comment
                # among them) is this cycle's to handle, or the etag stored below hides it.
                s_changed = pair.link is None or pair.link.sentinel_etag != inc.etag
                await self._resolve([inc], [rec])
                p = plan(
                    base_before, mapping.sentinel_side(inc), mapping.snow_side(rec, self.maps), self._policy()
                )
                continue
            wrote = True
            stats.updated_sentinel += 1
            log.info(
                "sentinel_updated",
                snow_number=rec.number,
                direction="to_sentinel",
                fields=sorted(p.to_sentinel or changes),
            )
            closes = None if "status" not in changes else changes["status"] == "Closed"
            self._log_closure(hooks.TO_SENTINEL, closes, was_closed, rec.number)
            break
        unchanged = pair.link is not None and dict(base) == dict(p.previous_base) and not wrote
        if unchanged and pair.link is not None and not _due(pair.link):
            if pair.link.sentinel_etag == inc.etag and pair.link.snow_mod_count == rec.mod_count:
                return
        closed = inc.status == "Closed" and self.maps.is_finished(rec.get(self.maps.status_field))
        old = pair.link
        etag = inc.etag
        if old is None and self.config.agent.writeback_label and rec.number not in inc.labels:
            # Adopting: a crash after the create (or a lost shadow) may have left no label.
            etag = await self._writeback_label(inc, rec.number) or etag
        link = Link(
            instance=self.inst.name,
            workspace=self.ws.name,
            incident=inc.name,
            sys_id=rec.sys_id,
            number=rec.number,
            fields=dict(base),
            sentinel_etag=etag,
            snow_mod_count=mod,
            open=not closed,
            alerts_posted=old.alerts_posted if old else frozenset(),
            entities_posted=old.entities_posted if old else frozenset(),
            created_at=old.created_at if old else utcnow(),
            enrich_after=old.enrich_after if old else None,
            extra=old.extra if old else {},
        )
        link, rec = await self._converse(
            link, old, inc, rec, stats, adopted=old is None, sentinel_changed=s_changed,
            snow_changed=n_changed,
        )  # fmt: skip
        await self.shadow.save_link(
            link, conflicts=[(c.field, c.sentinel, c.servicenow, c.winner) for c in p.conflicts]
        )
        if old is None:
            stats.adopted += 1
            log.info("link_adopted", snow_number=rec.number, sys_id=rec.sys_id)

    async def _give_up_closed(self, pair: Pair, p: Plan, *, dry_run: bool) -> Plan:
        """The plan without its writes to a closed ticket. A Sentinel reopen with
        ``reopen_closed = note`` says on the incident (once per reopen) that the ticket stays
        closed; any other change is one warning per ticket."""
        assert pair.incident is not None and pair.record is not None and pair.link is not None
        inc, rec, link = pair.incident, pair.record, pair.link
        reopen = mapping.reopens(p.to_snow, self.maps)
        given = mapping.given_up(p, rec, self.maps)
        if dry_run:
            return given
        extra = dict(link.extra)
        if reopen:
            count = int(extra.get(EXTRA_CLOSED_NOTES, "0")) + 1
            cid = closed_note_id(self.inst.name, rec.sys_id, count)
            message = (
                f"ServiceNow {rec.number} is closed and can no longer be changed, so it stays closed "
                "while this incident is open again (reopen_closed = note). Open a new ticket by hand "
                "if one is needed."
            )
            await self.sentinel.put_comment(inc.name, cid, message)
            extra[EXTRA_CLOSED_NOTES] = str(count)
            log.info("ticket_closed_note", snow_number=rec.number, comment=cid, direction="to_sentinel")
        elif extra.get(EXTRA_READ_ONLY_WARNED) != "1":
            extra[EXTRA_READ_ONLY_WARNED] = "1"
            log.warning(
                "ticket_read_only",
                snow_number=rec.number,
                fields=sorted(p.to_snow),
                message=f"ServiceNow {rec.number} is closed and read-only: changes made in Sentinel "
                "no longer reach it (said once per ticket)",
            )
        pair.link = replace(link, extra=extra)
        return given

    async def _follow_up(self, pair: Pair, stats: CycleStats) -> None:
        """A Sentinel reopen of an incident whose ticket is closed and read-only (REFERENCE E.9):
        a follow-up ticket that references the closed one (``follow_up_field`` and the
        description), and the link moves to it; the closed ticket stays in the link's history.
        Sentinel keeps its reopened state. A follow-up a crashed run already made is found by
        the unique key and used, never made twice."""
        assert pair.incident is not None and pair.record is not None and pair.link is not None
        inc, closed, old = pair.incident, pair.record, pair.link
        history = [h for h in old.extra.get(EXTRA_PREVIOUS, "").split(",") if h]
        exclude = frozenset({closed.sys_id, *(h.partition(":")[2] for h in history)})
        found = (await self._lookup_unique([inc.name], exclude)).get(inc.name)
        if found is not None and not self.maps.is_finished(found.get(self.maps.status_field)):
            rec, owner = found, self.owner_to_snow.get(inc.owner.key, "") if inc.owner.key else ""
        else:
            values, owner = await self._ticket_values(inc, stats)
            reference = self.inst.profile.follow_up_field
            if reference:
                values[reference] = closed.sys_id
            values["description"] = (
                f"Follow-up of {closed.number}, which was closed when the Microsoft Sentinel incident "
                f"was reopened.\n\n{values.get('description', '')}"
            )
            rec = await self._create_settled(inc.name, values, exclude)
        log.info(
            "snow_follow_up_created",
            snow_number=rec.number,
            sys_id=rec.sys_id,
            previous=closed.number,
            direction="to_snow",
        )
        etag = inc.etag
        if self.config.agent.writeback_label and rec.number not in inc.labels:
            etag = await self._writeback_label(inc, rec.number) or etag
        fields = {
            "severity": (inc.severity, rec.get(self.maps.severity_field)),
            "status": (inc.status, rec.get(self.maps.status_field)),
            "owner": (inc.owner.key, rec.get("assigned_to")) if (owner or not inc.owner.key) else None,
        }
        kept = {k: v for k, v in old.extra.items() if k not in _PER_TICKET_EXTRA}
        link = replace(
            old,
            sys_id=rec.sys_id,
            number=rec.number,
            fields={k: v for k, v in fields.items() if v is not None},
            sentinel_etag=etag,
            snow_mod_count=rec.mod_count,
            open=True,
            enrich_after=None,
            extra={
                **kept,
                **journal_seen(rec),
                EXTRA_PREVIOUS: ",".join([*history, f"{closed.number}:{closed.sys_id}"]),
            },
        )
        link, _rec = await self._converse(link, None, inc, rec, stats, created=True)
        await self.shadow.save_link(link)
        stats.created += 1

    def _writes(
        self, p: Plan, inc: SentinelIncident, rec: SnowRecord, s_changed: bool, n_changed: bool
    ) -> tuple[dict[str, str], dict[str, Any], Mapping[str, tuple[str, str]]]:
        """The PATCH body and PUT changes for ``p`` after the custom mapping hook (which also
        sees pairs with nothing planned on a side that changed), and the base to store once they
        succeeded (:func:`agent.sync.hooks.settle_base`)."""
        body = mapping.snow_write(p.to_snow, inc, rec, self.maps) if p.to_snow else {}
        changes = mapping.sentinel_write(p.to_sentinel, rec, self.maps) if p.to_sentinel else {}
        if changes.get("status") == "Closed":
            self._note_close_code(rec.get(self.maps.close_code_field))
        if self.hook is None:
            return body, changes, p.base
        hooked_body: dict[str, str] = {}
        hooked_changes: dict[str, Any] = {}
        if body or s_changed:
            hooked = hooks.call(self.hook, hooks.TO_SNOW, "update", inc, rec, body)
            hooked_body = hooks.drop_unchanged(hooked, rec, body)
        if changes or n_changed:
            hooked = hooks.call(self.hook, hooks.TO_SENTINEL, "update", inc, rec, changes)
            hooked_changes = hooks.drop_unchanged_sentinel(hooked, inc, changes)
        base = hooks.settle_base(p, self._snow_keys, body, hooked_body, hooked_changes)
        return hooked_body, hooked_changes, base

    def _note_close_code(self, code: str) -> None:
        """``value_unmapped`` once per close code that lands on the default ``*`` row."""
        if code and code not in self._fallback_codes and self.instance_maps.closure_falls_back(code):
            self._fallback_codes.add(code)
            classification, reason = self.instance_maps.closure_for_sentinel(code)
            log.warning(
                "value_unmapped",
                field="close_code",
                side="servicenow",
                value=code,
                default="/".join(x for x in (classification, reason) if x),
            )

    @staticmethod
    def _log_closure(direction: str, closed: bool | None, was_closed: bool, number: str) -> None:
        """``closure_<direction>`` / ``reopen_<direction>`` when a write closes or reopens."""
        if closed and not was_closed:
            log.info(f"closure_{direction}", direction=direction, snow_number=number)
        elif closed is False and was_closed:
            log.info(f"reopen_{direction}", direction=direction, snow_number=number)

    async def _converse(
        self,
        link: Link,
        previous: Link | None,
        inc: SentinelIncident,
        rec: SnowRecord,
        stats: CycleStats,
        *,
        created: bool = False,
        adopted: bool = False,
        sentinel_changed: bool = True,
        snow_changed: bool = True,
    ) -> tuple[Link, SnowRecord]:
        """Comments, work notes, alerts and entities of one pair (:mod:`agent.sync.conversation`).

        A remote error here never holds the fields back: the link is committed with its new
        field base but the sides' versions of ``previous`` (so the pair still looks changed),
        and the conversation is re-checked after a backoff (``enrich_after``). What it wrote
        before the error is linked already and is not written again.
        """
        now = utcnow()
        work = PairWork(link, inc, rec, sentinel_changed, snow_changed, created, adopted, _due(link, now))
        try:
            done, rec = await self.talk.run(work, now)
        except RemoteError as exc:
            tries = int(link.extra.get(TALK_RETRIES, "0")) + 1
            retry = now + timedelta(seconds=min(TALK_RETRY_MAX, TALK_RETRY_BASE * 2 ** min(tries - 1, 16)))
            stats.comments_deferred += 1
            # A first transient failure heals by itself at the retry; only a repeat needs a person.
            fields = {"error": _safe_error(exc), "attempt": tries, "next_try": retry.isoformat()}
            if tries == 1 and isinstance(exc, TransientError):
                log.info("conversation_deferred", **fields)
            else:
                log.warning("conversation_deferred", **fields)
            deferred = replace(
                link,
                sentinel_etag=previous.sentinel_etag if previous else None,
                snow_mod_count=previous.snow_mod_count if previous else None,
                enrich_after=min(retry, link.enrich_after) if link.enrich_after else retry,
                extra={**link.extra, TALK_RETRIES: str(tries)},
            )
            return deferred, rec
        extra = {k: v for k, v in done.extra.items() if k != TALK_RETRIES}
        enrich_after = done.enrich_after
        delay = timedelta(seconds=self.config.agent.enrichment_delay)
        retried = TALK_RETRIES in link.extra
        if retried and enrich_after is None and delay and link.created_at and link.created_at + delay > now:
            enrich_after = link.created_at + delay  # a retry ran before the late re-check: keep it
        return replace(done, extra=extra, enrich_after=enrich_after), rec

    async def _talk_finish(self, stats: CycleStats, now: datetime) -> None:
        """Confirm this cycle's journal entries (one batched read) and count the conversation."""
        await self.talk.finish(now)
        stats.comments_to_snow = self.talk.counts.comments_to_snow
        stats.comments_to_sentinel = self.talk.counts.comments_to_sentinel
        stats.notes_to_snow = self.talk.counts.notes_to_snow

    async def _sweep_records(self, records: dict[str, SnowRecord], options: CycleOptions) -> None:
        """A sweep's ServiceNow half: the record of every open link (batched ``sys_idIN``)."""
        inst, wsname = self.inst.name, self.ws.name
        links = [link async for link in self.shadow.iter_links(inst, wsname, open_only=True)]
        missing = [link.sys_id for link in links if link.sys_id not in records]
        records.update(await self._fetch_records(missing))
        found = sum(1 for link in links if link.sys_id in records)
        valves.check_listing(self.ws.name, "servicenow", found, len(links), full=True, force=options.force)

    def _policy(self) -> Policy:
        return mapping.policy(
            self.maps, self.owner_to_snow, self.owner_to_sentinel, self.config.agent.conflict_policy
        )

    def _log_plan_notes(self, p: Plan, stats: CycleStats) -> None:
        for c in p.conflicts:
            stats.conflicts += 1
            log.info("conflict", field=c.field, sentinel=c.sentinel, servicenow=c.servicenow, winner=c.winner)
        for f, side, value in p.unmapped:
            stats.unmapped += 1
            log.warning("value_unmapped", field=f, side=side, value=value)

    def _record_dry_run(
        self,
        inc: SentinelIncident,
        rec: SnowRecord,
        p: Plan,
        stats: CycleStats,
        s_changed: bool = True,
        n_changed: bool = True,
    ) -> None:
        self._log_plan_notes(p, stats)
        values, changes, _base = self._writes(p, inc, rec, s_changed, n_changed)
        if values:
            stats.planned.append(
                {"action": "update_snow", "incident": inc.name, "snow_number": rec.number, "values": values}
            )
            stats.updated_snow += 1
        if changes:
            stats.planned.append(
                {
                    "action": "update_sentinel",
                    "incident": inc.name,
                    "snow_number": rec.number,
                    "changes": changes,
                }
            )
            stats.updated_sentinel += 1


TALK_RETRIES = "talk_retries"  # link extra: conversation attempts that failed in a row
EXTRA_PREVIOUS = "previous_tickets"  # link extra: "<number>:<sys_id>,..." of closed tickets followed up
EXTRA_CLOSED_NOTES = "closed_notes"  # link extra: reopen notes put on the incident (reopen_closed = note)
EXTRA_READ_ONLY_WARNED = "read_only_warned"  # link extra: "1" once ticket_read_only was logged
_PER_TICKET_EXTRA = frozenset(
    {EXTRA_CLOSED_NOTES, EXTRA_READ_ONLY_WARNED, TALK_RETRIES, "journal_seen", "journal_dropped"}
)
CLOSED_NOTE_NAMESPACE = uuid.UUID("3b8f0c52-9d4e-5a17-b6c2-0e4f7a9d1c83")
"""Namespace of the ids of the "ticket stays closed" comments. Never change it."""


def closed_note_id(instance: str, sys_id: str, count: int) -> str:
    """The Sentinel comment id of the ``count``-th "stays closed" note about one ticket: a retried
    or repeated PUT rewrites the same comment."""
    return str(uuid.uuid5(CLOSED_NOTE_NAMESPACE, f"{instance}:{sys_id}:{count}"))


TALK_RETRY_BASE = 60.0
TALK_RETRY_MAX = 6 * 3600.0


def _due(link: Link, now: datetime | None = None) -> bool:
    """Whether the link's conversation re-check (late enrichment or a deferred retry) is due."""
    return link.enrich_after is not None and link.enrich_after <= (now or utcnow())


def _safe_error(exc: BaseException) -> str:
    text = str(exc)
    return text[:500]


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
        out[s.ws.name] = r
        if isinstance(r, SafetyValveTripped):
            log.error("safety_valve", workspace=s.ws.name, check=r.check, message=str(r))
        elif isinstance(r, InstancePaused):  # announced once when the pause began
            log.info("cycle_paused", workspace=s.ws.name, until=pause_iso(r.until), message=str(r.detail))
        elif isinstance(r, PermanentError | TransientError | AgentError):
            log.error("cycle_failed", workspace=s.ws.name, error=_safe_error(r))
        elif isinstance(r, Exception):
            bug = next((e for e in _leaves(r) if not isinstance(e, AgentError)), r)
            log.error(
                "cycle_crashed",
                workspace=s.ws.name,
                error=f"{type(bug).__name__}: {_safe_error(bug)}",
                traceback="".join(traceback.format_exception(r)),
            )
    return out


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; ``[exc]`` for a plain one."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]
