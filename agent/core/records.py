"""Side-neutral records: what the sync keeps about a pair and what every state store holds.

Plain frozen dataclasses of strings, numbers, aware datetimes and small collections: no database
type appears in them, so the engine and the operator commands never see which store they use.
The checks every store applies before writing are in :mod:`agent.store.checks`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

SIDES = ("sentinel", "servicenow")
DIRECTIONS = ("to_snow", "to_sentinel")
COMMENT_STATES = ("pending", "posted", "confirmed", "unconfirmed")


@dataclass(frozen=True, slots=True)
class Link:
    """One linked pair and what the two sides last agreed on.

    ``fields`` maps each synced field to the agreed ``(sentinel, servicenow)`` pair (the planner's
    base); ``open`` is False once both sides are closed; ``extra`` holds small forward-compatible
    string key/values.
    """

    instance: str
    workspace: str
    incident: str
    sys_id: str
    number: str
    fields: Mapping[str, tuple[str, str]]
    sentinel_etag: str | None
    snow_mod_count: int | None
    open: bool
    alerts_posted: frozenset[str] = frozenset()
    entities_posted: frozenset[str] = frozenset()
    created_at: datetime | None = None
    enrich_after: datetime | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommentLink:
    """A Sentinel comment and the journal entry it was copied to or from (``direction``).

    ``state`` is ``confirmed`` once the journal sys_id is known. A journal entry the agent writes
    is recorded *before* the PATCH as ``pending`` (``journal_sys_id`` a placeholder,
    ``text_hash`` the hash of the exact text), becomes ``posted`` when the PATCH succeeded, then
    ``confirmed`` from a journal read, or ``unconfirmed`` when the journal cannot show it (it
    is then never written again). ``note_ids`` are the alert/entity ids an agent note lists, so
    they count as posted exactly when the note's link exists.
    """

    instance: str
    workspace: str
    incident: str
    sentinel_comment: str
    journal_sys_id: str
    direction: str  # "to_snow" | "to_sentinel"
    created_at: datetime
    state: str = "confirmed"
    text_hash: str | None = None
    note_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Watermark:
    """One side's watermarks and when they last moved.

    ``modified``: the newest modification time already seen (the engine moves it every cycle).
    ``created``: the creation floor on the Sentinel side; only an operator moves it.
    """

    instance: str
    workspace: str
    side: str  # "sentinel" | "servicenow"
    created: datetime | None
    modified: datetime | None
    moved_at: datetime | None
    created_moved_at: datetime | None = None
    modified_moved_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Tombstone:
    """An incident unlinked on purpose: the ticket it had (``sys_id``/``number``, "" if none),
    why, and when. The engine never creates or adopts a ticket for it again."""

    incident: str
    sys_id: str
    number: str
    reason: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Failure:
    """An incident whose sync failed ``attempts`` times in a row; not retried before ``next_try``."""

    instance: str
    workspace: str
    incident: str
    error: str
    attempts: int
    next_try: datetime
    last_at: datetime


class Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = enum.auto()


UNSET = Unset.UNSET
"""Default of :meth:`Store.set_watermark`'s optional times: "leave this one as it is"."""


# --- the two sides, as the sync sees them -------------------------------------------------------
#
# A connector turns its wire records into these and back; the engine reads only these fields.
# ``wire`` is the connector's own record, handed back to the connector (and to the custom mapping
# hook, which receives the source's and the ticket system's records as they were read).


@dataclass(frozen=True, slots=True)
class Incident:
    """One incident of a source (a Sentinel workspace, a Defender XDR tenant).

    ``version`` changes with every change of the incident (Sentinel's etag; Graph has no etag, so
    its ``lastUpdateDateTime``). ``values`` holds the synced fields in the source's own terms:
    ``severity``, ``status`` and ``owner`` (the owner's key: lower-cased UPN, else e-mail, "" for
    none). ``classification`` is the key the closure map of the ticket side looks up when the
    incident closes, ``close_notes`` the text a person reads there.
    """

    id: str
    version: str
    number: str
    title: str
    values: Mapping[str, str]
    labels: tuple[str, ...]
    created: datetime
    modified: datetime
    closed: bool
    owner_spelled: str = ""  # the owner as the source spells it (look-ups compare case-sensitively)
    owner_names: tuple[str, ...] = ()  # every name the owner goes by, lower-cased (routing rules)
    classification: str | None = None
    close_notes: str = ""
    comments_count: int | None = None  # None: unknown (the comments are always listed)
    alerts_count: int | None = 0  # None: unknown, read the alerts whenever the incident changed
    merged_away: bool = False  # closed by a merge into another incident
    merged_into: str | None = None  # the surviving incident's id, when the source names it
    extra: Mapping[str, str] = field(default_factory=dict)  # what a link remembers about it
    wire: object = field(default=None, compare=False, repr=False)

    @property
    def owner(self) -> str:
        return self.values.get("owner", "")


@dataclass(frozen=True, slots=True)
class Ticket:
    """One ticket of the ticket system (a ServiceNow incident).

    ``version`` counts the ticket's writes (``sys_mod_count``); ``values`` holds the synced fields
    in the ticket system's terms (``severity``, ``status``, ``owner`` as the user's id).
    """

    id: str
    number: str
    version: int
    modified: datetime
    updated_by: str
    values: Mapping[str, str]
    close_code: str = ""
    close_notes: str = ""
    key: str = ""  # the incident id the ticket carries (its unique key)
    marker: str = ""  # which workspace's agent made it, as written on it
    wire: object = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Closure:
    """How an incident is closed, in the source's terms: classification, its reason (Sentinel) or
    determination (Graph), and a comment."""

    classification: str
    reason: str | None
    comment: str
    code: str = ""  # the ticket's close code it came from (a source may map codes of its own)


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment on an incident. ``text`` is as the source holds it (HTML for Sentinel)."""

    id: str
    text: str
    author: str | None
    author_id: str | None  # UPN or e-mail
    created: datetime


@dataclass(frozen=True, slots=True)
class Note:
    """A journal entry of a ticket (a work note or an additional comment).

    ``id`` is the entry's own id, or a key derived from the ticket, the kind, the text and its
    place when the journal was read without ids (``derived``).
    """

    id: str
    ticket: str
    kind: str
    text: str
    author: str
    created: datetime
    derived: bool = False


@dataclass(frozen=True, slots=True)
class Evidence:
    """An alert or an entity of an incident, as one line a person reads on the ticket."""

    id: str
    line: str
    order: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Route:
    """Where a ticket goes after its incident changed: the link's extras to keep, the ticket write
    that moves it (empty when it stays), and the group it moves to and from (for the log)."""

    extra: Mapping[str, str]
    write: Mapping[str, str]
    group: str = ""
    previous: str | None = None
