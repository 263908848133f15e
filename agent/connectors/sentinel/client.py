"""Typed client for the Microsoft Sentinel incidents API (ARM, REFERENCE A). No sync logic.

* Listing uses a server-side ``$filter`` (the label lambda first, E.1), pages by modification
  time (an incident edited while the listing runs is listed again, never skipped) and follows
  ``nextLink`` verbatim (A.7) only through a run of equal times; bounded in requests. Several
  labels are one listing each, merged here.
* Updates are full-object PUTs built from the freshest copy of the incident plus the changes,
  with the etag in the body (A.5): nothing writable is ever dropped, and a stale etag comes
  back as :class:`~agent.errors.EditConflict` for the caller to re-read and re-plan.
* Parsing (:mod:`.models`) is tolerant (A.4: every enum is open); an incident that cannot be
  parsed at all is a :class:`~agent.errors.PermanentError` naming it; listings skip it with a
  warning.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

from yarl import URL

from agent.connectors.http import HttpClient
from agent.connectors.http_errors import redact_url
from agent.connectors.own_writes import OwnWrites
from agent.connectors.sentinel.models import (
    SentinelAlert,
    SentinelComment,
    SentinelEntity,
    SentinelIncident,
    build_put_body,
    format_arm_time,
    parse_alert,
    parse_comment,
    parse_entity,
    parse_incident,
)
from agent.errors import DataError, InvalidResponse, PermanentError
from agent.log import log

MAX_COMMENT_CHARS = 30_000  # REFERENCE A.8, in UTF-16 code units as the service counts them
MAX_TOP = 1000  # REFERENCE A.7
XDR_PROVIDER = "Microsoft XDR"
DEFENDER_INCIDENT_URL = "https://security.microsoft.com/incidents/{id}"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.()-]{1,256}$")  # RG names may hold ( ) (ARM naming rules)
# Characters a nextLink may carry unencoded; anything else (a raw space, A.7) is percent-encoded.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def odata_string(value: str) -> str:
    """An OData string literal: single quotes, with ``'`` doubled (the only escape OData has)."""
    if any(ord(ch) < 0x20 for ch in value):
        raise DataError("control characters are not allowed in an OData string literal")
    return "'" + value.replace("'", "''") + "'"


