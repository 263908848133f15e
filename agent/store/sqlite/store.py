"""The shadow: a SQLite copy of what both sides last agreed on, per linked incident pair.

The engine writes here only *after* the remote write succeeded, one atomic commit per incident
pair (:meth:`Shadow.save_link`; many pairs' commits share one transaction, each in a savepoint
of its own, and each caller returns only once it committed: :mod:`.db`). If the agent dies
between the remote write and the commit, the next cycle sees "changed on both sides, now equal"
and only records it (see ``agent.core.merge``), so an interrupted run is harmless.

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

import sqlite3
from pathlib import Path

import aiosqlite

from agent.errors import ConfigError
from agent.store.sqlite.links import LinkTables
from agent.store.sqlite.schema import chmod_private, create_private, migrate
from agent.store.sqlite.state import StateTables


class Shadow(LinkTables, StateTables):
    """The shadow store. Create with ``await Shadow.open(path)``; use as an async context manager.

    Two connections (:mod:`.db`): writes are group-committed by one writer task, reads use a
    connection of their own and never wait for writes. Used by one event loop at a time.
    """

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
        reader: aiosqlite.Connection | None = None
        try:
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA busy_timeout = 5000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await migrate(db, path)
            reader = await aiosqlite.connect(path, isolation_level=None)
            reader.row_factory = sqlite3.Row
            await reader.execute("PRAGMA busy_timeout = 5000")
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as exc:
            if reader is not None:
                await reader.close()
            await db.close()
            if isinstance(exc, sqlite3.DatabaseError):
                raise ConfigError([f"state database {path}: {exc}"]) from exc
            raise
        chmod_private(path)
        return cls(db, reader, path)

    @property
    def location(self) -> str:
        """``sqlite:PATH``, for messages and ``status``."""
        return f"sqlite:{self.path}"

    async def close(self) -> None:
        """Finish the queued writes and close the connections (safe to call twice)."""
        await self._close_connections()

    async def __aenter__(self) -> Shadow:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        """The schema version of the open database."""
        rows = await self._read("SELECT version FROM schema_version")
        return int(rows[0]["version"])
