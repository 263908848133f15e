"""The Sentinel emulator over real TLS: ARM front door, listing, PUT rules, comments, alerts.

Every test talks HTTP to a server on 127.0.0.1; ``SentinelHarness`` is reused by the contract
tests in ``test_emu_contract.py``.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from agent.testing.emulators.common import Clock, Directory, EmulatorServer, TLSMaterial, TokenRegistry
from agent.testing.emulators.odata import parse_instant
from agent.testing.emulators.sentinel import API_VERSIONS, SentinelEmulator, SentinelWorkspace

SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
RG = "soc-rg"
WS = "soc-ws"
CLIENT_ID = "8f0c6a2e-3f44-4a57-9f7e-2c1a4d9b7e11"
ARM_SCOPE = "https://management.azure.com/.default"
API = "2025-09-01"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


class SentinelHarness:
    """Clock, tokens, directory, one workspace and a TLS server with a client session."""

    def __init__(self, tls: TLSMaterial, **options: Any) -> None:
        self.clock = Clock()
        self.tokens = TokenRegistry(self.clock)
        self.directory = Directory()
        self.alice = self.directory.add("alice@contoso.com", "Alice Analyst")
        self.bob = self.directory.add("bob@contoso.com", "Bob Builder", email="bob.builder@contoso.com")
        self.emu = SentinelEmulator(tokens=self.tokens, directory=self.directory, clock=self.clock, **options)
        self.ws: SentinelWorkspace = self.emu.add_workspace(SUB, RG, WS)
        self.token = self.issue()
        self.tls = tls
        self.server = EmulatorServer(self.emu.app, tls)
        self.base = ""
        self.session: aiohttp.ClientSession | None = None

    def issue(self, client_id: str = CLIENT_ID, audience: str = ARM_SCOPE, lifetime: float = 3599) -> str:
        return self.tokens.issue(
            audience=audience, tenant="contoso", client_id=client_id, lifetime=lifetime
        ).token

    async def __aenter__(self) -> SentinelHarness:
        self.base = await self.server.start()
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.tls.client_context()))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        await self.server.stop()

    def path(self, *parts: str, sub: str = SUB, rg: str = RG, ws: str = WS) -> str:
        base = (
            f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.OperationalInsights"
            f"/workspaces/{ws}/providers/Microsoft.SecurityInsights"
        )
        return "/".join([base, *parts])

    async def call(
        self,
        method: str,
        path_or_url: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        params: dict[str, str] | None = None,
        token: str | None = "default",
        api_version: str | None = API,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        assert self.session is not None
        url = path_or_url if path_or_url.startswith("https://") else self.base + path_or_url
        query = dict(params or {})
        if api_version is not None and not path_or_url.startswith("https://"):
            query = {"api-version": api_version, **query}
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        async with self.session.request(
            method, url, params=query or None, json=json, data=data, headers=sent
        ) as r:
            raw = await r.read()
            body = await r.json(content_type=None) if raw else None
            return Reply(r.status, dict(r.headers), body)

    # shorthands
    async def get_incident(self, name: str) -> Reply:
        return await self.call("GET", self.path("incidents", name))

    async def put_incident(self, name: str, body: Any, **kw: Any) -> Reply:
        return await self.call("PUT", self.path("incidents", name), json=body, **kw)

    async def list_all(self, params: dict[str, str], *parts: str) -> tuple[list[dict[str, Any]], list[str]]:
        """Follow nextLink verbatim; return all items and the links followed."""
        reply = await self.call("GET", self.path(*(parts or ("incidents",))), params=params)
        assert reply.status == 200, reply.body
        items, links = list(reply.body["value"]), []
        while "nextLink" in reply.body:
            links.append(reply.body["nextLink"])
            reply = await self.call("GET", reply.body["nextLink"])
            assert reply.status == 200, reply.body
            items += reply.body["value"]
        return items, links


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSMaterial]:
    yield TLSMaterial(tmp_path_factory.mktemp("sentinel-tls"))


@pytest.fixture
async def h(tls: TLSMaterial) -> AsyncIterator[SentinelHarness]:
    async with SentinelHarness(tls) as harness:
        yield harness


def full_body(incident: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """GET -> modify -> PUT, as every serious client does (REFERENCE A.5.1)."""
    props = dict(incident["properties"])
    props.update(changes)
    return {"etag": incident["etag"], "properties": props}


def error_code(reply: Reply) -> str:
    assert isinstance(reply.body, dict) and set(reply.body) >= {"error"}, reply.body
    return str(reply.body["error"]["code"])


# --- routing and the ARM front door ----------------------------------------------------------


async def test_path_segments_match_case_insensitively(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="case")
    path = (
        f"/SUBSCRIPTIONS/{SUB}/resourcegroups/{RG.upper()}/PROVIDERS/microsoft.operationalinsights"
        f"/Workspaces/{WS.upper()}/providers/MICROSOFT.SECURITYINSIGHTS/Incidents/{inc['name'].upper()}"
    )
    reply = await h.call("GET", path)
    assert reply.status == 200
    assert reply.body["name"] == inc["name"]
    assert reply.body["id"] == inc["id"]  # canonical casing in the response
    assert h.emu.recorder.count(route="incidents.get", status=200) == 1


async def test_unknown_workspace_and_subscription_are_404(h: SentinelHarness) -> None:
    reply = await h.call("GET", h.path("incidents", ws="other-ws"))
    assert (reply.status, error_code(reply)) == (404, "ResourceNotFound")
    assert "other-ws" in reply.body["error"]["message"]
    reply = await h.call("GET", h.path("incidents", sub=str(uuid.uuid4())))
    assert (reply.status, error_code(reply)) == (404, "SubscriptionNotFound")


@pytest.mark.parametrize(
    ("method", "parts", "route"),
    [
        ("PATCH", ("incidents", "X"), "incident.unsupported_method"),
        ("PUT", ("incidents",), "incidents.unsupported_method"),
        ("POST", ("incidents", "X"), "incident.unsupported_method"),
        ("PATCH", ("incidents", "X", "comments", "c1"), "comment.unsupported_method"),
        ("POST", ("incidents", "X", "comments"), "comments.unsupported_method"),
        ("GET", ("incidents", "X", "alerts"), "incidents.alerts.unsupported_method"),
        ("HEAD", ("incidents", "X"), "incident.unsupported_method"),
    ],
)
async def test_unsupported_methods_are_405_with_the_arm_body(
    h: SentinelHarness, method: str, parts: tuple[str, ...], route: str
) -> None:
    inc = h.ws.create_incident(title="t")
    path = h.path(*(inc["name"] if p == "X" else p for p in parts))
    reply = await h.call(method, path, json={"properties": {"title": "x"}})
    assert reply.status == 405
    assert h.emu.recorder.count(route=route, status=405) == 1
    if method == "HEAD":
        return
    assert reply.body == {
        "error": {
            "code": "UnsupportedApiVersion",
            "message": f"The HTTP resource that matches the request URI '{h.base}{path}' with API version "
            f"'{API}' does not support HTTP method '{method}'.",
            "innerError": None,
        }
    }
    assert h.ws.incidents[inc["name"]]["properties"]["title"] == "t"


async def test_api_version_is_required(h: SentinelHarness) -> None:
    reply = await h.call("GET", h.path("incidents"), api_version=None)
    assert reply.status == 400
    assert reply.body == {
        "error": {
            "code": "MissingApiVersionParameter",
            "message": "The api-version query parameter (?api-version=) is required for all requests.",
        }
    }


async def test_api_version_must_be_in_the_allow_list(h: SentinelHarness) -> None:
    for version in API_VERSIONS:
        assert (await h.call("GET", h.path("incidents"), api_version=version)).status == 200, version
    for version in ("2019-01-01-preview", "2025-09-02", "latest", ""):
        reply = await h.call("GET", h.path("incidents"), api_version=version)
        assert (reply.status, error_code(reply)) == (400, "InvalidApiVersionParameter"), version
    h.emu.api_versions = {"2025-09-01"}
    reply = await h.call("GET", h.path("incidents"), api_version="2023-02-01")
    assert reply.status == 400


async def test_missing_authorization_is_401_authentication_failed(h: SentinelHarness) -> None:
    reply = await h.call("GET", h.path("incidents"), token=None)
    assert (reply.status, error_code(reply)) == (401, "AuthenticationFailed")
    assert reply.body["error"]["message"] == "Authentication failed. The 'Authorization' header is missing."
    assert reply.headers["WWW-Authenticate"].startswith("Bearer ")
    reply = await h.call(
        "GET", h.path("incidents"), token=None, headers={"Authorization": "Basic dXNlcjpwdw=="}
    )
    assert (reply.status, error_code(reply)) == (401, "AuthenticationFailed")


async def test_invalid_or_foreign_token_is_401_invalid_authentication_token(h: SentinelHarness) -> None:
    reply = await h.call("GET", h.path("incidents"), token="not-a-token")
    assert (reply.status, error_code(reply)) == (401, "InvalidAuthenticationToken")
    assert reply.body["error"]["message"] == "The access token is invalid."
    assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]
    graph = h.issue(audience="https://graph.microsoft.com/.default")
    reply = await h.call("GET", h.path("incidents"), token=graph)
    assert (reply.status, error_code(reply)) == (401, "InvalidAuthenticationToken")
    assert "wrong audience" in reply.body["error"]["message"]
    h.tokens.revoke_all()
    reply = await h.call("GET", h.path("incidents"))
    assert (reply.status, error_code(reply)) == (401, "InvalidAuthenticationToken")


async def test_expired_token_is_401_expired_authentication_token(h: SentinelHarness) -> None:
    h.clock.advance(3600)
    reply = await h.call("GET", h.path("incidents"))
    assert (reply.status, error_code(reply)) == (401, "ExpiredAuthenticationToken")
    assert re.fullmatch(
        r"The access token expiry UTC time '\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d\d:\d\d [AP]M' is earlier than "
        r"current UTC time '\d{1,2}/\d{1,2}/\d{4} \d{1,2}:\d\d:\d\d [AP]M'\.",
        reply.body["error"]["message"],
    )
    assert "WWW-Authenticate" in reply.headers


async def test_v1_resource_audiences_of_public_arm_are_accepted(h: SentinelHarness) -> None:
    for audience in ("https://management.azure.com/", "https://management.core.windows.net/"):
        reply = await h.call("GET", h.path("incidents"), token=h.issue(audience=audience))
        assert reply.status == 200, audience


async def test_reader_may_read_and_list_alerts_but_not_write(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    reader = "reader-app"
    h.emu.set_role(reader, "Reader")
    token = h.issue(client_id=reader)
    assert (await h.call("GET", h.path("incidents"), token=token)).status == 200
    assert (await h.call("GET", h.path("incidents", inc["name"]), token=token)).status == 200
    assert (await h.call("POST", h.path("incidents", inc["name"], "alerts"), token=token)).status == 200
    assert (await h.call("POST", h.path("incidents", inc["name"], "entities"), token=token)).status == 200
    assert (await h.call("GET", h.path("incidents", inc["name"], "comments"), token=token)).status == 200
    reply = await h.call("PUT", h.path("incidents", inc["name"]), json=full_body(inc), token=token)
    assert (reply.status, error_code(reply)) == (403, "AuthorizationFailed")
    assert "Microsoft.SecurityInsights/incidents/write" in reply.body["error"]["message"]
    assert reader in reply.body["error"]["message"]
    reply = await h.call(
        "PUT",
        h.path("incidents", inc["name"], "comments", "c1"),
        json={"properties": {"message": "m"}},
        token=token,
    )
    assert (reply.status, error_code(reply)) == (403, "AuthorizationFailed")
    assert "Microsoft.SecurityInsights/incidents/comments/write" in reply.body["error"]["message"]
    reply = await h.call("DELETE", h.path("incidents", inc["name"]), token=token)
    assert (reply.status, error_code(reply)) == (403, "AuthorizationFailed")
    assert "Microsoft.SecurityInsights/incidents/delete" in reply.body["error"]["message"]
    assert inc["name"] in h.ws.incidents
    assert h.ws.comments(inc["name"]) == []
    # The default role of everyone else is unaffected.
    assert (await h.call("PUT", h.path("incidents", inc["name"]), json=full_body(inc))).status == 200


async def test_role_none_is_403_on_everything(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.emu.set_role("nobody", "None")
    token = h.issue(client_id="nobody")
    for method, parts in (
        ("GET", ("incidents",)),
        ("GET", ("incidents", inc["name"])),
        ("POST", ("incidents", inc["name"], "alerts")),
        ("DELETE", ("incidents", inc["name"])),
    ):
        reply = await h.call(method, h.path(*parts), token=token)
        assert (reply.status, error_code(reply)) == (403, "AuthorizationFailed"), (method, parts)
    with pytest.raises(ValueError, match="role must be one of"):
        h.emu.set_role("x", "Owner")


# --- headers and throttling ------------------------------------------------------------------


async def test_every_response_carries_arm_request_ids(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    replies = [
        await h.call("GET", h.path("incidents")),
        await h.call("GET", h.path("incidents", "missing")),
        await h.call("GET", h.path("incidents"), token=None),
        await h.call("PATCH", h.path("incidents", inc["name"])),
        await h.call("GET", "/not/an/arm/path", api_version=None),
    ]
    seen = set()
    for reply in replies:
        for header in ("x-ms-request-id", "x-ms-correlation-request-id", "x-ms-routing-request-id"):
            assert header in reply.headers, (reply.status, header)
        uuid.UUID(reply.headers["x-ms-request-id"])
        seen.add(reply.headers["x-ms-request-id"])
    assert len(seen) == len(replies)
    assert replies[-1].status == 404 and error_code(replies[-1]) == "NotFound"
    correlation = str(uuid.uuid4())
    reply = await h.call("GET", h.path("incidents"), headers={"x-ms-correlation-request-id": correlation})
    assert reply.headers["x-ms-correlation-request-id"] == correlation


async def test_ratelimit_headers_by_operation_type(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    first = await h.call("GET", h.path("incidents"))
    second = await h.call("GET", h.path("incidents", inc["name"]))
    assert first.headers["x-ms-ratelimit-remaining-subscription-reads"] == "249"
    assert first.headers["x-ms-ratelimit-remaining-subscription-global-reads"] == "3749"
    assert second.headers["x-ms-ratelimit-remaining-subscription-reads"] == "248"
    alerts = await h.call("POST", h.path("incidents", inc["name"], "alerts"))
    assert (
        alerts.headers["x-ms-ratelimit-remaining-subscription-reads"] == "247"
    )  # POST list actions are reads
    assert "x-ms-ratelimit-remaining-subscription-writes" not in alerts.headers
    put = await h.put_incident(inc["name"], full_body(second.body))
    assert put.headers["x-ms-ratelimit-remaining-subscription-writes"] == "199"
    assert put.headers["x-ms-ratelimit-remaining-subscription-global-writes"] == "2999"
    assert "x-ms-ratelimit-remaining-subscription-reads" not in put.headers
    deleted = await h.call("DELETE", h.path("incidents", inc["name"]))
    assert deleted.headers["x-ms-ratelimit-remaining-subscription-deletes"] == "199"
    assert "x-ms-ratelimit-remaining-subscription-writes" not in deleted.headers


async def test_a11_documented_buckets_250_reads_at_25_and_200_writes_at_10(h: SentinelHarness) -> None:
    # REFERENCE A.11, learn.microsoft.com "Understand how Azure Resource Manager throttles
    # requests" (token bucket era): per subscription and principal, reads 250 refilled at 25/s,
    # writes 200 refilled at 10/s; 429 with Retry-After once a bucket is empty.
    inc = h.ws.create_incident(title="t")
    read = await h.call("GET", h.path("incidents", inc["name"]))
    assert read.headers["x-ms-ratelimit-remaining-subscription-reads"] == "249"
    h.emu.use_allowance("reads", 249)
    refused = await h.call("GET", h.path("incidents", inc["name"]))
    assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
    h.clock.advance(1)
    again = await h.call("GET", h.path("incidents", inc["name"]))
    # 25 tokens came back in the second (a few more if the test itself took time): one is used.
    assert 24 <= int(again.headers["x-ms-ratelimit-remaining-subscription-reads"]) <= 26
    put = await h.put_incident(inc["name"], full_body(read.body))
    assert put.headers["x-ms-ratelimit-remaining-subscription-writes"] == "199"
    h.emu.use_allowance("writes", 199)
    late = await h.put_incident(inc["name"], full_body(put.body))
    assert (late.status, late.headers["Retry-After"]) == (429, "1")
    h.clock.advance(1)
    put = await h.put_incident(inc["name"], full_body(put.body))
    assert put.status == 200
    assert 9 <= int(put.headers["x-ms-ratelimit-remaining-subscription-writes"]) <= 10


async def test_empty_read_bucket_is_429_until_it_refills(tls: TLSMaterial) -> None:
    async with SentinelHarness(tls, read_bucket=(3, 0.5)) as h:
        for _ in range(3):
            assert (await h.call("GET", h.path("incidents"))).status == 200
        reply = await h.call("GET", h.path("incidents"))
        assert (reply.status, error_code(reply)) == (429, "SubscriptionRequestsThrottled")
        assert reply.headers["Retry-After"] == "2"
        oid = h.tokens.check(h.token, "https://management.azure.com")[0]
        assert oid is not None
        assert reply.body["error"]["message"] == (
            f"Number of 'read' requests for subscription '{SUB}' actor '{oid.object_id}' exceeded. "
            "Please try again after '2' seconds."
        )
        # Writes have their own bucket.
        inc = h.ws.create_incident(title="t")
        assert (await h.put_incident(inc["name"], full_body(inc))).status == 200
        # Another principal has its own read bucket.
        assert (await h.call("GET", h.path("incidents"), token=h.issue(client_id="other"))).status == 200
        h.clock.advance(2)
        assert (await h.call("GET", h.path("incidents"))).status == 200
        assert (await h.call("GET", h.path("incidents"))).status == 429


async def test_global_subscription_bucket_is_15_times_the_principal_bucket(tls: TLSMaterial) -> None:
    async with SentinelHarness(tls, read_bucket=(2, 0.001)) as h:
        tokens = [h.issue(client_id=f"app-{i}") for i in range(16)]
        statuses = []
        for token in tokens:
            for _ in range(2):
                statuses.append((await h.call("GET", h.path("incidents"), token=token)).status)
        assert statuses[:30] == [200] * 30
        assert statuses[30:] == [429, 429]


async def test_injected_faults_use_arm_bodies(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    path = h.path("incidents", inc["name"])
    h.emu.faults.once("incidents.get", 429)
    h.emu.faults.once("incidents.get", 500)
    h.emu.faults.once("incidents.get", 503)
    throttled = await h.call("GET", path)
    assert (throttled.status, error_code(throttled)) == (429, "SubscriptionRequestsThrottled")
    assert throttled.headers["Retry-After"] == "1"
    assert SUB in throttled.body["error"]["message"]
    assert "x-ms-request-id" in throttled.headers
    failed = await h.call("GET", path)
    assert (failed.status, error_code(failed)) == (500, "InternalServerError")
    unavailable = await h.call("GET", path)
    assert (unavailable.status, error_code(unavailable)) == (503, "ServiceUnavailable")
    assert (await h.call("GET", path)).status == 200
    assert h.emu.faults.injected == {"429": 1, "500": 1, "503": 1}
    assert [c.status for c in h.emu.recorder.calls if c.route == "incidents.get"] == [429, 500, 503, 200]


async def test_dropped_connection_fault(h: SentinelHarness) -> None:
    # POST: aiohttp transparently retries idempotent methods once after a disconnect.
    inc = h.ws.create_incident(title="t")
    h.emu.faults.once("incidents.alerts", 0)
    with pytest.raises(aiohttp.ClientError, match="Server disconnected"):
        await h.call("POST", h.path("incidents", inc["name"], "alerts"))
    assert (await h.call("POST", h.path("incidents", inc["name"], "alerts"))).status == 200
    assert [c.status for c in h.emu.recorder.calls] == [0, 200]


# --- listing ----------------------------------------------------------------------------------


def seed(ws: SentinelWorkspace, n: int, clock: Clock) -> list[dict[str, Any]]:
    made = []
    for i in range(n):
        made.append(
            ws.create_incident(
                title=f"incident {i:02d}",
                severity=("High", "Medium", "Low")[i % 3],
                status="Active" if i % 2 else "New",
                labels=["snow"] if i % 4 == 0 else ["other"],
            )
        )
        clock.advance(1)
    return made


async def test_filter_by_status_label_and_title(h: SentinelHarness) -> None:
    made = seed(h.ws, 12, h.clock)
    items, _ = await h.list_all({"$filter": "properties/status eq 'Active'"})
    assert {i["name"] for i in items} == {m["name"] for k, m in enumerate(made) if k % 2}
    items, _ = await h.list_all({"$filter": "properties/labels/any(i:i/labelName eq 'snow')"})
    assert {i["name"] for i in items} == {m["name"] for k, m in enumerate(made) if k % 4 == 0}
    items, _ = await h.list_all({"$filter": "contains(toLower(properties/title), 'incident 1')"})
    assert sorted(i["properties"]["title"] for i in items) == ["incident 10", "incident 11"]
    query = (
        "(properties/severity eq 'High' or properties/severity eq 'Low') and not (properties/status eq 'New')"
    )
    items, _ = await h.list_all({"$filter": query})
    expected = {m["name"] for k, m in enumerate(made) if k % 3 in (0, 2) and k % 2}
    assert {i["name"] for i in items} == expected


async def test_filter_on_modified_time_compares_instants(h: SentinelHarness) -> None:
    old = h.ws.create_incident(title="old")
    h.clock.advance(10)
    new = h.ws.create_incident(title="new")
    stamp = new["properties"]["lastModifiedTimeUtc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z", stamp)
    truncated = stamp[:23] + "Z"  # 3 fractional digits, as JS toISOString() sends (A.7)
    items, _ = await h.list_all({"$filter": f"properties/lastModifiedTimeUtc ge {truncated}"})
    assert [i["name"] for i in items] == [new["name"]]
    items, _ = await h.list_all({"$filter": f"properties/lastModifiedTimeUtc gt {stamp}"})
    assert items == []
    items, _ = await h.list_all({"$filter": f"properties/lastModifiedTimeUtc le {stamp}"})
    assert {i["name"] for i in items} == {old["name"], new["name"]}


async def test_filter_on_name_returns_an_empty_list(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    reply = await h.call("GET", h.path("incidents"), params={"$filter": f"name eq '{inc['name']}'"})
    assert reply.status == 200
    assert reply.body == {"value": []}


@pytest.mark.parametrize(
    "flt",
    [
        "properties/status eq",
        "properties/status = 'New'",
        "substringof('x', properties/title)",
        "properties/lastModifiedTimeUtc gt '2024-01-01T00:00:00Z'",
        "properties/nope eq 'x'",
        "properties/labels/labelName eq 'snow'",
        "",
    ],
)
async def test_invalid_filter_is_400_bad_request(h: SentinelHarness, flt: str) -> None:
    reply = await h.call("GET", h.path("incidents"), params={"$filter": flt})
    assert (reply.status, error_code(reply)) == (400, "BadRequest")
    assert reply.body["error"]["message"]


# --- REFERENCE E.1: where a lambda may stand -------------------------------------------------

SNOW_ANY = "properties/labels/any(l: l/labelName eq 'snow')"


@pytest.mark.parametrize(
    "flt",
    [
        f"{SNOW_ANY} and properties/severity eq 'High'",
        f"{SNOW_ANY} and properties/severity eq 'High' and properties/status ne 'Closed'",
        f"not {SNOW_ANY} and properties/severity eq 'High'",
        f"{SNOW_ANY} and (properties/severity eq 'High' or properties/severity eq 'Low')",
        SNOW_ANY,
        "properties/labels/any()",
    ],
)
async def test_e1_lambda_first_is_served(h: SentinelHarness, flt: str) -> None:
    seed(h.ws, 8, h.clock)
    reply = await h.call("GET", h.path("incidents"), params={"$filter": flt})
    assert reply.status == 200, reply.body


@pytest.mark.parametrize(
    "flt",
    [
        # azure-rest-api-specs #26569 (api-version 2023-02-01), verbatim shapes
        f"properties/severity eq 'High' and {SNOW_ANY}",
        "(properties/labels/any(label: label/labelName eq 'test') or properties/severity eq 'High') and "
        "(properties/labels/any(label: label/labelName eq 'test2') or properties/status eq 'Active')",
        f"properties/lastModifiedTimeUtc ge 2026-12-01T10:00:00.0000000Z and {SNOW_ANY}",
        f"{SNOW_ANY} or properties/severity eq 'High'",
        f"{SNOW_ANY} and properties/labels/any(l: l/labelName eq 'soc')",
        f"properties/status eq 'New' and not {SNOW_ANY}",
    ],
)
async def test_e1_lambda_must_come_first(h: SentinelHarness, flt: str) -> None:
    seed(h.ws, 8, h.clock)
    reply = await h.call("GET", h.path("incidents"), params={"$filter": flt})
    assert (reply.status, reply.body) == (
        400,
        {"error": {"code": "BadRequest", "message": "OData query syntax error"}},
    )


@pytest.mark.parametrize(
    "flt",
    [
        "properties/labels/all(label: label/labelName eq 'test')",
        "properties/labels/all(label: label/labelName ne 'test')",
    ],
)
async def test_e1_all_is_refused(h: SentinelHarness, flt: str) -> None:
    reply = await h.call("GET", h.path("incidents"), params={"$filter": flt})
    assert (reply.status, reply.body["error"]["message"]) == (400, "OData query syntax error")


async def test_e1_or_inside_the_lambda_is_a_server_error(h: SentinelHarness) -> None:
    # azure-rest-api-specs #15391, filter 3: the lambda first, an ``or`` in its body
    flt = (
        "properties/additionalData/alertProductNames/any(i: i eq 'Azure Security Center' or i eq 'test2') "
        "and properties/status eq 'New'"
    )
    reply = await h.call("GET", h.path("incidents"), params={"$filter": flt})
    assert (reply.status, error_code(reply)) == (500, "InternalServerError")


async def test_e1_lambda_last_on_an_older_api_version_lists_nothing(tls: TLSMaterial) -> None:
    # azure-rest-api-specs #15391 (api-version 2020-01-01): 200 with an empty list, no error
    async with SentinelHarness(tls) as h:
        h.emu.api_versions.add("2020-01-01")
        made = seed(h.ws, 8, h.clock)
        flt = f"properties/status eq 'New' and {SNOW_ANY}"
        reply = await h.call("GET", h.path("incidents"), params={"$filter": flt}, api_version="2020-01-01")
        assert (reply.status, reply.body) == (200, {"value": []})
        first = f"{SNOW_ANY} and properties/status eq 'New'"
        reply = await h.call("GET", h.path("incidents"), params={"$filter": first}, api_version="2020-01-01")
        expected = {m["name"] for k, m in enumerate(made) if k % 4 == 0 and k % 2 == 0}
        assert {i["name"] for i in reply.body["value"]} == expected and expected


async def test_e1_lenient_switch_is_for_experiments_only(tls: TLSMaterial) -> None:
    async with SentinelHarness(tls, strict=False) as h:
        seed(h.ws, 4, h.clock)
        flt = f"properties/severity eq 'High' and {SNOW_ANY}"
        reply = await h.call("GET", h.path("incidents"), params={"$filter": flt})
        assert reply.status == 200
    assert SentinelEmulator.__init__.__kwdefaults__["strict"] is True


async def test_orderby_with_several_keys(h: SentinelHarness) -> None:
    made = seed(h.ws, 9, h.clock)
    items, _ = await h.list_all({"$orderby": "properties/severity asc, properties/createdTimeUtc desc"})
    names = [i["name"] for i in items]
    expected = sorted(made, key=lambda m: m["properties"]["createdTimeUtc"], reverse=True)
    expected = sorted(expected, key=lambda m: m["properties"]["severity"])  # stable
    assert names == [m["name"] for m in expected]
    for bad in ("properties/severity sideways", "properties/labels", "properties/nope desc"):
        reply = await h.call("GET", h.path("incidents"), params={"$orderby": bad})
        assert (reply.status, error_code(reply)) == (400, "BadRequest"), bad


async def test_default_page_size_and_top_limits(h: SentinelHarness) -> None:
    seed(h.ws, 55, h.clock)
    reply = await h.call("GET", h.path("incidents"))
    assert len(reply.body["value"]) == 50
    assert "$top=50" in reply.body["nextLink"]
    reply = await h.call("GET", h.path("incidents"), params={"$top": "1000"})
    assert len(reply.body["value"]) == 55 and "nextLink" not in reply.body
    for top in ("1001", "0", "-1", "ten"):
        reply = await h.call("GET", h.path("incidents"), params={"$top": top})
        assert (reply.status, error_code(reply)) == (400, "BadRequest"), top


async def test_paging_across_many_pages_with_filter_and_orderby(h: SentinelHarness) -> None:
    made = seed(h.ws, 40, h.clock)
    params = {
        "$filter": "properties/status eq 'New' and properties/severity ne 'Low'",
        "$orderby": "properties/createdTimeUtc asc",
        "$top": "4",
    }
    items, links = await h.list_all(params)
    expected = [m["name"] for k, m in enumerate(made) if k % 2 == 0 and k % 3 != 2]
    assert [i["name"] for i in items] == expected
    assert len(expected) == 13 and len(links) == 3  # 4 pages: 4 + 4 + 4 + 1
    for link in links:
        parts = urlsplit(link)
        assert f"{parts.scheme}://{parts.netloc}" == h.base
        assert parts.path == h.path("incidents")
        pairs = parse_qsl(parts.query)
        assert [k for k, _ in pairs] == ["api-version", "$filter", "$orderby", "$top", "$skipToken"]
        assert dict(pairs)["$filter"] == params["$filter"]
        assert dict(pairs)["$orderby"] == params["$orderby"]
        assert dict(pairs)["api-version"] == API
        assert link.split("&")[-1].startswith("$skipToken=")


async def test_skiptoken_reused_with_the_original_request(h: SentinelHarness) -> None:
    """Microsoft's own app strips the last nextLink parameter and re-issues its request (A.7)."""
    seed(h.ws, 10, h.clock)
    params = {"$filter": "properties/labels/any(l: l/labelName eq 'other')", "$top": "3"}
    first = await h.call("GET", h.path("incidents"), params=params)
    token = first.body["nextLink"].split("&")[-1].removeprefix("$skipToken=")
    via_token = await h.call("GET", h.path("incidents"), params={**params, "$skipToken": token})
    via_link = await h.call("GET", first.body["nextLink"])
    assert via_token.body["value"] == via_link.body["value"]
    assert [i["name"] for i in via_token.body["value"]] != [i["name"] for i in first.body["value"]]


