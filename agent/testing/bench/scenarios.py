"""The measurements: initial sync, steady state side by side with per-incident polling, ARM's
token buckets, and the concurrency sweep. Each returns plain results for :mod:`agent.testing.bench.report`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.config import load_config
from agent.testing.bench.calls import Calls
from agent.testing.bench.lab import BenchOptions, Lab, LatencyBound, Outcome, lab, latency_bound

ANALYST = "alice@contoso.example"
ANALYST_USER = "bob.hunter"
SEVERITIES = ("High", "Medium", "Low")


@dataclass
class SyncResult(LatencyBound):
    """One initial sync (every labelled open incident becomes a ticket)."""

    label: str
    workspaces: int
    incidents: int  # seeded per workspace
    concurrency: int
    latency: float
    outcome: Outcome
    emulator_cpu: float  # CPU time of the benchmark process (the emulators) meanwhile
    with_comments: int = 0  # seeded incidents that have comments (each needs one listing)

    @property
    def sentinel_throttled(self) -> int:
        """Sentinel calls answered 429."""
        return self.outcome.calls.throttled_by["sentinel"]

    @property
    def act(self) -> tuple[int, float] | None:
        """The act step of a one-workspace run (the writes under the concurrency bound, from the
        cycle summary's ``apply_calls``/``apply_ms``): its requests and seconds. None for several
        workspaces, whose act steps overlap and share clients."""
        if len(self.outcome.results) != 1:
            return None
        [stats] = self.outcome.results.values()
        if not stats.get("apply_ms"):
            return None
        return int(stats.get("apply_calls", 0)), float(stats["apply_ms"]) / 1000

    @property
    def act_efficiency(self) -> float | None:
        """The act step's own latency bound / its wall time: the concurrency apart from the
        cycle's steps before and after it (token, listing pages, look-ups, the journal check)."""
        if self.act is None:
            return None
        calls, seconds = self.act
        return latency_bound(calls, self.latency, self.concurrency) / seconds

    @property
    def rate(self) -> float:
        """Incidents created per second."""
        return self.created / self.outcome.wall if self.outcome.wall else 0.0


@dataclass
class Step:
    """One steady-state situation: what a cycle of ours and one of the reference cost."""

    scenario: str
    ours: Calls | None = None
    reference: Calls | None = None  # per-incident polling
    store_app: Calls | None = None  # the ServiceNow store app's algorithm
    note: str = ""


@dataclass
class SteadyResult:
    """The steady-state table and the facts needed to read it."""

    workspaces: int
    open_links: int  # per workspace, what the reference polls
    poll_interval: float
    steps: list[Step] = field(default_factory=list)
    comments: dict[str, bool] = field(default_factory=dict)  # direction -> synced by us
    initial: SyncResult | None = None
    peak_rss_mb: float = 0.0


async def _sync(lb: Lab, label: str, *, profile: bool = False) -> SyncResult:
    with_comments = _with_comments(lb)
    c0 = time.process_time()
    outcome = await lb.cycle(profile=profile)
    if outcome.errors:
        raise RuntimeError(f"{label}: " + "; ".join(outcome.errors))
    opts = lb.options
    return SyncResult(
        label,
        len(lb.names),
        _seeded(lb),
        lb.concurrency,
        opts.latency,
        outcome,
        time.process_time() - c0,
        with_comments,
    )


def _with_comments(lb: Lab) -> int:
    return sum(
        1
        for ws in lb.names
        for name in lb.stack.workspaces[ws].incidents
        if lb.stack.workspaces[ws].comments(name)
    )


def _seeded(lb: Lab) -> int:
    return len(lb.stack.workspaces[lb.names[0]].incidents)


async def initial_sync(options: BenchOptions, *, profile: bool = False) -> SyncResult:
    """W x N incidents synced from scratch at the configured concurrency (optionally profiled)."""
    name = "profile" if profile else "initial"
    async with lab(options, name, concurrency=options.concurrency, incidents=options.incidents) as lb:
        return await _sync(lb, "initial sync (profiled)" if profile else "initial sync", profile=profile)


async def arm_limited_sync(options: BenchOptions) -> SyncResult:
    """One workspace of N incidents against ARM's real token buckets (REFERENCE A.11)."""
    one = replace(options, workspaces=1)
    async with lab(
        one, "arm", concurrency=options.concurrency, incidents=options.incidents, arm_limits=True
    ) as lb:
        return await _sync(lb, "initial sync, ARM token buckets on")


async def sweep(options: BenchOptions) -> list[SyncResult]:
    """One workspace synced from scratch at each ``max_concurrency`` of the sweep."""
    one = replace(options, workspaces=1)
    out = []
    for concurrency in options.sweep:
        async with lab(
            one, f"sweep-{concurrency}", concurrency=concurrency, incidents=options.sweep_incidents
        ) as lb:
            out.append(await _sync(lb, f"max_concurrency {concurrency}"))
    return out


# --- steady state ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Target:
    workspace: str
    incident: str
    sys_id: str


def _targets(lb: Lab) -> list[_Target]:
    """One open linked pair per workspace (the ticket carries the incident's name as unique key)."""
    snow = lb.stack.snow["default"]
    by_incident = {
        r.get("correlation_id", ""): sys_id
        for sys_id, r in snow.tables["incident"].items()
        if r.get("state") not in ("6", "7", "8")
    }
    out = []
    for ws in lb.names:
        incidents = lb.stack.workspaces[ws].incidents
        name = next(
            n
            for n, inc in sorted(incidents.items())
            if n in by_incident and inc["properties"]["status"] != "Closed"
        )
        out.append(_Target(ws, name, by_incident[name]))
    return out


def _touch_severity(lb: Lab, target: _Target) -> None:
    ws = lb.stack.workspaces[target.workspace]
    current = ws.incidents[target.incident]["properties"]["severity"]
    ws.analyst_update(target.incident, severity=next(s for s in SEVERITIES if s != current))


class _Run:
    """Runs the same edits with ours (``strategy`` None) or a reference strategy and records the
    cost of each (``polling``, ``store_app``: see the worker)."""

    def __init__(self, lb: Lab, result: SteadyResult, *, strategy: str | None) -> None:
        self.lb, self.result, self.strategy = lb, result, strategy
        self.reference = strategy is not None

    async def cycle(self) -> Outcome:
        outcome = await self.lb.cycle(poll=self.strategy)
        if outcome.errors:
            raise RuntimeError("; ".join(outcome.errors))
        return outcome

    def record(self, scenario: str, calls: Calls, note: str = "") -> None:
        step = next((s for s in self.result.steps if s.scenario == scenario), None)
        if step is None:
            step = Step(scenario)
            self.result.steps.append(step)
        if self.strategy == "polling":
            step.reference = calls
        elif self.strategy == "store_app":
            step.store_app = calls
        else:
            step.ours = calls
        if note:
            step.note = note

    async def measure(self, scenario: str, note: str = "") -> None:
        """One cycle for this scenario; for ours one more (its own writes listed again). A
        reference's next cycle is not run again."""
        self.record(scenario, (await self.cycle()).calls, note)
        if not self.reference:
            self.record(f"{scenario}: the next cycle", (await self.cycle()).calls)

    async def edits(self, target: _Target) -> None:
        """The same three edits for either strategy."""
        lb, stamp = self.lb, self.strategy or "agent"
        _touch_severity(lb, target)
        await self.measure("one changed field (Sentinel severity)")
        message = f"Benchmark comment ({stamp}): checked the sign-in logs."
        lb.stack.workspaces[target.workspace].analyst_comment(target.incident, message, author_upn=ANALYST)
        await self.measure("one new Sentinel comment")
        if not self.reference:
            journal = lb.stack.snow["default"].journal(target.sys_id)
            self.result.comments["to_servicenow"] = any(message in row.get("value", "") for row in journal)
        note = f"Benchmark work note ({stamp}): host isolated."
        lb.stack.snow["default"].analyst_update(
            "incident", target.sys_id, {"work_notes": note}, by=ANALYST_USER
        )
        await self.measure("one new ServiceNow work note")
        if not self.reference:
            comments = lb.stack.workspaces[target.workspace].comments(target.incident)
            self.result.comments["to_sentinel"] = any(
                note in c["properties"].get("message", "") for c in comments
            )


async def steady_state(options: BenchOptions) -> SteadyResult:
    """Initial sync, then the steady-state scenarios for ours and for per-incident polling."""
    async with lab(options, "steady", concurrency=options.concurrency, incidents=options.incidents) as lb:
        config = load_config(lb.config)
        result = SteadyResult(len(lb.names), 0, config.agent.poll_interval)
        result.initial = await _sync(lb, "initial sync")
        ours = _Run(lb, result, strategy=None)
        ours.record("first cycle after the initial sync", (await ours.cycle()).calls)
        ours.record("idle, overlap window still holds the initial sync", (await ours.cycle()).calls)
        # Let the overlap window pass and move every watermark past the initial sync with one
        # analyst edit per workspace, as a few minutes of normal work would.
        targets = _targets(lb)
        lb.stack.clock.advance(config.agent.overlap + 1)
        for target in targets:
            _touch_severity(lb, target)
        await ours.cycle()
        await ours.cycle()
        ours.record("idle (settled)", (await ours.cycle()).calls)
        await ours.edits(targets[0])
        result.peak_rss_mb = await lb.stop_agent()

        # Each reference starts from a copy of the same shadow, over the same data.
        for strategy in ("polling", "store_app"):
            copy = lb.folder / f"{strategy}.db"
            _copy_db(lb.folder / "state.db", copy)
            ref_ini = lb.stack.write_config(
                lb.folder / f"{strategy}.ini",
                state_db=copy,
                workspaces=lb.names,
                extra={"agent": {"max_concurrency": str(lb.concurrency), "log_level": "warning"}},
            )
            result.open_links = _open_links(copy, lb.names[0])
            await _next_second()
            await lb.start_agent(ref_ini)
            ref = _Run(lb, result, strategy=strategy)
            ref.record("first cycle after the initial sync", (await ref.cycle()).calls)
            ref.record("idle (settled)", (await ref.cycle()).calls)
            await ref.edits(targets[0])
            await lb.stop_agent()
    return result


async def _next_second() -> None:
    """Wait for the next whole second. ServiceNow's times have whole seconds and a reference reads
    what changed "since" its first run inclusively: starting within the second of the previous
    strategy's last edit, the store app took that work note for a new one and copied it too."""
    await asyncio.sleep(1.05 - time.time() % 1)


def _copy_db(source: Path, target: Path) -> None:
    with closing(sqlite3.connect(source)) as src, closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def _open_links(path: Path, workspace: str) -> int:
    with closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT count(*) FROM links WHERE workspace = ? AND open = 1", (workspace,)
        ).fetchone()
    return int(row[0])
