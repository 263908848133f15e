"""The ServiceNow Table API emulator over real TLS (REFERENCE C)."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from agent.connectors.servicenow.models import parse_snow_time
from agent.testing.emulators.common import Clock, EmulatorServer, Faults, Recorder, TLSMaterial, TokenRegistry
from agent.testing.emulators.encoded_query import escape
from agent.testing.emulators.servicenow import ServiceNowEmulator

USER, PASSWORD = "svc.sync", "s3cret-pass"
SYS_ID = re.compile(r"^[0-9a-f]{32}$")
SNOW_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
NOT_AUTHENTICATED = {
    "error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"},
    "status": "failure",
}
DATA_POLICY = {
    "error": {
        "message": "Operation Failed",
        "detail": "Data Policy Exception: \n\t"
        "The following fields are mandatory: Resolution code, Close notes",
    },
    "status": "failure",
}
NO_RECORD = {
    "error": {
        "message": "No Record found",
        "detail": "Record doesn't exist or ACL restricts the record retrieval",
    },
    "status": "failure",
}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Reply:
    status: int
    headers: Any
    body: Any


@dataclass
class Env:
    emu: ServiceNowEmulator
    clock: Clock
    tokens: TokenRegistry
    base: str
    http: aiohttp.ClientSession

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = (USER, PASSWORD),
        data: Any = None,
        skip: tuple[str, ...] = (),
    ) -> Reply:
        url = path if path.startswith("https://") else self.base + path
        headers = dict(headers or {})
        if auth is not None:
            headers.setdefault("Authorization", basic(*auth))
        async with self.http.request(
            method,
            url,
            json=json,
            data=data,
            params=params,
            headers=headers,
            skip_auto_headers=skip,
        ) as resp:
            raw = await resp.read()
            body = await resp.json(content_type=None) if raw else None
            return Reply(resp.status, resp.headers, body)

    def incident(self, **fields: str) -> dict[str, str]:
        return self.emu.insert("incident", {"short_description": "seeded", **fields})


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSMaterial]:
    yield TLSMaterial(tmp_path_factory.mktemp("tls"))


async def _env(tls: TLSMaterial, **kwargs: Any) -> AsyncIterator[Env]:
    clock = Clock()
    tokens = TokenRegistry(clock)
    emu = ServiceNowEmulator(clock=clock, tokens=tokens, faults=Faults(seed=1), recorder=Recorder(), **kwargs)
    emu.add_api_user(USER, PASSWORD)
    server = EmulatorServer(emu.app, tls)
    base = await server.start()
    connector = aiohttp.TCPConnector(ssl=tls.client_context())
    try:
        async with aiohttp.ClientSession(connector=connector) as http:
            yield Env(emu, clock, tokens, base, http)
    finally:
        await server.stop()


@pytest.fixture
async def env(tls: TLSMaterial) -> AsyncIterator[Env]:
    async for e in _env(tls):
        yield e


@pytest.fixture
async def lax_env(tls: TLSMaterial) -> AsyncIterator[Env]:
    async for e in _env(tls, close_data_policy=False):
        yield e


def links(header: str) -> dict[str, dict[str, list[str]]]:
    """rel -> parsed query of the Link header's URL for that rel."""
    out = {}
    for url, rel in re.findall(r'<([^>]+)>;rel="(\w+)"', header):
        out[rel] = parse_qs(urlsplit(url).query)
    return out


# --- routes and table API shape (C.1) -------------------------------------------------------


async def test_list_on_every_api_prefix(env: Env) -> None:
    created = env.incident()
    for prefix in ("/api/now/table", "/api/now/v2/table", "/api/now/v1/table"):
        reply = await env.call("GET", f"{prefix}/incident")
        assert reply.status == 200, prefix
        assert [r["sys_id"] for r in reply.body["result"]] == [created["sys_id"]]
    assert env.emu.recorder.count(system="servicenow", route="table.list", status=200) == 3


async def test_empty_match_v1_is_404_v2_and_default_are_empty_lists(env: Env) -> None:
    env.incident()
    params = {"sysparm_query": "number=INC9999999"}
    for prefix in ("/api/now/table", "/api/now/v2/table"):
        reply = await env.call("GET", f"{prefix}/incident", params=params)
        assert (reply.status, reply.body) == (200, {"result": []})
    v1 = await env.call("GET", "/api/now/v1/table/incident", params=params)
    assert (v1.status, v1.body) == (404, NO_RECORD)
    assert (
        await env.call("GET", "/api/now/v1/table/incident", params={"sysparm_query": "active=true"})
    ).status == 200


async def test_get_one_and_404(env: Env) -> None:
    created = env.incident()
    reply = await env.call("GET", f"/api/now/table/incident/{created['sys_id']}")
    assert reply.status == 200
    assert reply.body["result"]["number"] == created["number"]
    missing = await env.call("GET", f"/api/now/table/incident/{'0' * 32}")
    assert (missing.status, missing.body) == (404, NO_RECORD)
    assert env.emu.recorder.count(route="table.get") == 2


async def test_post_returns_201_location_and_full_record(env: Env) -> None:
    reply = await env.call("POST", "/api/now/table/incident", json={"short_description": "Disk full"})
    assert reply.status == 201
    result = reply.body["result"]
    assert reply.headers["Location"] == f"{env.base}/api/now/table/incident/{result['sys_id']}"
    assert result["short_description"] == "Disk full"
    # the full record, not only what was sent
    for name in (
        "number",
        "state",
        "priority",
        "sys_created_on",
        "close_code",
        "correlation_id",
        "work_notes",
    ):
        assert name in result
    assert env.emu.record("incident", result["sys_id"])["short_description"] == "Disk full"
    assert env.emu.recorder.count(route="table.post", status=201) == 1


@pytest.mark.parametrize("method", ["PATCH", "PUT"])
async def test_patch_and_put_change_only_sent_fields(env: Env, method: str) -> None:
    created = env.incident(description="keep me", impact="2")
    path = f"/api/now/table/incident/{created['sys_id']}"
    reply = await env.call(method, path, json={"short_description": "changed"})
    assert reply.status == 200
    result = reply.body["result"]
    assert result["short_description"] == "changed"
    assert result["description"] == "keep me"
    assert result["impact"] == "2"
    assert "sys_mod_count" in result and "number" in result  # full record back
    assert env.emu.recorder.count(route=f"table.{method.lower()}", status=200) == 1


