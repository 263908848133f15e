"""Backfill: ``once --since DATE`` / ``backfill WORKSPACE --since DATE`` against the emulators.

A one-off pass creates tickets for matching incidents created since DATE, even beyond
``max_age_days``, reports progress, never duplicates a ticket or rewrites a linked pair that
did not change, and leaves the regular watermarks exactly where they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from agent.cli import commands
from agent.cli.main import parse_when
from agent.core.records import Watermark
from agent.errors import ConfigError
from agent.log import log
from agent.store.sqlite.store import Shadow
from tests.e2e import Env, writes


async def marks(env: Env) -> dict[str, Watermark]:
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        return {s: await shadow.get_watermark("default", "soc", s) for s in ("sentinel", "servicenow")}


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    captured: list[dict[str, Any]] = []
    log.sinks.append(captured.append)
    yield captured
    log.sinks.remove(captured.append)


def days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


async def test_backfill_beyond_max_age_creates_exactly_the_missing_records(
    env: Env, events: list[dict[str, Any]]
) -> None:
    ws = env.ws()
    recent = ws.create_incident(title="recent", labels=["snow"])
    missing = [ws.create_incident(title=f"old {i}", labels=["snow"], created=days_ago(45)) for i in range(3)]
    closed = ws.create_incident(title="old but closed", labels=["snow"], created=days_ago(45))
    ws.analyst_update(closed["name"], status="Closed", classification="Undetermined")
    ws.create_incident(title="old, not for ServiceNow", labels=["other"], created=days_ago(45))
    ws.create_incident(title="older than the backfill", labels=["snow"], created=days_ago(90))
    await env.stats()
    await env.stats()
    assert [r["correlation_id"] for r in env.snow_records()] == [recent["name"]]
    before = await marks(env)

    mark = env.stack.recorder.mark()
    code = await commands.once(env.config, workspaces=["soc"], since=parse_when("-60d"), backfill=True)
    assert code == 0
    created = {r["correlation_id"] for r in env.snow_records()}
    assert created == {recent["name"], *(m["name"] for m in missing)}
    posts = [c for c in writes(env.calls_since(mark)) if c.system == "servicenow" and c.method == "POST"]
    assert len(posts) == 3
    assert await marks(env) == before  # the regular watermarks did not move

    listed = [e for e in events if e["event"] == "backfill_listed"]
    assert [(e["to_create"], e["changed"]) for e in listed] == [(3, 0)]
    finished = [e for e in events if e["event"] == "backfill_finished"]
    assert [(e["workspace"], e["created"], e["failures"]) for e in finished] == [("soc", 3, 0)]

    # A second pass re-reads everything and writes nothing: the shadow decides.
    await env.stats()  # absorbs the label write-backs of the new tickets
    mark = env.stack.recorder.mark()
    stats = await env.stats(since=parse_when("-60d"))
    assert stats.listed_sentinel == 5  # recent, three old, the closed one
    assert writes(env.calls_since(mark)) == []
    assert stats.created == stats.adopted == stats.updated_snow == stats.updated_sentinel == 0
    assert len(env.snow_records()) == 4


async def test_regular_cycles_after_a_backfill_carry_on_from_their_watermarks(env: Env) -> None:
    ws = env.ws()
    old = ws.create_incident(title="old", labels=["snow"], created=days_ago(40))
    await env.stats()
    before = await marks(env)
    stats = await env.stats(since=days_ago(41))
    assert stats.created == 1
    assert await marks(env) == before
    # The backfilled pair now syncs like any other.
    ws.analyst_update(old["name"], severity="High")
    await env.stats()
    assert env.snow_record(old["name"])["impact"] == "1"
    assert (await marks(env))["sentinel"].modified > before["sentinel"].modified  # type: ignore[operator]


async def test_backfill_after_a_lost_shadow_adopts_instead_of_duplicating(env: Env) -> None:
    ws = env.ws()
    incs = [ws.create_incident(title=f"t{i}", labels=["snow"], created=days_ago(20)) for i in range(2)]
    await env.stats()
    assert len(env.snow_records()) == 2
    for suffix in ("", "-wal", "-shm"):
        (env.tmp / f"state.db{suffix}").unlink(missing_ok=True)
    stats = await env.stats(since=days_ago(21))
    assert stats.created == 0 and stats.adopted == 2
    assert sorted(r["correlation_id"] for r in env.snow_records()) == sorted(i["name"] for i in incs)


async def test_backfill_of_a_disabled_or_unknown_workspace_is_refused(env: Env) -> None:
    env.rewrite({"workspace:soc": {"enabled": "false"}})
    env.ws().create_incident(title="t", labels=["snow"], created=days_ago(40))
    with pytest.raises(ConfigError, match="disabled"):
        await commands.once(env.config, workspaces=["soc"], since=days_ago(60), backfill=True)
    with pytest.raises(ConfigError, match="no such workspace"):
        await commands.once(env.config, workspaces=["nope"], since=days_ago(60), backfill=True)
    assert env.snow_records() == []


async def test_backfill_from_the_command_line(env: Env) -> None:
    from tests.test_cli import run_cli

    old = env.ws().create_incident(title="old", labels=["snow"], created=days_ago(40))
    await env.stats()
    assert env.snow_records() == []
    code, out, err = await run_cli("-c", str(env.config_path), "backfill", "soc", "--since", "-41d")
    assert code == 0, err
    assert [r["correlation_id"] for r in env.snow_records()] == [old["name"]]
    events = [orjson.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert "backfill_listed" in events and events[-1] == "backfill_finished"
