"""Source -> ticket: the incident's alerts and entities as agent notes on the ticket: on create
in the create itself (:mod:`.opening`), later only new ones (their ids are remembered in the
link), when the alert count grows and once at the late-enrichment re-check (entities arrive
after the incident)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agent.core import text as textfmt
from agent.core.records import Evidence
from agent.log import log
from agent.sync.conversation.comments import post_note
from agent.sync.conversation.state import (
    AGENT_NOTE,
    ALERT,
    ENTITY,
    FOUND,
    TO_SNOW,
    Opening,
    PairWork,
    State,
    Talk,
)


async def post(talk: Talk, st: State, w: PairWork, now: datetime) -> None:
    """Post what is new of the incident's alerts and entities."""
    _noted(st)
    opening = w.opening
    notes = any(
        c.sentinel_comment.startswith(AGENT_NOTE) and not _found(c.sentinel_comment) for c in st.links
    )
    fresh = w.adopted and not st.alerts and not st.entities and not notes
    count = st.incident.alerts_count
    # A count the listing does not give (Graph, C.5): read the alerts whenever the incident changed.
    grew = (count is None and (w.source_changed or w.created or w.adopted)) or (
        count is not None and count > len(st.alerts)
    )
    # An opening entry found again by its comments' text is an agent entry too.
    linked = {c.journal_sys_id for c in st.links if not _found(c.sentinel_comment)}
    # Adopted after a lost shadow, the agent wrote entries that are no mirrored comment: its
    # alert and entity notes are already there, so what exists now counts as posted.
    there = fresh and any(talk.journal.by_agent(e) and e.id not in linked for e in st.notes)
    if grew:
        alerts = await _read(talk, st, opening, alerts=True)
        if there:
            st.alerts |= {a.id for a in alerts}
        else:
            await _post(talk, st, alerts, now, alerts=True)
    if w.created or w.adopted or w.enrich_due or grew:
        entities = await _read(talk, st, opening, alerts=False)
        if there:
            st.entities |= {e.id for e in entities}
        else:
            await _post(talk, st, entities, now, alerts=False)


async def _read(talk: Talk, st: State, opening: Opening | None, *, alerts: bool) -> Sequence[Evidence]:
    """The alerts (or entities), as read for the create when they were, else read now; a read
    that failed for the create fails here too (the conversation is retried later)."""
    kind = "alerts" if alerts else "entities"
    if opening is not None:
        got = opening.alerts if alerts else opening.entities
        if got is not None:
            return got
        if kind in opening.errors:
            raise opening.errors[kind]
    return await (talk.source.alerts(st.incident) if alerts else talk.source.entities(st.incident))


def note_text(talk: Talk, new: Sequence[Evidence], *, alerts: bool, first: bool) -> str:
    """The note listing ``new`` alerts (or entities): "<Source> alerts (N):" then one line each."""
    kind = "alerts" if alerts else "entities"
    title = f"{talk.source.title} {kind}" if first else f"New {talk.source.title} {kind}"
    return textfmt.bullet_list(f"{title} ({len(new)}):", [e.line for e in new], noun=f"more {kind}")


def fresh_items(
    items: Sequence[Evidence], posted: set[str] | frozenset[str], *, alerts: bool
) -> list[Evidence]:
    """The items not posted yet (alerts in their order)."""
    new = [e for e in items if e.id not in posted]
    if alerts:
        new.sort(key=lambda e: e.order)
    return new


async def _post(talk: Talk, st: State, items: Sequence[Evidence], now: datetime, *, alerts: bool) -> None:
    posted = st.alerts if alerts else st.entities
    new = fresh_items(items, posted, alerts=alerts)
    if not new:
        return
    kind = "alerts" if alerts else "entities"
    text = note_text(talk, new, alerts=alerts, first=not posted)
    prefix = ALERT if alerts else ENTITY
    written = await post_note(talk, st, text, now, tuple(f"{prefix}{e.id}" for e in new))
    posted |= {e.id for e in items}
    if written:
        log.info(f"{kind}_to_snow", direction=TO_SNOW, snow_number=st.ticket.number, **{kind: len(new)})


def _found(name: str) -> bool:
    return name.startswith(FOUND)


def _noted(st: State) -> None:
    """Add the alert and entity ids listed by the pair's agent notes (their links exist) to what
    was posted."""
    for c in st.links:
        for note_id in c.note_ids:
            if note_id.startswith(ALERT):
                st.alerts.add(note_id.removeprefix(ALERT))
            elif note_id.startswith(ENTITY):
                st.entities.add(note_id.removeprefix(ENTITY))
