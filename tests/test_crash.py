"""Crash safety at process level: a real ``run`` process is SIGKILLed at seeded random moments,
restarted, and must converge to a state with no duplicate and nothing lost.

Three kinds of trial, on one emulator stack whose data keeps growing and changing:

* **initial sync**: new incidents (with alerts, entities, comments) appear; the agent is killed
  after a random number of its writes;
* **steady edits**: the activity simulator edits both sides while the agent runs; the agent
  is killed at a random moment;
* **write/commit window**: the agent kills itself right after its Nth successful remote write
  of one kind, before the shadow commit that follows (run under :mod:`agent.testing.crashpoint`).

After each kill the simulator is stopped, the agent restarted, and once a cycle leaves every
invariant of :mod:`tests.sync_invariants` true it is stopped with SIGTERM; the invariants are
checked again on the final state. ``make soak`` (``SNOW_SYNC_SOAK=1``) runs hundreds of trials.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.app.metrics import WRITE_EVENTS as WRITE_EVENTS_BY_KIND
from agent.config import load_config
from agent.testing.emulators.simulator import Simulator
from agent.testing.emulators.stack import EmulatorStack
from tests.agent_process import AgentProcess
from tests.sync_invariants import Checker, Findings

TRIALS = 7  # per kind of trial in `make test` (21 in all)
SOAK_TRIALS = int(os.environ.get("SNOW_SYNC_SOAK_TRIALS", "100"))  # per kind in `make soak`
WRITE_EVENTS = frozenset(
    {"snow_created", "sentinel_label_added", "snow_updated", "sentinel_updated", "link_adopted"}
)
ANY_WRITE = frozenset(WRITE_EVENTS_BY_KIND)  # every event that follows a remote write
CONVERGE_CYCLES = 40


@dataclass
class Rig:
    stack: EmulatorStack
    config_path: Path
    sim: Simulator
    rng: random.Random
    seed: int = 0
    tally: dict[str, int] = field(default_factory=dict)
    agents: list[AgentProcess] = field(default_factory=list)

    async def start(self, crash_after: str | None = None) -> AgentProcess:
        """A ``run`` process; whatever is still running is killed when the test ends."""
        agent = await AgentProcess(self.config_path, "run", crash_after=crash_after).start()
        self.agents.append(agent)
        return agent

    @property
    def checker(self) -> Checker:
        return Checker(self.stack, load_config(self.config_path))

    def count(self, key: str, n: int = 1) -> None:
        self.tally[key] = self.tally.get(key, 0) + n

    def duplicates(self) -> int:
        """ServiceNow tickets beyond one per Sentinel incident (0 when all is well)."""
        keys = Counter(r["correlation_id"] for r in self.stack.snow["default"].tables["incident"].values())
        return sum(n - 1 for key, n in keys.items() if key)

    def comment_sync(self) -> bool:
        return self.checker.check(["soc"]).comment_links > 0

    def explain(self, findings: Findings) -> str:
        """What a failed check needs to be diagnosed: the seed, the trial, and for each incident a
        problem names, both sides' comments, its rows in the state db and every agent log line
        about it (all runs, killed ones included)."""
        out = [f"seed {self.seed}, after {self.tally.get('trials', 0)} trials: {findings.problems[:10]}"]
        ws = self.stack.workspaces["soc"]
        named = dict.fromkeys(n for p in findings.problems for n in _GUID.findall(p) if n in ws.incidents)
        for name in list(named)[:3]:
            out += [f"--- incident {name}", *self._sides(name)]
            out += [f"shadow {row}" for row in _shadow_rows(self.checker.config.agent.state_db, name)]
            for run, agent in enumerate(self.agents):
                out += [f"run {run}: {e}" for e in agent.events if e.get("incident") == name]
        return "\n".join(out)

    def _sides(self, name: str) -> list[str]:
        """The incident's etag and comments, its ticket's mod count and journal."""
        out: list[str] = []
        ws, snow = self.stack.workspaces["soc"], self.stack.snow["default"]
        inc = ws.incidents[name]
        out.append(f"etag {inc['etag']} modified {inc['properties'].get('lastModifiedTimeUtc')}")
        for c in ws.comments(name):
            p = c["properties"]
            author = (p.get("author") or {}).get("userPrincipalName") or "-"
            out.append(f"comment {c['name']} {p['createdTimeUtc']} {author}: {p['message']!r}")
        for rec in (r for r in snow.tables["incident"].values() if r.get("correlation_id") == name):
            out.append(f"record {rec['number']} sys_mod_count {rec.get('sys_mod_count')}")
            out += [
                f"journal {j['sys_id']} {j['sys_created_on']} {j['sys_created_by']} {j['element']}: "
                f"{j['value'][-120:]!r}"
                for j in snow.journal(rec["sys_id"])
            ]
        return out


_GUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def _shadow_rows(path: Path, incident: str) -> list[dict[str, Any]]:
    """The incident's link and comment links, read directly (the agent may still hold the db)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        db.row_factory = sqlite3.Row
        return [
            {"table": table, **dict(row)}
            for table in ("links", "comment_links")
            for row in db.execute(f"SELECT * FROM {table} WHERE incident = ?", (incident,))
        ]
    finally:
        db.close()


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    seed = sum(map(ord, request.node.name))
    async with EmulatorStack(seed=seed, directory=tmp_path / "emu") as stack:
        stack.add_workspace("soc")
        cfg = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            workspaces=["soc"],
            # The close-ratio valve has its own tests; random closes must not trip it here.
            extra={
                "agent": {
                    "poll_interval": "0.1s",
                    "max_concurrency": "4",
                    "max_close_ratio": "1",
                }
            },
        )
        rig = Rig(stack, cfg, Simulator(stack, seed=seed), random.Random(seed), seed)
        try:
            yield rig
        finally:
            for agent in rig.agents:
                agent.kill()
                await agent.wait()
        print(f"\n{request.node.name}: {rig.tally}")


