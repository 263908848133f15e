"""Sentinel's wire records: what :mod:`agent.connectors.sentinel.client` makes of the JSON.

The client turns wire JSON into these records and nothing else; the engine and the planner never
look at raw JSON except through ``raw``, which the client needs to build a full-object PUT without
dropping properties it does not model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
    """ARM ISO-8601 with up to 7 fractional digits and ``Z`` -> aware datetime (microseconds)."""
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
