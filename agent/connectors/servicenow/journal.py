"""Reading ServiceNow journals (work notes and additional comments), and telling who wrote them.

A journal is read from ``sys_journal_field`` (one query per kind of lower bound, each record
keeping its entries from its own bound). An integration user without the read ACL on that
table gets 200 with no rows rather than an error (REFERENCE E.6); when the records' display
values show entries the table does not, the workspace switches to reading journals from the
display values (:mod:`agent.connectors.servicenow.journaltext`, entries keyed instead of
identified), says so once (``journal_unreadable``), keeps that in the state, and checks once per
process whether the table answers again. Pairs read from display values stay so (their entries
are linked by keys the table does not know).

Who wrote an entry: the agent's own ServiceNow user (configured, or learnt from the answers to
its writes under the client-credentials grant), by user name, or by display name for an entry
read from a display value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime

from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.journaltext import DISPLAY_KEY
from agent.connectors.servicenow.models import JournalEntry
from agent.core.records import Note
from agent.log import log
from agent.store import Store

ELEMENTS = ("work_notes", "comments")
MARK_JOURNAL_UNREADABLE = "journal_unreadable"  # set: journals are read from display values (E.6)
MARK_SNOW_USER = "servicenow_user"
EXTRA_DISPLAY = "journal_display"  # "1": the pair's journal is read from display values (for good)


def note_of(e: JournalEntry) -> Note:
    return Note(
        e.sys_id,
        e.element_id,
        e.element,
        e.value,
        e.created_by,
        e.created_on,
        e.sys_id.startswith(DISPLAY_KEY),
    )


class JournalReader:
    """The journals of one workspace's tickets (see the module docstring)."""

    def __init__(
        self, client: ServiceNowClient, store: Store, instance: str, workspace: str, user: str | None
    ) -> None:
        self.client = client
        self.store = store
        self.instance = instance
        self.workspace = workspace
        self.display_mode = False  # sys_journal_field is unreadable: display values instead (E.6)
        self._display_records: set[str] = set()  # records whose journal comes from display values
        self._table_verified = False  # sys_journal_field answered rows in this process
        self._agent_name: str | None = None  # the agent user's display name (display-value authors)
        self._configured_user = user
        self.user = user

    async def start(self, now: datetime) -> None:
        if self.user is None:
            mark = await self.store.get_mark(self.instance, self.workspace, MARK_SNOW_USER)
            self.user = mark[0] if mark else None
        self.display_mode = (
            await self.store.get_mark(self.instance, self.workspace, MARK_JOURNAL_UNREADABLE) is not None
        )

    def remember(self, ticket: str, extra: Mapping[str, str]) -> None:
        if extra.get(EXTRA_DISPLAY) == "1":
            self._display_records.add(ticket)

    def extra(self, ticket: str) -> dict[str, str]:
        return {EXTRA_DISPLAY: "1"} if ticket in self._display_records else {}

    async def read(self, reads: Mapping[str, datetime | None], now: datetime) -> dict[str, list[Note]]:
        out: dict[str, list[Note]] = {}
        if not reads:
            return out
        display = {s for s in reads if self.display_mode or s in self._display_records}
        table = {s: since for s, since in reads.items() if s not in display}
        if table:
            found = await self._table(table)
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
                out[sys_id] = [
                    note_of(e) for e in sorted(entries.values(), key=lambda e: (e.created_on, e.sys_id))
                ]
        if display:
            out.update(await self._read_display(display, now))
        return out

    async def _table(self, table: Mapping[str, datetime | None]) -> list[JournalEntry]:
        whole = [s for s, since in table.items() if since is None]
        bounded = {s: since for s, since in table.items() if since is not None}
        found: list[JournalEntry] = []
        if whole:
            found += await self.client.journal(whole, elements=ELEMENTS)
        if bounded:
            found += await self.client.journal(list(bounded), since=min(bounded.values()), elements=ELEMENTS)
        return found

    async def missing(self, tickets: Iterable[str], count: int, now: datetime) -> dict[str, list[Note]]:
        """Entries the agent wrote for sure that ``sys_journal_field`` does not show: its read ACL is
        missing, so read those journals from the display values."""
        if self.display_mode:
            return {}
        await self._to_display(now, f"{count} journal entries the agent wrote are not returned")
        return await self._read_display(set(tickets), now)

    async def _read_display(self, sys_ids: Iterable[str], now: datetime) -> dict[str, list[Note]]:
        ids = list(sys_ids)
        if self._agent_name is None and self.user is not None:
            user = await self.client.find_user(user_name=self.user)
            self._agent_name = user.name if user is not None and user.name else None
        got = await self.client.journal_from_records(ids, elements=ELEMENTS)
        self._display_records |= set(got)
        if self.display_mode and not self._table_verified:
            await self._readable_again(got, now)
        return {sys_id: [note_of(e) for e in entries] for sys_id, entries in got.items()}

    async def _unreadable(self, sys_ids: Sequence[str], now: datetime) -> bool:
        """``sys_journal_field`` answered no rows: do the records show entries in their display
        values? Then the table's read ACL is missing (it answers 200 with no rows, E.6): switch
        this workspace to display values. One record's whole journal is asked of the table
        first, so entries that are merely older than the bound are no false alarm."""
        shown = await self.client.journal_from_records(sys_ids[:50], elements=ELEMENTS)
        with_entries = [s for s, entries in shown.items() if entries]
        if not with_entries:
            return False
        if await self.client.journal([with_entries[0]], elements=ELEMENTS):
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
        await self.store.set_mark(self.instance, self.workspace, MARK_JOURNAL_UNREADABLE, "1", now=now)

    async def _readable_again(self, shown: Mapping[str, Sequence[JournalEntry]], now: datetime) -> None:
        """In display mode, once per process: does the table answer again (the ACL was granted)?
        Then new pairs go back to it; pairs read from display values so far stay there."""
        with_entries = [s for s, entries in shown.items() if entries]
        if not with_entries:
            return
        self._table_verified = True  # asked once per process
        if await self.client.journal([with_entries[0]], elements=ELEMENTS):
            self.display_mode = False
            log.info("journal_readable", table="sys_journal_field")
            await self.store.set_mark(self.instance, self.workspace, MARK_JOURNAL_UNREADABLE, None, now=now)

    # --- identity -------------------------------------------------------------------------------

    def derived(self, note_id: str) -> bool:
        return note_id.startswith(DISPLAY_KEY)

    def by_agent(self, note: Note) -> bool:
        if self.user is None:
            return False
        return note.author == self.user or (
            note.derived and self._agent_name is not None and note.author == self._agent_name
        )

    def maybe_agent(self, note: Note) -> bool:
        if self.user is None or (note.derived and self._agent_name is None):
            return True
        return self.by_agent(note)

    async def learn(self, updated_by: str, now: datetime) -> None:
        # With the client-credentials grant the config names no user; our writes tell.
        if self._configured_user or not updated_by or updated_by == self.user:
            return
        self.user = updated_by
        await self.store.set_mark(self.instance, self.workspace, MARK_SNOW_USER, updated_by, now=now)
