"""Auth providers against the Entra and ServiceNow emulators over TLS: caching, refresh ahead
of expiry, single flight, certificate credentials, error texts without secrets, proxies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from agent.connectors.entra import EntraAuth, load_certificate
from agent.connectors.http import HttpClient
from agent.connectors.retry import RetryPolicy
from agent.connectors.servicenow.auth import ServiceNowBasicAuth, ServiceNowOAuth
from agent.errors import AuthError, ConfigError, PermanentError, TransientError
from agent.log import log
from agent.testing.emulators.common import Clock, EmulatorServer, Recorder, TLSMaterial, TokenRegistry
from agent.testing.emulators.entra import EntraEmulator
from agent.testing.emulators.servicenow import ServiceNowEmulator
from tests.test_http import ConnectProxy, use_proxy

TENANT = "5d0f2a9c-1b3e-4c5d-8e7f-0a1b2c3d4e5f"
CLIENT_ID = "8e1d2c3b-4a5f-4e6d-9c7b-1a2b3c4d5e6f"
CERT_CLIENT_ID = "1f2e3d4c-5b6a-4987-8a6b-5c4d3e2f1a0b"
SECRET = "entra-secret~for.tests-0123"
SNOW_USER = "svc_sentinel_sync"
SNOW_PASSWORD = "snow-password-for-tests-0123"
SNOW_CLIENT = "sync-oauth-client"
SNOW_CLIENT_SECRET = "snow-oauth-secret-for-tests-0123"
ARM = "https://management.azure.com"


class FakeClock:
    """The agent's clock, moved by the test (the emulators keep their own)."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    tls: TLSMaterial
    clock: Clock
    tokens: TokenRegistry
    recorder: Recorder
    entra: EntraEmulator
    snow: ServiceNowEmulator
    entra_url: str
    snow_url: str
    cert_file: Path

    def entra_auth(self, **kwargs: Any) -> EntraAuth:
        kwargs.setdefault("client_secret", SECRET)
        return EntraAuth(
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            authority_host=self.entra_url,
            ca_bundle=self.tls.ca_file,
            **kwargs,
        )

    def snow_oauth(self, **kwargs: Any) -> ServiceNowOAuth:
        kwargs.setdefault("password", SNOW_PASSWORD)
        return ServiceNowOAuth(
            instance_url=self.snow_url,
            client_id=SNOW_CLIENT,
            client_secret=SNOW_CLIENT_SECRET,
            username=SNOW_USER,
            ca_bundle=self.tls.ca_file,
            **kwargs,
        )

    def token_calls(self) -> int:
        return self.recorder.count(system="entra", route="token.v2")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[TLSMaterial, Path, bytes]:
    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = ca.issue_cert("sentinel-snow-sync", key_type=trustme.KeyType.RSA)
    cert_file = base / "app.pem"
    cert_file.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
    return TLSMaterial(base), cert_file, leaf.cert_chain_pems[0].bytes()


@pytest.fixture
async def env(pki: tuple[TLSMaterial, Path, bytes]) -> AsyncIterator[Env]:
    tls, cert_file, cert_pem = pki
    clock = Clock()
    tokens = TokenRegistry(clock)
    recorder = Recorder()
    entra = EntraEmulator(clock=clock, tokens=tokens, recorder=recorder)
    entra.add_app(TENANT, CLIENT_ID, secret=SECRET)
    entra.add_app(TENANT, CERT_CLIENT_ID, certificate_pem=cert_pem)
    snow = ServiceNowEmulator(clock=clock, tokens=tokens, recorder=recorder)
    snow.add_api_user(SNOW_USER, SNOW_PASSWORD)
    snow.add_oauth_client(SNOW_CLIENT, SNOW_CLIENT_SECRET)
    servers = [EmulatorServer(entra.app, tls), EmulatorServer(snow.app, tls)]
    for server in servers:
        await server.start()
    try:
        yield Env(
            tls, clock, tokens, recorder, entra, snow, servers[0].base_url, servers[1].base_url, cert_file
        )
    finally:
        for server in servers:
            await server.stop()


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []
    log.sinks.append(captured.append)
    yield captured
    log.sinks.remove(captured.append)


