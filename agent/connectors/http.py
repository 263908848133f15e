"""The one HTTP choke point: every request to Entra, Sentinel, Graph or ServiceNow goes through here.

:class:`HttpClient` owns one ``aiohttp.ClientSession`` per remote system and does, in one place:

* TLS verification against the system store plus the optional ``[agent] ca_bundle``;
  ``HTTPS_PROXY``/``NO_PROXY`` from the environment (read once per remote origin);
* bounded concurrency (``TCPConnector(limit=...)``) and explicit timeouts;
* auth header injection through an :class:`AuthProvider`, with exactly one forced token refresh
  when the server answers 401;
* retries through :mod:`agent.connectors.retry` (idempotent requests after any transient failure,
  non-idempotent ones only when they provably never reached the server);
* mapping of every failure to :mod:`agent.errors` (:func:`error_for_status`), with the error
  code and message taken from ARM, ServiceNow and Entra error bodies;
* slowing down before ARM throttles, from the ``x-ms-ratelimit-remaining-*`` headers
  (REFERENCE A.11), and pacing at a published rate with a shared :class:`RequestPacer`
  (Microsoft Graph security: 150 requests a minute per app per tenant, GRAPH.md G);
* redaction: no ``Authorization`` header, token, password or secret is ever put into a log
  line or an exception text; URLs are stripped of secret-looking query values and bodies are
  logged only at debug level.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote, urlencode

import aiohttp
import orjson
import truststore
from aiohttp.helpers import get_env_proxy_for_url
from multidict import CIMultiDict
from yarl import URL

from agent import __version__
from agent.connectors.retry import RetryPolicy, parse_retry_after, retrying
from agent.errors import (
    ConfigError,
    EditConflict,
    Forbidden,
    NotFound,
    NotSent,
    PermanentError,
    RateLimited,
    RemoteError,
    TransientError,
)
from agent.log import log, redact, register_secret

if TYPE_CHECKING:
    from agent.connectors.servicenow.pause import PauseGate

SleepFn = Callable[[float], Awaitable[None]]
_Proxy = tuple[URL | None, aiohttp.BasicAuth | None]  # proxy URL and its credentials

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_MAX_URL_IN_MESSAGE = 300
_MAX_DETAIL = 300
_MAX_LOGGED_BODY = 2000
_SECRET_QUERY_WORDS = frozenset(
    {"token", "secret", "password", "passwd", "pwd", "assertion", "apikey", "key", "sig", "signature", "code"}
)
_TRACE_LINES = ("Trace ID:", "Correlation ID:", "Timestamp:")
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]+:)[^/\s@]+@")
_NOT_SECRET_QUERY_KEYS = frozenset({"$skiptoken", "skiptoken"})
# Keep OData and ServiceNow queries readable in URLs; everything else is percent-encoded.
_QUERY_SAFE = "$'(),:/@!*"
_SYSTEM_NAMES = {
    "servicenow": "ServiceNow",
    "sentinel": "Azure Resource Manager",
    "graph": "Microsoft Graph",
    "entra": "Entra ID",
}
# REFERENCE E.7: what a non-JSON answer from each remote usually is.
_NOT_JSON_CAUSES = {"servicenow": "hibernating instance, login page or proxy?"}


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


# --- redaction and error mapping ------------------------------------------------------------


def redact_url(url: str | URL) -> str:
    """The URL with user-info passwords and secret-looking query values replaced by ``***``."""
    try:
        u = url if isinstance(url, URL) else URL(str(url), encoded=True)
        if u.password is not None:
            u = u.with_password("***")
        if u.raw_query_string:
            pairs = []
            for part in u.raw_query_string.split("&"):
                key, sep, _value = part.partition("=")
                if sep and _is_secret_key(unquote(key)):
                    part = f"{key}=***"
                pairs.append(part)
            u = u.with_query(None)
            text = str(u) + "?" + "&".join(pairs)
        else:
            text = str(u)
    except (ValueError, TypeError):
        text = str(url).split("?", 1)[0] + "?…"
    text = redact(text)
    if len(text) > _MAX_URL_IN_MESSAGE:
        text = text[:_MAX_URL_IN_MESSAGE] + "…"
    return text


def _is_secret_key(key: str) -> bool:
    k = key.lower()
    if k in _NOT_SECRET_QUERY_KEYS:
        return False
    return k.endswith("token") or any(word in _SECRET_QUERY_WORDS for word in re.split(r"[-_.$]", k))


def error_details(body: Any) -> tuple[str | None, str | None]:
    """(code, message) from an error body of any of the three systems.

    ARM and Graph: ``{"error":{"code","message"}}`` (REFERENCE A.10, GRAPH.md D.5; Graph's
    ``$top`` error has an empty code, which reads as none); ServiceNow:
    ``{"error":{"message","detail"},"status":"failure"}`` (C.5); Entra and ServiceNow OAuth:
    ``{"error":"invalid_client","error_description":"AADSTS...\\r\\nTrace ID..."}`` (B.1, C.7).
    """
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            if isinstance(code, str) and code:
                return _clean(code), _clean(err.get("message"))
            if code == "" and "message" in err:
                return None, _clean(err.get("message"))
            return _clean(err.get("message")), _clean(err.get("detail"))
        if isinstance(err, str):
            return _clean(err), _clean(body.get("error_description"))
        if isinstance(body.get("message"), str):
            return None, _clean(body.get("message"))
        return None, None
    if isinstance(body, str) and body.strip() and not body.lstrip().startswith("<"):
        return None, _clean(body)
    return None, None


def _clean(value: Any) -> str | None:
    """A remote message on one line, shortened and redacted.

    Line breaks become spaces (ServiceNow's data-policy detail continues on the next line);
    Entra's trailing ``Trace ID``/``Correlation ID``/``Timestamp`` lines are dropped, and so is
    the password of any ``scheme://user:password@`` URL (proxy errors quote the proxy URL).
    """
    if not isinstance(value, str) or not value.strip():
        return None
    lines = [line.strip() for line in value.strip().splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(_TRACE_LINES)] or lines[:1]
    text = _URL_CREDENTIALS.sub(r"\1***@", " ".join(kept))
    if len(text) > _MAX_DETAIL:
        text = text[:_MAX_DETAIL] + "…"
    return redact(text)


def error_for_status(
    system: str, method: str, url: str, status: int, headers: Mapping[str, str], body: Any
) -> RemoteError:
    """The exception for a non-success HTTP status. ``url`` must already be redacted."""
    code, detail = error_details(body)
    if status == 429:
        return RateLimited(
            system,
            method,
            url,
            status,
            code,
            detail,
            retry_after=_rate_limit_wait(headers),
        )
    if status >= 500 or status == 408:
        return TransientError(system, method, url, status, code, detail)
    if status == 409:
        return EditConflict(system, method, url, status, code, detail)
    if status == 404:
        return NotFound(system, method, url, status, code, detail)
    if status == 403:
        return Forbidden(system, method, url, status, code, detail)
    return PermanentError(system, method, url, status, code, detail)


def _rate_limit_wait(headers: Mapping[str, str]) -> float | None:
    """Seconds a 429 asks to wait: ``Retry-After``, else ServiceNow's ``X-RateLimit-Reset`` (the
    epoch when the hourly window resets, REFERENCE C.6)."""
    wait = parse_retry_after(headers.get("Retry-After"))
    if wait is None:
        try:
            wait = max(0.0, float(headers.get("X-RateLimit-Reset", "")) - time.time())
        except ValueError:
            return None
    return wait


def _connection_error(system: str, method: str, url: str, exc: BaseException) -> RemoteError:
    """Map an aiohttp/asyncio failure; ``NotSent`` only when the request cannot have left."""
    name = type(exc).__name__
    text = _clean(str(exc)) or name
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return PermanentError(
            system,
            method,
            url,
            None,
            "TLSVerifyFailed",
            f"TLS verification failed (is the CA in [agent] ca_bundle?): {text}",
        )
    if isinstance(
        exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.ClientHttpProxyError)
    ):
        return NotSent(system, method, url, None, name, text)
    if isinstance(exc, aiohttp.InvalidURL):
        return PermanentError(system, method, url, None, name, text)
    return TransientError(system, method, url, None, name, text)


def not_json_error(
    system: str, method: str, url: str, status: int, headers: Mapping[str, str], raw: bytes
) -> TransientError:
    """A body that is not JSON from a JSON API (REFERENCE E.7): transient, in words a person reads.

    A hibernating ServiceNow developer instance, an SSO login page or a proxy's block page all
    answer HTML, often with status 200. None of it says anything about the request itself, so
    it is never a permanent failure of the record it was about.
    """
    kind = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    html = kind in ("text/html", "application/xhtml+xml") or raw.lstrip()[:1] == b"<"
    if not html and kind.endswith("json"):
        # Declared JSON but cut off or garbled: a connection that broke mid-answer, most likely.
        return TransientError(
            system, method, url, status, "InvalidJson", "the response body is not valid JSON (cut off?)"
        )
    what = "HTML" if html else (kind or "a body that is not JSON")
    cause = _NOT_JSON_CAUSES.get(system, "login page or proxy?")
    name = _SYSTEM_NAMES.get(system, system)
    return TransientError(
        system, method, url, status, "NotJson", f"{name} answered {what}, not JSON ({cause})"
    )


def redirect_error(
    system: str, method: str, url: str, status: int, headers: Mapping[str, str]
) -> TransientError:
    """A 3xx answer: reported, never followed (REFERENCE E.7: an SSO login or a proxy redirects too)."""
    location = headers.get("Location", "")
    target = redact_url(location) if location else "an unnamed location"
    name = _SYSTEM_NAMES.get(system, system)
    return TransientError(
        system,
        method,
        url,
        status,
        "Redirected",
        f"{name} redirected the request to {target} (not followed: a login page, a proxy or a moved "
        "instance? check the configured URL)",
    )


# --- retries counted per unit of work ---------------------------------------------------------


@dataclass
class RetryCount:
    """Requests retried (and their final outcome left to the caller) while a :func:`counting_retries`
    block ran, in this task and the tasks it started."""

    retried: int = 0


_RETRY_COUNT: ContextVar[RetryCount | None] = ContextVar("retry_count", default=None)


@contextlib.contextmanager
def counting_retries() -> Iterator[RetryCount]:
    """Count the HTTP retries made inside the block (a workspace cycle reports them in its
    summary; one retry that recovered is not worth a warning of its own)."""
    count = RetryCount()
    token = _RETRY_COUNT.set(count)
    try:
        yield count
    finally:
        _RETRY_COUNT.reset(token)


# --- pacing ---------------------------------------------------------------------------------


class RequestPacer:
    """At most ``limit`` requests in any ``window`` seconds, for every client that shares it.

    A sliding log of send times, so no window of that length ever holds more than ``limit``
    requests, whatever the server's own bucket looks like. :meth:`hold` pauses everyone until a
    server-given ``Retry-After`` has passed. ``clock``/``sleep`` are injectable for tests.

    ``margin`` widens the window the log is kept for: the server counts arrivals, and a request
    that left at exactly ``window`` seconds after an earlier one can arrive inside the server's
    window when the earlier one travelled slower (jitter), so pacing at the exact limit meets an
    occasional 429.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
        margin: float = 0.0,
    ) -> None:
        if limit < 1 or window <= 0 or margin < 0:
            raise ValueError("a pacer needs limit >= 1, window > 0 and margin >= 0")
        self.limit = limit
        self.window = window
        self.margin = margin
        self.waits = 0
        self.waited = 0.0
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._hold_until = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return when one more request may be sent now, and count it as sent."""
        async with self._lock:  # first come, first served
            while True:
                now = self._clock()
                span = self.window + self.margin
                while self._sent and self._sent[0] <= now - span:
                    self._sent.popleft()
                delay = self._hold_until - now
                if len(self._sent) >= self.limit:
                    delay = max(delay, self._sent[0] + span - now)
                if delay <= 0:
                    break
                self.waits += 1
                self.waited += delay
                await self._sleep(delay)
            self._sent.append(self._clock())

    def hold(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (the server answered 429 with this ``Retry-After``)."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)


# --- the client -----------------------------------------------------------------------------


def build_ssl_context(ca_bundle: str | Path | None) -> ssl.SSLContext:
    """The operating system's trust store plus ``ca_bundle``; verification is always on.

    ``truststore`` verifies with the platform's own verifier (the Keychain on macOS, CryptoAPI on
    Windows, OpenSSL's default paths on Linux), where ``ssl.create_default_context()`` reads only
    OpenSSL's paths, which on macOS and in many Python builds hold no proxy CA an IT department
    installed. The same context serves every aiohttp session and msal's token requests
    (REFERENCE E.10), so a CA trusted for ARM is trusted for Entra too.
    """
    ctx = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_bundle:
        try:
            ctx.load_verify_locations(cafile=str(ca_bundle))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError([f"[agent] ca_bundle: cannot load {ca_bundle}: {exc}"]) from exc
    return ctx


class HttpClient:
    """One ``aiohttp`` session for one remote system, with auth, retries and error mapping.

    ``system`` names the remote in errors and logs (``entra``, ``sentinel``, ``graph``,
    ``servicenow``); ``pacer`` (shared between clients of one rate limit) paces every attempt.
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
        ratelimit_floor: int = 20,
        ratelimit_pause: float = 1.0,
        user_agent: str = f"sentinel-snow-sync/{__version__}",
        pacer: RequestPacer | None = None,
        gate: PauseGate | None = None,
    ) -> None:
        self.system = system
        self.pacer = pacer
        self.gate = gate
        self.auth = auth
        self.retry = retry if retry is not None else RetryPolicy()
        self.ratelimit_floor = ratelimit_floor
        self.ratelimit_pause = ratelimit_pause
        self.ratelimit_remaining: dict[str, int] = {}
        self.requests = 0
        self.retries = 0
        self.throttled = 0
        self.slowdowns = 0
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
            await self._pace(method)
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
            count = _RETRY_COUNT.get()
            if count is not None:
                count.retried += 1
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
        if self.write_gate is not None and method not in ("GET", "HEAD"):
            self.write_gate()
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
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._count("error")
            error = _connection_error(self.system, method, safe_url, exc)
            log.debug("http_error", system=self.system, method=method, url=safe_url, error=str(error))
            raise error from None
        self._count(str(status))
        if status == 429:
            self.throttled += 1
            if self.pacer is not None:
                self.pacer.hold(parse_retry_after(resp_headers.get("Retry-After")) or 0.0)
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

    async def _pace(self, method: str) -> None:
        """Pause briefly when ARM says the bucket for this kind of request is nearly empty."""
        if not self.ratelimit_remaining:
            return
        kind = "reads" if method in ("GET", "HEAD") else "deletes" if method == "DELETE" else "writes"
        left = [v for k, v in self.ratelimit_remaining.items() if k.endswith(kind)]
        if left and min(left) < self.ratelimit_floor:
            self.slowdowns += 1
            log.debug("http_slowdown", system=self.system, kind=kind, remaining=min(left))
            await self._sleep(self.ratelimit_pause)


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
