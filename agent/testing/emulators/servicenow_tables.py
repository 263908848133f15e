"""The tables of the emulated ServiceNow instance: columns, defaults, seeded choices and the
state model of each task table (REFERENCE C.4, C.8, E.5, E.9)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.testing.emulators.encoded_query import DATETIME, INTEGER, STRING

BOOLEAN = "boolean"
REFERENCE = "reference"
JOURNAL = "journal"


@dataclass(frozen=True, slots=True)
class Column:
    """One field of an emulated table."""

    kind: str = STRING  # string | integer | datetime | boolean | reference | journal
    reference: str = ""  # the referenced table, for kind == reference
    choice: bool = False  # the display value is a sys_choice label
    computed: bool = False  # set by business rules; ignored in writes


def _system() -> dict[str, Column]:
    return {
        "sys_id": Column(),
        "sys_created_on": Column(DATETIME),
        "sys_created_by": Column(),
        "sys_updated_on": Column(DATETIME),
        "sys_updated_by": Column(),
        "sys_mod_count": Column(INTEGER),
    }


def _user_ref() -> Column:
    return Column(REFERENCE, "sys_user")


SCHEMAS: dict[str, dict[str, Column]] = {
    "incident": {
        **_system(),
        "number": Column(),
        "short_description": Column(),
        "description": Column(),
        "state": Column(INTEGER, choice=True),
        "incident_state": Column(INTEGER, choice=True, computed=True),
        "impact": Column(INTEGER, choice=True),
        "urgency": Column(INTEGER, choice=True),
        "priority": Column(INTEGER, choice=True, computed=True),
        "severity": Column(INTEGER, choice=True),
        "hold_reason": Column(INTEGER, choice=True),
        "category": Column(),
        "subcategory": Column(),
        "contact_type": Column(),
        "caller_id": _user_ref(),
        "opened_by": _user_ref(),
        "assigned_to": _user_ref(),
        "resolved_by": _user_ref(),
        "closed_by": _user_ref(),
        "assignment_group": Column(REFERENCE, "sys_user_group"),
        "company": Column(REFERENCE, "core_company"),
        "parent_incident": Column(REFERENCE, "incident"),
        "correlation_id": Column(),
        "correlation_display": Column(),
        "close_code": Column(choice=True),
        "close_notes": Column(),
        "opened_at": Column(DATETIME),
        "resolved_at": Column(DATETIME),
        "closed_at": Column(DATETIME),
        "active": Column(BOOLEAN, computed=True),
        "comments": Column(JOURNAL),
        "work_notes": Column(JOURNAL),
        "comments_and_work_notes": Column(JOURNAL, computed=True),
        "sys_domain": Column(),
        "sys_class_name": Column(),
    },
    # REFERENCE E.5: Security Incident Response, a task table of its own (prefix SIR).
    "sn_si_incident": {
        **_system(),
        "number": Column(),
        "short_description": Column(),
        "description": Column(),
        "state": Column(INTEGER, choice=True),
        "substate": Column(choice=True),
        "severity": Column(INTEGER, choice=True),
        "priority": Column(INTEGER, choice=True),
        "impact": Column(INTEGER, choice=True),
        "urgency": Column(INTEGER, choice=True),
        "category": Column(),
        "subcategory": Column(),
        "contact_type": Column(),
        "caller": _user_ref(),
        "opened_for": _user_ref(),
        "opened_by": _user_ref(),
        "assigned_to": _user_ref(),
        "closed_by": _user_ref(),
        "assignment_group": Column(REFERENCE, "sys_user_group"),
        "company": Column(REFERENCE, "core_company"),
        "parent": Column(REFERENCE, "sn_si_incident"),
        "correlation_id": Column(),
        "correlation_display": Column(),
        "close_code": Column(choice=True),
        "close_notes": Column(),
        "opened_at": Column(DATETIME),
        "closed_at": Column(DATETIME),
        "active": Column(BOOLEAN, computed=True),
        "comments": Column(JOURNAL),
        "work_notes": Column(JOURNAL),
        "comments_and_work_notes": Column(JOURNAL, computed=True),
        "sys_domain": Column(),
        "sys_class_name": Column(),
    },
    "sys_journal_field": {
        "sys_id": Column(),
        "element": Column(),
        "element_id": Column(),
        "name": Column(),
        "value": Column(),
        "sys_created_on": Column(DATETIME),
        "sys_created_by": Column(),
    },
    "sys_user": {
        **_system(),
        "user_name": Column(),
        "email": Column(),
        "name": Column(),
        "first_name": Column(),
        "last_name": Column(),
        "active": Column(BOOLEAN),
        "sys_domain": Column(),
    },
    "sys_user_group": {
        **_system(),
        "name": Column(),
        "description": Column(),
        "email": Column(),
        "active": Column(BOOLEAN),
        "sys_domain": Column(),
    },
    # With domain separation, sys_domain holds the sys_id of the record's domain ("global" for
    # the global domain) on these tables too (Installed with domain separation, SN-DOCS).
    "core_company": {
        **_system(),
        "name": Column(),
        "sys_domain": Column(),
    },
    "sys_choice": {
        **_system(),
        "name": Column(),
        "element": Column(),
        "value": Column(),
        "label": Column(),
        "sequence": Column(INTEGER),
        "language": Column(),
        "inactive": Column(BOOLEAN),
    },
}

DISPLAY_FIELD = {
    "incident": "number",
    "sn_si_incident": "number",
    "sys_user": "name",
    "sys_user_group": "name",
    "core_company": "name",
    "sys_choice": "label",
}
DEFAULTS: dict[str, dict[str, str]] = {
    "incident": {
        "state": "1",
        "impact": "3",
        "urgency": "3",
        "severity": "3",
        "sys_domain": "global",
        "sys_class_name": "incident",
    },
    "sn_si_incident": {
        "state": "10",
        "severity": "3",
        "priority": "4",
        "impact": "3",
        "urgency": "3",
        "sys_domain": "global",
        "sys_class_name": "sn_si_incident",
    },
    "sys_user": {"active": "true", "sys_domain": "global"},
    "sys_user_group": {"active": "true", "sys_domain": "global"},
    "core_company": {"sys_domain": "global"},
    "sys_choice": {"language": "en", "inactive": "false"},
}
JOURNAL_LABELS = {"comments": "Additional comments", "work_notes": "Work notes"}

# REFERENCE C.8: priority lookup from impact x urgency.
PRIORITY = {
    ("1", "1"): "1", ("1", "2"): "2", ("1", "3"): "3",
    ("2", "1"): "2", ("2", "2"): "3", ("2", "3"): "4",
    ("3", "1"): "3", ("3", "2"): "4", ("3", "3"): "5",
}  # fmt: skip

_STATES = [
    ("1", "New"),
    ("2", "In Progress"),
    ("3", "On Hold"),
    ("6", "Resolved"),
    ("7", "Closed"),
    ("8", "Canceled"),
]
_LEVELS = [("1", "1 - High"), ("2", "2 - Medium"), ("3", "3 - Low")]
CHOICES: dict[str, list[tuple[str, str]]] = {
    "state": _STATES,
    "incident_state": _STATES,
    "impact": _LEVELS,
    "urgency": _LEVELS,
    "severity": _LEVELS,
    "priority": [
        ("1", "1 - Critical"),
        ("2", "2 - High"),
        ("3", "3 - Moderate"),
        ("4", "4 - Low"),
        ("5", "5 - Planning"),
    ],
    "hold_reason": [
        ("1", "Awaiting Caller"),
        ("3", "Awaiting Problem"),
        ("4", "Awaiting Vendor"),
        ("5", "Awaiting Change"),
    ],
    "close_code": [
        (v, v)
        for v in (
            "Duplicate",
            "Known error",
            "No resolution provided",
            "Resolved by caller",
            "Resolved by change",
            "Resolved by problem",
            "Resolved by request",
            "Solution provided",
            "Workaround provided",
        )
    ],
}
"""Seeded ``sys_choice`` rows for the incident table (REFERENCE C.8)."""

_SIR_STATES = [
    ("10", "Draft"),
    ("16", "Analysis"),
    ("18", "Contain"),
    ("19", "Eradicate"),
    ("20", "Recover"),
    ("100", "Review"),
    ("3", "Closed"),
    ("7", "Cancelled"),
]
SIR_CHOICES: dict[str, list[tuple[str, str]]] = {
    "state": _SIR_STATES,
    "severity": _LEVELS,
    "impact": _LEVELS,
    "urgency": _LEVELS,
    "priority": [
        ("1", "1 - Critical"),
        ("2", "2 - High"),
        ("3", "3 - Moderate"),
        ("4", "4 - Low"),
        ("5", "5 - Planning"),
    ],
    "close_code": [
        (v, v)
        for v in (
            "Investigation completed",
            "Threat mitigated",
            "Patched vulnerability",
            "Invalid vulnerability",
            "Not resolved",
            "False positive",
        )
    ],
}
"""Seeded ``sys_choice`` rows for ``sn_si_incident`` (REFERENCE E.5)."""
TABLE_CHOICES: dict[str, dict[str, list[tuple[str, str]]]] = {
    "incident": CHOICES,
    "sn_si_incident": SIR_CHOICES,
}


@dataclass(frozen=True, slots=True)
class TaskRules:
    """The state model of a task table (what the platform's business rules do with its states)."""

    prefix: str  # of the number
    resolved: tuple[str, ...]  # states that stamp resolved_at / resolved_by
    closed: tuple[str, ...]  # states that stamp closed_at / closed_by
    inactive: tuple[str, ...]  # active = false
    policy: tuple[str, ...]  # the data policy: close code and close notes are mandatory
    policy_labels: Mapping[str, str]  # the fields the data policy names, by label (REFERENCE C.5)
    read_only: tuple[str, ...]  # final: an update by a user without admin is refused (E.9)


TASKS: dict[str, TaskRules] = {
    # REFERENCE C.8, E.9: 6 Resolved, 7 Closed, 8 Canceled.
    "incident": TaskRules(
        "INC",
        resolved=("6", "7"),
        closed=("7",),
        inactive=("7", "8"),
        policy=("6", "7"),
        policy_labels={"close_code": "Resolution code", "close_notes": "Close notes"},
        read_only=("7", "8"),
    ),
    # REFERENCE E.5: 3 Closed (the data policy applies), 7 Cancelled.
    "sn_si_incident": TaskRules(
        "SIR",
        resolved=(),
        closed=("3",),
        inactive=("3", "7"),
        policy=("3",),
        policy_labels={"close_code": "Close code", "close_notes": "Close notes"},
        read_only=("3", "7"),
    ),
}
