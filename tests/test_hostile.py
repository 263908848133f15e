"""Hostile and broken input, one test each: the agent logs a clear event, handles or skips the
incident concerned, leaves every other incident alone and loses nothing.

Every test runs a healthy bystander incident next to the hostile one and checks that it
synced normally.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from agent.config import load_config
from agent.errors import TransientError
from agent.testing.emulators.sentinel import SentinelWorkspace
from tests.e2e import Env, props
from tests.sync_invariants import Checker, TimeTravel

BOB = "bob@contoso.example"


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    from agent.log import log

    log.sinks.append(records.append)
    yield records
    log.sinks.remove(records.append)


@pytest.fixture
def time_travel(monkeypatch: pytest.MonkeyPatch) -> TimeTravel:
    return TimeTravel(monkeypatch)


def named(events: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == event]


async def _bystander(env: Env) -> str:
    """A healthy linked incident; returns its name."""
    inc = env.ws().create_incident(title="bystander", severity="Low", labels=["snow"])
    return str(inc["name"])


async def _bystander_changes(env: Env, name: str) -> None:
    """Change the bystander on both sides; the next cycle must carry both changes."""
    env.ws().analyst_update(name, severity="High")
    rec = env.snow_record(name)
    env.snow.analyst_update("incident", rec["sys_id"], {"state": "2"}, by="bob.hunter")


def _bystander_synced(env: Env, name: str) -> None:
    assert env.snow_record(name)["impact"] == "1"
    assert props(env.ws(), name)["status"] == "Active"


def _raw(ws: SentinelWorkspace, name: str) -> dict[str, Any]:
    """The stored incident itself (not a copy), for shapes the direct-access API cannot make."""
    result: dict[str, Any] = ws.incidents[name]
    return result


def _converged(env: Env, **kwargs: Any) -> None:
    found = Checker(env.stack, env.config).check(env.workspaces, **kwargs)
    assert found, found.problems


# --- malformed JSON ---------------------------------------------------------------------------


async def test_malformed_json_from_either_api(env: Env, events: list[dict[str, Any]]) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    other = ws.create_incident(title="other", severity="Medium", labels=["snow"])["name"]
    await env.stats()
    await env.stats()
    # a listing page cut off mid-document: the whole cycle stops before any write, cleanly
    # (three times: a garbled answer is transient, and a read is retried twice within the cycle)
    for _ in range(3):
        env.stack.sentinel.faults.once("incidents.list", 200, body=b'{"value": [{"name": "x", "prop')
    await _bystander_changes(env, bystander)
    failed = (await env.cycle())["soc"]
    assert isinstance(failed, TransientError) and "not valid JSON" in str(failed)
    assert named(events, "cycle_failed")[-1]["error"].count("InvalidJson") == 1
    assert env.snow_record(bystander)["impact"] == "3"  # nothing was half-done
    for _ in range(3):
        env.snow.faults.once("table.list", 200, body=b"<html><body>Instance is hibernating</body></html>")
    assert isinstance((await env.cycle())["soc"], Exception)
    # a garbled answer to one incident's write: that incident fails alone and is retried later
    ws.analyst_update(other, severity="High")
    env.snow.faults.fail(env.snow_record(other)["sys_id"], 200, method="PATCH", body=b'{"result": {')
    stats = await env.stats()
    assert stats.failures == 1
    [bad] = [e for e in named(events, "incident_failed") if e["incident"] == other]
    assert "InvalidJson" in bad["error"]
    _bystander_synced(env, bystander)
    env.snow.faults.clear()


# --- enums ------------------------------------------------------------------------------------


async def test_unknown_and_missing_enum_values(
    env: Env, events: list[dict[str, Any]], time_travel: TimeTravel
) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    critical = ws.create_incident(title="critical", severity="Critical", labels=["snow"])["name"]
    archived = ws.create_incident(title="archived", status="Archived", labels=["snow"])["name"]
    bare = ws.create_incident(title="no severity", labels=["snow"])["name"]
    del _raw(ws, bare)["properties"]["severity"]
    stats = await env.stats()
    assert stats.created == 4 and stats.failures == 0  # every one gets its ticket
    unmapped = {(e["incident"], e["field"], e["value"]) for e in named(events, "value_unmapped")}
    assert {(critical, "severity", "Critical"), (archived, "status", "Archived"), (bare, "severity", "")} <= (
        unmapped
    )
    assert env.snow_record(critical)["impact"] == "3"  # ServiceNow's default until someone maps it
    # ServiceNow assigns all three. This emulator refuses to take an unknown value back in a
    # PUT, so those incidents fail with the reason and are parked; the bystander syncs.
    for name in (critical, archived, bare):
        rec = env.snow_record(name)
        env.snow.analyst_update("incident", rec["sys_id"], {"assigned_to": _bob(env)}, by="bob.hunter")
    await _bystander_changes(env, bystander)
    stats = await env.stats()
    assert stats.failures == 3
    reasons = {e["incident"]: e["error"] for e in named(events, "incident_failed")}
    assert "'Critical' is not valid for 'severity'" in reasons[critical]
    assert "'Archived' is not valid for 'status'" in reasons[archived]
    assert props(ws, critical)["severity"] == "Critical"  # never overwritten with a guess
    _bystander_synced(env, bystander)
    # An analyst picks a known value; at its next retry the incident syncs both ways: the
    # ServiceNow owner arrives in Sentinel and the severity in ServiceNow. Nothing was lost.
    ws.analyst_update(critical, severity="High")
    time_travel.advance(timedelta(minutes=2))
    await env.stats()
    assert env.snow_record(critical)["impact"] == "1"
    assert props(ws, critical)["owner"]["userPrincipalName"] == BOB


def _bob(env: Env) -> str:
    return env.stack.snow_user_ids["default"]["bob.hunter"]


# --- owners -----------------------------------------------------------------------------------


async def test_null_owners(env: Env, events: list[dict[str, Any]]) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    null_owner = ws.create_incident(title="owner null", labels=["snow"])["name"]
    _raw(ws, null_owner)["properties"]["owner"] = None
    empty_owner = ws.create_incident(title="owner fields null", labels=["snow"])["name"]
    _raw(ws, empty_owner)["properties"]["owner"] = dict.fromkeys(
        ("objectId", "email", "assignedTo", "userPrincipalName", "ownerType")
    )
    await env.stats()
    assert env.snow_record(null_owner)["assigned_to"] == ""
    assert env.snow_record(empty_owner)["assigned_to"] == ""
    # ServiceNow assigns one; the other side's null owner then arrives as "unassigned" again
    env.snow.analyst_update(
        "incident", env.snow_record(null_owner)["sys_id"], {"assigned_to": _bob(env)}, by="bob.hunter"
    )
    await env.stats()
    assert props(ws, null_owner)["owner"]["userPrincipalName"] == BOB
    _raw(ws, null_owner)["properties"]["owner"] = None
    ws.analyst_update(null_owner, title="owner removed")  # a new etag and modification time
    await _bystander_changes(env, bystander)
    await env.stats()
    assert env.snow_record(null_owner)["assigned_to"] == ""
    _bystander_synced(env, bystander)
    assert not named(events, "cycle_crashed")
    await env.stats()
    _converged(env)


# --- long comments ----------------------------------------------------------------------------


async def test_comments_of_30k_and_more(env: Env, events: list[dict[str, Any]]) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    name = ws.create_incident(title="long comments", labels=["snow"])["name"]
    await env.stats()
    # Sentinel's own limit is 30,000 (A.8): the longest comment it can hold must arrive whole.
    head, tail = "Sentinel analysis. ", " END-OF-SENTINEL-COMMENT"
    long_comment = head + "x" * (30_000 - len(head) - len(tail)) + tail
    ws.analyst_comment(name, long_comment, author_upn=BOB)
    rec = env.snow_record(name)
    long_note = "ServiceNow note 🔥 " + "y" * 40_000 + " END-OF-WORK-NOTE"
    env.snow.analyst_update("incident", rec["sys_id"], {"work_notes": long_note}, by="bob.hunter")
    await _bystander_changes(env, bystander)
    stats = await env.stats()
    assert stats.failures == 0
    notes = [
        j["value"] for j in env.snow.journal(rec["sys_id"]) if j["sys_created_by"] == env.stack.snow_user
    ]
    assert any(long_comment in n for n in notes)  # ServiceNow takes it whole
    copies = [
        c["properties"]["message"]
        for c in ws.comments(name)
        if "ServiceNow note" in c["properties"]["message"]
    ]
    assert len(copies) == 1
    assert len(copies[0].encode("utf-16-le")) // 2 <= 30_000  # Sentinel's limit, as it counts
    assert "truncated" in copies[0] and rec["number"] in copies[0]  # says where the whole text is
    assert long_note in [j["value"] for j in env.snow.journal(rec["sys_id"])]  # the original stays
    _bystander_synced(env, bystander)
    await env.stats()
    assert len(ws.comments(name)) == 2  # nothing copied twice on the next cycles


# --- HTML and script ----------------------------------------------------------------------------


async def test_html_and_script_in_titles_and_comments(env: Env, events: list[dict[str, Any]]) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    title = '<script>alert("t")</script><img src=x onerror=alert(1)> Phish & "quotes"'
    name = ws.create_incident(title=title, description="<b>bold</b><script>x()</script>", labels=["snow"])[
        "name"
    ]
    await env.stats()
    rec = env.snow_record(name)
    assert rec["short_description"] == title  # plain text field: stored as text, never interpreted
    ws.analyst_comment(
        name, '<p>Found <a href="https://evil.example">this</a></p><script>steal()</script>', BOB
    )
    env.snow.analyst_update(
        "incident",
        rec["sys_id"],
        {"work_notes": "<script>alert('note')</script> & <b>bold</b>"},
        by="bob.hunter",
    )
    await _bystander_changes(env, bystander)
    stats = await env.stats()
    assert stats.failures == 0
    notes = [
        j["value"] for j in env.snow.journal(rec["sys_id"]) if j["sys_created_by"] == env.stack.snow_user
    ]
    copied = [n for n in notes if "Found" in n]
    assert len(copied) == 1 and "<script>" not in copied[0] and "<a " not in copied[0]
    assert "https://evil.example" in copied[0]  # the link target is kept as readable text
    back = [c["properties"]["message"] for c in ws.comments(name) if "note" in c["properties"]["message"]]
    assert len(back) == 1 and "alert('note')" in back[0]  # the analyst's text, byte for byte
    _bystander_synced(env, bystander)


# --- query metacharacters and OData quotes ------------------------------------------------------

HOSTILE_LABEL = "o'snow^NQactive=true^ORnumber!=x"
HOSTILE_UPN = "o'brien^ORactive=true^NQemail!=x@contoso.example"
HOSTILE_USER = "o'brien^NQuser_name!=x"


async def test_query_metacharacters_and_quotes_in_every_queried_value(
    env: Env, events: list[dict[str, Any]]
) -> None:
    stack, snow = env.stack, env.snow
    stack.directory.add(HOSTILE_UPN, "Eve O'Brien")
    eve = snow.add_user(HOSTILE_USER, HOSTILE_UPN, "Eve O'Brien")
    caller = snow.add_user("caller^NQactive=true", "caller@contoso.example", "Caller")
    group = snow.add_group("SOC ^OR name=Service Desk")
    env.rewrite(
        {
            "workspace:soc": {
                "incident_filter": HOSTILE_LABEL,
                "caller_id": "caller^NQactive=true",
                "assignment_group": "SOC ^OR name=Service Desk",
            },
        }
    )
    ws = env.ws()
    tagged = ws.create_incident(
        title="title with ^NQ and ' and \n newline", labels=[HOSTILE_LABEL], owner_upn=HOSTILE_UPN
    )["name"]
    ws.create_incident(title="near miss", labels=["o'snow"])  # a prefix of the label: not synced
    ws.create_incident(title="other label", labels=["snow"])
    stats = await env.stats()
    assert stats.created == 1 and stats.failures == 0
    [rec] = env.snow_records()
    assert rec["correlation_id"] == tagged
    assert rec["assigned_to"] == eve  # the owner matched exactly that user, not "active=true"
    assert rec["caller_id"] == caller and rec["assignment_group"] == group
    assert rec["short_description"].startswith("title with ^NQ and '")
    # and back: ServiceNow assigns Eve on a second incident, the e-mail maps to the odd UPN
    second = ws.create_incident(title="second", labels=[HOSTILE_LABEL])["name"]
    await env.stats()
    snow.analyst_update("incident", env.snow_record(second)["sys_id"], {"assigned_to": eve}, by="bob.hunter")
    await env.stats()
    assert props(ws, second)["owner"]["userPrincipalName"] == HOSTILE_UPN
    assert not named(events, "cycle_crashed") and not named(events, "cycle_failed")


async def test_newline_in_an_owner_is_skipped_not_fatal(env: Env, events: list[dict[str, Any]]) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    odd = ws.create_incident(title="odd owner", labels=["snow"])["name"]
    _raw(ws, odd)["properties"]["owner"] = {"userPrincipalName": "eve@contoso.example\n^NQactive=true"}
    stats = await env.stats()
    assert stats.created == 2  # the ticket is made; only the unusable owner is left out
    assert env.snow_record(odd)["assigned_to"] == ""
    assert [e for e in named(events, "owner_unknown_in_servicenow") if "\n" in e["upn"]]
    await _bystander_changes(env, bystander)
    await env.stats()
    _bystander_synced(env, bystander)
    assert not named(events, "cycle_crashed")


# --- unicode ------------------------------------------------------------------------------------


async def test_unicode_and_emoji(env: Env, events: list[dict[str, Any]]) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    title = "🔥 Ransomware in Zürich – 東京 office: ﷽ 👩🏽‍💻 \u200b end"
    name = ws.create_incident(title=title, description="Ünïcödé 🙂", labels=["snow"])["name"]
    await env.stats()
    rec = env.snow_record(name)
    assert rec["short_description"] == title
    assert "Ünïcödé 🙂" in rec["description"]
    ws.analyst_comment(name, "Beweis gesichert ✅ 🧪 — ok", BOB)
    env.snow.analyst_update("incident", rec["sys_id"], {"work_notes": "已隔离主机 🖥️"}, by="bob.hunter")
    await _bystander_changes(env, bystander)
    await env.stats()
    notes = [j["value"] for j in env.snow.journal(rec["sys_id"])]
    assert sum("Beweis gesichert ✅ 🧪 — ok" in n for n in notes) == 1
    assert sum("已隔离主机 🖥️" in c["properties"]["message"] for c in ws.comments(name)) == 1
    _bystander_synced(env, bystander)
    await env.stats()
    _converged(env)


# --- ServiceNow state -----------------------------------------------------------------------------


async def test_unknown_servicenow_state(env: Env, events: list[dict[str, Any]]) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    name = ws.create_incident(title="odd state", severity="Medium", labels=["snow"])["name"]
    await env.stats()
    rec = env.snow_record(name)
    env.snow.analyst_update("incident", rec["sys_id"], {"state": "42", "impact": "1"}, by="bob.hunter")
    await _bystander_changes(env, bystander)
    stats = await env.stats()
    assert stats.failures == 0
    assert {(e["incident"], e["field"], e["side"], e["value"]) for e in named(events, "value_unmapped")} == {
        (name, "status", "servicenow", "42")
    }
    assert props(ws, name)["status"] == "New"  # left alone
    assert props(ws, name)["severity"] == "High"  # the field that maps still synced
    _bystander_synced(env, bystander)
    env.snow.analyst_update("incident", rec["sys_id"], {"state": "2"}, by="bob.hunter")
    await env.stats()
    assert props(ws, name)["status"] == "Active"


# --- deletions ----------------------------------------------------------------------------------


async def test_incident_deleted_on_either_side(env: Env, events: list[dict[str, Any]]) -> None:
    ws = env.ws()
    bystander = await _bystander(env)
    gone_in_sentinel = ws.create_incident(title="deleted in Sentinel", labels=["snow"])["name"]
    gone_in_snow = ws.create_incident(title="deleted in ServiceNow", labels=["snow"])["name"]
    await env.stats()
    rec_a, rec_b = env.snow_record(gone_in_sentinel), env.snow_record(gone_in_snow)
    ws.delete_incident(gone_in_sentinel)
    env.snow.analyst_update("incident", rec_a["sys_id"], {"impact": "1"}, by="bob.hunter")
    env.snow.delete("incident", rec_b["sys_id"])
    ws.analyst_update(gone_in_snow, severity="High")
    await _bystander_changes(env, bystander)
    stats = await env.stats()
    assert stats.failures == 0 and stats.created == 0  # no new ticket for the deleted one
    assert [e["incident"] for e in named(events, "sentinel_incident_missing")] == [gone_in_sentinel]
    assert [e["sys_id"] for e in named(events, "snow_record_missing")] == [rec_b["sys_id"]]
    assert {e["missing"] for e in named(events, "pair_incomplete")} == {"sentinel", "servicenow"}
    assert len(env.snow_records()) == 2  # the bystander's and the orphaned one, kept as they are
    _bystander_synced(env, bystander)
    await env.stats()
    assert env.snow.record("incident", rec_a["sys_id"])["impact"] == "1"
    assert load_config(env.config_path).workspaces["soc"].enabled
