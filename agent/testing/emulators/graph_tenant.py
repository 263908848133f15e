"""One Microsoft Defender XDR tenant as the Graph emulator sees it: incidents, alerts v2, comments.

The state behind :mod:`agent.testing.emulators.graph`, and the direct-access hooks tests and a simulator
use to play Defender's own engine and the portal (GRAPH.md B.6): create incidents and alerts,
resolve alerts (which may auto-resolve an incident), move alerts, merge incidents, rename, edit
as an analyst. Nothing here goes through HTTP, faults or the recorder.

Records are stored with the wire property names (GRAPH.md B.1, F.2) and times as 100 ns ticks,
so ``$filter``/``$orderby`` (:mod:`agent.testing.emulators.odata`) compare instants, never strings;
:func:`render_incident`/:func:`render_alert` produce the JSON the service sends.

Property lists, types and enum members follow the published v1.0 metadata
(``microsoftgraph/msgraph-metadata``, ``schemas/v1.0-Prod.csdl``: ``EntityType incident``,
``EntityType alert`` and ``ComplexType alertComment`` of ``microsoft.graph.security``).
"""

from __future__ import annotations

import copy
import random
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.testing.emulators.common import Clock

__all__ = [
    "AUTO_RESOLVE_COMMENT",
    "CLASSIFICATIONS",
    "DETERMINATIONS",
    "DOCS_ONLY_NAMES",
    "INCIDENT_PROPERTIES",
    "INCIDENT_STATUSES",
    "LATE_MEMBERS",
    "NEWER_PROPERTIES",
    "PAIRS",
    "SEVERITIES",
    "SYSTEM_CORRELATION",
    "SYSTEM_CREATION",
    "DefenderTenant",
    "MergeRefused",
    "graph_time",
    "render_alert",
    "render_incident",
]

# --- enums (CSDL order; "evolvable": members after unknownFutureValue need the Prefer header) ---

INCIDENT_STATUSES = ("active", "resolved", "inProgress", "redirected", "unknownFutureValue", "awaitingAction")
SEVERITIES = ("unknown", "informational", "low", "medium", "high", "unknownFutureValue")
CLASSIFICATIONS = (
    "unknown",
    "falsePositive",
    "truePositive",
    "informationalExpectedActivity",
    "unknownFutureValue",
)
DETERMINATIONS = (
    "unknown", "apt", "malware", "securityPersonnel", "securityTesting", "unwantedSoftware", "other",
    "multiStagedAttack", "compromisedAccount", "phishing", "maliciousUserActivity", "notMalicious",
    "notEnoughDataToValidate", "confirmedActivity", "lineOfBusinessApplication", "unknownFutureValue",
)  # fmt: skip
ALERT_STATUSES = ("unknown", "new", "inProgress", "resolved", "unknownFutureValue")
SERVICE_SOURCES = (
    "unknown", "microsoftDefenderForEndpoint", "microsoftDefenderForIdentity",
    "microsoftDefenderForCloudApps", "microsoftDefenderForOffice365", "microsoft365Defender",
    "azureAdIdentityProtection", "microsoftAppGovernance", "dataLossPrevention",
    "unknownFutureValue", "microsoftDefenderForCloud", "microsoftSentinel",
    "microsoftInsiderRiskManagement", "microsoftThreatIntelligence", "microsoftSecurityForAI",
)  # fmt: skip
DETECTION_SOURCES = (
    "unknown", "microsoftDefenderForEndpoint", "antivirus", "smartScreen", "customTi",
    "microsoftDefenderForOffice365", "automatedInvestigation", "microsoftThreatExperts",
    "customDetection", "microsoftDefenderForIdentity", "cloudAppSecurity", "microsoft365Defender",
    "azureAdIdentityProtection", "manual", "microsoftDataLossPrevention", "appGovernancePolicy",
    "appGovernanceDetection", "unknownFutureValue", "microsoftDefenderForCloud",
    "microsoftDefenderForIoT", "microsoftDefenderForServers", "microsoftDefenderForStorage",
    "microsoftDefenderForDNS", "microsoftDefenderForDatabases", "microsoftDefenderForContainers",
    "microsoftDefenderForNetwork", "microsoftDefenderForAppService", "microsoftDefenderForKeyVault",
    "microsoftDefenderForResourceManager", "microsoftDefenderForApiManagement", "nrtAlerts",
    "scheduledAlerts", "microsoftDefenderThreatIntelligenceAnalytics", "builtInMl",
    "microsoftInsiderRiskManagement", "microsoftThreatIntelligence",
    "microsoftDefenderForAIServices", "securityCopilot", "microsoftSentinel",
)  # fmt: skip
REMEDIATION_STATUSES = (
    "none", "remediated", "prevented", "blocked", "notFound", "unknownFutureValue", "active",
    "pendingApproval", "declined", "unremediated", "running", "partiallyRemediated",
)  # fmt: skip


