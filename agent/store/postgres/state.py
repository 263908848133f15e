"""The PostgreSQL store's state tables: marks, watermarks, failures, history, the whole-state copy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from agent.core.records import UNSET, Failure, Link, Unset, Watermark
from agent.store import checks as R
from agent.store.postgres.db import Database
from agent.store.postgres.rows import (
    BY_INCIDENT,
    FAILURE_COLUMNS,
    NOT_COPIED,
    from_text,
    link_from_row,
    to_text,
)

PAGE = 500
PAGE = 500


class StateTables(Database):
    """Marks, watermarks, failures, conflicts, cycles and table copies (:class:`~agent.store.base.Store`)."""

    # --- enrichment and marks --------------------------------------------------------------------

    async def due_enrichment(self, instance: str, workspace: str, now: datetime) -> list[Link]:
        rows = await self._read(
            "SELECT * FROM links WHERE instance = %s AND workspace = %s AND enrich_after <= %s "
            "ORDER BY enrich_after, incident",
            (instance, workspace, now),
        )
        return [link_from_row(row) for row in rows]

    async def get_mark(self, instance: str, workspace: str, name: str) -> tuple[str, datetime] | None:
        rows = await self._read(
            "SELECT value, at FROM marks WHERE instance = %s AND workspace = %s AND name = %s",
            (instance, workspace, name),
        )
        return (rows[0]["value"], rows[0]["at"]) if rows else None

    async def set_mark(
        self, instance: str, workspace: str, name: str, value: str | None, *, now: datetime
    ) -> None:
        R.check_aware(now)
        async with self._write() as conn:
            if value is None:
                await conn.execute(
                    "DELETE FROM marks WHERE instance = %s AND workspace = %s AND name = %s",
                    (instance, workspace, name),
                )
            else:
                await conn.execute(
                    "INSERT INTO marks (instance, workspace, name, value, at) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (instance, workspace, name) DO UPDATE "
                    "SET value = excluded.value, at = excluded.at",
                    (instance, workspace, name, value, now),
                )

    # --- watermarks ------------------------------------------------------------------------------

    async def get_watermark(self, instance: str, workspace: str, side: str) -> Watermark:
        R.check_side(side)
        rows = await self._read(
            "SELECT created, modified, moved_at, created_moved_at, modified_moved_at FROM watermarks "
            "WHERE instance = %s AND workspace = %s AND side = %s",
            (instance, workspace, side),
        )
        if not rows:
            return Watermark(instance, workspace, side, None, None, None)
        r = rows[0]
        return Watermark(
            instance, workspace, side, r["created"], r["modified"], r["moved_at"],
            r["created_moved_at"], r["modified_moved_at"],
        )  # fmt: skip

    async def set_watermark(
        self,
        instance: str,
        workspace: str,
        side: str,
        *,
        created: datetime | Unset | None = UNSET,
        modified: datetime | Unset | None = UNSET,
        moved_at: datetime,
    ) -> None:
        R.check_side(side)
        R.check_aware(moved_at)
        values: dict[str, datetime | None] = {"moved_at": moved_at}
        if not isinstance(created, Unset):
            R.check_aware(created)
            values |= {"created": created, "created_moved_at": moved_at}
        if not isinstance(modified, Unset):
            R.check_aware(modified)
            values |= {"modified": modified, "modified_moved_at": moved_at}
        cols = ", ".join(values)
        updates = ", ".join(f"{col} = excluded.{col}" for col in values)
        marks = ", ".join(["%s"] * len(values))
        async with self._write() as conn:
            await conn.execute(
                f"INSERT INTO watermarks (instance, workspace, side, {cols}) VALUES (%s, %s, %s, {marks}) "
                f"ON CONFLICT (instance, workspace, side) DO UPDATE SET {updates}",
                (instance, workspace, side, *values.values()),
            )

    # --- failures --------------------------------------------------------------------------------

    async def record_failure(
        self,
        instance: str,
        workspace: str,
        incident: str,
        error: str,
        *,
        now: datetime,
        base_delay: float = 60.0,
        max_delay: float = 6 * 3600,
        grace: int = 0,
    ) -> datetime:
        R.check_aware(now)
        key = (instance, workspace, incident)
        async with self._write() as conn:
            cur = await conn.execute(f"SELECT attempts FROM failures WHERE {BY_INCIDENT} FOR UPDATE", key)
            row = await cur.fetchone()
            attempts = (int(row["attempts"]) if row else 0) + 1
            delay = R.failure_delay(attempts, grace=grace, base_delay=base_delay, max_delay=max_delay)
            next_try = now + timedelta(seconds=delay)
            await conn.execute(
                "INSERT INTO failures (instance, workspace, incident, error, attempts, next_try, last_at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (instance, workspace, incident) DO UPDATE "
                "SET error = excluded.error, attempts = excluded.attempts, next_try = excluded.next_try, "
                "last_at = excluded.last_at",
                (*key, error[: R.ERROR_TEXT_MAX], attempts, next_try, now),
            )
        return next_try.astimezone(UTC)

    async def clear_failure(self, instance: str, workspace: str, incident: str) -> None:
        async with self._write() as conn:
            await conn.execute(f"DELETE FROM failures WHERE {BY_INCIDENT}", (instance, workspace, incident))

    async def failures(self, instance: str | None = None, workspace: str | None = None) -> list[Failure]:
        rows = await self._read(
            f"SELECT {FAILURE_COLUMNS} FROM failures WHERE (%(i)s::text IS NULL OR instance = %(i)s) "
            "AND (%(w)s::text IS NULL OR workspace = %(w)s) ORDER BY next_try, incident",
            {"i": instance, "w": workspace},
        )
        return [Failure(**row) for row in rows]

    async def due_failures(self, instance: str, workspace: str, now: datetime) -> list[Failure]:
        rows = await self._read(
            f"SELECT {FAILURE_COLUMNS} FROM failures WHERE instance = %s AND workspace = %s "
            "AND next_try <= %s ORDER BY next_try, incident",
            (instance, workspace, now),
        )
        return [Failure(**row) for row in rows]

    async def blocked(self, instance: str, workspace: str, now: datetime) -> set[str]:
        rows = await self._read(
            "SELECT incident FROM failures WHERE instance = %s AND workspace = %s AND next_try > %s",
            (instance, workspace, now),
        )
        return {row["incident"] for row in rows}

    # --- history ---------------------------------------------------------------------------------

    async def conflicts(self, *, limit: int = 100) -> list[dict[str, Any]]:
        return await self._read(
            "SELECT at, instance, workspace, incident, field, sentinel, servicenow, winner "
            "FROM conflict_log ORDER BY id DESC LIMIT %s",
            (limit,),
        )

    async def record_cycle(
        self,
        instance: str,
        workspace: str,
        *,
        started: datetime,
        finished: datetime,
        ok: bool,
        summary: Mapping[str, Any],
    ) -> None:
        R.check_aware(started)
        R.check_aware(finished)
        async with self._write() as conn:
            await conn.execute(
                "INSERT INTO cycles (instance, workspace, started, finished, ok, summary) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (instance, workspace, started, finished, ok, Jsonb(dict(summary))),
            )
            await conn.execute(
                """
                DELETE FROM cycles WHERE instance = %(i)s AND workspace = %(w)s
                AND id NOT IN (SELECT id FROM cycles WHERE instance = %(i)s AND workspace = %(w)s
                               ORDER BY id DESC LIMIT %(keep)s)
                AND id != (SELECT coalesce(max(id), -1) FROM cycles
                           WHERE instance = %(i)s AND workspace = %(w)s AND ok)
                """,
                {"i": instance, "w": workspace, "keep": R.CYCLES_KEPT},
            )

    async def last_cycle(self, instance: str, workspace: str) -> dict[str, Any] | None:
        rows = await self._read(
            "SELECT started, finished, ok, summary FROM cycles WHERE instance = %s AND workspace = %s "
            "ORDER BY id DESC LIMIT 1",
            (instance, workspace),
        )
        return rows[0] if rows else None

    async def last_ok_cycle(self, instance: str, workspace: str) -> datetime | None:
        rows = await self._read(
            "SELECT finished FROM cycles WHERE instance = %s AND workspace = %s AND ok "
            "ORDER BY id DESC LIMIT 1",
            (instance, workspace),
        )
        return rows[0]["finished"] if rows else None

    # --- whole-state copy (migrate-state) --------------------------------------------------------
    # Rows travel in the SQLite shadow's encoding (ISO-8601 UTC text, JSON text, 0/1), so the two
    # stores copy into each other whatever tables a later version adds on both sides.

    async def tables(self) -> dict[str, list[str]]:
        """Every data table and its columns (generated ids left out)."""
        return {table: list(cols) for table, cols in (await self._column_types()).items()}

    async def export_rows(self, table: str, columns: Sequence[str]) -> AsyncIterator[list[dict[str, Any]]]:
        """The rows of ``table`` in insertion order, a page at a time, in the SQLite encoding."""
        types = (await self._column_types())[table]
        order = "id" if await self._has_id(table) else ", ".join(columns)
        offset = 0
        while True:
            rows = await self._read(
                f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order} LIMIT %s OFFSET %s",
                (PAGE, offset),
            )
            if rows:
                yield [{c: to_text(row[c], types[c]) for c in columns} for row in rows]
            if len(rows) < PAGE:
                return
            offset += PAGE

    async def import_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows as :meth:`export_rows` gives them, in one transaction."""
        if not rows:
            return
        types = (await self._column_types())[table]
        columns = list(rows[0])
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
        values = [tuple(from_text(row[c], types[c]) for c in columns) for row in rows]
        async with self._write() as conn, conn.cursor() as cur:
            await cur.executemany(sql, values)

    async def count_rows(self, table: str) -> int:
        rows = await self._read(f"SELECT count(*) AS n FROM {table}")
        return int(rows[0]["n"])

    async def _column_types(self) -> dict[str, dict[str, str]]:
        rows = await self._read(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND NOT (table_name = ANY(%s)) "
            "AND NOT (column_name = 'id' AND coalesce(column_default, '') LIKE 'nextval(%%') "
            "ORDER BY table_name, ordinal_position",
            (list(NOT_COPIED),),
        )
        out: dict[str, dict[str, str]] = {}
        for row in rows:
            out.setdefault(row["table_name"], {})[row["column_name"]] = row["data_type"]
        return out

    async def _has_id(self, table: str) -> bool:
        rows = await self._read(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = %s AND column_name = 'id'",
            (table,),
        )
        return bool(rows)
