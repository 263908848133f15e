"""The Graph connector's test environment: the emulator stack, a recording HTTP client and the
Graph client on top (real msal, real TLS). Shared by the connector contract tests."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
from multidict import CIMultiDict
from yarl import URL

from agent.connectors.graph.client import GraphClient
from agent.connectors.graph.cloud import graph_auth
from agent.connectors.graph.models import GraphIncident
from agent.connectors.http import HttpClient
from agent.connectors.pacing import RequestPacer
from agent.connectors.retry import RetryPolicy
from agent.testing.emulators.graph_tenant import DefenderTenant
from agent.testing.emulators.stack import DEFAULT_APP_NAME, EmulatorStack

OWN = f"API-App:{DEFAULT_APP_NAME}"


@dataclass
class Sent:
    method: str
    url: str
    body: Any
    headers: dict[str, str]
    at: float

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query, keep_blank_values=True))


class Spy(HttpClient):
    """An HttpClient that records every request it puts on the wire (with the emulator's time)."""

    def __init__(self, *args: Any, clock: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Sent] = []
        self._emu_clock = clock

    async def _send(
        self,
        method: str,
        target: URL,
        safe_url: str,
        payload: bytes | Mapping[str, str] | None,
        headers: dict[str, str],
    ) -> tuple[int, CIMultiDict[str], bytes]:
        body = orjson.loads(payload) if isinstance(payload, bytes) else None
        self.sent.append(Sent(method, str(target), body, dict(headers), self._emu_clock.time()))
        return await super()._send(method, target, safe_url, payload, headers)


@dataclass
class Env:
    stack: EmulatorStack
    t: DefenderTenant
    http: Spy
    client: GraphClient
    sleeps: list[float] = field(default_factory=list)

    def gets(self) -> list[Sent]:
        return [s for s in self.http.sent if s.method == "GET"]


def _auth(stack: EmulatorStack, **overrides: Any) -> Any:
    return graph_auth(
        tenant_id=stack.tenant,
        client_id=stack.client_id,
        client_secret=stack.client_secret,
        graph_url=stack.graph_url,
        authority_host=stack.entra_url,
        ca_bundle=stack.tls.ca_file,
        **overrides,
    )


async def _env(stack: EmulatorStack, *, pacer: RequestPacer | None = None, **auth: Any) -> Env:
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:  # waiting is emulator time passing
        sleeps.append(seconds)
        stack.clock.advance(seconds)

    http = Spy(
        "graph",
        auth=_auth(stack, **auth),
        ca_bundle=stack.tls.ca_file,
        sleep=sleep,
        retry=RetryPolicy(attempts=4, total=600.0),
        pacer=pacer,
        clock=stack.clock,
    )
    return Env(stack, stack.defender, http, GraphClient(http, stack.graph_url), sleeps)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with EmulatorStack(seed=5, directory=tmp_path) as stack:
        e = await _env(stack)
        try:
            yield e
        finally:
            await e.http.close()
            assert e.http.auth is not None
            await e.http.auth.close()  # type: ignore[attr-defined]


def at(env: Env) -> datetime:
    return datetime.fromtimestamp(env.stack.clock.time(), UTC)


async def listed(env: Env, **kwargs: Any) -> list[GraphIncident]:
    return [i async for i in env.client.list_incidents(**kwargs)]


def _claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
