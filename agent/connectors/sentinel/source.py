"""One Sentinel workspace as an :class:`~agent.ports.IncidentSource`.

Turns :class:`~agent.connectors.sentinel.models.SentinelIncident` into the side-neutral
:class:`~agent.core.records.Incident` and the sync's writes into ARM property changes for the
full-object PUT (:func:`~agent.connectors.sentinel.client.build_put_body`). What is Sentinel's
own stays here: the etag as the incident's version, the comment ids the agent chooses (uuid5,
so a repeated PUT rewrites the same comment), HTML comments and their size limit (REFERENCE
A.8, E.3), closing with a classification and a reason (A.6), a Defender merge read as status
``Closed`` plus the ``Redirected`` tag, and the portal links.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from agent.config import Workspace
from agent.connectors.sentinel.client import XDR_PROVIDER, SentinelClient
from agent.connectors.sentinel.models import WRITABLE, SentinelAlert, SentinelIncident
from agent.core import text as textfmt
from agent.core.records import Closure, Comment, Evidence, Incident, Link
from agent.errors import EditConflict, PermanentError
from agent.log import log

CLOSED = "Closed"
REDIRECTED = "redirected"
EXTRA_PROVIDER_ID = "provider_incident_id"
"""``Link.extra`` key: the incident's ``providerIncidentId`` (its number in the Defender portal)."""
MAX_LABEL_ATTEMPTS = 3
MAX_COMMENTS = 100  # REFERENCE A.8
COMMENT_NAMESPACE = uuid.UUID("9f3c2a71-4d8e-5b60-8e2f-6a1b7c0d9e42")
"""Namespace of the comment ids of copied journal entries. Never change it: ids already written
would no longer be recognised."""
NOTICE_NAMESPACE = uuid.UUID("3b8f0c52-9d4e-5a17-b6c2-0e4f7a9d1c83")
"""Namespace of the ids of the agent's own notices (a closed ticket stays closed). Never change it."""


def comment_id(key: str) -> str:
    """The comment id of the journal entry ``key`` (``<instance>:<journal sys_id>``)."""
    return str(uuid.uuid5(COMMENT_NAMESPACE, key))


def incident_of(inc: SentinelIncident) -> Incident:
    """The side-neutral record of a Sentinel incident."""
    owner = inc.owner
    names = (owner.upn, owner.email, owner.assigned_to)
    return Incident(
        id=inc.name,
        version=inc.etag,
        number=str(inc.number),
        title=inc.title,
        values={"severity": inc.severity, "status": inc.status, "owner": owner.key},
        labels=inc.labels,
        created=inc.created,
        modified=inc.modified,
        closed=inc.status == CLOSED,
        owner_spelled=owner.upn or owner.email or "",
        owner_names=tuple(dict.fromkeys(n.lower() for n in names if n)),
        classification=inc.classification,
        close_notes=close_notes(inc),
        comments_count=inc.comments_count,
        alerts_count=inc.alerts_count,
        merged_away=inc.status == CLOSED and any(label.lower() == REDIRECTED for label in inc.labels),
        extra={EXTRA_PROVIDER_ID: inc.provider_incident_id} if inc.provider_incident_id else {},
        wire=inc,
    )


def wire(incident: Incident) -> SentinelIncident:
    """The Sentinel record behind ``incident``."""
    assert isinstance(incident.wire, SentinelIncident)
    return incident.wire


def close_notes(incident: SentinelIncident) -> str:
    """Readable close notes from Sentinel's classification, reason and comment (never empty)."""
    cls = incident.classification or "Undetermined"
    text = f"Closed in Microsoft Sentinel as {cls}"
    if incident.classification_reason:
        text += f" ({incident.classification_reason})"
    if incident.classification_comment:
        text += f": {incident.classification_comment}"
    return text


