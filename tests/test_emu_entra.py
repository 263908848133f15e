"""The Entra ID emulator against real msal over TLS, and its error contract (REFERENCE B)."""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import aiohttp
import msal
import orjson
import pytest
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from agent.testing.emulators.common import Clock, EmulatorServer, Faults, Recorder, TLSMaterial, TokenRegistry
from agent.testing.emulators.entra import CLIENT_ASSERTION_TYPE, EntraEmulator

TENANT = "0b6c0f3e-3c54-4f3c-9a4e-5b2f1c9d8e7a"
CLIENT_ID = "7d3f4a1b-2c5e-4f60-8a9b-0c1d2e3f4a5b"
SECRET = "s3cret~value.for-tests"
CERT_CLIENT_ID = "c3a1e2b4-6d5f-4e7a-9b8c-1d0e2f3a4b5c"
ARM_SCOPE = "https://management.azure.com/.default"
ARM = "https://management.azure.com"


@dataclass
class Env:
    emulator: EntraEmulator
    server: EmulatorServer
    tls: TLSMaterial
    clock: Clock
    tokens: TokenRegistry
    recorder: Recorder
    key: rsa.RSAPrivateKey
    cert_pem: bytes

    @property
    def base(self) -> str:
        return self.server.base_url

    @property
    def authority(self) -> str:
        return f"{self.base}/{TENANT}"

    @property
    def token_v2(self) -> str:
        return f"{self.base}/{TENANT}/oauth2/v2.0/token"

    @property
    def token_v1(self) -> str:
        return f"{self.base}/{TENANT}/oauth2/token"


def _self_signed(key: rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sentinel-snow-sync")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def env(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[Env]:
    clock = Clock()
    tokens = TokenRegistry(clock)
    recorder = Recorder()
    emulator = EntraEmulator(clock=clock, tokens=tokens, faults=Faults(0), recorder=recorder)
    emulator.add_app(TENANT, CLIENT_ID, secret=SECRET)
    cert_pem = _self_signed(rsa_key)
    emulator.add_app(TENANT, CERT_CLIENT_ID, certificate_pem=cert_pem)
    tls = TLSMaterial(tmp_path)
    server = EmulatorServer(emulator.app, tls)
    await server.start()
    try:
        yield Env(emulator, server, tls, clock, tokens, recorder, rsa_key, cert_pem)
    finally:
        await server.stop()


def _session(ca_file: Path) -> requests.Session:
    # trust_env=False: REQUESTS_CA_BUNDLE would otherwise override verify (REFERENCE B.3).
    s = requests.Session()
    s.verify = str(ca_file)
    s.trust_env = False
    return s


def _msal_token(
    env: Env, credential: Any, client_id: str = CLIENT_ID, repeat: int = 1, **kwargs: Any
) -> list[dict[str, Any]]:
    with _session(env.tls.ca_file) as http:
        kwargs.setdefault("instance_discovery", False)
        app = msal.ConfidentialClientApplication(
            client_id, client_credential=credential, authority=env.authority, http_client=http, **kwargs
        )
        return [app.acquire_token_for_client([ARM_SCOPE]) for _ in range(repeat)]


async def _post(env: Env, url: str, form: dict[str, str], **kwargs: Any) -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(env.tls.ca_file))
    async with aiohttp.ClientSession() as http, http.post(url, data=form, ssl=ctx, **kwargs) as resp:
        return resp.status, orjson.loads(await resp.read())


async def _get(env: Env, url: str) -> tuple[int, dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=str(env.tls.ca_file))
    async with aiohttp.ClientSession() as http, http.get(url, ssl=ctx) as resp:
        return resp.status, orjson.loads(await resp.read())


def _secret_form(**extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "scope": ARM_SCOPE,
        **extra,
    }


def _assert_aad_error(body: dict[str, Any], error: str, code: int) -> None:
    assert body["error"] == error
    assert body["error_codes"] == [code]
    description = body["error_description"]
    assert description.startswith(f"AADSTS{code}: ")
    lines = description.split("\r\n")
    assert [line.split(":")[0] for line in lines[1:]] == ["Trace ID", "Correlation ID", "Timestamp"]
    assert lines[1] == f"Trace ID: {body['trace_id']}"
    assert lines[2] == f"Correlation ID: {body['correlation_id']}"
    assert lines[3] == f"Timestamp: {body['timestamp']}"
    datetime.strptime(body["timestamp"], "%Y-%m-%d %H:%M:%SZ")
    assert body["error_uri"].endswith(f"?code={code}")


