"""Alerts and entities, Sentinel -> ServiceNow, against the emulators: on create, when
``alertsCount`` grows, at the late-enrichment re-check; capped, never re-posted, never echoed."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from agent.core.records import Link
from agent.store.sqlite.store import Shadow
from agent.testing.emulators.stack import DEFAULT_SNOW_USER
from tests.e2e import Env, writes
from tests.test_comments import backoff_passed


def agent_notes(env: Env, sys_id: str) -> list[str]:
    return [
        n["value"] for n in env.snow.journal(sys_id, "work_notes") if n["sys_created_by"] == DEFAULT_SNOW_USER
    ]


async def link_of(env: Env, name: str) -> Link:
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        return (await shadow.get_links(env.stack.workspace_instance("soc"), "soc", [name]))[name]


async def make_due(env: Env, name: str) -> None:
    """Move the link's late-enrichment re-check into the past (instead of waiting for it)."""
    link = await link_of(env, name)
    assert link.enrich_after is not None
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        await shadow.save_link(replace(link, enrich_after=datetime.now(UTC) - timedelta(seconds=1)))


async def test_create_carries_one_note_listing_alerts_and_entities(env: Env) -> None:
    """The ticket is made with one agent note listing the alerts, then the entities: no
    separate write for either."""
    ws = env.ws()
    inc = ws.create_incident(title="Credential dumping", labels=["snow"])
    a1 = ws.add_alert(inc["name"], display_name="Mimikatz detected", severity="High")
    a2 = ws.add_alert(
        inc["name"], display_name="Suspicious LSASS access", severity="Medium", product="Azure Sentinel"
    )
    ws.add_entity(inc["name"], kind="Account", friendly_name="alice")
    ws.add_entity(inc["name"], kind="Host", friendly_name="ws-01")
    ws.add_entity(inc["name"], kind="Ip", friendly_name="203.0.113.9", address="203.0.113.9")
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert stats.created == 1 and stats.notes_to_snow == 1
    assert [c.route for c in writes(env.calls_since(mark)) if c.system == "servicenow"] == ["table.post"]
    rec = env.snow_record(inc["name"])
    [note] = agent_notes(env, rec["sys_id"])
    alerts, entities = note.split("\n\n")
    assert alerts.splitlines()[0] == "Microsoft Sentinel alerts (2):"
    assert "- Mimikatz detected | High | " in alerts and "| Microsoft Defender for Endpoint" in alerts
    assert "- Suspicious LSASS access | Medium | " in alerts and alerts.rstrip().endswith("| Azure Sentinel")
    assert entities.splitlines() == [
        "Microsoft Sentinel entities (3):",
        "- Account: alice",
        "- Host: ws-01",
        "- Ip: 203.0.113.9",
    ]
    link = await link_of(env, inc["name"])
    assert link.alerts_posted == {a1["name"], a2["name"]}
    assert len(link.entities_posted) == 3
    for _ in range(2):
        await env.stats()
    assert len(agent_notes(env, rec["sys_id"])) == 1  # never re-posted
    assert ws.comments(inc["name"]) == []  # the agent's notes are never copied to Sentinel


