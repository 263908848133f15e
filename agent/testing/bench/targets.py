"""The issue's targets as rows of ``BENCHMARKS.md``: target, measured, and met or missed with the reason.

Every target has a row in every report: one whose measurement was not run (a section left out
with ``--only``, or a size below the target's) says so instead of disappearing. Each item of the
performance issue is one function ``item_N(results) -> list[Row]`` in :data:`ITEMS`; a new
measurement adds its numbers to :class:`~agent.testing.bench.report.Results` and its rows here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from agent.testing.bench.lab import Outcome, arm_write_bound
from agent.testing.bench.lighter import LighterResult, ReplayRun, emulator_ms_per_request
from agent.testing.bench.results import Results, Row

if TYPE_CHECKING:
    from agent.testing.bench.scenarios import SteadyResult, Step, SyncResult

__all__ = ["ITEMS", "Row", "rows"]

ARM_BUCKETS = {"reads": (250, 25.0), "writes": (200, 10.0)}  # REFERENCE A.11, per principal
MILLION = 1_000_000
SATURATED = 0.85  # a process busy this share of a run's wall time was its limit
FAR_BELOW = 0.5  # the lighter-weight responder's CPU per request, as a share of the emulators' at most


def verdict(ok: bool, why: str) -> str:
    """``met``, or ``missed: <why>``."""
    return "met" if ok else f"missed: {why}"


def not_measured(item: str, target: str, why: str) -> Row:
    """The row of a target this run did not measure."""
    return Row(item, target, "-", f"not measured: {why}")


def _step(s: SteadyResult, scenario: str) -> Step | None:
    return next((x for x in s.steps if x.scenario == scenario), None)


# --- 1. calls per created ticket -------------------------------------------------------------

# Per-page reads, not per ticket: incident listings (Sentinel), ticket pages read by query and
# the batched journal reads (ServiceNow, one per chunk of tickets), and the owner look-ups
# (ServiceNow users, one per distinct owner, cached).
_LISTINGS = (
    "sentinel GET incidents.list",
    "servicenow GET incident",
    "servicenow GET sys_journal_field",
    "servicenow GET sys_user",
)
_COMMENTS_LISTING = "sentinel GET comments.list"


def item_1(r: Results) -> list[Row]:
    target = "calls per created ticket <= 4 (+1 comments listing per ticket with comments, + page listings)"
    snow_target = "ServiceNow writes per created ticket <= 1.3"
    s = r.steady
    if s is None or s.initial is None or not s.initial.created:
        why = "the 'steady' section was not run"
        return [not_measured("1", target, why), not_measured("1", snow_target, why)]
    i = s.initial
    kinds = i.outcome.calls.by_kind
    listings = sum(kinds.get(k, 0) for k in _LISTINGS)
    comment_lists = min(kinds.get(_COMMENTS_LISTING, 0), i.with_comments)
    per = (i.outcome.calls.total - listings - comment_lists) / i.created
    snow_writes = sum(n for k, n in kinds.items() if k.startswith("servicenow ") and " GET " not in k)
    snow_per = snow_writes / i.created
    return [
        Row(
            "1",
            target,
            f"{per:.2f} ({i.outcome.calls.total} calls for {i.created} tickets; {listings} page "
            f"reads and owner look-ups and {comment_lists} comments listings of the "
            f"{i.with_comments} incidents with comments left out)",
            verdict(per <= 4.0, "see 'Calls by system and kind'"),
        ),
        Row("1", snow_target, f"{snow_per:.2f}", verdict(snow_per <= 1.3, "see 'Calls by system and kind'")),
    ]


# --- 2. pace, don't bounce ---------------------------------------------------------------------


def arm_calls(a: SyncResult) -> tuple[int, int]:
    """(reads, writes) the ARM buckets counted: GETs and the POST list actions, PUTs/DELETEs."""
    kinds = a.outcome.calls.by_kind
    reads = sum(n for k, n in kinds.items() if k.startswith("sentinel GET "))
    reads += sum(n for k, n in kinds.items() if k.startswith("sentinel POST incidents."))
    writes = sum(n for k, n in kinds.items() if k.startswith(("sentinel PUT", "sentinel DELETE")))
    return reads, writes


def arm_bound(a: SyncResult) -> float:
    """Seconds ARM's buckets need to admit the calls made (reads and writes refill in parallel)."""
    reads, writes = arm_calls(a)
    return max(arm_write_bound(reads, ARM_BUCKETS["reads"]), arm_write_bound(writes, ARM_BUCKETS["writes"]))


