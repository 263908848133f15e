"""``status``: links, open, last cycle, lag, failures and their reasons, as text and ``--json``."""

from __future__ import annotations

import orjson
import pytest

from agent.cli import commands
from tests.e2e import Env
from tests.test_cli import run_cli


async def _status(env: Env, capsys: pytest.CaptureFixture[str], as_json: bool) -> str:
    capsys.readouterr()
    assert await commands.status(env.config, as_json=as_json) == 0
    return capsys.readouterr().out


async def test_never_run_workspace(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    report = orjson.loads(await _status(env, capsys, as_json=True))
    assert report["agent_running"] is False
    soc = report["workspaces"]["soc"]
    assert (soc["links"], soc["open"], soc["last_cycle"], soc["failures"]) == (0, 0, None, [])
    assert soc["lag_seconds"] == {"sentinel": None, "servicenow": None}
    text = await _status(env, capsys, as_json=False)
    assert "last cycle   never" in text and "none yet" in text


async def test_links_cycle_lag_and_failure_reasons(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    ws = env.ws()
    ok = ws.create_incident(title="fine", labels=["snow"], severity="Low")
    bad = ws.create_incident(title="will fail", labels=["snow"], severity="Low")
    stats = await env.stats()
    assert stats.created == 2
    bad_number = env.snow_record(bad["name"])["number"]
    ws.analyst_update(bad["name"], severity="High")
    env.snow.faults.once("table.patch", 403)
    await env.stats()
    report = orjson.loads(await _status(env, capsys, as_json=True))
    soc = report["workspaces"]["soc"]
    assert (soc["links"], soc["open"]) == (2, 2)
    assert soc["last_cycle"]["ok"] is True
    assert soc["last_cycle"]["summary"]["failures"] == 1
    assert soc["last_success"] == soc["last_cycle"]["finished"]
    assert soc["lag_seconds"]["sentinel"] is not None and soc["lag_seconds"]["sentinel"] >= 0
    assert soc["watermarks"]["sentinel"]["modified"] is not None
    [failure] = soc["failures"]
    assert failure["incident"] == bad["name"] and failure["snow_number"] == bad_number
    assert "403" in failure["error"] and failure["attempts"] == 1 and failure["next_try"]
    assert ok["name"] not in {f["incident"] for f in soc["failures"]}

    text = await _status(env, capsys, as_json=False)
    assert "links        2 (2 open)" in text
    assert "failing      1 incident(s)" in text
    assert f"{bad['name']} ({bad_number}) attempts 1" in text
    assert "HTTP 403" in text


async def test_disabled_workspace_and_cli_json(env: Env) -> None:
    env.rewrite({"workspace:soc": {"enabled": "false"}})
    code, out, _ = await run_cli("-c", str(env.config_path), "status")
    assert code == 0
    assert "[soc] DISABLED (frozen)" in out
    code, out, _ = await run_cli("-c", str(env.config_path), "status", "--json")
    assert code == 0
    assert orjson.loads(out)["workspaces"]["soc"]["enabled"] is False
