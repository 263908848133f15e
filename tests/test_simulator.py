"""The activity simulator: realistic seeding, reproducible edits, ServiceNow edits only on linked records."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from agent.connectors.sentinel.models import parse_arm_time
from agent.testing.emulators.simulator import CLOSURES, Simulator
from agent.testing.emulators.stack import EmulatorStack

API = "api-version=2025-09-01"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmulatorStack]:
    async with EmulatorStack(seed=11, directory=tmp_path) as s:
        yield s


class Arm:
    """A tiny ARM client for the checks below: Entra token, then GET/POST with paging."""

    def __init__(self, stack: EmulatorStack, http: aiohttp.ClientSession) -> None:
        self.stack, self.http = stack, http
        self.ctx = ssl.create_default_context(cafile=str(stack.tls.ca_file))
        self.token = ""

    async def login(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.stack.client_id,
            "client_secret": self.stack.client_secret,
            "scope": "https://management.azure.com/.default",
        }
        url = f"{self.stack.entra_url}/{self.stack.tenant}/oauth2/v2.0/token"
        async with self.http.post(url, data=form, ssl=self.ctx) as resp:
            assert resp.status == 200
            self.token = orjson.loads(await resp.read())["access_token"]

    def base(self, workspace: str) -> str:
        sub, rg, ws = self.stack.workspace_key(workspace)
        return (
            f"{self.stack.sentinel_url}/subscriptions/{sub}/resourceGroups/{rg}/providers/"
            f"Microsoft.OperationalInsights/workspaces/{ws}/providers/Microsoft.SecurityInsights/incidents"
        )

    async def call(self, method: str, url: str) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with self.http.request(method, url, ssl=self.ctx, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            body: dict[str, Any] = orjson.loads(await resp.read())
            return body

    async def list(self, url: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            page = await self.call("GET", next_url)
            items += page["value"]
            next_url = page.get("nextLink")
        return items


async def test_seed_creates_incidents_visible_over_http(stack: EmulatorStack) -> None:
    for name in ("soc-eu", "soc-us"):
        stack.add_workspace(name)
    sim = Simulator(stack, seed=4)
    sim.seed(["soc-eu", "soc-us"], 6, max_age_days=5)
    oldest = datetime.now(UTC) - timedelta(days=5, minutes=1)
    async with aiohttp.ClientSession() as http:
        arm = Arm(stack, http)
        await arm.login()
        for name in ("soc-eu", "soc-us"):
            base = arm.base(name)
            incidents = await arm.list(f"{base}?{API}")
            assert len(incidents) == 6
            assert {i["name"] for i in incidents} == set(stack.workspaces[name].incidents)
            for incident in incidents:
                props = incident["properties"]
                assert parse_arm_time(props["createdTimeUtc"]) >= oldest
                assert props["title"] and props["severity"] in {"High", "Medium", "Low", "Informational"}
                alerts = (await arm.call("POST", f"{base}/{incident['name']}/alerts?{API}"))["value"]
                assert 1 <= len(alerts) <= 4
                assert props["additionalData"]["alertsCount"] == len(alerts)
                assert all(
                    a["kind"] == "SecurityAlert" and a["properties"]["alertDisplayName"] for a in alerts
                )
                entities = (await arm.call("POST", f"{base}/{incident['name']}/entities?{API}"))["entities"]
                assert 1 <= len(entities) <= 5
                assert {e["kind"] for e in entities} <= {"Account", "Host", "Ip", "Url", "FileHash"}
                assert all(e["properties"]["friendlyName"] for e in entities)
                comments = await arm.list(f"{base}/{incident['name']}/comments?{API}")
                assert 0 <= len(comments) <= 3
                assert len(comments) == len(stack.workspaces[name].comments(incident["name"]))
                if props["status"] == "Closed":
                    assert (props["classification"], props.get("classificationReason")) in CLOSURES


def _label_counts(stack: EmulatorStack, name: str) -> tuple[int, int]:
    labelled = sum(
        1
        for incident in stack.workspaces[name].incidents.values()
        if "snow" in [label["labelName"] for label in incident["properties"]["labels"]]
    )
    return labelled, len(stack.workspaces[name].incidents)


def test_labelled_share_and_owners(tmp_path: Path) -> None:
    stack = EmulatorStack(directory=tmp_path, seed=2)
    for name in ("all", "none", "most"):
        stack.add_workspace(name)
    sim = Simulator(stack, seed=1)
    sim.seed(["all"], 10, labelled_share=1.0)
    sim.seed(["none"], 10, labelled_share=0.0)
    sim.seed(["most"], 40)
    assert _label_counts(stack, "all") == (10, 10)
    assert _label_counts(stack, "none") == (0, 10)
    labelled, total = _label_counts(stack, "most")
    assert total == 40 and 28 <= labelled < 40
    upns = {a.upn for a in stack.analysts}
    owners = [
        (i["properties"].get("owner") or {}).get("userPrincipalName")
        for i in stack.workspaces["most"].incidents.values()
    ]
    assert {o for o in owners if o} <= upns
    assert any(owners) and not all(owners)
    with pytest.raises(KeyError, match="workspace 'unknown' is not in the stack"):
        sim.seed(["unknown"], 1)


def _link(stack: EmulatorStack, count: int) -> list[str]:
    """Play the agent: create ServiceNow incidents for the first ``count`` Sentinel incidents."""
    snow = stack.snow["default"]
    sys_ids = []
    incidents = [i for ws in stack.workspaces.values() for i in ws.incidents.values()][:count]
    for incident in incidents:
        record = snow.insert(
            "incident",
            {
                "short_description": incident["properties"]["title"],
                "correlation_id": incident["name"],
                "impact": "2",
                "urgency": "2",
                "state": "1",
            },
            by=stack.snow_user,
        )
        sys_ids.append(record["sys_id"])
    return sys_ids


def _replay(tmp_path: Path, seed: int, steps: int) -> list[str]:
    stack = EmulatorStack(directory=tmp_path, seed=0)
    stack.add_workspace("soc-eu")
    stack.add_workspace("soc-us")
    sim = Simulator(stack, seed=seed)
    sim.seed(["soc-eu", "soc-us"], 5)
    _link(stack, 4)
    for _ in range(steps):
        assert len(sim.step()) == 1
    return sim.edits


def test_steps_are_reproducible_for_a_seed(tmp_path: Path) -> None:
    first = _replay(tmp_path / "a", 21, 60)
    second = _replay(tmp_path / "b", 21, 60)
    assert first == second
    assert len(first) == 60
    assert any(e.startswith("servicenow ") for e in first)
    assert any(e.startswith("sentinel ") for e in first)
    assert _replay(tmp_path / "c", 22, 60) != first


def test_servicenow_edits_touch_only_linked_records(tmp_path: Path) -> None:
    stack = EmulatorStack(directory=tmp_path, seed=5)
    stack.add_workspace("soc-eu")
    sim = Simulator(stack, seed=5)
    sim.seed(["soc-eu"], 4)
    snow = stack.snow["default"]
    linked = _link(stack, 2)
    unlinked = snow.insert(
        "incident",
        {"short_description": "Printer on fire", "impact": "3", "urgency": "3", "state": "1"},
        by="admin",
    )["sys_id"]
    before = dict(snow.record("incident", unlinked))
    journal_before = snow.journal(unlinked)
    for _ in range(150):
        sim.step()
    snow_edits = [e for e in sim.edits if e.startswith("servicenow ")]
    assert snow_edits
    assert snow.record("incident", unlinked) == before
    assert snow.journal(unlinked) == journal_before
    numbers = {snow.record("incident", s)["number"] for s in linked}
    assert all(edit.split()[2].rstrip(":") in numbers for edit in snow_edits)
    assert all(int(snow.record("incident", s)["sys_mod_count"]) > 0 for s in linked)
    analysts = set(stack.snow_user_ids["default"].values())
    for sys_id in linked:
        record = snow.record("incident", sys_id)
        assert record["assigned_to"] in analysts | {""}
        if record["state"] == "6":
            assert record["close_code"] and record["close_notes"]


def test_sentinel_edits_are_valid(tmp_path: Path) -> None:
    stack = EmulatorStack(directory=tmp_path, seed=8)
    stack.add_workspace("soc-eu")
    sim = Simulator(stack, seed=8)
    sim.seed(["soc-eu"], 6, labelled_share=0.5)
    for _ in range(120):
        sim.step()
    assert not any(e.startswith("servicenow ") for e in sim.edits)  # nothing linked yet
    kinds = {e.split(": ", 1)[1].split()[0] for e in sim.edits}
    assert {"severity", "owner", "comment", "label", "closed", "new"} <= kinds
    ws = stack.workspaces["soc-eu"]
    for incident in ws.incidents.values():
        props = incident["properties"]
        assert props["severity"] in {"High", "Medium", "Low", "Informational"}
        if props["status"] == "Closed":
            assert (props["classification"], props.get("classificationReason")) in CLOSURES
    # Labels are only ever added, so with enough edits every incident carries "snow".
    assert all(
        "snow" in [label["labelName"] for label in i["properties"]["labels"]] for i in ws.incidents.values()
    )


def test_step_without_incidents_does_nothing(tmp_path: Path) -> None:
    stack = EmulatorStack(directory=tmp_path)
    stack.add_workspace("empty")
    sim = Simulator(stack)
    assert sim.step() == []
    assert sim.edits == []


async def test_run_paces_edits_and_counts_them(tmp_path: Path) -> None:
    stack = EmulatorStack(directory=tmp_path, seed=3)
    stack.add_workspace("soc-eu")
    sim = Simulator(stack, seed=3)
    sim.seed(["soc-eu"], 3)
    assert await sim.run(0.1, rate=50) == 5
    assert len(sim.edits) == 5
    assert await sim.run(0.05, rate=5) == 1  # at least one edit, even below one per duration
    assert len(sim.edits) == 6
    assert await sim.run(0, rate=50) == 0
    with pytest.raises(ValueError, match="rate must be positive"):
        await sim.run(1, rate=0)
