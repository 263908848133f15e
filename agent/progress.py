"""Progress of long phases, such as a first sync that creates thousands of tickets.

A :class:`Progress` counts the work items of one phase of one workspace cycle. It logs a
``progress`` event (done, total, percent, rate, ETA) every ``interval`` seconds, starting only
once the phase has run that long, so a short cycle logs none. With ``log_format = text`` and a
terminal on stderr, a live line (``\\r``-updated) shows every running workspace at once; the
logger clears it before each log line and draws it again after.

Usage (the engine)::

    progress = Progress(workspace, "apply", total=len(work))
    ... progress.step() after each item ...
    progress.finish()
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from typing import IO, Any, TypeVar

from agent.log import log

T = TypeVar("T")

INTERVAL = 5.0
"""Seconds between two ``progress`` events of one phase."""


class Terminal:
    """The live progress line on stderr (text log format and a TTY only)."""

    def __init__(
        self,
        stream: IO[str] | None = None,
        min_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self.min_interval = min_interval
        self._clock = clock
        self.parts: dict[str, str] = {}
        self._shown = False
        self._drawn_at = 0.0

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stderr

    def wanted(self) -> bool:
        """Only for a person watching: text log format and stderr a terminal."""
        try:
            return log.format == "text" and self.stream.isatty()
        except (ValueError, AttributeError):
            return False

    def update(self, key: str, text: str) -> None:
        """Set one workspace's part of the line; redrawn at most every ``min_interval`` seconds."""
        self.parts[key] = text
        now = self._clock()
        if now - self._drawn_at >= self.min_interval:
            self._drawn_at = now
            self.redraw()

    def remove(self, key: str) -> None:
        """Drop one workspace's part (its phase ended)."""
        if self.parts.pop(key, None) is not None:
            self.redraw()

    def clear(self) -> None:
        """Erase the line (before a log line is written)."""
        if self._shown:
            self._write("\r\x1b[K")
            self._shown = False

    def redraw(self) -> None:
        """Draw the line again, or erase it when no phase is running."""
        if not self.parts:
            self.clear()
            return
        text = " | ".join(self.parts.values())
        self._write("\r\x1b[K" + text[: self._width()])
        self._shown = True

    def _width(self) -> int:
        try:
            import shutil

            return max(20, shutil.get_terminal_size().columns - 1)
        except (OSError, ValueError):
            return 119

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass


TERMINAL = Terminal()


class Progress:
    """Counts one phase's work items; logs ``progress`` events and feeds the live line.

    ``total`` may be ``None`` when unknown (then no percent or ETA). Log events carry the
    context bound by the caller (``workspace``, ``instance``).
    """

    def __init__(
        self,
        workspace: str,
        phase: str,
        total: int | None,
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        terminal: Terminal | None = TERMINAL,
    ) -> None:
        self.workspace = workspace
        self.phase = phase
        self.total = total
        self.done = 0
        self.interval = interval
        self._clock = clock
        self.started = clock()
        self._last_event = self.started
        self.events = 0
        self.terminal = terminal if terminal is not None and terminal.wanted() else None
        if self.terminal is not None:
            log.live = self.terminal

    def step(self, count: int = 1) -> None:
        """``count`` more items done."""
        self.done += count
        now = self._clock()
        if self.terminal is not None:
            self.terminal.update(self.workspace, self.line(now))
        if now - self._last_event >= self.interval:
            self._last_event = now
            self._emit(now)

    def counting(
        self, create_task: Callable[[Coroutine[Any, Any, T]], asyncio.Task[T]]
    ) -> Callable[[Coroutine[Any, Any, T]], asyncio.Task[T]]:
        """Wrap ``TaskGroup.create_task`` so that every finished task counts as one item done."""

        def spawn(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
            task = create_task(work)
            task.add_done_callback(lambda _task: self.step())
            return task

        return spawn

    def finish(self) -> None:
        """The phase ended: a last event if any was logged before, and the live part removed."""
        if self.events:
            self._emit(self._clock())
        if self.terminal is not None:
            self.terminal.remove(self.workspace)

    def numbers(self, now: float) -> dict[str, float | int | None]:
        """done, total, percent, rate_per_s, eta_s and elapsed_s as of ``now``."""
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        left = None if self.total is None else max(self.total - self.done, 0)
        return {
            "done": self.done,
            "total": self.total,
            "percent": round(100 * self.done / self.total, 1) if self.total else None,
            "rate_per_s": round(rate, 2),
            "eta_s": round(left / rate, 1) if left is not None and rate > 0 else None,
            "elapsed_s": round(elapsed, 1),
        }

    def line(self, now: float) -> str:
        """``soc-eu apply 120/5000 (2.4%) 31.2/s ETA 2m36s`` for the live line."""
        n = self.numbers(now)
        text = f"{self.workspace} {self.phase} {self.done}"
        if self.total is not None:
            text += f"/{self.total} ({n['percent'] or 0:.1f}%)"
        text += f" {n['rate_per_s']}/s"
        eta = n["eta_s"]
        if isinstance(eta, (int, float)):
            text += f" ETA {_duration(eta)}"
        return text

    def _emit(self, now: float) -> None:
        self.events += 1
        log.info("progress", phase=self.phase, **self.numbers(now))


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
