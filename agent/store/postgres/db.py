"""The PostgreSQL store's connection: one per store, under a lock, reconnecting after a loss, every
write one transaction fenced by the lease epoch (see :mod:`agent.store.postgres.store`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from agent.errors import Fenced, StoreUnavailable
from agent.store import checks as R
from agent.store.postgres.connect import Conn, connect, first_line, redact

if TYPE_CHECKING:
    from agent.store.base import Secret


class Database:
    """The connection and its transactions; the tables' methods build on these."""

    def __init__(self, url: str, password: Secret | None, conn: Conn) -> None:
        self.url = url
        self._password = password
        self._conn: Conn | None = conn
        self._lock = asyncio.Lock()
        self.epoch: int | None = None
        self._stall_ms = 0  # idle_in_transaction_session_timeout while fenced (0: the server's)
        self._stall_set: Conn | None = None  # the connection it was set on

    @property
    def location(self) -> str:
        return redact(self.url)

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
async def _translated(store: Database) -> AsyncIterator[None]:
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
