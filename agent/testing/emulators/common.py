"""Pieces every emulator shares: TLS, a settable clock, issued tokens, a user directory,
fault injection and call accounting, and a small server runner.

The emulators are real aiohttp servers on 127.0.0.1 speaking TLS with a CA generated at start
(msal refuses non-https authorities, REFERENCE B.3), so the agent is tested over the same code
paths it uses in production.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import secrets
import ssl
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

# --- clock ----------------------------------------------------------------------------------


class Clock:
    """Wall clock with a settable offset, shared by the emulators so tests can expire tokens."""

    def __init__(self) -> None:
        self.offset = 0.0
        self._last = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def now(self) -> datetime:
        """Strictly increasing UTC time (two writes never share a modification time)."""
        t = self.time()
        if t <= self._last:
            t = self._last + 1e-6
        self._last = t
        return datetime.fromtimestamp(t, UTC)

    def advance(self, seconds: float) -> None:
        self.offset += seconds


# --- TLS ------------------------------------------------------------------------------------


class TLSMaterial:
    """A throw-away CA (trustme) and one server certificate for 127.0.0.1 and localhost.

    ``ca_file`` is the PEM the agent trusts through ``[agent] ca_bundle``.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        import trustme

        self._ca = trustme.CA(organization_name="sentinel-snow-sync emulator CA")
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1")
        base = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="snow-sync-emu-"))
        base.mkdir(parents=True, exist_ok=True)
        self.directory = base
        self.ca_file = base / "emulator-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))
        os.chmod(self.ca_file, 0o644)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self._ca.configure_trust(ctx)
        return ctx


# --- tokens ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    audience: str  # e.g. "https://management.azure.com" (no trailing slash, no /.default)
    tenant: str
    client_id: str
    object_id: str  # the service principal's object id (used as comment author)
    expires_at: float
    # Application permissions granted to the app on the token's resource: the ``roles`` claim
    # of an app-only token (empty: the claim is absent, GRAPH.md A.1).
    roles: tuple[str, ...] = ()


def normalise_audience(value: str) -> str:
    """``https://management.azure.com/.default`` / ``.../`` / ``...`` -> one canonical form."""
    v = value.strip()
    if v.endswith("/.default"):
        v = v[: -len("/.default")]
    return v.rstrip("/").lower()


class TokenRegistry:
    """Tokens issued by the Entra emulator (or the ServiceNow OAuth endpoint) and checked by
    the resource emulators. Tokens look like JWTs but are opaque: only this registry can
    validate them, exactly like a real resource server only accepts its issuer's tokens."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._tokens: dict[str, IssuedToken] = {}
        self.revoked: set[str] = set()

    def issue(
        self,
        audience: str,
        tenant: str,
        client_id: str,
        lifetime: float = 3599,
        object_id: str = "",
        roles: tuple[str, ...] = (),
    ) -> IssuedToken:
        now = self.clock.time()
        header = _b64({"typ": "JWT", "alg": "RS256"})
        claims: dict[str, Any] = {
            "aud": normalise_audience(audience),
            "tid": tenant,
            "appid": client_id,
            "iat": int(now),
            "exp": int(now + lifetime),
            "jti": uuid.uuid4().hex,
        }
        if roles:
            claims["roles"] = list(roles)
        token = f"{header}.{_b64(claims)}.{secrets.token_urlsafe(32)}"
        issued = IssuedToken(
            token,
            normalise_audience(audience),
            tenant,
            client_id,
            object_id or str(uuid.uuid5(uuid.NAMESPACE_URL, client_id)),
            now + lifetime,
            tuple(roles),
        )
        self._tokens[token] = issued
        return issued

    def check(self, token: str, audience: str) -> tuple[IssuedToken | None, str]:
        """Return (token, "") when valid, else (token-or-None, reason) with reason one of
        ``invalid``, ``expired``, ``audience``."""
        issued = self._tokens.get(token)
        if issued is None or token in self.revoked:
            return None, "invalid"
        if issued.expires_at <= self.clock.time():
            return issued, "expired"
        if issued.audience != normalise_audience(audience):
            return issued, "audience"
        return issued, ""

    def revoke_all(self) -> None:
        self.revoked.update(self._tokens)

    def issued(self) -> list[str]:
        """Every token issued so far (tests check that none ever reaches a log line)."""
        return list(self._tokens)


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(obj)).rstrip(b"=").decode()


# --- directory ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirectoryUser:
    object_id: str
    upn: str
    email: str
    display_name: str


class Directory:
    """The tenant's users (Entra). Sentinel fills an owner in from here; the simulator creates
    matching ``sys_user`` rows (email == UPN) on the ServiceNow side."""

    def __init__(self) -> None:
        self.users: list[DirectoryUser] = []

    def add(self, upn: str, display_name: str, email: str | None = None) -> DirectoryUser:
        object_id = str(uuid.uuid5(uuid.NAMESPACE_DNS, upn.lower()))
        user = DirectoryUser(object_id, upn, email or upn, display_name)
        self.users.append(user)
        return user

    def by_object_id(self, object_id: str) -> DirectoryUser | None:
        return next((u for u in self.users if u.object_id.lower() == object_id.lower()), None)

    def by_upn(self, upn: str) -> DirectoryUser | None:
        return next((u for u in self.users if u.upn.lower() == upn.lower()), None)


# --- faults ---------------------------------------------------------------------------------


@dataclass
class FaultRule:
    """Probabilities (0..1) of each injected fault, plus added latency in seconds."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_503: float = 0.0
    rate_drop: float = 0.0
    latency: float = 0.0
    retry_after: int = 1