async def test_a7_skiptoken_is_opaque(h: SentinelHarness) -> None:
    """A.7: the token's format is unpublished; ours is random, so no client can compute one."""
    seed(h.ws, 6, h.clock)
    first = await h.call("GET", h.path("incidents"), params={"$top": "2"})
    token = first.body["nextLink"].split("&")[-1].removeprefix("$skipToken=")
    second = await h.call("GET", first.body["nextLink"])
    assert "offset" not in token and len(token) >= 32
    assert token != second.body["nextLink"].split("&")[-1].removeprefix("$skipToken=")
    forged = base64.urlsafe_b64encode(b'{"offset":2}').decode().rstrip("=")
    reply = await h.call("GET", h.path("incidents"), params={"$top": "2", "$skipToken": forged})
    assert (reply.status, error_code(reply)) == (400, "BadRequest")


async def test_offset_paging_loses_an_incident_edited_between_pages(h: SentinelHarness) -> None:
    """Why the agent pages by time: following nextLink while an incident is edited between two
    pages skips another one (12 incidents, 11 come back), as any offset-like token does."""
    made = seed(h.ws, 12, h.clock)
    h.ws.race_listing(1, lambda: h.ws.analyst_update(made[1]["name"], severity="High"))
    params = {"$orderby": "properties/lastModifiedTimeUtc asc", "$top": "5"}
    items, links = await h.list_all(params)
    names = {i["name"] for i in items}
    assert len(links) == 2 and len(names) == 11
    assert names == {m["name"] for m in made} - {made[5]["name"]}


