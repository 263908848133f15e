"""Source -> ticket: the incident's alerts and entities as agent notes on the ticket: on create
one note of each, later only new ones (their ids are remembered in the link), when the alert
count grows and once at the late-enrichment re-check (entities arrive after the incident)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from agent.core import text as textfmt
from agent.core.records import Evidence
from agent.log import log
from agent.sync.conversation.comments import post_note
from agent.sync.conversation.state import AGENT_NOTE, ALERT, ENTITY, TO_SNOW, PairWork, State, Talk


async def post(talk: Talk, st: State, w: PairWork, now: datetime) -> None:
    """Post what is new of the incident's alerts and entities."""
    _noted(st)
    notes = any(c.sentinel_comment.startswith(AGENT_NOTE) for c in st.links)
    fresh = w.adopted and not st.alerts and not st.entities and not notes
    grew = st.incident.alerts_count > len(st.alerts)
    linked = {c.journal_sys_id for c in st.links}
    # Adopted after a lost shadow, the agent wrote entries that are no mirrored comment: its
    # alert and entity notes are already there, so what exists now counts as posted.
    there = fresh and any(talk.journal.by_agent(e) and e.id not in linked for e in st.notes)
    if grew:
        alerts = await talk.source.alerts(st.incident)
        if there:
            st.alerts |= {a.id for a in alerts}
        else:
            await _post(talk, st, alerts, now, alerts=True)
    if w.created or w.adopted or w.enrich_due or grew:
        entities = await talk.source.entities(st.incident)
        if there:
            st.entities |= {e.id for e in entities}
        else:
            await _post(talk, st, entities, now, alerts=False)


async def _post(talk: Talk, st: State, items: Sequence[Evidence], now: datetime, *, alerts: bool) -> None:
    posted = st.alerts if alerts else st.entities
    new = [e for e in items if e.id not in posted]
    if alerts:
        new.sort(key=lambda e: e.order)
    if not new:
        return
    kind = "alerts" if alerts else "entities"
    title = f"{talk.source.title} {kind}" if not posted else f"New {talk.source.title} {kind}"
    text = textfmt.bullet_list(f"{title} ({len(new)}):", [e.line for e in new], noun=f"more {kind}")
    prefix = ALERT if alerts else ENTITY
    written = await post_note(talk, st, text, now, tuple(f"{prefix}{e.id}" for e in new))
    posted |= {e.id for e in items}
    if written:
        log.info(f"{kind}_to_snow", direction=TO_SNOW, snow_number=st.ticket.number, **{kind: len(new)})


def _noted(st: State) -> None:
    """Add the ids listed by the pair's agent notes (their links exist) to what was posted."""
    for c in st.links:
        for note_id in c.note_ids:
            kind, _, name = note_id.partition(":")
            (st.alerts if f"{kind}:" == ALERT else st.entities).add(name)
