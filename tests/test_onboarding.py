"""A Sentinel workspace onboarded to the Defender portal moves to the Graph source (GRAPH.md H.1,
H.2, H.4): its Defender XDR incidents, synced through ARM so far, are synced through Graph from
the first cycle of ``[defender:NAME] workspaces = ...`` on, keeping every link: no second ticket,
no comment posted twice, watermarks carried; ARM-only incidents stay with the workspace, and each
incident is written through one API only. The emulators are coupled as an onboarded workspace is
(Graph and ARM mirror each other after a delay)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.store.sqlite.links import LinkTables
from agent.store.sqlite.store import Shadow
from agent.testing.emulators.graph_arm import SentinelCoupling
from agent.testing.emulators.stack import EmulatorStack
from tests.e2e import Env

DELAY = 2.0


@pytest.fixture
async def both(tmp_path: Path) -> AsyncIterator[tuple[Env, SentinelCoupling]]:
    stack = EmulatorStack(directory=tmp_path / "emu")
    stack.add_workspace("soc")
    coupling = stack.couple_defender("soc", delay=DELAY)
    async with stack:
        cfg = stack.write_config(
            tmp_path / "agent.ini", state_db=tmp_path / "state.db", workspaces=["soc"],
            extra={"agent": {"max_concurrency": "4", "max_close_ratio": "1"}},
        )  # fmt: skip
        yield Env(stack, tmp_path, cfg, ["soc"]), coupling


def later(env: Env, coupling: SentinelCoupling) -> None:
    """The mirror's delay passes and its copies are applied (as any request would)."""
    env.stack.clock.advance(DELAY + 0.1)
    coupling.pump()


def onboard(env: Env) -> None:
    env.rewrite({
        "defender:xdr": {"oauth": "default", "graph_url": env.stack.graph_url, "servicenow": "default",
                         "incident_filter": "snow", "workspaces": "soc"},
    })  # fmt: skip


def key(env: Env, graph_id: str) -> str:
    return f"{env.stack.tenant.lower()}:{graph_id}"


def journal(env: Env, sys_id: str) -> list[str]:
    return [row["value"] for row in env.snow.journal(sys_id)]


