"""The agent's side of a benchmark: one process holding one :class:`~agent.app.runtime.Runtime`.

``python -m agent.testing.bench.worker CONFIG`` reads one JSON request per line on stdin and answers
each with one JSON line on stdout (logs go to stderr):

* ``{"op": "cycle"}``: one cycle of every workspace, as ``run`` makes it (the runtime, its
  token and its connection pools stay open from one cycle to the next); ``"dry_run": true``
  plans without writing, as ``plan`` does;
* ``{"op": "poll", "strategy": "polling"}``: one cycle of a reference strategy over the same
  runtime and HTTP clients: per-incident polling (:mod:`agent.testing.bench.polling`) or the
  ServiceNow store app's algorithm (``"store_app"``, :mod:`agent.testing.bench.storeapp`);
* ``"profile": true`` on either adds a breakdown of the event-loop thread's CPU time;
* ``{"op": "exit"}``: answers with the peak RSS and stops.

Every answer carries wall time, CPU time (process and event-loop thread), how long the shadow's
connections were busy and writes waited for the writer
(:class:`agent.store.sqlite.db.StoreTimes`), the peak RSS so far and each workspace's cycle
statistics (or its error). :class:`AgentProcess` is the driver the benchmark uses from its own
event loop, where the emulators keep serving meanwhile.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from agent.app.runtime import Runtime
from agent.config import load_config
from agent.log import log
from agent.store.sqlite.store import Shadow
from agent.sync.cycle import CycleOptions, CycleStats, WorkspaceSync, run_workspaces
from agent.testing.bench.polling import PollingSync
from agent.testing.bench.profiling import measure
from agent.testing.bench.storeapp import StoreAppSync


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB.

    Linux's ``ru_maxrss`` survives ``exec``: a process started from a big parent reports the
    parent's size at fork time. ``VmHWM`` belongs to the process's own image, so it comes first.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _results(out: dict[str, BaseException | CycleStats]) -> dict[str, Any]:
    return {
        name: {"error": f"{type(r).__name__}: {r}"} if isinstance(r, BaseException) else r.as_dict()
        for name, r in out.items()
    }


async def _poll(pollers: Sequence[PollingSync]) -> dict[str, BaseException | CycleStats]:
    results = await asyncio.gather(*(p.poll_cycle() for p in pollers), return_exceptions=True)
    out: dict[str, BaseException | CycleStats] = {}
    for p, r in zip(pollers, results, strict=True):
        if isinstance(r, BaseException) and not isinstance(r, Exception):
            raise r
        out[p.workspace] = r
    return out


STRATEGIES = {"polling": PollingSync, "store_app": StoreAppSync}


def _pollers(rt: Runtime, syncs: Sequence[WorkspaceSync], strategy: str) -> list[PollingSync]:
    assert rt.shadow is not None
    kind = STRATEGIES[strategy]
    return [kind(s.settings, rt.source(s.workspace), rt.sink(s.workspace), rt.shadow) for s in syncs]


async def serve(config_path: Path) -> None:
    """Answer requests until ``exit`` or end of input."""
    config = load_config(config_path)
    log.configure(level="warning", stream=sys.stderr)
    loop = asyncio.get_running_loop()
    async with Runtime(config) as rt:
        assert isinstance(rt.shadow, Shadow)  # the bench reads the SQLite store's times
        times = rt.shadow.times
        syncs = rt.syncs()
        pollers: dict[str, list[PollingSync]] = {}
        while True:
            line = await loop.run_in_executor(None, sys.stdin.buffer.readline)
            if not line.strip():
                return
            request = orjson.loads(line)
            op = request.get("op")
            if op == "exit":
                _answer({"op": op, "peak_rss_mb": peak_rss_mb()})
                return
            if op not in ("cycle", "poll"):
                _answer({"op": op, "error": f"unknown op {op!r}"})
                continue
            strategy = str(request.get("strategy", "polling"))
            if op == "poll" and strategy not in STRATEGIES:
                _answer({"op": op, "error": f"unknown strategy {strategy!r}"})
                continue
            if op == "poll" and strategy not in pollers:
                pollers[strategy] = _pollers(rt, syncs, strategy)
            calls0, before = rt.calls(), times.as_dict()
            with measure(profile=bool(request.get("profile"))) as sample:
                if op == "cycle":
                    out = await run_workspaces(syncs, CycleOptions(dry_run=bool(request.get("dry_run"))))
                else:
                    out = await _poll(pollers[strategy])
            _answer(
                {
                    "op": op,
                    "wall": sample.wall,
                    "cpu": sample.cpu,
                    "loop_cpu": sample.loop_cpu,
                    "run_delay": sample.run_delay,
                    "breakdown": sample.breakdown,
                    "top": sample.top,
                    "requests": rt.calls() - calls0,
                    "shadow_held": _busy(times.as_dict()) - _busy(before),
                    "shadow_waited": times.waited - before["waited"],
                    "shadow": {k: v - before[k] for k, v in times.as_dict().items()},
                    "peak_rss_mb": peak_rss_mb(),
                    "results": _results(out),
                }
            )


def _busy(times: dict[str, float]) -> float:
    """Seconds the shadow's connections were busy: the writer's groups (until the writer task had
    their outcome) and the reads executing in the reader's thread."""
    return times["write_busy"] + times["read_busy"]


def _answer(obj: dict[str, Any]) -> None:
    sys.stdout.buffer.write(orjson.dumps(obj) + b"\n")
    sys.stdout.buffer.flush()


class AgentProcess:
    """Drives one worker process: ``await AgentProcess.start(ini)``, then ``request`` and ``stop``."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @classmethod
    async def start(cls, config_path: Path, stderr_path: Path) -> AgentProcess:
        """Start ``python -m agent.testing.bench.worker`` on this config; its stderr goes to a file."""
        with stderr_path.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent.testing.bench.worker",
                str(config_path),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                # Decoded bodies of a large listing exceed the default 64 KiB line limit of the pipe reader.
                limit=1 << 24,
            )
        return cls(proc)

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its answer (the emulators keep serving meanwhile)."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(orjson.dumps({"op": op, **fields}) + b"\n")
        await self._proc.stdin.drain()
        line = await self._proc.stdout.readline()
        if not line:
            code = await self._proc.wait()
            raise RuntimeError(f"the agent process exited ({code}) during {op!r}; see its stderr log")
        answer: dict[str, Any] = orjson.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the agent process refused {op!r}: {answer['error']}")
        return answer

    async def cycle(self, *, profile: bool = False, dry_run: bool = False) -> dict[str, Any]:
        """One agent cycle of every workspace (``dry_run``: plan only, write nothing)."""
        return await self.request("cycle", profile=profile, dry_run=dry_run)

    async def poll(self, strategy: str = "polling") -> dict[str, Any]:
        """One cycle of a reference strategy: ``polling`` (per incident) or ``store_app``."""
        return await self.request("poll", strategy=strategy)

    async def stop(self) -> float:
        """Stop the process; returns its peak RSS in MiB."""
        answer = await self.request("exit")
        await self._proc.wait()
        return float(answer["peak_rss_mb"])

    async def kill(self) -> None:
        """Stop the process without asking (after an error)."""
        if self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m agent.testing.bench.worker CONFIG\n")
        return 2
    try:
        import uvloop

        uvloop.run(serve(Path(args[0])))
    except ImportError:
        asyncio.run(serve(Path(args[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
