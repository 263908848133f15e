"""``sentinel-snow-sync demo``: the whole product against the built-in emulators.

Starts the emulators (TLS, a generated CA), seeds three workspaces and a Defender XDR tenant
(synced through Microsoft Graph as ``[defender:contoso]``), runs the agent as a real separate
process (``run``) while the activity simulator edits every side, stops it with SIGTERM, then
prints a summary and checks that both sides agree on every synced field.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from agent.config import load_config
from agent.connectors.graph import mapping as graph_mapping
from agent.testing.emulators.simulator import Simulator
from agent.testing.emulators.stack import EmulatorStack

WORKSPACE_NAMES = ("soc-eu", "soc-us", "soc-apac", "soc-latam", "soc-mea")
DEFENDER = "contoso"  # the demo's [defender:NAME]: the stack's Defender XDR tenant


def run_demo(args: argparse.Namespace) -> int:
    try:
        import uvloop

        result: int = uvloop.run(_demo(args))
        return result
    except ImportError:
        return asyncio.run(_demo(args))


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _fresh_dir(path: str) -> Path:
    state = Path(path).resolve()
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    return state


async def _demo(args: argparse.Namespace) -> int:
    state = _fresh_dir(args.state_dir)
    names = list(WORKSPACE_NAMES[: max(1, min(args.workspaces, len(WORKSPACE_NAMES)))])
    async with EmulatorStack(seed=args.seed, directory=state) as stack:
        for n in names:
            stack.add_workspace(n)
        sim = Simulator(stack, seed=args.seed)
        sim.seed(names, args.incidents)
        sim.seed_defender(args.incidents)
        cfg_path = stack.write_config(
            state / "demo.ini",
            state_db=state / "demo.db",
            workspaces=names,
            defender=DEFENDER,
            extra={
                "agent": {
                    "poll_interval": "2s",
                    "overlap": "5s",
                    "max_concurrency": "16",
                    "metrics_listen": "127.0.0.1:0",
                }
            },
        )
        _say(
            f"emulators: entra {stack.entra_url}  sentinel {stack.sentinel_url}  graph {stack.graph_url}  "
            f"servicenow {stack.snow_urls}"
        )
        _say(f"config: {cfg_path}   CA: {stack.tls.ca_file}")
        _say(
            f"seeded {len(names)} workspaces x {args.incidents} incidents and a Defender XDR tenant "
            f"([defender:{DEFENDER}]) with {args.incidents}; starting the agent ..."
        )
        events: Counter[str] = Counter()
        summaries: list[dict[str, Any]] = []
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "agent",
            "-c",
            str(cfg_path),
            "--log-format",
            "json",
            "run",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert proc.stdout is not None
        seen: dict[str, Any] = {}
        reader = asyncio.create_task(_read_events(proc.stdout, events, summaries, state / "agent.log", seen))
        t0 = time.monotonic()
        # let the initial sync happen, then edit both sides for the requested time
        sources = len(names) + 1
        await _wait_for(lambda: len(summaries) >= sources, 120)
        took = time.monotonic() - t0
        _say(f"initial sync done in {took:.1f} s; simulating analysts for {args.duration:.0f} s ...")
        edits = await sim.run(args.duration, rate=4.0)
        _say(f"{edits} analyst edits made; letting the agent settle ...")
        settle_from = len(summaries)
        await _wait_for(lambda: len(summaries) >= settle_from + 2 * sources, 120)
        metrics = await _metrics_sample(seen.get("metrics_url"))
        proc.send_signal(signal.SIGTERM)
        code = await proc.wait()
        await reader
        mismatches = _agreement(stack, names, load_config(cfg_path))
        _print_summary(events, summaries, stack, edits, code, mismatches)
        _print_metrics(seen.get("metrics_url"), metrics)
        return 0 if code == 0 and not mismatches else 1


async def _read_events(
    stream: asyncio.StreamReader,
    events: Counter[str],
    summaries: list[dict[str, Any]],
    log_path: Path,
    seen: dict[str, Any] | None = None,
) -> None:
    with log_path.open("wb") as sink:
        while True:
            line = await stream.readline()
            if not line:
                return
            sink.write(line)
            try:
                rec = orjson.loads(line)
            except orjson.JSONDecodeError:
                _say(line.decode(errors="replace").rstrip())
                continue
            event = rec.get("event", "?")
            events[event] += 1
            if event == "metrics_started" and seen is not None:
                seen["metrics_url"] = rec.get("url")
            if event == "cycle_summary":
                summaries.append(rec)
            if rec.get("level") in ("warning", "error") and event not in ("owner_unknown_in_servicenow",):
                _say(f"  agent {rec.get('level')}: {event} {rec.get('workspace', '')} {rec.get('error', '')}")


async def _wait_for(cond: Any, limit: float) -> None:
    """Poll a condition fed by the agent's log reader, for at most ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not cond() and time.monotonic() < deadline:  # noqa: ASYNC110 - condition has no event to wait on
        await asyncio.sleep(0.2)


