"""The state store on PostgreSQL (``[agent] state = postgresql://user@host/dbname``).

Same contract as the SQLite shadow (see :mod:`agent.store.base`); what differs:

* One connection (psycopg 3 over libpq, so ``sslmode``, ``sslrootcert``, ``~/.pgpass``, service
  files and every other libpq option in the URL behave as in ``psql``), used by one event loop
  under a lock, in UTC, with TCP keepalives so a silently dead peer is noticed.
* A lost connection makes the call fail with :class:`StoreUnavailable` (the cycle stops and the
  next one reconnects); nothing is half-written because every write is one transaction.
* Fencing: once :meth:`PostgresStore.fence` gave it the lease's epoch, every write transaction
  first reads the lease row (``FOR SHARE``, so a takeover waits for it) and is refused with
  :class:`~agent.errors.Fenced` when another agent took the lease since.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.json import Jsonb

from agent.core.records import UNSET, CommentLink, Failure, Link, Tombstone, Unset, Watermark
from agent.errors import ConfigError, Fenced, StoreUnavailable
from agent.store import checks as R
from agent.store.postgres import schema as pg_schema
from agent.store.postgres.connect import Conn, connect, first_line, redact
from agent.store.postgres.rows import (
    BY_INCIDENT,
    FAILURE_COLUMNS,
    INSERT_COMMENT,
    NOT_COPIED,
    UPSERT_LINK,
    comment_from_row,
    comment_params,
    from_text,
    link_from_row,
    link_params,
    to_text,
    unique,
)

if TYPE_CHECKING:
    from agent.store.base import Secret

PAGE = 500


class PostgresStore:
    """Open with ``await PostgresStore.open(url, password=...)``; an async context manager."""

    def __init__(self, url: str, password: Secret | None, conn: Conn) -> None:
        self.url = url
        self._password = password
        self._conn: Conn | None = conn
        self._lock = asyncio.Lock()
        self.epoch: int | None = None
        self._stall_ms = 0  # idle_in_transaction_session_timeout while fenced (0: the server's)
        self._stall_set: Conn | None = None  # the connection it was set on

    @classmethod
    async def open(cls, url: str, *, password: Secret | None = None) -> PostgresStore:
        """Connect and migrate. An unreachable database raises :class:`StoreUnavailable` (exit 1:
        a service manager restarts the agent), a newer one :class:`ConfigError`."""
        conn = await connect(url, password)
        try:
            await pg_schema.migrate(conn, redact(url))
        except psycopg.Error as exc:
            await conn.close()
            raise ConfigError([f"[agent] state: {redact(url)}: {first_line(exc)}"]) from None
        except BaseException:
            await conn.close()
            raise
        return cls(url, password, conn)

    @property
    def location(self) -> str:
        return redact(self.url)

    def fence(self, epoch: int | None, stall_limit: float = 0.0) -> None:
        """Refuse every later write unless the lease still has ``epoch`` (None: no fencing).

        ``stall_limit`` (seconds) makes the server end this agent's session when one of its
        transactions stalls that long: a write cut off mid-transaction by a partition holds a share
        lock on the lease row, and would otherwise keep the standby from taking over.
        """
        self.epoch = epoch
        self._stall_ms = round(stall_limit * 1000)

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    async def __aenter__(self) -> PostgresStore:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def schema_version(self) -> int:
        rows = await self._read("SELECT version FROM schema_version")
        return int(rows[0]["version"])

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
            over = attempts - grace  # the first `grace` failures retry at once
            delay = 0.0 if over <= 0 else min(max_delay, base_delay * 2.0 ** min(over - 1, 64))
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

    # --- plumbing --------------------------------------------------------------------------------

    async def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = await connect(self.url, self._password)
        return self._conn

    async def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        async with self._lock, _translated(self):
            conn = await self._connection()
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[Conn]:
        """One transaction, fenced by the lease epoch when one is set; rolled back on any error."""
        async with self._lock, _translated(self):
            conn = await self._connection()
            if self._stall_ms and self._stall_set is not conn:
                await conn.execute(f"SET idle_in_transaction_session_timeout = {self._stall_ms:d}")
                self._stall_set = conn
            async with conn.transaction():
                if self.epoch is not None:
                    cur = await conn.execute("SELECT epoch FROM lease WHERE name = 'leader' FOR SHARE")
                    row = await cur.fetchone()
                    current = int(row["epoch"]) if row else -1
                    if current != self.epoch:
                        raise Fenced(self.epoch, current)
                yield conn


@contextlib.asynccontextmanager
async def _translated(store: PostgresStore) -> AsyncIterator[None]:
    """psycopg's errors as the store's: a duplicate key, or an unavailable database."""
    try:
        yield
    except psycopg.errors.UniqueViolation as exc:
        raise R.duplicate(exc.diag.constraint_name or first_line(exc)) from None
    except (psycopg.OperationalError, psycopg.errors.IdleInTransactionSessionTimeout) as exc:
        # The second: the server ended a session whose transaction stalled (see fence()).
        conn, store._conn = store._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        raise StoreUnavailable(f"state database {store.location}: {first_line(exc)}") from None
