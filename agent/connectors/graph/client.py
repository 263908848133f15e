"""Typed client for Microsoft Graph security incidents (Defender XDR, GRAPH.md). No sync logic.

Self-contained on purpose (it becomes the Graph connector): clouds and the app-only token, the
client, the wire models and their parsing, and nothing from the engine.

* **Auth** (A.1, A.3): an msal client-credentials token for ``<graph_url>/.default``, per cloud
  (public, usgov = GCC High, dod); China has no incidents API, so it is a configuration error.
* **Listing** (C.2-C.4) pages *by time*: ``lastUpdateDateTime ge <t>`` ordered ascending,
  ``$top`` at most 50; after each page the next query starts at the newest time seen, so no
  deep ``$skip`` ever happens (past some depth the service stops returning pages, C.3) and an
  incident changed while the listing runs moves forward instead of shifting the offsets. Only a
  run of equal times longer than a page is walked with ``@odata.nextLink``, followed verbatim
  when it carries our query and points at our Graph host. An incident is yielded again when it
  shows up with a newer ``lastUpdateDateTime`` (de-duplication on id and time, C.3).
* **Alerts** per incident with one ``GET .../{id}?$expand=alerts`` (C.5: never on big pages).
* **Updates** (D.2-D.4) PATCH only the properties given, never a status only Defender sets, and
  classification with determination together; there is no ETag, so the caller re-reads first
  (:func:`changed_fields` builds the minimal body, :func:`merged_tags` the full tag list).
* **Comments** (E) are POSTed; they have no id: :attr:`GraphComment.key` is (time, text).
* Every request sends ``Prefer: include-unknown-enum-members`` (B.2); every enum is parsed as an
  open string, so values this module does not know pass through.
* Pacing: build the :class:`~agent.connectors.http.HttpClient` with :func:`graph_pacer` (150 requests a
  minute per app per tenant, G). Errors arrive as :mod:`agent.errors` types with ``system``
  ``graph``; :func:`missing_roles` reads the permission names out of a 403 (A.2).
"""

from __future__ import annotations

import copy
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from yarl import URL

from agent.connectors.entra import EntraAuth
from agent.connectors.http import HttpClient, RequestPacer, redact_url
from agent.errors import ConfigError, DataError, Forbidden, InvalidResponse, PermanentError
from agent.log import log

SYSTEM = "graph"
MAX_TOP = 50  # C.3: more is a 400
RATE_PER_MINUTE = 150  # G: per app per tenant, every /security call
MAX_COMMENT_CHARS = 30_000  # E
PREFER = {"Prefer": "include-unknown-enum-members"}  # B.2

WRITABLE = (
    "assignedTo", "classification", "customTags", "description", "determination", "displayName",
    "resolvingComment", "severity", "status", "summary",
)  # fmt: skip
"""What a PATCH may carry (D.2); everything else is read-only."""
STATUSES = ("active", "inProgress", "resolved")
"""The statuses a client may set (D.3): never ``redirected`` (the incident becomes unopenable),
``awaitingAction`` (Defender Experts only) or ``unknownFutureValue``."""
SEVERITIES = ("unknown", "informational", "low", "medium", "high")
PAIRS: Mapping[str, frozenset[str]] = {
    "truePositive": frozenset(
        {"multiStagedAttack", "maliciousUserActivity", "compromisedAccount", "malware", "phishing",
         "unwantedSoftware", "other"}
    ),
    "informationalExpectedActivity": frozenset(
        {"securityTesting", "lineOfBusinessApplication", "confirmedActivity", "other"}
    ),
    "falsePositive": frozenset({"notMalicious", "notEnoughDataToValidate", "other"}),
    "unknown": frozenset({"unknown"}),
}  # fmt: skip
"""Valid classification -> determinations (B.3); ``unknown`` goes with any classification."""
CLOSED_STATUSES = frozenset({"resolved", "redirected"})

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # a nextLink's characters sent as they are
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ROLES = re.compile(r"API required roles: (?P<required>[^ ]*), application roles: (?P<granted>[^ ]*?)\.?$")