class SentinelClient:
    """The incidents API of one Sentinel workspace.

    ``management_url`` is the ARM endpoint of the cloud (REFERENCE A.12); ``portal_host`` builds
    portal links when an incident carries no ``incidentUrl``. ``max_pages`` bounds a listing.
    """

    def __init__(
        self,
        http: HttpClient,
        management_url: str,
        api_version: str,
        subscription_id: str,
        resource_group: str,
        workspace_name: str,
        portal_host: str = "portal.azure.com",
        *,
        max_pages: int = 10_000,
    ) -> None:
        self.http = http
        self.management_url = management_url.rstrip("/")
        self.api_version = api_version
        self.portal_host = portal_host
        self.max_pages = max_pages
        self.skipped = 0
        self.own = OwnWrites()  # this workspace's incidents we wrote (PUT, comments), for page sizes
        self.base_id = (
            f"/subscriptions/{_segment(subscription_id)}/resourceGroups/{_segment(resource_group)}"
            f"/providers/Microsoft.OperationalInsights/workspaces/{_segment(workspace_name)}"
            "/providers/Microsoft.SecurityInsights"
        )
        self.base_url = self.management_url + self.base_id
        origin = urlsplit(self.management_url)
        self._origin = (origin.scheme, origin.hostname, origin.port)

    # -- URLs --

    def incident_url(self, name: str) -> str:
        """The ARM URL of one incident (without api-version)."""
        return f"{self.base_url}/incidents/{_segment(name)}"

    def _params(self, **extra: str | int) -> dict[str, str | int]:
        return {"api-version": self.api_version, **extra}

    # -- incidents --

    async def list_incidents(
        self,
        *,
        modified_since: datetime | None = None,
        created_since: datetime | None = None,
        labels: Sequence[str] = (),
        open_only: bool = False,
        page_size: int = 200,
    ) -> AsyncIterator[SentinelIncident]:
        """Incidents matching the filters, oldest modification first; each version once.

        ``modified_since``/``created_since`` are inclusive (``ge``). ``labels``: incidents that
        carry any of these label names (exact, case-sensitive, A.7); one listing per label,
        merged here, since Sentinel refuses an ``or`` inside the lambda (REFERENCE E.1).
        ``open_only``: status New or Active (``ne 'Closed'``).

        Paged by time, not by ``$skipToken``: the next page is the same query from the newest
        modification time seen (``ge``, so equal times come back and are dropped by name and
        etag). An incident edited while the listing runs moves behind that time and is listed
        again, so nothing slides between two pages; an offset-like token (A.7: opaque, its
        semantics unpublished) would skip one. ``nextLink`` is followed only through a page
        whose items all share one modification time, which no time filter can get past.
        """
        if not 0 < page_size <= MAX_TOP:
            raise ValueError(f"page_size must be 1..{MAX_TOP}")
        if not open_only:
            # Our own writes in the window come back too: room for them on the page.
            page_size = self.own.page(page_size, modified_since, MAX_TOP)
        seen: dict[str, str] = {}  # lower-cased name -> etag already yielded
        for label in dict.fromkeys(labels) or (None,):
            listing = self._time_paged(label, modified_since, created_since, open_only, page_size)
            async for incident in listing:
                key = incident.name.lower()
                if seen.get(key) != incident.etag:
                    seen[key] = incident.etag
                    yield incident

    async def _time_paged(
        self,
        label: str | None,
        lower: datetime | None,
        created_since: datetime | None,
        open_only: bool,
        page_size: int,
    ) -> AsyncIterator[SentinelIncident]:
        url = f"{self.base_url}/incidents"
        requests = 0
        while True:
            params = self._params()
            params["$orderby"] = "properties/lastModifiedTimeUtc asc"
            params["$top"] = page_size
            flt = incident_filter(
                label=label, modified_since=lower, created_since=created_since, open_only=open_only
            )
            if flt:
                params["$filter"] = flt
            resp = await self.http.request("GET", url, params=params)
            links: set[str] = set()
            while True:
                requests += 1
                if requests > self.max_pages:
                    raise _paging_error(url, "TooManyPages", f"more than {self.max_pages} pages")
                newest = lower
                for raw in _items(resp.body, "value"):
                    incident = self._parse_listed(raw)
                    if incident is None:
                        continue
                    yield incident
                    newest = incident.modified if newest is None else max(newest, incident.modified)
                link = resp.body.get("nextLink") if isinstance(resp.body, dict) else None
                if not link:
                    return
                if newest is not None and (lower is None or newest > lower):
                    break  # the next page: the same query from the newest time seen
                if not isinstance(link, str) or link in links:
                    raise _paging_error(url, "PagingLoop", "nextLink repeats")
                links.add(link)
                resp = await self.http.request("GET", self._next_link(link, url))
            lower = newest

    def _parse_listed(self, raw: Any) -> SentinelIncident | None:
        try:
            return parse_incident(raw)
        except InvalidResponse as exc:
            self.skipped += 1
            log.warning("sentinel_incident_skipped", error=str(exc))
            return None

    async def get_incident(self, name: str) -> SentinelIncident:
        """One incident; :class:`~agent.errors.NotFound` if it does not exist."""
        resp = await self.http.request("GET", self.incident_url(name), params=self._params())
        return parse_incident(resp.body)

    async def update_incident(
        self, current: SentinelIncident, changes: Mapping[str, Any]
    ) -> SentinelIncident:
        """Full-object PUT of ``current`` (its ``raw``, the freshest copy) plus ``changes``.

        ``changes`` uses ARM property names from :data:`WRITABLE`. ``owner``: a dict such as
        ``{"userPrincipalName": upn, "objectId": None}`` (a bare UPN string is accepted too),
        or ``None`` to unassign. ``labels``: label names; ``AutoAssigned`` labels keep their
        type and are never removed. Setting ``status`` to New/Active clears the
        classification. A stale etag raises :class:`~agent.errors.EditConflict` (not retried here).
        """
        body = build_put_body(current, changes)
        resp = await self.http.request(
            "PUT",
            self.incident_url(current.name),
            params=self._params(),
            json=body,
            expected=(200, 201),
            # Safe to resend: a replay after a lost success carries the old etag and gets 409.
            idempotent=True,
        )
        if resp.status == 201:
            log.warning("sentinel_incident_recreated", incident=current.name)
        updated = parse_incident(resp.body)
        self.own.add(updated.name.lower(), updated.modified)
        return updated

    # -- comments, alerts, entities --

    async def list_comments(self, name: str) -> list[SentinelComment]:
        """Every comment on the incident, oldest first."""
        url = f"{self.incident_url(name)}/comments"
        comments: list[SentinelComment] = []
        async for raw in self._pages(url, self._params()):
            try:
                comments.append(parse_comment(raw))
            except PermanentError as exc:
                log.warning("sentinel_comment_skipped", incident=name, error=str(exc))
        return sorted(comments, key=lambda c: (c.created, c.name))

    async def put_comment(self, name: str, comment_id: str, message: str) -> SentinelComment:
        """Create (or overwrite) the comment ``comment_id``.

        The caller chooses the id (e.g. derived from the ServiceNow journal entry), so sending
        it again after an unclear failure cannot add a second comment: the request is retried.
        """
        if len(message.encode("utf-16-le")) // 2 > MAX_COMMENT_CHARS:
            raise ValueError(f"a Sentinel comment is limited to {MAX_COMMENT_CHARS} characters")
        if not message:
            raise ValueError("a Sentinel comment must not be empty")
        resp = await self.http.request(
            "PUT",
            f"{self.incident_url(name)}/comments/{_segment(comment_id)}",
            params=self._params(),
            json={"properties": {"message": message}},
            expected=(200, 201),
            idempotent=True,
        )
        comment = parse_comment(resp.body)
        # A comment very likely moves the incident's lastModifiedTimeUtc too (E.2): count it.
        self.own.add(name.lower(), comment.modified)
        return comment

    async def list_alerts(self, name: str) -> list[SentinelAlert]:
        """The incident's alerts (``POST .../alerts``, a read despite the verb)."""
        resp = await self.http.request(
            "POST",
            f"{self.incident_url(name)}/alerts",
            params=self._params(),
            idempotent=True,
            expected=(200,),
        )
        return [parse_alert(a) for a in _items(resp.body, "value")]

    async def list_entities(self, name: str) -> list[SentinelEntity]:
        """The incident's entities (``POST .../entities``)."""
        resp = await self.http.request(
            "POST",
            f"{self.incident_url(name)}/entities",
            params=self._params(),
            idempotent=True,
            expected=(200,),
        )
        return [parse_entity(e) for e in _items(resp.body, "entities")]

    # -- links --

    def portal_url(self, incident: SentinelIncident) -> str:
        """``incidentUrl`` when the service sent one, else the portal link built as in A.4."""
        if incident.url:
            return incident.url
        resource_id = incident.id or f"{self.base_id}/incidents/{incident.name}"
        return f"https://{self.portal_host}/#asset/Microsoft_Azure_Security_Insights/Incident{resource_id}"

    def defender_url(self, incident: SentinelIncident) -> str | None:
        """The Defender portal link for an incident that came from Microsoft Defender XDR.

        Only when ``providerName`` is ``Microsoft XDR``: the provider's own URL when it sent
        one, else ``https://security.microsoft.com/incidents/<providerIncidentId>``. ``None``
        for every other provider (native Sentinel incidents have no Defender page).
        """
        if incident.provider_name != XDR_PROVIDER:
            return None
        if incident.provider_incident_url and incident.provider_incident_url.startswith("https://"):
            return incident.provider_incident_url
        if incident.provider_incident_id:
            return DEFENDER_INCIDENT_URL.format(id=quote(incident.provider_incident_id, safe=""))
        return None

    # -- paging --

    async def _pages(self, url: str, params: dict[str, str | int]) -> AsyncIterator[Any]:
        """Items of a pageable list, following ``nextLink`` verbatim (A.7)."""
        resp = await self.http.request("GET", url, params=params)
        links: set[str] = set()
        for _ in range(self.max_pages):
            for item in _items(resp.body, "value"):
                yield item
            link = resp.body.get("nextLink") if isinstance(resp.body, dict) else None
            if not link:
                return
            if not isinstance(link, str) or link in links:
                raise _paging_error(url, "PagingLoop", "nextLink repeats")
            links.add(link)
            resp = await self.http.request("GET", self._next_link(link, url))
        raise _paging_error(url, "TooManyPages", f"more than {self.max_pages} pages")

    def _next_link(self, link: str, url: str) -> URL:
        """The nextLink as a URL to send unchanged; it must point at our ARM endpoint.

        The bearer token goes wherever the link points, so a link to another host is refused.
        """
        parts = urlsplit(link)
        if (parts.scheme, parts.hostname, parts.port) != self._origin:
            raise PermanentError(
                "sentinel",
                "GET",
                redact_url(url),
                200,
                "UntrustedNextLink",
                f"nextLink leaves {self.management_url}",
            )
        return URL(quote(link, safe=_URL_SAFE), encoded=True)