class SentinelSource:
    """The incidents of one workspace (``[workspace:NAME]``) through its :class:`SentinelClient`."""

    system = "sentinel"
    title = "Microsoft Sentinel"
    field_keys: Mapping[str, str] = {"severity": "severity", "status": "status", "owner": "owner"}
    writable = frozenset(WRITABLE)
    comments_html = True
    stable_comment_ids = True
    max_comments: int | None = MAX_COMMENTS
    closed_status = CLOSED

    def __init__(
        self,
        client: SentinelClient,
        workspace: Workspace,
        *,
        page_size: int = 100,
        hand_over_xdr: bool = False,
    ) -> None:
        self.client = client
        self.workspace = workspace
        self.page_size = page_size
        # The workspace is onboarded to a [defender:NAME] source: its Defender XDR incidents are
        # synced through Graph there (GRAPH.md H.2, H.4: one API per incident).
        self.hand_over_xdr = hand_over_xdr

    # --- reading -------------------------------------------------------------------------------

    async def changed(self, since: Any) -> AsyncIterator[Incident]:
        async for inc in self.client.list_incidents(
            modified_since=since, labels=self.workspace.incident_filter, page_size=self.page_size
        ):
            yield incident_of(inc)

    async def open_incidents(self) -> AsyncIterator[Incident]:
        async for inc in self.client.list_incidents(
            labels=self.workspace.incident_filter, open_only=True, page_size=self.page_size
        ):
            yield incident_of(inc)

    async def get(self, incident_id: str) -> Incident:
        return incident_of(await self.client.get_incident(incident_id))

    def handed_over(self, incident: Incident | None, link: Link | None) -> bool:
        return (
            self.hand_over_xdr
            and incident is not None
            and isinstance(incident.wire, SentinelIncident)
            and incident.wire.provider_name == XDR_PROVIDER
        )

    def selected(self, incident: Incident) -> bool:
        wanted = self.workspace.incident_filter
        return not wanted or any(label in incident.labels for label in wanted)

    def ticket_description(self, incident: Incident) -> str:
        inc = wire(incident)
        parts = [inc.description.strip()] if inc.description and inc.description.strip() else []
        parts.append(f"Microsoft Sentinel incident #{inc.number}: {self.client.portal_url(inc)}")
        defender = self.client.defender_url(inc)
        if defender:
            parts.append(f"Microsoft Defender portal: {defender}")
        return "\n\n".join(parts)

    # --- writing fields ------------------------------------------------------------------------

    def render(self, changes: Mapping[str, str], closure: Closure | None) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if "severity" in changes:
            body["severity"] = changes["severity"]
        if "owner" in changes:
            upn = changes["owner"]
            body["owner"] = {"userPrincipalName": upn, "objectId": None} if upn else None
        if "status" in changes:
            body["status"] = changes["status"]
            closing = changes["status"] == CLOSED and closure is not None
            body["classification"] = closure.classification if closing and closure else None
            body["classificationReason"] = closure.reason if closing and closure else None
            body["classificationComment"] = closure.comment if closing and closure else None
        return body

    def drop_unchanged(
        self, incident: Incident, body: Mapping[str, Any], planned: Iterable[str]
    ) -> dict[str, Any]:
        keep = set(planned)
        inc = wire(incident)
        raw = inc.raw.get("properties") if isinstance(inc.raw, dict) else None
        props: Mapping[str, Any] = raw if isinstance(raw, dict) else {}
        current = {**props, "labels": list(inc.labels)}
        return {k: v for k, v in body.items() if k in keep or k not in current or current[k] != v}

    def field_value(self, field: str, value: Any) -> str:
        if field != "owner":
            return str(value)
        if isinstance(value, Mapping):
            return str(value.get("userPrincipalName") or value.get("email") or "").lower()
        return str(value or "").lower()

    async def write(self, incident: Incident, body: Mapping[str, Any]) -> Incident:
        return incident_of(await self.client.update_incident(wire(incident), body))

    async def add_label(self, incident: Incident, label: str) -> str | None:
        current = wire(incident)
        for attempt in range(MAX_LABEL_ATTEMPTS):
            try:
                updated = await self.client.update_incident(current, {"labels": [*current.labels, label]})
            except EditConflict:
                current = await self.client.get_incident(current.name)
                if label in current.labels:
                    return None
                continue
            except PermanentError as exc:
                # The label is a convenience: a rejected PUT (e.g. a value the API refuses) must
                # not keep the pair from being linked and synced.
                log.warning("sentinel_label_failed", snow_number=label, error=str(exc)[:500])
                return None
            log.info("sentinel_label_added", snow_number=label, direction="to_sentinel")
            return updated.etag if attempt == 0 else None
        log.warning("sentinel_label_conflict", snow_number=label)
        return None

    # --- the conversation ----------------------------------------------------------------------

    async def comments(self, incident: Incident) -> Sequence[Comment]:
        return [
            Comment(c.name, c.message, c.author_name, c.author_upn or c.author_email, c.created)
            for c in await self.client.list_comments(incident.id)
        ]

    def comment_id(self, key: str) -> str:
        return comment_id(key)

    def notice_id(self, key: str) -> str:
        """The comment id of the agent's own notice ``key``: a repeated PUT rewrites the same one."""
        return str(uuid.uuid5(NOTICE_NAMESPACE, key))

    async def put_comment(self, incident: Incident, comment_id: str, text: str) -> bool:
        try:
            await self.client.put_comment(incident.id, comment_id, text)
        except PermanentError as exc:
            if exc.status == 400 and "maximum" in str(exc).lower():
                return False
            raise
        return True

    def comment_text(self, header: str, text: str, where: str) -> str:
        # The portal renders a comment as HTML (REFERENCE E.3).
        return textfmt.cap_html(f"{header}\n\n{text}", textfmt.SENTINEL_MAX, where)

    async def alerts(self, incident: Incident) -> Sequence[Evidence]:
        return [_alert(a) for a in await self.client.list_alerts(incident.id)]

    async def entities(self, incident: Incident) -> Sequence[Evidence]:
        return [
            Evidence(e.name, f"{e.kind}: {e.friendly_name or '(no name)'}")
            for e in await self.client.list_entities(incident.id)
        ]

    # --- merges --------------------------------------------------------------------------------

    def merge_text(self, merged: Incident, survivor: Incident | None) -> str:
        if survivor is None:
            return (
                f"Merged in the Microsoft Defender portal into another incident (Sentinel #{merged.number})."
            )
        ident = survivor.extra.get(EXTRA_PROVIDER_ID) or survivor.number
        return f"Merged in the Microsoft Defender portal into incident {ident}: {survivor.title}"

    def merge_note(self, merged: Incident, survivor: Incident | None, ticket: str | None, first: bool) -> str:
        lines = [
            self.merge_text(merged, survivor)
            if first
            else "The surviving incident of the merge is now known."
        ]
        if survivor is not None:
            defender = self.client.defender_url(wire(survivor))
            if defender:
                lines.append(f"Surviving incident in the Microsoft Defender portal: {defender}")
            lines.append(
                f"Surviving incident in Microsoft Sentinel: {self.client.portal_url(wire(survivor))}"
            )
            if ticket is not None:
                lines.append(f"Its ServiceNow incident: {ticket}")
        else:
            defender = self.client.defender_url(wire(merged))
            if defender:
                lines.append(
                    f"The Defender portal opens the surviving incident from this one's page: {defender}"
                )
        return "\n".join(lines)


def _alert(a: SentinelAlert) -> Evidence:
    parts = (
        a.display_name or "(unnamed alert)",
        a.severity,
        textfmt.utc_stamp(a.time_generated) if a.time_generated else "",
        a.product_name or "",
    )
    order = (a.time_generated.isoformat() if a.time_generated else "", a.display_name)
    return Evidence(a.name, " | ".join(p for p in parts if p), order)
