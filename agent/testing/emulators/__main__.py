"""``python -m agent.testing.emulators``: run the emulator stack for manual testing and demos.

Starts Entra ID, Sentinel, ServiceNow and Microsoft Graph emulators over TLS, seeds incidents,
writes an agent config (``emulators.ini``) into the state folder, prints where everything is,
and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from agent.testing.emulators.simulator import Simulator
from agent.testing.emulators.stack import EmulatorStack

WORKSPACE_NAMES = ("soc-eu", "soc-us", "soc-apac", "soc-latam", "soc-mea")
CONFIG_NAME = "emulators.ini"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m agent.testing.emulators``."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.testing.emulators",
        description=(
            "Run local emulators of Entra ID, Microsoft Sentinel, the ServiceNow Table API and the\n"
            "Microsoft Graph security API over TLS (a fresh CA each start), seeded with realistic\n"
            f"incidents, and write an agent config ({CONFIG_NAME}) that points at them. Prints one\n"
            "'name value' line each for entra, sentinel, servicenow, graph, ca_file and config, then\n"
            "serves until SIGINT/SIGTERM."
        ),
        epilog=(
            "example: python -m agent.testing.emulators --state-dir ./emu --workspaces 2 --incidents 20 "
            "--simulate\n"
            "         sentinel-snow-sync -c ./emu/emulators.ini run"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="folder for the CA, the config and its secret files (default: a temporary folder, "
        "removed on exit)",
    )
    parser.add_argument(
        "--port-base",
        type=int,
        help="fixed ports: Entra on PORT, Sentinel on PORT+1, ServiceNow on PORT+2, Graph on PORT+3 "
        "(default: free ports)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for generated data and edits (default: 0)")
    parser.add_argument(
        "--workspaces", type=int, default=1, help="number of Sentinel workspaces to create (default: 1)"
    )
    parser.add_argument("--incidents", type=int, default=10, help="incidents per workspace (default: 10)")
    parser.add_argument(
        "--latency",
        type=float,
        default=0.0,
        help="seconds added to every request of every emulator (default: 0)",
    )
    parser.add_argument(
        "--simulate", action="store_true", help="keep editing incidents on both sides like analysts do"
    )
    parser.add_argument(
        "--rate", type=float, default=0.5, help="edits per second with --simulate (default: 0.5)"
    )
    return parser


def workspace_names(count: int) -> list[str]:
    """``soc-eu``, ``soc-us``, ... then ``soc-6``, ``soc-7`` ..."""
    return [WORKSPACE_NAMES[i] if i < len(WORKSPACE_NAMES) else f"soc-{i + 1}" for i in range(count)]


async def serve(args: argparse.Namespace) -> int:
    """Start, seed, describe, and serve until a signal arrives."""
    with contextlib.ExitStack() as cleanup:
        if args.state_dir is None:
            state = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="snow-sync-emu-")))
        else:
            state = args.state_dir.resolve()
            state.mkdir(parents=True, exist_ok=True)
        stack = EmulatorStack(seed=args.seed, directory=state, latency=args.latency, port_base=args.port_base)
        async with stack:
            names = workspace_names(args.workspaces)
            for name in names:
                stack.add_workspace(name)
            simulator = Simulator(stack, seed=args.seed)
            simulator.seed(names, args.incidents)
            config = stack.write_config(state / CONFIG_NAME, state_db=state / "sentinel-snow-sync.db")
            _describe(stack, config)
            await _wait_for_signal(simulator if args.simulate else None, args.rate)
    return 0


def _describe(stack: EmulatorStack, config: Path) -> None:
    rows = [("entra", stack.entra_url), ("sentinel", stack.sentinel_url)]
    rows += [("servicenow" if n == "default" else f"servicenow:{n}", u) for n, u in stack.snow_urls.items()]
    rows += [("graph", stack.graph_url)]
    rows += [("ca_file", str(stack.tls.ca_file.resolve())), ("config", str(config.resolve()))]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        sys.stdout.write(f"{name:<{width}} {value}\n")
    sys.stdout.flush()


async def _wait_for_signal(simulator: Simulator | None, rate: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if simulator is None:
            await stop.wait()
            return
        async with asyncio.TaskGroup() as group:
            editing = group.create_task(_simulate(simulator, rate))
            await stop.wait()
            editing.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _simulate(simulator: Simulator, rate: float) -> None:
    while True:
        await simulator.run(10.0, rate)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; runs on uvloop when it is installed."""
    args = build_parser().parse_args(argv)
    if args.workspaces < 1 or args.incidents < 0 or args.rate <= 0 or args.latency < 0:
        build_parser().error("--workspaces must be >= 1, --incidents >= 0, --rate > 0, --latency >= 0")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args))
    result: int = uvloop.run(serve(args))
    return result


if __name__ == "__main__":
    sys.exit(main())
