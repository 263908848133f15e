"""A Defender XDR incident in the sync's terms, and the sync's terms back in Graph's (pure).

The value maps of the ini (``[severity_to_servicenow]``, ``[status_to_sentinel]``, ...) are written
in Sentinel's vocabulary. A Graph incident is read *in that vocabulary*, so one ini serves both
sources (GRAPH.md H.4 names the same correspondences for the Defender <-> Sentinel sync):

=====================================  ==========================================================
Graph                                  Sentinel vocabulary
=====================================  ==========================================================
severity informational/low/medium/high Informational/Low/Medium/High (``unknown`` passes as is)
status ``active``                      New
status ``inProgress``                  Active
status ``awaitingAction``              Active (Defender Experts wait for the customer, B.2)
status ``resolved``                    Closed
status ``redirected``                  Closed, merged away (never written, D.3, H.3)
classification ``truePositive``        TruePositive (any determination)
classification ``falsePositive``       FalsePositive (any determination)
``informationalExpectedActivity``      BenignPositive
``unknown`` / none                     Undetermined (also an auto-resolved incident, B.5)
=====================================  ==========================================================

Any other value (the enums are evolvable, B.2) passes through unchanged, so the maps report it
as unmapped instead of guessing. Writing goes the other way: New -> ``active``, Active ->
``inProgress``, Closed -> ``resolved`` with classification, determination and resolving comment
in the same PATCH (D.3). A close code maps through ``[closure_to_defender]`` (Graph terms, the
pairs of B.3) when the ini has one, else through ``[closure_to_sentinel]`` and the table above,
with determination ``other`` (``unknown`` for Undetermined). The owner is ``assignedTo``, free
text, conventionally a UPN (D.2): compared lower-cased, written as the UPN.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from agent.connectors.graph.models import PAIRS, GraphIncident, valid_pair

SOURCE_TITLE = "Microsoft Defender XDR"

SEVERITY_VIEW: Mapping[str, str] = {
    "informational": "Informational",
    "low": "Low",
    "medium": "Medium",
    "high": "High",
}
STATUS_VIEW: Mapping[str, str] = {
    "active": "New",
    "inProgress": "Active",
    "awaitingAction": "Active",
    "resolved": "Closed",
    "redirected": "Closed",
}
CLASSIFICATION_VIEW: Mapping[str, str] = {
    "truePositive": "TruePositive",
    "falsePositive": "FalsePositive",
    "informationalExpectedActivity": "BenignPositive",
    "unknown": "Undetermined",
}
"""Graph classification -> Sentinel classification (H.4; the determination does not matter)."""
SEVERITY_WIRE: Mapping[str, str] = {v: k for k, v in SEVERITY_VIEW.items()}
STATUS_WIRE: Mapping[str, str] = {"New": "active", "Active": "inProgress", "Closed": "resolved"}
CLASSIFICATION_WIRE: Mapping[str, str] = {v: k for k, v in CLASSIFICATION_VIEW.items()}
"""Sentinel classification -> Graph classification (H.4, the way back)."""
UNDETERMINED = "Undetermined"


@dataclass(frozen=True, slots=True)
class GraphClosure:
    """How a Defender incident is resolved: classification, determination (a pair of B.3) and
    the resolving comment."""

    classification: str
    determination: str
    comment: str


# --- Graph -> the sync's terms ----------------------------------------------------------------


def severity_view(value: str) -> str:
    """Graph severity in Sentinel's vocabulary; an unknown value passes as is."""
    return SEVERITY_VIEW.get(value, value)


def status_view(value: str) -> str:
    """Graph status in Sentinel's vocabulary; an unknown value passes as is."""
    return STATUS_VIEW.get(value, value)


def classification_view(classification: str | None) -> str:
    """The Sentinel classification a Graph classification closes as (H.4): the key of
    ``[closure_to_servicenow]``. Not set, unknown or a value this table lacks: Undetermined."""
    return CLASSIFICATION_VIEW.get(classification or "unknown", UNDETERMINED)


