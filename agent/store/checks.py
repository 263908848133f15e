"""The checks every state store applies before writing, so all stores refuse the same input with
the same message, and the bounds of their history tables."""

from __future__ import annotations

from datetime import datetime

from agent.core.records import COMMENT_STATES, DIRECTIONS, SIDES, CommentLink, Link
from agent.errors import DuplicateKey

CYCLES_KEPT = 1000  # per instance and workspace (the last successful one is always kept too)
CONFLICTS_KEPT = 10_000
ERROR_TEXT_MAX = 2000


def failure_delay(attempts: int, *, grace: int, base_delay: float, max_delay: float) -> float:
    """Seconds until an incident that failed ``attempts`` times in a row is tried again: 0 for the
    first ``grace`` failures (the very next cycle), then ``base_delay`` doubling per failure up to
    ``max_delay``. The exponent is capped so a long-failing incident cannot overflow the float."""
    over = attempts - grace
    return 0.0 if over <= 0 else min(max_delay, base_delay * 2.0 ** min(over - 1, 64))


def check_side(side: str) -> None:
    """Refuse a watermark side other than ``sentinel`` / ``servicenow``."""
    if side not in SIDES:
        raise ValueError(f"side must be 'sentinel' or 'servicenow': {side!r}")


def check_state(state: str) -> None:
    """Refuse an unknown comment link state."""
    if state not in COMMENT_STATES:
        raise ValueError(f"comment link state must be one of {', '.join(COMMENT_STATES)}: {state!r}")


def check_comment(c: CommentLink) -> None:
    """Refuse a comment link with an unknown direction or state, or a naive creation time."""
    if c.direction not in DIRECTIONS:
        raise ValueError(f"comment link direction must be 'to_snow' or 'to_sentinel': {c.direction!r}")
    check_state(c.state)
    check_aware(c.created_at)


def check_aware(value: datetime | None) -> None:
    """Refuse a naive datetime: stores keep only aware (UTC) times."""
    if value is not None and value.tzinfo is None:
        raise ValueError(f"naive datetime {value!r}: the shadow stores only aware (UTC) times")


def check_link(link: Link) -> None:
    """Refuse a link carrying a naive datetime."""
    check_aware(link.created_at)
    check_aware(link.enrich_after)


_UNIQUE = (
    ("journal_sys_id", "a journal entry is linked to one Sentinel comment only"),
    ("sentinel_comment", "a Sentinel comment is linked to one journal entry only"),
    ("sys_id", "a ServiceNow record is linked to one incident only"),
)


def duplicate(detail: str) -> DuplicateKey:
    """The store's uniqueness error, in the same words for every store; ``detail`` is the
    database's own (a constraint or column names), kept in parentheses."""
    for key, rule in _UNIQUE:
        if key in detail:
            return DuplicateKey(f"{rule} ({detail})")
    return DuplicateKey(detail)