def _late(members: tuple[str, ...]) -> frozenset[str]:
    return frozenset(members[members.index("unknownFutureValue") + 1 :])


LATE_MEMBERS: Mapping[str, frozenset[str]] = {
    "incidentStatus": _late(INCIDENT_STATUSES),
    "serviceSource": _late(SERVICE_SOURCES),
    "detectionSource": _late(DETECTION_SOURCES),
    "evidenceRemediationStatus": _late(REMEDIATION_STATUSES),
}
"""Per evolvable enum, the members sent as ``unknownFutureValue`` without
``Prefer: include-unknown-enum-members`` (GRAPH.md B.2, F.2)."""

PAIRS: Mapping[str, frozenset[str]] = {
    "truePositive": frozenset(
        {"multiStagedAttack", "maliciousUserActivity", "compromisedAccount", "malware", "phishing",
         "unwantedSoftware", "other"}
    ),
    "informationalExpectedActivity": frozenset(
        {"securityTesting", "lineOfBusinessApplication", "confirmedActivity", "other"}
    ),
    "falsePositive": frozenset({"notMalicious", "notEnoughDataToValidate", "other"}),
    "unknown": frozenset({"unknown"}),
}  # fmt: skip
"""Meaningful classification/determination pairs (GRAPH.md B.3)."""

DOCS_ONLY_NAMES: Mapping[str, str] = {
    "compromisedUser": "compromisedAccount",
    "clean": "notMalicious",
    "insufficientData": "notEnoughDataToValidate",
    "confirmedUserActivity": "confirmedActivity",
    "benignPositive": "informationalExpectedActivity",
}
"""Names some docs pages use that the schema does not have, with the schema's name (B.2)."""

INCIDENT_PROPERTIES = (
    "id", "tenantId", "status", "incidentWebUrl", "redirectIncidentId", "displayName", "createdDateTime",
    "lastUpdateDateTime", "assignedTo", "classification", "determination", "severity", "customTags",
    "systemTags", "description", "lastModifiedBy", "resolvingComment", "summary", "priorityScore", "comments",
)  # fmt: skip
"""``id`` and the 19 structural properties of ``microsoft.graph.security.incident`` (B.1)."""
NEWER_PROPERTIES = frozenset(
    {"description", "lastModifiedBy", "systemTags", "resolvingComment", "summary", "priorityScore"}
)
"""Properties added since Jan 2023 (CSDL history, B.1): a profile may leave them out."""
ALERT_PROPERTIES = (
    "id", "providerAlertId", "incidentId", "status", "severity", "classification", "determination",
    "serviceSource", "detectionSource", "productName", "detectorId", "tenantId", "title", "description",
    "recommendedActions", "category", "categories", "assignedTo", "alertWebUrl", "incidentWebUrl",
    "actorDisplayName", "threatDisplayName", "threatFamilyName", "mitreTechniques", "createdDateTime",
    "lastUpdateDateTime", "resolvedDateTime", "firstActivityDateTime", "lastActivityDateTime",
    "investigationState", "alertPolicyId", "systemTags", "comments", "evidence", "customDetails",
    "additionalData",
)  # fmt: skip
_TIME_PROPERTIES = frozenset(
    {
        "createdDateTime",
        "lastUpdateDateTime",
        "resolvedDateTime",
        "firstActivityDateTime",
        "lastActivityDateTime",
    }
)

