"""Table profiles (REFERENCE C.8, E.5): ITSM ``incident`` and Security Incident Response
``sn_si_incident``, each synced end to end against the emulator in its strict default mode."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import load_config
from agent.connectors.servicenow.profiles import ITSM, SIR
from agent.errors import ConfigError
from agent.log import log
from tests.e2e import Env, props, writes

ALICE, BOB, CAROL = "alice@contoso.example", "bob@contoso.example", "carol@contoso.example"


@dataclass(frozen=True)
class Table:
    """What a test needs to know of one profile's table."""

    name: str
    prefix: str
    severity: str  # the severity field
    caller: str
    new: str
    active: str
    closing: str  # where a Sentinel closure lands
    true_positive_code: str
    snow_close: tuple[str, str]  # an analyst's closing state and close code
    snow_close_means: tuple[str, str | None]


TABLES = {
    "itsm": Table(
        "incident", "INC", "impact", "caller_id", "1", "2", "6", "Solution provided",
        ("6", "Resolved by caller"), ("BenignPositive", "SuspiciousButExpected"),
    ),
    "sir": Table(
        "sn_si_incident", "SIR", "severity", "caller", "10", "16", "3", "Threat mitigated",
        ("3", "False positive"), ("FalsePositive", "IncorrectAlertLogic"),
    ),
}  # fmt: skip


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []
    log.sinks.append(found.append)
    yield found
    log.sinks.remove(found.append)


def use(env: Env, profile: str, **servicenow: str) -> Table:
    table = TABLES[profile]
    keys = {"caller_id": env.stack.snow_user, **servicenow}
    if profile == "sir":
        keys["incident_table"] = "sn_si_incident"
    env.rewrite({"agent": {"overlap": "0s"}, "servicenow": keys})
    return table


def tickets(env: Env, table: Table, incident: str) -> list[dict[str, str]]:
    rows = env.snow.tables[table.name].values()
    return sorted((r for r in rows if r["correlation_id"] == incident), key=lambda r: r["number"])


def ticket(env: Env, table: Table, incident: str) -> dict[str, str]:
    [only] = [r for r in tickets(env, table, incident) if r["active"] == "true"] or tickets(
        env, table, incident
    )
    return only


def user_id(env: Env, upn: str) -> str:
    return next(sid for sid, u in env.snow.tables["sys_user"].items() if u["email"] == upn)


# --- configuration ----------------------------------------------------------------------------


def _ini(tmp_path: Path, text: str) -> Path:
    base = (
        "[oauth]\ntenant_id = 00000000-0000-0000-0000-000000000000\n"
        "client_id = 11111111-1111-1111-1111-111111111111\nclient_secret = s\n"
        "[workspace:soc]\nsubscription_id = 22222222-2222-2222-2222-222222222222\n"
        "resource_group = rg\nworkspace_name = law\n"
    )
    path = tmp_path / "agent.ini"
    path.write_text(base + text)
    return path


def _problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError, match=r"^\[") as info:  # each problem names its section
        load_config(_ini(tmp_path, text))
    return info.value.problems


def test_e5_sn_si_incident_selects_the_sir_profile_and_its_maps(tmp_path: Path) -> None:
    config = load_config(
        _ini(tmp_path, "[servicenow]\ninstance_url = https://x.example\nusername = u\npassword = p\n"
             "incident_table = sn_si_incident\n")
    )  # fmt: skip
    inst = config.servicenow["default"]
    assert inst.profile.name == "sir" and inst.severity_field == "severity"
    maps = config.mappings.for_instance("default")
    assert maps.status_to_servicenow == dict(SIR.status_to_servicenow)  # Closed = 3 is accepted
    assert maps.closure_to_servicenow["FalsePositive"] == "False positive"
    assert inst.profile.closed_states == ("3",) and inst.profile.caller_field == "caller"


