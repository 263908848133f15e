"""The record-level decision: what one cycle does with one incident and its ticket. Pure.

The field merge (:mod:`agent.core.merge`) says which *fields* to write; this table says what
happens to the *pair*: make a ticket, adopt one, update the two, open a follow-up ticket, or
leave it. Its inputs are the facts the cycle gathered (:class:`Facts`); it does no I/O.

Decision table (one row per :class:`Row`, each tested by ``test_<row>``):

=============  ========  ======================================================  ===========
row            link      when                                                    decision
=============  ========  ======================================================  ===========
unlinked       any       an operator unlinked the incident (a tombstone)         Skip
backoff        any       it failed lately and its retry is not due               Skip
unchanged      yes       neither side's version moved since the last sync, and   Skip
                         no sweep, retry or conversation re-check wants it
incomplete     yes       one side is gone (deleted, or hidden from the agent)    Skip
follow_up      yes       the ticket is read-only (closed), the plan reopens it   FollowUp
                         and ``reopen_closed = follow_up``
update         yes       both sides are there                                    Update
adopt          no        a ticket already carries the incident's unique key     Adopt
                         (a crash after the create, a lost shadow) and the
                         incident is wanted or may own it
create         no        the incident is wanted (selected, open, new enough)    Create
                         and no ticket carries its key
not_ours       no        neither wanted nor possibly owning a ticket             Skip
=============  ========  ======================================================  ===========

Rows are tried top to bottom; the first that holds decides. "May own a ticket": an unlinked
incident the agent would not create now (closed, or too old) that changed since the last
complete cycle, so a ticket a crashed run made for it is still found.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Decision(enum.Enum):
    """What the cycle does with the pair."""

    CREATE = "create"
    ADOPT = "adopt"
    UPDATE = "update"
    FOLLOW_UP = "follow_up"
    SKIP = "skip"


class Row(enum.Enum):
    """The row of the table that decided (see the module docstring)."""

    UNLINKED = "unlinked"
    BACKOFF = "backoff"
    UNCHANGED = "unchanged"
    INCOMPLETE = "incomplete"
    FOLLOW_UP = "follow_up"
    UPDATE = "update"
    ADOPT = "adopt"
    CREATE = "create"
    NOT_OURS = "not_ours"


@dataclass(frozen=True, slots=True)
class Facts:
    """What the cycle knows about one pair."""

    linked: bool
    has_incident: bool = True
    has_ticket: bool = True
    unlinked: bool = False  # an operator unlinked it: never created or adopted again
    backoff: bool = False  # failed, and its retry is not due yet
    unchanged: bool = False  # linked, both versions as agreed, nothing else asks for it
    wanted: bool = False  # unlinked: the agent would make a ticket for it now
    may_own: bool = False  # unlinked: not wanted, but may own a ticket a crashed run made
    found: bool = False  # unlinked: a ticket carries its unique key
    read_only: bool = False  # linked: the ticket can no longer be changed
    reopens: bool = False  # linked: the field plan moves the ticket out of its finished states
    follow_up: bool = False  # reopen_closed = follow_up


_DECISION = {
    Row.UNLINKED: Decision.SKIP,
    Row.BACKOFF: Decision.SKIP,
    Row.UNCHANGED: Decision.SKIP,
    Row.INCOMPLETE: Decision.SKIP,
    Row.FOLLOW_UP: Decision.FOLLOW_UP,
    Row.UPDATE: Decision.UPDATE,
    Row.ADOPT: Decision.ADOPT,
    Row.CREATE: Decision.CREATE,
    Row.NOT_OURS: Decision.SKIP,
}


def row(facts: Facts) -> Row:
    """The first row of the table that holds for ``facts``."""
    if facts.unlinked:
        return Row.UNLINKED
    if facts.backoff:
        return Row.BACKOFF
    if facts.linked:
        return _linked(facts)
    if facts.found and (facts.wanted or facts.may_own):
        return Row.ADOPT
    if facts.wanted:
        return Row.CREATE
    return Row.NOT_OURS


def _linked(facts: Facts) -> Row:
    if facts.unchanged:
        return Row.UNCHANGED
    if not (facts.has_incident and facts.has_ticket):
        return Row.INCOMPLETE
    if facts.read_only and facts.reopens and facts.follow_up:
        return Row.FOLLOW_UP
    return Row.UPDATE


def decide(facts: Facts) -> Decision:
    """What to do with the pair."""
    return _DECISION[row(facts)]
