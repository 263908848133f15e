"""The agent against a lighter-weight responder: its own ceiling, apart from the emulators' CPU.

For each size (the sweep's workspace, and the initial sync's workspaces), one initial sync of a
fresh agent runs against the emulators with their recorder keeping every exchange whole. The
recording is then answered by :mod:`agent.testing.bench.responder` in a process of its own, after
the same fixed latency, and a fresh agent (new state database, the same config with the servers'
URLs and CA replaced) syncs against it at each ``max_concurrency``. The responder counts what it
served by recorded exchange, so each replay shows the calls it took by kind, and every request
without a recorded answer (a miss). A replay counts only when it did the same work as the
recorded run: 0 misses, the same writes by kind and the same tickets created (by their unique
key). Reads that differ by kind are shown beside it: owner look-ups that concurrent tasks repeat
before the agent's cache holds the answer vary from one run to the next, against the emulators too.
"""

from __future__ import annotations

import configparser
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.testing.bench.calls import Calls, kind_is_write
from agent.testing.bench.lab import BenchOptions, LatencyBound, Outcome, lab
from agent.testing.bench.markdown import number, table
from agent.testing.bench.replay import Recorded, identity, load, save
from agent.testing.bench.responder import ResponderProcess
from agent.testing.bench.scenarios import SyncResult
from agent.testing.bench.worker import AgentProcess

__all__ = ["LighterResult", "ReplayRun", "lighter", "section"]

_CREATE = ("servicenow", "POST")


@dataclass
class ReplayRun(LatencyBound):
    """One fresh agent's initial sync against the responder."""

    label: str
    workspaces: int
    incidents: int  # seeded per workspace in the recorded run
    concurrency: int
    latency: float
    outcome: Outcome  # the agent's numbers; calls as the responder served them
    responder_cpu: float  # the responder process's CPU time during the sync
    misses: int
    missed: list[str]
    connections: int  # connections the agent opened to the responder
    tickets: frozenset[str]  # unique keys of the tickets created
    recorded: SyncResult  # the recorded run against the emulators
    recorded_tickets: frozenset[str]

    @property
    def requests(self) -> int:
        """Every request the responder answered: Entra's included, misses included."""
        return self.outcome.calls.total + self.outcome.calls.entra + self.misses

    @property
    def loop_ms_per_call(self) -> float:
        """The agent's event-loop CPU per call (Sentinel and ServiceNow), in milliseconds."""
        calls = self.outcome.calls.total
        return 1000 * self.outcome.loop_cpu / calls if calls else 0.0

    @property
    def allowed_ms_per_call(self) -> float:
        """The event-loop CPU per call at which the latency bound is still reachable: with
        ``max_concurrency`` calls in flight sharing one loop, ``latency / max_concurrency``."""
        return 1000 * self.latency / self.concurrency

    @property
    def responder_ms_per_request(self) -> float:
        return 1000 * self.responder_cpu / self.requests if self.requests else 0.0

    def differences(self) -> list[str]:
        """How this replay's work differs from the recorded run's: misses, writes by kind, tickets
        (empty: the same work)."""
        out = []
        if self.misses:
            out.append(f"{self.misses} requests without a recorded answer")
        out += self._kinds(write=True)
        if self.created != self.recorded.created:
            out.append(f"{self.created} tickets created here, {self.recorded.created} recorded")
        if self.tickets != self.recorded_tickets:
            out.append(f"{len(self.tickets ^ self.recorded_tickets)} tickets differ by unique key")
        return out

    def read_differences(self) -> list[str]:
        """Reads by kind that differ from the recorded run (answered from the recording all the
        same: a look-up repeated gets its recorded answer again)."""
        return self._kinds(write=False)

    def _kinds(self, *, write: bool) -> list[str]:
        ours, theirs = self.outcome.calls.by_kind, self.recorded.outcome.calls.by_kind
        return [
            f"{kind}: {ours.get(kind, 0)} here, {theirs.get(kind, 0)} recorded"
            for kind in sorted(set(ours) | set(theirs))
            if kind_is_write(kind) == write and ours.get(kind, 0) != theirs.get(kind, 0)
        ]

    def same_work(self) -> str:
        """``yes``, ``yes; reads differ: ...`` or what differs."""
        if self.differences():
            return "no: " + "; ".join(self.differences())
        reads = self.read_differences()
        return "yes" + (f"; reads differ: {'; '.join(reads)}" if reads else "")