def test_e5_a_profile_can_be_chosen_and_its_states_overridden(tmp_path: Path) -> None:
    config = load_config(
        _ini(tmp_path, "[servicenow]\ninstance_url = https://x.example\nusername = u\npassword = p\n"
             "incident_table = u_incident_copy\ntable_profile = itsm\nclosed_states = 7, 9\n"
             "follow_up_field = none\n")
    )  # fmt: skip
    profile = config.servicenow["default"].profile
    assert (profile.name, profile.closed_states, profile.follow_up_field) == ("itsm", ("7", "9"), "")
    assert config.mappings.for_instance("default").status_to_servicenow == dict(ITSM.status_to_servicenow)


def test_e5_a_custom_table_needs_its_states_and_status_maps(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path, "[servicenow]\ninstance_url = https://x.example\nusername = u\npassword = p\n"
        "incident_table = u_security_case\n",
    )  # fmt: skip
    assert problems[0].startswith("[servicenow] closed_states: required: incident_table = u_security_case")
    assert any("custom table has no default [status_to_servicenow]" in p for p in problems)


def test_e5_itsm_maps_on_a_sir_instance_are_refused_with_the_way_out(tmp_path: Path) -> None:
    problems = _problems(
        tmp_path,
        "[servicenow]\ninstance_url = https://x.example\nusername = u\npassword = p\n"
        "[servicenow:sir]\ninstance_url = https://y.example\nusername = u\npassword = p\n"
        "incident_table = sn_si_incident\n"
        "[status_to_servicenow]\nNew = 1\nActive = 2\nClosed = 6\n"
        "[status_to_sentinel]\n1 = New\n2 = Active\n6 = Closed\n"
        "[status_to_servicenow:nope]\nNew = 1\nActive = 2\nClosed = 6\n",
    )
    assert "[status_to_servicenow] Closed: '6' is not a resolved/closed state (3 Closed) for " in "\n".join(
        problems
    )
    assert any("[status_to_servicenow:sir] would apply to that instance alone" in p for p in problems)
    assert "[status_to_servicenow:nope]: no [servicenow:nope] section (instances: default, sir)" in problems


def test_e5_an_instance_of_its_own_gets_its_own_maps(tmp_path: Path) -> None:
    config = load_config(
        _ini(
            tmp_path,
            "[servicenow]\ninstance_url = https://x.example\nusername = u\npassword = p\n"
            "[servicenow:sir]\ninstance_url = https://y.example\nusername = u\npassword = p\n"
            "incident_table = sn_si_incident\n"
            "[status_to_servicenow]\nNew = 1\nActive = 2\nClosed = 7\n"
            "[status_to_servicenow:sir]\nNew = 10\nActive = 18\nClosed = 3\n",
        )
    )
    assert config.mappings.for_instance("default").status_to_servicenow["Closed"] == "7"
    sir = config.mappings.for_instance("sir")
    assert sir.status_to_servicenow == {"New": "10", "Active": "18", "Closed": "3"}
    assert sir.sources["status_to_servicenow"] == "status_to_servicenow:sir"
    assert sir.status_to_sentinel == dict(SIR.status_to_sentinel) and sir.sources["status_to_sentinel"] == ""


# --- both profiles end to end -----------------------------------------------------------------


