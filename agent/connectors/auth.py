"""What the token providers share: a bearer token cached until near expiry, fetched by one caller
at a time (Entra ID in :mod:`agent.connectors.entra`, ServiceNow OAuth in
:mod:`agent.connectors.servicenow.auth`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any


class Token:
    __slots__ = ("expires_at", "value")

    def __init__(self, value: str, expires_at: float) -> None:
        self.value = value
        self.expires_at = expires_at


class CachedBearer:
    """A bearer token cached until ``refresh_margin`` seconds before expiry and fetched by one
    caller at a time (single flight); subclasses say how a new one is obtained.

    ``token_requests`` counts the requests for a new token, ``token_failures`` those of them that
    raised (the metrics report both).
    """

    refresh_margin: float
    token_requests: int
    token_failures: int
    _clock: Callable[[], float]
    _token: Token | None
    _lock: asyncio.Lock

    async def header(self, force_refresh: bool = False) -> dict[str, str]:
        """``{"Authorization": "Bearer ..."}``; a cached token unless it is near expiry or forced."""
        token = self._token
        if not force_refresh and token is not None and self._fresh(token):
            return {"Authorization": f"Bearer {token.value}"}
        seen = token
        async with self._lock:
            # Whoever waited on the lock uses the token the holder just got.
            token = self._token
            if token is None or token is seen or not self._fresh(token):
                token = await self._obtain()
                self._token = token
        return {"Authorization": f"Bearer {token.value}"}

    def _fresh(self, token: Token) -> bool:
        return token.expires_at - self.refresh_margin > self._clock()

    async def _obtain(self) -> Token:
        raise NotImplementedError

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        """Count one token request, and a failure when it raises (a cancellation is neither)."""
        self.token_requests += 1
        try:
            yield
        except Exception:
            self.token_failures += 1
            raise


def seconds(value: Any, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default
