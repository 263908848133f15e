"""Source -> ticket: comments on an incident become journal entries of its ticket, exactly once
(see the package docstring: intent, write, posted, confirmed)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

from agent.core import text as textfmt
from agent.core.records import Comment, CommentLink, Incident, Note
from agent.errors import PermanentError
from agent.log import log
from agent.sync.conversation import journal
from agent.sync.conversation.state import (
    AGENT_NOTE,
    COMMENT,
    CONFIRMED,
    DROPPED,
    EXTRA_COMMENTS_SEEN,
    EXTRA_DROPPED,
    FOUND,
    PENDING,
    PLACEHOLDER,
    POSTED,
    TO_SENTINEL,
    TO_SNOW,
    UNCONFIRMED,
    Opening,
    State,
    Talk,
    text_hash,
)


async def to_ticket(
    talk: Talk, st: State, *, adopted: bool, now: datetime, opening: Opening | None = None
) -> None:
    """Copy the incident's new comments to the ticket (``opening``: those of a new ticket were
    listed for its create already)."""
    count = st.incident.comments_count
    seen = st.extra.get(EXTRA_COMMENTS_SEEN)
    if not adopted and (count == 0 or (count is not None and seen is not None and seen == str(count))):
        count_puts(st, listed=None)
        return
    comments = await _listed(talk, st, opening)
    known = {c.sentinel_comment for c in st.links}
    known |= {i.removeprefix(COMMENT) for c in st.links for i in c.note_ids if i.startswith(COMMENT)}
    echoes = {talk.source.comment_id(talk.key(e.id)) for e in st.notes}
    if not talk.source.stable_comment_ids:
        echoes |= _written(talk, st, comments)
    linked = {c.journal_sys_id for c in st.links}
    # Entries the agent wrote whose link was lost (a lost shadow): matched by their text.
    orphans = [e for e in st.notes if e.id not in linked and talk.journal.maybe_agent(e)]
    if adopted:
        known |= await _found_in_openings(talk, st, comments, known | echoes, orphans, now)
    for c in comments:
        if c.id in known or c.id in echoes:
            continue
        text = note_text(talk, c, st.incident)
        digest = text_hash(text)
        match = next((e for e in orphans if text_hash(e.text) == digest), None)
        if match is not None:
            orphans.remove(match)
            found = CommentLink(
                talk.instance, talk.workspace, st.incident.id, c.id, match.id, TO_SNOW, now,
                state=CONFIRMED, text_hash=digest,
            )  # fmt: skip
            await talk.store.add_comment_link(found)
            st.links.append(found)
            continue
        if not await post(talk, st, c.id, text, digest, talk.sink.comment_kind, now):
            continue
        talk.counts.comments_to_snow += 1
        log.info(
            "comment_to_snow", direction=TO_SNOW, snow_number=st.ticket.number, comment=c.id,
            element=talk.sink.comment_kind,
        )  # fmt: skip
    count_puts(st, listed=len(comments))


async def _listed(talk: Talk, st: State, opening: Opening | None) -> Sequence[Comment]:
    """The incident's comments: as listed for the create when they were, else listed now."""
    if opening is not None:
        if opening.comments is not None:
            return opening.comments
        if "comments" in opening.errors:
            raise opening.errors["comments"]
    return await talk.source.comments(st.incident)


async def _found_in_openings(
    talk: Talk, st: State, comments: Sequence[Comment], skip: set[str], orphans: list[Note], now: datetime
) -> set[str]:
    """After a lost shadow: the comments a ticket's opening entry carries (the agent's entry that
    holds their text among others, :mod:`.opening`) are linked to it again, one link per entry."""
    out: set[str] = set()
    texts = [(c.id, _norm(note_text(talk, c, st.incident))) for c in comments if c.id not in skip]
    for e in list(orphans):
        body = _norm(e.text)
        inside = tuple(cid for cid, text in texts if text != body and text in body)
        if not inside:
            continue
        orphans.remove(e)
        found = CommentLink(
            talk.instance, talk.workspace, st.incident.id, f"{FOUND}{e.id}", e.id, TO_SNOW, now,
            state=CONFIRMED, text_hash=text_hash(e.text), note_ids=tuple(f"{COMMENT}{c}" for c in inside),
        )  # fmt: skip
        await talk.store.add_comment_link(found)
        st.links.append(found)
        out.update(inside)
    return out


def _norm(text: str) -> str:
    return text.replace("\r\n", "\n").strip()