async def converged(rig: Rig, agent: AgentProcess) -> Findings:
    """Wait for the running agent's cycles until one leaves every invariant true."""
    checker = rig.checker
    findings = Findings(problems=["no cycle finished"])
    start = len(agent.events)
    for _ in range(CONVERGE_CYCLES):
        await agent.wait_for(lambda e: e.get("event") == "cycle_summary", start)
        start = len(agent.events)
        # The emulators run on this event loop, so they stand still while this runs.
        findings = checker.check(["soc"])
        if findings:
            rig.count("converged")
            rig.count("duplicate_tickets", rig.duplicates())
            rig.count("comment_checks", findings.comments_checked)
            return findings
    raise AssertionError(f"no convergence after {CONVERGE_CYCLES} cycles: {rig.explain(findings)}")


async def stop(rig: Rig, agent: AgentProcess) -> Findings:
    """SIGTERM the agent (it must exit 0) and check the final state."""
    agent.kill(signal.SIGTERM)
    assert await agent.wait() == 0, agent.output()
    final = rig.checker.check(["soc"])
    assert final, rig.explain(final)
    return final


async def converge(rig: Rig) -> Findings:
    """Restart ``run`` (simulator stopped), let it converge, stop it; the final invariants."""
    agent = await rig.start()
    await converged(rig, agent)
    return await stop(rig, agent)


def _writes(agent: AgentProcess, start: int = 0) -> int:
    return sum(1 for e in agent.events[start:] if e.get("event") in WRITE_EVENTS)


async def _kill_after_writes(rig: Rig, agent: AgentProcess, writes: int) -> int:
    """SIGKILL after the agent logged ``writes`` more writes (or finished a cycle), plus a random
    few milliseconds so the kill also lands between log lines; the writes it made."""
    start = len(agent.events)

    def done(event: dict[str, Any]) -> bool:
        return _writes(agent, start) >= writes or event.get("event") == "cycle_summary"

    await agent.wait_for(done, start)
    await asyncio.sleep(rig.rng.uniform(0, 0.03))
    agent.kill()
    assert await agent.wait() == -signal.SIGKILL, agent.output()
    return _writes(agent, start)


