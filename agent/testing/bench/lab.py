"""One benchmark set-up: emulators seeded with incidents, an agent config, an agent process.

``async with lab(options, "main", concurrency=16, incidents=500) as lb:`` starts an
:class:`~agent.testing.emulators.stack.EmulatorStack` with the fixed latency, adds and seeds the
workspaces with the activity simulator (alerts, entities, comments, owners), writes the agent's
config (production defaults except ``max_concurrency``) and starts the agent process.
``lb.cycle()`` runs one agent cycle and returns what it cost.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.testing.bench.calls import Calls
from agent.testing.bench.worker import AgentProcess
from agent.testing.emulators.simulator import Simulator
from agent.testing.emulators.stack import EmulatorStack

ARM_UNLIMITED = (10**9, 1e9)


@dataclass(frozen=True)
class BenchOptions:
    """What to measure and how big (the command-line flags)."""

    workdir: Path
    workspaces: int = 3
    incidents: int = 500  # per workspace
    latency: float = 0.020  # seconds added to every request
    concurrency: int = 16
    sweep: tuple[int, ...] = (1, 4, 8, 16, 32)
    sweep_incidents: int = 300  # one workspace, for each point of the sweep
    scale_sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    changed_share: float = 0.01
    arm_limits: bool = True  # also run the initial sync against ARM's real token buckets
    profile: bool = True
    seed: int = 7


@dataclass
class Outcome:
    """What one agent cycle (or poll) cost: time, CPU, calls, and what the agent reported."""

    wall: float
    cpu: float
    loop_cpu: float
    run_delay: float  # the event-loop thread waiting for a CPU (other processes running)
    calls: Calls
    results: dict[str, dict[str, Any]]
    breakdown: dict[str, float] = field(default_factory=dict)
    top: list[tuple[str, float]] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    shadow_held: float = 0.0  # seconds the shadow's lock was held (its SQLite connection busy)
    shadow_waited: float = 0.0  # seconds tasks waited for it, added up
    shadow: dict[str, float] = field(default_factory=dict)  # the store's own times (StoreTimes)

    def total(self, key: str) -> int:
        """A cycle statistic summed over the workspaces (``created``, ``failures``, ...)."""
        return sum(int(r.get(key, 0)) for r in self.results.values())

    @property
    def errors(self) -> list[str]:
        return [f"{ws}: {r['error']}" for ws, r in self.results.items() if "error" in r]


@dataclass
class Lab:
    """A started stack with seeded workspaces and a running agent process."""

    options: BenchOptions
    stack: EmulatorStack
    names: list[str]
    folder: Path
    config: Path
    concurrency: int
    agent: AgentProcess | None = None

    async def start_agent(self, config: Path | None = None) -> None:
        """(Re)start the agent process, on another config if given."""
        await self.stop_agent()
        self.agent = await AgentProcess.start(config or self.config, self.folder / "agent.log")

    async def stop_agent(self) -> float:
        """Stop the agent process; its peak RSS in MiB (0 if none was running)."""
        agent, self.agent = self.agent, None
        return await agent.stop() if agent is not None else 0.0

    async def cycle(
        self, *, profile: bool = False, poll: str | None = None, dry_run: bool = False
    ) -> Outcome:
        """One cycle of every workspace (or of the reference strategy ``poll``): time, CPU and calls."""
        assert self.agent is not None, "start_agent() first"
        mark = self.stack.recorder.mark()
        answer = await (self.agent.poll(poll) if poll else self.agent.cycle(profile=profile, dry_run=dry_run))
        return Outcome(
            wall=answer["wall"],
            cpu=answer["cpu"],
            loop_cpu=answer["loop_cpu"],
            run_delay=answer.get("run_delay", 0.0),
            calls=Calls.of(self.stack.recorder.since(mark)),
            results=answer["results"],
            breakdown=answer.get("breakdown") or {},
            top=[(str(name), float(t)) for name, t in answer.get("top") or []],
            peak_rss_mb=answer["peak_rss_mb"],
            shadow_held=answer.get("shadow_held", 0.0),
            shadow_waited=answer.get("shadow_waited", 0.0),
            shadow={str(k): float(v) for k, v in (answer.get("shadow") or {}).items()},
        )


def workspace_names(count: int) -> list[str]:
    return [f"soc-{i + 1}" for i in range(count)]


@asynccontextmanager
async def lab(
    options: BenchOptions,
    name: str,
    *,
    concurrency: int,
    incidents: int,
    arm_limits: bool = False,
    start_agent: bool = True,
    record: bool = False,
) -> AsyncIterator[Lab]:
    """A fresh stack and agent under ``workdir/name`` (see the module docstring).

    Without ``arm_limits`` the Sentinel emulator's token buckets are opened wide, so that the
    latency is the only bound (ARM's own limits are measured in a run of their own). ``record``
    keeps every exchange whole in ``stack.recorder.exchanges`` (for a replay).
    """
    folder = options.workdir / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    emulators = folder / "emulators"
    async with EmulatorStack(seed=options.seed, directory=emulators, latency=options.latency) as stack:
        if record:
            stack.recorder.exchanges = []
        if not arm_limits:
            stack.sentinel.read_bucket = stack.sentinel.write_bucket = ARM_UNLIMITED
        names = workspace_names(options.workspaces)
        for ws in names:
            stack.add_workspace(ws)
        if incidents:
            Simulator(stack, seed=options.seed).seed(names, incidents)
        config = stack.write_config(
            folder / "agent.ini",
            state_db=folder / "state.db",
            workspaces=names,
            extra={"agent": {"max_concurrency": str(concurrency), "log_level": "warning"}},
        )
        lb = Lab(options, stack, names, folder, config, concurrency)
        try:
            if start_agent:
                await lb.start_agent()
            yield lb
        finally:
            if lb.agent is not None:
                await lb.agent.kill()


class LatencyBound:
    """What a sync run is judged by, for any run that has an ``outcome``, a ``latency`` and a
    ``max_concurrency`` (against the emulators, or replayed by the lighter-weight responder)."""

    outcome: Outcome
    latency: float
    concurrency: int

    @property
    def created(self) -> int:
        return self.outcome.total("created")

    @property
    def bound(self) -> float:
        """``calls x latency / max_concurrency``: the wall time if only the latency limited it."""
        return latency_bound(self.outcome.calls.total, self.latency, self.concurrency)

    @property
    def efficiency(self) -> float:
        """Latency bound / wall time (1.0 = as fast as the latency allows)."""
        return self.bound / self.outcome.wall if self.outcome.wall else 0.0


def latency_bound(calls: int, latency: float, concurrency: int) -> float:
    """The fastest the calls can go: ``calls x latency / max_concurrency`` seconds."""
    return calls * latency / max(1, concurrency)


def arm_write_bound(writes: int, bucket: tuple[int, float]) -> float:
    """Seconds ARM's write token bucket needs to admit ``writes`` PUTs (REFERENCE A.11)."""
    capacity, refill = bucket
    return max(0.0, math.ceil(writes - capacity) / refill)
