"""agent.tasks: independent requests sent together, behaving like the loop they replace."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agent.errors import TransientError
from agent.tasks import limited, per_chunk


async def test_limited_keeps_the_order_and_the_bound() -> None:
    running, most = 0, 0

    async def one(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001 * (10 - i))  # later ones finish first
        running -= 1
        return i

    assert await limited([one(i) for i in range(10)], at_once=3) == list(range(10))
    assert most == 3


async def test_limited_can_share_a_semaphore_with_other_work() -> None:
    shared = asyncio.Semaphore(2)
    await shared.acquire()  # other work holds one of the two places
    running = most = 0

    async def one(i: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001)
        running -= 1
        return i

    assert await limited([one(i) for i in range(5)], shared) == list(range(5))
    assert most == 1
    shared.release()
    assert await limited([one(9)], shared) == [9] and await limited([], shared) == []


async def test_the_first_failure_is_raised_as_itself_and_the_rest_are_cancelled() -> None:
    cancelled: list[int] = []

    async def one(i: int) -> int:
        if i == 1:
            raise TransientError("servicenow", "GET", "/x", 503, "down")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(i)
            raise
        return i

    with pytest.raises(TransientError, match="down"):
        await limited([one(i) for i in range(4)], at_once=4)
    assert sorted(cancelled) == [0, 2, 3]


async def test_per_chunk_asks_for_every_chunk_once_in_order() -> None:
    asked: list[Sequence[int]] = []

    async def fetch(chunk: Sequence[int]) -> int:
        asked.append(chunk)
        await asyncio.sleep(0)
        return sum(chunk)

    assert await per_chunk(list(range(7)), 3, fetch) == [3, 12, 6]
    assert sorted(map(list, asked)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert await per_chunk([], 3, fetch) == []