def _jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = b64(orjson.dumps({"alg": "RS256", "typ": "JWT", **(header or {})}))
    body = b64(orjson.dumps(claims))
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{b64(signature)}"


def _assertion_claims(env: Env, **override: Any) -> dict[str, Any]:
    now = env.clock.time()
    claims: dict[str, Any] = {
        "aud": env.token_v2,
        "iss": CERT_CLIENT_ID,
        "sub": CERT_CLIENT_ID,
        "iat": int(now),
        "exp": int(now + 600),
        "jti": "a1",
    }
    claims.update(override)
    return claims


# --- msal ---------------------------------------------------------------------------------------


async def test_msal_secret_without_instance_discovery_and_cache(env: Env) -> None:
    first, second = await asyncio.to_thread(_msal_token, env, SECRET, repeat=2)
    assert first["token_type"] == "Bearer"
    assert first["token_source"] == "identity_provider"
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]
    issued, reason = env.tokens.check(first["access_token"], ARM)
    assert reason == ""
    assert issued is not None and issued.client_id == CLIENT_ID and issued.tenant == TENANT
    assert issued.object_id == env.emulator.apps[CLIENT_ID].object_id
    assert env.recorder.count("entra", "POST", "token.v2", 200) == 1
    assert env.recorder.count("entra", "GET", "oidc.config", 200) == 1
    assert env.recorder.count(route="instance.discovery") == 0


async def test_msal_with_instance_discovery(env: Env) -> None:
    # msal asks login.microsoftonline.com unless given a discovery URL; point it at the emulator.
    discovery = f"{env.base}/common/discovery/instance"
    (result,) = await asyncio.to_thread(_msal_token, env, SECRET, instance_discovery=discovery)
    assert env.tokens.check(result["access_token"], ARM)[1] == ""
    assert env.recorder.count("entra", "GET", "instance.discovery", 200) == 1
    assert env.recorder.count("entra", "GET", "oidc.config", 200) == 1


async def test_instance_discovery_rejects_foreign_authority(env: Env) -> None:
    url = f"{env.base}/common/discovery/instance?api-version=1.0&authorization_endpoint=https://evil.example/t/oauth2/v2.0/authorize"
    status, body = await _get(env, url)
    assert status == 400
    _assert_aad_error(body, "invalid_instance", 50049)


def _msal_with_env_ca_bundle(env: Env, trust_env: bool) -> dict[str, Any]:
    with _session(env.tls.ca_file) as http:
        http.trust_env = trust_env
        app = msal.ConfidentialClientApplication(
            CLIENT_ID,
            client_credential=SECRET,
            authority=env.authority,
            http_client=http,
            instance_discovery=False,
        )
        result: dict[str, Any] = app.acquire_token_for_client([ARM_SCOPE])
        return result


async def test_requests_ca_bundle_in_environment_needs_trust_env_false(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bogus = tmp_path / "bogus-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bogus))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)

    result = await asyncio.to_thread(_msal_with_env_ca_bundle, env, False)
    assert env.tokens.check(result["access_token"], ARM)[1] == ""

    # The same session with trust_env left on takes the bogus bundle and fails TLS verification.
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        await asyncio.to_thread(_msal_with_env_ca_bundle, env, True)


async def test_msal_wrong_secret_returns_error_dict(env: Env) -> None:
    (result,) = await asyncio.to_thread(_msal_token, env, "not-the-secret")
    assert "access_token" not in result
    assert result["error"] == "invalid_client"
    assert 7000215 in result["error_codes"]
    assert env.recorder.count("entra", "POST", "token.v2", 401) == 1


async def test_msal_certificate_with_sha1_thumbprint_rs256(env: Env) -> None:
    thumbprint = x509.load_pem_x509_certificate(env.cert_pem).fingerprint(hashes.SHA1()).hex()
    credential = {"private_key": _key_pem(env.key), "thumbprint": thumbprint}
    (result,) = await asyncio.to_thread(_msal_token, env, credential, CERT_CLIENT_ID)
    issued, reason = env.tokens.check(result["access_token"], ARM)
    assert reason == ""
    assert issued is not None and issued.client_id == CERT_CLIENT_ID


async def test_msal_certificate_with_public_certificate_ps256(env: Env) -> None:
    credential = {"private_key": _key_pem(env.key), "public_certificate": env.cert_pem.decode()}
    (result,) = await asyncio.to_thread(_msal_token, env, credential, CERT_CLIENT_ID)
    assert env.tokens.check(result["access_token"], ARM)[1] == ""


async def test_msal_certificate_signed_by_another_key_is_rejected(env: Env) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # The right thumbprint but a different key: the signature cannot verify.
    thumbprint = x509.load_pem_x509_certificate(env.cert_pem).fingerprint(hashes.SHA1()).hex()
    credential = {"private_key": _key_pem(other), "thumbprint": thumbprint}
    (result,) = await asyncio.to_thread(_msal_token, env, credential, CERT_CLIENT_ID)
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]


