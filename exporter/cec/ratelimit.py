"""One vendor app's requests paced ``1/rate`` seconds apart, each slot taken as it leaves.

A slot is handed out only when it is due and an in-flight place is free for it: the
request it goes to leaves at once, so no two requests of the app leave closer together
than the interval, even after another app held every in-flight place (slots taken
before the place would all leave together when the place came). Waiting requests are
served lowest ``key`` first: their collection's deadline, then its admission order
(``Budget``). Nothing is reserved ahead, so a waiter that gives up holds nothing.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable

from exporter.cec.inflight import InflightCap

Key = tuple[float, int]
"""Who is served first (lowest): a collection's deadline, then its admission order."""

PACE_WEIGHT = 0.1
"""Weight of the latest gap in ``pace``, the running mean of gaps between paced slots."""


class _Waiter:
    """One request waiting for a slot; its future gets the cap whose place it now holds."""

    __slots__ = ("future", "granted")

    def __init__(self, future: asyncio.Future[InflightCap]) -> None:
        self.future = future
        self.granted = 0.0


class RateLimiter:
    """Spaces requests ``1/rate`` seconds apart (no bursts); each leaves with a place of
    ``cap``, the in-flight cap in force (a reload may replace it)."""

    def __init__(
        self, rate: float, cap: InflightCap, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.interval = 1.0 / rate
        self.cap = cap
        self.pace = 1.0
        """Gaps between back-to-back slots, in intervals (a running mean, >= 1): the loop
        hands a due slot out a little late when it is busy, and the lateness adds up."""
        self._clock = clock
        self._next = -math.inf
        """The earliest instant (``clock``) at which the next slot may be handed out."""
        self._queue: list[tuple[Key, int, _Waiter]] = []  # a heap; given-up waiters stay
        self._order = itertools.count()
        self._live = 0
        self._timer: asyncio.TimerHandle | None = None
        self._asking: tuple[asyncio.Future[None], InflightCap] | None = None
        """The place asked (and of which cap) for the slot that is due, until it is given."""
        self._due_at = 0.0
        """When the slot the timer is armed for falls due."""

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot now."""
        return self._live

    def next_free(self) -> float:
        """The earliest instant at which the next slot can go out."""
        return max(self._clock(), self._next)

    async def slot(self, key: Key) -> InflightCap:
        """Wait for a slot, served in ``key`` order, and a place of the in-flight cap.

        Returns the cap whose place the caller holds: it ``release``s it after the request.
        """
        if not self._live and self._asking is None and self._clock() >= self._next:
            asked = self.cap.ask()
            if asked.done():  # nobody waits, the slot is due and a place is free: go
                self._take_slot()
                return self.cap
            asked.cancel()  # the cap is full: wait in turn like everyone else
        waiter = _Waiter(asyncio.get_running_loop().create_future())
        heapq.heappush(self._queue, (key, next(self._order), waiter))
        self._live += 1
        self._schedule()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            self._withdraw(waiter)
            raise

    def _take_slot(self, late: float | None = None) -> float:
        """Take the slot that is due now; returns the instant it was taken. ``late``: how
        long after it fell due the loop handed it out, when it was due back to back."""
        now = self._clock()
        if late is not None:
            gap = 1.0 + late / self.interval
            self.pace = max(1.0, (1 - PACE_WEIGHT) * self.pace + PACE_WEIGHT * gap)
        self._next = now + self.interval
        return now

    def _withdraw(self, waiter: _Waiter) -> None:
        """A waiter gave up: a slot and place it was just given go to the next one."""
        future = waiter.future
        if future.done() and not future.cancelled():
            future.result().release()
            if self._next == waiter.granted + self.interval:  # no later slot handed out yet
                self._next = waiter.granted
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
                self._schedule()
            return
        self._live -= 1
        if not self._live:
            self._queue.clear()  # only waiters that gave up are left in it
            if self._asking is not None:
                self._asking[0].cancel()  # nobody left to give the place to

    def _schedule(self) -> None:
        """Arm the timer for the next slot, if anyone waits and nothing is armed or asked."""
        if self._timer is None and self._asking is None and self._live:
            now = self._clock()
            self._due_at = max(now, self._next)
            self._timer = asyncio.get_running_loop().call_later(self._due_at - now, self._due)

    def _due(self) -> None:
        """The slot is due: ask the cap for a place to go with it."""
        self._timer = None
        if not self._live:
            return
        asked = self.cap.ask()
        self._asking = (asked, self.cap)
        if asked.done():  # a place at once: how late the loop was is the pace's business
            self._placed(asked, late=max(0.0, self._clock() - self._due_at))
        else:  # a stall at the cap: the slot waits for the place, and is taken with it
            asked.add_done_callback(self._placed)

    def _placed(self, asked: asyncio.Future[None], late: float | None = None) -> None:
        """A place came for the due slot: both go to the first waiter in ``key`` order."""
        if self._asking is None or asked is not self._asking[0]:
            return
        cap = self._asking[1]
        self._asking = None
        if asked.cancelled():
            self._schedule()
            return
        while self._queue and self._queue[0][2].future.done():
            heapq.heappop(self._queue)  # gave up while waiting
        if not self._queue:
            cap.release()
            return
        _, _, waiter = heapq.heappop(self._queue)
        self._live -= 1
        waiter.granted = self._take_slot(late)
        waiter.future.set_result(cap)
        self._schedule()