@pytest.mark.parametrize("profile", ["itsm", "sir"])
async def test_e5_create_fields_closure_reopen_and_comments_both_ways(env: Env, profile: str) -> None:
    table = use(env, profile)
    ws = env.ws()
    name = ws.create_incident(title="phish", severity="High", labels=["snow"], owner_upn=ALICE)["name"]
    await env.stats()
    rec = ticket(env, table, name)
    assert rec["number"].startswith(table.prefix) and rec["state"] == table.new
    assert (rec[table.severity], rec["assigned_to"]) == ("1", user_id(env, ALICE))
    assert rec[table.caller] == env.stack.snow_user_ids["default"][env.stack.snow_user]
    assert rec["number"] in [x["labelName"] for x in props(ws, name)["labels"]]

    # severity, status and owner both ways
    ws.analyst_update(name, severity="Low", owner_upn=BOB)
    await env.stats()
    rec = ticket(env, table, name)
    assert (rec[table.severity], rec["assigned_to"]) == ("3", user_id(env, BOB))
    env.snow.analyst_update(
        table.name,
        rec["sys_id"],
        {table.severity: "1", "state": table.active, "assigned_to": user_id(env, CAROL)},
    )
    await env.stats()
    p = props(ws, name)
    assert (p["severity"], p["status"], p["owner"]["userPrincipalName"].lower()) == ("High", "Active", CAROL)

    # comments both ways
    ws.analyst_comment(name, "seen in the mail gateway")
    env.snow.analyst_update(
        table.name, rec["sys_id"], {"work_notes": "user confirmed the click"}, by="carol.responder"
    )
    await env.stats()
    assert any("seen in the mail gateway" in r["value"] for r in env.snow.journal(rec["sys_id"]))
    assert any("user confirmed the click" in c["properties"]["message"] for c in ws.comments(name))

    # closure Sentinel -> ServiceNow, in the profile's closing state with its close code
    ws.analyst_update(
        name, status="Closed", classification="TruePositive", classificationReason="SuspiciousActivity"
    )
    await env.stats()
    rec = ticket(env, table, name)
    assert (rec["state"], rec["close_code"]) == (table.closing, table.true_positive_code)
    assert rec["close_notes"].startswith("Closed in Microsoft Sentinel as TruePositive")

    # reopen: an ITSM resolved ticket reopens; a closed SIR ticket is read-only: a follow-up
    ws.analyst_update(name, status="Active", classification=None, classificationReason=None)
    mark = env.stack.recorder.mark()
    await env.stats()
    assert not [c for c in env.calls_since(mark) if c.status == 403]
    current = ticket(env, table, name)
    assert current["state"] == table.active
    if profile == "sir":
        first, follow_up = tickets(env, table, name)
        assert first["state"] == "3" and follow_up["sys_id"] == current["sys_id"]
        assert f"Follow-up of {first['number']}" in follow_up["description"]
    assert props(ws, name)["status"] == "Active"

    # closure ServiceNow -> Sentinel with the profile's close code
    state, code = table.snow_close
    env.snow.analyst_update(
        table.name, current["sys_id"], {"state": state, "close_code": code, "close_notes": "done"}
    )
    await env.stats()
    p = props(ws, name)
    assert (p["status"], p["classification"], p.get("classificationReason")) == (
        "Closed",
        *table.snow_close_means,
    )


# --- E.9: closed tickets are read-only -----------------------------------------------------------


async def _closed_in_both(env: Env) -> tuple[str, dict[str, str]]:
    """An incident closed in Sentinel whose ticket was resolved and then closed by the platform."""
    ws = env.ws()
    name = ws.create_incident(title="t", labels=["snow"])["name"]
    await env.stats()
    ws.analyst_update(name, status="Closed", classification="Undetermined")
    await env.stats()
    assert ticket(env, TABLES["itsm"], name)["state"] == "6"
    env.stack.clock.advance(86400 + 60)  # glide.ui.autoclose.time: a day later it closes itself
    await env.stats()
    rec = ticket(env, TABLES["itsm"], name)
    assert rec["state"] == "7" and props(ws, name)["status"] == "Closed"
    return name, rec