def item_2(r: Results) -> list[Row]:
    share_target = "ARM 429 answers <= 1% of ARM calls (ARM's real token buckets)"
    wall_target = "initial sync wall time <= 1.1x the ARM bucket bound"
    a = r.arm
    rows: list[Row] = []
    if a is None:
        why = "the 'arm' section was not run"
        rows += [not_measured("2", share_target, why), not_measured("2", wall_target, why)]
    else:
        reads, writes = arm_calls(a)
        arm = sum(n for k, n in a.outcome.calls.by_kind.items() if k.startswith("sentinel "))
        throttled = a.sentinel_throttled
        share = throttled / arm if arm else 0.0
        rows.append(
            Row(
                "2",
                share_target,
                f"{throttled} of {arm} ({share:.1%})",
                verdict(share <= 0.01, "the client met ARM's 429 instead of pacing"),
            )
        )
        bound = max(arm_bound(a), a.bound)
        ratio = a.outcome.wall / bound if bound else 0.0
        rows.append(
            Row(
                "2",
                wall_target,
                f"{ratio:.2f}x ({a.outcome.wall:.1f} s; bucket bound {arm_bound(a):.1f} s for "
                f"{reads} reads / {writes} writes; latency bound {a.bound:.1f} s)",
                verdict(ratio <= 1.1, "slower than the buckets allow"),
            )
        )
    rows += r.snow_limit_rows or [
        not_measured("2", "ServiceNow rate-limit rule: 429 answers <= 1% of its calls", "not in this run")
    ]
    rows.append(r.demo_row or not_measured("2", "`make demo` prints no 429 retry line", "not in this run"))
    return rows


# --- 3. the shadow ---------------------------------------------------------------------------------


def shadow_shares(o: Outcome) -> tuple[float, float]:
    """Shares of the wall time the shadow's writer and reader connections were busy (each in a
    thread of its own); a store without that split counts as one connection (the writer)."""
    wall = o.wall or 1.0
    if "write_busy" in o.shadow:
        return o.shadow["write_busy"] / wall, o.shadow.get("read_busy", 0.0) / wall
    return o.shadow_held / wall, 0.0


def item_3(r: Results) -> list[Row]:
    target = "shadow busy <= 25% of the initial sync's wall time"
    s = r.steady
    if s is None or s.initial is None:
        return [not_measured("3", target, "the 'steady' section was not run")]
    o = s.initial.outcome
    writer, reader = shadow_shares(o)
    share = max(writer, reader)  # the busier connection is the bottleneck, if any
    measured = (
        f"{share:.0%}: writer {writer:.0%}, reader {reader:.0%} of {o.wall:.2f} s "
        f"({o.shadow.get('writes', 0):.0f} writes in {o.shadow.get('groups', 0):.0f} transactions; "
        f"writes queued {o.shadow_waited:.1f} s in all"
        + (
            f"; the writer's turnaround, its event-loop delay included, {o.shadow['write_turnaround']:.2f} s)"
            if "write_turnaround" in o.shadow
            else ")"
        )
    )
    return [Row("3", target, measured, verdict(share <= 0.25, "the shadow's connection is the bottleneck"))]


# --- 4. throughput -----------------------------------------------------------------------------------


def busy(x: SyncResult) -> tuple[float, float, float]:
    """Shares of the run's wall time that the agent's event loop was on a CPU or waiting for one,
    that the emulators' process used a CPU, and that the shadow's connection was busy."""
    o = x.outcome
    wall = o.wall or 1.0
    return (o.loop_cpu + o.run_delay) / wall, x.emulator_cpu / wall, max(shadow_shares(o))


def _why_slow(x: SyncResult) -> str:
    """What limited a run below the latency bound, as far as the bench can see."""
    loop, emulators, shadow = busy(x)
    limits = [
        name
        for name, share in (("the agent's event loop", loop), ("the emulators' CPU", emulators))
        if share >= SATURATED
    ]
    if shadow >= 0.25:
        limits.append("the shadow's connection")
    own = ceiling(x)
    if own < 1.0:
        limits.append(f"the agent's CPU per call (alone it reaches {own:.2f} of the bound)")
    head = " and ".join(limits) if limits else "none saturated"
    return (
        f"{head}: agent loop {loop:.0%} busy, emulators {emulators:.0%}, shadow {shadow:.0%} "
        f"(writes queued {x.outcome.shadow_waited:.1f} s for it)"
    )


def ceiling(x: SyncResult) -> float:
    """The agent's own ceiling as a share of the latency bound: the calls it can make per second
    of its own CPU, against the rate ``max_concurrency / latency`` the bound assumes."""
    if not x.outcome.cpu or not x.latency:
        return 0.0
    return (x.outcome.calls.total / x.outcome.cpu) / (x.concurrency / x.latency)


