"""``resync`` and ``unlink``: rebuild the shadow from both sides, or stop syncing on purpose.

**resync** (after a lost or corrupted state database, or to take over tickets an earlier
integration made) writes nothing remote. Per ServiceNow instance it lists every record that
carries the unique key (in each workspace's domain), lists each workspace's Sentinel incidents,
and matches them by the key:

* a match becomes a link whose base holds the fields on which both sides already agree; a field
  that disagrees gets no base, so the next cycle settles it under ``conflict_policy`` (the
  link's etag and mod count are left empty, so the pair is processed as soon as it is seen);
* a record already linked, or whose incident was unlinked on purpose, is left alone;
* a record whose key names no incident of any workspace, or an incident that already has a
  linked ticket (a duplicate), is reported and not linked.

The report lists what was matched and what could not be (the command line shows it as text, or
JSON with ``--json``); ``--dry-run`` reports without saving.

**unlink** stops syncing an incident (or every incident of a workspace) and keeps both records.
The link goes, and a tombstone stays, so the engine never creates a new ticket for the incident
nor adopts its old one by unique key. ``unlink --undo`` removes the tombstone; the next cycle
that sees the incident (or a ``resync``) links it again. An incident is named by its Sentinel
id or its ServiceNow number. Both commands hold the state lock: stop a running agent first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.app.leadership import exclusive
from agent.app.runtime import Runtime
from agent.app.watermarks import known
from agent.config import Config
from agent.connectors.sentinel.models import SentinelIncident
from agent.connectors.servicenow.models import SnowRecord
from agent.core.merge import plan
from agent.core.records import Link
from agent.errors import ConfigError, DataError, NotFound
from agent.log import log
from agent.store import Store, open_store
from agent.sync import mapping
from agent.sync.engine import WorkspaceSync

AGREE = "no_base_agree"


@dataclass
class Matched:
    """A pair resync linked (or would link, in a dry run)."""

    incident: str
    number: str
    sys_id: str
    agreed: list[str]
    disagree: list[str]


@dataclass
class WorkspaceReport:
    """What resync found for one workspace."""

    workspace: str
    instance: str
    records: int = 0
    incidents: int = 0
    linked: list[Matched] = field(default_factory=list)
    already_linked: int = 0
    kept_unlinked: list[str] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)


@dataclass
class Unmatched:
    """A record carrying a unique key that no workspace could match."""

    instance: str
    number: str
    sys_id: str
    key: str
    reason: str


@dataclass
class ResyncReport:
    """What a resync found (``dry_run``: what it would link); ``--json`` prints :meth:`as_dict`."""

    dry_run: bool
    conflict_policy: str
    workspaces: list[WorkspaceReport]
    unmatched: list[Unmatched]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "workspaces": {
                r.workspace: {k: v for k, v in asdict(r).items() if k != "workspace"} for r in self.workspaces
            },
            "unmatched": [asdict(u) for u in self.unmatched],
        }


@dataclass
class UnlinkReport:
    """What ``unlink`` did per incident; ``--json`` prints :meth:`as_dict`."""

    workspace: str
    undo: bool
    incidents: list[dict[str, str]]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def resync(
    config: Config, *, workspaces: Sequence[str] | None = None, dry_run: bool = False
) -> ResyncReport:
    """Rebuild the shadow's links from both sides by unique key (see the module docstring)."""
    known(config, workspaces or [])
    async with exclusive(config) as lead, Runtime(config) as rt:
        lead.bind(rt)
        syncs = rt.syncs(workspaces)
        disabled = [w for w in workspaces or () if not config.workspaces[w].enabled]
        if disabled:
            raise ConfigError([f"[workspace:{w}] enabled: workspace is disabled" for w in disabled])
        assert rt.shadow is not None
        reports, unmatched = await _resync(syncs, rt.shadow, dry_run=dry_run)
    return ResyncReport(dry_run, config.agent.conflict_policy, reports, unmatched)


