"""The HTTP choke point against small real TLS servers on 127.0.0.1: retries, Retry-After,
401 refresh, status mapping, pacing, redaction, proxies."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.connectors.http import HttpClient
from agent.connectors.http_errors import error_details, redact_url
from agent.connectors.retry import RetryPolicy, parse_retry_after
from agent.errors import (
    ConfigError,
    EditConflict,
    Forbidden,
    NotFound,
    NotSent,
    PermanentError,
    RateLimited,
    TransientError,
)
from agent.log import log, register_secret
from agent.testing.emulators.common import EmulatorServer, TLSMaterial, json_response

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSMaterial:
    return TLSMaterial(tmp_path_factory.mktemp("tls"))


class Served:
    """A one-route TLS server whose handler the test supplies; counts requests."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.requests: list[web.Request] = []

    @property
    def url(self) -> str:
        return self.server.base_url + "/r"


@pytest.fixture
async def serve(tls: TLSMaterial) -> AsyncIterator[Callable[[Handler], Awaitable[Served]]]:
    servers: list[EmulatorServer] = []

    async def start(handler: Handler) -> Served:
        app = web.Application()
        served: Served

        async def counting(request: web.Request) -> web.StreamResponse:
            served.requests.append(request)
            return await handler(request)

        app.router.add_route("*", "/r", counting)
        server = EmulatorServer(app, tls)
        served = Served(server)
        await server.start()
        servers.append(server)
        return served

    yield start
    for server in servers:
        await server.stop()


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []
    log.sinks.append(captured.append)
    yield captured
    log.sinks.remove(captured.append)


def client(tls: TLSMaterial, sleeps: Sleeps | None = None, **kwargs: Any) -> HttpClient:
    kwargs.setdefault("retry", RetryPolicy(attempts=4, total=600.0))
    return HttpClient("sentinel", ca_bundle=tls.ca_file, sleep=sleeps or Sleeps(), **kwargs)


def sequence(*responses: Callable[[], web.StreamResponse]) -> Handler:
    """Answer the n-th request with the n-th response (the last one repeats)."""
    state = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        n = min(state["n"], len(responses) - 1)
        state["n"] += 1
        return responses[n]()

    return handler


def ok(body: Any = None) -> Callable[[], web.StreamResponse]:
    return lambda: json_response(body if body is not None else {"ok": True})


def status(code: int, body: Any = None, headers: dict[str, str] | None = None) -> Callable[[], web.Response]:
    return lambda: json_response(body or {"error": {"code": f"E{code}", "message": "m"}}, code, headers)


# --- success, retries, Retry-After ----------------------------------------------------------


async def test_get_decodes_json_and_counts(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(ok({"value": [1, 2]})))
    async with client(tls) as http:
        resp = await http.request("GET", srv.url, params={"api-version": "2025-09-01", "$top": 5})
    assert resp.status == 200 and resp.body == {"value": [1, 2]}
    req = srv.requests[0]
    assert req.query["api-version"] == "2025-09-01" and req.query["$top"] == "5"
    assert req.headers["Accept"] == "application/json"
    assert req.headers["User-Agent"].startswith("sentinel-snow-sync/")
    assert (http.requests, http.retries, http.throttled) == (1, 0, 0)


async def test_params_are_percent_encoded_once(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(ok()))
    value = "properties/labels/any(l: l/labelName eq 'a+b&c=d%20e é')"
    async with client(tls) as http:
        await http.request("GET", srv.url, params={"$filter": value})
    assert srv.requests[0].query["$filter"] == value


async def test_empty_204_body_is_none(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(lambda: web.Response(status=204)))
    async with client(tls) as http:
        resp = await http.request("DELETE", srv.url)
    assert resp.status == 204 and resp.body is None


async def test_429_waits_retry_after_then_succeeds(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(status(429, headers={"Retry-After": "7"}), ok()))
    sleeps = Sleeps()
    async with client(tls, sleeps) as http:
        resp = await http.request("GET", srv.url)
    assert resp.status == 200
    # Full jitter on the first retry is at most base (0.5 s), so Retry-After is the floor.
    assert sleeps.calls == [7.0]
    assert (http.requests, http.retries, http.throttled) == (2, 1, 1)


async def test_429_surfaces_rate_limited_with_retry_after(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(status(429, headers={"Retry-After": "3"})))
    async with client(tls, retry=RetryPolicy.disabled()) as http:
        with pytest.raises(RateLimited, match="HTTP 429") as info:
            await http.request("GET", srv.url)
    assert info.value.retry_after == 3.0 and info.value.status == 429
    assert len(srv.requests) == 1


