"""In-memory sides for the engine's unit tests: an incident source and a ticket system that keep
their records in dictionaries and implement the ports (:mod:`agent.ports`) as strictly as the
real systems where the engine depends on it:

* every write moves the record's version (the source's like an etag, the ticket's by exactly
  one, like ``sys_mod_count``), and so do changes made "by an analyst" (:meth:`FakeSource.edit`,
  :meth:`FakeSink.edit`);
* a source write against a version that moved raises :class:`~agent.errors.EditConflict`;
* reading a record that does not exist raises :class:`~agent.errors.NotFound`;
* a ticket in a closed state refuses writes (REFERENCE E.9) with a
  :class:`~agent.errors.PermanentError`, as an ACL would;
* ``fail`` makes the next write of a kind fail (transient or permanent), once.

Their vocabulary is the built-in maps' (Sentinel severities and statuses on the source side,
ITSM impact and state numbers on the ticket side), so :func:`settings` works with both.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from agent.core.maps import Maps
from agent.core.records import Closure, Comment, Evidence, Incident, Link, Note, Route, Ticket
from agent.errors import EditConflict, NotFound, PermanentError, RemoteError, TransientError
from agent.sync.context import Settings

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
RESOLVED, CLOSED, CANCELLED = "6", "7", "8"
AGENT = "agent"  # the ticket system user the agent writes as


class Clock:
    """A clock the tests move: every record change is stamped with it, a second apart."""

    def __init__(self, start: datetime = EPOCH) -> None:
        self.now = start

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def maps() -> Maps:
    """The default value maps of an ITSM incident table."""
    return Maps(
        severity_to_snow={"High": "1", "Medium": "2", "Low": "3", "Informational": "3"},
        severity_to_sentinel={"1": "High", "2": "Medium", "3": "Low"},
        status_to_snow={"New": "1", "Active": "2", "Closed": RESOLVED},
        status_to_sentinel={
            "1": "New",
            "2": "Active",
            "3": "Active",
            RESOLVED: "Closed",
            CLOSED: "Closed",
            CANCELLED: "Closed",
        },
        closure_to_snow={"TruePositive": "Solved (Permanently)", "Undetermined": "Closed/Resolved by Caller"},
        closure_to_sentinel={"*": ("Undetermined", None)},
    )


def settings(**overrides: Any) -> Settings:
    """The engine's settings for one workspace ``ws`` on instance ``inst``."""
    base = Settings(workspace="ws", instance="inst", maps=maps(), overlap=0.0, enrichment_delay=0.0)
    return replace(base, **overrides)


def _fail(pending: dict[str, RemoteError], kind: str) -> None:
    exc = pending.pop(kind, None)
    if exc is not None:
        raise exc


