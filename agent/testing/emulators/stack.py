"""All emulators together: one Entra ID, one Sentinel, one or more ServiceNow instances and
Microsoft Graph (Defender XDR incidents).

They share one clock (tests expire tokens by advancing it), one TLS CA, one token registry (a
token Entra issues is what Sentinel and Graph check), one Entra directory and one call recorder.
The sync app is granted the Graph application permission ``SecurityIncident.ReadWrite.All``
(enough to read and update incidents, comment, and read alerts; GRAPH.md A.2); the tenant's
Defender data is ``stack.defender``. The
stack registers the sync app with Entra, the integration account on every ServiceNow instance,
and a few analysts who exist on both sides (UPN == ServiceNow e-mail, so owners map by e-mail).

Usage::

    async with EmulatorStack(seed=1, directory=tmp) as stack:
        ws = stack.add_workspace("soc-eu")
        ws.create_incident(title="Suspicious sign-in", labels=["snow"])
        ini = stack.write_config(tmp / "agent.ini", state_db=tmp / "agent.db")
"""

from __future__ import annotations

import configparser
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TextIO

from agent.testing.emulators.common import (
    Clock,
    Directory,
    EmulatorServer,
    Faults,
    Recorder,
    TLSMaterial,
    TokenRegistry,
)
from agent.testing.emulators.entra import EntraEmulator
from agent.testing.emulators.graph import PROFILES, GraphEmulator
from agent.testing.emulators.graph_arm import SentinelCoupling
from agent.testing.emulators.graph_tenant import DefenderTenant
from agent.testing.emulators.sentinel import SentinelEmulator, SentinelWorkspace
from agent.testing.emulators.servicenow import ServiceNowEmulator

__all__ = ["ANALYSTS", "Analyst", "EmulatorStack"]

DEFAULT_TENANT = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b"
DEFAULT_CLIENT_ID = "2b7e9c4d-1a3f-4e5b-8c6d-7e8f9a0b1c2d"
DEFAULT_CLIENT_SECRET = "emulator-client-secret~0123456789"
DEFAULT_SNOW_USER = "svc_sentinel_sync"
DEFAULT_SNOW_PASSWORD = "emulator-snow-password-0123"
DEFAULT_SNOW_CLIENT_ID = "sentinel-snow-sync-oauth"
DEFAULT_SNOW_CLIENT_SECRET = "emulator-snow-oauth-secret-0123"
DEFAULT_LABEL = "snow"
DEFAULT_APP_NAME = "sentinel-snow-sync"
GRAPH_ROLES: tuple[str, ...] = ("SecurityIncident.ReadWrite.All",)


@dataclass(frozen=True, slots=True)
class Analyst:
    """A SOC analyst known to both sides: Entra UPN (== ServiceNow e-mail) and sys_user name."""

    upn: str
    user_name: str
    name: str


ANALYSTS: tuple[Analyst, ...] = (
    Analyst("alice@contoso.example", "alice.analyst", "Alice Analyst"),
    Analyst("bob@contoso.example", "bob.hunter", "Bob Hunter"),
    Analyst("carol@contoso.example", "carol.responder", "Carol Responder"),
    Analyst("dave@contoso.example", "dave.lead", "Dave Lead"),
)


