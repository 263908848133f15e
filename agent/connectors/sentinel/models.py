"""Sentinel's wire records: what :mod:`agent.connectors.sentinel.client` makes of the JSON, and
the full-object PUT body it sends back (REFERENCE A.4-A.6).

Parsing is tolerant (A.4: every enum is open): unknown values pass through as strings, missing
optional properties become ``None``/``""``/``0``; an incident that cannot be parsed at all is an
:class:`~agent.errors.InvalidResponse` naming it. Nothing outside this connector reads the JSON:
``raw`` is kept so a PUT never drops a property this module does not model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.errors import InvalidResponse

WRITABLE = (
    "title",
    "description",
    "severity",
    "status",
    "classification",
    "classificationReason",
    "classificationComment",
    "owner",
    "labels",
    "firstActivityTimeUtc",
    "lastActivityTimeUtc",
)
"""The incident properties a PUT carries (REFERENCE A.4); everything else is read-only."""

CLASSIFICATION_FIELDS = ("classification", "classificationReason", "classificationComment")
OPEN_STATUSES = ("New", "Active")
_NULL_OWNER: dict[str, None] = {
    "objectId": None,
    "email": None,
    "assignedTo": None,
    "userPrincipalName": None,
}

# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Owner:
    """``IncidentOwnerInfo``. All fields may be null (unassigned)."""

    object_id: str | None = None
    email: str | None = None
    assigned_to: str | None = None
    upn: str | None = None
    owner_type: str | None = None

    @property
    def key(self) -> str:
        """The owner in the terms the sync compares: lower-cased UPN, else e-mail, else ''."""
        return (self.upn or self.email or "").lower()


@dataclass(frozen=True, slots=True)
class SentinelIncident:
    """One Sentinel incident as returned by ``Incidents_Get`` / ``Incidents_List``."""

    name: str  # the incident GUID (the last segment of id)
    id: str  # the full ARM id
    etag: str  # as sent by the server (quoted form kept verbatim)
    title: str
    description: str
    severity: str  # open enum: High | Medium | Low | Informational | anything new
    status: str  # open enum: New | Active | Closed
    classification: str | None
    classification_reason: str | None
    classification_comment: str | None
    owner: Owner
    labels: tuple[str, ...]
    created: datetime
    modified: datetime
    number: int
    url: str
    provider_name: str | None
    provider_incident_id: str | None
    provider_incident_url: str | None
    alerts_count: int
    comments_count: int
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class SentinelComment:
    """``IncidentComment``."""

    name: str
    message: str
    created: datetime
    modified: datetime
    author_name: str | None
    author_email: str | None
    author_upn: str | None
    author_object_id: str | None


@dataclass(frozen=True, slots=True)
class SentinelAlert:
    """A ``SecurityAlert`` returned by ``POST .../alerts``."""

    name: str
    display_name: str
    severity: str
    time_generated: datetime | None
    product_name: str | None
    status: str | None


@dataclass(frozen=True, slots=True)
class SentinelEntity:
    """One entity returned by ``POST .../entities``."""

    name: str
    kind: str
    friendly_name: str


# --- time helpers ---------------------------------------------------------------------------


def parse_arm_time(value: str) -> datetime:
    """ARM ISO-8601 with up to 7 fractional digits and ``Z`` -> aware datetime (microseconds).

    Python 3.11's ``fromisoformat`` reads ARM's usual form itself (``Z``, and fractional digits
    past six truncated); anything else it refuses goes through the lenient path below."""
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return _parse_arm_time(value)
    if dt.tzinfo is UTC:
        return dt
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _parse_arm_time(value: str) -> datetime:
    v = value.strip()
    if v.endswith("Z") or v.endswith("z"):
        v = v[:-1] + "+00:00"
    if "." in v:
        head, rest = v.split(".", 1)
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        v = head + "." + (digits[:6].ljust(6, "0")) + rest[i:]
    dt = datetime.fromisoformat(v)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def format_arm_time(value: datetime) -> str:
    """Aware datetime -> ``2024-01-01T10:00:00.1234560Z`` (7 fractional digits, as ARM sends)."""
    v = value.astimezone(UTC)
    return v.strftime("%Y-%m-%dT%H:%M:%S.") + f"{v.microsecond:06d}0Z"


# --- the PUT body ---------------------------------------------------------------------------


def build_put_body(current: SentinelIncident, changes: Mapping[str, Any]) -> dict[str, Any]:
    """The PUT body for ``current`` plus ``changes`` (see :meth:`SentinelClient.update_incident`)."""
    unknown = [k for k in changes if k not in WRITABLE]
    if unknown:
        raise ValueError(f"not writable incident properties: {', '.join(sorted(unknown))}")
    raw_props = current.raw.get("properties") if isinstance(current.raw, dict) else None
    props: dict[str, Any] = raw_props if isinstance(raw_props, dict) else {}
    out: dict[str, Any] = {k: copy.deepcopy(props[k]) for k in WRITABLE if k in props}
    for key, fallback in (
        ("title", current.title),
        ("severity", current.severity),
        ("status", current.status),
    ):
        out.setdefault(key, fallback)  # required on PUT (A.5.1)
    out["owner"] = _owner_reference(props.get("owner"))
    out["labels"] = _labels(props.get("labels"), None)
    for key, value in changes.items():
        if key == "owner":
            out["owner"] = _owner_change(value)
        elif key == "labels":
            out["labels"] = _labels(props.get("labels"), value)
        else:
            out[key] = value
    if "status" in changes and changes["status"] in OPEN_STATUSES:
        # Re-opened: the classification belonged to the closure (A.6).
        for key in CLASSIFICATION_FIELDS:
            out[key] = None
    body: dict[str, Any] = {"properties": out}
    if current.etag:
        body["etag"] = current.etag
    return body


def _owner_reference(owner: Any) -> dict[str, Any]:
    """The current owner as a PUT sends it: by objectId, else by UPN (A.6), else as it was read.

    Automation can leave an owner with only ``email``/``assignedTo``; sending it as all-null
    (or leaving it out) unassigns the incident (REFERENCE E.4; demisto/content PR #28920), so
    such an owner goes back exactly as read. Only a real absence of an owner is sent as null.
    """
    if isinstance(owner, dict):
        if owner.get("objectId"):
            return {"objectId": owner["objectId"]}
        if owner.get("userPrincipalName"):
            return {"userPrincipalName": owner["userPrincipalName"], "objectId": None}
        if owner.get("email") or owner.get("assignedTo"):
            return copy.deepcopy(owner)
    return dict(_NULL_OWNER)


def _owner_change(value: Any) -> dict[str, Any]:
    if value is None:
        return dict(_NULL_OWNER)
    if isinstance(value, str):
        return {"userPrincipalName": value, "objectId": None}
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"owner change must be a dict, a UPN or None, not {type(value).__name__}")


def _labels(current: Any, names: Any) -> list[dict[str, str]]:
    """Labels to send: ``names`` as User labels, AutoAssigned ones kept as they were."""
    existing = [lbl for lbl in current if isinstance(lbl, dict)] if isinstance(current, list) else []
    auto = {
        str(lbl.get("labelName")): {"labelName": str(lbl["labelName"]), "labelType": "AutoAssigned"}
        for lbl in existing
        if lbl.get("labelType") == "AutoAssigned" and lbl.get("labelName")
    }
    if names is None:
        wanted = [str(lbl["labelName"]) for lbl in existing if lbl.get("labelName")]
    elif isinstance(names, (str, bytes)) or not all(isinstance(n, str) for n in names):
        raise TypeError("labels must be a list of label names")
    else:
        wanted = list(names)
    out: list[dict[str, str]] = []
    for name in dict.fromkeys([*wanted, *auto]):
        out.append(auto.get(name) or {"labelName": name, "labelType": "User"})
    return out


# --- parsing --------------------------------------------------------------------------------


def parse_incident(raw: Any) -> SentinelIncident:
    """An ARM incident -> :class:`SentinelIncident` (tolerant; PermanentError if hopeless)."""
    name = raw.get("name") if isinstance(raw, dict) else None
    label = name if isinstance(name, str) and name else "?"
    props = raw.get("properties") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not name or not isinstance(props, dict):
        raise _unparsable(label, "no name or properties")
    try:
        created = parse_arm_time(str(props["createdTimeUtc"]))
        modified = parse_arm_time(str(props.get("lastModifiedTimeUtc") or props["createdTimeUtc"]))
    except (KeyError, ValueError):
        raise _unparsable(label, "no valid createdTimeUtc/lastModifiedTimeUtc") from None
    data = props.get("additionalData") if isinstance(props.get("additionalData"), dict) else {}
    assert isinstance(data, dict)
    return SentinelIncident(
        name=name,
        id=_str(raw.get("id")),
        etag=_str(raw.get("etag")),
        title=_str(props.get("title")),
        description=_str(props.get("description")),
        severity=_str(props.get("severity")),
        status=_str(props.get("status")),
        classification=_opt(props.get("classification")),
        classification_reason=_opt(props.get("classificationReason")),
        classification_comment=_opt(props.get("classificationComment")),
        owner=_parse_owner(props.get("owner")),
        labels=tuple(
            str(lbl["labelName"])
            for lbl in props.get("labels") or ()
            if isinstance(lbl, dict) and isinstance(lbl.get("labelName"), str)
        ),
        created=created,
        modified=modified,
        number=_int(props.get("incidentNumber")),
        url=_str(props.get("incidentUrl")),
        provider_name=_opt(props.get("providerName")),
        provider_incident_id=_opt(props.get("providerIncidentId")),
        provider_incident_url=_opt(data.get("providerIncidentUrl")),
        alerts_count=_int(data.get("alertsCount")),
        comments_count=_int(data.get("commentsCount")),
        raw=copy.deepcopy(raw),
    )


def parse_comment(raw: Any) -> SentinelComment:
    """An ARM incident comment -> :class:`SentinelComment`."""
    name = raw.get("name") if isinstance(raw, dict) else None
    props = raw.get("properties") if isinstance(raw, dict) else None
    if not isinstance(name, str) or not isinstance(props, dict):
        raise InvalidResponse("sentinel", "GET", "comment", 200, "InvalidComment", "no name or properties")
    try:
        created = parse_arm_time(str(props["createdTimeUtc"]))
        modified = parse_arm_time(str(props.get("lastModifiedTimeUtc") or props["createdTimeUtc"]))
    except (KeyError, ValueError):
        raise InvalidResponse(
            "sentinel", "GET", "comment", 200, "InvalidComment", f"comment {name}: bad time"
        ) from None
    author = props.get("author") if isinstance(props.get("author"), dict) else {}
    assert isinstance(author, dict)
    return SentinelComment(
        name=name,
        message=_str(props.get("message")),
        created=created,
        modified=modified,
        author_name=_opt(author.get("name")),
        author_email=_opt(author.get("email")),
        author_upn=_opt(author.get("userPrincipalName")),
        author_object_id=_opt(author.get("objectId")),
    )


def parse_alert(raw: Any) -> SentinelAlert:
    """A ``SecurityAlert`` entity -> :class:`SentinelAlert`."""
    props = raw.get("properties") if isinstance(raw, dict) else None
    props = props if isinstance(props, dict) else {}
    generated = _opt(props.get("timeGenerated"))
    try:
        time_generated = parse_arm_time(generated) if generated else None
    except ValueError:
        time_generated = None
    return SentinelAlert(
        name=_str(raw.get("name")) if isinstance(raw, dict) else "",
        display_name=_str(props.get("alertDisplayName") or props.get("friendlyName")),
        severity=_str(props.get("severity")),
        time_generated=time_generated,
        product_name=_opt(props.get("productName")),
        status=_opt(props.get("status")),
    )


def parse_entity(raw: Any) -> SentinelEntity:
    """One entity of ``POST .../entities`` -> :class:`SentinelEntity`."""
    record = raw if isinstance(raw, dict) else {}
    props = record.get("properties") if isinstance(record.get("properties"), dict) else {}
    assert isinstance(props, dict)
    return SentinelEntity(
        name=_str(record.get("name")),
        kind=_str(record.get("kind")),
        friendly_name=_str(props.get("friendlyName")),
    )


def _parse_owner(owner: Any) -> Owner:
    if not isinstance(owner, dict):
        return Owner()
    return Owner(
        object_id=_opt(owner.get("objectId")),
        email=_opt(owner.get("email")),
        assigned_to=_opt(owner.get("assignedTo")),
        upn=_opt(owner.get("userPrincipalName")),
        owner_type=_opt(owner.get("ownerType")),
    )


def _unparsable(name: str, why: str) -> InvalidResponse:
    return InvalidResponse("sentinel", "GET", f"incident {name}", 200, "InvalidIncident", why)


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else _str(value)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
