"""The ports: what the sync engine asks of the systems it connects and of its state.

The engine (:mod:`agent.sync`) knows these Protocols and the records of :mod:`agent.core.records`,
nothing else: it never builds a ServiceNow query or an OData filter, never reads a wire field,
and works the same against fakes in memory (the engine's unit tests) as against the real
connectors (:mod:`agent.connectors`), which the runtime (:mod:`agent.app.runtime`) plugs in.

* :class:`IncidentSource`: where incidents come from. Microsoft Sentinel today
  (:class:`agent.connectors.sentinel.source.SentinelSource`), Microsoft Graph for Defender XDR
  next. What differs between them stays behind the port: Sentinel has an etag, Graph's version
  is ``lastUpdateDateTime``; Sentinel comments have ids the agent chooses and can be rewritten,
  Graph comments have no ids and cannot be edited (:meth:`IncidentSource.comment_id` says so);
  labels or ``customTags``; an owner object or a free-text ``assignedTo``; a classification
  with a reason or with a determination (:class:`~agent.core.records.Closure`); a merged
  incident is ``Closed`` with a ``Redirected`` tag or ``redirected`` (``merged_away``).
* :class:`TicketSink`: the ticket system (ServiceNow:
  :class:`agent.connectors.servicenow.sink.ServiceNowSink`), with its journal
  (:class:`Journal`).
* :class:`~agent.store.base.Store`: the shadow (SQLite, PostgreSQL, memory).
* :class:`Lease`: who leads among agents sharing one state.

Writes are split in three so the custom mapping hook sees the wire body: ``render`` (side-neutral
changes -> the body the system takes), the hook, ``drop_unchanged``, then ``write``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from agent.core.records import Closure, Comment, Evidence, Incident, Link, Note, Route, Ticket
from agent.store.base import Store

__all__ = ["IncidentSource", "Journal", "Lease", "Store", "TicketSink"]


class IncidentSource(Protocol):
    """The incidents of one source (one Sentinel workspace, one Defender XDR tenant)."""

    system: str
    """The source's name in logs and metrics (``sentinel``)."""
    title: str
    """How a person names it (``Microsoft Sentinel``)."""
    field_keys: Mapping[str, str]
    """Synced field -> the property a write carries it in (what a hook may drop or change)."""
    writable: frozenset[str]
    """The properties a write may carry (a hook returning others is refused)."""
    comments_html: bool
    """Comments are HTML (shown as text on the ticket), else plain text."""
    stable_comment_ids: bool
    """The agent chooses a comment's id, so writing it again rewrites it (Sentinel). False: a
    comment gets no id the agent knows before writing it and a second write adds a second comment
    (Graph); the conversation then records its intent first and finds the comment again by text."""
    max_comments: int | None
    """How many comments one incident holds at most (None: no limit)."""
    closed_status: str
    """The status of a closed incident (``Closed``)."""

    # --- reading -------------------------------------------------------------------------------
    def changed(self, since: datetime | None) -> AsyncIterator[Incident]:
        """The selected incidents modified at or after ``since`` (None: every one), each once."""
        ...

    def open_incidents(self) -> AsyncIterator[Incident]:
        """The selected incidents that are not closed, whatever their modification time."""
        ...

    async def get(self, incident_id: str) -> Incident:
        """One incident; :class:`~agent.errors.NotFound` when it is gone."""
        ...

    def selected(self, incident: Incident) -> bool:
        """Whether the incident belongs to what this source syncs (its label filter)."""
        ...

    def handed_over(self, incident: Incident | None, link: Link | None) -> bool:
        """Whether another source syncs the incident now (an onboarded workspace's Defender XDR
        incident, synced through Graph): this one neither creates, adopts, writes nor commits it."""
        ...

    def ticket_description(self, incident: Incident) -> str:
        """The description of a new ticket: the incident's own text and where to open it."""
        ...

    # --- writing fields ------------------------------------------------------------------------
    def render(self, changes: Mapping[str, str], closure: Closure | None) -> dict[str, Any]:
        """Field changes in the source's terms -> the write; ``closure`` when the status closes."""
        ...

    def drop_unchanged(
        self, incident: Incident, body: Mapping[str, Any], planned: Iterable[str]
    ) -> dict[str, Any]:
        """``body`` without what a hook added that the incident already holds."""
        ...

    def field_value(self, field: str, value: Any) -> str:
        """A written property's value in the terms the planner compares (an owner object -> UPN)."""
        ...

    async def write(self, incident: Incident, body: Mapping[str, Any]) -> Incident:
        """Write ``body``; :class:`~agent.errors.EditConflict` when the incident changed since read."""
        ...

    async def add_label(self, incident: Incident, label: str) -> str | None:
        """Add ``label``; the new version when it applied to ``incident`` as read, else None (an
        analyst changed it first, or the label could not be written)."""
        ...

    # --- the conversation ----------------------------------------------------------------------
    async def comments(self, incident: Incident) -> Sequence[Comment]:
        """The incident's comments, oldest first."""
        ...

    def comment_id(self, key: str) -> str:
        """The id of the comment written for ``key`` (a journal entry): the same key gives the same
        comment, so a repeated write overwrites it instead of adding one."""
        ...

    def notice_id(self, key: str) -> str:
        """The id of the agent's own notice ``key`` on an incident (a repeated write rewrites it)."""
        ...

    async def put_comment(self, incident: Incident, comment_id: str, text: str) -> bool:
        """Write a comment; False when the incident holds the most comments it can."""
        ...

    def comment_text(self, header: str, text: str, where: str) -> str:
        """A comment from a header and a plain text, in the source's format and size limit."""
        ...

    async def alerts(self, incident: Incident) -> Sequence[Evidence]:
        """The incident's alerts, one line each."""
        ...

    async def entities(self, incident: Incident) -> Sequence[Evidence]:
        """The incident's entities, one line each."""
        ...

    # --- merges --------------------------------------------------------------------------------
    def merge_text(self, merged: Incident, survivor: Incident | None) -> str:
        """One line saying what ``merged`` was merged into."""
        ...

    def merge_note(self, merged: Incident, survivor: Incident | None, ticket: str | None, first: bool) -> str:
        """The note on the merged incident's ticket: what happened, where the survivor lives."""
        ...