# --- request bodies -------------------------------------------------------------------------


def incident_filter(
    *,
    label: str | None = None,
    modified_since: datetime | None = None,
    created_since: datetime | None = None,
    open_only: bool = False,
) -> str | None:
    """The ``$filter`` of an incident listing; None when nothing is filtered.

    Sentinel's filter engine only understands a lambda as the first operand of the top-level
    ``and``: anywhere else it answers 400 "OData query syntax error", and older api-versions an
    empty list (REFERENCE E.1; azure-rest-api-specs issues #26569 and #15391). So the label
    lambda always comes first, every other clause after it.
    """
    clauses = []
    if label:
        clauses.append(f"properties/labels/any(l: l/labelName eq {odata_string(label)})")
    if modified_since is not None:
        clauses.append(f"properties/lastModifiedTimeUtc ge {_odata_time(modified_since)}")
    if created_since is not None:
        clauses.append(f"properties/createdTimeUtc ge {_odata_time(created_since)}")
    if open_only:
        clauses.append("properties/status ne 'Closed'")
    return " and ".join(clauses) or None


def _paging_error(url: str, code: str, detail: str) -> PermanentError:
    return PermanentError("sentinel", "GET", redact_url(url), 200, code, detail)


def _items(body: Any, key: str) -> list[Any]:
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise InvalidResponse("sentinel", "GET", "list", 200, "InvalidResponse", f"no '{key}' array")
    return items


def _odata_time(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("naive datetime in an OData filter: give it a time zone (UTC)")
    return format_arm_time(value)


def _segment(value: str) -> str:
    """A path segment from data (incident or comment name, workspace parts), checked."""
    if not isinstance(value, str) or not _SEGMENT.match(value):
        raise DataError(f"invalid ARM path segment: {value!r}")
    return value
