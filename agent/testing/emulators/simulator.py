"""Analysts at work: seeds realistic incidents and keeps editing both sides.

Everything goes through the emulators' direct state APIs (no HTTP, no faults, not recorded),
exactly like a person clicking in the Sentinel portal or the ServiceNow form. Every choice comes
from one seeded RNG, and incident names are drawn from it too, so a fixed seed replays the same
sequence of edits on a fresh stack.

On the ServiceNow side only records with a ``correlation_id`` (created by the agent) are edited:
analysts there work on what the sync delivered. With :meth:`Simulator.seed_defender` the stack's
Defender XDR tenant is played too (:mod:`agent.testing.emulators.simulator_defender`).
"""

from __future__ import annotations

import asyncio
import functools
import math
import random
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent.testing.emulators.common import days_ago
from agent.testing.emulators.simulator_defender import DefenderActivity

if TYPE_CHECKING:
    from agent.testing.emulators.sentinel import SentinelWorkspace
    from agent.testing.emulators.stack import EmulatorStack

__all__ = ["CLOSURES", "Simulator"]

TITLES = (
    "Suspicious sign-in from Tor exit node",
    "Mass download by a single user",
    "Impossible travel activity",
    "Multiple failed sign-ins followed by a success",
    "Suspicious PowerShell command line",
    "Ransomware behaviour detected on endpoint",
    "Inbox forwarding rule to an external domain",
    "Credential dumping tool detected",
    "Unusual volume of external file sharing",
    "Password spray against multiple accounts",
    "Malicious URL clicked in email",
    "New credential added to a service principal",
    "Rare process launched by an Office application",
    "Data exfiltration to personal cloud storage",
    "Admin role assigned outside privileged identity management",
    "Connection to known command-and-control IP",
    "Phishing email reported by a user",
    "Security tooling disabled on server",
)
SEVERITY_WEIGHTS = {"High": 2, "Medium": 4, "Low": 3, "Informational": 1}
PRODUCTS = (
    "Microsoft Defender for Endpoint",
    "Microsoft Entra ID Protection",
    "Microsoft Defender for Office 365",
    "Microsoft Defender for Cloud Apps",
    "Azure Sentinel",
)
# The classification/reason pairs Sentinel's UI offers (REFERENCE A.6).
CLOSURES: tuple[tuple[str, str | None], ...] = (
    ("TruePositive", "SuspiciousActivity"),
    ("BenignPositive", "SuspiciousButExpected"),
    ("FalsePositive", "IncorrectAlertLogic"),
    ("FalsePositive", "InaccurateData"),
    ("Undetermined", None),
)
CLOSE_CODES = (
    "Solution provided",
    "Workaround provided",
    "Resolved by caller",
    "No resolution provided",
    "Duplicate",
)
EXTRA_LABELS = ("phishing", "vip", "tier2", "identity")
NOTES = (
    "Checked the sign-in logs for {user}; no further activity since {ip}.",
    "Isolated {host} pending forensic review.",
    "Reset the password for {user} and revoked refresh tokens.",
    "Blocked {ip} at the perimeter firewall.",
    "Contacted the user's manager to confirm the travel.",
    "Hash submitted to the sandbox, verdict pending for {host}.",
    "Escalating to tier 2: lateral movement from {host} cannot be ruled out.",
    "Looks like a scheduled backup job on {host}; monitoring for another day.",
)
HOSTS = ("WS-FIN-0231", "WS-HR-0112", "SRV-SQL-07", "SRV-WEB-02", "LT-SALES-0458", "DC-01")
ACCOUNTS = ("j.smith", "m.garcia", "svc_backup", "a.nguyen", "k.osei", "admin.tmp")
URLS = (
    "http://login-microsoftonline.verify-account.example/session",
    "https://shared-docs.example/invoice-8841.zip",
    "http://cdn.update-check.example/agent.exe",
)