@dataclass(frozen=True, slots=True)
class PathFault:
    """A standing fault for every request whose path contains ``match`` (and, if given, whose
    method is ``method``): the answer is ``status`` with the emulator's own error body, or
    ``body`` verbatim when given."""

    match: str
    status: int
    method: str | None = None
    body: bytes | None = None


class Faults:
    """Per-route fault settings with a seeded RNG. Route keys are aiohttp route names (e.g.
    ``incidents.list``) or ``*`` for every route of the emulator.

    ``once(route, status)`` queues a one-shot fault for the next matching request (``body``:
    answer with these bytes instead, e.g. a truncated JSON document with status 200);
    ``fail(match, status)`` fails every request to one resource until :meth:`clear`.
    """

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.rules: dict[str, FaultRule] = {}
        self._once: dict[str, list[tuple[int, bytes | None]]] = {}
        self.paths: list[PathFault] = []
        self.injected: dict[str, int] = {}

    def set(self, route: str = "*", **settings: Any) -> FaultRule:
        rule = FaultRule(**settings)
        self.rules[route] = rule
        return rule

    def clear(self) -> None:
        self.rules.clear()
        self._once.clear()
        self.paths.clear()

    def once(self, route: str, status: int, *, body: bytes | None = None) -> None:
        """The next request to ``route`` fails with ``status`` (0 = drop the connection), or is
        answered with ``status`` and ``body`` verbatim."""
        self._once.setdefault(route, []).append((status, body))

    def fail(self, match: str, status: int, *, method: str | None = None, body: bytes | None = None) -> None:
        """Every request whose path contains ``match`` fails with ``status`` until :meth:`clear`
        (a permanent error on one record: an ACL, a data policy, a validation rule)."""
        self.paths.append(PathFault(match, status, method, body))

    def decide_request(
        self, route: str, method: str, path: str
    ) -> tuple[int | None, float, int, bytes | None]:
        """:meth:`decide` plus the standing path faults; the fourth item is a verbatim body."""
        for fault in self.paths:
            if fault.match in path and (fault.method is None or fault.method == method):
                return fault.status, 0.0, 1, fault.body
        queued = self._once.get(route)
        if queued:
            status, body = queued.pop(0)
            return status, 0.0, 1, body
        return (*self.decide(route), None)

    def decide(self, route: str) -> tuple[int | None, float, int]:
        """-> (status to inject or None; 0 means drop the connection, latency, retry_after)."""
        queued = self._once.get(route)
        if queued:
            return queued.pop(0)[0], 0.0, 1
        rule = self.rules.get(route) or self.rules.get("*")
        if rule is None:
            return None, 0.0, 1
        roll = self.rng.random()
        rates = ((429, rule.rate_429), (500, rule.rate_500), (503, rule.rate_503), (0, rule.rate_drop))
        for status, rate in rates:
            if roll < rate:
                return status, rule.latency, rule.retry_after
            roll -= rate
        return None, rule.latency, rule.retry_after

    def count(self, status: int) -> None:
        key = "drop" if status == 0 else "body" if status == -1 else str(status)
        self.injected[key] = self.injected.get(key, 0) + 1


