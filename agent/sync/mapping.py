"""Translation between Sentinel's and ServiceNow's terms, kept pure (no I/O).

The planner (:mod:`agent.core.merge`) compares each side in its own terms. This module
extracts those terms from the typed records, builds the planner's translation tables from
the configured maps (plus the owner look-ups the engine resolved for this batch), and turns a
plan's field changes back into the concrete write for each side, including what closing or
reopening requires on that side:

- ServiceNow resolved/closed needs the close code and close notes **in the same PATCH** as the
  state (REFERENCE C.8, the data policy); which states and fields those are comes from the
  instance's table profile (:mod:`agent.connectors.servicenow.profiles`: ITSM ``incident``, SIR
  ``sn_si_incident``, or custom), never from ITSM's numbers (E.5).
- Sentinel Closed needs a classification, and a determined classification needs a reason
  (REFERENCE A.6); reopening clears classification, reason and comment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agent.connectors.sentinel.models import SentinelIncident
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.profiles import ITSM, TableProfile
from agent.core.merge import Plan, Policy, SideState


@dataclass(frozen=True, slots=True)
class Maps:
    """The configured mapping tables and the table profile, in the shape the engine needs them."""

    severity_to_snow: Mapping[str, str]
    severity_to_sentinel: Mapping[str, str]
    status_to_snow: Mapping[str, str]
    status_to_sentinel: Mapping[str, str]
    closure_to_snow: Mapping[str, str]
    closure_to_sentinel: Mapping[str, tuple[str, str | None]]
    severity_field: str = "impact"
    status_field: str = "state"
    profile: TableProfile = ITSM

    def is_finished(self, state: str) -> bool:
        """The ticket's work is over: resolved, closed or cancelled (per the table profile)."""
        return self.profile.is_finished(state)

    def is_read_only(self, state: str) -> bool:
        """Closed or cancelled: the integration user can no longer change it (REFERENCE E.9)."""
        return self.profile.is_read_only(state)

    @property
    def close_code_field(self) -> str:
        return self.profile.close_code_field

    @property
    def close_notes_field(self) -> str:
        return self.profile.close_notes_field


def sentinel_side(incident: SentinelIncident) -> SideState:
    return SideState(
        values={"severity": incident.severity, "status": incident.status, "owner": incident.owner.key},
        modified=incident.modified,
    )


def snow_side(record: SnowRecord, maps: Maps) -> SideState:
    return SideState(
        values={
            "severity": record.get(maps.severity_field),
            "status": record.get(maps.status_field),
            "owner": record.get("assigned_to"),
        },
        modified=record.updated_on,
    )


def policy(
    maps: Maps, owner_to_snow: Mapping[str, str], owner_to_sentinel: Mapping[str, str], conflict: str
) -> Policy:
    """Planner tables. ``owner_*`` hold only the look-ups that resolved; "" (unassigned) always maps."""
    return Policy(
        to_snow={
            "severity": maps.severity_to_snow,
            "status": maps.status_to_snow,
            "owner": {"": "", **owner_to_snow},
        },
        to_sentinel={
            "severity": maps.severity_to_sentinel,
            "status": maps.status_to_sentinel,
            "owner": {"": "", **owner_to_sentinel},
        },
        conflict=conflict,
    )


def absorb_autoclose(
    base: Mapping[str, tuple[str, str]], record: SnowRecord, maps: Maps
) -> Mapping[str, tuple[str, str]]:
    """The platform closing a resolved ticket by itself (6 -> 7 after a day, REFERENCE E.9) is no
    change of meaning: the base takes the closed state, so the planner sees nothing changed on
    the ServiceNow side (and can never re-close a Sentinel incident an analyst reopened)."""
    if "status" not in base:
        return base
    agreed_sentinel, agreed_snow = base["status"]
    now = record.get(maps.status_field)
    if (
        now != agreed_snow
        and agreed_snow in maps.profile.resolved_states
        and now in maps.profile.closed_states
        and maps.status_to_sentinel.get(now) == maps.status_to_sentinel.get(agreed_snow)
    ):
        return {**base, "status": (agreed_sentinel, now)}
    return base


