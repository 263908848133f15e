"""Pacing requests at a remote's published rate, shared by every client of one limit."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

SleepFn = Callable[[float], Awaitable[None]]


class RequestPacer:
    """At most ``limit`` requests in any ``window`` seconds, for every client that shares it.

    A sliding log of send times, so no window of that length ever holds more than ``limit``
    requests, whatever the server's own bucket looks like. :meth:`hold` pauses everyone until a
    server-given ``Retry-After`` has passed. ``clock``/``sleep`` are injectable for tests.

    ``margin`` widens the window the log is kept for: the server counts arrivals, and a request
    that left at exactly ``window`` seconds after an earlier one can arrive inside the server's
    window when the earlier one travelled slower (jitter), so pacing at the exact limit meets an
    occasional 429.
    """

    def __init__(
        self,
        limit: int,
        window: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
        margin: float = 0.0,
    ) -> None:
        if limit < 1 or window <= 0 or margin < 0:
            raise ValueError("a pacer needs limit >= 1, window > 0 and margin >= 0")
        self.limit = limit
        self.window = window
        self.margin = margin
        self.waits = 0
        self.waited = 0.0
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[float] = deque()
        self._hold_until = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        """Return when one more request may be sent now, and count it as sent."""
        async with self._lock:  # first come, first served
            while True:
                now = self._clock()
                span = self.window + self.margin
                while self._sent and self._sent[0] <= now - span:
                    self._sent.popleft()
                delay = self._hold_until - now
                if len(self._sent) >= self.limit:
                    delay = max(delay, self._sent[0] + span - now)
                if delay <= 0:
                    break
                self.waits += 1
                self.waited += delay
                await self._sleep(delay)
            self._sent.append(self._clock())

    def hold(self, seconds: float) -> None:
        """Send nothing for ``seconds`` (the server answered 429 with this ``Retry-After``)."""
        self._hold_until = max(self._hold_until, self._clock() + seconds)
