"""The SQLite shadow's connections: one writer with a group commit, one reader.

* **Writes** are queued to one writer task. It runs every write queued meanwhile in one
  transaction (a group commit), each write in a savepoint of its own so that one breaking a
  unique key fails alone, and answers the callers only once that transaction committed: a caller
  told its write is done can rely on it, as before. While a group runs, the next one gathers; a
  busy engine thus commits many pairs per transaction instead of queueing one transaction per
  pair behind one lock. A write whose caller was cancelled before its group started is dropped
  (it never happened); once started it commits or rolls back as a whole, never half.
* **Reads** use a second connection: in WAL mode a reader sees the last commit without waiting
  for the writer, so a read never queues behind writes (and reads its caller's own committed
  writes, since every caller waits for its commit).

:class:`StoreTimes` adds up how long each connection was busy executing statements in its
thread, how long the writer took from a group's start until it had the outcome back on the event
loop (its turnaround: the busy time plus the loop's delay in noticing), and how long writes waited
for their group, for the benchmark (``make bench``).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite

from agent.store.checks import duplicate
from agent.store.sqlite.rows import Batch, run_statements

Job = Callable[[sqlite3.Connection], Any]
"""A write: runs in the writer's thread, inside the group's transaction (never commits itself)."""


@dataclass
class StoreTimes:
    """Seconds the shadow's connections were busy, and callers waited for them, added up."""

    write_busy: float = 0.0  # groups executing in the writer's thread
    read_busy: float = 0.0  # reads executing in the reader's thread
    write_turnaround: float = 0.0  # a group's start until the writer task had its outcome
    waited: float = 0.0  # writes queued before their group started
    groups: int = 0
    writes: int = 0
    reads: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass
class _Queued:
    job: Job
    future: asyncio.Future[Any]
    queued: float = field(default_factory=time.monotonic)


def run_group(db: sqlite3.Connection, jobs: Sequence[Job]) -> tuple[list[tuple[bool, Any]], float]:
    """Runs in the writer's thread: the jobs in one transaction, each in its own savepoint; their
    outcomes and the seconds it took.

    A job that breaks a constraint is rolled back alone (its outcome is the error); any other
    error rolls the whole group back and is raised."""
    started = time.perf_counter()
    out: list[tuple[bool, Any]] = []
    db.execute("BEGIN IMMEDIATE")
    try:
        for job in jobs:
            db.execute("SAVEPOINT job")
            try:
                out.append((True, job(db)))
            except sqlite3.IntegrityError as exc:
                db.execute("ROLLBACK TO job")
                out.append((False, exc))
            db.execute("RELEASE job")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    return out, time.perf_counter() - started


def _timed_fetchall(db: sqlite3.Connection, sql: str, params: Any) -> tuple[list[sqlite3.Row], float]:
    started = time.perf_counter()
    rows = db.execute(sql, params).fetchall()
    return rows, time.perf_counter() - started


class Database:
    """The two connections and their queue; the tables' methods build on :meth:`_read`,
    :meth:`_batch` and :meth:`_transact`."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection, path: Path) -> None:
        self._db = db
        self._reader = reader
        self.path = path
        self.times = StoreTimes()
        self._queue: list[_Queued] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    # --- reading --------------------------------------------------------------------------------

    async def _read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        # aiosqlite has no public call for "run this in the connection's thread".
        rows, spent = await self._reader._execute(_timed_fetchall, self._reader._conn, sql, params)  # type: ignore[no-untyped-call]
        self.times.read_busy += spent
        self.times.reads += 1
        return list(rows)

    # --- writing --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _batch(self) -> AsyncIterator[Batch]:
        """One write whose statements need no results: collected, then committed by the writer
        (see the module docstring). Rolled back as a whole on any error."""
        batch = Batch()
        yield batch
        if batch.statements:
            statements = batch.statements
            await self._transact(lambda db: run_statements(db, statements))

    async def _transact(self, job: Job) -> Any:
        """Run ``job`` in the writer's thread inside a committed transaction; its result once the
        transaction committed. A broken unique key raises :class:`~agent.errors.DuplicateKey`."""
        if self._closing:
            raise RuntimeError("the state database is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(job, future))
        self._start_writer()
        self._wake.set()
        try:
            return await future
        except sqlite3.IntegrityError as exc:
            raise duplicate(str(exc)) from exc

    def _start_writer(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._writer
        if task is None or task.done() or task.get_loop() is not loop:
            self._wake = asyncio.Event()
            self._writer = loop.create_task(self._write_groups(), name="shadow-writer")

    async def _write_groups(self) -> None:
        """The writer task: one transaction per group of queued writes, until closed."""
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                group, self._queue = self._queue, []
                await self._run(group)
        finally:
            error = RuntimeError("the state database's writer stopped")
            for q in self._queue:
                if not q.future.done():
                    q.future.set_exception(error)
            self._queue = []

    async def _run(self, queued: Sequence[_Queued]) -> None:
        group = [q for q in queued if not q.future.cancelled()]
        if not group:
            return
        started = time.monotonic()
        self.times.waited += sum(started - q.queued for q in group)
        self.times.groups += 1
        self.times.writes += len(group)
        try:
            outcomes, spent = await self._db._execute(run_group, self._db._conn, [q.job for q in group])  # type: ignore[no-untyped-call]
        except BaseException as exc:
            stopped = RuntimeError("the state database's writer stopped")
            failure = exc if isinstance(exc, Exception) else stopped
            for q in group:
                if not q.future.done():
                    q.future.set_exception(failure)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self.times.write_turnaround += time.monotonic() - started
        self.times.write_busy += spent
        for q, (ok, value) in zip(group, outcomes, strict=True):
            if q.future.done():
                continue
            if ok:
                q.future.set_result(value)
            else:
                q.future.set_exception(value)

    async def _close_connections(self) -> None:
        """Let the writer finish what is queued, then close both connections."""
        self._closing = True
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            if writer.get_loop() is asyncio.get_running_loop():
                self._wake.set()
                await writer
            else:
                writer.cancel()
        await self._reader.close()
        await self._db.close()
