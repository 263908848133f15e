"""Safety valves: checks over one workspace's listing and plan that run before any write.

A sync agent trusted by a SOC must refuse to act when what it sees looks like an outage or a
mistake rather than analyst work (rclone bisync's ``--max-delete`` and its empty-listing check,
vdirsyncer's ``StorageEmpty``). Two checks, each raising
:class:`~agent.errors.SafetyValveTripped` that names the check, the numbers and the override:

=================  =========================================================================
check              trips when
=================  =========================================================================
empty_listing      a *full* listing of one side (the first run of a workspace the shadow
                   already knows, or a sweep) returns nothing while the shadow holds at least
                   :data:`EMPTY_LISTING_MIN_OPEN` open links: a wrong label, a lost permission
                   or an outage, never "every incident vanished"
max_close_ratio    the plan would close more than ``[agent] max_close_ratio`` of the
                   workspace's open links in one cycle (and at least :data:`CLOSE_MIN` of
                   them, so closing 1 of 1 is fine)
=================  =========================================================================

The engine calls them before its first write of the cycle, so a tripped valve leaves both
remote systems, the shadow and the watermarks exactly as they were: that workspace's cycle is
aborted, the other workspaces go on, and the command exits 7. ``--force`` skips both checks
for one run, after an operator looked at the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from agent.errors import SafetyValveTripped

EMPTY_LISTING_MIN_OPEN = 10
"""An empty full listing trips only when the shadow knows at least this many open links."""

CLOSE_MIN = 5
"""The close-ratio check ignores cycles that close fewer incidents than this."""

EMPTY_LISTING = "empty_listing"
MAX_CLOSE_RATIO = "max_close_ratio"
CHECKS = (EMPTY_LISTING, MAX_CLOSE_RATIO)
"""Every check's name, as a trip reports it (the metrics start a zero series for each)."""

SENTINEL_CLOSED = "Closed"


def check_listing(
    workspace: str, side: str, listed: int, open_links: int, *, full: bool, force: bool = False
) -> None:
    """Trip ``empty_listing`` when a full listing of ``side`` came back empty but the shadow
    holds at least :data:`EMPTY_LISTING_MIN_OPEN` open links.

    An incremental listing ("modified since the watermark") is empty on every idle cycle, so
    only a listing meant to return every open incident (``full``) is checked.
    """
    if force or not full or listed or open_links < EMPTY_LISTING_MIN_OPEN:
        return
    raise SafetyValveTripped(
        workspace,
        EMPTY_LISTING,
        f"the full {side} listing returned 0 incidents while {open_links} linked incidents are open "
        f"(the check trips at {EMPTY_LISTING_MIN_OPEN} or more); check the incident filter, the "
        "account's permissions and the remote system before syncing",
    )


def closes(
    to_sentinel: Mapping[str, str],
    to_snow: Mapping[str, str],
    finished: Callable[[str], bool],
    source_closed: str = SENTINEL_CLOSED,
) -> bool:
    """Whether one planned write closes its incident on either side (``finished``: whether a
    ticket status ends the ticket's work; ``source_closed``: the source's closed status)."""
    if to_sentinel.get("status") == source_closed:
        return True
    return "status" in to_snow and finished(to_snow["status"])


def check_close_ratio(
    workspace: str, closing: int, open_links: int, max_ratio: float, *, force: bool = False
) -> None:
    """Trip ``max_close_ratio`` when ``closing`` of ``open_links`` is more than ``max_ratio``
    (and ``closing`` is at least :data:`CLOSE_MIN`)."""
    if force or closing < CLOSE_MIN or open_links <= 0:
        return
    ratio = closing / open_links
    if ratio > max_ratio:
        raise SafetyValveTripped(
            workspace,
            MAX_CLOSE_RATIO,
            f"this cycle would close {closing} of {open_links} open linked incidents "
            f"({ratio:.0%} > max_close_ratio {max_ratio:.0%})",
        )
