"""A Defender XDR tenant synced through Microsoft Graph, end to end: the Graph source behind the
IncidentSource port in the production runtime (real msal, real aiohttp over TLS, real SQLite)
against the Graph and ServiceNow emulators (GRAPH.md; issue: Defender XDR incidents through
Microsoft Graph)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.app.leadership import Leadership
from agent.app.runtime import Runtime
from agent.cli import commands
from agent.errors import LeaseLost
from agent.store.lease import Lease
from agent.sync.cycle import CycleOptions, run_workspaces
from agent.testing.emulators.graph_tenant import DefenderTenant
from agent.testing.emulators.stack import DEFAULT_APP_NAME, EmulatorStack
from tests.e2e import Env, writes
from tests.test_lease import FAST, Clock

OWN = f"API-App:{DEFAULT_APP_NAME}"
ALICE, BOB = "alice@contoso.example", "bob@contoso.example"


@pytest.fixture
async def xdr(tmp_path: Path) -> AsyncIterator[Env]:
    """The stack's Defender tenant as ``[defender:xdr]`` (tag ``snow``), no workspace."""
    async with EmulatorStack(directory=tmp_path / "emu") as stack:
        cfg = stack.write_config(
            tmp_path / "agent.ini", state_db=tmp_path / "state.db", workspaces=[], defender="xdr",
            extra={"agent": {"max_concurrency": "4"}},
        )  # fmt: skip
        section = {"oauth": "default", "graph_url": stack.graph_url, "servicenow": "default",
                   "incident_filter": "snow"}  # fmt: skip
        yield Env(
            stack, tmp_path, cfg, [], defaults={"defender:xdr": section, "agent": {"max_concurrency": "4"}}
        )


def tenant(env: Env) -> DefenderTenant:
    return env.stack.defender


def key(env: Env, graph_id: str) -> str:
    return f"{env.stack.tenant.lower()}:{graph_id}"


async def cycle(env: Env) -> Any:
    return await env.stats("xdr")