async def test_delay_listing_shows_the_old_version_until_the_change_is_visible(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t", labels=["snow"])
    before = h.ws.incidents[inc["name"]]["properties"]["lastModifiedTimeUtc"]
    h.ws.delay_listing(inc["name"], 30)
    h.clock.advance(1)
    h.ws.analyst_update(inc["name"], severity="High")
    listed = await h.call("GET", h.path("incidents"))
    [seen] = listed.body["value"]
    assert (seen["properties"]["severity"], seen["properties"]["lastModifiedTimeUtc"]) == ("Medium", before)
    assert (await h.get_incident(inc["name"])).body["properties"]["severity"] == "High"
    h.clock.advance(30)
    [seen] = (await h.call("GET", h.path("incidents"))).body["value"]
    assert seen["properties"]["severity"] == "High" and seen["properties"]["lastModifiedTimeUtc"] > before


async def test_listing_delay_hides_new_incidents_for_a_while(tls: TLSMaterial) -> None:
    async with SentinelHarness(tls, listing_delay=20) as h:
        inc = h.ws.create_incident(title="new")
        assert (await h.call("GET", h.path("incidents"))).body["value"] == []
        assert (await h.get_incident(inc["name"])).status == 200
        h.clock.advance(20)
        assert [i["name"] for i in (await h.call("GET", h.path("incidents"))).body["value"]] == [inc["name"]]


async def test_e2_comment_changes_etag_and_modified_time_by_default(h: SentinelHarness) -> None:
    before = inc = h.ws.create_incident(title="t")  # a snapshot
    h.clock.advance(1)
    comment = h.path("incidents", inc["name"], "comments", str(uuid.uuid4()))
    reply = await h.call("PUT", comment, json={"properties": {"message": "hello"}})
    assert reply.status == 201
    after = (await h.get_incident(inc["name"])).body
    assert after["etag"] != before["etag"]
    assert after["properties"]["lastModifiedTimeUtc"] > before["properties"]["lastModifiedTimeUtc"]
    assert after["properties"]["additionalData"]["commentsCount"] == 1
    stale = await h.put_incident(inc["name"], full_body(before, severity="High"))
    assert (stale.status, error_code(stale)) == (409, "Conflict")  # STAT issue #211


async def test_e2_switch_off_a_comment_changes_only_the_etag(tls: TLSMaterial) -> None:
    async with SentinelHarness(tls, comment_moves_modified=False) as h:
        inc = h.ws.create_incident(title="t")
        h.clock.advance(1)
        h.ws.analyst_comment(inc["name"], "from the portal", author_upn="alice@contoso.com")
        after = h.ws.incidents[inc["name"]]
        assert after["etag"] != inc["etag"]
        assert after["properties"]["lastModifiedTimeUtc"] == inc["properties"]["lastModifiedTimeUtc"]
        assert after["properties"]["additionalData"]["commentsCount"] == 1


async def test_invalid_skiptoken_and_unknown_options_are_400(h: SentinelHarness) -> None:
    for params in (
        {"$skipToken": "not base64 at all!"},
        {"$skipToken": "eyJvZmZzZXQiOi0xfQ"},  # {"offset":-1}
        {"$skiptoken": "eyJvZmZzZXQiOjF9"},
        {"$expand": "properties"},
    ):
        reply = await h.call("GET", h.path("incidents"), params=params)
        assert (reply.status, error_code(reply)) == (400, "BadRequest"), params


async def test_comments_list_pages_and_filters(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    for i in range(7):
        h.ws.analyst_comment(inc["name"], f"note {i}", author_upn="alice@contoso.com")
        h.clock.advance(1)
    items, links = await h.list_all({"$top": "2"}, "incidents", inc["name"], "comments")
    assert [c["properties"]["message"] for c in items] == [f"note {i}" for i in range(7)]
    assert len(links) == 3
    since = h.ws.comments(inc["name"])[4]["properties"]["createdTimeUtc"]
    params = {
        "$filter": f"(properties/createdTimeUtc gt {since})",
        "$orderby": "properties/createdTimeUtc desc",
    }
    items, _ = await h.list_all(params, "incidents", inc["name"], "comments")
    assert [c["properties"]["message"] for c in items] == ["note 6", "note 5"]
    reply = await h.call("GET", h.path("incidents", "nope", "comments"))
    assert (reply.status, error_code(reply)) == (404, "NotFound")


# --- PUT incident -----------------------------------------------------------------------------


def new_body(**props: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"title": "From ServiceNow", "severity": "Medium", "status": "New"}
    base.update(props)
    return {"properties": {k: v for k, v in base.items() if v is not ...}}


async def test_put_new_id_creates_with_201_and_server_fields(h: SentinelHarness) -> None:
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    reply = await h.put_incident(first, new_body(description="d", labels=[{"labelName": "snow"}]))
    assert reply.status == 201
    body = reply.body
    props = body["properties"]
    assert body["name"] == first
    assert body["id"] == h.path("incidents", first)
    assert body["type"] == "Microsoft.SecurityInsights/incidents"
    assert re.fullmatch(r'"[0-9a-f-]{36}"', body["etag"])
    assert props["incidentNumber"] == 1
    assert props["providerIncidentId"] == "1"
    assert props["providerName"] == "Azure Sentinel"
    assert props["incidentUrl"] == (
        "https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident"
        + h.path("incidents", first)
    )
    assert props["relatedAnalyticRuleIds"] == []
    assert props["additionalData"] == {
        "alertsCount": 0,
        "bookmarksCount": 0,
        "commentsCount": 0,
        "alertProductNames": [],
        "tactics": [],
    }
    assert props["createdTimeUtc"] == props["lastModifiedTimeUtc"]
    assert props["labels"] == [{"labelName": "snow", "labelType": "User"}]
    assert h.ws.incidents[first] == body
    reply = await h.put_incident(second, new_body())
    assert (reply.status, reply.body["properties"]["incidentNumber"]) == (201, 2)


async def test_put_existing_updates_with_200_new_etag_and_later_modified_time(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    reply = await h.put_incident(inc["name"], full_body(inc, severity="High"))
    assert reply.status == 200
    assert reply.body["properties"]["severity"] == "High"
    assert reply.body["etag"] != inc["etag"]
    before = parse_instant(inc["properties"]["lastModifiedTimeUtc"])
    after = parse_instant(reply.body["properties"]["lastModifiedTimeUtc"])
    assert before is not None and after is not None and after > before
    assert reply.body["properties"]["createdTimeUtc"] == inc["properties"]["createdTimeUtc"]
    assert reply.body["properties"]["incidentNumber"] == inc["properties"]["incidentNumber"]
    assert (await h.get_incident(inc["name"])).body == reply.body


async def test_put_accepts_quoted_and_unquoted_etags(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    unquoted = {**full_body(inc), "etag": inc["etag"].strip('"')}
    reply = await h.put_incident(inc["name"], unquoted)
    assert reply.status == 200
    reply = await h.put_incident(inc["name"], full_body(reply.body, title="again"))
    assert reply.status == 200 and reply.body["properties"]["title"] == "again"


async def test_stale_etag_is_409_with_the_observed_body(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.analyst_update(inc["name"], severity="Low")
    reply = await h.put_incident(inc["name"], full_body(inc, severity="High"))
    assert reply.status == 409
    assert reply.body == {
        "error": {
            "code": "Conflict",
            "message": f"Newer version of resource '{inc['name']}' exists. Data was not saved",
        }
    }
    assert h.ws.incidents[inc["name"]]["properties"]["severity"] == "Low"


async def test_missing_etag_on_update_is_409_by_default(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    body = full_body(inc, severity="High")
    del body["etag"]
    reply = await h.put_incident(inc["name"], body)
    assert (reply.status, error_code(reply)) == (409, "Conflict")
    reply = await h.put_incident(inc["name"], body, headers={"If-Match": inc["etag"]})
    assert reply.status == 409  # the spec has no If-Match; only the body etag counts (A.5.2)


async def test_missing_etag_allowed_when_configured(tls: TLSMaterial) -> None:
    async with SentinelHarness(tls, missing_etag="allow") as h:
        inc = h.ws.create_incident(title="t")
        body = full_body(inc, severity="High")
        del body["etag"]
        reply = await h.put_incident(inc["name"], body)
        assert (reply.status, reply.body["properties"]["severity"]) == (200, "High")
        stale = full_body(inc, severity="Low")
        assert (await h.put_incident(inc["name"], stale)).status == 409
    with pytest.raises(ValueError, match="missing_etag must be 'reject_409' or 'allow'"):
        SentinelEmulator(tokens=h.tokens, directory=h.directory, clock=h.clock, missing_etag="sometimes")


async def test_malformed_and_shapeless_bodies_are_400(h: SentinelHarness) -> None:
    name = str(uuid.uuid4())
    reply = await h.call(
        "PUT",
        h.path("incidents", name),
        data=b'{"properties": {',
        headers={"Content-Type": "application/json"},
    )
    assert (reply.status, error_code(reply)) == (400, "InvalidRequestContent")
    reply = await h.put_incident(name, [new_body()])
    assert (reply.status, error_code(reply)) == (400, "InvalidRequestContent")
    reply = await h.put_incident(name, {"title": "flat", "severity": "Low", "status": "New"})
    assert (reply.status, error_code(reply)) == (400, "BadRequest")
    assert "properties" in reply.body["error"]["message"]
    assert name not in h.ws.incidents


@pytest.mark.parametrize("missing", ["title", "severity", "status"])
async def test_required_properties_are_named_when_missing(h: SentinelHarness, missing: str) -> None:
    reply = await h.put_incident(str(uuid.uuid4()), new_body(**{missing: ...}))
    assert (reply.status, error_code(reply)) == (400, "BadRequest")
    assert f"'{missing}'" in reply.body["error"]["message"]
    reply = await h.put_incident(str(uuid.uuid4()), new_body(**{missing: None}))
    assert reply.status == 400 and f"'{missing}'" in reply.body["error"]["message"]


@pytest.mark.parametrize(
    "props",
    [
        {"severity": "Critical"},
        {"severity": "high"},
        {"severity": 7},
        {"status": "Resolved"},
        {"status": "Closed", "classification": "Benign"},
        {"classificationReason": "Other", "classification": "TruePositive"},
        {"title": ""},
        {"owner": "alice@contoso.com"},
        {"labels": ["snow"]},
        {"labels": [{"labelType": "User"}]},
        {"firstActivityTimeUtc": "yesterday"},
    ],
)
async def test_invalid_values_are_400(h: SentinelHarness, props: dict[str, Any]) -> None:
    name = str(uuid.uuid4())
    reply = await h.put_incident(name, new_body(**props))
    assert (reply.status, error_code(reply)) == (400, "BadRequest"), reply.body
    assert name not in h.ws.incidents


async def test_closing_requires_a_classification(h: SentinelHarness) -> None:
    reply = await h.put_incident(str(uuid.uuid4()), new_body(status="Closed"))
    assert (reply.status, error_code(reply)) == (400, "BadRequest")
    assert "classification" in reply.body["error"]["message"]


async def test_determined_classification_needs_a_reason_verbatim(h: SentinelHarness) -> None:
    reply = await h.put_incident(
        str(uuid.uuid4()), new_body(status="Closed", classification="BenignPositive")
    )
    assert reply.status == 400
    assert reply.body == {
        "error": {
            "code": "BadRequest",
            "message": "classification 'BenignPositive' must have classificationReason.",
        }
    }


@pytest.mark.parametrize(
    ("classification", "reason", "ok"),
    [
        ("TruePositive", "SuspiciousActivity", True),
        ("BenignPositive", "SuspiciousButExpected", True),
        ("FalsePositive", "IncorrectAlertLogic", True),
        ("FalsePositive", "InaccurateData", True),
        ("Undetermined", None, True),
        ("TruePositive", None, False),
        ("FalsePositive", None, False),
        ("Undetermined", "InaccurateData", False),
        ("TruePositive", "IncorrectAlertLogic", False),
        ("BenignPositive", "SuspiciousActivity", False),
        ("FalsePositive", "SuspiciousButExpected", False),
        (None, "SuspiciousActivity", False),
    ],
)
async def test_classification_reason_pairs(
    h: SentinelHarness, classification: str | None, reason: str | None, ok: bool
) -> None:
    props = {"status": "Closed", "classification": classification, "classificationReason": reason}
    reply = await h.put_incident(str(uuid.uuid4()), new_body(**props, classificationComment="closed by sync"))
    assert reply.status == (201 if ok else 400), reply.body
    if ok:
        got = reply.body["properties"]
        assert got["classification"] == classification
        assert got.get("classificationReason") == reason
        assert got["classificationComment"] == "closed by sync"


async def test_put_treats_omitted_optional_properties_as_clear(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(
        title="t", description="desc", owner_upn="alice@contoso.com", labels=["a", "b"]
    )
    closed = await h.put_incident(
        inc["name"],
        full_body(
            inc,
            status="Closed",
            classification="FalsePositive",
            classificationReason="InaccurateData",
            classificationComment="noise",
        ),
    )
    assert closed.status == 200
    minimal = {
        "etag": closed.body["etag"],
        "properties": {"title": "t", "severity": "Low", "status": "Active"},
    }
    reply = await h.put_incident(inc["name"], minimal)
    assert reply.status == 200
    props = reply.body["properties"]
    assert props.get("description", "") == ""
    assert props["owner"] == {
        "objectId": None,
        "email": None,
        "assignedTo": None,
        "userPrincipalName": None,
        "ownerType": None,
    }
    assert props["labels"] == []
    for key in ("classification", "classificationReason", "classificationComment"):
        assert key not in props
    assert (props["severity"], props["status"]) == ("Low", "Active")


async def test_read_only_properties_in_the_body_are_ignored(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    body = full_body(
        inc,
        incidentNumber=999,
        createdTimeUtc="2001-01-01T00:00:00Z",
        lastModifiedTimeUtc="2001-01-01T00:00:00Z",
        providerName="Evil",
        additionalData={"alertsCount": 42, "commentsCount": 42},
        incidentUrl="https://example.invalid",
    )
    body["id"] = "/elsewhere"
    body["name"] = "other-name"
    reply = await h.put_incident(inc["name"], body)
    assert reply.status == 200
    props = reply.body["properties"]
    assert props["incidentNumber"] == inc["properties"]["incidentNumber"]
    assert props["createdTimeUtc"] == inc["properties"]["createdTimeUtc"]
    assert props["lastModifiedTimeUtc"] != "2001-01-01T00:00:00Z"
    assert props["providerName"] == "Azure Sentinel"
    assert props["additionalData"]["alertsCount"] == 0
    assert props["incidentUrl"] == inc["properties"]["incidentUrl"]
    assert (reply.body["id"], reply.body["name"]) == (inc["id"], inc["name"])


async def test_owner_by_object_id_by_upn_and_unassign(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    expected_bob = {
        "objectId": h.bob.object_id,
        "email": "bob.builder@contoso.com",
        "assignedTo": "Bob Builder",
        "userPrincipalName": "bob@contoso.com",
        "ownerType": "User",
    }
    reply = await h.put_incident(inc["name"], full_body(inc, owner={"objectId": h.bob.object_id}))
    assert reply.body["properties"]["owner"] == expected_bob
    by_upn = {"objectId": None, "email": None, "assignedTo": None, "userPrincipalName": "ALICE@contoso.com"}
    reply = await h.put_incident(inc["name"], full_body(reply.body, owner=by_upn))
    assert reply.body["properties"]["owner"]["objectId"] == h.alice.object_id
    assert reply.body["properties"]["owner"]["assignedTo"] == "Alice Analyst"
    # objectId wins over userPrincipalName (A.6).
    both = {"objectId": h.bob.object_id, "userPrincipalName": "alice@contoso.com"}
    reply = await h.put_incident(inc["name"], full_body(reply.body, owner=both))
    assert reply.body["properties"]["owner"] == expected_bob
    nobody = {"objectId": None, "email": None, "assignedTo": None, "userPrincipalName": None}
    reply = await h.put_incident(inc["name"], full_body(reply.body, owner=nobody))
    assert reply.body["properties"]["owner"]["objectId"] is None
    assert reply.body["properties"]["owner"]["userPrincipalName"] is None


@pytest.mark.parametrize(
    "owner",
    [
        {"objectId": str(uuid.uuid4())},
        {"objectId": "not-a-guid"},
        {"objectId": None, "userPrincipalName": "mallory@contoso.com"},
        {"objectId": 5},
    ],
)
async def test_unknown_owner_is_400(h: SentinelHarness, owner: dict[str, Any]) -> None:
    inc = h.ws.create_incident(title="t", owner_upn="alice@contoso.com")
    reply = await h.put_incident(inc["name"], full_body(inc, owner=owner))
    assert (reply.status, error_code(reply)) == (400, "BadRequest")
    assert h.ws.incidents[inc["name"]]["properties"]["owner"]["objectId"] == h.alice.object_id


async def test_e4_owner_with_only_an_email_is_held_and_kept_when_echoed(h: SentinelHarness) -> None:
    """E.4: automation can leave an owner without objectId/UPN; echoing it keeps it, an
    all-null owner (or none) unassigns."""
    inc = h.ws.create_incident(title="t")
    email_only = {"objectId": None, "email": "soc-lead@contoso.com", "assignedTo": "SOC Lead",
                  "userPrincipalName": None}  # fmt: skip
    held = h.ws.analyst_update(inc["name"], owner=email_only)
    assert held["properties"]["owner"] == email_only
    reply = await h.put_incident(inc["name"], full_body(held, severity="High"))
    assert reply.status == 200
    assert {k: v for k, v in reply.body["properties"]["owner"].items() if v} == {
        "email": "soc-lead@contoso.com",
        "assignedTo": "SOC Lead",
    }
    reply = await h.put_incident(inc["name"], full_body(reply.body, owner=None))
    assert not any(reply.body["properties"]["owner"].values())


async def test_labels_are_replaced_as_user_labels(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t", labels=["a", "b"])
    labels = [{"labelName": "b"}, {"labelName": "snow", "labelType": "AutoAssigned"}]
    reply = await h.put_incident(inc["name"], full_body(inc, labels=labels))
    assert reply.body["properties"]["labels"] == [
        {"labelName": "b", "labelType": "User"},
        {"labelName": "snow", "labelType": "User"},
    ]


async def test_race_next_put_makes_that_put_conflict_once(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.race_next_put(inc["name"])
    reply = await h.put_incident(inc["name"], full_body(inc, severity="High"))
    assert (reply.status, error_code(reply)) == (409, "Conflict")
    current = (await h.get_incident(inc["name"])).body
    assert current["etag"] != inc["etag"]
    assert current["properties"]["lastActivityTimeUtc"] != inc["properties"]["lastActivityTimeUtc"]
    assert current["properties"]["severity"] == "Medium"
    reply = await h.put_incident(inc["name"], full_body(current, severity="High"))
    assert (reply.status, reply.body["properties"]["severity"]) == (200, "High")


async def test_race_next_put_with_analyst_changes(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.race_next_put(inc["name"], status="Active", owner_upn="bob@contoso.com")
    assert (await h.put_incident(inc["name"], full_body(inc, title="renamed"))).status == 409
    current = h.ws.incidents[inc["name"]]["properties"]
    assert (current["status"], current["owner"]["userPrincipalName"], current["title"]) == (
        "Active",
        "bob@contoso.com",
        "t",
    )


async def test_race_next_put_with_an_analyst_comment(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.race_next_put(inc["name"], comment="added while the PUT was on its way")
    assert (await h.put_incident(inc["name"], full_body(inc, severity="High"))).status == 409
    current = h.ws.incidents[inc["name"]]["properties"]
    assert (current["additionalData"]["commentsCount"], current["severity"]) == (1, "Medium")
    assert [c["properties"]["message"] for c in h.ws.comments(inc["name"])] == [
        "added while the PUT was on its way"
    ]


async def test_put_timestamps_are_normalised_to_7_digits(h: SentinelHarness) -> None:
    reply = await h.put_incident(
        str(uuid.uuid4()), new_body(firstActivityTimeUtc="2024-05-22T12:09:26+02:00")
    )
    assert reply.body["properties"]["firstActivityTimeUtc"] == "2024-05-22T10:09:26.0000000Z"


# --- comments ---------------------------------------------------------------------------------


async def test_comment_create_and_update(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.emu.set_app_name(CLIENT_ID, "sentinel-snow-sync")
    path = h.path("incidents", inc["name"], "comments", "c-1")
    reply = await h.call("PUT", path, json={"properties": {"message": "<p>hello</p>"}})
    assert reply.status == 201
    comment = reply.body
    issued = h.tokens.check(h.token, "https://management.azure.com")[0]
    assert issued is not None
    assert comment["properties"]["author"] == {"objectId": issued.object_id, "name": "sentinel-snow-sync"}
    assert comment["type"] == "Microsoft.SecurityInsights/incidents/comments"
    assert comment["id"] == path
    assert re.fullmatch(r"[0-9a-f-]{36}", comment["etag"])  # unquoted for comments (A.3)
    assert comment["properties"]["createdTimeUtc"] == comment["properties"]["lastModifiedTimeUtc"]
    incident = h.ws.incidents[inc["name"]]
    assert incident["properties"]["additionalData"]["commentsCount"] == 1
    assert incident["etag"] != inc["etag"]
    assert incident["properties"]["lastModifiedTimeUtc"] > inc["properties"]["lastModifiedTimeUtc"]
    reply = await h.call("PUT", path, json={"properties": {"message": "edited"}, "etag": comment["etag"]})
    assert reply.status == 200
    assert reply.body["properties"]["message"] == "edited"
    assert reply.body["properties"]["createdTimeUtc"] == comment["properties"]["createdTimeUtc"]
    assert h.ws.incidents[inc["name"]]["properties"]["additionalData"]["commentsCount"] == 1
    stale = await h.call("PUT", path, json={"properties": {"message": "x"}, "etag": comment["etag"]})
    assert (stale.status, error_code(stale)) == (409, "Conflict")
    assert (await h.call("GET", path)).body == reply.body


async def test_comment_author_defaults_to_the_client_id(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    reply = await h.call(
        "PUT", h.path("incidents", inc["name"], "comments", "c"), json={"properties": {"message": "m"}}
    )
    assert reply.body["properties"]["author"]["name"] == CLIENT_ID
    assert "email" not in reply.body["properties"]["author"]
    assert "userPrincipalName" not in reply.body["properties"]["author"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"properties": {}}, "'message'"),
        ({"properties": {"message": None}}, "'message'"),
        ({"properties": {"message": 5}}, "'message'"),
        ({"properties": {"message": ""}}, "empty"),
        ({"message": "flat"}, "'properties'"),
        ({"properties": {"message": "x" * 30_001}}, "30000"),
        ({"properties": {"message": "\U0001f600" * 15_001}}, "30000"),  # UTF-16 code units
    ],
)
async def test_invalid_comments_are_400(h: SentinelHarness, body: dict[str, Any], fragment: str) -> None:
    inc = h.ws.create_incident(title="t")
    reply = await h.call("PUT", h.path("incidents", inc["name"], "comments", "c"), json=body)
    assert (reply.status, error_code(reply)) == (400, "BadRequest")
    assert fragment in reply.body["error"]["message"]
    assert h.ws.comments(inc["name"]) == []


async def test_comment_of_exactly_30000_characters_is_accepted(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    for i, message in enumerate(("y" * 30_000, "\U0001f600" * 15_000)):
        path = h.path("incidents", inc["name"], "comments", f"c{i}")
        assert (await h.call("PUT", path, json={"properties": {"message": message}})).status == 201


async def test_the_101st_comment_is_rejected(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    for i in range(99):
        h.ws.analyst_comment(inc["name"], f"n{i}")
    path = h.path("incidents", inc["name"], "comments")
    assert (await h.call("PUT", f"{path}/last", json={"properties": {"message": "100th"}})).status == 201
    reply = await h.call("PUT", f"{path}/one-more", json={"properties": {"message": "101st"}})
    assert (reply.status, error_code(reply)) == (400, "BadRequest")
    assert "100" in reply.body["error"]["message"]
    # Updating an existing comment is still allowed at the limit.
    assert (await h.call("PUT", f"{path}/last", json={"properties": {"message": "edit"}})).status == 200
    assert h.ws.incidents[inc["name"]]["properties"]["additionalData"]["commentsCount"] == 100


async def test_comment_get_delete_and_missing(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    made = h.ws.analyst_comment(inc["name"], "by alice", author_upn="alice@contoso.com")
    path = h.path("incidents", inc["name"], "comments", made["name"])
    got = await h.call("GET", path)
    assert got.body["properties"]["author"] == {
        "objectId": h.alice.object_id,
        "email": "alice@contoso.com",
        "userPrincipalName": "alice@contoso.com",
        "name": "Alice Analyst",
    }
    missing = await h.call("GET", h.path("incidents", inc["name"], "comments", "nope"))
    assert (missing.status, error_code(missing)) == (404, "NotFound")
    etag_before = h.ws.incidents[inc["name"]]["etag"]
    deleted = await h.call("DELETE", path)
    assert (deleted.status, deleted.body) == (200, None)
    assert h.ws.incidents[inc["name"]]["properties"]["additionalData"]["commentsCount"] == 0
    assert h.ws.incidents[inc["name"]]["etag"] != etag_before
    assert (await h.call("DELETE", path)).status == 204
    assert (await h.call("GET", path)).status == 404
    reply = await h.call(
        "PUT", h.path("incidents", "nope", "comments", "c"), json={"properties": {"message": "m"}}
    )
    assert (reply.status, error_code(reply)) == (404, "NotFound")


# --- alerts and entities ----------------------------------------------------------------------


async def test_alerts_list_and_counters(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.add_alert(
        inc["name"],
        display_name="Suspicious sign-in",
        severity="High",
        product="Azure AD Identity Protection",
    )
    h.ws.add_alert(inc["name"], display_name="Malware", product="Microsoft Defender for Endpoint")
    h.ws.add_alert(inc["name"], display_name="Malware again")
    reply = await h.call("POST", h.path("incidents", inc["name"], "alerts"))
    assert reply.status == 200
    alerts = reply.body["value"]
    assert [a["properties"]["alertDisplayName"] for a in alerts] == [
        "Suspicious sign-in",
        "Malware",
        "Malware again",
    ]
    first = alerts[0]
    assert (first["kind"], first["type"]) == ("SecurityAlert", "Microsoft.SecurityInsights/Entities")
    assert first["properties"]["severity"] == "High"
    assert first["properties"]["productName"] == "Azure AD Identity Protection"
    assert first["properties"]["systemAlertId"] == first["name"]
    assert first["properties"]["friendlyName"] == "Suspicious sign-in"
    assert parse_instant(first["properties"]["timeGenerated"]) is not None
    assert first["properties"]["status"] == "New"
    data = h.ws.incidents[inc["name"]]["properties"]["additionalData"]
    assert data["alertsCount"] == 3
    assert data["alertProductNames"] == ["Azure AD Identity Protection", "Microsoft Defender for Endpoint"]
    assert h.ws.incidents[inc["name"]]["etag"] != inc["etag"]
    reply = await h.call("POST", h.path("incidents", "nope", "alerts"))
    assert (reply.status, error_code(reply)) == (404, "NotFound")


async def test_entities_list_only_entities_with_metadata(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.add_alert(inc["name"], display_name="an alert")
    h.ws.add_entity(inc["name"], kind="Account", friendly_name="administrator", accountName="administrator")
    h.ws.add_entity(inc["name"], kind="Host", friendly_name="web01", hostName="web01")
    h.ws.add_entity(inc["name"], kind="Account", friendly_name="svc", accountName="svc", ntDomain="CONTOSO")
    reply = await h.call("POST", h.path("incidents", inc["name"], "entities"))
    assert reply.status == 200
    assert [e["kind"] for e in reply.body["entities"]] == ["Account", "Host", "Account"]
    assert reply.body["entities"][2]["properties"] == {
        "friendlyName": "svc",
        "accountName": "svc",
        "ntDomain": "CONTOSO",
    }
    assert reply.body["metaData"] == [
        {"entityKind": "Account", "count": 2},
        {"entityKind": "Host", "count": 1},
    ]
    with pytest.raises(ValueError, match="unknown entity kind 'Spaceship'"):
        h.ws.add_entity(inc["name"], kind="Spaceship", friendly_name="x")


# --- delete -----------------------------------------------------------------------------------


async def test_delete_incident_then_404_then_204(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t")
    h.ws.analyst_comment(inc["name"], "c")
    reply = await h.call("DELETE", h.path("incidents", inc["name"]))
    assert (reply.status, reply.body) == (200, None)
    reply = await h.get_incident(inc["name"])
    assert (reply.status, error_code(reply)) == (404, "NotFound")
    assert set(reply.body["error"]) == {"code", "message"}
    assert (await h.call("DELETE", h.path("incidents", inc["name"]))).status == 204
    assert (await h.call("GET", h.path("incidents"))).body == {"value": []}


# --- direct state access ----------------------------------------------------------------------


async def test_analyst_update_bumps_etag_and_time_without_validation(h: SentinelHarness) -> None:
    inc = h.ws.create_incident(title="t", owner_upn="alice@contoso.com")
    updated = h.ws.analyst_update(
        inc["name"], severity="Critical", labels=["x"], owner_upn=None, description=None
    )
    assert updated["etag"] != inc["etag"]
    assert updated["properties"]["lastModifiedTimeUtc"] > inc["properties"]["lastModifiedTimeUtc"]
    got = (await h.get_incident(inc["name"])).body
    assert got["properties"]["severity"] == "Critical"  # unknown enum values reach the client
    assert got["properties"]["labels"] == [{"labelName": "x", "labelType": "User"}]
    assert got["properties"]["owner"]["objectId"] is None
    assert "description" not in got["properties"]
    with pytest.raises(KeyError, match="no incident 'nope'"):
        h.ws.analyst_update("nope", severity="Low")
    with pytest.raises(ValueError, match=r"no directory user 'mallory@contoso\.com'"):
        h.ws.analyst_update(inc["name"], owner_upn="mallory@contoso.com")


async def test_create_incident_with_explicit_name_and_time(h: SentinelHarness) -> None:
    from datetime import UTC, datetime

    created = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
    inc = h.ws.create_incident(title="old", created=created, name="fixed-name")
    assert inc["properties"]["createdTimeUtc"] == "2024-03-01T12:00:00.1234560Z"
    assert inc["properties"]["lastModifiedTimeUtc"] == "2024-03-01T12:00:00.1234560Z"
    assert (await h.get_incident("fixed-name")).status == 200
    with pytest.raises(ValueError, match="incident 'FIXED-NAME' already exists"):
        h.ws.create_incident(title="dup", name="FIXED-NAME")
    assert h.emu.workspace(SUB.upper(), RG, WS) is h.ws
    with pytest.raises(KeyError, match="missing"):
        h.emu.workspace(SUB, RG, "missing")
