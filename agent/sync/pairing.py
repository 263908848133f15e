"""Pairing: the cycle's listings matched through the shadow's links, and the missing halves.

Each side is compared with *its own* version from the last sync (Unison's rule): a side whose
version equals the link's did not change. A pair where neither changed (re-listed in the overlap
window, or the agent's own writes) is marked ``unchanged`` and costs nothing more, unless a
sweep compares it in full. Incidents whose retry is due and links whose conversation re-check
is due join the cycle; then the other half of every pair is fetched (one batched read of the
tickets, one read per incident).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.core.records import Incident, Link, Ticket
from agent.errors import NotFound
from agent.log import log
from agent.sync.context import CycleContext, Setup
from agent.tasks import limited


@dataclass
class Pair:
    """What the cycle knows about one incident pair."""

    incident: Incident | None
    ticket: Ticket | None
    link: Link | None
    unchanged: bool = False

    @property
    def source_changed(self) -> bool:
        return self.link is None or self.incident is None or self.link.sentinel_etag != self.incident.version

    @property
    def ticket_changed(self) -> bool:
        return self.link is None or self.ticket is None or self.link.snow_mod_count != self.ticket.version


async def pair(
    sync: Setup, ctx: CycleContext, incidents: Mapping[str, Incident], tickets: Mapping[str, Ticket]
) -> dict[str, Pair]:
    """Every pair this cycle looks at (see the module docstring)."""
    inst, wsname = sync.instance, sync.workspace
    links = await sync.store.get_links(inst, wsname, incidents.keys())
    by_ticket = await sync.store.get_links_by_sys_id(inst, tickets.keys())
    pairs: dict[str, Pair] = {name: Pair(inc, None, links.get(name)) for name, inc in incidents.items()}
    for ticket_id, ticket in tickets.items():
        link = by_ticket.get(ticket_id)
        if link is None or link.workspace != wsname:
            continue  # not ours (another workspace, or not linked: adoption is resync's job)
        pairs.setdefault(link.incident, Pair(None, None, link)).ticket = ticket
    for p in pairs.values():
        p.unchanged = _unchanged(p, ctx.sweeping)
    # due retries from the failures table, and due conversation re-checks: read in full
    ctx.retrying = set()
    for failure in await sync.store.due_failures(inst, wsname, ctx.now):
        ctx.retrying.add(failure.incident)
        if _absent(pairs, failure.incident):
            link = (await sync.store.get_links(inst, wsname, [failure.incident])).get(failure.incident)
            pairs[failure.incident] = Pair(None, None, link)
    for link in await sync.store.due_enrichment(inst, wsname, ctx.now):
        if _absent(pairs, link.incident):
            pairs[link.incident] = Pair(None, None, link)
    await _halves(sync, {name: p for name, p in pairs.items() if not p.unchanged})
    # Incidents another source syncs now are left alone, linked or not (never written or
    # committed here, so handing them over never races this cycle).
    for name in [n for n, p in pairs.items() if sync.source.handed_over(p.incident, p.link)]:
        del pairs[name]
    return pairs


def _unchanged(p: Pair, sweeping: bool) -> bool:
    if p.link is None:
        return False
    same_source = p.incident is None or p.incident.version == p.link.sentinel_etag
    same_ticket = p.ticket is None or p.ticket.version == p.link.snow_mod_count
    return same_source and same_ticket and not (sweeping and p.link.open)


def _absent(pairs: Mapping[str, Pair], name: str) -> bool:
    return name not in pairs or pairs[name].unchanged


async def _halves(sync: Setup, pairs: Mapping[str, Pair]) -> None:
    """Fetch the ticket of every linked pair listed from the source only, and the incident of
    every pair listed from the ticket side only."""
    need = [p.link.sys_id for p in pairs.values() if p.link is not None and p.ticket is None]
    fetched = await sync.sink.fetch(need)
    for p in pairs.values():
        if p.link is not None and p.ticket is None:
            p.ticket = fetched.get(p.link.sys_id)
    missing = [name for name, p in pairs.items() if p.incident is None]
    found = await limited([_incident(sync, name) for name in missing], sync.sem)
    for name, incident in zip(missing, found, strict=True):
        pairs[name].incident = incident


async def _incident(sync: Setup, name: str) -> Incident | None:
    try:
        return await sync.source.get(name)
    except NotFound:
        log.warning("sentinel_incident_missing", incident=name)
        return None
