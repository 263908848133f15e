"""The CLI as a user runs it: real processes against the emulators."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import orjson
import pytest

from tests.e2e import Env

AGENT = [sys.executable, "-m", "agent"]


async def run_cli(*args: str, limit: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *AGENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_help_explains_commands() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0
    for command in ("check", "once", "run", "plan", "status", "watermark", "backfill", "demo"):
        assert command in out
    assert "exit codes" in out


async def test_bad_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ini"
    bad.write_text(
        "[agent]\npoll_interval = soon\nmax_concurency = 4\n\n"
        "[oauth:default]\ntenant_id = not-a-guid\nclient_id = 11111111-1111-1111-1111-111111111111\n"
        "client_secret = x\n\n"
        "[servicenow]\ninstance_url = http://example.service-now.com\n"
        "auth = basic\nusername = u\npassword = p\n\n"
        "[workspace:a]\nsubscription_id = 00000000-0000-0000-0000-000000000000\nresource_group = rg\n"
        "workspace_name = ws\noauth = missing\n"
    )
    code, _, err = await run_cli("-c", str(bad), "check")
    assert code == 2
    assert "Traceback" not in err
    lines = [line.strip() for line in err.splitlines() if line.strip().startswith("[")]
    assert any(line.startswith("[agent] poll_interval:") for line in lines)
    assert any(line.startswith("[agent] max_concurency:") and "max_concurrency" in line for line in lines)
    assert any(line.startswith("[oauth:default] tenant_id:") for line in lines)
    assert any(line.startswith("[servicenow] instance_url:") for line in lines)
    assert any(line.startswith("[workspace:a] oauth:") for line in lines)


async def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    code, _, err = await run_cli("-c", str(tmp_path / "nope.ini"), "once")
    assert code == 2
    assert "nope.ini" in err and "Traceback" not in err


async def test_plan_prints_json_and_writes_nothing(env: Env) -> None:
    env.ws().create_incident(title="t", labels=["snow"])
    mark = env.stack.recorder.mark()
    code, out, _ = await run_cli("-c", str(env.config_path), "--log-level", "error", "plan")
    assert code == 0
    plan = orjson.loads(out)
    assert [w["action"] for w in plan["soc"]["writes"]] == ["create_snow"]
    assert not [
        c for c in env.calls_since(mark) if c.method in ("PUT", "PATCH", "POST") and c.system != "entra"
    ]
    assert env.snow_records() == []


async def test_once_then_status(env: Env) -> None:
    env.ws().create_incident(title="t", labels=["snow"])
    code, _, _ = await run_cli("-c", str(env.config_path), "once")
    assert code == 0
    assert len(env.snow_records()) == 1
    code, out, _ = await run_cli("-c", str(env.config_path), "status", "--json")
    assert code == 0
    status = orjson.loads(out)
    assert status["workspaces"]["soc"]["links"] == 1
    assert status["workspaces"]["soc"]["watermarks"]["sentinel"]["modified"] is not None


@pytest.mark.timeout(120)  # a shutdown that never ends is the failure
async def test_run_stops_cleanly_on_sigterm(env: Env) -> None:
    env.rewrite({"agent": {"poll_interval": "1s"}})
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
    events: list[str] = []
    while "cycle_summary" not in events:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert line, "agent exited before its first cycle"
        events.append(orjson.loads(line)["event"])
    proc.send_signal(signal.SIGTERM)
    rest, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    tail = [orjson.loads(line)["event"] for line in rest.splitlines() if line.strip()]
    assert "shutdown_requested" in tail and tail[-1] == "agent_stopped"
    assert len(env.snow_records()) == 1


@pytest.mark.timeout(120)
async def test_second_agent_on_same_state_is_refused(env: Env) -> None:
    env.rewrite({"agent": {"poll_interval": "30s"}})
    first = await asyncio.create_subprocess_exec(
        *AGENT,
        "-c",
        str(env.config_path),
        "run",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert first.stdout is not None
    try:
        while True:
            line = await asyncio.wait_for(first.stdout.readline(), 60)
            assert line
            if orjson.loads(line)["event"] == "cycle_summary":
                break
        code, out, _ = await run_cli("-c", str(env.config_path), "once")
        assert code == 1
        assert "lock_held" in out and "PID" in out
    finally:
        first.send_signal(signal.SIGTERM)
        await asyncio.wait_for(first.communicate(), 60)