def reopens(to_snow: Mapping[str, str], maps: Maps) -> bool:
    """Whether a planned ServiceNow write moves the ticket out of its finished states."""
    return "status" in to_snow and not maps.is_finished(to_snow["status"])


def given_up(p: Plan, record: SnowRecord, maps: Maps) -> Plan:
    """``p`` without its ServiceNow writes, for a ticket that can no longer be changed (E.9): the
    base takes the ticket's values as they are, so the same write is not planned again."""
    current = snow_side(record, maps).values
    base = dict(p.base)
    for name in p.to_snow:
        agreed_sentinel = base[name][0] if name in base else ""
        base[name] = (agreed_sentinel, current.get(name, ""))
    return replace(p, to_snow={}, base=base)


def close_notes_from_sentinel(incident: SentinelIncident) -> str:
    """Readable close notes from Sentinel's classification, reason and comment (never empty)."""
    cls = incident.classification or "Undetermined"
    text = f"Closed in Microsoft Sentinel as {cls}"
    if incident.classification_reason:
        text += f" ({incident.classification_reason})"
    if incident.classification_comment:
        text += f": {incident.classification_comment}"
    return text


def snow_write(
    changes: Mapping[str, str], incident: SentinelIncident, record: SnowRecord | None, maps: Maps
) -> dict[str, str]:
    """Field changes in ServiceNow terms -> the PATCH body, with what closing/reopening needs."""
    body: dict[str, str] = {}
    if "severity" in changes:
        body[maps.severity_field] = changes["severity"]
    if "owner" in changes:
        body["assigned_to"] = changes["owner"]
    if "status" in changes:
        new_state = changes["status"]
        body[maps.status_field] = new_state
        was_closed = record is not None and maps.is_finished(record.get(maps.status_field))
        if maps.is_finished(new_state):
            cls = incident.classification or "Undetermined"
            code = maps.closure_to_snow.get(cls) or maps.closure_to_snow.get("Undetermined", "")
            body[maps.close_code_field] = code
            body[maps.close_notes_field] = close_notes_from_sentinel(incident)
        elif was_closed:
            body[maps.close_code_field] = ""
            body[maps.close_notes_field] = ""
    return body


def sentinel_closure(record: SnowRecord, maps: Maps) -> tuple[str, str | None, str]:
    """ServiceNow close data -> (classification, reason, comment) Sentinel accepts."""
    code = record.get(maps.close_code_field)
    cls, reason = (
        maps.closure_to_sentinel.get(code) or maps.closure_to_sentinel.get("*") or ("Undetermined", None)
    )
    notes = record.get(maps.close_notes_field) or f"Closed in ServiceNow {record.number}"
    return cls, reason, notes


def sentinel_write(changes: Mapping[str, str], record: SnowRecord, maps: Maps) -> dict[str, Any]:
    """Field changes in Sentinel terms -> the property changes for a full-object PUT."""
    body: dict[str, Any] = {}
    if "severity" in changes:
        body["severity"] = changes["severity"]
    if "owner" in changes:
        upn = changes["owner"]
        body["owner"] = {"userPrincipalName": upn, "objectId": None} if upn else None
    if "status" in changes:
        status = changes["status"]
        body["status"] = status
        if status == "Closed":
            cls, reason, comment = sentinel_closure(record, maps)
            body["classification"] = cls
            body["classificationReason"] = reason
            body["classificationComment"] = comment
        else:
            body["classification"] = None
            body["classificationReason"] = None
            body["classificationComment"] = None
    return body


def description_for_snow(incident: SentinelIncident, portal_url: str, defender_url: str | None) -> str:
    """The ServiceNow description: Sentinel's description plus links to the incident."""
    parts = [incident.description.strip()] if incident.description and incident.description.strip() else []
    parts.append(f"Microsoft Sentinel incident #{incident.number}: {portal_url}")
    if defender_url:
        parts.append(f"Microsoft Defender portal: {defender_url}")
    return "\n\n".join(parts)
