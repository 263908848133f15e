"""The emulator stack: three systems over TLS with one CA, one token registry, one config."""

from __future__ import annotations

import asyncio
import base64
import configparser
import contextlib
import signal
import ssl
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from agent.config import load_config
from agent.testing.emulators.__main__ import build_parser, workspace_names
from agent.testing.emulators.stack import ANALYSTS, EmulatorStack

REPO = Path(__file__).resolve().parents[1]
API = "api-version=2025-09-01"
ARM_SCOPE = "https://management.azure.com/.default"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmulatorStack]:
    async with EmulatorStack(seed=3, directory=tmp_path / "emu") as s:
        yield s


def _ctx(stack: EmulatorStack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.tls.ca_file))


def _incidents_url(stack: EmulatorStack, name: str) -> str:
    sub, rg, ws = stack.workspace_key(name)
    return (
        f"{stack.sentinel_url}/subscriptions/{sub}/resourceGroups/{rg}/providers/"
        f"Microsoft.OperationalInsights/workspaces/{ws}/providers/Microsoft.SecurityInsights/incidents?{API}"
    )


async def _arm_token(http: aiohttp.ClientSession, stack: EmulatorStack, scope: str = ARM_SCOPE) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": stack.client_id,
        "client_secret": stack.client_secret,
        "scope": scope,
    }
    url = f"{stack.entra_url}/{stack.tenant}/oauth2/v2.0/token"
    async with http.post(url, data=form, ssl=_ctx(stack)) as resp:
        assert resp.status == 200, await resp.text()
        token: str = orjson.loads(await resp.read())["access_token"]
        return token


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def test_three_systems_answer_over_tls_with_the_ca(stack: EmulatorStack) -> None:
    stack.add_workspace("soc-eu")
    ctx = _ctx(stack)
    async with aiohttp.ClientSession() as http:
        oidc = f"{stack.entra_url}/{stack.tenant}/v2.0/.well-known/openid-configuration"
        async with http.get(oidc, ssl=ctx) as resp:
            assert resp.status == 200
            assert orjson.loads(await resp.read())["token_endpoint"].startswith(stack.entra_url)
        async with http.get(_incidents_url(stack, "soc-eu"), ssl=ctx) as resp:
            assert resp.status == 401  # no token
        headers = {"Accept": "application/json", **_basic(stack.snow_user, stack.snow_password)}
        url = f"{stack.snow_urls['default']}/api/now/table/sys_user?sysparm_query=user_name=alice.analyst"
        async with http.get(url, ssl=ctx, headers=headers) as resp:
            assert resp.status == 200
            (alice,) = orjson.loads(await resp.read())["result"]
        assert alice["email"] == "alice@contoso.example"
        assert alice["sys_id"] == stack.snow_user_ids["default"]["alice.analyst"]
        # Without the CA the certificate is not trusted: the servers really speak TLS.
        with pytest.raises(aiohttp.ClientConnectorCertificateError, match="CERTIFICATE_VERIFY_FAILED"):
            async with http.get(oidc, ssl=ssl.create_default_context()):
                pass
    assert stack.recorder.count("entra") == 1
    assert stack.recorder.count("sentinel", status=401) == 1
    assert stack.recorder.count("servicenow", status=200) == 1


async def test_entra_token_is_accepted_by_sentinel(stack: EmulatorStack) -> None:
    ws = stack.add_workspace("soc-eu")
    created = ws.create_incident(title="Suspicious sign-in from Tor exit node", labels=["snow"])
    async with aiohttp.ClientSession() as http:
        token = await _arm_token(http, stack)
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(_incidents_url(stack, "soc-eu"), ssl=_ctx(stack), headers=headers) as resp:
            assert resp.status == 200
            body = orjson.loads(await resp.read())
        assert [i["name"] for i in body["value"]] == [created["name"]]
        # The agent asks for "<management_url>/.default", i.e. the emulator's own URL.
        own = await _arm_token(http, stack, f"{stack.sentinel_url}/.default")
        headers = {"Authorization": f"Bearer {own}"}
        async with http.get(_incidents_url(stack, "soc-eu"), ssl=_ctx(stack), headers=headers) as resp:
            assert resp.status == 200
        # A token for another resource is refused.
        other = await _arm_token(http, stack, "https://graph.microsoft.com/.default")
        headers = {"Authorization": f"Bearer {other}"}
        async with http.get(_incidents_url(stack, "soc-eu"), ssl=_ctx(stack), headers=headers) as resp:
            assert resp.status == 401


