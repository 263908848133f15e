"""Metrics, health and readiness of a running agent, scraped over HTTP while it syncs the emulators."""

from __future__ import annotations

import asyncio
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from agent.app.health import Operations, Readiness, operations
from agent.app.metrics import METRICS, AgentMetrics
from agent.app.runtime import Runtime
from agent.connectors.retry import RetryPolicy
from agent.errors import AuthError, ConfigError
from agent.log import log
from agent.sync.cycle import CycleOptions, run_workspaces
from tests.e2e import Env
from tests.test_cli import AGENT

P = "sentinel_snow_sync"
FAST = RetryPolicy(attempts=3, total=5, base=0.01, cap=0.05)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


class Agent:
    """The production runtime with its operations server, cycled by the test."""

    def __init__(self, env: Env, rt: Runtime, ops: Operations) -> None:
        self.env, self.rt, self.ops = env, rt, ops

    async def cycle(self) -> None:
        await run_workspaces(self.rt.syncs(), CycleOptions())

    async def scrape(self) -> Samples:
        status, text = await get(self.ops.url + "/metrics")
        assert status == 200
        return parse(text)


@pytest.fixture
async def agent(env: Env) -> AsyncIterator[Agent]:
    env.rewrite({"agent": {"metrics_listen": "127.0.0.1:0", "poll_interval": "60s"}})
    config = env.config
    async with Runtime(config, retry=FAST) as rt, operations(config, rt) as ops:
        assert ops is not None
        yield Agent(env, rt, ops)
    assert ops.metrics.observe not in log.observers


async def test_health_and_readiness_follow_the_cycles(agent: Agent) -> None:
    status, body = await get(agent.ops.url + "/healthz")
    assert status == 200 and orjson.loads(body)["status"] == "ok"
    status, body = await get(agent.ops.url + "/readyz")
    assert status == 503
    assert orjson.loads(body)["lagging"] == {"soc": "no successful cycle yet"}
    await agent.cycle()
    status, body = await get(agent.ops.url + "/readyz")
    assert status == 200 and orjson.loads(body)["ready"] is True


async def test_cycle_writes_links_and_http_counters(agent: Agent) -> None:
    ws = agent.env.ws()
    for i in range(3):
        ws.create_incident(title=f"incident {i}", labels=["snow"])
    before = await agent.scrape()
    assert value(before, f"{P}_cycles_total", workspace="soc", result="ok") == 0
    assert value(before, f"{P}_writes_total", workspace="soc", system="servicenow", kind="create") == 0
    assert value(before, f"{P}_poll_interval_seconds") == 60
    for check in ("empty_listing", "max_close_ratio"):  # zero until a trip, so increase() sees the first
        assert value(before, f"{P}_safety_valve_trips_total", workspace="soc", check=check) == 0
    await agent.cycle()
    s = await agent.scrape()
    assert value(s, f"{P}_build_info", version=__import__("agent").__version__) == 1
    assert value(s, f"{P}_cycles_total", workspace="soc", result="ok") == 1
    assert value(s, f"{P}_cycles_total", workspace="soc", result="failed") == 0
    assert value(s, f"{P}_cycle_duration_seconds_count", workspace="soc") == 1
    assert value(s, f"{P}_writes_total", workspace="soc", system="servicenow", kind="create") == 3
    assert value(s, f"{P}_writes_total", workspace="soc", system="sentinel", kind="label") == 3
    assert value(s, f"{P}_links", workspace="soc") == 3
    assert value(s, f"{P}_links_open", workspace="soc") == 3
    assert value(s, f"{P}_failing_incidents", workspace="soc") == 0
    assert value(s, f"{P}_watermark_lag_seconds", workspace="soc", side="sentinel") >= 0
    assert value(s, f"{P}_last_success_timestamp_seconds", workspace="soc") > 0
    calls = agent.env.stack.recorder.calls
    sent = sum(1 for c in calls if c.system == "sentinel")
    assert total(s, f"{P}_http_requests_total", system="sentinel") == sent
    assert value(s, f"{P}_http_requests_total", system="servicenow", client="default", status="201") == 3
    assert value(s, f"{P}_token_requests_total", system="entra", client="default", result="ok") == 1
    assert value(s, f"{P}_token_requests_total", system="entra", client="default", result="failed") == 0
    remaining = {dict(ls)["bucket"] for (n, ls) in s if n == f"{P}_arm_ratelimit_remaining"}
    assert {"subscription-reads", "subscription-writes"} <= remaining
    assert value(s, f"{P}_http_throttled_total", system="sentinel", client="default") == 0


async def test_throttling_conflicts_and_failures_are_counted(agent: Agent) -> None:
    env = agent.env
    ws = env.ws()
    a = ws.create_incident(title="conflicted", labels=["snow"], severity="Low")
    b = ws.create_incident(title="failing", labels=["snow"], severity="Low")
    await agent.cycle()
    env.snow.analyst_update("incident", env.snow_record(a["name"])["sys_id"], {"impact": "2"})
    ws.analyst_update(a["name"], severity="High")
    ws.analyst_update(b["name"], severity="High")
    env.stack.sentinel.faults.once("incidents.list", 429)
    env.snow.faults.once("table.patch", 403)  # the first PATCH of this cycle fails for good
    await agent.cycle()
    s = await agent.scrape()
    assert value(s, f"{P}_http_throttled_total", system="sentinel", client="default") == 1
    assert value(s, f"{P}_http_retries_total", system="sentinel", client="default") >= 1
    assert value(s, f"{P}_conflicts_total", workspace="soc", field="severity") == 1
    assert value(s, f"{P}_incident_failures_total", workspace="soc", kind="permanent") == 1
    assert value(s, f"{P}_failing_incidents", workspace="soc") == 1
    assert value(s, f"{P}_cycles_total", workspace="soc", result="ok") == 2


