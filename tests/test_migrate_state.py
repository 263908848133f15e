"""``migrate-state``: a real state (synced against the emulators) copied SQLite -> PostgreSQL ->
SQLite, every table and row, verified by counts and compared row by row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.app.leadership import exclusive
from agent.app.migrate_state import migrate
from agent.cli import commands
from agent.config import load_config
from agent.errors import ConfigError, LockHeld
from agent.store import open_store
from agent.store.sqlite.store import Shadow
from agent.store.transfer import Transferable
from tests.e2e import Env
from tests.pg import Cluster

TABLES = {"links", "comment_links", "watermarks", "failures", "conflict_log", "cycles", "marks", "unlinked"}


async def snapshot(store: Transferable) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, JSON text decoded (key order is the database's business)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for table, columns in sorted((await store.tables()).items()):
        rows: list[dict[str, Any]] = []
        async for page in store.export_rows(table, columns):
            rows.extend({k: _decoded(v) for k, v in row.items()} for row in page)
        out[table] = sorted(rows, key=lambda r: orjson.dumps(r, option=orjson.OPT_SORT_KEYS))
    return out


def _decoded(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        return orjson.loads(value)
    return value


async def populated(env: Env) -> None:
    """A state with rows in every table: links, comments, watermarks, a failure, a tombstone, history."""
    ws = env.ws()
    for i in range(6):
        inc = ws.create_incident(title=f"migrate {i}", severity="High", labels=["snow"])
        ws.analyst_comment(inc["name"], f"first look {i}")
    await env.stats()
    await env.stats()
    names = sorted(ws.incidents)
    assert await commands.unlink(env.config, "soc", [names[0]]) == 0
    async with await Shadow.open(env.tmp / "state.db") as s:
        await s.record_failure("default", "soc", names[1], "HTTP 503", now=datetime.now(UTC))
        await s.set_mark("default", "soc", "note", "kept", now=datetime.now(UTC))
        await s.save_link(
            (await s.get_links("default", "soc", [names[2]]))[names[2]],
            conflicts=[("severity", "Low", "1", "servicenow")],
        )


async def test_sqlite_to_postgresql_and_back(env: Env, pg_cluster: Cluster, tmp_path: Path) -> None:
    await populated(env)
    url, user, password = pg_cluster.database("migrate")
    target = url.replace(f"{user}@", f"{user}:{password}@")
    report = await migrate(env.config, None, target)
    assert set(report["rows"]) == TABLES
    assert report["to"] == url and password not in str(report)
    async with await Shadow.open(env.tmp / "state.db") as original:
        before = await snapshot(original)
        assert all(before[t] for t in TABLES), {t: len(rows) for t, rows in before.items()}
        assert report["rows"] == {t: len(rows) for t, rows in before.items()}
    async with await open_store(target) as pg:
        assert isinstance(pg, Transferable)
        assert await snapshot(pg) == before
    back = tmp_path / "back.db"
    report = await migrate(env.config, target, f"sqlite:{back}")
    async with await Shadow.open(back) as copy:
        assert await snapshot(copy) == before
    # The copy is a working state: the engine reads its links and comment links back.
    env.rewrite({"agent": {"state_db": str(back)}})
    stats = await env.stats()
    assert (stats.created, stats.failures) == (0, 0)


async def test_the_target_must_be_empty_and_free(env: Env, pg_cluster: Cluster, tmp_path: Path) -> None:
    await env.stats()
    url, user, password = pg_cluster.database("busy")
    target = url.replace(f"{user}@", f"{user}:{password}@")
    await migrate(env.config, None, target)
    with pytest.raises(ConfigError, match=r"is not empty \(cycles 1, marks \d+, watermarks 2\)"):
        await migrate(env.config, None, target)
    with pytest.raises(ConfigError, match="both"):
        await migrate(env.config, None, f"sqlite:{env.tmp / 'state.db'}")
    with pytest.raises(ConfigError, match="does not exist"):
        await migrate(env.config, f"sqlite:{tmp_path / 'none.db'}", None)
    config = load_config(env.config_path)
    async with exclusive(config):  # an agent holds the source
        with pytest.raises(LockHeld, match=r"state\.db is in use by PID \d+"):
            await migrate(env.config, None, f"sqlite:{tmp_path / 'other.db'}")
