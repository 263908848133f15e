"""The benchmark's tables, as Markdown (printed, and written to ``BENCHMARKS.md``)."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence

from agent.testing.bench import lighter, targets
from agent.testing.bench.calls import Calls
from agent.testing.bench.lab import BenchOptions
from agent.testing.bench.markdown import number as _f
from agent.testing.bench.markdown import table as _table
from agent.testing.bench.results import Results
from agent.testing.bench.scale import ScaleResult
from agent.testing.bench.scenarios import SteadyResult, Step, SyncResult

__all__ = ["Results", "render"]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.0f}x" if b else "-"


def render(r: Results) -> str:
    """The whole report."""
    lines = _header(r)
    lines += _targets(r)
    if r.steady is not None and r.steady.initial is not None:
        lines += _initial(r.steady.initial)
    if r.steady is not None:
        lines += _steady(r.steady)
    if r.arm is not None:
        lines += _arm(r.arm)
    if r.scale:
        lines += _scale(r.scale, r.options)
    if r.sweep:
        lines += _sweep(r.sweep)
    if r.lighter is not None:
        lines += lighter.section(r.lighter)
    if r.profile is not None:
        base = r.steady.initial if r.steady is not None else None
        lines += _profile(r.profile, base)
    return "\n".join(lines) + "\n"


def _header(r: Results) -> list[str]:
    o = r.options
    return [
        "# Benchmarks",
        "",
        f"Produced by `{r.command}` on {r.started:%Y-%m-%d %H:%M} UTC in {r.duration:.0f} s: "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()} on {sys.platform}, "
        f"load average {r.load[0]:.2f} when it started, niceness {os.nice(0)}.",
        "",
        f"The emulators run in the benchmark's process and add **{o.latency * 1000:.0f} ms** to every "
        "request; the agent runs in a process of its own (uvloop, as in production) with the "
        "production defaults (`page_size` 200, `overlap` 2m, `writeback_label` on) and "
        f"`max_concurrency` {o.concurrency} unless a table says otherwise. Calls are counted by "
        "the emulators (token requests to Entra apart). The latency bound of a run is "
        "`calls x latency / max_concurrency`: its wall time if only the latency limited it.",
        "",
    ]


def _targets(r: Results) -> list[str]:
    return [
        "## Targets",
        "",
        "Each target of the performance issue, measured in this run (`agent/testing/bench/targets.py`).",
        "",
        *_table(("item", "target", "measured", "verdict"), (row.cells() for row in targets.rows(r))),
        "",
    ]


def _step(s: SteadyResult, scenario: str) -> Step | None:
    return next((x for x in s.steps if x.scenario == scenario), None)


def _initial(i: SyncResult) -> list[str]:
    o = i.outcome
    head = (
        "workspaces x incidents",
        "tickets created",
        "wall s",
        "incidents/s",
        "calls",
        "latency bound s",
        "bound / wall",
        "agent CPU s",
        "emulators CPU s",
    )
    row = (
        f"{i.workspaces} x {i.incidents}",
        i.created,
        _f(o.wall),
        _f(i.rate, 1),
        o.calls.total,
        _f(i.bound),
        _f(i.efficiency),
        _f(o.cpu),
        _f(i.emulator_cpu),
    )
    kinds = sorted(o.calls.by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
    per = max(1, i.created)
    return [
        "## 1. Initial sync",
        "",
        "Every labelled open incident becomes a ticket (with its alerts, entities and comments) "
        "and gets the ticket number as a label.",
        "",
        *_table(head, [row]),
        "",
        "Calls by system and kind:",
        "",
        *_table(("call", "count", "per ticket"), ((k, n, _f(n / per)) for k, n in kinds)),
        "",
    ]


def _calls(c: Calls | None) -> str:
    return "-" if c is None else c.brief()


def _steady(s: SteadyResult) -> list[str]:
    rows = []
    for step in s.steps:
        ratio = store = "-"
        if step.ours is not None and step.reference is not None and step.ours.total:
            ratio = _ratio(step.reference.total, step.ours.total)
        if step.ours is not None and step.store_app is not None and step.ours.total:
            store = _ratio(step.store_app.total, step.ours.total)
        rows.append(
            (step.scenario, _calls(step.ours), _calls(step.reference), ratio, _calls(step.store_app), store)
        )
    idle = next((x for x in s.steps if x.scenario == "idle (settled)"), None)
    per_hour = []
    if idle is not None and idle.ours is not None and idle.reference is not None:
        cycles = 3600 / s.poll_interval
        ours = idle.ours.total / s.workspaces * cycles
        ref = idle.reference.total / s.workspaces * cycles
        store = ""
        if idle.store_app is not None:
            app = idle.store_app.total / s.workspaces * cycles
            store = f" and **{app:,.0f}** with the store app's algorithm ({_ratio(app, ours)})"
        per_hour = [
            f"An idle hour at `poll_interval` {s.poll_interval:g} s costs **{ours:,.0f}** calls per "
            f"workspace here, **{ref:,.0f}** with per-incident polling ({_ratio(ref, ours)}){store}, "
            f"for {s.open_links} open linked incidents per workspace; polling grows with every "
            "open incident, ours does not. ARM allows a principal 25 reads/s (REFERENCE A.11).",
            "",
        ]
    comments = []
    for direction, label in (
        ("to_servicenow", "Sentinel -> ServiceNow"),
        ("to_sentinel", "ServiceNow -> Sentinel"),
    ):
        state = s.comments.get(direction)
        text = "synced" if state else "not available yet (the comment did not arrive)"
        comments.append(f"- comment {label}: {text}")
    return [
        "## 2 and 3. Steady state, side by side with per-incident polling and the store app",
        "",
        f"Same run, same emulators and data ({s.workspaces} workspaces). Each row is one cycle of "
        "every workspace; 'the next cycle' is the one after, which sees the agent's own writes "
        "listed again. The first reference polls the way existing integrations mirror: every cycle a GET "
        "of every open linked incident, of its comments and of its ServiceNow record, plus one "
        "listing for new incidents (`agent/testing/bench/polling.py`). The second is the algorithm "
        "of Microsoft's ServiceNow store app: every minute a listing of the incidents modified since "
        "the last run and, for each, its comments and (when their count changed) its alerts, plus "
        "one listing of the records updated since the last run (`agent/testing/bench/storeapp.py`). "
        "Each starts from a copy of the same shadow and writes with the same planner and clients; "
        "its first cycle only learns what exists.",
        "",
        *_table(
            ("situation", "ours", "per-incident polling", "polling / ours", "store app", "store app / ours"),
            rows,
        ),
        "",
        *per_hour,
        *comments,
        "",
        "Right after an initial sync, the overlap window (2 minutes before each watermark) still "
        "holds every incident and ticket that sync touched, so each idle cycle pages through them "
        "again until newer activity moves the watermarks past them ('idle, overlap window still "
        "holds the initial sync'). The settled rows come after the window passed and one "
        "analyst edit per workspace moved the watermarks on.",
        "",
    ]


def _arm(a: SyncResult) -> list[str]:
    o = a.outcome
    reads, writes = o.calls.reads, o.calls.writes
    sentinel_reads, sentinel_writes = targets.arm_calls(a)
    row = (
        f"{a.workspaces} x {a.incidents}",
        a.created,
        _f(o.wall, 1),
        f"{sentinel_reads} / {sentinel_writes}",
        _f(targets.arm_bound(a), 1),
        _f(a.bound, 1),
        a.sentinel_throttled,
        o.total("failures"),
        f"{reads} / {writes}",
    )
    head = (
        "workspaces x incidents",
        "tickets",
        "wall s",
        "ARM reads / writes",
        "ARM bucket bound s",
        "latency bound s",
        "ARM 429 answers",
        "failed incidents",
        "all reads / writes",
    )
    return [
        "## Initial sync against ARM's real token buckets",
        "",
        "The runs above open the Sentinel emulator's token buckets wide so that only the latency "
        "limits them. Here they are as ARM has them (REFERENCE A.11: per principal, 250 reads "
        "refilled at 25/s, 200 writes refilled at 10/s). The bucket bound is the time the buckets "
        "need to admit the ARM calls made.",
        "",
        *_table(head, [row]),
        "",
    ]


def _scale(rows: Sequence[ScaleResult], o: BenchOptions) -> list[str]:
    head = (
        "linked incidents",
        "idle cycle",
        "idle CPU ms",
        "changed",
        "changed cycle",
        "CPU per incident diffed ms",
        "CPU per incident synced ms",
        "peak RSS MB (idle / changed)",
        "start to first cycle s",
        "state db MiB",
    )
    body = [
        (
            f"{x.links:,}",
            x.idle.calls.brief(),
            _f(1000 * x.idle.cpu, 0),
            f"{x.changed:,} ({o.changed_share:.0%})",
            x.busy.calls.brief(),
            _f(x.cpu_per_diffed_ms),
            _f(x.cpu_per_synced_ms),
            f"{x.idle.peak_rss_mb:.0f} / {x.peak_rss_mb:.0f}",
            _f(x.start_s, 1),
            f"{x.db_mb:,.0f}",
        )
        for x in rows
    ]
    direct = [x for x in rows if x.direct]
    seeded = (
        [
            "",
            f"From {min(x.links for x in direct):,} links on, only the changed share is seeded in the "
            "emulators too; the other links are rows written straight into the state database "
            "(`scale.fill`), whose remote halves neither the idle nor the diffed cycle reads.",
        ]
        if direct
        else []
    )
    return [
        "## 4. Scale",
        "",
        "One workspace with that many linked pairs, seeded to match in both emulators and in the "
        "shadow (`agent/testing/bench/scale.py`), after a quiet period longer than the overlap. A fresh "
        "agent process runs an idle cycle; then a share of the incidents changes (Sentinel "
        "severity), the agent plans it without writing (a dry run: list, pair through the "
        "shadow, fetch the other halves, plan: 'diffed') and then syncs it (one PATCH each and "
        "its shadow commit: 'synced'). CPU is the agent process's; peak RSS is its high-water "
        "mark (`VmHWM`); 'start to first cycle' runs from starting the agent process to the end "
        "of its idle cycle.",
        *seeded,
        "",
        *_table(head, body),
        "",
    ]


def _sweep(rows: Sequence[SyncResult]) -> list[str]:
    head = (
        "max_concurrency",
        "incidents",
        "calls",
        "wall s",
        "latency bound s",
        "bound / wall",
        "incidents/s",
        "agent CPU s",
        "agent waiting for a CPU s",
        "emulators CPU s",
        "act step: calls, s",
        "act step bound / wall",
        "before and after it s",
    )
    body = [
        (
            x.concurrency,
            x.created,
            x.outcome.calls.total,
            _f(x.outcome.wall),
            _f(x.bound),
            _f(x.efficiency),
            _f(x.rate, 1),
            _f(x.outcome.cpu),
            _f(x.outcome.run_delay),
            _f(x.emulator_cpu),
            f"{x.act[0]}, {_f(x.act[1])}" if x.act else "-",
            _f(x.act_efficiency) if x.act_efficiency is not None else "-",
            _f(x.outcome.wall - x.act[1]) if x.act else "-",
        )
        for x in rows
    ]
    return [
        "## 5. Concurrency sweep",
        "",
        "One workspace synced from scratch at each `max_concurrency`. The act step is the part of the "
        "cycle that writes under the concurrency bound (the cycle summary's `apply_calls` and "
        "`apply_ms`); before it come the token, the listing pages and the look-ups of the plan, "
        "after it the journal check, each a round trip or a few whatever `max_concurrency` is.",
        "",
        *_table(head, body),
        "",
    ]


def _profile(p: SyncResult, base: SyncResult | None) -> list[str]:
    ref = base or p
    o = ref.outcome
    wall = o.wall or 1.0
    delay = min(o.run_delay, max(0.0, o.wall - o.loop_cpu))
    waiting = max(0.0, o.wall - o.loop_cpu - delay)
    threads = max(0.0, o.cpu - o.loop_cpu)
    cores = os.cpu_count() or 1
    busy = (ref.emulator_cpu + o.cpu) / (wall * cores)
    total = sum(p.outcome.breakdown.values()) or 1.0
    writer, reader = targets.shadow_shares(o)
    rows = [
        (
            "waiting: requests in flight, the SQLite thread (event loop idle)",
            _f(waiting),
            _pct(waiting, wall),
        ),
        ("waiting for a CPU (ready, but other processes were running)", _f(delay), _pct(delay, wall)),
    ]
    for name, seconds in sorted(p.outcome.breakdown.items(), key=lambda kv: -kv[1]):
        share = seconds / total * o.loop_cpu
        rows.append((f"CPU: {name}", _f(share), _pct(share, wall)))
    top = _table(("our function", "own CPU s (profiled)"), ((name, _f(t, 3)) for name, t in p.outcome.top))
    return [
        "## Where the time of the initial sync goes",
        "",
        f"The wall time of the initial sync above ({o.wall:.2f} s) from the point of view of the "
        "agent's event-loop thread: idle (waiting), ready but without a CPU (the machine's other "
        "processes, the emulators included), or on the CPU. The CPU split comes from a second, "
        "profiled run of the same sync (`python -m agent.testing.bench --only steady,profile`; cProfile "
        "on the event-loop thread's CPU clock, standard-library time counted for its caller; the "
        "uvloop line is CPU time the profiler cannot see), scaled to the unprofiled CPU time.",
        "",
        *_table(("where", "seconds", "share of wall time"), rows),
        "",
        f"- SQL statements run in aiosqlite's thread, in parallel with the loop: {threads:.2f} s of "
        f"CPU there ({_pct(threads, wall)} of the wall time).",
        f"- The shadow's writer connection was busy {_pct(writer, 1.0)} of the wall time and its "
        f"reader {_pct(reader, 1.0)}; writes queued {o.shadow_waited:.1f} s for the writer, added up "
        "over all of them.",
        f"- The emulators (the benchmark's process) used {ref.emulator_cpu:.2f} s of CPU meanwhile "
        f"and the agent {o.cpu:.2f} s: together {_pct(busy, 1.0)} of the {cores} cores for "
        f"{o.wall:.2f} s, before anything else running on the machine.",
        "",
        *top,
        "",
    ]


def _pct(part: float, whole: float) -> str:
    return f"{part / whole:.0%}" if whole else "-"
