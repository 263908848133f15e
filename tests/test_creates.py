"""Creating tickets when ServiceNow answers badly: every ticket exactly once, settled early.

A create whose outcome is unknown (a 5xx, a dropped connection after the request was sent) is
settled in the same cycle by a unique-key look-up, and POSTed again only when the ticket is
absent. A transient failure is retried by the very next cycle, so two ``once`` runs in a row
are enough even under heavy faults, and a ``once`` that leaves an incident behind exits 1.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from agent.log import log
from tests.agent_process import AgentProcess
from tests.e2e import Env, writes


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    log.sinks.append(records.append)
    yield records
    log.sinks.remove(records.append)


HIBERNATING = "ServiceNow answered HTML, not JSON (hibernating instance, login page or proxy?)"


def _tickets(env: Env) -> Counter[str]:
    return Counter(r["correlation_id"] for r in env.snow.tables["incident"].values() if r["correlation_id"])


async def test_a_create_answered_503_is_settled_and_made_in_the_same_cycle(
    env: Env, events: list[dict[str, Any]]
) -> None:
    name = env.ws().create_incident(title="t", labels=["snow"])["name"]
    env.snow.faults.once("table.post", 503)  # refused before the instance did anything
    mark = env.stack.recorder.mark()
    stats = await env.stats()
    assert (stats.created, stats.failures) == (1, 0)
    assert _tickets(env) == Counter({name: 1})
    posts = [c for c in writes(env.calls_since(mark)) if c.method == "POST" and c.route == "table.post"]
    assert [c.status for c in posts] == [503, 201]
    assert [e["outcome"] for e in events if e["event"] == "snow_create_settled"] == ["absent"]


@pytest.mark.parametrize("status", [0, 503])
async def test_a_create_whose_answer_was_lost_after_it_landed_is_found_not_repeated(
    env: Env, events: list[dict[str, Any]], status: int
) -> None:
    name = env.ws().create_incident(title="t", labels=["snow"])["name"]
    env.snow.lose_answer("table.post", status)  # created, but the answer never arrives
    stats = await env.stats()
    assert (stats.created, stats.failures) == (1, 0)
    assert _tickets(env) == Counter({name: 1})
    [settled] = [e for e in events if e["event"] == "snow_create_settled"]
    assert settled["outcome"] == "created" and settled["snow_number"] == env.snow_record(name)["number"]


async def test_a_transient_failure_is_retried_by_the_very_next_cycle(
    env: Env, events: list[dict[str, Any]]
) -> None:
    name = env.ws().create_incident(title="t", labels=["snow"])["name"]
    env.snow.faults.fail("/table/incident", 503, method="POST")  # every POST of this cycle
    first = await env.stats()
    assert first.failures == 1 and not _tickets(env)
    [failed] = [e for e in events if e["event"] == "incident_failed"]
    assert failed["kind"] == "transient" and failed["level"] == "info"  # healed by the next cycle
    env.snow.faults.clear()
    second = await env.stats()  # at once: no backoff holds it back
    assert (second.created, second.failures, second.backoff) == (1, 0, 0)
    assert _tickets(env) == Counter({name: 1})


async def test_a_repeated_transient_failure_waits_and_once_says_so(env: Env) -> None:
    env.rewrite({"agent": {"overlap": "0s", "poll_interval": "30s"}})
    env.ws().create_incident(title="t", labels=["snow"])
    env.snow.faults.fail("/table/incident", 503, method="POST")
    await env.cycle()
    async with AgentProcess(env.config_path, "once") as agent:  # fails again: now it waits
        assert await agent.wait() == 1, agent.output()
    env.snow.faults.clear()
    async with AgentProcess(env.config_path, "once") as agent:  # still waiting for its retry
        assert await agent.wait() == 1, agent.output()
    [summary] = agent.named("cycle_summary")
    assert summary["backoff"] == 1 and summary["failures"] == 0
    [left] = agent.named("once_incomplete")
    assert (left["failed"], left["backoff"]) == (0, 1) and left["level"] == "warning"
    assert not _tickets(env)


async def test_under_429_and_503_two_once_runs_create_every_ticket_exactly_once(env: Env) -> None:
    """30% 429 + 10% 503 on every ServiceNow and Sentinel route; 20 new incidents."""
    env.rewrite({"agent": {"overlap": "0s", "max_concurrency": "8"}})
    names = [env.ws().create_incident(title=f"t{i}", labels=["snow"])["name"] for i in range(20)]
    for faults in (env.snow.faults, env.stack.sentinel.faults):
        faults.set("*", rate_429=0.3, rate_503=0.1, retry_after=1)
    codes = []
    for _ in range(2):
        async with AgentProcess(env.config_path, "once") as agent:
            codes.append(await agent.wait())
        left = agent.named("once_incomplete")
        # an exit code of 1 always comes with the count of what was left behind, and only then
        assert (codes[-1] == 1) == bool(left), agent.output()
        assert codes[-1] in (0, 1), agent.output()
    injected = Counter(env.snow.faults.injected) + Counter(env.stack.sentinel.faults.injected)
    assert injected["429"] > 10 and injected["503"] > 3  # the faults really happened
    assert _tickets(env) == Counter({name: 1 for name in names})


async def test_e7_a_hibernating_instance_fails_the_run_transiently_and_the_next_run_syncs_all(
    env: Env,
) -> None:
    ws = env.ws()
    first = ws.create_incident(title="before", labels=["snow"])["name"]
    await env.stats()
    ws.analyst_update(first, severity="High")
    later = [ws.create_incident(title=f"while asleep {i}", labels=["snow"])["name"] for i in range(3)]
    env.snow.hibernating = True
    async with AgentProcess(env.config_path, "once") as agent:
        assert await agent.wait() == 1, agent.output()
    [failed] = agent.named("cycle_failed")
    assert HIBERNATING in failed["error"]
    parked = [e for e in agent.named("incident_failed") if e.get("kind") == "permanent"]
    assert not parked
    env.snow.hibernating = False  # woken up
    async with AgentProcess(env.config_path, "once") as agent:
        assert await agent.wait() == 0, agent.output()
    assert _tickets(env) == Counter({name: 1 for name in [first, *later]})
    assert env.snow_record(first)["impact"] == "1"
