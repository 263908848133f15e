"""Microsoft Graph security incidents on the wire (GRAPH.md B, E, F): the records, their parsing and
the rules for what a PATCH may carry.

Every enum is parsed as an open string, so values this module does not know pass through.
Comments have no id: :attr:`GraphComment.key` is (time, text). Times are kept exactly as
100 ns ticks (``lastUpdateDateTime`` is the incident's version: there is no ETag, D.4).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.errors import InvalidResponse

SYSTEM = "graph"

WRITABLE = (
    "assignedTo", "classification", "customTags", "description", "determination", "displayName",
    "resolvingComment", "severity", "status", "summary",
)  # fmt: skip
"""What a PATCH may carry (D.2); everything else is read-only."""
STATUSES = ("active", "inProgress", "resolved")
"""The statuses a client may set (D.3): never ``redirected`` (the incident becomes unopenable),
``awaitingAction`` (Defender Experts only) or ``unknownFutureValue``."""
SEVERITIES = ("unknown", "informational", "low", "medium", "high")
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
"""Valid classification -> determinations (B.3); ``unknown`` goes with any classification."""
CLOSED_STATUSES = frozenset({"resolved", "redirected"})

_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# --- wire models ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraphComment:
    """An ``alertComment``: no id, no author id, never edited (B.4, E)."""

    text: str
    author: str | None
    created: datetime | None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a comment: its time (as sent) and its text (E: de-duplicate on these)."""
        return (self.created.isoformat() if self.created else "", self.text)


@dataclass(frozen=True, slots=True)
class GraphEvidence:
    """One piece of alert evidence; ``name`` is what identifies it to a person (F.3)."""

    kind: str  # e.g. "userEvidence"
    name: str
    verdict: str | None
    remediation_status: str | None
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GraphAlert:
    """An alert v2 (F.2); enum values are open strings."""

    id: str
    incident_id: str | None
    title: str
    description: str | None
    severity: str
    status: str
    classification: str | None
    determination: str | None
    service_source: str | None
    detection_source: str | None
    product_name: str | None
    category: str | None
    mitre_techniques: tuple[str, ...]
    created: datetime | None
    last_update: datetime | None
    resolved: datetime | None
    web_url: str | None
    evidence: tuple[GraphEvidence, ...]
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class GraphIncident:
    """A ``microsoft.graph.security.incident`` (B.1). ``modified_ticks`` is ``lastUpdateDateTime``
    exactly (100 ns ticks; ``modified`` keeps microseconds). ``alerts`` is None unless expanded."""

    id: str
    display_name: str
    description: str | None
    summary: str | None
    status: str
    severity: str
    classification: str | None
    determination: str | None
    resolving_comment: str | None
    assigned_to: str | None
    custom_tags: tuple[str, ...]
    system_tags: tuple[str, ...]
    comments: tuple[GraphComment, ...]
    created: datetime
    modified: datetime
    modified_ticks: int
    last_modified_by: str | None
    web_url: str | None
    redirect_incident_id: str | None
    tenant_id: str | None
    priority_score: int | None
    alerts: tuple[GraphAlert, ...] | None
    raw: Mapping[str, Any]

    @property
    def redirected(self) -> bool:
        """Merged into ``redirect_incident_id`` (H.3: key off this, never the tag)."""
        return self.status == "redirected"

    @property
    def closed(self) -> bool:
        return self.status in CLOSED_STATUSES

    def written_by(self, app_name: str) -> bool:
        """Whether the last change was this app's own write (``API-App:<name>``, B.5, D.4)."""
        return self.last_modified_by == f"API-App:{app_name}"


# --- what a PATCH may carry ---------------------------------------------------------------------


def valid_pair(classification: str | None, determination: str | None) -> bool:
    """Whether Graph accepts this classification/determination pair (B.3)."""
    if determination in (None, "unknown"):
        return classification is None or classification in PAIRS
    return determination in PAIRS.get(classification or "unknown", frozenset())


