"""The SQLite shadow's state tables: marks, watermarks, failures, history, and the whole-state copy."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson

from agent.core.records import (
    UNSET,
    Failure,
    Unset,
    Watermark,
)
from agent.store.checks import (
    CYCLES_KEPT,
    ERROR_TEXT_MAX,
    check_side,
    failure_delay,
)
from agent.store.sqlite.db import Database
from agent.store.sqlite.rows import (
    CHUNK,
    dt,
    dt_req,
    failure_from_row,
    json_default,
    ts,
    ts_opt,
)

_FAILURE_COLUMNS = "instance, workspace, incident, error, attempts, next_try, last_at"
_BY_INCIDENT = "instance = ? AND workspace = ? AND incident = ?"


class StateTables(Database):
    """Marks, watermarks, failures, conflicts, cycles and table copies (:class:`~agent.store.base.Store`)."""

    async def get_mark(self, instance: str, workspace: str, name: str) -> tuple[str, datetime] | None:
        """A small named value of a workspace and when it was set, or None."""
        rows = await self._read(
            "SELECT value, at FROM marks WHERE instance = ? AND workspace = ? AND name = ?",
            (instance, workspace, name),
        )
        return (rows[0]["value"], dt_req(rows[0]["at"])) if rows else None

    async def set_mark(
        self, instance: str, workspace: str, name: str, value: str | None, *, now: datetime
    ) -> None:
        """Set a named value of a workspace (``None`` removes it)."""
        async with self._batch() as db:
            if value is None:
                await db.execute(
                    "DELETE FROM marks WHERE instance = ? AND workspace = ? AND name = ?",
                    (instance, workspace, name),
                )
            else:
                await db.execute(
                    "INSERT OR REPLACE INTO marks (instance, workspace, name, value, at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (instance, workspace, name, value, ts(now)),
                )

    # --- watermarks -----------------------------------------------------------------------------

    async def get_watermark(self, instance: str, workspace: str, side: str) -> Watermark:
        """The watermark of one side; all times None if it was never set."""
        check_side(side)
        rows = await self._read(
            "SELECT created, modified, moved_at, created_moved_at, modified_moved_at FROM watermarks "
            "WHERE instance = ? AND workspace = ? AND side = ?",
            (instance, workspace, side),
        )
        if not rows:
            return Watermark(instance, workspace, side, None, None, None)
        row = rows[0]
        return Watermark(
            instance,
            workspace,
            side,
            dt(row["created"]),
            dt(row["modified"]),
            dt(row["moved_at"]),
            dt(row["created_moved_at"]),
            dt(row["modified_moved_at"]),
        )

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
        """Move a watermark. Only the times passed change (``None`` clears one); ``moved_at`` always,
        and ``created_moved_at`` / ``modified_moved_at`` with the time they belong to."""
        check_side(side)
        values: dict[str, str | None] = {"moved_at": ts(moved_at)}
        if created is not UNSET:
            values["created"] = ts_opt(created)
            values["created_moved_at"] = ts(moved_at)
        if modified is not UNSET:
            values["modified"] = ts_opt(modified)
            values["modified_moved_at"] = ts(moved_at)
        updates = ", ".join(f"{col} = excluded.{col}" for col in values)
        cols = ", ".join(values)
        marks = ", ".join("?" * len(values))
        async with self._batch() as db:
            await db.execute(
                f"INSERT INTO watermarks (instance, workspace, side, {cols}) VALUES (?, ?, ?, {marks}) "
                f"ON CONFLICT (instance, workspace, side) DO UPDATE SET {updates}",
                (instance, workspace, side, *values.values()),
            )

    # --- failures -------------------------------------------------------------------------------

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
        """Count one more failure; the next try is ``now + min(max_delay, base_delay * 2**(attempts-1))``,
        or ``now`` for the first ``grace`` failures in a row (retried by the very next cycle; then
        the exponent counts from the first failure after the grace).

        Returns that next-try time.
        """
        key = (instance, workspace, incident)

        def job(db: sqlite3.Connection) -> datetime:
            rows = db.execute(f"SELECT attempts FROM failures WHERE {_BY_INCIDENT}", key).fetchall()
            attempts = (int(rows[0]["attempts"]) if rows else 0) + 1
            delay = failure_delay(attempts, grace=grace, base_delay=base_delay, max_delay=max_delay)
            next_try = now + timedelta(seconds=delay)
            db.execute(
                f"INSERT OR REPLACE INTO failures ({_FAILURE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, error[:ERROR_TEXT_MAX], attempts, ts(next_try), ts(now)),
            )
            return next_try

        next_try: datetime = await self._transact(job)
        return next_try

    async def clear_failure(self, instance: str, workspace: str, incident: str) -> None:
        """Forget the failures of one incident."""
        async with self._batch() as db:
            await db.execute(f"DELETE FROM failures WHERE {_BY_INCIDENT}", (instance, workspace, incident))

    async def failures(self, instance: str | None = None, workspace: str | None = None) -> list[Failure]:
        """Every failure row, optionally only of one instance and/or workspace, soonest retry first."""
        where: list[str] = []
        params: list[str] = []
        for col, value in (("instance", instance), ("workspace", workspace)):
            if value is not None:
                where.append(f"{col} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            f"SELECT {_FAILURE_COLUMNS} FROM failures{clause} ORDER BY next_try, incident", params
        )
        return [failure_from_row(row) for row in rows]

    async def due_failures(self, instance: str, workspace: str, now: datetime) -> list[Failure]:
        """Failures of a workspace whose next try is due (``next_try <= now``)."""
        rows = await self._read(
            f"SELECT {_FAILURE_COLUMNS} FROM failures WHERE instance = ? AND workspace = ? AND next_try <= ? "
            "ORDER BY next_try, incident",
            (instance, workspace, ts(now)),
        )
        return [failure_from_row(row) for row in rows]

    async def blocked(self, instance: str, workspace: str, now: datetime) -> set[str]:
        """Incidents still backing off (``next_try > now``): the engine skips them this cycle."""
        rows = await self._read(
            "SELECT incident FROM failures WHERE instance = ? AND workspace = ? AND next_try > ?",
            (instance, workspace, ts(now)),
        )
        return {row["incident"] for row in rows}

    # --- history --------------------------------------------------------------------------------

    async def conflicts(self, *, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent logged conflicts, newest first."""
        rows = await self._read(
            "SELECT at, instance, workspace, incident, field, sentinel, servicenow, winner "
            "FROM conflict_log ORDER BY id DESC LIMIT ?",
            (limit,),
        )
        return [{**dict(row), "at": dt_req(row["at"])} for row in rows]

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
        """Record one finished cycle; old cycles beyond :data:`CYCLES_KEPT` are pruned."""
        body = orjson.dumps(summary, default=json_default).decode()
        async with self._batch() as db:
            await db.execute(
                "INSERT INTO cycles (instance, workspace, started, finished, ok, summary) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (instance, workspace, ts(started), ts(finished), int(ok), body),
            )
            await db.execute(
                """
                DELETE FROM cycles WHERE instance = :i AND workspace = :w
                AND id NOT IN (SELECT id FROM cycles WHERE instance = :i AND workspace = :w
                               ORDER BY id DESC LIMIT :keep)
                AND id != (SELECT coalesce(max(id), -1) FROM cycles
                           WHERE instance = :i AND workspace = :w AND ok = 1)
                """,
                {"i": instance, "w": workspace, "keep": CYCLES_KEPT},
            )

    async def last_cycle(self, instance: str, workspace: str) -> dict[str, Any] | None:
        """The last recorded cycle as ``{"started", "finished", "ok", "summary"}``, or None."""
        rows = await self._read(
            "SELECT started, finished, ok, summary FROM cycles WHERE instance = ? AND workspace = ? "
            "ORDER BY id DESC LIMIT 1",
            (instance, workspace),
        )
        if not rows:
            return None
        row = rows[0]
        return {
            "started": dt_req(row["started"]),
            "finished": dt_req(row["finished"]),
            "ok": bool(row["ok"]),
            "summary": orjson.loads(row["summary"]),
        }

    async def last_ok_cycle(self, instance: str, workspace: str) -> datetime | None:
        """When the last successful cycle *finished*, or None if there never was one."""
        rows = await self._read(
            "SELECT finished FROM cycles WHERE instance = ? AND workspace = ? AND ok = 1 "
            "ORDER BY id DESC LIMIT 1",
            (instance, workspace),
        )
        return dt_req(rows[0]["finished"]) if rows else None

    # --- whole-state copy (migrate-state) ---------------------------------------------------------

    async def tables(self) -> dict[str, list[str]]:
        """Every data table and its columns (see :mod:`agent.store.transfer`)."""
        rows = await self._read(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%' "
            "AND name != 'schema_version' ORDER BY name"
        )
        out: dict[str, list[str]] = {}
        for row in rows:
            cols = await self._read(f"PRAGMA table_info({row['name']})")
            out[row["name"]] = [c["name"] for c in cols if not (c["pk"] and c["type"] == "INTEGER")]
        return out

    async def export_rows(self, table: str, columns: Sequence[str]) -> AsyncIterator[list[dict[str, Any]]]:
        """The rows of ``table`` in insertion order, a page at a time, as stored (text times, JSON text)."""
        after = -1
        while True:
            rows = await self._read(
                f"SELECT rowid AS rowid_, {', '.join(columns)} FROM {table} WHERE rowid > ? "
                "ORDER BY rowid LIMIT ?",
                (after, CHUNK),
            )
            if rows:
                yield [{c: row[c] for c in columns} for row in rows]
            if len(rows) < CHUNK:
                return
            after = rows[-1]["rowid_"]

    async def import_rows(self, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert rows as :meth:`export_rows` gives them, in one transaction."""
        if not rows:
            return
        columns = list(rows[0])
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        async with self._batch() as db:
            await db.executemany(sql, [tuple(row[c] for c in columns) for row in rows])

    async def count_rows(self, table: str) -> int:
        rows = await self._read(f"SELECT count(*) AS n FROM {table}")
        return int(rows[0]["n"])
