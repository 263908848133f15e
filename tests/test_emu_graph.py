"""The Graph security emulator over real TLS: every trap of GRAPH.md section I, named after its evidence.

Each test talks HTTP to a server on 127.0.0.1; ``GraphHarness`` is reused by the metadata
checks in ``test_emu_graph_metadata.py``.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson
import pytest

from agent.testing.emulators.common import Clock, EmulatorServer, TLSMaterial, TokenRegistry
from agent.testing.emulators.entra import EntraEmulator
from agent.testing.emulators.graph import PROFILES, GraphEmulator, GraphOptions
from agent.testing.emulators.graph_tenant import (
    AUTO_RESOLVE_COMMENT,
    SYSTEM_CORRELATION,
    DefenderTenant,
    MergeRefused,
    graph_time,
    ip_evidence,
)
from agent.testing.emulators.odata import parse_instant

TENANT = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
OTHER_TENANT = "0d9e8f7a-6b5c-4d3e-2f1a-0b9c8d7e6f5a"
CLIENT_ID = "2b7e9c4d-1a3f-4e5b-8c6d-7e8f9a0b1c2d"
OTHER_APP = "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"
GRAPH = "https://graph.microsoft.com/.default"
RW = "SecurityIncident.ReadWrite.All"
APP_NAME = "SOC Sync"
INCIDENTS = "/v1.0/security/incidents"


class FrozenClock(Clock):
    """Time moves only when a test advances it (buckets and expiry become exact)."""

    def time(self) -> float:
        return 1_780_000_000.0 + self.offset


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


class GraphHarness:
    """Clock, tokens, one Defender tenant and a TLS server with a client session."""

    def __init__(self, tls: TLSMaterial, *, profile: str = "global", **options: Any) -> None:
        self.clock = FrozenClock()
        self.tokens = TokenRegistry(self.clock)
        self.emu = GraphEmulator(
            tokens=self.tokens, clock=self.clock, profile=profile, options=GraphOptions(**options), seed=3
        )
        self.emu.set_app_name(CLIENT_ID, APP_NAME)
        self.t: DefenderTenant = self.emu.tenant(TENANT)
        self.token = self.issue()
        self.server = EmulatorServer(self.emu.app, tls)
        self.tls = tls
        self.base = ""
        self.session: aiohttp.ClientSession | None = None

    def issue(
        self,
        roles: tuple[str, ...] = (RW,),
        *,
        audience: str = GRAPH,
        client_id: str = CLIENT_ID,
        tenant: str = TENANT,
        lifetime: float = 3599,
    ) -> str:
        return self.tokens.issue(audience, tenant, client_id, lifetime, roles=roles).token

    async def __aenter__(self) -> GraphHarness:
        self.base = await self.server.start()
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.tls.client_context()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        await self.server.stop()

    async def call(
        self,
        method: str,
        path_or_url: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        token: str | None = "default",
        headers: dict[str, str] | None = None,
        prefer: bool = True,
    ) -> Reply:
        assert self.session is not None
        url = path_or_url if path_or_url.startswith("https://") else self.base + path_or_url
        sent = dict(headers or {})
        if prefer:
            sent.setdefault("Prefer", "include-unknown-enum-members")
        if token is not None:
            sent["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        async with self.session.request(method, url, params=params, json=json, headers=sent) as r:
            raw = await r.read()
            return Reply(r.status, dict(r.headers), orjson.loads(raw) if raw else None)

    async def list_all(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], list[str]]:
        """Follow ``@odata.nextLink`` verbatim; all items and the links followed."""
        reply = await self.call("GET", INCIDENTS, params=params)
        assert reply.status == 200, reply.body
        items, links = list(reply.body["value"]), []
        while "@odata.nextLink" in reply.body:
            links.append(reply.body["@odata.nextLink"])
            reply = await self.call("GET", reply.body["@odata.nextLink"])
            assert reply.status == 200, reply.body
            items += reply.body["value"]
        return items, links


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSMaterial]:
    yield TLSMaterial(tmp_path_factory.mktemp("graph-tls"))


@pytest.fixture
async def h(tls: TLSMaterial) -> AsyncIterator[GraphHarness]:
    async with GraphHarness(tls) as harness:
        yield harness


def error(reply: Reply) -> tuple[int, str, str]:
    return reply.status, reply.body["error"]["code"], reply.body["error"]["message"]


def claims(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))))


# --- A: authentication, permissions, clouds -----------------------------------------------------


async def test_a1_entra_puts_granted_graph_roles_in_the_token_and_none_without_consent() -> None:
    clock = FrozenClock()
    tokens = TokenRegistry(clock)
    entra = EntraEmulator(clock=clock, tokens=tokens)
    entra.add_app(TENANT, CLIENT_ID, secret="s3cret")
    entra.add_app(TENANT, OTHER_APP, secret="s3cret")
    entra.grant_roles(CLIENT_ID, "https://graph.microsoft.com", RW, "SecurityAlert.Read.All")
    tls = TLSMaterial()
    server = EmulatorServer(entra.app, tls)
    base = await server.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context())) as s:
            got = {}
            for client in (CLIENT_ID, OTHER_APP):
                form = {"grant_type": "client_credentials", "client_id": client, "client_secret": "s3cret",
                        "scope": GRAPH}  # fmt: skip
                async with s.post(f"{base}/{TENANT}/oauth2/v2.0/token", data=form) as r:
                    assert r.status == 200
                    got[client] = (await r.json())["access_token"]
            arm = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "s3cret",
                   "scope": "https://management.azure.com/.default"}  # fmt: skip
            async with s.post(f"{base}/{TENANT}/oauth2/v2.0/token", data=arm) as r:
                arm_token = (await r.json())["access_token"]
    finally:
        await server.stop()
    assert claims(got[CLIENT_ID])["roles"] == [RW, "SecurityAlert.Read.All"]
    assert "scp" not in claims(got[CLIENT_ID])  # app-only tokens carry no scp (A.1)
    assert "roles" not in claims(got[OTHER_APP])  # no consented permission: no claim at all
    assert "roles" not in claims(arm_token)  # the grant is per resource
    assert tokens.check(got[CLIENT_ID], "https://graph.microsoft.com")[0].roles == (
        RW,
        "SecurityAlert.Read.All",
    )  # type: ignore[union-attr]


async def test_a2_missing_role_is_403_with_the_verbatim_text(h: GraphHarness) -> None:
    h.t.create_incident()
    token = h.issue(("Group.ReadWrite.All", "Group.Read.All"))
    reply = await h.call("GET", INCIDENTS, token=token)
    assert error(reply) == (
        403,
        "Forbidden",
        "Missing application roles. API required roles: "
        "SecurityIncident.Read.All,SecurityIncident.ReadWrite.All,"
        " application roles: Group.ReadWrite.All,Group.Read.All.",
    )
    assert set(reply.body["error"]["innerError"]) == {"date", "request-id", "client-request-id"}
    none = await h.call("GET", INCIDENTS, token=h.issue(()))
    assert none.body["error"]["message"].endswith("application roles: .")


async def test_a2_read_role_cannot_write_and_write_role_reads(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    reader = h.issue(("SecurityIncident.Read.All",))
    assert (await h.call("GET", f"{INCIDENTS}/{inc['id']}", token=reader)).status == 200
    patch = await h.call("PATCH", f"{INCIDENTS}/{inc['id']}", json={"severity": "high"}, token=reader)
    assert error(patch)[:2] == (403, "Forbidden")
    assert "API required roles: SecurityIncident.ReadWrite.All," in patch.body["error"]["message"]
    post = await h.call("POST", f"{INCIDENTS}/{inc['id']}/comments", json={"comment": "x"}, token=reader)
    assert post.status == 403


async def test_a2_alerts_accept_an_incident_permission(h: GraphHarness) -> None:
    h.t.create_incident()
    reply = await h.call("GET", "/v1.0/security/alerts_v2", token=h.issue(("SecurityIncident.Read.All",)))
    assert reply.status == 200 and len(reply.body["value"]) == 1
    denied = await h.call("GET", "/v1.0/security/alerts_v2", token=h.issue(("User.Read.All",)))
    assert denied.body["error"]["message"].startswith(
        "Missing application roles. API required roles: SecurityAlert.Read.All,SecurityAlert.ReadWrite.All,"
        "SecurityIncident.Read.All,SecurityIncident.ReadWrite.All, application roles: User.Read.All"
    )


async def test_a2_merge_needs_security_data_manage_all(h: GraphHarness) -> None:
    a, b = h.t.create_incident(), h.t.create_incident()
    body = {"incidentIds": [a["id"], b["id"]]}
    denied = await h.call("POST", f"{INCIDENTS}/mergeIncidents", json=body)
    assert error(denied)[0] == 403 and "SecurityData.Manage.All" in error(denied)[2]
    merged = await h.call(
        "POST", f"{INCIDENTS}/mergeIncidents", json=body, token=h.issue(("SecurityData.Manage.All",))
    )
    assert merged.status == 200 and merged.body["targetIncidentId"] in (a["id"], b["id"])


@pytest.mark.parametrize(
    ("audience", "why"),
    [
        ("https://graph.microsoft.us/.default", "GCC High Graph host (A.3)"),
        ("https://dod-graph.microsoft.us/.default", "DoD Graph host (A.3)"),
        ("https://management.azure.com/.default", "an ARM token (A.1)"),
    ],
)
async def test_a3_foreign_cloud_or_arm_token_is_401_invalid_audience(
    h: GraphHarness, audience: str, why: str
) -> None:
    reply = await h.call("GET", INCIDENTS, token=h.issue(audience=audience))
    assert error(reply) == (
        401,
        "InvalidAuthenticationToken",
        "Access token validation failure. Invalid audience.",
    ), why
    assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
    assert "https://login.microsoftonline.com" in reply.headers["WWW-Authenticate"]


async def test_d5_expired_missing_and_unknown_tokens_are_401_with_a_challenge(h: GraphHarness) -> None:
    expired = h.issue(lifetime=60)
    h.clock.advance(61)
    cases = {
        expired: "Access token has expired or is not yet valid.",
        None: "Access token is empty.",
        "not-a-token": "Access token validation failure.",
    }
    for token, message in cases.items():
        reply = await h.call("GET", INCIDENTS, token=token)
        assert error(reply) == (401, "InvalidAuthenticationToken", message)
        assert "WWW-Authenticate" in reply.headers


@pytest.mark.parametrize(
    ("profile", "graph_host", "login_host", "portal_host"),
    [
        (
            "gcc-high",
            "https://graph.microsoft.us",
            "https://login.microsoftonline.us",
            "security.microsoft.us",
        ),
        ("dod", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us", "security.apps.mil"),
    ],
)
async def test_a3_cloud_profiles_change_audience_login_and_portal_hosts(
    tls: TLSMaterial, profile: str, graph_host: str, login_host: str, portal_host: str
) -> None:
    async with GraphHarness(tls, profile=profile) as h:
        inc = h.t.create_incident()
        assert inc["incidentWebUrl"] == f"https://{portal_host}/incident2/{inc['id']}/overview?tid={TENANT}"
        ok = await h.call("GET", INCIDENTS, token=h.issue(audience=f"{graph_host}/.default"))
        assert ok.status == 200
        assert ok.body["@odata.context"] == f"{graph_host}/v1.0/$metadata#security/incidents"
        public = await h.call("GET", INCIDENTS, token=h.issue(audience=GRAPH))
        assert error(public)[:2] == (401, "InvalidAuthenticationToken")
        assert login_host in public.headers["WWW-Authenticate"]


async def test_a3_china_has_no_incidents_or_alerts_api(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, profile="china") as h:
        token = h.issue(audience=f"{PROFILES['china'].graph_host}/.default")
        for path in (INCIDENTS, "/v1.0/security/alerts_v2"):
            reply = await h.call("GET", path, token=token)
            segment = path.rsplit("/", 1)[-1]
            assert error(reply) == (400, "BadRequest", f"Resource not found for the segment '{segment}'.")
        h.emu.options.absent_api_status = 404
        assert (await h.call("GET", INCIDENTS, token=token)).status == 404


# --- B: the incident resource --------------------------------------------------------------------


async def test_b1_incident_has_all_20_properties_nulls_kept_string_ids(h: GraphHarness) -> None:
    inc = h.t.create_incident(display_name="Phish", priority_score=None)
    body = (await h.call("GET", f"{INCIDENTS}/{inc['id']}")).body
    assert body["@odata.context"] == "https://graph.microsoft.com/v1.0/$metadata#security/incidents/$entity"
    props = {k for k in body if not k.startswith("@")}
    assert len(props) == 20 and {"id", "priorityScore", "summary", "resolvingComment", "systemTags"} <= props
    assert isinstance(body["id"], str) and body["id"].isdigit()
    for key in (
        "description",
        "summary",
        "resolvingComment",
        "assignedTo",
        "redirectIncidentId",
        "priorityScore",
    ):
        assert key in body and body[key] is None
    assert body["customTags"] == [] and body["systemTags"] == [] and body["comments"] == []
    assert body["lastModifiedBy"] == "Microsoft 365 Defender-IncidentCreation"
    assert "@odata.etag" not in body  # D.4


async def test_b1_profile_drops_the_newer_properties(tls: TLSMaterial) -> None:
    newer = frozenset(
        {"description", "lastModifiedBy", "systemTags", "resolvingComment", "summary", "priorityScore"}
    )
    async with GraphHarness(tls, drop_properties=newer) as h:
        inc = h.t.create_incident()
        body = (await h.call("GET", f"{INCIDENTS}/{inc['id']}")).body
        assert not newer & set(body) and len([k for k in body if not k.startswith("@")]) == 14


async def test_b2_unknown_enum_without_prefer_header(h: GraphHarness) -> None:
    inc = h.t.create_incident(
        alerts=[
            {"service_source": "microsoftSentinel", "detection_source": "scheduledAlerts",
             "evidence": [ip_evidence(h.t.now(), "198.51.100.7", remediation="pendingApproval")]},
        ]
    )  # fmt: skip
    h.t.set_awaiting_action(inc["id"])
    path = f"{INCIDENTS}/{inc['id']}"
    plain = (await h.call("GET", path, params={"$expand": "alerts"}, prefer=False)).body
    assert plain["status"] == "unknownFutureValue"
    alert = plain["alerts"][0]
    assert (alert["serviceSource"], alert["detectionSource"]) == ("unknownFutureValue", "unknownFutureValue")
    assert alert["evidence"][0]["remediationStatus"] == "unknownFutureValue"
    full = (await h.call("GET", path, params={"$expand": "alerts"})).body
    assert full["status"] == "awaitingAction"
    alert = full["alerts"][0]
    assert (alert["serviceSource"], alert["detectionSource"]) == ("microsoftSentinel", "scheduledAlerts")
    assert alert["evidence"][0]["remediationStatus"] == "pendingApproval"
    # Early members are never hidden.
    assert (await h.call("GET", f"{INCIDENTS}", prefer=False)).body["value"][0]["severity"] == "medium"


async def test_b2_enum_input_is_case_insensitive_and_output_camel_case(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    reply = await h.call(
        "PATCH",
        f"{INCIDENTS}/{inc['id']}",
        json={"classification": "TruePositive", "determination": "MultiStagedAttack", "severity": "HIGH"},
    )
    assert reply.status == 200
    assert (reply.body["classification"], reply.body["determination"], reply.body["severity"]) == (
        "truePositive", "multiStagedAttack", "high",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("determination", "compromisedUser"),
        ("determination", "clean"),
        ("determination", "insufficientData"),
        ("determination", "confirmedUserActivity"),
        ("classification", "benignPositive"),
        ("classification", "NotAvailable"),
    ],
)
async def test_b2_docs_only_and_legacy_names_are_invalid_request_body(
    h: GraphHarness, field: str, value: str
) -> None:
    inc = h.t.create_incident()
    body = {field: value} | ({"classification": "truePositive"} if field == "determination" else {})
    reply = await h.call("PATCH", f"{INCIDENTS}/{inc['id']}", json=body)
    assert error(reply) == (400, "InvalidRequestBody", "Request body is incorrect")


async def test_b2_profile_aliases_docs_only_names(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, docs_only_names="alias") as h:
        inc = h.t.create_incident()
        body = {"classification": "falsePositive", "determination": "clean"}
        reply = await h.call("PATCH", f"{INCIDENTS}/{inc['id']}", json=body)
        assert reply.status == 200 and reply.body["determination"] == "notMalicious"


async def test_b3_cross_pairs_rejected_strict_accepted_lenient(tls: TLSMaterial) -> None:
    for mode, status in (("strict", 400), ("lenient", 200)):
        async with GraphHarness(tls, pair_validation=mode) as h:
            inc = h.t.create_incident()
            cross = {"classification": "falsePositive", "determination": "malware"}
            assert (await h.call("PATCH", f"{INCIDENTS}/{inc['id']}", json=cross)).status == status
    async with GraphHarness(tls) as h:
        inc = h.t.create_incident()
        path = f"{INCIDENTS}/{inc['id']}"
        ok = await h.call("PATCH", path, json={"classification": "truePositive", "determination": "phishing"})
        assert ok.status == 200
        # Changing only the classification keeps the stored determination: now a cross pair.
        only = await h.call("PATCH", path, json={"classification": "informationalExpectedActivity"})
        assert error(only)[:2] == (400, "InvalidRequestBody")
        # Determination unknown goes with any classification (stored data has truePositive + unknown).
        assert (await h.call("PATCH", path, json={"determination": "unknown"})).status == 200


async def test_b5_timestamps_utc_z_with_trimmed_fraction_up_to_7_digits(h: GraphHarness) -> None:
    assert graph_time(17_800_000_000_000_000) == "2026-05-28T20:26:40Z"
    assert graph_time(17_800_000_000_000_001) == "2026-05-28T20:26:40.0000001Z"
    assert graph_time(17_800_000_001_000_000) == "2026-05-28T20:26:40.1Z"
    for _ in range(20):
        h.t.create_incident()
    for inc in (await h.call("GET", INCIDENTS)).body["value"]:
        for key in ("createdDateTime", "lastUpdateDateTime"):
            stamp = inc[key]
            assert stamp.endswith("Z") and parse_instant(stamp) is not None
            fraction = stamp[20:-1] if "." in stamp else ""
            assert len(fraction) <= 7 and not fraction.endswith("0")


# --- C: listing -----------------------------------------------------------------------------------


async def test_c1_default_order_is_newest_first_and_count_works(h: GraphHarness) -> None:
    ids = []
    for _ in range(5):
        ids.append(h.t.create_incident()["id"])
        h.clock.advance(1)
    body = (await h.call("GET", INCIDENTS, params={"$count": "true"})).body
    assert [i["id"] for i in body["value"]] == ids[::-1]
    assert body["@odata.count"] == 5


async def test_c1_select_returns_only_the_named_properties(h: GraphHarness) -> None:
    h.t.create_incident()
    body = (await h.call("GET", INCIDENTS, params={"$select": "id,status"})).body
    assert body["@odata.context"].endswith("#security/incidents(id,status)")
    assert set(body["value"][0]) == {"id", "status"}
    bad = await h.call("GET", INCIDENTS, params={"$select": "title"})
    assert error(bad)[:2] == (400, "BadRequest") and "title" in error(bad)[2]


async def test_c2_filter_on_documented_properties(h: GraphHarness) -> None:
    a = h.t.create_incident(assigned_to="alice@contoso.example")
    h.clock.advance(10)
    stamp = graph_time(h.t.now())
    h.clock.advance(10)
    b = h.t.create_incident()
    h.t.analyst_update(a["id"], status="resolved")
    cases = {
        f"lastUpdateDateTime ge {stamp}": {a["id"], b["id"]},
        f"createdDateTime gt {stamp}": {b["id"]},
        "status eq 'resolved'": {a["id"]},
        "status ne 'redirected' and assignedTo eq null": {b["id"]},
        "(severity eq 'medium' or severity eq 'high') and not (status eq 'resolved')": {b["id"]},
        "assignedTo eq 'alice@contoso.example'": {a["id"]},
    }
    for expr, wanted in cases.items():
        reply = await h.call("GET", INCIDENTS, params={"$filter": expr})
        assert reply.status == 200, (expr, reply.body)
        assert {i["id"] for i in reply.body["value"]} == wanted, expr


@pytest.mark.parametrize(
    "expr",
    [
        "displayName eq 'x'",  # not documented as filterable (C.2)
        "customTags/any(t: t eq 'snow')",  # lambda: unverified, off by default
        "contains(assignedTo, 'alice')",  # functions are not in the grammar of C.2
        "status eq 'bogus'",  # not an enum member
        "lastUpdateDateTime ge '2026-01-01'",  # a timestamp is unquoted
        "lastUpdateDateTime ge 2026-01-01T00:00:00 00:00",  # a raw '+' in a URL is a space
    ],
)
async def test_c2_other_filters_are_invalid_filter_clause(h: GraphHarness, expr: str) -> None:
    reply = await h.call("GET", INCIDENTS, params={"$filter": expr})
    status, code, message = error(reply)
    assert (status, code) == (400, "BadRequest") and message.startswith("Invalid filter clause"), message


async def test_c2_profile_allows_the_custom_tag_lambda(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, allow_tag_filter=True) as h:
        tagged = h.t.create_incident(custom_tags=["snow"])
        h.t.create_incident(custom_tags=["other"])
        reply = await h.call("GET", INCIDENTS, params={"$filter": "customTags/any(t: t eq 'snow')"})
        assert [i["id"] for i in reply.body["value"]] == [tagged["id"]]


async def test_c2_offsets_in_literals_are_accepted_url_encoded(h: GraphHarness) -> None:
    h.t.create_incident()
    reply = await h.call(
        "GET", INCIDENTS, params={"$filter": "lastUpdateDateTime ge 2020-01-01T00:00:00+00:00"}
    )
    assert reply.status == 200 and len(reply.body["value"]) == 1


async def test_c3_top_over_50_is_400(h: GraphHarness) -> None:
    reply = await h.call("GET", INCIDENTS, params={"$top": "100"})
    assert reply.status == 400
    assert reply.body["error"]["code"] == ""
    assert reply.body["error"]["message"] == (
        "The query specified in the URI is not valid. The limit of '50' for Top query has been exceeded. "
        "The value from the incoming request is '100'."
    )
    assert reply.body["error"]["details"] == []
    assert (await h.call("GET", INCIDENTS, params={"$top": "50"})).status == 200


async def test_c3_default_page_is_50_and_next_link_runs_to_the_end(h: GraphHarness) -> None:
    for _ in range(120):
        h.t.create_incident()
    first = (await h.call("GET", INCIDENTS)).body
    assert len(first["value"]) == 50
    items, links = await h.list_all({})
    assert len(links) == 2 and len(items) == 120 and len({i["id"] for i in items}) == 120


async def test_c3_deep_skip_stalls_silently(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, skip_cap=100) as h:
        for _ in range(160):
            h.t.create_incident()
        items, links = await h.list_all({"$top": "50"})
        # Pages stop at $skip=100 although 160 match: a client that trusts the end loses 60.
        assert len(items) == 100 and links[-1].endswith("$skip=100")


async def test_c4_next_link_is_absolute_on_the_serving_host_and_keeps_the_query(h: GraphHarness) -> None:
    for _ in range(7):
        h.t.create_incident()
    query = {
        "$filter": "status eq 'active'",
        "$orderby": "lastUpdateDateTime asc",
        "$top": "3",
        "$count": "true",
    }
    body = (await h.call("GET", INCIDENTS, params=query)).body
    link = body["@odata.nextLink"]
    parts = urlsplit(link)
    assert f"{parts.scheme}://{parts.netloc}" == h.base and parts.path == INCIDENTS
    assert dict(parse_qsl(parts.query)) == query | {"$skip": "3"}
    items, _ = await h.list_all(query)
    stamps = [parse_instant(i["lastUpdateDateTime"]) for i in items]
    assert len(items) == 7 and stamps == sorted(stamps)  # type: ignore[type-var]


async def test_c4_profile_drops_the_query_from_next_link(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, next_link_keeps_query=False) as h:
        h.t.analyst_update(h.t.create_incident()["id"], status="resolved")  # the oldest: last page
        for _ in range(4):
            h.clock.advance(1)
            h.t.create_incident()
        body = (await h.call("GET", INCIDENTS, params={"$filter": "status eq 'active'", "$top": "2"})).body
        assert body["@odata.nextLink"].endswith(f"{INCIDENTS}?$skip=2")
        # Following it verbatim now lists without the filter.
        items, _ = await h.list_all({"$filter": "status eq 'active'", "$top": "2"})
        assert {i["status"] for i in items} == {"active", "resolved"}


async def test_c4_empty_page_is_allowed(h: GraphHarness) -> None:
    body = (await h.call("GET", INCIDENTS, params={"$filter": "status eq 'resolved'"})).body
    assert body["value"] == [] and "@odata.nextLink" not in body


async def test_c5_expand_alerts_on_list_and_get(h: GraphHarness) -> None:
    inc = h.t.create_incident(alerts=3)
    listed = (await h.call("GET", INCIDENTS, params={"$expand": "alerts"})).body
    assert listed["@odata.context"].endswith("#security/incidents(alerts())")
    assert len(listed["value"][0]["alerts"]) == 3
    one = (await h.call("GET", f"{INCIDENTS}/{inc['id']}", params={"$expand": "alerts"})).body
    assert one["@odata.context"].endswith("#security/incidents(alerts())/$entity")
    assert {a["incidentId"] for a in one["alerts"]} == {inc["id"]}
    assert "alerts" not in (await h.call("GET", f"{INCIDENTS}/{inc['id']}")).body
    bad = await h.call("GET", INCIDENTS, params={"$expand": "comments"})
    assert error(bad)[:2] == (400, "BadRequest")


async def test_c5_expand_on_a_page_with_many_alerts_is_500(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, expand_alert_limit=5) as h:
        for _ in range(3):
            inc = h.t.create_incident(alerts=2)
        reply = await h.call("GET", INCIDENTS, params={"$expand": "alerts", "$top": "25"})
        assert error(reply)[:2] == (500, "InternalServerError")
        assert (await h.call("GET", INCIDENTS)).status == 200  # without $expand it works
        assert (await h.call("GET", f"{INCIDENTS}/{inc['id']}", params={"$expand": "alerts"})).status == 200


# --- D: get, update ---------------------------------------------------------------------------------


async def test_d1_unknown_id_404_and_non_numeric_400(h: GraphHarness) -> None:
    assert error(await h.call("GET", f"{INCIDENTS}/99999999")) == (
        404,
        "NotFound",
        "Incident 99999999 not found",
    )
    assert error(await h.call("GET", f"{INCIDENTS}/abc"))[:2] == (400, "BadRequest")


async def test_d2_patch_answers_200_with_the_full_incident_and_bumps(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    h.clock.advance(5)
    reply = await h.call("PATCH", f"{INCIDENTS}/{inc['id']}", json={"assignedTo": "bob@contoso.example"})
    assert reply.status == 200 and reply.body["assignedTo"] == "bob@contoso.example"
    assert len([k for k in reply.body if not k.startswith("@")]) == 20
    assert reply.body["lastModifiedBy"] == f"API-App:{APP_NAME}"
    assert parse_instant(reply.body["lastUpdateDateTime"]) > parse_instant(inc["lastUpdateDateTime"])  # type: ignore[operator]


async def test_d2_read_only_and_unknown_properties_are_rejected(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    path = f"{INCIDENTS}/{inc['id']}"
    for prop in ("systemTags", "lastModifiedBy", "redirectIncidentId", "comments", "priorityScore"):
        reply = await h.call("PATCH", path, json={prop: None, "severity": "low"})
        assert error(reply)[:2] == (400, "BadRequest"), prop
    unknown = await h.call("PATCH", path, json={"title": "x"})
    assert "does not exist on type 'microsoft.graph.security.incident'" in error(unknown)[2]
    assert h.t.incident(inc["id"])["severity"] == "medium"  # nothing applied


async def test_d2_profile_ignores_read_only_properties(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, read_only_in_patch="ignore") as h:
        inc = h.t.create_incident()
        reply = await h.call(
            "PATCH", f"{INCIDENTS}/{inc['id']}", json={"systemTags": ["x"], "severity": "low"}
        )
        assert reply.status == 200 and reply.body["systemTags"] == [] and reply.body["severity"] == "low"


async def test_d2_custom_tags_are_replaced_and_empty_owner_is_null(h: GraphHarness) -> None:
    inc = h.t.create_incident(custom_tags=["Demo", "snow"], assigned_to="alice@contoso.example")
    path = f"{INCIDENTS}/{inc['id']}"
    reply = await h.call("PATCH", path, json={"customTags": ["INC0010001"], "assignedTo": ""})
    assert reply.body["customTags"] == ["INC0010001"] and reply.body["assignedTo"] is None


async def test_d2_noop_patch_bumps_unless_switched_off(tls: TLSMaterial) -> None:
    for bumps in (True, False):
        async with GraphHarness(tls, noop_patch_bumps=bumps) as h:
            inc = h.t.create_incident()
            h.clock.advance(1)
            reply = await h.call("PATCH", f"{INCIDENTS}/{inc['id']}", json={"severity": inc["severity"]})
            assert (reply.body["lastUpdateDateTime"] != inc["lastUpdateDateTime"]) is bumps


@pytest.mark.parametrize("status", ["redirected", "awaitingAction", "unknownFutureValue"])
async def test_d3_status_that_only_defender_sets_is_refused(h: GraphHarness, status: str) -> None:
    inc = h.t.create_incident()
    reply = await h.call("PATCH", f"{INCIDENTS}/{inc['id']}", json={"status": status})
    assert reply.status == 400 and h.t.incident(inc["id"])["status"] == "active"


async def test_d3_any_direction_between_active_in_progress_resolved(h: GraphHarness) -> None:
    inc = h.t.create_incident(alerts=2)
    path = f"{INCIDENTS}/{inc['id']}"
    for status in ("inProgress", "resolved", "active", "resolved", "inProgress"):
        reply = await h.call("PATCH", path, json={"status": status})
        assert reply.status == 200 and reply.body["status"] == status


async def test_d3_resolve_needs_no_classification_and_cascades_to_alerts(h: GraphHarness) -> None:
    inc = h.t.create_incident(alerts=2)
    path = f"{INCIDENTS}/{inc['id']}"
    reply = await h.call("PATCH", path, json={"status": "resolved", "resolvingComment": "done"})
    assert reply.status == 200 and reply.body["classification"] == "unknown"
    alerts = h.t.alerts_for(inc["id"])
    assert {a["status"] for a in alerts} == {"resolved"} and all(a["resolvedDateTime"] for a in alerts)
    # Reopen: allowed, the alerts stay resolved.
    assert (await h.call("PATCH", path, json={"status": "active"})).body["status"] == "active"
    assert {a["status"] for a in h.t.alerts_for(inc["id"])} == {"resolved"}


async def test_d4_no_etag_if_match_ignored(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    path = f"{INCIDENTS}/{inc['id']}"
    body = (await h.call("GET", path)).body
    assert "@odata.etag" not in body and "ETag" not in (await h.call("GET", path)).headers
    # Someone changes it; our stale If-Match is ignored: last writer wins, no 409/412.
    h.t.analyst_update(inc["id"], severity="high")
    reply = await h.call("PATCH", path, json={"severity": "low"}, headers={"If-Match": 'W/"stale"'})
    assert reply.status == 200 and reply.body["severity"] == "low"


async def test_d4_profile_enforces_a_synthetic_etag(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, if_match="enforce") as h:
        inc = h.t.create_incident()
        path = f"{INCIDENTS}/{inc['id']}"
        etag = (await h.call("GET", path)).body["@odata.etag"]
        h.t.analyst_update(inc["id"], severity="high")
        stale = await h.call("PATCH", path, json={"severity": "low"}, headers={"If-Match": etag})
        assert error(stale)[:2] == (412, "PreconditionFailed")
        assert (await h.call("PATCH", path, json={"severity": "low"})).status == 200  # no If-Match: fine


async def test_d5_every_response_has_graph_request_headers(h: GraphHarness) -> None:
    reply = await h.call("GET", INCIDENTS, headers={"client-request-id": "abc-123"})
    assert reply.headers["client-request-id"] == "abc-123"
    assert reply.headers["request-id"] and "ServerInfo" in reply.headers["x-ms-ags-diagnostic"]
    bad = await h.call("GET", INCIDENTS, params={"$top": "99"}, headers={"client-request-id": "abc-123"})
    inner = bad.body["error"]["innerError"]
    assert inner["client-request-id"] == "abc-123" and inner["request-id"] == bad.headers["request-id"]


async def test_d5_json_body_and_content_type_are_required(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    assert h.session is not None
    headers = {"Authorization": f"Bearer {h.token}"}
    url = f"{h.base}{INCIDENTS}/{inc['id']}"
    async with h.session.patch(url, data=b"{}", headers=headers | {"Content-Type": "text/plain"}) as r:
        assert r.status == 415
    async with h.session.patch(
        url, data=b"{oops", headers=headers | {"Content-Type": "application/json"}
    ) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "BadRequest"


# --- E: comments ---------------------------------------------------------------------------------------


async def test_e_comments_have_no_ids(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    h.t.analyst_comment(inc["id"], "first, by a person")
    h.clock.advance(1)
    reply = await h.call(
        "POST",
        f"{INCIDENTS}/{inc['id']}/comments",
        json={"@odata.type": "microsoft.graph.security.alertComment", "comment": "second"},
    )
    assert reply.status == 200  # not 201
    assert reply.body["@odata.context"] == (
        f"https://graph.microsoft.com/v1.0/$metadata#security/incidents('{inc['id']}')/comments"
    )
    comments = reply.body["value"]
    assert [c["comment"] for c in comments] == ["first, by a person", "second"]  # oldest first, all of them
    for comment in comments:
        assert set(comment) == {"comment", "createdByDisplayName", "createdDateTime"}
    assert comments[1]["createdByDisplayName"] == f"API-App:{APP_NAME}"
    assert reply.headers["OData-Version"] == "4.0"
    # No edit, no delete, no listing: the incident's comments property is the only read.
    for method in ("PATCH", "DELETE", "PUT"):
        assert (
            await h.call(method, f"{INCIDENTS}/{inc['id']}/comments", json={"comment": "x"})
        ).status == 405
    listing = await h.call("GET", f"{INCIDENTS}/{inc['id']}/comments")
    assert error(listing)[:2] == (405, "MethodNotAllowed")
    assert (await h.call("GET", f"{INCIDENTS}/{inc['id']}")).body["comments"] == comments


async def test_e_comment_without_odata_type_bumps_the_incident(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    h.clock.advance(3)
    reply = await h.call("POST", f"{INCIDENTS}/{inc['id']}/comments", json={"comment": "hello"})
    assert reply.status == 200
    after = h.t.incident(inc["id"])
    assert after["lastUpdateDateTime"] == reply.body["value"][-1]["createdDateTime"]
    assert after["lastModifiedBy"] == f"API-App:{APP_NAME}"


async def test_e_comment_limit_and_empty_comment(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    path = f"{INCIDENTS}/{inc['id']}/comments"
    assert (await h.call("POST", path, json={"comment": "x" * 30_000})).status == 200
    assert error(await h.call("POST", path, json={"comment": "x" * 30_001}))[:2] == (400, "BadRequest")
    assert (await h.call("POST", path, json={"comment": "  "})).status == 400
    assert (await h.call("POST", path, json={"comment": "x", "author": "me"})).status == 400


async def test_e_profile_echo_drops_the_api_app_prefix(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, comment_echo_drops_prefix=True) as h:
        inc = h.t.create_incident()
        path = f"{INCIDENTS}/{inc['id']}/comments"
        await h.call("POST", path, json={"comment": "one"})
        echo = (await h.call("POST", path, json={"comment": "two"})).body["value"]
        assert [c["createdByDisplayName"] for c in echo] == [f"API-App:{APP_NAME}", APP_NAME]
        stored = (await h.call("GET", f"{INCIDENTS}/{inc['id']}")).body["comments"]
        assert {c["createdByDisplayName"] for c in stored} == {f"API-App:{APP_NAME}"}


# --- B.6, H.3, D.6: Defender's engine ---------------------------------------------------------------------


async def test_b6_auto_resolve_when_the_last_alert_resolves(h: GraphHarness) -> None:
    inc = h.t.create_incident(alerts=2)
    first, last = (a["id"] for a in h.t.alerts_for(inc["id"]))
    h.t.resolve_alert(first)
    assert h.t.incident(inc["id"])["status"] == "active"
    h.clock.advance(1)
    h.t.resolve_alert(last)
    body = (await h.call("GET", f"{INCIDENTS}/{inc['id']}")).body
    assert body["status"] == "resolved"
    assert (body["classification"], body["determination"]) == ("unknown", "unknown")
    assert body["resolvingComment"] == AUTO_RESOLVE_COMMENT.format(id=last)
    assert body["lastUpdateDateTime"] != inc["lastUpdateDateTime"]


async def test_b6_alert_updates_and_severity_follow_the_incident(h: GraphHarness) -> None:
    inc = h.t.create_incident(alerts=[{"severity": "low"}])
    assert inc["severity"] == "low"
    h.clock.advance(1)
    h.t.add_alert(inc["id"], severity="high")
    after = h.t.incident(inc["id"])
    assert after["severity"] == "high" and after["lastUpdateDateTime"] != inc["lastUpdateDateTime"]
    alert = h.t.alerts_for(inc["id"])[0]
    h.clock.advance(1)
    reply = await h.call(
        "PATCH", f"/v1.0/security/alerts_v2/{alert['id']}", json={"status": "inProgress"},
        token=h.issue(("SecurityAlert.ReadWrite.All",)),
    )  # fmt: skip
    assert reply.status == 200 and reply.body["status"] == "inProgress"
    assert h.t.incident(inc["id"])["lastUpdateDateTime"] != after["lastUpdateDateTime"]


async def test_b6_correlation_never_reopens_a_resolved_incident(h: GraphHarness) -> None:
    inc = h.t.create_incident()
    h.t.analyst_update(inc["id"], status="resolved")
    with pytest.raises(ValueError, match="correlation makes a new one"):
        h.t.add_alert(inc["id"])


async def test_h3_merge_redirects_the_source_moves_alerts_and_tags(h: GraphHarness) -> None:
    source = h.t.create_incident(custom_tags=["snow", "INC0010001"], alerts=1)
    target = h.t.create_incident(display_name="My own name", custom_tags=["Demo"], alerts=2)
    h.t.analyst_comment(source["id"], "stays here")
    moved = h.t.alerts_for(source["id"])[0]["id"]
    h.t.merge([source["id"]], target["id"])
    src = (await h.call("GET", f"{INCIDENTS}/{source['id']}")).body  # still readable (H.3)
    assert (src["status"], src["redirectIncidentId"]) == ("redirected", target["id"])
    assert src["customTags"] == ["Redirected"] and src["lastModifiedBy"] == SYSTEM_CORRELATION
    assert [c["comment"] for c in src["comments"]] == ["stays here"]
    tgt = (await h.call("GET", f"{INCIDENTS}/{target['id']}", params={"$expand": "alerts"})).body
    assert tgt["customTags"] == ["Demo", "snow", "INC0010001"] and tgt["comments"] == []
    assert moved in {a["id"] for a in tgt["alerts"]} and len(tgt["alerts"]) == 3
    assert tgt["displayName"] != "My own name"  # renamed over a custom name
    listed = {i["id"]: i["status"] for i in (await h.call("GET", INCIDENTS)).body["value"]}
    assert listed[source["id"]] == "redirected"  # redirected incidents are still listed (C.6)


async def test_h3_redirected_tag_placement_is_configurable(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, redirected_tag_in="systemTags") as h:
        a, b = h.t.create_incident(custom_tags=["x"]), h.t.create_incident()
        token = h.issue(("SecurityData.Manage.All",))
        body = {"incidentIds": [a["id"], b["id"]], "mergeReasons": "sameCampaign, sameActor"}
        reply = await h.call("POST", f"{INCIDENTS}/mergeIncidents", json=body, token=token)
        target = reply.body["targetIncidentId"]
        source = b["id"] if target == a["id"] else a["id"]
        assert h.t.incident(source)["systemTags"] == ["Redirected"]


@pytest.mark.parametrize(
    ("source_props", "why"),
    [
        ({"status": "resolved"}, "closed"),
        ({"assignedTo": "bob@contoso.example"}, "different owners"),
        ({"classification": "truePositive", "determination": "malware"}, "different classifications"),
    ],
)
async def test_h3_merge_refused_when_defender_would_not_merge(
    h: GraphHarness, source_props: dict[str, Any], why: str
) -> None:
    source, target = h.t.create_incident(), h.t.create_incident()
    h.t.analyst_update(source["id"], **source_props)
    with pytest.raises(MergeRefused, match=why):
        h.t.merge([source["id"]], target["id"])
    reply = await h.call(
        "POST", f"{INCIDENTS}/mergeIncidents", json={"incidentIds": [source["id"], target["id"]]},
        token=h.issue(("SecurityData.Manage.All",)),
    )  # fmt: skip
    assert reply.status == 400, why


async def test_d6_alert_move_changes_incident_id_and_bumps_both(h: GraphHarness) -> None:
    a, b = h.t.create_incident(alerts=2), h.t.create_incident(alerts=1)
    alert = h.t.alerts_for(a["id"])[0]
    h.clock.advance(2)
    moved = h.t.move_alert(alert["id"], b["id"])
    assert moved["incidentId"] == b["id"]
    for before in (a, b):
        assert h.t.incident(before["id"])["lastUpdateDateTime"] != before["lastUpdateDateTime"]
    assert len(h.t.alerts_for(b["id"])) == 2


# --- G: throttling ----------------------------------------------------------------------------------------


async def test_g_throttling_150_per_minute_per_app_per_tenant(h: GraphHarness) -> None:
    h.t.create_incident()
    path = f"{INCIDENTS}/{h.t.create_incident()['id']}"
    statuses = [(await h.call("GET", path)).status for _ in range(150)]
    assert statuses == [200] * 150
    throttled = await h.call("GET", "/v1.0/security/alerts_v2")  # one bucket for all of /security
    assert error(throttled) == (429, "TooManyRequests", "Too many requests.")
    assert throttled.headers["Retry-After"].isdigit() and int(throttled.headers["Retry-After"]) >= 1
    # Another app, or the same app in another tenant, has its own bucket.
    other_app = h.issue(client_id=OTHER_APP)
    assert (await h.call("GET", path, token=other_app)).status == 200
    assert (await h.call("GET", INCIDENTS, token=h.issue(tenant=OTHER_TENANT))).status == 200
    # 2.5 requests a second come back.
    assert throttled.headers["Retry-After"] == "1"
    h.clock.advance(1)
    assert [(await h.call("GET", path)).status for _ in range(3)] == [200, 200, 429]
    h.clock.advance(60)
    assert [(await h.call("GET", path)).status for _ in range(150)] == [200] * 150


async def test_g_optional_write_bucket(tls: TLSMaterial) -> None:
    async with GraphHarness(tls, write_rate_per_minute=50) as h:
        path = f"{INCIDENTS}/{h.t.create_incident()['id']}"
        writes = [
            (await h.call("POST", f"{path}/comments", json={"comment": str(i)})).status for i in range(51)
        ]
        assert writes == [200] * 50 + [429]
        assert (await h.call("GET", path)).status == 200


async def test_g_fault_injection_uses_graph_bodies(h: GraphHarness) -> None:
    h.emu.faults.once("incidents.list", 429)
    reply = await h.call("GET", INCIDENTS)
    assert error(reply)[:2] == (429, "TooManyRequests") and reply.headers["Retry-After"] == "1"
    h.emu.faults.set("incidents.list", rate_429=1.0, retry_after=315)  # a long Retry-After (G)
    assert (await h.call("GET", INCIDENTS)).headers["Retry-After"] == "315"
    h.emu.faults.clear()
    h.emu.faults.once("incidents.list", 500)
    assert error(await h.call("GET", INCIDENTS))[:2] == (500, "InternalServerError")


async def test_unknown_segments_and_methods(h: GraphHarness) -> None:
    reply = await h.call("GET", "/v1.0/security/incidentz")
    assert error(reply) == (400, "BadRequest", "Resource not found for the segment 'incidentz'.")
    assert error(await h.call("DELETE", INCIDENTS))[:2] == (405, "MethodNotAllowed")


async def test_c1_orderby_skip_and_unknown_options(h: GraphHarness) -> None:
    ids = []
    for _ in range(4):
        ids.append(h.t.create_incident()["id"])
        h.clock.advance(1)
    h.t.analyst_update(ids[0], severity="high")  # now the most recently updated
    body = (await h.call("GET", INCIDENTS, params={"$orderby": "lastUpdateDateTime desc", "$skip": "1"})).body
    assert [i["id"] for i in body["value"]] == ids[1:][::-1]
    assert error(await h.call("GET", INCIDENTS, params={"$orderby": "displayName"}))[:2] == (
        400,
        "BadRequest",
    )
    assert error(await h.call("GET", INCIDENTS, params={"$search": "phish"}))[:2] == (400, "BadRequest")
    assert error(await h.call("GET", INCIDENTS, params={"$skip": "-1"}))[:2] == (400, "BadRequest")


async def test_a_the_token_tenant_selects_the_data(h: GraphHarness) -> None:
    h.t.create_incident()
    other = h.emu.tenant(OTHER_TENANT)
    theirs = other.create_incident()
    reply = await h.call("GET", INCIDENTS, token=h.issue(tenant=OTHER_TENANT))
    assert [i["id"] for i in reply.body["value"]] == [theirs["id"]]
    assert {i["tenantId"] for i in (await h.call("GET", INCIDENTS)).body["value"]} == {TENANT}
