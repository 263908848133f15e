"""Connector contract: the Graph client against the Graph emulator (real msal, real TLS).

Each test names the GRAPH.md trap it covers. The stack's Entra emulator issues the token (Graph
audience, ``roles`` claim), the Graph emulator checks it; ``Spy`` records what the client sent.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.connectors.graph.cloud import (
    GRAPH_CLOUDS,
    PACE_MARGIN,
    graph_auth,
    graph_cloud,
    graph_pacer,
    missing_roles,
)
from agent.connectors.graph.models import changed_fields, merged_tags, parse_ticks
from agent.connectors.pacing import RequestPacer
from agent.errors import ConfigError, Forbidden, NotFound, PermanentError, TransientError
from agent.testing.emulators.graph_tenant import NEWER_PROPERTIES, ip_evidence
from agent.testing.emulators.stack import DEFAULT_APP_NAME, GRAPH_ROLES, EmulatorStack
from tests.graph_env import OWN, Env, _claims, _env, at, env, listed

__all__ = ["env"]  # the fixture


# --- A: token, permissions, clouds ----------------------------------------------------------------


async def test_a1_app_only_token_for_the_graph_audience_carries_roles(env: Env) -> None:
    env.t.create_incident()
    assert len(await listed(env)) == 1
    token = env.http.sent[0].headers["Authorization"].split(" ", 1)[1]
    claims = _claims(token)
    assert claims["aud"] == env.stack.graph_url.lower() and claims["tid"] == env.stack.tenant
    assert claims["roles"] == list(GRAPH_ROLES) and "scp" not in claims
    # Graph's token is not ARM's: the same app holds two (A.1).
    issued = env.stack.tokens.check(token, env.stack.sentinel_url)
    assert issued[1] == "audience"


async def test_a2_missing_permission_is_forbidden_naming_the_roles(env: Env) -> None:
    env.stack.entra.grant_roles(env.stack.client_id, env.stack.graph_url, "User.Read.All")
    with pytest.raises(Forbidden, match=r"HTTP 403 \(Forbidden: Missing application roles") as caught:
        await listed(env)
    assert caught.value.system == "graph" and caught.value.code == "Forbidden"
    assert missing_roles(caught.value) == (
        ["SecurityIncident.Read.All", "SecurityIncident.ReadWrite.All"],
        ["User.Read.All"],
    )
    env.stack.entra.grant_roles(env.stack.client_id, env.stack.graph_url)  # no consent at all
    await env.http.auth.header(force_refresh=True)  # type: ignore[union-attr]
    with pytest.raises(Forbidden, match=r"HTTP 403 \(Forbidden: Missing application roles") as caught:
        await listed(env)
    assert missing_roles(caught.value) == (
        ["SecurityIncident.Read.All", "SecurityIncident.ReadWrite.All"],
        [],
    )


async def test_a2_read_only_permission_lists_but_cannot_write(env: Env) -> None:
    inc = env.t.create_incident()
    env.stack.entra.grant_roles(env.stack.client_id, env.stack.graph_url, "SecurityIncident.Read.All")
    await env.http.auth.header(force_refresh=True)  # type: ignore[union-attr]
    assert [i.id for i in await listed(env)] == [inc["id"]]
    assert len(await env.client.list_alerts(inc["id"])) == 1  # an incident permission reads alerts
    with pytest.raises(Forbidden, match=r"HTTP 403 \(Forbidden: Missing application roles") as caught:
        await env.client.update_incident(inc["id"], {"severity": "high"})
    assert missing_roles(caught.value) == (["SecurityIncident.ReadWrite.All"], ["SecurityIncident.Read.All"])


async def test_a3_a_token_for_another_cloud_is_401(tmp_path: Path) -> None:
    async with EmulatorStack(directory=tmp_path) as stack:
        stack.entra.grant_roles(stack.client_id, "https://graph.microsoft.us", *GRAPH_ROLES)
        e = await _env(stack, scope="https://graph.microsoft.us/.default")
        try:
            stack.defender.create_incident()
            with pytest.raises(PermanentError, match=r"HTTP 401 \(InvalidAuthenticationToken") as caught:
                await listed(e)
            assert caught.value.status == 401 and caught.value.code == "InvalidAuthenticationToken"
            assert caught.value.detail == "Access token validation failure. Invalid audience."
            assert e.http.auth_refreshes == 1  # one fresh token tried, then given up
        finally:
            await e.http.close()
            await e.http.auth.close()  # type: ignore[union-attr]


def test_a3_clouds_and_china_is_a_config_error() -> None:
    assert graph_cloud("public").graph_url == "https://graph.microsoft.com"
    assert (graph_cloud("usgov").graph_url, graph_cloud("usgov").authority_host) == (
        "https://graph.microsoft.us", "https://login.microsoftonline.us",
    )  # fmt: skip
    assert graph_cloud("dod").graph_url == "https://dod-graph.microsoft.us"
    assert {c.portal_host for c in GRAPH_CLOUDS.values()} == {
        "security.microsoft.com", "security.microsoft.us", "security.apps.mil",
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"china \(21Vianet\) has no Microsoft Graph") as caught:
        graph_cloud("china", where="[oauth:default] cloud")
    assert caught.value.problems[0].startswith(
        "[oauth:default] cloud: china (21Vianet) has no Microsoft Graph"
    )
    with pytest.raises(ConfigError, match=r"\[oauth\] cloud: china \(21Vianet\) has no Microsoft Graph"):
        graph_auth(tenant_id="t", client_id="c", client_secret="s", cloud="china")
    with pytest.raises(ConfigError, match="unknown cloud 'mars'"):
        graph_cloud("mars")
    auth = graph_auth(tenant_id="t", client_id="c", client_secret="s", cloud="dod")
    assert auth.scope == "https://dod-graph.microsoft.us/.default"
    assert auth.authority == "https://login.microsoftonline.us/t"


# --- B: shapes, enums ------------------------------------------------------------------------------


async def test_b2_prefer_header_sent_and_unknown_enum_strings_tolerated(env: Env) -> None:
    experts = env.t.create_incident(
        alerts=[{"service_source": "microsoftSentinel", "detection_source": "scheduledAlerts",
                 "evidence": [ip_evidence(env.t.now(), "198.51.100.7", remediation="pendingApproval")]}]
    )  # fmt: skip
    env.t.set_awaiting_action(experts["id"])
    future = env.t.create_incident()
    # A value added to the service after this client was written.
    env.t.incidents[future["id"]].update(
        status="someNewStatus", severity="critical", determination="aiGenerated"
    )
    got = {i.id: i for i in await listed(env)}
    assert got[experts["id"]].status == "awaitingAction"
    assert (got[future["id"]].status, got[future["id"]].severity) == ("someNewStatus", "critical")
    assert got[future["id"]].determination == "aiGenerated"
    alert = (await env.client.list_alerts(experts["id"]))[0]
    assert (alert.service_source, alert.detection_source) == ("microsoftSentinel", "scheduledAlerts")
    assert (
        alert.evidence[0].remediation_status == "pendingApproval" and alert.evidence[0].name == "198.51.100.7"
    )
    assert all(s.headers["Prefer"] == "include-unknown-enum-members" for s in env.http.sent)


async def test_b1_an_older_shape_without_the_newer_properties_parses(env: Env) -> None:
    env.stack.graph.options.drop_properties = NEWER_PROPERTIES
    inc = env.t.create_incident(description="d", summary="s")
    (got,) = await listed(env)
    assert got.id == inc["id"] and got.description is None and got.priority_score is None
    assert got.system_tags == () and got.last_modified_by is None


async def test_b5_seven_digit_times_are_exact_and_the_watermark_is_inclusive(env: Env) -> None:
    inc = env.t.create_incident()
    stamp = inc["lastUpdateDateTime"]
    (got,) = await listed(env)
    assert got.modified_ticks == parse_ticks(stamp)
    # The watermark a caller keeps is a datetime (microseconds): ge on it still includes the incident.
    assert [i.id for i in await listed(env, modified_since=got.modified)] == [inc["id"]]
    assert await listed(env, modified_since=got.modified + timedelta(microseconds=1)) == []
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="naive"):
        await listed(env, modified_since=naive)


# --- C: listing -----------------------------------------------------------------------------------


async def test_c3_listing_pages_by_time_with_top_50_and_no_skip(env: Env) -> None:
    made = []
    for _ in range(130):
        made.append(env.t.create_incident()["id"])
        env.stack.clock.advance(0.01)
    got = await listed(env)
    assert sorted(i.id for i in got) == sorted(made) and len(got) == 130
    assert [i.modified_ticks for i in got] == sorted(i.modified_ticks for i in got)
    queries = [s.query for s in env.gets()]
    assert all(q["$top"] == "50" and q["$orderby"] == "lastUpdateDateTime asc" for q in queries)
    assert not any("$skip" in q for q in queries)
    # Each query starts at the newest time seen (the boundary incident comes back once more):
    # 50 new, then 49 new, then the last 31 on a page without a next link.
    assert len(queries) == 3
    with pytest.raises(ValueError, match=r"C\.3"):
        await listed(env, page_size=51)


async def test_c3_a_stalled_deep_skip_loses_nothing(env: Env) -> None:
    env.stack.graph.options.skip_cap = 100  # past $skip=100 the service returns nothing
    for _ in range(260):
        env.t.create_incident()
        env.stack.clock.advance(0.01)
    got = await listed(env)
    assert len({i.id for i in got}) == 260


async def test_c3_incidents_changed_while_listing_are_not_lost(env: Env) -> None:
    ids = []
    for _ in range(120):
        ids.append(env.t.create_incident()["id"])
        env.stack.clock.advance(0.01)
    seen: dict[str, list[int]] = {}
    async for incident in env.client.list_incidents():
        seen.setdefault(incident.id, []).append(incident.modified_ticks)
        if len(seen) == 10:
            # An analyst edits one incident already listed and one not reached yet.
            env.t.analyst_update(ids[0], severity="high")
            env.t.analyst_update(ids[100], severity="low")
    assert set(seen) == set(ids)
    assert len(seen[ids[0]]) == 2 and seen[ids[0]][1] > seen[ids[0]][0]  # seen again, newer
    assert len(seen[ids[100]]) == 1


async def test_c4_a_run_of_equal_times_follows_next_link_verbatim(env: Env) -> None:
    same = datetime.fromtimestamp(env.stack.clock.time(), UTC) - timedelta(hours=1)
    for _ in range(120):
        env.t.create_incident(created=same)  # correlated in one batch: one lastUpdateDateTime
    env.t.create_incident()
    got = await listed(env)
    assert len({i.id for i in got}) == 121
    followed = [s for s in env.gets() if "$skip" in s.query]
    assert [s.query["$skip"] for s in followed] == ["50", "100"]
    assert all(s.url.startswith(env.stack.graph_url) for s in followed)
    assert all(s.query["$filter"].startswith("lastUpdateDateTime ge ") for s in followed)


async def test_c4_a_next_link_without_our_query_is_not_followed(env: Env) -> None:
    env.stack.graph.options.next_link_keeps_query = False
    old = env.t.create_incident()  # outside the window
    env.stack.clock.advance(60)
    since = at(env)
    same = since + timedelta(seconds=1)
    for _ in range(70):
        env.t.create_incident(created=same)
    got = await listed(env, modified_since=since)
    assert len(got) == 70 and old["id"] not in {i.id for i in got}
    # The first page moves the window to the batch's time; inside the batch the service's link
    # (no filter) is replaced by our own query with $skip.
    skipped = [s.query for s in env.gets() if "$skip" in s.query]
    assert [q["$skip"] for q in skipped] == ["50"]
    assert skipped[0]["$filter"].startswith("lastUpdateDateTime ge ")


async def test_c4_a_next_link_to_another_host_is_refused(env: Env) -> None:
    env.stack.graph.options.next_link_base = "https://graph.microsoft.com"
    same = at(env)
    for _ in range(60):
        env.t.create_incident(created=same)
    with pytest.raises(PermanentError, match="UntrustedNextLink") as caught:
        await listed(env)
    assert caught.value.code == "UntrustedNextLink"
    assert all(s.url.startswith(env.stack.graph_url) for s in env.http.sent)


async def test_c5_alerts_are_fetched_per_incident_never_expanded_on_the_list(env: Env) -> None:
    env.stack.graph.options.expand_alert_limit = 3  # $expand on a big page would be a 500
    incidents = [env.t.create_incident(alerts=2) for _ in range(5)]
    got = await listed(env)
    assert len(got) == 5 and all(i.alerts is None for i in got)
    assert not any("$expand" in s.query for s in env.gets())
    alerts = await env.client.list_alerts(incidents[0]["id"])
    assert len(alerts) == 2 and {a.incident_id for a in alerts} == {incidents[0]["id"]}
    assert env.gets()[-1].query == {"$expand": "alerts"}
    assert {e.kind for e in alerts[0].evidence} == {"deviceEvidence", "userEvidence"}
    assert {e.name for e in alerts[0].evidence} == {"ws-0042.contoso.example", "alice@contoso.example"}


# --- D: updates -------------------------------------------------------------------------------------


async def test_d2_patch_sends_only_the_changed_writable_fields(env: Env) -> None:
    inc = env.t.create_incident(custom_tags=["snow"])
    current = await env.client.get_incident(inc["id"])
    body = changed_fields(
        current, {"severity": "high", "displayName": current.display_name, "assignedTo": ""}
    )
    assert body == {"severity": "high"}
    updated = await env.client.update_incident(inc["id"], body)
    patch = [s for s in env.http.sent if s.method == "PATCH"]
    assert [p.body for p in patch] == [{"severity": "high"}]
    assert updated.severity == "high" and updated.written_by(DEFAULT_APP_NAME)
    assert env.t.incident(inc["id"])["lastModifiedBy"] == OWN


async def test_d2_custom_tags_are_merged_never_overwritten(env: Env) -> None:
    inc = env.t.create_incident(custom_tags=["snow"])
    current = await env.client.get_incident(inc["id"])
    env.t.analyst_update(inc["id"], customTags=["snow", "VIP"])  # a person tags it meanwhile
    fresh = await env.client.get_incident(inc["id"])  # re-read just before writing (D.4)
    tags = merged_tags(fresh.custom_tags, add=["INC0010001"])
    await env.client.update_incident(inc["id"], {"customTags": tags})
    assert env.t.incident(inc["id"])["customTags"] == ["snow", "VIP", "INC0010001"]
    assert merged_tags(current.custom_tags, remove=["snow"]) == []


async def test_d3_client_refuses_what_graph_refuses(env: Env) -> None:
    inc = env.t.create_incident()
    for changes, why, refusal in (
        ({"status": "redirected"}, "never PATCH redirected", "status 'redirected' cannot be set"),
        ({"status": "awaitingAction"}, "Defender Experts only", "status 'awaitingAction' cannot be set"),
        ({"classification": "truePositive"}, "pair goes together", "send classification and determination"),
        (
            {"classification": "falsePositive", "determination": "malware"},
            "cross pair",
            "determination 'malware' does not go with classification 'falsePositive'",
        ),
        ({"title": "x"}, "not writable", "not writable incident properties: title"),
        ({}, "empty PATCH bumps", "nothing to change"),
        ({"customTags": "snow"}, "the whole list", "customTags must be the full list"),
    ):
        with pytest.raises(ValueError, match=refusal):
            await env.client.update_incident(inc["id"], changes)
        assert not [s for s in env.http.sent if s.method == "PATCH"], why


async def test_d3_close_in_one_patch_then_reopen(env: Env) -> None:
    inc = env.t.create_incident(alerts=2)
    closed = await env.client.update_incident(
        inc["id"],
        {"status": "resolved", "classification": "truePositive", "determination": "phishing",
         "resolvingComment": "Closed in ServiceNow INC0010001"},
    )  # fmt: skip
    assert (closed.status, closed.classification, closed.determination) == (
        "resolved",
        "truePositive",
        "phishing",
    )
    assert {a.status for a in await env.client.list_alerts(inc["id"])} == {"resolved"}
    reopened = await env.client.update_incident(inc["id"], {"status": "active"})
    assert reopened.status == "active" and not reopened.closed


async def test_d4_no_etag_last_writer_wins_and_own_writes_are_recognised(env: Env) -> None:
    inc = env.t.create_incident()
    read = await env.client.get_incident(inc["id"])
    assert "@odata.etag" not in read.raw
    env.t.analyst_update(inc["id"], by="bob@contoso.example", severity="low")
    fresh = await env.client.get_incident(inc["id"])
    assert not fresh.written_by(DEFAULT_APP_NAME) and fresh.last_modified_by == "bob@contoso.example"
    assert changed_fields(read, {"severity": "high"}) == {"severity": "high"}
    assert fresh.severity != read.severity  # the caller sees the conflict itself: nothing stops a write
    written = await env.client.update_incident(inc["id"], {"assignedTo": "alice@contoso.example"})
    assert written.written_by(DEFAULT_APP_NAME) and written.severity == "low"
    # A service that did enforce If-Match would not catch this client out: it never sends one.
    env.stack.graph.options.if_match = "enforce"
    await env.client.update_incident(inc["id"], {"severity": "medium"})
    assert not any("If-Match" in s.headers for s in env.http.sent)


# --- E: comments ---------------------------------------------------------------------------------------


async def test_e_comments_have_no_ids_and_are_keyed_by_time_and_text(env: Env) -> None:
    inc = env.t.create_incident()
    env.t.analyst_comment(inc["id"], "Looking at it")
    comments = await env.client.add_comment(inc["id"], "Mirrored from ServiceNow: user called")
    assert [c.text for c in comments] == ["Looking at it", "Mirrored from ServiceNow: user called"]
    assert comments[-1].author == OWN and comments[-1].created is not None
    assert len({c.key for c in comments}) == 2
    again = await env.client.get_incident(inc["id"])
    assert {c.key for c in again.comments} == {c.key for c in comments}
    post = next(s for s in env.http.sent if s.method == "POST")
    assert post.body == {"@odata.type": "microsoft.graph.security.alertComment",
                         "comment": "Mirrored from ServiceNow: user called"}  # fmt: skip
    with pytest.raises(ValueError, match="a Defender comment is limited to 30000 characters"):
        await env.client.add_comment(inc["id"], "x" * 30_001)


async def test_e_an_echo_without_the_prefix_still_matches_by_key(env: Env) -> None:
    env.stack.graph.options.comment_echo_drops_prefix = True
    inc = env.t.create_incident()
    echo = await env.client.add_comment(inc["id"], "note")
    assert echo[-1].author == DEFAULT_APP_NAME  # B.4: the prefix can be missing in the echo
    stored = await env.client.get_incident(inc["id"])
    assert stored.comments[-1].author == OWN and stored.comments[-1].key == echo[-1].key


async def test_e_a_comment_is_not_resent_after_an_unclear_failure(env: Env) -> None:
    inc = env.t.create_incident()
    env.stack.graph.faults.once("incidents.comments", 500)
    with pytest.raises(TransientError, match="HTTP 500"):
        await env.client.add_comment(inc["id"], "once")
    assert len([s for s in env.http.sent if s.method == "POST"]) == 1
    env.stack.graph.faults.once("incidents.comments", 429)  # refused before processing: retried
    comments = await env.client.add_comment(inc["id"], "twice?")
    assert [c.text for c in comments] == ["twice?"] and len(
        [s for s in env.http.sent if s.method == "POST"]
    ) == 3


# --- G: throttling ---------------------------------------------------------------------------------------


async def test_g_pacing_at_150_per_minute_never_meets_a_429(tmp_path: Path) -> None:
    async with EmulatorStack(directory=tmp_path) as stack:

        async def sleep(seconds: float) -> None:
            stack.clock.advance(seconds)

        # Paced as production paces Graph: the window widened by the jitter margin, so the
        # emulator's count of arrivals (and the client's send log) never sees 151 in a minute.
        pacer = RequestPacer(150, 60.0, clock=stack.clock.time, sleep=sleep, margin=PACE_MARGIN)
        e = await _env(stack, pacer=pacer)
        try:
            inc = stack.defender.create_incident()
            for _ in range(400):
                await e.client.get_incident(inc["id"])
        finally:
            await e.http.close()
            await e.http.auth.close()  # type: ignore[union-attr]
        assert stack.recorder.count(system="graph", status=429) == 0
        assert e.http.throttled == 0 and pacer.waits > 0
        times = [s.at for s in e.http.sent]
        assert max(sum(1 for t in times if start <= t < start + 60) for start in times) <= 150
        # 400 requests at 150 a minute take at least two minutes of (emulator) time.
        assert times[-1] - times[0] >= 120


async def test_g_without_pacing_429s_come_and_retry_after_is_honoured(env: Env) -> None:
    inc = env.t.create_incident()
    for _ in range(160):
        await env.client.get_incident(inc["id"])
    assert env.stack.recorder.count(system="graph", status=429) > 0
    assert env.sleeps and min(env.sleeps) >= 1  # waited the integer Retry-After each time
    env.stack.graph.options.rate_per_minute = 1  # one a minute: Retry-After 60
    env.stack.clock.advance(120)
    await env.client.get_incident(inc["id"])
    await env.client.get_incident(inc["id"])
    assert 60 in env.sleeps


async def test_g_a_429_holds_the_shared_pacer(env: Env) -> None:
    pacer = RequestPacer(150, 60.0, clock=env.stack.clock.time, sleep=env.http._sleep)
    env.http.pacer = pacer
    inc = env.t.create_incident()
    env.stack.graph.faults.set("incidents.get", rate_429=1.0, retry_after=41)
    with pytest.raises(TransientError, match="HTTP 429"):
        await env.client.get_incident(inc["id"])
    assert len(env.sleeps) == 3 and min(env.sleeps) >= 41  # every retry waited the Retry-After
    env.stack.graph.faults.clear()
    await env.client.get_incident(inc["id"])
    # The last 429 put the shared pacer on hold: the next request (from any client) waits it out.
    assert pacer.waits == 1 and env.sleeps[3] == pytest.approx(41, abs=0.5)


# --- D.5: errors in our tree -----------------------------------------------------------------------------


async def test_d5_graph_errors_map_into_the_error_tree(env: Env) -> None:
    inc = env.t.create_incident()
    with pytest.raises(NotFound, match="Incident 99999999 not found") as missing:
        await env.client.get_incident("99999999")
    assert (missing.value.system, missing.value.status, missing.value.code) == ("graph", 404, "NotFound")
    with pytest.raises(PermanentError, match="The limit of '50' for Top query has been exceeded") as top:
        await env.http.request("GET", f"{env.stack.graph_url}/v1.0/security/incidents", params={"$top": 51})
    assert top.value.status == 400 and top.value.code is None  # the service's empty code
    assert (
        top.value.detail is not None
        and "The limit of '50' for Top query has been exceeded" in top.value.detail
    )
    with pytest.raises(PermanentError, match=r"HTTP 400 \(InvalidRequestBody") as body:
        await env.http.request(
            "PATCH", env.client.incident_url(inc["id"]),
            json={"classification": "falsePositive", "determination": "malware"},
        )  # fmt: skip
    assert (body.value.status, body.value.code) == (400, "InvalidRequestBody")
    with pytest.raises(PermanentError, match=r"HTTP 405 \(MethodNotAllowed") as method:
        await env.http.request("GET", f"{env.client.incident_url(inc['id'])}/comments")
    assert (method.value.status, method.value.code) == (405, "MethodNotAllowed")
    env.stack.graph.faults.fail(f"/incidents/{inc['id']}", 503)
    with pytest.raises(TransientError, match="HTTP 503") as busy:
        await env.client.get_incident(inc["id"])
    assert (
        busy.value.status == 503 and len([s for s in env.gets() if s.url.endswith(inc["id"])]) == 4
    )  # retried


# --- B.6, H.3: Defender's own changes arrive as data --------------------------------------------------------


async def test_h3_a_redirected_incident_is_listed_with_its_target(env: Env) -> None:
    source = env.t.create_incident(custom_tags=["snow"])
    target = env.t.create_incident()
    env.t.merge([source["id"]], target["id"])
    got = {i.id: i for i in await listed(env)}
    assert got[source["id"]].redirected and got[source["id"]].closed
    assert got[source["id"]].redirect_incident_id == target["id"]
    assert "snow" in got[target["id"]].custom_tags and not got[target["id"]].redirected


async def test_b6_an_auto_resolved_incident_reads_resolved_with_unknown_classification(env: Env) -> None:
    inc = env.t.create_incident(alerts=1)
    env.t.resolve_alert(env.t.alerts_for(inc["id"])[0]["id"])
    (got,) = await listed(env)
    assert (got.status, got.classification, got.determination) == ("resolved", "unknown", "unknown")
    assert got.resolving_comment is not None and got.resolving_comment.startswith(
        "Incident automatically resolved"
    )
    assert not got.written_by(DEFAULT_APP_NAME)


def test_g_one_pacer_per_app_and_tenant() -> None:
    first = graph_pacer("Tenant-A", "App-1")
    assert graph_pacer("tenant-a", "app-1") is first and first.limit == 150 and first.window == 60
    assert first.margin == PACE_MARGIN > 0
    assert graph_pacer("tenant-b", "app-1") is not first
    assert graph_pacer("tenant-a", "app-2") is not first


async def test_g_pacer_serves_concurrent_callers_within_the_limit() -> None:
    now = [0.0]
    sent: list[float] = []

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    pacer = RequestPacer(5, 60.0, clock=lambda: now[0], sleep=sleep)

    async def one() -> None:
        await pacer.wait()
        sent.append(now[0])

    async with asyncio.TaskGroup() as group:
        for _ in range(12):
            group.create_task(one())
    assert sent == [0.0] * 5 + [60.0] * 5 + [120.0] * 2
