"""Reuse one access token until shortly before it expires, shared by one vendor app's targets.

The vendor has no refresh call: we ask for a new token ahead of expiry, and
once more after a 401. Concurrent pages that all see a 401 share one renewal.
Targets with the same ``base_url``, ``app_key`` and secret value share one cache (a
vendor that revokes older tokens on issue would otherwise 401 them in turn);
whichever of them needs a token fetches it, with its own client, counted as its
own request. If an early renewal fails, the held token is used until it expires.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from exporter.cec.errors import CecError
from exporter.cec.records import Token
from exporter.cec.text import fields

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[Token]]
"""Fetches a new token, given the reason it is needed (for the collection's log)."""

RENEWAL_RETRY_SECONDS = 5.0
"""After a failed early renewal, the next try waits this long (or until expiry)."""


def renewal_margin(lifetime: float) -> float:
    """Seconds before expiry at which a token is renewed: 10 %, at most a minute."""
    return min(60.0, max(1.0, lifetime * 0.1))


class TokenCache:
    """Holds the current token; fetches a new one only when it is due or rejected."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._token: Token | None = None
        self._renew_at = 0.0
        self._lock: asyncio.Lock | None = None

    @property
    def current(self) -> Token | None:
        """The token held now, if any (it may be due for renewal)."""
        return self._token

    def due(self) -> bool:
        """Whether ``get`` would fetch a token now: none held, or the held one due for renewal."""
        return self._token is None or self._clock() >= self._renew_at

    async def get(self, fetch: Fetch, target: str = "") -> Token:
        """A token that is not due for renewal, fetching one with ``fetch`` if needed.

        A renewal that fails while the held token is still valid is logged and the
        held token returned; the next try comes ``RENEWAL_RETRY_SECONDS`` later.
        """
        token = self._token
        now = self._clock()
        if token is not None and now < self._renew_at:
            return token
        if token is None:
            return await self._refresh(fetch, token, "none held yet")
        reason = f"the old one expires in {token.expires_at - now:.0f}s"
        return await self._refresh(fetch, token, reason, early=target)

    async def renew(self, rejected: Token, fetch: Fetch) -> Token:
        """A new token after ``rejected`` got a 401, unless another caller already renewed."""
        return await self._refresh(fetch, rejected, "the old one was rejected with HTTP 401")

    async def _refresh(
        self, fetch: Fetch, stale: Token | None, reason: str, early: str | None = None
    ) -> Token:
        """Fetch a new token (saying ``reason`` why), unless another caller just did.

        ``early`` (the target asking, for the log) marks a renewal ahead of expiry.
        """
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            held = self._token
            if held is not None and held is not stale:
                return held  # renewed by someone else while we waited
            now = self._clock()
            if early is not None and held is not None and now < self._renew_at:
                return held  # a renewal just failed: its retry is not due yet
            try:
                token = await fetch(reason)
            except CecError as err:
                now = self._clock()
                if early is None or held is None or now >= held.expires_at:
                    raise
                self._renew_at = min(held.expires_at, now + RENEWAL_RETRY_SECONDS)
                log.warning(
                    "early token renewal failed; the held token is used until it expires",
                    extra=fields(
                        target=early,
                        api="tokenByAkSk",
                        expires_in=round(held.expires_at - now),
                        error=err,
                    ),
                )
                return held
            self._token = token
            self._renew_at = token.expires_at - renewal_margin(token.expires_at - now)
            return token
