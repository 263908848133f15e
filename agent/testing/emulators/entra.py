"""Entra ID (Azure AD) emulator: OIDC discovery and the client-credentials token endpoints.

Routes (aiohttp route names in brackets, used for per-route faults and call accounting):

* ``GET  /{tenant}/v2.0/.well-known/openid-configuration``  [``oidc.config``]
* ``GET  /common/discovery/instance``                       [``instance.discovery``]
* ``GET  /{tenant}/discovery/v2.0/keys``                    [``keys``]
* ``POST /{tenant}/oauth2/v2.0/token``                      [``token.v2``] scope-based (REFERENCE B.1)
* ``POST /{tenant}/oauth2/token``                           [``token.v1``] resource-based (REFERENCE B.2)

Clients authenticate with a ``client_secret`` (form field or HTTP Basic) or with a certificate
``client_assertion`` (an RS256/PS256 JWT signed by the registered certificate's key, as msal
builds it). Errors carry the full AAD body (REFERENCE B.1). Issued tokens are opaque entries in
the shared :class:`~agent.testing.emulators.common.TokenRegistry`, which the resource emulators check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from aiohttp import web

from agent.testing.emulators.common import (
    Clock,
    Faults,
    Recorder,
    TokenRegistry,
    fault_and_record_middleware,
    json_response,
    normalise_audience,
)

__all__ = ["CLIENT_ASSERTION_TYPE", "EntraApp", "EntraEmulator"]

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ERROR_URI = "https://login.microsoftonline.com/error?code={code}"


@dataclass(slots=True)
class EntraApp:
    """One app registration with its service principal in one tenant."""

    tenant: str
    client_id: str
    object_id: str
    display_name: str
    secret: str | None = None
    secret_expired: bool = False
    certificate_pem: bytes | None = None
    # base64url (unpadded) SHA-1 / SHA-256 certificate thumbprints, as in the JWT x5t headers
    thumbprints: dict[str, str] = field(default_factory=dict)
    # Admin-consented application permissions per resource (normalised audience): they become
    # the token's ``roles`` claim (GRAPH.md A.1).
    roles: dict[str, tuple[str, ...]] = field(default_factory=dict)


class _AadError(Exception):
    """An AAD error response: ``status``, OAuth ``error`` and the AADSTS code/message."""

    def __init__(self, status: int, error: str, code: int, message: str) -> None:
        super().__init__(f"AADSTS{code}: {message}")
        self.status = status
        self.error = error
        self.code = code
        self.message = message


class EntraEmulator:
    """A Microsoft identity platform tenant endpoint for confidential clients.

    ``add_app`` registers tenants implicitly: a tenant is known once an app is registered in it.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        tokens: TokenRegistry,
        faults: Faults | None = None,
        recorder: Recorder | None = None,
        token_lifetime: int = 3599,
    ) -> None:
        self.clock = clock
        self.tokens = tokens
        self.faults = faults or Faults()
        self.recorder = recorder or Recorder()
        self.token_lifetime = token_lifetime
        self.apps: dict[str, EntraApp] = {}
        self.app = web.Application(
            middlewares=[
                fault_and_record_middleware("entra", self.faults, self.recorder, self._fault_response)
            ]
        )
        self.app.router.add_get(
            "/common/discovery/instance", self._instance_discovery, name="instance.discovery"
        )
        self.app.router.add_get(
            "/{tenant}/v2.0/.well-known/openid-configuration", self._oidc, name="oidc.config"
        )
        self.app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys, name="keys")
        self.app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token_v2, name="token.v2")
        self.app.router.add_post("/{tenant}/oauth2/token", self._token_v1, name="token.v1")

    # --- registration -----------------------------------------------------------------------

    def add_app(
        self,
        tenant: str,
        client_id: str,
        *,
        secret: str | None = None,
        certificate_pem: bytes | None = None,
        display_name: str = "sentinel-snow-sync",
    ) -> str:
        """Register an app (client id) in ``tenant`` with a secret and/or a certificate (public
        PEM). Returns the service principal's object id (stable for a tenant/client pair)."""
        object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"entra-sp:{tenant.lower()}:{client_id.lower()}"))
        app = EntraApp(tenant, client_id, object_id, display_name, secret=secret)
        if certificate_pem is not None:
            app.certificate_pem = certificate_pem
            app.thumbprints = _thumbprints(certificate_pem)
        self.apps[client_id.lower()] = app
        return object_id

    def grant_roles(self, client_id: str, resource: str, *roles: str) -> None:
        """Admin consent for application permissions of ``resource`` (e.g. Microsoft Graph's
        ``SecurityIncident.ReadWrite.All``); replaces earlier grants for that resource. Tokens
        issued from now on carry them in ``roles``; with none the claim is left out."""
        self.apps[client_id.lower()].roles[normalise_audience(resource)] = tuple(roles)

    def expire_secret(self, client_id: str) -> None:
        """From now on a secret presented for this app is rejected with AADSTS7000222."""
        self.apps[client_id.lower()].secret_expired = True

    def known_tenant(self, tenant: str) -> bool:
        return any(app.tenant.lower() == tenant.lower() for app in self.apps.values())

    # --- discovery --------------------------------------------------------------------------

    async def _oidc(self, request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self.known_tenant(tenant):
            # At discovery the same AADSTS90002 comes back as ``invalid_tenant`` (REFERENCE B.1).
            return self._error_response(request, _tenant_not_found(tenant, error="invalid_tenant"))
        base = _base_url(request)
        return json_response(
            {
                "issuer": f"{base}/{tenant}/v2.0",
                "authorization_endpoint": f"{base}/{tenant}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/{tenant}/oauth2/v2.0/token",
                "jwks_uri": f"{base}/{tenant}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "tenant_region_scope": "EU",
            }
        )

    async def _instance_discovery(self, request: web.Request) -> web.Response:
        """msal's instance discovery (REFERENCE B.3): vouch for authorities on this host only."""
        endpoint = request.query.get("authorization_endpoint", "")
        parts = urlsplit(endpoint)
        segments = [s for s in parts.path.split("/") if s]
        # msal sends the authority's host without its port, so compare host names only and answer
        # with this server's own host:port.
        if (
            parts.scheme != "https"
            or (parts.hostname or "") != (request.url.host or "").lower()
            or not segments
        ):
            return self._error_response(
                request,
                _AadError(
                    400,
                    "invalid_instance",
                    50049,
                    "Unknown or invalid instance.",
                ),
            )
        host = request.host
        return json_response(
            {
                "tenant_discovery_endpoint": f"https://{host}/{segments[0]}/v2.0/.well-known/openid-configuration",
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            }
        )

    async def _keys(self, request: web.Request) -> web.Response:
        # Issued tokens are opaque registry entries, so there is no signing key to publish.
        if not self.known_tenant(request.match_info["tenant"]):
            return self._error_response(request, _tenant_not_found(request.match_info["tenant"]))
        return json_response({"keys": []})

    # --- token endpoints --------------------------------------------------------------------

    async def _token_v2(self, request: web.Request) -> web.Response:
        try:
            form = await self._token_form(request)
            app = self._authenticate(request, form)
            scope = form.get("scope", "").split()
            # One resource, and only its .default scope, for client credentials (REFERENCE B.1).
            if len(scope) != 1 or not scope[0].endswith("/.default") or len(scope[0]) <= len("/.default"):
                raise _AadError(
                    400,
                    "invalid_scope",
                    70011,
                    "The provided request must include a 'scope' input parameter. The provided value for "
                    f"the input parameter 'scope' is not valid. The scope {' '.join(scope)} is not valid.",
                )
        except _AadError as exc:
            return self._error_response(request, exc)
        issued = self.tokens.issue(
            audience=scope[0],
            tenant=app.tenant,
            client_id=app.client_id,
            lifetime=self.token_lifetime,
            object_id=app.object_id,
            roles=app.roles.get(normalise_audience(scope[0]), ()),
        )
        return json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": issued.token,
            }
        )

    async def _token_v1(self, request: web.Request) -> web.Response:
        try:
            form = await self._token_form(request)
            app = self._authenticate(request, form)
            resource = form.get("resource", "").strip()
            if not resource:
                raise _missing("resource")
        except _AadError as exc:
            return self._error_response(request, exc)
        now = int(self.clock.time())
        issued = self.tokens.issue(
            audience=resource,
            tenant=app.tenant,
            client_id=app.client_id,
            lifetime=self.token_lifetime,
            object_id=app.object_id,
            roles=app.roles.get(normalise_audience(resource), ()),
        )
        # v1 sends every number as a string (REFERENCE B.2).
        return json_response(
            {
                "token_type": "Bearer",
                "expires_in": str(self.token_lifetime),
                "ext_expires_in": str(self.token_lifetime),
                "expires_on": str(int(issued.expires_at)),
                "not_before": str(now),
                "resource": resource,
                "access_token": issued.token,
            }
        )

    async def _token_form(self, request: web.Request) -> dict[str, str]:
        """Parse the form and check the tenant and grant type (in the order Entra does)."""
        tenant = request.match_info["tenant"]
        if not self.known_tenant(tenant):
            raise _tenant_not_found(tenant)
        raw = await request.post()
        form = {k: v for k, v in raw.items() if isinstance(v, str)}
        grant = form.get("grant_type", "")
        if not grant:
            raise _missing("grant_type")
        if grant != "client_credentials":
            raise _AadError(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
            )
        return form

    def _authenticate(self, request: web.Request, form: dict[str, str]) -> EntraApp:
        tenant = request.match_info["tenant"]
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        basic = _basic_credentials(request)
        if basic is not None:
            if client_id and client_id != basic[0]:
                raise _AadError(
                    401,
                    "invalid_client",
                    50148,
                    "The client_id in the Authorization header does not match the client_id in the "
                    "request body.",
                )
            client_id, secret = basic
        if not client_id:
            raise _missing("client_id")
        app = self.apps.get(client_id.lower())
        if app is None or app.tenant.lower() != tenant.lower():
            raise _AadError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
                "This can happen if the application has not been installed by the administrator of the "
                "tenant or consented to by any user in the tenant. You may have sent your authentication "
                "request to the wrong tenant.",
            )
        assertion_type = form.get("client_assertion_type")
        assertion = form.get("client_assertion")
        if assertion_type or assertion:
            if assertion_type != CLIENT_ASSERTION_TYPE:
                raise _AadError(
                    400,
                    "invalid_request",
                    50027,
                    f"The client_assertion_type '{assertion_type}' is not supported; "
                    f"use '{CLIENT_ASSERTION_TYPE}'.",
                )
            self._check_assertion(request, app, assertion or "")
            return app
        if secret is None:
            raise _AadError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or "
                "'client_secret'.",
            )
        if app.secret is None or secret != app.secret:
            raise _AadError(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the "
                f"client secret value, not the client secret ID, for a secret added to app "
                f"'{app.client_id}'.",
            )
        if app.secret_expired:
            raise _AadError(
                401,
                "invalid_client",
                7000222,
                f"The provided client secret keys for app '{app.client_id}' are expired. Visit the Azure "
                "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider "
                "using certificate credentials for added security: https://aka.ms/certCreds.",
            )
        return app

    def _check_assertion(self, request: web.Request, app: EntraApp, assertion: str) -> None:
        """Verify a private_key_jwt client assertion (RFC 7523) against the app's certificate.

        The AADSTS codes for the individual failures are Entra's as far as known; the exact codes
        for audience and issuer mismatches are not documented in REFERENCE B and are best guesses.
        """
        try:
            header_b64, payload_b64, signature_b64 = assertion.split(".")
            header = orjson.loads(_b64decode(header_b64))
            claims = orjson.loads(_b64decode(payload_b64))
            signature = _b64decode(signature_b64)
        except (ValueError, binascii.Error, orjson.JSONDecodeError) as exc:
            raise _AadError(401, "invalid_client", 50027, "JWT token is invalid or malformed.") from exc
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _AadError(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        if app.certificate_pem is None:
            raise _AadError(
                401,
                "invalid_client",
                700027,
                f"Client assertion failed signature validation. No certificate is registered for app "
                f"'{app.client_id}'.",
            )
        for name in ("x5t", "x5t#S256"):
            if name in header and str(header[name]).rstrip("=") != app.thumbprints[name]:
                raise _AadError(
                    401,
                    "invalid_client",
                    700027,
                    f"The certificate with identifier used to sign the client assertion is not registered on "
                    f"application. [Reason - The key was not found., Thumbprint of key used by client: "
                    f"'{header[name]}'.]",
                )
        signing_input = f"{header_b64}.{payload_b64}".encode()
        if not _verify_signature(app.certificate_pem, str(header.get("alg", "")), signing_input, signature):
            raise _AadError(401, "invalid_client", 700027, "Client assertion failed signature validation.")
        self._check_claims(request, app, claims)

    def _check_claims(self, request: web.Request, app: EntraApp, claims: dict[str, Any]) -> None:
        tenant = request.match_info["tenant"]
        base = _base_url(request)
        audiences = {f"{base}/{tenant}/oauth2/v2.0/token".lower(), f"{base}/{tenant}/oauth2/token".lower()}
        aud = claims.get("aud")
        if not isinstance(aud, str) or aud.lower() not in audiences:
            raise _AadError(
                401,
                "invalid_client",
                700212,
                f"The audience '{aud}' in the client assertion is not valid; expected the token endpoint.",
            )
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise _AadError(
                401,
                "invalid_client",
                700023,
                "Client assertion issuer does not match: the 'iss' and 'sub' claims must both be the "
                "client id.",
            )
        now = self.clock.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, (int, float)) or exp <= now or (isinstance(nbf, (int, float)) and nbf > now):
            raise _AadError(
                401,
                "invalid_client",
                700024,
                f"Client assertion is not within its valid time range. Current time: {_stamp(now)}, "
                f"expiry time of assertion {_stamp(exp) if isinstance(exp, (int, float)) else 'missing'}.",
            )

    # --- error bodies -----------------------------------------------------------------------

    def _error_response(self, request: web.Request, exc: _AadError) -> web.Response:
        # Entra echoes msal's client-request-id as the correlation id.
        body = _error_body(exc, request.headers.get("client-request-id"), self.clock.time())
        return json_response(body, status=exc.status)

    def _fault_response(self, status: int, retry_after: int) -> web.Response:
        """Injected 429/5xx in AAD's shape (``temporarily_unavailable``)."""
        if status == 429:
            exc = _AadError(
                429,
                "temporarily_unavailable",
                50196,
                "The server is temporarily too busy to handle the request.",
            )
        else:
            exc = _AadError(
                status, "temporarily_unavailable", 90033, "A transient error has occurred. Please try again."
            )
        headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
        return json_response(_error_body(exc, None, self.clock.time()), status=status, headers=headers)