async def test_kill_during_initial_sync(rig: Rig) -> None:
    await kill_during_initial_sync(rig, TRIALS)


async def test_kill_during_steady_edits(rig: Rig) -> None:
    await kill_during_steady_edits(rig, TRIALS)


async def test_crash_between_remote_write_and_shadow_commit(rig: Rig) -> None:
    await crash_between_remote_write_and_shadow_commit(rig, TRIALS)


@pytest.mark.soak
async def test_soak_kill_during_initial_sync(rig: Rig) -> None:
    await kill_during_initial_sync(rig, SOAK_TRIALS)


@pytest.mark.soak
async def test_soak_kill_during_steady_edits(rig: Rig) -> None:
    await kill_during_steady_edits(rig, SOAK_TRIALS)


@pytest.mark.soak
async def test_soak_crash_between_remote_write_and_shadow_commit(rig: Rig) -> None:
    await crash_between_remote_write_and_shadow_commit(rig, SOAK_TRIALS)


async def kill_during_initial_sync(rig: Rig, trials: int) -> None:
    agent = await rig.start()
    await converged(rig, agent)
    for _trial in range(trials):
        new = rig.rng.randint(3, 8)
        rig.sim.seed(["soc"], new)  # the running agent picks them up in its next cycle
        rig.count("writes_before_kill", await _kill_after_writes(rig, agent, rig.rng.randint(1, 2 * new)))
        rig.count("trials")
        # The restarted agent converges, then serves as the next trial's victim.
        agent = await rig.start()
        await converged(rig, agent)
    await stop(rig, agent)
    assert rig.tally["trials"] == trials
    assert rig.tally["writes_before_kill"] > 0  # kills did land after some writes
    links = rig.checker.check(["soc"]).links
    assert links >= trials * 3 * 0.5  # the data really grew (about 90% are labelled)


async def kill_during_steady_edits(rig: Rig, trials: int) -> None:
    rig.sim.seed(["soc"], 12)
    agent = await rig.start()
    await converged(rig, agent)
    for _trial in range(trials):
        window = rig.rng.uniform(0.3, 1.2)
        mark = len(agent.events)
        edits = asyncio.create_task(rig.sim.run(window + 0.3, rate=8))
        await asyncio.sleep(window)
        # A kill before the trial's first write would test nothing: wait for one if need be.
        await agent.wait_for(lambda e: e.get("event") in ANY_WRITE, mark)
        agent.kill()
        assert await agent.wait() == -signal.SIGKILL, agent.output()
        rig.count("edits", await edits)  # the simulator stops before the restart
        writes = sum(1 for e in agent.events[mark:] if e.get("event") in ANY_WRITE)
        assert writes >= 1, "the kill landed before any write of this trial"
        rig.count("writes_before_kill", writes)
        rig.count("trials")
        agent = await rig.start()
        await converged(rig, agent)
    await stop(rig, agent)
    assert rig.tally["trials"] == trials
    assert rig.tally["edits"] >= trials * 3
    assert rig.tally["writes_before_kill"] >= trials


def _edit_for(rig: Rig, kind: str, linked: list[dict[str, Any]]) -> int:
    """Analyst edits that make the agent write ``kind`` at least once per edit; their number."""
    ws, snow, rng = rig.stack.workspaces["soc"], rig.stack.snow["default"], rig.rng
    open_links = [p for p in linked if p["state"] not in ("6", "7", "8")]
    if kind == "snow_create" or not open_links:
        new = rng.randint(2, 5)
        for _ in range(new):
            ws.create_incident(title=f"crash trial {rng.random():.6f}", severity="Medium", labels=["snow"])
        return new
    picked = rng.sample(open_links, min(len(open_links), rng.randint(1, 4)))
    for rec in picked:
        if kind == "snow_patch":
            props = ws.incidents[rec["correlation_id"]]["properties"]
            severity = rng.choice([s for s in ("High", "Medium", "Low") if s != props["severity"]])
            ws.analyst_update(rec["correlation_id"], severity=severity)
        elif kind == "sentinel_put":
            impact = rng.choice([v for v in ("1", "2") if v != rec["impact"]])
            snow.analyst_update("incident", rec["sys_id"], {"impact": impact}, by="bob.hunter")
        else:  # sentinel_comment: a work note the agent copies to Sentinel
            snow.analyst_update(
                "incident", rec["sys_id"], {"work_notes": f"note {rng.random()}"}, by="bob.hunter"
            )
    return len(picked)


