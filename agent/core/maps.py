"""The configured value maps between the two sides' terms, and what the sync derives from them.

Pure: the tables come from the configuration (``[severity_to_servicenow]`` and friends, per
ticket-system instance), the owner tables from the look-ups of one cycle. The planner
(:mod:`agent.core.merge`) gets its translation tables from :meth:`Maps.policy`; closing a pair
needs the closure rows both ways (:meth:`Maps.close_code`, :meth:`Maps.closure`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from agent.core.merge import Plan, Policy
from agent.core.records import Ticket

UNDETERMINED = "Undetermined"
"""The source classification a closure falls back to (and the close-code row used for it)."""
DUPLICATE = "Duplicate"
"""ServiceNow's resolution code for a duplicate incident (a merged incident's ticket closes so)."""


@dataclass(frozen=True, slots=True)
class Maps:
    """The six value maps of one pair of systems (source terms <-> ticket terms)."""

    severity_to_snow: Mapping[str, str]
    severity_to_sentinel: Mapping[str, str]
    status_to_snow: Mapping[str, str]
    status_to_sentinel: Mapping[str, str]
    closure_to_snow: Mapping[str, str]
    closure_to_sentinel: Mapping[str, tuple[str, str | None]]
    closure_catch_all_written: bool = True

    def policy(
        self, owner_to_snow: Mapping[str, str], owner_to_sentinel: Mapping[str, str], conflict: str
    ) -> Policy:
        """Planner tables. ``owner_*`` hold only the look-ups that resolved; "" (unassigned) always maps."""
        return Policy(
            to_snow={
                "severity": self.severity_to_snow,
                "status": self.status_to_snow,
                "owner": {"": "", **owner_to_snow},
            },
            to_sentinel={
                "severity": self.severity_to_sentinel,
                "status": self.status_to_sentinel,
                "owner": {"": "", **owner_to_sentinel},
            },
            conflict=conflict,
        )

    def close_code(self, classification: str | None) -> str:
        """The ticket's close code for the source's classification (else the Undetermined row)."""
        return self.closure_to_snow.get(classification or UNDETERMINED) or self.closure_to_snow.get(
            UNDETERMINED, ""
        )

    def duplicate_code(self, classification: str | None) -> str:
        """The close code of a ticket whose incident was merged into another: ``Duplicate`` when
        the ticket side's close codes have it (a ``[closure_to_sentinel]`` row names it), else
        the code of the incident's classification."""
        return DUPLICATE if DUPLICATE in self.closure_to_sentinel else self.close_code(classification)

    def closure(self, close_code: str) -> tuple[str, str | None]:
        """``(classification, reason)`` in the source's terms for a ticket's close code."""
        return (
            self.closure_to_sentinel.get(close_code)
            or self.closure_to_sentinel.get("*")
            or (UNDETERMINED, None)
        )

    def closure_falls_back(self, close_code: str) -> bool:
        """Whether ``close_code`` lands on the ``*`` row without the user having written one."""
        return not self.closure_catch_all_written and close_code not in self.closure_to_sentinel


def absorb_autoclose(
    base: Mapping[str, tuple[str, str]],
    ticket: Ticket,
    maps: Maps,
    autoclosed: Callable[[str, str], bool],
) -> Mapping[str, tuple[str, str]]:
    """The ticket system finishing a ticket by itself (ServiceNow closes a resolved ticket after a
    day, REFERENCE E.9) is no change of meaning: the base takes the new state, so the planner sees
    nothing changed on the ticket side (and never re-closes an incident an analyst reopened).

    ``autoclosed(agreed, now)`` says whether the system itself moves a ticket from ``agreed`` to
    ``now``; the move counts only when both states mean the same on the source side."""
    if "status" not in base:
        return base
    agreed_source, agreed_ticket = base["status"]
    now = ticket.values.get("status", "")
    if (
        now != agreed_ticket
        and autoclosed(agreed_ticket, now)
        and maps.status_to_sentinel.get(now) == maps.status_to_sentinel.get(agreed_ticket)
    ):
        return {**base, "status": (agreed_source, now)}
    return base


def given_up(p: Plan, ticket: Ticket) -> Plan:
    """``p`` without its ticket writes, for a ticket that can no longer be changed (E.9): the base
    takes the ticket's values as they are, so the same write is not planned again."""
    base = dict(p.base)
    for name in p.to_snow:
        agreed_source = base[name][0] if name in base else ""
        base[name] = (agreed_source, ticket.values.get(name, ""))
    return replace(p, to_snow={}, base=base)