# --- clouds and auth ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraphCloud:
    """One cloud's Graph endpoint (also the token audience), login host and portal (A.3)."""

    name: str
    graph_url: str
    authority_host: str
    portal_host: str


GRAPH_CLOUDS: Mapping[str, GraphCloud] = {
    "public": GraphCloud(
        "public", "https://graph.microsoft.com", "https://login.microsoftonline.com", "security.microsoft.com"
    ),
    # US Government L4 (GCC High); Microsoft 365 GCC stays on the public endpoints.
    "usgov": GraphCloud(
        "usgov", "https://graph.microsoft.us", "https://login.microsoftonline.us", "security.microsoft.us"
    ),
    # US Government L5 (DoD).
    "dod": GraphCloud(
        "dod", "https://dod-graph.microsoft.us", "https://login.microsoftonline.us", "security.apps.mil"
    ),
}


def graph_cloud(name: str, *, where: str = "[oauth] cloud") -> GraphCloud:
    """The endpoints of cloud ``name``; :class:`ConfigError` for China (no incidents API, A.3)
    and for unknown names. ``where`` names the ini key in the message."""
    if name == "china":
        raise ConfigError(
            [
                f"{where}: china (21Vianet) has no Microsoft Graph security incidents API, so Defender "
                "XDR incidents cannot be synced there; sync the Sentinel workspace instead"
            ]
        )
    cloud = GRAPH_CLOUDS.get(name)
    if cloud is None:
        raise ConfigError([f"{where}: unknown cloud {name!r} (one of {', '.join(GRAPH_CLOUDS)})"])
    return cloud


def graph_scope(graph_url: str) -> str:
    """``<graph_url>/.default``: the app-only scope of every application permission (A.1)."""
    return graph_url.rstrip("/") + "/.default"


def graph_auth(
    *,
    tenant_id: str,
    client_id: str,
    cloud: str = "public",
    client_secret: str | None = None,
    certificate_file: str | Path | None = None,
    graph_url: str | None = None,
    authority_host: str | None = None,
    scope: str | None = None,
    ca_bundle: str | Path | None = None,
) -> EntraAuth:
    """Entra client credentials (msal) for Microsoft Graph in ``cloud``.

    ``graph_url``/``authority_host`` override the cloud's hosts; the scope is
    ``<graph_url>/.default`` unless given. An ARM token is not a Graph token (A.1): an app that
    talks to both holds two of these.
    """
    endpoints = graph_cloud(cloud)
    return EntraAuth(
        tenant_id=tenant_id,
        client_id=client_id,
        client_secret=client_secret,
        certificate_file=certificate_file,
        authority_host=authority_host or endpoints.authority_host,
        scope=scope or graph_scope(graph_url or endpoints.graph_url),
        ca_bundle=ca_bundle,
    )


_PACERS: dict[tuple[str, str], RequestPacer] = {}
# Seconds added to Graph's one-minute window: network jitter between our send and Graph's count.
PACE_MARGIN = 0.5


def graph_pacer(tenant_id: str, client_id: str, per_minute: int = RATE_PER_MINUTE) -> RequestPacer:
    """The one pacer of an app in a tenant: Graph counts ``/security`` calls per app per tenant
    (G), so every client of that pair must share it."""
    key = (tenant_id.lower(), client_id.lower())
    pacer = _PACERS.get(key)
    if pacer is None or pacer.limit != per_minute:
        pacer = _PACERS[key] = RequestPacer(per_minute, 60.0, margin=PACE_MARGIN)
    return pacer


def missing_roles(error: Forbidden) -> tuple[list[str], list[str]] | None:
    """(roles the API requires, roles the token has) from Graph's 403 text (A.2), else None."""
    found = _ROLES.search(error.detail or "")
    if found is None:
        return None
    return (
        [r for r in found.group("required").split(",") if r],
        [r for r in found.group("granted").split(",") if r],
    )


# --- wire models ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GraphComment:
    """An ``alertComment``: no id, no author id, never edited (B.4, E)."""

    text: str
    author: str | None
    created: datetime | None

    @property
    def key(self) -> tuple[str, str]:
        """What identifies a comment: its time (as sent) and its text (E: de-duplicate on these)."""
        return (self.created.isoformat() if self.created else "", self.text)