async def test_delete_204_then_404(env: Env) -> None:
    created = env.incident()
    path = f"/api/now/table/incident/{created['sys_id']}"
    reply = await env.call("DELETE", path)
    assert (reply.status, reply.body) == (204, None)
    assert created["sys_id"] not in env.emu.tables["incident"]
    assert (await env.call("DELETE", path)).status == 404
    assert (await env.call("PATCH", path, json={"short_description": "x"})).status == 404
    assert env.emu.recorder.count(route="table.delete") == 2


async def test_unknown_table_is_400(env: Env) -> None:
    reply = await env.call("GET", "/api/now/table/foo")
    assert reply.status == 400
    assert reply.body == {"error": {"message": "Invalid table foo", "detail": None}, "status": "failure"}
    assert (await env.call("POST", "/api/now/table/foo", json={})).status == 400


async def test_write_without_accept_is_400(env: Env) -> None:
    reply = await env.call(
        "POST", "/api/now/table/incident", json={"short_description": "x"}, skip=("Accept",)
    )
    assert reply.status == 400
    assert reply.body["status"] == "failure"
    assert env.emu.tables["incident"] == {}


async def test_write_with_non_json_content_type_is_400(env: Env) -> None:
    reply = await env.call(
        "POST",
        "/api/now/table/incident",
        data=b'{"short_description":"x"}',
        headers={"Content-Type": "text/plain"},
    )
    assert reply.status == 400
    form = await env.call("POST", "/api/now/table/incident", data={"short_description": "x"})
    assert form.status == 400
    assert env.emu.tables["incident"] == {}


async def test_malformed_json_is_400(env: Env) -> None:
    for payload in (b'{"short_description": ', b"[1, 2]", b""):
        reply = await env.call(
            "POST", "/api/now/table/incident", data=payload, headers={"Content-Type": "application/json"}
        )
        assert reply.status == 400, payload
        assert reply.body["error"]["message"] == "Exception while reading request"
    assert env.emu.tables["incident"] == {}


async def test_no_response_body_header(env: Env) -> None:
    headers = {"X-no-response-body": "true"}
    reply = await env.call(
        "POST", "/api/now/table/incident", json={"short_description": "x"}, headers=headers
    )
    assert (reply.status, reply.body) == (201, None)
    sys_id = reply.headers["Location"].rsplit("/", 1)[1]
    patched = await env.call(
        "PATCH", f"/api/now/table/incident/{sys_id}", json={"short_description": "y"}, headers=headers
    )
    assert (patched.status, patched.body) == (200, None)
    assert env.emu.record("incident", sys_id)["short_description"] == "y"


# --- authentication and permissions (C.7, C.5) ----------------------------------------------


async def test_basic_auth_required_and_checked(env: Env) -> None:
    for auth in (None, (USER, "wrong"), ("nobody", PASSWORD)):
        reply = await env.call("GET", "/api/now/table/incident", auth=auth)
        assert (reply.status, reply.body) == (401, NOT_AUTHENTICATED)
    garbage = await env.call(
        "GET", "/api/now/table/incident", auth=None, headers={"Authorization": "Basic %%%"}
    )
    assert garbage.status == 401
    assert (await env.call("GET", "/api/now/table/incident")).status == 200


async def _password_grant(env: Env, **overrides: str) -> Reply:
    form = {
        "grant_type": "password",
        "client_id": "sync-client",
        "client_secret": "client-secret",
        "username": USER,
        "password": PASSWORD,
        **overrides,
    }
    return await env.call("POST", "/oauth_token.do", data=form, auth=None)


async def test_oauth_password_grant_bearer_expiry_and_refresh(env: Env) -> None:
    env.emu.add_oauth_client("sync-client", "client-secret")
    reply = await _password_grant(env)
    assert reply.status == 200
    body = reply.body
    assert set(body) == {"scope", "token_type", "expires_in", "refresh_token", "access_token"}
    assert (body["scope"], body["token_type"], body["expires_in"]) == ("useraccount", "Bearer", 1799)
    issued, problem = env.tokens.check(body["access_token"], env.emu.audience)
    assert problem == "" and issued is not None and issued.audience == "servicenow:default"

    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    created = await env.call(
        "POST", "/api/now/table/incident", json={"short_description": "x"}, headers=bearer, auth=None
    )
    assert created.status == 201
    assert created.body["result"]["sys_created_by"] == USER

    env.clock.advance(1800)
    expired = await env.call("GET", "/api/now/table/incident", headers=bearer, auth=None)
    assert (expired.status, expired.body) == (401, NOT_AUTHENTICATED)

    refreshed = await env.call(
        "POST",
        "/oauth_token.do",
        data={
            "grant_type": "refresh_token",
            "client_id": "sync-client",
            "client_secret": "client-secret",
            "refresh_token": body["refresh_token"],
        },
        auth=None,
    )
    assert refreshed.status == 200
    assert refreshed.body["access_token"] != body["access_token"]
    again = {"Authorization": f"Bearer {refreshed.body['access_token']}"}
    assert (await env.call("GET", "/api/now/table/incident", headers=again, auth=None)).status == 200
    assert env.emu.recorder.count(route="oauth.token", status=200) == 2


async def test_oauth_bad_credentials(env: Env) -> None:
    env.emu.add_oauth_client("sync-client", "client-secret")
    denied = {"error_description": "access_denied", "error": "server_error"}
    for overrides in (
        {"password": "wrong"},
        {"username": "nobody"},
        {"client_secret": "wrong"},
        {"client_id": "other"},
        {"grant_type": "client_credentials"},  # off by default (C.7)
        {"grant_type": "authorization_code"},
    ):
        reply = await _password_grant(env, **overrides)
        assert (reply.status, reply.body) == (401, denied), overrides
    bad_refresh = await env.call(
        "POST",
        "/oauth_token.do",
        data={"grant_type": "refresh_token", "client_id": "sync-client", "client_secret": "client-secret",
              "refresh_token": "not-issued"},
        auth=None,
    )  # fmt: skip
    assert (bad_refresh.status, bad_refresh.body) == (401, denied)


