"""Our own writes in the listing window: counted once each, forgotten once the window passes
them, and room made for them on the listing's page (#18 item 5: idle means idle)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from agent.app.runtime import Runtime
from agent.config import load_config
from agent.connectors.own_writes import KEEP, OwnWrites
from agent.sync.cycle import CycleOptions, CycleStats, run_workspaces
from agent.testing.emulators.stack import EmulatorStack

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_record_written_twice_is_counted_once() -> None:
    own = OwnWrites()
    own.add("a", T0)
    own.add("a", T0 + timedelta(seconds=5))  # the label PUT after the fields PUT
    own.add("b", T0 + timedelta(seconds=1))
    assert own.since(T0) == 2
    assert own.since(None) == 2


def test_writes_before_the_window_are_not_counted_and_old_ones_are_forgotten() -> None:
    own = OwnWrites()
    own.add("a", T0)
    own.add("b", T0 + timedelta(seconds=10))
    assert own.since(T0 + timedelta(seconds=5)) == 1
    # Another workspace's listing on the same instance may start earlier: "a" still counts.
    assert own.since(T0 - timedelta(seconds=5)) == 2
    own.add("a", T0 - timedelta(seconds=60))  # an older time never replaces a newer one
    own.add("b", T0)
    assert own.since(T0 + timedelta(seconds=10)) == 1
    assert own.since(T0 + KEEP + timedelta(seconds=5)) == 0
    assert own.since(T0 - timedelta(seconds=5)) == 1  # "a" was more than KEEP behind: forgotten


def test_the_page_holds_our_writes_and_a_regular_page_within_the_maximum() -> None:
    own = OwnWrites()
    assert own.page(200, T0, 1000) == 200
    for i in range(500):
        own.add(str(i), T0 + timedelta(milliseconds=i))
    assert own.page(200, T0, 1000) == 700
    assert own.page(200, T0 + timedelta(milliseconds=400), 1000) == 300
    for i in range(2000):
        own.add(f"x{i}", T0 + timedelta(seconds=1))
    assert own.page(200, T0, 1000) == 1000


async def test_two_workspaces_on_one_instance_read_once_each_after_their_initial_sync(tmp_path: Path) -> None:
    # A workspace's ticket listing is instance-wide: the other workspace's new tickets are in it
    # too, and the agent wrote those as well.
    async with EmulatorStack(directory=tmp_path / "emu") as stack:
        names = ["eu", "us"]
        stack.add_workspace("eu")
        stack.add_workspace("us", resource_group="rg-us")
        for name in names:
            for i in range(7):
                stack.workspaces[name].create_incident(title=f"{name} {i}", labels=["snow"])
        cfg = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            workspaces=names,
            extra={"agent": {"page_size": "5"}},
        )
        async with Runtime(load_config(cfg)) as rt:
            syncs = rt.syncs()
            first = await run_workspaces(syncs, CycleOptions())
            assert all(isinstance(r, CycleStats) and r.created == 7 for r in first.values()), first
            mark = stack.recorder.mark()
            after = await run_workspaces(syncs, CycleOptions())
        assert all(isinstance(r, CycleStats) and r.listed_snow == 14 for r in after.values()), after
        calls = [(c.system, c.route) for c in stack.recorder.since(mark) if c.system != "entra"]
    assert sorted(calls) == [("sentinel", "incidents.list")] * 2 + [("servicenow", "table.list")] * 2