async def test_servicenow_oauth_client_is_registered(stack: EmulatorStack) -> None:
    form = {
        "grant_type": "password",
        "client_id": stack.snow_client_id,
        "client_secret": stack.snow_client_secret,
        "username": stack.snow_user,
        "password": stack.snow_password,
    }
    async with aiohttp.ClientSession() as http:
        url = f"{stack.snow_urls['default']}/oauth_token.do"
        async with http.post(url, data=form, ssl=_ctx(stack)) as resp:
            assert resp.status == 200
            token = orjson.loads(await resp.read())["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        async with http.get(
            f"{stack.snow_urls['default']}/api/now/table/incident", ssl=_ctx(stack), headers=headers
        ) as resp:
            assert resp.status == 200


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_write_config_parses_and_keeps_secrets_private(stack: EmulatorStack, tmp_path: Path) -> None:
    stack.add_workspace("soc-eu")
    stack.add_workspace("soc-us", resource_group="rg-us", workspace_name="law-soc-us")
    ini = stack.write_config(
        tmp_path / "cfg" / "agent.ini",
        state_db=tmp_path / "cfg" / "agent.db",
        extra={"agent": {"poll_interval": "2s"}, "owners": {"alice.analyst": "alice@contoso.example"}},
    )
    parser = configparser.ConfigParser(interpolation=None)
    assert parser.read(ini) == [str(ini)]
    assert parser.sections() == [
        "agent",
        "oauth:default",
        "servicenow",
        "workspace:soc-eu",
        "workspace:soc-us",
        "owners",
    ]
    assert parser["agent"]["poll_interval"] == "2s"
    assert parser["agent"]["ca_bundle"] == str(stack.tls.ca_file.resolve())
    oauth = parser["oauth:default"]
    assert oauth["authority_host"] == stack.entra_url
    assert oauth["management_url"] == stack.sentinel_url
    assert oauth["tenant_id"] == stack.tenant and oauth["client_id"] == stack.client_id
    secret_file = ini.parent / oauth["client_secret_file"]
    assert secret_file.read_text().strip() == stack.client_secret
    snow = parser["servicenow"]
    assert snow["instance_url"] == stack.snow_urls["default"]
    assert snow["username"] == stack.snow_user
    password_file = ini.parent / snow["password_file"]
    assert password_file.read_text().strip() == stack.snow_password
    us = parser["workspace:soc-us"]
    assert (us["subscription_id"], us["resource_group"], us["workspace_name"]) == stack.workspace_key(
        "soc-us"
    )
    assert us["servicenow"] == "default" and us["incident_filter"] == "snow"
    for path in (ini, secret_file, password_file, ini.parent / "agent.snow-client-secret"):
        assert _mode(path) == 0o600, path
    assert stack.client_secret not in ini.read_text()

    # The agent's own loader accepts it as written.
    config = load_config(ini)
    assert config.oauth["default"].authority_host == stack.entra_url
    assert config.oauth["default"].client_secret is not None
    assert config.oauth["default"].client_secret.reveal() == stack.client_secret
    assert config.servicenow["default"].password is not None
    assert set(config.workspaces) == {"soc-eu", "soc-us"}
    assert config.agent.ca_bundle == stack.tls.ca_file.resolve()


async def test_write_config_rewrites_an_existing_file_private(stack: EmulatorStack, tmp_path: Path) -> None:
    ini = tmp_path / "agent.ini"
    ini.write_text("old")
    ini.chmod(0o644)
    stack.write_config(ini, state_db="agent.db", workspaces=[])
    assert _mode(ini) == 0o600
    assert "old" not in ini.read_text()


