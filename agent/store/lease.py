"""One leader among agents sharing a PostgreSQL state: a lease with a fencing epoch.

The ``lease`` row names the leader (an id per process, host, pid, since when) and when its
lease expires, in the *database server's* clock, so the agents' clocks never need to agree.

* **Take over**: in one transaction, with the row locked, an agent takes the lease when it is
  free or expired, raising the ``epoch`` by one. The store is then fenced with that epoch
  (:meth:`agent.store.postgres.store.PostgresStore.fence`): every later write is refused once
  another agent has taken a newer epoch, so a paused or partitioned old leader cannot write
  state after it lost the lease.
* **Renew** every ``ttl / 4``: the leader pushes ``expires_at`` to ``now() + ttl``.
* **Stop in time**: the leader counts its lease from the moment it *sent* the last successful
  take-over or renewal, on its own monotonic clock, and considers itself leader only until
  ``sent + ttl - margin``. The database stamps the expiry only after that request arrived, so
  the old leader's own deadline always comes before any standby can take the lease, even when
  it cannot reach the database at all (a partition, a hung connection).
* **Release** on a clean stop: the lease expires at once and a standby takes over right away.

Why not a session advisory lock alone: PostgreSQL frees it when the server notices the session
is gone, which happens just the same when only the network between leader and database broke;
the old leader would then still act as leader while the standby already did. The expiry is
what both sides can count on.

:func:`timings` turns ``failover_timeout`` into the lease's numbers so that a standby takes over
within it after the leader died, and a leader that cannot renew stops within it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg

from agent.errors import LeaseLost, StoreUnavailable
from agent.store.postgres import schema as pg_schema
from agent.store.postgres.connect import connect, redact

if TYPE_CHECKING:
    from agent.store.base import Secret

_Conn = psycopg.AsyncConnection[dict[str, Any]]


@dataclass(frozen=True)
class Timings:
    """Seconds: how long a lease lasts, how often the leader renews and a standby looks."""

    ttl: float
    renew_every: float
    poll_every: float
    margin: float
    query_timeout: float


def timings(failover_timeout: float) -> Timings:
    """Split ``failover_timeout`` so that expiry (``ttl``) plus a standby's look (``poll_every``)
    stays below it; each lease query gives up after one renewal period."""
    ttl = failover_timeout * 2 / 3
    renew = ttl / 4
    return Timings(
        ttl=ttl, renew_every=renew, poll_every=failover_timeout / 6, margin=ttl / 8, query_timeout=renew
    )


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds (or last held) the lease, as the database says."""

    epoch: int
    host: str
    pid: int
    since: datetime
    expires_at: datetime
    live: bool  # not expired at the time of reading


@dataclass(frozen=True)
class AgentRow:
    """One agent's last word on its role (``leader`` / ``standby``)."""

    host: str
    pid: int
    role: str
    started: datetime
    seen: datetime