@dataclass(frozen=True, slots=True)
class GraphEvidence:
    """One piece of alert evidence; ``name`` is what identifies it to a person (F.3)."""

    kind: str  # e.g. "userEvidence"
    name: str
    verdict: str | None
    remediation_status: str | None
    roles: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GraphAlert:
    """An alert v2 (F.2); enum values are open strings."""

    id: str
    incident_id: str | None
    title: str
    description: str | None
    severity: str
    status: str
    classification: str | None
    determination: str | None
    service_source: str | None
    detection_source: str | None
    product_name: str | None
    category: str | None
    mitre_techniques: tuple[str, ...]
    created: datetime | None
    last_update: datetime | None
    resolved: datetime | None
    web_url: str | None
    evidence: tuple[GraphEvidence, ...]
    raw: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class GraphIncident:
    """A ``microsoft.graph.security.incident`` (B.1). ``modified_ticks`` is ``lastUpdateDateTime``
    exactly (100 ns ticks; ``modified`` keeps microseconds). ``alerts`` is None unless expanded."""

    id: str
    display_name: str
    description: str | None
    summary: str | None
    status: str
    severity: str
    classification: str | None
    determination: str | None
    resolving_comment: str | None
    assigned_to: str | None
    custom_tags: tuple[str, ...]
    system_tags: tuple[str, ...]
    comments: tuple[GraphComment, ...]
    created: datetime
    modified: datetime
    modified_ticks: int
    last_modified_by: str | None
    web_url: str | None
    redirect_incident_id: str | None
    tenant_id: str | None
    priority_score: int | None
    alerts: tuple[GraphAlert, ...] | None
    raw: Mapping[str, Any]

    @property
    def redirected(self) -> bool:
        """Merged into ``redirect_incident_id`` (H.3: key off this, never the tag)."""
        return self.status == "redirected"

    @property
    def closed(self) -> bool:
        return self.status in CLOSED_STATUSES

    def written_by(self, app_name: str) -> bool:
        """Whether the last change was this app's own write (``API-App:<name>``, B.5, D.4)."""
        return self.last_modified_by == f"API-App:{app_name}"


# --- the client ---------------------------------------------------------------------------------