def changed_fields(current: GraphIncident, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``desired`` (Graph property names) that differs from ``current``: the minimal
    PATCH body (D.4). An empty ``assignedTo`` means unassigned."""
    now = current.raw
    out: dict[str, Any] = {}
    for key, value in desired.items():
        if key not in WRITABLE:
            raise ValueError(f"not a writable incident property: {key}")
        old = now.get(key) if isinstance(now, Mapping) else None
        if key == "assignedTo":
            old, value = old or None, value or None
        if key == "customTags":
            old, value = list(old or []), list(value)
        if old != value:
            out[key] = value
    if ("classification" in out) != ("determination" in out):
        for key in ("classification", "determination"):  # the pair goes together
            out.setdefault(key, desired.get(key, now.get(key) if isinstance(now, Mapping) else None))
    return out


def merged_tags(current: Iterable[str], add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[str]:
    """The full ``customTags`` list to PATCH: a PATCH replaces the list (D.2), so keep everyone
    else's tags, in their order."""
    dropped = set(remove)
    return [t for t in dict.fromkeys([*current, *add]) if t not in dropped]


# --- parsing ----------------------------------------------------------------------------------


def parse_incident(raw: Any) -> GraphIncident:
    """A Graph incident -> :class:`GraphIncident` (tolerant; PermanentError if hopeless)."""
    ident = raw.get("id") if isinstance(raw, dict) else None
    label = str(ident) if ident is not None else "?"
    if not isinstance(ident, (str, int)) or isinstance(ident, bool) or str(ident) == "":
        raise _unparsable(label, "no id")
    try:
        created_ticks = parse_ticks(str(raw["createdDateTime"]))
        modified_ticks = parse_ticks(str(raw.get("lastUpdateDateTime") or raw["createdDateTime"]))
    except (KeyError, ValueError):
        raise _unparsable(label, "no valid createdDateTime/lastUpdateDateTime") from None
    alerts = raw.get("alerts")
    return GraphIncident(
        id=str(ident),
        display_name=_str(raw.get("displayName")),
        description=_opt(raw.get("description")),
        summary=_opt(raw.get("summary")),
        status=_str(raw.get("status")),
        severity=_str(raw.get("severity")),
        classification=_opt(raw.get("classification")),
        determination=_opt(raw.get("determination")),
        resolving_comment=_opt(raw.get("resolvingComment")),
        assigned_to=_opt(raw.get("assignedTo")),
        custom_tags=_strings(raw.get("customTags")),
        system_tags=_strings(raw.get("systemTags")),
        comments=tuple(parse_comments(raw.get("comments"))),
        created=ticks_datetime(created_ticks),
        modified=ticks_datetime(modified_ticks),
        modified_ticks=modified_ticks,
        last_modified_by=_opt(raw.get("lastModifiedBy")),
        web_url=_opt(raw.get("incidentWebUrl")),
        redirect_incident_id=_opt(raw.get("redirectIncidentId")),
        tenant_id=_opt(raw.get("tenantId")),
        priority_score=_int(raw.get("priorityScore")),
        alerts=tuple(parse_alert(a) for a in alerts if isinstance(a, dict))
        if isinstance(alerts, list)
        else None,
        raw=copy.deepcopy(raw),
    )


def parse_comments(raw: Any) -> list[GraphComment]:
    """``alertComment`` objects, in the order sent (oldest first); odd entries are skipped."""
    out = []
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("comment"), str):
            continue
        out.append(GraphComment(item["comment"], _opt(item.get("createdByDisplayName")),
                                _time(item.get("createdDateTime"))))  # fmt: skip
    return out


