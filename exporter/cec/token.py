"""Reuse one access token until shortly before it expires.

The vendor has no refresh call: we ask for a new token ahead of expiry, and
once more after a 401. Concurrent pages that all see a 401 share one renewal.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from exporter.cec.parse import Token


def renewal_margin(lifetime: float) -> float:
    """Seconds before expiry at which a token is renewed: 10 %, at most a minute."""
    return min(60.0, max(1.0, lifetime * 0.1))


class TokenCache:
    """Holds the current token; fetches a new one only when it is due or rejected."""

    def __init__(
        self, fetch: Callable[[str], Awaitable[Token]], clock: Callable[[], float] = time.time
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._token: Token | None = None
        self._renew_at = 0.0
        self._lock: asyncio.Lock | None = None

    @property
    def current(self) -> Token | None:
        """The token held now, if any (it may be due for renewal)."""
        return self._token

    async def get(self) -> Token:
        """A token that is not due for renewal, fetching one if needed."""
        token = self._token
        now = self._clock()
        if token is not None and now < self._renew_at:
            return token
        if token is None:
            return await self._refresh(token, "none held yet")
        return await self._refresh(token, f"the old one expires in {token.expires_at - now:.0f}s")

    async def renew(self, rejected: Token) -> Token:
        """A new token after ``rejected`` got a 401, unless another caller already renewed."""
        return await self._refresh(rejected, "the old one was rejected with HTTP 401")

    async def _refresh(self, stale: Token | None, reason: str) -> Token:
        """Fetch a new token (saying ``reason`` why), unless another caller just did."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is not None and self._token is not stale:
                return self._token  # renewed by someone else while we waited
            now = self._clock()
            token = await self._fetch(reason)
            self._token = token
            self._renew_at = token.expires_at - renewal_margin(token.expires_at - now)
            return token
