"""Typed client for the ServiceNow Table API (REFERENCE C). No sync logic lives here.

Every query goes through :class:`agent.connectors.servicenow.query.Q`; every response is read in raw mode
(``sysparm_display_value=false``, ``sysparm_exclude_reference_link=true``) and turned into
:class:`~agent.connectors.servicenow.models.SnowRecord`,
:class:`~agent.connectors.servicenow.models.JournalEntry` or
:class:`~agent.connectors.servicenow.models.SnowUser`.

Listing is **keyset** paged on ``(sys_updated_on, sys_id)`` rather than by ``sysparm_offset``: a
record updated while a long listing runs moves to the end of the order, and with offsets every
record behind its old place would shift forward by one, so one of them would be skipped without
notice. With keysets each page asks for what comes after the last record seen, so nothing is
skipped; a record that moves is returned once, in the version first seen (the newer version
has a later ``sys_updated_on`` and appears in the next listing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from agent.connectors.http import HttpClient
from agent.connectors.http_errors import redact_url
from agent.connectors.own_writes import OwnWrites
from agent.connectors.servicenow import journaltext
from agent.connectors.servicenow.models import JournalEntry, SnowRecord, SnowUser, parse_snow_time
from agent.connectors.servicenow.query import Q, field_name
from agent.errors import DataError, InvalidResponse, PermanentError
from agent.log import log
from agent.tasks import per_chunk

BASE_FIELDS = ("sys_id", "number", "sys_updated_on", "sys_updated_by", "sys_mod_count")
JOURNAL_FIELDS = frozenset({"work_notes", "comments", "comments_and_work_notes"})
USER_FIELDS = ("sys_id", "user_name", "email", "name", "active")
JOURNAL_ROW_FIELDS = ("sys_id", "element", "element_id", "value", "sys_created_on", "sys_created_by")
_IN_CHUNK = 50  # sys_ids per IN list: keeps the URL well under common 8 KB limits
_MAX_PAGE = 10_000  # the Table API's own default limit (REFERENCE C.2)


class ServiceNowClient:
    """The Table API of one instance for one incident table.

    ``max_pages`` bounds any listing (an error instead of an endless loop); ``cache_ttl``
    is how long user and group lookups are remembered.
    """

    def __init__(
        self,
        http: HttpClient,
        instance_url: str,
        table: str = "incident",
        *,
        max_pages: int = 10_000,
        cache_ttl: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.http = http
        self.instance_url = instance_url.rstrip("/")
        self.table = field_name(table)
        self.max_pages = max_pages
        # Records this agent wrote on the instance, from every workspace: a workspace's ticket
        # listing is instance-wide, so all of them come back in it (agent.connectors.own_writes).
        self.own = OwnWrites()
        self.cache_ttl = cache_ttl
        self._clock = clock
        self._users: dict[tuple[str, str], tuple[float, SnowUser | None]] = {}
        self._user_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._groups: dict[str, tuple[float, str | None]] = {}
        self._scoped: dict[tuple[str, str, tuple[str, ...]], tuple[float, str | None]] = {}
        self.proof_lock = asyncio.Lock()  # one proof of the configured fields at a time
        self.fields_proven = False  # set once they were (agent.connectors.servicenow.fields)

    # -- URLs and parameters --

    def table_url(self, table: str | None = None, sys_id: str | None = None) -> str:
        """``<instance>/api/now/table/<table>[/<sys_id>]``."""
        url = f"{self.instance_url}/api/now/table/{field_name(table or self.table)}"
        if sys_id is not None:
            if not sys_id or not sys_id.isalnum():
                raise DataError(f"invalid sys_id: {sys_id!r}")
            url += "/" + sys_id
        return url

    @staticmethod
    def _params(fields: Iterable[str], **extra: str | int) -> dict[str, str | int]:
        names = list(dict.fromkeys(field_name(f) for f in fields))
        return {
            "sysparm_fields": ",".join(names),
            "sysparm_display_value": "false",
            "sysparm_exclude_reference_link": "true",
            **extra,
        }

    # -- incident records --

    async def list_records(
        self, query: Q, fields: Sequence[str], *, page_size: int = 200
    ) -> AsyncIterator[SnowRecord]:
        """Every record matching ``query``, oldest update first, each once.

        ``query`` must not carry its own ordering (the listing orders by ``sys_updated_on``
        then ``sys_id`` to page stably). A page shorter than ``page_size`` ends the listing;
        ``X-Total-Count`` is not trusted for that.
        """
        async for row in self._keyset(
            self.table, query, (*BASE_FIELDS, *fields), "sys_updated_on", page_size
        ):
            yield _record(row)

    async def get(self, sys_id: str, fields: Sequence[str]) -> SnowRecord:
        """One record by sys_id; :class:`~agent.errors.NotFound` if missing (or hidden by an ACL)."""
        resp = await self.http.request(
            "GET", self.table_url(sys_id=sys_id), params=self._params((*BASE_FIELDS, *fields))
        )
        return _record(_result_object(resp.body, self.table))

    async def find(self, query: Q, fields: Sequence[str], limit: int = 10) -> list[SnowRecord]:
        """At most ``limit`` records matching ``query`` (one request; the query's own order)."""
        rows = await self._page(self.table, query, (*BASE_FIELDS, *fields), limit, 0)
        return [_record(r) for r in rows]

    async def create(self, values: Mapping[str, str], fields: Sequence[str]) -> SnowRecord:
        """Insert a record (POST, 201).

        Not idempotent: retried only when the request provably never reached the instance.
        After any other failure the caller must look the unique key up before trying again.
        """
        resp = await self.http.request(
            "POST",
            self.table_url(),
            params=self._params((*BASE_FIELDS, *fields)),
            json=_values(values),
            expected=(200, 201),
            idempotent=False,
        )
        return _record(_result_object(resp.body, self.table))

    async def patch(self, sys_id: str, values: Mapping[str, str], fields: Sequence[str]) -> SnowRecord:
        """Update only the given fields (PATCH) and return the record.

        Plain values are idempotent and retried. Text for a journal field (``work_notes``,
        ``comments``) appends an entry on every successful write (REFERENCE C.9), so such a
        PATCH is retried only when it provably never reached the instance.
        """
        body = _values(values)
        appends = any(body.get(name) for name in JOURNAL_FIELDS)
        resp = await self.http.request(
            "PATCH",
            self.table_url(sys_id=sys_id),
            params=self._params((*BASE_FIELDS, *fields)),
            json=body,
            idempotent=not appends,
        )
        return _record(_result_object(resp.body, self.table))

    # -- journal --

    async def journal(
        self,
        sys_ids: Sequence[str],
        *,
        since: datetime | None = None,
        elements: Sequence[str] = ("work_notes", "comments"),
        page_size: int = 500,
    ) -> list[JournalEntry]:
        """Journal entries of many records, oldest first (``sys_journal_field``, REFERENCE C.9).

        One query per chunk of records: ``element_idIN...^elementIN...^name=<table>
        [^sys_created_on>=since]``, paged. ``since`` is inclusive (second resolution).
        """
        ids = list(dict.fromkeys(sys_ids))
        if not ids or not elements:
            return []

        async def rows(chunk: Sequence[str]) -> list[dict[str, Any]]:
            query = Q.in_("element_id", chunk) & Q.in_("element", elements) & Q.eq("name", self.table)
            if since is not None:
                query = query & Q.ge("sys_created_on", since)
            keyset = self._keyset("sys_journal_field", query, JOURNAL_ROW_FIELDS, "sys_created_on", page_size)
            return [row async for row in keyset]

        entries: dict[str, JournalEntry] = {}
        for found in await per_chunk(ids, _IN_CHUNK, rows):
            for row in found:
                entry = _journal_entry(row)
                entries[entry.sys_id] = entry
        return sorted(entries.values(), key=lambda e: (e.created_on, e.sys_id))

    async def journal_from_records(
        self,
        sys_ids: Sequence[str],
        elements: Sequence[str] = ("work_notes", "comments"),
    ) -> dict[str, list[JournalEntry]]:
        """The journal of many records through their display values, for a user who cannot read
        ``sys_journal_field`` (REFERENCE E.6): one query per chunk of records, ``sys_idIN...``
        with ``sysparm_display_value=all`` and the journal fields in ``sysparm_fields``.

        Record sys_id -> every entry of it, oldest first; a record whose dates could not be read
        (or that was not returned) is left out. ``sys_id`` of an entry is a stable key of it
        (:func:`agent.connectors.servicenow.journaltext.entry_key`), ``created_by`` the author's
        display name, and ``created_on`` UTC as learnt from the record's own ``sys_updated_on``
        (raw and shown).
        """
        ids = list(dict.fromkeys(sys_ids))
        found: dict[str, list[JournalEntry]] = {}
        fields = ["sys_id", "sys_updated_on", "sys_created_on", *elements]

        async def rows(chunk: Sequence[str]) -> list[dict[str, Any]]:
            params: dict[str, str | int] = {
                "sysparm_query": Q.in_("sys_id", chunk).encoded,
                "sysparm_fields": ",".join(fields),
                "sysparm_display_value": "all",
                "sysparm_exclude_reference_link": "true",
                "sysparm_limit": len(chunk),
            }
            resp = await self.http.request("GET", self.table_url(), params=params)
            return _result_list(resp.body, self.table)

        for found_rows in await per_chunk(ids, _IN_CHUNK, rows):
            for row in found_rows:
                entries = _display_journal(self.table, row, elements)
                if entries is not None:
                    found[_both(row.get("sys_id"))[0]] = sorted(
                        entries, key=lambda e: (e.created_on, e.sys_id)
                    )
        return found

    # -- users and groups --

    async def find_user(
        self, *, user_name: str | None = None, email: str | None = None, sys_id: str | None = None
    ) -> SnowUser | None:
        """One ``sys_user`` by exactly one of user_name, e-mail or sys_id; ``None`` if there is
        no unambiguous match.

        E-mails are not unique (REFERENCE C.10): among several rows the one whose value matches
        exactly (case included) wins, then the only active one; otherwise the lookup is
        ambiguous and answers ``None``. Results, misses included, are cached for ``cache_ttl``.
        """
        given = [(k, v) for k, v in (("user_name", user_name), ("email", email), ("sys_id", sys_id)) if v]
        if len(given) != 1:
            raise ValueError("find_user needs exactly one of user_name, email, sys_id")
        key = given[0]
        async with self._user_locks.setdefault(key, asyncio.Lock()):  # one query per key at a time
            cached = self._users.get(key)
            if cached is not None and cached[0] > self._clock():
                return cached[1]
            kind, value = key
            rows = await self._page("sys_user", Q.eq(kind, value), USER_FIELDS, 10, 0)
            users = [_user(r) for r in rows]
            user = _pick_user(users, rows, kind, value)
            if user is None and len(users) > 1:
                log.warning("snow_user_ambiguous", lookup=kind, matches=len(users))
            self._users[key] = (self._clock() + self.cache_ttl, user)
            return user

    async def find_group(self, name: str) -> str | None:
        """The sys_id of the ``sys_user_group`` with this exact name; ``None`` if none or several."""
        cached = self._groups.get(name)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        rows = await self._page("sys_user_group", Q.eq("name", name), ("sys_id", "name"), 10, 0)
        exact = [r for r in rows if _text(r.get("name")) == name] or rows
        sys_id = _text(exact[0].get("sys_id")) if len(exact) == 1 else None
        if sys_id is None and len(exact) > 1:
            log.warning("snow_group_ambiguous", matches=len(exact))
        self._groups[name] = (self._clock() + self.cache_ttl, sys_id)
        return sys_id

    async def find_by_name(self, table: str, name: str, domains: Sequence[str] = ()) -> str | None:
        """The sys_id of the ``table`` row (``sys_user_group``, ``core_company``) named exactly
        ``name``; with ``domains``, only rows whose ``sys_domain`` is one of them, the earliest
        domain listed winning. ``None`` when there is none, or several in the winning domain.
        Cached like groups."""
        key = (table, name, tuple(domains))
        cached = self._scoped.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        query = Q.eq("name", name)
        if domains:
            query = query & Q.in_("sys_domain", domains)
        rows = await self._page(table, query, ("sys_id", "name", "sys_domain"), 20, 0)
        exact = [r for r in rows if _text(r.get("name")) == name]
        sys_id: str | None = None
        candidates: Sequence[str | None] = list(domains) or [None]
        for domain in candidates:
            here = [r for r in exact if domain is None or _text(r.get("sys_domain")) == domain]
            if here:
                sys_id = _text(here[0].get("sys_id")) if len(here) == 1 else None
                if len(here) > 1:
                    log.warning("snow_name_ambiguous", table=table, matches=len(here))
                break
        self._scoped[key] = (self._clock() + self.cache_ttl, sys_id)
        return sys_id

    # -- paging --

    async def _page(
        self, table: str, query: Q, fields: Iterable[str], limit: int, offset: int
    ) -> list[dict[str, Any]]:
        params = self._params(fields, sysparm_limit=limit)
        if query:
            params["sysparm_query"] = query.encoded
        if offset:
            params["sysparm_offset"] = offset
        resp = await self.http.request("GET", self.table_url(table), params=params)
        return _result_list(resp.body, table)

    async def _keyset(
        self,
        table: str,
        query: Q,
        fields: Iterable[str],
        time_field: str,
        page_size: int,
    ) -> AsyncIterator[dict[str, Any]]:
        """Rows matching ``query`` ordered by ``(time_field, sys_id)``, page after page."""
        if query.orders:
            raise ValueError("the listing orders by itself: pass a query without order_by")
        if not 0 < page_size <= _MAX_PAGE:
            raise ValueError(f"page_size must be 1..{_MAX_PAGE}")
        wanted = (*fields, time_field, "sys_id")
        seen: set[str] = set()
        after: tuple[datetime, str] | None = None
        for _ in range(self.max_pages):
            page_query = query if after is None else _after(query, time_field, *after)
            rows = await self._page(
                table, page_query.order_by(time_field).order_by("sys_id"), wanted, page_size, 0
            )
            for row in rows:
                sys_id = _text(row.get("sys_id"))
                if sys_id and sys_id not in seen:
                    seen.add(sys_id)
                    yield row
            if len(rows) < page_size:
                return
            last = rows[-1]
            key = (_time(last, time_field, table), _text(last.get("sys_id")))
            if after is not None and key <= after:
                raise PermanentError(
                    "servicenow", "GET", redact_url(self.table_url(table)), 200, "PagingStuck", str(key)
                )
            after = key
        raise PermanentError(
            "servicenow",
            "GET",
            redact_url(self.table_url(table)),
            200,
            "TooManyPages",
            f"more than {self.max_pages} pages of {page_size}",
        )


# --- parsing --------------------------------------------------------------------------------


def _after(query: Q, time_field: str, when: datetime, sys_id: str) -> Q:
    """``query`` restricted to rows after ``(when, sys_id)`` in ``(time_field, sys_id)`` order."""
    later = Q.gt(time_field, when)
    same_second = Q.eq(time_field, when) & Q.gt("sys_id", sys_id)
    return Q.either(query & later, query & same_second)


def _values(values: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in values.items():
        if not isinstance(value, str):
            raise TypeError(f"ServiceNow field {name} must be a string, not {type(value).__name__}")
        out[field_name(name)] = value
    return out


def _text(value: Any) -> str:
    """A raw field value as the string ServiceNow means (references flattened to the sys_id)."""
    if isinstance(value, dict):
        value = value.get("value", "")
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _time(row: Mapping[str, Any], name: str, table: str) -> datetime:
    raw = _text(row.get(name))
    try:
        return parse_snow_time(raw)
    except ValueError:
        raise InvalidResponse(
            "servicenow", "GET", table, 200, "InvalidRecord", f"{name} is not a date-time: {raw[:40]!r}"
        ) from None


def _result_object(body: Any, table: str) -> dict[str, Any]:
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, dict):
        raise InvalidResponse("servicenow", "GET", table, 200, "InvalidResponse", "no result object")
    return result


def _result_list(body: Any, table: str) -> list[dict[str, Any]]:
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, list) or not all(isinstance(r, dict) for r in result):
        raise InvalidResponse("servicenow", "GET", table, 200, "InvalidResponse", "no result list")
    return result


