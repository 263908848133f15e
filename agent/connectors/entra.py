"""Entra ID tokens for ARM and Microsoft Graph (:class:`EntraAuth`), for
:class:`agent.connectors.http.HttpClient`.

Client credentials through msal (secret or certificate), cached and refreshed ahead of expiry;
msal is synchronous, so it runs in a worker thread behind one lock (one token request in flight,
however many requests wait for it).

Every secret and every issued token is registered with :func:`agent.log.register_secret`, and
error texts carry only the remote's error code and the first line of its description.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from agent.connectors.auth import CachedBearer, Token, seconds
from agent.connectors.http_errors import redact_url
from agent.connectors.retry import parse_retry_after
from agent.connectors.trust import build_ssl_context
from agent.errors import AuthError, ConfigError, RateLimited, TransientError
from agent.log import log, register_secret

_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
_KEY_BLOCK = re.compile(rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.S)
_AADSTS = re.compile(r"AADSTS\d+")


def load_certificate(path: str | Path) -> dict[str, str]:
    """msal's certificate credential from one PEM file holding the private key and certificate.

    Returns ``{"private_key", "thumbprint" (SHA-1 hex of the DER certificate),
    "public_certificate"}``; the certificate is sent as ``x5c`` so the tenant can accept
    subject-name/issuer authentication. Raises :class:`ConfigError` on a missing or odd file.
    """
    where = "[oauth] certificate_file"
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror or exc}"]) from None
    cert = _CERT_BLOCK.search(pem)
    key = _KEY_BLOCK.search(pem)
    if cert is None or key is None:
        raise ConfigError([f"{where}: {path} must hold a PEM private key and a PEM certificate"])
    try:
        der = ssl.PEM_cert_to_DER_cert(cert.group(0).decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ConfigError([f"{where}: the certificate in {path} is not valid PEM"]) from None
    return {
        "private_key": key.group(0).decode("ascii"),
        "thumbprint": hashlib.sha1(der).hexdigest(),  # msal's x5t: SHA-1 by protocol, not for security
        "public_certificate": cert.group(0).decode("ascii"),
    }


def _environment_proxies() -> dict[str, str]:
    """``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` as requests wants them (``no`` dropped)."""
    return {k: v for k, v in urllib.request.getproxies().items() if k in ("http", "https", "all")}


def _trusting_adapter(context: ssl.SSLContext) -> Any:
    """A requests transport that verifies with ``context`` (and nothing else)."""
    from requests.adapters import HTTPAdapter

    class TrustAdapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            kwargs["ssl_context"] = context
            super().init_poolmanager(*args, **kwargs)

        def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
            kwargs["ssl_context"] = context
            return super().proxy_manager_for(proxy, **kwargs)

        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            # requests would load certifi's bundle into the context here; the context already
            # holds the trust (the OS store plus ca_bundle) and verifies.
            super().cert_verify(conn, url, False, cert)
            conn.cert_reqs = "CERT_REQUIRED"

    return TrustAdapter()


class _MsalHttp:
    """The ``http_client`` handed to msal: a requests session with our trust, proxy and timeout.

    requests trusts certifi's bundle, not the operating system's store, so behind a
    TLS-inspecting proxy whose CA only the OS trusts, token calls would fail while ARM calls
    work (REFERENCE E.10). The session therefore verifies with the same SSL context as the
    aiohttp side (:func:`agent.connectors.trust.build_ssl_context`: the OS store plus ``ca_bundle``).
    ``trust_env`` is off because ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` in the environment
    would override verification (REFERENCE B.3); the proxy settings are therefore read from
    the environment here, ``NO_PROXY`` included.
    """

    def __init__(self, ca_bundle: str | None, timeout: float) -> None:
        import requests  # msal's own dependency

        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = True
        self.session.mount("https://", _trusting_adapter(build_ssl_context(ca_bundle)))
        self.session.proxies = _environment_proxies()
        self.timeout = timeout
        self.last_status: int | None = None
        self.last_retry_after: float | None = None

    def _kwargs(self, url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        host = urlsplit(url).hostname or ""
        if self.session.proxies and urllib.request.proxy_bypass(host):
            # A None value removes the session's proxy for this request (requests.merge_setting).
            kwargs["proxies"] = dict.fromkeys(self.session.proxies)
        return kwargs

    def post(self, url: str, **kwargs: Any) -> Any:
        return self._seen(self.session.post(url, **self._kwargs(url, kwargs)))

    def get(self, url: str, **kwargs: Any) -> Any:
        return self._seen(self.session.get(url, **self._kwargs(url, kwargs)))

    def _seen(self, response: Any) -> Any:
        # msal reports a failed discovery or a throttled token request without the status or the
        # Retry-After (see EntraAuth._failure and _acquire).
        self.last_status = getattr(response, "status_code", None)
        headers = getattr(response, "headers", None) or {}
        self.last_retry_after = parse_retry_after(headers.get("Retry-After"))
        return response

    def close(self) -> None:
        self.session.close()


class EntraAuth(CachedBearer):
    """Bearer tokens for ARM from Entra ID (client credentials, msal).

    Give either ``authority`` (``https://login.microsoftonline.com/<tenant>``) or ``tenant_id``
    (+ ``authority_host``), and either ``scope`` or ``management_url``. Exactly one of
    ``client_secret`` and ``certificate_file`` (PEM: private key + certificate).
    """

    def __init__(
        self,
        *,
        client_id: str,
        authority: str | None = None,
        tenant_id: str | None = None,
        authority_host: str = "https://login.microsoftonline.com",
        client_secret: str | None = None,
        certificate_file: str | Path | None = None,
        scope: str | None = None,
        management_url: str = "https://management.azure.com",
        ca_bundle: str | Path | None = None,
        timeout: float = 30.0,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if authority is None:
            if not tenant_id:
                raise ValueError("EntraAuth needs authority or tenant_id")
            authority = f"{authority_host.rstrip('/')}/{tenant_id}"
        if (client_secret is None) == (certificate_file is None):
            raise ValueError("EntraAuth needs exactly one of client_secret and certificate_file")
        self.client_id = client_id
        self.authority = authority.rstrip("/")
        self.scope = scope or management_url.rstrip("/") + "/.default"
        self.ca_bundle = str(ca_bundle) if ca_bundle else None
        self.timeout = timeout
        self.refresh_margin = refresh_margin
        self.token_requests = 0
        self.token_failures = 0
        self._clock = clock
        self._credential: str | dict[str, str]
        if client_secret is not None:
            register_secret(client_secret)
            self._credential = client_secret
        else:
            assert certificate_file is not None
            self._credential = load_certificate(certificate_file)
            register_secret(self._credential["private_key"])
        self._app: Any = None
        self._http: _MsalHttp | None = None
        self._token: Token | None = None
        self._lock = asyncio.Lock()

    async def _obtain(self) -> Token:
        with self._counted():  # an authority that cannot be discovered fails the request too
            return await asyncio.to_thread(self._acquire)  # msal is synchronous

    def _acquire(self) -> Token:
        """Runs in a worker thread: a new token from Entra, bypassing msal's cache."""
        app = self._msal_app()
        # Our cache decides when to refresh, so msal's own (wall-clock) cache must not answer.
        app.remove_tokens_for_client()
        started = self._clock()
        try:
            result = app.acquire_token_for_client(scopes=[self.scope])
        except Exception as exc:
            raise self._failure(exc, "POST") from None
        if not isinstance(result, dict) or "access_token" not in result:
            status = self._http.last_status if self._http is not None else None
            if status == 429 or (status or 0) >= 500 or _field(result, "error") == "temporarily_unavailable":
                # msal hands a 429 back as an error dict like a wrong secret (REFERENCE B.3):
                # Entra is throttling or busy (AADSTS50196), which a retry later fixes.
                code = _field(result, "error") or "temporarily_unavailable"
                where = redact_url(self.authority)
                if status == 429:
                    wait = self._http.last_retry_after if self._http is not None else None
                    raise RateLimited("entra", "POST", where, status, code, retry_after=wait)
                raise TransientError("entra", "POST", where, status, code)
            raise _entra_error(result)
        value = str(result["access_token"])
        register_secret(value)
        expires_in = seconds(result.get("expires_in"), default=3599.0)
        log.info("entra_token", client_id=self.client_id, expires_in=int(expires_in))
        return Token(value, started + expires_in)

    def _msal_app(self) -> Any:
        # Built lazily: msal discovers the authority over the network in its constructor.
        if self._app is None:
            import msal

            self._http = _MsalHttp(self.ca_bundle, self.timeout)
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._credential,
                    authority=self.authority,
                    instance_discovery=False,
                    http_client=self._http,
                    timeout=self.timeout,
                )
            except Exception as exc:
                status = self._http.last_status
                self._http.close()
                self._http = None
                raise self._failure(exc, "GET", status) from None
        return self._app

    def _failure(self, exc: Exception, method: str, status: int | None = None) -> Exception:
        """msal/requests exceptions -> ours: transient for network trouble and 5xx, else AuthError."""
        import msal
        import requests

        where = redact_url(self.authority)
        if isinstance(exc, requests.exceptions.SSLError):
            detail = f"TLS verification failed talking to Entra ID at {where}"
            detail += " (is the CA in [agent] ca_bundle?)"
            return AuthError("entra", detail, code="TLSVerifyFailed")
        if isinstance(exc, requests.exceptions.RequestException):
            return TransientError("entra", method, where, _status_of(exc), type(exc).__name__)
        if isinstance(exc, msal.exceptions.MsalServiceError):
            # msal raises this for a 5xx from the token endpoint ("HTTP Error: 503").
            found = re.search(r"\b([1-5]\d\d)\b", str(exc))
            status = int(found.group(1)) if found else None
            if status is None or status >= 500 or status == 429:
                return TransientError("entra", method, where, status, "ServiceError")
            return AuthError("entra", _first_line(str(exc)), code=f"HTTP {status}")
        if isinstance(exc, ValueError):
            # msal's "Unable to get authority configuration for ...": an unknown tenant or host,
            # or the discovery endpoint is down for a while (5xx, 429): only then worth a retry.
            if status is not None and (status >= 500 or status == 429):
                return TransientError("entra", method, where, status, "AuthorityUnavailable")
            return AuthError("entra", _first_line(str(exc)), code="authority")
        return exc

    async def close(self) -> None:
        """Close msal's HTTP session."""
        if self._http is not None:
            http, self._http = self._http, None
            await asyncio.to_thread(http.close)
        self._app = None


def _entra_error(result: Any) -> AuthError:
    """``{"error", "error_description", "error_codes"}`` -> AuthError with the AADSTS code."""
    if not isinstance(result, Mapping):
        return AuthError("entra", "no token in the response")
    error = str(result.get("error") or "unknown_error")
    description = _first_line(str(result.get("error_description") or ""))
    codes = result.get("error_codes")
    aadsts = _AADSTS.search(description)
    code = (
        aadsts.group(0) if aadsts else (f"AADSTS{codes[0]}" if isinstance(codes, list) and codes else error)
    )
    return AuthError("entra", f"{error}: {description}" if description else error, code=code)


def _field(result: Any, key: str) -> str:
    value = result.get(key) if isinstance(result, Mapping) else None
    return value if isinstance(value, str) else ""


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0].strip() if text.strip() else ""
    return line[:300]


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None
