"""The agent's own HTTP endpoints while ``run`` is running (``[agent] metrics_listen``).

* ``GET /metrics``: Prometheus text format (OpenMetrics when the scraper asks for it), from a
  :class:`prometheus_client.CollectorRegistry` of our own (never the global one).
* ``GET /healthz``: 200 while the event loop answers (a blocked loop answers nothing, and the
  probe's timeout says so).
* ``GET /readyz``: 200 when every enabled workspace had a successful cycle within
  2 x ``poll_interval`` and its ServiceNow instance is not paused by a rate limit (REFERENCE
  E.8); otherwise 503 with a JSON body naming the lagging workspaces and the paused instances.
  A standby agent (a shared PostgreSQL state, another agent leads) answers 200 with the body
  ``standby``: it is healthy and ready to take over, so a load balancer must not replace it.

Plain HTTP: bind it to 127.0.0.1 (or a management interface) and let the local Prometheus
agent or a reverse proxy carry it further. It serves numbers, never incident data or secrets.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from agent.app.metrics import AgentMetrics, HttpSource, TokenSource
from agent.app.runtime import Runtime
from agent.config import Config
from agent.connectors.entra import EntraAuth
from agent.connectors.http import HttpClient
from agent.connectors.servicenow.auth import ServiceNowOAuth
from agent.connectors.servicenow.pause import iso as pause_iso
from agent.errors import ConfigError
from agent.log import log

if TYPE_CHECKING:
    from agent.app.leadership import Leadership


class Readiness:
    """When each workspace last finished a successful cycle, from the ``cycle_summary`` events."""

    def __init__(
        self,
        workspaces: Sequence[str],
        poll_interval: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        instance_of: Mapping[str, str] | None = None,
        pauses: Callable[[], Mapping[str, float]] = dict,
    ) -> None:
        self.workspaces = list(workspaces)
        self.window = 2 * poll_interval
        self._clock = clock
        self._last_ok: dict[str, float] = {}
        self._instance_of = dict(instance_of or {})
        self._pauses = pauses

    def observe(self, record: Mapping[str, Any]) -> None:
        """A :attr:`agent.log.Logger.observers` callback."""
        if record.get("event") == "cycle_summary" and record.get("ok") is True:
            workspace = record.get("workspace")
            if isinstance(workspace, str):
                self._last_ok[workspace] = self._clock()

    def report(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)``; the body names every lagging workspace and why."""
        now = self._clock()
        lagging: dict[str, str] = {}
        ages: dict[str, float | None] = {}
        for name in self.workspaces:
            last = self._last_ok.get(name)
            ages[name] = round(now - last, 1) if last is not None else None
            if last is None:
                lagging[name] = "no successful cycle yet"
            elif now - last > self.window:
                lagging[name] = f"last successful cycle {now - last:.0f} s ago (limit {self.window:.0f} s)"
        paused = {instance: pause_iso(until) for instance, until in self._pauses().items() if until}
        for name in self.workspaces:
            instance = self._instance_of.get(name, "")
            if instance in paused:  # REFERENCE E.8
                lagging[name] = (
                    f"ServiceNow instance {instance} rate-limits us: paused until {paused[instance]}"
                )
        body = {
            "ready": not lagging,
            "lagging": lagging,
            "seconds_since_success": ages,
            "servicenow_paused": paused,
        }
        return not lagging, body