async def test_e11_client_credentials_grant_needs_the_property_and_an_application_user(env: Env) -> None:
    form = {"grant_type": "client_credentials", "client_id": "sync-client", "client_secret": "client-secret"}
    env.emu.add_oauth_client("sync-client", "client-secret")
    off = await env.call("POST", "/oauth_token.do", data=form, auth=None)
    assert (off.status, off.body) == (401, {"error_description": "access_denied", "error": "server_error"})
    env.emu.client_credentials_enabled = True
    no_user = await env.call("POST", "/oauth_token.do", data=form, auth=None)
    assert no_user.status == 401 and no_user.body["error"] == "unauthorized_client"
    env.emu.add_oauth_client("sync-client", "client-secret", application_user=USER)
    wrong = await env.call("POST", "/oauth_token.do", data={**form, "client_secret": "x"}, auth=None)
    assert wrong.status == 401 and wrong.body["error_description"] == "access_denied"
    granted = await env.call("POST", "/oauth_token.do", data=form, auth=None)
    assert granted.status == 200
    assert set(granted.body) == {"scope", "token_type", "expires_in", "access_token"}  # no refresh token
    bearer = {"Authorization": f"Bearer {granted.body['access_token']}"}
    created = await env.call(
        "POST", "/api/now/table/incident", json={"short_description": "x"}, headers=bearer, auth=None
    )
    assert created.status == 201 and created.body["result"]["sys_created_by"] == USER


async def test_bearer_of_another_audience_or_unknown_is_rejected(env: Env) -> None:
    foreign = env.tokens.issue(audience="https://management.azure.com", tenant="t", client_id="c")
    for token in (foreign.token, "not-a-token"):
        reply = await env.call(
            "GET", "/api/now/table/incident", headers={"Authorization": f"Bearer {token}"}, auth=None
        )
        assert (reply.status, reply.body) == (401, NOT_AUTHENTICATED)


async def test_read_only_user_gets_acl_403_on_writes(env: Env) -> None:
    env.emu.add_api_user("reader", "pw-reader", write=False)
    created = env.incident()
    reader = ("reader", "pw-reader")
    path = f"/api/now/table/incident/{created['sys_id']}"
    post = await env.call("POST", "/api/now/table/incident", json={"short_description": "x"}, auth=reader)
    assert post.status == 403
    assert post.body == {
        "error": {
            "message": "Operation Failed",
            "detail": "ACL Exception Insert Failed due to security constraints",
        },
        "status": "failure",
    }
    for method in ("PATCH", "PUT"):
        reply = await env.call(method, path, json={"short_description": "x"}, auth=reader)
        assert reply.status == 403
        assert reply.body["error"]["detail"] == "ACL Exception Update Failed due to security constraints"
    assert (await env.call("DELETE", path, auth=reader)).status == 403
    assert (await env.call("GET", path, auth=reader)).status == 200
    assert env.emu.record("incident", created["sys_id"]) == created
    assert len(env.emu.tables["incident"]) == 1


async def test_e6_the_record_still_shows_its_journal_in_the_users_time_zone_and_format(env: Env) -> None:
    """Without the journal ACL, the record's own display value still holds every entry (E.6),
    dated as the reading user sees dates (C.4)."""
    env.emu.add_api_user("blind", "pw-blind", journal_read=False)
    env.emu.set_user_clock("blind", timedelta(hours=1), "%d.%m.%Y %H:%M:%S")
    created = env.incident(work_notes="first")
    env.clock.advance(61)
    env.emu.analyst_update("incident", created["sys_id"], {"work_notes": "second"})
    rows = env.emu.journal(created["sys_id"])
    params = {"sysparm_fields": "work_notes,sys_updated_on", "sysparm_display_value": "all"}
    reply = await env.call(
        "GET", f"/api/now/table/incident/{created['sys_id']}", params=params, auth=("blind", "pw-blind")
    )
    result = reply.body["result"]

    def shown(raw: str) -> str:
        return (datetime.strptime(raw, "%Y-%m-%d %H:%M:%S") + timedelta(hours=1)).strftime(
            "%d.%m.%Y %H:%M:%S"
        )

    assert result["sys_updated_on"]["display_value"] == shown(result["sys_updated_on"]["value"])
    assert result["work_notes"]["value"] == ""  # raw journal fields read empty (C.4)
    assert result["work_notes"]["display_value"] == (
        f"{shown(rows[1]['sys_created_on'])} - System Administrator (Work notes)\nsecond\n\n"
        f"{shown(rows[0]['sys_created_on'])} - System Administrator (Work notes)\nfirst\n\n"
    )


async def test_missing_journal_read_acl_looks_like_no_rows(env: Env) -> None:
    env.emu.add_api_user("blind", "pw-blind", journal_read=False)
    created = env.incident(work_notes="secret note")
    (row,) = env.emu.journal(created["sys_id"])
    blind = ("blind", "pw-blind")
    params = {"sysparm_query": f"element_id={created['sys_id']}"}
    reply = await env.call("GET", "/api/now/table/sys_journal_field", params=params, auth=blind)
    assert (reply.status, reply.body) == (200, {"result": []})
    assert (
        await env.call("GET", f"/api/now/table/sys_journal_field/{row['sys_id']}", auth=blind)
    ).status == 404
    normal = await env.call("GET", "/api/now/table/sys_journal_field", params=params)
    assert [r["value"] for r in normal.body["result"]] == ["secret note"]


# --- value representation (C.4) -------------------------------------------------------------


async def test_every_value_is_a_string_never_null(env: Env) -> None:
    caller = env.emu.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    env.incident(caller_id=caller)
    reply = await env.call("GET", "/api/now/table/incident")
    (record,) = reply.body["result"]
    for name, value in record.items():
        if isinstance(value, dict):
            assert set(value) == {"link", "value"} and all(isinstance(v, str) for v in value.values()), name
        else:
            assert isinstance(value, str), name
    assert record["close_code"] == "" and record["assigned_to"] == ""
    assert record["active"] == "true" and record["sys_mod_count"] == "0"
    for name in ("sys_created_on", "sys_updated_on", "opened_at"):
        assert SNOW_TIME.match(record[name]), name
    created = parse_snow_time(record["sys_created_on"])
    now = datetime.fromtimestamp(env.clock.time(), UTC)
    assert abs((now - created).total_seconds()) < 5  # UTC, not local time


