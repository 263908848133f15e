"""What a person reads about a Defender incident on its ticket: the link, the alerts, the evidence.

* ``incidentWebUrl`` is the deep link into the Defender portal; it is opaque (older data and
  alerts use ``/incidents/<id>``, newer ``/incident2/<id>/overview``, B.5), so it is shown as sent.
* One line per alert (F.2): title, severity, product, MITRE category and techniques, status, and
  its own portal link. Alerts come from one ``GET .../{id}?$expand=alerts`` per changed incident
  (C.5); an incident may hold more than 150 (F.2), each listed once.
* One line per piece of evidence (F.3), the same entity seen by several alerts once: its kind,
  what identifies it (a UPN, a host, an address, a file name), the verdict and its roles. Kinds
  this module has no name for are shown by their display name, or skipped when they have none
  (v1.0 has 48 subtypes and grows).

Each line carries an id (the alert id; ``<kind>:<name>`` for evidence) so a note lists only what
the ticket was not told yet.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from agent.connectors.graph.mapping import SOURCE_TITLE
from agent.connectors.graph.models import GraphAlert, GraphEvidence, GraphIncident

_KIND_NAMES = {
    "userEvidence": "User",
    "deviceEvidence": "Device",
    "ipEvidence": "IP address",
    "urlEvidence": "URL",
    "mailboxEvidence": "Mailbox",
    "analyzedMessageEvidence": "Email message",
    "fileEvidence": "File",
    "processEvidence": "Process",
    "cloudApplicationEvidence": "Cloud application",
    "oauthApplicationEvidence": "OAuth application",
    "azureResourceEvidence": "Azure resource",
    "registryKeyEvidence": "Registry key",
    "registryValueEvidence": "Registry value",
    "securityGroupEvidence": "Security group",
    "malwareEvidence": "Malware",
    "dnsEvidence": "DNS",
    "networkConnectionEvidence": "Network connection",
    "mailClusterEvidence": "Mail cluster",
}
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


@dataclass(frozen=True, slots=True)
class Line:
    """One alert or piece of evidence: ``id`` says whether the ticket has seen it."""

    id: str
    text: str


def description(incident: GraphIncident) -> str:
    """A new ticket's description: the incident's own text and where to open it."""
    parts = [p.strip() for p in (incident.description, incident.summary) if p and p.strip()]
    where = incident.web_url or "(the Defender portal sent no link)"
    parts.append(f"{SOURCE_TITLE} incident {incident.id}: {where}")
    return "\n\n".join(parts)


def alert_line(alert: GraphAlert) -> Line:
    """``<title> (<severity>, <product>, <category> <techniques>) <status>: <link>``."""
    product = alert.product_name or alert.service_source or alert.detection_source
    details = [alert.severity or "unknown severity"]
    if product:
        details.append(product)
    tactic = " ".join(x for x in (alert.category, ", ".join(alert.mitre_techniques)) if x)
    if tactic:
        details.append(tactic)
    text = f"{alert.title or alert.id} ({'; '.join(details)}), {alert.status or 'status unknown'}"
    if alert.web_url:
        text += f": {alert.web_url}"
    return Line(alert.id, text)


def alert_lines(alerts: Iterable[GraphAlert]) -> list[Line]:
    """Every alert once, oldest first (the order Graph gives them)."""
    seen: set[str] = set()
    out: list[Line] = []
    for alert in alerts:
        if alert.id and alert.id not in seen:
            seen.add(alert.id)
            out.append(alert_line(alert))
    return out


def evidence_line(evidence: GraphEvidence) -> Line | None:
    """``<Kind>: <name> (verdict <v>; <roles>)``; None for evidence that names nothing."""
    if not evidence.name:
        return None
    kind = _KIND_NAMES.get(evidence.kind)
    if kind is None:
        kind = _CAMEL.sub(" ", evidence.kind.removesuffix("Evidence")).capitalize()
    details = []
    if evidence.verdict and evidence.verdict != "unknown":
        details.append(f"verdict {evidence.verdict}")
    if evidence.roles:
        details.append(", ".join(evidence.roles))
    if evidence.remediation_status and evidence.remediation_status not in ("none", "unknownFutureValue"):
        details.append(f"remediation {evidence.remediation_status}")
    text = f"{kind or 'Evidence'}: {evidence.name}"
    return Line(f"{evidence.kind}:{evidence.name}", text + (f" ({'; '.join(details)})" if details else ""))


def evidence_lines(alerts: Sequence[GraphAlert]) -> list[Line]:
    """The evidence of every alert, each entity once (the first alert's view of it)."""
    seen: set[str] = set()
    out: list[Line] = []
    for alert in alerts:
        for evidence in alert.evidence:
            line = evidence_line(evidence)
            if line is not None and line.id not in seen:
                seen.add(line.id)
                out.append(line)
    return out
