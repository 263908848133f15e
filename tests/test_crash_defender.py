"""Crash safety with Microsoft Graph as the source: a real ``run`` process syncing a Defender XDR
tenant is killed right after its Nth remote write of one kind (a Graph PATCH, a Graph comment
POST, a ServiceNow create or PATCH), before the shadow commit that follows, or SIGKILLed at a
random moment during its first sync of new incidents, or runs while both remotes answer 429, 500
or drop connections; restarted (or once the faults stop), it must converge with no duplicate
ticket and every comment copied exactly once (a Graph comment has no id and a second POST adds a
second comment, GRAPH.md E). ``make soak`` runs more trials."""

from __future__ import annotations

import os
import random
import signal
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.connectors.graph import mapping
from agent.testing.emulators.graph_tenant import DefenderTenant
from agent.testing.emulators.stack import EmulatorStack
from tests.agent_process import AgentProcess

TRIALS = 8  # crash-point trials in `make test` (two of each kind)
SOAK_TRIALS = int(os.environ.get("SNOW_SYNC_SOAK_TRIALS", "100"))
CONVERGE_CYCLES = 40
WRITE_EVENTS = frozenset({"snow_created", "defender_tag_added", "snow_updated", "sentinel_updated"})
KINDS = ("graph_patch", "graph_comment", "snow_create", "snow_patch")
SEVERITY_TO_IMPACT = {"High": "1", "Medium": "2", "Low": "3", "Informational": "3"}


@dataclass
class Rig:
    stack: EmulatorStack
    config_path: Path
    rng: random.Random
    tally: Counter[str] = field(default_factory=Counter)
    agents: list[AgentProcess] = field(default_factory=list)
    notes: set[str] = field(default_factory=set)  # work notes analysts wrote (to be copied once)
    comments: set[str] = field(default_factory=set)  # Defender comments analysts wrote

    @property
    def tenant(self) -> DefenderTenant:
        return self.stack.defender

    async def start(self, crash_after: str | None = None) -> AgentProcess:
        agent = await AgentProcess(self.config_path, "run", crash_after=crash_after).start()
        self.agents.append(agent)
        return agent

    def tickets(self) -> list[dict[str, str]]:
        return [r for r in self.stack.snow["default"].tables["incident"].values() if r.get("correlation_id")]

    def key(self, graph_id: str) -> str:
        return f"{self.stack.tenant.lower()}:{graph_id}"

    def new_incidents(self, n: int) -> None:
        for _ in range(n):
            inc = self.tenant.create_incident(
                custom_tags=["snow"],
                alerts=self.rng.randint(1, 2),
                display_name=f"trial {self.rng.random():.6f}",
            )
            text = f"defender comment {self.rng.random():.9f}"
            self.tenant.analyst_comment(inc["id"], text)
            self.comments.add(text)

    def problems(self) -> list[str]:
        """Every invariant that does not hold now (empty: converged)."""
        out: list[str] = []
        by_key = Counter(r["correlation_id"] for r in self.tickets())
        out += [f"{n} tickets for {k}" for k, n in by_key.items() if n > 1]
        tickets = {r["correlation_id"]: r for r in self.tickets()}
        snow = self.stack.snow["default"]
        for inc in self.tenant.incidents.values():
            if "snow" not in inc["customTags"] and inc["status"] != "redirected":
                continue
            rec = tickets.get(self.key(inc["id"]))
            if rec is None:
                out.append(f"no ticket for {inc['id']}")
                continue
            impact = SEVERITY_TO_IMPACT[mapping.severity_view(inc["severity"])]
            if rec["impact"] != impact:
                out.append(f"{inc['id']}: severity {inc['severity']} vs impact {rec['impact']}")
            journal = [row["value"] for row in snow.journal(rec["sys_id"])]
            texts = [c["comment"] for c in inc["comments"]]
            for note in self.notes:
                if any(note == j for j in journal):  # written on this ticket
                    n = sum(note in t for t in texts)
                    if n != 1:
                        out.append(f"{inc['id']}: work note {note!r} on the incident {n} times")
            for comment in self.comments:
                if comment in texts:
                    n = sum(comment in j for j in journal)
                    if n != 1:
                        out.append(f"{inc['id']}: comment {comment!r} on the ticket {n} times")
        return out