class Simulator:
    """Seeds the stack with incidents and makes random analyst edits on both sides.

    ``edits`` lists every edit made (by :meth:`step` or :meth:`run`), oldest first.
    """

    def __init__(self, stack: EmulatorStack, seed: int = 0) -> None:
        self.stack = stack
        self.rng = random.Random(seed)
        self.label = "snow"
        self.workspaces: list[str] = []
        self.edits: list[str] = []
        self.defender: DefenderActivity | None = None

    # --- seeding --------------------------------------------------------------------------------

    def seed(
        self,
        workspaces: list[str],
        incidents_per_workspace: int,
        *,
        label: str = "snow",
        labelled_share: float = 0.9,
        max_age_days: int = 20,
    ) -> None:
        """Create ``incidents_per_workspace`` incidents in each workspace (added to the stack
        first), with alerts, entities, comments, owners and ``label`` on ``labelled_share`` of
        them, created within the last ``max_age_days`` days."""
        self.label = label
        for name in workspaces:
            if name not in self.stack.workspaces:
                raise KeyError(f"workspace {name!r} is not in the stack; add_workspace() it first")
            if name not in self.workspaces:
                self.workspaces.append(name)
            workspace = self.stack.workspaces[name]
            for _ in range(incidents_per_workspace):
                self._seed_incident(workspace, labelled_share, max_age_days)

    def seed_defender(self, incidents: int, *, label: str = "snow") -> None:
        """Seed ``incidents`` incidents in the stack's Defender XDR tenant and play it from now on."""
        self.defender = DefenderActivity(self.stack, self.rng, label)
        self.defender.seed(incidents)

    def _seed_incident(self, ws: SentinelWorkspace, labelled_share: float, max_age_days: int) -> None:
        rng = self.rng
        title = rng.choice(TITLES)
        labels = [self.label] if rng.random() < labelled_share else []
        if rng.random() < 0.2:
            labels.append(rng.choice(EXTRA_LABELS))
        owner = rng.choice(self.stack.analysts).upn if rng.random() < 0.4 else None
        incident = ws.create_incident(
            title=title,
            severity=self._severity(),
            status="Active" if owner and rng.random() < 0.6 else "New",
            description=f"{title}. Raised by analytics rule; {rng.randint(1, 40)} related events.",
            owner_upn=owner,
            labels=labels,
            created=days_ago(self.stack.clock, rng.uniform(0.01, max_age_days)),
            name=self._guid(),
        )
        name = incident["name"]
        for _ in range(rng.randint(1, 4)):
            ws.add_alert(
                name,
                display_name=self._alert_name(title),
                severity=self._severity(),
                product=rng.choice(PRODUCTS),
            )
        for _ in range(rng.randint(1, 5)):
            self._add_entity(ws, name)
        for _ in range(rng.randint(0, 3)):
            ws.analyst_comment(name, self._note(), author_upn=rng.choice(self.stack.analysts).upn)
        if rng.random() < 0.1:
            classification, reason = rng.choice(CLOSURES)
            ws.analyst_update(name, **_closing(classification, reason, "Closed during triage."))

    def _add_entity(self, ws: SentinelWorkspace, name: str) -> None:
        rng = self.rng
        kind = rng.choice(("Account", "Host", "Ip", "Url", "FileHash"))
        if kind == "Account":
            account = rng.choice(ACCOUNTS)
            ws.add_entity(
                name, kind=kind, friendly_name=account, accountName=account, upnSuffix="contoso.example"
            )
        elif kind == "Host":
            host = rng.choice(HOSTS)
            ws.add_entity(
                name,
                kind=kind,
                friendly_name=host,
                hostName=host,
                dnsDomain="contoso.example",
                osFamily="Windows",
            )
        elif kind == "Ip":
            address = self._ip()
            ws.add_entity(name, kind=kind, friendly_name=address, address=address)
        elif kind == "Url":
            url = rng.choice(URLS)
            ws.add_entity(name, kind=kind, friendly_name=url, url=url)
        else:
            digest = f"{rng.getrandbits(256):064x}"
            ws.add_entity(name, kind=kind, friendly_name=digest, algorithm="SHA256", hashValue=digest)

    # --- editing --------------------------------------------------------------------------------

    def step(self) -> list[str]:
        """Make one random analyst edit; returns its description (empty when there is nothing
        to edit) and appends it to :attr:`edits`."""
        linked = self._linked_records()
        sentinel_side: list[Callable[[], str | None]] = [
            self._sentinel_severity,
            self._sentinel_activate,
            self._sentinel_close,
            self._sentinel_owner,
            self._sentinel_comment,
            self._sentinel_alert,
            self._sentinel_label,
            *(self.defender.actions() if self.defender is not None else ()),
        ]
        snow_side: list[Callable[[list[tuple[str, str]]], str | None]] = [
            self._snow_impact,
            self._snow_in_progress,
            self._snow_resolve,
            self._snow_assign,
            self._snow_work_note,
        ]
        actions: list[Callable[[], str | None]] = list(sentinel_side)
        if linked and self.rng.random() < 0.5:
            actions = [functools.partial(action, linked) for action in snow_side]
        self.rng.shuffle(actions)
        for action in actions:
            description = action()
            if description is not None:
                self.edits.append(description)
                return [description]
        return []

    async def run(self, duration: float, rate: float) -> int:
        """Make ``rate`` edits per second for ``duration`` seconds (``ceil(duration * rate)``
        steps, paced on the event loop clock, returning after ``duration``); returns the number of
        edits made."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        if duration <= 0:
            return 0
        loop = asyncio.get_running_loop()
        start, interval = loop.time(), 1.0 / rate
        made = 0
        steps = math.ceil(duration * rate - 1e-9)
        for index in range(steps):
            made += len(self.step())
            # The last pause runs to the end of ``duration``, so back-to-back runs keep the pace.
            until = min(start + (index + 1) * interval, start + duration)
            await asyncio.sleep(max(0.0, until - loop.time()))
        return made

    # Sentinel side ---------------------------------------------------------------------------

    def _pick_incident(self, keep: Callable[[dict[str, Any]], bool]) -> tuple[str, dict[str, Any]] | None:
        candidates = [
            (ws_name, incident)
            for ws_name in self._workspace_names()
            for incident in self.stack.workspaces[ws_name].incidents.values()
            if keep(incident["properties"])
        ]
        return self.rng.choice(candidates) if candidates else None

    def _sentinel_severity(self) -> str | None:
        picked = self._pick_incident(lambda p: p["status"] != "Closed")
        if picked is None:
            return None
        ws_name, incident = picked
        old = incident["properties"]["severity"]
        new = self.rng.choice([s for s in SEVERITY_WEIGHTS if s != old])
        self.stack.workspaces[ws_name].analyst_update(incident["name"], severity=new)
        return f"{_ref(ws_name, incident)}: severity {old} -> {new}"

    def _sentinel_activate(self) -> str | None:
        picked = self._pick_incident(lambda p: p["status"] == "New")
        if picked is None:
            return None
        ws_name, incident = picked
        self.stack.workspaces[ws_name].analyst_update(incident["name"], status="Active")
        return f"{_ref(ws_name, incident)}: status New -> Active"

    def _sentinel_close(self) -> str | None:
        picked = self._pick_incident(lambda p: p["status"] != "Closed")
        if picked is None:
            return None
        ws_name, incident = picked
        classification, reason = self.rng.choice(CLOSURES)
        props = _closing(classification, reason, self._note())
        self.stack.workspaces[ws_name].analyst_update(incident["name"], **props)
        return f"{_ref(ws_name, incident)}: closed as {classification}/{reason or '-'}"

    def _sentinel_owner(self) -> str | None:
        picked = self._pick_incident(lambda p: p["status"] != "Closed")
        if picked is None:
            return None
        ws_name, incident = picked
        current = ((incident["properties"].get("owner") or {}).get("userPrincipalName") or "").lower()
        choices: list[str | None] = [a.upn for a in self.stack.analysts if a.upn.lower() != current]
        if current and self.rng.random() < 0.15:
            choices = [None]
        upn = self.rng.choice(choices)
        self.stack.workspaces[ws_name].analyst_update(incident["name"], owner_upn=upn)
        return f"{_ref(ws_name, incident)}: owner {current or '-'} -> {upn or '-'}"

    def _sentinel_comment(self) -> str | None:
        picked = self._pick_incident(lambda p: True)
        if picked is None:
            return None
        ws_name, incident = picked
        message, author = self._note(), self.rng.choice(self.stack.analysts).upn
        self.stack.workspaces[ws_name].analyst_comment(incident["name"], message, author_upn=author)
        return f"{_ref(ws_name, incident)}: comment by {author}: {message}"

    def _sentinel_alert(self) -> str | None:
        picked = self._pick_incident(lambda p: p["status"] != "Closed")
        if picked is None:
            return None
        ws_name, incident = picked
        display = self._alert_name(incident["properties"]["title"])
        self.stack.workspaces[ws_name].add_alert(
            incident["name"],
            display_name=display,
            severity=self._severity(),
            product=self.rng.choice(PRODUCTS),
        )
        return f"{_ref(ws_name, incident)}: new alert {display!r}"

    def _sentinel_label(self) -> str | None:
        picked = self._pick_incident(lambda p: self.label not in _labels(p))
        if picked is None:
            return None
        ws_name, incident = picked
        labels = [*_labels(incident["properties"]), self.label]
        self.stack.workspaces[ws_name].analyst_update(incident["name"], labels=labels)
        return f"{_ref(ws_name, incident)}: label {self.label!r} added"

    # ServiceNow side -------------------------------------------------------------------------

    def _linked_records(self) -> list[tuple[str, str]]:
        """(instance, sys_id) of every incident the agent created (``correlation_id`` set)."""
        return [
            (instance, sys_id)
            for instance, snow in self.stack.snow.items()
            for sys_id, fields in snow.tables.get("incident", {}).items()
            if fields.get("correlation_id")
        ]

    def _pick_record(
        self, linked: list[tuple[str, str]], keep: Callable[[dict[str, str]], bool]
    ) -> tuple[str, str, dict[str, str]] | None:
        candidates = [
            (instance, sys_id, fields)
            for instance, sys_id in linked
            if keep(fields := self.stack.snow[instance].tables["incident"][sys_id])
        ]
        return self.rng.choice(candidates) if candidates else None

    def _snow_edit(self, instance: str, sys_id: str, fields: dict[str, str]) -> None:
        by = self.rng.choice(self.stack.analysts).user_name
        self.stack.snow[instance].analyst_update("incident", sys_id, fields, by=by)

    def _snow_impact(self, linked: list[tuple[str, str]]) -> str | None:
        picked = self._pick_record(linked, lambda r: r.get("state") not in ("6", "7", "8"))
        if picked is None:
            return None
        instance, sys_id, record = picked
        old = record.get("impact", "")
        new = self.rng.choice([v for v in ("1", "2", "3") if v != old])
        self._snow_edit(instance, sys_id, {"impact": new})
        return f"servicenow {instance} {record.get('number', sys_id)}: impact {old or '-'} -> {new}"

    def _snow_in_progress(self, linked: list[tuple[str, str]]) -> str | None:
        picked = self._pick_record(linked, lambda r: r.get("state") in ("1", "3", "6"))
        if picked is None:
            return None
        instance, sys_id, record = picked
        old = record.get("state", "")
        self._snow_edit(instance, sys_id, {"state": "2"})
        return f"servicenow {instance} {record.get('number', sys_id)}: state {old} -> 2"

    def _snow_resolve(self, linked: list[tuple[str, str]]) -> str | None:
        picked = self._pick_record(linked, lambda r: r.get("state") not in ("6", "7", "8"))
        if picked is None:
            return None
        instance, sys_id, record = picked
        code = self.rng.choice(CLOSE_CODES)
        # Resolution code and notes travel with the state change (REFERENCE C.8 data policy).
        self._snow_edit(instance, sys_id, {"state": "6", "close_code": code, "close_notes": self._note()})
        return f"servicenow {instance} {record.get('number', sys_id)}: resolved ({code})"

    def _snow_assign(self, linked: list[tuple[str, str]]) -> str | None:
        picked = self._pick_record(linked, lambda r: r.get("state") not in ("7", "8"))
        if picked is None:
            return None
        instance, sys_id, record = picked
        ids = self.stack.snow_user_ids[instance]
        choices = [a for a in self.stack.analysts if ids[a.user_name] != record.get("assigned_to")]
        analyst = self.rng.choice(choices)
        self._snow_edit(instance, sys_id, {"assigned_to": ids[analyst.user_name]})
        return f"servicenow {instance} {record.get('number', sys_id)}: assigned to {analyst.user_name}"

    def _snow_work_note(self, linked: list[tuple[str, str]]) -> str | None:
        picked = self._pick_record(linked, lambda r: True)
        if picked is None:
            return None
        instance, sys_id, record = picked
        note = self._note()
        self._snow_edit(instance, sys_id, {"work_notes": note})
        return f"servicenow {instance} {record.get('number', sys_id)}: work note: {note}"

    # helpers ---------------------------------------------------------------------------------

    def _workspace_names(self) -> list[str]:
        return self.workspaces or list(self.stack.workspaces)

    def _severity(self) -> str:
        return self.rng.choices(list(SEVERITY_WEIGHTS), weights=list(SEVERITY_WEIGHTS.values()))[0]

    def _guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _ip(self) -> str:
        # Documentation ranges (RFC 5737): realistic-looking, never a real host.
        prefix = self.rng.choice(("192.0.2", "198.51.100", "203.0.113"))
        return f"{prefix}.{self.rng.randint(1, 254)}"

    def _alert_name(self, title: str) -> str:
        return self.rng.choice((title, f"{title} (correlated)", f"Related activity: {title.lower()}"))

    def _note(self) -> str:
        template = self.rng.choice(NOTES)
        return template.format(user=self.rng.choice(ACCOUNTS), ip=self._ip(), host=self.rng.choice(HOSTS))


def _closing(classification: str, reason: str | None, comment: str) -> dict[str, Any]:
    # An explicit null reason for Undetermined, as Sentinel's own ServiceNow app sends (REFERENCE A.6).
    return {
        "status": "Closed",
        "classification": classification,
        "classificationReason": reason,
        "classificationComment": comment,
    }


def _labels(props: dict[str, Any]) -> list[str]:
    return [str(label.get("labelName")) for label in props.get("labels") or []]


def _ref(ws_name: str, incident: dict[str, Any]) -> str:
    return f"sentinel {ws_name} #{incident['properties'].get('incidentNumber', incident['name'])}"