async def test_reference_links_use_request_host_and_can_be_excluded(env: Env) -> None:
    caller = env.emu.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    group = env.emu.add_group("SOC")
    created = env.incident(caller_id=caller, assignment_group=group)
    path = f"/api/now/table/incident/{created['sys_id']}"
    record = (await env.call("GET", path)).body["result"]
    assert record["caller_id"] == {"link": f"{env.base}/api/now/table/sys_user/{caller}", "value": caller}
    assert record["assignment_group"] == {
        "link": f"{env.base}/api/now/table/sys_user_group/{group}",
        "value": group,
    }
    assert record["assigned_to"] == ""
    plain = (await env.call("GET", path, params={"sysparm_exclude_reference_link": "true"})).body["result"]
    assert (plain["caller_id"], plain["assignment_group"], plain["assigned_to"]) == (caller, group, "")


async def test_display_values_true_and_all(env: Env) -> None:
    caller = env.emu.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    created = env.incident(caller_id=caller, state="2", impact="1", urgency="2", close_code="Duplicate")
    env.emu.analyst_update("incident", created["sys_id"], {"work_notes": "checked the host"}, by=USER)
    path = f"/api/now/table/incident/{created['sys_id']}"

    shown = (await env.call("GET", path, params={"sysparm_display_value": "true"})).body["result"]
    assert shown["state"] == "In Progress"
    assert shown["priority"] == "2 - High"
    assert shown["impact"] == "1 - High"
    assert shown["close_code"] == "Duplicate"
    assert shown["caller_id"] == {
        "display_value": "Abel Tuter",
        "link": f"{env.base}/api/now/table/sys_user/{caller}",
    }
    assert "(Work notes)\nchecked the host" in shown["work_notes"]
    assert shown["comments"] == ""

    both = (await env.call("GET", path, params={"sysparm_display_value": "all"})).body["result"]
    assert both["state"] == {"display_value": "In Progress", "value": "2"}
    assert both["number"] == {"display_value": created["number"], "value": created["number"]}
    assert both["caller_id"] == {
        "display_value": "Abel Tuter",
        "value": caller,
        "link": f"{env.base}/api/now/table/sys_user/{caller}",
    }
    no_link = await env.call(
        "GET", path, params={"sysparm_display_value": "true", "sysparm_exclude_reference_link": "true"}
    )
    assert no_link.body["result"]["caller_id"] == "Abel Tuter"


async def test_journal_fields_read_back_empty_in_raw_mode(env: Env) -> None:
    created = env.incident()
    path = f"/api/now/table/incident/{created['sys_id']}"
    reply = await env.call("PATCH", path, json={"comments": "customer visible", "work_notes": "internal"})
    result = reply.body["result"]
    assert (result["comments"], result["work_notes"], result["comments_and_work_notes"]) == ("", "", "")
    assert (await env.call("GET", path)).body["result"]["work_notes"] == ""
    assert env.emu.tables["incident"][created["sys_id"]]["work_notes"] == ""


# --- query parameters (C.2, C.3) ------------------------------------------------------------


async def test_sysparm_query_over_http(env: Env) -> None:
    a = env.incident(short_description="alpha", impact="1", urgency="1")
    b = env.incident(short_description="beta", impact="2", urgency="2")
    c = env.incident(short_description="gamma", impact="3", urgency="3")

    async def numbers(query: str) -> list[str]:
        reply = await env.call("GET", "/api/now/table/incident", params={"sysparm_query": query})
        assert reply.status == 200
        return [r["number"] for r in reply.body["result"]]

    assert await numbers("priority<=3^ORDERBYDESCpriority") == [b["number"], a["number"]]
    assert await numbers("short_descriptionSTARTSWITHg^ORshort_description=alpha") == [
        a["number"],
        c["number"],
    ]
    assert await numbers("priority=1^NQpriority=5^ORDERBYDESCnumber") == [c["number"], a["number"]]
    assert await numbers("bogus_field=1^short_description=beta") == [b["number"]]
    assert await numbers("Short_description=beta") == [a["number"], b["number"], c["number"]]
    assert await numbers("short_description=Beta") == []


async def test_query_injection_through_values(env: Env) -> None:
    hostile = "x^ORDERBYDESCnumber^NQactive=true"
    target = env.incident(short_description=hostile)
    other = env.incident(short_description="benign")

    async def sys_ids(query: str) -> list[str]:
        reply = await env.call("GET", "/api/now/table/incident", params={"sysparm_query": query})
        return [r["sys_id"] for r in reply.body["result"]]

    # Unescaped, the value's ^NQ and ^ORDERBYDESC become query terms: every active incident, reversed.
    assert await sys_ids("short_description=" + hostile) == [other["sys_id"], target["sys_id"]]
    # Escaped with ^^ it is one literal value.
    assert await sys_ids("short_description=" + escape(hostile)) == [target["sys_id"]]


async def test_name_value_pair_filtering(env: Env) -> None:
    env.emu.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    env.emu.add_user("beth.anglin", "beth.anglin@example.com", "Beth Anglin")
    reply = await env.call("GET", "/api/now/table/sys_user", params={"user_name": "abel.tuter"})
    assert [u["email"] for u in reply.body["result"]] == ["abel.tuter@example.com"]
    in_progress = env.incident(state="2")
    env.incident(state="1")
    by_label = await env.call("GET", "/api/now/table/incident", params={"state": "in progress"})
    assert [r["sys_id"] for r in by_label.body["result"]] == [in_progress["sys_id"]]
    # sysparm_query wins over name-value pairs
    both = await env.call("GET", "/api/now/table/incident", params={"state": "2", "sysparm_query": "state=1"})
    assert [r["state"] for r in both.body["result"]] == ["1"]


async def test_sysparm_fields_selects_and_ignores_unknown(env: Env) -> None:
    caller = env.emu.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    env.incident(caller_id=caller)
    params = {"sysparm_fields": "sys_id,number,no_such_field,caller_id,caller_id.email"}
    (record,) = (await env.call("GET", "/api/now/table/incident", params=params)).body["result"]
    assert list(record) == ["sys_id", "number", "caller_id", "caller_id.email"]
    assert record["caller_id.email"] == "abel.tuter@example.com"


