"""One ServiceNow instance, as one workspace sees it, as a :class:`~agent.ports.TicketSink`.

Turns :class:`~agent.connectors.servicenow.models.SnowRecord` into the side-neutral
:class:`~agent.core.records.Ticket` and the sync's writes into Table API bodies. What is
ServiceNow's own stays here: the encoded queries (:mod:`.query`), the workspace's scope (its
unique key, its domain), ``sys_mod_count`` as the ticket's version and the rule that the agent's
own write moves it by exactly one (:func:`version_after`), the table profile's finished and
read-only states (E.5, E.9), the close code and notes a finishing write carries (C.8), settling
a create whose answer was lost by its unique key, the field proof (:mod:`.fields`), owners as
``sys_user`` records, routing (:mod:`.routing`), the journal (:mod:`.journal`) and rate-limit
pauses (:mod:`.pause`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from agent.config import Config, Defender, ServiceNowInstance, Workspace
from agent.connectors.own_writes import OWN_PAGE_MAX
from agent.connectors.servicenow import fields as snowfields
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.journal import JournalReader
from agent.connectors.servicenow.models import SnowRecord
from agent.connectors.servicenow.query import Q, field_name
from agent.connectors.servicenow.routing import Routing
from agent.core.records import Incident, Route, Ticket
from agent.core.text import SNOW_NOTE_MAX
from agent.errors import ConfigError, DataError, NotSent, RateLimited, TransientError
from agent.log import log
from agent.store import Store
from agent.tasks import per_chunk

BASE_FIELDS = (
    "sys_id",
    "number",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
    "assigned_to",
    "correlation_display",
    "short_description",
    "active",
)
ID_CHUNK = 100
CREATE_ATTEMPTS = 3  # POSTs of one ticket per cycle when each answer left its outcome open
NUMBER = re.compile(r"^[A-Z]{2,10}\d{4,12}$")
"""What a ServiceNow number looks like (``INC0010001``)."""


def hook_fields(declared: Sequence[str]) -> tuple[str, ...]:
    """The fields a custom mapping hook declared, checked as ServiceNow field names."""
    try:
        return tuple(field_name(f) for f in declared)
    except ValueError as exc:
        raise ConfigError([f"[agent] custom_mapping: {exc}"]) from None


def version_after(known: int | None, before: int | None, after: int) -> int | None:
    """The ``sys_mod_count`` to remember after the agent's own write moved a record from ``before``
    to ``after``: every write bumps it by exactly one, so ``after == before + 1`` means nobody else
    wrote in between, and when ``known`` was ``before`` nothing is left unseen. Otherwise ``known``
    stays, so the next cycle reads what the other writer did."""
    return after if known is not None and known == before and after == before + 1 else known


class ServiceNowSink:
    """A workspace's tickets on its ServiceNow instance (``[servicenow:NAME]``)."""

    system = "servicenow"
    title = "ServiceNow"
    note_limit = SNOW_NOTE_MAX
    note_kind = "work_notes"

    def __init__(
        self,
        config: Config,
        workspace: Workspace | Defender,
        instance: ServiceNowInstance,
        client: ServiceNowClient,
        store: Store,
        *,
        marker: str,
        hook_fields: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.ws = workspace
        self.inst = instance
        self.client = client
        self.store = store
        self.marker = marker  # correlation_display: marks this workspace's tickets
        self.profile = instance.profile
        self.page_size = config.agent.page_size
        self.comment_kind = config.agent.comment_field
        self.field_keys: Mapping[str, str] = {
            "severity": instance.severity_field,
            "status": instance.status_field,
            "owner": "assigned_to",
        }
        read = (
            *BASE_FIELDS,
            instance.severity_field,
            instance.status_field,
            instance.unique_key,
            self.profile.close_code_field,
            self.profile.close_notes_field,
            *hook_fields,
        )
        self.fields = tuple(dict.fromkeys(read))
        # A create asks for every configured field back: its answer proves they exist.
        self._create_fields = tuple(
            dict.fromkeys((*self.fields, *snowfields.configured_fields(config, instance)))
        )
        self.owners = config.mappings.owners_for(workspace.name)  # user_name -> upn
        self.owners_rev = {upn.lower(): user for user, upn in self.owners.items()}
        self.routing = Routing(config, workspace, client)
        self.journal = JournalReader(client, store, instance.name, workspace.name, instance.username)
        self._caller: str | None = None

    def ticket(self, record: SnowRecord) -> Ticket:
        """The side-neutral record of a ServiceNow record."""
        return Ticket(
            id=record.sys_id,
            number=record.number,
            version=record.mod_count,
            modified=record.updated_on,
            updated_by=record.updated_by,
            values={name: record.get(key) for name, key in self.field_keys.items()},
            close_code=record.get(self.profile.close_code_field),
            close_notes=record.get(self.profile.close_notes_field),
            key=record.get(self.inst.unique_key),
            marker=record.get("correlation_display"),
            wire=record,
        )

    def _scope(self) -> Q:
        # Every record carrying a unique key, not only those whose correlation_display we set:
        # a record adopted by unique key (made by an earlier integration, or before a lost
        # shadow) must be listed too. The shadow's links decide which workspace owns it.
        q = Q.is_not_empty(self.inst.unique_key)
        if self.ws.sys_domain:
            q = q & Q.eq("sys_domain", self.ws.sys_domain)
        return q

    # --- reading -------------------------------------------------------------------------------

    async def changed(self, since: datetime | None) -> AsyncIterator[Ticket]:
        q = self._scope()
        if since is not None:
            q = q & Q.ge("sys_updated_on", since)
        # Our own writes in the window come back too: room for them on the page.
        page = self.client.own.page(self.page_size, since, OWN_PAGE_MAX)
        async for rec in self.client.list_records(q, self.fields, page_size=page):
            yield self.ticket(rec)

    async def fetch(self, ids: Sequence[str]) -> dict[str, Ticket]:
        out: dict[str, Ticket] = {}
        for records in await per_chunk(ids, ID_CHUNK, lambda c: self._records(Q.in_("sys_id", c))):
            out.update((rec.sys_id, self.ticket(rec)) for rec in records)
        for sys_id in ids:
            if sys_id not in out:
                log.warning("snow_record_missing", sys_id=sys_id)
        return out

    async def get(self, ticket_id: str) -> Ticket | None:
        found = await self.client.find(self._scope() & Q.eq("sys_id", ticket_id), self.fields, limit=1)
        return self.ticket(found[0]) if found else None

    async def by_incident(
        self, incidents: Iterable[str], exclude: frozenset[str] = frozenset()
    ) -> dict[str, Ticket]:
        """Records that already carry these incidents' unique key (a crash or a lost shadow).

        An incident reopened after its ticket closed has a follow-up ticket with the same key
        (REFERENCE E.9): the open one wins, then the newest; ``exclude`` names sys_ids to ignore."""
        key = self.inst.unique_key
        found: dict[str, SnowRecord] = {}
        names = list(incidents)
        for records in await per_chunk(names, ID_CHUNK, lambda c: self._records(Q.in_(key, c))):
            for rec in records:
                if rec.sys_id in exclude:
                    continue
                best = found.get(rec.get(key))
                if best is None or self._rank(rec) > self._rank(best):
                    found[rec.get(key)] = rec
        return {name: self.ticket(rec) for name, rec in found.items()}

    async def _records(self, query: Q) -> list[SnowRecord]:
        """Every record of this instance's scope that ``query`` matches (all its pages)."""
        scoped = self.routing.scoped(query)
        return [rec async for rec in self.client.list_records(scoped, self.fields, page_size=self.page_size)]

    def _rank(self, rec: SnowRecord) -> tuple[bool, int, str]:
        """Which of several tickets of one incident is its current one: open first, then newest."""
        digits = "".join(c for c in rec.number if c.isdigit())
        return (not self.finished(rec.get(self.inst.status_field)), int(digits or 0), rec.number)

    def finished(self, status: str) -> bool:
        return self.profile.is_finished(status)

    def read_only(self, status: str) -> bool:
        return self.profile.is_read_only(status)

    def autoclosed(self, agreed: str, now: str) -> bool:
        return agreed in self.profile.resolved_states and now in self.profile.closed_states

    def version_after(self, known: int | None, before: int | None, after: int) -> int | None:
        return version_after(known, before, after)

    def is_number(self, text: str) -> bool:
        return NUMBER.match(text) is not None

    # --- creating ------------------------------------------------------------------------------

    async def new_ticket(
        self, incident: Incident, values: Mapping[str, str], description: str
    ) -> dict[str, str]:
        body: dict[str, str] = {
            "short_description": incident.title[:160],
            "description": description,
            self.inst.unique_key: incident.id,
            "correlation_display": self.marker,
        }
        for name in ("severity", "status", "owner"):
            if name in values:
                body[self.field_keys[name]] = values[name]
        caller = await self._caller_id()
        if caller:
            body[self.profile.caller_field] = caller
        body.update(await self.routing.create_values(incident))  # group, company, domain
        return body

    def keyed(self, body: Mapping[str, str], incident: Incident) -> dict[str, str]:
        # The unique key is how a crash or a lost shadow finds the ticket again: never a hook's.
        out = {**body, self.inst.unique_key: incident.id}
        out.setdefault("correlation_display", self.marker)
        return out

    def follow_up(self, body: Mapping[str, str], closed: Ticket) -> dict[str, str]:
        out = dict(body)
        reference = self.profile.follow_up_field
        if reference:
            out[reference] = closed.id
        out["description"] = (
            f"Follow-up of {closed.number}, which was closed when the Microsoft Sentinel incident "
            f"was reopened.\n\n{body.get('description', '')}"
        )
        return out

    async def create(
        self,
        incident: str,
        body: Mapping[str, str],
        exclude: frozenset[str] = frozenset(),
        notes: Mapping[str, str] | None = None,
    ) -> Ticket:
        """POST the ticket; when the answer leaves open whether it was created (a 5xx, a timeout, a
        connection dropped after sending), settle that now by its unique key and POST again only
        when it is absent. A 429 or a request that never left (``NotSent``) created nothing: the
        HTTP layer retried it already and the next cycle tries again.

        ``notes`` are journal fields (``work_notes``, ``comments``) sent in the same POST: an insert
        takes a journal field like any other and adds one entry for it (ServiceNowDocs,
        rest-api-explorer/t_GetStartedCreateInt.md creates an incident with ``comments``;
        REFERENCE C.9), so the entries exist exactly when the record does."""
        values = {**body, **(notes or {})}
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            try:
                created = self._mine(await self.client.create(values, self._create_fields))
                snowfields.require_unique_key(self.inst, created)
                if not self.client.fields_proven:  # the table was empty at the start
                    async with self.client.proof_lock:
                        await snowfields.ensure_from_created(
                            self.config, self.inst, self.client, self.store, created, datetime.now(UTC)
                        )
                return self.ticket(created)
            except (NotSent, RateLimited):
                raise
            except TransientError as exc:
                found = (await self.by_incident([incident], exclude)).get(incident)
                if found is not None:
                    log.info("snow_create_settled", snow_number=found.number, outcome="created")
                    return found
                if attempt == CREATE_ATTEMPTS:
                    raise
                log.info("snow_create_settled", outcome="absent", error=str(exc)[:500])
        raise AssertionError("unreachable")

    async def _caller_id(self) -> str | None:
        if self._caller is None:
            caller = self.ws.caller_id or self.inst.caller_id
            if not caller:
                self._caller = ""
            elif len(caller) == 32 and all(c in "0123456789abcdef" for c in caller):
                self._caller = caller
            else:
                user = await self.client.find_user(user_name=caller)
                if user is None:
                    log.warning("caller_unknown", caller_id=caller)
                self._caller = user.sys_id if user else ""
        return self._caller or None

    # --- writing -------------------------------------------------------------------------------

    def render(
        self, changes: Mapping[str, str], ticket: Ticket | None, close: tuple[str, str]
    ) -> dict[str, str]:
        """Field changes -> the PATCH body, with what closing or reopening needs: a finishing
        state carries the close code and notes in the same PATCH (C.8, the data policy), a
        reopening one clears them."""
        body: dict[str, str] = {}
        if "severity" in changes:
            body[self.inst.severity_field] = changes["severity"]
        if "owner" in changes:
            body["assigned_to"] = changes["owner"]
        if "status" in changes:
            new_state = changes["status"]
            body[self.inst.status_field] = new_state
            was_closed = ticket is not None and self.finished(ticket.values.get("status", ""))
            if self.finished(new_state):
                body[self.profile.close_code_field], body[self.profile.close_notes_field] = close
            elif was_closed:
                body[self.profile.close_code_field] = ""
                body[self.profile.close_notes_field] = ""
        return body

    def drop_unchanged(
        self, ticket: Ticket, body: Mapping[str, Any], planned: Iterable[str]
    ) -> dict[str, Any]:
        keep = set(planned)
        record = ticket.wire
        assert isinstance(record, SnowRecord)
        return {k: v for k, v in body.items() if k in keep or k not in record.fields or record.fields[k] != v}

    async def write(self, ticket_id: str, body: Mapping[str, str]) -> Ticket:
        return self.ticket(self._mine(await self.client.patch(ticket_id, body, self.fields)))

    async def post_note(self, ticket_id: str, text: str, kind: str) -> Ticket:
        return self.ticket(self._mine(await self.client.patch(ticket_id, {kind: text}, self.fields)))

    def _mine(self, record: SnowRecord) -> SnowRecord:
        """Note a record we just wrote (see :mod:`agent.connectors.own_writes`)."""
        self.client.own.add(record.sys_id, record.updated_on)
        return record

    # --- users and routing ---------------------------------------------------------------------

    async def user_for(self, owner: str, spelled: str) -> str | None:
        """The sys_id of the ServiceNow user for a source owner (``owner`` lower-cased,
        ``spelled`` as the source sent it): by the [owners] user name, else by e-mail as spelled,
        then lower-cased, since ServiceNow compares query values case-sensitively (REFERENCE C.3).
        """
        lookups = [{"user_name": name} for name in (self.owners_rev.get(owner),) if name]
        lookups += [{"email": email} for email in dict.fromkeys((spelled, owner)) if email]
        for lookup in lookups:
            try:
                user = await self.client.find_user(**lookup)
            except DataError:
                continue  # a value no query can carry (a line break): no user has it
            if user is not None:
                return user.sys_id
        return None

    async def owner_of(self, user: str) -> str:
        found = await self.client.find_user(sys_id=user)
        if found is None:
            return ""
        return (self.owners.get(found.user_name) or (found.email or "")).lower()

    def route_extra(self, incident: Incident) -> dict[str, str]:
        return self.routing.link_extra(incident)

    async def reroute(self, extra: Mapping[str, str], incident: Incident) -> Route | None:
        return await self.routing.reroute(extra, incident)

    def merge_write(
        self, ticket: Ticket, note: str, parent: str | None, status: str | None, close: tuple[str, str]
    ) -> dict[str, str]:
        """The write that records a merge on the merged incident's ticket: the note, the surviving
        incident's ticket as its parent, and (``status``) finishing it with ``close``."""
        body: dict[str, str] = {"work_notes": note}
        if parent is not None:
            body["parent_incident"] = parent
        if status is not None:
            body.update(self.render({"status": status}, ticket, close))
        return body

    # --- the cycle -----------------------------------------------------------------------------

    async def prepare(self, now: datetime) -> None:
        """Prove the configured fields exist on the table (at most daily), unless the instance is
        paused by its rate limit (it is not asked then; the cycle says so)."""
        gate = self.client.http.gate
        if gate is None or not gate.active():
            async with self.client.proof_lock:
                await snowfields.ensure(self.config, self.inst, self.client, self.store, now)

    def check_paused(self) -> None:
        gate = self.client.http.gate
        if gate is not None:
            gate.check("CYCLE", self.inst.instance_url)  # REFERENCE E.8: wait out the window

    async def save_pause(self) -> None:
        gate = self.client.http.gate
        if gate is not None:
            await gate.save(self.store)
