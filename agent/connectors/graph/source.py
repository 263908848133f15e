"""One Defender XDR tenant as an :class:`~agent.ports.IncidentSource`, through Microsoft Graph.

Turns :class:`~agent.connectors.graph.models.GraphIncident` into the side-neutral
:class:`~agent.core.records.Incident`, read in Sentinel's vocabulary so one ini's maps serve
both sources (:mod:`agent.connectors.graph.mapping`), and the sync's writes into a minimal PATCH.
What is Graph's own stays here:

* **ids**: an incident's id is ``<tenant id>:<Graph id>``, the ticket's unique key too, so two
  tenants synced into one ServiceNow instance never meet (Graph ids are small numbers);
* **version**: ``lastUpdateDateTime`` in 100 ns ticks and the number of comments (there is no
  ETag, D.4; whether a comment moves ``lastUpdateDateTime`` is not verified, J.4, so the count
  makes a new comment a new version either way); a write re-reads first and raises
  :class:`~agent.errors.EditConflict` when a synced property moved since the plan's read
  (:mod:`agent.connectors.graph.writes`);
* **selection**: ``customTags`` are not filterable server-side (C.2), so the tag filter is
  applied to the listing here;
* **comments** have no id and cannot be edited (E): their id is derived from time and text
  (:mod:`agent.connectors.graph.comments`), and writing one is not idempotent;
* **alerts and evidence** come from one ``GET .../{id}?$expand=alerts`` per changed incident
  (C.5), shared by the two notes;
* a **merged** incident reads ``redirected`` with ``redirectIncidentId`` (H.3): it is closed,
  merged away into that incident, and never written;
* the agent's **own writes** read ``API-App:<app name>`` in ``lastModifiedBy`` (B.5): the name
  is learnt from the first write's answer; the conversation knows the comments it wrote by
  their text (``stable_comment_ids`` is False), so a comment is never copied back.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from agent.config import Defender
from agent.connectors.graph import comments as gcomments
from agent.connectors.graph import mapping, notes
from agent.connectors.graph.client import GraphClient
from agent.connectors.graph.models import WRITABLE, GraphAlert, GraphIncident
from agent.connectors.graph.writes import write_guarded
from agent.core.records import Closure, Comment, Evidence, Incident, Link
from agent.errors import PermanentError
from agent.log import log

CLOSED = "Closed"
EXTRA_DEFENDER_ID = "defender_id"
"""``Link.extra`` key: the incident's id in Microsoft Defender XDR (Graph)."""


def incident_key(tenant: str, graph_id: str) -> str:
    """The sync's id of Graph incident ``graph_id`` of ``tenant`` (also the ticket's unique key)."""
    return f"{tenant.lower()}:{graph_id}"


def graph_id(key: str) -> str:
    """The Graph id inside an incident key."""
    return key.rpartition(":")[2]


def version_of(inc: GraphIncident) -> str:
    """What changes with every change of the incident: its last update and its comment count."""
    return f"{inc.modified_ticks}.{len(inc.comments)}"


def incident_of(inc: GraphIncident, tenant: str) -> Incident:
    """The side-neutral record of a Graph incident, in Sentinel's vocabulary."""
    owner = mapping.owner_key(inc.assigned_to)
    survivor = inc.redirect_incident_id if inc.redirected else None
    return Incident(
        id=incident_key(tenant, inc.id),
        version=version_of(inc),
        number=inc.id,
        title=inc.display_name or f"Defender XDR incident {inc.id}",
        values=mapping.values_view(inc),
        labels=inc.custom_tags,
        created=inc.created,
        modified=inc.modified,
        closed=inc.closed,
        owner_spelled=(inc.assigned_to or "").strip(),
        owner_names=(owner,) if owner else (),
        classification=mapping.classification_view(inc.classification),
        close_notes=mapping.close_notes(inc),
        comments_count=len(inc.comments),
        alerts_count=None,
        merged_away=inc.redirected,
        merged_into=incident_key(tenant, survivor) if survivor else None,
        extra={EXTRA_DEFENDER_ID: inc.id},
        wire=inc,
    )