def bearer(header: dict[str, str]) -> str:
    scheme, _, token = header["Authorization"].partition(" ")
    assert scheme == "Bearer" and token
    return token


# --- Entra ----------------------------------------------------------------------------------


async def test_entra_token_is_cached_and_valid_for_arm(env: Env) -> None:
    auth = env.entra_auth()
    try:
        first = bearer(await auth.header())
        second = bearer(await auth.header())
    finally:
        await auth.close()
    assert first == second
    assert env.token_calls() == 1 and auth.token_requests == 1 and auth.token_failures == 0
    issued, problem = env.tokens.check(first, ARM)
    assert problem == "" and issued is not None and issued.client_id == CLIENT_ID


async def test_entra_token_is_refreshed_ahead_of_expiry(env: Env) -> None:
    clock = FakeClock()
    auth = env.entra_auth(clock=clock, refresh_margin=300.0)
    try:
        first = bearer(await auth.header())
        clock.now += 3599 - 301  # still outside the margin
        assert bearer(await auth.header()) == first
        clock.now += 2  # now inside the last 300 s
        second = bearer(await auth.header())
    finally:
        await auth.close()
    assert second != first
    assert env.token_calls() == 2


async def test_entra_force_refresh_gets_a_new_token(env: Env) -> None:
    auth = env.entra_auth()
    try:
        first = bearer(await auth.header())
        second = bearer(await auth.header(force_refresh=True))
    finally:
        await auth.close()
    assert first != second and env.token_calls() == 2


async def test_entra_single_flight(env: Env) -> None:
    auth = env.entra_auth()
    try:
        headers = await asyncio.gather(*(auth.header() for _ in range(20)))
        forced = await asyncio.gather(*(auth.header(force_refresh=True) for _ in range(5)))
    finally:
        await auth.close()
    assert len({bearer(h) for h in headers}) == 1
    assert len({bearer(h) for h in forced}) == 1
    # One token for the first burst, one for the forced burst: the waiters reuse it.
    assert env.token_calls() == 2


async def test_entra_certificate_credential(env: Env) -> None:
    auth = EntraAuth(
        tenant_id=TENANT,
        client_id=CERT_CLIENT_ID,
        authority_host=env.entra_url,
        certificate_file=env.cert_file,
        ca_bundle=env.tls.ca_file,
    )
    try:
        token = bearer(await auth.header())
    finally:
        await auth.close()
    issued, problem = env.tokens.check(token, ARM)
    assert problem == "" and issued is not None and issued.client_id == CERT_CLIENT_ID


def test_certificate_thumbprint_and_bad_files(pki: tuple[TLSMaterial, Path, bytes], tmp_path: Path) -> None:
    import hashlib
    import ssl

    _, cert_file, cert_pem = pki
    credential = load_certificate(cert_file)
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
    assert credential["thumbprint"] == hashlib.sha1(der).hexdigest()
    assert "PRIVATE KEY" in credential["private_key"]
    only_cert = tmp_path / "cert-only.pem"
    only_cert.write_bytes(cert_pem)
    with pytest.raises(ConfigError, match="private key and a PEM certificate"):
        load_certificate(only_cert)
    with pytest.raises(ConfigError, match="cannot read"):
        load_certificate(tmp_path / "missing.pem")


async def test_entra_wrong_secret_is_an_auth_error_without_the_secret(
    env: Env, records: list[dict[str, Any]]
) -> None:
    wrong = "not-the-right-secret-0987"
    auth = env.entra_auth(client_secret=wrong)
    try:
        with pytest.raises(AuthError, match="AADSTS7000215") as info:
            await auth.header()
    finally:
        await auth.close()
    err = info.value
    assert err.system == "entra" and err.code == "AADSTS7000215"
    assert auth.token_requests == 1 and auth.token_failures == 1
    assert str(err).startswith("entra: invalid_client: AADSTS7000215: Invalid client secret provided.")
    assert "Trace ID" not in str(err) and "\n" not in str(err)
    assert wrong not in str(err) and wrong not in repr(records)


