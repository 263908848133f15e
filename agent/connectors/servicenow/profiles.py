"""Table profiles: what a ServiceNow incident table means by "resolved", "closed" and "cancelled".

Nothing about closing a ticket is the same on every table (REFERENCE C.8, E.5). A profile names
the states and fields of one kind of table, and the maps used when the ini has no section of its
own:

========  ==================  ========  ======  =========  ==========================  ==========
profile   table               resolved  closed  cancelled  close fields                caller
========  ==================  ========  ======  =========  ==========================  ==========
itsm      ``incident``        6         7       8          close_code, close_notes     caller_id
sir       ``sn_si_incident``  (none)    3       7          close_code, close_notes     caller
custom    any other table     from the ``[servicenow]`` keys; the status maps must be written
========  ==================  ========  ======  =========  ==========================  ==========

*Resolved* is a finished state the ticket can still be changed in; *closed* and *cancelled* are
final and read-only for the integration user (E.9), so reopening one takes a follow-up ticket.
The data-policy rule: moving a ticket into a finished state needs the close code and close notes
**in the same write** (C.8 for ITSM; SIR enforces it on Closed, E.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

Closure = tuple[str, str | None]
"""A Sentinel classification and its reason."""


@dataclass(frozen=True)
class TableProfile:
    """States and fields of one incident table, and the maps used when the ini has none."""

    name: str
    resolved_states: tuple[str, ...]
    closed_states: tuple[str, ...]
    cancelled_states: tuple[str, ...]
    close_code_field: str = "close_code"
    close_notes_field: str = "close_notes"
    caller_field: str = "caller_id"
    follow_up_field: str = ""  # a reference to the closed ticket a follow-up continues ("": none)
    severity_field: str = "impact"
    severity_to_servicenow: Mapping[str, str] = field(default_factory=dict)
    severity_to_sentinel: Mapping[str, str] = field(default_factory=dict)
    status_to_servicenow: Mapping[str, str] = field(default_factory=dict)
    status_to_sentinel: Mapping[str, str] = field(default_factory=dict)
    closure_to_servicenow: Mapping[str, str] = field(default_factory=dict)
    closure_to_sentinel: Mapping[str, Closure] = field(default_factory=dict)

    @property
    def finished_states(self) -> frozenset[str]:
        """Resolved, closed or cancelled: the ticket's work is over."""
        return frozenset((*self.resolved_states, *self.closed_states, *self.cancelled_states))

    @property
    def closing_states(self) -> frozenset[str]:
        """The states a Sentinel closure may write: resolved or closed (never cancelled)."""
        return frozenset((*self.resolved_states, *self.closed_states))

    @property
    def read_only_states(self) -> frozenset[str]:
        """Final states: the integration user can no longer change the ticket (REFERENCE E.9)."""
        return frozenset((*self.closed_states, *self.cancelled_states))

    def is_finished(self, state: str) -> bool:
        return state in self.finished_states

    def is_read_only(self, state: str) -> bool:
        return state in self.read_only_states

    def describe_states(self) -> str:
        """``6 (resolved), 7 (closed), 8 (cancelled)`` for messages."""
        parts = [f"{s} (resolved)" for s in self.resolved_states]
        parts += [f"{s} (closed)" for s in self.closed_states]
        parts += [f"{s} (cancelled)" for s in self.cancelled_states]
        return ", ".join(parts) or "none"


_LEVELS_TO_SERVICENOW = {"High": "1", "Medium": "2", "Low": "3", "Informational": "3"}
_LEVELS_TO_SENTINEL = {"1": "High", "2": "Medium", "3": "Low"}