class GraphClient:
    """Defender XDR incidents of the tenant the token belongs to.

    ``graph_url`` is the cloud's Graph endpoint (or an emulator); ``max_requests`` bounds one
    listing.
    """

    def __init__(self, http: HttpClient, graph_url: str = GRAPH_CLOUDS["public"].graph_url, *,
                 max_requests: int = 10_000) -> None:  # fmt: skip
        self.http = http
        self.graph_url = graph_url.rstrip("/")
        self.base_url = f"{self.graph_url}/v1.0/security"
        self.max_requests = max_requests
        self.skipped = 0
        origin = urlsplit(self.graph_url)
        self._origin = (origin.scheme, origin.hostname, origin.port)

    def incident_url(self, incident_id: str) -> str:
        return f"{self.base_url}/incidents/{_segment(incident_id)}"

    # -- reading
    async def list_incidents(
        self,
        *,
        modified_since: datetime | None = None,
        created_since: datetime | None = None,
        page_size: int = MAX_TOP,
    ) -> AsyncIterator[GraphIncident]:
        """Incidents whose ``lastUpdateDateTime`` is at or after ``modified_since`` (and created
        at or after ``created_since``), oldest change first; redirected ones included (C.6)."""
        if not 0 < page_size <= MAX_TOP:
            raise ValueError(f"page_size must be 1..{MAX_TOP} (GRAPH.md C.3)")
        lower = _ticks(modified_since) if modified_since is not None else None
        created = _ticks(created_since) if created_since is not None else None
        seen: dict[str, int] = {}
        requests = 0
        url = f"{self.base_url}/incidents"
        while True:
            params = _list_params(lower, created, page_size)
            resp = await self._get(url, params)
            offset, links = 0, set()
            while True:
                requests += 1
                if requests > self.max_requests:
                    raise self._paging_error(url, "TooManyPages", f"more than {self.max_requests} requests")
                newest = lower
                items = _items(resp.body)
                for raw in items:
                    incident = self._parse_listed(raw)
                    if incident is None or (lower is not None and incident.modified_ticks < lower):
                        continue  # unparsable, or outside the window (a link that lost our filter)
                    if seen.get(incident.id, -1) < incident.modified_ticks:
                        seen[incident.id] = incident.modified_ticks
                        yield incident
                    newest = (
                        incident.modified_ticks if newest is None else max(newest, incident.modified_ticks)
                    )
                offset += len(items)
                link = resp.body.get("@odata.nextLink")
                if not link:
                    return
                if newest is not None and (lower is None or newest > lower):
                    break  # page by time: the next query starts at the newest change seen
                # A page of equal times: only the next link (or $skip) gets past them.
                if not isinstance(link, str) or link in links:
                    raise self._paging_error(url, "PagingLoop", "@odata.nextLink repeats")
                links.add(link)
                resp = await self._continue(link, url, params, offset)
            lower = newest

    async def get_incident(self, incident_id: str, *, alerts: bool = False) -> GraphIncident:
        """One incident (with its alerts when ``alerts``); NotFound if it does not exist."""
        params = {"$expand": "alerts"} if alerts else None
        resp = await self._get(self.incident_url(incident_id), params)
        return parse_incident(resp.body)

    async def list_alerts(self, incident_id: str) -> tuple[GraphAlert, ...]:
        """The incident's alerts, fetched for this one incident only (C.5)."""
        incident = await self.get_incident(incident_id, alerts=True)
        return incident.alerts or ()

    # -- writing
    async def update_incident(self, incident_id: str, changes: Mapping[str, Any]) -> GraphIncident:
        """PATCH exactly ``changes`` (Graph property names) and return the incident as saved.

        No ETag exists (D.4): re-read just before and send only what changed (even a PATCH
        that changes nothing moves ``lastUpdateDateTime``, so an empty one is refused).
        """
        body = _validated_patch(changes)
        resp = await self.http.request(
            "PATCH",
            self.incident_url(incident_id),
            json=body,
            headers=PREFER,
            expected=(200,),
            idempotent=True,  # plain values: sending them twice leaves the same incident
        )
        return parse_incident(resp.body)

    async def add_comment(self, incident_id: str, text: str) -> tuple[GraphComment, ...]:
        """POST a comment; returns every comment of the incident, oldest first (E).

        Not retried after an unclear failure (a comment has no id to make it idempotent): the
        caller re-reads the incident and looks for (time, text) before posting again.
        """
        if not text.strip():
            raise ValueError("a Defender comment must not be empty")
        if len(text.encode("utf-16-le")) // 2 > MAX_COMMENT_CHARS:
            raise ValueError(f"a Defender comment is limited to {MAX_COMMENT_CHARS} characters")
        resp = await self.http.request(
            "POST",
            f"{self.incident_url(incident_id)}/comments",
            json={"@odata.type": "microsoft.graph.security.alertComment", "comment": text},
            headers=PREFER,
            expected=(200,),
            idempotent=False,
        )
        return tuple(parse_comments(_items(resp.body)))

    # -- helpers
    async def _get(self, url: str | URL, params: Mapping[str, str | int] | None = None) -> Any:
        return await self.http.request("GET", url, params=params, headers=PREFER, expected=(200,))

    def _parse_listed(self, raw: Any) -> GraphIncident | None:
        try:
            return parse_incident(raw)
        except PermanentError as exc:
            self.skipped += 1
            log.warning("graph_incident_skipped", error=str(exc))
            return None

    async def _continue(self, link: str, url: str, params: Mapping[str, str | int], offset: int) -> Any:
        """The next page of the same query: the link verbatim when it carries our query (C.4),
        else our own query with ``$skip`` (a link without it would list something else)."""
        query = dict(parse_qsl(urlsplit(link).query, keep_blank_values=True))
        if all(query.get(k) == str(params[k]) for k in ("$filter", "$orderby") if k in params):
            return await self._get(self._trusted(link, url))
        log.info("graph_next_link_without_query", url=redact_url(link))
        return await self._get(url, {**params, "$skip": offset})

    def _trusted(self, link: str, url: str) -> URL:
        """The link as a URL to send unchanged; the bearer token goes wherever it points, so it
        must point at our Graph host."""
        parts = urlsplit(link)
        if (parts.scheme, parts.hostname, parts.port) != self._origin:
            raise self._paging_error(url, "UntrustedNextLink", f"@odata.nextLink leaves {self.graph_url}")
        return URL(quote(link, safe=_URL_SAFE), encoded=True)

    @staticmethod
    def _paging_error(url: str, code: str, detail: str) -> PermanentError:
        return PermanentError(SYSTEM, "GET", redact_url(url), 200, code, detail)


