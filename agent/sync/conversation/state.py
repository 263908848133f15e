"""What the steps of a pair's conversation share: the constants kept in links, the workspace's
conversation state (:class:`Talk`) and one pair's (:class:`State`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from agent.core.records import Comment, CommentLink, Evidence, Incident, Link, Note, Ticket
from agent.errors import RemoteError
from agent.ports import IncidentSource, Journal, Store, TicketSink

TO_SNOW, TO_SENTINEL = "to_snow", "to_sentinel"
PENDING, POSTED, CONFIRMED, UNCONFIRMED = "pending", "posted", "confirmed", "unconfirmed"
AGENT_NOTE = "agent-note:"  # pseudo comment name of an alert/entity note (never a source id)
ALERT, ENTITY, COMMENT = "alert:", "entity:", "comment:"  # prefixes of the ids an agent note lists
FOUND = AGENT_NOTE + "found:"  # an opening entry found again by its text after a lost shadow
PLACEHOLDER = "pending:"  # journal id of a link whose entry is not confirmed yet
DROPPED = "dropped:"  # journal id of the link of something not written to a closed ticket

EXTRA_JOURNAL_SEEN = "journal_seen"  # server time of the newest journal entry processed
EXTRA_COMMENTS_SEEN = "comments_seen"  # the incident's comment count after the agent's last look
EXTRA_COMMENT_LIMIT = "comment_limit"  # "1": the incident holds the most comments, warned once
EXTRA_DROPPED = "journal_dropped"  # "1": the ticket is closed, dropping what it can no longer take was said


def text_hash(text: str) -> str:
    """Hash of a journal text as written and as read back (line endings and outer blanks aside)."""
    return hashlib.sha256(text.replace("\r\n", "\n").strip().encode()).hexdigest()


def journal_seen(ticket: Ticket) -> dict[str, str]:
    """The ``extra`` of a new link: its journal starts at the ticket's creation (server time)."""
    return {EXTRA_JOURNAL_SEEN: ticket.modified.isoformat()}


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass
class Counts:
    """What the conversation wrote this cycle (merged into the cycle summary)."""

    comments_to_snow: int = 0
    comments_to_sentinel: int = 0
    notes_to_snow: int = 0


@dataclass(frozen=True)
class Entry:
    """One journal entry a new ticket carries in its create: its intent's name, its journal, its
    text and the ids it lists (``alert:``, ``entity:``, ``comment:``)."""

    name: str
    kind: str
    text: str
    note_ids: tuple[str, ...]


@dataclass
class Opening:
    """What a new ticket starts with, read before its create (:mod:`.opening`): the incident's
    alerts, entities and comments (None: not read, because there are none or the read failed,
    the failure in ``errors``), and the entries the create carries."""

    alerts: Sequence[Evidence] | None = None
    entities: Sequence[Evidence] | None = None
    comments: Sequence[Comment] | None = None
    errors: dict[str, RemoteError] = field(default_factory=dict)
    entries: list[Entry] = field(default_factory=list)

    @property
    def notes(self) -> dict[str, str]:
        """Journal -> text of the entries, as the create takes them."""
        return {e.kind: e.text for e in self.entries}


@dataclass(frozen=True)
class PairWork:
    """One pair the engine processes: the link it would save, both records after the field
    writes, and why the pair is here."""

    link: Link
    incident: Incident
    ticket: Ticket
    source_changed: bool
    ticket_changed: bool
    created: bool = False
    adopted: bool = False
    enrich_due: bool = False
    opening: Opening | None = None  # a new ticket: what was read and written with its create


@dataclass
class State:
    """Mutable per-pair state while its conversation runs."""

    incident: Incident
    ticket: Ticket
    mod: int | None  # the ticket version the shadow may store (behind when someone else wrote)
    extra: dict[str, str]
    links: list[CommentLink]
    alerts: set[str]
    entities: set[str]
    puts: int = 0
    notes: list[Note] = field(default_factory=list)


@dataclass
class Talk:
    """One workspace's conversation: its two sides, its state, and what this cycle read and wrote."""

    instance: str
    workspace: str
    source: IncidentSource
    sink: TicketSink
    store: Store
    comment_format: str = "text"
    overlap: timedelta = timedelta(seconds=120)
    counts: Counts = field(default_factory=Counts)
    entries: dict[str, list[Note]] = field(default_factory=dict)  # ticket id -> journal read this cycle
    posted: dict[str, datetime | None] = field(default_factory=dict)  # ticket id -> modified before
    unsettled: set[str] = field(default_factory=set)  # incidents with comment links not confirmed

    @property
    def journal(self) -> Journal:
        return self.sink.journal

    def key(self, note_id: str) -> str:
        """The key a journal entry's comment id is derived from."""
        return f"{self.instance}:{note_id}"
