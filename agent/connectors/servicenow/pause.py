"""Pausing every call to one ServiceNow instance while its hourly rate limit is used up (REFERENCE E.8).

ServiceNow's rate-limit rules count per hour (C.6): once a rule's quota is used, every request
answers 429 with a ``Retry-After`` of up to an hour and ``X-RateLimit-Reset`` (the epoch when the
window resets). Retrying within a one-minute budget only adds to the count, and so does every
cycle that tries again. So when a 429 asks for a wait longer than the retry budget,
:class:`PauseGate` closes for that instance (and only that one) until the reset: requests are
refused before they are sent (:class:`InstancePaused`), the workspaces of that instance skip
their cycles, Sentinel and other instances carry on.

The pause is kept in the state database (an instance-wide mark), so a restart or the next
``once`` honours it too; it is announced once (``snow_rate_limit_paused``), shown by ``status``,
``/readyz`` and two gauges, and ``once`` during a pause exits 1 naming the reset time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from agent.errors import InstancePaused
from agent.log import log
from agent.store import Store

MARK_PAUSE = "rate_limit_pause"
"""Instance-wide mark (workspace ""): ``{"until": <epoch>, "reason": <text>}``."""
MIN_PAUSE = 60.0
"""A wait this short is left to the retry policy: only longer ones pause the instance."""


def _now() -> float:
    return time.time()


def iso(epoch: float) -> str:
    """``2026-12-01T10:00:00Z`` for an epoch (what log lines and ``status`` show)."""
    return datetime.fromtimestamp(epoch, UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class PauseGate:
    """Whether calls to one instance may be sent now; closed until a rate-limit window resets."""

    def __init__(self, instance: str, *, clock: Callable[[], float] | None = None) -> None:
        self.instance = instance
        self.until = 0.0
        self.reason = ""
        self._clock = clock or (lambda: _now())
        self._saved: tuple[float, str] | None = (0.0, "")

    def now(self) -> float:
        return self._clock()

    def active(self) -> bool:
        """True while the pause lasts."""
        return self.until > self.now()

    def check(self, method: str, url: str) -> None:
        """Raise :class:`InstancePaused` instead of sending while the pause lasts."""
        now = self.now()
        if self.until > now:
            raise InstancePaused(self.instance, method, url, self.until, now, iso(self.until))

    def hold(self, wait: float, reason: str) -> bool:
        """Pause for ``wait`` seconds from now when that is longer than :data:`MIN_PAUSE` and ends
        later than a pause already set; announce it once. True when a pause is (now) set."""
        now = self.now()
        if wait <= MIN_PAUSE:
            return False
        until = now + wait
        if until <= self.until + 1.0:  # the same window, reported by another request
            return self.until > now
        fresh = self.until <= now
        self.until, self.reason = until, reason
        if fresh:
            log.warning(
                "snow_rate_limit_paused",
                instance=self.instance,
                until=iso(until),
                seconds=round(wait),
                reason=reason,
                message=f"ServiceNow instance {self.instance} rate-limits the integration user: every "
                f"call to it is paused until {iso(until)}; other instances and Sentinel carry on",
            )
        return True

    # -- persistence --

    async def load(self, shadow: Store) -> None:
        """Take over a pause an earlier run saved (it still holds if its end is in the future)."""
        mark = await shadow.get_mark(self.instance, "", MARK_PAUSE)
        if mark is None:
            return
        try:
            data = orjson.loads(mark[0])
            until, reason = float(data["until"]), str(data.get("reason", ""))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return
        if until > self.until:
            self.until, self.reason = until, reason
        self._saved = (until, reason)
        if self.active():
            log.info("snow_rate_limit_pause_resumed", instance=self.instance, until=iso(until))

    async def save(self, shadow: Store) -> None:
        """Write the pause to the state database when it changed (a pause that ended is removed)."""
        current = (self.until, self.reason) if self.active() else (0.0, "")
        if current == self._saved:
            return
        if current[0]:
            value: str | None = orjson.dumps({"until": current[0], "reason": current[1]}).decode()
        else:
            value = None
            log.info("snow_rate_limit_pause_ended", instance=self.instance)
        await shadow.set_mark(self.instance, "", MARK_PAUSE, value, now=datetime.now(UTC))
        self._saved = current


async def saved_pause(shadow: Store, instance: str, now: float | None = None) -> tuple[float, str] | None:
    """``(until, reason)`` of a pause kept for ``instance`` that has not ended yet, else None."""
    mark = await shadow.get_mark(instance, "", MARK_PAUSE)
    if mark is None:
        return None
    try:
        data = orjson.loads(mark[0])
        until = float(data["until"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return (until, str(data.get("reason", ""))) if until > (now if now is not None else _now()) else None
