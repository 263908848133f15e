"""Where the time of a cycle goes: waiting, JSON, SQLite, the HTTP library, our own code.

The agent's event loop runs in one thread. Whatever part of the wall time that thread does not
spend on the CPU it spends waiting: for responses, for SQLite's worker thread, or, on a busy
machine, for a CPU to run on (the scheduler's run-queue delay, measured apart). Its CPU time is
split by a :mod:`cProfile` run whose timer is that thread's own CPU clock, so waiting never
shows up as a function's time. uvloop, the socket calls and TLS run in compiled code that the
profiler does not see; their CPU time is what is left of the thread's CPU after every profiled
function, reported as its own line. SQL statements run in aiosqlite's worker thread: its CPU
time is the process's CPU time minus the event-loop thread's.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# (category, test on the profiler's file name or built-in function name), first match wins.
_CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("JSON (orjson)", ("orjson",)),
    ("SQLite calls (aiosqlite, sqlite3)", ("aiosqlite", "sqlite3")),
    ("TLS and sockets", ("_ssl.", "socket", "ssl.py")),
    ("HTTP library (aiohttp, yarl, multidict)", ("aiohttp", "yarl", "multidict")),
    ("token (msal)", ("msal", "requests", "urllib3")),
    ("asyncio (Python parts)", ("asyncio",)),
    ("logging (agent/log.py)", ("agent/log.py",)),
    (OURS := "our code (agent/)", ("/agent/",)),
)
OTHER = "other Python (stdlib, dataclasses, datetime)"
UNSEEN = "event loop, sockets and TLS in compiled code (uvloop)"
Top = list[tuple[str, float]]


@dataclass
class Sample:
    """Wall and CPU time of one measured piece of work, and (when profiled) the breakdown."""

    wall: float = 0.0
    cpu: float = 0.0  # the whole process
    loop_cpu: float = 0.0  # the event-loop thread only
    run_delay: float = 0.0  # the event-loop thread ready to run but waiting for a CPU
    breakdown: dict[str, float] = field(default_factory=dict)  # category -> CPU seconds
    top: Top = field(default_factory=list)  # our functions by own CPU time

    @property
    def waiting(self) -> float:
        """Wall time the event-loop thread spent off the CPU."""
        return max(0.0, self.wall - self.loop_cpu)

    @property
    def worker_threads_cpu(self) -> float:
        """CPU time of every other thread (aiosqlite's, mostly)."""
        return max(0.0, self.cpu - self.loop_cpu)


@contextmanager
def measure(profile: bool = False) -> Iterator[Sample]:
    """Measure the block (wall, process CPU, this thread's CPU; optionally profiled)."""
    sample = Sample()
    profiler = cProfile.Profile(time.thread_time) if profile else None
    t0, c0, l0, d0 = time.monotonic(), time.process_time(), time.thread_time(), run_delay()
    if profiler is not None:
        profiler.enable()
    try:
        yield sample
    finally:
        if profiler is not None:
            profiler.disable()
        sample.wall = time.monotonic() - t0
        sample.cpu = time.process_time() - c0
        sample.loop_cpu = time.thread_time() - l0
        sample.run_delay = run_delay() - d0
        if profiler is not None:
            sample.breakdown, sample.top = breakdown(profiler, sample.loop_cpu)


def run_delay() -> float:
    """Seconds this thread has spent ready to run but waiting for a CPU (Linux schedstat; 0
    elsewhere): on a busy machine, part of the time a request seems to take."""
    try:
        with open("/proc/thread-self/schedstat", encoding="ascii") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def category(filename: str, function: str) -> str:
    """The kind of work a profiled function does, from its file (or built-in name)."""
    where = function if filename == "~" else filename.replace("\\", "/")
    for name, needles in _CATEGORIES:
        if any(n in where for n in needles):
            return name
    return OTHER


def breakdown(profiler: cProfile.Profile, loop_cpu: float) -> tuple[dict[str, float], Top]:
    """CPU seconds per category (summing to ``loop_cpu``) and our ten costliest functions.

    Standard-library and other uncategorised functions count for whoever called them (split by
    the time each caller spent in them): ``deepcopy`` under our parser is our code, ``urllib``
    under aiohttp is the HTTP library.
    """
    stats = pstats.Stats(profiler)
    raw: dict[_Func, _Row] = stats.stats  # type: ignore[attr-defined]
    shares: dict[_Func, dict[str, float]] = {}
    totals: dict[str, float] = {}
    ours: Top = []
    for func, row in raw.items():
        own = row[2]
        for kind, part in _shares(func, raw, shares, set()).items():
            totals[kind] = totals.get(kind, 0.0) + own * part
        filename, line, function = func
        if category(filename, function) == OURS:
            short = filename.replace("\\", "/").rsplit("/agent/", 1)[-1]
            ours.append((f"agent/{short}:{line} {function}", own))
    totals[UNSEEN] = max(0.0, loop_cpu - sum(totals.values()))
    ours.sort(key=lambda item: item[1], reverse=True)
    return totals, ours[:10]


_Func = tuple[str, int, str]
_Row = tuple[int, int, float, float, dict[_Func, tuple[int, int, float, float]]]


def _shares(
    func: _Func, raw: dict[_Func, _Row], memo: dict[_Func, dict[str, float]], path: set[_Func]
) -> dict[str, float]:
    """How a function's own time divides among categories (its own, or its callers')."""
    if func in memo:
        return memo[func]
    kind = category(func[0], func[2])
    callers = raw[func][4] if func in raw else {}
    weight = sum(c[3] for c in callers.values())
    if kind != OTHER or not callers or weight <= 0 or func in path:
        return memo.setdefault(func, {kind: 1.0})
    out: dict[str, float] = {}
    path.add(func)
    for caller, c in callers.items():
        for k, part in _shares(caller, raw, memo, path).items():
            out[k] = out.get(k, 0.0) + part * c[3] / weight
    path.discard(func)
    memo[func] = out
    return out
