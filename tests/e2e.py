"""Shared harness for end-to-end tests: the emulator stack, a written config, and agent cycles
run through the real runtime (real msal, real aiohttp over TLS, real SQLite)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.app.runtime import Runtime
from agent.config import Config, load_config
from agent.connectors.retry import RetryPolicy
from agent.sync.cycle import CycleOptions, CycleStats, run_workspaces
from agent.testing.emulators.common import Call
from agent.testing.emulators.sentinel import SentinelWorkspace
from agent.testing.emulators.servicenow import ServiceNowEmulator
from agent.testing.emulators.stack import EmulatorStack


@dataclass
class Env:
    stack: EmulatorStack
    tmp: Path
    config_path: Path
    workspaces: list[str]
    defaults: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        return load_config(self.config_path)

    def ws(self, name: str = "soc") -> SentinelWorkspace:
        return self.stack.workspaces[name]

    @property
    def snow(self) -> ServiceNowEmulator:
        return self.stack.snow["default"]

    def rewrite(self, extra: dict[str, dict[str, str]]) -> None:
        """Write the config anew with ``extra`` (on top of ``defaults``, a test module's own)."""
        merged = {k: dict(v) for k, v in self.defaults.items()}
        for section, values in extra.items():
            merged.setdefault(section, {}).update(values)
        self.config_path = self.stack.write_config(
            self.config_path, state_db=self.tmp / "state.db", workspaces=self.workspaces, extra=merged
        )

    async def cycle(
        self, *, retry: RetryPolicy | None = None, **options: Any
    ) -> dict[str, CycleStats | BaseException]:
        """One agent cycle of every workspace, through the production runtime."""
        async with Runtime(
            self.config, retry=retry or RetryPolicy(attempts=3, total=5, base=0.01, cap=0.05)
        ) as rt:
            return await run_workspaces(rt.syncs(), CycleOptions(**options))

    async def stats(self, name: str = "soc", **options: Any) -> CycleStats:
        result = (await self.cycle(**options))[name]
        if isinstance(result, BaseException):
            raise result
        return result

    def snow_record(self, incident: str) -> dict[str, str]:
        found = [r for r in self.snow.tables["incident"].values() if r.get("correlation_id") == incident]
        assert len(found) == 1, f"expected one ServiceNow record for {incident}, found {len(found)}"
        return found[0]

    def snow_records(self) -> list[dict[str, str]]:
        return [r for r in self.snow.tables["incident"].values() if r.get("correlation_id")]

    def calls_since(self, mark: int) -> list[Call]:
        return self.stack.recorder.since(mark)


def writes(calls: Sequence[Call]) -> list[Call]:
    """Calls that change something on a remote system (token requests excluded)."""
    return [
        c
        for c in calls
        if c.system != "entra"
        and c.method in ("PUT", "PATCH", "POST", "DELETE")
        and not c.route.endswith(("alerts", "entities"))
    ]


def reads(calls: Sequence[Call]) -> list[Call]:
    return [c for c in calls if c.system != "entra" and c not in writes(calls)]


def props(ws: SentinelWorkspace, name: str) -> dict[str, Any]:
    result: dict[str, Any] = ws.incidents[name]["properties"]
    return result