async def _resync(
    syncs: Sequence[WorkspaceSync], shadow: Store, *, dry_run: bool
) -> tuple[list[WorkspaceReport], list[Unmatched]]:
    reports: list[WorkspaceReport] = []
    pool: dict[tuple[str, str], SnowRecord] = {}  # (instance, sys_id) -> not placed by any workspace
    placed: set[tuple[str, str]] = set()
    markers = {s.correlation_display: s.ws.name for s in syncs}
    for sync in syncs:
        report = WorkspaceReport(sync.ws.name, sync.inst.name)
        reports.append(report)
        records = [r async for r in sync.snow.list_records(sync._scope(), sync.snow_fields)]
        labels = sync.ws.incident_filter
        incidents = {i.name.lower(): i async for i in sync.sentinel.list_incidents(labels=labels)}
        report.records, report.incidents = len(records), len(incidents)
        todo = [r for r in records if (sync.inst.name, r.sys_id) not in placed]
        matches, handled = await _match(sync, shadow, todo, incidents, report)
        for rec in todo:
            key = (sync.inst.name, rec.sys_id)
            if rec.sys_id in handled:
                placed.add(key)
                pool.pop(key, None)
            else:
                pool[key] = rec
        links = await _links(sync, matches)
        report.linked = [m for m, _inc, _rec in matches]
        if not dry_run and links:
            await shadow.save_links(links)
        for link in links:
            log.info("link_resynced", workspace=sync.ws.name, incident=link.incident, snow_number=link.number)
    unmatched = []
    for (inst, _sys_id), rec in sorted(pool.items(), key=lambda kv: kv[1].number):
        owner = markers.get(rec.get("correlation_display"))
        reason = (
            f"marked for workspace {owner}, but no such incident there"
            if owner
            else "no incident with this id in any enabled workspace"
        )
        unmatched.append(Unmatched(inst, rec.number, rec.sys_id, rec.get(_unique_key(syncs, inst)), reason))
    return reports, unmatched


async def _match(
    sync: WorkspaceSync,
    shadow: Store,
    records: Sequence[SnowRecord],
    incidents: dict[str, SentinelIncident],
    report: WorkspaceReport,
) -> tuple[list[tuple[Matched, SentinelIncident, SnowRecord]], set[str]]:
    """The pairs to link, and the sys_ids this workspace placed (linked, kept apart, reported)."""
    inst, ws = sync.inst.name, sync.ws.name
    by_sys = await shadow.get_links_by_sys_id(inst, [r.sys_id for r in records])
    tombstones = await shadow.unlinked(inst, ws)
    keys = {r.sys_id: r.get(sync.inst.unique_key).strip() for r in records}
    links = await shadow.get_links(inst, ws, [k for k in keys.values() if k])
    out: list[tuple[Matched, SentinelIncident, SnowRecord]] = []
    handled: set[str] = set()
    seen: dict[str, str] = {}  # incident -> the number linked by this run
    # Of two tickets for one incident, link the one this agent marked, then an open one (a
    # follow-up of a closed ticket, REFERENCE E.9), the older of two open ones, the newest closed.
    mark = sync.correlation_display

    def rank(r: SnowRecord) -> tuple[bool, bool, int]:
        finished = sync.maps.is_finished(r.get(sync.maps.status_field))
        number = int("".join(c for c in r.number if c.isdigit()) or 0)
        return (r.get("correlation_display") != mark, finished, -number if finished else number)

    ordered = sorted(records, key=rank)
    for rec in ordered:
        key = keys[rec.sys_id]
        existing = by_sys.get(rec.sys_id)
        if existing is not None:
            handled.add(rec.sys_id)  # linked already (here, or to another workspace)
            report.already_linked += existing.workspace == ws
            continue
        incident = incidents.get(key.lower())
        if incident is None and rec.get("correlation_display") == sync.correlation_display:
            incident = await _get(sync, key)  # ours by its marker, but not in the listing
        if incident is None:
            continue
        handled.add(rec.sys_id)
        if incident.name in tombstones:
            report.kept_unlinked.append(rec.number)
            continue
        other = links.get(incident.name)
        if other is not None or incident.name in seen:
            linked_to = other.number if other else seen[incident.name]
            duplicate = {"incident": incident.name, "number": rec.number, "linked_to": linked_to}
            report.duplicates.append(duplicate)
            continue
        seen[incident.name] = rec.number
        out.append((Matched(incident.name, rec.number, rec.sys_id, [], []), incident, rec))
    return out, handled


async def _get(sync: WorkspaceSync, name: str) -> SentinelIncident | None:
    try:
        return await sync.sentinel.get_incident(name)
    except (NotFound, DataError):  # deleted, or a key that names no incident we could ask for
        return None