class Lease:
    """The lease as seen by one agent process. Not shared between event loops."""

    def __init__(
        self,
        url: str,
        password: Secret | None,
        timing: Timings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.timing = timing
        self.id = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.epoch: int | None = None
        self.deadline = 0.0
        self.transitions = 0
        self._password = password
        self._clock = clock
        self._conn: _Conn | None = None
        self._lock = asyncio.Lock()
        self._started: datetime | None = None

    # --- the leader's view -----------------------------------------------------------------------

    @property
    def held(self) -> bool:
        """True while this agent may act as leader (its own deadline has not passed)."""
        return self.epoch is not None and self._clock() < self.deadline

    def seconds_left(self) -> float:
        return max(0.0, self.deadline - self._clock()) if self.epoch is not None else 0.0

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this agent may still write (the remote write gate)."""
        if not self.held:
            raise LeaseLost("this agent no longer holds the lease; another agent may lead now")

    async def try_acquire(self) -> bool:
        """Take the lease if it is free, expired or already ours; True when we lead now."""
        sent = self._clock()
        row = await self._query(
            """
            WITH current AS (SELECT * FROM lease WHERE name = 'leader' FOR UPDATE)
            UPDATE lease SET
                epoch = CASE WHEN current.holder = %(id)s THEN current.epoch ELSE current.epoch + 1 END,
                since = CASE WHEN current.holder = %(id)s THEN current.since ELSE clock_timestamp() END,
                holder = %(id)s, host = %(host)s, pid = %(pid)s,
                renewed_at = clock_timestamp(),
                expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
            FROM current
            WHERE lease.name = 'leader'
              AND (current.holder = %(id)s OR current.holder = '' OR current.expires_at < clock_timestamp())
            RETURNING lease.epoch
            """,
            {"id": self.id, "host": self.host, "pid": self.pid, "ttl": self.timing.ttl},
        )
        if row is None:
            self.epoch = None
            return False
        if self.epoch != int(row["epoch"]):
            self.transitions += 1
        self.epoch = int(row["epoch"])
        self.deadline = sent + self.timing.ttl - self.timing.margin
        return True

    async def renew(self) -> bool:
        """Push our expiry out; False (and no longer leader) when another agent has the lease."""
        if self.epoch is None:
            return False
        sent = self._clock()
        row = await self._query(
            "UPDATE lease SET renewed_at = clock_timestamp(), "
            "expires_at = clock_timestamp() + make_interval(secs => %(ttl)s) "
            "WHERE name = 'leader' AND holder = %(id)s AND epoch = %(epoch)s RETURNING epoch",
            {"id": self.id, "epoch": self.epoch, "ttl": self.timing.ttl},
        )
        if row is None:
            self.lost()
            return False
        self.deadline = sent + self.timing.ttl - self.timing.margin
        return True

    def lost(self) -> None:
        """Forget the lease locally (a renewal failed for good, or the deadline passed)."""
        if self.epoch is not None:
            self.transitions += 1
        self.epoch = None
        self.deadline = 0.0

    async def release(self) -> None:
        """Give the lease up now (clean stop): a standby may take it at once."""
        epoch, self.epoch = self.epoch, None
        if epoch is not None:
            self.transitions += 1
            await self._query(
                "UPDATE lease SET holder = '', expires_at = clock_timestamp() "
                "WHERE name = 'leader' AND holder = %(id)s AND epoch = %(epoch)s RETURNING epoch",
                {"id": self.id, "epoch": epoch},
            )

    # --- what everyone may read ------------------------------------------------------------------

    async def holder(self) -> LeaseHolder | None:
        """The current (or last) leader, or None if no agent ever led."""
        row = await self._query(
            "SELECT epoch, host, pid, since, expires_at, expires_at > clock_timestamp() AND holder <> '' "
            "AS live FROM lease WHERE name = 'leader' AND epoch > 0"
        )
        return LeaseHolder(**row) if row else None

    async def seconds_to_expiry(self) -> float:
        """How long until the current lease expires (0 when it already has)."""
        row = await self._query(
            "SELECT greatest(0, extract(epoch FROM expires_at - clock_timestamp()))::float8 AS left "
            "FROM lease WHERE name = 'leader'"
        )
        return float(row["left"]) if row else 0.0

    async def announce(self, role: str) -> None:
        """Record this agent's role for ``status`` (expires like a lease if we vanish)."""
        await self._query(
            """
            INSERT INTO agents (id, host, pid, role, started, seen, expires)
            VALUES (%(id)s, %(host)s, %(pid)s, %(role)s, clock_timestamp(), clock_timestamp(),
                    clock_timestamp() + make_interval(secs => %(ttl)s))
            ON CONFLICT (id) DO UPDATE SET role = excluded.role, seen = excluded.seen,
                expires = excluded.expires
            RETURNING id
            """,
            {"id": self.id, "host": self.host, "pid": self.pid, "role": role, "ttl": 3 * self.timing.ttl},
        )

    async def withdraw(self) -> None:
        """Remove this agent's role row (clean stop)."""
        await self._query("DELETE FROM agents WHERE id = %(id)s RETURNING id", {"id": self.id})

    async def agents(self) -> list[AgentRow]:
        """Agents seen recently, leader first; rows of vanished agents are dropped here."""
        await self._query("DELETE FROM agents WHERE expires < clock_timestamp() RETURNING id")
        conn = await self._connection()
        cur = await conn.execute("SELECT host, pid, role, started, seen FROM agents ORDER BY role, started")
        return [AgentRow(**row) for row in await cur.fetchall()]

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                await conn.close()

    # --- plumbing --------------------------------------------------------------------------------

    async def _connection(self) -> _Conn:
        if self._conn is None or self._conn.closed:
            conn = await connect(self.url, self._password, application_name="sentinel-snow-sync lease")
            try:
                await pg_schema.migrate(conn, redact(self.url))  # the lease may come before the store
                # The server gives up on a lease statement first (a row lock held by a leader cut
                # off mid-commit), so the client never has to cancel one over a broken path.
                limit = round(self.timing.query_timeout * 1000 * 0.8)
                await conn.execute(f"SET lock_timeout = {limit:d}")
                await conn.execute(f"SET statement_timeout = {limit:d}")
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
        return self._conn

    async def _query(self, sql: str, params: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """One statement with a deadline; a failure drops the connection (the next call reconnects)."""
        async with self._lock:
            try:
                async with asyncio.timeout(self.timing.query_timeout):
                    conn = await self._connection()
                    cur = await conn.execute(sql, params)
                    return await cur.fetchone() if cur.description else None
            except (TimeoutError, psycopg.Error) as exc:
                self._drop()
                reason = "timed out" if isinstance(exc, TimeoutError) else str(exc).strip().splitlines()[0]
                raise StoreUnavailable(f"lease on {redact(self.url)}: {reason}") from None

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()  # no network round trip: the peer may be unreachable
