"""Incidents merged in the Microsoft Defender portal, followed on the ServiceNow side.

In the unified security operations platform, Defender's correlation engine merges incidents: the
*source* incident is closed, its alerts and tags move to the *target* incident, and a
``Redirected`` tag is added to the source; the source's portal page redirects to the target
(Microsoft Learn, "Alert correlation and incident merging in the Microsoft Defender portal").
In the Sentinel incidents API a tag is a label, so a merged-away incident reads as status
``Closed`` with a ``Redirected`` label. The API has no property naming the target (the Defender
API's ``redirectIncidentId`` is not part of ``Microsoft.SecurityInsights``; REFERENCE A.4 lists
what is), so the target is found through the tags that moved: the ServiceNow number the agent
wrote back as a label on the source now sits on the surviving incident.

Assumptions, documented because they are not verified against the live service: the label is
spelled ``Redirected`` (compared case-insensitively), and the merge is visible through the
incidents API as the documented close plus tag move.

What the agent does, once per merged incident: one PATCH on the source's ticket that adds a work
note naming the surviving incident (its Defender and Azure portal pages and its own ticket when
it has one), sets ``parent_incident`` to that ticket, and resolves the ticket if it is still
open. When the survivor is not known yet, the note links the source's Defender page (which the
portal redirects to the survivor); ``parent_incident`` follows once the survivor shows up.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from agent.connectors.sentinel.client import SentinelClient
from agent.connectors.sentinel.models import SentinelIncident
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.query import Q
from agent.core.records import Link
from agent.errors import NotFound, RemoteError
from agent.log import bind, log
from agent.store import Store
from agent.sync import mapping

REDIRECTED = "redirected"
EXTRA_MERGED_INTO = "merged_into"
"""``Link.extra`` key: the surviving incident's name once noted ("" while it is unknown)."""
NUMBER_LABEL = re.compile(r"^[A-Z]{2,10}\d{4,12}$")
"""What a ServiceNow number looks like as a label (``INC0010001``)."""


def merged_away(incident: SentinelIncident) -> bool:
    """Closed by a merge in the Defender portal: status Closed and the ``Redirected`` tag."""
    return incident.status == "Closed" and any(label.lower() == REDIRECTED for label in incident.labels)


def number_labels(incidents: Mapping[str, SentinelIncident]) -> dict[str, SentinelIncident]:
    """ServiceNow numbers found as labels -> the (open) incident carrying them."""
    out: dict[str, SentinelIncident] = {}
    for inc in incidents.values():
        if merged_away(inc):
            continue
        for label in inc.labels:
            if NUMBER_LABEL.match(label):
                out.setdefault(label, inc)
    return out