class FakeSource:
    """Incidents in memory (an :class:`~agent.ports.IncidentSource`)."""

    system = "sentinel"
    title = "Fake SIEM"
    field_keys: Mapping[str, str] = {"severity": "severity", "status": "status", "owner": "owner"}
    writable = frozenset({"severity", "status", "owner", "labels", "classification", "reason", "comment"})
    comments_html = False
    stable_comment_ids = True
    max_comments: int | None = 100
    closed_status = "Closed"

    def __init__(self, clock: Clock, labels: Sequence[str] = (), *, stable_comment_ids: bool = True) -> None:
        self.clock = clock
        self.labels = tuple(labels)
        # False: like Graph (GRAPH.md E), a comment gets an id of the source's own and writing it
        # twice adds it twice; ``lose_comment_answer`` then makes the next write land and fail.
        self.stable_comment_ids = stable_comment_ids
        self.lose_comment_answer = False
        self.handed: set[str] = set()  # incidents another source syncs now (handed_over)
        self.incidents: dict[str, Incident] = {}
        self.notes: dict[str, list[Comment]] = {}
        self.closures: dict[str, Closure] = {}
        self.failing: dict[str, RemoteError] = {}
        self.writes = 0
        self._numbers = itertools.count(1)

    # --- the test's hands --------------------------------------------------------------------------

    def add(
        self,
        *,
        severity: str = "Medium",
        status: str = "New",
        owner: str = "",
        labels: Sequence[str] = (),
        title: str = "incident",
        created: datetime | None = None,
    ) -> Incident:
        name = str(uuid.uuid4())
        now = self.clock.tick()
        incident = Incident(
            id=name,
            version=uuid.uuid4().hex,
            number=str(next(self._numbers)),
            title=title,
            values={"severity": severity, "status": status, "owner": owner},
            labels=tuple(labels),
            created=created or now,
            modified=now,
            closed=status == "Closed",
            owner_spelled=owner,
            owner_names=(owner,) if owner else (),
            comments_count=0,
        )
        self.incidents[name] = incident
        self.notes[name] = []
        return incident

    def edit(self, name: str, **values: str) -> Incident:
        """An analyst's change: new values, a new version and modification time."""
        current = self.incidents[name]
        new = {**current.values, **values}
        self.incidents[name] = replace(
            current,
            values=new,
            version=uuid.uuid4().hex,
            modified=self.clock.tick(),
            closed=new["status"] == "Closed",
        )
        return self.incidents[name]

    def comment(self, name: str, text: str, author: str = "analyst") -> Comment:
        c = Comment(str(uuid.uuid4()), text, author, f"{author}@example.com", self.clock.tick())
        self.notes[name].append(c)
        inc = self.incidents[name]
        self.incidents[name] = replace(inc, comments_count=len(self.notes[name]), version=uuid.uuid4().hex)
        return c

    # --- reading -----------------------------------------------------------------------------------

    async def changed(self, since: datetime | None) -> AsyncIterator[Incident]:
        for inc in sorted(self.incidents.values(), key=lambda i: (i.modified, i.id)):
            if self.selected(inc) and (since is None or inc.modified >= since):
                yield inc

    async def open_incidents(self) -> AsyncIterator[Incident]:
        for inc in list(self.incidents.values()):
            if self.selected(inc) and not inc.closed:
                yield inc

    async def get(self, incident_id: str) -> Incident:
        if incident_id not in self.incidents:
            raise NotFound("sentinel", "GET", incident_id, 404)
        return self.incidents[incident_id]

    def selected(self, incident: Incident) -> bool:
        return not self.labels or any(label in incident.labels for label in self.labels)

    def handed_over(self, incident: Incident | None, link: Link | None) -> bool:
        return incident is not None and incident.id in self.handed

    def ticket_description(self, incident: Incident) -> str:
        return f"Fake SIEM incident #{incident.number}"

    # --- writing -----------------------------------------------------------------------------------

    def render(self, changes: Mapping[str, str], closure: Closure | None) -> dict[str, Any]:
        body: dict[str, Any] = dict(changes)
        if changes.get("status") == self.closed_status and closure is not None:
            body |= {
                "classification": closure.classification,
                "reason": closure.reason,
                "comment": closure.comment,
            }
        return body

    def drop_unchanged(
        self, incident: Incident, body: Mapping[str, Any], planned: Iterable[str]
    ) -> dict[str, Any]:
        keep = set(planned)
        return {k: v for k, v in body.items() if k in keep or incident.values.get(k) != v}

    def field_value(self, field: str, value: Any) -> str:
        return str(value)

    async def write(self, incident: Incident, body: Mapping[str, Any]) -> Incident:
        _fail(self.failing, "write")
        current = await self.get(incident.id)
        if current.version != incident.version:
            raise EditConflict("sentinel", "PUT", incident.id, 409, "Conflict", "the etag moved")
        self.writes += 1
        values = {k: str(v) for k, v in body.items() if k in self.field_keys}
        labels = tuple(body.get("labels", current.labels))
        if "classification" in body:
            self.closures[incident.id] = Closure(
                body["classification"], body.get("reason"), body.get("comment", "")
            )
        new = {**current.values, **values}
        self.incidents[incident.id] = replace(
            current,
            values=new,
            labels=labels,
            version=uuid.uuid4().hex,
            modified=self.clock.tick(),
            closed=new["status"] == "Closed",
        )
        return self.incidents[incident.id]

    async def add_label(self, incident: Incident, label: str) -> str | None:
        try:
            updated = await self.write(incident, {"labels": [*incident.labels, label]})
        except EditConflict:
            return None
        return updated.version

    # --- the conversation --------------------------------------------------------------------------

    async def comments(self, incident: Incident) -> Sequence[Comment]:
        return list(self.notes[incident.id])

    def comment_id(self, key: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, key))

    def notice_id(self, key: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_OID, key))

    async def put_comment(self, incident: Incident, comment_id: str, text: str) -> bool:
        _fail(self.failing, "comment")
        if self.stable_comment_ids:
            kept = [c for c in self.notes[incident.id] if c.id != comment_id]
        else:
            kept, comment_id = list(self.notes[incident.id]), str(uuid.uuid4())
        if self.max_comments is not None and len(kept) >= self.max_comments:
            return False
        kept.append(Comment(comment_id, text, "agent", None, self.clock.tick()))
        self.notes[incident.id] = kept
        current = self.incidents[incident.id]
        self.incidents[incident.id] = replace(current, comments_count=len(kept), version=uuid.uuid4().hex)
        if self.lose_comment_answer:
            self.lose_comment_answer = False
            raise TransientError("sentinel", "POST", incident.id, None, "the answer was lost")
        return True

    def comment_text(self, header: str, text: str, where: str) -> str:
        return f"{header}\n\n{text}"

    async def alerts(self, incident: Incident) -> Sequence[Evidence]:
        return []

    async def entities(self, incident: Incident) -> Sequence[Evidence]:
        return []

    def merge_text(self, merged: Incident, survivor: Incident | None) -> str:
        return f"merged into {survivor.id if survivor else 'another incident'}"

    def merge_note(self, merged: Incident, survivor: Incident | None, ticket: str | None, first: bool) -> str:
        return self.merge_text(merged, survivor)


