"""Client-side pacing from the servers' rate-limit headers: ARM's token buckets (REFERENCE A.11)
and ServiceNow's hourly rate-limit rules (C.6, E.8). Pure: a fake clock, sleeps recorded."""

from __future__ import annotations

import asyncio
from email.utils import formatdate

import pytest

from agent.connectors.pacing import ArmBuckets, HourlyQuotas, TokenBucket

SUB = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg/providers/x"


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def remaining(kind: str, left: int, glob: int | None = None) -> dict[str, str]:
    out = {f"x-ms-ratelimit-remaining-subscription-{kind}": str(left)}
    if glob is not None:
        out[f"x-ms-ratelimit-remaining-subscription-global-{kind}"] = str(glob)
    return out


# --- one bucket ----------------------------------------------------------------------------------


def test_a11_a_bucket_refills_at_its_rate_up_to_its_capacity() -> None:
    b = TokenBucket(250, 25.0, now=0.0)
    for _ in range(250):
        b.take(0.0)
    assert b.delay(0.0) == pytest.approx(1 / 25)
    assert b.level(2.0) == pytest.approx(50.0)
    assert b.level(100.0) == 250.0


def test_a11_the_servers_count_corrects_ours_less_what_we_sent_since() -> None:
    b = TokenBucket(250, 25.0, now=0.0)
    orders = [b.take(0.0) for _ in range(10)]
    # Another client of the principal used 100: the server had 149 left after our first request,
    # and the nine sent after it may have been counted since.
    b.answered(orders[0])
    b.correct(149, orders[0], 0.0)
    assert b.tokens == 140.0
    # Once every answer is in, a later one that says more is left raises the level again.
    for order in orders[1:]:
        b.answered(order)
    b.correct(200, orders[-1], 0.0)
    assert b.tokens == 200.0


def test_a11_requests_still_in_flight_count_when_a_later_one_is_answered_first() -> None:
    b = TokenBucket(250, 25.0, now=0.0)
    orders = [b.take(0.0) for _ in range(4)]
    # The last one overtook the others: the server had 3 left, and it may still count the three.
    b.answered(orders[-1])
    b.correct(3, orders[-1], 0.0)
    assert b.tokens == 0.0


def test_a_server_bucket_larger_than_assumed_grows_ours() -> None:
    b = TokenBucket(250, 25.0, now=0.0)
    order = b.take(0.0)
    b.answered(order)
    b.correct(3749, order, 0.0)
    assert (b.capacity, b.tokens) == (3750.0, 3749.0)
    assert b.rate == pytest.approx(375.0)


# --- ARM's buckets ---------------------------------------------------------------------------------


async def test_a11_reads_are_paced_at_the_refill_rate_once_the_bucket_is_empty() -> None:
    t = FakeTime()
    arm = ArmBuckets({"reads": (5, 2.0), "writes": (4, 1.0)}, clock=t.clock, sleep=t.sleep)
    for _ in range(9):
        await arm.acquire("GET", SUB + "/incidents")
    # 5 at once, then one every half second: 4 more need 2 s.
    assert t.now - 1000.0 == pytest.approx(2.0)
    assert arm.waits == 4 and arm.waited == pytest.approx(2.0)


async def test_a11_reads_and_writes_wait_apart() -> None:
    t = FakeTime()
    arm = ArmBuckets({"reads": (1, 0.1), "writes": (2, 1.0)}, clock=t.clock, sleep=t.sleep)
    await arm.acquire("GET", SUB + "/incidents")
    await arm.acquire("PUT", SUB + "/incidents/a")  # the read bucket is empty; writes are not
    await arm.acquire("PUT", SUB + "/incidents/b")
    assert t.sleeps == []
    await arm.acquire("PUT", SUB + "/incidents/c")
    assert t.sleeps == [pytest.approx(1.0)]