# --- client assertions by hand ------------------------------------------------------------------


async def _assertion_post(env: Env, assertion: str) -> tuple[int, dict[str, Any]]:
    form = {
        "grant_type": "client_credentials",
        "client_id": CERT_CLIENT_ID,
        "client_assertion_type": CLIENT_ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": ARM_SCOPE,
    }
    return await _post(env, env.token_v2, form)


async def test_assertion_valid_by_hand(env: Env) -> None:
    status, body = await _assertion_post(env, _jwt(env.key, _assertion_claims(env)))
    assert status == 200
    assert env.tokens.check(body["access_token"], ARM)[1] == ""


@pytest.mark.parametrize(
    ("override", "code"),
    [
        ({"aud": "https://login.microsoftonline.com/x/oauth2/v2.0/token"}, 700212),
        ({"iss": CLIENT_ID}, 700023),
        ({"sub": "someone-else"}, 700023),
        ({"exp": 1_000_000}, 700024),
    ],
)
async def test_assertion_claims_are_checked(env: Env, override: dict[str, Any], code: int) -> None:
    status, body = await _assertion_post(env, _jwt(env.key, _assertion_claims(env, **override)))
    assert status == 401
    _assert_aad_error(body, "invalid_client", code)


async def test_assertion_expires_with_the_emulator_clock(env: Env) -> None:
    assertion = _jwt(env.key, _assertion_claims(env))
    env.clock.advance(601)
    status, body = await _assertion_post(env, assertion)
    assert status == 401
    _assert_aad_error(body, "invalid_client", 700024)


async def test_assertion_with_foreign_thumbprint_and_garbage(env: Env) -> None:
    claims = _assertion_claims(env)
    status, body = await _assertion_post(env, _jwt(env.key, claims, {"x5t": "AAAAAAAAAAAAAAAAAAAAAAAAAAA"}))
    assert status == 401
    _assert_aad_error(body, "invalid_client", 700027)
    status, body = await _assertion_post(env, "not.a-jwt")
    assert status == 401
    _assert_aad_error(body, "invalid_client", 50027)


# --- v1 and the error contract ------------------------------------------------------------------


async def test_v1_endpoint_uses_string_numbers(env: Env) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
        "resource": "https://management.azure.com/",
    }
    before = int(env.clock.time())
    status, body = await _post(env, env.token_v1, form)
    assert status == 200
    assert set(body) == {
        "token_type",
        "expires_in",
        "ext_expires_in",
        "expires_on",
        "not_before",
        "resource",
        "access_token",
    }
    for key in ("expires_in", "ext_expires_in", "expires_on", "not_before"):
        assert isinstance(body[key], str) and body[key].isdigit(), key
    assert body["expires_in"] == "3599"
    assert body["resource"] == "https://management.azure.com/"
    assert before <= int(body["not_before"]) <= int(body["expires_on"]) - 3599
    assert env.tokens.check(body["access_token"], ARM)[1] == ""
    assert env.recorder.count("entra", "POST", "token.v1", 200) == 1


async def test_v2_body_has_integer_numbers_and_accepts_basic_auth(env: Env) -> None:
    # RFC 6749 2.3.1: id and secret are form-url-encoded before base64.
    basic = base64.b64encode(f"{quote_plus(CLIENT_ID)}:{quote_plus(SECRET)}".encode()).decode()
    form = {"grant_type": "client_credentials", "scope": ARM_SCOPE, "client_info": "1"}
    status, body = await _post(env, env.token_v2, form, headers={"Authorization": f"Basic {basic}"})
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3599 and body["ext_expires_in"] == 3599
    assert "refresh_token" not in body


async def test_v1_requires_resource(env: Env) -> None:
    status, body = await _post(
        env,
        env.token_v1,
        {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET},
    )
    assert status == 400
    _assert_aad_error(body, "invalid_request", 900144)


async def test_expired_token_is_rejected_after_clock_advance(env: Env) -> None:
    status, body = await _post(env, env.token_v2, _secret_form())
    assert status == 200
    token = body["access_token"]
    assert env.tokens.check(token, ARM)[1] == ""
    assert env.tokens.check(token, "https://graph.microsoft.com")[1] == "audience"
    env.clock.advance(3600)
    issued, reason = env.tokens.check(token, ARM)
    assert reason == "expired"
    assert issued is not None and issued.expires_at <= env.clock.time()