@dataclass
class LighterResult:
    """The sweep and the initial sync against the responder."""

    sweep: list[ReplayRun] = field(default_factory=list)
    initial: ReplayRun | None = None


def emulator_ms_per_request(run: SyncResult) -> float:
    """The emulators' CPU per request (Entra's included) in a run against them."""
    requests = run.outcome.calls.total + run.outcome.calls.entra
    return 1000 * run.emulator_cpu / requests if requests else 0.0


async def lighter(options: BenchOptions) -> LighterResult:
    """The sweep's points from 4 up (one workspace) and the initial sync, each against a recording."""
    out = LighterResult()
    points = tuple(c for c in options.sweep if c >= 4) or (options.concurrency,)
    one = replace(options, workspaces=1)
    out.sweep = await _replays(one, "lighter-sweep", options.sweep_incidents, points)
    [out.initial] = await _replays(options, "lighter-initial", options.incidents, (options.concurrency,))
    return out


async def record(options: BenchOptions, name: str, incidents: int) -> tuple[SyncResult, Path, Path]:
    """One initial sync against the emulators, recorded: (its result, the recording, its config)."""
    async with lab(options, name, concurrency=options.concurrency, incidents=incidents, record=True) as lb:
        c0 = time.process_time()
        outcome = await lb.cycle()
        emulator_cpu = time.process_time() - c0
        if outcome.errors:
            raise RuntimeError(f"{name}: " + "; ".join(outcome.errors))
        await lb.stop_agent()
        exchanges = lb.stack.recorder.exchanges
        assert exchanges is not None
        recording = lb.folder / "recording.json"
        save(recording, exchanges)
        # Counted from everything recorded, from the agent's start: as the replays are counted.
        outcome = replace(outcome, calls=Calls.of(x.call for x in exchanges))
        result = SyncResult(
            "recorded", len(lb.names), incidents, lb.concurrency, options.latency, outcome, emulator_cpu
        )
        return result, recording, lb.config


async def _replays(
    options: BenchOptions, name: str, incidents: int, concurrencies: tuple[int, ...]
) -> list[ReplayRun]:
    recorded, recording, config = await record(options, name, incidents)
    _, exchanges = load(recording)
    wanted = _tickets(exchanges, {i: 1 for i in range(len(exchanges))})
    folder = recording.parent
    responder = await ResponderProcess.start(
        recording, options.latency, folder / "responder", folder / "responder.log"
    )
    out = []
    try:
        for concurrency in concurrencies:
            ini = replay_config(config, folder / f"replay-{concurrency}", responder, concurrency)
            await responder.reset()  # before the agent starts: all it asks is counted
            agent = await AgentProcess.start(ini, folder / f"replay-{concurrency}" / "agent.log")
            try:
                before = await responder.stats()
                answer = await agent.cycle()
                after = await responder.stats()
            finally:
                await agent.kill()
            served = {int(k): int(v) for k, v in after["served"].items()}
            outcome = Outcome(
                wall=answer["wall"],
                cpu=answer["cpu"],
                loop_cpu=answer["loop_cpu"],
                run_delay=answer.get("run_delay", 0.0),
                calls=Calls.of(exchanges[i].call for i, n in served.items() for _ in range(n)),
                results=answer["results"],
                peak_rss_mb=answer["peak_rss_mb"],
            )
            run = ReplayRun(
                f"max_concurrency {concurrency}",
                recorded.workspaces,
                incidents,
                concurrency,
                options.latency,
                outcome,
                float(after["cpu"]) - float(before["cpu"]),
                int(after["misses"]),
                [str(m) for m in after["missed"]],
                int(after["connections"]) - int(before["connections"]),
                _tickets(exchanges, served),
                recorded,
                wanted,
            )
            if outcome.errors:
                raise RuntimeError(f"{name} at {concurrency}: " + "; ".join(outcome.errors))
            out.append(run)
    finally:
        await responder.stop()
    return out


def _tickets(exchanges: list[Recorded], served: dict[int, int]) -> frozenset[str]:
    """Unique keys of the tickets the served creates made."""
    return frozenset(
        identity(x.call.method, x.body)
        for i, x in enumerate(exchanges)
        if served.get(i) and (x.call.system, x.call.method) == _CREATE and x.call.status < 300
    )


