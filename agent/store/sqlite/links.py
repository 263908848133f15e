"""The SQLite shadow's link tables: links, tombstones (unlinked on purpose) and comment links."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime

from agent.core.records import (
    CommentLink,
    Link,
    Tombstone,
)
from agent.store.checks import (
    CONFLICTS_KEPT,
    check_state,
)
from agent.store.sqlite.db import Database
from agent.store.sqlite.rows import (
    CHUNK,
    chunks,
    comment_from_row,
    comment_row,
    dt_req,
    link_from_row,
    link_row,
    ts,
)

LINK_COLUMNS = (
    "instance, workspace, incident, sys_id, number, fields, sentinel_etag, snow_mod_count, open, "
    "alerts_posted, entities_posted, created_at, enrich_after, extra"
)
_UPSERT_LINK = f"""
    INSERT INTO links ({LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
    ON CONFLICT (instance, workspace, incident) DO UPDATE SET
        sys_id = excluded.sys_id, number = excluded.number, fields = excluded.fields,
        sentinel_etag = excluded.sentinel_etag, snow_mod_count = excluded.snow_mod_count,
        open = excluded.open, alerts_posted = excluded.alerts_posted,
        entities_posted = excluded.entities_posted,
        created_at = COALESCE(excluded.created_at, links.created_at),
        enrich_after = excluded.enrich_after, extra = excluded.extra
"""
_INSERT_COMMENT_LINK = """
    INSERT INTO comment_links
        (instance, workspace, incident, sentinel_comment, journal_sys_id, direction, created_at,
         state, text_hash, note_ids)
    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_BY_INCIDENT = "instance = ? AND workspace = ? AND incident = ?"


class LinkTables(Database):
    """Links, tombstones and comment links (see :class:`agent.store.base.Store`)."""

    # --- links ----------------------------------------------------------------------------------

    async def get_links(self, instance: str, workspace: str, incidents: Iterable[str]) -> dict[str, Link]:
        """The links of these Sentinel incident names that exist, keyed by incident name."""
        out: dict[str, Link] = {}
        for chunk in chunks(incidents):
            marks = ", ".join("?" * len(chunk))
            rows = await self._read(
                f"SELECT * FROM links WHERE instance = ? AND workspace = ? AND incident IN ({marks})",
                (instance, workspace, *chunk),
            )
            out.update((row["incident"], link_from_row(row)) for row in rows)
        return out

    async def get_links_by_sys_id(self, instance: str, sys_ids: Iterable[str]) -> dict[str, Link]:
        """The links of these ServiceNow sys_ids (any workspace), keyed by sys_id."""
        out: dict[str, Link] = {}
        for chunk in chunks(sys_ids):
            marks = ", ".join("?" * len(chunk))
            rows = await self._read(
                f"SELECT * FROM links WHERE instance = ? AND sys_id IN ({marks})", (instance, *chunk)
            )
            out.update((row["sys_id"], link_from_row(row)) for row in rows)
        return out

    async def iter_links(
        self, instance: str, workspace: str, *, open_only: bool = False
    ) -> AsyncIterator[Link]:
        """Every link of a workspace in incident-name order, read a page at a time.

        Pages are read by key, not through an open cursor, so the caller may save links while
        iterating.
        """
        after = ""
        extra = " AND open = 1" if open_only else ""
        while True:
            rows = await self._read(
                f"SELECT * FROM links WHERE instance = ? AND workspace = ? AND incident > ?{extra} "
                "ORDER BY incident LIMIT ?",
                (instance, workspace, after, CHUNK),
            )
            for row in rows:
                yield link_from_row(row)
            if len(rows) < CHUNK:
                return
            after = rows[-1]["incident"]

    async def count_links(self, instance: str, workspace: str) -> tuple[int, int]:
        """``(total, open)`` links of a workspace."""
        rows = await self._read(
            "SELECT count(*) AS total, coalesce(sum(open), 0) AS open FROM links "
            "WHERE instance = ? AND workspace = ?",
            (instance, workspace),
        )
        return int(rows[0]["total"]), int(rows[0]["open"])

    async def save_link(
        self,
        link: Link,
        *,
        comment_links: Sequence[CommentLink] = (),
        conflicts: Sequence[tuple[str, str, str, str]] = (),
        now: datetime | None = None,
    ) -> None:
        """In one transaction: upsert ``link``, add its new comment links, log its conflicts
        ``(field, sentinel, servicenow, winner)`` and clear its failure row.

        Nothing is written if any part fails; a comment link already stored (same journal entry
        or same Sentinel comment) raises :class:`~agent.errors.DuplicateKey`, as does linking a
        sys_id that is already linked to another incident. ``now`` stamps the conflict log
        (default: the current time). A stored ``created_at`` is kept when ``link.created_at`` is
        None.
        """
        for c in comment_links:
            if (c.instance, c.workspace, c.incident) != (link.instance, link.workspace, link.incident):
                raise ValueError(f"comment link {c.sentinel_comment} belongs to another incident")
        at = ts(now or datetime.now(UTC))
        key = (link.instance, link.workspace, link.incident)
        async with self._batch() as db:
            await db.execute(_UPSERT_LINK, link_row(link))
            if comment_links:
                await db.executemany(_INSERT_COMMENT_LINK, [comment_row(c) for c in comment_links])
            if conflicts:
                await db.executemany(
                    "INSERT INTO conflict_log (at, instance, workspace, incident, field, sentinel, "
                    "servicenow, winner) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(at, *key, *c) for c in conflicts],
                )
                await db.execute(
                    "DELETE FROM conflict_log WHERE id <= (SELECT max(id) FROM conflict_log) - ?",
                    (CONFLICTS_KEPT,),
                )
            await db.execute(f"DELETE FROM failures WHERE {_BY_INCIDENT}", key)

    async def save_links(self, links: Sequence[Link]) -> None:
        """Upsert many links in one transaction (bulk linking, rebuilds); clears their failures."""
        if not links:
            return
        async with self._batch() as db:
            await db.executemany(_UPSERT_LINK, [link_row(link) for link in links])
            await db.executemany(
                f"DELETE FROM failures WHERE {_BY_INCIDENT}",
                [(link.instance, link.workspace, link.incident) for link in links],
            )

    async def delete_link(self, instance: str, workspace: str, incident: str) -> None:
        """Unlink: remove the link, its comment links and its failure row."""
        key = (instance, workspace, incident)
        async with self._batch() as db:
            for table in ("links", "comment_links", "failures"):
                await db.execute(f"DELETE FROM {table} WHERE {_BY_INCIDENT}", key)

    async def move_link(
        self, instance: str, workspace: str, incident: str, link: Link, comment_links: Sequence[CommentLink]
    ) -> None:
        """In one transaction: drop the link of ``incident`` (comment links, failure row
        included) and store ``link`` with ``comment_links``; all or nothing."""
        for c in comment_links:
            if (c.instance, c.workspace, c.incident) != (link.instance, link.workspace, link.incident):
                raise ValueError(f"comment link {c.sentinel_comment} belongs to another incident")
        key = (instance, workspace, incident)
        async with self._batch() as db:
            for table in ("links", "comment_links", "failures"):
                await db.execute(f"DELETE FROM {table} WHERE {_BY_INCIDENT}", key)
            await db.execute(_UPSERT_LINK, link_row(link))
            if comment_links:
                await db.executemany(_INSERT_COMMENT_LINK, [comment_row(c) for c in comment_links])

    async def links_by_number(self, instance: str, workspace: str, numbers: Iterable[str]) -> dict[str, Link]:
        """The links of a workspace whose ServiceNow number is one of ``numbers``, keyed by number."""
        out: dict[str, Link] = {}
        for chunk in chunks(numbers):
            marks = ", ".join("?" * len(chunk))
            rows = await self._read(
                f"SELECT * FROM links WHERE instance = ? AND workspace = ? AND number IN ({marks})",
                (instance, workspace, *chunk),
            )
            out.update((row["number"], link_from_row(row)) for row in rows)
        return out

    # --- tombstones (unlinked on purpose) --------------------------------------------------------

    async def unlink(
        self, instance: str, workspace: str, incident: str, *, reason: str, now: datetime
    ) -> Link | None:
        """In one transaction: remember ``incident`` as unlinked on purpose (a tombstone, so it is
        never re-created or re-adopted) and remove its link, comment links and failure row.

        Returns the link removed (None if there was none; the tombstone is written anyway).
        """
        key = (instance, workspace, incident)

        def job(db: sqlite3.Connection) -> Link | None:
            rows = db.execute(f"SELECT * FROM links WHERE {_BY_INCIDENT}", key).fetchall()
            link = link_from_row(rows[0]) if rows else None
            db.execute(
                "INSERT OR REPLACE INTO unlinked (instance, workspace, incident, sys_id, number, reason, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, link.sys_id if link else "", link.number if link else "", reason, ts(now)),
            )
            for table in ("links", "comment_links", "failures"):
                db.execute(f"DELETE FROM {table} WHERE {_BY_INCIDENT}", key)
            return link

        found: Link | None = await self._transact(job)
        return found

    async def unlinked(
        self, instance: str, workspace: str, incidents: Iterable[str] | None = None
    ) -> dict[str, Tombstone]:
        """The tombstones of a workspace (all, or of these incident names), keyed by incident."""
        columns = "incident, sys_id, number, reason, at"
        if incidents is None:
            rows = await self._read(
                f"SELECT {columns} FROM unlinked WHERE instance = ? AND workspace = ? ORDER BY at, incident",
                (instance, workspace),
            )
        else:
            rows = []
            for chunk in chunks(incidents):
                marks = ", ".join("?" * len(chunk))
                rows += await self._read(
                    f"SELECT {columns} FROM unlinked WHERE instance = ? AND workspace = ? "
                    f"AND incident IN ({marks})",
                    (instance, workspace, *chunk),
                )
        return {
            row["incident"]: Tombstone(
                row["incident"], row["sys_id"], row["number"], row["reason"], dt_req(row["at"])
            )
            for row in rows
        }

    async def forget_unlinked(self, instance: str, workspace: str, incident: str) -> bool:
        """Remove a tombstone (the incident may be linked again); False if there was none."""
        key = (instance, workspace, incident)

        def job(db: sqlite3.Connection) -> bool:
            return db.execute(f"DELETE FROM unlinked WHERE {_BY_INCIDENT}", key).rowcount > 0

        removed: bool = await self._transact(job)
        return removed

    # --- comment links --------------------------------------------------------------------------

    async def comment_links(self, instance: str, workspace: str, incident: str) -> list[CommentLink]:
        """The comment links of one incident, oldest first."""
        rows = await self._read(
            f"SELECT * FROM comment_links WHERE {_BY_INCIDENT} ORDER BY created_at, rowid",
            (instance, workspace, incident),
        )
        return [comment_from_row(row) for row in rows]

    async def add_comment_link(self, link: CommentLink) -> None:
        """Store one comment link; a duplicate raises :class:`~agent.errors.DuplicateKey`."""
        async with self._batch() as db:
            await db.execute(_INSERT_COMMENT_LINK, comment_row(link))

    async def unconfirmed_comment_links(self, instance: str, workspace: str) -> list[CommentLink]:
        """Comment links of a workspace in state ``pending`` or ``posted``, oldest first."""
        rows = await self._read(
            "SELECT * FROM comment_links WHERE instance = ? AND workspace = ? "
            "AND state IN ('pending', 'posted') ORDER BY created_at, rowid",
            (instance, workspace),
        )
        return [comment_from_row(row) for row in rows]

    async def set_comment_link(
        self,
        link: CommentLink,
        *,
        state: str,
        journal_sys_id: str | None = None,
    ) -> CommentLink:
        """Move one comment link to ``state`` (and to its real journal sys_id); returns it.

        Linking a journal entry that is already linked raises :class:`~agent.errors.DuplicateKey`.
        """
        check_state(state)
        new_id = journal_sys_id or link.journal_sys_id
        async with self._batch() as db:
            await db.execute(
                f"UPDATE comment_links SET state = ?, journal_sys_id = ? WHERE {_BY_INCIDENT} "
                "AND sentinel_comment = ?",
                (state, new_id, link.instance, link.workspace, link.incident, link.sentinel_comment),
            )
        return replace(link, state=state, journal_sys_id=new_id)

    async def delete_comment_link(self, link: CommentLink) -> None:
        """Forget one comment link (a pending write that never reached ServiceNow)."""
        async with self._batch() as db:
            await db.execute(
                f"DELETE FROM comment_links WHERE {_BY_INCIDENT} AND sentinel_comment = ?",
                (link.instance, link.workspace, link.incident, link.sentinel_comment),
            )

    # --- enrichment and marks -------------------------------------------------------------------

    async def due_enrichment(self, instance: str, workspace: str, now: datetime) -> list[Link]:
        """Links whose conversation re-check is due (``enrich_after <= now``): the late-enrichment
        check after creation, or comments whose copy was deferred by an error (closed links too)."""
        rows = await self._read(
            "SELECT * FROM links WHERE instance = ? AND workspace = ? "
            "AND enrich_after IS NOT NULL AND enrich_after <= ? ORDER BY enrich_after, incident",
            (instance, workspace, ts(now)),
        )
        return [link_from_row(row) for row in rows]