async def test_entra_expired_secret(env: Env) -> None:
    env.entra.expire_secret(CLIENT_ID)
    auth = env.entra_auth()
    try:
        with pytest.raises(AuthError, match="AADSTS7000222") as info:
            await auth.header()
    finally:
        await auth.close()
    assert info.value.code == "AADSTS7000222" and "expired" in str(info.value)


async def test_entra_unknown_tenant_is_an_auth_error(env: Env) -> None:
    auth = EntraAuth(
        tenant_id="00000000-0000-0000-0000-00000000dead",
        client_id=CLIENT_ID,
        client_secret=SECRET,
        authority_host=env.entra_url,
        ca_bundle=env.tls.ca_file,
    )
    try:
        with pytest.raises(AuthError, match="Unable to get authority configuration") as info:
            await auth.header()
    finally:
        await auth.close()
    assert info.value.system == "entra" and SECRET not in str(info.value)
    assert auth.token_requests == 1 and auth.token_failures == 1  # discovery failed: no token


async def test_entra_server_error_is_transient(env: Env) -> None:
    env.entra.faults.once("token.v2", 500)
    auth = env.entra_auth()
    try:
        with pytest.raises(TransientError, match=r"entra POST .*: HTTP 500") as info:
            await auth.header()
    finally:
        await auth.close()
    assert info.value.system == "entra" and SECRET not in str(info.value)


async def test_entra_without_the_ca_fails_verification(env: Env) -> None:
    auth = EntraAuth(
        tenant_id=TENANT, client_id=CLIENT_ID, client_secret=SECRET, authority_host=env.entra_url
    )
    try:
        with pytest.raises(AuthError, match="TLS verification failed") as info:
            await auth.header()
    finally:
        await auth.close()
    assert info.value.code == "TLSVerifyFailed" and "ca_bundle" in str(info.value)
    assert env.token_calls() == 0