def wire(incident: Incident) -> GraphIncident:
    """The Graph record behind ``incident``."""
    assert isinstance(incident.wire, GraphIncident)
    return incident.wire


class GraphSource:
    """The incidents of one Defender XDR tenant (``[defender:NAME]``) through its :class:`GraphClient`."""

    system = "defender"
    title = mapping.SOURCE_TITLE
    field_keys: Mapping[str, str] = {"severity": "severity", "status": "status", "owner": "assignedTo"}
    writable = frozenset(WRITABLE)
    comments_html = False
    stable_comment_ids = False
    max_comments: int | None = None
    closed_status = CLOSED

    def __init__(
        self,
        client: GraphClient,
        defender: Defender,
        tenant: str,
        to_defender: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.client = client
        self.defender = defender
        self.tenant = tenant.lower()
        self.to_defender = to_defender or {}  # [closure_to_defender]
        self.app_name: str | None = None  # learnt from the first write (API-App:<name>, B.5)
        self._alerts: dict[tuple[str, str], tuple[GraphAlert, ...]] = {}

    # --- reading -------------------------------------------------------------------------------

    async def changed(self, since: datetime | None) -> AsyncIterator[Incident]:
        async for inc in self.client.list_incidents(modified_since=since):
            yield incident_of(inc, self.tenant)

    async def open_incidents(self) -> AsyncIterator[Incident]:
        async for inc in self.client.list_incidents(open_only=True):
            yield incident_of(inc, self.tenant)

    async def get(self, incident_id: str) -> Incident:
        return incident_of(await self.client.get_incident(graph_id(incident_id)), self.tenant)

    def handed_over(self, incident: Incident | None, link: Link | None) -> bool:
        return False  # the Graph source is where incidents are handed over to

    def selected(self, incident: Incident) -> bool:
        wanted = self.defender.incident_filter
        return not wanted or any(tag in incident.labels for tag in wanted)

    def ticket_description(self, incident: Incident) -> str:
        return notes.description(wire(incident))

    # --- writing fields ------------------------------------------------------------------------

    def render(self, changes: Mapping[str, str], closure: Closure | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if "severity" in changes:
            severity = mapping.severity_wire(changes["severity"])
            if severity is not None:
                body["severity"] = severity
        if "owner" in changes:
            body["assignedTo"] = changes["owner"] or None
        if "status" in changes:
            status = mapping.status_wire(changes["status"])
            if status == "resolved" and closure is not None:
                how = mapping.closure_for(
                    closure.code, closure.comment, self.to_defender, closure.classification
                )
                body |= mapping.closure_body(how)
            elif status is not None:
                body["status"] = status  # a reopen sends the status only, as production mirrors do
        return body

    def drop_unchanged(
        self, incident: Incident, body: Mapping[str, Any], planned: Iterable[str]
    ) -> dict[str, Any]:
        keep = set(planned)
        current = wire(incident).raw
        return {k: v for k, v in body.items() if k in keep or k not in current or current[k] != v}

    def field_value(self, field: str, value: Any) -> str:
        if field == "owner":
            return mapping.owner_key(value if isinstance(value, str) else None)
        if field == "severity":
            return mapping.severity_view(str(value))
        if field == "status":
            return mapping.status_view(str(value))
        return str(value)

    async def write(self, incident: Incident, body: Mapping[str, Any]) -> Incident:
        written = await write_guarded(self.client, wire(incident), body)
        self._learn(written.app_name)
        if written.dropped:
            log.info("defender_merged_not_written", fields=list(written.dropped))
        saved = incident_of(written.incident, self.tenant)
        if not written.sent:
            return incident  # nothing was left to write: the version read stands
        if not written.clean:
            # Someone changed a synced property while the PATCH ran: keep the old version so the
            # next cycle reads that change instead of taking it as seen.
            return _with_version(saved, incident.version)
        return saved

    async def add_label(self, incident: Incident, label: str) -> str | None:
        try:
            written = await write_guarded(self.client, wire(incident), {}, add_tags=[label])
        except PermanentError as exc:
            # The tag is a convenience: a change since the read, or a refused PATCH, must not keep
            # the pair from being linked and synced.
            log.warning("defender_tag_failed", snow_number=label, error=str(exc)[:500])
            return None
        self._learn(written.app_name)
        if not written.sent:
            return None
        log.info("defender_tag_added", snow_number=label, direction="to_sentinel")
        return version_of(written.incident) if written.clean else None

    # --- the conversation ----------------------------------------------------------------------

    async def comments(self, incident: Incident) -> Sequence[Comment]:
        # Every comment, the app's own included: the conversation tells its own writes by their
        # text (a POST's outcome is settled by finding it, E), never by the author, which the
        # POST echo may show without its API-App: prefix (B.4).
        return [
            Comment(gcomments.comment_id(c), c.text, c.author, None, c.created or incident.created)
            for c in wire(incident).comments
        ]

    def comment_id(self, key: str) -> str:
        # Graph comments have no id the agent chooses (E): the journal entry's key names the
        # write; the comment itself is found again by its text (stable_comment_ids is False).
        return f"journal:{key}"

    def notice_id(self, key: str) -> str:
        return f"notice:{key}"

    async def put_comment(self, incident: Incident, comment_id: str, text: str) -> bool:
        added = await self.client.add_comment(graph_id(incident.id), text)
        if added and self.app_name is None:
            digest = gcomments.text_hash(text)
            mine = gcomments.find_posted(added, digest)
            self._learn(mine.author.removeprefix(gcomments.API_APP) if mine and mine.author else None)
        return True

    def comment_text(self, header: str, text: str, where: str) -> str:
        return gcomments.capped(f"{header}\n\n{text}", where)

    async def alerts(self, incident: Incident) -> Sequence[Evidence]:
        alerts = await self._alerts_of(incident)
        return [Evidence(line.id, line.text) for line in notes.alert_lines(alerts)]

    async def entities(self, incident: Incident) -> Sequence[Evidence]:
        alerts = await self._alerts_of(incident)
        return [Evidence(line.id, line.text) for line in notes.evidence_lines(alerts)]

    async def _alerts_of(self, incident: Incident) -> tuple[GraphAlert, ...]:
        """One read of the incident's alerts per version, shared by the two notes (C.5)."""
        key = (incident.id, incident.version)
        if key not in self._alerts:
            if len(self._alerts) > 256:
                self._alerts.clear()
            self._alerts[key] = await self.client.list_alerts(graph_id(incident.id))
        return self._alerts[key]

    # --- merges --------------------------------------------------------------------------------

    def merge_text(self, merged: Incident, survivor: Incident | None) -> str:
        target = survivor.number if survivor else wire(merged).redirect_incident_id
        if target is None:
            return f"Merged in {self.title} into another incident (incident {merged.number})."
        title = f": {survivor.title}" if survivor else ""
        return f"Merged in {self.title} into incident {target}{title}"

    def merge_note(self, merged: Incident, survivor: Incident | None, ticket: str | None, first: bool) -> str:
        known = "The surviving incident of the merge is now known."
        lines = [self.merge_text(merged, survivor) if first else known]
        if survivor is not None:
            url = wire(survivor).web_url
            if url:
                lines.append(f"Surviving incident in the Microsoft Defender portal: {url}")
            if ticket is not None:
                lines.append(f"Its ServiceNow incident: {ticket}")
        elif wire(merged).web_url:
            where = wire(merged).web_url
            lines.append(f"The Defender portal opens the surviving incident from this one's page: {where}")
        return "\n".join(lines)

    def _learn(self, name: str | None) -> None:
        if name and name != self.app_name:
            self.app_name = name


def _with_version(incident: Incident, version: str) -> Incident:
    return replace(incident, version=version)
