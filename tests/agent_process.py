"""The agent as a child process (``python -m agent -c CFG ...``), for process-level tests.

``crash_after="snow_patch:3"`` runs it under :mod:`agent.testing.crashpoint` instead, which
ends the process right after that many successful writes of that kind.

The emulators run in the test's event loop, so the test must wait with ``await`` (never block)
while the child talks to them. The child's JSON log lines are parsed as they arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

SAFETY_NET = 120.0  # seconds; only so a hung child fails the test instead of hanging it


class AgentProcess:
    """``async with AgentProcess(cfg, "run") as agent: await agent.wait_for(...)``."""

    def __init__(
        self,
        config: Path,
        *args: str,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        crash_after: str | None = None,
    ) -> None:
        runner = ["agent.testing.crashpoint", crash_after] if crash_after else ["agent"]
        self.argv = [sys.executable, "-m", *runner, "-c", str(config), *args]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd or config.parent
        self.events: list[dict[str, Any]] = []
        self.stdout_text: list[str] = []
        self.stderr = b""
        self.returncode: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._arrived = asyncio.Event()
        self._pumps: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self) -> AgentProcess:
        self._proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
        )
        self._pumps = [asyncio.create_task(self._pump_stdout()), asyncio.create_task(self._pump_stderr())]
        return self

    async def __aenter__(self) -> AgentProcess:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self.kill()
        await self.wait()

    async def _pump_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.stdout_text.append(line)
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(line)
                if isinstance(record, dict):
                    self.events.append(record)
            self._arrived.set()
        self._arrived.set()

    async def _pump_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        self.stderr = await self._proc.stderr.read()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` (SIGKILL by default) if the child still runs."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

    async def wait(self) -> int:
        """Wait for the child to exit (and its output to be read); its exit status."""
        assert self._proc is not None
        async with asyncio.timeout(SAFETY_NET):
            self.returncode = await self._proc.wait()
            await asyncio.gather(*self._pumps)
        return self.returncode

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == event]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], start: int = 0) -> dict[str, Any]:
        """The first event from index ``start`` on matching ``predicate``; fails if the child
        exits before one arrives."""
        assert self._proc is not None
        seen = start
        async with asyncio.timeout(SAFETY_NET):
            while True:
                while seen < len(self.events):
                    event = self.events[seen]
                    seen += 1
                    if predicate(event):
                        return event
                if self._pumps[0].done():
                    raise AssertionError(
                        f"agent exited ({self._proc.returncode}) before the awaited event; "
                        f"stderr: {self.stderr.decode(errors='replace')[-2000:]}"
                    )
                self._arrived.clear()
                if seen < len(self.events):
                    continue
                await self._arrived.wait()

    def output(self) -> str:
        """Everything the child printed, for failure messages."""
        return "\n".join(self.stdout_text[-50:]) + "\n" + self.stderr.decode(errors="replace")[-2000:]
