"""Secrets stay secret, files stay private, TLS stays on.

* Every log record of a full scenario (create, updates both ways, a token revoked mid-run and
  refreshed on the 401, wrong secrets for Entra and ServiceNow), every Python ``logging`` record
  (msal's included), every exception text, and the whole output of a debug-level CLI run are
  searched for the client secret, the ServiceNow password and OAuth client secret, and every
  token and refresh token the emulators issued. None may appear.
* The state database, its WAL files and the lock file are created 0600 whatever the umask.
* TLS verification has no off switch, and a CA bundle that does not match fails clearly.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from agent.app.runtime import Runtime
from agent.config import load_config
from agent.connectors.retry import RetryPolicy
from agent.connectors.trust import build_ssl_context
from agent.errors import ConfigError
from agent.log import log
from agent.sync.cycle import CycleOptions, run_workspaces
from agent.testing.emulators.stack import EmulatorStack
from tests.agent_process import AgentProcess

RETRY = RetryPolicy(attempts=3, total=5, base=0.01, cap=0.05)
WRONG_ENTRA_SECRET = "definitely-wrong-entra-secret-4711"
WRONG_SNOW_PASSWORD = "definitely-wrong-snow-password-0815"


class Capture(logging.Handler):
    """Every record of the agent's logger and of Python logging (msal, aiohttp, asyncio)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.getMessage()} {record.args!r}")

    def agent(self, record: dict[str, Any]) -> None:
        self.lines.append(orjson.dumps(record).decode())


@pytest.fixture
def captured() -> Iterator[Capture]:
    capture = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    log.sinks.append(capture.agent)
    try:
        yield capture
    finally:
        log.sinks.remove(capture.agent)
        root.removeHandler(capture)
        root.setLevel(level)


def _secrets(stack: EmulatorStack) -> dict[str, str]:
    found = {
        "entra client secret": stack.client_secret,
        "snow password": stack.snow_password,
        "snow oauth client secret": stack.snow_client_secret,
        "wrong entra secret": WRONG_ENTRA_SECRET,
        "wrong snow password": WRONG_SNOW_PASSWORD,
        "basic credentials": base64.b64encode(f"{stack.snow_user}:{stack.snow_password}".encode()).decode(),
    }
    for i, token in enumerate(stack.tokens.issued()):
        found[f"token {i}"] = token
        found[f"token {i} signature"] = token.rsplit(".", 1)[-1]
    for snow in stack.snow.values():
        # Refresh tokens are the ServiceNow emulator's private state; a test may look.
        for i, refresh in enumerate(snow._refresh_tokens):
            found[f"refresh token {i}"] = refresh
    return found


def _leaks(texts: list[str], secrets: dict[str, str]) -> list[str]:
    return [f"{what} in: {text[:200]}" for text in texts for what, value in secrets.items() if value in text]


