"""A strict emulator of the Microsoft Graph v1.0 security API (Defender XDR incidents, alerts v2).

It serves the routes of GRAPH.md C-F over TLS (mount ``app`` with ``EmulatorServer``) and does
what the service does, following the checklist of GRAPH.md section I:

* **auth** (A): bearer tokens for the profile's Graph host (or an alias such as the emulator's
  own URL); a token for another cloud's Graph host, ARM or anything else, an expired or an
  unknown token get 401 ``InvalidAuthenticationToken`` with ``WWW-Authenticate``; the token's
  ``roles`` claim is checked per route and a missing permission gets the verbatim 403
  "Missing application roles" text of A.2; the token's ``tid`` selects the tenant;
* **cloud profiles** (A.3): ``global``, ``gcc-high``, ``dod`` change the Graph host (token
  audience), the login host (in ``WWW-Authenticate``) and the portal host (``incidentWebUrl``);
  ``china`` has no ``/security`` incidents or alerts API at all;
* **throttling** (G): a token bucket of 150 requests/minute per app per tenant shared by every
  ``/security`` call, optionally a write bucket; 429 ``TooManyRequests`` with ``Retry-After``;
* **listing** (C): ``$filter`` on the seven documented properties only, ``$orderby``,
  ``$select``, ``$count``, ``$skip``; ``$top`` above 50 is the verbatim 400 with an empty code;
  pages of 50; absolute ``@odata.nextLink`` carrying the query; newest first by default;
  ``$skip`` past ``skip_cap`` stalls (empty pages); ``$expand=alerts`` with an optional 500;
* **evolvable enums** (B.2): without ``Prefer: include-unknown-enum-members`` the members after
  ``unknownFutureValue`` (``awaitingAction``, Sentinel alert sources, late remediation states)
  read as ``unknownFutureValue``;
* **PATCH** (D.2-D.4): 200 with the full incident; writable properties only; enums parsed
  case-insensitively, docs-only names rejected; classification/determination pairs checked;
  ``redirected``/``awaitingAction``/``unknownFutureValue`` refused; ``customTags`` replaced;
  ``""`` owner stored as ``null``; resolving resolves the alerts; no ETag, ``If-Match`` ignored;
* **comments** (E): POST answers 200 with every comment, oldest first, none with an id; no GET
  listing (405), no edit, no delete; 30,000 characters at most;
* every write bumps ``lastUpdateDateTime`` and sets ``lastModifiedBy`` to ``API-App:<app>``.

Every switch for an unverified behaviour is a field of :class:`GraphOptions` (``emulator.options``).
Engine-side behaviour (merges, auto-resolution, alert moves, portal edits) lives in
:class:`~agent.testing.emulators.graph_tenant.DefenderTenant`.
"""

from __future__ import annotations

import contextvars
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from agent.testing.emulators.common import (
    Clock,
    Faults,
    IssuedToken,
    Recorder,
    TokenRegistry,
    fault_and_record_middleware,
    json_response,
    normalise_audience,
)
from agent.testing.emulators.graph_tenant import (
    ALERT_STATUSES,
    CLASSIFICATIONS,
    DETERMINATIONS,
    DOCS_ONLY_NAMES,
    INCIDENT_PROPERTIES,
    INCIDENT_STATUSES,
    PAIRS,
    SERVICE_SOURCES,
    SEVERITIES,
    DefenderTenant,
    MergeRefused,
    render_alert,
    render_comment,
    render_incident,
)
from agent.testing.emulators.odata import (
    Coll,
    Filter,
    Node,
    Obj,
    ODataError,
    OrderKey,
    Prim,
    parse_filter,
    parse_orderby,
    sort_items,
)

__all__ = ["PROFILES", "CloudProfile", "GraphEmulator", "GraphOptions"]

# --- clouds -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CloudProfile:
    """One national cloud's endpoints (GRAPH.md A.3)."""

    name: str
    graph_host: str  # also the token audience
    login_host: str
    portal_host: str | None
    incidents_api: bool


PROFILES: Mapping[str, CloudProfile] = {
    "global": CloudProfile(
        "global",
        "https://graph.microsoft.com",
        "https://login.microsoftonline.com",
        "security.microsoft.com",
        True,
    ),
    "gcc-high": CloudProfile(
        "gcc-high",
        "https://graph.microsoft.us",
        "https://login.microsoftonline.us",
        "security.microsoft.us",
        True,
    ),
    "dod": CloudProfile(
        "dod", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us", "security.apps.mil", True
    ),
    # v1.0-Mooncake.csdl has no security.incident or security.alert type (A.3).
    "china": CloudProfile(
        "china", "https://microsoftgraph.chinacloudapi.cn", "https://login.chinacloudapi.cn", None, False
    ),
}
GRAPH_HOSTS = frozenset(normalise_audience(p.graph_host) for p in PROFILES.values())

# --- permissions (A.2) --------------------------------------------------------------------------