async def test_several_servicenow_instances(tmp_path: Path) -> None:
    async with EmulatorStack(directory=tmp_path, snow_instances=("default", "emea")) as stack:
        assert set(stack.snow_urls) == {"default", "emea"}
        assert stack.snow_urls["default"] != stack.snow_urls["emea"]
        stack.add_workspace("soc-eu", servicenow="emea")
        stack.add_workspace("soc-us")
        ini = stack.write_config(tmp_path / "a.ini", state_db=tmp_path / "a.db")
        parser = configparser.ConfigParser(interpolation=None)
        parser.read(ini)
        assert parser["servicenow:emea"]["instance_url"] == stack.snow_urls["emea"]
        assert parser["workspace:soc-eu"]["servicenow"] == "emea"
        assert parser["workspace:soc-us"]["servicenow"] == "default"
        for name, snow in stack.snow.items():
            assert snow.name == name
            assert {r["user_name"] for r in snow.tables["sys_user"].values()} >= {
                a.user_name for a in ANALYSTS
            }
        with pytest.raises(KeyError, match="no ServiceNow instance 'apac'"):
            stack.add_workspace("soc-x", servicenow="apac")


async def test_shared_clock_tokens_directory_and_latency(tmp_path: Path) -> None:
    stack = EmulatorStack(directory=tmp_path, latency=0.01, seed=9)
    assert stack.sentinel.faults.rules["*"].latency == 0.01
    assert stack.entra.faults.rules["*"].latency == 0.01
    assert stack.snow["default"].faults.rules["*"].latency == 0.01
    assert stack.entra.faults is not stack.sentinel.faults
    assert stack.entra.recorder is stack.recorder is stack.sentinel.recorder is stack.snow["default"].recorder
    assert [u.upn for u in stack.directory.users] == [a.upn for a in ANALYSTS]
    assert stack.entra.apps[stack.client_id].object_id == stack.app_object_id
    with pytest.raises(RuntimeError, match="start the stack before writing a config"):
        stack.write_config(tmp_path / "x.ini", state_db="x.db")
    await stack.stop()


async def test_temporary_folder_is_removed_on_stop() -> None:
    stack = EmulatorStack()
    async with stack:
        folder = stack.tls.ca_file.parent
        assert stack.tls.ca_file.is_file()
    assert not folder.exists()


# --- python -m agent.testing.emulators -----------------------------------------------------------------


def test_help_describes_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match=r"^0$") as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--port-base",
        "--seed",
        "--workspaces",
        "--incidents",
        "--latency",
        "--state-dir",
        "--simulate",
    ):
        assert option in text
    assert workspace_names(7) == ["soc-eu", "soc-us", "soc-apac", "soc-latam", "soc-mea", "soc-6", "soc-7"]


async def _read_lines(stream: asyncio.StreamReader, count: int) -> list[str]:
    lines = []
    for _ in range(count):
        line = await asyncio.wait_for(stream.readline(), 60)
        assert line, "the emulators exited early"
        lines.append(line.decode().rstrip("\n"))
    return lines


async def test_module_serves_until_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent.testing.emulators",
        "--state-dir",
        str(state),
        "--workspaces",
        "2",
        "--incidents",
        "3",
        "--simulate",
        "--rate",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        lines = await _read_lines(proc.stdout, 6)
        fields = dict(line.split(None, 1) for line in lines)
        assert list(fields) == ["entra", "sentinel", "servicenow", "graph", "ca_file", "config"]
        assert all(
            fields[k].startswith("https://127.0.0.1:") for k in ("entra", "sentinel", "servicenow", "graph")
        )
        assert fields["ca_file"] == str((state / "emulator-ca.pem").resolve())
        config = load_config(fields["config"])
        assert set(config.workspaces) == {"soc-eu", "soc-us"}
        assert config.servicenow["default"].instance_url == fields["servicenow"]

        ctx = ssl.create_default_context(cafile=fields["ca_file"])
        async with aiohttp.ClientSession() as http:
            url = (
                f"{fields['entra']}/{config.oauth['default'].tenant_id}/v2.0/.well-known/openid-configuration"
            )
            async with http.get(url, ssl=ctx) as resp:
                assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        assert proc.stderr is not None
        assert (await proc.stderr.read()) == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
