"""``resync`` rebuilds a lost shadow from both sides; ``unlink`` stops syncing on purpose.

Against the emulators: resync writes nothing remote, links what matches by unique key with a
base of the agreeing fields, leaves disagreeing fields to the conflict policy, and reports what
it could not match; unlink keeps both records and the engine then neither syncs, re-creates nor
re-adopts the incident.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import pytest

from agent.cli import commands
from agent.errors import ConfigError, LockHeld
from agent.store.sqlite.lock import StateLock
from agent.store.sqlite.store import Shadow
from tests.e2e import Env, props, writes


def lose_shadow(env: Env) -> None:
    for suffix in ("", "-wal", "-shm"):
        (env.tmp / f"state.db{suffix}").unlink(missing_ok=True)


async def links(env: Env) -> dict[str, tuple[str, dict[str, tuple[str, str]], str | None]]:
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        return {
            link.incident: (link.number, dict(link.fields), link.sentinel_etag)
            async for link in shadow.iter_links("default", "soc")
        }


async def resync_json(env: Env, capsys: pytest.CaptureFixture[str], dry_run: bool = False) -> Any:
    capsys.readouterr()
    assert await commands.resync(env.config, as_json=True, dry_run=dry_run) == 0
    out = capsys.readouterr().out
    return orjson.loads(out[out.index("{\n") :])


async def test_resync_rebuilds_a_lost_shadow_without_writing(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.rewrite({"agent": {"conflict_policy": "servicenow"}})
    ws = env.ws()
    incs = [ws.create_incident(title=f"t{i}", labels=["snow"], severity="Low") for i in range(3)]
    await env.stats()
    await env.stats()
    before = await links(env)
    lose_shadow(env)
    # While the state was lost, ServiceNow changed one ticket: the sides disagree on severity.
    changed = env.snow_record(incs[0]["name"])
    env.snow.analyst_update("incident", changed["sys_id"], {"impact": "1"})
    orphan = env.snow.insert(
        "incident", {"short_description": "no such incident", "correlation_id": str(uuid.uuid4())}
    )

    mark = env.stack.recorder.mark()
    report = await resync_json(env, capsys)
    assert writes(env.calls_since(mark)) == []
    soc = report["workspaces"]["soc"]
    linked = {m["incident"]: m for m in soc["linked"]}
    assert set(linked) == {i["name"] for i in incs}
    assert linked[incs[0]["name"]]["disagree"] == ["severity"]
    assert linked[incs[1]["name"]]["disagree"] == []
    assert linked[incs[1]["name"]]["agreed"] == ["owner", "severity", "status"]
    assert [u["number"] for u in report["unmatched"]] == [orphan["number"]]
    rebuilt = await links(env)
    assert {k: v[0] for k, v in rebuilt.items()} == {k: v[0] for k, v in before.items()}
    assert "severity" not in rebuilt[incs[0]["name"]][1]
    assert rebuilt[incs[1]["name"]][1] == before[incs[1]["name"]][1]

    # A second run finds everything linked already.
    again = await resync_json(env, capsys)
    assert (again["workspaces"]["soc"]["linked"], again["workspaces"]["soc"]["already_linked"]) == ([], 3)

    # The next cycle creates nothing and settles the disagreement under the conflict policy.
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert stats.created == 0 and stats.adopted == 0 and stats.conflicts == 1
    assert not [c for c in writes(env.calls_since(mark)) if c.method == "POST"]
    assert props(ws, incs[0]["name"])["severity"] == "High"
    assert len(env.snow_records()) == 4


async def test_resync_dry_run_text_report_and_duplicates(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    await env.stats()
    lose_shadow(env)
    twin = env.snow.insert("incident", {"short_description": "copy", "correlation_id": inc["name"]})
    capsys.readouterr()
    assert await commands.resync(env.config, dry_run=True) == 0
    text = capsys.readouterr().out
    assert "[soc] servicenow:default: 2 tickets with a unique key, 1 Sentinel incidents listed" in text
    assert "would link 1" in text
    original = env.snow_records()[0]["number"]  # the older ticket is linked, the copy reported
    assert f"DUPLICATE {twin['number']}: incident {inc['name']} is already linked to {original}" in text
    assert await links(env) == {}  # a dry run saves nothing


async def test_resync_refuses_a_running_agent_and_unknown_workspaces(env: Env) -> None:
    lock = StateLock(env.config.agent.state_db)
    lock.acquire()
    try:
        with pytest.raises(LockHeld, match="is in use by PID"):
            await commands.resync(env.config)
    finally:
        lock.release()
    with pytest.raises(ConfigError, match="no such workspace"):
        await commands.resync(env.config, workspaces=["nope"])


async def test_unlink_stops_syncing_and_never_recreates_or_readopts(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = env.ws()
    keep = ws.create_incident(title="keep", labels=["snow"], severity="Low")
    drop = ws.create_incident(title="drop", labels=["snow"], severity="Low")
    never = ws.create_incident(title="never", labels=["other"])
    await env.stats()
    await env.stats()
    number = env.snow_record(drop["name"])["number"]
    capsys.readouterr()
    assert await commands.unlink(env.config, "soc", [number, never["name"]]) == 0
    said = capsys.readouterr().out
    assert f"{drop['name']} ({number}): unlinked" in said
    assert "had no ticket; none will be created" in said
    assert set(await links(env)) == {keep["name"]}

    ws.analyst_update(drop["name"], severity="High")
    ws.analyst_update(never["name"], labels=["snow"])
    env.snow.analyst_update("incident", env.snow_record(drop["name"])["sys_id"], {"urgency": "1"})
    ws.analyst_update(keep["name"], severity="High")
    for _ in range(2):
        stats = await env.stats()
    assert stats.created == 0 and stats.adopted == 0
    assert env.snow_record(drop["name"])["impact"] == "3"  # not synced any more, still there
    assert env.snow_record(keep["name"])["impact"] == "1"  # the others carry on
    assert never["name"] not in {r["correlation_id"] for r in env.snow_records()}
    assert set(await links(env)) == {keep["name"]}

    # resync respects the tombstone too
    report = await resync_json(env, capsys)
    assert report["workspaces"]["soc"]["kept_unlinked"] == [number]

    # undo: the next cycle that sees the incident links its ticket again (no duplicate)
    assert await commands.unlink(env.config, "soc", [number], undo=True) == 0
    ws.analyst_update(drop["name"], severity="Medium")
    stats = await env.stats()
    assert stats.adopted == 1 and stats.created == 0
    assert len([r for r in env.snow_records() if r["correlation_id"] == drop["name"]]) == 1


async def test_unlink_a_whole_workspace(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ws = env.ws()
    incs = [ws.create_incident(title=f"t{i}", labels=["snow"]) for i in range(3)]
    await env.stats()
    with pytest.raises(ConfigError, match="--all"):
        await commands.unlink(env.config, "soc", [])
    with pytest.raises(ConfigError, match="no ticket INC9999999"):
        await commands.unlink(env.config, "soc", ["INC9999999"])
    assert await commands.unlink(env.config, "soc", [], every=True, as_json=True) == 0
    out = capsys.readouterr().out
    done = orjson.loads(out[out.index("{\n") :])
    assert sorted(d["incident"] for d in done["incidents"]) == sorted(i["name"] for i in incs)
    assert await links(env) == {}
    for inc in incs:
        ws.analyst_update(inc["name"], severity="High")
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert stats.created == stats.adopted == stats.updated_snow == 0
    assert writes(env.calls_since(mark)) == []
    assert len(env.snow_records()) == 3


async def test_resync_and_unlink_from_the_command_line(env: Env) -> None:
    from tests.test_cli import run_cli

    inc = env.ws().create_incident(title="t", labels=["snow"])
    await env.stats()
    number = env.snow_record(inc["name"])["number"]
    lose_shadow(env)
    code, out, err = await run_cli("-c", str(env.config_path), "resync", "--json")
    assert code == 0, err
    report = orjson.loads(out)  # the logs went to stderr
    assert [m["number"] for m in report["workspaces"]["soc"]["linked"]] == [number]
    code, out, err = await run_cli("-c", str(env.config_path), "unlink", "soc", number)
    assert code == 0, err
    assert out.splitlines() == [
        f"[soc] {inc['name']} ({number}): unlinked",
        "[soc] both records are kept; the agent no longer syncs them",
    ]
    code, _out, err = await run_cli("-c", str(env.config_path), "unlink", "soc")
    assert code == 2 and "--all" in err
