"""One real ``run`` of the agent against the emulators that produces what the operations kit in
``contrib/`` is checked against: the JSON log it printed and a scrape of its ``/metrics``.

The run walks through what a SOC sees in a week: tickets created (one with a severity the
mapping has no row for), a conflict, a failing pair, a throttled listing, a comment, and finally
an analyst closing most tickets at once, which trips a safety valve on every cycle until someone
looks. So every metric family the dashboard and the alert rules name has samples (a labelled
counter without samples would hide its label names), and the log holds the events the SIEM
recipes pick out.

The emulators need an event loop of their own while the test session has its own per test, so
the scenario runs once per session, in a thread (:func:`capture`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from agent.testing.emulators.stack import EmulatorStack
from tests.agent_process import AgentProcess

RESOLVE = {"state": "6", "close_code": "Solution provided", "close_notes": "bulk close"}
INCIDENTS = 10
UNMAPPED_SEVERITY = "Critical"  # ARM knows it; the default severity table has no row for it


@dataclass(frozen=True)
class OpsRun:
    """What one run left behind: its stdout, byte for byte, and a scrape of ``/metrics``."""

    log: bytes
    metrics: str

    @property
    def records(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.log.splitlines()]


def capture(directory: Path) -> OpsRun:
    """Run the scenario in a thread with its own event loop (see the module docstring)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _scenario(directory)).result()


async def _scenario(directory: Path) -> OpsRun:
    async with EmulatorStack(directory=directory / "emu") as stack:
        ws = stack.add_workspace("soc")
        names = [
            ws.create_incident(title=f"Suspicious sign-in {i} (Zürich)", labels=["snow"])["name"]
            for i in range(INCIDENTS - 1)
        ]
        names.append(
            ws.create_incident(title="ransomware", severity=UNMAPPED_SEVERITY, labels=["snow"])["name"]
        )
        config = stack.write_config(
            directory / "agent.ini",
            state_db=directory / "state.db",
            extra={"agent": {"overlap": "0s", "poll_interval": "0.5s", "metrics_listen": "127.0.0.1:0"}},
        )
        snow = stack.snow["default"]
        async with AgentProcess(config, "run") as agent:
            started = await agent.wait_for(lambda e: e["event"] == "metrics_started")
            await agent.wait_for(_summary(lambda e: e["created"] == INCIDENTS))
            mark = len(agent.events)

            def record(name: str) -> dict[str, str]:
                [found] = [r for r in snow.tables["incident"].values() if r.get("correlation_id") == name]
                return found

            conflicted, failing, commented = names[:3]
            snow.analyst_update("incident", record(conflicted)["sys_id"], {"impact": "1"}, by="bob.hunter")
            ws.analyst_update(conflicted, severity="Low")
            stack.sentinel.faults.once("incidents.list", 429)
            snow.faults.once("table.patch", 403)
            ws.analyst_update(failing, severity="High")
            ws.analyst_comment(commented, "Host isolated; reset the user's password.")
            await agent.wait_for(lambda e: e["event"] == "conflict", mark)
            await agent.wait_for(lambda e: e["event"] == "incident_failed", mark)
            await agent.wait_for(lambda e: e["event"] == "comment_to_snow", mark)
            mark = len(agent.events)

            for name in names[3:]:  # 7 of 10 open links at once: more than max_close_ratio
                snow.analyst_update("incident", record(name)["sys_id"], RESOLVE, by="bob.hunter")
            await agent.wait_for(lambda e: e["event"] == "safety_valve", mark)
            async with aiohttp.ClientSession() as session, session.get(started["url"] + "/metrics") as resp:
                assert resp.status == 200
                metrics = await resp.text()
            agent.kill(signal.SIGTERM)
            await agent.wait()
        log = "".join(line + "\n" for line in agent.stdout_text).encode()
        return OpsRun(log, metrics)


def _summary(match: Callable[[dict[str, Any]], bool]) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "cycle_summary" and e["ok"] is True and match(e)
