"""The store contract (tests/contract/store.py) on every implementation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.config import Secret
from agent.store import Store, StoreTarget, open_store, parse_target
from agent.store.memory import MemoryStore
from agent.store.postgres.store import PostgresStore
from agent.store.sqlite.store import Shadow
from tests.contract.store import StoreTests
from tests.pg import Cluster


class TestSqliteStore(StoreTests):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[Store]:
        async with await open_store(f"sqlite:{tmp_path / 'state.db'}") as s:
            assert isinstance(s, Shadow)
            yield s

    async def cycles_kept(self, store: Store) -> int:
        assert isinstance(store, Shadow)
        rows = await store._read("SELECT count(*) FROM cycles")
        return int(rows[0][0])


class TestMemoryStore(StoreTests):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        async with await open_store("memory:") as s:
            assert isinstance(s, MemoryStore)
            yield s

    async def cycles_kept(self, store: Store) -> int:
        assert isinstance(store, MemoryStore)
        return len(store.cycles)


# --- naming a store -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("sqlite:/var/lib/s/state.db", "sqlite", "/var/lib/s/state.db"),
        ("SQLite:rel/state.db", "sqlite", "/etc/s/rel/state.db"),
        ("state.db", "sqlite", "/etc/s/state.db"),
        ("/abs/state.db", "sqlite", "/abs/state.db"),
        ("memory:", "memory", ""),
        ("postgresql://sync@db.example.com/sync", "postgresql", "postgresql://sync@db.example.com/sync"),
        (
            "postgres://sync@db/sync?sslmode=verify-full",
            "postgresql",
            "postgres://sync@db/sync?sslmode=verify-full",
        ),
        ("mypkg.stores:open_store", "custom", "mypkg.stores:open_store"),
        ("mypkg.stores:open_store:redis://x", "custom", "mypkg.stores:open_store:redis://x"),
    ],
)
def test_state_names_a_store(text: str, kind: str, value: str) -> None:
    target = parse_target(text, lambda p: Path("/etc/s") / p)
    assert (target.kind, target.value) == (kind, value)


def test_an_empty_state_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_target(" ")


async def test_a_path_opens_sqlite(tmp_path: Path) -> None:
    async with await open_store(tmp_path / "a.db") as s:
        assert s.location == f"sqlite:{tmp_path / 'a.db'}"
    async with await open_store(str(tmp_path / "b.db")) as s:
        assert isinstance(s, Shadow)


async def open_memory_for_test(arg: str) -> Store:
    """A user's factory named as ``module:attr:arg``."""
    store = MemoryStore()
    await store.set_mark("i", "w", "arg", arg or "-", now=__import__("datetime").datetime.now().astimezone())
    return store


async def test_a_users_factory_opens_its_store() -> None:
    async with await open_store("tests.test_store_contract:open_memory_for_test:hello") as s:
        mark = await s.get_mark("i", "w", "arg")
        assert mark is not None and mark[0] == "hello"


async def test_a_bad_factory_is_a_config_error() -> None:
    from agent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[agent\] state: cannot import no_such_module"):
        await open_store("no_such_module:thing")
    with pytest.raises(ConfigError, match="has no attribute missing"):
        await open_store(StoreTarget("custom", "tests.test_store_contract:missing"))
    with pytest.raises(ConfigError, match="did not return a state store"):
        await open_store("tests.test_store_contract:make_nothing")


async def make_nothing(arg: str) -> object:
    return object()


class TestPostgresStore(StoreTests):
    TABLES = "links, comment_links, watermarks, failures, conflict_log, cycles, marks, unlinked"

    @pytest.fixture(scope="class")
    @classmethod
    def database(cls, pg_cluster: Cluster) -> tuple[str, str]:
        url, _user, password = pg_cluster.database("contract")
        return url, password

    @pytest.fixture
    async def store(self, database: tuple[str, str]) -> AsyncIterator[Store]:
        url, password = database
        async with await open_store(StoreTarget("postgresql", url, Secret(password))) as s:
            assert isinstance(s, PostgresStore)
            async with s._write() as conn:
                await conn.execute(f"TRUNCATE {self.TABLES} RESTART IDENTITY")
            yield s

    async def cycles_kept(self, store: Store) -> int:
        assert isinstance(store, PostgresStore)
        [row] = await store._read("SELECT count(*) AS n FROM cycles")
        return int(row["n"])