def parse_alert(raw: Mapping[str, Any]) -> GraphAlert:
    """An alert v2 -> :class:`GraphAlert` (every field optional but the id)."""
    evidence = raw.get("evidence")
    return GraphAlert(
        id=_str(raw.get("id")),
        incident_id=_opt(raw.get("incidentId")),
        title=_str(raw.get("title")),
        description=_opt(raw.get("description")),
        severity=_str(raw.get("severity")),
        status=_str(raw.get("status")),
        classification=_opt(raw.get("classification")),
        determination=_opt(raw.get("determination")),
        service_source=_opt(raw.get("serviceSource")),
        detection_source=_opt(raw.get("detectionSource")),
        product_name=_opt(raw.get("productName")),
        category=_opt(raw.get("category")),
        mitre_techniques=_strings(raw.get("mitreTechniques")),
        created=_time(raw.get("createdDateTime")),
        last_update=_time(raw.get("lastUpdateDateTime")),
        resolved=_time(raw.get("resolvedDateTime")),
        web_url=_opt(raw.get("alertWebUrl")),
        evidence=tuple(parse_evidence(e) for e in evidence if isinstance(e, dict))
        if isinstance(evidence, list)
        else (),
        raw=copy.deepcopy(dict(raw)),
    )


# The property that names each kind of evidence to a person (F.3); unknown kinds fall back to
# their display name (v1.0 has 48 subtypes and grows).
_EVIDENCE_NAME: Mapping[str, tuple[str, ...]] = {
    "userEvidence": ("userAccount.userPrincipalName", "userAccount.accountName"),
    "deviceEvidence": ("deviceDnsName", "hostName"),
    "ipEvidence": ("ipAddress",),
    "urlEvidence": ("url",),
    "mailboxEvidence": ("primaryAddress", "upn"),
    "analyzedMessageEvidence": ("subject", "networkMessageId"),
    "fileEvidence": ("fileDetails.fileName", "fileDetails.sha256"),
    "processEvidence": ("processCommandLine", "imageFile.fileName"),
    "cloudApplicationEvidence": ("displayName", "appId"),
    "oauthApplicationEvidence": ("displayName", "appId"),
    "azureResourceEvidence": ("resourceName", "resourceId"),
    "registryKeyEvidence": ("registryKey",),
    "registryValueEvidence": ("registryValueName", "registryKey"),
    "malwareEvidence": ("name",),
    "dnsEvidence": ("domainName",),
}


def parse_evidence(raw: Mapping[str, Any]) -> GraphEvidence:
    """One evidence object, any subtype (F.3)."""
    kind = _str(raw.get("@odata.type")).rsplit(".", 1)[-1]
    name = ""
    for path in (*_EVIDENCE_NAME.get(kind, ()), "displayName"):
        value: Any = raw
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, (str, int)) and str(value):
            name = str(value)
            break
    return GraphEvidence(kind, name, _opt(raw.get("verdict")), _opt(raw.get("remediationStatus")),
                         _strings(raw.get("roles")))  # fmt: skip


# --- time -------------------------------------------------------------------------------------


def parse_ticks(value: str) -> int:
    """A Graph timestamp (0-7 fractional digits, ``Z`` or an offset, B.5) -> exact 100 ns ticks."""
    found = _TIME.match(value.strip())
    if found is None:
        raise ValueError(f"not a Graph timestamp: {value!r}")
    whole, fraction, zone = found.groups()
    dt = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + int((fraction or "").ljust(7, "0"))


def format_ticks(ticks: int) -> str:
    """Ticks -> ``2026-02-25T16:29:33.1000000Z`` (an OData literal: unquoted, 7 digits)."""
    seconds, fraction = divmod(ticks, 10_000_000)
    return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:07d}Z"


def ticks_datetime(ticks: int) -> datetime:
    """Ticks -> an aware UTC datetime, truncated to microseconds."""
    return _EPOCH + timedelta(microseconds=ticks // 10)


def datetime_ticks(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("naive datetime in a Graph filter: give it a time zone (UTC)")
    delta = value.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def _time(value: Any) -> datetime | None:
    try:
        return ticks_datetime(parse_ticks(value)) if isinstance(value, str) else None
    except ValueError:
        return None


# --- small helpers ------------------------------------------------------------------------------


def _unparsable(incident: str, why: str) -> InvalidResponse:
    return InvalidResponse(SYSTEM, "GET", f"incident {incident}", 200, "InvalidIncident", why)


def list_items(body: Any) -> list[Any]:
    items = body.get("value") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidResponse(SYSTEM, "GET", "list", 200, "InvalidResponse", "no 'value' array")
    return items


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else _str(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()
