"""The PostgreSQL store's link tables: links, tombstones (unlinked on purpose) and comment links."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from agent.core.records import CommentLink, Link, Tombstone
from agent.store import checks as R
from agent.store.postgres.db import Database
from agent.store.postgres.rows import (
    BY_INCIDENT,
    INSERT_COMMENT,
    UPSERT_LINK,
    comment_from_row,
    comment_params,
    link_from_row,
    link_params,
    unique,
)

PAGE = 500
PAGE = 500


class LinkTables(Database):
    """Links, tombstones and comment links (see :class:`agent.store.base.Store`)."""

    # --- links -----------------------------------------------------------------------------------

    async def get_links(self, instance: str, workspace: str, incidents: Iterable[str]) -> dict[str, Link]:
        rows = await self._read(
            "SELECT * FROM links WHERE instance = %s AND workspace = %s AND incident = ANY(%s)",
            (instance, workspace, unique(incidents)),
        )
        return {row["incident"]: link_from_row(row) for row in rows}

    async def get_links_by_sys_id(self, instance: str, sys_ids: Iterable[str]) -> dict[str, Link]:
        rows = await self._read(
            "SELECT * FROM links WHERE instance = %s AND sys_id = ANY(%s)", (instance, unique(sys_ids))
        )
        return {row["sys_id"]: link_from_row(row) for row in rows}

    async def iter_links(
        self, instance: str, workspace: str, *, open_only: bool = False
    ) -> AsyncIterator[Link]:
        after = ""
        extra = " AND open" if open_only else ""
        while True:
            rows = await self._read(
                f"SELECT * FROM links WHERE instance = %s AND workspace = %s AND incident > %s{extra} "
                "ORDER BY incident LIMIT %s",
                (instance, workspace, after, PAGE),
            )
            for row in rows:
                yield link_from_row(row)
            if len(rows) < PAGE:
                return
            after = rows[-1]["incident"]

    async def count_links(self, instance: str, workspace: str) -> tuple[int, int]:
        rows = await self._read(
            "SELECT count(*) AS total, count(*) FILTER (WHERE open) AS open FROM links "
            "WHERE instance = %s AND workspace = %s",
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
        key = (link.instance, link.workspace, link.incident)
        for c in comment_links:
            if (c.instance, c.workspace, c.incident) != key:
                raise ValueError(f"comment link {c.sentinel_comment} belongs to another incident")
            R.check_comment(c)
        R.check_link(link)
        at = now or datetime.now(UTC)
        R.check_aware(at)
        async with self._write() as conn, conn.cursor() as cur:
            await cur.execute(UPSERT_LINK, link_params(link))
            if comment_links:
                await cur.executemany(INSERT_COMMENT, [comment_params(c) for c in comment_links])
            if conflicts:
                await cur.executemany(
                    "INSERT INTO conflict_log (at, instance, workspace, incident, field, sentinel, "
                    "servicenow, winner) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [(at, *key, *c) for c in conflicts],
                )
                await cur.execute(
                    "DELETE FROM conflict_log WHERE id <= (SELECT max(id) FROM conflict_log) - %s",
                    (R.CONFLICTS_KEPT,),
                )
            await cur.execute(f"DELETE FROM failures WHERE {BY_INCIDENT}", key)

    async def save_links(self, links: Sequence[Link]) -> None:
        if not links:
            return
        for link in links:
            R.check_link(link)
        async with self._write() as conn, conn.cursor() as cur:
            await cur.executemany(UPSERT_LINK, [link_params(x) for x in links])
            await cur.executemany(
                f"DELETE FROM failures WHERE {BY_INCIDENT}",
                [(x.instance, x.workspace, x.incident) for x in links],
            )

    async def delete_link(self, instance: str, workspace: str, incident: str) -> None:
        async with self._write() as conn:
            for table in ("links", "comment_links", "failures"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE {BY_INCIDENT}", (instance, workspace, incident)
                )

    async def move_link(
        self, instance: str, workspace: str, incident: str, link: Link, comment_links: Sequence[CommentLink]
    ) -> None:
        for c in comment_links:
            if (c.instance, c.workspace, c.incident) != (link.instance, link.workspace, link.incident):
                raise ValueError(f"comment link {c.sentinel_comment} belongs to another incident")
            R.check_comment(c)
        R.check_link(link)
        async with self._write() as conn, conn.cursor() as cur:
            for table in ("links", "comment_links", "failures"):
                await cur.execute(f"DELETE FROM {table} WHERE {BY_INCIDENT}", (instance, workspace, incident))
            await cur.execute(UPSERT_LINK, link_params(link))
            if comment_links:
                await cur.executemany(INSERT_COMMENT, [comment_params(c) for c in comment_links])

    async def links_by_number(self, instance: str, workspace: str, numbers: Iterable[str]) -> dict[str, Link]:
        rows = await self._read(
            "SELECT * FROM links WHERE instance = %s AND workspace = %s AND number = ANY(%s)",
            (instance, workspace, unique(numbers)),
        )
        return {row["number"]: link_from_row(row) for row in rows}

    # --- tombstones ------------------------------------------------------------------------------

    async def unlink(
        self, instance: str, workspace: str, incident: str, *, reason: str, now: datetime
    ) -> Link | None:
        R.check_aware(now)
        key = (instance, workspace, incident)
        async with self._write() as conn:
            cur = await conn.execute(f"DELETE FROM links WHERE {BY_INCIDENT} RETURNING *", key)
            row = await cur.fetchone()
            link = link_from_row(row) if row else None
            await conn.execute(
                "INSERT INTO unlinked (instance, workspace, incident, sys_id, number, reason, at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (instance, workspace, incident) DO UPDATE "
                "SET sys_id = excluded.sys_id, number = excluded.number, reason = excluded.reason, "
                "at = excluded.at",
                (*key, link.sys_id if link else "", link.number if link else "", reason, now),
            )
            for table in ("comment_links", "failures"):
                await conn.execute(f"DELETE FROM {table} WHERE {BY_INCIDENT}", key)
        return link

    async def unlinked(
        self, instance: str, workspace: str, incidents: Iterable[str] | None = None
    ) -> dict[str, Tombstone]:
        sql = (
            "SELECT incident, sys_id, number, reason, at FROM unlinked WHERE instance = %s AND workspace = %s"
        )
        params: tuple[Any, ...] = (instance, workspace)
        if incidents is not None:
            sql += " AND incident = ANY(%s)"
            params = (*params, unique(incidents))
        rows = await self._read(sql + " ORDER BY at, incident", params)
        return {
            row["incident"]: Tombstone(
                row["incident"], row["sys_id"], row["number"], row["reason"], row["at"]
            )
            for row in rows
        }

    async def forget_unlinked(self, instance: str, workspace: str, incident: str) -> bool:
        async with self._write() as conn:
            cur = await conn.execute(
                f"DELETE FROM unlinked WHERE {BY_INCIDENT}", (instance, workspace, incident)
            )
            return cur.rowcount > 0

    # --- comment links ---------------------------------------------------------------------------

    async def comment_links(self, instance: str, workspace: str, incident: str) -> list[CommentLink]:
        rows = await self._read(
            f"SELECT * FROM comment_links WHERE {BY_INCIDENT} ORDER BY created_at, id",
            (instance, workspace, incident),
        )
        return [comment_from_row(row) for row in rows]

    async def add_comment_link(self, link: CommentLink) -> None:
        R.check_comment(link)
        async with self._write() as conn:
            await conn.execute(INSERT_COMMENT, comment_params(link))

    async def unconfirmed_comment_links(self, instance: str, workspace: str) -> list[CommentLink]:
        rows = await self._read(
            "SELECT * FROM comment_links WHERE instance = %s AND workspace = %s "
            "AND state IN ('pending', 'posted') ORDER BY created_at, id",
            (instance, workspace),
        )
        return [comment_from_row(row) for row in rows]

    async def set_comment_link(
        self, link: CommentLink, *, state: str, journal_sys_id: str | None = None
    ) -> CommentLink:
        R.check_state(state)
        new_id = journal_sys_id or link.journal_sys_id
        async with self._write() as conn:
            await conn.execute(
                f"UPDATE comment_links SET state = %s, journal_sys_id = %s WHERE {BY_INCIDENT} "
                "AND sentinel_comment = %s",
                (state, new_id, link.instance, link.workspace, link.incident, link.sentinel_comment),
            )
        return replace(link, state=state, journal_sys_id=new_id)

    async def delete_comment_link(self, link: CommentLink) -> None:
        async with self._write() as conn:
            await conn.execute(
                f"DELETE FROM comment_links WHERE {BY_INCIDENT} AND sentinel_comment = %s",
                (link.instance, link.workspace, link.incident, link.sentinel_comment),
            )
