"""ServiceNow's hourly rate limits (REFERENCE C.6, E.8): pause that instance, and only it.

Workspace ``eu`` syncs with instance ``default``, whose rate-limit rule allows the integration
user three requests an hour; workspace ``us`` syncs with instance ``second``, which has no rule.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.app import status
from agent.app.health import operations
from agent.app.runtime import Runtime
from agent.cli import render
from agent.connectors.servicenow import pause
from agent.errors import InstancePaused
from agent.log import log
from agent.testing.emulators.stack import EmulatorStack
from tests.agent_process import AgentProcess
from tests.conftest import assert_no_silent_drops
from tests.e2e import Env

HOUR = 3600.0


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Env]:
    async with EmulatorStack(directory=tmp_path / "emu", snow_instances=("default", "second")) as stack:
        # Ten minutes into an hour of the instance's clock: the window resets in about 50 minutes.
        stack.clock.advance(HOUR - stack.clock.time() % HOUR + 600)
        stack.add_workspace("eu")
        stack.add_workspace("us", servicenow="second", resource_group="rg-us")
        cfg = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            workspaces=["eu", "us"],
            extra={"agent": {"overlap": "0s", "metrics_listen": "127.0.0.1:0"}},
        )
        yield Env(stack, tmp_path, cfg, ["eu", "us"])
        assert_no_silent_drops(stack)


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []
    log.sinks.append(found.append)
    yield found
    log.sinks.remove(found.append)


def tickets(env: Env, instance: str) -> list[str]:
    return sorted(r["correlation_id"] for r in env.stack.snow[instance].tables["incident"].values())


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text()


async def test_e8_an_hourly_limit_pauses_that_instance_until_its_reset_across_restarts(
    two: Env,
    records: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    env = two
    default = env.stack.snow["default"]
    default.set_rate_limit(env.stack.snow_user, 3)
    eu = sorted(env.ws("eu").create_incident(title=f"eu {i}", labels=["snow"])["name"] for i in range(3))
    for i in range(2):
        env.ws("us").create_incident(title=f"us {i}", labels=["snow"])

    # 1. the window is used up mid-cycle: one warning, the rest of that workspace's work waits
    results = await env.cycle()
    eu_stats, us_stats = results["eu"], results["us"]
    assert not isinstance(eu_stats, BaseException) and not isinstance(us_stats, BaseException)
    assert eu_stats.failures == 0 and eu_stats.deferred >= 1 and eu_stats.created < 3
    assert (us_stats.created, us_stats.failures) == (2, 0)  # the other instance went on
    [paused] = [r for r in records if r["event"] == "snow_rate_limit_paused"]
    assert paused["level"] == "warning" and paused["instance"] == "default"
    until = paused["until"]
    assert 2900 < paused["seconds"] <= 3000  # Retry-After: the rest of the hour
    throttled = [c for c in env.stack.recorder.since(0) if c.instance == "default" and c.status == 429]
    assert 1 <= len(throttled) <= 4  # the requests already in flight, no retry spent on them

    # 2. a new run (a restart) keeps the pause: no call reaches the instance, Sentinel and the
    # other instance go on, and nothing more is announced
    env.ws("us").create_incident(title="us later", labels=["snow"])
    mark = env.stack.recorder.mark()
    records.clear()
    results = await env.cycle()
    assert isinstance(results["eu"], InstancePaused) and str(results["eu"]).count(until) == 1
    assert not isinstance(results["us"], BaseException) and results["us"].created == 1
    calls = env.calls_since(mark)
    assert not [c for c in calls if c.system == "servicenow" and c.instance == "default"]
    assert [r["event"] for r in records if r["level"] == "warning"] == []
    [skipped] = [r for r in records if r["event"] == "cycle_paused"]
    assert skipped["workspace"] == "eu" and skipped["until"] == until

    # 3. status, /readyz and the gauges show it
    report = await status.collect(env.config)
    assert report["servicenow_paused"] == {"default": {"until": until, "reason": paused["reason"]}}
    render.status(report, __import__("sys").stdout)
    assert f"servicenow:default PAUSED until {until}" in capsys.readouterr().out
    async with Runtime(env.config) as rt, operations(env.config, rt) as ops:
        assert ops is not None
        code, body = await _get(ops.url + "/readyz")
        assert code == 503 and '"servicenow_paused":{"default":"' + until + '"}' in body
        assert "rate-limits us: paused until" in body
        _, text = await _get(ops.url + "/metrics")
    samples = {
        (s.name, s.labels.get("client")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("sentinel_snow_sync_rate_limit")
    }
    assert samples[("sentinel_snow_sync_rate_limit_paused", "default")] == 1
    assert samples[("sentinel_snow_sync_rate_limit_paused", "second")] == 0
    ends = samples[("sentinel_snow_sync_rate_limit_pause_until_timestamp_seconds", "default")]
    assert ends == pytest.approx(time.time() + paused["seconds"], abs=120)
    assert samples[("sentinel_snow_sync_rate_limit_pause_until_timestamp_seconds", "second")] == 0

    # 4. `once` during the pause exits 1 at once, naming the reset time
    async with AgentProcess(env.config_path, "once") as agent:
        assert await agent.wait() == 1, agent.output()
    [said] = agent.named("once_paused")
    assert said["until"] == until and said["instance"] == "default" and said["workspaces"] == ["eu"]

    # 5. after the reset everything left behind is synced, each ticket exactly once
    env.stack.clock.advance(HOUR)  # the instance's window resets
    default.set_rate_limit(env.stack.snow_user, 100)  # (and an admin raised the quota)
    later = time.time() + HOUR
    monkeypatch.setattr(pause, "_now", lambda: later)
    records.clear()
    results = await env.cycle()
    assert not isinstance(results["eu"], BaseException), results["eu"]
    assert tickets(env, "default") == eu
    assert [r["event"] for r in records if r["event"].startswith("snow_rate_limit")] == [
        "snow_rate_limit_pause_ended"
    ]
    assert (await status.collect(env.config))["servicenow_paused"] == {}


async def test_e8_a_short_retry_after_is_retried_not_paused(two: Env, records: list[dict[str, Any]]) -> None:
    env = two
    env.ws("eu").create_incident(title="eu", labels=["snow"])
    env.stack.snow["default"].faults.once("table.post", 429)  # Retry-After: 1
    stats = (await env.cycle())["eu"]
    assert not isinstance(stats, BaseException) and (stats.created, stats.failures) == (1, 0)
    assert not [r for r in records if r["event"].startswith("snow_rate_limit")]
    assert (await status.collect(env.config))["servicenow_paused"] == {}
