"""Custom mapping hooks: the two worked examples of the README, plus a few used only by tests.

Configure one with ``[agent] custom_mapping = tests.fixtures_hooks:label_to_group`` (any
importable ``package.module:function`` works the same way). See :mod:`agent.sync.hooks` for the
contract.
"""

from __future__ import annotations

from typing import Any

from agent.connectors.sentinel.models import SentinelIncident
from agent.connectors.servicenow.models import SnowRecord

# --- README example 1: a Sentinel label picks the ServiceNow assignment group ----------------

LABEL_TO_GROUP: dict[str, str] = {
    # Sentinel label -> sys_id of the sys_user_group (Table API references take the sys_id).
    "phishing": "0a52d3dcd7011200f2d224837e6103f2",
}


def label_to_group(
    direction: str,
    kind: str,
    incident: SentinelIncident,
    record: SnowRecord | None,
    changes: dict[str, Any],
) -> dict[str, Any]:
    """Route incidents by label: the first label with a group sets ``assignment_group``.

    Runs on create and whenever the Sentinel side changed, so a label added later re-routes
    the ticket (the agent sends nothing when the group is already right).
    """
    if direction != "to_snow":
        return changes
    for label in incident.labels:
        group = LABEL_TO_GROUP.get(label)
        if group:
            changes["assignment_group"] = group
            break
    return changes


label_to_group.fields = ("assignment_group",)  # type: ignore[attr-defined]  # read with every record


# --- README example 2: urgency follows the Sentinel severity ----------------------------------

URGENCY = {"High": "1", "Medium": "2", "Low": "3", "Informational": "3"}


def urgency_from_severity(
    direction: str,
    kind: str,
    incident: SentinelIncident,
    record: SnowRecord | None,
    changes: dict[str, Any],
) -> dict[str, Any]:
    """Write ``urgency`` next to impact, so ServiceNow's priority matrix sees both.

    On create always; on update only when the severity (here: impact) is being written.
    """
    if direction == "to_snow" and (kind == "create" or "impact" in changes):
        urgency = URGENCY.get(incident.severity)
        if urgency:
            changes["urgency"] = urgency
    return changes


urgency_from_severity.fields = ("urgency",)  # type: ignore[attr-defined]


# --- used by the tests only -------------------------------------------------------------------


def explode_on_boom(
    direction: str, kind: str, incident: SentinelIncident, record: SnowRecord | None, changes: dict[str, Any]
) -> dict[str, Any]:
    """Raises for incidents whose title contains "boom"; passes everything else through."""
    if "boom" in incident.title:
        raise RuntimeError("boom")
    return changes


def not_a_dict(
    direction: str, kind: str, incident: SentinelIncident, record: SnowRecord | None, changes: dict[str, Any]
) -> Any:
    """Returns a list for incidents titled "list"."""
    return ["oops"] if incident.title == "list" else changes


def keep_snow_impact(
    direction: str, kind: str, incident: SentinelIncident, record: SnowRecord | None, changes: dict[str, Any]
) -> dict[str, Any]:
    """Never changes the ServiceNow impact after creation (ServiceNow owns it)."""
    if direction == "to_snow" and kind == "update":
        changes.pop("impact", None)
    return changes


def tag_from_snow(
    direction: str, kind: str, incident: SentinelIncident, record: SnowRecord | None, changes: dict[str, Any]
) -> dict[str, Any]:
    """Adds the label "updated-from-snow" to Sentinel when the agent writes to it."""
    if direction == "to_sentinel" and changes and "updated-from-snow" not in incident.labels:
        changes["labels"] = [*incident.labels, "updated-from-snow"]
    return changes


def bad_property(
    direction: str, kind: str, incident: SentinelIncident, record: SnowRecord | None, changes: dict[str, Any]
) -> dict[str, Any]:
    """Asks for a Sentinel property that is not writable."""
    if direction == "to_sentinel" and changes:
        changes["incidentNumber"] = 7
    return changes


IMPORTED = True
