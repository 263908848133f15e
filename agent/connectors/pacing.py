"""Pacing requests at a remote's published rate, shared by every client of one limit."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

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


# --- ARM's token buckets (REFERENCE A.11) -------------------------------------------------------

# Per subscription and principal: 250 reads refilled at 25/s, 200 writes and 200 deletes refilled
# at 10/s; the subscription as a whole (every principal together) has 15 times that.
# learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling
ARM_BUCKETS: dict[str, tuple[int, float]] = {
    "reads": (250, 25.0),
    "writes": (200, 10.0),
    "deletes": (200, 10.0),
}
ARM_GLOBAL_FACTOR = 15
_REMAINING = "x-ms-ratelimit-remaining-"
_EPSILON = 1e-6  # seconds


class TokenBucket:
    """The client's copy of one server-side token bucket: ``capacity`` tokens, ``rate`` refilled a second.

    :meth:`correct` sets the level from what the server said was left after one of our requests,
    less the requests we sent after it (the server may have counted them already) and those sent
    before it that are still in flight (it may count them yet): never more than the server can
    have, so a request that finds a token here finds one there. Between corrections the level
    refills at ``rate``. A server bucket larger than assumed raises the
    capacity and the rate with it (ARM's buckets refill in a fixed time, A.11).
    """

    def __init__(self, capacity: int, rate: float, now: float) -> None:
        if capacity < 1 or rate <= 0:
            raise ValueError("a token bucket needs capacity >= 1 and rate > 0")
        self.capacity = float(capacity)
        self.rate = rate
        self.tokens = float(capacity)
        self.sent = 0  # requests charged to this bucket, ever (their order numbers)
        self.flight: set[int] = set()  # order numbers of those still waiting for an answer
        self._stamp = now

    def level(self, now: float) -> float:
        """Tokens now, after the refill since the last look."""
        if now > self._stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        return self.tokens

    def delay(self, now: float) -> float:
        """Seconds until one token is there (0 if it is now)."""
        return max(0.0, (1.0 - self.level(now)) / self.rate)

    def take(self, now: float) -> int:
        """Use one token; the request's order number in this bucket."""
        self.level(now)
        self.tokens -= 1.0
        self.sent += 1
        self.flight.add(self.sent)
        return self.sent

    def refund(self) -> None:
        """Give back a token charged to the wrong bucket."""
        self.tokens = min(self.capacity, self.tokens + 1.0)

    def answered(self, order: int) -> None:
        """Request ``order`` of this bucket got its answer (or never will)."""
        self.flight.discard(order)

    def correct(self, remaining: int, order: int, now: float) -> None:
        """The server had ``remaining`` tokens left after admitting our request that came after
        request ``order`` of this bucket (the request itself, when it was charged here)."""
        if remaining + 1 > self.capacity:
            grow = (remaining + 1) / self.capacity
            self.capacity *= grow
            self.rate *= grow
        self.level(now)
        self.tokens = float(remaining - self._unseen(order))

    def drain(self, order: int, now: float) -> None:
        """The server refused our request after request ``order`` (429): it had no token then."""
        self.level(now)
        self.tokens = min(self.tokens, float(-self._unseen(order)))

    def _unseen(self, order: int) -> int:
        """Requests the server may count after the one it just answered: those sent after it,
        and those sent before it that are still in flight."""
        return self.sent - order + sum(1 for o in self.flight if o <= order)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What :meth:`ArmBuckets.acquire` charged for one request, for :meth:`ArmBuckets.observe`."""

    scope: str
    kind: str
    route: tuple[str, str] | None  # a POST action's (method, name): its kind is learned
    orders: tuple[tuple[str, int], ...]  # (bucket kind, order number) of every bucket of the scope


class ArmBuckets:
    """ARM's token buckets for one principal (one Entra application), per subscription (A.11).

    :meth:`acquire` waits until the request's buckets (its operation type, and the
    subscription-wide one) hold a token, so requests go at the refill rate instead of meeting
    429; :meth:`observe` corrects the buckets from the ``x-ms-ratelimit-remaining-*`` headers of
    the answer and, on a 429, holds that operation type for its ``Retry-After`` (sending before it
    elapses gets another 429, A.11). Reads, writes and deletes wait apart. A POST action (the
    incident's alerts and entities, A.9) is charged as a write until an answer's headers name
    the bucket that counted it. ``clock``/``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        buckets: Mapping[str, tuple[int, float]] = ARM_BUCKETS,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: SleepFn = asyncio.sleep,
    ) -> None:
        self.seeds = dict(buckets)
        self.waits = 0
        self.waited = 0.0
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._holds: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._post_kinds: dict[tuple[str, str], str] = {}

    def bucket(self, scope: str, kind: str) -> TokenBucket:
        """The bucket of ``kind`` (``reads``, ``global-writes``, ...) in ``scope`` (a subscription)."""
        found = self._buckets.get((scope, kind))
        if found is None:
            base = kind.removeprefix("global-")
            capacity, rate = self.seeds.get(base, self.seeds["writes"])
            factor = ARM_GLOBAL_FACTOR if kind.startswith("global-") else 1
            found = TokenBucket(capacity * factor, rate * factor, self._clock())
            self._buckets[(scope, kind)] = found
        return found

    def classify(self, method: str, path: str) -> tuple[str, str, tuple[str, str] | None]:
        """(scope, kind, route) of a request."""
        parts = path.split("/")
        scope = "tenant"
        for i, part in enumerate(parts[:-1]):
            if part.lower() == "subscriptions":
                scope = parts[i + 1].lower()
                break
        if method in ("GET", "HEAD"):
            return scope, "reads", None
        if method == "DELETE":
            return scope, "deletes", None
        if method == "POST":
            route = (method, parts[-1].lower())
            return scope, self._post_kinds.get(route, "writes"), route
        return scope, "writes", None

    async def acquire(self, method: str, path: str) -> Ticket:
        """Wait for a token in the request's buckets and take it."""
        scope, kind, route = self.classify(method, path)
        own, shared = self.bucket(scope, kind), self.bucket(scope, f"global-{kind}")
        lock = self._locks.setdefault((scope, kind), asyncio.Lock())
        async with lock:  # first come, first served within one operation type
            while True:
                now = self._clock()
                wait = max(own.delay(now), shared.delay(now), self._holds.get((scope, kind), 0.0) - now)
                if wait <= _EPSILON:  # float rounding must not leave a wait too short to move a clock
                    break
                self.waits += 1
                self.waited += wait
                await self._sleep(wait)
            own.take(now)
            shared.take(now)
        orders = tuple((k, b.sent) for (s, k), b in self._buckets.items() if s == scope)
        return Ticket(scope, kind, route, orders)

    def forget(self, ticket: Ticket) -> None:
        """The request of ``ticket`` is no longer in flight (answered, or failed without one)."""
        charged = dict(ticket.orders)
        for kind in (ticket.kind, f"global-{ticket.kind}"):
            self.bucket(ticket.scope, kind).answered(charged[kind])

    def observe(
        self, ticket: Ticket, status: int, headers: Mapping[str, str], retry_after: float | None
    ) -> None:
        """Correct the buckets from an answer's headers (or its 429)."""
        now = self._clock()
        self.forget(ticket)
        orders = dict(ticket.orders)
        named: set[str] = set()
        for key, value in headers.items():
            k = key.lower()
            if not k.startswith(_REMAINING):
                continue
            name = k[len(_REMAINING) :]
            level, _, kind = name.partition("-")
            # A request in a subscription is counted by that subscription's buckets, one at the
            # tenant level (no subscription in its path) by the tenant's (A.11).
            if level != ("tenant" if ticket.scope == "tenant" else "subscription"):
                continue
            try:
                remaining = int(value)
            except ValueError:
                continue
            named.add(kind)
            bucket = self.bucket(ticket.scope, kind)
            bucket.correct(remaining, orders.get(kind, bucket.sent), now)
        charged = ticket.kind
        if ticket.route is not None:
            counted = next((k for k in named if not k.startswith("global-")), None)
            if counted is not None and counted != charged:
                # The server counts this action elsewhere: move it there from now on.
                self._post_kinds[ticket.route] = counted
                self.bucket(ticket.scope, charged).refund()
                self.bucket(ticket.scope, f"global-{charged}").refund()
        if status == 429:
            for kind in (charged, f"global-{charged}"):
                bucket = self.bucket(ticket.scope, kind)
                bucket.drain(orders.get(kind, bucket.sent), now)
            held = (ticket.scope, charged)
            self._holds[held] = max(self._holds.get(held, 0.0), now + (retry_after or 0.0))