class Journal(Protocol):
    """The ticket system's journal (work notes and comments): how it is read and who wrote what."""

    async def start(self, now: datetime) -> None:
        """Begin a cycle (load what the state remembers about this journal)."""
        ...

    def remember(self, ticket: str, extra: Mapping[str, str]) -> None:
        """Note how a linked ticket's journal is read (from its link's extras)."""
        ...

    def extra(self, ticket: str) -> dict[str, str]:
        """What the ticket's link keeps about its journal."""
        ...

    async def read(self, reads: Mapping[str, datetime | None], now: datetime) -> dict[str, list[Note]]:
        """The entries of each ticket from its bound (None: all), oldest first."""
        ...

    async def missing(self, tickets: Iterable[str], count: int, now: datetime) -> dict[str, list[Note]]:
        """Entries the agent wrote for sure are not shown: read those journals another way (once),
        or return nothing when there is no other way left."""
        ...

    def derived(self, note_id: str) -> bool:
        """Whether an entry id is a derived key (a journal read without ids)."""
        ...

    def by_agent(self, note: Note) -> bool:
        """Certainly written by the agent's own user."""
        ...

    def maybe_agent(self, note: Note) -> bool:
        """Possibly written by the agent (its user is not known yet)."""
        ...

    async def learn(self, updated_by: str, now: datetime) -> None:
        """The user the agent's writes carry (when the configuration names none)."""
        ...