async def crash_between_remote_write_and_shadow_commit(rig: Rig, trials: int) -> None:
    rig.sim.seed(["soc"], 8)
    await converge(rig)
    kinds = ["snow_create", "snow_patch", "sentinel_put"]
    if rig.comment_sync():
        kinds.append("sentinel_comment")
    for trial in range(trials):
        kind = kinds[trial % len(kinds)]
        linked = [r for r in rig.stack.snow["default"].tables["incident"].values() if r.get("correlation_id")]
        nth = rig.rng.randint(1, _edit_for(rig, kind, linked))
        agent = await rig.start(crash_after=f"{kind}:{nth}")
        assert await agent.wait() == 137, f"the crash point {kind}:{nth} was not reached\n{agent.output()}"
        rig.count(f"crash_{kind}")
        rig.count("trials")
        await converge(rig)
    assert rig.tally["trials"] == trials
    assert all(rig.tally.get(f"crash_{k}", 0) >= 1 for k in kinds[: min(trials, len(kinds))])


async def test_ticket_of_a_crashed_create_is_adopted_after_the_incident_closed(rig: Rig) -> None:
    """The agent dies after the POST, before the link; the analyst then closes the incident. The
    restarted agent would not create a ticket for a closed incident, but must adopt (and close)
    the one that exists instead of leaving it open and unlinked."""
    ws = rig.stack.workspaces["soc"]
    inc = ws.create_incident(title="crash before link", severity="High", labels=["snow"])
    agent = await rig.start(crash_after="snow_create:1")
    assert await agent.wait() == 137, agent.output()
    records = [r for r in rig.stack.snow["default"].tables["incident"].values() if r["correlation_id"]]
    assert [r["correlation_id"] for r in records] == [inc["name"]]
    ws.analyst_update(
        inc["name"],
        status="Closed",
        classification="FalsePositive",
        classificationReason="IncorrectAlertLogic",
        classificationComment="noise",
    )
    found = await converge(rig)
    assert found.links == found.records == 1
    rec = rig.stack.snow["default"].record("incident", records[0]["sys_id"])
    assert rec["state"] == "6" and rec["close_code"]


async def test_a_failed_check_names_the_seed_and_what_the_incident_looks_like(rig: Rig) -> None:
    """The trials' failure message carries what diagnosing a lost comment takes."""
    ws = rig.stack.workspaces["soc"]
    inc = ws.create_incident(title="explained", severity="High", labels=["snow"])
    ws.analyst_comment(inc["name"], "copied before the stop", author_upn=rig.stack.analysts[0].upn)
    await converge(rig)
    ws.analyst_comment(inc["name"], "written while no agent runs", author_upn=rig.stack.analysts[1].upn)
    found = rig.checker.check(["soc"])
    assert "'written while no agent runs' missing on ServiceNow (0 of 1)" in found.problems[-1]
    text = rig.explain(found)
    assert text.startswith(f"seed {rig.seed}, after 0 trials: ")
    assert f"--- incident {inc['name']}" in text and text.count("--- incident") == 1
    assert "'written while no agent runs'" in text  # both sides' comments ...
    assert "copied before the stop" in text.split("journal ", 1)[1]
    assert "shadow {'table': 'comment_links'" in text  # ... the shadow's rows, the agent's lines
    assert "run 0: {'ts'" in text and "'event': 'comment_to_snow'" in text
