"""The shadow: a SQLite copy of what both sides last agreed on, per linked incident pair.

The engine writes here only *after* the remote write succeeded, one short transaction per
incident pair (:meth:`Shadow.save_link`). If the agent dies between the remote write and the
commit, the next cycle sees "changed on both sides, now equal" and only records it (see
``agent.core.merge``), so an interrupted run is harmless.

Tables (every key starts with the ServiceNow ``instance``, then the Sentinel ``workspace``):

* ``links``: one row per Sentinel incident <-> ServiceNow record; ``(instance, sys_id)`` is unique,
  so one ServiceNow record is never linked to two incidents.
* ``comment_links``: which Sentinel comment became which journal entry (or the reverse); a journal
  entry and a Sentinel comment are each linked at most once.
* ``watermarks``: per side, the newest modification time already seen (``modified``), the
  creation floor (``created``: no ticket for a Sentinel incident created earlier), and when
  each last moved.
* ``failures``: incidents whose sync failed, with exponential backoff before the next try.
* ``conflict_log`` and ``cycles``: bounded history for ``status`` and health checks.
* ``unlinked``: incidents an operator unlinked (tombstones); never re-created or re-adopted.

Storage: WAL journal, ``synchronous=NORMAL`` (a power cut may lose the last commits but never
corrupts; lost commits heal as described above), the database file created ``0600``. Datetimes
are ISO-8601 UTC text with microseconds (so text order is time order); mappings are JSON.
Opening an older database applies the missing migrations (:mod:`.schema`); a newer one is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from agent.core.records import (
    UNSET,
    CommentLink,
    Failure,
    Link,
    Tombstone,
    Unset,
    Watermark,
)
from agent.errors import ConfigError
from agent.store.checks import (
    CONFLICTS_KEPT,
    CYCLES_KEPT,
    ERROR_TEXT_MAX,
    check_side,
    check_state,
    duplicate,
)
from agent.store.sqlite.rows import (
    CHUNK,
    Batch,
    chunks,
    comment_from_row,
    comment_row,
    dt,
    dt_req,
    failure_from_row,
    json_default,
    link_from_row,
    link_row,
    run_batch,
    ts,
    ts_opt,
)
from agent.store.sqlite.schema import chmod_private, create_private, migrate

_LINK_COLUMNS = (
    "instance, workspace, incident, sys_id, number, fields, sentinel_etag, snow_mod_count, open, "
    "alerts_posted, entities_posted, created_at, enrich_after, extra"
)
_UPSERT_LINK = f"""
    INSERT INTO links ({_LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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
_FAILURE_COLUMNS = "instance, workspace, incident, error, attempts, next_try, last_at"


class Shadow:
    """The shadow store. Create with ``await Shadow.open(path)``; use as an async context manager.

    One connection, used by one event loop; every call takes an internal lock so that a
    transaction is never interleaved with another coroutine's statements.
    """

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        """Use :meth:`open`."""
        self._db = db
        self._lock = asyncio.Lock()
        self.path = path

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str | Path) -> Shadow:
        """Open (creating if needed) and migrate the database at ``path``.

        Raises :class:`ConfigError` when the file is not a usable database or was written by a
        newer agent.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        create_private(path)
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError([f"state database {path}: cannot open: {exc}"]) from exc
        try:
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA busy_timeout = 5000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await migrate(db, path)
        except BaseException as exc:
            await db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise ConfigError([f"state database {path}: {exc}"]) from exc
            raise
        chmod_private(path)
        return cls(db, path)

    @property
    def location(self) -> str:
        """``sqlite:PATH``, for messages and ``status``."""
        return f"sqlite:{self.path}"

    async def close(self) -> None:
        """Close the connection (safe to call twice)."""
        async with self._lock:
            await self._db.close()

    async def __aenter__(self) -> Shadow:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        """The schema version of the open database."""
        rows = await self._read("SELECT version FROM schema_version")
        return int(rows[0]["version"])

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
        async with self._write() as db:
            rows = list(await db.execute_fetchall(f"SELECT * FROM links WHERE {_BY_INCIDENT}", key))
            link = link_from_row(rows[0]) if rows else None
            await db.execute(
                "INSERT OR REPLACE INTO unlinked (instance, workspace, incident, sys_id, number, reason, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, link.sys_id if link else "", link.number if link else "", reason, ts(now)),
            )
            for table in ("links", "comment_links", "failures"):
                await db.execute(f"DELETE FROM {table} WHERE {_BY_INCIDENT}", key)
        return link

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
        async with self._write() as db:
            key = (instance, workspace, incident)
            cursor = await db.execute(f"DELETE FROM unlinked WHERE {_BY_INCIDENT}", key)
            return cursor.rowcount > 0

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
        async with self._write() as db:
            rows = await db.execute_fetchall(f"SELECT attempts FROM failures WHERE {_BY_INCIDENT}", key)
            attempts = (int(next(iter(rows))["attempts"]) if rows else 0) + 1
            # The exponent is capped so a long-failing incident cannot overflow the float.
            over = attempts - grace
            delay = 0.0 if over <= 0 else min(max_delay, base_delay * 2.0 ** min(over - 1, 64))
            next_try = now + timedelta(seconds=delay)
            await db.execute(
                f"INSERT OR REPLACE INTO failures ({_FAILURE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (*key, error[:ERROR_TEXT_MAX], attempts, ts(next_try), ts(now)),
            )
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

    # --- plumbing -------------------------------------------------------------------------------

    async def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        async with self._lock:
            return list(await self._db.execute_fetchall(sql, params))

    @contextlib.asynccontextmanager
    async def _batch(self) -> AsyncIterator[Batch]:
        """One short write transaction whose statements need no results: collected, then run
        as a whole in the database thread in a single hand-off (each statement awaited on its
        own costs a thread switch while the lock is held and every other shadow call waits).

        Rolled back on any error. A caller cancelled while it runs does not stop it: the
        transaction commits or rolls back as a whole, never half.
        """
        batch = Batch()
        yield batch
        if not batch.statements:
            return
        async with self._lock:
            try:
                # aiosqlite has no public call for "run this in the connection's thread".
                await self._db._execute(run_batch, self._db._conn, batch.statements)  # type: ignore[no-untyped-call]
            except sqlite3.IntegrityError as exc:
                raise duplicate(str(exc)) from exc

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        """One short write transaction; rolled back on any error, including cancellation."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.IntegrityError):
                    raise duplicate(str(exc)) from exc
                raise


# --- module helpers -----------------------------------------------------------------------------
