"""End-to-end scenarios of the sync engine against the emulators (issue: the sync engine).

Each test: initial state on both sides, agent cycles through the production runtime, and the
expected state of both sides, the shadow and the calls made.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from agent.app.runtime import Runtime
from agent.connectors.retry import RetryPolicy
from agent.store.sqlite.store import Shadow
from agent.sync.cycle import CycleOptions, CycleStats, run_workspaces
from tests.e2e import Env, props, reads, writes

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"


async def test_create_labelled_incident_with_fields_and_writeback(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(
        title="Suspicious sign-in",
        severity="High",
        description="From a Tor exit node",
        labels=["snow"],
        owner_upn=ALICE,
    )
    stats = await env.stats()
    assert stats.created == 1
    rec = env.snow_record(inc["name"])
    assert rec["short_description"] == "Suspicious sign-in"
    assert rec["impact"] == "1"
    assert rec["state"] == "1"
    assert rec["correlation_display"] == "Sentinel/soc"
    assert rec["assigned_to"] == env.stack.snow_user_ids["default"]["alice.analyst"]
    assert rec["caller_id"] == "" or len(rec["caller_id"]) == 32
    assert "From a Tor exit node" in rec["description"]
    assert "portal.azure.com" in rec["description"]
    labels = [lbl["labelName"] for lbl in props(ws, inc["name"])["labels"]]
    assert labels == ["snow", rec["number"]]
    # the write-back kept owner and description
    assert props(ws, inc["name"])["owner"]["userPrincipalName"] == ALICE
    assert props(ws, inc["name"])["description"] == "From a Tor exit node"


async def test_only_labelled_recent_open_incidents_are_created(env: Env) -> None:
    ws = env.ws()
    ws.create_incident(title="no label", labels=[])
    ws.create_incident(title="other label", labels=["Snow"])  # case-sensitive
    ws.create_incident(title="too old", labels=["snow"], created=datetime.now(UTC) - timedelta(days=45))
    closed = ws.create_incident(title="closed", labels=["snow"])
    ws.analyst_update(closed["name"], status="Closed", classification="Undetermined")
    good = ws.create_incident(title="good", labels=["snow"])
    stats = await env.stats()
    assert stats.created == 1
    assert [r["correlation_id"] for r in env.snow_records()] == [good["name"]]


async def test_several_labels_select_incidents_with_any_of_them(env: Env) -> None:
    env.rewrite({"workspace:soc": {"incident_filter": "snow, soc-escalate"}})
    ws = env.ws()
    picked = [
        ws.create_incident(title="snow", labels=["snow"])["name"],
        ws.create_incident(title="escalated", labels=["soc-escalate"])["name"],
        ws.create_incident(title="both", labels=["soc-escalate", "snow"])["name"],
    ]
    ws.create_incident(title="neither", labels=["other"])
    stats = await env.stats()
    assert stats.created == 3 and stats.listed_sentinel == 3
    assert sorted(r["correlation_id"] for r in env.snow_records()) == sorted(picked)
    ws.analyst_update(picked[1], severity="High")
    await env.stats()
    assert env.snow_record(picked[1])["impact"] == "1"


async def test_late_label_is_picked_up(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="unlabelled at first", labels=[])
    await env.stats()
    assert env.snow_records() == []
    ws.analyst_update(inc["name"], labels=["snow"])
    stats = await env.stats()
    assert stats.created == 1
    assert env.snow_record(inc["name"])["short_description"] == "unlabelled at first"


async def test_idle_cycle_is_two_reads_and_no_write(env: Env) -> None:
    ws = env.ws()
    for i in range(5):
        ws.create_incident(title=f"incident {i}", labels=["snow"], owner_upn=ALICE)
    await env.stats()
    await env.stats()  # our own write-backs are re-listed once and recognised as ours
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    calls = env.calls_since(mark)
    assert writes(calls) == []
    assert [(c.system, c.route) for c in reads(calls)] == [
        ("sentinel", "incidents.list"),
        ("servicenow", "table.list"),
    ]
    assert stats.updated_snow == stats.updated_sentinel == stats.created == 0


async def test_the_cycle_right_after_an_initial_sync_is_two_reads(env: Env) -> None:
    # #18 item 5: the overlap window still holds every incident and ticket the initial sync
    # wrote; at page size 5 they would take three pages a side. The agent knows they are its own.
    env.rewrite({"agent": {"page_size": "5"}})
    ws = env.ws()
    for i in range(12):
        ws.create_incident(title=f"incident {i}", labels=["snow"], owner_upn=ALICE)
    async with Runtime(env.config, retry=RetryPolicy(attempts=3, total=5, base=0.01, cap=0.05)) as rt:
        syncs = rt.syncs()
        first = (await run_workspaces(syncs, CycleOptions()))["soc"]
        assert isinstance(first, CycleStats) and first.created == 12
        mark = env.stack.recorder.mark()
        after = (await run_workspaces(syncs, CycleOptions()))["soc"]
    calls = env.calls_since(mark)
    assert isinstance(after, CycleStats) and after.listed_sentinel == 12 and after.listed_snow == 12
    assert writes(calls) == []
    assert [(c.system, c.route) for c in reads(calls)] == [
        ("sentinel", "incidents.list"),
        ("servicenow", "table.list"),
    ]


async def test_one_changed_field_is_one_write(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Medium", labels=["snow"])
    await env.stats()
    await env.stats()
    ws.analyst_update(inc["name"], severity="High")
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    w = writes(env.calls_since(mark))
    assert [(c.system, c.method) for c in w] == [("servicenow", "PATCH")]
    assert stats.updated_snow == 1 and stats.updated_sentinel == 0
    assert env.snow_record(inc["name"])["impact"] == "1"


async def test_snow_change_goes_to_sentinel_keeping_owner_labels_description(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(
        title="t", severity="Low", description="keep me", labels=["snow", "x"], owner_upn=ALICE
    )
    await env.stats()
    rec = env.snow_record(inc["name"])
    env.snow.analyst_update("incident", rec["sys_id"], {"impact": "1"}, by="bob.hunter")
    stats = await env.stats()
    assert stats.updated_sentinel == 1
    p = props(ws, inc["name"])
    assert p["severity"] == "High"
    assert p["description"] == "keep me"
    assert p["owner"]["userPrincipalName"] == ALICE
    assert [lbl["labelName"] for lbl in p["labels"]] == ["snow", "x", rec["number"]]


async def test_owner_both_ways(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    await env.stats()
    ws.analyst_update(inc["name"], owner_upn=BOB)
    await env.stats()
    rec = env.snow_record(inc["name"])
    assert rec["assigned_to"] == env.stack.snow_user_ids["default"]["bob.hunter"]
    env.snow.analyst_update(
        "incident", rec["sys_id"], {"assigned_to": env.stack.snow_user_ids["default"]["carol.responder"]}
    )
    await env.stats()
    assert props(ws, inc["name"])["owner"]["userPrincipalName"] == "carol@contoso.example"


async def test_unknown_owner_leaves_field_and_warns(env: Env) -> None:
    ws = env.ws()
    env.stack.directory.add("zed@contoso.example", "Zed Nobody")  # in Entra, not in ServiceNow
    inc = ws.create_incident(title="t", labels=["snow"], owner_upn="zed@contoso.example")
    stats = await env.stats()
    assert stats.created == 1
    assert env.snow_record(inc["name"])["assigned_to"] == ""
    stats = await env.stats()
    assert props(ws, inc["name"])["owner"]["userPrincipalName"] == "zed@contoso.example"


async def test_close_in_sentinel_resolves_snow_with_close_code(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    await env.stats()
    ws.analyst_update(
        inc["name"],
        status="Closed",
        classification="FalsePositive",
        classificationReason="IncorrectAlertLogic",
        classificationComment="rule too broad",
    )
    await env.stats()
    rec = env.snow_record(inc["name"])
    assert rec["state"] == "6"
    assert rec["close_code"] == env.config.mappings.closure_to_servicenow["FalsePositive"]
    assert "FalsePositive" in rec["close_notes"] and "rule too broad" in rec["close_notes"]


async def test_resolve_in_snow_closes_sentinel_with_classification(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"], owner_upn=ALICE)
    await env.stats()
    rec = env.snow_record(inc["name"])
    env.snow.analyst_update(
        "incident", rec["sys_id"], {"state": "6", "close_code": "Solution provided", "close_notes": "patched"}
    )
    await env.stats()
    p = props(ws, inc["name"])
    cls, reason = env.config.mappings.closure_to_sentinel["Solution provided"]
    assert p["status"] == "Closed"
    assert p["classification"] == cls
    assert p.get("classificationReason") == reason
    assert p["classificationComment"] == "patched"
    assert p["owner"]["userPrincipalName"] == ALICE
    assert p["title"] == "t"


async def test_reopen_in_sentinel_reopens_snow_and_back(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    await env.stats()
    ws.analyst_update(inc["name"], status="Closed", classification="Undetermined")
    await env.stats()
    assert env.snow_record(inc["name"])["state"] == "6"
    ws.analyst_update(inc["name"], status="Active", classification=None, classificationReason=None)
    await env.stats()
    rec = env.snow_record(inc["name"])
    assert rec["state"] == "2"
    assert rec["close_code"] == ""
    # and reopen from ServiceNow after a resolve there
    env.snow.analyst_update(
        "incident", rec["sys_id"], {"state": "6", "close_code": "Solution provided", "close_notes": "done"}
    )
    await env.stats()
    assert props(ws, inc["name"])["status"] == "Closed"
    env.snow.analyst_update("incident", rec["sys_id"], {"state": "2"})
    await env.stats()
    p = props(ws, inc["name"])
    assert p["status"] == "Active"
    assert not p.get("classification")


async def test_lossy_severity_map_never_flip_flops(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"])
    await env.stats()
    ws.analyst_update(inc["name"], severity="Informational")  # Informational and Low both -> 3
    for _ in range(3):
        stats = await env.stats()
        assert stats.updated_snow == stats.updated_sentinel == 0
    assert props(ws, inc["name"])["severity"] == "Informational"
    assert env.snow_record(inc["name"])["impact"] == "3"


async def test_conflict_policy_sentinel_wins(env: Env) -> None:
    env.rewrite({"agent": {"conflict_policy": "sentinel"}})
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"])
    await env.stats()
    rec = env.snow_record(inc["name"])
    env.snow.analyst_update("incident", rec["sys_id"], {"impact": "2"})
    ws.analyst_update(inc["name"], severity="High")
    stats = await env.stats()
    assert stats.conflicts == 1
    assert env.snow_record(inc["name"])["impact"] == "1"
    assert props(ws, inc["name"])["severity"] == "High"
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        logged = await shadow.conflicts()
    assert [(c["field"], c["winner"]) for c in logged] == [("severity", "sentinel")]


async def test_409_race_replans_and_keeps_the_analyst_change(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"], owner_upn=ALICE)
    await env.stats()
    await env.stats()
    rec = env.snow_record(inc["name"])
    env.snow.analyst_update("incident", rec["sys_id"], {"impact": "1"})
    # just before our PUT lands, an analyst reassigns the incident in Sentinel
    ws.race_next_put(inc["name"], owner_upn=BOB)
    await env.stats()
    p = props(ws, inc["name"])
    assert p["severity"] == "High"
    assert p["owner"]["userPrincipalName"] == BOB
    await env.stats()  # the analyst's change reaches ServiceNow next cycle
    assert env.snow_record(inc["name"])["assigned_to"] == env.stack.snow_user_ids["default"]["bob.hunter"]


async def test_lost_shadow_never_duplicates(env: Env) -> None:
    ws = env.ws()
    incs = [ws.create_incident(title=f"t{i}", labels=["snow"]) for i in range(3)]
    await env.stats()
    assert len(env.snow_records()) == 3
    for suffix in ("", "-wal", "-shm"):
        (env.tmp / f"state.db{suffix}").unlink(missing_ok=True)
    stats = await env.stats()
    assert stats.created == 0 and stats.adopted == 3
    assert len(env.snow_records()) == 3
    ws.analyst_update(incs[0]["name"], severity="High")
    await env.stats()
    assert env.snow_record(incs[0]["name"])["impact"] == "1"


async def test_plan_is_a_dry_run(env: Env) -> None:
    ws = env.ws()
    ws.create_incident(title="t", labels=["snow"])
    mark = env.stack.recorder.mark()
    stats = await env.stats(dry_run=True)
    assert stats.created == 1
    assert [p["action"] for p in stats.planned] == ["create_snow"]
    assert writes(env.calls_since(mark)) == []
    assert env.snow_records() == []
    stats = await env.stats()
    assert stats.created == 1


async def test_watermark_advances_and_change_while_down_is_seen(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    await env.stats()
    await env.stats()
    ws.analyst_update(inc["name"], severity="High")
    rec = env.snow_record(inc["name"])
    env.snow.analyst_update(
        "incident", rec["sys_id"], {"assigned_to": env.stack.snow_user_ids["default"]["dave.lead"]}
    )
    await env.stats()
    assert env.snow_record(inc["name"])["impact"] == "1"
    assert props(ws, inc["name"])["owner"]["userPrincipalName"] == "dave@contoso.example"


async def test_ticket_made_by_another_integration_is_adopted_and_kept_in_sync(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"])
    made = env.snow.insert(
        "incident", {"short_description": "made elsewhere", "correlation_id": inc["name"], "impact": "3"}
    )
    stats = await env.stats()
    assert stats.created == 0 and stats.adopted == 1
    assert len(env.snow_records()) == 1
    env.snow.analyst_update("incident", made["sys_id"], {"impact": "2"})
    await env.stats()
    assert props(ws, inc["name"])["severity"] == "Medium"


async def test_e4_owner_with_only_an_email_survives_a_severity_change_from_servicenow(env: Env) -> None:
    """REFERENCE E.4: an owner automation left with only e-mail and display name is sent back as
    read by the full PUT (never as all-null, which would unassign), and still maps by e-mail."""
    ws = env.ws()
    inc = ws.create_incident(title="owned by e-mail", labels=["snow"])
    email_only = {"objectId": None, "email": ALICE, "assignedTo": "Alice Analyst", "userPrincipalName": None}
    ws.analyst_update(inc["name"], owner=email_only)
    await env.stats()
    rec = env.snow_record(inc["name"])
    assert rec["assigned_to"] == env.stack.snow_user_ids["default"]["alice.analyst"]  # matched by e-mail
    env.snow.analyst_update("incident", rec["sys_id"], {"impact": "1"})
    stats = await env.stats()
    assert stats.updated_sentinel == 1
    p = props(ws, inc["name"])
    assert p["severity"] == "High"
    assert {k: v for k, v in p["owner"].items() if v} == {"email": ALICE, "assignedTo": "Alice Analyst"}


async def test_the_cycle_summary_times_the_act_step_and_counts_its_requests(env: Env) -> None:
    ws = env.ws()
    for i in range(3):
        ws.create_incident(title=f"apply {i}", labels=["snow"])
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert stats.created == 3
    writes_step = ("incidents.alerts", "incidents.entities", "comments.list", "incidents.put")
    made = [
        c
        for c in env.stack.recorder.since(mark)
        if c.route in writes_step or (c.system, c.method) == ("servicenow", "POST")
    ]
    # every request of the act step, and none of the listings and look-ups before it
    assert stats.apply_calls == len(made) >= 3 * 3
    assert stats.apply_ms > 0
    idle = await env.stats()
    assert (idle.apply_calls, idle.created) == (0, 0)
