"""Analysts, and Defender's own engine, at work on a Defender XDR tenant (the Graph emulator).

Used by :class:`~agent.testing.emulators.simulator.Simulator`: it seeds tagged incidents with
alerts and evidence, then each edit is what the Defender portal or its correlation engine does
(GRAPH.md B.6, H.3): severity, status, owner (a UPN in ``assignedTo``), comments, resolving with
a classification and a determination (B.3), resolving every alert so the incident resolves
itself (B.5), a new alert, a custom tag, and merging two open incidents (the source becomes
``redirected``). Everything goes through the tenant's direct state API, seeded by the simulator's
RNG.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.testing.emulators.common import days_ago
from agent.testing.emulators.graph_tenant import (
    PAIRS,
    DefenderTenant,
    MergeRefused,
    device_evidence,
    ip_evidence,
    url_evidence,
    user_evidence,
)

if TYPE_CHECKING:
    from agent.testing.emulators.stack import EmulatorStack

__all__ = ["DefenderActivity"]

ALERTS = (
    ("Suspicious PowerShell command line", "Execution", "microsoftDefenderForEndpoint",
     "Microsoft Defender for Endpoint"),
    ("Phishing email delivered to a mailbox", "InitialAccess", "microsoftDefenderForOffice365",
     "Microsoft Defender for Office 365"),
    ("Suspicious sign-in from an anonymous IP address", "InitialAccess", "azureAdIdentityProtection",
     "Microsoft Entra ID Protection"),
    ("Mass download by a single user", "Exfiltration", "microsoftDefenderForCloudApps",
     "Microsoft Defender for Cloud Apps"),
    ("Scheduled analytics rule: rare admin sign-in", "PrivilegeEscalation", "microsoftSentinel",
     "Microsoft Sentinel"),
)  # fmt: skip
SEVERITIES = ("informational", "low", "medium", "high")
STATUSES = ("active", "inProgress")
COMMENTS = (
    "Isolated the device pending review.",
    "User confirmed the sign-in was not theirs; password reset.",
    "Blocked the sender domain in the tenant allow/block list.",
    "Automated investigation found no further impact.",
)


class DefenderActivity:
    """Seeds and edits one tenant's incidents; ``label`` is the custom tag the agent syncs."""

    def __init__(self, stack: EmulatorStack, rng: random.Random, label: str = "snow") -> None:
        self.stack = stack
        self.tenant: DefenderTenant = stack.defender
        self.rng = rng
        self.label = label

    def seed(self, count: int, *, tagged_share: float = 0.9, max_age_days: int = 20) -> None:
        """``count`` incidents created within ``max_age_days`` days, most tagged ``label``."""
        for _ in range(count):
            self._incident(tagged_share, max_age_days)

    def _incident(self, tagged_share: float, max_age_days: int) -> dict[str, Any]:
        rng = self.rng
        tags = [self.label] if rng.random() < tagged_share else []
        owner = rng.choice(self.stack.analysts).upn if rng.random() < 0.4 else None
        created = days_ago(self.stack.clock, rng.uniform(0.01, max_age_days)) if max_age_days else None
        incident = self.tenant.create_incident(
            alerts=[self._alert() for _ in range(rng.randint(1, 3))],
            custom_tags=tags,
            assigned_to=owner,
            description=rng.choice((None, "Raised by Microsoft Defender XDR correlation.")),
            created=created,
        )
        if owner and rng.random() < 0.5:
            self.tenant.analyst_update(incident["id"], by=owner, status="inProgress")
        return incident

    def _alert(self) -> dict[str, Any]:
        title, category, service, product = self.rng.choice(ALERTS)
        at = self.tenant.now()
        evidence = [
            device_evidence(at, self.rng.choice(("ws-fin-0231", "srv-sql-07", "lt-sales-0458"))),
            user_evidence(at, self.rng.choice(self.stack.analysts).upn, "Contoso user"),
        ]
        evidence.append(
            self.rng.choice(
                (ip_evidence(at, f"198.51.100.{self.rng.randint(1, 254)}"),
                 url_evidence(at, "https://shared-docs.example/invoice-8841.zip"))
            )
        )  # fmt: skip
        return {
            "title": title, "category": category, "service_source": service, "product_name": product,
            "severity": self.rng.choice(SEVERITIES[1:]), "evidence": evidence,
        }  # fmt: skip

    # --- edits ----------------------------------------------------------------------------------

    def actions(self) -> list[Callable[[], str | None]]:
        return [
            self._severity, self._status, self._owner, self._comment, self._resolve,
            self._auto_resolve, self._new_alert, self._tag, self._merge, self._new_incident,
        ]  # fmt: skip

    def _pick(self, keep: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        found = [i for i in self.tenant.incidents.values() if keep(i)]
        return self.rng.choice(found) if found else None

    def _open(self, incident: dict[str, Any]) -> bool:
        return incident["status"] in ("active", "inProgress")

    def _severity(self) -> str | None:
        inc = self._pick(self._open)
        if inc is None:
            return None
        new = self.rng.choice([s for s in SEVERITIES if s != inc["severity"]])
        self.tenant.analyst_update(inc["id"], severity=new)
        return f"defender {inc['id']}: severity -> {new}"

    def _status(self) -> str | None:
        inc = self._pick(self._open)
        if inc is None:
            return None
        new = "inProgress" if inc["status"] == "active" else "active"
        self.tenant.analyst_update(inc["id"], status=new)
        return f"defender {inc['id']}: status -> {new}"

    def _owner(self) -> str | None:
        inc = self._pick(self._open)
        if inc is None:
            return None
        upn = self.rng.choice([a.upn for a in self.stack.analysts if a.upn != inc["assignedTo"]])
        self.tenant.analyst_update(inc["id"], assignedTo=upn)
        return f"defender {inc['id']}: assigned to {upn}"

    def _comment(self) -> str | None:
        inc = self._pick(lambda i: i["status"] != "redirected")
        if inc is None:
            return None
        analyst = self.rng.choice(self.stack.analysts)
        text = self.rng.choice(COMMENTS)
        self.tenant.analyst_comment(inc["id"], text, author=analyst.name)
        return f"defender {inc['id']}: comment by {analyst.name}: {text}"

    def _resolve(self) -> str | None:
        inc = self._pick(self._open)
        if inc is None:
            return None
        classification = self.rng.choice(["truePositive", "falsePositive", "informationalExpectedActivity"])
        determination = self.rng.choice(sorted(PAIRS[classification]))
        self.tenant.analyst_update(
            inc["id"], status="resolved", classification=classification, determination=determination,
            resolvingComment=self.rng.choice(COMMENTS),
        )  # fmt: skip
        return f"defender {inc['id']}: resolved as {classification}/{determination}"

    def _auto_resolve(self) -> str | None:
        inc = self._pick(self._open)
        if inc is None:
            return None
        for alert in self.tenant.alerts_of(inc["id"]):
            if alert["status"] != "resolved":
                self.tenant.resolve_alert(alert["id"])  # the last one resolves the incident (B.5)
        return f"defender {inc['id']}: every alert resolved, the incident resolved itself"

    def _new_alert(self) -> str | None:
        inc = self._pick(self._open)
        if inc is None:
            return None
        spec = self._alert()
        self.tenant.add_alert(inc["id"], **spec)
        return f"defender {inc['id']}: new alert {spec['title']!r}"

    def _tag(self) -> str | None:
        inc = self._pick(lambda i: self._open(i) and self.label not in i["customTags"])
        if inc is None:
            return None
        self.tenant.analyst_update(inc["id"], customTags=[*inc["customTags"], self.label])
        return f"defender {inc['id']}: tag {self.label!r} added"

    def _merge(self) -> str | None:
        if self.rng.random() < 0.5:  # rarer than the other edits
            return None
        open_ = [i for i in self.tenant.incidents.values() if self._open(i)]
        # Defender merges only incidents with the same owner and classification (H.3).
        pairs = [(a, b) for a in open_ for b in open_ if a["id"] < b["id"] and _mergeable(a, b)]
        if not pairs:
            return None
        a, b = self.rng.choice(pairs)
        target = self.tenant.pick_merge_target([a["id"], b["id"]])
        try:
            self.tenant.merge([a["id"], b["id"]], target)
        except MergeRefused:
            return None
        source = a["id"] if target == b["id"] else b["id"]
        return f"defender {source}: merged into {target}"

    def _new_incident(self) -> str | None:
        inc = self._incident(0.9, 0)
        return f"defender {inc['id']}: new incident"


def _mergeable(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("assignedTo", "classification", "determination")
    return all(a[k] == b[k] for k in keys)