def replay_config(config: Path, folder: Path, responder: ResponderProcess, concurrency: int) -> Path:
    """A copy of the recorded run's config for a fresh agent against the responder: every URL of
    a recorded server replaced, the responder's CA trusted, a new state database. Written next to
    the original, so that its secret files (named relative to the ini) are found."""
    folder.mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(config, encoding="utf-8")
    for section in parser.sections():
        for name, value in parser.items(section):
            for old, new in responder.origins.items():
                if value == old or value.startswith(old + "/"):
                    parser.set(section, name, new + value[len(old) :])
    parser.set("agent", "ca_bundle", str(responder.ca_file.resolve()))
    parser.set("agent", "state_db", str((folder / "state.db").resolve()))
    parser.set("agent", "max_concurrency", str(concurrency))
    path = config.with_name(f"{folder.name}.ini")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        parser.write(handle)
    return path


# --- the report's section -------------------------------------------------------------------------


def section(x: LighterResult) -> list[str]:
    """The report's section: the sweep and the initial sync against the responder."""
    head = (
        "run",
        "max_concurrency",
        "tickets",
        "calls",
        "wall s",
        "latency bound s",
        "bound / wall",
        "agent CPU s",
        "agent loop CPU ms per call (the bound allows)",
        "agent waiting for a CPU s",
        "responder CPU s",
        "responder CPU ms per request",
        "connections",
        "misses",
        "same work as recorded",
    )
    runs = [(f"sweep, {r.workspaces} x {r.incidents}", r) for r in x.sweep]
    if x.initial is not None:
        i = x.initial
        runs.append((f"initial sync, {i.workspaces} x {i.incidents}", i))
    body = [
        (
            label,
            r.concurrency,
            r.created,
            r.outcome.calls.total,
            number(r.outcome.wall),
            number(r.bound),
            number(r.efficiency),
            number(r.outcome.cpu),
            f"{r.loop_ms_per_call:.2f} ({r.allowed_ms_per_call:.2f})",
            number(r.outcome.run_delay),
            number(r.responder_cpu),
            number(r.responder_ms_per_request, 3),
            r.connections,
            r.misses,
            r.same_work(),
        )
        for label, r in runs
    ]
    firsts = x.sweep[:1] + ([x.initial] if x.initial is not None else [])
    recorded = [_recorded(label, r) for label, r in runs if r in firsts]
    missed = sorted({m for _, r in runs for m in r.missed})
    return [
        "## 5b. Concurrency sweep against a lighter-weight responder",
        "",
        "The same syncs, with the emulators replaced by a responder that answers a recorded run "
        "(`agent/testing/bench/responder.py`): a fresh agent's initial sync is recorded against "
        "the emulators, then a process of its own answers each request with the recorded answer's "
        "finished bytes after the same fixed latency (HTTPS/1.1 with keep-alive, no web framework), "
        "and a fresh agent (new state database) syncs against it at each `max_concurrency`. "
        "Requests are matched by method, server and target (times in filters and the order of "
        "`IN` lists made equal) and, for writes, the ticket's unique key in the body; a request "
        "without a recorded answer is a miss (answered 404). 'Same work as recorded' compares the "
        "misses, the writes by kind and the tickets created (by unique key) with the recorded run, "
        "and names any read kind made a different number of times. The calls in flight "
        "share the agent's one event loop: a sync reaches the latency bound only while the loop's "
        "CPU per call stays below `latency / max_concurrency` (in brackets).",
        "",
        *table(head, body),
        "",
        *recorded,
        *([f"- Requests without a recorded answer: {', '.join(missed)}"] if missed else []),
        *([_ABOVE_ONE] if any(r.efficiency > 1 for _, r in runs) else []),
        "",
    ]


_ABOVE_ONE = (
    "- A bound / wall above 1 is no error: `max_concurrency` limits each HTTP client's connections "
    "(ARM's and each ServiceNow instance's apart) and each workspace's incidents in flight, so "
    "more calls than `max_concurrency` can be under way at once across systems and workspaces."
)


def _recorded(label: str, r: ReplayRun) -> str:
    rec = r.recorded
    return (
        f"- Recorded ({label}) against the emulators at `max_concurrency` {rec.concurrency}: "
        f"{rec.outcome.calls.total} calls, {rec.created} tickets, {rec.outcome.wall:.2f} s, "
        f"{rec.efficiency:.2f} of the latency bound; the emulators (the benchmark's process) used "
        f"{rec.emulator_cpu:.2f} s of CPU, {emulator_ms_per_request(rec):.3f} ms per request."
    )
