"""Safety valves (agent.core.valves): an empty full listing and a mass close abort the workspace's
cycle before any write, name the check and the numbers, exit 7, and yield to ``--force``;
other workspaces sync as usual."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from agent.app.runtime import Runtime
from agent.cli import commands
from agent.config import Config, load_config
from agent.core import valves
from agent.errors import ExitCode, SafetyValveTripped
from agent.log import log
from agent.sync.cycle import CycleOptions, CycleStats, run_workspaces
from agent.testing.emulators.stack import EmulatorStack
from tests.agent_process import AgentProcess
from tests.e2e import props, writes

RESOLVE = {"state": "6", "close_code": "Solution provided", "close_notes": "bulk close"}


@dataclass
class Two:
    stack: EmulatorStack
    tmp: Path
    config_path: Path

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    async def cycle(self, force: bool = False) -> dict[str, CycleStats | BaseException]:
        async with Runtime(self.config) as rt:
            return await run_workspaces(rt.syncs(), CycleOptions(force=force))

    def records(self, workspace: str) -> list[dict[str, str]]:
        ws = self.stack.workspaces[workspace]
        return [
            r
            for r in self.stack.snow["default"].tables["incident"].values()
            if r["correlation_id"] in ws.incidents
        ]


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Two]:
    """Two workspaces, ``soc`` with 10 linked open incidents and ``dev`` with 2."""
    async with EmulatorStack(directory=tmp_path / "emu") as stack:
        for name, count in (("soc", 10), ("dev", 2)):
            ws = stack.add_workspace(name)
            for i in range(count):
                ws.create_incident(title=f"{name} {i}", severity="Medium", labels=["snow"])
        cfg = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            extra={"agent": {"poll_interval": "0.2s"}},
        )
        rig = Two(stack, tmp_path, cfg)
        await rig.cycle()
        await rig.cycle()
        assert len(rig.records("soc")) == 10 and len(rig.records("dev")) == 2
        yield rig


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Every log record emitted during the test."""
    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    yield records
    log.sinks.remove(records.append)


# --- the pure checks ------------------------------------------------------------------------


def test_close_ratio_bounds() -> None:
    valves.check_close_ratio("w", 1, 1, 0.5)  # closing the only open incident is fine
    valves.check_close_ratio("w", valves.CLOSE_MIN - 1, valves.CLOSE_MIN - 1, 0.5)
    valves.check_close_ratio("w", 5, 10, 0.5)  # exactly the ratio is allowed
    valves.check_close_ratio("w", 9, 10, 0.5, force=True)
    with pytest.raises(SafetyValveTripped, match="safety valve 'max_close_ratio'") as caught:
        valves.check_close_ratio("w", 6, 10, 0.5)
    assert caught.value.check == "max_close_ratio" and caught.value.exit_code == 7
    assert str(caught.value) == (
        "[w] safety valve 'max_close_ratio': this cycle would close 6 of 10 open linked incidents "
        "(60% > max_close_ratio 50%) (override with --force)"
    )


def test_empty_listing_bounds() -> None:
    valves.check_listing("w", "sentinel", 0, 50, full=False)  # an idle incremental listing
    valves.check_listing("w", "sentinel", 1, 50, full=True)
    valves.check_listing("w", "sentinel", 0, valves.EMPTY_LISTING_MIN_OPEN - 1, full=True)
    valves.check_listing("w", "sentinel", 0, 50, full=True, force=True)
    with pytest.raises(SafetyValveTripped, match="safety valve 'empty_listing'") as caught:
        valves.check_listing("w", "sentinel", 0, 12, full=True)
    assert caught.value.check == "empty_listing"
    assert "returned 0 incidents while 12 linked incidents are open" in str(caught.value)
    assert str(caught.value).endswith("(override with --force)")


# --- against the emulators ------------------------------------------------------------------