ITSM = TableProfile(
    name="itsm",
    # REFERENCE C.8: 1 New, 2 In Progress, 3 On Hold, 6 Resolved, 7 Closed, 8 Canceled.
    resolved_states=("6",),
    closed_states=("7",),
    cancelled_states=("8",),
    follow_up_field="parent_incident",
    severity_field="impact",
    severity_to_servicenow=_LEVELS_TO_SERVICENOW,
    severity_to_sentinel=_LEVELS_TO_SENTINEL,
    status_to_servicenow={"New": "1", "Active": "2", "Closed": "6"},
    status_to_sentinel={
        "1": "New",
        "2": "Active",
        "3": "Active",
        "6": "Closed",
        "7": "Closed",
        "8": "Closed",
    },
    closure_to_servicenow={
        "Undetermined": "No resolution provided",
        "TruePositive": "Solution provided",
        "BenignPositive": "Resolved by caller",
        "FalsePositive": "No resolution provided",
    },
    closure_to_sentinel={
        "Solution provided": ("TruePositive", "SuspiciousActivity"),
        "Workaround provided": ("TruePositive", "SuspiciousActivity"),
        "Resolved by problem": ("TruePositive", "SuspiciousActivity"),
        "Resolved by caller": ("BenignPositive", "SuspiciousButExpected"),
        "Resolved by change": ("BenignPositive", "SuspiciousButExpected"),
        "Resolved by request": ("BenignPositive", "SuspiciousButExpected"),
        "Known error": ("BenignPositive", "SuspiciousButExpected"),
        "User error": ("BenignPositive", "SuspiciousButExpected"),
        "Duplicate": ("Undetermined", None),
        "No resolution provided": ("Undetermined", None),
        "*": ("Undetermined", None),
    },
)

SIR = TableProfile(
    name="sir",
    # REFERENCE E.5: 10 Draft, 16 Analysis, 18 Contain, 19 Eradicate, 20 Recover, 100 Review,
    # 3 Closed, 7 Cancelled; severity 1 High, 2 Medium, 3 Low.
    resolved_states=(),
    closed_states=("3",),
    cancelled_states=("7",),
    caller_field="caller",
    severity_field="severity",
    severity_to_servicenow=_LEVELS_TO_SERVICENOW,
    severity_to_sentinel=_LEVELS_TO_SENTINEL,
    status_to_servicenow={"New": "10", "Active": "16", "Closed": "3"},
    status_to_sentinel={
        "10": "New",
        "16": "Active",
        "18": "Active",
        "19": "Active",
        "20": "Active",
        "100": "Active",
        "3": "Closed",
        "7": "Closed",
    },
    closure_to_servicenow={
        "Undetermined": "Investigation completed",
        "TruePositive": "Threat mitigated",
        "BenignPositive": "Investigation completed",
        "FalsePositive": "False positive",
    },
    closure_to_sentinel={
        "Threat mitigated": ("TruePositive", "SuspiciousActivity"),
        "Patched vulnerability": ("TruePositive", "SuspiciousActivity"),
        "False positive": ("FalsePositive", "IncorrectAlertLogic"),
        "Invalid vulnerability": ("FalsePositive", "InaccurateData"),
        "Investigation completed": ("Undetermined", None),
        "Not resolved": ("Undetermined", None),
        "*": ("Undetermined", None),
    },
)

CUSTOM = TableProfile(
    name="custom",
    resolved_states=(),
    closed_states=(),
    cancelled_states=(),
    severity_to_servicenow=_LEVELS_TO_SERVICENOW,
    severity_to_sentinel=_LEVELS_TO_SENTINEL,
    closure_to_sentinel={"*": ("Undetermined", None)},
)
"""A table of its own: states and (when they differ) fields come from the ``[servicenow]`` keys,
and ``[status_to_servicenow]``, ``[status_to_sentinel]`` and ``[closure_to_servicenow]`` must be
written (there is nothing to default them from)."""

PROFILES: Mapping[str, TableProfile] = {p.name: p for p in (ITSM, SIR, CUSTOM)}
TABLE_PROFILES: Mapping[str, str] = {"incident": "itsm", "sn_si_incident": "sir"}
"""The profile a table gets when ``table_profile`` is not set (any other table: ``custom``)."""
