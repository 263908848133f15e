"""Everything one agent process holds open: the shadow and one HTTP client per remote system.

One ``HttpClient`` (one aiohttp session and connection pool) per Entra application for ARM, one
per (Entra application, Graph endpoint) for the Defender sources (its own token audience, GRAPH.md
A.1, and the app's one request pacer in that tenant, G), and one per ServiceNow instance, shared
by every source that uses it. Each enabled ``[workspace:NAME]`` and ``[defender:NAME]`` becomes
one :class:`~agent.sync.cycle.WorkspaceSync`: its incident source, its ticket side, the shadow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType

from agent.app import onboarding
from agent.config import Config, Defender, ServiceNowInstance, Workspace
from agent.connectors.entra import EntraAuth
from agent.connectors.graph.client import GraphClient
from agent.connectors.graph.cloud import graph_auth, graph_pacer
from agent.connectors.graph.source import GraphSource
from agent.connectors.http import HttpClient
from agent.connectors.pacing import ArmBuckets, HourlyQuotas
from agent.connectors.retry import RetryPolicy
from agent.connectors.sentinel.client import SentinelClient
from agent.connectors.sentinel.source import SentinelSource
from agent.connectors.servicenow.auth import ServiceNowBasicAuth, ServiceNowOAuth
from agent.connectors.servicenow.client import ServiceNowClient
from agent.connectors.servicenow.pause import PauseGate
from agent.connectors.servicenow.sink import ServiceNowSink, hook_fields
from agent.core.maps import Maps
from agent.errors import ConfigError
from agent.store import Store, open_store
from agent.sync import hooks
from agent.sync.cycle import Ready, Settings, WorkspaceSync


class Runtime:
    """``async with Runtime(config) as rt: rt.syncs()``."""

    def __init__(self, config: Config, *, retry: RetryPolicy | None = None) -> None:
        self.config = config
        self.retry = retry or RetryPolicy()
        self.shadow: Store | None = None
        self.arm: dict[str, HttpClient] = {}
        self.snow_http: dict[str, HttpClient] = {}
        self.entra: dict[str, EntraAuth] = {}
        self.graph: dict[tuple[str, str], HttpClient] = {}  # (oauth, graph_url) -> its session
        self.snow_gates: dict[str, PauseGate] = {}
        self._snow_clients: dict[str, ServiceNowClient] = {}

    async def __aenter__(self) -> Runtime:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self, *, state: bool = True) -> None:
        """Build every remote client; open the state store too unless ``state`` is false (``check``
        opens it itself, so that a store it cannot reach is one FAIL line among the others)."""
        cfg = self.config
        ca = str(cfg.agent.ca_bundle) if cfg.agent.ca_bundle else None
        limit = cfg.agent.max_concurrency
        for name, app in cfg.oauth.items():
            auth = EntraAuth(
                authority=app.authority,
                client_id=app.client_id,
                client_secret=app.client_secret.reveal() if app.client_secret else None,
                certificate_file=str(app.certificate_file) if app.certificate_file else None,
                scope=app.scope,
                ca_bundle=ca,
            )
            self.entra[name] = auth
            # One principal: one set of ARM token buckets for every workspace it reads (A.11).
            self.arm[name] = HttpClient(
                "sentinel",
                auth=auth,
                ca_bundle=ca,
                max_concurrency=limit,
                retry=self.retry,
                buckets=ArmBuckets(),
            )
        for defender in cfg.defenders.values():
            key = (defender.oauth, defender.graph_url)
            if key not in self.graph:
                self.graph[key] = self._graph_http(defender, ca)
        for name, inst in cfg.servicenow.items():
            snow_auth: ServiceNowBasicAuth | ServiceNowOAuth
            if inst.auth == "oauth":
                snow_auth = ServiceNowOAuth(
                    instance_url=inst.instance_url,
                    client_id=inst.client_id or "",
                    client_secret=inst.client_secret.reveal() if inst.client_secret else "",
                    # Without a user the client-credentials grant is used (REFERENCE E.11).
                    username=inst.username if inst.password else None,
                    password=inst.password.reveal() if inst.password else None,
                    ca_bundle=ca,
                )
            else:
                snow_auth = ServiceNowBasicAuth(
                    inst.username or "", inst.password.reveal() if inst.password else ""
                )
            gate = self.snow_gates[name] = PauseGate(name)
            http = HttpClient(
                "servicenow",
                auth=snow_auth,
                ca_bundle=ca,
                max_concurrency=limit,
                retry=self.retry,
                gate=gate,
                quotas=HourlyQuotas(),
            )
            self.snow_http[name] = http
            self._snow_clients[name] = ServiceNowClient(http, inst.instance_url, table=inst.incident_table)
        if state:
            await self.open_state()

    async def open_state(self) -> None:
        """Open the state store and load what an earlier run kept there for the remote clients."""
        self.shadow = await open_store(self.config.agent.state)
        for gate in self.snow_gates.values():
            await gate.load(self.shadow)  # a rate-limit pause an earlier run began (REFERENCE E.8)

    def _graph_http(self, defender: Defender, ca: str | None) -> HttpClient:
        """The Graph session of a Defender source's app: a token for the Graph endpoint (not
        ARM's), paced at the app's 150 requests a minute in its tenant (GRAPH.md G)."""
        app = self.config.oauth[defender.oauth]
        auth = graph_auth(
            tenant_id=app.tenant_id,
            client_id=app.client_id,
            client_secret=app.client_secret.reveal() if app.client_secret else None,
            certificate_file=str(app.certificate_file) if app.certificate_file else None,
            graph_url=defender.graph_url,
            authority_host=app.authority_host,
            cloud="usgov" if app.cloud == "usgov" else "public",
            ca_bundle=ca,
        )
        return HttpClient(
            "graph",
            auth=auth,
            ca_bundle=ca,
            max_concurrency=self.config.agent.max_concurrency,
            retry=self.retry,
            pacer=graph_pacer(app.tenant_id, app.client_id),
        )

    async def close(self) -> None:
        for http in [*self.arm.values(), *self.graph.values(), *self.snow_http.values()]:
            await http.close()
        graph_auths = [h.auth for h in self.graph.values()]
        for auth in [*self.entra.values(), *graph_auths]:
            close = getattr(auth, "close", None)
            if close is not None:
                await close()
        if self.shadow is not None:
            await self.shadow.close()
            self.shadow = None

    def calls(self) -> int:
        """Requests sent to every remote system so far (retries included)."""
        return sum(h.requests for h in [*self.arm.values(), *self.graph.values(), *self.snow_http.values()])

    def sentinel_client(self, workspace: str) -> SentinelClient:
        ws = self.config.workspaces[workspace]
        app = self.config.oauth[ws.oauth]
        return SentinelClient(
            self.arm[ws.oauth],
            app.management_url,
            app.api_version,
            ws.subscription_id,
            ws.resource_group,
            ws.workspace_name,
            portal_host=app.portal_host,
        )

    def graph_client(self, name: str) -> GraphClient:
        """The Graph client of Defender source ``name``."""
        defender = self.config.defenders[name]
        return GraphClient(self.graph[(defender.oauth, defender.graph_url)], defender.graph_url)

    def snow_client(self, instance: str) -> ServiceNowClient:
        return self._snow_clients[instance]

    def syncs(self, only: Sequence[str] | None = None) -> list[WorkspaceSync]:
        """One ``WorkspaceSync`` per enabled workspace and Defender source (``enabled = false`` is
        never touched)."""
        sources = self.config.sources
        unknown = [w for w in only or () if w not in sources]
        if unknown:
            raise ConfigError([f"[workspace:{w}]: no such workspace in the config" for w in unknown])
        return [
            self.sync(name) for name, src in sources.items() if src.enabled and (not only or name in only)
        ]

    def sync(self, workspace: str) -> WorkspaceSync:
        """The sync of one source: its incidents, its ticket side and the shadow, plugged together."""
        assert self.shadow is not None
        ws = self.config.sources[workspace]
        inst = self.config.servicenow[ws.servicenow]
        hook = hooks.load(self.config.agent.custom_mapping)
        source = self.defender_source(workspace) if isinstance(ws, Defender) else self.source(workspace)
        sink = self.sink(workspace)
        ready = self._handover(ws, sink.fields) if isinstance(ws, Defender) and ws.workspaces else None
        return WorkspaceSync(
            settings(self.config, ws, inst),
            source,
            sink,
            self.shadow,
            hook=hook,
            calls=self.calls,
            ready=ready,
        )

    def onboarded(self) -> set[str]:
        """The workspaces an enabled ``[defender:NAME]`` takes the Defender XDR incidents of."""
        return {ws for d in self.config.defenders.values() if d.enabled for ws in d.workspaces}

    def _handover(self, defender: Defender, fields: Sequence[str]) -> Ready:
        """Before each cycle of a Defender source: the links of its onboarded workspaces' XDR
        incidents move to it (:mod:`agent.app.onboarding`); the cycle waits until they have."""
        assert self.shadow is not None
        store, inst = self.shadow, self.config.servicenow[defender.servicenow]
        target = onboarding.Target(
            source=defender.name,
            tenant=self.config.oauth[defender.oauth].tenant_id,
            unique_key=inst.unique_key,
            marker=f"Defender/{defender.name}",
            fields=fields,
        )
        graph, snow = self.graph_client(defender.name), self.snow_client(inst.name)

        async def ready(now: datetime, dry_run: bool) -> bool:
            done = True
            for ws in defender.workspaces:
                if dry_run:  # a plan moves nothing: it only says whether the move is done
                    done = await onboarding.moved(store, inst.name, defender.name, ws) and done
                    continue
                sentinel = self.sentinel_client(ws)
                report = await onboarding.move_workspace(
                    store, inst.name, ws, target, sentinel, graph, snow, now
                )
                done = report.done and done
            return done

        return ready

    def defender_source(self, name: str) -> GraphSource:
        """The incident source of one ``[defender:NAME]``."""
        defender = self.config.defenders[name]
        maps = self.config.mappings.for_instance(defender.servicenow)
        app = self.config.oauth[defender.oauth]
        return GraphSource(self.graph_client(name), defender, app.tenant_id, maps.closure_to_defender)

    def source(self, workspace: str) -> SentinelSource:
        """The incident source of one workspace."""
        return SentinelSource(
            self.sentinel_client(workspace),
            self.config.workspaces[workspace],
            page_size=self.config.agent.page_size,
            hand_over_xdr=workspace in self.onboarded(),
        )

    def sink(self, workspace: str) -> ServiceNowSink:
        """The ticket side of one workspace or Defender source."""
        assert self.shadow is not None
        ws = self.config.sources[workspace]
        marker = f"Defender/{ws.name}" if isinstance(ws, Defender) else f"Sentinel/{ws.workspace_name}"
        hook = hooks.load(self.config.agent.custom_mapping)
        return ServiceNowSink(
            self.config,
            ws,
            self.config.servicenow[ws.servicenow],
            self.snow_client(ws.servicenow),
            self.shadow,
            marker=marker,
            hook_fields=hook_fields(hooks.declared_fields(hook)),
        )


def settings(config: Config, ws: Workspace | Defender, inst: ServiceNowInstance) -> Settings:
    """What the engine takes from the configuration for workspace (or Defender source) ``ws``."""
    agent, im = config.agent, config.mappings.for_instance(inst.name)
    return Settings(
        workspace=ws.name,
        instance=inst.name,
        maps=Maps(
            severity_to_snow=im.severity_to_servicenow,
            severity_to_sentinel=im.severity_to_sentinel,
            status_to_snow=im.status_to_servicenow,
            status_to_sentinel=im.status_to_sentinel,
            closure_to_snow=im.closure_to_servicenow,
            closure_to_sentinel=im.closure_to_sentinel,
            closure_catch_all_written=im.closure_catch_all_written,
        ),
        max_age_days=ws.max_age_days,
        reopen_closed=inst.reopen_closed,
        conflict_policy=agent.conflict_policy,
        max_concurrency=agent.max_concurrency,
        overlap=agent.overlap,
        poll_interval=agent.poll_interval,
        sweep_interval=agent.sweep_interval,
        open_check_interval=agent.open_check_interval,
        max_close_ratio=agent.max_close_ratio,
        writeback_label=agent.writeback_label,
        enrichment_delay=agent.enrichment_delay,
        comment_format=agent.comment_format,
    )
