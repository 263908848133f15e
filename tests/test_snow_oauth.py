"""ServiceNow OAuth with the client-credentials grant (REFERENCE C.7, E.11), end to end.

``auth = oauth`` with only ``client_id`` and a client secret sends
``grant_type=client_credentials``; the instance issues tokens as the OAuth Application User of
its registry entry. The grant is off on a new instance, and ``check`` says so plainly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from agent.app.check import FAIL, OK
from agent.app.runtime import Runtime
from agent.connectors.servicenow.auth import ServiceNowOAuth
from agent.errors import AuthError, ExitCode
from agent.log import log
from agent.store.sqlite.store import Shadow
from tests.e2e import Env
from tests.test_check import _check, _hint_after, _lines


@pytest.fixture
def records() -> Iterator[list[dict[str, Any]]]:
    found: list[dict[str, Any]] = []
    log.sinks.append(found.append)
    yield found
    log.sinks.remove(found.append)


async def _failures(env: Env) -> list[Any]:
    async with await Shadow.open(env.tmp / "state.db") as shadow:
        return await shadow.failures()


def _client_credentials(env: Env) -> None:
    """[servicenow] with auth = oauth and nothing but the OAuth application's id and secret."""
    stack = env.stack
    env.rewrite(
        {
            "agent": {"overlap": "0s"},
            "servicenow": {
                "auth": "oauth",
                "username": "",
                "password_file": "",
                "client_id": stack.snow_client_id,
                "client_secret_file": "agent.snow-client-secret",
            },
        }
    )


async def test_e11_client_credentials_grant_syncs_end_to_end(env: Env, records: list[dict[str, Any]]) -> None:
    env.snow.client_credentials_enabled = True
    env.snow.add_oauth_client(
        env.stack.snow_client_id, env.stack.snow_client_secret, application_user=env.stack.snow_user
    )
    _client_credentials(env)
    name = env.ws().create_incident(title="cc", labels=["snow"])["name"]
    env.ws().analyst_comment(name, "first comment")
    stats = await env.stats()
    assert (stats.created, stats.failures, stats.comments_to_snow) == (1, 0, 1)
    record = env.snow_record(name)
    assert record["sys_created_by"] == env.stack.snow_user  # issued as the application user
    grants = [r["grant"] for r in records if r["event"] == "snow_oauth_token"]
    assert grants and set(grants) == {"client_credentials"}


async def test_e11_the_grant_sends_only_the_client_credentials(env: Env) -> None:
    env.snow.client_credentials_enabled = True
    env.snow.add_oauth_client(
        env.stack.snow_client_id, env.stack.snow_client_secret, application_user=env.stack.snow_user
    )
    _client_credentials(env)
    config = env.config
    async with Runtime(config) as rt:
        auth = rt.snow_http["default"].auth
        assert isinstance(auth, ServiceNowOAuth) and auth.grant == "client_credentials"
        assert (await auth.header())["Authorization"].startswith("Bearer ")


async def test_e11_check_says_plainly_that_the_grant_is_off(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    _client_credentials(env)  # the instance keeps its default: the grant is disabled
    code, lines = await _check(env, capsys)
    assert code == 1
    [line] = _lines(lines, FAIL, "[servicenow:default]", "not readable", "access_denied")
    assert "glide.oauth.inbound.client.credential.grant_type.enabled" in _hint_after(lines, line)
    env.ws().create_incident(title="cc", labels=["snow"])
    with pytest.raises(AuthError, match="access_denied"):  # the cycle stops; no incident is parked
        await env.stats()
    assert not await _failures(env)


async def test_e11_check_names_a_missing_application_user(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    env.snow.client_credentials_enabled = True  # but the registry entry names no user
    _client_credentials(env)
    code, lines = await _check(env, capsys)
    assert code == 1
    [line] = _lines(lines, FAIL, "[servicenow:default]", "unauthorized_client")
    assert "OAuth Application User" in _hint_after(lines, line)


async def test_e11_check_is_ok_with_the_grant_enabled(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    env.snow.client_credentials_enabled = True
    env.snow.add_oauth_client(
        env.stack.snow_client_id, env.stack.snow_client_secret, application_user=env.stack.snow_user
    )
    _client_credentials(env)
    code, lines = await _check(env, capsys)
    assert _lines(lines, OK, "[servicenow:default]", "client-credentials grant"), lines
    assert not _lines(lines, FAIL, "[servicenow:default]"), lines
    assert code == ExitCode.OK, lines