async def test_no_secret_or_token_in_any_log_line_or_error(tmp_path: Path, captured: Capture) -> None:
    errors: list[str] = []
    async with EmulatorStack(directory=tmp_path / "emu") as stack:
        ws = stack.add_workspace("soc")
        oauth = {
            "auth": "oauth",
            "client_id": stack.snow_client_id,
            "client_secret_file": "agent.snow-client-secret",
        }
        path = stack.write_config(
            tmp_path / "agent.ini",
            state_db=tmp_path / "state.db",
            extra={"agent": {"log_level": "debug"}, "servicenow": oauth},
        )
        config = load_config(path)
        snow = stack.snow["default"]
        inc = ws.create_incident(title="secret scenario", severity="Low", labels=["snow"])
        async with Runtime(config, retry=RETRY) as rt:
            for step in range(4):
                if step == 1:
                    ws.analyst_update(inc["name"], severity="High")
                    ws.analyst_comment(inc["name"], "checked the sign-ins", "bob@contoso.example")
                if step == 2:
                    rec = next(r for r in snow.tables["incident"].values() if r["correlation_id"])
                    snow.analyst_update("incident", rec["sys_id"], {"state": "2", "work_notes": "on it"})
                    stack.tokens.revoke_all()  # both bearer tokens die: 401, one refresh each
                results = await run_workspaces(rt.syncs(), CycleOptions())
                errors += [str(r) for r in results.values() if isinstance(r, BaseException)]
            assert sum(h.auth_refreshes for h in [*rt.arm.values(), *rt.snow_http.values()]) >= 2
        assert errors == []
        # wrong secrets: the Entra client secret, then the ServiceNow password
        (tmp_path / "agent.client-secret").write_text(WRONG_ENTRA_SECRET + "\n")
        (tmp_path / "agent.snow-password").write_text(WRONG_SNOW_PASSWORD + "\n")
        async with Runtime(load_config(path), retry=RETRY) as rt:
            results = await run_workspaces(rt.syncs(), CycleOptions())
        errors += [str(r) for r in results.values() if isinstance(r, BaseException)]
        assert errors and all("invalid_client" in e or "401" in e for e in errors), errors
        stack.write_config(path, state_db=tmp_path / "state.db", extra={"servicenow": oauth})
        (tmp_path / "agent.snow-password").write_text(WRONG_SNOW_PASSWORD + "\n")
        # The same through the CLI at debug level: stdout and stderr, whole.
        async with AgentProcess(path, "--log-level", "debug", "once") as agent:
            assert await agent.wait() == 1
        cli_output = [*agent.stdout_text, agent.stderr.decode(errors="replace")]
        secrets = _secrets(stack)
    events = [orjson.loads(line) for line in captured.lines if line.startswith("{")]
    assert any(e["event"] == "http_auth_refresh" for e in events)
    assert any(e["event"] == "http_body" for e in events)  # bodies were logged (debug)...
    assert len(secrets) >= 10 and sum(k.startswith("token") for k in secrets) >= 4
    leaks = _leaks(captured.lines + errors + cli_output, secrets)
    assert leaks == []  # ...and yet no secret, password, token or refresh token anywhere


async def test_state_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    async with EmulatorStack(directory=tmp_path / "emu") as stack:
        stack.add_workspace("soc")
        state = tmp_path / "state"
        state.mkdir()  # the config requires an existing folder; everything in it is the agent's
        path = stack.write_config(tmp_path / "agent.ini", state_db=state / "agent.db")
        stack.workspaces["soc"].create_incident(title="x", labels=["snow"])
        old = os.umask(0o002)
        try:
            async with AgentProcess(path, "once") as agent:
                assert await agent.wait() == 0, agent.output()
            async with AgentProcess(path, "status") as status:
                assert await status.wait() == 0
        finally:
            os.umask(old)
    created = sorted(p.name for p in state.iterdir())
    assert {"agent.db", "agent.db.lock"} <= set(created)
    modes = {name: stat.S_IMODE((state / name).stat().st_mode) for name in created}
    assert modes == dict.fromkeys(created, 0o600), modes


def test_tls_verification_has_no_off_switch(tmp_path: Path) -> None:
    from tests.test_config import problems

    keys = ("verify_ssl", "tls_verify", "insecure", "ssl_verify", "verify", "ca_verify")
    found = problems(tmp_path, {"agent": dict.fromkeys(keys, "false")})
    assert [p.split(":")[0] for p in found] == [f"[agent] {k}" for k in keys]
    assert all("unknown key" in p for p in found)
    ctx = build_ssl_context(None)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with pytest.raises(ConfigError, match=r"\[agent\] ca_bundle: cannot load") as caught:
        build_ssl_context(tmp_path / "missing.pem")
    assert caught.value.problems[0].startswith("[agent] ca_bundle: cannot load")


async def test_a_ca_bundle_that_does_not_match_fails_clearly(tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA(organization_name="somebody else").cert_pem.write_to_path(str(other))
    async with EmulatorStack(directory=tmp_path / "emu") as stack:
        stack.add_workspace("soc")
        path = stack.write_config(
            tmp_path / "agent.ini", state_db=tmp_path / "state.db", extra={"agent": {"ca_bundle": str(other)}}
        )
        async with AgentProcess(path, "once") as agent:
            assert await agent.wait() == 1
        failed = agent.named("cycle_failed")
        assert failed and all("TLS verification failed" in str(e["error"]) for e in failed), agent.output()
        assert all("ca_bundle" in str(e["error"]) for e in failed)
        async with AgentProcess(path, "check") as check:
            assert await check.wait() == 1
        assert "TLS" in "\n".join(check.stdout_text) or "certificate" in "\n".join(check.stdout_text).lower()
        assert stack.recorder.count(system="sentinel") == 0 and stack.recorder.count(system="servicenow") == 0
