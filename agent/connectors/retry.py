"""Retry with exponential backoff, full jitter and ``Retry-After``, bounded in attempts and time.

Only :class:`~agent.errors.TransientError` is ever retried. Whether a failed request may be
sent again also depends on what the failure proves:

* an **idempotent** request (GET, an etag-guarded PUT, a PUT to a caller-chosen id, a PATCH of
  plain values) is retried after any transient failure;
* a **non-idempotent** request (a POST that creates, a PATCH that appends a journal entry) is
  retried only when the failure proves the server never acted on it: :class:`~agent.errors.NotSent`
  (connection refused, connect timeout, proxy refused the tunnel, no token) or
  :class:`~agent.errors.RateLimited` (a 429 is rejected before processing, RFC 6585 section 4).
  After a timeout, a 5xx or a connection dropped mid-request the outcome is unknown, so the error
  goes to the caller, who re-checks (e.g. looks the unique key up) before trying again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

from agent.errors import NotSent, RateLimited, TransientError

T = TypeVar("T")

SleepFn = Callable[[float], Awaitable[None]]
RetryCallback = Callable[[int, TransientError, float], None]
"""(attempt number that failed, starting at 1; the error; the delay before the next attempt)."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry a transient failure.

    ``attempts`` bounds the number of tries (the first included) and ``total`` the seconds
    spent from the first try until the last one may start. The delay before retry ``n``
    (0-based) is ``uniform(0, min(cap, base * 2**n))`` ("full jitter"), raised to the server's
    ``Retry-After`` when it sent one.
    """

    attempts: int = 5
    total: float = 60.0
    base: float = 0.5
    cap: float = 20.0
    enabled: bool = True

    @classmethod
    def disabled(cls) -> RetryPolicy:
        """One attempt, no retry (for tests and one-shot commands)."""
        return cls(attempts=1, total=0.0, enabled=False)

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """The jittered delay before retry number ``retry`` (0-based)."""
        ceiling = min(self.cap, self.base * (2**retry))
        return (rng or random).uniform(0.0, ceiling)


def may_retry(error: TransientError, *, idempotent: bool) -> bool:
    """Whether ``error`` allows sending the same request again."""
    return idempotent or isinstance(error, (NotSent, RateLimited))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        current = now if now is not None else datetime.now(UTC).timestamp()
        seconds = when.timestamp() - current
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


async def retrying(
    policy: RetryPolicy,
    op: Callable[[], Awaitable[T]],
    *,
    idempotent: bool,
    on_retry: RetryCallback | None = None,
    sleep: SleepFn = asyncio.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> T:
    """Run ``op`` until it succeeds, a non-retryable error occurs, or the policy is exhausted.

    The last error is re-raised unchanged when giving up. A ``Retry-After`` longer than the
    remaining time budget ends the retries at once rather than sleeping past the budget.
    """
    started = monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await op()
        except TransientError as error:
            if (
                not policy.enabled
                or attempt >= policy.attempts
                or not may_retry(error, idempotent=idempotent)
            ):
                raise
            delay = policy.backoff(attempt - 1, rng)
            retry_after = getattr(error, "retry_after", None)
            if isinstance(retry_after, (int, float)):
                delay = max(delay, float(retry_after))
            if monotonic() - started + delay > policy.total:
                raise
            if on_retry is not None:
                on_retry(attempt, error, delay)
            await sleep(delay)