def _list_params(lower: int | None, created: int | None, page_size: int) -> dict[str, str | int]:
    filters = []
    if lower is not None:
        filters.append(f"lastUpdateDateTime ge {format_ticks(lower)}")
    if created is not None:
        filters.append(f"createdDateTime ge {format_ticks(created)}")
    params: dict[str, str | int] = {"$orderby": "lastUpdateDateTime asc", "$top": page_size}
    if filters:
        params["$filter"] = " and ".join(filters)
    return params


def _validated_patch(changes: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(changes) - set(WRITABLE))
    if unknown:
        raise ValueError(f"not writable incident properties: {', '.join(unknown)} (GRAPH.md D.2)")
    if not changes:
        raise ValueError("nothing to change: an empty PATCH still moves lastUpdateDateTime")
    status = changes.get("status")
    if status is not None and status not in STATUSES:
        raise ValueError(f"status {status!r} cannot be set through Graph (one of {', '.join(STATUSES)})")
    if "severity" in changes and changes["severity"] not in SEVERITIES:
        raise ValueError(f"unknown severity {changes['severity']!r}")
    if ("classification" in changes) != ("determination" in changes):
        raise ValueError("send classification and determination together (a service may check the pair)")
    if "classification" in changes:
        classification, determination = changes["classification"], changes["determination"]
        if not valid_pair(classification, determination):
            raise ValueError(
                f"determination {determination!r} does not go with classification {classification!r}"
            )
    tags = changes.get("customTags")
    if "customTags" in changes and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        raise ValueError("customTags must be the full list of tag strings")
    return copy.deepcopy(dict(changes))


def valid_pair(classification: str | None, determination: str | None) -> bool:
    """Whether Graph accepts this classification/determination pair (B.3)."""
    if determination in (None, "unknown"):
        return classification is None or classification in PAIRS
    return determination in PAIRS.get(classification or "unknown", frozenset())


