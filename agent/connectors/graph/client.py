"""Typed client for Microsoft Graph security incidents (Defender XDR, GRAPH.md). No sync logic.

The Graph connector: clouds, the app-only token and pacing in :mod:`.cloud`, the wire models and
their parsing in :mod:`.models`, the client here; nothing from the engine.

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
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

from yarl import URL

from agent.connectors.graph.cloud import GRAPH_CLOUDS
from agent.connectors.graph.models import (
    SEVERITIES,
    STATUSES,
    SYSTEM,
    WRITABLE,
    GraphAlert,
    GraphComment,
    GraphIncident,
    datetime_ticks,
    format_ticks,
    list_items,
    parse_comments,
    parse_incident,
    valid_pair,
)
from agent.connectors.http import HttpClient
from agent.connectors.http_errors import redact_url
from agent.errors import DataError, PermanentError
from agent.log import log

MAX_TOP = 50  # C.3: more is a 400
MAX_COMMENT_CHARS = 30_000  # E
PREFER = {"Prefer": "include-unknown-enum-members"}  # B.2

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # a nextLink's characters sent as they are


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
        open_only: bool = False,
    ) -> AsyncIterator[GraphIncident]:
        """Incidents whose ``lastUpdateDateTime`` is at or after ``modified_since`` (and created
        at or after ``created_since``), oldest change first; redirected ones included (C.6)
        unless ``open_only`` (neither resolved nor redirected, C.2's ``ne``)."""
        if not 0 < page_size <= MAX_TOP:
            raise ValueError(f"page_size must be 1..{MAX_TOP} (GRAPH.md C.3)")
        lower = datetime_ticks(modified_since) if modified_since is not None else None
        created = datetime_ticks(created_since) if created_since is not None else None
        seen: dict[str, int] = {}
        requests = 0
        url = f"{self.base_url}/incidents"
        while True:
            params = _list_params(lower, created, page_size, open_only)
            resp = await self._get(url, params)
            offset, links = 0, set()
            while True:
                requests += 1
                if requests > self.max_requests:
                    raise self._paging_error(url, "TooManyPages", f"more than {self.max_requests} requests")
                newest = lower
                items = list_items(resp.body)
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
        return tuple(parse_comments(list_items(resp.body)))

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


def _list_params(
    lower: int | None, created: int | None, page_size: int, open_only: bool
) -> dict[str, str | int]:
    filters = ["status ne 'resolved' and status ne 'redirected'"] if open_only else []
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


def _segment(value: str) -> str:
    if not isinstance(value, str) or not _ID.match(value):
        raise DataError(f"invalid Graph incident id: {value!r}")
    return value
