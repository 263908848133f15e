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