async def test_e9_a_reopen_after_the_ticket_closed_itself_opens_a_follow_up(
    env: Env, records: list[dict[str, Any]]
) -> None:
    use(env, "itsm")
    name, closed = await _closed_in_both(env)
    ws = env.ws()
    ws.analyst_update(name, status="Active", classification=None)
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert stats.failures == 0 and stats.created == 1
    calls = env.calls_since(mark)
    assert not [c for c in calls if c.status == 403]  # no forbidden PATCH was even tried
    assert not [c for c in writes(calls) if c.path.endswith(closed["sys_id"])]
    old, new = tickets(env, TABLES["itsm"], name)
    assert old["sys_id"] == closed["sys_id"] and old["state"] == "7"
    assert (new["state"], new["parent_incident"]) == ("2", closed["sys_id"])
    assert new["description"].startswith(f"Follow-up of {closed['number']}")
    labels = [x["labelName"] for x in props(ws, name)["labels"]]
    assert closed["number"] in labels and new["number"] in labels
    assert props(ws, name)["status"] == "Active"  # Sentinel is never re-closed
    [made] = [r for r in records if r["event"] == "snow_follow_up_created"]
    assert made["previous"] == closed["number"]
    # the link moved, the closed ticket is in its history; the next cycle has nothing to do
    mark = env.stack.recorder.mark()
    await env.stats()
    assert writes(env.calls_since(mark)) == []
    ws.analyst_comment(name, "still phishing")
    await env.stats()
    assert any("still phishing" in r["value"] for r in env.snow.journal(new["sys_id"]))
    assert not any("still phishing" in r["value"] for r in env.snow.journal(closed["sys_id"]))


async def test_e9_reopen_closed_note_keeps_the_ticket_and_says_so_once(
    env: Env, records: list[dict[str, Any]]
) -> None:
    use(env, "itsm", reopen_closed="note")
    name, closed = await _closed_in_both(env)
    ws = env.ws()
    ws.analyst_update(name, status="Active", classification=None)
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert (stats.created, stats.failures) == (0, 0)
    assert not [c for c in env.calls_since(mark) if c.status == 403]
    [only] = tickets(env, TABLES["itsm"], name)
    assert only["state"] == "7"
    notes = [c for c in ws.comments(name) if closed["number"] in c["properties"]["message"]]
    assert len(notes) == 1 and "stays closed" in notes[0]["properties"]["message"]
    for _ in range(2):  # no retry, no second note, Sentinel stays open
        mark = env.stack.recorder.mark()
        await env.stats()
        assert [c for c in writes(env.calls_since(mark)) if c.system == "servicenow"] == []
    assert len([c for c in ws.comments(name) if closed["number"] in c["properties"]["message"]]) == 1
    assert props(ws, name)["status"] == "Active"


async def test_e9_comments_for_a_closed_ticket_are_dropped_with_one_warning(
    env: Env, records: list[dict[str, Any]]
) -> None:
    use(env, "itsm")
    name, closed = await _closed_in_both(env)
    ws = env.ws()
    before = len(env.snow.journal(closed["sys_id"]))
    for text in ("late remark", "another one"):
        ws.analyst_comment(name, text)
        mark = env.stack.recorder.mark()
        stats = await env.stats()
        assert stats.failures == 0 and stats.comments_deferred == 0
        assert not [c for c in env.calls_since(mark) if c.status == 403]
    assert len(env.snow.journal(closed["sys_id"])) == before
    assert [r["snow_number"] for r in records if r["event"] == "ticket_closed_dropped"] == [closed["number"]]
    mark = env.stack.recorder.mark()
    await env.stats()
    assert writes(env.calls_since(mark)) == []  # nothing is retried


async def test_e9_the_platform_closing_a_resolved_ticket_never_recloses_a_reopened_incident(env: Env) -> None:
    use(env, "itsm")
    ws = env.ws()
    name = ws.create_incident(title="t", labels=["snow"])["name"]
    await env.stats()
    ws.analyst_update(name, status="Closed", classification="Undetermined")
    await env.stats()
    env.stack.clock.advance(86400 + 60)  # closes itself before the agent looks again ...
    ws.analyst_update(name, status="Active", classification=None)  # ... and the analyst reopens
    await env.stats()
    assert props(ws, name)["status"] == "Active"
    old, new = tickets(env, TABLES["itsm"], name)
    assert (old["state"], new["state"]) == ("7", "2")