@pytest.mark.parametrize(
    ("form", "status", "error", "code"),
    [
        (_secret_form(client_secret="wrong"), 401, "invalid_client", 7000215),
        (_secret_form(client_id="99999999-0000-0000-0000-000000000000"), 400, "unauthorized_client", 700016),
        (_secret_form(grant_type="password"), 400, "unsupported_grant_type", 70003),
        (_secret_form(scope="https://management.azure.com/user_impersonation"), 400, "invalid_scope", 70011),
        (
            _secret_form(scope=f"{ARM_SCOPE} https://graph.microsoft.com/.default"),
            400,
            "invalid_scope",
            70011,
        ),
        ({k: v for k, v in _secret_form().items() if k != "client_secret"}, 401, "invalid_client", 7000218),
        ({k: v for k, v in _secret_form().items() if k != "grant_type"}, 400, "invalid_request", 900144),
    ],
)
async def test_token_errors(env: Env, form: dict[str, str], status: int, error: str, code: int) -> None:
    got_status, body = await _post(env, env.token_v2, form)
    assert got_status == status
    _assert_aad_error(body, error, code)


async def test_correlation_id_echoes_client_request_id(env: Env) -> None:
    status, body = await _post(
        env, env.token_v2, _secret_form(client_secret="wrong"), headers={"client-request-id": "req-123"}
    )
    assert status == 401
    assert body["correlation_id"] == "req-123"


async def test_expired_secret(env: Env) -> None:
    env.emulator.expire_secret(CLIENT_ID)
    status, body = await _post(env, env.token_v2, _secret_form())
    assert status == 401
    _assert_aad_error(body, "invalid_client", 7000222)


async def test_unknown_tenant(env: Env) -> None:
    status, body = await _post(env, f"{env.base}/no-such-tenant/oauth2/v2.0/token", _secret_form())
    assert status == 400
    _assert_aad_error(body, "invalid_request", 90002)
    status, body = await _get(env, f"{env.base}/no-such-tenant/v2.0/.well-known/openid-configuration")
    assert status == 400
    _assert_aad_error(body, "invalid_tenant", 90002)


async def test_client_registered_in_another_tenant_is_unknown_here(env: Env) -> None:
    env.emulator.add_app("other-tenant", "0000aaaa-1111-2222-3333-444455556666", secret=SECRET)
    form = _secret_form(client_id="0000aaaa-1111-2222-3333-444455556666")
    status, body = await _post(env, env.token_v2, form)
    assert status == 400
    _assert_aad_error(body, "unauthorized_client", 700016)


async def test_openid_configuration_is_https_on_request_host(env: Env) -> None:
    status, body = await _get(env, f"{env.authority}/v2.0/.well-known/openid-configuration")
    assert status == 200
    assert body["issuer"] == f"{env.authority}/v2.0"
    assert body["token_endpoint"] == env.token_v2
    assert body["authorization_endpoint"] == f"{env.authority}/oauth2/v2.0/authorize"
    assert body["jwks_uri"] == f"{env.authority}/discovery/v2.0/keys"
    status, keys = await _get(env, body["jwks_uri"])
    assert status == 200 and keys == {"keys": []}


async def test_injected_faults_look_like_aad(env: Env) -> None:
    env.emulator.faults.once("token.v2", 503)
    ctx = ssl.create_default_context(cafile=str(env.tls.ca_file))
    async with aiohttp.ClientSession() as http:
        async with http.post(env.token_v2, data=_secret_form(), ssl=ctx) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "1"
            body = orjson.loads(await resp.read())
        _assert_aad_error(body, "temporarily_unavailable", 90033)
        async with http.post(env.token_v2, data=_secret_form(), ssl=ctx) as resp:
            assert resp.status == 200
    assert env.emulator.faults.injected == {"503": 1}
    assert [c.status for c in env.recorder.calls] == [503, 200]


def test_object_id_is_stable_per_app() -> None:
    clock = Clock()
    a = EntraEmulator(clock=clock, tokens=TokenRegistry(clock))
    b = EntraEmulator(clock=clock, tokens=TokenRegistry(clock))
    assert a.add_app(TENANT, CLIENT_ID, secret="x") == b.add_app(TENANT, CLIENT_ID, secret="y")
    assert a.add_app(TENANT, CERT_CLIENT_ID) != a.apps[CLIENT_ID].object_id