async def test_paging_headers(env: Env) -> None:
    for i in range(25):
        env.incident(short_description=f"n{i}")
    query = "active=true"

    async def page(offset: int) -> Reply:
        params = {"sysparm_query": query, "sysparm_limit": "10", "sysparm_offset": str(offset)}
        return await env.call("GET", "/api/now/table/incident", params=params)

    first, middle, last = await page(0), await page(10), await page(20)
    assert [len(p.body["result"]) for p in (first, middle, last)] == [10, 10, 5]
    assert first.headers["X-Total-Count"] == "25"
    rels = links(first.headers["Link"])
    assert set(rels) == {"first", "next", "last"}
    assert rels["next"]["sysparm_offset"] == ["10"] and rels["last"]["sysparm_offset"] == ["20"]
    assert rels["next"]["sysparm_query"] == [query] and rels["next"]["sysparm_limit"] == ["10"]
    assert set(links(middle.headers["Link"])) == {"first", "prev", "next", "last"}
    assert links(middle.headers["Link"])["prev"]["sysparm_offset"] == ["0"]
    assert set(links(last.headers["Link"])) == {"first", "prev", "last"}
    assert all(
        url.startswith(env.base + "/api/now/table/incident?")
        for url in re.findall(r"<([^>]+)>", first.headers["Link"])
    )

    single = await env.call("GET", "/api/now/table/incident", params={"sysparm_limit": "100"})
    assert "Link" not in single.headers and single.headers["X-Total-Count"] == "25"
    default = await env.call("GET", "/api/now/table/incident")
    assert len(default.body["result"]) == 25 and "Link" not in default.headers
    suppressed = await env.call(
        "GET",
        "/api/now/table/incident",
        params={"sysparm_limit": "10", "sysparm_suppress_pagination_header": "true"},
    )
    assert "Link" not in suppressed.headers and suppressed.headers["X-Total-Count"] == "25"
    uncounted = await env.call(
        "GET", "/api/now/table/incident", params={"sysparm_limit": "10", "sysparm_no_count": "true"}
    )
    assert "X-Total-Count" not in uncounted.headers
    assert len(uncounted.body["result"]) == 10


async def test_paging_across_many_pages_is_stable(env: Env) -> None:
    for i in range(57):
        env.incident(short_description=f"bucket{i % 4}")
    params = {"sysparm_query": "ORDERBYshort_description", "sysparm_limit": "8", "sysparm_fields": "sys_id"}
    url: str | None = "/api/now/table/incident"
    seen: list[str] = []
    pages = 0
    while url:
        reply = await env.call("GET", url, params=params if pages == 0 else None)
        seen.extend(r["sys_id"] for r in reply.body["result"])
        url = next(
            (
                u
                for u, rel in re.findall(r'<([^>]+)>;rel="(\w+)"', reply.headers.get("Link", ""))
                if rel == "next"
            ),
            None,
        )
        pages += 1
    assert pages == 8
    assert len(seen) == 57 and len(set(seen)) == 57
    whole = await env.call(
        "GET", "/api/now/table/incident", params={"sysparm_query": "ORDERBYshort_description"}
    )
    assert seen == [r["sys_id"] for r in whole.body["result"]]
    # ties inside each bucket keep insertion order
    inserted = list(env.emu.tables["incident"])
    assert seen[:15] == [sid for i, sid in enumerate(inserted) if i % 4 == 0]


async def test_default_order_is_insertion_order(env: Env) -> None:
    made = [env.incident(short_description=s)["sys_id"] for s in ("c", "a", "b")]
    reply = await env.call("GET", "/api/now/table/incident")
    assert [r["sys_id"] for r in reply.body["result"]] == made


async def test_offset_and_limit(env: Env) -> None:
    made = [env.incident(short_description=str(i))["sys_id"] for i in range(6)]
    reply = await env.call(
        "GET", "/api/now/table/incident", params={"sysparm_limit": "2", "sysparm_offset": "3"}
    )
    assert [r["sys_id"] for r in reply.body["result"]] == made[3:5]
    beyond = await env.call("GET", "/api/now/table/incident", params={"sysparm_offset": "10"})
    assert (beyond.status, beyond.body["result"], beyond.headers["X-Total-Count"]) == (200, [], "6")


async def test_sys_choice_is_seeded(env: Env) -> None:
    params = {"sysparm_query": "name=incident^element=close_code^inactive=false", "sysparm_fields": "value"}
    reply = await env.call("GET", "/api/now/table/sys_choice", params=params)
    values = [r["value"] for r in reply.body["result"]]
    assert "Solution provided" in values and "Duplicate" in values and len(values) == 9
    states = env.emu.find("sys_choice", "name=incident^element=state^ORDERBYsequence")
    assert [(r["value"], r["label"]) for r in states] == [
        ("1", "New"), ("2", "In Progress"), ("3", "On Hold"),
        ("6", "Resolved"), ("7", "Closed"), ("8", "Canceled"),
    ]  # fmt: skip


# --- incident semantics (C.8, C.9) ----------------------------------------------------------


async def test_insert_defaults_numbering_and_system_fields(env: Env) -> None:
    first = (await env.call("POST", "/api/now/table/incident", json={"short_description": "a"})).body[
        "result"
    ]
    second = (await env.call("POST", "/api/now/table/incident", json={"short_description": "b"})).body[
        "result"
    ]
    assert (first["number"], second["number"]) == ("INC0010001", "INC0010002")
    assert SYS_ID.match(first["sys_id"]) and first["sys_id"] != second["sys_id"]
    expected = {
        "state": "1",
        "incident_state": "1",
        "impact": "3",
        "urgency": "3",
        "priority": "5",
        "active": "true",
        "sys_domain": "global",
        "sys_mod_count": "0",
        "sys_created_by": USER,
        "sys_updated_by": USER,
        "resolved_at": "",
        "closed_at": "",
    }
    assert {k: first[k] for k in expected} == expected
    assert first["opened_by"]["value"] == env.emu.find("sys_user", f"user_name={USER}")[0]["sys_id"]
    other = ServiceNowEmulator(clock=env.clock, tokens=env.tokens, name="other")
    assert other.insert("incident", {})["number"] == "INC0010001"  # numbering is per instance