def owner_key(assigned_to: str | None) -> str:
    """The owner as the sync compares it: ``assignedTo`` trimmed and lower-cased ("" for none)."""
    return (assigned_to or "").strip().lower()


def values_view(incident: GraphIncident) -> dict[str, str]:
    """The synced fields of ``incident`` in Sentinel's vocabulary (what the planner compares)."""
    return {
        "severity": severity_view(incident.severity),
        "status": status_view(incident.status),
        "owner": owner_key(incident.assigned_to),
    }


def close_notes(incident: GraphIncident) -> str:
    """What a person reads as the ticket's close notes when Defender resolved the incident."""
    if incident.redirected:
        target = incident.redirect_incident_id
        return f"Merged in {SOURCE_TITLE} into incident {target}" if target else f"Merged in {SOURCE_TITLE}"
    how = incident.classification or "unknown"
    if how == "unknown":
        text = f"Resolved in {SOURCE_TITLE} (classification not set)"
    else:
        text = f"Resolved in {SOURCE_TITLE} as {how}"
        if incident.determination and incident.determination != "unknown":
            text += f"/{incident.determination}"
    comment = (incident.resolving_comment or "").strip()
    return f"{text}: {comment}" if comment else text


# --- the sync's terms -> Graph ------------------------------------------------------------------


def severity_wire(value: str) -> str | None:
    """A Sentinel-vocabulary severity as Graph writes it (None: Graph has no such value)."""
    return SEVERITY_WIRE.get(value)


def status_wire(value: str) -> str | None:
    """A Sentinel-vocabulary status as Graph writes it; never ``redirected`` (D.3)."""
    return STATUS_WIRE.get(value)


def closure_for(
    close_code: str, notes: str, to_defender: Mapping[str, tuple[str, str]], classification: str
) -> GraphClosure:
    """The Graph closure of a ticket's close code.

    ``to_defender`` (``[closure_to_defender]``, Graph terms) wins, its ``*`` row included; else
    ``classification`` (the Sentinel classification ``[closure_to_sentinel]`` gives the code) goes
    through H.4 with determination ``other`` (``unknown`` for Undetermined, the only pair Not set
    has, B.3).
    """
    pair = to_defender.get(close_code) or to_defender.get("*")
    if pair is None:
        graph_class = CLASSIFICATION_WIRE.get(classification, "unknown")
        pair = (graph_class, "unknown" if graph_class == "unknown" else "other")
    return GraphClosure(pair[0], pair[1], notes)


def closure_body(closure: GraphClosure) -> dict[str, Any]:
    """The properties that resolve an incident, all in one PATCH (D.3)."""
    if not valid_pair(closure.classification, closure.determination):
        raise ValueError(
            f"determination {closure.determination!r} does not go with classification "
            f"{closure.classification!r} (GRAPH.md B.3)"
        )
    return {
        "status": "resolved",
        "classification": closure.classification,
        "determination": closure.determination,
        "resolvingComment": closure.comment or None,
    }


def parse_defender_closure(text: str) -> tuple[str, str]:
    """``classification/determination`` in Graph terms, one of the pairs of B.3 (a config value).

    Graph takes enum input case-insensitively (B.2); the value is returned as Graph spells it.
    """
    classification, _, determination = (part.strip() for part in text.partition("/"))
    spelled = {c.lower(): c for c in PAIRS}
    graph_class = spelled.get(classification.lower())
    if graph_class is None:
        raise ValueError(f"{classification!r} is not a Graph classification ({', '.join(PAIRS)})")
    allowed = {d.lower(): d for d in PAIRS[graph_class]}
    if not determination:
        if graph_class == "unknown":
            return graph_class, "unknown"
        raise ValueError(f"{graph_class} needs a determination: one of {', '.join(sorted(allowed.values()))}")
    graph_det = allowed.get(determination.lower())
    if graph_det is None:
        raise ValueError(
            f"{determination!r} does not go with {graph_class} (GRAPH.md B.3): use one of "
            f"{', '.join(sorted(allowed.values()))}"
        )
    return graph_class, graph_det
