"""Domain separation and assignment-group routing on one shared ServiceNow instance.

Workspaces ``acme`` and ``initech`` share an instance; each has its own ``sys_domain``, company
and a "Service Desk" group of the same name in its domain. New tickets land in the right
domain with that domain's company and group; no query of one workspace reads or writes a record
of the other domain; ``[assignment_groups]`` routes by label, owner and severity, on create and
when the Sentinel side changes the outcome.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.testing.emulators.stack import EmulatorStack
from tests.conftest import assert_no_silent_drops
from tests.e2e import Env, props, writes

ACME = "a" * 31 + "1"
INITECH = "b" * 31 + "2"
BOB = "bob@contoso.example"


@dataclass
class Domains:
    env: Env
    companies: dict[str, str]
    desks: dict[str, str]  # domain -> "Service Desk" sys_id
    tier2: str  # "SOC Tier 2", acme only
    secops: str  # "Security Operations", global (made by the stack)

    def tickets(self, domain: str | None = None) -> dict[str, dict[str, str]]:
        rows = self.env.snow.tables["incident"].values()
        return {
            r["correlation_id"]: r
            for r in rows
            if r.get("correlation_id") and (domain is None or r["sys_domain"] == domain)
        }


@pytest.fixture
async def doms(tmp_path: Path) -> AsyncIterator[Domains]:
    async with EmulatorStack(directory=tmp_path / "emu") as stack:
        snow = stack.snow["default"]
        companies = {ACME: snow.add_company("ACME", ACME), INITECH: snow.add_company("Initech", INITECH)}
        desks = {ACME: snow.add_group("Service Desk", ACME), INITECH: snow.add_group("Service Desk", INITECH)}
        tier2 = snow.add_group("SOC Tier 2", ACME)
        stack.add_workspace("acme")
        stack.add_workspace("initech")
        cfg = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            workspaces=["acme", "initech"],
            extra={
                "workspace:acme": {"sys_domain": ACME, "company": "ACME", "assignment_group": "Service Desk"},
                "workspace:initech": {"sys_domain": INITECH, "company": "Initech"},
                "assignment_groups": {"severity:High": "SOC Tier 2", "*": "Service Desk"},
                "assignment_groups:acme": {
                    "label:Phishing": "Service Desk",
                    f"owner:{BOB}": "Security Operations",
                },
            },
        )
        secops = stack.snow_group_ids["default"]["Security Operations"]
        yield Domains(Env(stack, tmp_path, cfg, ["acme", "initech"]), companies, desks, tier2, secops)
        assert_no_silent_drops(stack)


async def test_new_tickets_land_in_their_workspaces_domain(doms: Domains) -> None:
    env = doms.env
    a = env.ws("acme").create_incident(title="acme", labels=["snow"])
    i = env.ws("initech").create_incident(title="initech", labels=["snow"])
    await env.cycle()
    acme, initech = doms.tickets(ACME)[a["name"]], doms.tickets(INITECH)[i["name"]]
    assert (acme["company"], acme["assignment_group"]) == (doms.companies[ACME], doms.desks[ACME])
    # same group name, the other domain's group
    assert (initech["company"], initech["assignment_group"]) == (doms.companies[INITECH], doms.desks[INITECH])
    assert set(doms.tickets()) == {a["name"], i["name"]}


async def test_a_workspace_never_reads_or_writes_the_other_domain(doms: Domains) -> None:
    env = doms.env
    a = env.ws("acme").create_incident(title="acme", labels=["snow"], severity="Low")
    i = env.ws("initech").create_incident(title="initech", labels=["snow"])
    await env.cycle()
    idle = (await env.cycle())["acme"]
    snow = env.snow
    snow.analyst_update("incident", doms.tickets(INITECH)[i["name"]]["sys_id"], {"impact": "2"})
    stats = (await env.cycle())["acme"]
    # the initech change is not even listed for acme (only what an idle cycle re-lists)
    assert getattr(stats, "listed_snow", None) == getattr(idle, "listed_snow", None)

    # A stray record in initech's domain carries the key of a new acme incident: acme must
    # create its own ticket rather than adopt (and write to) the other domain's record.
    b = env.ws("acme").create_incident(title="acme 2", labels=["snow"])
    stray = snow.insert(
        "incident", {"short_description": "stray", "correlation_id": b["name"], "sys_domain": INITECH}
    )
    stats = (await env.cycle())["acme"]
    assert getattr(stats, "created", None) == 1 and getattr(stats, "adopted", None) == 0
    assert doms.tickets(ACME)[b["name"]]["short_description"] == "acme 2"
    assert snow.record("incident", stray["sys_id"])["sys_mod_count"] == "0"

    # A linked record moved to another domain is out of reach: not fetched, not written.
    moved = doms.tickets(ACME)[a["name"]]["sys_id"]
    snow.analyst_update("incident", moved, {"sys_domain": INITECH})
    await env.cycle()
    env.ws("acme").analyst_update(a["name"], severity="Medium")
    mark = env.stack.recorder.mark()
    await env.cycle()
    assert not [c for c in writes(env.calls_since(mark)) if c.path.endswith(moved)]
    assert snow.record("incident", moved)["impact"] == "3"


async def test_assignment_groups_follow_label_owner_and_severity(doms: Domains) -> None:
    env = doms.env
    ws = env.ws("acme")
    plain = ws.create_incident(title="plain", labels=["snow"])
    phish = ws.create_incident(title="phish", labels=["snow", "Phishing"], severity="High")
    high = ws.create_incident(title="high", labels=["snow"], severity="High")
    owned = ws.create_incident(title="owned", labels=["snow"], owner_upn=BOB)
    await env.cycle()
    group = {n: doms.tickets(ACME)[inc["name"]]["assignment_group"] for n, inc in
             {"plain": plain, "phish": phish, "high": high, "owned": owned}.items()}  # fmt: skip
    assert group == {
        "plain": doms.desks[ACME],  # the workspace's assignment_group key (before the global *)
        "phish": doms.desks[ACME],  # the workspace section's label row wins over severity:High
        "high": doms.tier2,  # the global severity row
        "owned": doms.secops,  # a global group, found from acme's domain
    }
    await env.cycle()

    # A Sentinel change that routes elsewhere moves the ticket; one that does not, does not.
    ws.analyst_update(plain["name"], severity="High")
    await env.cycle()
    rec = doms.tickets(ACME)[plain["name"]]
    assert rec["assignment_group"] == doms.tier2
    env.snow.analyst_update("incident", rec["sys_id"], {"assignment_group": doms.secops}, by="dave.lead")
    await env.cycle()
    ws.analyst_update(plain["name"], title="renamed")  # routing outcome unchanged
    mark = env.stack.recorder.mark()
    await env.cycle()
    assert doms.tickets(ACME)[plain["name"]]["assignment_group"] == doms.secops  # the analyst's choice
    assert not [c for c in writes(env.calls_since(mark)) if c.system == "servicenow"]
    labels = [lbl["labelName"] for lbl in props(ws, plain["name"])["labels"]]
    ws.analyst_update(plain["name"], labels=[*labels, "Phishing"])
    await env.cycle()
    assert doms.tickets(ACME)[plain["name"]]["assignment_group"] == doms.desks[ACME]
