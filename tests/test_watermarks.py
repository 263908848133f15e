"""Operators control the watermarks (issue: watermarks, backfill, enabled = false).

Scenarios against the emulators through the production runtime: show, rewind, the creation
floor, the state lock, an operator's move during a running cycle, and a disabled workspace
that is neither read nor written and whose watermarks stay frozen.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.app import watermarks
from agent.cli import commands
from agent.cli.main import parse_when
from agent.connectors.sentinel.models import parse_arm_time
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.models import SnowRecord
from agent.core.records import Watermark
from agent.errors import ConfigError, LockHeld
from agent.log import log
from agent.store.sqlite.lock import StateLock
from agent.store.sqlite.store import Shadow
from agent.testing.emulators.stack import EmulatorStack
from tests.e2e import Env, reads, writes


async def marks(env: Env, workspace: str = "soc", instance: str = "default") -> dict[str, Watermark]:
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        return {s: await shadow.get_watermark(instance, workspace, s) for s in ("sentinel", "servicenow")}


async def setwm(
    env: Env,
    *,
    modified: str | None = None,
    created: str | None = None,
    side: str = "both",
    force: bool = False,
    workspace: str = "soc",
) -> int:
    return await commands.watermark_set(
        env.config,
        workspace,
        modified=parse_when(modified) if modified else None,
        created=parse_when(created) if created else None,
        side=side,
        force=force,
    )


async def settled(env: Env, count: int = 3) -> list[str]:
    """``count`` linked incidents after two cycles (the second absorbs our own write-backs)."""
    names = [env.ws().create_incident(title=f"t{i}", labels=["snow"])["name"] for i in range(count)]
    await env.stats()
    await env.stats()
    return names


async def test_show_prints_both_watermarks_per_side_and_when_each_moved(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    await settled(env, 1)
    await setwm(env, created="-1h", side="sentinel")
    capsys.readouterr()
    assert await commands.watermark_show(env.config, "soc", as_json=True) == 0
    shown = orjson.loads(capsys.readouterr().out)["soc"]
    wm = await marks(env)
    for side in ("sentinel", "servicenow"):
        assert shown[side]["modified"] == watermarks.iso(wm[side].modified)
        assert shown[side]["modified_moved_at"] == watermarks.iso(wm[side].modified_moved_at)
        assert shown[side]["modified"].endswith("Z")
    assert shown["sentinel"]["created"] == watermarks.iso(wm["sentinel"].created)
    assert shown["sentinel"]["created_moved_at"] == watermarks.iso(wm["sentinel"].created_moved_at)
    assert shown["servicenow"]["created"] is None
    # the floor shown is the later of max_age_days and the creation watermark
    assert shown["sentinel"]["creation_floor"] == shown["sentinel"]["created"]

    assert await commands.watermark_show(env.config, None) == 0
    text = capsys.readouterr().out
    assert text.startswith("[soc] enabled -> servicenow:default")
    assert f"modified {shown['sentinel']['modified']}" in text
    assert f"moved {shown['sentinel']['modified_moved_at']}" in text
    assert f"created  {shown['sentinel']['created']}" in text
    with pytest.raises(ConfigError, match="no such workspace"):
        await commands.watermark_show(env.config, "nope")


async def test_rewind_then_once_rereads_and_writes_nothing_for_unchanged(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    await settled(env, 3)
    before = await marks(env)
    code = await commands.watermark_set(
        env.config, "soc", modified=parse_when("-1d"), created=None, side="both", force=False
    )
    assert code == 0
    said = capsys.readouterr().out
    assert "sentinel modification watermark" in said and "servicenow modification watermark" in said
    assert "the next cycle re-reads Sentinel incidents modified since" in said
    rewound = await marks(env)
    assert all(rewound[s].modified < before[s].modified for s in rewound)  # type: ignore[operator]

    mark = env.stack.recorder.mark()
    stats = await env.stats()
    calls = env.calls_since(mark)
    assert (stats.listed_sentinel, stats.listed_snow) == (3, 3)  # everything re-read ...
    assert writes(calls) == []  # ... and nothing rewritten, created or fetched one by one
    assert {c.route for c in reads(calls)} == {"incidents.list", "table.list"}
    assert stats.created == stats.updated_snow == stats.updated_sentinel == stats.adopted == 0
    assert len(env.snow_records()) == 3
    after = await marks(env)
    assert after["sentinel"].modified == before["sentinel"].modified  # caught up again

    # The same through the `once` command.
    await setwm(env, modified="-1d")
    mark = env.stack.recorder.mark()
    assert await commands.once(env.config) == 0
    assert writes(env.calls_since(mark)) == []
    assert len(env.snow_records()) == 3


async def test_creation_floor_holds_back_older_incidents_and_rewinding_it_picks_them_up(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = env.ws()
    old = ws.create_incident(title="before the take-over", labels=["snow"])
    await setwm(env, created="now")
    assert "new tickets only for incidents created since" in capsys.readouterr().out
    new = ws.create_incident(title="after the take-over", labels=["snow"])
    stats = await env.stats()
    assert stats.created == 1
    assert [r["correlation_id"] for r in env.snow_records()] == [new["name"]]
    await env.stats()
    assert (await env.stats()).created == 0  # still held back on later cycles

    # "an incident was missed": lowering the floor re-reads and creates exactly that one
    await setwm(env, created="-1d")
    said = capsys.readouterr().out
    assert "re-reads Sentinel incidents modified since" in said
    stats = await env.stats()
    assert stats.created == 1
    assert sorted(r["correlation_id"] for r in env.snow_records()) == sorted([old["name"], new["name"]])


async def test_set_validates_its_request(env: Env) -> None:
    with pytest.raises(ConfigError, match="give --modified"):
        await setwm(env)
    with pytest.raises(ConfigError, match="Sentinel side only"):
        await setwm(env, created="-1d", side="servicenow")
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    with pytest.raises(ConfigError, match="in the future"):
        await setwm(env, modified=future)
    with pytest.raises(ConfigError, match="no such workspace"):
        await setwm(env, modified="-1d", workspace="nope")
    assert (await marks(env))["sentinel"].moved_at is None  # nothing was written


async def test_set_refuses_a_running_agents_lock_unless_forced(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    await settled(env, 1)
    before = await marks(env)
    agent_lock = StateLock(env.config.agent.state_db)
    agent_lock.acquire()  # a running agent
    try:
        with pytest.raises(LockHeld, match="use --force"):
            await setwm(env, modified="-2h")
        assert await marks(env) == before
        assert await setwm(env, modified="-2h", side="sentinel", force=True) == 0
    finally:
        agent_lock.release()
    after = await marks(env)
    assert after["sentinel"].modified is not None and before["sentinel"].modified is not None
    assert after["sentinel"].modified < before["sentinel"].modified
    assert after["servicenow"] == before["servicenow"]
    assert "[soc] sentinel modification watermark" in capsys.readouterr().out


@pytest.mark.timeout(60)  # a gate that never opens hangs: fail fast instead
async def test_an_operators_move_during_a_cycle_is_kept(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    await settled(env, 1)
    env.ws().create_incident(title="makes the cycle advance the watermark", labels=["snow"])
    # The cycle has read the watermarks and listed Sentinel; it waits at its ServiceNow listing
    # until the operator's move is saved.
    listing, moved = asyncio.Event(), asyncio.Event()
    list_records = ServiceNowClient.list_records

    async def gated(self: ServiceNowClient, *args: Any, **kwargs: Any) -> AsyncIterator[SnowRecord]:
        listing.set()
        await moved.wait()
        async for record in list_records(self, *args, **kwargs):
            yield record

    monkeypatch.setattr(ServiceNowClient, "list_records", gated)
    kept: list[dict[str, Any]] = []
    log.sinks.append(kept.append)
    try:
        cycle = asyncio.create_task(env.stats())
        await listing.wait()
        rewind = parse_when("-3h")
        await watermarks.set_(env.config, "soc", modified=rewind, created=None, side="sentinel", force=False)
        moved.set()
        stats = await cycle
    finally:
        log.sinks.remove(kept.append)
    assert stats.created == 1
    assert [(e["side"], e["reason"]) for e in kept if e["event"] == "watermark_kept"] == [
        ("sentinel", "moved by an operator during the cycle")
    ]
    assert (await marks(env))["sentinel"].modified == rewind  # not overwritten by the cycle
    monkeypatch.undo()
    await env.stats()
    assert (await marks(env))["sentinel"].modified > rewind  # type: ignore[operator]


# --- enabled = false ----------------------------------------------------------------------------


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Env]:
    """Workspace ``soc`` on instance ``default`` and ``off`` on instance ``second``."""
    async with EmulatorStack(directory=tmp_path / "emu", snow_instances=("default", "second")) as stack:
        stack.add_workspace("soc")
        stack.add_workspace("off", servicenow="second")
        cfg = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            workspaces=["soc", "off"],
            # The listing counts below say "resumed from the frozen watermark"; an overlap would
            # re-list the quiet incidents next to it (the other tests here run with the default).
            extra={"agent": {"overlap": "0s"}},
        )
        yield Env(stack, tmp_path, cfg, ["soc", "off"])


def enable(env: Env, on: bool) -> None:
    env.rewrite({"agent": {"overlap": "0s"}, "workspace:off": {"enabled": "true" if on else "false"}})


async def test_disabled_workspace_is_untouched_and_frozen_then_resumes(two: Env) -> None:
    env = two
    off = env.ws("off")
    first = off.create_incident(title="synced before the switch-off", labels=["snow"])
    quiet = [off.create_incident(title=f"never changes {i}", labels=["snow"]) for i in range(5)]
    await env.cycle()
    await env.cycle()
    second = env.stack.snow["second"]
    assert len([r for r in second.tables["incident"].values() if r.get("correlation_id")]) == 6
    frozen = await marks(env, "off", "second")

    enable(env, False)
    off.analyst_update(first["name"], severity="High")
    while_off = off.create_incident(title="created while disabled", labels=["snow"])
    env.ws("soc").create_incident(title="the other workspace carries on", labels=["snow"])
    mark = env.stack.recorder.mark()
    results = await env.cycle()
    await env.cycle()
    calls = env.calls_since(mark)
    assert list(results) == ["soc"]
    assert not [c for c in calls if c.instance == "second"]
    assert not [c for c in calls if c.system == "sentinel" and "/workspaces/off/" in c.path]
    assert [c for c in calls if c.instance == "default"]  # soc was synced meanwhile
    assert await marks(env, "off", "second") == frozen
    assert len([r for r in second.tables["incident"].values() if r.get("correlation_id")]) == 6
    with pytest.raises(ConfigError, match="disabled"):
        await commands.once(env.config, workspaces=["off"], since=parse_when("-1d"), backfill=True)

    enable(env, True)
    stats = (await env.cycle())["off"]
    assert not isinstance(stats, BaseException)
    # resumed from the frozen watermark: what changed meanwhile was listed (plus at most the
    # one incident sitting exactly on the inclusive watermark), not the five quiet ones
    assert 2 <= stats.listed_sentinel <= 3
    assert stats.created == 1 and stats.updated_snow == 1
    rec = next(r for r in second.tables["incident"].values() if r.get("correlation_id") == first["name"])
    assert rec["impact"] == "1"
    linked = {r["correlation_id"] for r in second.tables["incident"].values() if r.get("correlation_id")}
    assert linked == {first["name"], while_off["name"], *(q["name"] for q in quiet)}
    assert (await marks(env, "off", "second"))["sentinel"].modified > frozen["sentinel"].modified  # type: ignore[operator]


async def test_watermark_commands_from_the_command_line(env: Env) -> None:
    from tests.test_cli import run_cli

    await settled(env, 1)
    code, out, err = await run_cli("-c", str(env.config_path), "watermark", "set", "soc", "--modified", "-2h")
    assert code == 0, err
    assert out.count("modification watermark") == 2 and "re-reads" in out
    code, out, err = await run_cli("-c", str(env.config_path), "watermark", "show", "soc", "--json")
    assert code == 0, err
    shown = orjson.loads(out)["soc"]
    assert shown["sentinel"]["modified"] == watermarks.iso((await marks(env))["sentinel"].modified)
    cfg = str(env.config_path)
    code, _out, err = await run_cli("-c", cfg, "watermark", "set", "soc", "--created", "soon")
    assert code == 2 and "ISO 8601" in err


# --- the listing behind the modification watermark (issue #13, item 6) ------------------------


async def test_incident_edited_between_pages_is_synced_in_the_same_cycle(env: Env) -> None:
    env.rewrite({"agent": {"page_size": "5"}})
    ws = env.ws()
    made = [ws.create_incident(title=f"inc {i}", labels=["snow"])["name"] for i in range(12)]
    assert (await env.stats()).created == 12
    for name in made:  # twelve changes, one second apart
        env.stack.clock.advance(1)
        ws.analyst_update(name, severity="High")
    # An analyst edits an incident of the first page while the agent reads the second one.
    ws.race_listing(1, lambda: ws.analyst_update(made[1], status="Active"))
    stats = await env.stats()
    assert stats.updated_snow == 12
    assert [env.snow_record(name)["impact"] for name in made] == ["1"] * 12
    assert env.snow_record(made[1])["state"] == "2"


@pytest.mark.parametrize(("overlap", "caught"), [(None, True), ("0s", False)])
async def test_overlap_catches_a_change_that_reached_the_listing_late(
    env: Env, overlap: str | None, caught: bool
) -> None:
    """A change the listing shows only later than a newer one (indexing lag, clock skew) is
    behind the watermark by then; the default overlap re-reads it, no overlap loses it."""
    if overlap is not None:
        env.rewrite({"agent": {"overlap": overlap}})
    ws = env.ws()
    late = ws.create_incident(title="late", labels=["snow"])["name"]
    on_time = ws.create_incident(title="on time", labels=["snow"])["name"]
    await env.stats()
    ws.delay_listing(late, 30)
    env.stack.clock.advance(1)
    ws.analyst_update(late, severity="High")  # listed only 30 s from now
    env.stack.clock.advance(1)
    ws.analyst_update(on_time, severity="Low")
    await env.stats()
    assert (env.snow_record(on_time)["impact"], env.snow_record(late)["impact"]) == ("3", "2")
    mark = await marks(env)
    seen = ws.incidents[on_time]["properties"]["lastModifiedTimeUtc"]
    assert mark["sentinel"].modified == parse_arm_time(seen)  # past the late change
    env.stack.clock.advance(31)
    await env.stats()
    assert env.snow_record(late)["impact"] == ("1" if caught else "2")