READ_INCIDENTS = ("SecurityIncident.Read.All", "SecurityIncident.ReadWrite.All")
WRITE_INCIDENTS = ("SecurityIncident.ReadWrite.All",)
MERGE_INCIDENTS = ("SecurityData.Manage.All",)
READ_ALERTS = (
    "SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All", "SecurityIncident.Read.All",
    "SecurityIncident.ReadWrite.All",
)  # fmt: skip
WRITE_ALERTS = ("SecurityAlert.ReadWrite.All",)
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"  # Microsoft Graph's well-known app id

# --- options ----------------------------------------------------------------------------------


@dataclass
class GraphOptions:
    """Switches for behaviours GRAPH.md marks unverified or optional; defaults are the strict
    reading of section I."""

    pair_validation: str = "strict"  # strict | lenient (B.3)
    docs_only_names: str = "reject"  # reject | alias (B.2)
    read_only_in_patch: str = "reject"  # reject | ignore (D.2, J.3)
    if_match: str = "ignore"  # ignore | enforce (D.4)
    noop_patch_bumps: bool = True  # D.2, J.4
    comment_bumps: bool = True  # E, J.4
    comment_echo_drops_prefix: bool = False  # B.4: the POST echo may lack "API-App:"
    max_comment_chars: int = 30_000  # E
    comments_get_status: int = 405  # E
    redirected_tag_in: str = "customTags"  # customTags | systemTags (H.3, J.7)
    next_link_keeps_query: bool = True  # C.4, J.1
    next_link_base: str | None = None  # None: the serving host
    skip_cap: int = 10_000  # C.3: deep $skip stalls
    default_top: int = 50  # C.3, J.1
    max_top: int = 50  # C.3
    alerts_max_top: int = 2_000  # F.1
    expand_alert_limit: int | None = None  # C.5: 500 when a page holds more alerts
    allow_tag_filter: bool = False  # C.2: customTags/any(...)
    expand_needs_alert_role: bool = False  # A.2
    accept_in_progress: bool = True  # D.3
    rate_per_minute: int = 150  # G
    write_rate_per_minute: int | None = None  # G: the older API's 50/minute
    absent_api_status: int = 400  # A.3: what the china profile answers (400 or 404)
    drop_properties: frozenset[str] = field(default_factory=frozenset)  # B.1: older shapes


# --- errors ------------------------------------------------------------------------------------

_request_id: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar(
    "graph_request_id", default=("", "")
)