async def test_a11_subscriptions_have_buckets_of_their_own() -> None:
    t = FakeTime()
    arm = ArmBuckets({"reads": (1, 0.1), "writes": (1, 0.1)}, clock=t.clock, sleep=t.sleep)
    await arm.acquire("GET", SUB + "/incidents")
    await arm.acquire("GET", "/subscriptions/other/resourceGroups/rg/providers/x/incidents")
    assert t.sleeps == []


async def test_a11_the_headers_of_an_answer_slow_the_next_requests() -> None:
    t = FakeTime()
    arm = ArmBuckets(clock=t.clock, sleep=t.sleep)
    ticket = await arm.acquire("GET", SUB + "/incidents")
    later = await arm.acquire("GET", SUB + "/incidents")
    # The first answer says the principal's bucket is down to one (other clients used it).
    arm.observe(ticket, 200, remaining("reads", 1, 3000), None)
    arm.observe(later, 200, remaining("reads", 0, 2999), None)
    await arm.acquire("GET", SUB + "/incidents")
    assert t.sleeps == [pytest.approx(1 / 25)]
    await arm.acquire("PUT", SUB + "/incidents/a")  # writes were not touched
    assert len(t.sleeps) == 1


async def test_a11_the_subscription_wide_bucket_paces_too() -> None:
    t = FakeTime()
    arm = ArmBuckets(clock=t.clock, sleep=t.sleep)
    ticket = await arm.acquire("GET", SUB + "/incidents")
    arm.observe(ticket, 200, remaining("reads", 240, 0), None)  # other principals used it up
    await arm.acquire("GET", SUB + "/incidents")
    assert t.sleeps == [pytest.approx(1 / 375)]  # 15 x 25 a second (A.11)


async def test_a11_tenant_level_requests_follow_the_tenant_headers() -> None:
    t = FakeTime()
    arm = ArmBuckets(clock=t.clock, sleep=t.sleep)
    ticket = await arm.acquire("GET", "/providers/Microsoft.Management/managementGroups")
    assert ticket.scope == "tenant"
    arm.observe(
        ticket,
        200,
        {"x-ms-ratelimit-remaining-tenant-reads": "0", "x-ms-ratelimit-remaining-subscription-reads": "200"},
        None,
    )
    await arm.acquire("GET", "/providers/Microsoft.Management/managementGroups")
    assert t.sleeps == [pytest.approx(1 / 25)]
    await arm.acquire("GET", SUB + "/incidents")  # a subscription's own bucket is full
    assert len(t.sleeps) == 1


async def test_a11_a_429_holds_that_operation_type_for_its_retry_after() -> None:
    t = FakeTime()
    arm = ArmBuckets(clock=t.clock, sleep=t.sleep)
    ticket = await arm.acquire("GET", SUB + "/incidents")
    arm.observe(ticket, 429, {}, 10.0)
    await arm.acquire("PUT", SUB + "/incidents/a")
    assert t.sleeps == []
    await arm.acquire("GET", SUB + "/incidents")
    assert t.sleeps == [pytest.approx(10.0)]


async def test_a9_a_post_action_moves_to_the_bucket_its_answer_names() -> None:
    t = FakeTime()
    arm = ArmBuckets({"reads": (100, 25.0), "writes": (1, 0.5)}, clock=t.clock, sleep=t.sleep)
    first = await arm.acquire("POST", SUB + "/incidents/a/alerts")
    assert first.kind == "writes"
    arm.observe(first, 200, remaining("reads", 98), None)
    # From now on an alerts listing is a read: the empty write bucket does not hold it.
    second = await arm.acquire("POST", SUB + "/incidents/b/alerts")
    assert second.kind == "reads" and t.sleeps == []
    # And the write token it was charged first came back.
    await arm.acquire("PUT", SUB + "/incidents/b")
    assert t.sleeps == []


async def test_waiters_of_one_bucket_go_first_come_first_served() -> None:
    t = FakeTime()
    arm = ArmBuckets({"reads": (1, 1.0), "writes": (1, 1.0)}, clock=t.clock, sleep=t.sleep)
    order: list[int] = []

    async def one(i: int) -> None:
        await arm.acquire("GET", SUB + "/incidents")
        order.append(i)

    async with asyncio.TaskGroup() as tg:
        for i in range(4):
            tg.create_task(one(i))
    assert order == [0, 1, 2, 3] and t.now - 1000.0 == pytest.approx(3.0)


