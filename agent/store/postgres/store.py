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

from types import TracebackType
from typing import TYPE_CHECKING

import psycopg

from agent.errors import ConfigError
from agent.store.postgres import schema as pg_schema
from agent.store.postgres.connect import connect, first_line, redact
from agent.store.postgres.links import LinkTables
from agent.store.postgres.state import StateTables

if TYPE_CHECKING:
    from agent.store.base import Secret


class PostgresStore(LinkTables, StateTables):
    """Open with ``await PostgresStore.open(url, password=...)``; an async context manager."""

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