async def test_growing_alert_count_posts_only_the_new_alerts(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    ws.add_alert(inc["name"], display_name="first alert")
    await env.stats()
    rec = env.snow_record(inc["name"])
    assert len(agent_notes(env, rec["sys_id"])) == 1  # alerts only: no entities yet
    ws.add_alert(inc["name"], display_name="second alert", severity="High")
    ws.add_entity(inc["name"], kind="Url", friendly_name="https://bad.example/x", url="https://bad.example/x")
    stats = await env.stats()
    assert stats.notes_to_snow == 2
    new_alerts, new_entities = agent_notes(env, rec["sys_id"])[1:]
    assert new_alerts.splitlines()[0] == "New Microsoft Sentinel alerts (1):"
    assert "second alert" in new_alerts and "first alert" not in new_alerts
    assert new_entities.splitlines() == ["Microsoft Sentinel entities (1):", "- Url: https://bad.example/x"]
    await env.stats()
    assert len(agent_notes(env, rec["sys_id"])) == 3


async def test_late_entities_arrive_at_the_recheck_once(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    ws.add_entity(inc["name"], kind="Account", friendly_name="bob")
    await env.stats()
    rec = env.snow_record(inc["name"])
    assert len(agent_notes(env, rec["sys_id"])) == 1
    # Entities attach without touching the incident (no etag change, REFERENCE A.9).
    ws.add_entity(inc["name"], kind="Host", friendly_name="srv-9")
    await env.stats()
    assert len(agent_notes(env, rec["sys_id"])) == 1  # not due yet: nothing looked
    await make_due(env, inc["name"])
    mark = env.stack.recorder.mark()
    await env.stats()
    assert agent_notes(env, rec["sys_id"])[1].splitlines() == [
        "New Microsoft Sentinel entities (1):",
        "- Host: srv-9",
    ]
    assert [c.route for c in writes(env.calls_since(mark))] == ["table.patch"]
    assert (await link_of(env, inc["name"])).enrich_after is None
    ws.add_entity(inc["name"], kind="Ip", friendly_name="198.51.100.1")
    for _ in range(2):
        await env.stats()
    assert len(agent_notes(env, rec["sys_id"])) == 2  # the re-check happens once


async def test_recheck_runs_inside_a_pair_processed_anyway(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"])
    await env.stats()
    rec = env.snow_record(inc["name"])
    ws.add_entity(inc["name"], kind="Host", friendly_name="late-host")
    await make_due(env, inc["name"])
    ws.analyst_update(inc["name"], severity="High")
    stats = await env.stats()
    assert stats.updated_snow == 1 and stats.notes_to_snow == 1
    assert agent_notes(env, rec["sys_id"]) == ["Microsoft Sentinel entities (1):\n- Host: late-host"]
    assert (await link_of(env, inc["name"])).enrich_after is None


async def test_long_lists_are_capped_with_n_more(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    for i in range(30):
        ws.add_entity(inc["name"], kind="Ip", friendly_name=f"10.0.0.{i}", address=f"10.0.0.{i}")
    await env.stats()
    [note] = agent_notes(env, env.snow_record(inc["name"])["sys_id"])
    lines = note.splitlines()
    assert lines[0] == "Microsoft Sentinel entities (30):"
    assert lines[1:26] == [f"- Ip: 10.0.0.{i}" for i in range(25)]
    assert lines[26:] == ["- 5 more entities"]
    assert len((await link_of(env, inc["name"])).entities_posted) == 30  # the 5 are accounted for


async def test_no_recheck_when_enrichment_delay_is_zero(env: Env) -> None:
    env.rewrite({"agent": {"enrichment_delay": "0"}})
    inc = env.ws().create_incident(title="t", labels=["snow"])
    await env.stats()
    assert (await link_of(env, inc["name"])).enrich_after is None


async def test_adopted_after_lost_shadow_does_not_repost_evidence(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    ws.add_alert(inc["name"], display_name="an alert")
    ws.add_entity(inc["name"], kind="Host", friendly_name="h1")
    await env.stats()
    sys_id = env.snow_record(inc["name"])["sys_id"]
    assert len(agent_notes(env, sys_id)) == 1  # alerts and entities, in the create
    for suffix in ("", "-wal", "-shm"):
        (env.tmp / f"state.db{suffix}").unlink(missing_ok=True)
    stats = await env.stats()
    assert stats.adopted == 1
    assert len(agent_notes(env, sys_id)) == 1
    link = await link_of(env, inc["name"])
    assert len(link.alerts_posted) == 1 and len(link.entities_posted) == 1
    ws.add_alert(inc["name"], display_name="a later alert")
    await env.stats()
    assert "a later alert" in agent_notes(env, sys_id)[-1]
    assert "an alert\n" not in agent_notes(env, sys_id)[-1]


async def test_create_with_entities_unreadable_posts_them_once_later(env: Env) -> None:
    """The entities cannot be read (ARM answers 503) when the ticket is made: the ticket is made
    anyway with the comment and the alerts, linked, and the conversation's retry posts only the
    entities."""
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    ws.analyst_comment(inc["name"], "an analyst comment")
    ws.add_alert(inc["name"], display_name="the alert")
    ws.add_entity(inc["name"], kind="Host", friendly_name="h1")
    env.stack.sentinel.faults.set("incidents.entities", rate_503=1.0)
    stats = await env.stats()
    assert (stats.created, stats.failures, stats.comments_deferred) == (1, 0, 1)
    sys_id = env.snow_records()[0]["sys_id"]
    [opening] = agent_notes(env, sys_id)  # the alerts and the comment, in the create
    assert opening.startswith("Microsoft Sentinel alerts (1):") and opening.endswith("an analyst comment")
    env.stack.sentinel.faults.clear()
    backoff_passed(env)
    stats = await env.stats()
    assert (stats.failures, stats.comments_deferred, stats.notes_to_snow) == (0, 0, 1)
    values = agent_notes(env, sys_id)
    assert len(values) == 2
    assert values[0] == opening
    assert values[1] == "Microsoft Sentinel entities (1):\n- Host: h1"
    link = await link_of(env, inc["name"])
    assert "talk_retries" not in link.extra
    # the early retry kept the late-enrichment re-check for later
    assert link.enrich_after is not None and link.enrich_after > datetime.now(UTC)
    await env.stats()
    assert len(agent_notes(env, sys_id)) == 2


async def test_recheck_of_a_deleted_incident_is_dropped(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    await env.stats()
    await make_due(env, inc["name"])
    ws.delete_incident(inc["name"])
    stats = await env.stats()
    assert stats.skipped == 1
    assert (await link_of(env, inc["name"])).enrich_after is None
    mark = env.stack.recorder.mark()
    await env.stats()  # nothing left to look at: an idle cycle
    assert [c.route for c in env.calls_since(mark) if c.system != "entra"] == ["incidents.list", "table.list"]
