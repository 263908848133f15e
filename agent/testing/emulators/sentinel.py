"""A strict emulator of the Microsoft Sentinel incidents API (ARM, ``Microsoft.SecurityInsights``).

It serves the operations of REFERENCE A.2 under the workspace base path, over TLS, and enforces
what the real service enforces: bearer tokens for the ARM audience, an ``api-version`` from an
allow-list, RBAC roles, ARM token-bucket throttling (A.11), full-object PUT with body etags and
409 on a stale one (A.5), the business rules of A.6, comment limits (A.8), and OData listing
with ``nextLink`` paging (A.7, parser in :mod:`agent.testing.emulators.odata`). Error bodies are ARM
``CloudError`` objects (A.10).

:class:`SentinelWorkspace` gives tests and the activity simulator direct access to the state
(no HTTP, no faults, not recorded), e.g. to play an analyst editing an incident in the portal.
"""

from __future__ import annotations

import contextvars
import copy
import math
import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from agent.testing.emulators.common import (
    Clock,
    Directory,
    DirectoryUser,
    Faults,
    IssuedToken,
    Recorder,
    TokenRegistry,
    fault_and_record_middleware,
    json_response,
    new_guid,
    normalise_audience,
    utc_iso,
)
from agent.testing.emulators.odata import (
    Coll,
    Filter,
    Node,
    Obj,
    ODataError,
    OrderKey,
    Prim,
    format_instant,
    parse_filter,
    parse_instant,
    parse_orderby,
    sort_items,
)

__all__ = ["API_VERSIONS", "SentinelEmulator", "SentinelWorkspace", "portal_text"]

API_VERSIONS: tuple[str, ...] = (
    "2025-09-01",
    "2025-06-01",
    "2025-03-01",
    "2024-09-01",
    "2024-03-01",
    "2023-11-01",
    "2023-02-01",
)
SEVERITIES = ("High", "Medium", "Low", "Informational")
STATUSES = ("New", "Active", "Closed")
CLASSIFICATIONS = ("Undetermined", "TruePositive", "BenignPositive", "FalsePositive")
REASONS_BY_CLASSIFICATION: dict[str, tuple[str, ...]] = {
    "TruePositive": ("SuspiciousActivity",),
    "BenignPositive": ("SuspiciousButExpected",),
    "FalsePositive": ("IncorrectAlertLogic", "InaccurateData"),
    "Undetermined": (),
}
REASONS = ("SuspiciousActivity", "SuspiciousButExpected", "IncorrectAlertLogic", "InaccurateData")
ENTITY_KINDS = (
    "Account", "Host", "File", "AzureResource", "CloudApplication", "DnsResolution", "FileHash", "Ip",
    "Malware", "Process", "RegistryKey", "RegistryValue", "SecurityGroup", "Url", "IoTDevice",
    "SecurityAlert", "Bookmark", "Mailbox", "MailCluster", "MailMessage", "SubmissionMail",
)  # fmt: skip
ROLES = ("Responder", "Reader", "None")
MAX_COMMENT_CHARS = 30_000
MAX_COMMENTS = 100
INCIDENT_TYPE = "Microsoft.SecurityInsights/incidents"
COMMENT_TYPE = "Microsoft.SecurityInsights/incidents/comments"
ENTITY_TYPE = "Microsoft.SecurityInsights/Entities"
PORTAL = "https://portal.azure.com/#asset/Microsoft_Azure_Security_Insights/Incident"
PUBLIC_ARM_AUDIENCES = ("https://management.azure.com", "https://management.core.windows.net")

_S, _DT, _INT = Prim("string"), Prim("datetime"), Prim("int")
INCIDENT_SCHEMA = Obj(
    {
        "id": _S, "name": _S, "type": _S, "etag": _S,
        "properties": Obj(
            {
                "title": _S, "description": _S, "severity": _S, "status": _S,
                "classification": _S, "classificationReason": _S, "classificationComment": _S,
                "owner": Obj({"objectId": _S, "email": _S, "assignedTo": _S, "userPrincipalName": _S,
                              "ownerType": _S}),
                "labels": Coll(Obj({"labelName": _S, "labelType": _S})),
                "firstActivityTimeUtc": _DT, "lastActivityTimeUtc": _DT,
                "createdTimeUtc": _DT, "lastModifiedTimeUtc": _DT,
                "incidentNumber": _INT, "incidentUrl": _S, "providerName": _S, "providerIncidentId": _S,
                "relatedAnalyticRuleIds": Coll(_S),
                "additionalData": Obj(
                    {
                        "alertsCount": _INT, "bookmarksCount": _INT, "commentsCount": _INT,
                        "alertProductNames": Coll(_S), "tactics": Coll(_S), "providerIncidentUrl": _S,
                    }
                ),
            }
        ),
    },
    "Incident",
)  # fmt: skip
"""The typed shape ``$filter``/``$orderby`` paths on incidents are checked against."""

COMMENT_SCHEMA = Obj(
    {
        "id": _S, "name": _S, "type": _S, "etag": _S,
        "properties": Obj(
            {
                "message": _S, "createdTimeUtc": _DT, "lastModifiedTimeUtc": _DT,
                "author": Obj({"objectId": _S, "email": _S, "name": _S, "userPrincipalName": _S}),
            }
        ),
    },
    "IncidentComment",
)  # fmt: skip

_WRITABLE = (
    "title", "description", "severity", "status", "classification", "classificationReason",
    "classificationComment", "owner", "labels", "firstActivityTimeUtc", "lastActivityTimeUtc",
)  # fmt: skip
_PROPERTY_ORDER = (
    *_WRITABLE, "createdTimeUtc", "lastModifiedTimeUtc", "incidentNumber", "incidentUrl",
    "providerName", "providerIncidentId", "relatedAnalyticRuleIds", "additionalData",
)  # fmt: skip
_LIST_OPTIONS = ("$filter", "$orderby", "$top", "$skipToken")
_INTERNAL_ERROR = "Encountered internal server error. Please try again."
_MAX_SKIP_TOKENS = 10_000

# The request being served, so the fault factory (which only gets status and Retry-After)
# can name the subscription and actor in an injected 429, as ARM does (A.11).
_current_request: contextvars.ContextVar[web.Request | None] = contextvars.ContextVar(
    "sentinel_request", default=None
)
_ARM_HEADERS = web.RequestKey("sentinel_arm_headers", dict[str, str])
_SUBSCRIPTION_RE = re.compile(r"/subscriptions/([^/]+)", re.IGNORECASE)


# --- errors -----------------------------------------------------------------------------------