class Operations:
    """Metrics, health and readiness for one ``run``: an aiohttp server inside the agent process."""

    def __init__(
        self,
        config: Config,
        rt: Runtime,
        workspaces: Sequence[str] | None = None,
        lead: Leadership | None = None,
    ) -> None:
        assert config.agent.metrics_listen is not None
        self.config = config
        self.rt = rt
        self.lead = lead
        self.host, self.port = config.agent.metrics_listen
        enabled = {
            name: ws.servicenow
            for name, ws in config.sources.items()
            if ws.enabled and (not workspaces or name in workspaces)
        }
        self.registry = CollectorRegistry()
        self.metrics = AgentMetrics(
            self.registry,
            enabled,
            poll_interval=config.agent.poll_interval,
            http=self._http_sources,
            tokens=self._token_sources,
            pauses=self._pauses,
            leadership=self._leadership,
        )
        self.readiness = Readiness(
            list(enabled), config.agent.poll_interval, instance_of=enabled, pauses=self._pauses
        )
        self.started = time.monotonic()
        self._runner: web.AppRunner | None = None
        self.url = ""

    def _leadership(self) -> tuple[bool, int]:
        if self.lead is None:
            return True, 0
        return self.lead.leading, self.lead.transitions

    def _http_sources(self) -> Iterator[HttpSource]:
        for name, http in self.rt.arm.items():
            yield HttpSource("sentinel", name, http)
        for app, http in self._graph_clients():
            yield HttpSource("graph", app, http)
        for name, http in self.rt.snow_http.items():
            yield HttpSource("servicenow", name, http)

    def _token_sources(self) -> Iterator[TokenSource]:
        for name, entra in self.rt.entra.items():
            yield TokenSource("entra", name, entra.token_requests, entra.token_failures)
        for app, http in self._graph_clients():
            if isinstance(http.auth, EntraAuth):  # the app's Graph token, beside its ARM one
                yield TokenSource(
                    "entra", f"{app} (graph)", http.auth.token_requests, http.auth.token_failures
                )
        for name, http in self.rt.snow_http.items():
            if isinstance(http.auth, ServiceNowOAuth):
                yield TokenSource("servicenow", name, http.auth.token_requests, http.auth.token_failures)

    def _graph_clients(self) -> Iterator[tuple[str, HttpClient]]:
        """The Graph sessions by app name (with the endpoint when one app uses two)."""
        apps = [app for app, _url in self.rt.graph]
        for (app, url), http in self.rt.graph.items():
            yield (app if apps.count(app) == 1 else f"{app} {url}"), http

    def _pauses(self) -> dict[str, float]:
        """ServiceNow instance -> end of its rate-limit pause (Unix time), 0 when none."""
        return {name: gate.until if gate.active() else 0.0 for name, gate in self.rt.snow_gates.items()}

    def app(self) -> web.Application:
        """The aiohttp application (``/metrics``, ``/healthz``, ``/readyz``)."""
        app = web.Application()
        exposition = make_aiohttp_handler(self.registry)

        async def metrics(request: web.Request) -> web.StreamResponse:
            if self.rt.shadow is not None:
                await self.metrics.refresh(self.rt.shadow)
            return await exposition(request)

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "uptime_seconds": round(time.monotonic() - self.started, 1)}, 200)

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.lead is not None and not self.lead.leading:
            return web.Response(text="standby", status=200)
        ready, body = self.readiness.report()
        return _json(body, 200 if ready else 503)

    async def start(self) -> None:
        """Listen on ``metrics_listen`` and start observing the log; a busy port is a ConfigError."""
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(
                [f"[agent] metrics_listen: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"]
            ) from None
        self._runner = runner
        port = self.port
        server = getattr(site, "_server", None)
        if server is not None and getattr(server, "sockets", None):
            port = server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{port}"
        log.observers.extend((self.metrics.observe, self.readiness.observe))
        log.info("metrics_started", url=self.url, endpoints=["/metrics", "/healthz", "/readyz"])

    async def stop(self) -> None:
        """Stop observing and close the server (idempotent)."""
        for observer in (self.metrics.observe, self.readiness.observe):
            with contextlib.suppress(ValueError):
                log.observers.remove(observer)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@contextlib.asynccontextmanager
async def operations(
    config: Config, rt: Runtime, workspaces: Sequence[str] | None = None, lead: Leadership | None = None
) -> AsyncIterator[Operations | None]:
    """Serve metrics and health while the block runs; yields ``None`` when metrics are off."""
    if config.agent.metrics_listen is None:
        yield None
        return
    ops = Operations(config, rt, workspaces, lead)
    await ops.start()
    try:
        yield ops
    finally:
        await ops.stop()


def _json(body: Any, status: int) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")