SYSTEM_CREATION = "Microsoft 365 Defender-IncidentCreation"
"""``lastModifiedBy`` of the correlation engine's changes (B.5, observed)."""
SYSTEM_CORRELATION = "Microsoft Defender XDR - alert correlation"
"""Who merges (DEF-MERGE, H.3)."""
AUTO_RESOLVE_COMMENT = (
    "Incident automatically resolved as all alerts in the incident were resolved. "
    "Last resolved alert ID: {id}."
)
"""``resolvingComment`` of an auto-resolved incident (B.5, observed on a real incident)."""
REDIRECTED_TAG = "Redirected"
_SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}


class MergeRefused(ValueError):
    """Defender does not merge these incidents (closed, different owner or classification, H.3)."""


# --- time -------------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def graph_time(ticks: int) -> str:
    """100 ns ticks -> ``2026-02-25T16:29:33.1Z``: UTC, 0-7 fractional digits, trailing zeros
    dropped (B.5)."""
    seconds, fraction = divmod(ticks, 10_000_000)
    whole = (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:07d}".rstrip("0")
    return f"{whole}.{digits}Z" if digits else f"{whole}Z"


def _ticks(dt: datetime) -> int:
    delta = dt.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


# --- rendering ---------------------------------------------------------------------------------


def _evolve(kind: str, value: Any, include_unknown: bool) -> Any:
    if include_unknown or not isinstance(value, str) or value not in LATE_MEMBERS[kind]:
        return value
    return "unknownFutureValue"


def render_comment(comment: Mapping[str, Any]) -> dict[str, Any]:
    """An ``alertComment``: no id, no author object id, no edit time (B.4)."""
    return {
        "comment": comment["comment"],
        "createdByDisplayName": comment["createdByDisplayName"],
        "createdDateTime": graph_time(comment["createdDateTime"]),
    }