def _written(talk: Talk, st: State, comments: Sequence[Comment]) -> set[str]:
    """The ids of the comments the agent wrote to a source whose comments have no id it chose:
    each write's link accounts for one comment with its exact text, and so does each journal
    entry of the ticket as the agent would write it (its link lost with a lost shadow)."""
    ours = Counter(c.text_hash for c in st.links if c.direction == TO_SENTINEL and c.text_hash)
    linked = {c.journal_sys_id for c in st.links if c.direction == TO_SENTINEL}
    ours.update(text_hash(journal.message_of(talk, st, e)) for e in st.notes if e.id not in linked)
    found: set[str] = set()
    for c in comments:
        digest = text_hash(c.text)
        if ours[digest] > 0:
            ours[digest] -= 1
            found.add(c.id)
    return found


def count_puts(st: State, listed: int | None) -> None:
    """Remember how many comments the incident holds now (our own writes included)."""
    total = listed if listed is not None else (st.incident.comments_count or 0) + st.puts
    st.extra[EXTRA_COMMENTS_SEEN] = str(total)


def note_text(talk: Talk, c: Comment, incident: Incident) -> str:
    """The journal entry for a comment: a header naming author and time, then its text."""
    header = textfmt.sentinel_comment_header(c.author, c.author_id, c.created)
    where = f"{talk.source.title} incident #{incident.number}"
    room = talk.sink.note_limit - len(header) - 2
    if talk.comment_format == "code":
        body = textfmt.code_block(textfmt.cap(c.text, room - 20, where))
    else:
        plain = textfmt.html_to_text(c.text) if talk.source.comments_html else c.text
        body = textfmt.cap(plain or "(a comment without text)", room, where)
    return f"{header}\n\n{body}"


async def post(
    talk: Talk, st: State, name: str, text: str, digest: str, kind: str, now: datetime,
    note_ids: tuple[str, ...] = (),
) -> bool:  # fmt: skip
    """One journal entry, exactly once: intent committed, write, then marked posted. False when
    the ticket is read-only (REFERENCE E.9): the entry is dropped for good instead.

    ``note_ids`` (an agent note's alert/entity ids) live and die with the intent: they count as
    posted exactly when its link exists.
    """
    if talk.sink.read_only(st.ticket.values.get("status", "")):
        await drop(talk, st, name, digest, now, note_ids)
        return False
    intent = CommentLink(
        talk.instance, talk.workspace, st.incident.id, name, PLACEHOLDER + name, TO_SNOW, now,
        state=PENDING, text_hash=digest, note_ids=note_ids,
    )  # fmt: skip
    await talk.store.add_comment_link(intent)
    talk.posted.setdefault(st.ticket.id, st.ticket.modified)
    before = st.ticket
    try:
        after = await talk.sink.post_note(before.id, text, kind)
    except PermanentError:
        # Refused (ACL, validation): nothing was written, so nothing is pending.
        await talk.store.delete_comment_link(intent)
        raise
    st.links.append(await talk.store.set_comment_link(intent, state=POSTED))
    st.mod = talk.sink.version_after(st.mod, before.version, after.version)
    st.ticket = after
    await talk.journal.learn(after.updated_by, now)
    return True


async def post_note(talk: Talk, st: State, text: str, now: datetime, ids: tuple[str, ...]) -> bool:
    """An agent note (alerts, entities) in the ticket's work notes."""
    text = textfmt.cap(text, talk.sink.note_limit, talk.source.title)
    name = f"{AGENT_NOTE}{uuid.uuid4()}"
    written = await post(talk, st, name, text, text_hash(text), talk.sink.note_kind, now, ids)
    talk.counts.notes_to_snow += written
    return written


async def drop(
    talk: Talk, st: State, name: str, digest: str, now: datetime, note_ids: tuple[str, ...]
) -> None:
    """A comment or note for a read-only ticket: linked as handled (never tried again), one
    warning per ticket."""
    dropped = CommentLink(
        talk.instance, talk.workspace, st.incident.id, name, f"{DROPPED}{st.incident.id}:{name}",
        TO_SNOW, now, state=UNCONFIRMED, text_hash=digest, note_ids=note_ids,
    )  # fmt: skip
    await talk.store.add_comment_link(dropped)
    st.links.append(dropped)
    if st.extra.get(EXTRA_DROPPED) != "1":
        st.extra[EXTRA_DROPPED] = "1"
        number = st.ticket.number
        log.warning(
            "ticket_closed_dropped",
            snow_number=number,
            message=f"{talk.sink.title} {number} is closed and read-only: new comments, alerts and "
            "entities of this incident are not copied to it (said once per ticket)",
        )
