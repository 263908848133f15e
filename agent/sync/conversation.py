"""The conversation of a linked pair: comments <-> journal entries, alerts and entities.

Per cycle the engine calls :meth:`Conversation.begin` once (one batched journal read), then
:meth:`Conversation.run` for every pair it processes (after the field writes, before the pair's
final shadow commit), then :meth:`Conversation.finish` (one batched journal read confirming
the entries written this cycle) and :meth:`Conversation.enrich` for due late-enrichment checks.

**ServiceNow -> Sentinel.** Every journal entry (``work_notes`` and ``comments``) of a record
whose ServiceNow side changed is read, not only the last one. An entry that is not linked in
the shadow and not written by the agent becomes a Sentinel comment whose id is
``uuid5(COMMENT_NAMESPACE, "<instance>:<journal sys_id>")``: a retried or repeated PUT
overwrites the same comment and can never add a second one. The comment link is committed
right after the PUT. Within a pair this direction runs first.

**Sentinel -> ServiceNow.** A comment not linked, and not the uuid5 of a journal entry of the
record (that covers a crash between our PUT and its link commit), becomes one journal entry in
``comment_field``, oldest first, one PATCH per comment (one PATCH value is one entry, C.9).
Exactly once: the intent is committed *before* the PATCH as a ``pending`` comment link holding
the hash of the exact text, ``posted`` after the PATCH returned, and ``confirmed`` with the
entry's sys_id from a journal read. A pending link left by a crash is resolved from the journal
before anything is posted again: found -> confirmed; not found -> the PATCH never landed, the
link is dropped and the comment posted again. A posted entry the journal cannot show means the
journal is unreadable (a missing read ACL on ``sys_journal_field`` returns no rows rather than
an error): one ``journal_unreadable`` warning per workspace, and the entry is never re-posted.

**Echo suppression** is by these links only, never by visible markers: what the agent wrote is
linked (so never copied back), a Sentinel comment with a journal-derived id is never copied to
ServiceNow, and as a backstop a journal entry created by the agent's own ServiceNow user is
never copied to Sentinel (this also covers the alert and entity notes, and a lost shadow).

**Cost.** A comment listing is skipped when ``commentsCount`` equals the count seen after the
agent's last look (only additions are synced; an analyst who deletes one comment and adds another
between two cycles delays the new one until the next addition). After the agent's own comment
PUT the incident's new etag is unknown (the PUT returns the comment), so the next cycle re-reads
that incident once and finds nothing to do.

**Limits.** Comments are truncated with a visible notice (:mod:`agent.core.text`). At 100
comments on an incident (A.8) one ``sentinel_comment_limit`` warning is logged, the incident is
marked in its link, and nothing more is copied to it; every other field keeps syncing.

**Alerts and entities** (Sentinel -> ServiceNow): on create one note listing the alerts and one
listing the entities; later only new ones (ids remembered in the link), when ``alertsCount``
grows and once at the late-enrichment re-check (entities arrive after the incident).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from agent.connectors.sentinel.client import SentinelClient
from agent.connectors.sentinel.models import SentinelAlert, SentinelComment, SentinelEntity, SentinelIncident
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.journaltext import DISPLAY_KEY
from agent.connectors.servicenow.models import JournalEntry, SnowRecord
from agent.core import text as textfmt
from agent.core.records import CommentLink, Link
from agent.errors import PermanentError
from agent.log import log
from agent.store import Store

COMMENT_NAMESPACE = uuid.UUID("9f3c2a71-4d8e-5b60-8e2f-6a1b7c0d9e42")
"""Namespace of the deterministic Sentinel comment ids. Never change it: ids already written
would no longer be recognised."""

SENTINEL_MAX_COMMENTS = 100  # REFERENCE A.8
JOURNAL_ELEMENTS = ("work_notes", "comments")
TO_SNOW, TO_SENTINEL = "to_snow", "to_sentinel"
PENDING, POSTED, CONFIRMED, UNCONFIRMED = "pending", "posted", "confirmed", "unconfirmed"
AGENT_NOTE = "agent-note:"  # pseudo comment name of an alert/entity note (never a Sentinel id)
ALERT, ENTITY = "alert:", "entity:"  # prefixes of the ids an agent note lists
PLACEHOLDER = "pending:"  # journal sys_id of a link whose entry is not confirmed yet

MARK_JOURNAL_UNREADABLE = "journal_unreadable"  # set: journals are read from display values (E.6)
MARK_SNOW_USER = "servicenow_user"
EXTRA_JOURNAL_SEEN = "journal_seen"  # server time of the newest journal entry processed
EXTRA_COMMENTS_SEEN = "comments_seen"  # Sentinel commentsCount after the agent's last look
EXTRA_COMMENT_LIMIT = "comment_limit"  # "1": the incident holds 100 comments, warned once
EXTRA_DROPPED = "journal_dropped"  # "1": the ticket is closed, dropping what it can no longer take was said
DROPPED = "dropped:"  # journal sys_id of the link of something not written to a closed ticket
EXTRA_DISPLAY = "journal_display"  # "1": the pair's journal is read from display values (for good)


def comment_id(instance: str, journal_sys_id: str) -> str:
    """The Sentinel comment id of a journal entry copied from ``instance``."""
    return str(uuid.uuid5(COMMENT_NAMESPACE, f"{instance}:{journal_sys_id}"))


def text_hash(text: str) -> str:
    """Hash of a journal text as written and as read back (line endings and outer blanks aside)."""
    return hashlib.sha256(text.replace("\r\n", "\n").strip().encode()).hexdigest()


@dataclass
class Counts:
    """What the conversation wrote this cycle (merged into the cycle summary)."""

    comments_to_snow: int = 0
    comments_to_sentinel: int = 0
    notes_to_snow: int = 0


@dataclass(frozen=True)
class PairWork:
    """One pair the engine processes: the link it would save, both records after the field
    writes, and why the pair is here."""

    link: Link
    incident: SentinelIncident
    record: SnowRecord
    sentinel_changed: bool
    snow_changed: bool
    created: bool = False
    adopted: bool = False
    enrich_due: bool = False


@dataclass
class _State:
    """Mutable per-pair state while its conversation runs."""

    incident: SentinelIncident
    record: SnowRecord
    mod: int | None  # the sys_mod_count the shadow may store (behind when someone else wrote)
    extra: dict[str, str]
    links: list[CommentLink]
    alerts: set[str]
    entities: set[str]
    puts: int = 0
    entries: list[JournalEntry] = field(default_factory=list)


class Conversation:
    """Comments, work notes, alerts and entities of one workspace (see the module docstring)."""

    def __init__(
        self,
        *,
        instance: str,
        workspace: str,
        sentinel: SentinelClient,
        snow: ServiceNowClient,
        shadow: Store,
        fields: Sequence[str],
        comment_field: str = "work_notes",
        comment_format: str = "text",
        overlap: float = 120.0,
        snow_user: str | None = None,
        read_only: Callable[[SnowRecord], bool] = lambda record: False,
    ) -> None:
        self.instance = instance
        self.workspace = workspace
        self.sentinel = sentinel
        self.snow = snow
        self.shadow = shadow
        self.fields = tuple(fields)
        self.comment_field = comment_field
        self.comment_format = comment_format
        self.overlap = timedelta(seconds=overlap)
        self.read_only = read_only  # the ticket is closed: nothing more can be written to it (E.9)
        self.display_mode = False  # sys_journal_field is unreadable: display values instead (E.6)
        self._display_records: set[str] = set()  # records whose journal comes from display values
        self._table_verified = False  # sys_journal_field answered rows in this process
        self._agent_name: str | None = None  # the agent user's display name (display-value authors)
        self._configured_user = snow_user
        self.snow_user = snow_user
        self.counts = Counts()
        self.entries: dict[str, list[JournalEntry]] = {}
        self.posted: dict[str, datetime | None] = {}

    # --- the cycle ----------------------------------------------------------------------------

    async def begin(self, needs: Sequence[tuple[str, str, Link | None]], now: datetime) -> None:
        """Read in one batch the journal of every record that needs it and resolve the entries
        written earlier but not confirmed yet.

        ``needs`` lists ``(incident, record sys_id, link)`` for the pairs whose ServiceNow side
        changed; ``link`` None (an adopted pair) reads the record's whole journal.
        """
        self.counts = Counts()
        self.entries = {}
        self.posted = {}
        if self.snow_user is None:
            mark = await self.shadow.get_mark(self.instance, self.workspace, MARK_SNOW_USER)
            self.snow_user = mark[0] if mark else None
        self.display_mode = (
            await self.shadow.get_mark(self.instance, self.workspace, MARK_JOURNAL_UNREADABLE) is not None
        )
        reads: dict[str, datetime | None] = {}
        record_of: dict[str, str] = {}
        for incident, sys_id, link in needs:
            record_of[incident] = sys_id
            _widen(reads, sys_id, self._since(link) if link is not None else None)
            self._note_display(sys_id, link)
        unconfirmed = await self.shadow.unconfirmed_comment_links(self.instance, self.workspace)
        others = {c.incident for c in unconfirmed} - record_of.keys()
        for incident, link in (await self.shadow.get_links(self.instance, self.workspace, others)).items():
            record_of[incident] = link.sys_id
            _widen(reads, link.sys_id, self._since(link))
            self._note_display(link.sys_id, link)
        await self._read(reads, now)
        await self._settle(unconfirmed, record_of, now, same_cycle=False)

    async def run(self, w: PairWork, now: datetime) -> tuple[Link, SnowRecord]:
        """The pair's conversation; returns the link to commit and the record as it is now."""
        link = w.link
        st = _State(
            incident=w.incident,
            record=w.record,
            mod=link.snow_mod_count,
            extra=dict(link.extra),
            links=await self.shadow.comment_links(self.instance, self.workspace, w.incident.name),
            alerts=set(link.alerts_posted),
            entities=set(link.entities_posted),
            entries=self.entries.get(w.record.sys_id, []),
        )
        if w.record.sys_id in self._display_records:
            st.extra[EXTRA_DISPLAY] = "1"
        if w.record.sys_id in self.entries:
            await self._journal_to_sentinel(st, now)
        if w.created or w.adopted or w.sentinel_changed:
            await self._comments_to_snow(st, adopted=w.adopted, now=now)
        else:
            self._count_puts(st, listed=None)
        await self._evidence(st, w, now)
        done = replace(
            link,
            snow_mod_count=st.mod,
            extra=st.extra,
            alerts_posted=frozenset(st.alerts),
            entities_posted=frozenset(st.entities),
            enrich_after=None if w.enrich_due else link.enrich_after,
        )
        return done, st.record

    async def finish(self, now: datetime) -> None:
        """Confirm the entries written this cycle from one batched journal read."""
        if not self.posted:
            return
        unconfirmed = await self.shadow.unconfirmed_comment_links(self.instance, self.workspace)
        owners = await self.shadow.get_links(self.instance, self.workspace, {c.incident for c in unconfirmed})
        record_of = {name: link.sys_id for name, link in owners.items() if link.sys_id in self.posted}
        mine = [c for c in unconfirmed if c.state == POSTED and c.incident in record_of]
        reads: dict[str, datetime | None] = {}
        for name, sys_id in record_of.items():
            since = self.posted[sys_id]
            _widen(reads, sys_id, since - self.overlap if since is not None else None)
            self._note_display(sys_id, owners.get(name))
        await self._read(reads, now)
        await self._settle(mine, record_of, now, same_cycle=True)

    # --- ServiceNow -> Sentinel ---------------------------------------------------------------

    async def _journal_to_sentinel(self, st: _State, now: datetime) -> None:
        linked = {c.journal_sys_id for c in st.links}
        ours = {c.text_hash for c in st.links if c.direction == TO_SNOW and c.text_hash}
        seen = newest = _parse(st.extra.get(EXTRA_JOURNAL_SEEN))
        # Entries copied while sys_journal_field was readable are linked by their sys_ids, which a
        # display value does not show: those up to the last one seen then were handled already.
        legacy = any(
            c.direction == TO_SENTINEL and not c.journal_sys_id.startswith(DISPLAY_KEY) for c in st.links
        )
        full = st.extra.get(EXTRA_COMMENT_LIMIT) == "1"
        for e in st.entries:
            newest = e.created_on if newest is None or e.created_on > newest else newest
            if e.sys_id in linked or self._by_agent(e) or e.element not in JOURNAL_ELEMENTS:
                continue
            if text_hash(e.value) in ours:
                continue  # what the agent wrote (its author could not be told from a display value)
            if legacy and seen is not None and e.sys_id.startswith(DISPLAY_KEY) and e.created_on <= seen:
                continue
            if not e.value.strip() or full:
                continue
            if st.incident.comments_count + st.puts >= SENTINEL_MAX_COMMENTS:
                full = self._comment_limit(st)
                continue
            cid = comment_id(self.instance, e.sys_id)
            header = textfmt.journal_header(e.created_by, e.element, e.created_on, st.record.number)
            message = textfmt.cap_html(  # the portal renders HTML (REFERENCE E.3)
                f"{header}\n\n{e.value.strip()}", textfmt.SENTINEL_MAX, f"ServiceNow {st.record.number}"
            )
            try:
                await self.sentinel.put_comment(st.incident.name, cid, message)
            except PermanentError as exc:
                if exc.status == 400 and "maximum" in str(exc).lower():
                    full = self._comment_limit(st)
                    continue
                raise
            st.puts += 1
            link = CommentLink(
                self.instance, self.workspace, st.incident.name, cid, e.sys_id, TO_SENTINEL, now
            )
            await self.shadow.add_comment_link(link)
            st.links.append(link)
            self.counts.comments_to_sentinel += 1
            log.info(
                "comment_to_sentinel",
                direction=TO_SENTINEL,
                snow_number=st.record.number,
                journal_sys_id=e.sys_id,
                element=e.element,
                comment=cid,
            )
        if newest is not None:
            st.extra[EXTRA_JOURNAL_SEEN] = newest.isoformat()

    def _comment_limit(self, st: _State) -> bool:
        if st.extra.get(EXTRA_COMMENT_LIMIT) != "1":
            log.warning(
                "sentinel_comment_limit",
                snow_number=st.record.number,
                limit=SENTINEL_MAX_COMMENTS,
                message="the incident holds the most comments Sentinel allows; further ServiceNow "
                "journal entries are not copied to it (every other field keeps syncing)",
            )
            st.extra[EXTRA_COMMENT_LIMIT] = "1"
        return True

    # --- Sentinel -> ServiceNow ---------------------------------------------------------------

    async def _comments_to_snow(self, st: _State, *, adopted: bool, now: datetime) -> None:
        count = st.incident.comments_count
        seen = st.extra.get(EXTRA_COMMENTS_SEEN)
        if not adopted and (count == 0 or (seen is not None and seen == str(count))):
            self._count_puts(st, listed=None)
            return
        comments = await self.sentinel.list_comments(st.incident.name)
        known = {c.sentinel_comment for c in st.links}
        echoes = {comment_id(self.instance, e.sys_id) for e in st.entries}
        linked = {c.journal_sys_id for c in st.links}
        # Entries the agent wrote whose link was lost (a lost shadow): matched by their text.
        orphans = [e for e in st.entries if e.sys_id not in linked and self._maybe_agent(e)]
        for c in comments:
            if c.name in known or c.name in echoes:
                continue
            text = self._note_text(c, st.incident)
            digest = text_hash(text)
            match = next((e for e in orphans if text_hash(e.value) == digest), None)
            if match is not None:
                orphans.remove(match)
                found = CommentLink(
                    self.instance, self.workspace, st.incident.name, c.name, match.sys_id, TO_SNOW, now,
                    state=CONFIRMED, text_hash=digest,
                )  # fmt: skip
                await self.shadow.add_comment_link(found)
                st.links.append(found)
                continue
            if not await self._post(st, c.name, text, digest, self.comment_field, now):
                continue
            self.counts.comments_to_snow += 1
            log.info(
                "comment_to_snow",
                direction=TO_SNOW,
                snow_number=st.record.number,
                comment=c.name,
                element=self.comment_field,
            )
        self._count_puts(st, listed=len(comments))

    def _count_puts(self, st: _State, listed: int | None) -> None:
        """Remember how many comments the incident holds now (our own PUTs included)."""
        total = listed if listed is not None else st.incident.comments_count + st.puts
        st.extra[EXTRA_COMMENTS_SEEN] = str(total)

    def _note_text(self, c: SentinelComment, incident: SentinelIncident) -> str:
        header = textfmt.sentinel_comment_header(c.author_name, c.author_upn or c.author_email, c.created)
        where = f"Microsoft Sentinel incident #{incident.number}"
        room = textfmt.SNOW_NOTE_MAX - len(header) - 2
        if self.comment_format == "code":
            body = textfmt.code_block(textfmt.cap(c.message, room - 20, where))
        else:
            body = textfmt.cap(textfmt.html_to_text(c.message) or "(a comment without text)", room, where)
        return f"{header}\n\n{body}"

    async def _post(
        self,
        st: _State,
        name: str,
        text: str,
        digest: str,
        element: str,
        now: datetime,
        note_ids: tuple[str, ...] = (),
    ) -> bool:
        """One journal entry, exactly once: intent committed, PATCH, then marked posted. False when
        the ticket is closed and read-only (REFERENCE E.9): the entry is dropped for good instead.

        ``note_ids`` (an agent note's alert/entity ids) live and die with the intent: they count
        as posted exactly when its link exists.
        """
        if self.read_only(st.record):
            await self._drop(st, name, digest, now, note_ids)
            return False
        intent = CommentLink(
            self.instance, self.workspace, st.incident.name, name, PLACEHOLDER + name, TO_SNOW, now,
            state=PENDING, text_hash=digest, note_ids=note_ids,
        )  # fmt: skip
        await self.shadow.add_comment_link(intent)
        self.posted.setdefault(st.record.sys_id, st.record.updated_on)
        before = st.record
        try:
            after = await self.snow.patch(before.sys_id, {element: text}, self.fields)
        except PermanentError:
            # Refused (ACL, validation): nothing was written, so nothing is pending.
            await self.shadow.delete_comment_link(intent)
            raise
        st.links.append(await self.shadow.set_comment_link(intent, state=POSTED))
        if st.mod == before.mod_count and after.mod_count == before.mod_count + 1:
            st.mod = after.mod_count  # only our write happened: nothing for the next cycle to read
        st.record = after
        await self._learn_user(after.updated_by, now)
        return True

    async def _drop(
        self, st: _State, name: str, digest: str, now: datetime, note_ids: tuple[str, ...]
    ) -> None:
        """A comment or note for a closed ticket: linked as handled (never tried again), one warning
        per ticket."""
        dropped = CommentLink(
            self.instance, self.workspace, st.incident.name, name, f"{DROPPED}{st.incident.name}:{name}",
            TO_SNOW, now, state=UNCONFIRMED, text_hash=digest, note_ids=note_ids,
        )  # fmt: skip
        await self.shadow.add_comment_link(dropped)
        st.links.append(dropped)
        if st.extra.get(EXTRA_DROPPED) != "1":
            st.extra[EXTRA_DROPPED] = "1"
            log.warning(
                "ticket_closed_dropped",
                snow_number=st.record.number,
                message=f"ServiceNow {st.record.number} is closed and read-only: new comments, alerts and "
                "entities of this incident are not copied to it (said once per ticket)",
            )

    # --- alerts and entities ------------------------------------------------------------------

    async def _evidence(self, st: _State, w: PairWork, now: datetime) -> None:
        _noted(st)
        notes = any(c.sentinel_comment.startswith(AGENT_NOTE) for c in st.links)
        fresh = w.adopted and not st.alerts and not st.entities and not notes
        grew = st.incident.alerts_count > len(st.alerts)
        linked = {c.journal_sys_id for c in st.links}
        # Adopted after a lost shadow, the agent wrote entries that are no mirrored comment: its
        # alert and entity notes are already there, so what exists now counts as posted.
        there = fresh and any(self._by_agent(e) and e.sys_id not in linked for e in st.entries)
        if grew:
            alerts = await self.sentinel.list_alerts(st.incident.name)
            if there:
                st.alerts |= {a.name for a in alerts}
            else:
                await self._post_alerts(st, alerts, now)
        if w.created or w.adopted or w.enrich_due or grew:
            entities = await self.sentinel.list_entities(st.incident.name)
            if there:
                st.entities |= {e.name for e in entities}
            else:
                await self._post_entities(st, entities, now)

    async def _post_alerts(self, st: _State, alerts: Sequence[SentinelAlert], now: datetime) -> None:
        new = sorted((a for a in alerts if a.name not in st.alerts), key=_alert_order)
        if not new:
            return
        title = "Microsoft Sentinel alerts" if not st.alerts else "New Microsoft Sentinel alerts"
        lines = [
            " | ".join(
                part
                for part in (
                    a.display_name or "(unnamed alert)",
                    a.severity,
                    textfmt.utc_stamp(a.time_generated) if a.time_generated else "",
                    a.product_name or "",
                )
                if part
            )
            for a in new
        ]
        text = textfmt.bullet_list(f"{title} ({len(new)}):", lines, noun="more alerts")
        written = await self._post_note(st, text, now, tuple(f"{ALERT}{a.name}" for a in new))
        st.alerts |= {a.name for a in alerts}
        if written:
            log.info("alerts_to_snow", direction=TO_SNOW, snow_number=st.record.number, alerts=len(new))

    async def _post_entities(self, st: _State, entities: Sequence[SentinelEntity], now: datetime) -> None:
        new = [e for e in entities if e.name not in st.entities]
        if not new:
            return
        title = "Microsoft Sentinel entities" if not st.entities else "New Microsoft Sentinel entities"
        lines = [f"{e.kind}: {e.friendly_name or '(no name)'}" for e in new]
        text = textfmt.bullet_list(f"{title} ({len(new)}):", lines, noun="more entities")
        written = await self._post_note(st, text, now, tuple(f"{ENTITY}{e.name}" for e in new))
        st.entities |= {e.name for e in entities}
        if written:
            log.info("entities_to_snow", direction=TO_SNOW, snow_number=st.record.number, entities=len(new))

    async def _post_note(self, st: _State, text: str, now: datetime, ids: tuple[str, ...]) -> bool:
        text = textfmt.cap(text, textfmt.SNOW_NOTE_MAX, "Microsoft Sentinel")
        name = f"{AGENT_NOTE}{uuid.uuid4()}"
        written = await self._post(st, name, text, text_hash(text), "work_notes", now, ids)
        self.counts.notes_to_snow += written
        return written

    # --- confirming what the agent wrote --------------------------------------------------------

    async def _read(self, reads: Mapping[str, datetime | None], now: datetime) -> None:
        """Read the journals: from ``sys_journal_field`` (one query per kind of lower bound, each
        record keeping its entries from its own bound), or from the records' display values where
        that table is unreadable (REFERENCE E.6; all of each journal, keyed, see
        :mod:`agent.connectors.servicenow.journaltext`)."""
        if not reads:
            return
        display = {s for s in reads if self.display_mode or s in self._display_records}
        table = {s: since for s, since in reads.items() if s not in display}
        if table:
            whole = [s for s, since in table.items() if since is None]
            bounded = {s: since for s, since in table.items() if since is not None}
            found: list[JournalEntry] = []
            if whole:
                found += await self.snow.journal(whole, elements=JOURNAL_ELEMENTS)
            if bounded:
                found += await self.snow.journal(
                    list(bounded), since=min(bounded.values()), elements=JOURNAL_ELEMENTS
                )
            if found:
                self._table_verified = True
            elif not self._table_verified and await self._unreadable(list(table), now):
                display |= set(table)
                table = {}
            per: dict[str, dict[str, JournalEntry]] = {s: {} for s in table}
            for e in found:
                since = table.get(e.element_id)
                if e.element_id in per and (since is None or e.created_on >= since):
                    per[e.element_id][e.sys_id] = e
            for sys_id, entries in per.items():
                self.entries[sys_id] = sorted(entries.values(), key=lambda e: (e.created_on, e.sys_id))
        if display:
            await self._read_display(display, now)

    async def _read_display(self, sys_ids: Iterable[str], now: datetime) -> None:
        ids = list(sys_ids)
        if self._agent_name is None and self.snow_user is not None:
            user = await self.snow.find_user(user_name=self.snow_user)
            self._agent_name = user.name if user is not None and user.name else None
        got = await self.snow.journal_from_records(ids, elements=JOURNAL_ELEMENTS)
        for sys_id, entries in got.items():
            self.entries[sys_id] = entries
            self._display_records.add(sys_id)
        if self.display_mode and not self._table_verified:
            await self._readable_again(got, now)

    async def _unreadable(self, sys_ids: Sequence[str], now: datetime) -> bool:
        """``sys_journal_field`` answered no rows: do the records show entries in their display
        values? Then the table's read ACL is missing (it answers 200 with no rows, E.6): switch
        this workspace to display values. One record's whole journal is asked of the table
        first, so entries that are merely older than the bound are no false alarm."""
        shown = await self.snow.journal_from_records(sys_ids[:50], elements=JOURNAL_ELEMENTS)
        with_entries = [s for s, entries in shown.items() if entries]
        if not with_entries:
            return False
        if await self.snow.journal([with_entries[0]], elements=JOURNAL_ELEMENTS):
            self._table_verified = True
            return False
        await self._to_display(
            now,
            f"sys_journal_field returned no entry of a record whose display value shows "
            f"{len(shown[with_entries[0]])}",
        )
        return True

    async def _to_display(self, now: datetime, why: str) -> None:
        if self.display_mode:
            return
        self.display_mode = True
        log.warning(
            "journal_unreadable",
            table="sys_journal_field",
            reason=why,
            message="the integration user cannot read sys_journal_field (a missing read ACL answers no "
            "rows, not an error): comments and work notes are read through the records' display values "
            "instead. Grant read access on sys_journal_field to go back to the table.",
        )
        await self.shadow.set_mark(self.instance, self.workspace, MARK_JOURNAL_UNREADABLE, "1", now=now)

    async def _readable_again(self, shown: Mapping[str, Sequence[JournalEntry]], now: datetime) -> None:
        """In display mode, once per process: does the table answer again (the ACL was granted)?
        Then new pairs go back to it; pairs read from display values so far stay there (their
        entries are linked by keys the table does not know)."""
        with_entries = [s for s, entries in shown.items() if entries]
        if not with_entries:
            return
        self._table_verified = True  # asked once per process
        if await self.snow.journal([with_entries[0]], elements=JOURNAL_ELEMENTS):
            self.display_mode = False
            log.info("journal_readable", table="sys_journal_field")
            await self.shadow.set_mark(self.instance, self.workspace, MARK_JOURNAL_UNREADABLE, None, now=now)

    def _note_display(self, sys_id: str, link: Link | None) -> None:
        if link is not None and link.extra.get(EXTRA_DISPLAY) == "1":
            self._display_records.add(sys_id)

    async def _settle(
        self, links: Sequence[CommentLink], record_of: Mapping[str, str], now: datetime, *, same_cycle: bool
    ) -> None:
        """Confirm what the agent wrote. An entry written for sure that ``sys_journal_field`` does
        not show means its read ACL is missing: read those journals from the display values and
        try again; what is still not found is marked unconfirmed (never written again)."""
        missing = await self._resolve(links, record_of, now, same_cycle=same_cycle)
        if missing and not self.display_mode:
            await self._to_display(now, f"{len(missing)} journal entries the agent wrote are not returned")
            records = {record_of[c.incident] for c in missing if c.incident in record_of}
            await self._read_display(records, now)
            missing = await self._resolve(missing, record_of, now, same_cycle=same_cycle)
        for c in missing:
            await self.shadow.set_comment_link(c, state=UNCONFIRMED)

    async def _resolve(
        self, links: Iterable[CommentLink], record_of: Mapping[str, str], now: datetime, *, same_cycle: bool
    ) -> list[CommentLink]:
        """Match unconfirmed links to the journal entries read (same record, our user, same text);
        returns the posted ones not found."""
        by_incident: dict[str, list[CommentLink]] = {}
        for c in links:
            by_incident.setdefault(c.incident, []).append(c)
        missing: list[CommentLink] = []
        for incident, group in by_incident.items():
            sys_id = record_of.get(incident)
            entries = self.entries.get(sys_id) if sys_id is not None else None
            if entries is None:
                continue
            stored = await self.shadow.comment_links(self.instance, self.workspace, incident)
            taken = {c.journal_sys_id for c in stored}
            pool = [e for e in entries if e.sys_id not in taken and self._maybe_agent(e)]
            for c in group:
                match = next((e for e in pool if text_hash(e.value) == c.text_hash), None)
                if match is not None:
                    pool.remove(match)
                    await self.shadow.set_comment_link(c, state=CONFIRMED, journal_sys_id=match.sys_id)
                elif c.state == POSTED:
                    missing.append(c)  # written for sure
                elif not same_cycle:
                    # A PATCH whose outcome was unknown never landed: post that comment again.
                    await self.shadow.delete_comment_link(c)
                    log.info("comment_write_lost", incident=incident, comment=c.sentinel_comment)
        return missing

    # --- identity -------------------------------------------------------------------------------

    def _by_agent(self, e: JournalEntry) -> bool:
        """Certainly written by the agent's ServiceNow user (by user_name, or by display name for
        an entry read from a display value)."""
        if self.snow_user is None:
            return False
        return e.created_by == self.snow_user or (
            e.sys_id.startswith(DISPLAY_KEY)
            and self._agent_name is not None
            and e.created_by == self._agent_name
        )

    def _maybe_agent(self, e: JournalEntry) -> bool:
        """Possibly written by the agent (its user is not known yet: any entry; nor its display
        name, for an entry read from a display value)."""
        if self.snow_user is None or (e.sys_id.startswith(DISPLAY_KEY) and self._agent_name is None):
            return True
        return self._by_agent(e)

    async def _learn_user(self, user_name: str, now: datetime) -> None:
        # With the client-credentials grant the config names no user; our writes tell.
        if self._configured_user or not user_name or user_name == self.snow_user:
            return
        self.snow_user = user_name
        await self.shadow.set_mark(self.instance, self.workspace, MARK_SNOW_USER, user_name, now=now)

    def _since(self, link: Link) -> datetime | None:
        seen = _parse(link.extra.get(EXTRA_JOURNAL_SEEN))
        return seen - self.overlap if seen is not None else None


def journal_seen(record: SnowRecord) -> dict[str, str]:
    """The ``extra`` of a new link: its journal starts at the record's creation (server time)."""
    return {EXTRA_JOURNAL_SEEN: record.updated_on.isoformat()}


def _widen(reads: dict[str, datetime | None], sys_id: str, since: datetime | None) -> None:
    """Record that ``sys_id``'s journal is needed from ``since`` (None: all of it)."""
    if sys_id not in reads:
        reads[sys_id] = since
        return
    current = reads[sys_id]
    if current is not None and (since is None or since < current):
        reads[sys_id] = since


def _noted(st: _State) -> None:
    """Add the ids listed by the pair's agent notes (their links exist) to what was posted."""
    for c in st.links:
        for note_id in c.note_ids:
            kind, _, name = note_id.partition(":")
            (st.alerts if f"{kind}:" == ALERT else st.entities).add(name)


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _alert_order(a: SentinelAlert) -> tuple[str, str]:
    return (a.time_generated.isoformat() if a.time_generated else "", a.display_name)