def render_incident(
    incident: Mapping[str, Any],
    *,
    include_unknown: bool,
    drop: Iterable[str] = (),
    alerts: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """The wire JSON of one stored incident (B.1; nulls kept, times formatted, enums evolved)."""
    out: dict[str, Any] = {}
    dropped = frozenset(drop)
    for name in INCIDENT_PROPERTIES:
        if name in dropped:
            continue
        value = incident[name]
        if name in _TIME_PROPERTIES:
            value = graph_time(value)
        elif name == "status":
            value = _evolve("incidentStatus", value, include_unknown)
        elif name == "comments":
            value = [render_comment(c) for c in value]
        elif isinstance(value, list):
            value = list(value)
        out[name] = value
    if alerts is not None:
        out["alerts"] = [render_alert(a, include_unknown=include_unknown) for a in alerts]
    return out


def render_alert(alert: Mapping[str, Any], *, include_unknown: bool) -> dict[str, Any]:
    """The wire JSON of one stored alert v2 (F.2)."""
    out: dict[str, Any] = {}
    for name in ALERT_PROPERTIES:
        value = alert[name]
        if name in _TIME_PROPERTIES:
            value = None if value is None else graph_time(value)
        elif name in ("serviceSource", "detectionSource"):
            value = _evolve(name, value, include_unknown)
        elif name == "comments":
            value = [render_comment(c) for c in value]
        elif name == "evidence":
            value = [_render_evidence(e, include_unknown) for e in value]
        else:
            value = copy.deepcopy(value)
        out[name] = value
    return out


def _render_evidence(evidence: Mapping[str, Any], include_unknown: bool) -> dict[str, Any]:
    out = copy.deepcopy(dict(evidence))
    out["createdDateTime"] = graph_time(evidence["createdDateTime"])
    out["remediationStatus"] = _evolve(
        "evidenceRemediationStatus", evidence["remediationStatus"], include_unknown
    )
    return out


# --- evidence builders (ComplexTypes of the CSDL, every property present) -----------------------


def _evidence_base(kind: str, ticks: int, remediation: str, roles: Sequence[str]) -> dict[str, Any]:
    return {
        "@odata.type": f"#microsoft.graph.security.{kind}",
        "createdDateTime": ticks,
        "detailedRoles": [],
        "remediationStatus": remediation,
        "remediationStatusDetails": None,
        "roles": list(roles),
        "tags": [],
        "verdict": "suspicious",
    }


def user_evidence(ticks: int, upn: str, display_name: str, *, remediation: str = "none") -> dict[str, Any]:
    account, _, domain = upn.partition("@")
    return _evidence_base("userEvidence", ticks, remediation, ["compromised"]) | {
        "stream": None,
        "userAccount": {
            "accountName": account,
            "activeDirectoryObjectGuid": None,
            "azureAdUserId": str(uuid.uuid5(uuid.NAMESPACE_DNS, upn.lower())),
            "displayName": display_name,
            "domainName": domain or None,
            "resourceAccessEvents": [],
            "tenantId": None,
            "userPrincipalName": upn,
            "userSid": None,
        },
    }


def device_evidence(ticks: int, host: str, *, remediation: str = "none") -> dict[str, Any]:
    return _evidence_base("deviceEvidence", ticks, remediation, []) | {
        "azureAdDeviceId": str(uuid.uuid5(uuid.NAMESPACE_DNS, host)),
        "defenderAvStatus": "updated",
        "deviceDnsName": f"{host}.contoso.example",
        "dnsDomain": "contoso.example",
        "firstSeenDateTime": graph_time(ticks - 86_400 * 10_000_000 * 90),
        "healthStatus": "active",
        "hostName": host,
        "ipInterfaces": ["10.0.0.4"],
        "lastExternalIpAddress": "203.0.113.10",
        "lastIpAddress": "10.0.0.4",
        "loggedOnUsers": [{"accountName": "alice", "domainName": "CONTOSO"}],
        "mdeDeviceId": uuid.uuid5(uuid.NAMESPACE_URL, host).hex,
        "ntDomain": "CONTOSO",
        "onboardingStatus": "onboarded",
        "osBuild": 22631,
        "osPlatform": "Windows11",
        "rbacGroupId": 0,
        "rbacGroupName": None,
        "resourceAccessEvents": [],
        "riskScore": "medium",
        "version": "23H2",
        "vmMetadata": None,
    }


def ip_evidence(ticks: int, address: str, *, remediation: str = "none") -> dict[str, Any]:
    return _evidence_base("ipEvidence", ticks, remediation, ["attacker"]) | {
        "countryLetterCode": "NL",
        "ipAddress": address,
        "location": {"city": None, "countryName": "Netherlands", "latitude": None, "longitude": None,
                     "state": None},
        "stream": None,
    }  # fmt: skip


def url_evidence(ticks: int, url: str, *, remediation: str = "none") -> dict[str, Any]:
    return _evidence_base("urlEvidence", ticks, remediation, []) | {"url": url}


# --- the tenant --------------------------------------------------------------------------------


WriteListener = Callable[[str, str, Mapping[str, Any]], None]
"""(kind, incident id, details) after every state change; kinds: ``created``, ``updated``,
``comment``. Used by the optional Sentinel coupling (GRAPH.md H.4)."""


class DefenderTenant:
    """One tenant's unified incidents and alerts; methods return snapshots (deep copies).

    ``portal_host`` builds ``incidentWebUrl``/``alertWebUrl`` (A.3: per cloud). ``seed`` makes
    ids, the 7th fractional digit of times and priority scores repeatable.
    """

    def __init__(self, tenant_id: str, clock: Clock, *, portal_host: str = "security.microsoft.com",
                 seed: int = 0) -> None:  # fmt: skip
        self.tenant_id = tenant_id
        self.clock = clock
        self.portal_host = portal_host
        self.incidents: dict[str, dict[str, Any]] = {}
        self.alerts: dict[str, dict[str, Any]] = {}
        self.listeners: list[WriteListener] = []
        self._rng = random.Random(seed)
        self._next_id = 1000 + self._rng.randrange(9000)
        self._alert_seq = 0
        self._severity_by_hand: set[str] = set()  # incidents whose severity no longer follows alerts

    # -- helpers
    def now(self) -> int:
        """Now in ticks, strictly increasing; the 7th digit is random (real times have 7, B.5)."""
        return _ticks(self.clock.now()) + self._rng.randrange(10)

    def emit(self, kind: str, incident_id: str, **details: Any) -> None:
        """Tell the listeners about a change (``origin`` in ``details`` says who made it)."""
        for listener in list(self.listeners):
            listener(kind, incident_id, details)

    def _require(self, incident_id: str) -> dict[str, Any]:
        incident = self.incidents.get(incident_id)
        if incident is None:
            raise KeyError(f"no incident {incident_id!r} in tenant {self.tenant_id}")
        return incident

    def _require_alert(self, alert_id: str) -> dict[str, Any]:
        alert = self.alerts.get(alert_id)
        if alert is None:
            raise KeyError(f"no alert {alert_id!r} in tenant {self.tenant_id}")
        return alert

    def incident_web_url(self, incident_id: str) -> str:
        return f"https://{self.portal_host}/incident2/{incident_id}/overview?tid={self.tenant_id}"

    def touch(self, incident: dict[str, Any], by: str, when: int | None = None) -> None:
        """A write: ``lastUpdateDateTime`` = now and ``lastModifiedBy`` = ``by`` (D.2, B.6)."""
        incident["lastUpdateDateTime"] = when if when is not None else self.now()
        incident["lastModifiedBy"] = by

    def alerts_of(self, incident_id: str) -> list[dict[str, Any]]:
        """The stored alerts of an incident (not copies), oldest first."""
        found = [a for a in self.alerts.values() if a["incidentId"] == incident_id]
        return sorted(found, key=lambda a: (a["createdDateTime"], a["id"]))

    # -- snapshots
    def incident(self, incident_id: str) -> dict[str, Any]:
        """The incident as a client with the Prefer header reads it."""
        return render_incident(self._require(incident_id), include_unknown=True)

    def alerts_for(self, incident_id: str) -> list[dict[str, Any]]:
        self._require(incident_id)
        return [render_alert(a, include_unknown=True) for a in self.alerts_of(incident_id)]

    def comments(self, incident_id: str) -> list[dict[str, Any]]:
        return [render_comment(c) for c in self._require(incident_id)["comments"]]

    # -- Defender's engine
    def create_incident(
        self,
        *,
        display_name: str | None = None,
        severity: str | None = None,
        alerts: int | Sequence[Mapping[str, Any]] = 1,
        custom_tags: Sequence[str] = (),
        system_tags: Sequence[str] = (),
        description: str | None = None,
        summary: str | None = None,
        assigned_to: str | None = None,
        priority_score: int | str | None = "random",
        created: datetime | None = None,
        incident_id: str | None = None,
    ) -> dict[str, Any]:
        """A new incident as the correlation engine makes it: ``active``, unassigned unless
        ``assigned_to``, severity of its highest alert unless given (B.6). ``alerts``: a count
        of generated alerts or ``add_alert`` keyword dicts."""
        if incident_id is None:
            incident_id = str(self._next_id)
            self._next_id += 1 + self._rng.randrange(3)
        if incident_id in self.incidents:
            raise ValueError(f"incident {incident_id} already exists")
        at = _ticks(created) if created is not None else self.now()
        score = self._rng.randrange(101) if priority_score == "random" else priority_score
        incident: dict[str, Any] = {
            "id": incident_id,
            "tenantId": self.tenant_id,
            "status": "active",
            "incidentWebUrl": self.incident_web_url(incident_id),
            "redirectIncidentId": None,
            "displayName": display_name,
            "createdDateTime": at,
            "lastUpdateDateTime": at,
            "assignedTo": assigned_to,
            "classification": "unknown",
            "determination": "unknown",
            "severity": severity or "informational",
            "customTags": list(custom_tags),
            "systemTags": list(system_tags),
            "description": description,
            "lastModifiedBy": SYSTEM_CREATION,
            "resolvingComment": None,
            "summary": summary,
            "priorityScore": score,
            "comments": [],
        }
        self.incidents[incident_id] = incident
        if severity is not None:
            self._severity_by_hand.add(incident_id)
        specs: Sequence[Mapping[str, Any]] = [{}] * alerts if isinstance(alerts, int) else alerts
        for spec in specs:
            self._new_alert(incident, at=at, **spec)
        if display_name is None:
            incident["displayName"] = self._generated_name(incident_id)
        self._follow_alert_severity(incident)
        self.emit("created", incident_id)
        return self.incident(incident_id)

    def _generated_name(self, incident_id: str) -> str:
        alerts = self.alerts_of(incident_id)
        if not alerts:
            return "Incident"
        if len(alerts) == 1:
            return f"{alerts[0]['title']} on one endpoint"
        categories = sorted({a["category"] for a in alerts})
        return f"Multi-stage incident involving {' & '.join(categories)} on one endpoint"

    def _follow_alert_severity(self, incident: dict[str, Any]) -> None:
        if incident["id"] in self._severity_by_hand:
            return
        alerts = self.alerts_of(incident["id"])
        if alerts:
            incident["severity"] = max(
                (a["severity"] for a in alerts), key=lambda s: _SEVERITY_RANK.get(s, 0)
            )

    def _new_alert(
        self,
        incident: dict[str, Any],
        *,
        at: int | None = None,
        title: str = "Suspicious PowerShell command line",
        severity: str = "medium",
        category: str = "Execution",
        service_source: str = "microsoftDefenderForEndpoint",
        detection_source: str = "antivirus",
        product_name: str = "Microsoft Defender for Endpoint",
        evidence: Sequence[Mapping[str, Any]] | None = None,
        status: str = "new",
    ) -> dict[str, Any]:
        self._alert_seq += 1
        ticks = at if at is not None else self.now()
        alert_id = f"da{uuid.UUID(int=self._rng.getrandbits(128)).hex[:18]}_{self._alert_seq}"
        items = list(evidence) if evidence is not None else [
            device_evidence(ticks, "ws-0042"),
            user_evidence(ticks, "alice@contoso.example", "Alice Analyst"),
        ]  # fmt: skip
        alert: dict[str, Any] = {
            "id": alert_id,
            "providerAlertId": alert_id[2:],
            "incidentId": incident["id"],
            "status": status,
            "severity": severity,
            "classification": None,
            "determination": None,
            "serviceSource": service_source,
            "detectionSource": detection_source,
            "productName": product_name,
            "detectorId": str(uuid.UUID(int=self._rng.getrandbits(128))),
            "tenantId": self.tenant_id,
            "title": title,
            "description": f"{title} was observed.",
            "recommendedActions": "Review the device timeline.",
            "category": category,
            "categories": [category],
            "assignedTo": incident["assignedTo"],
            "alertWebUrl": f"https://{self.portal_host}/alerts/{alert_id}?tid={self.tenant_id}",
            # Alerts keep the older link form (B.5).
            "incidentWebUrl": f"https://{self.portal_host}/incidents/{incident['id']}?tid={self.tenant_id}",
            "actorDisplayName": None,
            "threatDisplayName": None,
            "threatFamilyName": None,
            "mitreTechniques": ["T1059.001"],
            "createdDateTime": ticks,
            "lastUpdateDateTime": ticks,
            "resolvedDateTime": None,
            "firstActivityDateTime": ticks,
            "lastActivityDateTime": ticks,
            "investigationState": "unknown",
            "alertPolicyId": None,
            "systemTags": [],
            "comments": [],
            "evidence": items,
            "customDetails": {},
            "additionalData": {},
        }
        self.alerts[alert_id] = alert
        return alert

    def add_alert(self, incident_id: str, **spec: Any) -> dict[str, Any]:
        """A new alert correlated into an open incident (bumps it, severity follows). Correlation
        never reopens a resolved incident (DEF-MERGE): that raises ``ValueError``."""
        incident = self._require(incident_id)
        if incident["status"] in ("resolved", "redirected"):
            raise ValueError(f"incident {incident_id} is {incident['status']}: correlation makes a new one")
        alert = self._new_alert(incident, **spec)
        self._follow_alert_severity(incident)
        self.touch(incident, SYSTEM_CREATION, alert["createdDateTime"])
        self.emit("updated", incident_id, fields=("severity",))
        return render_alert(alert, include_unknown=True)

    def resolve_alert(self, alert_id: str, *, by: str = SYSTEM_CREATION) -> dict[str, Any]:
        """Resolve one alert; when it was the last open one the incident resolves itself with
        classification ``unknown`` and an automatic ``resolvingComment`` (B.5)."""
        alert = self._require_alert(alert_id)
        now = self.now()
        alert.update(status="resolved", resolvedDateTime=now, lastUpdateDateTime=now)
        incident = self._require(alert["incidentId"])
        open_left = [a for a in self.alerts_of(incident["id"]) if a["status"] != "resolved"]
        if not open_left and incident["status"] in ("active", "inProgress", "awaitingAction"):
            incident.update(status="resolved", resolvingComment=AUTO_RESOLVE_COMMENT.format(id=alert_id))
            fields: tuple[str, ...] = ("status", "resolvingComment")
        else:
            fields = ()
        self.touch(incident, by, now)
        self.emit("updated", incident["id"], fields=fields)
        return render_alert(alert, include_unknown=True)

    def move_alert(self, alert_id: str, incident_id: str) -> dict[str, Any]:
        """Move an alert to another incident: its ``incidentId`` changes, both incidents bump (D.6)."""
        alert = self._require_alert(alert_id)
        source, target = self._require(alert["incidentId"]), self._require(incident_id)
        now = self.now()
        alert.update(
            incidentId=incident_id,
            incidentWebUrl=f"https://{self.portal_host}/incidents/{incident_id}?tid={self.tenant_id}",
            lastUpdateDateTime=now,
        )
        for incident in (source, target):
            self._follow_alert_severity(incident)
            self.touch(incident, SYSTEM_CORRELATION, now)
            self.emit("updated", incident["id"], fields=("severity",))
        return render_alert(alert, include_unknown=True)

    def merge(
        self, source_ids: Sequence[str], target_id: str, *, redirected_tag_in: str = "customTags"
    ) -> None:
        """Merge ``source_ids`` into ``target_id`` as Defender does (H.3): each source becomes
        ``redirected`` with ``redirectIncidentId``, its alerts and custom tags move, it gets the
        ``Redirected`` tag (in ``redirected_tag_in``: ``customTags`` or ``systemTags``), its
        comments stay; the target is renamed. Raises :class:`MergeRefused` when Defender would
        not merge: a closed incident, different owners, classifications or determinations."""
        target = self._require(target_id)
        sources = [self._require(s) for s in source_ids if s != target_id]
        if not sources:
            raise MergeRefused("nothing to merge")
        for incident in [target, *sources]:
            if incident["status"] in ("resolved", "redirected"):
                raise MergeRefused(f"incident {incident['id']} is closed")
        for key, what in (("assignedTo", "owners"), ("classification", "classifications"),
                          ("determination", "determinations")):  # fmt: skip
            if len({i[key] for i in [target, *sources]}) > 1:
                raise MergeRefused(f"the incidents have different {what}")
        now = self.now()
        for source in sources:
            for alert in self.alerts_of(source["id"]):
                alert.update(
                    incidentId=target_id,
                    incidentWebUrl=f"https://{self.portal_host}/incidents/{target_id}?tid={self.tenant_id}",
                )
            target["customTags"] = list(dict.fromkeys([*target["customTags"], *source["customTags"]]))
            source["customTags"] = []
            source[redirected_tag_in] = [*source[redirected_tag_in], REDIRECTED_TAG]
            source.update(status="redirected", redirectIncidentId=target_id)
            self.touch(source, SYSTEM_CORRELATION, now)
            self.emit("updated", source["id"], fields=("status", "customTags"))
        # Merging renames the target from its alerts, over a custom name (DEF-MANAGE, B.6).
        target["displayName"] = self._generated_name(target_id)
        self._follow_alert_severity(target)
        self.touch(target, SYSTEM_CORRELATION, now)
        self.emit("updated", target_id, fields=("displayName", "customTags", "severity"))

    def pick_merge_target(self, incident_ids: Sequence[str]) -> str:
        """The incident Defender keeps: the one with most alerts, then the oldest."""
        incidents = [self._require(i) for i in incident_ids]
        best = max(incidents, key=lambda i: (len(self.alerts_of(i["id"])), -i["createdDateTime"]))
        return str(best["id"])

    # -- the portal
    def rename(self, incident_id: str, name: str, *, by: str = SYSTEM_CREATION) -> dict[str, Any]:
        incident = self._require(incident_id)
        incident["displayName"] = name
        self.touch(incident, by)
        self.emit("updated", incident_id, fields=("displayName",))
        return self.incident(incident_id)

    def analyst_update(
        self, incident_id: str, *, by: str = "alice@contoso.example", **props: Any
    ) -> dict[str, Any]:
        """Edit as an analyst in the portal: wire property names, no validation; a hand-set
        severity no longer follows the alerts. ``by`` is ``lastModifiedBy`` (for portal users
        the UPN is likely but unverified, B.5)."""
        incident = self._require(incident_id)
        unknown = set(props) - set(INCIDENT_PROPERTIES)
        if unknown:
            raise KeyError(f"not incident properties: {sorted(unknown)}")
        incident.update(copy.deepcopy(props))
        if "severity" in props:
            self._severity_by_hand.add(incident_id)
        if props.get("status") == "resolved":
            self.resolve_alerts_of(incident)
        self.touch(incident, by)
        self.emit("updated", incident_id, fields=tuple(props))
        return self.incident(incident_id)

    def analyst_comment(
        self, incident_id: str, text: str, *, author: str = "Alice Analyst"
    ) -> dict[str, Any]:
        incident = self._require(incident_id)
        return self.append_comment(incident, text, author)

    def set_awaiting_action(self, incident_id: str) -> dict[str, Any]:
        """Defender Experts wait for the customer: only they can set ``awaitingAction`` (B.2)."""
        return self.analyst_update(incident_id, by="Defender Experts", status="awaitingAction")

    # -- shared with the HTTP layer
    def append_comment(self, incident: dict[str, Any], text: str, author: str, *,
                       bump: bool = True, origin: str = "") -> dict[str, Any]:  # fmt: skip
        comment: dict[str, Any] = {
            "comment": text,
            "createdByDisplayName": author,
            "createdDateTime": self.now(),
        }
        incident["comments"].append(comment)
        if bump:
            self.touch(incident, author, comment["createdDateTime"])
        self.emit("comment", incident["id"], comment=render_comment(comment), author=author, origin=origin)
        return render_comment(comment)

    def resolve_alerts_of(self, incident: dict[str, Any]) -> None:
        """Resolving an incident resolves its active alerts (DEF-MANAGE, B.6)."""
        now = self.now()
        for alert in self.alerts_of(incident["id"]):
            if alert["status"] != "resolved":
                alert.update(status="resolved", resolvedDateTime=now, lastUpdateDateTime=now)