class EmulatorStack:
    """One Entra, one Sentinel and one or more ServiceNow emulators sharing clock, TLS CA,
    tokens, directory and recorder.

    ``latency`` is applied as a ``*`` fault rule on every emulator; a test that sets its own
    ``*`` rule replaces it. ``port_base`` pins the ports (Entra, Sentinel, then each ServiceNow
    instance in order, then Graph); by default every server takes a free port.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        directory: str | Path | None = None,
        snow_instances: tuple[str, ...] = ("default",),
        close_data_policy: bool = True,
        latency: float = 0.0,
        tenant: str = DEFAULT_TENANT,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        snow_user: str = DEFAULT_SNOW_USER,
        snow_password: str = DEFAULT_SNOW_PASSWORD,
        port_base: int | None = None,
    ) -> None:
        if not snow_instances:
            raise ValueError("at least one ServiceNow instance is needed")
        self.seed = seed
        self._tempdir: str | None = None
        if directory is None:
            self._tempdir = tempfile.mkdtemp(prefix="snow-sync-emu-")
        self.path = Path(directory) if directory is not None else Path(self._tempdir or ".")
        self.tenant, self.client_id, self.client_secret = tenant, client_id, client_secret
        self.snow_user, self.snow_password = snow_user, snow_password
        self.snow_client_id, self.snow_client_secret = DEFAULT_SNOW_CLIENT_ID, DEFAULT_SNOW_CLIENT_SECRET
        self.port_base = port_base
        self.subscription_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"emulator-subscription:{seed}"))

        self.clock = Clock()
        self.tls = TLSMaterial(self.path)
        self.tokens = TokenRegistry(self.clock)
        self.directory = Directory()
        self.recorder = Recorder()
        self.entra = EntraEmulator(
            clock=self.clock, tokens=self.tokens, faults=Faults(seed), recorder=self.recorder
        )
        self.sentinel = SentinelEmulator(
            tokens=self.tokens,
            directory=self.directory,
            clock=self.clock,
            faults=Faults(seed),
            recorder=self.recorder,
        )
        self.snow: dict[str, ServiceNowEmulator] = {
            name: ServiceNowEmulator(
                clock=self.clock,
                tokens=self.tokens,
                faults=Faults(seed),
                recorder=self.recorder,
                name=name,
                close_data_policy=close_data_policy,
            )
            for name in snow_instances
        }
        self.graph = GraphEmulator(
            tokens=self.tokens, clock=self.clock, faults=Faults(seed), recorder=self.recorder, seed=seed
        )
        if latency:
            for faults in (
                self.entra.faults,
                self.sentinel.faults,
                self.graph.faults,
                *(s.faults for s in self.snow.values()),
            ):
                faults.set("*", latency=latency)

        self.app_object_id = self.entra.add_app(
            tenant, client_id, secret=client_secret, display_name=DEFAULT_APP_NAME
        )
        self.graph.set_app_name(client_id, DEFAULT_APP_NAME)
        self.entra.grant_roles(client_id, PROFILES["global"].graph_host, *GRAPH_ROLES)
        self.analysts = ANALYSTS
        # instance -> user_name -> sys_id, for the integration account and every analyst
        self.snow_user_ids: dict[str, dict[str, str]] = {}
        self.snow_group_ids: dict[str, dict[str, str]] = {}
        for analyst in self.analysts:
            self.directory.add(analyst.upn, analyst.name)
        for name, snow in self.snow.items():
            ids = {snow_user: snow.add_api_user(snow_user, snow_password)}
            snow.add_oauth_client(self.snow_client_id, self.snow_client_secret)
            for analyst in self.analysts:
                ids[analyst.user_name] = snow.add_user(analyst.user_name, analyst.upn, analyst.name)
            self.snow_user_ids[name] = ids
            self.snow_group_ids[name] = {
                g: snow.add_group(g) for g in ("Security Operations", "Service Desk")
            }

        self.workspaces: dict[str, SentinelWorkspace] = {}
        self._workspace_keys: dict[str, tuple[str, str, str]] = {}
        self._workspace_snow: dict[str, str] = {}
        self._servers: list[EmulatorServer] = []
        self.entra_url = ""
        self.sentinel_url = ""
        self.graph_url = ""
        self.snow_urls: dict[str, str] = {}

    @property
    def defender(self) -> DefenderTenant:
        """The stack tenant's Defender XDR incidents and alerts (served by ``graph``)."""
        return self.graph.tenant(self.tenant)

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every server on 127.0.0.1 over TLS and fill in the ``*_url`` attributes."""
        apps = [self.entra.app, self.sentinel.app, *(s.app for s in self.snow.values()), self.graph.app]
        try:
            for index, app in enumerate(apps):
                port = self.port_base + index if self.port_base is not None else 0
                server = EmulatorServer(app, self.tls, port=port)
                self._servers.append(server)
                await server.start()
        except BaseException:
            await self.stop()
            raise
        self.entra_url = self._servers[0].base_url
        self.sentinel_url = self._servers[1].base_url
        # The ARM token audience is the management endpoint itself (REFERENCE A.12): the agent
        # asks for "<management_url>/.default", so the emulator also accepts its own URL.
        self.sentinel.audience_aliases = (self.sentinel_url,)
        self.snow_urls = {name: s.base_url for name, s in zip(self.snow, self._servers[2:-1], strict=True)}
        self.graph_url = self._servers[-1].base_url
        # As for ARM, a client configured with graph_url = <emulator> asks for "<that URL>/.default".
        self.graph.audience_aliases = (self.graph_url,)
        self.entra.grant_roles(self.client_id, self.graph_url, *GRAPH_ROLES)

    async def stop(self) -> None:
        """Stop the servers (idempotent) and remove the temporary folder if the stack made one."""
        servers, self._servers = self._servers, []
        for server in reversed(servers):
            await server.stop()
        if self._tempdir is not None:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    async def __aenter__(self) -> EmulatorStack:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- workspaces -----------------------------------------------------------------------------

    def add_workspace(
        self,
        name: str,
        *,
        subscription_id: str | None = None,
        resource_group: str = "rg-soc",
        workspace_name: str | None = None,
        servicenow: str | None = None,
    ) -> SentinelWorkspace:
        """A Sentinel workspace known to the config as ``[workspace:NAME]``, synced with the
        ServiceNow instance ``servicenow`` (the first instance by default)."""
        instance = servicenow or next(iter(self.snow))
        if instance not in self.snow:
            raise KeyError(f"no ServiceNow instance {instance!r}")
        key = (subscription_id or self.subscription_id, resource_group, workspace_name or name)
        workspace = self.sentinel.add_workspace(*key)
        self.workspaces[name] = workspace
        self._workspace_keys[name] = key
        self._workspace_snow[name] = instance
        return workspace

    def couple_defender(self, workspace: str, *, delay: float = 2.0) -> SentinelCoupling:
        """Make workspace ``workspace`` onboarded to the Defender portal: the tenant's Defender
        incidents appear in it as ``Microsoft XDR`` incidents and changes flow both ways after
        ``delay`` seconds (GRAPH.md H.4). Call before :meth:`start`."""
        return SentinelCoupling(
            self.graph, self.defender, self.sentinel, self.workspaces[workspace], delay=delay
        )

    def workspace_key(self, name: str) -> tuple[str, str, str]:
        """``(subscription_id, resource_group, workspace_name)`` of a workspace added by name."""
        return self._workspace_keys[name]

    def workspace_instance(self, name: str) -> str:
        """The ServiceNow instance a workspace syncs with."""
        return self._workspace_snow[name]

    # --- config ---------------------------------------------------------------------------------

    def write_config(
        self,
        path: str | Path,
        *,
        state_db: str | Path,
        workspaces: list[str] | None = None,
        extra: dict[str, dict[str, str]] | None = None,
        defender: str | None = None,
    ) -> Path:
        """Write an agent ini pointing at this stack (after :meth:`start`).

        ``defender`` names a ``[defender:NAME]`` section for the stack's Defender XDR tenant
        (Graph at this stack's URL, the same app, the first ServiceNow instance, tag ``snow``).

        Secrets go to files next to the ini, mode 0600: ``<stem>.client-secret`` (Entra),
        ``<stem>.snow-password`` and ``<stem>.snow-client-secret`` (the ServiceNow OAuth client,
        for ``extra={"servicenow": {"auth": "oauth", "client_id": stack.snow_client_id,
        "client_secret_file": "<stem>.snow-client-secret"}}``). ``extra`` adds or overrides keys
        and sections.
        """
        if not self.entra_url:
            raise RuntimeError("start the stack before writing a config")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        secret_file = _write_private(path.with_name(f"{path.stem}.client-secret"), self.client_secret)
        password_file = _write_private(path.with_name(f"{path.stem}.snow-password"), self.snow_password)
        _write_private(path.with_name(f"{path.stem}.snow-client-secret"), self.snow_client_secret)

        sections: dict[str, dict[str, str]] = {
            "agent": {"state_db": str(state_db), "ca_bundle": str(self.tls.ca_file.resolve())},
            "oauth:default": {
                "tenant_id": self.tenant,
                "client_id": self.client_id,
                # Relative file names resolve against the ini's folder.
                "client_secret_file": secret_file.name,
                "authority_host": self.entra_url,
                "management_url": self.sentinel_url,
            },
        }
        for name, url in self.snow_urls.items():
            sections[_snow_section(name)] = {
                "instance_url": url,
                "auth": "basic",
                "username": self.snow_user,
                "password_file": password_file.name,
            }
        for name in self.workspaces if workspaces is None else workspaces:
            subscription_id, resource_group, workspace_name = self.workspace_key(name)
            sections[f"workspace:{name}"] = {
                "subscription_id": subscription_id,
                "resource_group": resource_group,
                "workspace_name": workspace_name,
                "oauth": "default",
                "servicenow": self.workspace_instance(name),
                "incident_filter": DEFAULT_LABEL,
            }
        if defender is not None:
            sections[f"defender:{defender}"] = {
                "oauth": "default",
                "graph_url": self.graph_url,
                "servicenow": next(iter(self.snow)),
                "incident_filter": DEFAULT_LABEL,
            }
        for section, values in (extra or {}).items():
            sections.setdefault(section, {}).update(values)

        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]  # mapping keys are case-sensitive
        parser.read_dict(sections)
        with _open_private(path) as handle:
            parser.write(handle)
        return path


def _snow_section(instance: str) -> str:
    return "servicenow" if instance == "default" else f"servicenow:{instance}"


def _open_private(path: Path) -> TextIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode otherwise
    return os.fdopen(fd, "w", encoding="utf-8")


def _write_private(path: Path, value: str) -> Path:
    with _open_private(path) as handle:
        handle.write(value + "\n")
    return path