async def test_onboarding_moves_every_link_without_a_second_ticket_or_comment(
    both: tuple[Env, SentinelCoupling],
) -> None:
    env, coupling = both
    tenant, ws = env.stack.defender, env.ws()
    xdr = tenant.create_incident(display_name="Phish on one endpoint", custom_tags=["snow"], alerts=2)
    tenant.analyst_comment(xdr["id"], "Isolated the device pending review.")
    native = ws.create_incident(title="A rule of our own", labels=["snow"])  # ARM only (H.2)
    later(env, coupling)
    arm_name = coupling.links[xdr["id"]]
    # Before onboarding: the workspace syncs both incidents through ARM.
    await env.stats("soc")
    await env.stats("soc")
    rec = env.snow_record(arm_name)
    env.snow.analyst_update("incident", rec["sys_id"], {"work_notes": "Blocked the sender"}, by="bob.hunter")
    await env.stats("soc")
    later(env, coupling)  # our ARM comment reaches the Defender incident (H.4)
    assert sum("Blocked the sender" in c["comment"] for c in tenant.comments(xdr["id"])) == 1
    journal_before = journal(env, rec["sys_id"])
    watermark = None
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        watermark = (await shadow.get_watermark("default", "soc", "sentinel")).modified

    onboard(env)
    mark = env.stack.recorder.mark()
    results = await env.cycle()
    assert not [r for r in results.values() if isinstance(r, BaseException)], results
    for _ in range(2):
        later(env, coupling)
        await env.cycle()
    # The same ticket, now keyed by the Graph incident; the native one stays with the workspace.
    tickets = env.snow_records()
    assert len(tickets) == 2
    moved = env.snow.record("incident", rec["sys_id"])
    assert moved["correlation_id"] == key(env, xdr["id"]) and moved["correlation_display"] == "Defender/xdr"
    assert env.snow_record(native["name"])["correlation_display"].startswith("Sentinel/")
    # No comment twice, either way.
    assert sum("Blocked the sender" in c["comment"] for c in tenant.comments(xdr["id"])) == 1
    assert journal(env, rec["sys_id"]) == journal_before
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        assert await shadow.get_links("default", "soc", [arm_name]) == {}
        link = (await shadow.get_links("default", "xdr", [key(env, xdr["id"])]))[key(env, xdr["id"])]
        assert link.sys_id == rec["sys_id"]
        assert (await shadow.get_watermark("default", "xdr", "sentinel")).modified is not None
    # Watermarks carried: the source's first listing starts near the workspace's watermark, not
    # max_age_days back (which would be a first run's full listing).
    lists = [c for c in env.stack.recorder.since(mark) if c.system == "graph" and c.route == "incidents.list"]
    first = lists[0].query["$filter"]
    since = datetime.fromisoformat(
        first.split("lastUpdateDateTime ge ", 1)[1].split()[0].replace("Z", "+00:00")
    )
    assert watermark is not None and watermark - timedelta(minutes=10) <= since <= watermark

    # From now on the XDR incident is written through Graph only, the native one through ARM.
    seen: list[tuple[str, Any]] = []
    tenant.listeners.append(lambda kind, i, d: seen.append((i, d.get("origin"))))
    env.snow.analyst_update("incident", rec["sys_id"], {"impact": "1", "work_notes": "Reset the password"},
                            by="bob.hunter")  # fmt: skip
    await env.cycle()
    later(env, coupling)
    await env.cycle()
    assert tenant.incident(xdr["id"])["severity"] == "high"
    assert (xdr["id"], "graph-api") in seen
    assert sum("Reset the password" in c["comment"] for c in tenant.comments(xdr["id"])) == 1
    tenant.analyst_comment(xdr["id"], "Confirmed phishing.")
    await env.cycle()
    later(env, coupling)
    await env.cycle()
    assert sum("Confirmed phishing." in n for n in journal(env, rec["sys_id"])) == 1
    # Since onboarding, nothing was written to the XDR incident through ARM (H.4).
    writes = ("PUT", "PATCH", "POST", "DELETE")
    arm = [c for c in env.stack.recorder.since(mark) if c.system == "sentinel" and c.method in writes]
    assert [c.path for c in arm if arm_name in c.path] == []
    # A new Defender incident, visible in both APIs: one ticket, made by the Graph source.
    fresh = tenant.create_incident(display_name="Second phish", custom_tags=["snow"], alerts=1)
    later(env, coupling)
    for _ in range(2):
        await env.cycle()
    assert env.snow_record(key(env, fresh["id"]))["correlation_display"] == "Defender/xdr"
    assert len(env.snow_records()) == 3


async def test_a_plan_before_the_move_lists_nothing_for_the_defender_source(
    both: tuple[Env, SentinelCoupling],
) -> None:
    env, coupling = both
    xdr = env.stack.defender.create_incident(display_name="Phish", custom_tags=["snow"], alerts=1)
    later(env, coupling)
    await env.stats("soc")
    onboard(env)
    stats = await env.stats("xdr", dry_run=True)
    assert stats.listed_sentinel == 0 and stats.planned == []  # nothing moved by a dry run
    assert env.snow_record(coupling.links[xdr["id"]])["correlation_display"].startswith("Sentinel/")


async def test_a_move_interrupted_after_the_ticket_was_rekeyed_completes_without_a_second_ticket(
    both: tuple[Env, SentinelCoupling], monkeypatch: pytest.MonkeyPatch
) -> None:
    env, coupling = both
    xdr = env.stack.defender.create_incident(display_name="Phish", custom_tags=["snow"], alerts=1)
    later(env, coupling)
    await env.stats("soc")
    rec = env.snow_record(coupling.links[xdr["id"]])
    onboard(env)

    async def died(*args: Any, **kwargs: Any) -> None:
        raise OSError("the disk went away")  # after the ticket's PATCH, before the shadow commit

    monkeypatch.setattr(LinkTables, "move_link", died)
    results = await env.cycle()
    assert isinstance(results["xdr"], BaseException)
    assert env.snow.record("incident", rec["sys_id"])["correlation_id"] == key(env, xdr["id"])
    monkeypatch.undo()
    for _ in range(2):
        await env.cycle()
    assert len(env.snow_records()) == 1
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        assert (await shadow.get_links("default", "xdr", [key(env, xdr["id"])]))[
            key(env, xdr["id"])
        ].sys_id == (rec["sys_id"])
