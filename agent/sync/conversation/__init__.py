"""The conversation of a linked pair: comments <-> journal entries, alerts and entities.

Per cycle the engine calls :meth:`Conversation.begin` once (one batched journal read), then
:meth:`Conversation.run` for every pair it processes (after the field writes, before the pair's
final shadow commit), then :meth:`Conversation.finish` (one batched journal read confirming
the entries written this cycle).

**Ticket -> source** (:mod:`.journal`). Every journal entry (work notes and comments) of a ticket
whose side changed is read, not only the last one. An entry that is not linked in the shadow
and not written by the agent becomes a comment whose id the source derives from the entry
(:meth:`~agent.ports.IncidentSource.comment_id`; for Sentinel a uuid5 of
``"<instance>:<journal sys_id>"``): a retried or repeated write overwrites the same comment and
can never add a second one. The comment link is committed right after the write. Within a pair
this direction runs first.

**Source -> ticket** (:mod:`.comments`). A comment not linked, and not the derived id of a
journal entry of the ticket (that covers a crash between our write and its link commit),
becomes one journal entry, oldest first, one write per comment (one PATCH value is one entry,
REFERENCE C.9). Exactly once: the intent is committed *before* the write as a ``pending``
comment link holding the hash of the exact text, ``posted`` after the write returned, and
``confirmed`` with the entry's id from a journal read. A pending link left by a crash is resolved
from the journal before anything is posted again: found -> confirmed; not found -> the write
never landed, the link is dropped and the comment posted again. A posted entry the journal
cannot show means the journal is unreadable (:class:`~agent.ports.Journal`): it is read another
way once, and what is still not found is never re-posted.

**Echo suppression** is by these links only, never by visible markers: what the agent wrote is
linked (so never copied back), a comment with a journal-derived id is never copied to the
ticket, and as a backstop a journal entry created by the agent's own user is never copied to
the source (this also covers the alert and entity notes, and a lost shadow).

**Cost.** A comment listing is skipped when the incident's comment count equals the count seen
after the agent's last look (only additions are synced). After the agent's own comment write the
incident's new version is unknown, so the next cycle re-reads that incident once and finds
nothing to do.

**Limits.** Comments are truncated with a visible notice (:mod:`agent.core.text`). At the most
comments an incident holds (Sentinel: 100, REFERENCE A.8) one ``sentinel_comment_limit``
warning is logged, the incident is marked in its link, and nothing more is copied to it; every
other field keeps syncing.

**A new ticket** (:mod:`.opening`) carries in its create one agent note listing the alerts and
entities and one entry holding the comments made before it, under the same intents as any entry.

**Alerts and entities** (:mod:`.evidence`, source -> ticket): on create in the opening note;
later only new ones (ids remembered in the link), when the
alert count grows and once at the late-enrichment re-check (entities arrive after the incident).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

from agent.core.records import CommentLink, Incident, Link, Ticket
from agent.log import log
from agent.ports import IncidentSource, Store, TicketSink
from agent.sync.conversation import comments, evidence, journal, opening
from agent.sync.conversation.state import (
    CONFIRMED,
    EXTRA_JOURNAL_SEEN,
    POSTED,
    TO_SNOW,
    UNCONFIRMED,
    Counts,
    Opening,
    PairWork,
    State,
    Talk,
    journal_seen,
    parse_time,
    text_hash,
)

__all__ = ["Conversation", "Counts", "Opening", "PairWork", "journal_seen"]


class Conversation:
    """Comments, journal entries, alerts and entities of one workspace (see the module docstring)."""

    def __init__(
        self,
        *,
        instance: str,
        workspace: str,
        source: IncidentSource,
        sink: TicketSink,
        store: Store,
        comment_format: str = "text",
        overlap: float = 120.0,
    ) -> None:
        self.talk = Talk(instance, workspace, source, sink, store, comment_format, timedelta(seconds=overlap))
        self.store = store
        self.journal = sink.journal

    @property
    def counts(self) -> Counts:
        return self.talk.counts

    # --- the cycle ------------------------------------------------------------------------------

    async def begin(self, needs: Sequence[tuple[str, str, Link | None]], now: datetime) -> None:
        """Read in one batch the journal of every ticket that needs it and resolve the entries
        written earlier but not confirmed yet.

        ``needs`` lists ``(incident, ticket id, link)`` for the pairs whose ticket side changed;
        ``link`` None (an adopted pair) reads the ticket's whole journal.
        """
        talk = self.talk
        talk.counts, talk.entries, talk.posted = Counts(), {}, {}
        await self.journal.start(now)
        reads: dict[str, datetime | None] = {}
        ticket_of: dict[str, str] = {}
        for incident, ticket_id, link in needs:
            ticket_of[incident] = ticket_id
            _widen(reads, ticket_id, self._since(link) if link is not None else None)
            if link is not None:
                self.journal.remember(ticket_id, link.extra)
        unconfirmed = await self._unconfirmed()
        talk.unsettled = {c.incident for c in unconfirmed}
        others = talk.unsettled - ticket_of.keys()
        for incident, link in (await self.store.get_links(talk.instance, talk.workspace, others)).items():
            ticket_of[incident] = link.sys_id
            _widen(reads, link.sys_id, self._since(link))
            self.journal.remember(link.sys_id, link.extra)
        talk.entries = await self.journal.read(reads, now)
        await self._settle(unconfirmed, ticket_of, now, same_cycle=False)

    async def run(self, w: PairWork, now: datetime) -> tuple[Link, Ticket]:
        """The pair's conversation; returns the link to commit and the ticket as it is now."""
        talk, link = self.talk, w.link
        st = State(
            incident=w.incident,
            ticket=w.ticket,
            mod=link.snow_mod_count,
            extra={**link.extra, **self.journal.extra(w.ticket.id)},
            links=await self.store.comment_links(talk.instance, talk.workspace, w.incident.id),
            alerts=set(link.alerts_posted),
            entities=set(link.entities_posted),
            notes=talk.entries.get(w.ticket.id, []),
        )
        if w.ticket.id in talk.entries:
            await journal.to_source(talk, st, now)
        if w.created or w.adopted or w.source_changed:
            await comments.to_ticket(talk, st, adopted=w.adopted, now=now, opening=w.opening)
        else:
            comments.count_puts(st, listed=None)
        await evidence.post(talk, st, w, now)
        done = replace(
            link,
            snow_mod_count=st.mod,
            extra=st.extra,
            alerts_posted=frozenset(st.alerts),
            entities_posted=frozenset(st.entities),
            enrich_after=None if w.enrich_due else link.enrich_after,
        )
        return done, st.ticket

    # --- a new ticket ---------------------------------------------------------------------------

    async def open(self, incident: Incident, taken: Iterable[str], now: datetime) -> Opening:
        """Before a create: read what the new ticket starts with and commit the intents of the
        entries its create carries (:mod:`.opening`); ``taken`` are the fields of its body."""
        found = await opening.read(self.talk, incident)
        opening.plan(self.talk, incident, found, frozenset(taken))
        await opening.intend(self.talk, incident, found, now)
        return found

    async def created(self, incident: Incident, ticket: Ticket | None, found: Opening, now: datetime) -> None:
        """After the create: ``ticket`` made with the opening entries, or None when the create
        certainly did not happen (its intents go)."""
        if ticket is None:
            await opening.forget(self.talk, incident, found, now)
        else:
            await opening.posted(self.talk, incident, ticket, found, now)

    async def finish(self, now: datetime) -> None:
        """Confirm the entries written this cycle from one batched journal read."""
        talk = self.talk
        if not talk.posted:
            return
        unconfirmed = await self._unconfirmed()
        owners = await self.store.get_links(talk.instance, talk.workspace, {c.incident for c in unconfirmed})
        ticket_of = {name: link.sys_id for name, link in owners.items() if link.sys_id in talk.posted}
        mine = [c for c in unconfirmed if c.state == POSTED and c.incident in ticket_of]
        reads: dict[str, datetime | None] = {}
        for name, ticket_id in ticket_of.items():
            since = talk.posted[ticket_id]
            _widen(reads, ticket_id, since - talk.overlap if since is not None else None)
            self.journal.remember(ticket_id, owners[name].extra)
        talk.entries.update(await self.journal.read(reads, now))
        await self._settle(mine, ticket_of, now, same_cycle=True)

    # --- confirming what the agent wrote --------------------------------------------------------
    async def _unconfirmed(self) -> list[CommentLink]:
        """The journal entries written but not confirmed yet (a comment written to the source is
        settled with its pair, :func:`.journal.settle`)."""
        talk = self.talk
        links = await self.store.unconfirmed_comment_links(talk.instance, talk.workspace)
        return [c for c in links if c.direction == TO_SNOW]

    async def _settle(
        self, links: Sequence[CommentLink], ticket_of: Mapping[str, str], now: datetime, *, same_cycle: bool
    ) -> None:
        """Confirm what the agent wrote. An entry written for sure that the journal does not show
        means it cannot be read that way: read those journals another way and try again; what is
        still not found is marked unconfirmed (never written again)."""
        missing = await self._resolve(links, ticket_of, same_cycle=same_cycle)
        if missing:
            tickets = {ticket_of[c.incident] for c in missing if c.incident in ticket_of}
            more = await self.journal.missing(tickets, len(missing), now)
            if more:
                self.talk.entries.update(more)
                missing = await self._resolve(missing, ticket_of, same_cycle=same_cycle)
        for c in missing:
            await self.store.set_comment_link(c, state=UNCONFIRMED)

    async def _resolve(
        self, links: Iterable[CommentLink], ticket_of: Mapping[str, str], *, same_cycle: bool
    ) -> list[CommentLink]:
        """Match unconfirmed links to the journal entries read (same ticket, our user, same text);
        returns the posted ones not found."""
        by_incident: dict[str, list[CommentLink]] = {}
        for c in links:
            by_incident.setdefault(c.incident, []).append(c)
        missing: list[CommentLink] = []
        wanted = [
            (incident, group, self.talk.entries[ticket_of[incident]])
            for incident, group in by_incident.items()
            if incident in ticket_of and ticket_of[incident] in self.talk.entries
        ]
        talk = self.talk
        # Read and written concurrently: the store answers them together (a group commit)
        # instead of one round trip after another.
        async with asyncio.TaskGroup() as tg:
            reads = [
                tg.create_task(self.store.comment_links(talk.instance, talk.workspace, i))
                for i, _, _ in wanted
            ]
        async with asyncio.TaskGroup() as tg:
            for (incident, group, entries), read in zip(wanted, reads, strict=True):
                taken = {c.journal_sys_id for c in read.result()}
                pool = [e for e in entries if e.id not in taken and self.journal.maybe_agent(e)]
                for c in group:
                    match = next((e for e in pool if text_hash(e.text) == c.text_hash), None)
                    if match is not None:
                        pool.remove(match)
                        tg.create_task(
                            self.store.set_comment_link(c, state=CONFIRMED, journal_sys_id=match.id)
                        )
                    elif c.state == POSTED:
                        missing.append(c)  # written for sure
                    elif not same_cycle:
                        # A write whose outcome was unknown never landed: post that comment again.
                        tg.create_task(self.store.delete_comment_link(c))
                        log.info("comment_write_lost", incident=incident, comment=c.sentinel_comment)
        return missing

    def _since(self, link: Link) -> datetime | None:
        seen = parse_time(link.extra.get(EXTRA_JOURNAL_SEEN))
        return seen - self.talk.overlap if seen is not None else None


def _widen(reads: dict[str, datetime | None], ticket_id: str, since: datetime | None) -> None:
    """Record that ``ticket_id``'s journal is needed from ``since`` (None: all of it)."""
    if ticket_id not in reads:
        reads[ticket_id] = since
        return
    current = reads[ticket_id]
    if current is not None and (since is None or since < current):
        reads[ticket_id] = since