@dataclass
class Merges:
    """One workspace's view for following merges (built by the engine each cycle)."""

    instance: str
    workspace: str
    sentinel: SentinelClient
    snow: ServiceNowClient
    shadow: Store
    maps: mapping.Maps
    fields: Sequence[str]
    scope: Q
    failing: frozenset[str] = frozenset()  # incidents that failed this cycle: left to their retry

    async def follow(self, incidents: Mapping[str, SentinelIncident]) -> int:
        """Note every newly seen merge among this cycle's listed incidents; returns how many."""
        carriers = number_labels(incidents)
        by_number = await self.shadow.links_by_number(self.instance, self.workspace, carriers)
        sources: dict[str, tuple[Link, SentinelIncident | None]] = {}
        for number, link in by_number.items():
            if carriers[number].name != link.incident:
                sources[link.incident] = (link, carriers[number])
        merged_listed = [name for name, inc in incidents.items() if merged_away(inc)]
        listed_links = await self.shadow.get_links(self.instance, self.workspace, merged_listed)
        for name, link in listed_links.items():
            if name not in sources:
                sources[name] = (link, carriers.get(link.number))
        done = 0
        for link, survivor in sources.values():
            if link.incident in self.failing:
                continue
            noted = link.extra.get(EXTRA_MERGED_INTO)
            if noted is not None and (noted or survivor is None):
                continue  # noted already, and nothing new to add
            with bind(incident=link.incident):
                done += await self._one(link, incidents.get(link.incident), survivor)
        return done

    async def _one(
        self, link: Link, source: SentinelIncident | None, survivor: SentinelIncident | None
    ) -> int:
        try:
            source = source or await self.sentinel.get_incident(link.incident)
        except NotFound:
            return 0
        if not merged_away(source):
            return 0  # a number label an analyst copied by hand: not a merge
        records = await self.snow.find(self.scope & Q.eq("sys_id", link.sys_id), self.fields, limit=1)
        if not records:
            log.warning("snow_record_missing", sys_id=link.sys_id)
            return 0
        rec = records[0]
        target: Link | None = None
        if survivor is not None:
            target = (await self.shadow.get_links(self.instance, self.workspace, [survivor.name])).get(
                survivor.name
            )
        first = EXTRA_MERGED_INTO not in link.extra
        body = self._body(source, rec, survivor, target, first)
        try:
            after = await self.snow.patch(rec.sys_id, body, self.fields)
        except RemoteError as exc:
            log.warning("merge_note_failed", snow_number=link.number, error=str(exc)[:300])
            return 0
        await self._save(link, source, rec, after, survivor)
        log.info(
            "incident_merged",
            snow_number=link.number,
            survivor=survivor.name if survivor else None,
            survivor_snow_number=target.number if target else None,
            direction="to_snow",
        )
        return 1

    def _body(
        self,
        source: SentinelIncident,
        rec: SnowRecord,
        survivor: SentinelIncident | None,
        target: Link | None,
        first: bool,
    ) -> dict[str, str]:
        body: dict[str, str] = {"work_notes": note(source, survivor, target, self.sentinel, first)}
        if target is not None:
            body["parent_incident"] = target.sys_id
        closed_state = self.maps.status_to_snow.get("Closed")
        if closed_state and not self.maps.is_finished(rec.get(self.maps.status_field)):
            body.update(mapping.snow_write({"status": closed_state}, source, rec, self.maps))
            body[self.maps.close_notes_field] = merge_text(source, survivor)
        return body

    async def _save(
        self,
        link: Link,
        source: SentinelIncident,
        before: SnowRecord,
        after: SnowRecord,
        survivor: SentinelIncident | None,
    ) -> None:
        fields = dict(link.fields)
        state = after.get(self.maps.status_field)
        if "status" in fields or self.maps.is_finished(state):
            fields["status"] = (source.status, state)
        mod = after.mod_count if after.mod_count == before.mod_count + 1 else link.snow_mod_count
        extra = {**link.extra, EXTRA_MERGED_INTO: survivor.name if survivor else ""}
        if source.provider_incident_id:
            extra["provider_incident_id"] = source.provider_incident_id
        # The Sentinel etag stays: a change to the source not synced yet is still seen as one.
        await self.shadow.save_link(
            replace(
                link,
                fields=fields,
                snow_mod_count=mod if before.mod_count == link.snow_mod_count else link.snow_mod_count,
                open=not (self.maps.is_finished(state) and source.status == "Closed"),
                extra=extra,
            )
        )


def merge_text(source: SentinelIncident, survivor: SentinelIncident | None) -> str:
    """One line saying what the source was merged into."""
    if survivor is None:
        return f"Merged in the Microsoft Defender portal into another incident (Sentinel #{source.number})."
    ident = survivor.provider_incident_id or str(survivor.number)
    return f"Merged in the Microsoft Defender portal into incident {ident}: {survivor.title}"


def note(
    source: SentinelIncident,
    survivor: SentinelIncident | None,
    target: Link | None,
    sentinel: SentinelClient,
    first: bool,
) -> str:
    """The work note: what happened and where the surviving incident lives."""
    lines = [merge_text(source, survivor) if first else "The surviving incident of the merge is now known."]
    if survivor is not None:
        defender = sentinel.defender_url(survivor)
        if defender:
            lines.append(f"Surviving incident in the Microsoft Defender portal: {defender}")
        lines.append(f"Surviving incident in Microsoft Sentinel: {sentinel.portal_url(survivor)}")
        if target is not None:
            lines.append(f"Its ServiceNow incident: {target.number}")
    else:
        defender = sentinel.defender_url(source)
        if defender:
            lines.append(f"The Defender portal opens the surviving incident from this one's page: {defender}")
    return "\n".join(lines)
