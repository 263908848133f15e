"""What one benchmark run measured, and the rows of its targets table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.testing.bench.lab import BenchOptions
from agent.testing.bench.lighter import LighterResult
from agent.testing.bench.scale import ScaleResult
from agent.testing.bench.scenarios import SteadyResult, SyncResult


@dataclass(frozen=True)
class Row:
    """One target: ``item`` of the issue, what it asks, what was measured and the verdict."""

    item: str
    target: str
    measured: str
    verdict: str

    def cells(self) -> tuple[str, str, str, str]:
        return (self.item, self.target, self.measured, self.verdict)


@dataclass
class Results:
    """Everything one run measured (a section not run stays empty)."""

    options: BenchOptions
    command: str
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    steady: SteadyResult | None = None
    profile: SyncResult | None = None
    arm: SyncResult | None = None
    sweep: list[SyncResult] = field(default_factory=list)
    lighter: LighterResult | None = None  # the sweep and initial sync against a lighter-weight responder
    scale: list[ScaleResult] = field(default_factory=list)
    duration: float = 0.0
    snow_limit_rows: list[Row] = field(default_factory=list)  # ServiceNow rate-limit rule run
    demo_row: Row | None = None  # `make demo`'s output checked for 429 retry lines
