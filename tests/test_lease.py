"""The leader lease and fencing on a real PostgreSQL server (tests/pg.py), no mocks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import trustme

from agent.config import Secret
from agent.errors import Fenced, LeaseLost, StoreUnavailable
from agent.store import StoreTarget, open_store
from agent.store.lease import Lease, Timings, timings
from agent.store.postgres.store import PostgresStore
from tests.contract.store import INST, WS, make_link
from tests.pg import Cluster

FAST = Timings(ttl=1.0, renew_every=0.25, poll_every=0.2, margin=0.125, query_timeout=0.5)


class Clock:
    """A monotonic clock the test moves (the lease's local deadline); the server's stays real."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def database(pg_cluster: Cluster) -> Iterator[tuple[str, Secret]]:
    url, _user, password = pg_cluster.database("lease")
    yield url, Secret(password)


@pytest.fixture
async def store(database: tuple[str, Secret]) -> AsyncIterator[PostgresStore]:
    url, password = database
    s = await open_store(StoreTarget("postgresql", url, password))
    assert isinstance(s, PostgresStore)
    async with s:
        yield s


def lease(database: tuple[str, Secret], clock: Clock | None = None, timing: Timings = FAST) -> Lease:
    url, password = database
    return Lease(url, password, timing, clock=clock or Clock())


def test_timings_fit_inside_failover_timeout() -> None:
    t = timings(30.0)
    assert t.ttl + t.poll_every < 30.0  # a standby sees the expiry within the failover timeout
    assert t.renew_every * 3 < t.ttl - t.margin  # three renewals may fail before the leader stops
    assert (t.ttl, t.renew_every, t.poll_every) == (20.0, 5.0, 5.0)


async def test_one_leader_at_a_time_and_takeover_after_expiry(
    store: PostgresStore, database: tuple[str, Secret]
) -> None:
    a, b = lease(database), lease(database)
    try:
        assert await a.try_acquire() and a.held and a.epoch == 1
        assert not await b.try_acquire() and not b.held
        holder = await b.holder()
        assert holder is not None and (holder.pid, holder.epoch, holder.live) == (a.pid, 1, True)
        assert await a.try_acquire() and a.epoch == 1  # re-acquiring our own lease keeps the epoch
        await asyncio.sleep(FAST.ttl + 0.1)  # a stops renewing: its lease expires on the server
        assert await b.try_acquire() and b.epoch == 2
        assert not await a.renew() and not a.held  # the old leader learns it lost
        assert a.transitions == 2 and b.transitions == 1
    finally:
        await a.close()
        await b.close()


async def test_a_leader_stops_on_its_own_deadline_without_reaching_the_database(
    database: tuple[str, Secret], store: PostgresStore
) -> None:
    clock = Clock()
    a = lease(database, clock)
    try:
        assert await a.try_acquire()
        clock.now += FAST.ttl - FAST.margin - 0.01
        a.check()  # still in time
        clock.now += 0.02
        assert not a.held
        with pytest.raises(LeaseLost, match="no longer holds the lease"):
            a.check()
    finally:
        await a.close()


async def test_a_commit_of_an_old_epoch_is_refused(
    database: tuple[str, Secret], store: PostgresStore
) -> None:
    a, b = lease(database), lease(database)
    try:
        assert await a.try_acquire()
        store.fence(a.epoch)
        await store.save_link(make_link("inc-1", "1" * 32))
        await a.release()  # a clean stop: the standby takes over at once
        assert await b.try_acquire() and b.epoch == 2
        with pytest.raises(Fenced, match="superseded by epoch 2"):
            await store.save_link(make_link("inc-2", "2" * 32))
        with pytest.raises(Fenced, match="lease epoch 1 was superseded"):
            await store.record_failure(INST, WS, "inc-1", "x", now=datetime.now(UTC))
        assert await store.count_links(INST, WS) == (1, 1)  # reads still work; nothing was written
        store.fence(b.epoch)
        await store.save_link(make_link("inc-2", "2" * 32))
    finally:
        await a.close()
        await b.close()


async def test_a_takeover_waits_for_a_commit_in_flight(
    database: tuple[str, Secret], store: PostgresStore
) -> None:
    a, b = lease(database), lease(database)
    try:
        assert await a.try_acquire()
        store.fence(a.epoch)
        await a.release()
        async with store._write() as conn:  # the old leader's commit holds the lease row FOR SHARE
            await conn.execute("SELECT pg_sleep(0.3)")
            take = asyncio.create_task(b.try_acquire())
            await asyncio.sleep(0.1)
            assert not take.done()  # the takeover queues behind the commit
        assert await take
    finally:
        await a.close()
        await b.close()


async def test_agents_announce_their_roles(database: tuple[str, Secret], store: PostgresStore) -> None:
    a, b = lease(database), lease(database)
    try:
        await a.announce("leader")
        await b.announce("standby")
        roles = {(row.pid, row.role) for row in await a.agents()}
        assert roles == {(a.pid, "leader"), (b.pid, "standby")}
        await b.withdraw()
        assert [row.role for row in await a.agents()] == ["leader"]
    finally:
        await a.close()
        await b.close()


async def test_an_unreachable_database_is_reported_not_hung(pg_cluster: Cluster) -> None:
    port = pg_cluster.port + 1 if pg_cluster.port < 65535 else pg_cluster.port - 1
    dead = Lease(f"postgresql://x@127.0.0.1:{port}/x", None, FAST)
    with pytest.raises(StoreUnavailable, match=f"postgresql://x@127.0.0.1:{port}/x: cannot connect"):
        await dead.try_acquire()
    await dead.close()


async def test_tls_verify_full_with_sslrootcert(pg_cluster: Cluster, tmp_path: Path) -> None:
    url, _user, password = pg_cluster.database("tls")
    by_name = url.replace("127.0.0.1", "localhost")  # verify-full checks the name in the certificate
    verified = f"{by_name}?sslmode=verify-full&sslrootcert={pg_cluster.ca_file}"
    async with await open_store(StoreTarget("postgresql", verified, Secret(password))) as store:
        assert isinstance(store, PostgresStore)
        [row] = await store._read("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert row["ssl"] is True
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    wrong = f"{by_name}?sslmode=verify-full&sslrootcert={other_ca}"
    with pytest.raises(StoreUnavailable, match="certificate verify failed") as caught:
        await open_store(StoreTarget("postgresql", wrong, Secret(password)))
    assert password not in str(caught.value)


async def test_a_commit_stalled_by_a_partition_does_not_block_the_takeover(
    database: tuple[str, Secret], store: PostgresStore
) -> None:
    a, b = lease(database), lease(database)
    try:
        assert await a.try_acquire()
        store.fence(a.epoch, stall_limit=0.4)
        await a.release()
        loop = asyncio.get_running_loop()
        with pytest.raises(StoreUnavailable, match="idle-in-transaction timeout"):
            async with store._write():  # holds the lease row FOR SHARE, then goes silent
                started = loop.time()
                took = None
                while took is None and loop.time() - started < 5:
                    with contextlib.suppress(StoreUnavailable):  # lock_timeout: the row is held
                        if await b.try_acquire():
                            took = loop.time() - started
                assert took is not None and 0.3 < took < 2.0, took  # the server ended the stalled session
                await asyncio.sleep(0)
        assert b.epoch == 2
    finally:
        await a.close()
        await b.close()