def _record(row: Mapping[str, Any]) -> SnowRecord:
    fields = {str(k): _text(v) for k, v in row.items()}
    sys_id = fields.get("sys_id", "")
    if not sys_id:
        raise InvalidResponse("servicenow", "GET", "record", 200, "InvalidRecord", "a record without sys_id")
    try:
        mod_count = int(fields.get("sys_mod_count") or 0)
        updated_on = parse_snow_time(fields.get("sys_updated_on", ""))
    except ValueError:
        problem = f"record {sys_id}: bad sys_mod_count/sys_updated_on"
        raise InvalidResponse("servicenow", "GET", "record", 200, "InvalidRecord", problem) from None
    return SnowRecord(
        sys_id=sys_id,
        number=fields.get("number", ""),
        fields=fields,
        mod_count=mod_count,
        updated_on=updated_on,
        updated_by=fields.get("sys_updated_by", ""),
    )


def _journal_entry(row: Mapping[str, Any]) -> JournalEntry:
    return JournalEntry(
        sys_id=_text(row.get("sys_id")),
        element=_text(row.get("element")),
        element_id=_text(row.get("element_id")),
        value=_text(row.get("value")),
        created_on=_time(row, "sys_created_on", "sys_journal_field"),
        created_by=_text(row.get("sys_created_by")),
    )