@pytest.mark.parametrize(
    ("impact", "urgency", "priority"),
    [("1", "1", "1"), ("1", "2", "2"), ("1", "3", "3"), ("2", "1", "2"), ("2", "2", "3"),
     ("2", "3", "4"), ("3", "1", "3"), ("3", "2", "4"), ("3", "3", "5")],
)  # fmt: skip
async def test_priority_from_impact_and_urgency(env: Env, impact: str, urgency: str, priority: str) -> None:
    created = env.incident()
    reply = await env.call(
        "PATCH",
        f"/api/now/table/incident/{created['sys_id']}",
        json={"impact": impact, "urgency": urgency, "priority": "1"},  # priority is computed, never written
    )
    assert reply.body["result"]["priority"] == priority


async def test_json_scalars_are_stored_as_strings(env: Env) -> None:
    reply = await env.call(
        "POST", "/api/now/table/incident", json={"impact": 2, "urgency": 1, "description": None}
    )
    result = reply.body["result"]
    assert (result["impact"], result["urgency"], result["priority"], result["description"]) == (
        "2",
        "1",
        "2",
        "",
    )
    nested = await env.call("POST", "/api/now/table/incident", json={"impact": [1]})
    assert nested.status == 400


async def test_resolve_close_reopen_lifecycle(env: Env) -> None:
    created = env.incident()
    path = f"/api/now/table/incident/{created['sys_id']}"
    me = env.emu.find("sys_user", f"user_name={USER}")[0]["sys_id"]
    resolve = {"state": "6", "close_code": "Solution provided", "close_notes": "fixed"}
    resolved = (
        await env.call("PATCH", path, json=resolve, params={"sysparm_exclude_reference_link": "true"})
    ).body["result"]
    assert SNOW_TIME.match(resolved["resolved_at"]) and resolved["closed_at"] == ""
    assert (resolved["active"], resolved["incident_state"], resolved["resolved_by"]) == ("true", "6", me)

    env.clock.advance(60)
    closed = (await env.call("PATCH", path, json={"state": "7"})).body["result"]
    assert SNOW_TIME.match(closed["closed_at"]) and closed["resolved_at"] == resolved["resolved_at"]
    assert (closed["active"], closed["incident_state"]) == ("false", "7")

    # E.9: closed is read-only for an itil user; an admin may still reopen it
    refused = await env.call("PATCH", path, json={"state": "2"})
    assert (refused.status, refused.body["error"]["detail"]) == (
        403,
        "ACL Exception Update Failed due to security constraints",
    )
    env.emu.add_api_user("admin.user", "pw-admin", roles=("admin",))
    reopened = (await env.call("PATCH", path, json={"state": "2"}, auth=("admin.user", "pw-admin"))).body[
        "result"
    ]
    assert (reopened["resolved_at"], reopened["closed_at"], reopened["resolved_by"]) == ("", "", "")
    assert reopened["active"] == "true"

    canceled = (await env.call("PATCH", path, json={"state": "8"})).body["result"]
    assert (canceled["active"], canceled["closed_at"]) == ("false", "")
    note = await env.call("PATCH", path, json={"work_notes": "after the fact"})
    assert note.status == 403 and env.emu.journal(created["sys_id"]) == []  # cancelled: read-only too


async def test_e9_resolved_incidents_close_themselves_after_a_day(env: Env) -> None:
    created = env.incident()
    path = f"/api/now/table/incident/{created['sys_id']}"
    resolve = {"state": "6", "close_code": "Solution provided", "close_notes": "fixed"}
    assert (await env.call("PATCH", path, json=resolve)).status == 200
    env.clock.advance(86400 - 60)
    assert (await env.call("GET", path)).body["result"]["state"] == "6"  # not yet: still writable
    assert (await env.call("PATCH", path, json={"work_notes": "one more thing"})).status == 200
    env.clock.advance(120)
    closed = (await env.call("GET", path)).body["result"]
    assert (closed["state"], closed["active"], closed["sys_updated_by"]) == ("7", "false", "system")
    assert SNOW_TIME.match(closed["closed_at"])
    refused = await env.call("PATCH", path, json={"state": "2"})
    assert refused.status == 403 and env.emu.record("incident", created["sys_id"])["state"] == "7"


async def test_e5_security_incidents_have_their_own_states_numbers_and_close_codes(env: Env) -> None:
    created = await env.call("POST", "/api/now/table/sn_si_incident", json={"short_description": "phish"})
    assert created.status == 201
    sir = created.body["result"]
    assert re.fullmatch(r"SIR\d{7}", sir["number"]) and (sir["state"], sir["active"]) == ("10", "true")
    choices = await env.call(
        "GET",
        "/api/now/table/sys_choice",
        params={
            "sysparm_query": "name=sn_si_incident^element=state^ORDERBYsequence",
            "sysparm_fields": "value,label",
        },
    )
    assert [(c["value"], c["label"]) for c in choices.body["result"]] == [
        ("10", "Draft"),
        ("16", "Analysis"),
        ("18", "Contain"),
        ("19", "Eradicate"),
        ("20", "Recover"),
        ("100", "Review"),
        ("3", "Closed"),
        ("7", "Cancelled"),
    ]
    codes = await env.call(
        "GET",
        "/api/now/table/sys_choice",
        params={"sysparm_query": "name=sn_si_incident^element=close_code", "sysparm_fields": "value"},
    )
    assert {"False positive", "Threat mitigated", "Investigation completed"} <= {
        c["value"] for c in codes.body["result"]
    }
    path = f"/api/now/table/sn_si_incident/{sir['sys_id']}"
    # the data policy on Closed (3) wants the close code and notes in the same write
    refused = await env.call("PATCH", path, json={"state": "3"})
    assert refused.status == 403
    assert refused.body["error"]["detail"].endswith(
        "The following fields are mandatory: Close code, Close notes"
    )
    closing = {"state": "3", "close_code": "False positive", "close_notes": "benign"}
    closed = (await env.call("PATCH", path, json=closing)).body["result"]
    assert (closed["state"], closed["active"]) == ("3", "false") and SNOW_TIME.match(closed["closed_at"])
    assert (await env.call("PATCH", path, json={"state": "16"})).status == 403  # closed: read-only (E.9)
    # a security incident's journal is its own
    other = await env.call("POST", "/api/now/table/sn_si_incident", json={"work_notes": "first look"})
    [row] = env.emu.journal(other.body["result"]["sys_id"])
    assert row["name"] == "sn_si_incident"