async def test_retry_after_beyond_the_time_budget_gives_up_at_once(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(status(429, headers={"Retry-After": "120"}), ok()))
    sleeps = Sleeps()
    async with client(tls, sleeps, retry=RetryPolicy(attempts=5, total=60.0)) as http:
        with pytest.raises(RateLimited, match="HTTP 429"):
            await http.request("GET", srv.url)
    assert sleeps.calls == [] and len(srv.requests) == 1


async def test_5xx_is_retried_then_surfaced_after_the_attempt_cap(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(status(503)))
    sleeps = Sleeps()
    async with client(tls, sleeps, retry=RetryPolicy(attempts=3, total=600.0, base=1.0, cap=4.0)) as http:
        with pytest.raises(TransientError, match="HTTP 503") as info:
            await http.request("GET", srv.url)
    assert info.value.status == 503 and not isinstance(info.value, RateLimited)
    assert len(srv.requests) == 3
    assert len(sleeps.calls) == 2
    assert 0.0 <= sleeps.calls[0] <= 1.0 and 0.0 <= sleeps.calls[1] <= 2.0
    assert http.retries == 2


async def test_5xx_then_success(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(status(500), status(502), ok({"n": 3})))
    async with client(tls) as http:
        resp = await http.request("PUT", srv.url, json={"a": 1})
    assert resp.body == {"n": 3} and len(srv.requests) == 3


async def test_non_idempotent_post_is_not_retried_after_5xx(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(status(500), ok()))
    sleeps = Sleeps()
    async with client(tls, sleeps) as http:
        with pytest.raises(TransientError, match=r"POST .*: HTTP 500") as info:
            await http.request("POST", srv.url, json={"short_description": "x"})
    assert info.value.status == 500
    assert len(srv.requests) == 1 and sleeps.calls == [] and http.retries == 0


async def test_patch_marked_idempotent_is_retried_after_5xx(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(status(500), ok()))
    async with client(tls) as http:
        await http.request("PATCH", srv.url, json={"state": "2"}, idempotent=True)
    assert len(srv.requests) == 2


async def test_post_is_retried_after_429(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(status(429, headers={"Retry-After": "1"}), ok()))
    async with client(tls) as http:
        resp = await http.request("POST", srv.url, json={})
    assert resp.status == 200 and len(srv.requests) == 2


async def test_post_is_retried_when_the_connection_is_refused(tls: TLSMaterial) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sleeps = Sleeps()
    async with client(tls, sleeps, retry=RetryPolicy(attempts=3, total=600.0)) as http:
        with pytest.raises(NotSent, match=r"connection failed \(ClientConnectorError") as info:
            await http.request("POST", f"https://127.0.0.1:{port}/r", json={})
    assert info.value.status is None
    assert len(sleeps.calls) == 2 and http.requests == 3


async def test_dropped_connection_retries_get_but_not_post(tls: TLSMaterial, serve: Any) -> None:
    state = {"n": 0}

    async def drop_first(request: web.Request) -> web.StreamResponse:
        state["n"] += 1
        if state["n"] == 1:
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        return json_response({"ok": True})

    srv = await serve(drop_first)
    async with client(tls) as http:
        assert (await http.request("GET", srv.url)).status == 200
    assert len(srv.requests) == 2

    state["n"] = 0
    srv2 = await serve(drop_first)
    async with client(tls) as http:
        with pytest.raises(TransientError, match=r"connection failed \(ServerDisconnectedError") as info:
            await http.request("POST", srv2.url, json={})
    assert not isinstance(info.value, NotSent) and info.value.status is None
    assert len(srv2.requests) == 1


# --- 401 and token refresh ------------------------------------------------------------------


