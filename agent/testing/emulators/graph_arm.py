"""Optional coupling of a Defender tenant (Graph emulator) and a Sentinel workspace (ARM emulator).

A workspace onboarded to the Defender portal shows every Defender incident in the ARM API too,
and the two stay in sync (GRAPH.md H.1-H.4). With the coupling on:

* a Defender incident appears in the workspace with ``providerName`` ``Microsoft XDR``,
  ``providerIncidentId`` = its Graph id and ``additionalData.providerIncidentUrl`` = its
  Defender link (H.1); its ARM ``name`` is a GUID and ``incidentNumber`` its own sequence;
* Graph writes are copied to the ARM incident and ARM writes back (H.4): title, description,
  severity, custom tags <-> labels, owner, status (active <-> New, inProgress <-> Active,
  resolved <-> Closed; only the first row is in the docs) and classification with the
  documented reason mapping; **new** comments only, never edits;
* every copy waits ``delay`` seconds of the shared clock (default 2 s, the emulator note of
  H.4); due copies are applied when either emulator serves a request, or on :meth:`pump`;
* incidents created through the ARM API stay ARM-only (H.2).

Create it before the servers start (it adds a middleware to the Sentinel application).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from agent.testing.emulators.graph import GraphEmulator
from agent.testing.emulators.graph_tenant import PAIRS, DefenderTenant
from agent.testing.emulators.sentinel import SentinelEmulator, SentinelWorkspace

__all__ = ["XDR_PROVIDER", "SentinelCoupling"]

XDR_PROVIDER = "Microsoft XDR"
SENTINEL_WRITER = "Microsoft Sentinel"  # lastModifiedBy of a change copied from ARM (unverified)
_SEVERITY_TO_ARM = {"informational": "Informational", "low": "Low", "medium": "Medium", "high": "High"}
_STATUS_TO_ARM = {"active": "New", "inProgress": "Active", "awaitingAction": "Active", "resolved": "Closed",
                  "redirected": "Closed"}  # fmt: skip
_STATUS_TO_GRAPH = {"New": "active", "Active": "inProgress", "Closed": "resolved"}
# H.4: classification -> (Sentinel classification, reason); Not set <-> Undetermined.
_CLASSIFICATION_TO_ARM: Mapping[str, tuple[str, str | None]] = {
    "truePositive": ("TruePositive", "SuspiciousActivity"),
    "falsePositive": ("FalsePositive", "InaccurateData"),
    "informationalExpectedActivity": ("BenignPositive", "SuspiciousButExpected"),
    "unknown": ("Undetermined", None),
}
_CLASSIFICATION_TO_GRAPH = {
    "TruePositive": "truePositive",
    "FalsePositive": "falsePositive",
    "BenignPositive": "informationalExpectedActivity",
    "Undetermined": "unknown",
}

_Job = Callable[[], None]


class SentinelCoupling:
    """Mirrors ``tenant`` onto ``workspace`` and back, as an onboarded workspace does (H.4)."""

    def __init__(
        self,
        graph: GraphEmulator,
        tenant: DefenderTenant,
        sentinel: SentinelEmulator,
        workspace: SentinelWorkspace,
        *,
        delay: float = 2.0,
    ) -> None:
        if sentinel.app.frozen:
            raise RuntimeError("couple the emulators before their servers start")
        self.tenant, self.workspace, self.sentinel = tenant, workspace, sentinel
        self.delay = delay
        self.links: dict[str, str] = {}  # Graph id -> ARM incident name
        self._pending: list[tuple[float, int, _Job]] = []
        self._seq = 0
        tenant.listeners.append(self._on_graph)
        graph.before_request.append(self.pump)
        sentinel.app.middlewares.append(self._arm_middleware)
        for incident_id in list(tenant.incidents):
            self._later(lambda i=incident_id: self._create(i))  # type: ignore[misc]

    # -- scheduling
    def _later(self, job: _Job) -> None:
        self._seq += 1
        self._pending.append((self.tenant.clock.time() + self.delay, self._seq, job))

    def pump(self) -> int:
        """Apply every copy whose delay has passed; returns how many ran."""
        now = self.tenant.clock.time()
        due = sorted(p for p in self._pending if p[0] <= now)
        self._pending = [p for p in self._pending if p[0] > now]
        for _, _, job in due:
            job()
        return len(due)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- Graph -> ARM
    def _on_graph(self, kind: str, incident_id: str, details: Mapping[str, Any]) -> None:
        if details.get("origin") == "arm-mirror":
            return  # our own copy of an ARM change
        if kind == "created":
            self._later(lambda: self._create(incident_id))
        elif kind == "updated":
            self._later(lambda: self._copy_to_arm(incident_id))
        elif kind == "comment":
            comment = dict(details["comment"])
            self._later(lambda: self._comment_to_arm(incident_id, comment))

    def _create(self, incident_id: str) -> None:
        if incident_id in self.links or incident_id not in self.tenant.incidents:
            return
        name = str(uuid.uuid5(uuid.NAMESPACE_URL, f"xdr:{self.tenant.tenant_id}:{incident_id}"))
        incident = self.tenant.incidents[incident_id]
        self.workspace.create_incident(title=incident["displayName"] or "Incident", name=name)
        self.links[incident_id] = name
        self._copy_to_arm(incident_id)

    def _copy_to_arm(self, incident_id: str) -> None:
        name = self.links.get(incident_id)
        incident = self.tenant.incidents.get(incident_id)
        if name is None or incident is None:
            return
        arm = self.workspace.incidents[name]["properties"]
        status = _STATUS_TO_ARM.get(incident["status"], "Active")
        props: dict[str, Any] = {
            "title": incident["displayName"] or "Incident",
            "description": incident["description"] or "",
            "severity": _SEVERITY_TO_ARM.get(incident["severity"], "Informational"),
            "status": status,
            "labels": list(incident["customTags"]),
            "providerName": XDR_PROVIDER,
            "providerIncidentId": incident_id,
            "additionalData": {
                **arm.get("additionalData", {}),
                "providerIncidentUrl": incident["incidentWebUrl"],
                "alertsCount": len(self.tenant.alerts_of(incident_id)),
                "alertProductNames": sorted({a["productName"] for a in self.tenant.alerts_of(incident_id)}),
            },
        }
        owner = incident["assignedTo"]
        props["owner_upn"] = owner if owner and self.sentinel.directory.by_upn(owner) else None
        if status == "Closed":
            classification, reason = _CLASSIFICATION_TO_ARM.get(incident["classification"] or "unknown",
                                                                 ("Undetermined", None))  # fmt: skip
            props |= {"classification": classification, "classificationReason": reason,
                      "classificationComment": incident["resolvingComment"]}  # fmt: skip
        else:
            props |= {"classification": None, "classificationReason": None, "classificationComment": None}
        self.workspace.analyst_update(name, **props)

    def _comment_to_arm(self, incident_id: str, comment: Mapping[str, Any]) -> None:
        name = self.links.get(incident_id)
        if name is None:
            return
        author = {"name": comment["createdByDisplayName"]}
        # New comments only (H.4); the workspace's own comment store keeps the 100-comment cap.
        self.workspace._put_comment(name, str(uuid.uuid4()), comment["comment"], author)

    # -- ARM -> Graph
    @web.middleware
    async def _arm_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.pump()
        response = await handler(request)
        route = request.match_info.route.name
        if (
            route in ("incidents.put", "comments.put")
            and response.status in (200, 201)
            and self._ours(request)
        ):
            graph_id = self._graph_id(request.match_info["incident"])
            if graph_id is not None:
                if route == "incidents.put":
                    self._later(lambda: self._copy_to_graph(graph_id))
                elif response.status == 201:  # a new comment; edits are never copied
                    comment = self._arm_comment(request.match_info["incident"], request.match_info["comment"])
                    self._later(lambda: self._comment_to_graph(graph_id, comment))
        return response

    def _ours(self, request: web.Request) -> bool:
        info = request.match_info
        ws = self.workspace
        return (info.get("sub", "").lower(), info.get("rg", "").lower(), info.get("ws", "").lower()) == (
            ws.subscription_id.lower(), ws.resource_group.lower(), ws.workspace_name.lower(),
        )  # fmt: skip

    def _graph_id(self, arm_name: str) -> str | None:
        return next((g for g, n in self.links.items() if n.lower() == arm_name.lower()), None)

    def _arm_comment(self, arm_name: str, comment_name: str) -> dict[str, Any]:
        for comment in self.workspace.comments(arm_name):
            if comment["name"].lower() == comment_name.lower():
                props = comment["properties"]
                return {
                    "comment": props["message"],
                    "author": props.get("author", {}).get("name") or "Sentinel",
                }
        return {}

    def _copy_to_graph(self, graph_id: str) -> None:
        incident = self.tenant.incidents.get(graph_id)
        name = self.links.get(graph_id)
        if incident is None or name is None:
            return
        arm = self.workspace.incidents[name]["properties"]
        changes: dict[str, Any] = {
            "displayName": arm.get("title"),
            "description": arm.get("description") or None,
            "severity": str(arm.get("severity", "Medium")).lower(),
            "customTags": [label["labelName"] for label in arm.get("labels", [])],
            "assignedTo": (arm.get("owner") or {}).get("userPrincipalName"),
        }
        status = _STATUS_TO_GRAPH.get(str(arm.get("status")))
        if status is not None and incident["status"] not in ("redirected", "awaitingAction"):
            changes["status"] = status
        if status == "resolved":
            classification = _CLASSIFICATION_TO_GRAPH.get(str(arm.get("classification")), "unknown")
            determination = incident["determination"]
            if determination not in PAIRS[classification]:
                determination = "unknown" if classification == "unknown" else "other"
            changes |= {"classification": classification, "determination": determination}
            if arm.get("classificationComment"):
                changes["resolvingComment"] = arm["classificationComment"]
        if changes.get("status") == "resolved" and incident["status"] != "resolved":
            self.tenant.resolve_alerts_of(incident)
        incident.update(changes)
        self.tenant.touch(incident, SENTINEL_WRITER)
        self.tenant.emit("updated", graph_id, fields=tuple(changes), origin="arm-mirror")

    def _comment_to_graph(self, graph_id: str, comment: Mapping[str, Any]) -> None:
        incident = self.tenant.incidents.get(graph_id)
        if incident is None or not comment:
            return
        self.tenant.append_comment(incident, comment["comment"], comment["author"], origin="arm-mirror")