@dataclass
class FakeJournal:
    """The fake ticket system's journal: entries by ticket, the agent writing as :data:`AGENT`."""

    entries: dict[str, list[Note]] = field(default_factory=dict)

    async def start(self, now: datetime) -> None:
        return None

    def remember(self, ticket: str, extra: Mapping[str, str]) -> None:
        return None

    def extra(self, ticket: str) -> dict[str, str]:
        return {}

    async def read(self, reads: Mapping[str, datetime | None], now: datetime) -> dict[str, list[Note]]:
        return {
            t: [n for n in self.entries.get(t, []) if since is None or n.created >= since]
            for t, since in reads.items()
        }

    async def missing(self, tickets: Iterable[str], count: int, now: datetime) -> dict[str, list[Note]]:
        return {}

    def derived(self, note_id: str) -> bool:
        return False

    def by_agent(self, note: Note) -> bool:
        return note.author == AGENT

    def maybe_agent(self, note: Note) -> bool:
        return note.author == AGENT

    async def learn(self, updated_by: str, now: datetime) -> None:
        return None


class FakeSink:
    """Tickets in memory (a :class:`~agent.ports.TicketSink`), ITSM-like states."""

    system = "servicenow"
    title = "FakeDesk"
    field_keys: Mapping[str, str] = {"severity": "impact", "status": "state", "owner": "assigned_to"}
    note_limit = 4000
    comment_kind = "work_notes"
    note_kind = "work_notes"
    fields: tuple[str, ...] = ()
    marker = "Fake/ws"

    def __init__(self, clock: Clock, users: Mapping[str, str] | None = None) -> None:
        self.clock = clock
        self.tickets: dict[str, Ticket] = {}
        self.users = dict(users or {})  # owner key -> user id
        self.journal = FakeJournal()
        self.failing: dict[str, RemoteError] = {}
        self.writes = 0
        self._numbers = itertools.count(10001)

    # --- the test's hands --------------------------------------------------------------------------

    def edit(self, ticket_id: str, by: str = "analyst", **values: str) -> Ticket:
        current = self.tickets[ticket_id]
        self.tickets[ticket_id] = replace(
            current,
            values={**current.values, **values},
            version=current.version + 1,
            modified=self.clock.tick(),
            updated_by=by,
        )
        return self.tickets[ticket_id]

    def note(self, ticket_id: str, text: str, by: str = "analyst") -> Note:
        n = Note(uuid.uuid4().hex, ticket_id, "work_notes", text, by, self.clock.tick())
        self.journal.entries.setdefault(ticket_id, []).append(n)
        self.edit(ticket_id, by=by)
        return n

    def by_key(self, incident: str) -> list[Ticket]:
        return [t for t in self.tickets.values() if t.key == incident]

    # --- reading -----------------------------------------------------------------------------------

    async def changed(self, since: datetime | None) -> AsyncIterator[Ticket]:
        for t in sorted(self.tickets.values(), key=lambda t: (t.modified, t.id)):
            if since is None or t.modified >= since:
                yield t

    async def fetch(self, ids: Sequence[str]) -> dict[str, Ticket]:
        return {i: self.tickets[i] for i in ids if i in self.tickets}

    async def get(self, ticket_id: str) -> Ticket | None:
        return self.tickets.get(ticket_id)

    async def by_incident(
        self, incidents: Iterable[str], exclude: frozenset[str] = frozenset()
    ) -> dict[str, Ticket]:
        out: dict[str, Ticket] = {}
        for name in incidents:
            found = [t for t in self.by_key(name) if t.id not in exclude]
            if found:
                out[name] = max(found, key=lambda t: (not self.finished(t.values["status"]), t.number))
        return out

    def finished(self, status: str) -> bool:
        return status in (RESOLVED, CLOSED, CANCELLED)

    def read_only(self, status: str) -> bool:
        return status in (CLOSED, CANCELLED)

    def autoclosed(self, agreed: str, now: str) -> bool:
        return agreed == RESOLVED and now == CLOSED

    def version_after(self, known: int | None, before: int | None, after: int) -> int | None:
        return after if known is not None and known == before and after == before + 1 else known

    def is_number(self, text: str) -> bool:
        return text.startswith("T") and text[1:].isdigit()

    # --- creating ----------------------------------------------------------------------------------

    async def new_ticket(
        self, incident: Incident, values: Mapping[str, str], description: str
    ) -> dict[str, str]:
        body = {"title": incident.title, "description": description}
        body |= {self.field_keys[k]: v for k, v in values.items()}
        return body

    def keyed(self, body: Mapping[str, str], incident: Incident) -> dict[str, str]:
        return {**body, "key": incident.id}

    def follow_up(self, body: Mapping[str, str], closed: Ticket) -> dict[str, str]:
        return {**body, "parent": closed.id}

    async def create(
        self,
        incident: str,
        body: Mapping[str, str],
        exclude: frozenset[str] = frozenset(),
        notes: Mapping[str, str] | None = None,
    ) -> Ticket:
        _fail(self.failing, "create")
        self.writes += 1
        ticket_id = uuid.uuid4().hex
        values = {name: body.get(key, "") for name, key in self.field_keys.items()}
        values["status"] = values["status"] or "1"
        values["severity"] = values["severity"] or "3"
        ticket = Ticket(
            id=ticket_id,
            number=f"T{next(self._numbers)}",
            version=0,
            modified=self.clock.tick(),
            updated_by=AGENT,
            values=values,
            key=body.get("key", ""),
            marker=self.marker,
        )
        self.tickets[ticket_id] = ticket
        for kind, text in (notes or {}).items():
            n = Note(uuid.uuid4().hex, ticket_id, kind, text, AGENT, ticket.modified)
            self.journal.entries.setdefault(ticket_id, []).append(n)
        return ticket

    # --- writing -----------------------------------------------------------------------------------

    def render(
        self, changes: Mapping[str, str], ticket: Ticket | None, close: tuple[str, str]
    ) -> dict[str, str]:
        body = {self.field_keys[k]: v for k, v in changes.items()}
        if "status" in changes and self.finished(changes["status"]):
            body["close_code"], body["close_notes"] = close
        return body

    def drop_unchanged(
        self, ticket: Ticket, body: Mapping[str, Any], planned: Iterable[str]
    ) -> dict[str, Any]:
        keep = set(planned)
        current = {self.field_keys[k]: v for k, v in ticket.values.items()}
        return {k: v for k, v in body.items() if k in keep or current.get(k) != v}

    async def write(self, ticket_id: str, body: Mapping[str, str]) -> Ticket:
        _fail(self.failing, "write")
        current = self.tickets[ticket_id]
        if self.read_only(current.values["status"]):
            raise PermanentError("servicenow", "PATCH", ticket_id, 403, "ACL", "the ticket is closed")
        self.writes += 1
        values = {name: body.get(key, current.values[name]) for name, key in self.field_keys.items()}
        updated = replace(
            current,
            values=values,
            version=current.version + 1,
            modified=self.clock.tick(),
            updated_by=AGENT,
            close_code=body.get("close_code", current.close_code),
            close_notes=body.get("close_notes", current.close_notes),
        )
        self.tickets[ticket_id] = updated
        return updated

    async def post_note(self, ticket_id: str, text: str, kind: str) -> Ticket:
        _fail(self.failing, "note")
        if self.read_only(self.tickets[ticket_id].values["status"]):
            raise PermanentError("servicenow", "PATCH", ticket_id, 403, "ACL", "the ticket is closed")
        n = Note(uuid.uuid4().hex, ticket_id, kind, text, AGENT, self.clock.tick())
        self.journal.entries.setdefault(ticket_id, []).append(n)
        current = self.tickets[ticket_id]
        self.tickets[ticket_id] = replace(
            current, version=current.version + 1, modified=n.created, updated_by=AGENT
        )
        return self.tickets[ticket_id]

    # --- users, routing, the cycle -----------------------------------------------------------------

    async def user_for(self, owner: str, spelled: str) -> str | None:
        return self.users.get(owner)

    async def owner_of(self, user: str) -> str:
        return next((key for key, uid in self.users.items() if uid == user), "")

    def route_extra(self, incident: Incident) -> dict[str, str]:
        return {}

    async def reroute(self, extra: Mapping[str, str], incident: Incident) -> Route | None:
        return None

    def merge_write(
        self, ticket: Ticket, note: str, parent: str | None, status: str | None, close: tuple[str, str]
    ) -> dict[str, str]:
        return {"state": status} if status else {}

    async def prepare(self, now: datetime) -> None:
        return None

    def check_paused(self) -> None:
        return None

    async def save_pause(self) -> None:
        return None


def transient(system: str = "servicenow") -> TransientError:
    """A 503, as a remote system answers when it is busy."""
    return TransientError(system, "PATCH", "x", 503, "ServiceUnavailable")
