"""Test hook: kill the agent right after its Nth successful remote write of one kind.

Crash safety is proven by killing a real agent process between a remote write and the shadow
commit that follows it; a timed ``SIGKILL`` rarely lands in that window, so a process-level
test runs the agent under this module instead of ``python -m agent``::

    python -m agent.testing.crashpoint snow_patch:3 -c agent.ini run

which wraps the clients' write methods and then runs the command line as usual. Right after
the third successful ServiceNow PATCH returns, before the engine does anything else, the
process ends with ``os._exit(137)`` (as if killed). Several rules may be given,
comma-separated. Kinds: ``snow_create``, ``snow_patch``, ``sentinel_put`` (an incident PUT),
``sentinel_comment`` (a comment PUT), ``graph_patch`` (a Defender incident PATCH) and
``graph_comment`` (a Defender comment POST).

The agent's own modules never import this one; it wraps them from the outside.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from agent.cli import main as cli
from agent.connectors.graph.client import GraphClient
from agent.connectors.sentinel.client import SentinelClient
from agent.connectors.servicenow.client import ServiceNowClient

EXIT_STATUS = 137  # what a shell reports for a process killed by SIGKILL
WRITES: Mapping[str, tuple[type, str]] = {
    "snow_create": (ServiceNowClient, "create"),
    "snow_patch": (ServiceNowClient, "patch"),
    "sentinel_put": (SentinelClient, "update_incident"),
    "sentinel_comment": (SentinelClient, "put_comment"),
    "graph_patch": (GraphClient, "update_incident"),
    "graph_comment": (GraphClient, "add_comment"),
}


def parse_rules(spec: str) -> dict[str, int]:
    """``kind:N[,kind:N...]`` -> {kind: N}."""
    rules: dict[str, int] = {}
    for part in spec.split(","):
        kind, _, count = part.strip().partition(":")
        if kind not in WRITES or not count.isdigit() or int(count) < 1:
            raise ValueError(f"expected kind:N with kind one of {sorted(WRITES)}, got {part!r}")
        rules[kind] = int(count)
    return rules


def install(rules: Mapping[str, int]) -> None:
    """Wrap the write method of each kind in ``rules``: after its Nth success, exit at once."""
    for kind, wanted in rules.items():
        owner, name = WRITES[kind]
        setattr(owner, name, _exit_after(getattr(owner, name), wanted))


def _exit_after(write: Callable[..., Awaitable[Any]], wanted: int) -> Callable[..., Awaitable[Any]]:
    done = 0

    @functools.wraps(write)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal done
        result = await write(*args, **kwargs)
        done += 1
        if done == wanted:
            sys.stdout.flush()
            os._exit(EXIT_STATUS)
        return result

    return wrapper


def main(argv: list[str]) -> int:
    """``RULES CLI-ARGS...``: install the rules, then run the command line."""
    if not argv:
        sys.stderr.write("usage: python -m agent.testing.crashpoint KIND:N[,KIND:N] CLI-ARGS...\n")
        return 2
    install(parse_rules(argv[0]))
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