def _agreement(stack: EmulatorStack, names: list[str], config: Any) -> list[str]:
    """Every linked pair agrees on severity, status and owner (by meaning, through the maps)."""
    m = config.mappings.for_instance("default")
    snow = stack.snow["default"]
    users = snow.tables["sys_user"]
    problems: list[str] = []
    for name in names:
        ws = stack.sentinel.workspace(*_ws_key(stack, name))
        by_corr = {
            r["correlation_id"]: r for r in snow.tables["incident"].values() if r.get("correlation_id")
        }
        for inc_name, inc in ws.incidents.items():
            rec = by_corr.get(inc_name)
            if rec is None:
                continue
            p = inc["properties"]
            if m.severity_to_servicenow.get(p["severity"]) != rec["impact"]:
                problems.append(f"{name} {rec['number']}: severity {p['severity']} vs impact {rec['impact']}")
            if (
                m.status_to_servicenow.get(p["status"]) != rec["state"]
                and m.status_to_sentinel.get(rec["state"]) != p["status"]
            ):
                problems.append(f"{name} {rec['number']}: status {p['status']} vs state {rec['state']}")
            owner = ((p.get("owner") or {}).get("userPrincipalName") or "").lower()
            assigned = users.get(rec.get("assigned_to", ""), {}).get("email", "").lower()
            if owner != assigned:
                problems.append(
                    f"{name} {rec['number']}: owner {owner or '-'} vs assigned_to {assigned or '-'}"
                )
    return problems + _defender_agreement(stack, m, by_corr, users)


def _defender_agreement(
    stack: EmulatorStack, m: Any, by_corr: dict[str, Any], users: dict[str, Any]
) -> list[str]:
    """The same for the Defender tenant's incidents, read in Sentinel's vocabulary (merged
    incidents are closed duplicates and never written)."""
    problems: list[str] = []
    tenant = stack.defender
    for inc in tenant.incidents.values():
        rec = by_corr.get(f"{stack.tenant.lower()}:{inc['id']}")
        if rec is None or inc["status"] == "redirected":
            continue
        where = f"defender {inc['id']} {rec['number']}"
        severity = graph_mapping.severity_view(inc["severity"])
        if m.severity_to_servicenow.get(severity) != rec["impact"]:
            problems.append(f"{where}: severity {inc['severity']} vs impact {rec['impact']}")
        status = graph_mapping.status_view(inc["status"])
        if (
            m.status_to_servicenow.get(status) != rec["state"]
            and m.status_to_sentinel.get(rec["state"]) != status
        ):
            problems.append(f"{where}: status {inc['status']} vs state {rec['state']}")
        owner = (inc.get("assignedTo") or "").lower()
        assigned = users.get(rec.get("assigned_to", ""), {}).get("email", "").lower()
        if owner != assigned:
            problems.append(f"{where}: owner {owner or '-'} vs assigned_to {assigned or '-'}")
    return problems


def _ws_key(stack: EmulatorStack, name: str) -> tuple[str, str, str]:
    return stack.workspace_key(name)


def _print_summary(
    events: Counter[str],
    summaries: list[dict[str, Any]],
    stack: EmulatorStack,
    edits: int,
    code: int | None,
    mismatches: list[str],
) -> None:
    rec = stack.recorder
    totals: Counter[str] = Counter()
    by_source: Counter[str] = Counter()
    for s in summaries:
        for k in ("created", "updated_snow", "updated_sentinel", "conflicts", "failures", "calls"):
            totals[k] += int(s.get(k, 0))
            if s.get("workspace") == DEFENDER:
                by_source[k] += int(s.get(k, 0))
    rows = [
        ("cycles", len(summaries)),
        ("analyst edits (simulated)", edits),
        ("ServiceNow incidents created", totals["created"]),
        ("  of them for Defender XDR incidents", by_source["created"]),
        ("updates Sentinel/Defender -> ServiceNow", totals["updated_snow"]),
        ("updates ServiceNow -> Sentinel/Defender", totals["updated_sentinel"]),
        ("comments Sentinel -> ServiceNow", events["comment_to_snow"]),
        ("work notes ServiceNow -> Sentinel", events["comment_to_sentinel"]),
        ("alert/entity notes to ServiceNow", events["alerts_to_snow"] + events["entities_to_snow"]),
        ("closures Sentinel -> ServiceNow", events["closure_to_snow"]),
        ("closures ServiceNow -> Sentinel", events["closure_to_sentinel"]),
        ("conflicts (resolved by policy)", totals["conflicts"]),
        ("incident failures", totals["failures"]),
        ("calls to Sentinel", rec.count(system="sentinel")),
        ("calls to Microsoft Graph (Defender XDR)", rec.count(system="graph")),
        ("calls to ServiceNow", rec.count(system="servicenow")),
        ("calls to Entra ID", rec.count(system="entra")),
        ("agent exit code", code),
        ("fields that disagree", len(mismatches)),
    ]
    width = max(len(r[0]) for r in rows)
    _say("")
    _say("sentinel-snow-sync demo summary")
    _say("-" * (width + 12))
    for label, value in rows:
        _say(f"{label:<{width}}  {value!s:>8}")
    _say("-" * (width + 12))
    for line in mismatches[:20]:
        _say(f"  DISAGREE {line}")
    _say("both sides agree on every synced field" if not mismatches else "the sides DISAGREE (see above)")
    with contextlib.suppress(Exception):
        _say("agent log: " + str(Path(stack.tls.directory) / "agent.log"))


METRICS_SHOWN = (
    "sentinel_snow_sync_cycles_total",
    "sentinel_snow_sync_writes_total",
    "sentinel_snow_sync_comments_total",
    "sentinel_snow_sync_links_open",
    "sentinel_snow_sync_http_requests_total",
    "sentinel_snow_sync_http_throttled_total",
)


async def _metrics_sample(url: str | None) -> list[str]:
    """A few lines of the running agent's ``/metrics`` (non-zero samples of the main series)."""
    if not url:
        return []
    import aiohttp

    try:
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError as exc:
        return [f"(could not read {url}/metrics: {exc})"]
    return [
        line
        for line in text.splitlines()
        if line.startswith(METRICS_SHOWN) and not line.rstrip().endswith(" 0.0")
    ][:24]


def _print_metrics(url: str | None, lines: list[str]) -> None:
    if not url:
        return
    _say(f"\nfrom the agent's {url}/metrics (also /healthz, /readyz) just before it stopped:")
    for line in lines:
        _say(f"  {line}")