def new_incident(env: Env, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("custom_tags", ["snow"])
    kwargs.setdefault("display_name", "Multi-stage incident on one endpoint")
    return tenant(env).create_incident(**kwargs)


def graph_writes(env: Env, mark: int) -> list[Any]:
    return [c for c in writes(env.calls_since(mark)) if c.system == "graph"]


def patches(env: Env) -> list[tuple[str, tuple[str, ...]]]:
    """(incident id, the properties sent) of every PATCH the tenant takes from now on."""
    seen: list[tuple[str, tuple[str, ...]]] = []

    def listen(kind: str, incident_id: str, details: dict[str, Any]) -> None:
        if kind == "updated" and details.get("origin") == "graph-api":
            seen.append((incident_id, tuple(sorted(details["sent"]))))

    tenant(env).listeners.append(listen)
    return seen


def journal(env: Env, sys_id: str, element: str = "work_notes") -> list[str]:
    return [row["value"] for row in env.snow.journal(sys_id, element)]


async def test_a_tagged_incident_gets_one_ticket_with_its_portal_link_alerts_and_evidence(xdr: Env) -> None:
    env = xdr
    inc = new_incident(env, severity="high", alerts=2)
    new_incident(env, custom_tags=[])  # not tagged: not synced
    stats = await cycle(env)
    assert stats.created == 1
    rec = env.snow_record(key(env, inc["id"]))
    assert rec["impact"] == "1" and rec["correlation_display"] == "Defender/xdr"
    assert inc["incidentWebUrl"] in rec["description"]  # incidentWebUrl in the ticket
    notes = "\n".join(journal(env, rec["sys_id"]))
    for alert in tenant(env).alerts_of(inc["id"]):
        assert alert["title"] in notes  # F: one line per alert
    # The ticket number went back as a custom tag, merged with the tags already there (D.2).
    tags = tenant(env).incident(inc["id"])["customTags"]
    assert tags == ["snow", rec["number"]]
    assert tenant(env).incident(inc["id"])["lastModifiedBy"] == OWN
    mark = env.stack.recorder.mark()
    stats = await cycle(env)
    assert (stats.created, stats.updated_snow, stats.updated_sentinel) == (0, 0, 0)
    assert graph_writes(env, mark) == [] and len(env.snow_records()) == 1


async def test_severity_status_and_owner_both_ways(xdr: Env) -> None:
    env = xdr
    inc = new_incident(env, severity="medium")
    await cycle(env)
    rec = env.snow_record(key(env, inc["id"]))
    tenant(env).analyst_update(inc["id"], severity="high", status="inProgress", assignedTo=ALICE)
    stats = await cycle(env)
    rec = env.snow_record(key(env, inc["id"]))
    assert stats.updated_snow == 1
    assert (rec["impact"], rec["state"]) == ("1", "2")
    assert rec["assigned_to"] == env.stack.snow_user_ids["default"]["alice.analyst"]
    env.snow.analyst_update(
        "incident", rec["sys_id"],
        {"impact": "3", "assigned_to": env.stack.snow_user_ids["default"]["bob.hunter"]},
    )  # fmt: skip
    sent = patches(env)
    stats = await cycle(env)
    assert stats.updated_sentinel == 1
    got = tenant(env).incident(inc["id"])
    assert (got["severity"], got["assignedTo"], got["status"]) == ("low", BOB, "inProgress")
    assert sent == [(inc["id"], ("assignedTo", "severity"))]  # D.2: only the changed properties


async def test_closing_in_servicenow_resolves_in_one_patch_and_reopening_reopens(xdr: Env) -> None:
    env = xdr
    inc = new_incident(env)
    await cycle(env)
    rec = env.snow_record(key(env, inc["id"]))
    env.snow.analyst_update(
        "incident", rec["sys_id"],
        {"state": "6", "close_code": "Solution provided", "close_notes": "removed the implant"},
    )  # fmt: skip
    sent = patches(env)
    await cycle(env)
    got = tenant(env).incident(inc["id"])
    assert got["status"] == "resolved" and got["resolvingComment"] == "removed the implant"
    # H.4 without [closure_to_defender]: the Sentinel classification, determination other.
    assert (got["classification"], got["determination"]) == ("truePositive", "other")
    # D.3: status, classification, determination and the comment in one PATCH.
    assert sent == [(inc["id"], ("classification", "determination", "resolvingComment", "status"))]
    tenant(env).analyst_update(inc["id"], status="active")  # reopened in the portal
    await cycle(env)
    assert env.snow_record(key(env, inc["id"]))["state"] in ("1", "2")


async def test_closure_to_defender_gives_the_pair(xdr: Env) -> None:
    env = xdr
    env.rewrite({"closure_to_defender": {"Solution provided": "truePositive/malware"}})
    inc = new_incident(env)
    await cycle(env)
    rec = env.snow_record(key(env, inc["id"]))
    env.snow.analyst_update(
        "incident", rec["sys_id"], {"state": "6", "close_code": "Solution provided", "close_notes": "x"}
    )
    await cycle(env)
    got = tenant(env).incident(inc["id"])
    assert (got["status"], got["classification"], got["determination"]) == (
        "resolved",
        "truePositive",
        "malware",
    )


async def test_resolved_in_defender_closes_the_ticket(xdr: Env) -> None:
    env = xdr
    inc = new_incident(env)
    await cycle(env)
    tenant(env).analyst_update(
        inc["id"], status="resolved", classification="falsePositive", determination="notMalicious",
        resolvingComment="benign admin script",
    )  # fmt: skip
    await cycle(env)
    rec = env.snow_record(key(env, inc["id"]))
    assert rec["state"] in ("6", "7") and "benign admin script" in rec["close_notes"]


async def test_an_auto_resolved_incident_resolves_the_ticket_with_the_default(xdr: Env) -> None:
    env = xdr
    inc = new_incident(env, alerts=2)
    await cycle(env)
    for alert in tenant(env).alerts_of(inc["id"]):
        tenant(env).resolve_alert(alert["id"])  # B.5: the last one resolves the incident
    assert tenant(env).incident(inc["id"])["classification"] == "unknown"
    await cycle(env)
    rec = env.snow_record(key(env, inc["id"]))
    assert rec["state"] in ("6", "7") and rec["close_code"]


async def test_comments_cross_once_each_way(xdr: Env) -> None:
    env = xdr
    inc = new_incident(env)
    await cycle(env)
    rec = env.snow_record(key(env, inc["id"]))
    tenant(env).analyst_comment(inc["id"], "Isolated the device pending review.")
    env.snow.analyst_update("incident", rec["sys_id"], {"work_notes": "Blocked the sender domain"},
                            by="bob.hunter")  # fmt: skip
    for _ in range(3):
        await cycle(env)
    comments = [c["comment"] for c in tenant(env).comments(inc["id"])]
    assert sum("Blocked the sender domain" in c for c in comments) == 1
    assert sum("Isolated the device" in c for c in comments) == 1  # never echoed back
    work = journal(env, rec["sys_id"], env.config.agent.comment_field)
    assert sum("Isolated the device pending review." in n for n in work) == 1
    assert not any("Blocked the sender domain" in n for n in work if n != "Blocked the sender domain")


async def test_a_change_on_both_sides_ends_agreed_under_the_conflict_policy(xdr: Env) -> None:
    env = xdr
    inc = new_incident(env, severity="medium")
    await cycle(env)
    rec = env.snow_record(key(env, inc["id"]))
    env.snow.analyst_update("incident", rec["sys_id"], {"impact": "1"})
    tenant(env).analyst_update(inc["id"], severity="low")  # a person, after our read is stale
    await cycle(env)
    await cycle(env)
    got, rec = tenant(env).incident(inc["id"]), env.snow_record(key(env, inc["id"]))
    # Both sides agree again, on one of the two values (the conflict policy), never half and half.
    assert {"low": "3", "high": "1"}[got["severity"]] == rec["impact"]


async def test_a_merged_incident_closes_its_ticket_as_a_duplicate_of_the_survivors(xdr: Env) -> None:
    env = xdr
    first, second = new_incident(env, alerts=1), new_incident(env, alerts=3)
    await cycle(env)
    rec1, rec2 = env.snow_record(key(env, first["id"])), env.snow_record(key(env, second["id"]))
    tenant(env).merge([first["id"], second["id"]], second["id"])  # H.3
    sent = patches(env)
    await cycle(env)
    await cycle(env)
    rec1 = env.snow_record(key(env, first["id"]))
    assert rec1["state"] in ("6", "7") and rec1["parent_incident"] == rec2["sys_id"]
    assert rec1["close_code"] == "Duplicate"  # the instance has that resolution code
    assert any(second["id"] in n for n in journal(env, rec1["sys_id"]))
    # Never PATCH redirected (D.3): the merged incident is not written at all.
    assert [i for i, _ in sent if i == first["id"]] == []
    assert tenant(env).incident(first["id"])["status"] == "redirected"


# --- check ----------------------------------------------------------------------------------------


async def _check(env: Env, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = await commands.check(env.config)
    return code, capsys.readouterr().out.splitlines()


async def test_check_proves_the_graph_permission_and_writes_nothing(
    xdr: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env = xdr
    new_incident(env)
    mark = env.stack.recorder.mark()
    code, lines = await _check(env, capsys)
    assert code == 0, "\n".join(lines)
    assert [
        x for x in lines if x.startswith("ok ") and "[defender:xdr]" in x and "ReadWrite.All granted" in x
    ]
    assert graph_writes(env, mark) == []


async def test_check_names_the_missing_permission(xdr: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env = xdr
    # Only the read permission was consented: reading works, the sync could not write (A.2).
    env.stack.entra.grant_roles(env.stack.client_id, env.stack.graph_url, "SecurityIncident.Read.All")
    code, lines = await _check(env, capsys)
    failed = [x for x in lines if x.startswith("FAIL ") and "[defender:xdr]" in x]
    assert code == 1 and len(failed) == 1 and "SecurityIncident.ReadWrite.All" in failed[0], lines
    assert "Grant admin consent" in lines[lines.index(failed[0]) + 1]
    # No permission at all: Graph's 403 names what it wanted (A.2).
    env.stack.entra.grant_roles(env.stack.client_id, env.stack.graph_url)
    code, lines = await _check(env, capsys)
    failed = [x for x in lines if x.startswith("FAIL ") and "[defender:xdr]" in x]
    assert code == 1 and "SecurityIncident.Read.All" in failed[0] and "no application permission" in failed[0]


async def test_a_merged_incidents_comments_are_carried_to_the_survivors_ticket_once(xdr: Env) -> None:
    env = xdr
    first, second = new_incident(env, alerts=1), new_incident(env, alerts=3)
    await cycle(env)
    rec1, rec2 = env.snow_record(key(env, first["id"])), env.snow_record(key(env, second["id"]))
    tenant(env).analyst_comment(first["id"], "Seen beaconing to 203.0.113.7")
    env.snow.analyst_update(
        "incident", rec1["sys_id"], {"work_notes": "Escalated to tier 2"}, by="bob.hunter"
    )
    await cycle(env)
    await cycle(env)
    tenant(env).merge([first["id"], second["id"]], second["id"])  # comments stay behind (E, H.3)
    for _ in range(3):
        await cycle(env)
    carried = [n for n in journal(env, rec2["sys_id"]) if "Seen beaconing to 203.0.113.7" in n]
    assert len(carried) == 1 and first["id"] in carried[0] and rec1["number"] in carried[0]
    assert "Escalated to tier 2" not in carried[0]  # the agent's own copy of a work note stays


async def test_graph_writes_pass_the_leases_write_gate(xdr: Env) -> None:
    """In an active/standby pair every remote write asks the lease first: Graph's too."""
    env = xdr
    inc = new_incident(env)
    lead = Leadership(env.config)
    lead.lease = Lease("postgresql://sync@127.0.0.1/sync", None, FAST, clock=Clock())
    lead.lease.epoch, lead.lease.deadline = 1, -1.0  # its own deadline passed: a standby now
    async with Runtime(env.config) as rt:
        lead.bind(rt)
        assert [h.write_gate for h in rt.graph.values()] == [lead.lease.check]
        results = await run_workspaces(rt.syncs(), CycleOptions())
    assert isinstance(results["xdr"], LeaseLost) or env.snow_records() == []
    assert tenant(env).incident(inc["id"])["lastModifiedBy"] != OWN  # nothing written to Graph