@pytest.fixture
async def rig(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    seed = sum(map(ord, request.node.name))
    async with EmulatorStack(seed=seed, directory=tmp_path / "emu") as stack:
        cfg = stack.write_config(
            tmp_path / "agent.ini", state_db=tmp_path / "state.db", workspaces=[], defender="xdr",
            extra={"agent": {"poll_interval": "0.1s", "max_concurrency": "4", "max_close_ratio": "1"}},
        )  # fmt: skip
        rig = Rig(stack, cfg, random.Random(seed))
        try:
            yield rig
        finally:
            for agent in rig.agents:
                agent.kill()
                await agent.wait()
        print(f"\n{request.node.name}: {dict(rig.tally)}")


async def converged(rig: Rig, agent: AgentProcess) -> None:
    """Wait for the agent's cycles until one leaves every invariant true."""
    problems = ["no cycle finished"]
    start = len(agent.events)
    for _ in range(CONVERGE_CYCLES):
        await agent.wait_for(lambda e: e.get("event") == "cycle_summary", start)
        start = len(agent.events)
        problems = rig.problems()  # the emulators share this event loop: they stand still now
        if not problems:
            rig.tally["converged"] += 1
            return
    raise AssertionError(f"no convergence after {CONVERGE_CYCLES} cycles (seed {rig.rng}): {problems}")


async def converge(rig: Rig) -> None:
    agent = await rig.start()
    await converged(rig, agent)
    agent.kill(signal.SIGTERM)
    assert await agent.wait() == 0, agent.output()
    assert rig.problems() == []


def edit_for(rig: Rig, kind: str) -> int:
    """Edits that make the agent write ``kind`` at least once each; their number."""
    snow, rng = rig.stack.snow["default"], rig.rng
    linked = [r for r in rig.tickets() if r["state"] not in ("6", "7", "8")]
    if kind == "snow_create" or not linked:
        new = rng.randint(2, 4)
        rig.new_incidents(new)
        return new
    picked = rng.sample(linked, min(len(linked), rng.randint(1, 3)))
    for rec in picked:
        graph_id = rec["correlation_id"].rpartition(":")[2]
        if kind == "graph_patch":
            impact = rng.choice([v for v in ("1", "2") if v != rec["impact"]])
            snow.analyst_update("incident", rec["sys_id"], {"impact": impact}, by="bob.hunter")
        elif kind == "graph_comment":
            note = f"work note {rng.random():.9f}"
            snow.analyst_update("incident", rec["sys_id"], {"work_notes": note}, by="bob.hunter")
            rig.notes.add(note)
        else:  # snow_patch: a Defender change (and a comment) the agent copies to the ticket
            current = rig.tenant.incident(graph_id)["severity"]
            rig.tenant.analyst_update(
                graph_id, severity=rng.choice([s for s in ("high", "low") if s != current])
            )
            text = f"defender comment {rng.random():.9f}"
            rig.tenant.analyst_comment(graph_id, text)
            rig.comments.add(text)
    return len(picked)


async def crash_trials(rig: Rig, trials: int) -> None:
    rig.new_incidents(6)
    await converge(rig)
    for trial in range(trials):
        kind = KINDS[trial % len(KINDS)]
        nth = rig.rng.randint(1, edit_for(rig, kind))
        agent = await rig.start(crash_after=f"{kind}:{nth}")
        assert await agent.wait() == 137, f"the crash point {kind}:{nth} was not reached\n{agent.output()}"
        rig.tally[f"crash_{kind}"] += 1
        await converge(rig)
    assert all(rig.tally[f"crash_{k}"] >= 1 for k in KINDS[: min(trials, len(KINDS))])
    assert len(rig.notes) >= 1 and len(rig.comments) >= 6


async def _writes_seen(agent: AgentProcess, wanted: int) -> None:
    """Until the agent logged ``wanted`` more writes, or finished a cycle."""
    start = len(agent.events)

    def done(event: dict[str, object]) -> bool:
        writes = sum(1 for x in agent.events[start:] if x.get("event") in WRITE_EVENTS)
        return writes >= wanted or event.get("event") == "cycle_summary"

    await agent.wait_for(done, start)


async def kill_during_initial_sync(rig: Rig, trials: int) -> None:
    agent = await rig.start()
    await converged(rig, agent)
    for _ in range(trials):
        new = rig.rng.randint(3, 6)
        rig.new_incidents(new)
        await _writes_seen(agent, rig.rng.randint(1, 2 * new))
        agent.kill()
        assert await agent.wait() == -signal.SIGKILL, agent.output()
        rig.tally["killed"] += 1
        agent = await rig.start()
        await converged(rig, agent)
    agent.kill(signal.SIGTERM)
    assert await agent.wait() == 0, agent.output()
    assert rig.problems() == [] and len(rig.tickets()) >= trials * 3


async def faults_while_editing(rig: Rig, rounds: int) -> None:
    """Graph and ServiceNow answer 429, 500 or drop the connection now and then while analysts
    edit both sides; once the faults stop the agent converges."""
    rig.new_incidents(6)
    graph, snow = rig.stack.graph.faults, rig.stack.snow["default"].faults
    graph.set("*", rate_429=0.05, rate_500=0.08, rate_drop=0.05, retry_after=0)
    snow.set("*", rate_500=0.05, rate_drop=0.05)
    agent = await rig.start()
    for n in range(rounds):
        edit_for(rig, KINDS[n % len(KINDS)])
        start = len(agent.events)
        for _ in range(2):
            await agent.wait_for(lambda e: e.get("event") == "cycle_summary", start)
            start = len(agent.events)
    injected = sum(graph.injected.values()) + sum(snow.injected.values())
    graph.clear()
    snow.clear()
    await converged(rig, agent)
    agent.kill(signal.SIGTERM)
    assert await agent.wait() == 0, agent.output()
    assert rig.problems() == []
    rig.tally["faults_injected"] += injected
    assert injected > 0


async def test_graph_faults_while_editing_converge(rig: Rig) -> None:
    await faults_while_editing(rig, 8)


async def test_graph_crash_between_remote_write_and_shadow_commit(rig: Rig) -> None:
    await crash_trials(rig, TRIALS)


async def test_graph_kill_during_initial_sync(rig: Rig) -> None:
    await kill_during_initial_sync(rig, 4)


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_soak_graph_crash_between_remote_write_and_shadow_commit(rig: Rig) -> None:
    await crash_trials(rig, SOAK_TRIALS)


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_soak_graph_kill_during_initial_sync(rig: Rig) -> None:
    await kill_during_initial_sync(rig, SOAK_TRIALS)


@pytest.mark.soak
@pytest.mark.timeout(3600)
async def test_soak_graph_faults_while_editing_converge(rig: Rig) -> None:
    await faults_while_editing(rig, 200)