class _GraphError(Exception):
    """A Graph error response raised inside a handler (D.5 envelope)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        details: list[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})
        self.details = details

    def response(self, now: float) -> web.Response:
        return json_response(
            _error_body(self.code, self.message, now, self.details), self.status, self.headers
        )


def _error_body(code: str, message: str, now: float, details: list[Any] | None = None) -> dict[str, Any]:
    request_id, client_request_id = _request_id.get()
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    error["innerError"] = {
        "date": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        "request-id": request_id,
        "client-request-id": client_request_id,
    }
    return {"error": error}


def _bad_request(message: str) -> _GraphError:
    return _GraphError(400, "BadRequest", message)


def _invalid_body(message: str = "Request body is incorrect") -> _GraphError:
    # The observed answer to a bad enum value (B.2, alerts_v2).
    return _GraphError(400, "InvalidRequestBody", message)


def _top_exceeded(raw: str, limit: int) -> _GraphError:
    # Verbatim, empty code and empty details included (C.3).
    message = (
        "The query specified in the URI is not valid. The limit of "
        f"'{limit}' for Top query has been exceeded. The value from the incoming request is '{raw}'."
    )
    return _GraphError(400, "", message, details=[])


# --- throttling ---------------------------------------------------------------------------------


class _Bucket:
    """A token bucket of ``per_minute`` requests, full at start (G)."""

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> int:
        """0 when a request may go, else the whole seconds to wait."""
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0
        return max(1, math.ceil((1 - self.tokens) / self.rate))


# --- query schemas -------------------------------------------------------------------------------

_S, _DT = Prim("string"), Prim("datetime")
_INCIDENT_FILTERABLE: dict[str, Any] = {
    "assignedTo": _S, "classification": _S, "createdDateTime": _DT, "determination": _S,
    "lastUpdateDateTime": _DT, "severity": _S, "status": _S,
}  # fmt: skip
_ALERT_FILTERABLE: dict[str, Any] = _INCIDENT_FILTERABLE | {"serviceSource": _S}
_ENUMS: dict[str, tuple[str, ...]] = {
    "classification": CLASSIFICATIONS, "determination": DETERMINATIONS, "severity": SEVERITIES,
    "serviceSource": SERVICE_SOURCES,
}  # fmt: skip
_INCIDENT_WRITABLE = (
    "assignedTo", "classification", "customTags", "description", "determination", "displayName",
    "resolvingComment", "severity", "status", "summary",
)  # fmt: skip
_ALERT_WRITABLE = ("assignedTo", "classification", "determination", "status")
_LIST_OPTIONS = frozenset({"$filter", "$orderby", "$select", "$count", "$skip", "$top", "$expand"})
_NEXT_LINK_SAFE = "/:',()@!*$"
_PREFER = "include-unknown-enum-members"
_ID = re.compile(r"^\d{1,19}$")


@dataclass(frozen=True, slots=True)
class _Ctx:
    token: IssuedToken
    tenant: DefenderTenant
    include_unknown: bool
    app_name: str


_Handler = Callable[[web.Request, _Ctx], Awaitable[web.StreamResponse]]

V1 = "/v1.0/security"
_DIAGNOSTIC = orjson.dumps(
    {"ServerInfo": {"DataCenter": "West Europe", "Slice": "E", "Ring": "5", "ScaleUnit": "001",
                    "RoleInstance": "AM1PEPF00000001"}}
).decode()  # fmt: skip


class GraphEmulator:
    """Microsoft Graph ``/v1.0/security`` as an aiohttp application.

    ``profile`` is a key of :data:`PROFILES`; ``audience_aliases`` are further accepted token
    audiences (the stack adds the emulator's own URL, since a client configured with
    ``graph_url = <emulator>`` asks for ``<emulator>/.default``).
    """

    def __init__(
        self,
        *,
        tokens: TokenRegistry | None = None,
        clock: Clock | None = None,
        faults: Faults | None = None,
        recorder: Recorder | None = None,
        profile: str = "global",
        options: GraphOptions | None = None,
        seed: int = 0,
    ) -> None:
        self.clock = clock if clock is not None else Clock()
        self.tokens = tokens if tokens is not None else TokenRegistry(self.clock)
        self.faults = faults if faults is not None else Faults(seed)
        self.recorder = recorder if recorder is not None else Recorder()
        self.profile = PROFILES[profile]
        self.options = options if options is not None else GraphOptions()
        self.audience_aliases: tuple[str, ...] = ()
        # Called before every request is handled (the Sentinel coupling applies due copies).
        self.before_request: list[Callable[[], object]] = []
        self.seed = seed
        self._tenants: dict[str, DefenderTenant] = {}
        self._app_names: dict[str, str] = {}
        self._buckets: dict[tuple[str, ...], _Bucket] = {}
        self.app = web.Application(
            middlewares=[
                self._envelope,
                fault_and_record_middleware("graph", self.faults, self.recorder, self._fault_response),
            ]
        )
        self._add_routes()

    # -- configuration
    def set_profile(self, name: str) -> None:
        """Switch the cloud: Graph host, login host, portal host of new incidents (A.3)."""
        self.profile = PROFILES[name]
        for tenant in self._tenants.values():
            tenant.portal_host = self.profile.portal_host or "security.microsoft.com"

    def tenant(self, tenant_id: str) -> DefenderTenant:
        """The tenant's Defender data (created empty on first use)."""
        key = tenant_id.lower()
        if key not in self._tenants:
            self._tenants[key] = DefenderTenant(
                tenant_id,
                self.clock,
                portal_host=self.profile.portal_host or "security.microsoft.com",
                seed=self.seed + len(self._tenants),
            )
        return self._tenants[key]

    def set_app_name(self, client_id: str, display_name: str) -> None:
        """The app's display name, shown as ``API-App:<name>`` on its writes (B.5)."""
        self._app_names[client_id.lower()] = display_name

    # -- routing
    def _add_routes(self) -> None:
        r = self.app.router
        incidents, incident = f"{V1}/incidents", f"{V1}/incidents/{{id}}"
        alerts, alert = f"{V1}/alerts_v2", f"{V1}/alerts_v2/{{id}}"
        # Registered before ``{id}``: aiohttp tries resources in order.
        merge = self._route(MERGE_INCIDENTS, True, self._merge)
        r.add_post(f"{incidents}/mergeIncidents", merge, name="incidents.merge")
        r.add_post(
            f"{incidents}/microsoft.graph.security.mergeIncidents", merge, name="incidents.merge.qualified"
        )
        routes: list[tuple[str, str, str, tuple[str, ...], bool, _Handler]] = [
            ("GET", incidents, "incidents.list", READ_INCIDENTS, False, self._incidents_list),
            ("GET", incident, "incidents.get", READ_INCIDENTS, False, self._incidents_get),
            ("PATCH", incident, "incidents.patch", WRITE_INCIDENTS, True, self._incidents_patch),
            (
                "POST",
                f"{incident}/comments",
                "incidents.comments",
                WRITE_INCIDENTS,
                True,
                self._incident_comment,
            ),
            (
                "GET",
                f"{incident}/comments",
                "incidents.comments.get",
                READ_INCIDENTS,
                False,
                self._comments_get,
            ),
            ("GET", alerts, "alerts.list", READ_ALERTS, False, self._alerts_list),
            ("GET", alert, "alerts.get", READ_ALERTS, False, self._alerts_get),
            ("PATCH", alert, "alerts.patch", WRITE_ALERTS, True, self._alerts_patch),
            ("POST", f"{alert}/comments", "alerts.comments", WRITE_ALERTS, True, self._alert_comment),
        ]
        for method, path, name, roles, write, handler in routes:
            r.add_route(method, path, self._route(roles, write, handler), name=name)
        for path in (incidents, incident, f"{incident}/comments", alerts, alert, f"{alert}/comments"):
            r.add_route("*", path, self._method_not_allowed)

    def _route(
        self, roles: tuple[str, ...], write: bool, handler: _Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                ctx = self._admit(request, roles, write)
                return await handler(request, ctx)
            except _GraphError as exc:
                return exc.response(self.clock.time())

        return wrapped

    async def _method_not_allowed(self, request: web.Request) -> web.StreamResponse:
        try:
            self._authenticate(request)
        except _GraphError as exc:
            return exc.response(self.clock.time())
        return _GraphError(
            405, "MethodNotAllowed", f"The HTTP method '{request.method}' is not allowed for this resource."
        ).response(self.clock.time())

    # -- the front door
    def _admit(self, request: web.Request, roles: tuple[str, ...], write: bool) -> _Ctx:
        token = self._authenticate(request)
        if not self.profile.incidents_api:
            segment = request.path.split("/")[3] if request.path.count("/") >= 3 else "security"
            status = self.options.absent_api_status
            code = "NotFound" if status == 404 else "BadRequest"
            raise _GraphError(status, code, f"Resource not found for the segment '{segment}'.")
        self._throttle(token, write)
        self._authorize(token, roles)
        if self.options.expand_needs_alert_role and "$expand" in request.query:
            self._authorize(token, READ_ALERTS[:2])  # A.2: unverified, off by default
        prefer = ",".join(request.headers.getall("Prefer", [])).lower()
        include_unknown = _PREFER in {p.strip() for p in prefer.split(",")}
        name = self._app_names.get(token.client_id.lower(), token.client_id)
        return _Ctx(token, self.tenant(token.tenant), include_unknown, name)

    def _audiences(self) -> tuple[str, ...]:
        return (
            normalise_audience(self.profile.graph_host),
            *(normalise_audience(a) for a in self.audience_aliases),
        )

    def _unauthenticated(self, message: str) -> _GraphError:
        # Graph answers 401 with a Bearer challenge naming the login host and Graph's app id;
        # the exact parameter set is not captured in GRAPH.md (D.5 lists the header only).
        challenge = (
            f'Bearer realm="", authorization_uri="{self.profile.login_host}/common/oauth2/authorize", '
            f'client_id="{GRAPH_APP_ID}"'
        )
        return _GraphError(401, "InvalidAuthenticationToken", message, {"WWW-Authenticate": challenge})

    def _authenticate(self, request: web.Request) -> IssuedToken:
        scheme, _, value = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise self._unauthenticated("Access token is empty.")
        issued: IssuedToken | None = None
        reason = "invalid"
        for audience in self._audiences():
            issued, reason = self.tokens.check(value.strip(), audience)
            if reason != "audience":
                break
        if not reason and issued is not None:
            return issued
        if reason == "expired":
            raise self._unauthenticated("Access token has expired or is not yet valid.")  # D.5
        if reason == "audience":
            # Another cloud's Graph host (A.3), ARM (A.1) or any other resource.
            # Observed text: microsoftgraph/microsoft-graph-docs-contrib issues #2362, #7094.
            raise self._unauthenticated("Access token validation failure. Invalid audience.")
        raise self._unauthenticated("Access token validation failure.")

    def _throttle(self, token: IssuedToken, write: bool) -> None:
        now = self.clock.time()
        key = (token.client_id.lower(), token.tenant.lower())
        buckets = [self._bucket(("all", *key), self.options.rate_per_minute, now)]
        if write and self.options.write_rate_per_minute:
            buckets.append(self._bucket(("write", *key), self.options.write_rate_per_minute, now))
        for bucket in buckets:
            wait = bucket.take(now)
            if wait:
                raise _GraphError(429, "TooManyRequests", "Too many requests.", {"Retry-After": str(wait)})

    def _bucket(self, key: tuple[str, ...], per_minute: int, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None or bucket.capacity != per_minute:
            bucket = self._buckets[key] = _Bucket(per_minute, now)
        return bucket

    @staticmethod
    def _authorize(token: IssuedToken, required: tuple[str, ...]) -> None:
        if set(token.roles) & set(required):
            return
        # Verbatim shape of A.2: the required list, then what the token has.
        message = (
            f"Missing application roles. API required roles: {','.join(required)}, "
            f"application roles: {','.join(token.roles)}."
        )
        raise _GraphError(403, "Forbidden", message)

    # -- middleware and fault bodies
    @web.middleware
    async def _envelope(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request_id = str(uuid.uuid4())
        client_request_id = request.headers.get("client-request-id", request_id)
        reset = _request_id.set((request_id, client_request_id))
        for hook in self.before_request:
            hook()
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = self._http_exception(exc, request)
        finally:
            _request_id.reset(reset)
        response.headers["request-id"] = request_id
        response.headers["client-request-id"] = client_request_id
        response.headers["x-ms-ags-diagnostic"] = _DIAGNOSTIC
        return response

    def _http_exception(self, exc: web.HTTPException, request: web.Request) -> web.Response:
        now = self.clock.time()
        if exc.status == 404:
            # Graph names the first path segment its metadata does not know (400, not 404).
            known = ("v1.0", "security", "incidents", "alerts_v2")
            segment = next((s for s in request.path.split("/") if s and s not in known), request.path)
            body = _error_body("BadRequest", f"Resource not found for the segment '{segment}'.", now)
            return json_response(body, 400)
        return json_response(
            _error_body(exc.reason.replace(" ", ""), exc.text or exc.reason, now), exc.status
        )

    def _fault_response(self, status: int, retry_after: int) -> web.Response:
        now = self.clock.time()
        if status == 429:
            body = _error_body("TooManyRequests", "Too many requests.", now)  # G
            return json_response(body, 429, {"Retry-After": str(retry_after)})
        if status == 503:
            body = _error_body("ServiceUnavailable", "The service is temporarily unavailable.", now)
            return json_response(body, 503, {"Retry-After": str(retry_after)})
        if status == 500:
            return json_response(
                _error_body("InternalServerError", "An internal server error occurred.", now), 500
            )
        return json_response(_error_body("Error", f"Injected HTTP {status}.", now), status)

    # -- request helpers
    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            # DOCS-UPD: Content-Type: application/json is required; the status is unverified.
            raise _GraphError(
                415, "UnsupportedMediaType", "The Content-Type header must be application/json."
            )
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            raise _bad_request(
                "Unable to read JSON request payload. Please ensure Content-Type header is set and payload "
                "is of valid JSON format."
            )
        return body

    def _find_incident(self, ctx: _Ctx, incident_id: str) -> dict[str, Any]:
        if not _ID.match(incident_id):
            raise _bad_request(f"Invalid incident id '{incident_id}'.")  # D.1: unverified body
        incident = ctx.tenant.incidents.get(incident_id)
        if incident is None:
            raise _GraphError(404, "NotFound", f"Incident {incident_id} not found")  # D.1: unverified body
        return incident

    def _find_alert(self, ctx: _Ctx, alert_id: str) -> dict[str, Any]:
        alert = ctx.tenant.alerts.get(alert_id)
        if alert is None:
            raise _GraphError(404, "NotFound", f"Alert {alert_id} not found")
        return alert

    def _context(self, fragment: str) -> str:
        return f"{self.profile.graph_host}/v1.0/$metadata#{fragment}"

    def _incident_json(
        self, ctx: _Ctx, incident: Mapping[str, Any], *, expand: bool, select: Sequence[str] | None = None
    ) -> dict[str, Any]:
        alerts = ctx.tenant.alerts_of(incident["id"]) if expand else None
        body = render_incident(
            incident, include_unknown=ctx.include_unknown, drop=self.options.drop_properties, alerts=alerts
        )
        if select:
            body = {k: v for k, v in body.items() if k in select or k == "alerts"}
        if self.options.if_match == "enforce":
            body = {"@odata.etag": _etag(incident), **body}
        return body

    # -- incidents
    async def _incidents_list(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        query = _check_options(request)
        expand = _expand(query)
        select = _select(query, self.options.drop_properties)
        fields = dict(_INCIDENT_FILTERABLE)
        if self.options.allow_tag_filter:
            fields["customTags"] = Coll(_S)
        schema = Obj(fields, "microsoft.graph.security.incident")
        items = list(ctx.tenant.incidents.values())
        default = [OrderKey(("createdDateTime",), True, "datetime")]  # newest first (C.1)
        page, total, next_offset = self._page(
            query, items, schema, _ENUMS | {"status": INCIDENT_STATUSES}, default, self.options.max_top
        )
        if expand and self.options.expand_alert_limit is not None:
            held = sum(len(ctx.tenant.alerts_of(i["id"])) for i in page)
            if held > self.options.expand_alert_limit:
                # C.5: observed on a large tenant, every time, even with $top=25.
                raise _GraphError(500, "InternalServerError", "An internal server error occurred.")
        fragment = "security/incidents" + (
            "(alerts())" if expand else f"({','.join(select)})" if select else ""
        )
        body: dict[str, Any] = {"@odata.context": self._context(fragment)}
        if query.get("$count", "").lower() == "true":
            body["@odata.count"] = total
        body["value"] = [self._incident_json(ctx, i, expand=expand, select=select) for i in page]
        if next_offset is not None:
            body["@odata.nextLink"] = self._next_link(request, query, next_offset)
        return json_response(body)

    async def _incidents_get(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["id"])
        query = _check_options(request, frozenset({"$expand", "$select"}))
        expand = _expand(query)
        select = _select(query, self.options.drop_properties)
        fragment = "security/incidents" + ("(alerts())" if expand else "") + "/$entity"
        body = {"@odata.context": self._context(fragment)}
        return json_response(body | self._incident_json(ctx, incident, expand=expand, select=select))

    async def _incidents_patch(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["id"])
        self._check_if_match(request, incident)
        changes = self._incident_changes(await self._json_body(request), incident)
        before = {k: incident[k] for k in changes}
        if changes.get("status") == "resolved" and incident["status"] != "resolved":
            ctx.tenant.resolve_alerts_of(incident)  # B.6: resolving resolves the alerts
        incident.update(changes)
        changed = tuple(k for k in changes if before[k] != changes[k])
        if changed or self.options.noop_patch_bumps:
            ctx.tenant.touch(incident, f"API-App:{ctx.app_name}")
        ctx.tenant.emit("updated", incident["id"], fields=changed, origin="graph-api", sent=tuple(changes))
        body = {"@odata.context": self._context("security/incidents/$entity")}
        return json_response(body | self._incident_json(ctx, incident, expand=False))

    def _check_if_match(self, request: web.Request, incident: Mapping[str, Any]) -> None:
        sent = request.headers.get("If-Match")
        if self.options.if_match != "enforce" or sent is None or sent.strip() == "*":
            return  # D.4: no ETag; If-Match is ignored by default
        if sent.strip() != _etag(incident):
            raise _GraphError(412, "PreconditionFailed", "The resource has been modified since it was read.")

    def _incident_changes(self, body: Mapping[str, Any], incident: Mapping[str, Any]) -> dict[str, Any]:
        changes = self._writable(body, _INCIDENT_WRITABLE, INCIDENT_PROPERTIES, "incident")
        out: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "customTags":
                if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
                    raise _invalid_body()
                out[key] = list(dict.fromkeys(value))  # D.2: the whole list is replaced
            elif key == "status":
                out[key] = self._status(value)
            elif key == "severity":
                out[key] = self._enum(value, SEVERITIES, nullable=False, refused=("unknownFutureValue",))
            elif key in ("classification", "determination"):
                members = CLASSIFICATIONS if key == "classification" else DETERMINATIONS
                out[key] = self._enum(value, members, nullable=True, refused=("unknownFutureValue",))
            else:
                if value is not None and not isinstance(value, str):
                    raise _invalid_body()
                # D.2: the older API cleared the owner with "": stored as null.
                out[key] = None if key == "assignedTo" and value == "" else value
        self._check_pair(out.get("classification", incident["classification"]),
                         out.get("determination", incident["determination"]))  # fmt: skip
        return out

    def _writable(
        self, body: Mapping[str, Any], writable: tuple[str, ...], known: Iterable[str], type_name: str
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        known_names = set(known) | {"alerts"}
        for key, value in body.items():
            if key.startswith("@odata."):
                continue
            if key not in known_names:
                raise _bad_request(
                    f"The property '{key}' does not exist on type 'microsoft.graph.security.{type_name}'. "
                    "Make sure to only use property names that are defined by the type."
                )
            if key not in writable:
                if self.options.read_only_in_patch == "ignore":
                    continue
                raise _bad_request(f"The property '{key}' is read-only and cannot be updated.")  # J.3
            out[key] = value
        return out

    def _enum(
        self, value: Any, members: tuple[str, ...], *, nullable: bool, refused: tuple[str, ...] = ()
    ) -> Any:
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise _invalid_body()
        # B.2: input is matched case-insensitively (the docs PATCH PascalCase), output is camelCase.
        found = next((m for m in members if m.lower() == value.lower()), None)
        if found is None:
            alias = next((v for k, v in DOCS_ONLY_NAMES.items() if k.lower() == value.lower()), None)
            if alias is not None and alias in members and self.options.docs_only_names == "alias":
                found = alias
        if found is None or found in refused:
            raise _invalid_body()
        return found

    def _status(self, value: Any) -> str:
        status = self._enum(value, INCIDENT_STATUSES, nullable=False)
        refused = {"redirected", "awaitingAction", "unknownFutureValue"}
        if not self.options.accept_in_progress:
            refused.add("inProgress")
        if status in refused:
            # D.3: redirected leaves an incident unopenable; awaitingAction is Defender Experts'.
            raise _bad_request(f"The status '{status}' cannot be set on an incident.")
        return str(status)

    def _check_pair(self, classification: Any, determination: Any) -> None:
        if self.options.pair_validation != "strict" or determination in (None, "unknown"):
            return
        classification = classification or "unknown"
        if determination not in PAIRS.get(classification, frozenset()):
            raise _invalid_body(
                f"Determination '{determination}' is not valid for classification '{classification}'."
            )

    # -- comments
    async def _incident_comment(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["id"])
        text = self._comment_text(await self._json_body(request))
        name = f"API-App:{ctx.app_name}"
        added = ctx.tenant.append_comment(incident, text, name, bump=self.options.comment_bumps)
        comments = [render_comment(c) for c in incident["comments"]]
        if self.options.comment_echo_drops_prefix:
            comments[-1] = added | {"createdByDisplayName": ctx.app_name}  # B.4: observed once
        body = {
            "@odata.context": self._context(f"security/incidents('{incident['id']}')/comments"),
            "value": comments,
        }
        # E: the captured response carried OData-Version and an odd Location of the Graph host.
        return json_response(body, 200, {"OData-Version": "4.0", "Location": self.profile.graph_host})

    def _comment_text(self, body: Mapping[str, Any]) -> str:
        for key in body:
            if key not in ("comment", "@odata.type"):
                raise _bad_request(
                    f"The property '{key}' does not exist on type 'microsoft.graph.security.alertComment'. "
                    "Make sure to only use property names that are defined by the type."
                )
        kind = body.get("@odata.type")
        if kind is not None and str(kind).lstrip("#") != "microsoft.graph.security.alertComment":
            raise _invalid_body()
        text = body.get("comment")
        if not isinstance(text, str) or not text.strip():
            raise _bad_request("The comment must not be empty.")
        limit = self.options.max_comment_chars
        if len(text.encode("utf-16-le")) // 2 > limit:
            # E: the portal's limit; API enforcement and its text are unverified.
            raise _bad_request(f"The comment exceeds the maximum length of {limit} characters.")
        return text

    async def _comments_get(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["id"])
        status = self.options.comments_get_status
        if status == 200:
            value = [render_comment(c) for c in incident["comments"]]
            return json_response(
                {"@odata.context": self._context("security/incidents/comments"), "value": value}
            )
        # E: only the incident's comments property is documented for reading.
        raise _GraphError(
            status, "MethodNotAllowed", "The HTTP method 'GET' is not allowed for this resource."
        )

    # -- merge (D.6, H.3)
    async def _merge(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        body = await self._json_body(request)
        ids = body.get("incidentIds")
        if not isinstance(ids, list) or len(ids) < 2 or not all(isinstance(i, str) for i in ids):
            raise _bad_request("incidentIds must list at least two incident ids.")
        for incident_id in ids:
            self._find_incident(ctx, incident_id)
        comment = body.get("incidentComment")
        target = ctx.tenant.pick_merge_target(ids)
        try:
            ctx.tenant.merge(ids, target, redirected_tag_in=self.options.redirected_tag_in)
        except MergeRefused as exc:
            raise _bad_request(f"The incidents cannot be merged: {exc}.") from None
        if isinstance(comment, str) and comment.strip():
            ctx.tenant.append_comment(ctx.tenant.incidents[target], comment, f"API-App:{ctx.app_name}")
        return json_response(
            {
                "@odata.context": self._context("microsoft.graph.security.mergeResponse"),
                "targetIncidentId": target,
            }
        )

    # -- alerts (F)
    async def _alerts_list(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        query = _check_options(request, _LIST_OPTIONS - {"$expand", "$select"})
        schema = Obj(_ALERT_FILTERABLE, "microsoft.graph.security.alert")
        default = [OrderKey(("createdDateTime",), True, "datetime")]
        page, total, next_offset = self._page(
            query, list(ctx.tenant.alerts.values()), schema, _ENUMS | {"status": ALERT_STATUSES}, default,
            self.options.alerts_max_top,
        )  # fmt: skip
        body: dict[str, Any] = {"@odata.context": self._context("security/alerts_v2")}
        if query.get("$count", "").lower() == "true":
            body["@odata.count"] = total
        body["value"] = [render_alert(a, include_unknown=ctx.include_unknown) for a in page]
        if next_offset is not None:
            body["@odata.nextLink"] = self._next_link(request, query, next_offset)
        return json_response(body)

    async def _alerts_get(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        alert = self._find_alert(ctx, request.match_info["id"])
        body = {"@odata.context": self._context("security/alerts_v2/$entity")}
        return json_response(body | render_alert(alert, include_unknown=ctx.include_unknown))

    async def _alerts_patch(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        alert = self._find_alert(ctx, request.match_info["id"])
        raw = self._writable(await self._json_body(request), _ALERT_WRITABLE, (*alert, "id"), "alert")
        changes: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "status":
                changes[key] = self._enum(
                    value, ALERT_STATUSES, nullable=False, refused=("unknownFutureValue",)
                )
            elif key in ("classification", "determination"):
                members = CLASSIFICATIONS if key == "classification" else DETERMINATIONS
                changes[key] = self._enum(value, members, nullable=True, refused=("unknownFutureValue",))
            elif value is not None and not isinstance(value, str):
                raise _invalid_body()
            else:
                changes[key] = value or None
        self._check_pair(changes.get("classification", alert["classification"]),
                         changes.get("determination", alert["determination"]))  # fmt: skip
        status = changes.pop("status", None)
        alert.update(changes, lastUpdateDateTime=ctx.tenant.now())
        by = f"API-App:{ctx.app_name}"
        if status == "resolved" and alert["status"] != "resolved":
            ctx.tenant.resolve_alert(alert["id"], by=by)  # may auto-resolve the incident (B.5)
        else:
            if status is not None:
                alert["status"] = status
            # B.6: alert updates move the incident's lastUpdateDateTime.
            ctx.tenant.touch(ctx.tenant.incidents[alert["incidentId"]], by)
        body = {"@odata.context": self._context("security/alerts_v2/$entity")}
        return json_response(body | render_alert(alert, include_unknown=ctx.include_unknown))

    async def _alert_comment(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        alert = self._find_alert(ctx, request.match_info["id"])
        text = self._comment_text(await self._json_body(request))
        now = ctx.tenant.now()
        alert["comments"].append(
            {"comment": text, "createdByDisplayName": f"API-App:{ctx.app_name}", "createdDateTime": now}
        )
        alert["lastUpdateDateTime"] = now
        ctx.tenant.touch(ctx.tenant.incidents[alert["incidentId"]], f"API-App:{ctx.app_name}", now)
        body = {
            "@odata.context": self._context(f"security/alerts_v2('{alert['id']}')/comments"),
            "value": [render_comment(c) for c in alert["comments"]],
        }
        return json_response(body)

    # -- listing
    def _page(
        self,
        query: Mapping[str, str],
        items: list[dict[str, Any]],
        schema: Obj,
        enums: Mapping[str, tuple[str, ...]],
        default_order: list[OrderKey],
        max_top: int,
    ) -> tuple[list[dict[str, Any]], int, int | None]:
        """(page, total matching, offset of the next page or None)."""
        top = _parse_int(query, "$top", self.options.default_top)
        if top > max_top:
            raise _top_exceeded(query["$top"], max_top)
        skip = _parse_int(query, "$skip", 0)
        order = default_order
        flt: Filter | None = None
        if "$filter" in query:
            try:
                flt = parse_filter(query["$filter"], schema)
                _check_filter(flt.expr, enums)
            except ODataError as exc:
                # C.2: clients special-case this prefix; the rest of the text is unverified.
                raise _bad_request(f"Invalid filter clause: {exc}") from None
        if "$orderby" in query:
            try:
                order = parse_orderby(query["$orderby"], schema)
            except ODataError as exc:
                raise _bad_request(f"Invalid orderby clause: {exc}") from None
        if flt is not None:
            items = [i for i in items if flt(i)]
        ordered = sort_items(items, order, tiebreak=lambda i: (len(i["id"]), i["id"]))
        if skip >= self.options.skip_cap:
            return [], len(ordered), None  # C.3: past some depth the pages stop
        page = ordered[skip : skip + top]
        more = top > 0 and skip + top < len(ordered)
        return page, len(ordered), skip + top if more else None

    def _next_link(self, request: web.Request, query: Mapping[str, str], offset: int) -> str:
        """Absolute, on the serving (or configured) host, with ``$skip`` and the query (C.4)."""
        base = self.options.next_link_base or f"{request.scheme}://{request.host}"
        params: list[tuple[str, str]] = []
        if self.options.next_link_keeps_query:
            keep = ("$filter", "$orderby", "$expand", "$select", "$count", "$top")
            params = [(k, query[k]) for k in keep if k in query]
        params.append(("$skip", str(offset)))
        encoded = "&".join(f"{k}={quote(v, safe=_NEXT_LINK_SAFE)}" for k, v in params)
        return f"{base.rstrip('/')}{request.path}?{encoded}"


# --- module helpers --------------------------------------------------------------------------------


def _etag(incident: Mapping[str, Any]) -> str:
    """A synthetic weak etag for the ``if_match = enforce`` profile only (D.4)."""
    return f'W/"{incident["lastUpdateDateTime"]}"'


def _check_options(request: web.Request, allowed: frozenset[str] = _LIST_OPTIONS) -> dict[str, str]:
    query = request.query
    for key in query:
        if len(query.getall(key)) > 1:
            raise _bad_request(f"Query option '{key}' was specified more than once.")
        if key.startswith("$") and key not in allowed:
            raise _bad_request(f"Query option '{key}' is not allowed.")
    return {k: query[k] for k in query}


def _parse_int(query: Mapping[str, str], key: str, default: int) -> int:
    raw = query.get(key)
    if raw is None:
        return default
    if not raw.strip().isdigit():
        raise _bad_request(f"Invalid value '{raw}' for {key} query option found.")
    return int(raw)


def _expand(query: Mapping[str, str]) -> bool:
    raw = query.get("$expand")
    if raw is None:
        return False
    if raw.strip() != "alerts":
        name = raw.split("(")[0].strip()
        raise _bad_request(
            f"Could not find a property named '{name}' on type 'microsoft.graph.security.incident'."
        )
    return True


def _select(query: Mapping[str, str], dropped: Iterable[str]) -> list[str] | None:
    raw = query.get("$select")
    if raw is None:
        return None
    names = [n.strip() for n in raw.split(",") if n.strip()]
    known = set(INCIDENT_PROPERTIES) - set(dropped)
    for name in names:
        if name not in known:
            raise _bad_request(
                f"Could not find a property named '{name}' on type 'microsoft.graph.security.incident'."
            )
    return names


def _check_filter(node: Node, enums: Mapping[str, tuple[str, ...]]) -> None:
    """Functions are not supported; an enum compared with a string must name a member."""
    if node.op == "call":
        raise ODataError(f"the function '{node.value}' is not supported", node.pos)
    if node.op in ("eq", "ne", "gt", "ge", "lt", "le"):
        left, right = node.args
        for path, literal in ((left, right), (right, left)):
            if path.op == "path" and literal.op == "literal" and literal.typ == "string":
                name = path.value[1][-1] if path.value[1] else ""
                members = enums.get(name)
                if members is not None and path.value[0] is None and literal.value not in members:
                    raise ODataError(
                        f"'{literal.value}' is not a member of the enum of '{name}'", literal.pos
                    )
    for child in node.args:
        _check_filter(child, enums)
