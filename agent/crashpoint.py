"""Test hook: kill the agent right after its Nth successful remote write of one kind.

Crash safety is proven by killing a real agent process between a remote write and the shadow
commit that follows it; a timed ``SIGKILL`` rarely lands in that window, so the process-level
tests set, for example::

    SNOW_SYNC_CRASH_AFTER=snow_patch:3

and the agent calls ``os._exit(137)`` (as if killed) immediately after the third successful
ServiceNow PATCH, before anything else happens. Several rules may be given, comma-separated.
Kinds: ``snow_create``, ``snow_patch``, ``sentinel_put`` (an incident PUT),
``sentinel_comment`` (a comment PUT), ``graph_patch`` (a Defender incident PATCH) and
``graph_comment`` (a Defender comment POST).

This is a test hook only. Without the variable (always, in production) :func:`after_write`
returns at once and nothing else in this module runs.
"""

from __future__ import annotations

import os
import sys

ENV = "SNOW_SYNC_CRASH_AFTER"
KINDS = frozenset(
    {"snow_create", "snow_patch", "sentinel_put", "sentinel_comment", "graph_patch", "graph_comment"}
)
EXIT_STATUS = 137  # what a shell reports for a process killed by SIGKILL

_done: dict[str, int] = {}


def _rules(spec: str) -> dict[str, int]:
    rules: dict[str, int] = {}
    for part in spec.split(","):
        kind, _, count = part.strip().partition(":")
        if kind not in KINDS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{ENV}: expected kind:N with kind one of {sorted(KINDS)}, got {part!r}")
        rules[kind] = int(count)
    return rules


def after_write(kind: str) -> None:
    """Count one successful remote write of ``kind``; exit the process if a rule says so."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted = _rules(spec).get(kind)
    if wanted is None:
        return
    _done[kind] = _done.get(kind, 0) + 1
    if _done[kind] == wanted:
        sys.stdout.flush()
        os._exit(EXIT_STATUS)