async def test_mod_count_and_updated_fields(env: Env) -> None:
    env.emu.add_api_user("other.user", "pw-other")
    created = env.incident()
    path = f"/api/now/table/incident/{created['sys_id']}"
    env.clock.advance(5)
    one = (await env.call("PATCH", path, json={"short_description": "v1"})).body["result"]
    assert (one["sys_mod_count"], one["sys_updated_by"]) == ("1", USER)
    assert one["sys_created_by"] == "admin" and one["sys_updated_on"] > created["sys_updated_on"]
    two = (
        await env.call("PATCH", path, json={"short_description": "v2"}, auth=("other.user", "pw-other"))
    ).body["result"]
    assert (two["sys_mod_count"], two["sys_updated_by"]) == ("2", "other.user")


async def test_journal_writes_append_rows(env: Env) -> None:
    created = env.incident()
    path = f"/api/now/table/incident/{created['sys_id']}"
    env.clock.advance(5)
    reply = await env.call("PATCH", path, json={"work_notes": "first", "comments": "hello customer"})
    assert reply.body["result"]["sys_mod_count"] == "1"
    env.clock.advance(2)  # sys_created_on has one-second resolution
    reply = await env.call("PATCH", path, json={"work_notes": "second"})
    assert reply.body["result"]["sys_mod_count"] == "2"
    rows = env.emu.journal(created["sys_id"])
    assert [(r["element"], r["value"]) for r in rows] == [
        ("work_notes", "first"),
        ("comments", "hello customer"),
        ("work_notes", "second"),
    ]
    for r in rows:
        assert set(r) == {
            "sys_id",
            "element",
            "element_id",
            "name",
            "value",
            "sys_created_on",
            "sys_created_by",
        }
        assert (r["element_id"], r["name"], r["sys_created_by"]) == (created["sys_id"], "incident", USER)
        assert SYS_ID.match(r["sys_id"]) and SNOW_TIME.match(r["sys_created_on"])
    assert [r["value"] for r in env.emu.journal(created["sys_id"], "work_notes")] == ["first", "second"]
    # readable over the documented history query (C.9)
    query = f"element_id={created['sys_id']}^element=work_notes^ORDERBYDESCsys_created_on"
    listed = await env.call("GET", "/api/now/table/sys_journal_field", params={"sysparm_query": query})
    assert [r["value"] for r in listed.body["result"]] == ["second", "first"]
    posted = await env.call(
        "POST", "/api/now/table/incident", json={"short_description": "x", "work_notes": "at birth"}
    )
    assert [r["value"] for r in env.emu.journal(posted.body["result"]["sys_id"])] == ["at birth"]


async def test_noop_patch_changes_nothing(env: Env) -> None:
    created = env.incident(short_description="same", impact="2")
    path = f"/api/now/table/incident/{created['sys_id']}"
    env.clock.advance(30)
    reply = await env.call("PATCH", path, json={"short_description": "same", "impact": "2", "work_notes": ""})
    result = reply.body["result"]
    assert (result["sys_mod_count"], result["sys_updated_on"]) == ("0", created["sys_updated_on"])
    assert env.emu.record("incident", created["sys_id"]) == created
    assert env.emu.journal(created["sys_id"]) == []


async def test_unknown_and_read_only_fields_are_ignored(env: Env) -> None:
    created = env.incident()
    path = f"/api/now/table/incident/{created['sys_id']}"
    sent = {
        "u_made_up": "x",
        "sys_id": "f" * 32,
        "number": "INC0000001",
        "sys_mod_count": "99",
        "sys_created_by": "mallory",
        "sys_updated_on": "2000-01-01 00:00:00",
        "active": "false",
    }
    reply = await env.call("PATCH", path, json=sent)
    assert reply.status == 200
    assert env.emu.record("incident", created["sys_id"]) == created
    assert "u_made_up" not in reply.body["result"]
    posted = await env.call(
        "POST", "/api/now/table/incident", json={"number": "INC0000001", "sys_id": "f" * 32}
    )
    assert posted.body["result"]["number"] != "INC0000001" and posted.body["result"]["sys_id"] != "f" * 32
    # every field the instance dropped is on record, for tests to assert on (C.2)
    assert env.emu.ignored_fields == [f"incident.{name}" for name in sent] + [
        "incident.number",
        "incident.sys_id",
    ]


async def test_c3_conditions_on_missing_fields_widen_the_query_and_are_recorded(env: Env) -> None:
    mine = env.incident(correlation_id="abc")
    other = env.incident()
    reply = await env.call(
        "GET", "/api/now/table/incident", params={"sysparm_query": "u_sentinel_ref=abc^ORDERBYu_made_up"}
    )
    # the condition is dropped: every incident matches (C.3: invalid parts are ignored)
    assert {r["sys_id"] for r in reply.body["result"]} == {mine["sys_id"], other["sys_id"]}
    assert env.emu.dropped_terms == ["incident: u_sentinel_ref=abc", "incident: ORDERBYu_made_up"]
    narrowed = await env.call(
        "GET", "/api/now/table/incident", params={"sysparm_query": "correlation_id=abc"}
    )
    assert [r["sys_id"] for r in narrowed.body["result"]] == [mine["sys_id"]]
    assert len(env.emu.dropped_terms) == 2  # nothing more was dropped


async def test_input_display_value(env: Env) -> None:
    caller = env.emu.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    created = env.incident()
    reply = await env.call(
        "PATCH",
        f"/api/now/table/incident/{created['sys_id']}",
        json={"state": "In Progress", "caller_id": "Abel Tuter"},
        params={"sysparm_input_display_value": "true"},
    )
    assert reply.body["result"]["state"] == "2"
    assert reply.body["result"]["caller_id"]["value"] == caller


# --- close data policy (C.8) ----------------------------------------------------------------


