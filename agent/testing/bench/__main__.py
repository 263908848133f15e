"""``python -m agent.testing.bench``: run the benchmarks, print the report, write ``BENCHMARKS.md``.

Sections (``--only`` picks some): ``steady`` (the initial sync, then the steady state side by
side with per-incident polling and the store app's algorithm), ``arm`` (the initial sync against
ARM's real token buckets), ``limits`` (a ServiceNow rate-limit rule used up mid-sync), ``demo``
(``make demo``'s output searched for 429s), ``scale`` (up to 1,000,000 links), ``sweep``
(max_concurrency 1 to 32), ``responder`` (the sweep from 4 up and the initial sync against a
lighter-weight responder that replays a recorded sync: the agent's own ceiling) and ``profile``
(where the time of the initial sync goes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agent.testing.bench import lighter, limits, scale, scenarios
from agent.testing.bench.lab import BenchOptions
from agent.testing.bench.report import render
from agent.testing.bench.results import Results

SECTIONS = ("steady", "arm", "limits", "demo", "scale", "sweep", "responder", "profile")
QUICK = {
    "workspaces": 1,
    "incidents": 40,
    "sweep": (1, 4, 16),
    "sweep_incidents": 40,
    "scale_sizes": (1_000, 10_000),
}


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("every number must be at least 1")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent.testing.bench",
        description="Benchmarks against the emulators: calls, throughput against the latency bound, "
        "memory and CPU at scale. Prints a Markdown report and writes it to --output.",
    )
    p.add_argument("--workspaces", type=int, default=None, help="workspaces (default 3; --quick 1)")
    p.add_argument("--incidents", type=int, default=None, help="incidents per workspace (default 500)")
    p.add_argument("--latency", type=float, default=20.0, help="milliseconds added to every request (20)")
    p.add_argument("--concurrency", type=int, default=16, help="max_concurrency of the main runs (16)")
    p.add_argument("--sweep", type=_ints, default=None, help="max_concurrency values (1,4,8,16,32)")
    p.add_argument("--sweep-incidents", type=int, default=None, help="incidents per sweep run (300)")
    p.add_argument("--scale", type=_ints, default=None, help="linked incidents (1000,10000,100000,1000000)")
    p.add_argument("--only", type=lambda t: tuple(t.split(",")), default=SECTIONS, help=",".join(SECTIONS))
    p.add_argument("--quick", action="store_true", help="small sizes: a check that everything runs")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (7)")
    p.add_argument(
        "--priority",
        type=int,
        default=None,
        help="niceness of the benchmark and its agent processes, e.g. -10 on a busy shared machine "
        "(below 0 needs root)",
    )
    p.add_argument("--output", type=Path, default=Path("BENCHMARKS.md"), help="report file (BENCHMARKS.md)")
    p.add_argument("--workdir", type=Path, default=None, help="keep emulator files and agent logs here")
    return p


def options_from(args: argparse.Namespace, workdir: Path) -> BenchOptions:
    """The run's options: defaults, then --quick, then explicit flags."""
    base = BenchOptions(workdir=workdir)
    values = {
        "workspaces": base.workspaces,
        "incidents": base.incidents,
        "sweep": base.sweep,
        "sweep_incidents": base.sweep_incidents,
        "scale_sizes": base.scale_sizes,
    }
    if args.quick:
        values.update(QUICK)
    for key, flag in (
        ("workspaces", args.workspaces),
        ("incidents", args.incidents),
        ("sweep", args.sweep),
        ("sweep_incidents", args.sweep_incidents),
        ("scale_sizes", args.scale),
    ):
        if flag is not None:
            values[key] = flag
    return BenchOptions(
        workdir=workdir,
        latency=args.latency / 1000,
        concurrency=args.concurrency,
        seed=args.seed,
        **values,  # type: ignore[arg-type]
    )


async def run(options: BenchOptions, sections: Sequence[str], command: str) -> Results:
    """Run the chosen sections in a fixed order; returns everything measured."""
    results = Results(options, command, load=os.getloadavg())
    t0 = time.monotonic()
    steps = (
        ("steady", scenarios.steady_state, "steady"),
        ("arm", scenarios.arm_limited_sync, "arm"),
        ("limits", limits.snow_rule, "snow_limit_rows"),
        ("demo", limits.demo, "demo_row"),
        ("scale", scale.scale, "scale"),
        ("sweep", scenarios.sweep, "sweep"),
        ("responder", lighter.lighter, "lighter"),
        ("profile", lambda o: scenarios.initial_sync(o, profile=True), "profile"),
    )
    for name, step, attr in steps:
        if name in sections:
            _progress(f"{name} ...")
            started = time.monotonic()
            setattr(results, attr, await step(options))
            _progress(f"{name} done in {time.monotonic() - started:.0f} s")
    results.duration = time.monotonic() - t0
    return results


def _progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def _set_priority(niceness: int) -> None:
    """Run this process and the agent processes it starts at ``niceness``."""
    try:
        os.nice(niceness - os.nice(0))
    except OSError as exc:
        _progress(f"cannot set the priority to {niceness} ({exc}); running at {os.nice(0)}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [s for s in args.only if s not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.priority is not None:
        _set_priority(args.priority)
    given = list(sys.argv[1:] if argv is None else argv)
    command = "make bench" if not given else "python -m agent.testing.bench " + " ".join(given)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="snow-sync-bench-"))
    try:
        results = asyncio.run(run(options_from(args, workdir), args.only, command))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    text = render(results)
    sys.stdout.write(text)
    args.output.write_text(text, encoding="utf-8")
    _progress(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
