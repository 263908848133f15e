"""The reconciliation sweep against the emulators: it repairs what the incremental cycles missed,
runs every sweep_interval and on ``once --sweep``, and shows its cost in the cycle summary."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.cli.main import build_parser
from agent.errors import SafetyValveTripped
from agent.store.sqlite.store import Shadow
from agent.sync.sweep import MARK_LAST_SWEEP
from tests.e2e import Env, props, writes


@pytest.fixture
def summaries() -> Iterator[list[dict[str, Any]]]:
    from agent.log import log

    records: list[dict[str, Any]] = []

    def keep(record: dict[str, Any]) -> None:
        if record["event"] == "cycle_summary":
            records.append(record)

    log.sinks.append(keep)
    yield records
    log.sinks.remove(keep)


async def skip_ahead(env: Env, side: str) -> None:
    """Move one watermark past everything (as if the incremental query had missed a change)."""
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        later = datetime.now(UTC) + timedelta(hours=1)
        await shadow.set_watermark(
            env.stack.workspace_instance("soc"), "soc", side, modified=later, moved_at=datetime.now(UTC)
        )


async def test_sweep_repairs_a_sentinel_change_the_watermark_skipped(
    env: Env, summaries: list[dict[str, Any]]
) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Low", labels=["snow"])
    await env.stats()
    ws.analyst_update(inc["name"], severity="High")
    await skip_ahead(env, "sentinel")
    stats = await env.stats()
    assert stats.updated_snow == 0 and env.snow_record(inc["name"])["impact"] == "3"  # missed
    mark = env.stack.recorder.mark()
    stats = await env.stats(sweep=True)
    assert stats.sweep and stats.updated_snow == 1
    assert env.snow_record(inc["name"])["impact"] == "1"
    assert [c.route for c in writes(env.calls_since(mark))] == ["table.patch"]
    assert summaries[-1]["sweep"] is True and summaries[-1]["calls"] >= 3


async def test_sweep_repairs_a_servicenow_change_the_watermark_skipped(env: Env) -> None:
    ws = env.ws()
    inc = ws.create_incident(title="t", labels=["snow"])
    await env.stats()
    rec = env.snow_record(inc["name"])
    env.snow.analyst_update(
        "incident", rec["sys_id"], {"assigned_to": env.stack.snow_user_ids["default"]["dave.lead"]}
    )
    env.snow.analyst_update("incident", rec["sys_id"], {"work_notes": "seen by the sweep"})
    await skip_ahead(env, "servicenow")
    await env.stats()
    assert not props(ws, inc["name"])["owner"].get("userPrincipalName")
    stats = await env.stats(sweep=True)
    assert stats.updated_sentinel == 1 and stats.comments_to_sentinel == 1
    assert props(ws, inc["name"])["owner"]["userPrincipalName"] == "dave@contoso.example"


async def test_sweep_finds_a_value_the_shadow_got_wrong(env: Env) -> None:
    """Even when etag and sys_mod_count match the shadow, a sweep compares values."""
    ws = env.ws()
    inc = ws.create_incident(title="t", severity="Medium", labels=["snow"])
    await env.stats()
    sys_id = env.snow_record(inc["name"])["sys_id"]
    env.snow.tables["incident"][sys_id]["impact"] = "1"  # changed behind everyone's back
    stats = await env.stats()
    assert stats.updated_sentinel == 0
    stats = await env.stats(sweep=True)
    assert stats.updated_sentinel == 1 and props(ws, inc["name"])["severity"] == "High"


async def test_sweep_without_drift_writes_nothing_and_costs_a_few_reads(env: Env) -> None:
    ws = env.ws()
    for i in range(5):
        ws.create_incident(title=f"t{i}", labels=["snow"])
    await env.stats()
    await env.stats()
    mark = env.stack.recorder.mark()
    stats = await env.stats(sweep=True)
    calls = [(c.system, c.route) for c in env.calls_since(mark) if c.system != "entra"]
    assert writes(env.calls_since(mark)) == []
    assert stats.updated_snow == stats.updated_sentinel == stats.created == 0
    # one Sentinel page, the incremental ServiceNow listing, one sys_idIN batch (if needed)
    assert calls[:2] == [("sentinel", "incidents.list"), ("servicenow", "table.list")]
    assert len(calls) <= 3


async def test_sweep_runs_every_interval_and_remembers_when(env: Env) -> None:
    env.rewrite({"agent": {"sweep_interval": "1h"}})
    env.ws().create_incident(title="t", labels=["snow"])
    assert not (await env.stats()).sweep  # the first cycle starts the clock
    assert not (await env.stats()).sweep
    inst = env.stack.workspace_instance("soc")
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        past = datetime.now(UTC) - timedelta(hours=2)
        await shadow.set_mark(inst, "soc", MARK_LAST_SWEEP, past.isoformat(), now=past)
    assert (await env.stats()).sweep
    assert not (await env.stats()).sweep
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        mark = await shadow.get_mark(inst, "soc", MARK_LAST_SWEEP)
    assert mark is not None and datetime.now(UTC) - datetime.fromisoformat(mark[0]) < timedelta(minutes=5)


async def test_sweep_creates_an_incident_the_incremental_cycles_missed(env: Env) -> None:
    await env.stats()
    inc = env.ws().create_incident(title="missed", labels=["snow"])
    await skip_ahead(env, "sentinel")
    assert (await env.stats()).created == 0
    assert (await env.stats(sweep=True)).created == 1
    assert env.snow_record(inc["name"])["short_description"] == "missed"


async def test_empty_listing_valve_applies_to_sweeps(env: Env) -> None:
    ws = env.ws()
    incs = [ws.create_incident(title=f"t{i}", labels=["snow"]) for i in range(12)]
    await env.stats()
    for inc in incs:
        ws.analyst_update(inc["name"], labels=[])  # e.g. someone renamed the label
    result = (await env.cycle(sweep=True))["soc"]
    assert isinstance(result, SafetyValveTripped) and result.check == "empty_listing"


def test_once_takes_sweep() -> None:
    assert build_parser().parse_args(["once", "--sweep"]).sweep is True
    assert build_parser().parse_args(["once"]).sweep is False