async def test_close_data_policy_rejects_and_stores_nothing(env: Env) -> None:
    created = env.incident()
    path = f"/api/now/table/incident/{created['sys_id']}"
    for state in ("6", "7"):
        reply = await env.call("PATCH", path, json={"state": state, "work_notes": "closing"})
        assert (reply.status, reply.body) == (403, DATA_POLICY)
    only_code = await env.call("PATCH", path, json={"state": "6", "close_code": "Duplicate"})
    assert only_code.status == 403
    assert (
        only_code.body["error"]["detail"]
        == "Data Policy Exception: \n\tThe following fields are mandatory: Close notes"
    )
    assert env.emu.record("incident", created["sys_id"]) == created
    assert env.emu.journal(created["sys_id"]) == []
    post = await env.call("POST", "/api/now/table/incident", json={"short_description": "x", "state": "6"})
    assert (post.status, post.body) == (403, DATA_POLICY)
    assert len(env.emu.tables["incident"]) == 1
    after = await env.call("POST", "/api/now/table/incident", json={"short_description": "y"})
    assert after.body["result"]["number"] == "INC0010002"  # the rejected insert used no number
    ok = await env.call(
        "PATCH", path, json={"state": "6", "close_code": "Duplicate", "close_notes": "dup of INC1"}
    )
    assert ok.status == 200 and ok.body["result"]["state"] == "6"
    # later writes to a resolved record still need the fields filled in
    cleared = await env.call("PATCH", path, json={"close_notes": ""})
    assert cleared.status == 403


async def test_close_data_policy_can_be_switched_off(lax_env: Env) -> None:
    created = lax_env.incident()
    reply = await lax_env.call("PATCH", f"/api/now/table/incident/{created['sys_id']}", json={"state": "7"})
    assert reply.status == 200
    assert (reply.body["result"]["state"], reply.body["result"]["close_code"]) == ("7", "")


# --- faults and rate limits (C.5, C.6) ------------------------------------------------------


async def test_injected_faults_use_servicenow_bodies(env: Env) -> None:
    env.emu.faults.once("table.list", 429)
    env.emu.faults.once("table.list", 500)
    env.emu.faults.once("table.list", 503)
    throttled = await env.call("GET", "/api/now/table/incident")
    assert throttled.status == 429 and throttled.headers["Retry-After"] == "1"
    assert throttled.body == {
        "error": {
            "message": "Rate limit exceeded",
            "detail": "Rate limit of 100 requests per hour for Table API exceeded",
        },
        "status": "failure",
    }
    for status in (500, 503):
        reply = await env.call("GET", "/api/now/table/incident")
        assert reply.status == status
        assert set(reply.body) == {"error", "status"} and reply.body["status"] == "failure"
        assert set(reply.body["error"]) == {"message", "detail"}
    assert (await env.call("GET", "/api/now/table/incident")).status == 200
    assert env.emu.recorder.count(system="servicenow", route="table.list") == 4
    assert env.emu.faults.injected == {"429": 1, "500": 1, "503": 1}


async def test_per_user_hourly_rate_limit(env: Env) -> None:
    rule = env.emu.set_rate_limit(USER, 3)
    for _ in range(3):
        reply = await env.call("GET", "/api/now/table/incident")
        assert reply.status == 200
        assert reply.headers["X-RateLimit-Limit"] == "3" and reply.headers["X-RateLimit-Rule"] == rule
        assert "X-RateLimit-Remaining" not in reply.headers
    reset = int(reply.headers["X-RateLimit-Reset"])
    assert 0 < reset - env.clock.time() <= 3600
    denied = await env.call("GET", "/api/now/table/incident")
    assert denied.status == 429
    assert denied.body["error"]["detail"] == "Rate limit of 3 requests per hour for Table API exceeded"
    assert 0 < int(denied.headers["Retry-After"]) <= 3600
    assert denied.headers["X-RateLimit-Reset"] == str(reset)
    env.emu.add_api_user("unlimited", "pw-unlimited")
    free = await env.call("GET", "/api/now/table/incident", auth=("unlimited", "pw-unlimited"))
    assert free.status == 200 and "X-RateLimit-Limit" not in free.headers
    env.clock.advance(reset - env.clock.time() + 1)
    assert (await env.call("GET", "/api/now/table/incident")).status == 200


async def test_the_date_header_is_the_instances_clock(env: Env) -> None:
    # Every HTTP answer carries the server's own time (RFC 9110 section 6.6.1); a client reads
    # X-RateLimit-Reset (C.6, an epoch on that clock) against it.
    env.clock.advance(7200)
    for reply in (
        await env.call("GET", "/api/now/table/incident"),
        await env.call("GET", "/api/now/table/no_such_table"),
    ):
        date = parsedate_to_datetime(reply.headers["Date"]).timestamp()
        assert abs(date - env.clock.time()) <= 2


# --- direct access --------------------------------------------------------------------------


async def test_direct_helpers_share_http_semantics(env: Env) -> None:
    created = env.emu.insert("incident", {"short_description": "direct", "work_notes": "n1", "bogus": "x"})
    assert created["number"] == "INC0010001" and created["sys_created_by"] == "admin"
    assert "bogus" not in created and created["work_notes"] == ""
    assert [r["value"] for r in env.emu.journal(created["sys_id"])] == ["n1"]
    # the analyst path skips the data policy but keeps the business rules
    updated = env.emu.analyst_update("incident", created["sys_id"], {"state": "7"}, by="beth")
    assert (updated["sys_mod_count"], updated["sys_updated_by"], updated["active"]) == ("1", "beth", "false")
    assert updated["closed_at"] != "" and updated["resolved_at"] != ""
    same = env.emu.analyst_update("incident", created["sys_id"], {"state": "7"})
    assert same == updated
    assert env.emu.find("incident", "active=false^short_descriptionLIKEdir") == [updated]
    assert env.emu.find("incident", "active=true") == []
    env.emu.delete("incident", created["sys_id"])
    with pytest.raises(KeyError, match="no incident record"):
        env.emu.record("incident", created["sys_id"])
    reply = await env.call("GET", f"/api/now/table/incident/{created['sys_id']}")
    assert reply.status == 404


async def test_add_user_group_and_api_user_rows(env: Env) -> None:
    uid = env.emu.add_user("abel.tuter", "abel.tuter@example.com", "Abel Tuter")
    gid = env.emu.add_group("Security Operations")
    assert env.emu.record("sys_user", uid)["email"] == "abel.tuter@example.com"
    assert env.emu.record("sys_user_group", gid)["name"] == "Security Operations"
    api = env.emu.find("sys_user", f"user_name={USER}")
    assert len(api) == 1 and SYS_ID.match(api[0]["sys_id"])
    reply = await env.call("GET", "/api/now/table/sys_user_group", params={"name": "Security Operations"})
    assert [g["sys_id"] for g in reply.body["result"]] == [gid]
