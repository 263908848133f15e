"""Independent requests sent together instead of one round trip after another.

Several steps of a cycle ask a remote for many things that do not depend on each other: the
chunks of a long ``IN`` list (every incident's unique key on a workspace's first cycle, the
journals of every ticket the conversation touched), the users behind a batch of owners. Awaited
one by one, each costs a full round trip while the rest of the cycle waits. :func:`limited`
runs them a few at a time (the HTTP clients' connection limits still bound what is in flight)
and behaves like the plain loop it replaces: results in order, and the first failure is raised
as itself (not wrapped in an exception group), after the others were cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

AT_ONCE = 8


async def limited(
    coros: Sequence[Coroutine[Any, Any, R]], at_once: int | asyncio.Semaphore = AT_ONCE
) -> list[R]:
    """Await every coroutine, at most ``at_once`` at a time (a number, or a semaphore shared with
    other work, such as a workspace's ``max_concurrency``); their results in order."""
    if not coros:
        return []
    gate = at_once if isinstance(at_once, asyncio.Semaphore) else asyncio.Semaphore(at_once)
    if len(coros) == 1:
        async with gate:
            return [await c for c in coros]

    async def one(coro: Coroutine[Any, Any, R]) -> R:
        async with gate:
            return await coro

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(c)) for c in coros]
    except* Exception as group:
        raise _first(group) from None
    return [t.result() for t in tasks]


async def per_chunk(
    items: Sequence[T],
    size: int,
    fetch: Callable[[Sequence[T]], Awaitable[R]],
    at_once: int | asyncio.Semaphore = AT_ONCE,
) -> list[R]:
    """``fetch(chunk)`` for every ``size``-long chunk of ``items``, a few at once; in chunk order."""
    return await limited([_await(fetch(items[i : i + size])) for i in range(0, len(items), size)], at_once)


async def _await(aw: Awaitable[R]) -> R:
    return await aw


def _first(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
