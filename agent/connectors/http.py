"""The one HTTP choke point: every request to Entra, Sentinel, Graph or ServiceNow goes through here.

:class:`HttpClient` owns one ``aiohttp.ClientSession`` per remote system and does, in one place:

* TLS verification against the system store plus the optional ``[agent] ca_bundle``;
  ``HTTPS_PROXY``/``NO_PROXY`` from the environment (read once per remote origin);
* bounded concurrency (``TCPConnector(limit=...)``) and explicit timeouts;
* auth header injection through an :class:`AuthProvider`, with exactly one forced token refresh
  when the server answers 401;
* retries through :mod:`agent.connectors.retry` (idempotent requests after any transient failure,
  non-idempotent ones only when they provably never reached the server);
* mapping of every failure to :mod:`agent.errors` (:mod:`agent.connectors.http_errors`), with
  the error code and message taken from ARM, ServiceNow and Entra error bodies;
* pacing instead of meeting 429: ARM requests wait for a token in a client-side copy of ARM's
  token buckets, kept right by the ``x-ms-ratelimit-remaining-*`` headers
  (:class:`~agent.connectors.pacing.ArmBuckets`, REFERENCE A.11); a ServiceNow request that
  its hourly rate-limit rule would refuse is not sent, the instance pauses until the reset
  instead (:class:`~agent.connectors.pacing.HourlyQuotas`, C.6, E.8); a published rate is
  kept with a shared :class:`~agent.connectors.pacing.RequestPacer` (Microsoft Graph security:
  150 requests a minute per app per tenant, GRAPH.md G);
* redaction: no ``Authorization`` header, token, password or secret is ever put into a log
  line or an exception text; URLs are stripped of secret-looking query values and bodies are
  logged only at debug level.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlencode

import aiohttp
import orjson
from aiohttp.helpers import get_env_proxy_for_url
from multidict import CIMultiDict
from yarl import URL

from agent import __version__
from agent.connectors.http_errors import (
    connection_error,
    error_for_status,
    not_json_error,
    redact_url,
    redirect_error,
)
from agent.connectors.pacing import ArmBuckets, HourlyQuotas, RequestPacer
from agent.connectors.retry import RetryPolicy, parse_retry_after, retrying
from agent.connectors.trust import build_ssl_context
from agent.errors import (
    NotSent,
    PermanentError,
    RateLimited,
    TransientError,
)
from agent.log import count_retry, log, register_secret

if TYPE_CHECKING:
    from agent.connectors.servicenow.pause import PauseGate

SleepFn = Callable[[float], Awaitable[None]]
_Proxy = tuple[URL | None, aiohttp.BasicAuth | None]  # proxy URL and its credentials

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_MAX_LOGGED_BODY = 2000
# Keep OData and ServiceNow queries readable in URLs; everything else is percent-encoded.
_QUERY_SAFE = "$'(),:/@!*"


class AuthProvider(Protocol):
    """Supplies the ``Authorization`` header for one remote system."""

    async def header(self, force_refresh: bool = False) -> dict[str, str]:
        """Headers to add to a request; ``force_refresh`` after the server rejected the last token."""
        ...


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A successful response: status, headers and the decoded JSON body (``None`` if empty)."""

    status: int
    headers: Mapping[str, str]
    body: Any


# --- the client -----------------------------------------------------------------------------


