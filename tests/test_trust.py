"""REFERENCE E.10: the token client trusts what the ARM client trusts (the operating system's
store plus ``[agent] ca_bundle``), through the real msal and aiohttp stacks over TLS.

The "operating system's store" is OpenSSL's default location on Linux, which ``SSL_CERT_FILE``
and ``SSL_CERT_DIR`` point elsewhere for a test: an IT department's proxy CA installed there is
trusted by both clients, a CA known only to certifi (requests' own bundle) is not enough.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import certifi
import pytest

from agent.app.check import FAIL
from agent.app.runtime import Runtime
from agent.cli import commands
from agent.connectors.entra import EntraAuth
from agent.connectors.http import HttpClient
from agent.connectors.retry import RetryPolicy
from agent.connectors.trust import PLATFORM_VERIFIER, build_ssl_context
from agent.errors import AuthError
from agent.testing.emulators.stack import EmulatorStack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[EmulatorStack]:
    async with EmulatorStack(directory=tmp_path / "emu") as s:
        s.add_workspace("soc").create_incident(title="probe", labels=["snow"])
        yield s


def os_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *pems: Path) -> None:
    """Make the OS trust store hold exactly ``pems``."""
    bundle = tmp_path / "os-store.pem"
    bundle.write_text("".join(p.read_text() for p in pems))
    empty = tmp_path / "os-certs"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(empty))


async def token_and_listing(stack: EmulatorStack, ca_bundle: Path | None) -> int:
    """An msal token, then an ARM listing with it; returns the listing's HTTP status."""
    auth = EntraAuth(
        tenant_id=stack.tenant,
        client_id=stack.client_id,
        client_secret=stack.client_secret,
        authority_host=stack.entra_url,
        management_url=stack.sentinel_url,
        ca_bundle=ca_bundle,
    )
    sub, rg, ws = stack.workspace_key("soc")
    url = (
        f"{stack.sentinel_url}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.OperationalInsights"
        f"/workspaces/{ws}/providers/Microsoft.SecurityInsights/incidents"
    )
    http = HttpClient("sentinel", auth=auth, ca_bundle=ca_bundle, retry=RetryPolicy.disabled())
    try:
        resp = await http.request("GET", url, params={"api-version": "2025-09-01"})
        return resp.status
    finally:
        await http.close()
        await auth.close()


async def test_e10_a_ca_given_only_in_ca_bundle_works_for_msal_and_arm(
    stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    os_store(monkeypatch, tmp_path, Path(certifi.where()))  # the OS knows public CAs only
    assert await token_and_listing(stack, stack.tls.ca_file) == 200
    assert stack.recorder.count(system="entra", route="token.v2") == 1


async def test_e10_a_ca_in_the_os_store_works_for_msal_as_for_arm(
    stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A TLS-inspecting proxy's CA that only the OS trusts: requests on its own (certifi) would
    # fail the token call while aiohttp's ARM calls pass.
    os_store(monkeypatch, tmp_path, stack.tls.ca_file)
    assert await token_and_listing(stack, None) == 200


async def test_e10_a_ca_nobody_was_given_fails_the_token_call_as_tls(
    stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    os_store(monkeypatch, tmp_path, Path(certifi.where()))
    with pytest.raises(AuthError, match="TLS verification failed") as info:
        await token_and_listing(stack, None)
    assert info.value.code == "TLSVerifyFailed" and "ca_bundle" in str(info.value)
    assert stack.recorder.count(system="entra", route="token.v2") == 0


async def test_e10_check_names_a_tls_failure_on_the_token_endpoint(
    stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os_store(monkeypatch, tmp_path, Path(certifi.where()))
    config_path = stack.write_config(tmp_path / "agent.ini", state_db=tmp_path / "state.db")
    text = config_path.read_text().replace(f"ca_bundle = {stack.tls.ca_file.resolve()}\n", "")
    config_path.write_text(text)
    from agent.config import load_config

    config = load_config(config_path)
    assert config.agent.ca_bundle is None
    capsys.readouterr()
    code = await commands.check(config)
    lines = capsys.readouterr().out.splitlines()
    assert code == 1, lines
    [line] = [x for x in lines if x.split()[:2] == [FAIL, "[oauth:default]"]]
    assert "TLS verification failed talking to Entra ID at " + stack.entra_url in line
    hint = lines[lines.index(line) + 1]
    assert "hint:" in hint and "ca_bundle" in hint
    # and the same configuration with the CA in the OS store passes the token probe
    os_store(monkeypatch, tmp_path, stack.tls.ca_file)
    async with Runtime(config) as rt:
        assert (await rt.entra["default"].header())["Authorization"].startswith("Bearer ")


@pytest.mark.skipif(PLATFORM_VERIFIER, reason="macOS and Windows verify with the platform's own verifier")
async def test_the_os_store_is_read_once_per_context_not_per_connection(
    stack: EmulatorStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """truststore's OpenSSL backend reloads the default locations on every new connection:
    about 20 ms of CPU each, and on OpenSSL 3.0-3.3 one more directory lookup per call, so a
    long-running process verifies ever slower (sethmlarson/truststore#212). On Linux the context
    loads the store when it is built and never again; the connections still verify against it."""
    os_store(monkeypatch, tmp_path, stack.tls.ca_file)
    reads: list[str] = []
    for name in ("set_default_verify_paths", "load_verify_locations", "load_default_certs"):
        real = getattr(ssl.SSLContext, name)
        monkeypatch.setattr(ssl.SSLContext, name, _counting(real, name, reads))
    ctx = build_ssl_context(None)
    assert reads == ["set_default_verify_paths"]
    host, port = urlsplit(stack.sentinel_url).hostname, urlsplit(stack.sentinel_url).port
    for _ in range(4):  # four new TLS connections on the one context
        _reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        assert writer.get_extra_info("peercert") is not None
        writer.close()
        await writer.wait_closed()
    assert reads == ["set_default_verify_paths"]
    # and verification is on: a context without the CA refuses the same server
    os_store(monkeypatch, tmp_path, Path(certifi.where()))
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await asyncio.open_connection(host, port, ssl=build_ssl_context(None), server_hostname=host)


def _counting(real: Any, name: str, reads: list[str]) -> Any:
    def counted(self: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        reads.append(name)
        return real(self, *args, **kwargs)

    return counted