def item_4(r: Results) -> list[Row]:
    eff_target = "initial sync >= 0.8 of the latency bound at max_concurrency 16"
    flat_target = "concurrency sweep: bound/wall flat within 0.1 from 4 to 32"
    own_target = "the agent's own ceiling, apart from the emulators' CPU (a lighter-weight responder)"
    rows: list[Row] = []
    s = r.steady
    runs = [*([s.initial] if s is not None and s.initial is not None else []), *r.sweep]
    c16 = next((x for x in runs if x.concurrency == 16), None)
    if c16 is None:
        rows.append(not_measured("4", eff_target, "no run at max_concurrency 16"))
    else:
        e = c16.efficiency
        rows.append(
            Row(
                "4",
                eff_target,
                f"{e:.2f} ({c16.workspaces} x {c16.incidents}, {c16.outcome.calls.total} calls, "
                f"{c16.outcome.wall:.2f} s)",
                verdict(e >= 0.8, _why_slow(c16)),
            )
        )
    rows.append(own_ceiling(r.lighter, own_target))
    points = [x for x in r.sweep if 4 <= x.concurrency <= 32]
    if not {4, 32} <= {x.concurrency for x in points}:
        rows.append(not_measured("4", flat_target, "the sweep did not run both 4 and 32"))
    else:
        effs = [x.efficiency for x in points]
        spread = max(effs) - min(effs)
        listed = ", ".join(f"{x.concurrency}: {x.efficiency:.2f}" for x in points)
        worst = min(points, key=lambda x: x.efficiency)
        rows.append(
            Row(
                "4",
                flat_target,
                f"spread {spread:.2f} ({listed}){_act_spread(points)}{_lighter_spread(r.lighter)}",
                verdict(spread <= 0.1, f"at {worst.concurrency}, {_why_slow(worst)}{_serial(worst)}"),
            )
        )
    return rows


def _act_spread(points: list[SyncResult]) -> str:
    """The act step's own bound / wall at each point (the concurrency apart from the serial steps)."""
    acts = [(x.concurrency, x.act_efficiency) for x in points if x.act_efficiency is not None]
    if not acts:
        return ""
    listed = ", ".join(f"{c}: {e:.2f}" for c, e in acts)
    return f"; the act step alone spread {max(e for _, e in acts) - min(e for _, e in acts):.2f} ({listed})"


def _serial(x: SyncResult) -> str:
    """How much of the run went to the steps before and after the act step."""
    if x.act is None:
        return ""
    rest = x.outcome.wall - x.act[1]
    return (
        f"; the steps before and after the act step (token, listing pages, look-ups, journal check) "
        f"took {rest:.2f} s of {x.outcome.wall:.2f} s, while the whole run's latency bound is {x.bound:.2f} s"
    )


def _lighter_spread(x: LighterResult | None) -> str:
    """The responder sweep's spread, beside the emulators' (which the verdict is about)."""
    points = [p for p in (x.sweep if x is not None else []) if 4 <= p.concurrency <= 32]
    if not points:
        return ""
    effs = [p.efficiency for p in points]
    listed = ", ".join(f"{p.concurrency}: {p.efficiency:.2f}" for p in points)
    return f"; against the lighter-weight responder spread {max(effs) - min(effs):.2f} ({listed})"


def own_ceiling(x: LighterResult | None, target: str) -> Row:
    """The agent against the lighter-weight responder: visible when every replay did the recorded
    work with 0 misses and the responder's CPU per request, in the same sync at the same
    ``max_concurrency``, is far below the emulators'."""
    if x is None or (not x.sweep and x.initial is None):
        return not_measured("4", target, "the 'responder' section was not run")
    runs = [*x.sweep, *([x.initial] if x.initial is not None else [])]
    misses = sum(run.misses for run in runs)
    differ = [f"at {run.concurrency}: {'; '.join(run.differences())}" for run in runs if run.differences()]
    same = [run for run in runs if run.concurrency == run.recorded.concurrency]
    cpu = [(run.responder_ms_per_request, emulator_ms_per_request(run.recorded)) for run in same]
    parts = []
    if x.initial is not None:
        i = x.initial
        parts.append(
            f"initial sync {i.workspaces} x {i.incidents} at {i.concurrency}: {i.efficiency:.2f} of the "
            f"latency bound ({i.outcome.wall:.2f} s, agent loop {_loop_share(i):.0%} busy)"
        )
    if x.sweep:
        listed = ", ".join(
            f"{run.concurrency}: {run.efficiency:.2f} (loop {_loop_share(run):.0%}, "
            f"{run.loop_ms_per_call:.2f} ms loop CPU per call, bound allows {run.allowed_ms_per_call:.2f})"
            for run in x.sweep
        )
        parts.append(f"sweep {listed}")
    parts.append(f"{misses} misses")
    parts += [
        f"responder CPU {ours:.3f} ms per request, the emulators' {theirs:.3f} ms in the same sync "
        f"(at {run.concurrency})"
        for run, (ours, theirs) in zip(same, cpu, strict=True)
    ]
    problems = []
    if differ:
        problems.append("the replays did not do the recorded work: " + " / ".join(differ))
    if not cpu or any(ours > FAR_BELOW * theirs for ours, theirs in cpu):
        problems.append(f"the responder's CPU per request is not below {FAR_BELOW:.0%} of the emulators'")
    return Row("4", target, "; ".join(parts), verdict(not problems, "; ".join(problems)))


