"""The SQLite shadow's connection: one per store, used by one event loop, every call under one
lock so a transaction is never interleaved with another coroutine's statements."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from agent.store.checks import duplicate
from agent.store.sqlite.rows import Batch, run_batch


class Database:
    """The connection and its short transactions; the tables' methods build on these."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self.path = path

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
