"""Ticket -> source: the journal entries of a ticket become comments on its incident (see the
package docstring): never an entry the agent wrote, never one already linked, at most as many
as the incident holds."""

from __future__ import annotations

from datetime import datetime

from agent.core import text as textfmt
from agent.core.records import CommentLink
from agent.log import log
from agent.sync.conversation.state import (
    EXTRA_COMMENT_LIMIT,
    EXTRA_JOURNAL_SEEN,
    TO_SENTINEL,
    TO_SNOW,
    State,
    Talk,
    parse_time,
    text_hash,
)


async def to_source(talk: Talk, st: State, now: datetime) -> None:
    """Copy the ticket's new journal entries to the incident."""
    linked = {c.journal_sys_id for c in st.links}
    ours = {c.text_hash for c in st.links if c.direction == TO_SNOW and c.text_hash}
    seen = newest = parse_time(st.extra.get(EXTRA_JOURNAL_SEEN))
    # Entries copied while the journal was read with ids are linked by those ids, which a journal
    # read without ids does not show: those up to the last one seen then were handled already.
    legacy = any(c.direction == TO_SENTINEL and not talk.journal.derived(c.journal_sys_id) for c in st.links)
    full = st.extra.get(EXTRA_COMMENT_LIMIT) == "1"
    for e in st.notes:
        newest = e.created if newest is None or e.created > newest else newest
        if e.id in linked or talk.journal.by_agent(e):
            continue
        if text_hash(e.text) in ours:
            continue  # what the agent wrote (its author could not be told from a display value)
        if legacy and seen is not None and e.derived and e.created <= seen:
            continue
        if not e.text.strip() or full:
            continue
        limit = talk.source.max_comments
        if limit is not None and (st.incident.comments_count or 0) + st.puts >= limit:
            full = comment_limit(talk, st)
            continue
        cid = talk.source.comment_id(talk.key(e.id))
        header = textfmt.journal_header(e.author, e.kind, e.created, st.ticket.number)
        message = talk.source.comment_text(header, e.text.strip(), f"{talk.sink.title} {st.ticket.number}")
        if not await talk.source.put_comment(st.incident, cid, message):
            full = comment_limit(talk, st)
            continue
        st.puts += 1
        link = CommentLink(talk.instance, talk.workspace, st.incident.id, cid, e.id, TO_SENTINEL, now)
        await talk.store.add_comment_link(link)
        st.links.append(link)
        talk.counts.comments_to_sentinel += 1
        log.info(
            "comment_to_sentinel",
            direction=TO_SENTINEL,
            snow_number=st.ticket.number,
            journal_sys_id=e.id,
            element=e.kind,
            comment=cid,
        )
    if newest is not None:
        st.extra[EXTRA_JOURNAL_SEEN] = newest.isoformat()


def comment_limit(talk: Talk, st: State) -> bool:
    """The incident holds the most comments it can: said once, and marked in the link."""
    if st.extra.get(EXTRA_COMMENT_LIMIT) != "1":
        log.warning(
            "sentinel_comment_limit",
            snow_number=st.ticket.number,
            limit=talk.source.max_comments,
            message=f"the incident holds the most comments {talk.source.title} allows; further "
            f"{talk.sink.title} journal entries are not copied to it (every other field keeps syncing)",
        )
        st.extra[EXTRA_COMMENT_LIMIT] = "1"
    return True