class HttpClient:
    """One ``aiohttp`` session for one remote system, with auth, retries and error mapping.

    ``system`` names the remote in errors and logs (``entra``, ``sentinel``, ``graph``,
    ``servicenow``); ``pacer`` (shared between clients of one rate limit) paces every attempt;
    ``buckets`` (ARM: one per principal) and ``quotas`` (ServiceNow: one per instance and user)
    pace every request sent by what the server's rate-limit headers say.
    The session is created on first use, inside the running event loop.
    """

    def __init__(
        self,
        system: str,
        *,
        auth: AuthProvider | None = None,
        ca_bundle: str | Path | None = None,
        max_concurrency: int = 8,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: SleepFn = asyncio.sleep,
        user_agent: str = f"sentinel-snow-sync/{__version__}",
        pacer: RequestPacer | None = None,
        buckets: ArmBuckets | None = None,
        quotas: HourlyQuotas | None = None,
        gate: PauseGate | None = None,
    ) -> None:
        self.system = system
        self.pacer = pacer
        self.buckets = buckets
        self.quotas = quotas
        self.gate = gate
        self.auth = auth
        self.retry = retry if retry is not None else RetryPolicy()
        self.ratelimit_remaining: dict[str, int] = {}
        self.requests = 0
        self.retries = 0
        self.throttled = 0
        self.auth_refreshes = 0
        self.by_status: dict[str, int] = {}
        self._sleep = sleep
        self._ssl = build_ssl_context(ca_bundle)
        self._limit = max_concurrency
        # sock_connect, not connect: waiting for a free pooled connection is not a network
        # failure and must not turn into a spurious connect timeout under load.
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=connect_timeout)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._proxies: dict[tuple[str, str | None, int | None], _Proxy] = {}
        # Called before every request that is not a GET/HEAD (retries included); it raises to
        # refuse the write, e.g. when this agent no longer holds the leader lease.
        self.write_gate: Callable[[], None] | None = None

    # -- lifecycle --

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{self.system} HTTP client is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, ssl=self._ssl),
                timeout=self._timeout,
                # The proxy comes from _proxy_for: aiohttp's own lookup (trust_env) hops to a
                # thread on every request, which cost more CPU than the request itself.
                trust_env=False,
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                headers={"User-Agent": self._user_agent, "Accept": "application/json"},
            )
        return self._session

    async def close(self) -> None:
        """Close the session (idempotent)."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- requests --

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        data: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        expected: Iterable[int] = (200, 201, 204),
        authenticate: bool = True,
        sensitive: bool = False,
    ) -> HttpResponse:
        """Send one request (with retries) and return the decoded response.

        ``url`` is used verbatim when it is a :class:`yarl.URL` built with ``encoded=True``
        (ARM ``nextLink``); ``params`` are percent-encoded and appended. ``idempotent``
        defaults from the method (GET/PUT/DELETE yes, POST/PATCH no). ``authenticate=False``
        skips the auth provider (token endpoints); ``sensitive=True`` keeps the bodies out of
        debug logs (credentials in the form, tokens in the answer).
        """
        method = method.upper()
        target = _with_params(url, params)
        safe_url = redact_url(target)
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        payload: bytes | Mapping[str, str] | None = None
        extra: dict[str, str] = dict(headers or {})
        if json is not None:
            payload = orjson.dumps(json)
            extra.setdefault("Content-Type", "application/json")
        elif data is not None:
            payload = data
        ok = frozenset(expected)
        refreshed = False

        async def attempt() -> HttpResponse:
            nonlocal refreshed
            if self.gate is not None:
                self.gate.check(method, safe_url)  # an hourly limit used up: nothing is sent
            force = False
            while True:
                hdrs = dict(extra)
                if authenticate and self.auth is not None:
                    hdrs.update(await self._auth_header(method, safe_url, force))
                if self.pacer is not None:
                    await self.pacer.wait()
                status, resp_headers, raw = await self._send(method, target, safe_url, payload, hdrs)
                if status == 401 and authenticate and self.auth is not None and not refreshed:
                    # One forced refresh per request: a token revoked or expired early.
                    refreshed = force = True
                    self.auth_refreshes += 1
                    log.info("http_auth_refresh", system=self.system, method=method, url=safe_url)
                    continue
                return self._result(method, safe_url, status, resp_headers, raw, ok, sensitive, json)

        def on_retry(failed: int, error: TransientError, delay: float) -> None:
            self.retries += 1
            count_retry()
            # Info, not warning: a retry that recovers needs nobody; one that does not ends in an
            # error the caller reports (and the cycle summary counts the retries).
            log.info(
                "http_retry",
                system=self.system,
                method=method,
                url=safe_url,
                attempt=failed,
                delay=round(delay, 3),
                status=error.status,
                error=str(error),
            )

        try:
            return await retrying(
                self.retry, attempt, idempotent=idempotent, on_retry=on_retry, sleep=self._sleep
            )
        except RateLimited as exc:
            # A wait longer than the whole retry budget is an hourly window (REFERENCE E.8): every
            # call to this remote waits it out instead of spending a budget per cycle on it.
            wait = exc.retry_after or 0.0
            if (
                self.gate is not None
                and wait > self.retry.total
                and self.gate.hold(wait, exc.detail or "HTTP 429")
            ):
                self.gate.check(method, safe_url)  # raises InstancePaused: this call waits too
            raise

    async def _auth_header(self, method: str, safe_url: str, force: bool) -> dict[str, str]:
        assert self.auth is not None
        try:
            header = await self.auth.header(force_refresh=force)
        except NotSent:
            raise
        except TransientError as exc:
            # No token means this request was never sent: safe to retry even a POST.
            unavailable = NotSent(self.system, method, safe_url, None, "TokenUnavailable", str(exc))
            # A throttled token endpoint says when to come back; the retry waits that long.
            unavailable.retry_after = getattr(exc, "retry_after", None)  # type: ignore[attr-defined]
            raise unavailable from exc
        for value in header.values():
            # Servers sometimes echo the credential in an error; the logger scrubs it from then on.
            register_secret(value.split(" ", 1)[-1])
        return header

    async def _send(
        self,
        method: str,
        target: URL,
        safe_url: str,
        payload: bytes | Mapping[str, str] | None,
        headers: dict[str, str],
    ) -> tuple[int, CIMultiDict[str], bytes]:
        buckets, quotas = self.buckets, self.quotas
        ticket = await buckets.acquire(method, target.path) if buckets is not None else None
        try:
            # After any wait for a token: the lease may have changed hands meanwhile.
            if self.write_gate is not None and method not in ("GET", "HEAD"):
                self.write_gate()
            order = None
            if quotas is not None:
                order = await self._within_quota(quotas, method, target, safe_url)
        except BaseException:
            if buckets is not None and ticket is not None:
                buckets.forget(ticket)  # never sent: not in flight
            raise
        session = self._get_session()
        proxy, proxy_auth = self._proxy_for(target)
        self.requests += 1
        started = time.monotonic()
        try:
            async with session.request(
                method,
                target,
                data=payload,
                headers=headers,
                allow_redirects=False,
                proxy=proxy,
                proxy_auth=proxy_auth,
            ) as resp:
                raw = await resp.read()
                status = resp.status
                resp_headers = CIMultiDict(resp.headers)
        except BaseException as exc:
            if quotas is not None and order is not None:
                quotas.observe(order, {})
            if buckets is not None and ticket is not None:
                buckets.forget(ticket)
            if not isinstance(exc, (aiohttp.ClientError, TimeoutError)):
                raise
            self._count("error")
            error = connection_error(self.system, method, safe_url, exc)
            log.debug("http_error", system=self.system, method=method, url=safe_url, error=str(error))
            raise error from None
        self._count(str(status))
        retry_after = None
        if status == 429:
            self.throttled += 1
            retry_after = parse_retry_after(resp_headers.get("Retry-After"))
            if self.pacer is not None:
                self.pacer.hold(retry_after or 0.0)
        if buckets is not None and ticket is not None:
            buckets.observe(ticket, status, resp_headers, retry_after)
        if quotas is not None and order is not None:
            quotas.observe(order, resp_headers)
        self._note_ratelimits(resp_headers)
        log.debug(
            "http_response",
            system=self.system,
            method=method,
            url=safe_url,
            status=status,
            ms=round((time.monotonic() - started) * 1000, 1),
        )
        return status, resp_headers, raw

    def _proxy_for(self, url: URL) -> _Proxy:
        """``HTTPS_PROXY``/``HTTP_PROXY`` for this origin unless ``NO_PROXY`` exempts it,
        read from the environment on the first request to the origin."""
        key = (url.scheme, url.host, url.port)
        found = self._proxies.get(key)
        if found is None:
            try:
                found = get_env_proxy_for_url(url)
            except LookupError:
                found = (None, None)
            self._proxies[key] = found
        return found

    def _result(
        self,
        method: str,
        safe_url: str,
        status: int,
        headers: CIMultiDict[str],
        raw: bytes,
        ok: frozenset[int],
        sensitive: bool,
        sent: Any,
    ) -> HttpResponse:
        body: Any = None
        parsed = True
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                parsed = False
                body = raw[:_MAX_LOGGED_BODY].decode("utf-8", "replace")
        if not sensitive and (log.level <= 10 or log.sinks):
            log.debug(
                "http_body",
                system=self.system,
                method=method,
                url=safe_url,
                request=_preview(sent),
                response=_preview(body),
            )
        if 300 <= status < 400:
            raise redirect_error(self.system, method, safe_url, status, headers)
        if not parsed and status < 500:  # a 5xx is transient whatever its body says
            raise not_json_error(self.system, method, safe_url, status, headers, raw)
        if status in ok:
            return HttpResponse(status, headers, body)
        if status < 400:  # a success we did not expect
            raise PermanentError(self.system, method, safe_url, status, "UnexpectedStatus", None)
        raise error_for_status(self.system, method, safe_url, status, headers, body)

    # -- accounting and pacing --

    def _count(self, key: str) -> None:
        self.by_status[key] = self.by_status.get(key, 0) + 1

    def _note_ratelimits(self, headers: Mapping[str, str]) -> None:
        for key, value in headers.items():
            k = key.lower()
            if k.startswith("x-ms-ratelimit-remaining-"):
                try:
                    self.ratelimit_remaining[k[len("x-ms-ratelimit-remaining-") :]] = int(value)
                except ValueError:
                    continue

    async def _within_quota(self, quotas: HourlyQuotas, method: str, target: URL, safe_url: str) -> int:
        """Wait, or pause the instance, when the request's hourly rule has nothing left (E.8);
        the request's order number for the quota count."""
        route = quotas.route(method, target.path)
        spent = quotas.exhausted(route)
        if spent is not None and self.gate is not None:  # without a gate the server's 429 decides
            wait, reason = spent
            if self.gate.hold(wait, reason):
                self.gate.check(method, safe_url)  # raises InstancePaused: nothing is sent
            await self._sleep(wait)  # not worth a pause: the window resets within a minute
        return quotas.sending(route)


def _with_params(url: str | URL, params: Mapping[str, str | int] | None) -> URL:
    base = url if isinstance(url, URL) else URL(url)
    if not params:
        return base
    query = urlencode({k: str(v) for k, v in params.items()}, quote_via=quote, safe=_QUERY_SAFE)
    raw = str(base)
    return URL(raw + ("&" if base.raw_query_string else "?") + query, encoded=True)


def _preview(value: Any) -> Any:
    if value is None:
        return None
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    return text if len(text) <= _MAX_LOGGED_BODY else text[:_MAX_LOGGED_BODY] + "…"
