"""The optional Graph <-> Sentinel coupling (GRAPH.md H.1-H.4): an onboarded workspace over TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.testing.emulators.graph_arm import SentinelCoupling
from agent.testing.emulators.graph_tenant import DefenderTenant
from agent.testing.emulators.sentinel import SentinelWorkspace
from agent.testing.emulators.stack import GRAPH_ROLES, EmulatorStack

API = "2025-09-01"


@dataclass
class Onboarded:
    stack: EmulatorStack
    t: DefenderTenant
    ws: SentinelWorkspace
    coupling: SentinelCoupling
    session: aiohttp.ClientSession

    async def graph(self, method: str, path: str, json: Any = None) -> tuple[int, Any]:
        token = self.stack.tokens.issue(self.stack.graph_url, self.stack.tenant, self.stack.client_id,
                                        roles=GRAPH_ROLES).token  # fmt: skip
        url = f"{self.stack.graph_url}/v1.0/security/{path}"
        async with self.session.request(
            method, url, json=json, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            return r.status, await r.json()

    async def arm(self, method: str, path: str = "", json: Any = None) -> tuple[int, Any]:
        token = self.stack.tokens.issue(
            self.stack.sentinel_url, self.stack.tenant, self.stack.client_id
        ).token
        url = f"{self.stack.sentinel_url}{self.ws.base_id}/incidents{path}"
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.request(
            method, url, params={"api-version": API}, json=json, headers=headers
        ) as r:
            return r.status, await r.json()

    def later(self) -> None:
        self.stack.clock.advance(self.coupling.delay + 0.1)

    def arm_incident(self, graph_id: str) -> dict[str, Any]:
        return self.ws.incidents[self.coupling.links[graph_id]]


@pytest.fixture
async def on(tmp_path: Path) -> AsyncIterator[Onboarded]:
    stack = EmulatorStack(directory=tmp_path)
    ws = stack.add_workspace("soc")
    coupling = stack.couple_defender("soc")
    async with stack:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=stack.tls.client_context())) as s:
            yield Onboarded(stack, stack.defender, ws, coupling, s)


async def test_h1_a_defender_incident_appears_in_arm_after_the_delay(on: Onboarded) -> None:
    inc = on.t.create_incident(display_name="Phish on one endpoint", custom_tags=["snow"], alerts=2)
    status, body = await on.arm("GET")
    assert status == 200 and body["value"] == []  # not yet (H.4: it takes a moment)
    on.later()
    status, body = await on.arm("GET")  # any request applies the due copies
    (arm,) = body["value"]
    props = arm["properties"]
    assert props["providerName"] == "Microsoft XDR" and props["providerIncidentId"] == inc["id"]
    assert props["additionalData"]["providerIncidentUrl"] == inc["incidentWebUrl"]
    assert props["additionalData"]["alertsCount"] == 2
    assert props["title"] == "Phish on one endpoint" and [lbl["labelName"] for lbl in props["labels"]] == [
        "snow"
    ]
    assert arm["name"] != inc["id"] and str(props["incidentNumber"]) != inc["id"]  # a GUID and its own number


async def test_h4_graph_writes_reach_arm_with_the_documented_mappings(on: Onboarded) -> None:
    inc = on.t.create_incident()
    on.later()
    on.coupling.pump()
    status, _ = await on.graph(
        "PATCH", f"incidents/{inc['id']}",
        {"status": "resolved", "classification": "truePositive", "determination": "phishing",
         "resolvingComment": "contained", "assignedTo": "alice@contoso.example", "customTags": ["snow", "x"]},
    )  # fmt: skip
    assert status == 200
    on.later()
    await on.arm("GET")
    props = on.arm_incident(inc["id"])["properties"]
    assert (props["status"], props["classification"], props["classificationReason"]) == (
        "Closed", "TruePositive", "SuspiciousActivity",
    )  # fmt: skip
    assert props["owner"]["userPrincipalName"] == "alice@contoso.example"
    assert [lbl["labelName"] for lbl in props["labels"]] == ["snow", "x"]
    await on.graph("PATCH", f"incidents/{inc['id']}", {"status": "inProgress"})
    on.later()
    on.coupling.pump()
    assert on.arm_incident(inc["id"])["properties"]["status"] == "Active"


async def test_h4_arm_writes_reach_graph(on: Onboarded) -> None:
    inc = on.t.create_incident(custom_tags=["snow"])
    on.later()
    on.coupling.pump()
    name = on.coupling.links[inc["id"]]
    status, arm = await on.arm("GET", f"/{name}")
    props = arm["properties"] | {
        "status": "Closed", "classification": "FalsePositive", "classificationReason": "InaccurateData",
        "labels": [{"labelName": "snow"}, {"labelName": "INC0010001"}], "severity": "High",
    }  # fmt: skip
    status, _ = await on.arm("PUT", f"/{name}", {"etag": arm["etag"], "properties": props})
    assert status == 200
    on.later()
    _, graph = await on.graph("GET", f"incidents/{inc['id']}")
    assert (graph["status"], graph["classification"], graph["determination"]) == (
        "resolved",
        "falsePositive",
        "other",
    )
    assert graph["customTags"] == ["snow", "INC0010001"] and graph["severity"] == "high"
    assert graph["lastModifiedBy"] == "Microsoft Sentinel"


async def test_h4_new_comments_cross_once_each_way_and_edits_never(on: Onboarded) -> None:
    inc = on.t.create_incident()
    on.later()
    on.coupling.pump()
    name = on.coupling.links[inc["id"]]
    await on.graph("POST", f"incidents/{inc['id']}/comments", {"comment": "from Defender"})
    status, _ = await on.arm("PUT", f"/{name}/comments/c-1", {"properties": {"message": "from Sentinel"}})
    assert status == 201
    for _ in range(3):  # no echo however often the copies run
        on.later()
        on.coupling.pump()
        await on.arm("GET")
    assert sorted(c["properties"]["message"] for c in on.ws.comments(name)) == [
        "from Defender",
        "from Sentinel",
    ]
    assert [c["comment"] for c in on.t.comments(inc["id"])] == ["from Defender", "from Sentinel"]
    status, _ = await on.arm("PUT", f"/{name}/comments/c-1", {"properties": {"message": "edited"}})
    assert status == 200
    on.later()
    on.coupling.pump()
    assert [c["comment"] for c in on.t.comments(inc["id"])] == ["from Defender", "from Sentinel"]


async def test_h2_an_incident_created_through_arm_stays_arm_only(on: Onboarded) -> None:
    status, _ = await on.arm(
        "PUT", "/0b6c7d3e-1111-4aaa-9bbb-123456789abc",
        {"properties": {"title": "Made by a Logic App", "severity": "Low", "status": "New"}},
    )  # fmt: skip
    assert status == 201
    on.later()
    on.coupling.pump()
    _, listed = await on.graph("GET", "incidents")
    assert listed["value"] == [] and on.t.incidents == {}


async def test_coupling_must_be_made_before_the_servers_start(tmp_path: Path) -> None:
    async with EmulatorStack(directory=tmp_path) as stack:
        stack.add_workspace("soc")
        with pytest.raises(RuntimeError, match="before their servers start"):
            stack.couple_defender("soc")