async def _links(
    sync: WorkspaceSync, matches: Sequence[tuple[Matched, SentinelIncident, SnowRecord]]
) -> list[Link]:
    """Links whose base holds only the fields both sides agree on (the owner look-ups resolved)."""
    sync.owner_to_snow, sync.owner_to_sentinel = {}, {}
    await sync._resolve([i for _m, i, _r in matches], [r for _m, _i, r in matches])
    policy = sync._policy()
    now = datetime.now(UTC)
    links: list[Link] = []
    for matched, inc, rec in matches:
        p = plan(None, mapping.sentinel_side(inc), mapping.snow_side(rec, sync.maps), policy)
        base = {f: p.base[f] for f, case in p.cases.items() if case == AGREE}
        matched.agreed = sorted(base)
        matched.disagree = sorted(set(p.cases) - set(base))
        sync_now = not matched.disagree
        closed = inc.status == "Closed" and sync.maps.is_finished(rec.get(sync.maps.status_field))
        links.append(
            Link(
                instance=sync.inst.name,
                workspace=sync.ws.name,
                incident=inc.name,
                sys_id=rec.sys_id,
                number=rec.number,
                fields=base,
                # Unknown versions make the next cycle process the pair and settle what disagrees.
                sentinel_etag=inc.etag if sync_now else None,
                snow_mod_count=rec.mod_count if sync_now else None,
                open=not closed,
                created_at=now,
                extra=sync.routing.link_extra(inc),
            )
        )
    return links


def _unique_key(syncs: Sequence[WorkspaceSync], instance: str) -> str:
    return next(s.inst.unique_key for s in syncs if s.inst.name == instance)


NUMBER = re.compile(r"^[A-Z]{2,10}\d{4,12}$")
UNLINK_REASON = "unlinked by an operator"


async def unlink(
    config: Config,
    workspace: str,
    incidents: Sequence[str],
    *,
    every: bool = False,
    undo: bool = False,
) -> UnlinkReport:
    """Stop syncing incidents of ``workspace`` (or all of them), keeping both records.

    ``incidents`` are Sentinel incident ids or ServiceNow numbers. ``undo`` removes the
    tombstones instead (the incidents may be linked again).
    """
    known(config, [workspace])
    if bool(incidents) == every:
        raise ConfigError(["unlink: name incidents (Sentinel id or ServiceNow number) or give --all"])
    inst = config.workspaces[workspace].servicenow
    now = datetime.now(UTC)
    done: list[dict[str, str]] = []
    async with exclusive(config) as lead, await open_store(config.agent.state) as shadow:
        lead.fence(shadow)
        names = await _names(shadow, inst, workspace, incidents, every=every, undo=undo)
        for name in names:
            if undo:
                forgot = await shadow.forget_unlinked(inst, workspace, name)
                result = "may be linked again" if forgot else "was not unlinked"
                done.append({"incident": name, "result": result})
                continue
            link = await shadow.unlink(inst, workspace, name, reason=UNLINK_REASON, now=now)
            done.append(
                {
                    "incident": name,
                    "number": link.number if link else "",
                    "result": "unlinked" if link else "had no ticket; none will be created",
                }
            )
            number = link.number if link else None
            log.info("link_removed", workspace=workspace, incident=name, snow_number=number)
    return UnlinkReport(workspace, undo, done)


async def _names(
    shadow: Store, instance: str, workspace: str, given: Sequence[str], *, every: bool, undo: bool
) -> list[str]:
    if every:
        if undo:
            return list(await shadow.unlinked(instance, workspace))
        return [link.incident async for link in shadow.iter_links(instance, workspace)]
    numbers = [g for g in given if NUMBER.match(g)]
    linked = await shadow.links_by_number(instance, workspace, numbers)
    by_number = {n: link.incident for n, link in linked.items()}
    if undo and numbers:
        tombs = await shadow.unlinked(instance, workspace)
        by_number |= {t.number: t.incident for t in tombs.values() if t.number in numbers}
    missing = [n for n in numbers if n not in by_number]
    if missing:
        raise ConfigError([f"unlink: no ticket {n} is linked in workspace {workspace}" for n in missing])
    return [by_number.get(g, g) for g in given]
