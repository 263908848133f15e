"""ServiceNow authentication for :class:`agent.connectors.http.HttpClient`: HTTP Basic for the
integration account, or OAuth at ``<instance>/oauth_token.do`` with the password grant (refreshed
with the refresh token ahead of expiry, falling back to the password grant) or the
client-credentials grant when no user is configured (REFERENCE C.7, E.11)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.connectors.auth import CachedBearer, Token, seconds
from agent.connectors.http import HttpClient
from agent.connectors.http_errors import error_details
from agent.connectors.retry import RetryPolicy
from agent.errors import AuthError, PermanentError
from agent.log import log, register_secret


class ServiceNowBasicAuth:
    """HTTP Basic for the integration account (REFERENCE C.7)."""

    def __init__(self, username: str, password: str) -> None:
        register_secret(password)
        encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
        register_secret(encoded)
        self._header = {"Authorization": f"Basic {encoded}"}

    async def header(self, force_refresh: bool = False) -> dict[str, str]:
        """The same header every time; a 401 after a refresh surfaces as an error."""
        return dict(self._header)


class ServiceNowOAuth(CachedBearer):
    """OAuth at ``<instance>/oauth_token.do`` (REFERENCE C.7, E.11).

    With ``username`` and ``password`` it is the password grant: the access token is refreshed
    ``refresh_margin`` seconds before it expires with ``grant_type=refresh_token``, and if that
    fails (refresh token expired or revoked) the password grant is used again. Without them it is
    the client-credentials grant (only ``client_id``/``client_secret``; the instance issues the
    token as the OAuth Application User of its registry entry), asked for again near expiry.
    Token requests use ``http`` when given, else a short-lived client of their own (tokens are
    fetched about twice an hour, so no session is kept open).
    """

    def __init__(
        self,
        *,
        instance_url: str,
        client_id: str,
        client_secret: str,
        username: str | None = None,
        password: str | None = None,
        ca_bundle: str | Path | None = None,
        http: HttpClient | None = None,
        refresh_margin: float = 120.0,
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("the password grant needs both username and password")
        for value in (client_secret, password):
            if value:
                register_secret(value)
        self.token_url = instance_url.rstrip("/") + "/oauth_token.do"
        self.client_id = client_id
        self.username = username
        self.refresh_margin = refresh_margin
        self.token_requests = 0
        self.token_failures = 0
        self._client_secret = client_secret
        self._password = password
        self._ca_bundle = ca_bundle
        self._http = http
        # Short: a failed token fetch is retried again by the request that needed the token.
        self._retry = retry or RetryPolicy(attempts=2, total=10.0)
        self._clock = clock
        self._token: Token | None = None
        self._refresh: str | None = None
        self._lock = asyncio.Lock()

    @property
    def grant(self) -> str:
        """``password`` or ``client_credentials``: the grant that gets a fresh token."""
        return "client_credentials" if self.username is None else "password"

    async def _obtain(self) -> Token:
        if self._refresh is not None:
            try:
                return await self._grant({"grant_type": "refresh_token", "refresh_token": self._refresh})
            except AuthError as exc:
                log.info("snow_oauth_refresh_failed", error=str(exc))
                self._refresh = None
        if self.username is None or self._password is None:
            return await self._grant({"grant_type": "client_credentials"})
        return await self._grant(
            {"grant_type": "password", "username": self.username, "password": self._password}
        )

    async def _grant(self, form: dict[str, str]) -> Token:
        with self._counted():
            return await self._request_token(form)

    async def _request_token(self, form: dict[str, str]) -> Token:
        data = {**form, "client_id": self.client_id, "client_secret": self._client_secret}
        started = self._clock()
        try:
            if self._http is not None:
                body = await self._post(self._http, data)
            else:
                async with HttpClient("servicenow", ca_bundle=self._ca_bundle, retry=self._retry) as http:
                    body = await self._post(http, data)
        except PermanentError as exc:
            code = exc.code or f"HTTP {exc.status}"
            raise AuthError(
                "servicenow", f"{code}: {exc.detail}" if exc.detail else code, code=exc.code
            ) from None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            error = error_details(body)[0]
            raise AuthError("servicenow", f"no access token ({error or 'invalid response'})", code=error)
        register_secret(token)
        refresh = body.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            register_secret(refresh)
            self._refresh = refresh
        expires_in = seconds(body.get("expires_in"), default=1799.0)
        log.info("snow_oauth_token", grant=form["grant_type"], expires_in=int(expires_in))
        return Token(token, started + expires_in)

    async def _post(self, http: HttpClient, data: dict[str, str]) -> Any:
        resp = await http.request(
            "POST",
            self.token_url,
            data=data,
            authenticate=False,
            sensitive=True,
            idempotent=True,  # asking for another token twice is harmless
            expected=(200,),
        )
        return resp.body

    async def close(self) -> None:
        """Nothing to close (token requests use short-lived sessions); for symmetry."""