def changed_fields(current: GraphIncident, desired: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``desired`` (Graph property names) that differs from ``current``: the minimal
    PATCH body (D.4). An empty ``assignedTo`` means unassigned."""
    now = current.raw
    out: dict[str, Any] = {}
    for key, value in desired.items():
        if key not in WRITABLE:
            raise ValueError(f"not a writable incident property: {key}")
        old = now.get(key) if isinstance(now, Mapping) else None
        if key == "assignedTo":
            old, value = old or None, value or None
        if key == "customTags":
            old, value = list(old or []), list(value)
        if old != value:
            out[key] = value
    if ("classification" in out) != ("determination" in out):
        for key in ("classification", "determination"):  # the pair goes together
            out.setdefault(key, desired.get(key, now.get(key) if isinstance(now, Mapping) else None))
    return out


def merged_tags(current: Iterable[str], add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[str]:
    """The full ``customTags`` list to PATCH: a PATCH replaces the list (D.2), so keep everyone
    else's tags, in their order."""
    dropped = set(remove)
    return [t for t in dict.fromkeys([*current, *add]) if t not in dropped]


# --- parsing ----------------------------------------------------------------------------------


def parse_incident(raw: Any) -> GraphIncident:
    """A Graph incident -> :class:`GraphIncident` (tolerant; PermanentError if hopeless)."""
    ident = raw.get("id") if isinstance(raw, dict) else None
    label = str(ident) if ident is not None else "?"
    if not isinstance(ident, (str, int)) or isinstance(ident, bool) or str(ident) == "":
        raise _unparsable(label, "no id")
    try:
        created_ticks = parse_ticks(str(raw["createdDateTime"]))
        modified_ticks = parse_ticks(str(raw.get("lastUpdateDateTime") or raw["createdDateTime"]))
    except (KeyError, ValueError):
        raise _unparsable(label, "no valid createdDateTime/lastUpdateDateTime") from None
    alerts = raw.get("alerts")
    return GraphIncident(
        id=str(ident),
        display_name=_str(raw.get("displayName")),
        description=_opt(raw.get("description")),
        summary=_opt(raw.get("summary")),
        status=_str(raw.get("status")),
        severity=_str(raw.get("severity")),
        classification=_opt(raw.get("classification")),
        determination=_opt(raw.get("determination")),
        resolving_comment=_opt(raw.get("resolvingComment")),
        assigned_to=_opt(raw.get("assignedTo")),
        custom_tags=_strings(raw.get("customTags")),
        system_tags=_strings(raw.get("systemTags")),
        comments=tuple(parse_comments(raw.get("comments"))),
        created=ticks_datetime(created_ticks),
        modified=ticks_datetime(modified_ticks),
        modified_ticks=modified_ticks,
        last_modified_by=_opt(raw.get("lastModifiedBy")),
        web_url=_opt(raw.get("incidentWebUrl")),
        redirect_incident_id=_opt(raw.get("redirectIncidentId")),
        tenant_id=_opt(raw.get("tenantId")),
        priority_score=_int(raw.get("priorityScore")),
        alerts=tuple(parse_alert(a) for a in alerts if isinstance(a, dict))
        if isinstance(alerts, list)
        else None,
        raw=copy.deepcopy(raw),
    )


def parse_comments(raw: Any) -> list[GraphComment]:
    """``alertComment`` objects, in the order sent (oldest first); odd entries are skipped."""
    out = []
    for item in raw if isinstance(raw, list) else ():
        if not isinstance(item, dict) or not isinstance(item.get("comment"), str):
            continue
        out.append(GraphComment(item["comment"], _opt(item.get("createdByDisplayName")),
                                _time(item.get("createdDateTime"))))  # fmt: skip
    return out


def parse_alert(raw: Mapping[str, Any]) -> GraphAlert:
    """An alert v2 -> :class:`GraphAlert` (every field optional but the id)."""
    evidence = raw.get("evidence")
    return GraphAlert(
        id=_str(raw.get("id")),
        incident_id=_opt(raw.get("incidentId")),
        title=_str(raw.get("title")),
        description=_opt(raw.get("description")),
        severity=_str(raw.get("severity")),
        status=_str(raw.get("status")),
        classification=_opt(raw.get("classification")),
        determination=_opt(raw.get("determination")),
        service_source=_opt(raw.get("serviceSource")),
        detection_source=_opt(raw.get("detectionSource")),
        product_name=_opt(raw.get("productName")),
        category=_opt(raw.get("category")),
        mitre_techniques=_strings(raw.get("mitreTechniques")),
        created=_time(raw.get("createdDateTime")),
        last_update=_time(raw.get("lastUpdateDateTime")),
        resolved=_time(raw.get("resolvedDateTime")),
        web_url=_opt(raw.get("alertWebUrl")),
        evidence=tuple(parse_evidence(e) for e in evidence if isinstance(e, dict))
        if isinstance(evidence, list)
        else (),
        raw=copy.deepcopy(dict(raw)),
    )


# The property that names each kind of evidence to a person (F.3); unknown kinds fall back to
# their display name (v1.0 has 48 subtypes and grows).
_EVIDENCE_NAME: Mapping[str, tuple[str, ...]] = {
    "userEvidence": ("userAccount.userPrincipalName", "userAccount.accountName"),
    "deviceEvidence": ("deviceDnsName", "hostName"),
    "ipEvidence": ("ipAddress",),
    "urlEvidence": ("url",),
    "mailboxEvidence": ("primaryAddress", "upn"),
    "analyzedMessageEvidence": ("subject", "networkMessageId"),
    "fileEvidence": ("fileDetails.fileName", "fileDetails.sha256"),
    "processEvidence": ("processCommandLine", "imageFile.fileName"),
    "cloudApplicationEvidence": ("displayName", "appId"),
    "oauthApplicationEvidence": ("displayName", "appId"),
    "azureResourceEvidence": ("resourceName", "resourceId"),
    "registryKeyEvidence": ("registryKey",),
    "registryValueEvidence": ("registryValueName", "registryKey"),
    "malwareEvidence": ("name",),
    "dnsEvidence": ("domainName",),
}


def parse_evidence(raw: Mapping[str, Any]) -> GraphEvidence:
    """One evidence object, any subtype (F.3)."""
    kind = _str(raw.get("@odata.type")).rsplit(".", 1)[-1]
    name = ""
    for path in (*_EVIDENCE_NAME.get(kind, ()), "displayName"):
        value: Any = raw
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, (str, int)) and str(value):
            name = str(value)
            break
    return GraphEvidence(kind, name, _opt(raw.get("verdict")), _opt(raw.get("remediationStatus")),
                         _strings(raw.get("roles")))  # fmt: skip


