"""Connector contract: the Graph connector's sync rules against the Graph emulator.

No ETag (D.4): the guarded write re-reads, refuses to overwrite a change made since the plan's read,
PATCHes only what differs, merges tags, and notices a write that raced it. Comments without ids (E):
found again by time and text, once. ``check``'s permission probe names the missing role (A.2).
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import orjson
import pytest

from agent.connectors.graph import comments as gc
from agent.connectors.graph import notes
from agent.connectors.graph.probe import WRITE_ROLE, probe, token_roles
from agent.connectors.graph.writes import moved, write_guarded
from agent.errors import EditConflict
from agent.testing.emulators.graph_tenant import SYSTEM_CREATION, ip_evidence
from agent.testing.emulators.stack import DEFAULT_APP_NAME
from tests.graph_env import OWN, Env, env

__all__ = ["env"]  # the fixture


def patches(env: Env) -> list[dict[str, object]]:
    return [s.body for s in env.http.sent if s.method == "PATCH"]


def on_request(env: Env, n: int, act: Callable[[], object]) -> None:
    """Run ``act`` just before the emulator handles the ``n``-th request from now."""
    count = 0

    def hook() -> None:
        nonlocal count
        count += 1
        if count == n:
            act()

    env.stack.graph.before_request.append(hook)


# --- D.4: no ETag --------------------------------------------------------------------------------


async def test_d4_a_change_since_the_read_is_a_conflict_never_overwritten(env: Env) -> None:
    inc = env.t.create_incident(severity="low")
    read = await env.client.get_incident(inc["id"])
    env.t.analyst_update(inc["id"], severity="high")  # a person, after the plan's read
    with pytest.raises(EditConflict, match=r"severity changed in Microsoft Defender XDR since it was read"):
        await write_guarded(env.client, read, {"severity": "medium"})
    assert patches(env) == [] and env.t.incident(inc["id"])["severity"] == "high"


async def test_d4_alert_activity_moves_the_time_but_conflicts_with_nothing(env: Env) -> None:
    inc = env.t.create_incident(severity="low")
    read = await env.client.get_incident(inc["id"])
    env.t.add_alert(inc["id"], severity="low")  # B.6: moves lastUpdateDateTime, no synced property
    written = await write_guarded(env.client, read, {"severity": "medium"})
    assert patches(env) == [{"severity": "medium"}] and written.clean
    assert written.incident.severity == "medium" and written.incident.written_by(DEFAULT_APP_NAME)
    assert written.app_name == DEFAULT_APP_NAME  # B.5: learnt from lastModifiedBy


async def test_d2_only_what_differs_is_sent_and_nothing_when_nothing_does(env: Env) -> None:
    inc = env.t.create_incident(severity="low", assigned_to="alice@contoso.example")
    read = await env.client.get_incident(inc["id"])
    written = await write_guarded(
        env.client, read, {"severity": "low", "assignedTo": "alice@contoso.example", "status": "inProgress"}
    )
    assert patches(env) == [{"status": "inProgress"}] and written.sent == {"status": "inProgress"}
    again = await write_guarded(env.client, written.incident, {"status": "inProgress"})
    assert len(patches(env)) == 1 and again.sent == {}  # an empty PATCH would still bump (D.2)
    assert again.incident.modified_ticks == written.incident.modified_ticks


async def test_d2_custom_tags_are_merged_into_the_current_list(env: Env) -> None:
    inc = env.t.create_incident(custom_tags=["snow", "VIP"])
    read = await env.client.get_incident(inc["id"])
    written = await write_guarded(env.client, read, {}, add_tags=["INC0010001"])
    assert patches(env) == [{"customTags": ["snow", "VIP", "INC0010001"]}]
    assert written.incident.custom_tags == ("snow", "VIP", "INC0010001")
    await write_guarded(env.client, written.incident, {}, add_tags=["INC0010001"])
    assert len(patches(env)) == 1  # already there: nothing sent


async def test_d4_a_change_racing_the_patch_leaves_the_write_unclean(env: Env) -> None:
    inc = env.t.create_incident(severity="low")
    read = await env.client.get_incident(inc["id"])
    # The re-read is served, then an analyst assigns the incident before our PATCH lands.
    on_request(env, 2, lambda: env.t.analyst_update(inc["id"], assignedTo="bob@contoso.example"))
    written = await write_guarded(env.client, read, {"severity": "high"})
    assert patches(env) == [{"severity": "high"}]
    assert not written.clean  # the caller keeps its old version: the next cycle reads the owner
    assert written.incident.assigned_to == "bob@contoso.example"
    assert moved(read, written.incident) == ["severity", "assignedTo"]


async def test_h3_d3_a_redirected_incident_takes_no_writes(env: Env) -> None:
    a = env.t.create_incident(alerts=1)
    b = env.t.create_incident(alerts=2)
    env.t.merge([a["id"], b["id"]], b["id"])
    read = await env.client.get_incident(a["id"])
    assert read.redirected and read.redirect_incident_id == b["id"]
    written = await write_guarded(env.client, read, {"status": "active"}, add_tags=["INC0010001"])
    assert patches(env) == [] and written.dropped == ("customTags", "status")


async def test_d3_closing_in_one_patch_then_reopening(env: Env) -> None:
    inc = env.t.create_incident()
    read = await env.client.get_incident(inc["id"])
    body = {"status": "resolved", "classification": "truePositive", "determination": "other",
            "resolvingComment": "Closed in ServiceNow INC0010001"}  # fmt: skip
    closed = await write_guarded(env.client, read, body)
    assert patches(env) == [body] and closed.clean and closed.incident.closed
    reopened = await write_guarded(env.client, closed.incident, {"status": "active"})
    assert patches(env)[-1] == {"status": "active"} and reopened.incident.status == "active"
    assert reopened.incident.classification == "truePositive"  # reopen sends the status only


# --- E: comments without ids ----------------------------------------------------------------------


async def test_e_a_comment_is_found_again_by_time_and_text_in_the_echo_and_the_incident(env: Env) -> None:
    env.stack.graph.options.comment_echo_drops_prefix = True  # B.4
    inc = env.t.create_incident()
    env.t.analyst_comment(inc["id"], "same words")
    text = "ServiceNow INC0010001 work note by Bob\n\nsame words"
    digest = gc.text_hash(text)
    before = (await env.client.get_incident(inc["id"])).comments
    assert gc.find_posted(before, digest) is None  # not posted yet
    echo = await env.client.add_comment(inc["id"], text)
    ours = gc.find_posted(echo, digest)
    assert ours is not None and ours.author == DEFAULT_APP_NAME and gc.by_app(ours, DEFAULT_APP_NAME)
    stored = (await env.client.get_incident(inc["id"])).comments
    again = gc.find_posted(stored, digest)
    assert again is not None and again.author == OWN and gc.by_app(again, DEFAULT_APP_NAME)
    assert gc.comment_id(again) == gc.comment_id(ours)  # the same id from the echo and the GET
    known = {gc.comment_id(c) for c in before} | {gc.comment_id(ours)}
    assert gc.new_comments(stored, known) == []
    assert not gc.by_app(stored[0], DEFAULT_APP_NAME)  # Alice's


async def test_e_two_equal_texts_are_two_comments_and_a_taken_one_is_skipped(env: Env) -> None:
    inc = env.t.create_incident()
    first = await env.client.add_comment(inc["id"], "ok")
    second = await env.client.add_comment(inc["id"], "ok")
    assert len(second) == 2 and gc.comment_id(second[0]) != gc.comment_id(second[1])
    taken = {gc.comment_id(first[0])}
    found = gc.find_posted(second, gc.text_hash("ok"), taken)
    assert found is not None and gc.comment_id(found) == gc.comment_id(second[1])
    assert len(gc.new_comments(second, ())) == 2


def test_e_long_comments_are_capped_at_30000_characters() -> None:
    text = gc.capped("x" * 40_000, "ServiceNow INC0010001")
    assert len(text) == 30_000 and text.endswith("the full text is in ServiceNow INC0010001]")
    assert gc.capped("short", "x") == "short"
    assert gc.app_name_of("API-App:sync") == "sync" and gc.app_name_of(SYSTEM_CREATION) is None


# --- F: alerts and evidence -----------------------------------------------------------------------


async def test_f_alert_and_evidence_lines_from_the_per_incident_read(env: Env) -> None:
    inc = env.t.create_incident(
        alerts=[{"title": "Connection to a bad IP", "severity": "high",
                 "evidence": [ip_evidence(env.t.now(), "198.51.100.7")]}, {}]
    )  # fmt: skip
    alerts = await env.client.list_alerts(inc["id"])
    lines = notes.alert_lines(alerts)
    assert [line.id for line in lines] == [a.id for a in alerts] and len(lines) == 2
    [bad_ip] = [line.text for line in lines if line.text.startswith("Connection to a bad IP")]
    assert bad_ip.startswith("Connection to a bad IP (high; Microsoft Defender for Endpoint; Execution T1059")
    assert "), new: https://security.microsoft.com/alerts/" in bad_ip
    kinds = sorted(line.text.split(":")[0] for line in notes.evidence_lines(alerts))
    assert kinds == ["Device", "IP address", "User"]  # the device and user of both alerts once
    gets = [s for s in env.http.sent if s.method == "GET"]
    assert len(gets) == 1 and gets[0].query == {"$expand": "alerts"}  # C.5


# --- A.2: check's probe ---------------------------------------------------------------------------


async def test_a2_probe_with_write_permission(env: Env) -> None:
    found = await probe(env.client)
    assert (found.can_read, found.can_write, found.problem) == (True, True, "")
    assert WRITE_ROLE in found.granted


async def test_a2_probe_names_the_write_role_a_read_only_app_lacks(env: Env) -> None:
    env.stack.entra.grant_roles(env.stack.client_id, env.stack.graph_url, "SecurityIncident.Read.All")
    await env.http.auth.header(force_refresh=True)  # type: ignore[union-attr]
    found = await probe(env.client)
    assert (found.can_read, found.can_write) == (True, False)
    assert found.problem == (
        "the app may read but not update incidents or post comments: it needs "
        "SecurityIncident.ReadWrite.All and has SecurityIncident.Read.All"
    )
    assert "Grant admin consent" in found.hint


async def test_a2_probe_names_the_read_roles_from_graphs_403(env: Env) -> None:
    env.stack.entra.grant_roles(env.stack.client_id, env.stack.graph_url, "User.Read.All")
    await env.http.auth.header(force_refresh=True)  # type: ignore[union-attr]
    found = await probe(env.client)
    assert (found.can_read, found.can_write) == (False, False)
    assert found.problem == (
        "the app may not read incidents: it needs SecurityIncident.Read.All or "
        "SecurityIncident.ReadWrite.All and has User.Read.All"
    )
    env.stack.entra.grant_roles(env.stack.client_id, env.stack.graph_url)  # A.1: no consent, no claim
    await env.http.auth.header(force_refresh=True)  # type: ignore[union-attr]
    assert (await probe(env.client)).problem.endswith("and has no application permission")


def test_a1_roles_claim_read_for_diagnosis_only() -> None:
    def jwt(claims: object) -> str:
        body = base64.urlsafe_b64encode(orjson.dumps(claims)).decode().rstrip("=")
        return f"Bearer e30.{body}.sig"

    assert token_roles(jwt({"roles": ["a", "b"]})) == ("a", "b")
    assert token_roles(jwt({"aud": "x"})) == ()  # no consent: no roles claim (A.1)
    assert token_roles("Bearer opaque-token") is None
    assert token_roles("Bearer a.!!!.c") is None
