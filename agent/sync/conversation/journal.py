"""Ticket -> source: the journal entries of a ticket become comments on its incident (see the
package docstring): never an entry the agent wrote, never one already linked, at most as many
as the incident holds.

A source whose comments get no id the agent chooses (Graph, GRAPH.md E: no id, no edit, a POST
is not idempotent) is written exactly once by intent: a ``pending`` link holding the hash of the
exact text is committed before the write and ``confirmed`` after it. A pending link left by a
crash or an unclear failure is settled first (:func:`settle`): a comment with that text the
incident holds, and no other link accounts for, means the write landed; none means it did not,
so the link goes and the entry is written again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime

from agent.core import text as textfmt
from agent.core.records import CommentLink, Note
from agent.log import log
from agent.sync.conversation.state import (
    CONFIRMED,
    EXTRA_COMMENT_LIMIT,
    EXTRA_JOURNAL_SEEN,
    PENDING,
    TO_SENTINEL,
    TO_SNOW,
    State,
    Talk,
    parse_time,
    text_hash,
)


async def to_source(talk: Talk, st: State, now: datetime) -> None:
    """Copy the ticket's new journal entries to the incident."""
    stable = talk.source.stable_comment_ids
    held = Counter[str]() if stable else await settle(talk, st)
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
        message = message_of(talk, st, e)
        link = CommentLink(
            talk.instance, talk.workspace, st.incident.id, cid, e.id, TO_SENTINEL, now,
            text_hash=text_hash(message),
        )  # fmt: skip
        digest = link.text_hash or ""
        if held[digest] > 0:
            # Written before and not linked (a lost shadow): the incident holds it already.
            held[digest] -= 1
            link = replace(link, state=CONFIRMED)
            await talk.store.add_comment_link(link)
            st.links.append(link)
            log.info("comment_write_settled", comment=cid, journal_sys_id=e.id, outcome="found")
            continue
        if not stable:
            link = replace(link, state=PENDING)
            await talk.store.add_comment_link(link)  # the intent, before the write
        if not await talk.source.put_comment(st.incident, cid, message):
            if not stable:
                await talk.store.delete_comment_link(link)
            full = comment_limit(talk, st)
            continue
        st.puts += 1
        if stable:
            await talk.store.add_comment_link(link)
        else:
            link = await talk.store.set_comment_link(link, state=CONFIRMED)
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


def message_of(talk: Talk, st: State, e: Note) -> str:
    """The comment a journal entry becomes on the incident (header, text, the source's limit)."""
    header = textfmt.journal_header(e.author, e.kind, e.created, st.ticket.number)
    return talk.source.comment_text(header, e.text.strip(), f"{talk.sink.title} {st.ticket.number}")


async def settle(talk: Talk, st: State) -> Counter[str]:
    """Resolve the pair's pending writes to the source: landed (confirmed) or not (forgotten).
    Returns the text hashes of the incident's comments no link accounts for (what a lost shadow
    left: written before, found again by text instead of written twice)."""
    held = Counter(text_hash(c.text) for c in await talk.source.comments(st.incident))
    for c in st.links:
        if c.direction == TO_SENTINEL and c.state != PENDING and c.text_hash:
            held[c.text_hash] -= 1  # comments other links account for already
    pending = [c for c in st.links if c.direction == TO_SENTINEL and c.state == PENDING]
    for c in pending:
        st.links.remove(c)
        if c.text_hash and held[c.text_hash] > 0:
            held[c.text_hash] -= 1
            st.links.append(await talk.store.set_comment_link(c, state=CONFIRMED))
            log.info("comment_write_settled", comment=c.sentinel_comment, outcome="written")
        else:
            await talk.store.delete_comment_link(c)
            log.info("comment_write_lost", comment=c.sentinel_comment, journal_sys_id=c.journal_sys_id)
    return held


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