async def test_entra_honours_https_proxy(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    port = env.entra_url.rsplit(":", 1)[1]
    async with ConnectProxy() as proxy:
        use_proxy(monkeypatch, proxy.url)
        auth = env.entra_auth()
        try:
            await auth.header()
        finally:
            await auth.close()
        assert proxy.tunnels and set(proxy.tunnels) == {f"CONNECT 127.0.0.1:{port}"}

        proxy.tunnels.clear()
        use_proxy(monkeypatch, proxy.url, no_proxy="127.0.0.1")
        auth = env.entra_auth()
        try:
            await auth.header()
        finally:
            await auth.close()
        assert proxy.tunnels == []


def test_entra_needs_one_credential() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        EntraAuth(tenant_id=TENANT, client_id=CLIENT_ID)
    with pytest.raises(ValueError, match="exactly one"):
        EntraAuth(tenant_id=TENANT, client_id=CLIENT_ID, client_secret="x", certificate_file="y")
    with pytest.raises(ValueError, match="authority or tenant_id"):
        EntraAuth(client_id=CLIENT_ID, client_secret="x")
    auth = EntraAuth(authority="https://login.example/t/", client_id=CLIENT_ID, client_secret="x")
    assert auth.authority == "https://login.example/t" and auth.scope == ARM + "/.default"


# --- ServiceNow -----------------------------------------------------------------------------


async def test_snow_oauth_password_grant_then_cache(env: Env, records: list[dict[str, Any]]) -> None:
    auth = env.snow_oauth()
    first = bearer(await auth.header())
    assert bearer(await auth.header()) == first
    assert auth.token_requests == 1
    _, problem = env.tokens.check(first, env.snow.audience)
    assert problem == ""
    grants = [r["grant"] for r in records if r["event"] == "snow_oauth_token"]
    assert grants == ["password"]


async def test_snow_oauth_refreshes_ahead_of_expiry_with_the_refresh_token(
    env: Env, records: list[dict[str, Any]]
) -> None:
    clock = FakeClock()
    auth = env.snow_oauth(clock=clock, refresh_margin=120.0)
    first = bearer(await auth.header())
    clock.now += 1799 - 121
    assert bearer(await auth.header()) == first
    clock.now += 2
    second = bearer(await auth.header())
    assert second != first and auth.token_requests == 2
    assert [r["grant"] for r in records if r["event"] == "snow_oauth_token"] == ["password", "refresh_token"]


async def test_snow_oauth_falls_back_to_password_when_refresh_fails(
    env: Env, records: list[dict[str, Any]]
) -> None:
    clock = FakeClock()
    auth = env.snow_oauth(clock=clock)
    await auth.header()
    env.clock.advance(101 * 86400)  # the refresh token (100 days) has expired on the instance
    clock.now += 101 * 86400
    token = bearer(await auth.header())
    _, problem = env.tokens.check(token, env.snow.audience)
    assert problem == ""
    assert any(r["event"] == "snow_oauth_refresh_failed" for r in records)
    assert auth.token_requests == 3 and auth.token_failures == 1  # password, refused refresh, password
    assert [r["grant"] for r in records if r["event"] == "snow_oauth_token"] == ["password", "password"]


async def test_snow_oauth_bad_password(env: Env, records: list[dict[str, Any]]) -> None:
    wrong = "wrong-snow-password-4567"
    auth = env.snow_oauth(password=wrong)
    with pytest.raises(AuthError, match="servicenow: server_error: access_denied") as info:
        await auth.header()
    assert info.value.system == "servicenow" and info.value.code == "server_error"
    assert auth.token_requests == 1 and auth.token_failures == 1
    assert "access_denied" in str(info.value)
    text = str(info.value) + repr(records)
    for secret in (wrong, SNOW_CLIENT_SECRET):
        assert secret not in text


async def test_snow_oauth_401_refreshes_once_and_succeeds(env: Env, records: list[dict[str, Any]]) -> None:
    auth = env.snow_oauth()
    url = env.snow_url + "/api/now/table/incident"
    async with HttpClient(
        "servicenow", auth=auth, ca_bundle=env.tls.ca_file, retry=RetryPolicy.disabled()
    ) as http:
        await http.request("GET", url, params={"sysparm_limit": 1})
        env.tokens.revoke_all()  # e.g. an admin revoked the tokens
        mark = env.recorder.mark()
        resp = await http.request("GET", url, params={"sysparm_limit": 1})
    assert resp.status == 200
    calls = [(c.route, c.status) for c in env.recorder.since(mark)]
    assert calls == [("table.list", 401), ("oauth.token", 200), ("table.list", 200)]
    assert http.auth_refreshes == 1
    text = repr(records)
    for secret in (SNOW_PASSWORD, SNOW_CLIENT_SECRET):
        assert secret not in text


async def test_basic_auth_and_persistent_401(env: Env, records: list[dict[str, Any]]) -> None:
    url = env.snow_url + "/api/now/table/incident"
    good = ServiceNowBasicAuth(SNOW_USER, SNOW_PASSWORD)
    async with HttpClient("servicenow", auth=good, ca_bundle=env.tls.ca_file) as http:
        assert (await http.request("GET", url, params={"sysparm_limit": 1})).status == 200
    wrong = "wrong-basic-password-2468"
    bad = ServiceNowBasicAuth(SNOW_USER, wrong)
    mark = env.recorder.mark()
    async with HttpClient("servicenow", auth=bad, ca_bundle=env.tls.ca_file) as http:
        with pytest.raises(PermanentError, match=r"HTTP 401 \(User Not Authenticated") as info:
            await http.request("GET", url)
    assert info.value.status == 401 and info.value.code == "User Not Authenticated"
    assert [c.status for c in env.recorder.since(mark)] == [401, 401]
    assert wrong not in repr(records) + str(info.value)
    assert SNOW_PASSWORD not in repr(records)
