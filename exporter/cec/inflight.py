"""The cap on requests in flight across every target: its places, handed out in turn.

A request holds a place from the moment it may leave until it ended. A rate budget asks
for a place only when its next slot is due and takes the slot only once it has the
place (``RateLimiter``), so a request waiting for its budget holds no place others could
use, and a stall at the cap cannot bunch one app's requests together.
"""

from __future__ import annotations

import asyncio
from collections import deque


class InflightCap:
    """At most ``limit`` places taken at once; callers waiting get them first come, first
    served. Everything here runs on the collection loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._taken = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def taken(self) -> int:
        """Places held now."""
        return self._taken

    def ask(self) -> asyncio.Future[None]:
        """A future done once a place is the caller's: at once when one is free and nobody
        waits. Cancelling it withdraws the ask; a place it was given is ``release``d."""
        future = asyncio.get_running_loop().create_future()
        while self._waiting and self._waiting[0].done():  # withdrawn asks
            self._waiting.popleft()
        if self._taken < self.limit and not self._waiting:
            self._taken += 1
            future.set_result(None)
        else:
            self._waiting.append(future)
        return future

    async def take(self) -> None:
        """Wait for a place (to be ``release``d after the request)."""
        future = self.ask()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # given a place just as the caller gave up
            raise

    def release(self) -> None:
        """Give a place back: the next caller waiting gets it."""
        self._taken -= 1
        while self._waiting and self._taken < self.limit:
            future = self._waiting.popleft()
            if not future.done():
                self._taken += 1
                future.set_result(None)