def _both(value: Any) -> tuple[str, str]:
    """``(raw value, display value)`` of one field read with ``sysparm_display_value=all``."""
    if isinstance(value, dict):
        return _text(value.get("value")), _text(value.get("display_value"))
    return _text(value), _text(value)


def _display_journal(
    table: str, row: Mapping[str, Any], elements: Sequence[str]
) -> list[JournalEntry] | None:
    sys_id = _both(row.get("sys_id"))[0]
    samples = []
    for name in ("sys_updated_on", "sys_created_on"):
        raw, shown = _both(row.get(name))
        try:
            samples.append((parse_snow_time(raw), shown))
        except ValueError:
            continue
    clock = journaltext.learn(samples)
    if clock is None:
        if any(_both(row.get(e))[1].strip() for e in elements):
            log.warning(
                "journal_dates_unreadable",
                sys_id=sys_id,
                message="the integration user's date format could not be read from the record's "
                "display values; its journal is not copied until it can (set the user's date format "
                "to the system default, yyyy-MM-dd HH:mm:ss)",
            )
            return None
        return []
    entries = []
    for element in elements:
        parsed = journaltext.parse(_both(row.get(element))[1], clock)
        for key, e in journaltext.keyed(table, sys_id, element, parsed):
            entries.append(JournalEntry(key, element, sys_id, e.text, e.created_on, e.author))
    return entries


def _user(row: Mapping[str, Any]) -> SnowUser:
    return SnowUser(
        sys_id=_text(row.get("sys_id")),
        user_name=_text(row.get("user_name")),
        email=_text(row.get("email")),
        name=_text(row.get("name")),
    )


def _pick_user(users: list[SnowUser], rows: list[dict[str, Any]], kind: str, value: str) -> SnowUser | None:
    if len(users) <= 1:
        return users[0] if users else None
    candidates = [(u, r) for u, r in zip(users, rows, strict=True) if getattr(u, kind) == value] or list(
        zip(users, rows, strict=True)
    )
    if len(candidates) > 1:
        candidates = [(u, r) for u, r in candidates if _text(r.get("active")) != "false"]
    return candidates[0][0] if len(candidates) == 1 else None