class TicketSink(Protocol):
    """The tickets of one ticket-system instance, as one workspace sees them."""

    system: str
    """The ticket system's name in logs and metrics (``servicenow``)."""
    title: str
    """How a person names it (``ServiceNow``)."""
    field_keys: Mapping[str, str]
    """Synced field -> the ticket field it is written in (severity -> impact, ...)."""
    note_limit: int
    """Characters one journal entry takes."""
    comment_kind: str
    """The journal a comment from the source goes to (``work_notes`` or ``comments``)."""
    note_kind: str
    """The journal the agent's own notes (alerts, entities) go to."""
    fields: tuple[str, ...]
    """The ticket fields every read asks for (a hook's own fields included)."""
    marker: str
    """How this workspace's tickets are marked (``Ticket.marker`` of the tickets it made)."""

    @property
    def journal(self) -> Journal:
        """The tickets' journal."""
        ...

    # --- reading -------------------------------------------------------------------------------
    def changed(self, since: datetime | None) -> AsyncIterator[Ticket]:
        """This workspace's tickets modified at or after ``since`` (None: all of them)."""
        ...

    async def fetch(self, ids: Sequence[str]) -> dict[str, Ticket]:
        """Tickets by id (those that exist)."""
        ...

    async def get(self, ticket_id: str) -> Ticket | None:
        """One ticket of this workspace by id, or None."""
        ...

    async def by_incident(
        self, incidents: Iterable[str], exclude: frozenset[str] = frozenset()
    ) -> dict[str, Ticket]:
        """Incident id -> the ticket carrying it as its unique key (open first, then newest),
        ignoring the ticket ids in ``exclude``."""
        ...

    def finished(self, status: str) -> bool:
        """The work on a ticket in ``status`` is over (resolved, closed, cancelled)."""
        ...

    def read_only(self, status: str) -> bool:
        """A ticket in ``status`` can no longer be changed (closed, cancelled)."""
        ...

    def autoclosed(self, agreed: str, now: str) -> bool:
        """Whether the system itself moves a ticket from ``agreed`` to ``now``."""
        ...

    def version_after(self, known: int | None, before: int | None, after: int) -> int | None:
        """The version to remember after the agent's own write turned ``before`` into ``after``:
        the new one when nobody else wrote in between, else ``known`` (so the next cycle reads
        what the other writer did)."""
        ...

    def is_number(self, text: str) -> bool:
        """Whether ``text`` looks like a ticket number (a label carrying it)."""
        ...

    # --- creating ------------------------------------------------------------------------------
    async def new_ticket(
        self, incident: Incident, values: Mapping[str, str], description: str
    ) -> dict[str, str]:
        """The fields of a new ticket: ``values`` (severity, status, owner in the ticket's terms),
        the title, the description, the unique key, the caller and the routing fields."""
        ...

    def keyed(self, body: Mapping[str, str], incident: Incident) -> dict[str, str]:
        """``body`` with the unique key (and marker) that finds the ticket again, whatever a hook did."""
        ...

    def follow_up(self, body: Mapping[str, str], closed: Ticket) -> dict[str, str]:
        """A new ticket's fields made into a follow-up of the read-only ``closed`` one."""
        ...

    async def create(
        self,
        incident: str,
        body: Mapping[str, str],
        exclude: frozenset[str] = frozenset(),
        notes: Mapping[str, str] | None = None,
    ) -> Ticket:
        """Create the ticket, settling a lost answer by its unique key (never twice). ``notes``
        (journal -> text) are journal entries the ticket is created with, in the same call: they
        exist exactly when the ticket does."""
        ...

    # --- writing -------------------------------------------------------------------------------
    def render(
        self, changes: Mapping[str, str], ticket: Ticket | None, close: tuple[str, str]
    ) -> dict[str, str]:
        """Field changes in the ticket's terms -> the write; ``close`` is ``(code, notes)`` for a
        status that finishes the ticket."""
        ...

    def drop_unchanged(
        self, ticket: Ticket, body: Mapping[str, Any], planned: Iterable[str]
    ) -> dict[str, Any]:
        """``body`` without what a hook added that the ticket already holds."""
        ...

    async def write(self, ticket_id: str, body: Mapping[str, str]) -> Ticket:
        """Write ``body`` and return the ticket as saved."""
        ...

    async def post_note(self, ticket_id: str, text: str, kind: str) -> Ticket:
        """Add one journal entry of ``kind`` and return the ticket as saved."""
        ...

    # --- users and routing ---------------------------------------------------------------------
    async def user_for(self, owner: str, spelled: str) -> str | None:
        """The ticket system's user id of a source owner (``owner`` its key, ``spelled`` as the
        source wrote it), or None."""
        ...

    async def owner_of(self, user: str) -> str:
        """The source owner key of a ticket system user id ("" when it maps to nobody)."""
        ...

    def route_extra(self, incident: Incident) -> dict[str, str]:
        """What a new link remembers about the routing of ``incident``."""
        ...

    async def reroute(self, extra: Mapping[str, str], incident: Incident) -> Route | None:
        """After a change of the incident (``extra``: its link's extras): where its ticket goes
        now; None leaves the link as it is."""
        ...

    def merge_write(
        self, ticket: Ticket, note: str, parent: str | None, status: str | None, close: tuple[str, str]
    ) -> dict[str, str]:
        """The write that records a merge on the merged incident's ticket: ``note``, the survivor's
        ticket id as its ``parent``, and finishing it in ``status`` with ``close`` (code, notes)."""
        ...

    # --- the cycle -----------------------------------------------------------------------------
    async def prepare(self, now: datetime) -> None:
        """Cheap per-cycle checks before the cycle (the configured fields exist)."""
        ...

    def check_paused(self) -> None:
        """Raise :class:`~agent.errors.InstancePaused` while the instance's rate limit is used up."""
        ...

    async def save_pause(self) -> None:
        """Keep a rate-limit pause in the state (a restart honours it)."""
        ...


class Lease(Protocol):
    """Leadership among agents sharing one state (:class:`agent.store.lease.Lease`): the remote
    write gate asks :meth:`check` before every write."""

    @property
    def held(self) -> bool:
        """True while this agent may act as leader (its own deadline has not passed)."""
        ...

    def check(self) -> None:
        """Raise :class:`~agent.errors.LeaseLost` unless this agent may still write."""
        ...

    async def try_acquire(self) -> bool:
        """Take the lease when it is free, expired or already ours; True when this agent leads."""
        ...

    async def renew(self) -> bool:
        """Push the expiry out; False (and no longer leader) when another agent has the lease."""
        ...

    async def release(self) -> None:
        """Give the lease up now (a standby may take it at once)."""
        ...
