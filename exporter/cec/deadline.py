"""The instant by which a collection must end, which later joiners may push back.

Concurrent scrapes share one collection; it runs until the latest deadline
among the scrapes waiting for it (SPEC section 6), so a scrape with a longer
deadline never gets a failure caused by a shorter one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Deadline:
    """A ``time.monotonic()`` instant that can only move later; ``enforce`` keeps it."""

    def __init__(self, at: float = math.inf) -> None:
        self.at = at
        self._timer: asyncio.Timeout | None = None
        self._offset = 0.0  # loop.time() - time.monotonic(): 0 for the default loop

    def left(self) -> float:
        """Seconds until the deadline (negative once passed)."""
        return self.at - time.monotonic()

    def extend(self, at: float) -> None:
        """Move the deadline to ``at`` if that is later; a running ``enforce`` follows."""
        if at <= self.at:
            return
        self.at = at
        if self._timer is not None and not self._timer.expired():
            self._timer.reschedule(self._loop_time())

    def _loop_time(self) -> float | None:
        return None if math.isinf(self.at) else self.at + self._offset

    @asynccontextmanager
    async def enforce(self) -> AsyncIterator[asyncio.Timeout]:
        """Cancel the body when the deadline passes (``TimeoutError``, ``timer.expired()``)."""
        self._offset = asyncio.get_running_loop().time() - time.monotonic()
        async with asyncio.timeout_at(self._loop_time()) as timer:
            self._timer = timer
            try:
                yield timer
            finally:
                self._timer = None
