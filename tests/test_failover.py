"""Active/standby at process level: two ``run`` agents on one PostgreSQL state (a real server,
tests/pg.py) and the emulators.

* **SIGKILL trials**: the leader is killed at a random moment while it syncs new incidents
  (with alerts, entities and comments); the standby must take over within the failover timeout
  and converge with no duplicate ticket and every comment exactly once; the killed agent is
  restarted as the next standby. ``make soak`` runs many more.
* **Partition**: the leader's database path is cut at a TCP proxy (connections stay open,
  nothing passes); it must stop writing within its lease while the standby takes over, and
  once the path heals its late commits are refused (fencing), and the pair converges.

Takeover times (kill -> the standby's ``lease_acquired``) are printed with the tally.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import signal
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.app import status as agent_status
from agent.cli import commands, render
from agent.config import load_config
from agent.errors import LockHeld
from agent.testing.emulators.simulator import Simulator
from agent.testing.emulators.stack import EmulatorStack
from tests.agent_process import AgentProcess
from tests.pg import Cluster
from tests.tcp_proxy import TcpProxy
from tests.test_crash import WRITE_EVENTS, Rig, _writes, converged, stop

TRIALS = 20  # SIGKILL trials in `make test`
SOAK_TRIALS = int(os.environ.get("SNOW_SYNC_SOAK_TRIALS", "100"))
FAILOVER = 3.0  # seconds: failover_timeout of the trials (lease 2 s)


def ha_config(stack: EmulatorStack, folder: Path, url: str, password: str, name: str) -> Path:
    secret = folder / f"{name}.db-password"
    secret.write_text(password)
    secret.chmod(0o600)
    return stack.write_config(
        folder / f"{name}.ini",
        state_db="",
        workspaces=["soc"],
        extra={
            "agent": {
                "state": url,
                "state_password_file": secret.name,
                "failover_timeout": f"{FAILOVER}s",
                "poll_interval": "0.1s",
                "overlap": "0s",
                "max_concurrency": "4",
                "max_close_ratio": "1",
            }
        },
    )


@dataclass
class HaRig(Rig):
    url: str = ""
    password: str = field(default="", repr=False)


@pytest.fixture
async def ha(tmp_path: Path, pg_cluster: Cluster, request: pytest.FixtureRequest) -> AsyncIterator[HaRig]:
    seed = sum(map(ord, request.node.name))
    url, _user, password = pg_cluster.database("ha")
    async with EmulatorStack(seed=seed, directory=tmp_path / "emu") as stack:
        stack.add_workspace("soc")
        cfg = ha_config(stack, tmp_path, url, password, "agent")
        rig = HaRig(stack, cfg, Simulator(stack, seed=seed), random.Random(seed), url=url, password=password)
        try:
            yield rig
        finally:
            for agent in rig.agents:
                agent.kill()
                await agent.wait()
        print(f"\n{request.node.name}: {rig.tally}")


def event(name: str) -> Any:
    return lambda e: e.get("event") == name


def ts(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(record["ts"]).replace("Z", "+00:00"))


async def pair(rig: Rig, config: Path | None = None) -> tuple[AgentProcess, AgentProcess]:
    """A leader (started first, on ``config`` if given) and a standby, both ``run``."""
    if config is not None:
        leader = await AgentProcess(config, "run").start()
        rig.agents.append(leader)
    else:
        leader = await rig.start()
    await leader.wait_for(event("lease_acquired"))
    standby = await rig.start()
    await standby.wait_for(event("standby"))
    return leader, standby


async def test_failover_after_sigkill(ha: HaRig) -> None:
    await sigkill_trials(ha, TRIALS)


@pytest.mark.soak
@pytest.mark.timeout(SOAK_TRIALS * 30)  # about 4 s a trial; the default limit is for one test
async def test_soak_failover_after_sigkill(ha: HaRig) -> None:
    await sigkill_trials(ha, SOAK_TRIALS)


async def sigkill_trials(rig: Rig, trials: int) -> None:
    loop = asyncio.get_running_loop()
    leader, standby = await pair(rig)
    await converged(rig, leader)
    takeovers: list[float] = []
    for _trial in range(trials):
        new = rig.rng.randint(3, 8)
        rig.sim.seed(["soc"], new)  # the leader picks them up in its next cycle
        start = len(leader.events)
        wanted = rig.rng.randint(1, 2 * new)

        def mid_sync(
            e: dict[str, Any], victim: AgentProcess = leader, start: int = start, n: int = wanted
        ) -> bool:
            return _writes(victim, start) >= n or e.get("event") == "cycle_summary"

        await leader.wait_for(mid_sync, start)
        await asyncio.sleep(rig.rng.uniform(0, 0.05))
        mark = len(standby.events)
        killed = loop.time()
        leader.kill()
        assert await leader.wait() == -signal.SIGKILL, leader.output()
        rig.count("writes_before_kill", _writes(leader, start))
        await standby.wait_for(event("lease_acquired"), mark)
        takeovers.append(loop.time() - killed)
        rig.count("trials")
        leader, standby = standby, await rig.start()  # the killed one comes back as standby
        found = await converged(rig, leader)
        assert rig.duplicates() == 0 and found, found.problems[:10]
        await standby.wait_for(event("standby"))  # ready before the next kill
    await stop(rig, standby)
    final = await stop(rig, leader)
    rig.tally["takeover_median_ms"] = round(statistics.median(takeovers) * 1000)
    rig.tally["takeover_max_ms"] = round(max(takeovers) * 1000)
    assert rig.tally["trials"] == trials
    assert rig.tally["duplicate_tickets"] == 0
    assert rig.tally["writes_before_kill"] > 0  # kills landed mid-sync, after some writes
    assert final.comment_links > 0 and rig.tally["comment_checks"] > 0  # comments were synced and checked
    assert max(takeovers) < FAILOVER + 1.0  # within failover_timeout (+1 s for log delivery on a busy host)


async def test_partitioned_leader_stops_writing_and_the_standby_takes_over(
    ha: HaRig, pg_cluster: Cluster, tmp_path: Path
) -> None:
    async with TcpProxy(pg_cluster.port) as proxy:
        via_proxy = ha.url.replace(f":{pg_cluster.port}/", f":{proxy.port}/")
        cut = ha_config(ha.stack, tmp_path, via_proxy, ha.password, "cut")
        leader, standby = await pair(ha, cut)
        await converged(ha, leader)
        ha.sim.seed(["soc"], 8)
        start = len(leader.events)
        await leader.wait_for(lambda e: _writes(leader, start) >= 1, start)
        loop = asyncio.get_running_loop()
        blocked = loop.time()
        proxy.block()
        lost = await leader.wait_for(event("lease_lost"), start)
        stopped = loop.time() - blocked
        acquired = await standby.wait_for(event("lease_acquired"))
        took_over = loop.time() - blocked
        # The old leader gave up on its own clock before the standby could take the lease.
        assert ts(lost) <= ts(acquired), (lost, acquired)
        assert stopped < FAILOVER * 2 / 3 + 0.5, stopped  # within its lease (2 s) + log delivery
        assert took_over < FAILOVER + 1.0, took_over  # within failover_timeout (+ log delivery)
        writes = [ts(e) for e in leader.events[start:] if e.get("event") in WRITE_EVENTS]
        assert writes and max(writes) <= ts(lost)  # it wrote until the cut, and nothing after its lease
        found = await converged(ha, standby)
        assert found and ha.duplicates() == 0, found.problems[:10]
        proxy.unblock()  # the old leader reconnects: it must come back as standby, never write
        mark = len(leader.events)
        await leader.wait_for(event("standby"), mark)
        await converged(ha, standby)
        assert [e for e in leader.events[mark:] if e.get("event") in WRITE_EVENTS] == []
        ha.tally["partition_stop_ms"] = round(stopped * 1000)
        ha.tally["partition_takeover_ms"] = round(took_over * 1000)
        await stop(ha, leader)
        await stop(ha, standby)


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


def gauge(text: str, name: str) -> float:
    [line] = [x for x in text.splitlines() if x.startswith(f"{name} ")]
    return float(line.split()[1])


async def test_status_metrics_and_readyz_show_leader_and_standby(ha: HaRig, tmp_path: Path) -> None:
    ha.sim.seed(["soc"], 4)
    leader, standby = await pair(ha)
    await converged(ha, leader)
    # A second standby serves metrics and health on a port of its own.
    watcher_ini = ha_config(ha.stack, tmp_path, ha.url, ha.password, "watcher")
    text = watcher_ini.read_text().replace("[agent]\n", "[agent]\nmetrics_listen = 127.0.0.1:0\n", 1)
    watcher_ini.write_text(text)
    watcher = await AgentProcess(watcher_ini, "run").start()
    ha.agents.append(watcher)
    await watcher.wait_for(event("standby"))
    url = (await watcher.wait_for(event("metrics_started")))["url"]
    assert await get(f"{url}/readyz") == (200, "standby")
    status, body = await get(f"{url}/metrics")
    assert status == 200
    assert gauge(body, "sentinel_snow_sync_leader") == 0.0
    assert gauge(body, "sentinel_snow_sync_lease_transitions_total") == 0.0

    config = load_config(ha.config_path)
    report = await agent_status.collect(config)
    assert report["agent_running"] is True
    assert (report["leader"]["pid"], report["leader"]["live"]) == (leader.pid, True)
    assert {s["pid"] for s in report["standby"]} == {standby.pid, watcher.pid}
    assert report["state_db"] == ha.url and ha.password not in str(report)
    assert report["workspaces"]["soc"]["links"] > 0
    out = io.StringIO()
    render.status(report, out)
    assert f"leader: pid {leader.pid} on " in out.getvalue()
    assert f"standby: pid {watcher.pid} on " in out.getvalue()
    # One-shot commands that write take the lease too: refused while an agent leads.
    with pytest.raises(LockHeld, match=rf"in use by PID {leader.pid} on .* \(the leader\)"):
        await commands.once(config)

    # The watcher becomes leader once the other two are gone: its metrics and /readyz follow.
    leader.kill()
    await leader.wait()
    standby.kill()
    await standby.wait()
    await watcher.wait_for(event("lease_acquired"))
    await watcher.wait_for(event("cycle_summary"))
    status, body = await get(f"{url}/metrics")
    assert gauge(body, "sentinel_snow_sync_leader") == 1.0
    assert gauge(body, "sentinel_snow_sync_lease_transitions_total") == 1.0
    status, body = await get(f"{url}/readyz")
    assert status == 200 and '"ready":true' in body
    await stop(ha, watcher)