class FakeAuth:
    """Hands out ``stale`` until forced, then ``fresh``."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    async def header(self, force_refresh: bool = False) -> dict[str, str]:
        self.calls.append(force_refresh)
        token = "fresh-token-value" if force_refresh or len(self.calls) > 2 else "stale-token-value"
        return {"Authorization": f"Bearer {token}"}


def require_token(token: str) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {token}":
            return json_response({"error": {"code": "ExpiredAuthenticationToken", "message": "expired"}}, 401)
        return json_response({"ok": True})

    return handler


async def test_401_forces_one_refresh_then_succeeds(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(require_token("fresh-token-value"))
    auth = FakeAuth()
    async with client(tls, auth=auth) as http:
        resp = await http.request("POST", srv.url, json={})
    assert resp.status == 200
    assert auth.calls == [False, True]
    assert len(srv.requests) == 2 and http.auth_refreshes == 1


async def test_persistent_401_surfaces_after_exactly_one_refresh(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(require_token("never-issued"))
    auth = FakeAuth()
    async with client(tls, auth=auth) as http:
        with pytest.raises(PermanentError, match=r"HTTP 401 \(ExpiredAuthenticationToken") as info:
            await http.request("GET", srv.url)
    assert info.value.status == 401 and info.value.code == "ExpiredAuthenticationToken"
    assert auth.calls == [False, True]
    assert len(srv.requests) == 2


async def test_auth_provider_transient_failure_counts_as_not_sent(tls: TLSMaterial, serve: Any) -> None:
    class Flaky:
        def __init__(self) -> None:
            self.n = 0

        async def header(self, force_refresh: bool = False) -> dict[str, str]:
            self.n += 1
            if self.n == 1:
                raise TransientError("entra", "POST", "https://login/t/token", 503)
            return {"Authorization": "Bearer ok"}

    srv = await serve(sequence(ok()))
    async with client(tls, auth=Flaky()) as http:
        # A POST may be retried: without a token it never left.
        assert (await http.request("POST", srv.url, json={})).status == 200
    assert len(srv.requests) == 1


async def test_unauthenticated_request_skips_the_provider(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(ok()))
    auth = FakeAuth()
    async with client(tls, auth=auth) as http:
        await http.request("POST", srv.url, data={"grant_type": "password"}, authenticate=False)
    assert auth.calls == [] and "Authorization" not in srv.requests[0].headers


# --- status mapping -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "body", "exc", "expect_code", "expect_detail"),
    [
        (
            404,
            {"error": {"code": "NotFound", "message": "Incident x not found"}},
            NotFound,
            "NotFound",
            "Incident x",
        ),
        (
            403,
            {
                "error": {"message": "Operation Failed", "detail": "Data Policy Exception: \n\tmandatory"},
                "status": "failure",
            },
            Forbidden,
            "Operation Failed",
            "Data Policy Exception:",
        ),
        (
            409,
            {"error": {"code": "Conflict", "message": "Newer version exists"}},
            EditConflict,
            "Conflict",
            "Newer",
        ),
        (400, {"error": {"code": "BadRequest", "message": "bad"}}, PermanentError, "BadRequest", "bad"),
        (
            401,
            {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid secret.\r\nTrace ID: 1"},
            PermanentError,
            "invalid_client",
            "AADSTS7000215: Invalid secret.",
        ),
        (
            405,
            {"error": {"code": "UnsupportedApiVersion", "message": "no"}},
            PermanentError,
            "UnsupportedApiVersion",
            "no",
        ),
    ],
)
async def test_status_mapping(
    tls: TLSMaterial,
    serve: Any,
    code: int,
    body: Any,
    exc: type[Exception],
    expect_code: str,
    expect_detail: str,
) -> None:
    srv = await serve(sequence(status(code, body)))
    async with client(tls) as http:
        with pytest.raises(exc, match=rf"HTTP {code} \({re.escape(expect_code)}") as info:
            await http.request("GET", srv.url)
    err = info.value
    assert type(err) is exc
    assert isinstance(err, PermanentError) and err.status == code
    assert err.code == expect_code and err.detail is not None and err.detail.startswith(expect_detail)
    assert "\n" not in str(err) and "Trace ID" not in str(err)
    assert len(srv.requests) == 1


async def test_html_502_is_transient_without_detail(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(
        sequence(lambda: web.Response(status=502, text="<html>gateway</html>", content_type="text/html"))
    )
    async with client(tls, retry=RetryPolicy.disabled()) as http:
        with pytest.raises(TransientError, match=r"HTTP 502$") as info:
            await http.request("GET", srv.url)
    assert info.value.status == 502 and info.value.detail is None


async def test_e7_malformed_json_in_2xx_is_transient(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(
        sequence(lambda: web.Response(status=200, text='{"value": [', content_type="application/json"))
    )
    async with client(tls, retry=RetryPolicy.disabled()) as http:
        with pytest.raises(TransientError, match="InvalidJson") as info:
            await http.request("GET", srv.url)
    assert not isinstance(info.value, PermanentError)
    assert info.value.code == "InvalidJson" and info.value.status == 200


async def test_e7_html_answer_is_transient_and_says_what_it_likely_is(tls: TLSMaterial, serve: Any) -> None:
    page = "<html><body>Your instance is hibernating</body></html>"
    srv = await serve(sequence(lambda: web.Response(status=200, text=page, content_type="text/html")))
    async with HttpClient("servicenow", ca_bundle=tls.ca_file, retry=RetryPolicy.disabled()) as http:
        with pytest.raises(TransientError, match="NotJson: ServiceNow answered HTML") as info:
            await http.request("POST", srv.url, json={}, idempotent=False)
    err = info.value
    assert err.code == "NotJson" and err.status == 200
    assert err.detail == "ServiceNow answered HTML, not JSON (hibernating instance, login page or proxy?)"
    assert "hibernating</body>" not in str(err)  # the page itself stays out of the message


async def test_e7_html_on_an_error_status_is_transient_too(tls: TLSMaterial, serve: Any) -> None:
    # A proxy's block page comes with 403: still not an answer of the API about the request.
    srv = await serve(
        sequence(lambda: web.Response(status=403, text="<h1>Blocked</h1>", content_type="text/html"))
    )
    async with client(tls, retry=RetryPolicy.disabled()) as http:
        with pytest.raises(TransientError, match="answered HTML, not JSON"):
            await http.request("GET", srv.url)


async def test_unexpected_success_status_is_an_error(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(ok()))
    async with client(tls) as http:
        with pytest.raises(PermanentError, match="UnexpectedStatus"):
            await http.request("PUT", srv.url, json={}, expected=(201,))


async def test_e7_redirects_are_reported_not_followed(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(
        sequence(
            lambda: web.Response(
                status=302, headers={"Location": "https://login.elsewhere.invalid/sso?token=abc123"}
            )
        )
    )
    async with client(tls, auth=FakeAuth(), retry=RetryPolicy.disabled()) as http:
        with pytest.raises(TransientError, match=r"HTTP 302 \(Redirected") as info:
            await http.request("GET", srv.url)
    assert info.value.status == 302 and len(srv.requests) == 1
    assert info.value.code == "Redirected"
    assert "https://login.elsewhere.invalid/sso" in str(info.value) and "abc123" not in str(info.value)


def test_error_details_shapes() -> None:
    assert error_details({"error": {"code": "C", "message": "M"}}) == ("C", "M")
    assert error_details({"error": {"message": "User Not Authenticated", "detail": "Required"}}) == (
        "User Not Authenticated",
        "Required",
    )
    assert error_details({"error_description": "access_denied", "error": "server_error"}) == (
        "server_error",
        "access_denied",
    )
    assert error_details("plain text failure") == (None, "plain text failure")
    assert error_details("<html>x</html>") == (None, None)
    assert error_details(None) == (None, None)
    assert error_details({"error": None}) == (None, None)
    data_policy = {
        "error": {
            "message": "Operation Failed",
            "detail": "Data Policy Exception: \n\tThe following fields are mandatory: "
            "Resolution code, Close notes",
        },
        "status": "failure",
    }
    assert error_details(data_policy) == (
        "Operation Failed",
        "Data Policy Exception: The following fields are mandatory: Resolution code, Close notes",
    )
    assert error_details("failed via http://bob:hunter2@proxy.example:3128/") == (
        None,
        "failed via http://bob:***@proxy.example:3128/",
    )
    assert error_details({"error": {"code": "C", "message": "x" * 1000}})[1] == "x" * 300 + "…"


def test_parse_retry_after() -> None:
    assert parse_retry_after("10") == 10.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now=now) == 0.0


# --- pacing ---------------------------------------------------------------------------------


async def test_remaining_allowances_are_kept_per_bucket(tls: TLSMaterial, serve: Any) -> None:
    def with_remaining(reads: str) -> Callable[[], web.Response]:
        return lambda: json_response(
            {},
            200,
            {
                "x-ms-ratelimit-remaining-subscription-reads": reads,
                "x-ms-ratelimit-remaining-tenant-writes": "900",
            },
        )

    def writes_only() -> web.Response:
        return json_response({}, 200, {"x-ms-ratelimit-remaining-subscription-writes": "199"})

    srv = await serve(sequence(with_remaining("249"), with_remaining("5"), writes_only))
    async with client(tls) as http:
        await http.request("GET", srv.url)
        assert http.ratelimit_remaining == {"subscription-reads": 249, "tenant-writes": 900}
        await http.request("GET", srv.url)
        assert http.ratelimit_remaining["subscription-reads"] == 5
        await http.request("PUT", srv.url, json={})
        assert http.ratelimit_remaining["subscription-writes"] == 199
        assert http.ratelimit_remaining["subscription-reads"] == 5


# --- TLS, proxies, config -------------------------------------------------------------------


async def test_unknown_ca_is_a_permanent_tls_error(tls: TLSMaterial, serve: Any) -> None:
    srv = await serve(sequence(ok()))
    sleeps = Sleeps()
    async with HttpClient("servicenow", sleep=sleeps) as http:
        with pytest.raises(PermanentError, match="TLSVerifyFailed") as info:
            await http.request("GET", srv.url)
    assert info.value.code == "TLSVerifyFailed" and "ca_bundle" in str(info.value)
    assert sleeps.calls == [] and srv.requests == []


def test_bad_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[agent\] ca_bundle"):
        HttpClient("sentinel", ca_bundle=tmp_path / "missing.pem")


async def test_closed_client_refuses_requests(tls: TLSMaterial) -> None:
    http = client(tls)
    await http.close()
    with pytest.raises(RuntimeError, match="closed"):
        await http.request("GET", "https://127.0.0.1:1/r")


class ConnectProxy:
    """A tiny HTTP CONNECT proxy on 127.0.0.1 that records the tunnels it opened."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> ConnectProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = (await reader.readline()).decode()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        method, target, _ = request_line.split(" ", 2)
        self.tunnels.append(f"{method} {target}")
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def use_proxy(monkeypatch: pytest.MonkeyPatch, url: str, no_proxy: str | None = None) -> None:
    """Point HTTPS_PROXY at ``url`` with a clean proxy environment otherwise."""
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", url)
    if no_proxy is not None:
        monkeypatch.setenv("NO_PROXY", no_proxy)