def _loop_share(run: ReplayRun) -> float:
    """Share of the run's wall time the agent's event loop was on a CPU or waiting for one."""
    o = run.outcome
    return (o.loop_cpu + o.run_delay) / o.wall if o.wall else 0.0


# --- 5. idle means idle ------------------------------------------------------------------------------


def item_5(r: Results) -> list[Row]:
    target = "the cycle right after an initial sync: 2 reads per workspace, 0 writes"
    s = r.steady
    step = _step(s, "first cycle after the initial sync") if s is not None else None
    if s is None or step is None or step.ours is None:
        return [not_measured("5", target, "the 'steady' section was not run")]
    per = step.ours.reads / s.workspaces
    ok = per <= 2 and step.ours.writes == 0
    return [
        Row(
            "5",
            target,
            f"{per:g} reads per workspace, {step.ours.writes} writes ({s.workspaces} workspaces)",
            verdict(ok, "the cycle pages through the initial sync's own writes again"),
        )
    ]


# --- 6. a million links ------------------------------------------------------------------------------


def item_6(r: Results) -> list[Row]:
    rss_target = "1,000,000 links: idle cycle peak RSS <= 100 MB"
    cpu_target = "1,000,000 links: CPU per incident diffed <= 0.3 ms"
    start_target = "1,000,000 links: agent start to the end of its first cycle <= 5 s"
    size_target = "1,000,000 links: state db size stated"
    targets = (rss_target, cpu_target, start_target, size_target)
    big = max(r.scale, key=lambda x: x.links, default=None)
    if big is None or big.links < MILLION:
        largest = (
            f"largest size run: {big.links:,} links" if big is not None else "the 'scale' section was not run"
        )
        return [not_measured("6", t, largest) for t in targets]
    seeded = f"; {big.direct:,} of them written straight into the state db" if big.direct else ""
    return [
        Row(
            "6",
            rss_target,
            f"{big.idle.peak_rss_mb:.0f} MB",
            verdict(big.idle.peak_rss_mb <= 100, "see '4. Scale'"),
        ),
        Row(
            "6",
            cpu_target,
            f"{big.cpu_per_diffed_ms:.2f} ms ({big.changed:,} changed)",
            verdict(big.cpu_per_diffed_ms <= 0.3, "see '4. Scale'"),
        ),
        Row(
            "6",
            start_target,
            f"{big.start_s:.1f} s (the idle cycle itself {big.idle.wall:.2f} s)",
            verdict(big.start_s <= 5.0, "see '4. Scale'"),
        ),
        Row(
            "6",
            size_target,
            f"{big.db_mb:,.0f} MiB ({big.db_mb * 2**20 / big.links:,.0f} bytes per link{seeded})",
            "met",
        ),
    ]


# --- 7. side by side -----------------------------------------------------------------------------------


def item_7(r: Results) -> list[Row]:
    target = "per-incident polling and the store app's algorithm side by side, same data, same run"
    s = r.steady
    if s is None:
        return [not_measured("7", target, "the 'steady' section was not run")]
    idle = _step(s, "idle (settled)")
    have_polling = idle is not None and idle.reference is not None
    have_store = idle is not None and idle.store_app is not None
    parts = []
    if idle is not None and idle.ours is not None:
        parts.append(f"ours {idle.ours.total}")
    if have_polling and idle is not None and idle.reference is not None:
        parts.append(f"per-incident polling {idle.reference.total}")
    if have_store and idle is not None and idle.store_app is not None:
        parts.append(f"store app {idle.store_app.total}")
    missing = [
        name for name, ok in (("per-incident polling", have_polling), ("store app", have_store)) if not ok
    ]
    return [
        Row(
            "7",
            target,
            "idle cycle calls: " + ", ".join(parts) if parts else "-",
            verdict(not missing, f"{' and '.join(missing)} not measured"),
        )
    ]


ITEMS: Sequence[Callable[[Results], list[Row]]] = (item_1, item_2, item_3, item_4, item_5, item_6, item_7)


def rows(r: Results) -> list[Row]:
    """Every target of every item, in the issue's order."""
    return [row for item in ITEMS for row in item(r)]