class _ArmError(Exception):
    """An ARM error response (CloudError body) raised inside a handler."""

    def __init__(self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_response(_cloud_error(self.code, self.message), self.status, self.headers)


def _cloud_error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def _bad_request(message: str) -> _ArmError:
    return _ArmError(400, "BadRequest", message)


def _not_found(kind: str, name: str) -> _ArmError:
    return _ArmError(404, "NotFound", f"The {kind} '{name}' was not found.")


# --- throttling -------------------------------------------------------------------------------


class _TokenBucket:
    """ARM's per-scope token bucket (A.11): ``capacity`` requests, refilled at ``rate``/s."""

    def __init__(self, capacity: int, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.tokens = float(capacity)
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def retry_after(self) -> int:
        return max(1, math.ceil((1 - self.tokens) / self.rate)) if self.rate > 0 else 3600


_OPERATION_WORD = {"reads": "read", "writes": "write", "deletes": "delete"}


# --- state ------------------------------------------------------------------------------------


def _unquote_etag(value: str) -> str:
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    return v[1:-1] if len(v) >= 2 and v[0] == v[-1] == '"' else v


def _label(name: str) -> dict[str, str]:
    return {"labelName": name, "labelType": "User"}


def _owner(user: DirectoryUser | None) -> dict[str, str | None]:
    if user is None:
        return {
            "objectId": None,
            "email": None,
            "assignedTo": None,
            "userPrincipalName": None,
            "ownerType": None,
        }
    return {
        "objectId": user.object_id,
        "email": user.email,
        "assignedTo": user.display_name,
        "userPrincipalName": user.upn,
        "ownerType": "User",
    }


def _ordered(props: dict[str, Any]) -> dict[str, Any]:
    head = {k: props[k] for k in _PROPERTY_ORDER if k in props}
    return head | {k: v for k, v in props.items() if k not in head}


class SentinelWorkspace:
    """One Log Analytics workspace with Sentinel: its incidents, comments, alerts and entities.

    Direct state access for tests and the activity simulator: nothing here goes through HTTP,
    fault injection or the recorder. Methods return snapshots (deep copies).
    """

    def __init__(
        self, emulator: SentinelEmulator, subscription_id: str, resource_group: str, workspace_name: str
    ):
        self._emu = emulator
        self.subscription_id = subscription_id
        self.resource_group = resource_group
        self.workspace_name = workspace_name
        self.workspace_id = str(
            uuid.uuid5(uuid.NAMESPACE_URL, f"{subscription_id}/{resource_group}/{workspace_name}")
        )
        self.base_id = (
            f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.OperationalInsights/workspaces/{workspace_name}"
            "/providers/Microsoft.SecurityInsights"
        )
        self.incidents: dict[str, dict[str, Any]] = {}
        self._comments: dict[str, dict[str, dict[str, Any]]] = {}
        self._alerts: dict[str, list[dict[str, Any]]] = {}
        self._entities: dict[str, list[dict[str, Any]]] = {}
        self._races: dict[str, Callable[[], object]] = {}
        # Listing visibility (indexing lag): name -> versions in write order (visible from,
        # snapshot); only for incidents with a delayed change pending.
        self._index: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self._delay_next: dict[str, float] = {}
        self._list_races: list[tuple[int, Callable[[], object]]] = []
        self._lists_served = 0
        self._last_number = 0
        # Lower-cased name -> stored name: a miss (every new incident) must not scan the workspace.
        self._names: dict[str, str] = {}

    # -- helpers shared with the HTTP layer
    def _now(self) -> str:
        return utc_iso(self._emu.clock.now())

    def _key(self, name: str) -> str | None:
        """The stored incident name matching ``name`` (ARM resource names are case-insensitive)."""
        if name in self.incidents:
            return name
        key = self._names.get(name.lower())
        return key if key in self.incidents else None

    def _require_key(self, name: str) -> str:
        key = self._key(name)
        if key is None:
            raise KeyError(f"no incident {name!r} in workspace {self.workspace_name!r}")
        return key

    def _touch(self, incident: dict[str, Any], *, modified: bool = True) -> None:
        # A.5.5/A.5.7: every write to the incident or its children gets a new etag and time
        # (``modified=False``: the etag only, for a comment when E.2's switch is off).
        incident["etag"] = f'"{uuid.uuid4()}"'
        if modified:
            incident["properties"]["lastModifiedTimeUtc"] = self._now()
        self._indexed(incident)

    def _indexed(self, incident: dict[str, Any]) -> None:
        """Record the new version for listings when a delayed change is pending (see
        :meth:`delay_listing`)."""
        name = incident["name"]
        if name in self._index:
            delay = self._delay_next.pop(name, 0.0)
            self._index[name].append((self._emu.clock.time() + delay, copy.deepcopy(incident)))

    def _listed(self) -> list[dict[str, Any]]:
        """The incidents as listings show them now: a delayed change only once it is visible."""
        if not self._index:
            return list(self.incidents.values())
        now = self._emu.clock.time()
        out: list[dict[str, Any]] = []
        for name, incident in self.incidents.items():
            versions = self._index.get(name)
            if versions is None:
                out.append(incident)
                continue
            # The newest write that is visible wins; older ones are superseded.
            shown = max((i for i, v in enumerate(versions) if v[0] <= now), default=None)
            if shown == len(versions) - 1:
                del self._index[name]  # caught up: the live incident is what listings show
                out.append(incident)
            elif shown is not None:
                self._index[name] = versions[shown:]
                out.append(versions[shown][1])
        return out

    def _comment_store(self, key: str) -> dict[str, dict[str, Any]]:
        return self._comments.setdefault(key, {})

    def _sync_comment_count(self, key: str) -> None:
        data = self.incidents[key]["properties"].setdefault("additionalData", {})
        data["commentsCount"] = len(self._comment_store(key))

    def _user(self, upn: str) -> DirectoryUser:
        user = self._emu.directory.by_upn(upn)
        if user is None:
            raise ValueError(f"no directory user {upn!r}")
        return user

    def _new_incident(self, name: str, props: dict[str, Any], created: str, modified: str) -> dict[str, Any]:
        self._last_number += 1
        number = self._last_number
        incident_id = f"{self.base_id}/incidents/{name}"
        props |= {
            "createdTimeUtc": created,
            "lastModifiedTimeUtc": modified,
            "incidentNumber": number,
            "incidentUrl": f"{PORTAL}{incident_id}",
            "providerName": "Azure Sentinel",
            "providerIncidentId": str(number),
            "relatedAnalyticRuleIds": [],
            "additionalData": {
                "alertsCount": 0,
                "bookmarksCount": 0,
                "commentsCount": 0,
                "alertProductNames": [],
                "tactics": [],
            },
        }
        incident = {
            "id": incident_id,
            "name": name,
            "type": INCIDENT_TYPE,
            "etag": f'"{uuid.uuid4()}"',
            "properties": _ordered(props),
        }
        self.incidents[name] = incident
        if self._emu.listing_delay:
            self._index[name] = [(self._emu.clock.time() + self._emu.listing_delay, copy.deepcopy(incident))]
        self._names[name.lower()] = name
        self._comments[name] = {}
        self._alerts[name] = []
        self._entities[name] = []
        return incident

    # -- public direct-access API
    def create_incident(
        self,
        *,
        title: str,
        severity: str = "Medium",
        status: str = "New",
        description: str = "",
        owner_upn: str | None = None,
        labels: list[str] | tuple[str, ...] = (),
        created: datetime | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Create an incident as an analytics rule would (no validation); return it."""
        name = name or new_guid()
        if self._key(name) is not None:
            raise ValueError(f"incident {name!r} already exists")
        owner = _owner(self._user(owner_upn) if owner_upn else None)
        now = self._now()
        created_at = utc_iso(created) if created else now
        props: dict[str, Any] = {
            "title": title,
            "description": description,
            "severity": severity,
            "status": status,
            "owner": owner,
            "labels": [_label(x) for x in labels],
            "firstActivityTimeUtc": created_at,
            "lastActivityTimeUtc": created_at,
        }
        return copy.deepcopy(self._new_incident(name, props, created_at, created_at if created else now))

    def analyst_update(self, name: str, **props: Any) -> dict[str, Any]:
        """Edit an incident as an analyst in the portal would: ARM property names, no validation.

        ``labels`` takes label names, ``owner_upn`` a UPN (or None to unassign); a value of None
        removes the property. Bumps the etag and ``lastModifiedTimeUtc``.
        """
        incident = self.incidents[self._require_key(name)]
        p = incident["properties"]
        for key, value in props.items():
            if key == "owner_upn":
                p["owner"] = _owner(self._user(value) if value else None)
            elif key == "labels":
                p["labels"] = [_label(x) for x in value or ()]
            elif value is None:
                p.pop(key, None)
            else:
                p[key] = value
        incident["properties"] = _ordered(p)
        self._touch(incident)
        return copy.deepcopy(incident)

    def analyst_comment(self, name: str, message: str, author_upn: str | None = None) -> dict[str, Any]:
        """Add a comment written by a directory user (the first one when ``author_upn`` is None)."""
        key = self._require_key(name)
        users = self._emu.directory.users
        user = self._user(author_upn) if author_upn else (users[0] if users else None)
        author: dict[str, Any] = {"name": "Security analyst"}
        if user is not None:
            author = {
                "objectId": user.object_id,
                "email": user.email,
                "userPrincipalName": user.upn,
                "name": user.display_name,
            }
        return copy.deepcopy(self._put_comment(key, new_guid(), message, author)[0])

    def _put_comment(
        self, key: str, comment_name: str, message: str, author: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        store = self._comment_store(key)
        existing = next((k for k in store if k.lower() == comment_name.lower()), None)
        now = self._now()
        if existing is not None:
            comment = store[existing]
            comment["properties"]["message"] = message
            comment["properties"]["lastModifiedTimeUtc"] = now
            comment["etag"] = str(uuid.uuid4())
            created = False
        else:
            comment = {
                "id": f"{self.incidents[key]['id']}/comments/{comment_name}",
                "name": comment_name,
                "type": COMMENT_TYPE,
                "etag": str(uuid.uuid4()),  # comment etags are unquoted (A.3)
                "properties": {
                    "message": message,
                    "createdTimeUtc": now,
                    "lastModifiedTimeUtc": now,
                    "author": author,
                },
            }
            store[comment_name] = comment
            created = True
        self._sync_comment_count(key)
        self._touch(self.incidents[key], modified=self._emu.comment_moves_modified)
        return comment, created

    def _delete_comment(self, key: str, comment_name: str) -> bool:
        store = self._comment_store(key)
        existing = next((k for k in store if k.lower() == comment_name.lower()), None)
        if existing is None:
            return False
        del store[existing]
        self._sync_comment_count(key)
        self._touch(self.incidents[key], modified=self._emu.comment_moves_modified)
        return True

    def add_alert(
        self,
        name: str,
        *,
        display_name: str,
        severity: str = "Medium",
        product: str = "Microsoft Defender for Endpoint",
    ) -> dict[str, Any]:
        """Attach a new SecurityAlert; bumps alertsCount, alertProductNames, etag and time."""
        key = self._require_key(name)
        alert_id = new_guid()
        now = self._now()
        alert = {
            "id": f"{self.base_id}/Entities/{alert_id}",
            "name": alert_id,
            "type": ENTITY_TYPE,
            "kind": "SecurityAlert",
            "properties": {
                "systemAlertId": alert_id,
                "tactics": [],
                "alertDisplayName": display_name,
                "confidenceLevel": "Unknown",
                "severity": severity,
                "vendorName": "Microsoft",
                "productName": product,
                "alertType": display_name,
                "processingEndTime": now,
                "status": "New",
                "endTimeUtc": now,
                "startTimeUtc": now,
                "timeGenerated": now,
                "resourceIdentifiers": [
                    {
                        "type": "LogAnalytics",
                        "workspaceId": self.workspace_id,
                        "subscriptionId": self.subscription_id,
                        "resourceGroup": self.resource_group,
                    }
                ],
                "additionalData": {},
                "friendlyName": display_name,
            },
        }
        self._alerts.setdefault(key, []).append(alert)
        incident = self.incidents[key]
        data = incident["properties"].setdefault("additionalData", {})
        data["alertsCount"] = len(self._alerts[key])
        products = data.setdefault("alertProductNames", [])
        if product not in products:
            products.append(product)
        self._touch(incident)
        return copy.deepcopy(alert)

    def add_entity(self, name: str, *, kind: str, friendly_name: str, **props: Any) -> dict[str, Any]:
        """Attach an entity of ``kind`` (EntityKindEnum, A.9) with extra kind-specific properties."""
        key = self._require_key(name)
        if kind not in ENTITY_KINDS:
            raise ValueError(f"unknown entity kind {kind!r}")
        entity_id = new_guid()
        entity = {
            "id": f"{self.base_id}/Entities/{entity_id}",
            "name": entity_id,
            "type": ENTITY_TYPE,
            "kind": kind,
            "properties": {"friendlyName": friendly_name, **props},
        }
        self._entities.setdefault(key, []).append(entity)
        return copy.deepcopy(entity)

    def comments(self, name: str) -> list[dict[str, Any]]:
        """The incident's comments, oldest first."""
        return copy.deepcopy(list(self._comment_store(self._require_key(name)).values()))

    def portal_comments(self, name: str) -> list[str]:
        """The incident's comments as the portal shows them (HTML rendered, E.3), oldest first."""
        return [portal_text(c["properties"]["message"]) for c in self.comments(name)]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        """The incident's SecurityAlert entities."""
        return copy.deepcopy(self._alerts.get(self._require_key(name), []))

    def entities(self, name: str) -> list[dict[str, Any]]:
        """The incident's entities (without its alerts)."""
        return copy.deepcopy(self._entities.get(self._require_key(name), []))

    def delete_incident(self, name: str) -> None:
        """Remove an incident and everything attached to it."""
        key = self._require_key(name)
        del self.incidents[key]
        self._names.pop(key.lower(), None)
        for store in (self._comments, self._alerts, self._entities, self._races, self._index):
            store.pop(key, None)

    def delay_listing(self, name: str, seconds: float) -> None:
        """The next change to this incident reaches listings ``seconds`` after it is made: until
        then ``GET /incidents`` shows the incident as it is now (a GET by id shows the change at
        once). The clock skew and search-index lag the agent's ``overlap`` exists for."""
        key = self._require_key(name)
        self._index.setdefault(key, [(float("-inf"), copy.deepcopy(self.incidents[key]))])
        self._delay_next[key] = seconds

    def race_listing(self, after: int, action: Callable[[], object]) -> None:
        """One-shot: run ``action`` (e.g. an analyst edit) just before the incident listing
        request number ``after + 1`` from now is served, i.e. between two pages of a listing."""
        self._list_races.append((self._lists_served + after, action))

    def _run_list_races(self) -> None:
        served = self._lists_served
        self._lists_served += 1
        for race in [r for r in self._list_races if r[0] == served]:
            self._list_races.remove(race)
            race[1]()

    def race_next_put(self, name: str, *, comment: str | None = None, **props: Any) -> None:
        """One-shot: just before the next PUT to this incident is handled, apply
        ``analyst_update(name, **props)`` (default: move lastActivityTimeUtc), or with ``comment``
        add that analyst comment instead, so that PUT's etag is stale and it gets 409."""
        key = self._require_key(name)
        if comment is not None:
            self._races[key] = lambda: self.analyst_comment(key, comment)
        else:
            self._races[key] = lambda: self.analyst_update(
                key, **(props or {"lastActivityTimeUtc": self._now()})
            )

    def _run_race(self, key: str) -> None:
        race = self._races.pop(key, None)
        if race is not None:
            race()


# --- the HTTP emulator ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ctx:
    token: IssuedToken
    api_version: str
    workspace: SentinelWorkspace


_Handler = Callable[[web.Request, _Ctx], Awaitable[web.StreamResponse]]


def _ci(index: int, word: str) -> str:
    """A path segment matched case-insensitively, as ARM matches its literal segments."""
    return "{_l%d:(?i:%s)}" % (index, re.escape(word))  # noqa: UP031 (braces are aiohttp syntax)


_BASE = "/".join(
    [
        "",
        _ci(0, "subscriptions"), "{sub}", _ci(1, "resourceGroups"), "{rg}", _ci(2, "providers"),
        _ci(3, "Microsoft.OperationalInsights"), _ci(4, "workspaces"), "{ws}", _ci(5, "providers"),
        _ci(6, "Microsoft.SecurityInsights"),
    ]
)  # fmt: skip
_INCIDENTS = f"{_BASE}/{_ci(7, 'incidents')}"
_INCIDENT = f"{_INCIDENTS}/{{incident}}"
_COMMENTS = f"{_INCIDENT}/{_ci(8, 'comments')}"
_COMMENT = f"{_COMMENTS}/{{comment}}"
_ALERTS = f"{_INCIDENT}/{_ci(9, 'alerts')}"
_ENTITIES = f"{_INCIDENT}/{_ci(10, 'entities')}"


class SentinelEmulator:
    """The Sentinel management API as an aiohttp application (mount it with ``EmulatorServer``).

    ``missing_etag``: ``reject_409`` (a PUT to an existing incident without an etag is a 409,
    as observed, A.5.4) or ``allow``. ``read_bucket``/``write_bucket``: ARM token buckets
    (capacity, refill per second) per subscription and principal; the per-subscription global
    bucket is 15 times larger (A.11). ``api_versions`` may be replaced to narrow the allow-list.

    ``strict`` (the default, and the only mode tests and the demo use) reproduces the field
    notes of REFERENCE E where the real service refuses what a naive client sends: a ``$filter``
    lambda anywhere but first is 400 "OData query syntax error" (E.1). ``strict=False`` accepts
    any valid OData filter, for experiments only.

    ``comment_moves_modified``: whether writing a comment moves the incident's
    ``lastModifiedTimeUtc`` (it always changes the etag, E.2). The default is the likely real
    behaviour (Microsoft's own app and XSOAR find new comments only through that listing); off,
    the agent must still find new comments some other way. ``listing_delay``: seconds before a
    new incident shows up in listings (indexing lag); :meth:`SentinelWorkspace.delay_listing`
    delays one change of one incident. ``$skipToken`` values are opaque (A.7): random, valid
    only on this server, never an offset a client could compute.
    """

    def __init__(
        self,
        *,
        tokens: TokenRegistry,
        directory: Directory,
        clock: Clock,
        faults: Faults | None = None,
        recorder: Recorder | None = None,
        audience: str = "https://management.azure.com",
        missing_etag: str = "reject_409",
        default_top: int = 50,
        max_top: int = 1000,
        read_bucket: tuple[int, float] = (250, 25.0),
        write_bucket: tuple[int, float] = (200, 10.0),
        strict: bool = True,
        comment_moves_modified: bool = True,
        listing_delay: float = 0.0,
    ) -> None:
        if missing_etag not in ("reject_409", "allow"):
            raise ValueError("missing_etag must be 'reject_409' or 'allow'")
        self.tokens = tokens
        self.directory = directory
        self.clock = clock
        self.faults = faults if faults is not None else Faults()
        self.recorder = recorder if recorder is not None else Recorder()
        self.audience = audience
        # Further accepted audiences: the emulator's own URL, since an agent configured with
        # management_url = <emulator URL> asks for "<that URL>/.default" (REFERENCE A.12).
        self.audience_aliases: tuple[str, ...] = ()
        self.missing_etag = missing_etag
        self.default_top = default_top
        self.max_top = max_top
        self.read_bucket = read_bucket
        self.write_bucket = write_bucket
        self.strict = strict
        self.comment_moves_modified = comment_moves_modified
        self.listing_delay = listing_delay
        self._skip_tokens: OrderedDict[str, int] = OrderedDict()
        self.api_versions: set[str] = set(API_VERSIONS)
        self._workspaces: dict[tuple[str, str, str], SentinelWorkspace] = {}
        self._roles: dict[str, str] = {}
        self._app_names: dict[str, str] = {}
        self._buckets: dict[tuple[str, ...], _TokenBucket] = {}
        self.app = web.Application(
            middlewares=[
                self._envelope,
                fault_and_record_middleware("sentinel", self.faults, self.recorder, self._fault_response),
            ]
        )
        self._add_routes()

    # -- configuration
    def add_workspace(
        self, subscription_id: str, resource_group: str, workspace_name: str
    ) -> SentinelWorkspace:
        """Create (or return the existing) workspace."""
        key = (subscription_id.lower(), resource_group.lower(), workspace_name.lower())
        if key not in self._workspaces:
            self._workspaces[key] = SentinelWorkspace(self, subscription_id, resource_group, workspace_name)
        return self._workspaces[key]

    def workspace(self, subscription_id: str, resource_group: str, workspace_name: str) -> SentinelWorkspace:
        """The workspace; ``KeyError`` when it was never added."""
        return self._workspaces[(subscription_id.lower(), resource_group.lower(), workspace_name.lower())]

    def set_role(self, client_id: str, role: str) -> None:
        """``Responder`` (the default: everything), ``Reader`` (no PUT/DELETE) or ``None``."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        self._roles[client_id] = role

    def set_app_name(self, client_id: str, display_name: str) -> None:
        """The display name ARM shows as comment author for this application (else its client id)."""
        self._app_names[client_id] = display_name

    # -- routing
    def _add_routes(self) -> None:
        r = self.app.router
        c = "incidents/comments"
        routes: list[tuple[str, str, str, str | None, str, _Handler]] = [
            ("GET", _INCIDENTS, "incidents.list", "reads", "incidents/read", self._incidents_list),
            ("GET", _INCIDENT, "incidents.get", "reads", "incidents/read", self._incidents_get),
            ("PUT", _INCIDENT, "incidents.put", "writes", "incidents/write", self._incidents_put),
            ("DELETE", _INCIDENT, "incidents.delete", "deletes", "incidents/delete", self._incidents_delete),
            ("GET", _COMMENTS, "comments.list", "reads", f"{c}/read", self._comments_list),
            ("GET", _COMMENT, "comments.get", "reads", f"{c}/read", self._comments_get),
            ("PUT", _COMMENT, "comments.put", "writes", f"{c}/write", self._comments_put),
            ("DELETE", _COMMENT, "comments.delete", "deletes", f"{c}/delete", self._comments_delete),
            ("POST", _ALERTS, "incidents.alerts", "reads", "incidents/alerts/action", self._incidents_alerts),
            ("POST", _ENTITIES, "incidents.entities", "reads", "incidents/entities/action",
             self._incidents_entities),
        ]  # fmt: skip
        for method, path, name, kind, action, handler in routes:
            r.add_route(method, path, self._wrap(kind, action, handler), name=name)
        for path, name in (
            (_INCIDENTS, "incidents.unsupported_method"),
            (_INCIDENT, "incident.unsupported_method"),
            (_COMMENTS, "comments.unsupported_method"),
            (_COMMENT, "comment.unsupported_method"),
            (_ALERTS, "incidents.alerts.unsupported_method"),
            (_ENTITIES, "incidents.entities.unsupported_method"),
        ):
            r.add_route("*", path, self._method_not_allowed, name=name)

    def _wrap(
        self, kind: str | None, action: str, handler: _Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                ctx = self._admit(request, kind, f"Microsoft.SecurityInsights/{action}")
                return await handler(request, ctx)
            except _ArmError as exc:
                return exc.response()

        return wrapped

    async def _method_not_allowed(self, request: web.Request) -> web.StreamResponse:
        try:
            self._authenticate(request)
            version = self._api_version(request)
        except _ArmError as exc:
            return exc.response()
        # Verbatim shape of the observed ARM body, code included (REFERENCE A.2).
        uri = request.url.with_query(None)
        message = (
            f"The HTTP resource that matches the request URI '{uri}' with API version "
            f"'{version}' does not support HTTP method '{request.method}'."
        )
        body = {"error": {"code": "UnsupportedApiVersion", "message": message, "innerError": None}}
        return json_response(body, 405)

    # -- the ARM front door
    def _admit(self, request: web.Request, kind: str | None, action: str) -> _Ctx:
        token = self._authenticate(request)
        version = self._api_version(request)
        sub, rg, ws = request.match_info["sub"], request.match_info["rg"], request.match_info["ws"]
        if kind is not None:
            self._throttle(request, sub, token, kind)
        self._authorize(request, token, kind, action)
        workspace = self._workspaces.get((sub.lower(), rg.lower(), ws.lower()))
        if workspace is None:
            if not any(k[0] == sub.lower() for k in self._workspaces):
                raise _ArmError(404, "SubscriptionNotFound", f"The subscription '{sub}' could not be found.")
            raise _ArmError(
                404,
                "ResourceNotFound",
                f"The Resource 'Microsoft.OperationalInsights/workspaces/{ws}' under resource group "
                f"'{rg}' was not found. For more details please go to https://aka.ms/ARMResourceNotFoundFix",
            )
        return _Ctx(token, version, workspace)

    def _audiences(self) -> tuple[str, ...]:
        own = normalise_audience(self.audience)
        base = PUBLIC_ARM_AUDIENCES if own in PUBLIC_ARM_AUDIENCES else (own,)
        return base + tuple(normalise_audience(a) for a in self.audience_aliases)

    def _authenticate(self, request: web.Request) -> IssuedToken:
        header = request.headers.get("Authorization")
        if not header:
            raise _unauthenticated(
                "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing."
            )
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise _unauthenticated(
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is provided in an invalid format.",
            )
        reason = "invalid"
        issued: IssuedToken | None = None
        for audience in self._audiences():
            issued, reason = self.tokens.check(value.strip(), audience)
            if not reason:
                assert issued is not None
                return issued
            if reason != "audience":
                break
        if reason == "expired" and issued is not None:
            raise _unauthenticated(
                "ExpiredAuthenticationToken",
                f"The access token expiry UTC time '{_dotnet_time(issued.expires_at)}' is earlier than "
                f"current UTC time '{_dotnet_time(self.clock.time())}'.",
            )
        if reason == "audience" and issued is not None:
            allowed = ",".join(f"'{a}/','{a}'" for a in self._audiences())
            raise _unauthenticated(
                "InvalidAuthenticationToken",
                f"The access token has been obtained for wrong audience or resource '{issued.audience}'. "
                f"It should exactly match with one of the allowed audiences {allowed}.",
            )
        raise _unauthenticated("InvalidAuthenticationToken", "The access token is invalid.")

    def _api_version(self, request: web.Request) -> str:
        version = request.query.get("api-version")
        if version is None:
            raise _ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        if version not in self.api_versions:
            supported = ", ".join(sorted(self.api_versions, reverse=True))
            raise _ArmError(
                400,
                "InvalidApiVersionParameter",
                f"The api-version '{version}' is invalid. The supported versions are '{supported}'.",
            )
        return version

    def _bucket(self, key: tuple[str, ...], capacity: int, rate: float, now: float) -> _TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _TokenBucket(capacity, rate, now)
        bucket.refill(now)
        return bucket

    def use_allowance(self, kind: str, count: int) -> None:
        """Other clients take ``count`` tokens from every ``kind`` bucket (``reads``, ``writes``,
        ``deletes``) already in use: what a second agent or a script of the same principal does."""
        now = self.clock.time()
        for key, bucket in self._buckets.items():
            if key[-1] == kind:
                bucket.refill(now)
                bucket.tokens = max(0.0, bucket.tokens - count)

    def _throttle(self, request: web.Request, sub: str, token: IssuedToken, kind: str) -> None:
        capacity, rate = self.read_bucket if kind == "reads" else self.write_bucket
        now = self.clock.time()
        mine = self._bucket((sub.lower(), token.object_id, kind), capacity, rate, now)
        # A.11: the per-subscription global limit is 15x the per-principal one.
        shared = self._bucket((sub.lower(), kind), capacity * 15, rate * 15, now)
        for bucket in (mine, shared):
            if bucket.tokens < 1:
                wait = bucket.retry_after()
                raise _ArmError(
                    429,
                    "SubscriptionRequestsThrottled",
                    f"Number of '{_OPERATION_WORD[kind]}' requests for subscription '{sub}' actor "
                    f"'{token.object_id}' exceeded. Please try again after '{wait}' seconds.",
                    {"Retry-After": str(wait)},
                )
        mine.tokens -= 1
        shared.tokens -= 1
        request[_ARM_HEADERS] = {
            f"x-ms-ratelimit-remaining-subscription-{kind}": str(int(mine.tokens)),
            f"x-ms-ratelimit-remaining-subscription-global-{kind}": str(int(shared.tokens)),
        }

    def _authorize(self, request: web.Request, token: IssuedToken, kind: str | None, action: str) -> None:
        role = self._roles.get(token.client_id, "Responder")
        if role == "Responder" or (role == "Reader" and kind == "reads"):
            return
        raise _ArmError(
            403,
            "AuthorizationFailed",
            f"The client '{token.client_id}' with object id '{token.object_id}' does not have authorization "
            f"to perform action '{action}' over scope '{request.path}' or the scope is invalid. If access "
            "was recently granted, please refresh your credentials.",
        )

    # -- middleware and fault bodies
    @web.middleware
    async def _envelope(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        reset = _current_request.set(request)
        try:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = _http_exception_response(exc, request)
        finally:
            _current_request.reset(reset)
        request_id = new_guid()
        stamp = datetime.fromtimestamp(self.clock.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
        response.headers["x-ms-request-id"] = request_id
        response.headers["x-ms-correlation-request-id"] = request.headers.get(
            "x-ms-correlation-request-id", new_guid()
        )
        response.headers["x-ms-routing-request-id"] = f"WESTEUROPE:{stamp}:{request_id}"
        if "x-ms-client-request-id" in request.headers:
            response.headers["x-ms-client-request-id"] = request.headers["x-ms-client-request-id"]
        response.headers.update(request.get(_ARM_HEADERS, {}))
        return response

    def _fault_response(self, status: int, retry_after: int) -> web.Response:
        if status == 429:
            request = _current_request.get()
            sub, actor = "unknown", "unknown"
            if request is not None:
                m = _SUBSCRIPTION_RE.search(request.path)
                sub = m.group(1) if m else sub
                _, _, value = request.headers.get("Authorization", "").partition(" ")
                issued, _ = self.tokens.check(value.strip(), self.audience)
                actor = issued.object_id if issued else actor
            message = (
                f"Number of 'read' requests for subscription '{sub}' actor '{actor}' exceeded. "
                f"Please try again after '{retry_after}' seconds."
            )
            body = _cloud_error("SubscriptionRequestsThrottled", message)
            return json_response(body, 429, {"Retry-After": str(retry_after)})
        if status == 503:
            message = "The server is currently unable to handle the request. Please try again later."
            return json_response(_cloud_error("ServiceUnavailable", message), 503)
        if status == 500:
            return json_response(_cloud_error("InternalServerError", _INTERNAL_ERROR), 500)
        return json_response(_cloud_error("Error", f"Injected HTTP {status}."), status)

    # -- request helpers
    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _ArmError(
                400,
                "InvalidRequestContent",
                f"The request content was invalid and could not be deserialized: '{exc}'.",
            ) from None
        if not isinstance(body, dict):
            raise _ArmError(
                400,
                "InvalidRequestContent",
                "The request content was invalid and could not be deserialized: expected a JSON object.",
            )
        return body

    @staticmethod
    def _properties(body: Mapping[str, Any]) -> dict[str, Any]:
        props = body.get("properties")
        if not isinstance(props, dict):
            raise _bad_request("Required property 'properties' not found in JSON. Path ''.")
        return props

    # -- incidents
    async def _incidents_list(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        ws = ctx.workspace
        ws._run_list_races()
        default = [OrderKey(("properties", "createdTimeUtc"), True, "datetime")]
        return self._page(request, ctx, ws._listed(), INCIDENT_SCHEMA, default, self.max_top)

    async def _incidents_get(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        return json_response(self._find_incident(ctx, request.match_info["incident"]))

    def _find_incident(self, ctx: _Ctx, name: str) -> dict[str, Any]:
        key = ctx.workspace._key(name)
        if key is None:
            raise _not_found("incident", name)
        return ctx.workspace.incidents[key]

    async def _incidents_put(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        ws, name = ctx.workspace, request.match_info["incident"]
        key = ws._key(name)
        if key is not None:
            ws._run_race(key)
        body = await self._json_body(request)
        writable = self._validate_incident(self._properties(body))
        if key is None:
            now = ws._now()
            incident = ws._new_incident(name, writable, now, now)
            return json_response(incident, 201)
        incident = ws.incidents[key]
        self._check_etag(body, incident, name)
        props = {k: v for k, v in incident["properties"].items() if k not in _WRITABLE}
        incident["properties"] = _ordered(props | writable)
        ws._touch(incident)
        return json_response(incident, 200)

    def _check_etag(self, body: Mapping[str, Any], incident: Mapping[str, Any], name: str) -> None:
        sent = body.get("etag")
        if sent is not None and not isinstance(sent, str):
            raise _bad_request("The etag must be a string.")
        conflict = _ArmError(
            409, "Conflict", f"Newer version of resource '{name}' exists. Data was not saved"
        )
        if sent is None:
            if self.missing_etag == "reject_409":
                raise conflict  # A.5.4: observed for updates without an etag
            return
        if _unquote_etag(sent) != _unquote_etag(incident["etag"]):
            raise conflict

    def _validate_incident(self, props: Mapping[str, Any]) -> dict[str, Any]:
        """The writable properties of a PUT body, validated; omitted optional ones are cleared
        (A.5.1: a PUT replaces the resource)."""
        out: dict[str, Any] = {}
        for field in ("title", "severity", "status"):
            value = props.get(field)
            if value is None:
                raise _bad_request(f"Required property '{field}' not found in JSON. Path 'properties'.")
            if not isinstance(value, str):
                raise _bad_request(f"The property '{field}' must be a string.")
            out[field] = value
        if not out["title"].strip():
            raise _bad_request("The property 'title' must not be empty.")
        _check_enum("severity", out["severity"], SEVERITIES)
        _check_enum("status", out["status"], STATUSES)
        for field in ("description", "classification", "classificationReason", "classificationComment"):
            value = props.get(field)
            if value is None:
                continue
            if not isinstance(value, str):
                raise _bad_request(f"The property '{field}' must be a string.")
            out[field] = value
        self._check_classification(out)
        for field in ("firstActivityTimeUtc", "lastActivityTimeUtc"):
            value = props.get(field)
            if value is None:
                continue
            ticks = parse_instant(value) if isinstance(value, str) else None
            if ticks is None:
                raise _bad_request(f"The property '{field}' is not a valid date-time: {value!r}.")
            out[field] = format_instant(ticks)
        out["owner"] = self._resolve_owner(props.get("owner"))
        out["labels"] = _validate_labels(props.get("labels"))
        return out

    @staticmethod
    def _check_classification(out: Mapping[str, Any]) -> None:
        classification = out.get("classification")
        reason = out.get("classificationReason")
        if classification is not None:
            _check_enum("classification", classification, CLASSIFICATIONS)
        if reason is not None:
            _check_enum("classificationReason", reason, REASONS)
        if out["status"] == "Closed" and classification is None:
            raise _bad_request("Incident with status 'Closed' must have classification.")
        if classification is None:
            if reason is not None:
                raise _bad_request("classificationReason cannot be set without classification.")
            return
        allowed = REASONS_BY_CLASSIFICATION[classification]
        if allowed and reason is None:
            raise _bad_request(f"classification '{classification}' must have classificationReason.")
        if reason is not None and reason not in allowed:
            raise _bad_request(
                f"classificationReason '{reason}' is not valid for classification '{classification}'."
            )

    def _resolve_owner(self, owner: Any) -> dict[str, str | None]:
        if owner is None:
            return _owner(None)
        if not isinstance(owner, dict):
            raise _bad_request("The property 'owner' must be an object.")
        for key in ("objectId", "email", "assignedTo", "userPrincipalName", "ownerType"):
            if owner.get(key) is not None and not isinstance(owner[key], str):
                raise _bad_request(f"The property 'owner.{key}' must be a string.")
        # A.6: objectId wins over userPrincipalName; all-null means unassigned.
        object_id, upn = owner.get("objectId"), owner.get("userPrincipalName")
        if object_id:
            try:
                uuid.UUID(object_id)
            except ValueError:
                raise _bad_request(f"The owner objectId '{object_id}' is not a valid GUID.") from None
            user = self.directory.by_object_id(object_id)
            if user is None:
                raise _bad_request(f"The owner with objectId '{object_id}' was not found in the tenant.")
            return _owner(user)
        if upn:
            user = self.directory.by_upn(upn)
            if user is None:
                raise _bad_request(f"The owner with userPrincipalName '{upn}' was not found in the tenant.")
            return _owner(user)
        if owner.get("email") or owner.get("assignedTo"):
            # E.4: automation leaves owners with only an e-mail / display name; a PUT that
            # echoes one keeps it (only an all-null owner unassigns).
            kept = {k: owner.get(k) for k in ("objectId", "email", "assignedTo", "userPrincipalName")}
            return kept | {"ownerType": owner.get("ownerType")}
        return _owner(None)

    async def _incidents_delete(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        key = ctx.workspace._key(request.match_info["incident"])
        if key is None:
            return web.Response(status=204)
        ctx.workspace.delete_incident(key)
        return web.Response(status=200)

    async def _incidents_alerts(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["incident"])
        return json_response({"value": ctx.workspace._alerts.get(incident["name"], [])})

    async def _incidents_entities(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["incident"])
        entities = ctx.workspace._entities.get(incident["name"], [])
        counts: dict[str, int] = {}
        for entity in entities:
            counts[entity["kind"]] = counts.get(entity["kind"], 0) + 1
        meta = [{"entityKind": kind, "count": n} for kind, n in counts.items()]
        return json_response({"entities": entities, "metaData": meta})

    # -- comments
    async def _comments_list(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["incident"])
        comments = list(ctx.workspace._comment_store(incident["name"]).values())
        default = [OrderKey(("properties", "createdTimeUtc"), False, "datetime")]
        return self._page(request, ctx, comments, COMMENT_SCHEMA, default, None)

    def _find_comment(self, ctx: _Ctx, incident: Mapping[str, Any], name: str) -> dict[str, Any]:
        store = ctx.workspace._comment_store(incident["name"])
        key = next((k for k in store if k.lower() == name.lower()), None)
        if key is None:
            raise _not_found("comment", name)
        return store[key]

    async def _comments_get(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["incident"])
        return json_response(self._find_comment(ctx, incident, request.match_info["comment"]))

    async def _comments_put(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        ws = ctx.workspace
        incident = self._find_incident(ctx, request.match_info["incident"])
        name = request.match_info["comment"]
        body = await self._json_body(request)
        message = self._properties(body).get("message")
        if message is None:
            raise _bad_request("Required property 'message' not found in JSON. Path 'properties'.")
        if not isinstance(message, str):
            raise _bad_request("The property 'message' must be a string.")
        if not message:
            raise _bad_request("The comment message must not be empty.")
        # The limit counts .NET characters, i.e. UTF-16 code units.
        if len(message.encode("utf-16-le")) // 2 > MAX_COMMENT_CHARS:
            raise _bad_request(f"Comment length should not exceed {MAX_COMMENT_CHARS} characters")
        store = ws._comment_store(incident["name"])
        existing = next((c for k, c in store.items() if k.lower() == name.lower()), None)
        if existing is None and len(store) >= MAX_COMMENTS:
            raise _bad_request(
                f"The incident '{incident['name']}' already has the maximum of {MAX_COMMENTS} comments."
            )
        sent = body.get("etag")
        if existing is not None and isinstance(sent, str) and _unquote_etag(sent) != existing["etag"]:
            raise _ArmError(409, "Conflict", f"Newer version of resource '{name}' exists. Data was not saved")
        author = {
            "objectId": ctx.token.object_id,
            "name": self._app_names.get(ctx.token.client_id, ctx.token.client_id),
        }
        comment, created = ws._put_comment(incident["name"], name, message, author)
        return json_response(comment, 201 if created else 200)

    async def _comments_delete(self, request: web.Request, ctx: _Ctx) -> web.StreamResponse:
        incident = self._find_incident(ctx, request.match_info["incident"])
        deleted = ctx.workspace._delete_comment(incident["name"], request.match_info["comment"])
        return web.Response(status=200 if deleted else 204)

    # -- listing
    def _page(
        self,
        request: web.Request,
        ctx: _Ctx,
        items: list[dict[str, Any]],
        schema: Obj,
        default_order: list[OrderKey],
        max_top: int | None,
    ) -> web.StreamResponse:
        query = request.query
        for key in query:
            if key.startswith("$") and key not in _LIST_OPTIONS:
                raise _bad_request(f"The query parameter '{key}' is not supported.")
            if len(query.getall(key)) > 1:
                raise _bad_request(f"The query parameter '{key}' is given more than once.")
        flt: Filter | None = None
        order = default_order
        try:
            if "$filter" in query:
                flt = parse_filter(query["$filter"], schema)
            if "$orderby" in query:
                order = parse_orderby(query["$orderby"], schema)
        except ODataError as exc:
            raise _bad_request(f"Invalid OData query: {exc}.") from None
        top = _parse_top(query.get("$top"), self.default_top, max_top)
        offset = self._skip_offset(query.get("$skipToken"))
        problem = _lambda_problem(flt.expr) if flt is not None and self.strict else None
        if problem == "misplaced" and ctx.api_version < _LAMBDA_ERROR_SINCE:
            return json_response({"value": []})
        if problem in ("all", "misplaced"):
            raise _bad_request("OData query syntax error")
        if problem == "or_in_lambda":
            raise _ArmError(500, "InternalServerError", _INTERNAL_ERROR)
        if flt is not None:
            # A.2/A.7: the real service returns nothing when filtering on the name.
            items = [] if flt.references("name") else [i for i in items if flt(i)]
        ordered = sort_items(items, order, tiebreak=lambda i: i["name"].lower())
        body: dict[str, Any] = {"value": ordered[offset : offset + top]}
        if offset + top < len(ordered):
            body["nextLink"] = _next_link(request, ctx.api_version, top, self._skip_token(offset + top))
        return json_response(body)

    def _skip_token(self, offset: int) -> str:
        token = secrets.token_urlsafe(24)
        self._skip_tokens[token] = offset
        while len(self._skip_tokens) > _MAX_SKIP_TOKENS:
            self._skip_tokens.popitem(last=False)
        return token

    def _skip_offset(self, raw: str | None) -> int:
        if raw is None:
            return 0
        offset = self._skip_tokens.get(raw)
        if offset is None:
            raise _bad_request("The $skipToken is invalid.")
        return offset


# --- module helpers ---------------------------------------------------------------------------


class _PortalRenderer(HTMLParser):
    """How a browser shows a comment's HTML as text (REFERENCE E.3): runs of white space,
    line breaks included, fold into one space; ``<br>`` breaks a line; block elements start
    and end lines; unknown tags vanish; entities are decoded."""

    _BLOCKS = frozenset({"p", "div", "ul", "ol", "li", "table", "tr", "h1", "h2", "h3", "pre", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.out.append("\n")
        elif tag in self._BLOCKS:
            self.out.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._BLOCKS:
            self.out.append("\n")

    def handle_data(self, data: str) -> None:
        self.out.append(re.sub(r"[ \t\r\n]+", " ", data))


def portal_text(message: str) -> str:
    """The text the Sentinel portal shows for a comment's ``message`` (REFERENCE E.3)."""
    renderer = _PortalRenderer()
    renderer.feed(message)
    renderer.close()
    lines = [line.strip(" ").replace("\u00a0", " ") for line in "".join(renderer.out).split("\n")]
    return "\n".join(lines).strip("\n")


def _unauthenticated(code: str, message: str) -> _ArmError:
    challenge = (
        'Bearer authorization_uri="https://login.windows.net/", error="invalid_token", '
        f'error_description="{message}"'
    )
    return _ArmError(401, code, message, {"WWW-Authenticate": challenge})


def _dotnet_time(epoch: float) -> str:
    """``10/23/2019 3:54:29 PM``: how ARM prints times in token errors (A.10)."""
    t = datetime.fromtimestamp(epoch, UTC)
    hour = t.hour % 12 or 12
    return f"{t.month}/{t.day}/{t.year} {hour}:{t.minute:02d}:{t.second:02d} {'AM' if t.hour < 12 else 'PM'}"


def _check_enum(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise _bad_request(
            f"The value '{value}' is not valid for '{field}'. Allowed values: {', '.join(allowed)}."
        )


def _validate_labels(labels: Any) -> list[dict[str, str]]:
    if labels is None:
        return []
    if not isinstance(labels, list):
        raise _bad_request("The property 'labels' must be an array.")
    out = []
    for item in labels:
        name = item.get("labelName") if isinstance(item, dict) else None
        if not isinstance(name, str) or not name:
            raise _bad_request("Every label must be an object with a non-empty 'labelName'.")
        out.append(_label(name))
    return out


# E.1: the first api-version the misplaced-lambda 400 was reported on (#26569); older ones (#15391,
# 2020-01-01) answered 200 with an empty list instead.
_LAMBDA_ERROR_SINCE = "2023-02-01"


def _lambda_problem(expr: Node) -> str | None:
    """What Sentinel's filter engine makes of the lambdas in ``expr`` (REFERENCE E.1).

    ``"all"`` (400), ``"misplaced"`` (400: a lambda anywhere but the first operand of the
    top-level ``and``, a ``not`` around it allowed), ``"or_in_lambda"`` (500), or None.
    """
    nodes = list(_walk(expr))
    if any(n.op == "all" for n in nodes):
        return "all"
    head = _and_operands(expr)[0]
    if head.op == "not":
        head = head.args[0]
    allowed = head if head.op == "any" else None
    if any(n.op == "any" and n is not allowed for n in nodes):
        return "misplaced"
    for n in nodes:
        if n.op == "any" and len(n.args) == 2 and any(b.op == "or" for b in _walk(n.args[1])):
            return "or_in_lambda"
    return None


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for arg in node.args:
        yield from _walk(arg)


def _and_operands(node: Node) -> list[Node]:
    if node.op == "and":
        return _and_operands(node.args[0]) + _and_operands(node.args[1])
    return [node]


def _parse_top(raw: str | None, default: int, maximum: int | None) -> int:
    if raw is None:
        return default
    try:
        top = int(raw)
    except ValueError:
        raise _bad_request(f"The value '{raw}' of $top is not a valid integer.") from None
    if top < 1:
        raise _bad_request(f"The value '{raw}' of $top must be a positive integer.")
    if maximum is not None and top > maximum:
        raise _bad_request(f"The value '{raw}' of $top exceeds the maximum of {maximum}.")
    return top


# Characters left as they are inside nextLink values. Spaces stay unencoded: real nextLinks
# carry raw spaces in $filter (A.7), so a client must not pass the link through as pre-encoded.
_NEXT_LINK_SAFE = "/:',()@!*$ "


def _next_link(request: web.Request, api_version: str, top: int, token: str) -> str:
    """Absolute link on the caller's host with ``$skipToken`` as the last parameter (A.7)."""
    params = [("api-version", api_version)]
    params += [(k, request.query[k]) for k in ("$filter", "$orderby") if k in request.query]
    params += [("$top", str(top)), ("$skipToken", token)]
    query = "&".join(f"{k}={quote(v, safe=_NEXT_LINK_SAFE)}" for k, v in params)
    return f"{request.scheme}://{request.host}{request.url.raw_path}?{query}"


def _http_exception_response(exc: web.HTTPException, request: web.Request) -> web.Response:
    if exc.status == 404:
        body = _cloud_error(
            "NotFound", f"No HTTP resource was found that matches the request URI '{request.url}'."
        )
    elif exc.status == 405:
        body = _cloud_error("MethodNotAllowed", f"The method '{request.method}' is not allowed.")
    else:
        body = _cloud_error(exc.reason.replace(" ", ""), exc.text or exc.reason)
    return json_response(body, exc.status, {k: v for k, v in exc.headers.items() if k.lower() == "allow"})