# --- accounting -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    system: str  # entra | sentinel | servicenow
    method: str
    route: str  # aiohttp route name, e.g. "incidents.put"
    path: str
    status: int
    instance: str = ""  # which ServiceNow instance served it ("" for Entra and Sentinel)
    query: dict[str, str] = field(default_factory=dict)  # decoded query (the last of a repeated key)


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request and the answer it got, whole: what a benchmark replays without the emulators."""

    call: Call
    origin: str  # scheme://host:port the request was sent to
    target: str  # the request target as sent: raw path and query
    body: bytes  # the request's body
    headers: tuple[tuple[str, str], ...]  # the response's headers, as the emulator set them
    response: bytes  # the response's body


@dataclass
class Recorder:
    """Every request any emulator served, for tests and benchmarks to count calls.

    ``exchanges`` is off (None) by default; a benchmark that sets it to a list gets every
    request and answer whole (:class:`Exchange`), at the cost of keeping them.
    """

    calls: list[Call] = field(default_factory=list)
    exchanges: list[Exchange] | None = None

    def add(self, call: Call) -> None:
        self.calls.append(call)

    async def keep(self, call: Call, request: web.Request) -> None:
        """With ``exchanges`` on, note the request so that :func:`keep_exchange` keeps it whole
        with its answer as sent (outer middlewares add headers); nothing otherwise."""
        if self.exchanges is not None:
            origin = f"{request.scheme}://{request.host}"
            request[_PENDING] = (self, call, origin, request.raw_path, await request.read())

    def count(
        self,
        system: str | None = None,
        method: str | None = None,
        route: str | None = None,
        status: int | None = None,
    ) -> int:
        return sum(
            1
            for c in self.calls
            if (system is None or c.system == system)
            and (method is None or c.method == method)
            and (route is None or c.route == route)
            and (status is None or c.status == status)
        )

    def mark(self) -> int:
        """A position to count from later with ``since``."""
        return len(self.calls)

    def since(self, mark: int) -> list[Call]:
        return self.calls[mark:]

    def reset(self) -> None:
        self.calls.clear()


_PENDING = web.RequestKey("recorder_pending_exchange", tuple)


async def keep_exchange(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` of every emulator app: completes an exchange :meth:`Recorder.keep` noted."""
    pending = request.get(_PENDING)
    if pending is None:
        return
    recorder, call, origin, target, body = pending
    answer = response.body if isinstance(response, web.Response) else None
    if not isinstance(answer, bytes | bytearray):
        raise TypeError(f"cannot keep the answer to {call.method} {call.path} ({type(answer).__name__})")
    headers = tuple((k, v) for k, v in response.headers.items())
    assert recorder.exchanges is not None
    recorder.exchanges.append(Exchange(call, origin, target, body, headers, bytes(answer)))


ErrorFactory = Callable[[int, int], web.Response]
"""(status, retry_after) -> the system's own error response for an injected fault."""


def fault_and_record_middleware(
    system: str, faults: Faults, recorder: Recorder, error_for: ErrorFactory, instance: str = ""
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """aiohttp middleware: inject faults by route, then record (system, method, route, status)."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route = request.match_info.route.name or "unknown"
        status, latency, retry_after, body = faults.decide_request(route, request.method, request.path)
        if latency:
            await asyncio.sleep(latency)
        if status is not None:
            faults.count(status if body is None else -1)
            query = dict(request.query)
            call = Call(system, request.method, route, request.path, status or 0, instance, query)
            recorder.add(call)
            if status == 0:
                # Drop the connection without a response: the client sees a reset.
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            if body is not None:
                fault = web.Response(status=status, body=body, content_type="application/json")
            else:
                fault = error_for(status, retry_after)
            await recorder.keep(call, request)
            return fault
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            call = Call(
                system, request.method, route, request.path, exc.status, instance, dict(request.query)
            )
            recorder.add(call)
            await recorder.keep(call, request)
            raise
        call = Call(
            system, request.method, route, request.path, response.status, instance, dict(request.query)
        )
        recorder.add(call)
        await recorder.keep(call, request)
        return response

    return middleware


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(body),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


# --- server runner --------------------------------------------------------------------------


class EmulatorServer:
    """Runs one aiohttp application on 127.0.0.1 with TLS; ``base_url`` once started."""

    def __init__(self, app: web.Application, tls: TLSMaterial | None, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self.tls = tls
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> str:
        if not self.app.on_response_prepare.frozen and keep_exchange not in self.app.on_response_prepare:
            self.app.on_response_prepare.append(keep_exchange)
        # shutdown_timeout belongs on the runner: aiohttp >= 3.9 warns when it is given to the site.
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.host,
            self.port,
            ssl_context=self.tls.server_context() if self.tls else None,
        )
        await site.start()
        server = site._server
        assert server is not None
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1]
        self.port = port
        scheme = "https" if self.tls else "http"
        self.base_url = f"{scheme}://{self.host}:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def new_guid() -> str:
    return str(uuid.uuid4())


def utc_iso(dt: datetime) -> str:
    """ARM timestamp with 7 fractional digits, e.g. ``2020-07-20T18:21:53.6158361Z``."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}0Z"


def days_ago(clock: Clock, days: float) -> datetime:
    return datetime.fromtimestamp(clock.time(), UTC) - timedelta(days=days)