async def test_https_proxy_from_the_environment_is_used(
    tls: TLSMaterial, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = await serve(sequence(ok({"via": "proxy"})))
    async with ConnectProxy() as proxy:
        use_proxy(monkeypatch, proxy.url)
        async with client(tls) as http:
            resp = await http.request("GET", srv.url)
    assert resp.body == {"via": "proxy"}
    assert proxy.tunnels == [f"CONNECT 127.0.0.1:{srv.server.port}"]


async def test_no_proxy_bypasses_the_proxy(
    tls: TLSMaterial, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    srv = await serve(sequence(ok()))
    async with ConnectProxy() as proxy:
        use_proxy(monkeypatch, proxy.url, no_proxy="127.0.0.1,localhost")
        async with client(tls) as http:
            await http.request("GET", srv.url)
    assert proxy.tunnels == [] and len(srv.requests) == 1


# --- redaction ------------------------------------------------------------------------------


def test_redact_url() -> None:
    url = (
        "https://user:pw@inst.example/oauth_token.do?client_secret=s3cr3t-value&access_token=tok-abc"
        "&refresh_token=r&code=c&sysparm_query=a%3Db&$skipToken=b2Zmc2V0&api-version=1&x-sig=q"
    )
    text = redact_url(url)
    for secret in ("s3cr3t-value", "tok-abc", "refresh_token=r&", "code=c", ":pw@", "x-sig=q"):
        assert secret not in text
    assert "sysparm_query=a%3Db" in text and "$skipToken=b2Zmc2V0" in text and "api-version=1" in text
    assert len(redact_url("https://h/p?q=" + "x" * 1000)) < 320


async def test_no_token_or_secret_in_logs_or_errors(
    tls: TLSMaterial, serve: Any, records: list[dict[str, Any]]
) -> None:
    token = "eyJ0eXAi.secret-bearer-token.sig"
    secret = "client-secret-abcdef"
    register_secret(secret)

    class StaticAuth:
        async def header(self, force_refresh: bool = False) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"}

    async def echo_then_fail(request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            return json_response({"error": {"code": "E", "message": f"bad header {token}"}}, 500)
        return json_response({"access_token": "returned-" + token}, 200)

    srv = await serve(echo_then_fail)
    errors: list[str] = []
    async with client(tls, auth=StaticAuth(), retry=RetryPolicy(attempts=2, total=600.0)) as http:
        with pytest.raises(TransientError, match="HTTP 500") as info:
            await http.request("GET", srv.url + f"?access_token={token}&client_secret={secret}")
        errors.append(str(info.value))
        await http.request(
            "POST",
            srv.url,
            data={"client_secret": secret, "password": secret},
            authenticate=False,
            sensitive=True,
        )
        await http.request("POST", srv.url, json={"note": f"ends with {secret}"})
    text = repr(records) + "".join(errors)
    assert records, "the client logged nothing at all"
    assert any(r["event"] == "http_retry" for r in records)
    assert any(r["event"] == "http_body" for r in records)
    assert secret not in text
    assert "secret-bearer-token" not in text