# --- ServiceNow's hourly rules ---------------------------------------------------------------------


def rule(limit: int, reset: float, server_now: float, rule_id: str = "r1") -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Reset": str(int(reset)),
        "X-RateLimit-Rule": rule_id,
        "Date": formatdate(server_now, usegmt=True),
    }


INCIDENTS = "/api/now/table/incident"


def test_c6_a_request_is_matched_to_its_table_not_its_record() -> None:
    assert HourlyQuotas.route("PATCH", INCIDENTS + "/abc") == ("PATCH", INCIDENTS)
    assert HourlyQuotas.route("GET", "/api/now/v2/table/sys_user") == ("GET", "/api/now/v2/table/sys_user")


def test_e8_a_rule_used_up_says_so_before_the_next_request() -> None:
    t = FakeTime(10_000.0)
    q = HourlyQuotas(clock=t.clock)
    route = q.route("GET", INCIDENTS)
    first = q.sending(route)
    assert q.exhausted(route) is None
    q.observe(first, rule(3, 10_000 + 1800, 10_000))
    for _ in range(2):
        assert q.exhausted(route) is None
        q.observe(q.sending(route), rule(3, 10_000 + 1800, 10_000))
    spent = q.exhausted(route)
    assert spent is not None
    wait, reason = spent
    assert 1800 <= wait <= 1801 and "3 requests per hour" in reason
    assert q.exhausted(q.route("POST", INCIDENTS)) is None  # a route no rule is known to count
    t.now += 1802
    assert q.exhausted(route) is None  # the window reset


def test_e8_requests_in_flight_count_in_the_window_their_answers_open() -> None:
    t = FakeTime(10_000.0)
    q = HourlyQuotas(clock=t.clock)
    route = q.route("GET", INCIDENTS)
    orders = [q.sending(route) for _ in range(3)]  # sent before any answer told of the rule
    q.observe(orders[0], rule(3, 11_000, 10_000))
    assert q.exhausted(route) is not None  # the two still in flight count too
    q.observe(orders[1], rule(3, 11_000, 10_000))
    q.observe(orders[2], rule(3, 11_000, 10_000))
    spent = q.exhausted(route)
    assert spent is not None and spent[0] == pytest.approx(1001.0)


def test_e8_the_reset_is_read_on_the_servers_clock() -> None:
    t = FakeTime(10_000.0)
    q = HourlyQuotas(clock=t.clock)
    route = q.route("GET", INCIDENTS)
    # The server's clock is an hour ahead of ours: its reset is 600 s away, not 4200 s.
    q.observe(q.sending(route), rule(1, 10_000 + 3600 + 600, 10_000 + 3600))
    spent = q.exhausted(route)
    assert spent is not None and 600 <= spent[0] <= 601


def test_a_request_that_got_no_answer_is_forgotten() -> None:
    t = FakeTime(10_000.0)
    q = HourlyQuotas(clock=t.clock)
    route = q.route("GET", INCIDENTS)
    q.observe(q.sending(route), rule(2, 11_000, 10_000))
    q.observe(q.sending(route), {})  # the connection dropped: counted, and no longer in flight
    assert q.exhausted(route) is not None


def test_c6_a_remaining_header_when_present_counts_other_clients_requests() -> None:
    t = FakeTime(10_000.0)
    q = HourlyQuotas(clock=t.clock)
    route = q.route("GET", INCIDENTS)
    headers = rule(100, 11_000, 10_000) | {"X-RateLimit-Remaining": "1"}
    q.observe(q.sending(route), headers)
    assert q.exhausted(route) is None
    q.observe(q.sending(route), rule(100, 11_000, 10_000))
    assert q.exhausted(route) is not None  # 98 used by others, 2 by us