async def test_token_requests_by_system_and_result(env: Env) -> None:
    env.rewrite(
        {
            "agent": {"metrics_listen": "127.0.0.1:0"},
            "servicenow": {
                "auth": "oauth",
                "client_id": env.stack.snow_client_id,
                "client_secret_file": f"{env.config_path.stem}.snow-client-secret",
            },
        }
    )
    env.ws().create_incident(title="t", labels=["snow"])
    tokens = f"{P}_token_requests_total"
    async with Runtime(env.config, retry=FAST) as rt, operations(env.config, rt) as ops:
        assert ops is not None
        results = await run_workspaces(rt.syncs(), CycleOptions())
        assert not isinstance(results["soc"], BaseException), results
        s = parse((await get(ops.url + "/metrics"))[1])
    for system in ("entra", "servicenow"):
        assert value(s, tokens, system=system, client="default", result="ok") == 1, system
        assert value(s, tokens, system=system, client="default", result="failed") == 0, system
    env.stack.entra.expire_secret(env.stack.client_id)
    async with Runtime(env.config, retry=FAST) as rt, operations(env.config, rt) as ops:
        assert ops is not None
        results = await run_workspaces(rt.syncs(), CycleOptions())
        assert isinstance(results["soc"], AuthError), results
        s = parse((await get(ops.url + "/metrics"))[1])
    assert value(s, tokens, system="entra", client="default", result="failed") == 1
    assert value(s, tokens, system="entra", client="default", result="ok") == 0


async def test_readiness_window_is_twice_the_poll_interval() -> None:
    now = [1000.0]
    ready = Readiness(["eu", "us"], poll_interval=60, clock=lambda: now[0])
    ready.observe({"event": "cycle_summary", "workspace": "eu", "ok": True})
    ready.observe({"event": "cycle_summary", "workspace": "us", "ok": False})
    ok, body = ready.report()
    assert not ok and list(body["lagging"]) == ["us"]
    ready.observe({"event": "cycle_summary", "workspace": "us", "ok": True})
    now[0] += 120
    assert ready.report()[0] is True
    now[0] += 1
    ok, body = ready.report()
    assert not ok and set(body["lagging"]) == {"eu", "us"}
    assert "121 s ago (limit 120 s)" in body["lagging"]["eu"]


async def test_every_exported_name_is_documented() -> None:
    registry = CollectorRegistry()
    m = AgentMetrics(registry, {"soc": "default"}, poll_interval=60, process=False)
    m.observe({"event": "cycle_summary", "workspace": "soc", "ok": True, "duration_ms": 5})
    m.shadow_view.rows = [
        ("soc", "default", {"links": 1, "links_open": 1, "failing_incidents": 0, "lag:sentinel": 3})
    ]
    exported = {f.name for f in registry.collect()}
    documented = {name.removesuffix("_total") for name in METRICS}
    assert exported == documented
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    doc = (Path(__file__).parents[1] / "docs" / "logging.md").read_text()
    for name in METRICS:
        assert name in readme, f"{name} missing from README.md"
        assert name in doc, f"{name} missing from docs/logging.md"


async def test_busy_port_is_a_config_error(env: Env) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env.rewrite({"agent": {"metrics_listen": f"127.0.0.1:{port}"}})
        async with Runtime(env.config) as rt:
            with pytest.raises(ConfigError, match="metrics_listen"):
                async with operations(env.config, rt):
                    pass


@pytest.mark.timeout(120)  # a shutdown that never ends is the failure
async def test_run_serves_metrics_until_sigterm(env: Env) -> None:
    # /readyz is ready for 2 x poll_interval after a good cycle: with a poll interval far longer
    # than the test, it holds however slowly a loaded machine gets from the cycle to the probe
    # (the window itself is tested with a clock of its own above).
    env.rewrite({"agent": {"poll_interval": "10m", "metrics_listen": "127.0.0.1:0"}})
    env.ws().create_incident(title="t", labels=["snow"])
    proc = await asyncio.create_subprocess_exec(
        *AGENT,
        "-c",
        str(env.config_path),
        "run",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    url = ""
    try:
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, "agent exited early"
            record = orjson.loads(line)
            if record["event"] == "metrics_started":
                url = record["url"]
            if record["event"] == "cycle_summary":
                break
        status, body = await get(url + "/readyz")
        assert status == 200, body
        status, text = await get(url + "/metrics")
        assert status == 200
        s = parse(text)
        assert value(s, f"{P}_writes_total", workspace="soc", system="servicenow", kind="create") == 1
        assert total(s, "process_resident_memory_bytes") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    with pytest.raises(aiohttp.ClientConnectionError, match="Cannot connect to host"):
        await get(url + "/healthz")
