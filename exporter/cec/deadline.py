"""The instant by which a collection must end, which later joiners may push back.

Concurrent scrapes share one collection; it runs until the latest deadline among
the scrapes waiting for it (SPEC section 6), so a scrape with a longer deadline
never gets a failure caused by a shorter one. Once the deadline has fired the
collection is being cancelled: it can no longer be extended, and a later scrape
starts a collection of its own instead of joining it.
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
        self.fired = False
        """True once ``enforce`` cancelled its body because the deadline passed."""
        self._offset = 0.0  # loop.time() - time.monotonic(): 0 for the default loop

    def left(self) -> float:
        """Seconds until the deadline (negative once passed)."""
        return self.at - time.monotonic()

    def extend(self, at: float) -> bool:
        """Move the deadline to ``at`` if that is later; False when it has already fired.

        A running ``enforce`` follows: its timer checks the deadline again when it
        goes off, so an extension made up to that moment is kept.
        """
        if self.fired:
            return False
        self.at = max(self.at, at)
        return True

    @asynccontextmanager
    async def enforce(self) -> AsyncIterator[Deadline]:
        """Cancel the body when the deadline passes: it raises ``TimeoutError``, ``fired``."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._offset = loop.time() - time.monotonic()
        cancelling = task.cancelling()
        handle: asyncio.TimerHandle | None = None

        def due() -> None:
            nonlocal handle
            handle = None
            if math.isinf(self.at):
                return
            when = self.at + self._offset
            if loop.time() < when:  # extended since the timer was set: wait on
                handle = loop.call_at(when, due)
                return
            self.fired = True
            task.cancel()

        if not math.isinf(self.at):
            handle = loop.call_at(self.at + self._offset, due)
        try:
            yield self
        except asyncio.CancelledError:
            # Ours, not another cancel (a reload, a shutdown): the deadline passed.
            if self.fired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            if handle is not None:
                handle.cancel()
