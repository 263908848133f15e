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
from agent.core.merge import plan
from agent.core.records import Incident, Link, Ticket
from agent.errors import ConfigError, DataError, NotFound
from agent.log import log
from agent.store import Store, open_store
from agent.sync.actions import side, ticket_side
from agent.sync.cycle import WorkspaceSync
from agent.sync.owners import Owners

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
        disabled = [w for w in workspaces or () if not config.sources[w].enabled]
        if disabled:
            raise ConfigError([f"[workspace:{w}] enabled: workspace is disabled" for w in disabled])
        assert rt.shadow is not None
        reports, unmatched = await _resync(syncs, rt.shadow, dry_run=dry_run)
    return ResyncReport(dry_run, config.agent.conflict_policy, reports, unmatched)


async def _resync(
    syncs: Sequence[WorkspaceSync], shadow: Store, *, dry_run: bool
) -> tuple[list[WorkspaceReport], list[Unmatched]]:
    reports: list[WorkspaceReport] = []
    pool: dict[tuple[str, str], Ticket] = {}  # (instance, ticket id) -> not placed by any workspace
    placed: set[tuple[str, str]] = set()
    markers = {s.sink.marker: s.workspace for s in syncs}
    for sync in syncs:
        report = WorkspaceReport(sync.workspace, sync.instance)
        reports.append(report)
        tickets = [t async for t in sync.sink.changed(None)]
        incidents = {i.id.lower(): i async for i in sync.source.changed(None)}
        report.records, report.incidents = len(tickets), len(incidents)
        todo = [t for t in tickets if (sync.instance, t.id) not in placed]
        matches, handled = await _match(sync, shadow, todo, incidents, report)
        for ticket in todo:
            key = (sync.instance, ticket.id)
            if ticket.id in handled:
                placed.add(key)
                pool.pop(key, None)
            else:
                pool[key] = ticket
        links = await _links(sync, matches)
        report.linked = [m for m, _inc, _ticket in matches]
        if not dry_run and links:
            await shadow.save_links(links)
        for link in links:
            log.info(
                "link_resynced", workspace=sync.workspace, incident=link.incident, snow_number=link.number
            )
    unmatched = []
    for (inst, _id), ticket in sorted(pool.items(), key=lambda kv: kv[1].number):
        owner = markers.get(ticket.marker)
        reason = (
            f"marked for workspace {owner}, but no such incident there"
            if owner
            else "no incident with this id in any enabled workspace"
        )
        unmatched.append(Unmatched(inst, ticket.number, ticket.id, ticket.key, reason))
    return reports, unmatched


async def _match(
    sync: WorkspaceSync,
    shadow: Store,
    tickets: Sequence[Ticket],
    incidents: dict[str, Incident],
    report: WorkspaceReport,
) -> tuple[list[tuple[Matched, Incident, Ticket]], set[str]]:
    """The pairs to link, and the ticket ids this workspace placed (linked, kept apart, reported)."""
    inst, ws = sync.instance, sync.workspace
    by_id = await shadow.get_links_by_sys_id(inst, [t.id for t in tickets])
    tombstones = await shadow.unlinked(inst, ws)
    keys = {t.id: t.key.strip() for t in tickets}
    links = await shadow.get_links(inst, ws, [k for k in keys.values() if k])
    out: list[tuple[Matched, Incident, Ticket]] = []
    handled: set[str] = set()
    seen: dict[str, str] = {}  # incident -> the number linked by this run
    # Of two tickets for one incident, link the one this agent marked, then an open one (a
    # follow-up of a closed ticket, REFERENCE E.9), the older of two open ones, the newest closed.
    mark = sync.sink.marker

    def rank(t: Ticket) -> tuple[bool, bool, int]:
        finished = sync.sink.finished(t.values.get("status", ""))
        number = int("".join(c for c in t.number if c.isdigit()) or 0)
        return (t.marker != mark, finished, -number if finished else number)

    for ticket in sorted(tickets, key=rank):
        key = keys[ticket.id]
        existing = by_id.get(ticket.id)
        if existing is not None:
            handled.add(ticket.id)  # linked already (here, or to another workspace)
            report.already_linked += existing.workspace == ws
            continue
        incident = incidents.get(key.lower())
        if incident is None and ticket.marker == mark:
            incident = await _get(sync, key)  # ours by its marker, but not in the listing
        if incident is None:
            continue
        handled.add(ticket.id)
        if incident.id in tombstones:
            report.kept_unlinked.append(ticket.number)
            continue
        other = links.get(incident.id)
        if other is not None or incident.id in seen:
            linked_to = other.number if other else seen[incident.id]
            report.duplicates.append(
                {"incident": incident.id, "number": ticket.number, "linked_to": linked_to}
            )
            continue
        seen[incident.id] = ticket.number
        out.append((Matched(incident.id, ticket.number, ticket.id, [], []), incident, ticket))
    return out, handled


async def _get(sync: WorkspaceSync, name: str) -> Incident | None:
    try:
        return await sync.source.get(name)
    except (NotFound, DataError):  # deleted, or a key that names no incident we could ask for
        return None


async def _links(sync: WorkspaceSync, matches: Sequence[tuple[Matched, Incident, Ticket]]) -> list[Link]:
    """Links whose base holds only the fields both sides agree on (the owner look-ups resolved)."""
    owners = Owners()
    await owners.resolve(sync.sink, [i for _m, i, _t in matches], [t for _m, _i, t in matches])
    policy = sync.maps.policy(owners.to_snow, owners.to_sentinel, sync.settings.conflict_policy)
    now = datetime.now(UTC)
    links: list[Link] = []
    for matched, inc, ticket in matches:
        p = plan(None, side(inc), ticket_side(ticket), policy)
        base = {f: p.base[f] for f, case in p.cases.items() if case == AGREE}
        matched.agreed = sorted(base)
        matched.disagree = sorted(set(p.cases) - set(base))
        sync_now = not matched.disagree
        closed = inc.closed and sync.sink.finished(ticket.values.get("status", ""))
        links.append(
            Link(
                instance=sync.instance,
                workspace=sync.workspace,
                incident=inc.id,
                sys_id=ticket.id,
                number=ticket.number,
                fields=base,
                # Unknown versions make the next cycle process the pair and settle what disagrees.
                sentinel_etag=inc.version if sync_now else None,
                snow_mod_count=ticket.version if sync_now else None,
                open=not closed,
                created_at=now,
                extra={**sync.sink.route_extra(inc), **inc.extra},
            )
        )
    return links


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
    inst = config.sources[workspace].servicenow
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
