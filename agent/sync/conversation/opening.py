"""A new ticket's opening entries: what the incident already holds goes into the create itself.

Before the create the incident's alerts (when it has any), entities and comments (when it has
any) are read once. The create then carries one agent note listing the alerts and the entities
and one entry holding every comment that existed before the ticket, each below its header (author
and time), oldest first; when the ticket takes notes and comments in the same journal, that is
one entry. So a new ticket costs one write instead of one per note and per comment. Comments that
do not fit in one entry (the note limit) are posted one entry each right after the create, as
later comments are.

Exactly once, as for every entry the agent writes (the package docstring): one intent per entry is
committed before the create (``pending``, with the hash of the exact text and the ids it lists:
``alert:``, ``entity:``, ``comment:``), marked ``posted`` once the create returned, and confirmed
from the journal at the end of the cycle. The entries exist exactly when the ticket does:

* a crash between the create and the link's commit leaves the intents pending; the next cycle
  finds the ticket by its unique key, adopts it and confirms them from its journal (nothing is
  posted twice, nothing is lost);
* a crash before the create left no ticket: the next cycle plans the create again and first drops
  the intents that never landed;
* after a lost shadow, the comments inside an opening entry are found again by their text
  (:func:`agent.sync.conversation.comments.to_ticket`) and the notes count as posted, as for any
  agent entry of an adopted ticket.

A read that fails leaves its part out of the create (the ticket is not held back by it); the
conversation retries that part after its backoff, as any failed conversation step.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime

from agent.core import text as textfmt
from agent.core.records import CommentLink, Incident, Ticket
from agent.errors import RemoteError
from agent.log import log
from agent.sync.conversation import evidence
from agent.sync.conversation.comments import note_text
from agent.sync.conversation.state import (
    AGENT_NOTE,
    ALERT,
    COMMENT,
    ENTITY,
    PENDING,
    PLACEHOLDER,
    POSTED,
    TO_SNOW,
    Entry,
    Opening,
    Talk,
    text_hash,
)
from agent.tasks import limited

SEPARATOR = "\n\n"


async def read(talk: Talk, incident: Incident) -> Opening:
    """The incident's alerts, entities and comments, each read only when it can hold any; a
    failed read is kept (its part is left out of the create and retried later)."""
    opening = Opening()
    try:
        if incident.alerts_count is None or incident.alerts_count > 0:  # None: not known (Graph)
            opening.alerts = await talk.source.alerts(incident)
    except RemoteError as exc:
        opening.errors["alerts"] = exc
    try:
        opening.entities = await talk.source.entities(incident)
    except RemoteError as exc:
        opening.errors["entities"] = exc
    try:
        if incident.comments_count != 0:
            opening.comments = await talk.source.comments(incident)
    except RemoteError as exc:
        opening.errors["comments"] = exc
    return opening


def plan(talk: Talk, incident: Incident, opening: Opening, taken: Collection[str]) -> None:
    """The entries the create carries (``opening.entries``); none in a journal the ticket body
    already writes (``taken``, a custom mapping's own note)."""
    note_ids: list[str] = []
    blocks: list[str] = []
    if talk.sink.note_kind not in taken:
        for items, alerts in ((opening.alerts, True), (opening.entities, False)):
            new = evidence.fresh_items(items or (), frozenset(), alerts=alerts)
            if new:
                blocks.append(evidence.note_text(talk, new, alerts=alerts, first=True))
                prefix = ALERT if alerts else ENTITY
                note_ids += [f"{prefix}{e.id}" for e in new]
    notes = SEPARATOR.join(blocks)
    kind = talk.sink.comment_kind
    same = kind == talk.sink.note_kind
    room = talk.sink.note_limit - (len(notes) + len(SEPARATOR) if same and notes else 0)
    texts: list[str] = []
    ids: list[str] = []
    if kind not in taken:
        for c in opening.comments or ():
            text = note_text(talk, c, incident)
            used = sum(len(t) + len(SEPARATOR) for t in texts)
            if used + len(text) > room:
                break  # the rest are posted one entry each after the create
            texts.append(text)
            ids.append(f"{COMMENT}{c.id}")
    entries: list[tuple[str, str, list[str]]] = []
    if same:
        entries.append((kind, SEPARATOR.join([*blocks, *texts]), note_ids + ids))
    else:
        entries += [(talk.sink.note_kind, notes, note_ids), (kind, SEPARATOR.join(texts), ids)]
    opening.entries = [
        Entry(
            f"{AGENT_NOTE}{uuid.uuid4()}",
            k,
            textfmt.cap(text, talk.sink.note_limit, talk.source.title),
            tuple(i),
        )
        for k, text, i in entries
        if text
    ]


async def intend(talk: Talk, incident: Incident, opening: Opening, now: datetime) -> None:
    """Commit the intents of the create's entries, after dropping those of an earlier create of
    this incident that never happened (a create is planned only when no ticket carries the
    incident's unique key)."""
    if incident.id in talk.unsettled:
        talk.unsettled.discard(incident.id)
        for c in await talk.store.comment_links(talk.instance, talk.workspace, incident.id):
            if c.state == PENDING and c.journal_sys_id.startswith(PLACEHOLDER):
                await talk.store.delete_comment_link(c)
                log.info("comment_write_lost", incident=incident.id, comment=c.sentinel_comment)
    # Together: the store's writer commits them in one transaction (one round trip, not one each).
    await limited([talk.store.add_comment_link(_intent(talk, incident, e, now)) for e in opening.entries])


async def forget(talk: Talk, incident: Incident, opening: Opening, now: datetime) -> None:
    """The create certainly did not happen: its intents go."""
    await limited([talk.store.delete_comment_link(_intent(talk, incident, e, now)) for e in opening.entries])


async def posted(talk: Talk, incident: Incident, ticket: Ticket, opening: Opening, now: datetime) -> None:
    """The create returned: its entries are written for sure (confirmed at the cycle's end)."""
    if not opening.entries:
        return
    talk.posted.setdefault(ticket.id, ticket.modified)
    await limited(
        [talk.store.set_comment_link(_intent(talk, incident, e, now), state=POSTED) for e in opening.entries]
    )
    await talk.journal.learn(ticket.updated_by, now)
    for e in opening.entries:
        alerts = sum(1 for i in e.note_ids if i.startswith(ALERT))
        entities = sum(1 for i in e.note_ids if i.startswith(ENTITY))
        comments = [i.removeprefix(COMMENT) for i in e.note_ids if i.startswith(COMMENT)]
        talk.counts.notes_to_snow += bool(alerts or entities)
        talk.counts.comments_to_snow += len(comments)
        for kind, count in (("alerts", alerts), ("entities", entities)):
            if count:
                log.info(f"{kind}_to_snow", direction=TO_SNOW, snow_number=ticket.number, **{kind: count})
        for cid in comments:
            log.info(
                "comment_to_snow", direction=TO_SNOW, snow_number=ticket.number, comment=cid, element=e.kind
            )


def _intent(talk: Talk, incident: Incident, e: Entry, now: datetime) -> CommentLink:
    return CommentLink(
        talk.instance, talk.workspace, incident.id, e.name, PLACEHOLDER + e.name, TO_SNOW, now,
        state=PENDING, text_hash=text_hash(e.text), note_ids=e.note_ids,
    )  # fmt: skip