# --- ServiceNow's hourly rate-limit rules (REFERENCE C.6, E.8) ----------------------------------


@dataclass
class _Window:
    limit: int
    reset: float  # X-RateLimit-Reset: the server's epoch when its count starts again
    ends: float  # the same moment on our clock (the server's Date tells the difference)
    used: int  # requests of ours it counted (or will) in this window


class HourlyQuotas:
    """ServiceNow rate-limit rules as one client sees them, from the headers of its answers.

    A rule limits a user's requests to a resource per hour (C.6). Its answers carry
    ``X-RateLimit-Limit``, ``X-RateLimit-Reset`` (the epoch when the count restarts) and
    ``X-RateLimit-Rule`` but nothing says how many are left, so the client counts its own
    requests in the window. :meth:`exhausted` tells, before a request is sent, that the rule
    counting it has no request left this hour: the caller waits for the reset instead of
    sending a request that would only be refused with 429. Another client of the same user, or
    this one before a restart, may have used part of the hour: that still ends in a 429, which
    the caller handles as before. Requests are matched to rules by method and table (the
    resource a rule names).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._rules: dict[str, _Window] = {}
        self._routes: dict[tuple[str, str], str] = {}  # (method, resource) -> rule
        self._sent = 0
        self._flight: dict[int, tuple[tuple[str, str], bool]] = {}  # order -> (route, counted)

    @staticmethod
    def route(method: str, path: str) -> tuple[str, str]:
        """(method, ``/api/now/table/<table>``): what a rule is about, without the record's id."""
        parts = path.rstrip("/").split("/")
        if "table" in parts[:-1]:
            parts = parts[: parts.index("table") + 2]
        return method, "/".join(parts)

    def exhausted(self, route: tuple[str, str]) -> tuple[float, str] | None:
        """``(seconds to the reset, reason)`` when this route's rule has no request left, else None."""
        rule_id = self._routes.get(route)
        window = self._rules.get(rule_id) if rule_id is not None else None
        if window is None:
            return None
        wait = window.ends - self._clock()
        if wait <= 0 or window.used < window.limit:
            return None
        return wait, f"rate limit rule {rule_id}: {window.limit} requests per hour used"

    def sending(self, route: tuple[str, str]) -> int:
        """Count a request about to be sent; its order number for :meth:`observe`."""
        self._sent += 1
        rule_id = self._routes.get(route)
        window = self._rules.get(rule_id) if rule_id is not None else None
        counted = window is not None and window.ends > self._clock()
        if window is not None and counted:
            window.used += 1
        self._flight[self._sent] = (route, counted)
        return self._sent

    def observe(self, order: int, headers: Mapping[str, str]) -> None:
        """Learn from the answer to request ``order`` (or forget it when it never got one)."""
        route, counted = self._flight.pop(order, (None, False))
        rule_id = headers.get("X-RateLimit-Rule")
        if route is None or not rule_id:
            return
        try:
            limit = int(headers["X-RateLimit-Limit"])
            reset = float(headers["X-RateLimit-Reset"])
        except (KeyError, ValueError):
            return
        self._routes[route] = rule_id
        window = self._rules.get(rule_id)
        if window is None or reset > window.reset:
            # A new window: this request and those sent after it for the same rule are in it.
            later = [o for o, (r, _) in self._flight.items() if o > order and self._routes.get(r) == rule_id]
            for o in later:
                self._flight[o] = (self._flight[o][0], True)
            ends = reset - _server_offset(headers, self._clock()) + 1.0  # Date has whole seconds
            self._rules[rule_id] = _Window(limit, reset, ends, 1 + len(later))
        elif reset == window.reset:
            window.limit = limit
            if not counted:
                window.used += 1
        else:
            return  # an answer from a window that has ended
        remaining = headers.get("X-RateLimit-Remaining")
        if remaining is not None and remaining.strip().isdigit():
            # Not in ServiceNow's documentation (C.6); when an answer carries it anyway, what
            # other clients of the rule used this hour shows in it.
            window = self._rules[rule_id]
            window.used = max(window.used, window.limit - int(remaining))


def _server_offset(headers: Mapping[str, str], now: float) -> float:
    """The server's clock minus ours, from the answer's ``Date`` header (0 without one)."""
    try:
        return parsedate_to_datetime(headers["Date"]).timestamp() - now
    except (KeyError, TypeError, ValueError, IndexError):
        return 0.0