# --- helpers ----------------------------------------------------------------------------------


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _error_body(exc: _AadError, correlation_id: str | None, now: float) -> dict[str, Any]:
    """The full AAD error object (REFERENCE B.1), with ``\\r\\n``-separated trace lines."""
    trace_id = str(uuid.uuid4())
    correlation = correlation_id or str(uuid.uuid4())
    timestamp = _stamp(now)
    return {
        "error": exc.error,
        "error_description": (
            f"AADSTS{exc.code}: {exc.message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation}"
            f"\r\nTimestamp: {timestamp}"
        ),
        "error_codes": [exc.code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation,
        "error_uri": _ERROR_URI.format(code=exc.code),
    }


def _tenant_not_found(tenant: str, error: str = "invalid_request") -> _AadError:
    return _AadError(
        400,
        error,
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
        "into the correct cloud. Check with your subscription administrator, this may happen if there "
        "are no active subscriptions for the tenant.",
    )


def _missing(parameter: str) -> _AadError:
    return _AadError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{parameter}'.",
    )


def _basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """``Authorization: Basic`` with form-url-encoded id and secret (RFC 6749 2.3.1)."""
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise _AadError(401, "invalid_client", 7000216, "The Authorization header is malformed.") from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise _AadError(401, "invalid_client", 7000216, "The Authorization header is malformed.")
    return unquote(client_id.replace("+", " ")), unquote(secret.replace("+", " "))


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _thumbprints(certificate_pem: bytes) -> dict[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(certificate_pem).public_bytes(Encoding.DER)
    return {"x5t": _b64url(hashlib.sha1(der).digest()), "x5t#S256": _b64url(hashlib.sha256(der).digest())}


def _verify_signature(certificate_pem: bytes, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """RS256 (msal with a SHA-1 thumbprint) or PS256 (msal with a certificate or PFX)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = x509.load_pem_x509_certificate(certificate_pem).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        return False
    if alg == "RS256":
        pad: padding.AsymmetricPadding = padding.PKCS1v15()
    elif alg == "PS256":
        pad = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
    else:
        return False
    try:
        key.verify(signature, signing_input, pad, hashes.SHA256())
    except InvalidSignature:
        return False
    return True