async def test_mass_close_in_servicenow_trips_before_any_write(
    two: Two, events: list[dict[str, Any]]
) -> None:
    snow = two.stack.snow["default"]
    for rec in two.records("soc")[:6]:
        snow.analyst_update("incident", rec["sys_id"], RESOLVE, by="bob.hunter")
    dev_inc = next(iter(two.stack.workspaces["dev"].incidents))
    two.stack.workspaces["dev"].analyst_update(dev_inc, severity="High")
    mark = two.stack.recorder.mark()
    results = await two.cycle()
    soc = results["soc"]
    assert isinstance(soc, SafetyValveTripped) and soc.check == "max_close_ratio"
    assert "would close 6 of 10 open linked incidents (60% > max_close_ratio 50%)" in str(soc)
    # nothing was written for soc; dev synced as usual in the same run
    soc_ws = two.stack.workspaces["soc"]
    assert all(props(soc_ws, name)["status"] != "Closed" for name in soc_ws.incidents)
    assert [(c.system, c.method) for c in writes(two.stack.recorder.since(mark))] == [("servicenow", "PATCH")]
    assert isinstance(results["dev"], CycleStats) and results["dev"].updated_snow == 1
    valve_lines = [e for e in events if e["event"] == "safety_valve"]
    assert valve_lines and valve_lines[0]["check"] == "max_close_ratio"
    summary = next(e for e in events if e["event"] == "cycle_summary" and e.get("workspace") == "soc")
    assert summary["ok"] is False and summary["safety_valve"]["check"] == "max_close_ratio"
    # the same cycle again trips again (nothing moved: watermarks and shadow are as they were)
    assert isinstance((await two.cycle())["soc"], SafetyValveTripped)
    # the CLI command: exit 7; then --force closes all six
    assert await commands.once(two.config) == ExitCode.RESYNC
    assert await commands.once(two.config, force=True) == ExitCode.OK
    closed = [n for n in soc_ws.incidents if props(soc_ws, n)["status"] == "Closed"]
    assert len(closed) == 6
    assert await commands.once(two.config) == ExitCode.OK


async def test_closing_a_few_never_trips(two: Two) -> None:
    snow = two.stack.snow["default"]
    for rec in [*two.records("soc")[:4], *two.records("dev")]:  # 4 of 10, and 2 of 2 (< CLOSE_MIN)
        snow.analyst_update("incident", rec["sys_id"], RESOLVE, by="bob.hunter")
    results = await two.cycle()
    assert all(isinstance(r, CycleStats) and r.updated_sentinel for r in results.values()), results


def _forget_watermarks(db: Path, workspace: str) -> None:
    """What a rebuilt shadow looks like: links known, watermarks never set."""
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM watermarks WHERE workspace = ?", (workspace,))


async def test_empty_full_listing_trips_and_force_overrides(two: Two) -> None:
    _forget_watermarks(two.tmp / "state.db", "soc")
    for name in two.stack.workspaces["soc"].incidents:  # the label the filter needs is gone
        two.stack.workspaces["soc"].analyst_update(name, labels=["other"])
    dev_inc = next(iter(two.stack.workspaces["dev"].incidents))
    two.stack.workspaces["dev"].analyst_update(dev_inc, severity="High")
    mark = two.stack.recorder.mark()
    results = await two.cycle()
    soc = results["soc"]
    assert isinstance(soc, SafetyValveTripped) and soc.check == "empty_listing"
    assert "full sentinel listing returned 0 incidents while 10 linked incidents are open" in str(soc)
    assert isinstance(results["dev"], CycleStats) and results["dev"].updated_snow == 1
    assert [c.method for c in writes(two.stack.recorder.since(mark))] == ["PATCH"]  # dev's only
    with sqlite3.connect(two.tmp / "state.db") as conn:
        assert conn.execute("SELECT count(*) FROM watermarks WHERE workspace = 'soc'").fetchone() == (0,)
    forced = (await two.cycle(force=True))["soc"]
    assert isinstance(forced, CycleStats) and forced.listed_sentinel == 0
    assert isinstance((await two.cycle())["soc"], CycleStats)  # an incremental cycle again


async def test_cli_once_and_run_exit_7_and_force(two: Two) -> None:
    snow = two.stack.snow["default"]
    for rec in two.records("soc")[:8]:
        snow.analyst_update("incident", rec["sys_id"], RESOLVE, by="bob.hunter")
    async with AgentProcess(two.config_path, "once") as agent:
        assert await agent.wait() == 7, agent.output()
    valve = agent.named("safety_valve")
    assert valve and "would close 8 of 10" in str(valve[0]["message"])
    assert "--force" in str(valve[0]["message"])
    async with AgentProcess(two.config_path, "run") as agent:
        # re-checked every cycle, never written through; dev keeps syncing meanwhile
        await agent.wait_for(lambda e: len(agent.named("safety_valve")) >= 2)
        agent.kill(signal.SIGTERM)
        assert await agent.wait() == 7, agent.output()  # stopped while the valve still held
    summaries = agent.named("cycle_summary")
    assert any(e["workspace"] == "dev" and e["ok"] for e in summaries)
    async with AgentProcess(two.config_path, "status", "--json") as status:
        assert await status.wait() == 0
    report = orjson.loads("\n".join(status.stdout_text))
    last = report["workspaces"]["soc"]["last_cycle"]
    assert last["ok"] is False and last["summary"]["safety_valve"]["check"] == "max_close_ratio"
    async with AgentProcess(two.config_path, "once", "--force") as agent:
        assert await agent.wait() == 0, agent.output()
    soc_ws = two.stack.workspaces["soc"]
    assert sum(props(soc_ws, n)["status"] == "Closed" for n in soc_ws.incidents) == 8