# --- time -------------------------------------------------------------------------------------


def parse_ticks(value: str) -> int:
    """A Graph timestamp (0-7 fractional digits, ``Z`` or an offset, B.5) -> exact 100 ns ticks."""
    found = _TIME.match(value.strip())
    if found is None:
        raise ValueError(f"not a Graph timestamp: {value!r}")
    whole, fraction, zone = found.groups()
    dt = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + int((fraction or "").ljust(7, "0"))


def format_ticks(ticks: int) -> str:
    """Ticks -> ``2026-02-25T16:29:33.1000000Z`` (an OData literal: unquoted, 7 digits)."""
    seconds, fraction = divmod(ticks, 10_000_000)
    return (_EPOCH + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S") + f".{fraction:07d}Z"


def ticks_datetime(ticks: int) -> datetime:
    """Ticks -> an aware UTC datetime, truncated to microseconds."""
    return _EPOCH + timedelta(microseconds=ticks // 10)


def _ticks(value: datetime) -> int:
    if value.tzinfo is None:
        raise ValueError("naive datetime in a Graph filter: give it a time zone (UTC)")
    delta = value.astimezone(UTC) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10_000_000 + delta.microseconds * 10


def _time(value: Any) -> datetime | None:
    try:
        return ticks_datetime(parse_ticks(value)) if isinstance(value, str) else None
    except ValueError:
        return None


# --- small helpers ------------------------------------------------------------------------------


def _unparsable(incident: str, why: str) -> InvalidResponse:
    return InvalidResponse(SYSTEM, "GET", f"incident {incident}", 200, "InvalidIncident", why)


def _items(body: Any) -> list[Any]:
    items = body.get("value") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidResponse(SYSTEM, "GET", "list", 200, "InvalidResponse", "no 'value' array")
    return items


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _opt(value: Any) -> str | None:
    return None if value is None or value == "" else _str(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else ()


def _segment(value: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise DataError(f"invalid Graph incident id: {value!r}")
    return value


__all__ = [
    "GRAPH_CLOUDS",
    "MAX_TOP",
    "PAIRS",
    "RATE_PER_MINUTE",
    "STATUSES",
    "WRITABLE",
    "GraphAlert",
    "GraphClient",
    "GraphCloud",
    "GraphComment",
    "GraphEvidence",
    "GraphIncident",
    "changed_fields",
    "format_ticks",
    "graph_auth",
    "graph_cloud",
    "graph_pacer",
    "graph_scope",
    "merged_tags",
    "missing_roles",
    "parse_alert",
    "parse_comments",
    "parse_evidence",
    "parse_incident",
    "parse_ticks",
    "valid_pair",
]
